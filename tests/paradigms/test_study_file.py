"""Study files are checked before anything runs: one line naming what is wrong (a typo must not register a
comparison that reads nothing), and the options of tiedlab-study that would be ignored are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tiedlab.paradigms import study as study_module
from tiedlab.reports.cli import main as report_main

ARM_A, ARM_B = {"grid": "g", "where": {"block": "tied"}}, {"grid": "g", "where": {"block": "deq"}}
GOOD = {"name": "toy", "grids": [{"name": "g", "overrides": ["paradigm=toy"],
                                  "sweep": {"block": ["tied", "deq"], "seed": [0, 1]}}],
        "primary": {"comparisons": [{"insight": 1, "paradigm": "toy", "claim": "superiority", "metric": "val/acc",
                                     "delta": 0.01, "a": ARM_A, "b": ARM_B}]}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return path


def edited(**changes) -> str:
    spec = yaml.safe_load(yaml.safe_dump(GOOD))
    comparison = spec["primary"]["comparisons"][0]
    for key, value in changes.items():
        if key == "grids":
            spec["grids"] = value
        else:
            comparison[key] = value
    return yaml.safe_dump(spec)


@pytest.mark.parametrize("text,match", [
    ("name: toy\ngrids: [\n", r"is not valid YAML"),
    ("", r"must hold a mapping"),
    ("- a\n- b\n", r"must hold a mapping .* not list"),
    ("name: toy\n", r"grids must be a list of mappings, each with a name"),
    ("name: toy\ngrids: [g]\n", r"grids must be a list of mappings"),
    (edited(grids=[{"name": "g", "sweep": ["block"]}]), r"grid 'g' .*: sweep must be a mapping"),
    (edited(grids=[{"name": "g", "sweep": {"block": ["tied"]}}, {"name": "g", "sweep": {"block": ["deq"]}}]),
     r"grid name\(s\) \['g'\] appear more than once"),
    (edited(claim="superiorty"), r"claim='superiorty' is not valid"),
    (edited(b={"grid": "g", "where": {"blokc": "deq"}}), r"where blokc='deq', but grid 'g' does not sweep blokc"),
    (edited(b={"grid": "g", "where": {"block": "dqe"}}), r"where block='dqe', which grid 'g' does not sweep"),
])
def test_a_bad_study_file_is_one_line_before_any_run(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        study_module.read_study_file(write(tmp_path, text))


def test_the_good_file_reads_and_numbers_match_as_numbers(tmp_path):
    assert study_module.read_study_file(write(tmp_path, yaml.safe_dump(GOOD)))["name"] == "toy"
    widths = yaml.safe_load(yaml.safe_dump(GOOD))
    widths["grids"][0]["sweep"]["model.width"] = [8, 16]
    widths["primary"]["comparisons"][0]["a"] = {"grid": "g", "where": {"block": "tied", "model.width": "8.0"}}
    study_module.read_study_file(write(tmp_path, yaml.safe_dump(widths)))
    added = yaml.safe_load(yaml.safe_dump(GOOD))  # a swept +key names its runs' folders without the sign
    added["grids"][0]["sweep"]["+train.extra"] = [1, 2]
    added["primary"]["comparisons"][0]["b"] = {"grid": "g", "where": {"block": "deq", "train.extra": 2}}
    study_module.read_study_file(write(tmp_path, yaml.safe_dump(added)))


@pytest.mark.parametrize("argv,match", [
    (["--max-seeds", "4"], r"--max-seeds=4 shape the looks of --until-decided"),
    (["--seed-step", "1", "--plan"], r"--seed-step=1 shape the looks of --until-decided"),
    (["--until-decided", "--budget-min", "-5", "--plan"], r"--budget-min=-5.0 must be a positive number"),
    (["--grids", ""], r"--grids='' names no grid"),
    (["--status", "--plan"], r"--status reads the run directories"),
    (["--plan", "--seed-batch", "4", "--jobs", "2"], r"--plan prints the plan and runs nothing"),
])
def test_options_that_would_be_ignored_are_refused(tmp_path, monkeypatch, argv, match):
    monkeypatch.setattr(study_module, "study_dir", lambda: tmp_path)
    write(tmp_path, yaml.safe_dump(GOOD))
    with pytest.raises(ValueError, match=match):
        study_module.study(["toy", "--runs", str(tmp_path / "runs"), *argv])


def test_plan_and_dry_run_refuse_what_the_run_would(tmp_path, monkeypatch):
    """An edited registration over runs that exist, or a folder of another study, is refused by --plan and
    --dry-run too (they planned the edited comparisons)."""
    monkeypatch.setattr(study_module, "study_dir", lambda: tmp_path)
    runs = tmp_path / "runs"
    write(tmp_path, yaml.safe_dump(GOOD))
    study_module.write_study_file(runs, study_module.load_study("toy"), None)
    write(tmp_path, edited(delta=0.5))
    for flag in ("--plan", "--dry-run"):
        with pytest.raises(ValueError, match="registered"):
            study_module.study(["toy", "--runs", str(runs), flag])
    write(tmp_path, yaml.safe_dump(GOOD))  # a fixed design's runs, then a plan of looks: refused as the run would
    (runs / "g" / "block=tied,seed=0").mkdir(parents=True)
    (runs / "g" / "block=tied,seed=0" / "config.yaml").write_text("seed: 0\n")
    for flag in ("--plan", "--dry-run"):
        with pytest.raises(ValueError, match=r"made without --until-decided"):
            study_module.study(["toy", "--runs", str(runs), flag, "--until-decided"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.yaml").write_text(yaml.safe_dump({"name": "demo"}))
    with pytest.raises(ValueError, match=r"holds the runs of study 'demo', not 'toy'"):
        study_module.study(["toy", "--runs", str(other), "--status"])


@pytest.mark.parametrize("name,text,match", [
    ("study.yaml", "name: [\n", r"runs/study.yaml is not valid YAML \(.*\): restore it, or use another --runs"),
    ("study.yaml", "- toy\n", r"runs/study.yaml must hold a mapping, not list"),
    ("sequential.yaml", "look: [\n", r"runs/sequential.yaml is not valid YAML"),
    ("sequential.yaml", "3\n", r"runs/sequential.yaml must hold a mapping, not int"),
])
def test_a_damaged_record_in_the_runs_folder_is_one_line_naming_it(tmp_path, monkeypatch, name, text, match):
    """The runner's own records (study.yaml, sequential.yaml) edited or damaged by hand: one line naming the file,
    not a traceback, and a damaged look record is never read as 'no look yet' (the looks would be counted again)."""
    monkeypatch.setattr(study_module, "study_dir", lambda: tmp_path)
    write(tmp_path, yaml.safe_dump(GOOD))
    runs = tmp_path / "runs"
    runs.mkdir()
    if name == "sequential.yaml":
        study_module.write_study_file(runs, study_module.load_study("toy"), None)
    (runs / name).write_text(text)
    with pytest.raises(ValueError, match=match):
        study_module.study(["toy", "--runs", str(runs), "--plan", "--until-decided"])


def test_the_report_refuses_an_empty_or_broken_study_file_and_an_out_that_is_a_file(tmp_path, capsys):
    from reports.conftest import write_run

    runs = tmp_path / "runs"
    write_run(runs, "a", seed=0, val=0.9)
    for text in ("", "name: [\n"):
        study = write(tmp_path, text)
        assert report_main([str(runs), "--out", str(tmp_path / "out"), "--study", str(study)]) == 2
        assert capsys.readouterr().err.startswith("tiedlab-report: error: ")
    (tmp_path / "afile").write_text("x")
    assert report_main([str(runs), "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in capsys.readouterr().err
