"""A console whose reader went away (``| head``, a killed ``tee``, a terminal that hung up) ends no run and no
study: each case here failed before the fix (every run of the multirun failed with BrokenPipeError)."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiedlab.paradigms import console

TESTS = Path(__file__).resolve().parents[1]
TOY = ["paradigm=toy", f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]", "train.threads=1",
       "train.progress=false", "train.eval_every=1", "train.max_steps=4", "data.step_sleep_s=0.1"]


def test_a_closed_reader_diverts_the_stream_to_devnull_once_and_other_errors_still_raise():
    read, write = os.pipe()
    os.close(read)  # the reader exited
    notes: list[str] = []
    raw = io.TextIOWrapper(io.FileIO(write, "w"), line_buffering=True)
    stream = console.GuardedStream(raw, "stdout", notes.append)
    assert stream.write("lost\n") == 5 and stream.write("also lost\n") == 10
    stream.flush()
    assert notes == ["stdout closed (Broken pipe)"] and stream.closed_reason == notes[0]
    assert os.readlink(f"/proc/self/fd/{write}") == os.devnull  # a flush at exit cannot fail either
    raw.close()
    full = console.GuardedStream(open("/dev/full", "w", buffering=1), "stdout", notes.append)
    with pytest.raises(OSError) as err:  # a full disk behind a redirect is not a closed reader
        full.write("x\n")
    assert err.value.errno == errno.ENOSPC and len(notes) == 1


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


def reader_exits_after_one_line(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Start ``cmd`` with stdout and stderr on one pipe, read one line, close the pipe (as ``| head -1`` does)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout.readline()
    proc.stdout.close()
    return proc.wait(timeout=240)


def environment(runs: Path) -> dict[str, str]:
    env = {**os.environ, "TIEDLAB_RUNS": str(runs), "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    env.pop("TIEDLAB_TRACEBACK", None)
    return env


@pytest.mark.parametrize("launcher", [[], pytest.param(["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"],
                                                        marks=pytest.mark.slow)], ids=["basic", "joblib"])
def test_a_multirun_whose_reader_exits_completes_every_run_and_each_log_says_why_it_printed_nothing(tmp_path,
                                                                                                  launcher):
    """In one process (Hydra's basic launcher) or in joblib's workers, which write to the same pipe."""
    code = reader_exits_after_one_line([sys.executable, "-m", "tiedlab.paradigms.cli", "-m", *TOY, "seed=0,1,2",
                                        *launcher], tmp_path, environment(tmp_path / "runs"))
    dirs = run_dirs(tmp_path / "runs")
    assert code == 0 and len(dirs) == 3
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        assert m["status"] == "completed" and m["step"] == 4, m.get("reason")
        assert "closed (Broken pipe)" in (d / "cli.log").read_text()
    if not launcher:
        assert "the console closed before this run" in (dirs[-1] / "cli.log").read_text()


def test_a_study_whose_reader_exits_completes_its_runs(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "toy.yaml").write_text(yaml.safe_dump({"name": "toy", "grids": [
        {"name": "g", "overrides": TOY, "sweep": {"seed": [0, 1]}}]}))
    main = ("import sys; from pathlib import Path; from tiedlab.paradigms import study; "
            "folder = Path(sys.argv[1]); study.study_dir = lambda: folder; "
            "sys.argv = ['tiedlab-study', *sys.argv[2:]]; from tiedlab.paradigms.cli import study_main; study_main()")
    runs = tmp_path / "runs"
    code = reader_exits_after_one_line([sys.executable, "-c", main, str(studies), "toy", "--runs", str(runs),
                                        "--no-report"], tmp_path, environment(runs))
    dirs = run_dirs(runs)
    assert code == 0 and len(dirs) == 2
    assert all(json.loads((d / "metrics.json").read_text())["status"] == "completed" for d in dirs)
