"""Budget checks: a registered comparison read again at a larger budget, by an equivalence test of the per-seed
change of its effect (reports/builder/budget.py)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import yaml
from scipy import stats as scipy_stats

from tiedlab.paradigms.study import check_budget_checks
from tiedlab.reports.budget import evaluate_budget_checks, load_budget_checks
from tiedlab.reports.build import build_report
from tiedlab.reports.primary import load_primaries

from .conftest import write_run

COMPARISON = {"id": "gap", "insight": 4, "paradigm": "vision", "claim": "superiority", "metric": "fit/loss",
              "delta": 0.02, "a": {"grid": "g", "where": {"mask": "distinct"}},
              "b": {"grid": "g", "where": {"mask": "shared"}}}
SWEEP = {"mask": ["distinct", "shared"], "seed": [0, 1, 2, 3]}
STUDY = {"name": "t", "grids": [{"name": "g", "sweep": SWEEP}, {"name": "g2", "sweep": SWEEP},
                                {"name": "s2", "sweep": {"mask": ["shared"], "seed": [0, 1]}},
                                {"name": "h2", "sweep": {**SWEEP, "mask.sparsity": [0.5, 0.875]}},
                                {"name": "n2", "sweep": {"mask": ["distinct"]}}],
         "primary": {"comparisons": [COMPARISON]}}


@dataclass
class FakeRun:
    name: str
    status: str = "completed"
    metrics: dict[str, float] = field(default_factory=dict)
    total_steps: int | None = None


def runs(grid: str, distinct: list[float], shared: list[float], steps: int) -> list[FakeRun]:
    return [FakeRun(f"{grid}/mask={mask},seed={seed}", metrics={"fit/loss": value}, total_steps=steps)
            for mask, values in (("distinct", distinct), ("shared", shared)) for seed, value in enumerate(values)]


def checks(*entries):
    study = {**STUDY, "budget_checks": list(entries)}
    specs = load_primaries(study)
    return load_budget_checks(study, specs), specs


def test_a_gap_that_stays_put_is_stable_and_one_that_shrinks_moved_with_the_paired_numbers():
    (check,), specs = checks({"of": "gap", "grid": "g2"})
    distinct, shared = [0.10, 0.11, 0.12, 0.10], [0.20, 0.21, 0.22, 0.21]  # gap (shared - distinct) ~0.10
    distinct2, shared2 = [0.05, 0.061, 0.07, 0.05], [0.15, 0.16, 0.171, 0.16]  # both fit better, the gap ~0.10
    base, same = runs("g", distinct, shared, 8000), runs("g2", distinct2, shared2, 16000)
    (stable,) = evaluate_budget_checks([check], specs, base + same)
    assert stable.reading == "stable" and stable.steps == (8000.0, 16000.0) and len(stable.seeds) == 4
    # the change is the paired t interval of (gap at 16k - gap at 8k) per seed, as scipy computes it
    change = [(s2 - d2) - (s - d) for d, s, d2, s2 in zip(distinct, shared, distinct2, shared2)]
    ci = scipy_stats.ttest_1samp(change, 0.0).confidence_interval(0.95)
    assert stable.change == pytest.approx(sum(change) / 4)
    assert (stable.ci_low, stable.ci_high) == pytest.approx((ci.low, ci.high))
    assert stable.arms["A"] == pytest.approx((0.1075, 0.05775)) and stable.arms["B"][1] < stable.arms["B"][0]
    shrunk = runs("g2", [0.01, 0.012, 0.011, 0.01], [0.02, 0.021, 0.022, 0.021], 16000)  # gap ~0.01: moved ~-0.09
    (moved,) = evaluate_budget_checks([check], specs, base + shrunk)
    assert moved.reading == "moved" and moved.change == pytest.approx(-0.09225) and moved.ci_high < -0.02
    noisy = runs("g2", [0.05, 0.06, 0.07, 0.05], [0.20, 0.10, 0.18, 0.12], 16000)  # the change straddles +-delta
    (unclear,) = evaluate_budget_checks([check], specs, base + noisy)
    assert unclear.reading == "undetermined"


def test_a_check_reads_only_seeds_with_all_four_arms_and_says_which_it_left_out():
    (check,), specs = checks({"of": "gap", "grid": "g2"})
    base = runs("g", [0.10, 0.11, 0.12, 0.10], [0.20, 0.21, 0.22, 0.21], 8000)
    longer = runs("g2", [0.05, 0.06, 0.07], [0.15, 0.165, float("nan")], 16000)  # seed 3 absent, seed 2 non-finite
    (two,) = evaluate_budget_checks([check], specs, base + longer)
    assert two.seeds == ["0", "1"] and math.isfinite(two.ci_low)
    assert two.notes == ["seed(s) 2 ran at the larger budget but lack a completed run in some arm (diverged, "
                         "unfinished, off equilibrium or non-finite): left out"]
    one = [r for r in longer if "seed=0" in r.name]
    (short,) = evaluate_budget_checks([check], specs, base + one)
    assert short.reading == "undetermined" and short.reason.startswith("1 seed(s)") and math.isnan(short.change)
    (none,) = evaluate_budget_checks([check], specs, base)
    assert "arm A at the larger budget (g2: mask=distinct) matches no run" in none.notes
    seeds = runs("g", [0.1] * 12, [0.2] * 12, 8000) + runs("g2", [0.1] * 12, [0.2] * 12, 16000)
    (many,) = evaluate_budget_checks([check], specs, seeds)
    assert many.seeds[:3] == ["0", "1", "2"] and many.seeds[-1] == "11"  # numeric order, not "10" before "2"


def test_a_check_arm_spanning_several_cells_or_none_is_refused_when_loaded():
    (check,), _ = checks({"of": "gap", "a": "g2", "b": "s2"})  # each arm on its own grid, its where kept
    assert (check.a.grid, check.b.grid, check.b.where) == ("g2", "s2", (("mask", "shared"),))
    with pytest.raises(ValueError, match=r"grid 'h2' sweeps \['mask.sparsity'\] over several values"):
        checks({"of": "gap", "grid": "h2"})
    with pytest.raises(ValueError, match=r"arm b: grid 'n2' does not sweep mask=shared"):
        checks({"of": "gap", "grid": "n2"})


def test_bad_checks_are_errors_naming_the_value():
    with pytest.raises(ValueError, match=r"of='nope' names no primary comparison; registered: \['gap'\]"):
        checks({"of": "nope", "grid": "g2"})
    with pytest.raises(ValueError, match=r"grid 'g9' is not in the study"):
        checks({"of": "gap", "grid": "g9"})
    with pytest.raises(ValueError, match=r"grid 'g' is the comparison's own"):
        checks({"of": "gap", "grid": "g"})
    with pytest.raises(ValueError, match=r"either grid .* or the grids of both arms"):
        checks({"of": "gap", "grid": "g2", "a": "g2"})
    with pytest.raises(ValueError, match=r"either grid .* or the grids of both arms"):
        checks({"of": "gap", "a": "g2"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['steps'\]"):
        checks({"of": "gap", "grid": "g2", "steps": 2})


def test_recorded_checks_may_grow_but_not_change(tmp_path):
    first = [{"of": "gap", "grid": "g2"}]
    check_budget_checks(tmp_path, first, first + [{"of": "gap", "grid": "d2"}], "t")  # appended: fine
    with pytest.raises(ValueError, match=r"recorded other budget checks"):
        check_budget_checks(tmp_path, first, [{"of": "gap", "grid": "d2"}], "t")


def test_the_report_shows_each_check_and_summary_json_carries_it(tmp_path):
    folder = tmp_path / "runs"
    for grid, steps in (("g", 8000), ("g2", 16000)):
        for seed, (d, s) in enumerate([(0.10, 0.20), (0.11, 0.21), (0.12, 0.22), (0.10, 0.21)]):
            for mask, value in (("distinct", d), ("shared", s)):
                noise = 0.002 * seed * (mask == "shared") * (grid == "g2")  # the gap moves by 0-0.006: stable
                path = write_run(folder / grid, f"mask={mask},seed={seed}", seed=seed, val=0.8,
                                 extra={"fit/loss": value - 0.05 * (grid == "g2") + noise})
                metrics = json.loads((path / "metrics.json").read_text())
                (path / "metrics.json").write_text(json.dumps({**metrics, "total_steps": steps}))
    (folder / "study.yaml").write_text(yaml.safe_dump({**STUDY, "budget_checks": [{"of": "gap", "grid": "g2"}]}))
    build_report([folder], tmp_path / "out", "t")
    readme = (tmp_path / "out" / "README.md").read_text()
    section = readme.split("## Budget checks (the same comparison at a larger budget)", 1)[1].split("\n## ", 1)[0]
    (row,) = [line for line in section.splitlines() if line.startswith("| gap |")]
    assert row.startswith("| gap | 8,000 -> 16,000 | 0, 1, 2, 3 | +0.102 | +0.105 |") and "| stable (" in row
    (entry,) = json.loads((tmp_path / "out" / "summary.json").read_text())["budget_checks"]
    assert entry["of"] == "gap" and entry["reading"] == "stable" and entry["steps"] == [8000.0, 16000.0]
    assert entry["change"] == pytest.approx(0.003)
    (primary,) = json.loads((tmp_path / "out" / "summary.json").read_text())["primaries"]
    assert any(n.startswith("budget check (8,000 -> 16,000 steps, seeds 0, 1, 2, 3): the effect +0.102 -> +0.105, "
                            "change +0.003 [") and n.endswith(": stable (descriptive; the verdict reads the "
                                                              "registered budget)") for n in primary["notes"])


def test_a_study_file_with_a_bad_check_fails_when_loaded_and_a_runs_folder_keeps_its_checks(tmp_path, monkeypatch):
    from tiedlab.paradigms import study as study_module

    folder = tmp_path / "configs"
    folder.mkdir()
    bad = {**STUDY, "budget_checks": [{"of": "gap", "grid": "h2"}]}
    (folder / "t.yaml").write_text(yaml.safe_dump(bad))
    monkeypatch.setattr(study_module, "study_dir", lambda: folder)
    with pytest.raises(ValueError, match=r"t.yaml: budget check #1, arm a: grid 'h2' sweeps \['mask.sparsity'\]"):
        study_module.load_study("t")
    good = {**STUDY, "budget_checks": [{"of": "gap", "grid": "g2"}]}
    runs_folder = tmp_path / "runs"
    study_module.write_study_file(runs_folder, good, None)
    study_module.write_study_file(runs_folder, {**good, "budget_checks": good["budget_checks"] * 2}, None)  # grows
    with pytest.raises(ValueError, match=r"recorded other budget checks"):
        study_module.write_study_file(runs_folder, {**good, "budget_checks": []}, None)


def test_a_check_over_folds_reads_each_seed_once():
    """Runs that sweep data.fold: the change is read per seed, averaged over its folds (the seed is the replicate,
    as in the primary comparisons), not per (seed, fold)."""
    (check,), specs = checks({"of": "gap", "grid": "g2"})

    def folded(grid, distinct, shared, steps):
        return [FakeRun(f"{grid}/data.fold={f},mask={mask},seed={seed}", metrics={"fit/loss": value + 0.01 * f},
                        total_steps=steps)
                for mask, values in (("distinct", distinct), ("shared", shared)) for seed, value in enumerate(values)
                for f in range(3)]

    base = folded("g", [0.10, 0.11, 0.12], [0.20, 0.21, 0.22], 8000)
    longer = folded("g2", [0.05, 0.061, 0.07], [0.15, 0.16, 0.171], 16000)
    (result,) = evaluate_budget_checks([check], specs, base + longer)
    assert result.seeds == ["0", "1", "2"]
    change = [(s2 - d2) - (s - d) for d, s, d2, s2 in zip([0.10, 0.11, 0.12], [0.20, 0.21, 0.22],
                                                          [0.05, 0.061, 0.07], [0.15, 0.16, 0.171])]
    ci = scipy_stats.ttest_1samp(change, 0.0).confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high))


def test_a_check_over_folds_without_a_seed_is_one_replicate():
    """Folds swept and no seed: one replicate, as in the primary comparisons (a check needs 2), not one per fold."""
    (check,), specs = checks({"of": "gap", "grid": "g2"})
    runs_ = [FakeRun(f"{grid}/data.fold={f},mask={mask}", metrics={"fit/loss": value + 0.01 * f}, total_steps=steps)
             for grid, steps, d, sh in (("g", 8000, 0.10, 0.20), ("g2", 16000, 0.05, 0.15))
             for mask, value in (("distinct", d), ("shared", sh)) for f in range(4)]
    (result,) = evaluate_budget_checks([check], specs, runs_)
    assert result.seeds == ["-"] and result.reason == "1 seed(s) with a completed run in all four arms; a check needs 2"
