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
STUDY = {"name": "t", "grids": [{"name": "g"}, {"name": "g2"}, {"name": "d2"}],
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


def test_a_check_reads_only_seeds_with_all_four_arms_and_says_so_below_two():
    (check,), specs = checks({"of": "gap", "grid": "g2"})
    base = runs("g", [0.10, 0.11, 0.12, 0.10], [0.20, 0.21, 0.22, 0.21], 8000)
    longer = runs("g2", [0.05, 0.06], [0.15, 0.16], 16000)  # seeds 0 and 1 only
    (two,) = evaluate_budget_checks([check], specs, base + longer)
    assert len(two.seeds) == 2 and math.isfinite(two.ci_low)  # seeds 2 and 3 have no run at the larger budget
    one = [r for r in longer if not r.name.endswith("seed=1")]
    (short,) = evaluate_budget_checks([check], specs, base + one)
    assert short.reading == "undetermined" and "1 seed(s)" in short.reason and math.isnan(short.change)


def test_explicit_arms_and_bad_checks_are_errors_naming_the_value():
    (check,), _ = checks({"of": "gap", "a": {"grid": "g2", "where": {"mask": "distinct"}},
                          "b": {"grid": "d2", "where": {"model.width": 16}}})
    assert (check.a.grid, check.b.grid, check.b.where) == ("g2", "d2", (("model.width", "16"),))
    with pytest.raises(ValueError, match=r"of='nope' names no primary comparison; registered: \['gap'\]"):
        checks({"of": "nope", "grid": "g2"})
    with pytest.raises(ValueError, match=r"grid 'g9' is not in the study"):
        checks({"of": "gap", "grid": "g9"})
    with pytest.raises(ValueError, match=r"on grid 'g', the comparison's own"):
        checks({"of": "gap", "grid": "g"})
    with pytest.raises(ValueError, match=r"either grid .* or both arms"):
        checks({"of": "gap", "grid": "g2", "a": {"grid": "g2"}})
    with pytest.raises(ValueError, match=r"name both arms"):
        checks({"of": "gap", "a": {"grid": "g2"}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['steps'\]"):
        checks({"of": "gap", "grid": "g2", "steps": 2})


def test_recorded_checks_may_grow_but_not_change(tmp_path):
    first = [{"of": "gap", "grid": "g2"}]
    check_budget_checks(tmp_path, first, first + [{"of": "gap", "grid": "d2"}], "t")  # appended: fine
    with pytest.raises(ValueError, match=r"recorded other budget checks"):
        check_budget_checks(tmp_path, first, [{"of": "gap", "grid": "d2"}], "t")


def test_the_report_shows_each_check_and_summary_json_carries_it(tmp_path):
    folder = tmp_path / "runs"
    for grid, shift, steps in (("g", 0.0, 8000), ("g2", -0.05, 16000)):
        for seed, (d, s) in enumerate([(0.10, 0.20), (0.11, 0.21), (0.12, 0.22), (0.10, 0.21)]):
            for mask, value in (("distinct", d), ("shared", s)):
                path = write_run(folder / grid, f"mask={mask},seed={seed}", seed=seed, val=0.8,
                                 extra={"fit/loss": value + shift + 0.001 * seed * (mask == "shared")})
                metrics = json.loads((path / "metrics.json").read_text())
                (path / "metrics.json").write_text(json.dumps({**metrics, "total_steps": steps}))
    (folder / "study.yaml").write_text(yaml.safe_dump({**STUDY, "budget_checks": [{"of": "gap", "grid": "g2"}]}))
    build_report([folder], tmp_path / "out", "t")
    readme = (tmp_path / "out" / "README.md").read_text()
    section = readme.split("## Budget checks (the same comparison at a larger budget)", 1)[1].split("\n## ", 1)[0]
    assert "| gap | 8,000 -> 16,000 | 4 |" in section and "stable" in section
    (entry,) = json.loads((tmp_path / "out" / "summary.json").read_text())["budget_checks"]
    assert entry["of"] == "gap" and entry["reading"] == "stable" and entry["steps"] == [8000.0, 16000.0]
