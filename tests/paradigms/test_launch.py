"""tiedlab-study at scale on this CPU, with real engine runs of the toy paradigm: the runs of all grids placed by
Ray over 3 declared (fake) GPUs, 2 per GPU, each pinned to its own; a killed worker's run resumes; one submitit
submission for a 2-run study (the local executor) with --status and requeues after SIGUSR2 and SIGTERM; launcher
flags that contradict each other are errors."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from tiedlab.paradigms import launch, rundir
from tiedlab.paradigms import study as study_module

TESTS = Path(__file__).resolve().parents[1]
TOY = ["paradigm=toy", f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]", "train.eval_every=50",
       "train.threads=1", "model.width=8"]


def write_study(tmp_path: Path, monkeypatch, grids: list[dict]) -> None:
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    (studies / "toy.yaml").write_text(yaml.safe_dump({"name": "toy", "grids": grids}))
    monkeypatch.setattr(study_module, "study_dir", lambda: studies)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


def metrics(run_dir: str | Path) -> dict:
    return rundir.read_metrics(Path(run_dir))


def holder_pid(run_dir: Path) -> int | None:
    text = (run_dir / rundir.LOCK).read_text() if (run_dir / rundir.LOCK).exists() else ""
    return int(text.split()[1]) if text.startswith("pid ") else None


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_folders_are_those_multirun_makes_and_status_reads_them(tmp_path, monkeypatch, capsys):
    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=2"],
              "sweep": {"block": ["tied", "deq"], "mask.sparsity": [0.5], "seed": [0]}}]
    write_study(tmp_path, monkeypatch, grids)
    runs = tmp_path / "runs"
    assert study_module.study(["toy", "--runs", str(runs), "--no-report"]) == 0  # grid by grid, Hydra multirun
    made = sorted(str(p.parent) for p in runs.rglob(rundir.METRICS))
    expanded = launch.study_runs(study_module.load_study("toy"), runs, [])
    assert sorted(r.run_dir for r in expanded) == made and len(made) == 2
    capsys.readouterr()
    assert study_module.study(["toy", "--runs", str(runs), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = dict(zip(lines[1].split(), lines[2].split()))
    assert row["grid"] == "g" and row["runs"] == "2" and row["done"] == "2" and row["pending"] == "0", lines
    # never started: pending; started and stopped (a SIGTERM, a kill): stopped, which a rerun resumes
    assert launch.run_state(tmp_path / "nothing") == "pending"
    rundir.write_json(tmp_path / "metrics.json", {"status": "interrupted", "step": 3, "total_steps": 9})
    assert launch.run_state(tmp_path) == "stopped"


def test_the_studys_closing_count_is_every_run_its_grids_sweep_as_status_reads_them(tmp_path):
    """The line a study ends with counts what --status counts: a run that took its lock and left before writing
    anything (a failure before training) is failed, one never started pending, and a run directory beside the
    sweep's (a seed a sequential look added) counts too."""
    spec = {"name": "toy", "grids": [{"name": "g", "overrides": list(TOY), "sweep": {"seed": [0, 1, 2]}}]}
    runs = tmp_path / "runs"
    for seed in (0, 3):  # seed 3: added by a look, not in the sweep
        run = runs / "g" / f"seed={seed}"
        run.mkdir(parents=True)
        (run / rundir.CONFIG).write_text("seed: 0\n")
        rundir.write_json(run / rundir.METRICS, {"status": "completed", "step": 2, "total_steps": 2})
    (runs / "g" / "seed=1").mkdir()
    (runs / "g" / "seed=1" / rundir.LOCK).write_text("")  # its lock released with nothing written: failed
    counts = study_module.closing_counts(spec, runs, [])
    assert counts == {"done": 2, "not_at_equilibrium": 0, "diverged": 0, "failed": 1, "running": 0, "stopped": 0,
                      "pending": 1}


def test_a_grid_value_a_run_would_refuse_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    """A value every run of a cell would refuse (a paradigm's own option too) is refused by --dry-run and by the
    study before any run directory is made, naming the overrides and the value."""
    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=2"], "sweep": {"optim.lr": [0.01, -1], "seed": [0]}}]
    write_study(tmp_path, monkeypatch, grids)
    runs = tmp_path / "runs"
    for extra in (["--dry-run"], []):
        with pytest.raises(ValueError, match=r"the overrides .*optim.lr=-1 .*give a run that would fail "
                                             r"\(optim.lr=-1.0 must be > 0\)"):
            study_module.study(["toy", "--runs", str(runs), "--no-report", *extra])
    assert not (runs / "g").exists()
    from tiedlab.paradigms.config import check_values
    from tiedlab.paradigms.cli import compose_config

    with pytest.raises(ValueError, match=r"model.width=-1 must be an integer >= 1"):  # a paradigm's option
        check_values(compose_config(["paradigm=vision", "model.width=-1"]))


def test_a_primary_comparison_registers_the_paradigm_its_arms_train(tmp_path, monkeypatch):
    """A comparison's paradigm is the one its arms' runs train (the adapter's name): a typo is refused before
    anything is registered or run, by --dry-run and --plan too; the paradigm its runs record is that name."""
    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=2"], "sweep": {"block": ["tied", "deq"], "seed": [0]}}]
    write_study(tmp_path, monkeypatch, grids)
    study_file = tmp_path / "studies" / "toy.yaml"
    raw = yaml.safe_load(study_file.read_text())
    raw["primary"] = {"defaults": {"delta": {"acc": 0.01}}, "comparisons": [
        {"insight": 1, "paradigm": "toyy", "claim": "noninferiority", "metric": "val/acc",
         "a": {"grid": "g", "where": {"block": "tied"}}, "b": {"grid": "g", "where": {"block": "deq"}}}]}
    study_file.write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"
    for extra in (["--dry-run"], ["--plan"], []):
        with pytest.raises(ValueError, match=r"primary comparison 1/toyy: paradigm 'toyy', but arm a \(grid 'g'\) "
                                             r"trains paradigm 'toy'"):
            study_module.study(["toy", "--runs", str(runs), "--no-report", *extra])
    assert not runs.exists()
    raw["primary"]["comparisons"][0]["paradigm"] = "toy"
    study_file.write_text(yaml.safe_dump(raw))
    assert study_module.study(["toy", "--runs", str(runs), "--no-report"]) == 0
    assert {metrics(p.parent)["paradigm_name"] for p in runs.rglob(rundir.METRICS)} == {"toy"}


def test_a_run_its_time_limit_ended_is_told_apart_and_left_to_the_engine(tmp_path):
    """A run the engine ended at its train.time_limit_s (completed, step < total) used the limit its config.yaml
    records (``used_time_limit``, what a plan prices it by); it stays "stopped" for the runner, whose rerun lets
    the engine decide by the limit given now (the same: nothing to train; a larger one: it continues)."""
    ended = {"status": "completed", "step": 30, "total_steps": 100, "metrics": {"time/train_s": 61.0}}
    for limit, used in ((60, True), (120, False), (None, False)):
        run = tmp_path / "g" / f"seed={limit}"
        run.mkdir(parents=True)
        rundir.write_json(run / rundir.METRICS, ended)
        (run / rundir.CONFIG).write_text(yaml.safe_dump({"train": {"time_limit_s": limit}}))
        assert launch.used_time_limit(run, ended) is used and launch.run_state(run) == "stopped", limit
    assert not launch.used_time_limit(run, {**ended, "step": 100})  # trained all its steps: plainly done
    assert not study_module.grid_finished({"name": "g", "sweep": {"seed": [60]}}, tmp_path)


def test_a_finished_run_of_another_config_is_refused_not_reported_as_the_grids(tmp_path, monkeypatch):
    """A study skips a finished run by its folder, named after the swept values only: runs an earlier command made
    with other overrides, or made before the grid's overrides were edited, are refused (multirun, Ray and the
    looks' paths), not reused and reported as this grid's; the same command again reuses them."""
    import argparse

    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=2"], "sweep": {"seed": [0, 1]}}]
    write_study(tmp_path, monkeypatch, grids)
    runs = tmp_path / "runs"
    assert study_module.study(["toy", "--runs", str(runs), "--no-report", "train.max_steps=1"]) == 0
    made = {d: metrics(d)["total_steps"] for d in sorted(str(p.parent) for p in runs.rglob(rundir.METRICS))}
    assert list(made.values()) == [1, 1]
    with pytest.raises(ValueError, match=r"g/seed=0 holds a finished run of another config than its grid and "
                                         r"this command's overrides compose now: train.max_steps=1 \(now 2\); .* "
                                         r"--runs folder"):
        study_module.study(["toy", "--runs", str(runs), "--no-report"])
    with pytest.raises(ValueError, match=r"holds a finished run of another config"):  # the Ray and Slurm paths
        study_module._unfinished("toy", grids, runs, argparse.Namespace(overrides=[]))
    with pytest.raises(ValueError, match=r"holds a finished run of another config"):  # a look's finished cell
        launch.check_reused(launch.grid_runs("toy", {**grids[0], "sweep": {"seed": [1]}}, runs, []))
    # a run written before an option existed (its config.yaml lacks the key) is compared on the keys it has
    older = Path(next(iter(made))) / rundir.CONFIG
    config = yaml.safe_load(older.read_text())
    del config["optim"]["weight_decay"]
    older.write_text(yaml.safe_dump(config))
    assert study_module.study(["toy", "--runs", str(runs), "--no-report", "train.max_steps=1"]) == 0
    # reused, not refused; and finished as this command composes them: nothing to launch
    assert study_module._unfinished("toy", grids, runs, argparse.Namespace(overrides=["train.max_steps=1"])) == []
    edited = [{**grids[0], "overrides": [*TOY, "train.max_steps=1", "model.width=4"]}]
    write_study(tmp_path, monkeypatch, edited)  # the grid's overrides edited after its runs
    with pytest.raises(ValueError, match=r"holds a finished run of another config"):
        study_module.study(["toy", "--runs", str(runs), "--no-report"])
    assert {d: metrics(d)["total_steps"] for d in made} == made  # nothing was trained over them


def test_a_stopped_run_of_another_config_is_refused_before_a_task_is_spent_on_it(tmp_path, monkeypatch):
    """A stopped (or failed) run that recorded metrics under another config would be refused by the engine in every
    task launched for it (one wasted array task a run under Slurm): the study refuses it first, in one line; a
    stopped run of the grid's own config is resumed as before."""
    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=4"], "sweep": {"seed": [0]}}]
    write_study(tmp_path, monkeypatch, grids)
    runs = tmp_path / "runs"
    assert study_module.study(["toy", "--runs", str(runs), "--no-report", "model.width=4"]) == 0
    run = runs / "g" / "seed=0"
    rundir.write_json(run / rundir.METRICS, {**metrics(run), "status": "interrupted", "step": 2})
    assert launch.run_state(run) == "stopped"
    with pytest.raises(ValueError, match=r"g/seed=0 holds an unfinished \(stopped\) run of another config than its "
                                         r"grid and this command's overrides compose now: model.width=4 \(now 8\); "
                                         r"the run would refuse to resume it"):
        study_module.study(["toy", "--runs", str(runs), "--no-report"])
    launch.check_reused(launch.grid_runs("toy", grids[0], runs, ["model.width=4"]))  # its own config: resumed


def test_a_deq_run_judged_under_other_equilibrium_thresholds_is_not_reused(tmp_path, monkeypatch):
    """Thresholds are not grouped on (they do not change what trains), but a finished DEQ run keeps the verdict of
    the thresholds it was judged under: a command asking for others would report it under the wrong ones."""
    grids = [{"name": "g", "overrides": [*TOY, "block=deq", "train.max_steps=2"], "sweep": {"seed": [0]}}]
    write_study(tmp_path, monkeypatch, grids)
    runs = tmp_path / "runs"
    assert study_module.study(["toy", "--runs", str(runs), "--no-report"]) == 0
    with pytest.raises(ValueError, match=r"equilibrium.rel_residual=0.01 \(now 0.001\)"):
        study_module.study(["toy", "--runs", str(runs), "--no-report", "equilibrium.rel_residual=0.001"])
    # the gradient is judged against a reference solve: one of another tolerance is another test
    with pytest.raises(ValueError, match=r"equilibrium.reference_tol=1e-06 \(now 1e-07\)"):
        study_module.study(["toy", "--runs", str(runs), "--no-report", "equilibrium.reference_tol=1e-7"])
    # the spectral norm is not judged (no threshold), so its power iterations do not matter
    assert study_module.study(["toy", "--runs", str(runs), "--no-report", "equilibrium.power_iters=5"]) == 0
    deq = {"block": {"mode": "deq"}, "equilibrium": {"rel_residual": 0.01, "converged_fraction": 0.9,
                                                      "grad_cosine": 0.95, "spectral_norm": None, "probe_every": 0,
                                                      "power_iters": 20, "reference_tol": 1e-6,
                                                      "reference_max_iter": 300}}
    assert launch.judged_thresholds(deq) == {"equilibrium.rel_residual": 0.01, "equilibrium.converged_fraction": 0.9,
                                             "equilibrium.grad_cosine": None, "equilibrium.spectral_norm": None}
    judged = {**deq, "equilibrium": {**deq["equilibrium"], "probe_every": None, "spectral_norm": 1.0}}
    assert launch.judged_thresholds(judged) == {
        "equilibrium.rel_residual": 0.01, "equilibrium.converged_fraction": 0.9, "equilibrium.grad_cosine": 0.95,
        "equilibrium.spectral_norm": 1.0, "equilibrium.power_iters": 20, "equilibrium.reference_tol": 1e-6,
        "equilibrium.reference_max_iter": 300}
    assert launch.judged_thresholds({**deq, "block": {"mode": "tied"}}) == {}


def test_a_lock_whose_pid_now_names_another_process_is_not_running(tmp_path):
    """A holder killed with SIGKILL leaves its line; its pid may later name another process (pids are reused, and a
    restarted container counts from 1 again): the line records its process's start (clock ticks since boot, which
    a clock step does not move), so a live pid of another start is not the holder and the run is resumed, not left
    'running' forever. A line without it (an older tiedlab) is judged by its pid alone."""
    import socket

    rundir.write_json(tmp_path / "metrics.json", {"status": "running", "step": 3, "total_steps": 9})
    ticks = rundir.process_start_ticks(os.getpid())
    assert ticks is not None and rundir.process_start_ticks(2 ** 30) is None

    def held(start):
        stamp = f" (process start {start})" if start is not None else ""
        (tmp_path / rundir.LOCK).write_text(
            f"pid {os.getpid()} on {socket.gethostname()} since 2026-12-06T07:00:00+00:00{stamp}: python ...")
        return launch.run_state(tmp_path)

    assert held(ticks) == "running"  # this process wrote it
    assert held(ticks + 1) == "stopped"  # another process, given this pid, after the writer died
    assert held(None) == "running"  # an older line: the pid alone
    with rundir.hold_lock(tmp_path):  # the line the lock writes, read back
        assert f"(process start {ticks}): " in (tmp_path / rundir.LOCK).read_text()
        assert launch.run_state(tmp_path) == "running"


def test_a_run_that_exited_before_writing_metrics_is_failed_and_one_killed_then_is_stopped(tmp_path):
    """A Slurm task that dies on missing data leaves its lock (released, empty) and no metrics.json: --status said
    'pending' (never started) forever; one killed before it wrote anything leaves its holder's line."""
    assert launch.run_state(tmp_path) == "pending"
    (tmp_path / rundir.LOCK).write_text("")  # taken and released
    assert launch.run_state(tmp_path) == "failed"
    (tmp_path / rundir.LOCK).write_text("pid 999999 on some-host since 2026-12-06T07:00:00+00:00: python ...")
    os.utime(tmp_path / rundir.LOCK, (time.time() - rundir.LOCK_STALE_S - 5,) * 2)
    assert launch.run_state(tmp_path) == "stopped"


def test_a_lock_left_on_another_host_counts_as_running_only_while_its_holder_touches_it(tmp_path, monkeypatch):
    """A holder killed with SIGKILL on another node cannot clear its line, and its pid cannot be checked from here:
    the lock's age tells (the holder's heartbeat touches it), so the run is resumed, not left 'running' forever."""
    rundir.write_json(tmp_path / "metrics.json", {"status": "running", "step": 3, "total_steps": 9})
    lock = tmp_path / rundir.LOCK
    lock.write_text("pid 4242 on some-other-node since 2026-12-06T07:00:00+00:00: python -m tiedlab...")
    assert launch.run_state(tmp_path) == "running"  # just written
    old = time.time() - rundir.LOCK_STALE_S - 5
    os.utime(lock, (old, old))
    assert launch.run_state(tmp_path) == "stopped"
    monkeypatch.setattr(rundir, "LOCK_HEARTBEAT_S", 0.05)
    live = tmp_path / "live"
    live.mkdir()
    with rundir.hold_lock(live):
        os.utime(live / rundir.LOCK, (old, old))
        time.sleep(0.5)
        assert time.time() - (live / rundir.LOCK).stat().st_mtime < 5  # the holder's heartbeat renewed it
    assert (live / rundir.LOCK).read_text() == ""


def test_runs_still_in_slurms_queue_are_not_submitted_again(tmp_path, monkeypatch):
    """A queued or requeued array task holds no lock yet: only squeue tells that a rerun would train it twice."""
    a, b, c = (str((tmp_path / "runs" / name).resolve()) for name in "abc")
    record = tmp_path / "submissions.jsonl"
    record.write_text(json.dumps({"jobs": ["77_0", "77_1", "77_2"], "runs": [a, b, c]}) + "\n"
                      + json.dumps({"jobs": ["81_0"], "runs": ["runs/c"]}) + "\n")  # relative, as records were
    monkeypatch.chdir(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\necho \"$@\" > " + str(tmp_path / "args") + "\nprintf '77_1\\n77_2\\n99_0\\n'\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    # b waits in the queue; so does c's first task (77_2), though its resubmission (81_0, spelled another way) is
    # gone: either would train c; a is done
    assert launch.slurm_queued(record, "tiedlab-toy") == {b: "77_1", c: "77_2"}
    assert "--name=tiedlab-toy" in (tmp_path / "args").read_text()
    assert launch.slurm_queued(tmp_path / "none.jsonl", "tiedlab-toy") == {}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="squeue is not found here"):
        launch.slurm_queued(record, "tiedlab-toy")


def test_each_launcher_tells_its_runs_how_many_training_processes_share_their_device():
    """What a run records as ``processes_per_device``: Ray's --per-gpu on GPUs (on a cluster too), --jobs on this
    machine's CPU, unknown for CPU runs Ray places on a cluster; a Hydra multirun by its launcher override."""
    assert launch.ray_share("0,1", 3, 1, None) == 3 and launch.ray_share("all", 2, 1, "auto") == 2
    assert launch.ray_share(None, 1, 4, None) == 4 and launch.ray_share(None, 1, 4, "auto") is None
    grid = ["python", "-m", "tiedlab.paradigms.cli", "-m", "seed=0,1"]
    assert launch.multirun_share(grid) == 1  # Hydra's basic launcher: one run at a time
    assert launch.multirun_share([*grid, "hydra/launcher=local_parallel"]) == 2  # the config's n_jobs
    assert launch.multirun_share([*grid, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=4"]) == 4
    assert launch.multirun_share([*grid, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=-1"]) is None
    assert launch.multirun_share([*grid, "hydra/launcher=slurm"]) is None
    env = launch.sharing_env({"PATH": "/bin"}, launch.multirun_share([*grid, "hydra/launcher=local_parallel"]))
    assert env == {"PATH": "/bin", "TIEDLAB_PROCESSES_PER_DEVICE": "2"}


def test_gpus_are_those_this_shell_was_given_and_ray_cluster_threads_fit_a_node(monkeypatch):
    monkeypatch.setattr(launch, "listed_gpus", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert launch.node_gpus("all") == ["0", "1", "2", "3"] and launch.node_gpus("1,3") == ["1", "3"]
    with pytest.raises(ValueError, match=r"--gpus=1,5: 5 not among this node's 4 GPU\(s\)"):
        launch.node_gpus("1,5")  # its runs would see no GPU and train on CPU
    monkeypatch.setattr(launch, "listed_gpus", lambda: None)  # no nvidia-smi (CUDA may still work): not refused
    assert launch.node_gpus("1,5") == ["1", "5"]
    monkeypatch.setattr(launch, "listed_gpus", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # a Slurm job's or a shared machine's share
    assert launch.node_gpus("all") == ["2", "3"] and launch.node_gpus("3") == ["3"]
    with pytest.raises(ValueError, match=r"--gpus=0,1: 0,1 not among the GPUs this shell was given"):
        launch.node_gpus("0,1")
    for none in ("", "-1", "NoDevFiles"):  # CUDA's ways of saying "no GPU"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", none)
        with pytest.raises(ValueError, match=rf"no GPU for the study \(CUDA_VISIBLE_DEVICES='{none}' names none\)"):
            launch.node_gpus("all")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,1")  # CUDA stops at the first entry that names no device
    assert launch.node_gpus("all") == ["0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5e1a,MIG-77")
    assert launch.node_gpus("all") == ["GPU-5e1a", "MIG-77"]
    four = [{"CPU": 16.0}] * 4
    assert launch.cluster_threads(four, gpus=False, per_gpu=1, jobs=2) == 16  # not 32: a run is one process
    assert launch.cluster_threads(four, gpus=False, per_gpu=1, jobs=8) == 8
    mixed = [{"CPU": 64.0}, {"CPU": 16.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 1.0}]  # a CPU-only head
    assert launch.cluster_threads(mixed, gpus=True, per_gpu=2, jobs=1) == 8  # not (64+32)/4 = 24
    assert launch.cluster_threads([{"CPU": 16.0, "GPU": 4.0}, {"CPU": 64.0, "GPU": 4.0}], gpus=True, per_gpu=2,
                                  jobs=1) == 2
    # a local study splits the CPUs this process may use (a Slurm allocation's, a cpuset's), not the machine's
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert launch.usable_cpus() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    assert launch.usable_cpus() == 64


def test_a_studys_runs_at_once_price_its_plan_and_looks_on_every_gpu_it_places_runs_on(monkeypatch):
    """``--gpus all`` counts the GPUs the runner will use (each with ``--per-gpu`` runs), not one: a look priced on
    one GPU of eight was eight times too long and never taken; where the count is unknown here, one GPU and a
    line saying so."""
    import argparse

    def slots(**given):
        args = {"jobs": 1, "gpus": None, "per_gpu": None, "ray_address": None, **given}
        return study_module.study_slots(argparse.Namespace(**args))

    monkeypatch.setattr(launch, "listed_gpus", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert slots(jobs=2) == (2, "")
    assert slots(gpus="all") == (8, "") and slots(gpus="all", per_gpu=3) == (24, "")
    assert slots(gpus="0,5", per_gpu=2) == (4, "")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")  # a Slurm job's share of the node
    assert slots(gpus="all", per_gpu=2) == (6, "")
    count, note = slots(gpus="all", per_gpu=2, ray_address="auto")
    assert count == 2 and "--ray-address counts one GPU (2 run(s) at once)" in note and "upper bounds" in note
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a login node: the plan is still made, on one GPU, said so
    assert slots(gpus="all") == (1, "--gpus all counts one GPU (1 run(s) at once) in the plan's and the looks' "
                                    "times: this node shows none")


@pytest.mark.parametrize("argv,match", [
    (["--jobs", "2", "hydra/launcher=slurm"], "--jobs 2 and hydra/launcher=slurm"),
    (["--gpus", "all", "--slurm"], "--gpus and --slurm"),
    (["--jobs", "3", "hydra.launcher.n_jobs=4"], "hydra.launcher.n_jobs=4"),
    (["--per-gpu", "2"], "--per-gpu needs --gpus"),
    (["--slurm-option", "partition=gpu"], "need --slurm"),
    (["--slurm", "--until-decided"], "--until-decided"),
    (["--ray-address", "auto"], "--ray-address needs"),
    (["--seed-batch", "4", "--slurm"], r"--seed-batch=4 needs K >= 2 and the Ray path"),
    (["--seed-batch", "1", "--jobs", "2"], r"--seed-batch=1 needs K >= 2"),
    (["--plan", "--until-decided", "--budget-min", "30"], r"--budget-min=30.0 cuts a run's looks .* --plan prices"),
])
def test_launcher_flags_that_contradict_are_errors(tmp_path, monkeypatch, argv, match):
    write_study(tmp_path, monkeypatch, [{"name": "g", "overrides": TOY, "sweep": {"seed": [0]}}])
    with pytest.raises(ValueError, match=match):
        study_module.study(["toy", "--runs", str(tmp_path / "runs"), *argv])


def test_gpu_ids_and_slurm_options_are_checked():
    assert launch.gpu_ids("all") is None and launch.gpu_ids("0,2") == ["0", "2"]
    for bad in ("0,0", "a", ""):
        with pytest.raises(ValueError, match="--gpus"):
            launch.gpu_ids(bad)
    options = launch.slurm_options(["partition=gpu", "timeout_min=90"])
    assert options["partition"] == "gpu" and options["timeout_min"] == 90 and options["max_num_timeout"] > 0
    with pytest.raises(ValueError, match="KEY=VALUE"):
        launch.slurm_options(["partitoin=gpu"])
    # one task trains one run in one process: a second task would find its run locked, a second GPU sit idle
    for bad, must in (("tasks_per_node=2", "1"), ("nodes=2", "1"), ("gpus_per_node=2", "0 or 1")):
        with pytest.raises(ValueError, match=rf"--slurm-option {bad}: a task trains one run.*must be {must}"):
            launch.slurm_options([bad])
    assert launch.slurm_options(["gpus_per_node=0"])["gpus_per_node"] == 0


def test_a_run_keeps_the_threads_and_device_its_overrides_set():
    """The launcher's share of the cores is given as train.threads unless the run's overrides set it (theirs was
    overridden, unseen); a run handed a GPU trains with train.device=cuda unless they name a device."""
    run = launch.RunSpec("g", ("paradigm=vision", "seed=0"), "/r/g/seed=0")
    assert launch.run_command(run, threads=4)[-1] == "train.threads=4"
    mine = launch.RunSpec("g", ("paradigm=vision", "train.threads=2", "seed=0"), "/r/g/seed=0")
    assert [o for o in launch.run_command(mine, threads=4) if o.startswith("train.threads")] == ["train.threads=2"]
    batch = launch.SeedBatchSpec("g", ("paradigm=vision", "train.threads=2"), ("/r/a", "/r/b"), ("0", "1"))
    assert [o for o in launch.run_command(batch, threads=4) if o.startswith("train.threads")] == ["train.threads=2"]
    assert launch.on_gpu(run).overrides[-1] == "train.device=cuda" and launch.on_gpu(batch).overrides[-1] == \
        "train.device=cuda"
    cpu = launch.RunSpec("g", ("train.device=cpu", "seed=0"), "/r/g/seed=0")
    assert launch.on_gpu(cpu) == cpu


def test_slurm_submissions_put_runs_on_their_gpu_stop_them_in_time_and_refuse_an_unused_out(tmp_path, monkeypatch,
                                                                                           capsys):
    """With gpus_per_node the submitted runs train on CUDA (never the CPU unseen); a task waits for its run to stop
    at most signal_delay_s - 30 s (Slurm kills the job then, and submitit requeues only after the wait); --out,
    which --slurm never writes, is refused."""
    pytest.importorskip("submitit")
    write_study(tmp_path, monkeypatch, [{"name": "g", "overrides": [*TOY, "train.max_steps=2"], "sweep": {"seed": [0]}}])
    runs = tmp_path / "runs"
    assert study_module.study(["toy", "--runs", str(runs), "--slurm", "--dry-run", "--submitit-cluster", "local"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("+ ")]
    assert "train.device=cuda" in line
    submitted, real_submit = {}, launch.submit_slurm

    def submit(todo, folder, options, name, cluster=None):
        submitted.update(runs=todo, options=options)
        raise ValueError("stop here")

    monkeypatch.setattr(launch, "submit_slurm", submit)
    with pytest.raises(ValueError, match="stop here"):
        study_module.study(["toy", "--runs", str(runs), "--slurm", "--submitit-cluster", "local",
                            "--slurm-option", "gpus_per_node=0"])
    assert not any("train.device" in o for o in submitted["runs"][0].overrides)
    with pytest.raises(ValueError, match=r"--out x: --slurm returns once the runs are submitted and builds no report"):
        study_module.study(["toy", "--runs", str(runs), "--slurm", "--out", "x"])
    waits, shares, study_run = [], [], launch.StudyRun
    monkeypatch.setattr(launch, "StudyRun", lambda stop_wait_s=600.0, processes_per_device=None: (
        waits.append(stop_wait_s), shares.append(processes_per_device)))

    class Executor:
        def __init__(self, cluster=None, **kwargs):
            self.cluster = cluster or "slurm"  # submitit's: "local" or the one it found

        def update_parameters(self, **kwargs):
            pass

        def map_array(self, fn, runs):
            return []

    import submitit

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    for delay, wait in ((120, 90.0), (None, 60.0), (20, 10.0)):
        real_submit([], tmp_path, {"signal_delay_s": delay}, "n")
        assert waits[-1] == wait, (delay, waits)
    # what its runs record of their device's sharing: a GPU of their own; on CPU, jobs the study does not know; the
    # local executor starts every task at once on the same GPUs
    for gpus, cluster, share in ((1, None, 1), (0, None, None), (None, None, None), (1, "local", None)):
        real_submit([], tmp_path, {"gpus_per_node": gpus}, "n", cluster=cluster)
        assert shares[-1] == share, (gpus, cluster, shares)
    # a task pickled before StudyRun recorded the sharing (queued across an update) still runs: unknown sharing
    with monkeypatch.context() as m:  # the state the previous version pickled
        m.setattr(launch, "StudyRun", study_run)  # pickle finds the class by its name
        m.setattr(study_run, "__getstate__", lambda self: {"stop_wait_s": 60.0, "_proc": None})
        queued = pickle.dumps(study_run(60.0, 1))
        m.undo()  # StudyRun's own __getstate__ again (pickle finds the class by its name: not the stand-in above)
        m.setattr(launch, "StudyRun", study_run)
        assert pickle.loads(queued).processes_per_device is None


@pytest.mark.slow  # about 65 s: keeps the default suite under its 10-minute budget (make test-slow runs it)
def test_ray_places_all_grids_on_fake_gpus_k_per_gpu_and_a_killed_worker_resumes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    # the fake GPUs are this CPU: the runs name it (a run handed a GPU otherwise trains with train.device=cuda)
    long = [*TOY, "train.max_steps=400", "train.ckpt_every=20", "train.batch_size=32", "train.device=cpu"]
    grids = [{"name": "a", "overrides": long, "sweep": {"seed": [0, 1, 2, 3]}},
             {"name": "b", "overrides": [*TOY, "train.max_steps=30", "block=explicit", "train.device=cpu"],
              "sweep": {"seed": [0, 1, 2]}}]
    write_study(tmp_path, monkeypatch, grids)
    monkeypatch.setattr(launch, "listed_gpus", lambda: 3)  # the fake node's GPUs
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runs = tmp_path / "runs"
    events = runs / ".launch" / "events.jsonl"
    killed: dict[str, str] = {}

    def kill_one_worker() -> None:
        """SIGKILL the Ray worker that trains a long run once that run has a checkpoint."""
        def target():
            for run_dir in sorted((runs / "a").glob("seed=*")):
                pid = holder_pid(run_dir)
                if pid and (run_dir / rundir.CHECKPOINT).exists() and metrics(run_dir).get("step", 0) < 400:
                    return run_dir, pid
            return None
        try:
            run_dir, pid = wait_for(target, 240, "a checkpointed long run")
            worker = parent_pid(pid)
            os.kill(worker, signal.SIGKILL)
            killed["run"], killed["t"] = str(run_dir), time.time()
        except Exception as err:  # noqa: BLE001 - reported by the assertions below
            killed["error"] = repr(err)

    thread = threading.Thread(target=kill_one_worker, daemon=True)
    thread.start()
    code = study_module.study(["toy", "--runs", str(runs), "--no-report", "--gpus", "0,1,2", "--per-gpu", "2"])
    thread.join(5)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "run" in killed, killed
    expanded = launch.study_runs(study_module.load_study("toy"), runs, [])
    assert len(expanded) == 7
    for run in expanded:
        m = metrics(run.run_dir)
        assert m["status"] == "completed" and m["step"] == m["total_steps"], run.run_dir
        # every run saw exactly one of the declared GPUs, in every process that trained it
        assert all(s["cuda_visible_devices"] in ("0", "1", "2") for s in m["provenance"]), m["provenance"]
        # at the launching shell's priority, not Ray's worker niceness (15)
        assert all(s["niceness"] == os.nice(0) for s in m["provenance"]), m["provenance"]
        assert all(s["processes_per_device"] == 2 for s in m["provenance"]), m["provenance"]  # --per-gpu 2
    # the killed worker's run was resumed by Ray's retry: two processes trained it, from its checkpoint
    sessions = metrics(killed["run"])["provenance"]
    assert len(sessions) == 2, sessions
    assert "resuming" in (Path(killed["run"]) / "launch.log").read_text()
    # no GPU ever held more than 2 runs (the killed attempt held its GPU until the kill)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    starts = [e for e in lines if e["event"] == "start"]
    assert len(starts) == 8  # 7 runs, one of them started twice
    intervals = []
    for e in starts:
        end = next((x["t"] for x in lines if x["event"] == "end" and x["run"] == e["run"] and x["t"] >= e["t"]),
                   None)
        later = [s["t"] for s in starts if s["run"] == e["run"] and s["t"] > e["t"]]
        intervals.append((e["gpu"], e["t"], killed["t"] if later else end))
    gpus = {g for g, _, _ in intervals}
    assert gpus <= {"0", "1", "2"} and len(gpus) >= 2, gpus
    peak = {g: max(sum(1 for h, s, e in intervals if h == g and s <= t < e) for _, t, _ in intervals) for g in gpus}
    assert max(peak.values()) <= 2, peak
    assert max(sum(1 for _, s, e in intervals if s <= t < e) for _, t, _ in intervals) > 2  # ran in parallel
    # a rerun skips every finished run and starts nothing
    assert study_module.study(["toy", "--runs", str(runs), "--no-report", "--gpus", "0,1,2", "--per-gpu", "2"]) == 0
    assert "0 runs to train" in capsys.readouterr().out


def test_slurm_study_is_one_submission_with_status_and_requeues_after_sigusr2_and_sigterm(tmp_path, monkeypatch,
                                                                                         capsys):
    pytest.importorskip("submitit")
    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=1500", "train.ckpt_every=20", "train.batch_size=32"],
              "sweep": {"seed": [0, 1]}}]
    write_study(tmp_path, monkeypatch, grids)
    runs = tmp_path / "runs"
    argv = ["toy", "--runs", str(runs), "--no-report", "--slurm", "--submitit-cluster", "local",
            "--slurm-option", "timeout_min=20", "--slurm-option", "gpus_per_node=0"]  # this machine's CPU
    assert study_module.study(argv) == 0
    out = capsys.readouterr().out
    # returned once submitted: neither 1500-step run has finished when the command returns
    assert "submitted 2 runs" in out
    assert not any(metrics(d).get("status") == "completed" for d in (runs / "g" / "seed=0", runs / "g" / "seed=1")), out
    a, b = runs / "g" / "seed=0", runs / "g" / "seed=1"

    def checkpointed_pid(run_dir: Path):
        pid = holder_pid(run_dir)
        return pid if pid and (run_dir / rundir.CHECKPOINT).exists() else None

    pid_a = wait_for(lambda: checkpointed_pid(a), 240, "run a's checkpoint")
    assert study_module.study(["toy", "--runs", str(runs), "--status"]) == 0
    status = capsys.readouterr().out
    assert "running" in status and "last Slurm submission" in status
    os.kill(parent_pid(pid_a), signal.SIGUSR2)  # Slurm's warning before a timeout, to the job's process
    pid_b = wait_for(lambda: checkpointed_pid(b), 240, "run b's checkpoint")
    os.kill(pid_b, signal.SIGTERM)  # a preemption signals the training process itself

    def finished():
        return all(metrics(d).get("status") == "completed" and not launch._lock_held(d) for d in (a, b))

    wait_for(finished, 400, "both runs to finish after their requeues")
    for run_dir in (a, b):
        m = metrics(run_dir)
        assert m["step"] == m["total_steps"] == 1500
        assert len(m["provenance"]) == 2, m["provenance"]  # interrupted once, then resumed by the requeued job
        # on a CPU node the task shares with jobs the study does not know (and the requeued job says so again)
        assert [s["processes_per_device"] for s in m["provenance"]] == [None, None]
        log = (run_dir / "launch.log").read_text()
        assert "interrupted" in log and "resuming" in log
    assert "SIGUSR2" in (a / "launch.log").read_text() and "SIGTERM" in (b / "launch.log").read_text()
    assert study_module.study(["toy", "--runs", str(runs), "--status"]) == 0
    total = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("total")][0]
    assert total[1:4] == ["2", "2", "0"]  # runs, done, not at equilibrium


STUDY_MAIN = ("import sys; from pathlib import Path; from tiedlab.paradigms import study; "
              "folder = Path(sys.argv[1]); study.study_dir = lambda: folder; sys.argv = ['tiedlab-study', *sys.argv[2:]]; "
              "from tiedlab.paradigms.cli import study_main; study_main()")


def start_study(tmp_path: Path, argv: list[str], background: bool = False) -> subprocess.Popen:
    """``tiedlab-study toy ARGV`` (the study file written by ``write_study``) as its own process, to be signalled;
    ``background``: with SIGINT ignored, as a shell's ``nohup ... &`` starts it (and everything it starts); else
    with SIGINT's default action whatever the test runner's is (a test suite started with ``&`` ignores it, and
    every process it starts would too)."""
    def sigint(action: Any) -> Callable[[], None]:
        return lambda: (signal.signal(signal.SIGINT, action), signal.signal(signal.SIGHUP, signal.SIG_DFL))

    return subprocess.Popen([sys.executable, "-c", STUDY_MAIN, str(tmp_path / "studies"), "toy", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=sigint(signal.SIG_IGN if background else signal.SIG_DFL))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process's group (its own session's), so that a failed test leaves nothing running."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("argv,sig", [
    ([], signal.SIGTERM), ([], signal.SIGINT), ([], signal.SIGHUP),
    pytest.param(["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"], signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param(["--jobs", "2"], signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param(["--jobs", "2", "group"], signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param(["--jobs", "2", "job"], signal.SIGTERM, marks=pytest.mark.slow)],
    ids=["multirun", "multirun-ctrl-c", "multirun-hangup", "joblib", "ray", "ray-process-group", "ray-every-process"])
def test_sigterm_to_a_study_checkpoints_its_runs_in_flight_and_starts_no_other(tmp_path, monkeypatch, argv, sig):
    """SIGTERM to tiedlab-study started in the background (SIGINT ignored, as after `nohup ... &`; a scheduler,
    `kill`, a CI timeout), Ctrl-C (SIGINT to the study: its runs are in sessions of their own) or a terminal's
    hang-up (SIGHUP, which killed the study before, leaving its runs to stop on their own), and for Ray a
    SIGTERM to the study's process group or to every process of it (Ray's workers exit on it): the runs in
    flight checkpoint and end as interrupted, no further run starts
    (Hydra's multirun does not go on to its next job, Ray's pending runs are cancelled), no process of the
    study is left, and the study exits 128 + the signal's number with one line."""
    if "--jobs" in argv:
        pytest.importorskip("ray")
    # runs far longer than the signal takes to come (30,000 steps, ~2 min each; a loaded machine delays this
    # process's polling, and at 3,000 steps the runs once ended before it): the signal stops them early
    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=30000", "train.ckpt_every=100000",
                                         "train.eval_every=100", "train.batch_size=32"],
              "sweep": {"seed": [0, 1, 2]}}]
    # "group": the signal goes to the study's process group (`kill -TERM -PGID`: Ray's processes too, not the runs,
    # in sessions of their own); "job": to every process, runs included (a Slurm preemption, `scancel`)
    to = next((a for a in argv if a in ("group", "job")), None)
    argv = [a for a in argv if a not in ("group", "job")]
    if to:  # steps of 2 s, as a real model's: a run's stop waits for its step in flight, then checkpoints (Ray's
        # processes and the driver's cancel killed the runs first: failed every time with steps of 2 s)
        grids[0]["overrides"] += ["data.step_sleep_s=2", "train.eval_every=1"]
    write_study(tmp_path, monkeypatch, grids)
    runs = tmp_path / "runs"
    study = start_study(tmp_path, ["--runs", str(runs), "--no-report", *argv], background=sig == signal.SIGTERM)
    in_flight = 2 if argv else 1  # both parallel launchers run 2 at a time
    dirs = [runs / "g" / f"seed={s}" for s in range(3)]

    def evaluated():
        assert study.poll() is None, study.communicate()
        started = [d for d in dirs if (d / "history.jsonl").exists()]
        return started if len(started) >= in_flight else None

    try:
        started = wait_for(evaluated, 240, f"{in_flight} runs' first evaluation")
        holders = [holder_pid(d) for d in started]
        if to:
            os.killpg(study.pid, sig)
            for pid in holders if to == "job" else []:
                os.kill(pid, sig)
        else:
            study.send_signal(sig)
        out, err = study.communicate(timeout=240)
    finally:
        kill_group(study)  # the study's own runs are in sessions of their own: see the last assertion
    assert study.returncode == 128 + sig, out[-2000:] + err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"tiedlab-study: stopped by {sig.name}: no further run starts"), err
    for d in started:
        m = metrics(d)
        assert m["status"] == "interrupted" and m["reason"].startswith("SIGTERM at step"), (d, m)
        assert torch.load(d / rundir.CHECKPOINT, weights_only=True)["loop"]["step"] == m["step"]
    assert not any((d / rundir.METRICS).exists() for d in dirs if d not in started)  # never started
    assert not any(pid and alive(pid) for pid in holders)


def test_a_submission_slurm_refuses_is_one_line_with_its_words(tmp_path, monkeypatch):
    """sbatch refusing the array (a partition, an account) was a 38-line traceback; now one line with its message."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, script in (("sbatch", "echo 'sbatch: error: invalid partition specified: gpux' >&2\nexit 1"),
                         ("srun", "exit 0")):  # submitit looks for srun to tell a Slurm cluster
        (bin_dir / tool).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run = launch.RunSpec("g", ("paradigm=vision", "seed=0"), str(tmp_path / "runs" / "g" / "seed=0"))
    with pytest.raises(ValueError, match=r"^Slurm refused the submission of 1 runs: .*invalid partition specified: "
                                         r"gpux") as err:
        launch.submit_slurm([run], tmp_path / ".submitit", {"timeout_min": 5, "partition": "gpux"}, name="t",
                            cluster="slurm")
    assert "\n" not in str(err.value)


def test_a_scheduler_submission_skips_finished_runs_under_extra_overrides_and_refuses_a_typo_in_one_line(
        tmp_path, monkeypatch, capsys):
    """With an extra override that does not change the runs (a bookkeeping key), the finished runs are this
    command's (check_reused) and are not submitted again (each cost a queued job); a mistyped override is one line
    before anything is submitted, not a failure in every task."""
    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=2"], "sweep": {"seed": [0, 1]}}]
    write_study(tmp_path, monkeypatch, grids)
    runs = tmp_path / "runs"
    assert study_module.study(["toy", "--runs", str(runs), "--no-report"]) == 0
    capsys.readouterr()
    assert study_module.study(["toy", "--runs", str(runs), "--slurm", "--dry-run", "train.threads=1"]) == 0
    assert "[tiedlab] 0 runs to submit" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"do not compose \(unknown key model.widht; the paradigm's model keys are "
                                         r"those of ") as err:
        study_module.study(["toy", "--runs", str(runs), "--slurm", "--dry-run", "model.widht=3"])
    assert "\n" not in str(err.value)  # the command line prints it as one line (tiedlab-study: error: ...)
    assert "+model.widht" not in str(err.value)  # not Hydra's hint to add a key nothing reads
    with pytest.raises(ValueError, match=r"do not compose \(unknown key train.max_stpes; did you mean "
                                         r"train.max_steps"):  # --plan checks what the run checks
        study_module.study(["toy", "--runs", str(runs), "--plan", "train.max_stpes=3"])
    for launcher in ([], ["--dry-run"]):  # grid by grid too: before any grid starts (each failed on it)
        with pytest.raises(ValueError, match=r"do not compose \(unknown key block.deph; did you mean block.depth"):
            study_module.study(["toy", "--runs", str(tmp_path / "fresh"), *launcher, "block.deph=3"])
        assert not (tmp_path / "fresh").exists() or not list((tmp_path / "fresh").rglob("metrics.json"))


def test_gpus_on_a_machine_without_one_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    write_study(tmp_path, monkeypatch, [{"name": "g", "overrides": [*TOY, "train.max_steps=2"], "sweep": {"seed": [0]}}])
    monkeypatch.setattr(launch, "count_gpus", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ValueError, match="--gpus all: this machine has no GPU for the study"):
        study_module.study(["toy", "--runs", str(tmp_path / "runs"), "--gpus", "all"])
    assert not (tmp_path / "runs").exists() and "runs to train" not in capsys.readouterr().out


def _fake_ray_task(run, threads, record, gpu, stopped=None, processes_per_device=None):
    """A Ray task that trains nothing: holds its slot a moment and says where it was placed and what its run would
    record of its device's sharing."""
    time.sleep(1.0)
    return {"run": run.name, "gpu": gpu, "code": 0, "share": processes_per_device}


def test_ray_spreads_fewer_runs_than_slots_over_every_gpu(monkeypatch):
    """4 runs with --per-gpu 4 on 4 GPUs: one on each (Ray's fractional shares put all four on GPU 0, and a look or
    a study's last runs crowded the first GPUs while the others idled)."""
    pytest.importorskip("ray")
    monkeypatch.setattr(launch, "listed_gpus", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(launch, "_ray_task", _fake_ray_task)
    runs = [launch.RunSpec("g", (f"seed={i}",), f"/nonexistent/g/seed={i}") for i in range(4)]
    results = launch.run_with_ray(runs, gpus="all", per_gpu=4, jobs=1, address=None, record=None)
    assert sorted(r["gpu"] for r in results) == ["0", "1", "2", "3"], results
    assert {r["share"] for r in results} == {4}  # what each run records: up to 4 processes on its GPU


def test_a_sigterm_to_a_ray_worker_lets_its_run_checkpoint_before_the_worker_exits(tmp_path, monkeypatch):
    """Ray's workers exit on SIGTERM (their handler raises SystemExit), and a run dies with its worker: a signal to
    the whole job (a preemption, scancel) killed the runs before they could checkpoint. The worker now stops its
    run (SIGTERM, then waits for it) before it exits. Here a stand-in run takes 1 s to 'checkpoint'."""
    marker = tmp_path / "checkpointed"
    child = ("import signal, sys, time\n"
             "def stop(*_):\n    time.sleep(1.0)\n"
             f"    open({str(marker)!r}, 'w').write('yes')\n    sys.exit(75)\n"
             "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)\n")
    started = []

    def start(run, env, threads=None, new_session=False, death_signal=None):
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        started.append(proc)
        return proc

    def exit_on_sigterm(signum, frame):  # what Ray's worker does
        raise SystemExit(signum)

    monkeypatch.setattr(launch, "start_run", start)
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(SystemExit):
            launch._ray_task(launch.RunSpec("g", ("seed=0",), str(tmp_path / "g" / "seed=0")), None, None, None)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert marker.read_text() == "yes" and started[0].returncode == 75


def test_arms_prints_every_key_each_comparisons_arms_set_otherwise_and_runs_nothing(tmp_path, monkeypatch, capsys):
    """A comparison's label can claim more matching than its arms have (a DEQ recipe's norm, a half-width arm with
    half the heads): --arms composes each arm's cell now and names every key they set otherwise."""
    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=2"], "sweep": {"block": ["tied", "deq"], "seed": [0]}},
             {"name": "h", "overrides": [*TOY, "train.max_steps=2", "block=tied", "model.width=16",
                                         "optim.lr=0.02"], "sweep": {"seed": [0]}}]
    write_study(tmp_path, monkeypatch, grids)
    study_file = tmp_path / "studies" / "toy.yaml"
    study = yaml.safe_load(study_file.read_text())
    study["primary"] = {"comparisons": [
        {"insight": 1, "paradigm": "toy", "claim": "noninferiority", "metric": "val/acc", "label": "same cell",
         "a": {"grid": "g", "where": {"block": "tied"}}, "b": {"grid": "g", "where": {"block": "deq"}}},
        {"insight": 6, "paradigm": "toy", "claim": "superiority", "metric": "val/acc",
         "a": {"grid": "h"}, "b": {"grid": "g", "where": {"block": "tied"}}}]}
    study_file.write_text(yaml.safe_dump(study))
    runs = tmp_path / "runs"
    assert study_module.study(["toy", "--runs", str(runs), "--arms", "block.depth=3"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("\n\n")[1:3]
    assert first.splitlines()[:3] == ["1/toy: same cell", "  A: g: block=tied", "  B: g: block=deq"]
    assert "  block.mode: tied vs deq" in first and "  only B: equilibrium.*, grad.*, solver.*, solver.options.*" in first
    assert second.splitlines()[3:] == ["  model.width: 16 vs 8", "  optim.lr: 0.02 vs 0.01"], second
    assert not runs.exists()  # ran nothing, wrote nothing
    for flag, named in ((["--dry-run"], "--dry-run"), (["--jobs", "2"], "--jobs"), (["--out", "x"], "--out"),
                        (["--gpus", "all", "--per-gpu", "2"], "--gpus, --per-gpu")):
        with pytest.raises(ValueError, match=rf"^--arms prints .*: {named} do not apply to it$"):
            study_module.study(["toy", "--runs", str(runs), "--arms", *flag])


def test_a_study_file_outside_the_repository_runs_by_its_path(tmp_path, monkeypatch, capsys):
    """CONTRIBUTING's out-of-tree paradigm keeps its study file in its own folder: `tiedlab-study PATH.yaml`."""
    write_study(tmp_path, monkeypatch, [])  # the environment only: the study file below is not in the studies folder
    path = tmp_path / "mine" / "sines.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"name": "sines", "grids": [
        {"name": "g", "overrides": [*TOY, "train.max_steps=2"], "sweep": {"seed": [0]}}]}))
    runs = tmp_path / "runs"
    assert study_module.study([str(path), "--runs", str(runs), "--no-report"]) == 0
    assert metrics(runs / "g" / "seed=0")["status"] == "completed"
    assert "[tiedlab] study sines:" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"^no study file .*nothere.yaml$"):
        study_module.study([str(tmp_path / "nothere.yaml")])
    escape = tmp_path / "mine" / "escape.yaml"
    escape.write_text(path.read_text().replace("name: sines", "name: ../../x"))
    with pytest.raises(ValueError, match=r"escape.yaml: name='../../x' must be letters, digits"):
        study_module.study([str(escape), "--no-report"])
    # named like a shipped study (the studies folder holds toy.yaml here): its folders would be that study's
    clash = tmp_path / "mine" / "toy.yaml"
    clash.write_text(path.read_text().replace("name: sines", "name: toy"))
    with pytest.raises(ValueError, match=r"toy.yaml has the name of the shipped study 'toy': give it --runs"):
        study_module.study([str(clash), "--no-report"])
    with pytest.raises(ValueError, match=r"give it --runs \(and --out, or --no-report\)"):
        study_module.study([str(clash), "--runs", str(runs)])
    assert study_module.study([str(clash), "--runs", str(tmp_path / "runs2"), "--no-report"]) == 0
    # named by its name: key, not its file's stem (an amended copy of a study is the same study)
    copy = tmp_path / "mine" / "sines-amended.yaml"
    copy.write_text(path.read_text())
    assert study_module.study([str(copy), "--runs", str(runs), "--no-report"]) == 0
    assert "[tiedlab] study sines:" in capsys.readouterr().out


@pytest.mark.slow  # about 20 s
def test_a_second_sigterm_to_a_ray_study_kills_its_runs_in_flight_at_once(tmp_path, monkeypatch):
    """A second stop does not wait for the runs to checkpoint (2 s steps here): they are killed, their last
    checkpoints stand, and no process of the study is left; the study exits with the signal's status."""
    pytest.importorskip("ray")
    grids = [{"name": "g", "overrides": [*TOY, "train.max_steps=30000", "train.ckpt_every=100000",
                                         "train.eval_every=1", "train.batch_size=32", "data.step_sleep_s=2"],
              "sweep": {"seed": [0, 1, 2]}}]
    write_study(tmp_path, monkeypatch, grids)
    runs = tmp_path / "runs"
    study = start_study(tmp_path, ["--runs", str(runs), "--no-report", "--jobs", "2"], background=True)
    dirs = [runs / "g" / f"seed={s}" for s in range(3)]

    def evaluated():
        assert study.poll() is None, study.communicate()
        started = [d for d in dirs if (d / "history.jsonl").exists()]
        return started if len(started) >= 2 else None

    try:
        started = wait_for(evaluated, 240, "2 runs' first evaluation")
        holders = [holder_pid(d) for d in started]
        study.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        study.send_signal(signal.SIGTERM)
        out, err = study.communicate(timeout=60)
    finally:
        kill_group(study)
    assert study.returncode == 128 + signal.SIGTERM, out[-2000:] + err[-2000:]
    assert not any(pid and alive(pid) for pid in holders)


def test_a_stopped_ray_study_waits_for_and_kills_only_the_runs_it_started(tmp_path):
    """A second stop SIGKILLs the runs in flight by the pids their locks name: only those this study's tasks
    started (the events log's "child" lines since it began, on this host), not another command's run that holds
    a lock in the same folder."""
    record = tmp_path / ".launch" / "events.jsonl"
    launch._event(record, event="child", run="g/seed=0", gpu=None, pid=111)
    t = time.time()
    launch._event(record, event="child", run="g/seed=1", gpu=None, pid=222)
    launch._event(record, event="start", run="g/seed=2", gpu=None, pid=333)
    with record.open("a") as fh:
        fh.write(json.dumps({"event": "child", "pid": 444, "t": t + 1, "host": "elsewhere"}) + "\n" + "{cut\n3\n")
    assert launch.started_children(record, since=t) == {222}
    assert launch.started_children(tmp_path / "none.jsonl", since=t) == set()  # the driver then takes every run


def test_a_task_ray_retries_after_the_study_was_stopped_starts_no_run(tmp_path, monkeypatch):
    """A job-wide SIGTERM ends workers too, and Ray retries their tasks: under load a retried task started the run
    again after the study had waited for it, and the run outlived the study. The stopped driver leaves a marker
    beside the events log; a task that finds it starts nothing."""
    record = tmp_path / ".launch" / "events.jsonl"
    record.parent.mkdir()
    ours, theirs = launch.stop_marker(record), launch.stop_marker(record)
    assert ours != theirs and ours.parent == record.parent
    theirs.write_text("1\n")  # another study on this runs folder was stopped: not this one's business

    def refuse(*args, **kwargs):
        raise AssertionError("a run was started")

    def started(run, env, threads=None, new_session=False, death_signal=None):
        assert "train.device=cuda" in run.overrides and env["CUDA_VISIBLE_DEVICES"] == "1"  # on its GPU, or fails
        return subprocess.Popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(launch, "start_run", started)
    run = launch.RunSpec("g", ("seed=0",), str(tmp_path / "g" / "seed=0"))
    assert launch._ray_task(run, None, str(record), "1", str(ours))["code"] == 0
    ours.write_text("1\n")
    monkeypatch.setattr(launch, "start_run", refuse)
    result = launch._ray_task(run, None, str(record), None, str(ours))
    assert result["code"] == launch.INTERRUPTED_EXIT
    assert json.loads(record.read_text().splitlines()[-1])["started"] is False


def test_an_adapters_own_cross_checks_are_made_when_a_cell_is_composed():
    """check_values builds the adapter, so the checks its constructor makes across options (graph: a fold on a node
    task) refuse a cell at composition, as its options' own do, not after each run took its lock."""
    from tiedlab.paradigms.cli import compose_config
    from tiedlab.paradigms.config import check_values

    with pytest.raises(ValueError, match=r"data.fold=1 on the node task 'cora'"):
        check_values(compose_config(["paradigm=graph", "data=cora", "data.fold=1"]))
    check_values(compose_config(["paradigm=graph", "data=cora"]))
