"""One run across processes: data-parallel training under torchrun (gloo, 2 CPU processes, the toy paradigm)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tiedlab.paradigms import rundir
from tiedlab.paradigms.distributed import SameOnEveryRank, World, check_supported
from tiedlab.paradigms.engine import train

TESTS = Path(__file__).resolve().parents[1]
# A weight-tied run (depth 4), checkpointed every 20 steps. Not a DEQ here: a DEQ's solve stops when every sample
# of its batch has converged, so its slices stop at other iterations than the whole batch and the curves agree to
# the solver's tolerance (about 5e-4 relative after 60 steps), not to float rounding, which is what this tests.
ARGS = ["train.max_steps=240", "train.ckpt_every=20", "train.eval_every=60"]
# Float sums run in another order over 2 processes (each rank's mean, then the mean of the two; the gradients
# likewise): one step differs by a few float32 ulps (~1e-7 relative); 240 Adam steps on this well-conditioned
# problem keep that below 1e-5, itself far below any difference a study compares (>= 1e-2).
RTOL = 1e-5


def torchrun(args: list[str], runs: Path, nproc: int = 2, background: bool = False):
    """The README's command: ``python -m torch.distributed.run --standalone`` (a free port of its own)."""
    env = {**os.environ, "TIEDLAB_RUNS": str(runs), "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "tiedlab.paradigms.cli", "paradigm=toy", f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]",
           "train.progress=false", "train.threads=1", *args]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def run_dir(runs: Path) -> Path:
    (found,) = [p.parent for p in runs.rglob("config.yaml") if p.parent.name != ".hydra"]
    return found


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """An uninterrupted 2-process run of ARGS (its run directory)."""
    runs = tmp_path_factory.mktemp("two")
    proc = torchrun(ARGS, runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("[tiedlab] completed:") == 1  # rank 0 reports the run, once
    return run_dir(runs)


def test_two_processes_give_the_loss_curve_of_one_at_the_same_global_batch(two_processes, tmp_path):
    two = json.loads((two_processes / "metrics.json").read_text())
    assert two["status"] == "completed" and two["provenance"][-1]["world_size"] == 2
    # the same config in one process (in this one): the same fingerprint, world size 1
    cfg = OmegaConf.load(two_processes / "config.yaml")
    cfg.run_dir = str(tmp_path)
    one = train(cfg, tmp_path)
    assert one["status"] == "completed" and one["provenance"][-1]["world_size"] == 1
    assert one["fingerprint"] == two["fingerprint"]
    a, b = rundir.read_history(tmp_path), rundir.read_history(two_processes)
    assert [h["step"] for h in a] == [h["step"] for h in b] == [60, 120, 180, 240]
    for h1, h2 in zip(a, b):
        for key in ("train/loss", "train/acc", "val/loss", "core/rel_residual"):
            assert h2[key] == pytest.approx(h1[key], rel=RTOL), (h1["step"], key)
    for key in ("val/loss", "test/loss"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=RTOL), key
    for key in ("val/acc", "test/acc"):  # 200 samples each: at most one prediction may flip
        assert abs(two["metrics"][key] - one["metrics"][key]) <= 1 / 200 + 1e-9, key
    assert two["metrics"]["params/unique"] == one["metrics"]["params/unique"]
    # rank 0 alone wrote: Hydra's files once, no file of another rank
    names = {p.name for p in two_processes.iterdir()}
    assert names <= {"config.yaml", "history.jsonl", "metrics.json", "checkpoint.pt", "run.lock", ".hydra", "cli.log"}
    ckpt = torch.load(two_processes / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rng_ranks"]) == 2 and not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_killed_two_process_run_resumes_to_the_same_final_metrics(two_processes, tmp_path):
    proc = torchrun(ARGS, tmp_path, background=True)
    deadline, ckpt = time.time() + 120, None
    while time.time() < deadline and ckpt is None:
        found = [p for p in tmp_path.rglob("checkpoint.pt")]
        ckpt = found[0] if found else None
        time.sleep(0.02)
    assert ckpt is not None, "no checkpoint appeared"
    # torchrun starts each worker in a session of its own: kill them and it (a node lost, a scheduler's kill). Only
    # the children alive now: a short-lived helper seen earlier may be gone, and killing it would fail.
    workers = _children(proc.pid)
    killed_workers = 0
    for pid in [*workers, proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
            killed_workers += pid != proc.pid
        except ProcessLookupError:
            pass
    proc.wait()
    assert killed_workers == 2, workers
    killed = ckpt.parent
    status = json.loads((killed / "metrics.json").read_text())
    assert status["status"] == "running" and status["step"] < 240, status  # really killed mid-run
    resumed = torchrun(ARGS, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in (0, 1):  # every rank resumed from rank 0's checkpoint, at the same step
        assert f"resuming {killed} at step " in resumed.stderr and f"(rank {rank} of 2)" in resumed.stderr
    a = json.loads((two_processes / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["status"] == "completed" and [s["world_size"] for s in b["provenance"]] == [2, 2]
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "core/rel_residual"):
        assert a["metrics"][key] == b["metrics"][key], key
    assert [h["step"] for h in rundir.read_history(killed)] == [60, 120, 180, 240]
    assert rundir.read_history(killed)[-1]["train/loss"] == rundir.read_history(two_processes)[-1]["train/loss"]


def test_a_batch_that_does_not_split_over_the_processes_is_a_one_line_error(tmp_path):
    proc = torchrun(["train.batch_size=33", "train.max_steps=5"], tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[tiedlab]")]
    assert errors == ["[tiedlab] error: train.batch_size=33 does not split evenly over 2 processes (WORLD_SIZE=2); "
                      "use a multiple of 2"], proc.stderr[-3000:]
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize("paradigm,why", [("graph", "whole graph as one batch"), ("ssl", "SimCLR's negatives")])
def test_paradigms_whose_loss_is_not_a_per_sample_mean_are_refused(paradigm, why):
    with pytest.raises(SameOnEveryRank, match=f"paradigm '{paradigm}' cannot train data-parallel over 2 processes: .*{why}"):
        check_supported(World(rank=0, size=2), paradigm, 128)
    check_supported(World(), paradigm, 33)  # one process: nothing to check


def test_shard_takes_this_ranks_contiguous_slice():
    x, y = torch.arange(12).reshape(6, 2), torch.arange(6)
    assert torch.equal(World(rank=1, size=3).shard(x), x[2:4])
    xs, ys = World(rank=0, size=2).shard((x, y))
    assert torch.equal(xs, x[:3]) and torch.equal(ys, y[:3])
    assert torch.equal(World(rank=1, size=2).shard({"y": y})["y"], y[3:])
    assert World().shard("anything") == "anything"  # one process: the batch as it is
    with pytest.raises(ValueError, match="batch of 6 samples does not split evenly over 4 processes"):
        World(rank=0, size=4).shard(x)
    with pytest.raises(ValueError, match="type object cannot be split"):
        World(rank=0, size=2).shard(object())


@pytest.mark.parametrize("code,status,printed", [(None, 0, ""), (3, 3, ""), ("a message", 1, "a message")])
def test_a_worker_leaves_through_its_exit_handlers_then_exits_at_once(code, status, printed, tmp_path):
    """``exit_process``: buffered output is written, the exit handlers run (``_leave`` is one), and nothing of the
    interpreter's teardown does (an object's finalizer there never runs), whatever code ``SystemExit`` carried."""
    script = f"""
import atexit, sys
from tiedlab.paradigms.distributed import exit_process

class Teardown:
    def __del__(self):
        open({str(tmp_path / 'teardown')!r}, 'w').close()

keep = Teardown()
atexit.register(lambda: open({str(tmp_path / 'handler')!r}, 'w').close())
sys.stdout.write('buffered')
exit_process({code!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr.strip()) == (status, "buffered", printed)
    assert (tmp_path / "handler").exists() and not (tmp_path / "teardown").exists()
