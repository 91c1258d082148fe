"""The engine end to end on the test-only digits paradigm: run directories, resume, divergence, errors."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiedlab.core import BlockSpec
from tiedlab.paradigms import rundir
from tiedlab.paradigms.engine import train

from support.toy import with_changes

TESTS = Path(__file__).resolve().parents[1]
TOY = "support.toy:ToyParadigm"
BASE = dict(paradigm=TOY, data={}, model={"width": 32},
            train=dict(batch_size=128, epochs=None, max_steps=30, eval_every=10, ckpt_every=10, progress=False),
            optim=dict(lr=0.01))


def cfg(**changes):
    return with_changes(BASE, **changes)


def cli(args: list[str], runs: Path, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "TIEDLAB_RUNS": str(runs), "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    flags = [a for a in args if a.startswith("-")]
    cmd = [sys.executable, "-m", "tiedlab.paradigms.cli", *flags, "paradigm=toy",
           f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]", "train.progress=false", "train.threads=1",
           *[a for a in args if not a.startswith("-")]]
    if kw.pop("background", False):  # Ctrl-C and a hang-up with their default actions, however the suite started
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=default_stop_signals)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def default_stop_signals() -> None:
    """In a child before it runs: SIGINT and SIGHUP as a terminal's command gets them (a suite started with
    `nohup` or `&` ignores them, and so would every process it starts)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def test_run_directory_contract(tmp_path):
    result = train(cfg(), tmp_path)
    assert result["status"] == "completed" and result["reason"] == ""
    m = result["metrics"]
    for key in ("val/acc", "test/acc", "val/loss", "params/unique", "params/dense", "params/nonzero", "params/used",
                "time/train_s",
                "time/step_ms", "throughput/samples_per_s", "memory/peak_mb", "core/nfe_forward",
                "core/nfe_backward", "core/rel_residual"):
        assert key in m, key
    assert m["test/acc"] > 0.5  # digits: well beyond chance (0.1) after 30 steps
    assert m["params/dense"] > m["params/unique"]  # tied depth 4
    assert m["core/nfe_forward"] == 4
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["test/acc"] == m["test/acc"]
    history = rundir.read_history(tmp_path)
    assert [h["step"] for h in history] == [10, 20, 30]
    assert all(h["time/train_s"] > 0 for h in history) and history[0]["time/train_s"] < history[-1]["time/train_s"]
    assert "val/acc" in history[0] and "train/loss" in history[0]
    assert "mode: tied" in (tmp_path / "config.yaml").read_text()
    assert (tmp_path / "checkpoint.pt").exists()
    # Rerunning a finished run does nothing and returns the same result.
    assert train(cfg(), tmp_path)["metrics"]["test/acc"] == m["test/acc"]


def test_final_evaluation_reuses_the_last_validation_and_scores_test_once(tmp_path, monkeypatch):
    from support.toy import ToyParadigm

    calls: list[str] = []
    evaluate = ToyParadigm.evaluate

    def counting(self, model, data, split):
        calls.append(split)
        return evaluate(self, model, data, split)

    monkeypatch.setattr(ToyParadigm, "evaluate", counting)
    result = train(cfg(**{"train.max_steps": 25}), tmp_path / "a")  # 25 is not a multiple of eval_every
    assert calls == ["val", "val", "val", "test"]  # steps 10, 20, 25 (the last one), then test only
    last = rundir.read_history(tmp_path / "a")[-1]
    assert last["step"] == 25
    for key in ("val/acc", "val/loss", "core/val_nfe_forward"):
        assert result["metrics"][key] == last[key], key
    assert not any(k.startswith("train/") and k != "train/steps" for k in result["metrics"])
    # the reused record equals what a fresh evaluation of the final weights gives
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    paradigm = ToyParadigm({}, {"width": 32}, torch.device("cpu"), seed=0, batch_size=128)
    data = paradigm.build_data()
    model = paradigm.build_model(data, BlockSpec.from_dict(dict(mode="tied", depth=4)))
    model.load_state_dict(ckpt["model"])
    model.eval()
    with torch.no_grad():
        fresh = evaluate(paradigm, model, data, "val")
    assert fresh["val/acc"] == result["metrics"]["val/acc"]
    assert fresh["val/loss"] == pytest.approx(result["metrics"]["val/loss"], rel=1e-6)


@pytest.mark.parametrize("grid,expected", [
    (["block=explicit,tied,deq", "mask=none,distinct"], 6),
    (["block=deq", "solver=broyden,fixed_point", "grad=phantom,onestep"], 4),
    (["block=tied", "block.eval_depth=6"], 1),
])
def test_cli_trains_every_block_mode(tmp_path, grid, expected):
    proc = cli(["-m", *grid, "train.max_steps=12"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p.parent for p in tmp_path.rglob("metrics.json")]
    assert len(runs) == expected
    for run in runs:
        result = json.loads((run / "metrics.json").read_text())
        assert result["status"] == "completed", run
        assert result["metrics"]["val/acc"] > 0.2, run
        mode = result_mode = next(line for line in (run / "config.yaml").read_text().splitlines() if "mode:" in line)
        assert mode.split(":")[1].strip() in run.name, (run.name, result_mode)


def test_killed_run_resumes_to_the_same_final_metrics(tmp_path):
    args = ["block=deq", "solver=fixed_point", "train.max_steps=160", "train.ckpt_every=20", "train.eval_every=40"]
    whole = cli(args, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    proc = cli(args, tmp_path / "killed", background=True)
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline:
        found = list((tmp_path / "killed").rglob("checkpoint.pt"))
        if found:
            ckpt = found[0]
            break
        time.sleep(0.02)
    assert ckpt is not None, "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_dir = ckpt.parent
    status = json.loads((killed_dir / "metrics.json").read_text())
    assert status["status"] == "running" and status["step"] < 160  # really killed mid-run
    resumed = cli(args, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    (whole_dir,) = [p.parent for p in (tmp_path / "whole").rglob("metrics.json")]
    a = json.loads((whole_dir / "metrics.json").read_text())
    b = json.loads((killed_dir / "metrics.json").read_text())
    assert b["status"] == "completed"
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "core/test_nfe_forward"):
        assert a["metrics"][key] == b["metrics"][key], key
    assert [h["step"] for h in rundir.read_history(killed_dir)] == [40, 80, 120, 160]
    assert rundir.read_history(killed_dir)[-1]["val/loss"] == rundir.read_history(whole_dir)[-1]["val/loss"]


SIGNALLED = ["train.max_steps=600", "train.ckpt_every=5000", "train.eval_every=100", "train.batch_size=32"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """metrics.json of the signalled runs' config trained without a signal (shared by both signals)."""
    root = tmp_path_factory.mktemp("whole")
    whole = cli(SIGNALLED, root)
    assert whole.returncode == 0, whole.stderr[-3000:]
    return json.loads((root / "toy" / ",".join(sorted(SIGNALLED)) / "metrics.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR2, marks=pytest.mark.slow), signal.SIGINT,
                                 signal.SIGHUP])
def test_a_signalled_run_checkpoints_exits_as_interrupted_and_resumes_to_the_same_metrics(tmp_path, sig,
                                                                                         uninterrupted):
    """A scheduler's SIGUSR2 (timeout warning) or SIGTERM (preemption), Ctrl-C, a terminal that hung up: a
    checkpoint at the next step, status interrupted, exit status 75 (resumable, not failed; 130 after Ctrl-C) and
    no traceback; the rerun ends where an uninterrupted run ends. Ctrl-C and a hang-up killed the run where it was
    (Ctrl-C with a traceback), its metrics.json left "running"."""
    from tiedlab.paradigms.launch import INTERRUPTED_EXIT

    args = SIGNALLED
    proc = cli(args, tmp_path / "stopped", background=True)
    run_dir = tmp_path / "stopped" / "toy" / ",".join(sorted(a for a in args))
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "history.jsonl").exists():
        time.sleep(0.02)
    assert (run_dir / "history.jsonl").exists(), "the run never evaluated"
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == (130 if sig == signal.SIGINT else INTERRUPTED_EXIT), out[-3000:]
    assert "Traceback" not in out
    if sig == signal.SIGINT:
        assert ("[tiedlab] Ctrl-C: stopping at the next step with a checkpoint, or after the final evaluation (Ctrl-C "
                "again: stop now)") in out
    stopped = json.loads((run_dir / "metrics.json").read_text())
    assert stopped["status"] == "interrupted" and 100 <= stopped["step"] < 600, stopped
    assert stopped["reason"].startswith(f"{sig.name} at step {stopped['step']}/600: checkpointed")
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["loop"]["step"] == stopped["step"]
    resumed = cli(args, tmp_path / "stopped")
    assert resumed.returncode == 0 and f"resuming {run_dir} at step {stopped['step']}/600" in resumed.stderr
    a = json.loads((run_dir / "metrics.json").read_text())
    assert a["status"] == "completed" and len(a["provenance"]) == 2
    for key in ("val/loss", "test/acc", "test/loss"):
        assert a["metrics"][key] == uninterrupted["metrics"][key], key


def test_a_second_ctrl_c_stops_the_run_at_once_in_one_line_and_a_rerun_resumes_it(tmp_path):
    """Ctrl-C twice: the run stops where it is, without waiting for its step to end; one line says what a rerun
    does; the lock is released and the rerun completes the run."""
    args = ["train.max_steps=3", "train.eval_every=1", "train.ckpt_every=1", "data.step_sleep_s=2.0"]
    run_dir = tmp_path / "toy" / ",".join(sorted(args))
    proc = cli(args, tmp_path, background=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoint.pt").exists():
        time.sleep(0.02)
    assert (run_dir / "checkpoint.pt").exists(), "the run never checkpointed"
    time.sleep(0.5)  # inside step 2 (2 s; the evaluation and checkpoint of step 1 take milliseconds)
    proc.send_signal(signal.SIGINT)
    seen = []
    while not seen or not seen[-1].startswith(b"[tiedlab] Ctrl-C: stopping at the next step"):
        seen.append(proc.stdout.readline())
        assert seen[-1], b"".join(seen)[-3000:]  # the first Ctrl-C said so before the run ended
    proc.send_signal(signal.SIGINT)  # within the step: the second does not wait for its end
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130 and "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1] == (f"[tiedlab] stopped by Ctrl-C: {run_dir} was not checkpointed now; "
                                             "rerunning the same command resumes from its last checkpoint")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"  # killed, as a SIGKILL would
    resumed = cli(args, tmp_path)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_ctrl_c_to_a_run_trained_in_process_raises_keyboardinterrupt_as_before(tmp_path):
    """Only the command line's runs take Ctrl-C as a stop: code that calls train() itself (a test session, a
    notebook's loop over seeds) is interrupted at once, as Python does by default."""
    import threading

    def ctrl_c_once_training() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not (tmp_path / "r" / "history.jsonl").exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Python has it
    try:
        threading.Thread(target=ctrl_c_once_training, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            train(cfg(**{"train.max_steps": 40, "train.eval_every": 1, "data.step_sleep_s": 0.2}), tmp_path / "r")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "running"


def test_a_sigterm_during_the_final_evaluation_completes_the_run_and_ends_the_multirun(tmp_path):
    """A stop that comes after the training loop (the final evaluation) waits for the run's last write: the run
    completes, and its multirun starts no further job; the command exits 75 (resumable)."""
    from tiedlab.paradigms.launch import INTERRUPTED_EXIT

    proc = cli(["-m", "seed=0,1", "data.sigterm_on_test=true", "train.max_steps=20"], tmp_path)
    assert proc.returncode == INTERRUPTED_EXIT, proc.stderr[-3000:]
    assert "SIGTERM during the final evaluation: stopping" in proc.stderr
    done = [json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json")]
    assert [m["status"] for m in done] == ["completed"] and done[0]["step"] == 20, done
    assert "test/acc" in done[0]["metrics"]


def test_nan_loss_is_recorded_as_diverged(tmp_path):
    result = train(cfg(**{"data.nan_input_after": 13}), tmp_path)
    assert result["status"] == "diverged"
    assert result["reason"] == "non-finite loss (nan) at step 14" and result["step"] == 13
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


def test_a_diverged_run_counts_the_time_and_samples_of_its_finite_steps_alone(tmp_path):
    """Losses are read up to 50 steps late: the steps after the first non-finite one ran, but are not the run's."""
    result = train(cfg(**{"data.nan_input_after": 12, "train.max_steps": 40, "train.eval_every": 40,
                          "train.ckpt_every": 40}), tmp_path)
    m = result["metrics"]
    assert (result["status"], result["step"], m["train/steps"]) == ("diverged", 12, 12)
    assert m["throughput/samples_per_s"] * m["time/train_s"] == pytest.approx(12 * 128)
    assert m["time/step_ms"] == pytest.approx(1000 * m["time/train_s"] / 12)


def test_non_finite_weights_after_the_last_update_are_a_divergence_not_a_result(tmp_path, monkeypatch):
    """No later step's loss reads the last update: an inf gradient there (clipped to NaN) would be scored."""
    from tiedlab.paradigms import engine

    update = engine._Run.update

    def poisoned(self, *args, **kwargs):
        if self.loop.step == self.total_steps - 1:
            next(self.model.parameters()).grad.fill_(float("inf"))
        return update(self, *args, **kwargs)

    monkeypatch.setattr(engine._Run, "update", poisoned)
    result = train(cfg(), tmp_path)
    assert result["status"] == "diverged" and result["step"] == 30, result
    assert result["reason"].startswith("non-finite weights (") and result["reason"].endswith("after the update of step 30")
    assert "test/acc" not in result["metrics"]


def test_a_warm_up_as_long_as_the_run_is_named(tmp_path, capsys):
    train(cfg(**{"optim.warmup_steps": 30}), tmp_path)
    assert "optim.warmup_steps=30 is not below the run's 30 steps: the learning rate rises all run" in \
        capsys.readouterr().err


@pytest.mark.parametrize("changes,match", [
    ({"optim.warmup_steps": -1}, r"optim.warmup_steps=-1 must be >= 0"),
    ({"train.time_limit_s": -1}, r"train.time_limit_s=-1(\.0)? must be >= 0 or null"),
])
def test_a_schedule_or_time_limit_that_cannot_work_is_refused(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        train(cfg(**changes), tmp_path)


def test_exploding_residual_is_recorded_as_diverged(tmp_path):
    # An undamped Picard iteration on an expansive linear cell: the residual grows 3x per step.
    result = train(cfg(**{"block.mode": "deq", "solver.name": "fixed_point", "solver.options": {"damping": 1.0},
                          "solver.max_iter": 20, "model.activation": "identity", "model.scale": 3.0}), tmp_path)
    assert result["status"] == "diverged", result
    assert result["reason"].startswith("solver residual exploded at step 1: it grew")
    # The same cell under a tanh is bounded: no divergence.
    ok = train(cfg(**{"block.mode": "deq", "solver.name": "fixed_point", "solver.max_iter": 20, "model.scale": 0.9,
                      "train.max_steps": 5}), tmp_path / "ok")
    assert ok["status"] == "completed"


def test_corrupt_or_foreign_checkpoint_is_an_error_naming_the_file(tmp_path):
    train(cfg(**{"train.max_steps": 20}), tmp_path)
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(rundir.CheckpointError, match="different config"):
        train(cfg(**{"train.max_steps": 20, "optim.lr": 0.02}), tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(rundir.CheckpointError, match=str(tmp_path / "checkpoint.pt")):
        train(cfg(**{"train.max_steps": 20}), tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"not a checkpoint"  # never overwritten
    with pytest.raises(rundir.RunDirError, match="resume=false"):
        train(cfg(**{"train.max_steps": 20}) | {"resume": "false"}, tmp_path)


@pytest.mark.parametrize("change,match", [
    ({"optim.lr": -0.1}, r"optim.lr=-0.1 must be > 0"),
    ({"block.depth": 0}, r"depth=0 must be an integer >= 1"),
    ({"mask.mode": "distinct", "mask.sparsity": 1.0}, r"sparsity=1.0 must be in \[0, 1\)"),
    ({"block.mode": "implicit"}, r"block mode 'implicit'.*explicit"),
    ({"solver.name": "newton"}, r"unknown solver 'newton'; valid solvers"),
    ({"paradigm": "audio"}, r"unknown paradigm 'audio'; valid paradigms: \['graph', 'language', 'ssl', 'vision'\]"),
    ({"model.widht": 8}, r"unknown key\(s\) \['widht'\] in toy model options; valid keys: \['activation', 'scale', 'width'\]"),
    ({"train.max_steps": None}, r"set train.epochs or train.max_steps"),
    ({"train.validate_from": 1.5}, r"train.validate_from=1.5 must be in \[0, 1\]"),
    ({"optim.name": "lbfgs"}, r"optim.name='lbfgs'.*'adamw', 'adam', 'sgd'"),
])
def test_bad_values_are_rejected_before_training(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        train(cfg(**change), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_adam_couples_weight_decay_to_the_gradient_and_skips_norms_and_biases():
    from types import SimpleNamespace
    from tiedlab.paradigms.engine import build_optimizer
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    opt = build_optimizer(SimpleNamespace(name="adam", lr=0.1, weight_decay=0.5, betas=[0.9, 0.999]), model)
    assert type(opt) is torch.optim.Adam
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.5 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    # coupled L2: with a zero loss gradient the decay term alone moves the weights (Adam's first step is
    # lr * sign(grad), here grad = wd * w); AdamW would shrink them by lr * wd * w instead.
    w0 = model[0].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model[0].weight, w0 - 0.1 * torch.sign(w0), atol=1e-5)
    assert torch.equal(model[0].bias.grad, torch.zeros(2))


def test_weight_norm_gains_are_not_decayed():
    """A weight norm's gain has its weight's rank, (out, 1): told apart by what it is, not by its dims."""
    from types import SimpleNamespace

    from tiedlab.core import build_block
    from tiedlab.paradigms.engine import build_optimizer
    from support.cells import TanhCell

    block = build_block(lambda: TanhCell(dim=6), dict(mode="tied", depth=2, norm="weight"))
    gain = block.norms[0].norms["W"].gain
    assert gain.dim() == 2
    opt = build_optimizer(SimpleNamespace(name="adamw", lr=0.1, weight_decay=0.5, betas=[0.9, 0.999]), block)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.5 for p in g["params"]}
    assert id(gain) not in decayed and id(block.cells[0].W) in decayed


def test_adam_trains(tmp_path):
    result = train(cfg(**{"optim.name": "adam", "optim.weight_decay": 5e-4}), tmp_path)
    assert result["status"] == "completed" and result["metrics"]["test/acc"] > 0.5  # learns (chance: 0.1)


def test_misspelt_top_level_key_is_an_error(tmp_path):
    with pytest.raises(Exception, match="blok"):
        train(cfg() | {"blok": {"mode": "tied"}}, tmp_path)


def test_a_run_that_failed_after_taking_its_directory_says_why_in_its_cli_log(tmp_path):
    """--status counts a run that exited before training as failed and points at its cli.log: the error line is
    there once the run held its directory (an error in building the model); a config refused before that (a bad
    value) writes no cli.log, as it touched no run."""
    proc = cli(["+model.activation=sigmoid", "train.max_steps=2"], tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("[tiedlab] error: activation=")
    (log,) = tmp_path.glob("**/cli.log")
    assert log.read_text().strip() == proc.stderr.strip().splitlines()[-1]
    refused = cli(["optim.lr=-1", "train.max_steps=2"], tmp_path / "refused")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("[tiedlab] error: optim.lr=-1")
    assert not list((tmp_path / "refused").glob("**/cli.log"))


def test_cli_reports_bad_group_choice_with_valid_options(tmp_path):
    proc = cli(["block=implicit"], tmp_path)
    assert proc.returncode != 0
    assert "implicit" in proc.stderr and "deq" in proc.stderr and "tied" in proc.stderr


def test_multirun_with_joblib_launcher(tmp_path):
    proc = cli(["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "block=tied,deq",
                "train.max_steps=10"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent.name for p in tmp_path.rglob("metrics.json"))
    assert runs == ["block=deq,train.max_steps=10", "block=tied,train.max_steps=10"]


def test_wandb_logger_offline_never_blocks(tmp_path):
    pytest.importorskip("wandb")
    os.environ.pop("WANDB_MODE", None)
    try:
        result = train(cfg(**{"logger.name": "wandb", "logger.mode": "offline", "logger.dir": str(tmp_path / "wb"),
                              "train.max_steps": 10}), tmp_path / "run")
    finally:
        os.environ["WANDB_MODE"] = "disabled"
    assert result["status"] == "completed"
    assert list((tmp_path / "wb").rglob("*.wandb")), "wandb wrote no offline run file"


def test_deterministic_on_cpu(tmp_path):
    a = train(cfg(**{"block.mode": "deq"}), tmp_path / "a")["metrics"]
    b = train(cfg(**{"block.mode": "deq"}), tmp_path / "b")["metrics"]
    assert a["val/loss"] == b["val/loss"] and a["test/acc"] == b["test/acc"]
    assert torch.equal(torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]["head.weight"],
                       torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]["head.weight"])


@pytest.mark.slow
def test_torch_compile_switch_trains_to_the_same_quality(tmp_path):
    plain = train(cfg(), tmp_path / "plain")["metrics"]
    compiled = train(cfg(**{"train.compile": True}), tmp_path / "compiled")
    assert compiled["status"] == "completed"
    assert abs(compiled["metrics"]["test/acc"] - plain["test/acc"]) < 0.05


@pytest.mark.gpu
def test_cuda_bf16_run_records_cuda_memory(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    result = train(cfg(**{"train.device": "cuda", "train.amp": True, "block.mode": "deq"}), tmp_path)
    assert result["status"] == "completed"
    assert 0 < result["metrics"]["memory/peak_mb"] < 2000
    assert result["metrics"]["test/acc"] > 0.5


def test_peak_memory_is_reset_per_run():
    from tiedlab.paradigms.engine import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    big = torch.ones(300 * 2**20 // 4)  # 300 MiB
    big += 1
    high = peak_memory_mb(cpu)
    del big
    reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < high - 200


def test_masks_follow_the_run_seed_unless_pinned(tmp_path):
    from tiedlab.paradigms.config import block_spec
    from tiedlab.paradigms.engine import as_config

    masked = {"mask.mode": "distinct", "mask.sparsity": 0.5, "train.max_steps": 2}
    assert block_spec(as_config(cfg(seed=3, **masked))).mask.seed == 3
    assert block_spec(as_config(cfg(seed=3, **masked, **{"mask.seed": 7}))).mask.seed == 7
    masks = {}
    for seed in (0, 1):
        train(cfg(seed=seed, **masked), tmp_path / str(seed))
        state = torch.load(tmp_path / str(seed) / "checkpoint.pt", weights_only=True)["model"]
        masks[seed] = {k: v for k, v in state.items() if ".masks.m" in k}
    assert masks[0] and masks[0].keys() == masks[1].keys()
    assert all(not torch.equal(masks[0][k], masks[1][k]) for k in masks[0])  # redrawn with the seed


def test_score_train_records_the_final_fit_on_the_training_split(tmp_path, monkeypatch):
    from support.toy import ToyParadigm

    with pytest.raises(ValueError, match=r"train.score_train=true: the .* adapter cannot score its training split"):
        train(cfg(**{"train.score_train": True}), tmp_path / "refused")
    monkeypatch.setattr(ToyParadigm, "scores_train", True, raising=False)
    m = train(cfg(**{"train.score_train": True}), tmp_path / "run")["metrics"]
    assert set(m) >= {"fit/acc", "fit/loss"} and not any(k.startswith("core/train_") for k in m)
    assert m["fit/acc"] > 0.8 and m["fit/acc"] >= m["test/acc"] - 0.05  # digits after 30 steps: fits its data
    plain = train(cfg(), tmp_path / "plain")["metrics"]
    assert "fit/acc" not in plain and plain["test/acc"] == m["test/acc"]  # scoring the fit changes nothing else


def test_training_steps_never_read_the_device_between_log_intervals(tmp_path, monkeypatch):
    """A tied model's step leaves its loss, accuracy and block statistics on the device (#18: no host sync per
    step): no .item(), .tolist(), float() or bool() of a tensor inside a step (SGD: no step counter to read); they
    are read together at the log interval, and the history holds the same values as reading them every step."""
    from tiedlab.paradigms import engine

    reads = {"inside": 0, "outside": 0}
    inside = [False]
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["inside" if inside[0] else "outside"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    step = engine._Run._step

    def watched(self, *args, **kwargs):
        inside[0] = True
        try:
            return step(self, *args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(engine._Run, "_step", watched)
    changes = {"optim.name": "sgd", "optim.lr": 0.1, "train.log_every": 0}
    deferred = train(cfg(**changes), tmp_path / "deferred")
    assert deferred["status"] == "completed" and reads["inside"] == 0 and reads["outside"] > 0
    monkeypatch.setattr(engine, "READ_EVERY", 1)  # read every step: the same records
    every = train(cfg(**changes), tmp_path / "every")
    strip = lambda h: {k: v for k, v in h.items() if not k.startswith("time/")}
    assert [strip(h) for h in rundir.read_history(tmp_path / "deferred")] == \
           [strip(h) for h in rundir.read_history(tmp_path / "every")]


@pytest.mark.parametrize("waits", [False, True])
def test_a_step_is_timed_from_its_batch_fetch_where_the_fetch_waits_for_the_device(tmp_path, monkeypatch, waits):
    """On CUDA a batch fetch waits for the steps queued before it (the copy of its host-drawn values): the step's
    clock starts at the fetch there, else the device's time is left out of time/train_s (a fetch made 0.3 s slow
    here stands in for the wait, ten times a toy step); on CPU the fetch is batch building, left out."""
    from tiedlab.paradigms import engine

    def slow(*args):
        for item in real(*args):
            time.sleep(0.3)
            yield item

    real = engine._batches
    monkeypatch.setattr(engine, "_batches", slow)
    monkeypatch.setattr(engine, "fetch_waits", lambda device: waits)
    result = train(cfg(train=dict(BASE["train"], max_steps=10, eval_every=10, ckpt_every=10)), tmp_path)
    fetching = 10 * 0.3
    assert (result["metrics"]["time/train_s"] >= fetching) == waits, result["metrics"]["time/train_s"]


@pytest.mark.parametrize("keys,match", [
    ({"{split}/accuracy": 0.5}, r"ToyParadigm.score\(split='val'\) gave no 'val/acc' \(its primary_metric\)"),
    ({"acc": 0.5, "{split}/acc": 0.5}, r"ToyParadigm.score\(split='val'\) gave \['acc'\]: every key must start")])
def test_a_score_without_its_primary_metric_or_split_prefix_fails_the_run(tmp_path, monkeypatch, keys, match):
    """A score naming its metric otherwise ran to 'completed' with val/acc=None, and an unprefixed key of the test
    split overwrote the validation one in metrics.json."""
    from support.toy import ToyParadigm

    monkeypatch.setattr(ToyParadigm, "score", lambda self, model, data, split: {k.format(split=split): v
                                                                               for k, v in keys.items()})
    result = train(cfg(), tmp_path)
    assert result["status"] == "failed", result
    assert re.search(match, result["reason"]), result["reason"]


@pytest.mark.parametrize("restored,hang", [(False, False), (True, False), (False, True)])
def test_a_stopped_run_that_hangs_ends_itself_after_the_stop_wait(restored, hang):
    """A Ray run outlives its worker to checkpoint (SIGTERM as its death signal): one that then hung would hold its
    lock forever. From the first stop signal on it has rundir.STOP_WAIT_S (here 0.5 s) until its handlers are
    restored, then it SIGKILLs itself, also when it hangs in native code after the signal (a mutex deadlock here);
    restored in time, it lives on."""
    deadlock = ("import ctypes\n"
                "libc = ctypes.CDLL(None)\n"
                "m = ctypes.create_string_buffer(64)\n"  # PTHREAD_MUTEX_INITIALIZER: zeros
                "libc.pthread_mutex_lock(m)\n"
                "libc.pthread_mutex_lock(m)\n")  # a deadlock in native code, after the signal was handled
    code = ("import os, signal, time\n"
            "from tiedlab.paradigms import engine, rundir\n"
            "rundir.STOP_WAIT_S = 0.5\n"
            "stop = engine._StopSignals()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(0.1)\n"
            + (deadlock if hang else "")
            + f"{'stop.restore()' if restored else 'pass'}\n"
            "time.sleep(2.0)\n"
            "print(stop.received, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if restored:
        assert proc.returncode == 0 and proc.stdout.strip() == "SIGTERM", proc.stderr
    else:
        assert proc.returncode == -signal.SIGKILL and proc.stdout == "", proc.stderr
