"""The command line says what is wrong in one line: mistyped keys get the closest valid key (never a '+' that
silently adds one), run directory names stay within file-system limits, --help names the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiedlab.paradigms.rundir import MAX_NAME_BYTES, short_dirname

TESTS = Path(__file__).resolve().parents[1]
TOY = ["paradigm=toy", f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]", "train.progress=false",
       "train.threads=1", "train.max_steps=2", "train.eval_every=2", "model.width=8"]


def cli(args: list[str], runs: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TIEDLAB_RUNS": str(runs), "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    env.pop("TIEDLAB_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "tiedlab.paradigms.cli", *args], env=env, capture_output=True,
                          text=True, timeout=240)


def test_a_mistyped_key_gets_the_closest_valid_one_and_no_plus(tmp_path):
    done = cli([*TOY, "block.depht=4"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("[tiedlab] error:")]
    assert line.startswith("[tiedlab] error: unknown key block.depht; did you mean block.depth")
    assert "+block" not in done.stderr


def test_a_mistyped_model_or_data_key_without_a_near_one_says_where_the_keys_are():
    """A paradigm's model and data keys are not in train.yaml, which the hint named for every key (review)."""
    from tiedlab.paradigms.cli import _did_you_mean

    assert _did_you_mean("Could not override 'model.widht'.") == (
        "unknown key model.widht; the paradigm's model keys are those of its configs/paradigm/NAME.yaml")
    assert _did_you_mean("Could not override 'data.limt'.") == (
        "unknown key data.limt; the dataset's data keys are those of its configs/data/NAME.yaml")
    assert _did_you_mean("Could not override 'zzz.qqq'.").endswith("see `--help` or configs/train.yaml for the valid keys")


def test_a_plus_override_of_an_unknown_key_is_refused_not_ignored(tmp_path):
    done = cli([*TOY, "+block.depht=4"], tmp_path)
    assert done.returncode == 1
    assert "unknown key(s) block.depht (did you mean block.depth" in done.stderr
    assert not list(tmp_path.rglob("metrics.json"))


def test_long_overrides_give_a_run_directory_name_within_limits_and_the_same_one_again(tmp_path):
    long = ["data.name=" + "d" * 300]
    first = cli([*TOY, *long], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (run,) = [p.parent for p in tmp_path.rglob("metrics.json")]
    assert len(run.name.encode()) <= MAX_NAME_BYTES and ",hash=" in run.name
    again = cli([*TOY, *long], tmp_path)
    assert "already holds a finished run" in again.stderr  # the same overrides find the same directory


def test_short_names_are_unchanged_and_long_ones_are_distinct():
    assert short_dirname("block=tied,seed=0") == "block=tied,seed=0"
    a, b = short_dirname("x" * 300 + "a"), short_dirname("x" * 300 + "b")
    assert a != b and len(a.encode()) <= MAX_NAME_BYTES


def test_help_names_the_command_and_study_files_are_not_a_run_option(tmp_path):
    done = cli(["--help"], tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("tiedlab is powered by Hydra")
    # the study group is listed (Hydra lists every group of the search path): the help says what it is
    assert "\nstudy: " in done.stdout and "all but study: its files are the studies that\n`tiedlab-study NAME` runs" \
        in done.stdout
    for override in ("study=quick", "+study=quick"):
        wrong = cli([*TOY, override], tmp_path)
        assert wrong.returncode == 1 and wrong.stderr.strip().splitlines()[-1] == (
            "[tiedlab] error: study is not an option of a run: a study runs with `tiedlab-study NAME` "
            "(configs/study/NAME.yaml)"), override


def test_a_run_off_a_terminal_logs_its_steps_and_evaluations_and_a_summary(tmp_path):
    done = cli([*TOY, "train.max_steps=20", "train.eval_every=10"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [x for x in done.stderr.splitlines() if x.startswith("[tiedlab] ")]
    assert sum(x.startswith("[tiedlab] step ") and "samples/s, training ETA" in x for x in lines) == 10  # every 2
    assert any(x.startswith("[tiedlab] step 10: evaluating val") for x in lines)
    assert any(x.startswith("[tiedlab] step 20: test/acc=") for x in lines)
    summary = lines[-1]
    assert summary.startswith("[tiedlab] completed: ") and "test/acc=" in summary and "s training, 20 steps" in summary


def test_a_dataset_of_another_paradigm_says_whose_it_is(tmp_path):
    done = cli(["paradigm=vision", "data=cora", "train.max_steps=1", "train.progress=false"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "[tiedlab] error: cora is a graph dataset, not a vision one: use tiedlab-graph data=cora" in done.stderr


def test_an_interrupted_study_says_how_to_continue_in_one_line(monkeypatch, capsys):
    """Ctrl-C on tiedlab-study: exit status 130 and one line (the runs resume from their checkpoints), no traceback."""
    from tiedlab.paradigms import cli
    from tiedlab.paradigms import study as study_module

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "study", interrupted)
    monkeypatch.delenv("TIEDLAB_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as stop:
        cli.study_main()
    err = capsys.readouterr().err
    assert stop.value.code == 130 and err.count("\n") == 1 and "rerun the same command to continue" in err
