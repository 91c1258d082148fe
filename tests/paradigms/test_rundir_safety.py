"""Run directories that cannot be hijacked, overwritten or redone, errors in one line, runs that say where they
came from (the reliability issue): each case here failed before the fix."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tiedlab.paradigms import engine, rundir
from tiedlab.paradigms.engine import train

from support.toy import with_changes

TESTS = Path(__file__).resolve().parents[1]
TOY = "support.toy:ToyParadigm"
BASE = dict(paradigm=TOY, data={}, model={"width": 16},
            train=dict(batch_size=128, epochs=None, max_steps=10, eval_every=5, ckpt_every=5, progress=False,
                       threads=1),
            optim=dict(lr=0.01))


def cfg(**changes):
    return with_changes(BASE, **changes)


def cli(args: list[str], runs: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tiedlab.paradigms.cli", "paradigm=toy",
           f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]", "train.progress=false", "train.threads=1",
           "train.max_steps=6", "train.eval_every=3", "train.ckpt_every=3", "model.width=8", *args]
    full_env = {**os.environ, "TIEDLAB_RUNS": str(runs), "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1",
                **(env or {})}
    full_env.pop("TIEDLAB_TRACEBACK", None) if env is None or "TIEDLAB_TRACEBACK" not in env else None
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=240, cwd=runs.parent)


class Payload:
    """Unpickling this runs ``touch MARKER``: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------------------- checkpoints
def test_planted_pickle_payload_in_a_checkpoint_does_not_run(tmp_path):
    run = tmp_path / "run"
    config = engine.as_config(cfg())
    run.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"format": rundir.CHECKPOINT_FORMAT, "fingerprint": engine.fingerprint(config),
                "model": Payload(marker)}, run / rundir.CHECKPOINT)
    with pytest.raises(rundir.CheckpointError, match=str(run / rundir.CHECKPOINT)):
        train(config, run)
    assert not marker.exists(), "the checkpoint's pickle payload ran"
    # the same file through the plain pickle loader would have run it: the test plants a live payload
    torch.load(run / rundir.CHECKPOINT, weights_only=False)
    assert marker.exists()


def test_checkpoint_holds_only_tensors_and_plain_values_and_resumes_exactly(tmp_path):
    """A run checkpointed at step 5 and resumed ends where an uninterrupted one does (RNG states included),
    and its checkpoint loads with weights_only=True."""
    whole = train(cfg(), tmp_path / "whole")["metrics"]
    part = train(cfg(**{"train.time_limit_s": 0.0}), tmp_path / "part")  # stops after its first step
    assert part["status"] == "completed" and part["step"] == 1
    state = torch.load(tmp_path / "part" / rundir.CHECKPOINT, weights_only=True)
    assert isinstance(state["rng"]["python"], list) and torch.is_tensor(state["rng"]["numpy"]["keys"])
    (tmp_path / "part" / rundir.METRICS).unlink()  # pretend it was killed after that checkpoint
    (tmp_path / "part" / rundir.CONFIG).unlink()
    resumed = train(cfg(), tmp_path / "part")
    assert resumed["status"] == "completed"
    assert resumed["metrics"]["val/loss"] == whole["val/loss"] and resumed["metrics"]["test/acc"] == whole["test/acc"]


# ------------------------------------------------------------------------------- finished runs
def test_a_finished_run_is_not_overwritten_by_another_config(tmp_path):
    train(cfg(), tmp_path)
    (tmp_path / rundir.CHECKPOINT).unlink()
    before = (tmp_path / rundir.METRICS).read_bytes()
    with pytest.raises(rundir.RunDirError, match=r"holds a completed run of another config"):
        train(cfg(**{"optim.lr": 0.02}), tmp_path)
    assert (tmp_path / rundir.METRICS).read_bytes() == before


def test_a_finished_run_is_not_redone(tmp_path, monkeypatch):
    train(cfg(), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != rundir.LOCK}

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished run loaded its data again")

    monkeypatch.setattr("support.toy.ToyParadigm.build_data", no_loading)
    result = train(cfg(), tmp_path)
    assert result["status"] == "completed"
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != rundir.LOCK}
    assert after == before  # memory/peak_mb and every other file untouched


def test_ignored_options_warn_and_stay_out_of_the_fingerprint(tmp_path, capsys):
    plain = engine.fingerprint(engine.as_config(cfg()))
    assert engine.fingerprint(engine.as_config(cfg(**{"grad.mode": "phantom", "solver.name": "broyden"}))) == plain
    assert engine.fingerprint(engine.as_config(cfg(**{"mask.sparsity": 0.5}))) == plain
    assert engine.fingerprint(engine.as_config(cfg(**{"block.mode": "deq"}))) != \
        engine.fingerprint(engine.as_config(cfg(**{"block.mode": "deq", "grad.mode": "phantom"})))
    train(cfg(**{"grad.mode": "phantom", "mask.sparsity": 0.5, "train.max_steps": 2}), tmp_path)
    err = capsys.readouterr().err
    assert "[tiedlab] warning: grad.mode=phantom ignored: block.mode=tied" in err
    assert "[tiedlab] warning: mask.sparsity=0.5 ignored: mask.mode=none" in err


@pytest.mark.parametrize("changes,named", [
    ({"block.mode": "deq", "grad.steps": 3}, "grad.steps ignored: grad.mode=ift does not read them"),
    ({"block.mode": "deq", "grad.mode": "phantom", "grad.tol": 1e-5, "grad.max_iter": 40},
     "grad.max_iter, grad.tol ignored: grad.mode=phantom"),
    ({"block.mode": "deq", "grad.mode": "onestep", "grad.steps": 2}, "grad.steps ignored: grad.mode=onestep"),
    ({"block.mode": "deq", "train.deq_warmup_depth": 2}, "train.deq_warmup_depth ignored: train.deq_warmup_steps=0"),
    ({"block.mode": "deq", "block.depth": 7}, "block.depth ignored: a DEQ with mask.mode=none (no distinct or"),
    ({"block.mode": "deq", "block.depth": 7, "mask.mode": "shared", "mask.sparsity": 0.5},
     "block.depth ignored: a DEQ with mask.mode=shared"),
    ({"block.mode": "deq", "block.depth": 7, "train.deq_warmup_steps": 5, "train.deq_warmup_depth": 3},
     "block.depth ignored"),
    ({"block.mode": "deq", "block.depth": 7, "mask.mode": "distinct", "mask.sparsity": 0.0},  # keeps every weight
     "block.depth ignored: a DEQ with mask.mode=distinct (no distinct or disjoint masks"),
    ({"equilibrium.rel_residual": 0.1}, "equilibrium.rel_residual ignored: equilibrium health is measured on a DEQ"),
    ({"optim.momentum": 0.5}, "optim.momentum ignored: optim.name=adamw does not read them"),
    ({"optim.name": "sgd", "optim.betas": [0.8, 0.9]}, "optim.betas ignored: optim.name=sgd"),
    ({"mask.mode": "distinct", "mask.sparsity": 0.5, "mask.n": 1}, "mask.n ignored: mask.kind=unstructured"),
    ({"logger.project": "x"}, "logger.project ignored: logger.name=local"),
])
def test_options_the_run_does_not_read_are_named(changes, named):
    from tiedlab.paradigms.config import ignored_options

    overrides = [f"{k}={v}" for k, v in changes.items()]
    messages = ignored_options(engine.as_config(cfg(**changes)), overrides)
    assert any(m.startswith(named) for m in messages), messages
    read = {k: v for k, v in changes.items() if k in ("block.mode", "grad.mode", "optim.name", "mask.mode",
                                                       "mask.sparsity")}
    assert ignored_options(engine.as_config(cfg(**read)), [f"{k}={v}" for k, v in read.items()]) == []


@pytest.mark.parametrize("changes", [
    {"block.mode": "deq", "block.depth": 4, "mask.mode": "distinct", "mask.sparsity": 0.5},  # K = 4 masks
    {"block.mode": "deq", "block.depth": 4, "mask.mode": "disjoint"},
    {"block.mode": "deq", "block.depth": 4, "train.deq_warmup_steps": 5},  # the warm-up unrolls 4 layers
    {"block.mode": "tied", "block.depth": 4}])
def test_a_depth_the_run_reads_is_not_named(changes):
    from tiedlab.paradigms.config import ignored_options

    assert ignored_options(engine.as_config(cfg(**changes)), [f"{k}={v}" for k, v in changes.items()]) == []


def test_zero_threads_is_refused_not_every_core():
    with pytest.raises(ValueError, match=r"train.threads=0 must be >= 1 or null"):
        engine.check_values(engine.as_config(cfg(**{"train.threads": 0})))


def test_mask_min_dim_is_fingerprinted_without_a_mask_when_a_norm_reads_it(tmp_path):
    """mask.min_dim also picks the weights a block norm normalises (min_dim=1: the biases too): with a norm it
    changes the model, so it is neither 'ignored' nor left out of the fingerprint; without one it is both."""
    fp = lambda **kw: engine.fingerprint(engine.as_config(cfg(**kw)))
    assert fp(**{"mask.min_dim": 1}) == fp()  # no mask, no norm: ignored
    assert fp(**{"block.norm": "weight", "mask.min_dim": 1}) != fp(**{"block.norm": "weight"})
    from tiedlab.paradigms.config import ignored_options

    assert ignored_options(engine.as_config(cfg(**{"block.norm": "weight", "mask.min_dim": 1})),
                           ["block.norm=weight", "mask.min_dim=1"]) == []
    assert ignored_options(engine.as_config(cfg(**{"mask.min_dim": 1})), ["mask.min_dim=1"]) == [
        "mask.min_dim ignored: mask.mode=none (choose mask=distinct or mask=shared)"]
    train(cfg(**{"block.norm": "weight", "mask.min_dim": 1, "train.max_steps": 2}), tmp_path / "norm")
    # a run fingerprinted under version 2 (min_dim left out) is still recognised as itself
    metrics = json.loads((tmp_path / "norm" / rundir.METRICS).read_text())
    config = yaml.safe_load((tmp_path / "norm" / rundir.CONFIG).read_text())
    metrics.update(fingerprint_version=2, fingerprint=rundir.fingerprint(config, version=2))
    assert rundir.same_config(config, metrics) and metrics["fingerprint"] != rundir.fingerprint(config)


# ------------------------------------------------------------------------------------------ the lock
def test_a_second_process_on_a_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tiedlab.paradigms import rundir\n"
         f"with rundir.hold_lock(rundir.Path({str(run)!r})):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.RunLockedError, match=rf"in use by another process \(pid {holder.pid} on "):
            train(cfg(), run)
        assert not (run / rundir.METRICS).exists()
    finally:
        holder.kill()
        holder.wait()
    assert train(cfg(), run)["status"] == "completed"  # the kernel released the dead holder's lock


def test_the_same_command_twice_trains_once_and_the_second_says_who_holds_it(tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "TIEDLAB_RUNS": str(runs), "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "tiedlab.paradigms.cli", "paradigm=toy",
            f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]", "train.progress=false", "train.threads=1",
            "train.max_steps=1000000", "train.eval_every=100", "model.width=8", "run_dir=" + str(tmp_path / "run")]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / rundir.METRICS).exists():
            assert time.monotonic() < deadline and first.poll() is None, "the first run never started"
            time.sleep(0.05)
        record = {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()}
        assert "- train.max_steps=1000000\n" in record["overrides.yaml"]
        second = subprocess.run([*args, "train.time_limit_s=3600"], env=env, capture_output=True, text=True,
                                timeout=240)
        assert second.returncode != 0
        assert "Traceback" not in second.stderr
        assert f"is in use by another process (pid {first.pid} on" in second.stderr
        assert first.poll() is None  # still training, undisturbed
        # Hydra's record of the first command is the first's (Hydra wrote the second's over it before the lock)
        assert {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()} == record
    finally:
        first.kill()
        first.wait(timeout=60)
    steps = [r["step"] for r in rundir.read_history(tmp_path / "run")]
    assert steps == sorted(set(steps))  # every record once: only one process wrote


def test_a_run_dir_given_holds_the_commands_record_and_log_and_nothing_is_written_elsewhere(tmp_path):
    """``run_dir=X``: the command's record (.hydra/) and log (cli.log) are X's, and Hydra makes no directory the
    other overrides name (it did, another run's if one had that name, and wrote both there). A finished run's
    record stays."""
    runs, run = tmp_path / "runs", tmp_path / "elsewhere" / "run"
    done = cli([f"run_dir={run}"], runs)
    assert done.returncode == 0, done.stderr
    assert not runs.exists()
    log = (run / "cli.log").read_text()
    assert log.startswith(f"[tiedlab] completed: {run} ") and log.count("\n") == 1  # its outcome line
    assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())[-1] == f"run_dir={run}"
    assert yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["output_dir"] == str(run)
    record = (run / ".hydra" / "overrides.yaml").read_text()
    again = cli([f"run_dir={run}", "train.time_limit_s=3600"], runs)  # a finished run: nothing is rewritten
    assert again.returncode == 0, again.stderr
    assert (run / ".hydra" / "overrides.yaml").read_text() == record and (run / "cli.log").read_text() == log


def test_run_dir_edge_cases_are_one_line_or_where_they_say(tmp_path):
    runs = tmp_path / "runs"
    (tmp_path / "afile").write_text("")
    for bad, says in ((tmp_path / "afile", "File exists"), ("", "run_dir='': give a directory"),
                      ("null", "run_dir=None: give a directory")):
        refused = cli([f"run_dir={bad}"], runs)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr.startswith("[tiedlab] error: ") and says in refused.stderr, refused.stderr
        assert not (tmp_path / "cli.log").exists()  # no run directory: not the current folder's log either
    # a run_dir under Hydra's own directory: Hydra's stays the one the overrides name, the run is below it
    nested = cli(["run_dir=${hydra:runtime.output_dir}/sub"], runs)
    assert nested.returncode == 0, nested.stderr
    (found,) = runs.rglob("metrics.json")
    assert found.parent.name == "sub" and (found.parent / "cli.log").is_file()
    # an explicit hydra.run.dir (with + or ++ too) is Hydra's directory; the run's log is the run's
    both = cli([f"run_dir={tmp_path / 'r'}", f"++hydra.run.dir={tmp_path / 'h'}"], runs)
    assert both.returncode == 0 and (tmp_path / "r" / "cli.log").is_file() and not (tmp_path / "h" / "cli.log").exists()


def test_a_command_refused_by_another_configs_run_writes_nothing_there(tmp_path):
    """Not its error line, and no log at all: Hydra's log handler opened (created) cli.log before the lock."""
    run = tmp_path / "run"
    assert cli([f"run_dir={run}"], tmp_path / "runs").returncode == 0
    (run / "cli.log").write_text("the run's own lines\n")
    for other in (["train.max_steps=7"], ["resume=false"]):
        refused = cli([f"run_dir={run}", *other], tmp_path / "runs")
        assert refused.returncode == 1 and refused.stderr.startswith("[tiedlab] error: "), refused.stderr
        assert (run / "cli.log").read_text() == "the run's own lines\n"
    (run / "cli.log").unlink()
    refused = cli([f"run_dir={run}", "train.max_steps=7"], tmp_path / "runs")
    assert refused.returncode == 1 and "run of another config" in refused.stderr
    assert not (run / "cli.log").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_run_files_have_the_permissions_of_a_plain_write(tmp_path, umask, mode):
    """A run's files are written through a temp file (mkstemp: 0600): they get what the umask gives a plain write,
    so that a group can read a shared run folder."""
    old = os.umask(umask)
    try:
        train(cfg(), tmp_path / "run")
    finally:
        os.umask(old)
    for name in (rundir.CONFIG, rundir.METRICS, rundir.CHECKPOINT, rundir.HISTORY, rundir.LOCK):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == mode, name


def test_a_planted_link_for_the_commands_record_is_refused(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (run / ".hydra").symlink_to(elsewhere)
    refused = cli([f"run_dir={run}"], tmp_path / "runs")
    assert refused.returncode == 1
    assert f"[tiedlab] error: {run / '.hydra'} is a symbolic link" in refused.stderr
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------------------------------ failures
def test_a_planted_link_for_the_commands_log_is_refused_and_its_target_untouched(tmp_path):
    """A link to a file that exists stays unwritten, and one to a file that does not is not created through it
    (Hydra's handler created it: opening is enough)."""
    run, target, missing = tmp_path / "run", tmp_path / "target.txt", tmp_path / "missing.txt"
    run.mkdir()
    target.write_text("mine\n")
    for planted in (target, missing):
        (run / "cli.log").unlink(missing_ok=True)
        (run / "cli.log").symlink_to(planted)
        refused = cli([f"run_dir={run}"], tmp_path / "runs")
        assert refused.returncode == 1
        assert f"[tiedlab] error: {run / 'cli.log'} is a symbolic link" in refused.stderr, refused.stderr
    assert target.read_text() == "mine\n" and not missing.exists()


def test_a_planted_fifo_for_the_commands_log_is_refused_not_waited_on(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "cli.log")
    refused = cli([f"run_dir={run}"], tmp_path / "runs")  # hung, holding the run's lock, until killed
    assert refused.returncode == 1
    assert f"[tiedlab] error: {run / 'cli.log'} is not a regular file" in refused.stderr, refused.stderr


def test_an_error_in_reading_the_runs_own_checkpoint_is_in_its_log(tmp_path):
    run = tmp_path / "run"
    missing = cli([f"run_dir={run}", "resume=true"], tmp_path / "runs")
    assert missing.returncode == 1 and "resume=true but" in missing.stderr
    assert (run / "cli.log").read_text() == missing.stderr
    assert cli([f"run_dir={run}", "train.max_steps=3"], tmp_path / "runs").returncode == 0
    (run / "metrics.json").write_text(json.dumps({**json.loads((run / "metrics.json").read_text()),
                                                  "status": "interrupted"}))  # killed after its checkpoint
    (run / "checkpoint.pt").write_bytes(b"garbage")
    corrupt = cli([f"run_dir={run}", "train.max_steps=3"], tmp_path / "runs")
    assert corrupt.returncode == 1 and "corrupt" in corrupt.stderr, corrupt.stderr
    lines = (run / "cli.log").read_text().splitlines()
    assert lines[0] == missing.stderr.strip() and lines[1].startswith("[tiedlab] completed: ")
    assert lines[2:] == [corrupt.stderr.strip()]


def test_the_command_log_takes_logging_records_only_while_open_and_notes_wait_for_it(tmp_path):
    log = rundir.RunLog()
    log.note("before")
    logging.getLogger("tiedlab.test").warning("not yet")
    assert not (tmp_path / "cli.log").exists()
    log.open(tmp_path)
    try:
        logging.getLogger("tiedlab.test").warning("now")
        log.note("after")
    finally:
        log.close()
    logging.getLogger("tiedlab.test").warning("closed")
    lines = (tmp_path / "cli.log").read_text().splitlines()
    assert (tmp_path / "cli.log").stat().st_mode & 0o777 == 0o666 & ~rundir._umask()
    assert lines[0] == "before" and lines[1].endswith("[tiedlab.test][WARNING] - now") and lines[2:] == ["after"]
    never = rundir.RunLog()
    never.note("dropped")
    never.close()
    assert log not in logging.getLogger().handlers


def test_a_write_error_names_the_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=rf"No space left on device while writing {tmp_path / 'metrics.json'}"):
        rundir.write_json(tmp_path / "metrics.json", {"status": "running"})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp file left behind


def test_a_full_disk_records_failed_with_the_reason(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "save_checkpoint", full)
    result = train(cfg(), tmp_path)
    assert result["status"] == "failed" and "No space left on device" in result["reason"]
    on_disk = json.loads((tmp_path / rundir.METRICS).read_text())
    assert on_disk["status"] == "failed" and "No space left on device" in on_disk["reason"]


@pytest.mark.parametrize("args,message", [
    (["optim.lr=-1"], "[tiedlab] error: optim.lr=-1.0 must be > 0"),
    (["block.mode=implicit"], "[tiedlab] error: block mode 'implicit'"),
    (["data.fail_after=2"], "[tiedlab] failed: "),
])
def test_errors_print_one_line_and_exit_non_zero(tmp_path, args, message):
    done = cli(args, tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("[tiedlab] ")]
    assert any(line.startswith(message) for line in lines), done.stderr[-2000:]
    if args == ["data.fail_after=2"]:
        assert "RuntimeError at step 2: planted failure" in done.stderr
        (trace,) = tmp_path.rglob(rundir.TRACEBACK)  # the crash's traceback is kept in the run directory
        assert "Traceback" in trace.read_text() and str(trace) in done.stderr


def test_a_corrupt_data_file_is_one_line_naming_it(tmp_path):
    root = tmp_path / "data"
    (root / "planetoid").mkdir(parents=True)
    (root / "planetoid" / "cora.npz").write_bytes(os.urandom(4096))
    env = {**os.environ, "TIEDLAB_DATA": str(root), "TIEDLAB_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    env.pop("TIEDLAB_TRACEBACK", None)
    done = subprocess.run([sys.executable, "-m", "tiedlab.paradigms.cli", "paradigm=graph", "data=cora",
                           "train.max_steps=2", "train.progress=false"], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("[tiedlab] error:")]
    assert str(root / "planetoid" / "cora.npz") in line and "allow_pickle" not in line


def test_the_traceback_is_one_variable_away(tmp_path):
    done = cli(["optim.lr=-1"], tmp_path, env={"TIEDLAB_TRACEBACK": "1", "HYDRA_FULL_ERROR": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "optim.lr=-1.0 must be > 0" in done.stderr


def test_a_study_with_a_failed_run_counts_it_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    from tiedlab.paradigms import study as cli_module

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "toy.yaml").write_text(yaml.safe_dump({"name": "toy", "grids": [{
        "name": "toy_grid", "sweep": {"data.fail_after": ["null", 2]},
        "overrides": ["paradigm=toy", f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]",
                      "train.max_steps=4", "train.eval_every=2", "train.threads=1", "model.width=8"]}]}))
    monkeypatch.setattr(cli_module, "study_dir", lambda: studies)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli_module.study(["toy", "--runs", str(tmp_path / "runs"), "--no-report"]) == 1
    out = capsys.readouterr().out
    assert "runs: 1 done, 0 not_at_equilibrium, 0 diverged, 1 failed, 0 running, 0 stopped, 0 pending" in out


# ---------------------------------------------------------------------------------------- provenance
def test_every_run_records_where_it_came_from(tmp_path):
    result = train(cfg(**{"train.time_limit_s": 0.0}), tmp_path)
    (tmp_path / rundir.METRICS).unlink()
    result = train(cfg(), tmp_path, overrides=["optim.lr=0.01"])  # resumed from the checkpoint by a second process
    sessions = result["provenance"]
    assert len(sessions) == 1  # metrics.json (which lists the earlier processes) was deleted: only this one
    p = sessions[0]
    assert p["overrides"] == ["optim.lr=0.01"]
    for key in ("commit", "dirty", "packages", "host", "device", "threads", "command", "started", "ended"):
        assert key in p, key
    assert p["device"] == "cpu" and p["threads"] == 1 and p["ended"] >= p["started"]
    assert p["niceness"] == os.nice(0) and p["load_average"] >= 0  # the priority and load it trained under
    assert p["packages"]["torch"] == torch.__version__.split("+")[0] or p["packages"]["torch"] in torch.__version__
    assert len(p["commit"]) >= 7 and isinstance(p["dirty"], bool)  # tests run from a git checkout
    assert json.loads((tmp_path / rundir.METRICS).read_text())["provenance"] == sessions


def test_a_run_records_how_many_runs_its_launcher_trains_at_once_on_its_device(tmp_path, monkeypatch):
    """A study's launcher says it through the environment (``launch.sharing_env``); a run started by hand, or by a
    launcher that does not know (a CPU task on a Slurm node), records None, never an inherited value."""
    from tiedlab.paradigms import launch, provenance

    monkeypatch.setenv(provenance.PROCESSES_PER_DEVICE_ENV, "7")  # a shell that kept a study's value
    assert provenance.PROCESSES_PER_DEVICE_ENV not in launch.sharing_env(dict(os.environ), None)
    monkeypatch.setattr(os, "environ", launch.sharing_env(dict(os.environ), 2))
    assert train(cfg(), tmp_path / "shared")["provenance"][0]["processes_per_device"] == 2
    monkeypatch.setattr(os, "environ", launch.sharing_env(dict(os.environ), None))
    assert train(cfg(), tmp_path / "alone")["provenance"][0]["processes_per_device"] is None
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(provenance.PROCESSES_PER_DEVICE_ENV, bad)
        with pytest.raises(ValueError, match=f"TIEDLAB_PROCESSES_PER_DEVICE='{bad}' must be a positive integer"):
            provenance.processes_per_device()


def test_a_resumed_run_keeps_every_process_in_its_provenance(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(rundir, "save_checkpoint", full)
        assert train(cfg(), tmp_path)["status"] == "failed"
    result = train(cfg(), tmp_path)  # the failed run is retried in the same directory
    assert result["status"] == "completed" and len(result["provenance"]) == 2


# ------------------------------------------------------------------------------------------- report
def test_the_report_refuses_a_config_edited_after_the_run(tmp_path):
    from tiedlab.reports.load import load_run

    train(cfg(), tmp_path)
    assert load_run(tmp_path).status == "completed"
    config = yaml.safe_load((tmp_path / rundir.CONFIG).read_text())
    assert rundir.fingerprint(config) == json.loads((tmp_path / rundir.METRICS).read_text())["fingerprint"]
    config["optim"]["lr"] = 0.5
    (tmp_path / rundir.CONFIG).write_text(yaml.safe_dump(config))
    run = load_run(tmp_path)
    assert run.status == "unreadable" and "does not match the fingerprint in metrics.json" in run.reason
    assert run.key == {"dir": str(tmp_path)}  # not filed under the edited config's cell


# ------------------------------------------------------------------------------ review follow-ups
def test_a_run_stopped_by_its_time_limit_continues_with_a_larger_one(tmp_path):
    part = train(cfg(**{"train.time_limit_s": 0.0}), tmp_path)
    assert part["status"] == "completed" and part["step"] == 1
    again = train(cfg(**{"train.time_limit_s": 0.0}), tmp_path)  # the same limit: nothing to do
    assert again["step"] == 1
    whole = train(cfg(**{"train.time_limit_s": None}), tmp_path)
    assert whole["status"] == "completed" and whole["step"] == whole["total_steps"] == 10


def test_runs_fingerprinted_before_version_2_still_resume_and_report(tmp_path):
    from tiedlab.reports.load import load_run

    train(cfg(), tmp_path)
    metrics = json.loads((tmp_path / rundir.METRICS).read_text())
    config = yaml.safe_load((tmp_path / rundir.CONFIG).read_text())
    del metrics["fingerprint_version"]  # what a run written by the previous tiedlab holds
    metrics["fingerprint"] = rundir.fingerprint(config, version=1)
    (tmp_path / rundir.METRICS).write_text(json.dumps(metrics))
    assert train(cfg(), tmp_path)["fingerprint"] == metrics["fingerprint"]  # nothing to do, not "another config"
    assert load_run(tmp_path).status == "completed"
    with pytest.raises(rundir.RunDirError, match="another config"):
        train(cfg(**{"optim.lr": 0.02}), tmp_path)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_unfinished_run_of_an_older_fingerprint_version_resumes_from_its_checkpoint(tmp_path, version):
    """metrics.json and the checkpoint of a run stopped under an older version hold that version's fingerprint: the
    checkpoint is checked at it too, as metrics.json is (it was checked at the current version, and every stopped
    run of another version failed to resume, 'another config', and was relaunched by each study to fail again)."""
    part = train(cfg(**{"block.norm": "spectral", "train.time_limit_s": 0.0}), tmp_path)
    assert part["step"] == 1
    config = yaml.safe_load((tmp_path / rundir.CONFIG).read_text())
    old = rundir.fingerprint(config, version=version)
    assert old != rundir.fingerprint(config)  # min_dim fingerprinted from version 3, ckpt_every until it
    metrics = json.loads((tmp_path / rundir.METRICS).read_text())
    metrics.update(fingerprint=old, **({"fingerprint_version": version} if version > 1 else {}))
    if version == 1:
        del metrics["fingerprint_version"]  # runs before versions were recorded
    (tmp_path / rundir.METRICS).write_text(json.dumps(metrics))
    state = torch.load(tmp_path / rundir.CHECKPOINT, weights_only=True)
    torch.save({**state, "fingerprint": old}, tmp_path / rundir.CHECKPOINT)
    # a resume that dies before its first checkpoint (metrics.json rewritten under the current version by then)
    # still leaves a run that resumes: the old checkpoint was rewritten under the current fingerprint first
    real_run = engine._Run

    def dies(*args, **kwargs):
        real_run(*args, **kwargs)
        raise RuntimeError("killed before the first checkpoint (planted)")

    engine._Run = dies
    try:
        with pytest.raises(RuntimeError, match="planted"):
            train(cfg(**{"block.norm": "spectral", "train.time_limit_s": None}), tmp_path)
    finally:
        engine._Run = real_run
    assert json.loads((tmp_path / rundir.METRICS).read_text())["fingerprint"] == rundir.fingerprint(config)
    whole = train(cfg(**{"block.norm": "spectral", "train.time_limit_s": None}), tmp_path)
    assert whole["status"] == "completed" and whole["step"] == whole["total_steps"] == 10
    torch.save({**state, "fingerprint": "0" * 16}, tmp_path / rundir.CHECKPOINT)  # still refused: another config
    metrics.update(status="interrupted")
    (tmp_path / rundir.METRICS).write_text(json.dumps(metrics))
    with pytest.raises(rundir.CheckpointError, match="belongs to a run with a different config"):
        train(cfg(**{"block.norm": "spectral", "train.time_limit_s": None}), tmp_path)


def test_a_crash_in_the_final_evaluation_records_failed(tmp_path, monkeypatch):
    from support.toy import ToyParadigm

    real = ToyParadigm.evaluate

    def broken(self, model, data, split):
        if split == "test":
            raise RuntimeError("CUDA out of memory (planted)")
        return real(self, model, data, split)

    monkeypatch.setattr(ToyParadigm, "evaluate", broken)
    result = train(cfg(), tmp_path)
    assert result["status"] == "failed" and "in the final evaluation: CUDA out of memory" in result["reason"]
    assert json.loads((tmp_path / rundir.METRICS).read_text())["status"] == "failed"
    assert "Traceback" in (tmp_path / rundir.TRACEBACK).read_text()


def test_numpy_metrics_from_a_paradigm_keep_the_checkpoint_loadable(tmp_path, monkeypatch):
    import numpy as np
    from support.toy import ToyParadigm

    real = ToyParadigm.training_step

    def numpy_metrics(self, model, batch):
        out = real(self, model, batch)
        out.metrics["train/acc"] = np.float64(out.metrics["train/acc"])
        return out

    monkeypatch.setattr(ToyParadigm, "training_step", numpy_metrics)
    train(cfg(**{"train.time_limit_s": 0.0, "train.eval_every": 100}), tmp_path)  # checkpoint with a window
    assert rundir.load_checkpoint(tmp_path, engine.fingerprint(engine.as_config(cfg(**{"train.eval_every": 100}))))


def test_a_planted_symlink_in_a_run_directory_is_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK).symlink_to(victim)
    with pytest.raises(rundir.RunDirError, match="symbolic link"):
        train(cfg(), run)
    (run / rundir.LOCK).unlink()
    (run / rundir.CONFIG).symlink_to(victim)
    (run / rundir.HISTORY).symlink_to(victim)
    assert train(cfg(), run)["status"] == "completed"  # the links are replaced, their target never written
    assert victim.read_text() == "precious"
    assert not (run / rundir.CONFIG).is_symlink() and not (run / rundir.HISTORY).is_symlink()
    with pytest.raises(OSError):  # appending to a linked history.jsonl is refused, not followed
        rundir.append_history(_linked_history(tmp_path, victim), {"step": 1})
    assert victim.read_text() == "precious"


def _linked_history(folder: Path, target: Path) -> Path:
    run = folder / "linked"
    run.mkdir()
    (run / rundir.HISTORY).symlink_to(target)
    return run


def test_non_finite_numbers_are_written_as_strings_at_any_depth(tmp_path):
    """JSON has no NaN: metrics.json (an equilibrium's measured values are nested) and history.jsonl stay strict
    JSON that any reader parses, with "nan"/"inf" strings the report reads back as numbers."""
    import math

    metrics = {"loss": math.nan, "equilibrium": {"measured": {"grad_cosine": math.nan, "rel_residual": 0.01}},
               "curve": [1.0, math.inf]}
    rundir.write_json(tmp_path / "metrics.json", metrics)
    strict = json.loads((tmp_path / "metrics.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.json"))
    assert strict == {"loss": "nan", "equilibrium": {"measured": {"grad_cosine": "nan", "rel_residual": 0.01}},
                      "curve": [1.0, "inf"]}
    rundir.append_history(tmp_path, {"step": 1, "eq": {"spectral_norm": -math.inf}})
    line = (tmp_path / rundir.HISTORY).read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == {"eq": {"spectral_norm": "-inf"}, "step": 1}


def test_a_resume_that_would_change_precision_is_refused(tmp_path):
    """train.device is bookkeeping, but with train.amp it picks bf16 autocast (CUDA) or fp32: a run started on a
    GPU does not go on in fp32 on a CPU (nor the other way), while a run without amp may move."""
    from tiedlab.paradigms.engine import check_precision
    from tiedlab.paradigms.rundir import precision

    on_gpu = {"precision": "bf16 autocast"}
    with pytest.raises(rundir.RunDirError, match=r"checkpoint was trained in bf16 autocast and would resume in fp32"):
        check_precision(engine.as_config(cfg(**{"train.device": "cpu", "train.amp": True})), on_gpu, tmp_path)
    check_precision(engine.as_config(cfg(**{"train.device": "cpu", "train.amp": False})), {"precision": "fp32"},
                    tmp_path)
    check_precision(engine.as_config(cfg(**{"train.device": "cpu"})), {}, tmp_path)  # an older checkpoint
    train(cfg(**{"train.device": "cpu", "train.max_steps": 2}), tmp_path / "run")
    saved = torch.load(tmp_path / "run" / rundir.CHECKPOINT, weights_only=True)
    assert saved["precision"] == "fp32"
    assert (precision("cuda:1", True), precision("cpu", True), precision("cuda", False)) == (
        "bf16 autocast", "fp32", "fp32")


def test_a_resume_under_other_code_is_named(tmp_path, capsys):
    from tiedlab.paradigms.engine import warn_other_code
    from tiedlab.paradigms.provenance import code_version

    here = code_version()
    warn_other_code([{"commit": here["commit"], "dirty": here["dirty"]}, here], tmp_path)
    quiet = capsys.readouterr().err
    assert ("warning" in quiet) == bool(here["dirty"])  # a dirty tree is never the same code
    warn_other_code([{"commit": "0123abc", "dirty": False}, here], tmp_path)
    assert "last trained at commit 0123abc, under" in capsys.readouterr().err
    warn_other_code([here], tmp_path)  # a fresh start: nothing to compare with
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("paradigm,overrides,named", [
    ("ssl", ["model.method=byol", "model.temperature=0.2"], "model.temperature ignored: model.method=byol"),
    ("ssl", ["model.method=vicreg", "model.momentum_base=0.9"], "model.momentum_base ignored: model.method=vicreg"),
    ("vision", ["data=fashion-mnist", "data.crop_padding=2"], "data.crop_padding ignored: the augmentation in effect (none)"),
    ("vision", ["data=cifar10", "data.augment=flip", "data.crop_padding=2"], "data.crop_padding ignored"),
    ("graph", ["data=cora", "model.pool=mean"], "model.pool ignored: a node task classifies nodes"),
])
def test_an_adapters_options_the_data_or_model_leaves_unread_are_named(paradigm, overrides, named):
    """Sweeping an option the run does not read would make identical runs under other names (counted as cells)."""
    from tiedlab.paradigms.base import get_paradigm
    from tiedlab.paradigms.cli import compose_config
    from tiedlab.paradigms.config import ignored_options
    from omegaconf import OmegaConf

    def named_for(overrides):
        c = compose_config([f"paradigm={paradigm}", *overrides])
        unread = get_paradigm(paradigm).unread_options(OmegaConf.to_container(c.data, resolve=True),
                                                       OmegaConf.to_container(c.model, resolve=True))
        return ignored_options(c, overrides, unread)

    assert any(m.startswith(named) for m in named_for(overrides)), named_for(overrides)
    read = {"ssl": ["model.method=simclr", "model.temperature=0.2"], "graph": ["data=mutag", "model.pool=mean"],
            "vision": ["data=cifar10", "data.crop_padding=2"]}[paradigm]
    assert named_for(read) == []


def test_a_checkpoint_is_written_after_the_history_it_follows_is_on_disk(tmp_path, monkeypatch):
    """A machine crash must not keep a checkpoint at step N and lose history lines before N: history.jsonl is
    synced before the checkpoint is written, and the checkpoint's rename is synced with its folder."""
    rundir.append_history(tmp_path, {"step": 1, "train/loss": 1.0})
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    rundir.save_checkpoint(tmp_path, {"step": 1})
    checkpoint = str(tmp_path / rundir.CHECKPOINT)
    assert events[0] == ("fsync", str(tmp_path / rundir.HISTORY))
    assert events[-2:] == [("replace", checkpoint), ("fsync", str(tmp_path))]
    assert ("fsync", checkpoint) not in events  # the temp file is synced under its own name, before the rename


def test_a_run_resumes_with_another_checkpoint_interval_and_trains_the_same(tmp_path):
    """How often a run saves changes nothing it computes (not fingerprinted from version 4): a run stopped by its
    time limit resumes under another train.ckpt_every, and ends with the weights of a run that never stopped."""
    part = train(cfg(**{"train.time_limit_s": 0.0, "train.ckpt_every": 5}), tmp_path / "resumed")
    assert part["step"] == 1
    resumed = train(cfg(**{"train.time_limit_s": None, "train.ckpt_every": 3}), tmp_path / "resumed")
    whole = train(cfg(**{"train.ckpt_every": 5}), tmp_path / "whole")
    assert resumed["step"] == whole["step"] == 10 and resumed["fingerprint"] == whole["fingerprint"]
    for name, tensor in torch.load(tmp_path / "whole" / rundir.CHECKPOINT, weights_only=True)["model"].items():
        assert torch.equal(tensor, torch.load(tmp_path / "resumed" / rundir.CHECKPOINT,
                                              weights_only=True)["model"][name]), name
    config = yaml.safe_load((tmp_path / "whole" / rundir.CONFIG).read_text())
    assert rundir.fingerprint(config, 3) != rundir.fingerprint({**config, "train": {**config["train"],
                                                                                      "ckpt_every": 3}}, 3)


def test_reports_written_into_the_checkout_do_not_make_its_code_dirty(tmp_path, monkeypatch):
    """A study writes its report into reports/studies/NAME: every run after it was recorded as '+dirty' (read
    as modified code). A change outside reports/studies/ still counts, tracked or not, and both sides of a rename."""
    import subprocess

    from tiedlab.paradigms import provenance

    repo = tmp_path / "repo"
    (repo / "reports" / "studies").mkdir(parents=True)
    (repo / "reports" / "studies" / "old.md").write_text("a\n")
    (repo / "reports" / "stats.py").write_text("alpha = 0.05\n")  # the analysis code lives beside them
    (repo / "code.py").write_text("x = 1\n")
    for cmd in (["init", "-q"], ["add", "-A"],
                ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "x"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    monkeypatch.setattr(provenance, "CODE_DIR", repo)
    assert provenance.code_version()["dirty"] is False
    (repo / "reports" / "studies" / "mine").mkdir(parents=True)
    (repo / "reports" / "studies" / "mine" / "README.md").write_text("report\n")
    (repo / "reports" / "studies" / "old.md").write_text("b\n")
    assert provenance.code_version()["dirty"] is False
    (repo / "reports" / "stats.py").write_text("alpha = 0.1\n")
    assert provenance.code_version()["dirty"] is True
    subprocess.run(["git", "checkout", "-q", "reports/stats.py"], cwd=repo, check=True)
    subprocess.run(["git", "mv", "code.py", "reports/studies/code.py"], cwd=repo, check=True)  # a rename: both sides
    assert provenance.code_version()["dirty"] is True
    subprocess.run(["git", "mv", "reports/studies/code.py", "code.py"], cwd=repo, check=True)
    assert provenance.code_version()["dirty"] is False
    (repo / "reports" / "studies" / "a -> b.md").write_text("a name with an arrow\n")
    assert provenance.code_version()["dirty"] is False
    (repo / "helper.py").write_text("y = 2\n")
    assert provenance.code_version()["dirty"] is True
    (repo / "helper.py").unlink()
    (repo / "code.py").write_text("x = 2\n")
    assert provenance.code_version()["dirty"] is True
