"""tiedlab-study --plan: per grid, the runs, the finished ones and the estimated time of the rest from measured run
times; per primary comparison, the seeds the verdict rules need and what they would cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reports.conftest import write_run
from tiedlab.paradigms import study as study_module
from tiedlab.paradigms.plan import study_plan, wall_seconds


def finished(runs: Path, grid: str, leaf: str, seed: int, val: float, seconds: list[int], steps: int = 100) -> None:
    run = write_run(runs / grid, leaf, seed=seed, val=val, width=8)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["provenance"] = [{"started": f"2026-01-01T00:{10 * i:02d}:00+00:00",
                              "ended": f"2026-01-01T00:{10 * i:02d}:{s:02d}+00:00", "device": "cpu"}
                             for i, s in enumerate(seconds)]
    metrics.update(step=steps, total_steps=steps)
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_a_seed_batchs_session_counts_its_share_of_the_wall_time():
    """A run trained in a seed batch of 4 shares its process's 40 s with 3 others: 10 s each, plus a resumed
    session alone (seed_batch 1, or not recorded: older runs) in full."""
    batch = {"started": "2026-01-01T00:00:00+00:00", "ended": "2026-01-01T00:00:40+00:00", "seed_batch": 4}
    alone = {"started": "2026-01-01T00:01:00+00:00", "ended": "2026-01-01T00:01:05+00:00"}
    assert wall_seconds({"provenance": [batch, alone]}) == 15.0
    assert wall_seconds({"provenance": [batch, {**alone, "seed_batch": 1}]}) == 15.0


def test_wall_seconds_sum_the_sessions_of_a_resumed_run():
    assert wall_seconds({"provenance": [{"started": "2026-01-01T00:00:00+00:00", "ended": "2026-01-01T00:00:30+00:00"},
                                        {"started": "2026-01-01T01:00:00+00:00", "ended": "2026-01-01T01:00:12+00:00"}]}) == 42
    assert wall_seconds({"provenance": [{"started": "2026-01-01T00:00:00+00:00", "ended": None}]}) is None


def test_plan_estimates_unfinished_runs_from_measured_ones_and_prices_the_seeds_a_verdict_needs(tmp_path, monkeypatch,
                                                                                                capsys):
    # written metrics stand in for trained runs: no config composes to them (test_launch checks the reuse check)
    monkeypatch.setattr(study_module.launch, "check_reused", lambda runs: None)
    monkeypatch.setattr(study_module.launch, "check_composes", lambda runs: None)  # a paradigm off the search path
    spec = {"name": "toy", "grids": [
        {"name": "g", "overrides": ["paradigm=toy", "train.max_steps=100"],
         "sweep": {"block": ["tied", "explicit"], "seed": [0, 1, 2, 3]}},
        {"name": "h", "overrides": ["paradigm=toy", "train.max_steps=200"], "sweep": {"seed": [0, 1]}}],
        "primary": {"comparisons": [{"insight": 1, "paradigm": "toy", "claim": "superiority", "metric": "val/acc",
                                     "delta": 0.001, "a": {"grid": "g", "where": {"block": "tied"}},
                                     "b": {"grid": "g", "where": {"block": "explicit"}}}]}}
    runs = tmp_path / "runs"
    for seed, (tied, explicit) in enumerate([(0.90, 0.89), (0.92, 0.93), (0.91, 0.905)]):
        finished(runs, "g", f"block=tied,seed={seed}", seed, tied, [20 + seed])  # 20, 21, 22 s
        finished(runs, "g", f"block=explicit,seed={seed}", seed, explicit, [30, 10])  # 40 s in two sessions
    plan = study_plan(spec, runs)
    g, h = plan.grids
    assert (g.runs, g.finished, g.steps, g.measured_s) == (8, 6, "100", pytest.approx(31.0))  # median of 20, 21, 22, 40, 40, 40
    assert g.remaining_s == pytest.approx(21 + 40)  # seed 3 of each cell: its cell's median
    assert (h.runs, h.finished, h.steps, h.remaining_s, h.unmeasured) == (2, 0, "200", None, 2)
    (p,) = plan.primaries
    assert (p.key, p.n, p.verdict) == ("1/toy", "3/3", "undetermined") and p.seeds_needed > 4
    assert p.extra_runs == 2 * (p.seeds_needed - 3) and p.extra_s == pytest.approx((p.seeds_needed - 3) * (21 + 40))
    assert plan.devices == ["cpu"]

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "toy.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(study_module, "study_dir", lambda: studies)
    assert study_module.study(["toy", "--runs", str(runs), "--plan", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 runs not measured" in out and "at 2 run(s) at a time" in out and "measured on cpu" in out
    assert not (runs / "study.yaml").exists() and not (runs / "h").exists()  # a plan runs and writes nothing
    # a fresh runs folder has nothing measured: the plan says so instead of "0.0 min of runs (+10 not measured)"
    assert study_module.study(["toy", "--runs", str(tmp_path / "fresh"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "to go: not estimated: none of the 10 unfinished runs' cells has a measured run yet" in out
    assert "0.0 min" not in out


def test_a_run_is_estimated_from_its_cells_whole_runs_not_one_that_diverged_early():
    """A DEQ that diverged after a few steps ended in seconds: counted in its cell's median it would price the next
    seeds (and a look's budget) far too low; it is used only when no seed of the cell trained to its end."""
    from tiedlab.paradigms import launch
    from tiedlab.paradigms.plan import RunCost, estimate

    def cost(seed, state, wall):
        return RunCost(launch.RunSpec("g", (), f"/runs/g/block=deq,seed={seed}"), state, 100, wall, "cpu")

    costs = [cost(0, "done", 40.0), cost(1, "diverged", 2.0), cost(2, "diverged", 3.0)]
    todo = cost(3, "pending", None)
    assert estimate(todo, costs) == pytest.approx(40.0)  # not the median of 40, 2, 3
    assert estimate(todo, costs[1:]) == pytest.approx(2.5)  # every seed diverged: what there is


def test_a_run_its_time_limit_ended_is_priced_as_done_per_step_it_trained(tmp_path):
    """A run cut by train.time_limit_s (30 of 100 steps in 45 s) trains nothing when rerun under that limit: the
    plan counts it finished, and a cell of the grid not yet measured is priced at 1.5 s a step, not 0.45."""
    from tiedlab.paradigms.plan import run_costs

    spec = {"name": "toy", "grids": [{"name": "g", "overrides": ["paradigm=toy", "train.max_steps=100"],
                                      "sweep": {"block": ["tied", "explicit"], "seed": [0]}}]}
    runs = tmp_path / "runs"
    finished(runs, "g", "block=tied,seed=0", 0, 0.9, [45])
    cut = runs / "g" / "block=tied,seed=0"
    metrics = json.loads((cut / "metrics.json").read_text())
    metrics.update(step=30, metrics={**metrics["metrics"], "time/train_s": 45.0})
    (cut / "metrics.json").write_text(json.dumps(metrics))
    (cut / "config.yaml").write_text(yaml.safe_dump({"train": {"time_limit_s": 45}}))
    tied = next(c for c in run_costs(spec, runs, []) if c.spec.run_dir == str(cut))
    assert (tied.state, tied.steps, tied.wall_s) == ("done", 30, pytest.approx(45.0))
    (g,) = study_plan(spec, runs).grids
    assert g.finished == 1 and g.remaining_s == pytest.approx(100 * 45.0 / 30)


def test_a_cell_changed_in_length_only_is_priced_by_the_engine_rule_on_what_is_known():
    from tiedlab.paradigms.plan import CellBudget, _steps_at

    vision = CellBudget(52650, max_steps=None, epochs=150.0, steps_per_epoch=351)
    assert _steps_at(vision, {}, {"train.epochs": "30"}) == 10530
    assert _steps_at(vision, {"train.epochs": "375"}, {"train.epochs": "232"}) == 81432
    assert _steps_at(vision, {"train.epochs": "375"}, {}) is None  # back to the size's default: not recorded
    assert _steps_at(vision, {}, {"train.max_steps": "70"}) == 70
    language = CellBudget(5000, max_steps=5000, epochs=None, steps_per_epoch=61)
    assert _steps_at(language, {}, {"train.epochs": "3"}) == 5000  # max_steps still wins, as in the engine
    assert _steps_at(language, {}, {"train.max_steps": "null", "train.epochs": "3"}) == 183
    assert _steps_at(language, {"train.max_steps": "9000"}, {"train.epochs": "3"}) is None
    old = CellBudget(500)  # a file that records the full steps alone
    assert _steps_at(old, {}, {"train.max_steps": "70"}) == 70
    assert _steps_at(old, {}, {"train.epochs": "14"}) is None


def test_plan_reads_the_primaries_as_the_report_does(tmp_path, monkeypatch, capsys):
    """Holm over every registered comparison (a --grids plan shows some of them) and, under --until-decided, alpha
    split over the looks: the plan's verdicts and seeds to decide are the report's, not a full-alpha reading."""
    from tiedlab.reports.build import analyse

    monkeypatch.setattr(study_module.launch, "check_reused", lambda runs: None)  # written metrics, not trained runs

    monkeypatch.setattr(study_module.launch, "check_composes", lambda runs: None)  # a paradigm off the search path

    def comparison(insight: int, grid: str) -> dict:
        return {"insight": insight, "paradigm": "toy", "claim": "superiority", "metric": "val/acc", "delta": 0.001,
                "a": {"grid": grid, "where": {"block": "tied"}}, "b": {"grid": grid, "where": {"block": "explicit"}}}

    spec = {"name": "toy", "grids": [{"name": g, "overrides": ["paradigm=toy", "train.max_steps=100"],
                                      "sweep": {"block": ["tied", "explicit"], "seed": [0, 1, 2]}} for g in "gh"],
            "primary": {"comparisons": [comparison(1, "g"), comparison(2, "h")]}}
    runs = tmp_path / "runs"
    sequential = study_module.sequential_plan(spec, 9, 3)  # looks at 3, 6 and 9 seeds
    study_module.write_study_file(runs, spec, sequential)
    for seed, (tied, explicit) in enumerate([(0.90, 0.89), (0.92, 0.915), (0.91, 0.898)]):
        for grid in "gh":
            finished(runs, grid, f"block=tied,seed={seed}", seed, tied, [20])
            finished(runs, grid, f"block=explicit,seed={seed}", seed, explicit, [20])
    report = {r.spec.key: r for r in analyse([runs]).primaries}
    only_g = {**spec, "grids": spec["grids"][:1]}
    (p,) = study_plan(only_g, runs, registered=spec, sequential=sequential).primaries
    assert p.key == "1/toy" and (p.verdict, p.seeds_needed) == (report["1/toy"].verdict, report["1/toy"].seeds_needed)
    (one_look, _) = study_plan(spec, runs).primaries
    assert p.seeds_needed > one_look.seeds_needed  # alpha / 3 needs more seeds than alpha

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "toy.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(study_module, "study_dir", lambda: studies)
    assert study_module.study(["toy", "--runs", str(runs), "--plan", "--grids", "g"]) == 0  # the recorded plan
    out = capsys.readouterr().out
    assert "alpha / 3 looks (--until-decided: 3 to 9 seeds per arm, 3 a look" in out
    assert f"1/toy                      3/3     undetermined   {'~' + str(p.seeds_needed):>19}" in out  # as the report
    with pytest.raises(ValueError, match="plan it with the same --max-seeds and --seed-step"):
        study_module.study(["toy", "--runs", str(runs), "--plan", "--until-decided", "--max-seeds", "12"])
    fresh = tmp_path / "fresh"  # nothing recorded: --until-decided says how it will be read
    assert study_module.study(["toy", "--runs", str(fresh), "--plan", "--until-decided", "--max-seeds", "7"]) == 0
    assert "alpha / 3 looks (--until-decided: 3 to 7 seeds" in capsys.readouterr().out
    assert study_module.study(["toy", "--runs", str(fresh), "--plan"]) == 0
    assert "one look (a fixed design" in capsys.readouterr().out


def test_a_grid_whose_steps_are_not_known_yet_is_explained(tmp_path, monkeypatch):
    from tiedlab.paradigms.plan import format_plan

    monkeypatch.setattr(study_module.launch, "check_reused", lambda runs: None)

    monkeypatch.setattr(study_module.launch, "check_composes", lambda runs: None)  # a paradigm off the search path
    spec = {"name": "toy", "grids": [{"name": "e", "overrides": ["paradigm=toy", "train.epochs=3"],
                                      "sweep": {"seed": [0, 1]}}]}
    text = format_plan(study_plan(spec, tmp_path / "runs"))
    row = next(line for line in text.splitlines() if line.startswith("e "))
    assert row.split()[3] == "?" and "steps/run ?: no train.max_steps in the overrides" in text
    spec["grids"][0]["overrides"].append("train.max_steps=50")
    assert "steps/run ?" not in format_plan(study_plan(spec, tmp_path / "runs"))
