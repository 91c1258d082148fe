"""benchmarks/gpu_check.py works the first time it meets a GPU: the same code path at toy sizes on CPU, and
its paper-size configs compose and validate."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tiedlab.paradigms.config import validate
from tiedlab.paradigms.engine import as_config

from support.benchmarks import load_benchmark



@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def test_tiny_run_on_cpu_measures_every_field(gpu_check, tmp_path):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--tiny", "--device", "cpu", "--steps", "2", "--only", "vision,graph",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["complete"]
    assert [r["paradigm"] for r in result["paradigms"]] == ["vision", "graph"]
    for row in result["paradigms"]:
        assert row["status"] == "completed" and row["samples_per_s"] > 0 and row["step_ms"] > 0 and row["peak_mb"] > 0
        assert row["mean_step_ms"] > 0 and row["steps"] == 3  # --steps 2, rounded up to thirds: 1 + 2 measured
    vision = result["paradigms"][0]
    assert vision["step_gflops"] > 0 and vision["mfu"] is None  # no known peak on a CPU
    layout = result["vision_channels_last"]
    assert layout["status"] == "completed" and layout["speedup"] > 0
    assert set(result["time_to_accuracy"]) == {"target_val_acc", "reached_at_step", "train_s", "final_val_acc",
                                               "failure"} and result["time_to_accuracy"]["failure"] is None
    (batching,) = result["seed_batching"]  # vision (graph cannot batch its seeds)
    assert batching["k"] == 2 and batching["speedup"] > 0


@pytest.mark.parametrize("name", ["vision", "ssl", "graph", "language"])
def test_paper_sizes_compose_and_validate(gpu_check, name, tmp_path):
    cfg = gpu_check.compose([*gpu_check.SIZES[name]["paper"], "train.max_steps=60", f"run_dir={tmp_path}"])
    validate(as_config(cfg))


TOY_STUDY = {
    "name": "toy", "question": "does the study check price every cell?",
    "grids": [{"name": "v", "overrides": ["paradigm=vision", "size=vision_quick", "data=mnist", "data.limit_train=320",
                                          "data.val_size=64", "data.limit_test=64", "model.width=8",
                                          "train.batch_size=32", "train.epochs=2", "train.deq_warmup_steps=2"],
               "sweep": {"block": ["tied", "deq"], "seed": [0, 1]}},
              {"name": "g", "overrides": ["paradigm=graph", "data=cora", "model.width=16", "train.epochs=7"],
               "sweep": {"seed": [0, 1, 2]}}],
    "primary": {"comparisons": [{"insight": 1, "paradigm": "vision", "claim": "noninferiority", "metric": "val/acc",
                                 "a": {"grid": "v", "where": {"block": "tied"}},
                                 "b": {"grid": "v", "where": {"block": "deq"}}}]}}


def test_study_check_prices_every_cell_and_the_plan_reads_it(gpu_check, tmp_path, monkeypatch, capsys):
    import yaml

    from tiedlab.paradigms import study as study_module
    from tiedlab.paradigms.engine import train
    from tiedlab.paradigms.plan import load_step_times, study_plan

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "toy.yaml").write_text(yaml.safe_dump(TOY_STUDY))
    monkeypatch.setattr(study_module, "study_dir", lambda: studies)
    out = tmp_path / "toy-step-times.json"
    assert gpu_check.main(["--study", "toy", "--device", "cpu", "--steps", "3", "--out", str(out),
                           "train.threads=1"]) == 0
    result = json.loads(out.read_text())
    assert result["overrides"] == ["train.threads=1"] and result["device"] == "cpu"
    cells = {(c["grid"], tuple(c["cell"])): c for c in result["cells"]}
    assert set(cells) == {("v", ("block=tied",)), ("v", ("block=deq",)), ("g", ())}
    tied, deq, graph = cells["v", ("block=tied",)], cells["v", ("block=deq",)], cells["g", ()]
    assert (tied["block"], deq["block"], graph["block"]) == ("tied", "deq", "tied")
    assert deq["nfe_forward"] > tied["nfe_forward"] and 0 <= deq["converged"] <= 1  # a step time beside its solves
    assert (tied["runs"], deq["runs"], graph["runs"]) == (2, 2, 3) and graph["full_steps"] == 7
    assert (tied["primary"], deq["primary"], graph["primary"]) == (True, True, False)
    for c in cells.values():
        assert c["status"] == "completed" and c["step_ms"] > 0 and c["measured_steps"] == 2
        assert c["train_h"] == pytest.approx(c["runs"] * c["full_steps"] * c["step_ms"] / 3.6e6)
    assert result["complete"] and not result["unmeasured_cells"]
    assert result["primary_first_pass_train_h"] == pytest.approx(tied["train_h"] + deq["train_h"])
    assert result["first_pass_train_h"] == pytest.approx(tied["train_h"] + deq["train_h"] + graph["train_h"])
    # a full run of the cell trains exactly the steps the check priced
    cfg = gpu_check.compose([*TOY_STUDY["grids"][0]["overrides"], "block=tied", "train.progress=false",
                             f"run_dir={tmp_path / 'full'}"])
    assert train(cfg, tmp_path / "full")["step"] == tied["full_steps"] == 2 * (320 // 32)

    runs = tmp_path / "runs"
    plan = study_plan(load_study_spec := study_module.load_study("toy"), runs,
                      step_times=load_step_times(out, "toy"))
    v, g = plan.grids
    assert (v.from_step_times, v.unmeasured, g.from_step_times) == (4, 0, 3)
    assert (v.steps, g.steps) == ("20", "7")  # epoch-based runs: the steps as the check counted them
    assert v.remaining_s == pytest.approx(3600 * (tied["train_h"] + deq["train_h"]))
    assert study_plan(load_study_spec, runs).grids[0].unmeasured == 4  # without the file nothing is estimated
    capsys.readouterr()
    assert study_module.study(["toy", "--runs", str(runs), "--plan", "--step-times", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(4 from step times)" in printed and "training only, evaluation left out" in printed

    # each cell records what it trained with (the measuring extras left out) and the budget its steps come from
    assert set(TOY_STUDY["grids"][1]["overrides"]) <= set(graph["overrides"])
    assert not [o for o in graph["overrides"] + tied["overrides"] if o.startswith(("seed=", "train.threads="))]
    assert (tied["epochs"], tied["steps_per_epoch"], tied["max_steps"]) == (2.0, 10, None)
    assert (graph["epochs"], graph["steps_per_epoch"]) == (7.0, 1)

    def edit(vision: list[str], graph_extra: list[str]) -> tuple[Any, Any]:
        grids = [{**TOY_STUDY["grids"][0], "overrides": [*TOY_STUDY["grids"][0]["overrides"], *vision]},
                 {**TOY_STUDY["grids"][1], "overrides": [*TOY_STUDY["grids"][1]["overrides"], *graph_extra]}]
        (studies / "toy.yaml").write_text(yaml.safe_dump({**TOY_STUDY, "grids": grids}))
        return tuple(study_plan(study_module.load_study("toy"), runs, step_times=load_step_times(out, "toy")).grids)

    # a cell changed in its length only is priced at the measured ms per step times its own steps
    v, g = edit(["train.epochs=5"], ["train.max_steps=70"])
    assert (v.steps, g.steps, v.from_step_times, g.from_step_times, v.resized, g.resized) == ("50", "70", 4, 3, 4, 3)
    assert v.remaining_s == pytest.approx(3600 * (tied["train_h"] + deq["train_h"]) * 50 / 20)
    assert g.remaining_s == pytest.approx(3600 * graph["train_h"] * 70 / 7)
    capsys.readouterr()
    assert study_module.study(["toy", "--runs", str(runs), "--plan", "--step-times", str(out)]) == 0
    assert "7 of them at another length than measured" in capsys.readouterr().out
    # a cell changed in anything else is not priced
    v, g = edit([], ["model.width=32"])
    assert (v.from_step_times, v.unmeasured, v.resized, g.from_step_times, g.unmeasured, g.changed) == (4, 0, 0, 0, 3, 3)
    assert g.steps == "?"
    capsys.readouterr()
    assert study_module.study(["toy", "--runs", str(runs), "--plan", "--step-times", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 runs not measured (3 changed since the step times)" in printed and "check the steps" not in printed
    # a file without the budget it counted cannot price another number of epochs (a new max_steps it can)
    bare = tmp_path / "bare-step-times.json"
    bare.write_text(json.dumps({**result, "cells": [{k: v for k, v in c.items()
                                                     if k not in ("epochs", "steps_per_epoch", "max_steps")}
                                                    for c in result["cells"]]}))
    edit(["train.epochs=5"], ["train.max_steps=70"])
    v, g = study_plan(study_module.load_study("toy"), runs, step_times=load_step_times(bare, "toy")).grids
    assert (v.unmeasured, v.changed, g.steps, g.from_step_times) == (4, 4, "70", 3)
    # a file written before cells recorded their overrides prices every cell, and the plan says it cannot check
    old = tmp_path / "old-step-times.json"
    old.write_text(json.dumps({**result, "cells": [{k: v for k, v in c.items() if k != "overrides"}
                                                   for c in result["cells"]]}))
    assert study_module.study(["toy", "--runs", str(runs), "--plan", "--step-times", str(old)]) == 0
    printed = capsys.readouterr().out
    assert "(3 from step times)" in printed and "does not record its cells' overrides" in printed


def test_step_times_are_refused_for_another_study_a_bad_file_or_without_a_plan(gpu_check, tmp_path):
    from tiedlab.paradigms import study as study_module
    from tiedlab.paradigms.plan import load_step_times

    measured = tmp_path / "t.json"
    measured.write_text(json.dumps({"study": "paper", "cells": []}))
    with pytest.raises(ValueError, match=r"measured study 'paper', not 'quick': run benchmarks/gpu_check.py --study quick"):
        load_step_times(measured, "quick")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not a step-times file of benchmarks/gpu_check.py --study \(KeyError"):
        load_step_times(tmp_path / "bad.json", "quick")
    with pytest.raises(ValueError, match=r"--step-times=.* prices a plan: use it with --plan"):
        study_module.study(["quick", "--dry-run", "--step-times", str(measured)])
    for argv in (["--study", "paper", "--tiny"], ["--tiny", "train.threads=1"]):  # no option silently ignored
        with pytest.raises(SystemExit):
            gpu_check.main(argv)


def test_concurrency_check_times_runs_at_once_on_cpu(tmp_path):
    """benchmarks/gpu_concurrency.py: N processes of the tiny vision cell at once, each timed from its history."""
    module = load_benchmark("gpu_concurrency")
    out = tmp_path / "concurrency.json"
    assert module.main(["--tiny", "--device", "cpu", "--runs", "1,2", "--steps", "3", "--out", str(out)]) == 0
    one, two = json.loads(out.read_text())["levels"]
    assert (one["runs"], len(one["step_ms"]), two["runs"], len(two["step_ms"])) == (1, 1, 2, 2)
    assert all(ms > 0 for ms in [*one["step_ms"], *two["step_ms"]]) and not one["failures"] + two["failures"]
    assert one["speedup"] == 1.0 and two["speedup"] > 0
    assert two["threads_per_run"] == max(1, (os.cpu_count() or 1) // 2)
    with pytest.raises(SystemExit):
        module.main(["--runs", "0,2"])
    deq = tmp_path / "deq.json"  # the DEQ cell, as the device script measures it
    assert module.main(["--tiny", "--device", "cpu", "--block", "deq", "--runs", "1", "--steps", "3",
                        "--out", str(deq)]) == 0
    (level,) = json.loads(deq.read_text())["levels"]
    assert level["step_ms"][0] > 0 and not level["failures"]
