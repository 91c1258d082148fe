"""Seed batches (``paradigms/seedbatch.py``): K runs that differ only in seed, trained as one vmapped model, give
the metrics and histories of K separate runs (within floating-point tolerance), keep their own run directories and
checkpoints (resumable alone or in a batch), and refuse what cannot be vectorised."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tiedlab.paradigms import rundir
from tiedlab.paradigms.engine import train
from tiedlab.paradigms.seedbatch import train_seed_batch

from support.toy import with_changes

TOY = "support.toy:ToyParadigm"
BASE = dict(paradigm=TOY, data={}, model={"width": 32},
            train=dict(batch_size=64, epochs=None, max_steps=16, eval_every=8, ckpt_every=8, progress=False),
            optim=dict(lr=0.01), block={"mode": "tied", "depth": 3}, mask={"mode": "distinct", "sparsity": 0.5})


def cfg(seed, **changes):
    return with_changes(BASE, seed=seed, **changes)


def close(a: dict, b: dict, keys) -> None:
    for key in keys:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


def test_a_seed_batch_equals_separate_runs_and_each_run_keeps_its_own_directory(tmp_path):
    """Two seeds batched against the same two seeds run separately: metrics and histories within 1e-4."""
    batched = train_seed_batch([cfg(0), cfg(1)], [tmp_path / f"b{s}" for s in range(2)])
    separate = [train(cfg(s), tmp_path / f"s{s}") for s in range(2)]
    keys = ("val/acc", "val/loss", "test/acc", "test/loss", "core/rel_residual", "params/used")
    for b, s in zip(batched, separate):
        assert b["status"] == s["status"] == "completed" and b["step"] == 16
        close(b["metrics"], s["metrics"], keys)
    assert batched[0]["metrics"]["val/loss"] != batched[1]["metrics"]["val/loss"]  # distinct seeds, masks, order
    for s in range(2):
        hb, hs = rundir.read_history(tmp_path / f"b{s}"), rundir.read_history(tmp_path / f"s{s}")
        assert [h["step"] for h in hb] == [8, 16]
        for a, b in zip(hb, hs):
            close(a, b, ("train/loss", "train/acc", "val/acc", "val/loss"))
    for s in range(2):  # each records that it trained in a batch of 2 (its seconds are the batch's / 2), and its seed
        (session,) = json.loads((tmp_path / f"b{s}" / "metrics.json").read_text())["provenance"]
        (alone,) = json.loads((tmp_path / f"s{s}" / "metrics.json").read_text())["provenance"]
        assert (session["seed_batch"], session["overrides"][-1], alone["seed_batch"]) == (2, f"seed={s}", 1)
    # each run directory is an ordinary run's: rerunning it alone finds it finished
    assert train(cfg(1), tmp_path / "b1")["metrics"]["val/loss"] == batched[1]["metrics"]["val/loss"]


def test_a_forward_that_updates_buffers_updates_each_runs_own(tmp_path):
    """A spectral norm steps its power-iteration vectors (buffers) in every training forward: in a seed batch each
    run's vectors move as in a separate run, and its metrics and checkpointed vectors match."""
    spectral = {"block.norm": "spectral"}
    batched = train_seed_batch([cfg(0, **spectral), cfg(1, **spectral)], [tmp_path / f"b{s}" for s in range(2)])
    separate = [train(cfg(s, **spectral), tmp_path / f"s{s}") for s in range(2)]
    for b, s in zip(batched, separate):
        close(b["metrics"], s["metrics"], ("val/acc", "val/loss", "test/loss"))
    for s in range(2):
        vectors = [{k: v for k, v in torch.load(tmp_path / f"{kind}{s}" / "checkpoint.pt", weights_only=True)
                    ["model"].items() if k.endswith((".u", ".v"))} for kind in ("b", "s")]
        assert vectors[0] and vectors[0].keys() == vectors[1].keys()
        for k in vectors[0]:
            torch.testing.assert_close(vectors[0][k], vectors[1][k], rtol=1e-4, atol=1e-5)


def killed_after_step_12(monkeypatch, run_dirs) -> None:
    """Seeds 0, 1, ... batched into ``run_dirs``, the process dying after step 12 (their checkpoints: step 8)."""
    from tiedlab.paradigms import seedbatch

    update = seedbatch._Run.update

    def crash_after_12(self, *args, **kwargs):
        if self.loop.step == 12:
            raise KeyboardInterrupt
        return update(self, *args, **kwargs)

    monkeypatch.setattr(seedbatch._Run, "update", crash_after_12)
    with pytest.raises(KeyboardInterrupt):
        train_seed_batch([cfg(s) for s in range(len(run_dirs))], run_dirs)
    monkeypatch.setattr(seedbatch._Run, "update", update)


def test_a_seed_batch_resumes_from_its_runs_checkpoints(tmp_path, monkeypatch):

    full = train_seed_batch([cfg(0), cfg(1)], [tmp_path / "full0", tmp_path / "full1"])
    killed_after_step_12(monkeypatch, [tmp_path / "r0", tmp_path / "r1"])
    assert all(json.loads((tmp_path / f"r{s}" / "metrics.json").read_text())["status"] == "running" for s in (0, 1))
    resumed = train_seed_batch([cfg(0), cfg(1)], [tmp_path / "r0", tmp_path / "r1"])
    for a, b in zip(resumed, full):
        assert len(a["provenance"]) == 2
        close(a["metrics"], b["metrics"], ("val/acc", "val/loss", "test/loss"))


def test_runs_left_at_different_steps_train_as_one_batch_per_step(tmp_path, monkeypatch, capsys):
    """A kill left seeds 0 and 1 at their step-8 checkpoint; seed 2 has not started: the rerun trains 0 and 1 as a
    batch and 2 alone (a batch trains in lockstep), and each ends as its separate run does."""
    killed_after_step_12(monkeypatch, [tmp_path / "r0", tmp_path / "r1"])
    resumed = train_seed_batch([cfg(s) for s in range(3)], [tmp_path / f"r{s}" for s in range(3)])
    assert "stand at steps [0, 8]: each step's runs train as a batch of their own" in capsys.readouterr().err
    for s, r in enumerate(resumed):
        alone = train(cfg(s), tmp_path / f"s{s}")
        assert r["status"] == "completed" and r["step"] == 16
        close(r["metrics"], alone["metrics"], ("val/acc", "val/loss", "test/loss"))
    assert [json.loads((tmp_path / f"r{s}" / "metrics.json").read_text())["provenance"][-1]["seed_batch"]
            for s in range(3)] == [2, 2, 1]


@pytest.mark.parametrize("changes,match", [
    ({"model.width": 16}, r"may differ only in seed; they differ in \['model.width'\]"),
    ({"block.mode": "deq", "mask.mode": "none"}, r"a DEQ cannot train in a seed batch"),
    ({"mask.seed": 3}, r"mask.seed=3 pins one mask for every seed"),
    ({"train.channels_last": True}, r"train.channels_last=true lays out one model's weights"),
])
def test_what_cannot_be_one_seed_batch_is_refused(tmp_path, changes, match):
    other = dict(changes) if "model.width" in changes else {}
    both = {} if other else changes
    with pytest.raises(ValueError, match=match):
        train_seed_batch([cfg(0, **both), cfg(1, **both, **other)], [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


def test_diverging_runs_of_a_seed_batch_are_recorded_as_diverged_at_their_step(tmp_path):
    poisoned = {"data.nan_input_after": 5}  # the toy's inputs turn NaN after 5 steps, in every seed
    results = train_seed_batch([cfg(0, **poisoned), cfg(1, **poisoned)], [tmp_path / "a", tmp_path / "b"])
    for r in results:
        assert (r["status"], r["reason"], r["step"]) == ("diverged", "non-finite loss (nan) at step 6", 5)
    with pytest.raises(ValueError, match=r"differ in \['data.nan_input_after'\]"):
        train_seed_batch([cfg(0), cfg(1, **poisoned)], [tmp_path / "c", tmp_path / "d"])


def test_one_seed_diverging_leaves_the_others_training_as_if_alone(tmp_path, monkeypatch):
    """Seed 0's inputs turn NaN from its 6th batch: it ends diverged at step 5, and seed 1 trains on in a batch of
    its own to the same weights and scores as a separate run (the NaN never reaches its parameters or statistics)."""
    from tiedlab.paradigms import engine

    real = engine._Run.batches

    def batches(self):
        for n, (epoch, index, (x, y)) in enumerate(real(self)):
            yield epoch, index, (x * float("nan") if int(self.cfg.seed) == 0 and n >= 5 else x, y)

    monkeypatch.setattr(engine._Run, "batches", batches)
    poisoned, healthy = train_seed_batch([cfg(0), cfg(1)], [tmp_path / "b0", tmp_path / "b1"])
    monkeypatch.setattr(engine._Run, "batches", real)
    alone = train(cfg(1), tmp_path / "alone")
    assert (poisoned["status"], poisoned["step"]) == ("diverged", 5)
    assert healthy["status"] == "completed" and healthy["step"] == 16
    close(healthy["metrics"], alone["metrics"], ("val/acc", "val/loss", "test/acc", "test/loss"))
    separate = torch.load(tmp_path / "alone" / rundir.CHECKPOINT, weights_only=True)["model"]
    for name, tensor in torch.load(tmp_path / "b1" / rundir.CHECKPOINT, weights_only=True)["model"].items():
        assert torch.allclose(tensor, separate[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("paradigm,overrides", [
    ("vision", ["size=vision_quick", "data=fashion-mnist", "data.limit_train=256", "data.val_size=64",
                "data.limit_test=64", "model.width=8", "model.groups=2", "train.batch_size=32", "mask=distinct",
                "mask.sparsity=0.5"]),
    ("language", ["size=language_quick", "model.width=32", "train.batch_size=4", "data.eval_batches=1"]),
])
def test_real_adapters_train_a_seed_batch_like_separate_runs(tmp_path, monkeypatch, paradigm, overrides):
    """The vision cell (convolutions, GroupNorm, distinct masks) and the transformer block under vmap: the same
    validation loss as separate runs after 6 steps. The images are decoded once for the whole process."""
    from tiedlab.paradigms.cli import compose_config
    from tiedlab.paradigms.vision import data as vision_data

    decodes, real_load = [], vision_data._load
    monkeypatch.setattr(vision_data, "_load", lambda *a: decodes.append(a) or real_load(*a))
    common = [f"paradigm={paradigm}", *overrides, "train.epochs=null", "train.max_steps=6", "train.eval_every=6",
              "train.progress=false", "train.threads=1"]
    cfgs = lambda name: [compose_config([*common, f"seed={s}", f"run_dir={tmp_path / name / str(s)}"]) for s in (0, 1)]
    batched = train_seed_batch(cfgs("b"), [tmp_path / "b" / str(s) for s in (0, 1)])
    assert len(decodes) == (paradigm == "vision")  # the batch's two runs share one decode
    separate = [train(c, tmp_path / "s" / str(s)) for s, c in enumerate(cfgs("s"))]
    assert len(decodes) == 3 * (paradigm == "vision")  # separate runs decode their own
    for b, s in zip(batched, separate):
        assert b["status"] == "completed"
        close(b["metrics"], s["metrics"], ("val/loss", "test/loss"))


def test_graph_batches_are_refused_with_the_reason(tmp_path):
    from tiedlab.paradigms.cli import compose_config

    cfgs = [compose_config(["paradigm=graph", "data=cora", f"seed={s}", f"run_dir={tmp_path / str(s)}"]) for s in (0, 1)]
    with pytest.raises(ValueError, match=r"the graph paradigm does not train seed batches: its batches are torch_geometric"):
        train_seed_batch(cfgs, [tmp_path / "0", tmp_path / "1"])


def test_study_runs_group_into_seed_batches_per_cell_and_the_command_trains_them(tmp_path, monkeypatch):
    """tiedlab-study --seed-batch K: each cell's seeds in batches of up to K (a leftover seed alone, a cell that
    cannot be batched left as single runs), and the seed batch command trains the runs named by their seeds."""
    from pathlib import Path

    from tiedlab.paradigms import launch, seedbatch

    tests = Path(__file__).resolve().parents[1]
    grid = {"name": "g", "overrides": ["paradigm=toy", f"hydra.searchpath=[file://{tests / 'support' / 'configs'}]",
                                       "train.max_steps=4", "train.eval_every=4", "model.width=8"],
            "sweep": {"block": ["tied", "deq"], "seed": [0, 1, 2]}}
    runs = launch.grid_runs("s", grid, tmp_path, [])
    grouped = launch.seed_batches(runs, 2, lambda run: "block=deq" not in run.overrides)
    kinds = [(type(g).__name__, len(getattr(g, "run_dirs", [g.run_dir]))) for g in grouped]
    assert kinds == [("SeedBatchSpec", 2), ("RunSpec", 1), ("RunSpec", 1), ("RunSpec", 1), ("RunSpec", 1)]
    batch = grouped[0]
    assert [Path(d).name for d in batch.run_dirs] == ["block=tied,seed=0", "block=tied,seed=1"]
    assert not any(o.startswith("seed=") for o in batch.overrides) and batch.seeds == ("0", "1")
    cmd = launch.run_command(batch, threads=1)
    assert cmd[1:3] == ["-m", "tiedlab.paradigms.seedbatch"] and cmd[-1] == "train.threads=1"
    monkeypatch.syspath_prepend(str(tests))
    assert seedbatch.main(cmd[3:]) == 0
    for d, seed in zip(batch.run_dirs, (0, 1)):
        m = json.loads((Path(d) / "metrics.json").read_text())
        assert m["status"] == "completed" and m["step"] == 4
        assert rundir.read_metrics(Path(d))["metrics"]["val/acc"] > 0
        assert "\nseed: %d\n" % seed in (Path(d) / "config.yaml").read_text()  # its own seed
        assert (Path(d) / "cli.log").read_text().startswith(f"[tiedlab] {d}: completed")  # its own outcome only
    # an error is noted in the logs of the runs whose directories were theirs when it came (here the first one's)
    refused = [str(tmp_path / "r5"), str(tmp_path / "r6")]
    assert seedbatch.main(["--seeds", "5,6", *refused, "--", *batch.overrides, "resume=true"]) == 1
    assert (Path(refused[0]) / "cli.log").read_text().startswith("error: resume=true but")
    assert not (Path(refused[1]) / "cli.log").exists()
    # the seeds come with the command, not from the directories' names (rundir.short_dirname may cut a long one)
    named_otherwise = [str(tmp_path / "cut,seed=1,hash=0123"), str(tmp_path / "no-seed-here")]
    assert seedbatch.main(["--seeds", "12,-3", *named_otherwise, "--", *batch.overrides, "train.threads=1"]) == 0
    for d, seed in zip(named_otherwise, (12, -3)):
        assert "\nseed: %d\n" % seed in (Path(d) / "config.yaml").read_text()
    assert seedbatch.main(["--seeds", "0", *named_otherwise, "--", *batch.overrides]) == 1  # one seed per run
    assert seedbatch.main([*batch.run_dirs, "--", *batch.overrides]) == 2  # no --seeds: the usage line


def test_ctrl_c_to_a_seed_batch_run_by_hand_is_one_line(tmp_path, monkeypatch, capsys):
    from tiedlab.paradigms import seedbatch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(seedbatch, "train_seed_batch", interrupted)
    run_dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert seedbatch.main(["--seeds", "0,1", *run_dirs, "--", "paradigm=vision"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("[tiedlab] stopped by Ctrl-C: the batch's runs were not checkpointed now;") and run_dirs[1] in err


def test_a_random_forward_pass_is_refused_not_made_up(tmp_path, monkeypatch):
    """Dropout under vmap would draw other numbers than separate runs: a config with dropout is not batchable (the
    study runner trains its seeds separately), and a random forward the config check misses stops the batch."""
    from tiedlab.paradigms import seedbatch
    from tiedlab.paradigms.cli import compose_config
    from tiedlab.paradigms.seedbatch import RandomForwardError

    common = ["paradigm=vision", "size=vision_quick", "data=fashion-mnist", "data.limit_train=128", "data.val_size=32",
              "data.limit_test=32", "model.width=8", "model.groups=2", "model.dropout=0.2", "train.batch_size=16",
              "train.epochs=null", "train.max_steps=2", "train.progress=false"]
    cfgs = [compose_config([*common, f"seed={s}", f"run_dir={tmp_path / str(s)}"]) for s in (0, 1)]
    assert seedbatch.why_not_batchable(cfgs[0]).startswith("model.dropout=0.2 draws random numbers in the forward")
    for size, key in (("vision_paper", "model.dropout=0.1"), ("language_paper", "model.dropout=0.2")):
        assert key in seedbatch.why_not_batchable(compose_config([f"paradigm={size.split('_')[0]}", f"size={size}"]))
    with pytest.raises(ValueError, match=r"model.dropout=0.2 draws random numbers"):
        train_seed_batch(cfgs, [tmp_path / "0", tmp_path / "1"])
    monkeypatch.setattr(seedbatch, "why_not_batchable", lambda cfg: None)
    with pytest.raises(RandomForwardError, match=r"draws random numbers in its forward pass \(dropout\?\)"):
        train_seed_batch(cfgs, [tmp_path / "0", tmp_path / "1"])


def test_attention_runs_in_its_math_form_inside_a_cuda_seed_batch(tmp_path, monkeypatch):
    """Under vmap the fused CUDA attention kernels' backward rejects the batched log-sum-exp (an H200 run failed at
    step 0 with "LSE is not correctly aligned"): a CUDA seed batch asks for the math kernel alone; a CPU one changes
    nothing. The batch's vectorised forward runs inside the helper, once per step, with the runs' device."""
    import contextlib

    from tiedlab.paradigms import seedbatch
    from tiedlab.paradigms.seedbatch import _vmappable_attention

    entered = []

    def recording(device):
        entered.append(device.type)
        return contextlib.nullcontext()

    monkeypatch.setattr(seedbatch, "_vmappable_attention", recording)
    results = train_seed_batch([cfg(0), cfg(1)], [tmp_path / "0", tmp_path / "1"])
    assert [r["step"] for r in results] == [16, 16] and entered == ["cpu"] * 16
    monkeypatch.undo()

    flags = lambda: (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                     torch.backends.cuda.math_sdp_enabled())
    before = flags()
    with _vmappable_attention(torch.device("cpu")):
        assert flags() == before
    with _vmappable_attention(torch.device("cuda")):
        assert flags() == (False, False, True)
    assert flags() == before


def test_a_sigterm_during_a_seed_batchs_final_evaluation_waits_for_every_run_to_complete(tmp_path):
    """As for a single run (tests/paradigms/test_engine.py): the stop of a seed batch that comes while its runs
    are finishing (the first run's test score sends it) lets both runs complete and write their metrics."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tiedlab.paradigms import launch

    tests = Path(__file__).resolve().parents[1]
    grid = {"name": "g", "overrides": ["paradigm=toy", f"hydra.searchpath=[file://{tests / 'support' / 'configs'}]",
                                       "train.max_steps=4", "train.eval_every=4", "model.width=8",
                                       "data.sigterm_on_test=true"],
            "sweep": {"seed": [0, 1]}}
    (batch,) = launch.seed_batches(launch.grid_runs("s", grid, tmp_path, []), 2, lambda run: True)
    env = {**os.environ, "PYTHONPATH": str(tests), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launch.run_command(batch, threads=1), env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for d in batch.run_dirs:
        m = json.loads((Path(d) / "metrics.json").read_text())
        assert m["status"] == "completed" and "test/acc" in m["metrics"], m


@pytest.mark.parametrize("diverges", [False, True])
def test_the_devices_wait_at_a_read_is_shared_by_the_batchs_runs(tmp_path, monkeypatch, diverges):
    """On CUDA a read waits for the queued work of the whole batch step: the batch waits once, before the runs'
    reads, and splits the time evenly (the first run's read would otherwise take every run's share); a run that
    diverged after the first read (NaN inputs from step 12, read at step 16) keeps both waits, as a run alone does
    (its steps after the last finite one are not counted, the device's time is). A stand-in device: each backward
    queues 1 s of work, which the next wait sleeps through."""
    import time

    from tiedlab.paradigms import engine

    queued = [0.0]
    backward = torch.Tensor.backward

    def queue(self, *args, **kwargs):
        backward(self, *args, **kwargs)
        queued[0] = 1.0

    def wait(device):
        waited, queued[0] = queued[0], 0.0
        time.sleep(waited)
        return waited

    monkeypatch.setattr(torch.Tensor, "backward", queue)
    monkeypatch.setattr(engine, "device_wait", wait)
    changes = {"train.log_every": 0, **({"data.nan_input_after": 11} if diverges else {})}
    runs = train_seed_batch([cfg(s, **changes) for s in range(2)], [tmp_path / f"b{s}" for s in range(2)])
    assert [r["status"] for r in runs] == ["diverged" if diverges else "completed"] * 2
    seconds = [r["metrics"]["time/train_s"] for r in runs]
    assert min(seconds) >= 1.0, seconds  # two reads (steps 8 and 16) of 1 s, split over 2 runs: the wait is counted
    # and shared: charged to seed 0 alone they would be 2 s apart (a loaded machine moved the runs' own compute
    # time apart by 0.44 s once, against a bound of 0.3 s)
    assert abs(seconds[0] - seconds[1]) < 1.0, seconds


def test_a_stop_that_waited_is_delivered_when_the_seed_batch_then_crashes(tmp_path):
    """A SIGTERM during the final evaluation waits for the runs to finish; if finishing then raises (a tracker
    failing, say), the process ends by that SIGTERM, as a single run's does, not by the error alone (which
    would leave its launcher thinking it crashed rather than was stopped)."""
    import signal
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tests)!r})
        from support.toy import with_changes
        from tiedlab.paradigms import tracking
        from tiedlab.paradigms.seedbatch import train_seed_batch

        def broken(self, summary):
            raise RuntimeError("the tracker failed")

        tracking.LocalTracker.finish = broken
        base = dict(paradigm="support.toy:ToyParadigm", data=dict(sigterm_on_test=True), model=dict(width=8),
                    train=dict(batch_size=64, epochs=None, max_steps=4, eval_every=4, progress=False, threads=1),
                    optim=dict(lr=0.01), block=dict(mode="tied", depth=2))
        train_seed_batch([with_changes(base, seed=s) for s in (0, 1)], [{str(tmp_path)!r} + f"/b{{s}}" for s in (0, 1)])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    # ended by the signal (uncaught, the error alone ends it with 1; without the error the batch returns: 0)
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stderr[-3000:])
