"""Budget checks: does a primary comparison's effect stay put when the arms train longer?

The "near convergence" note of a primary comparison (the metric's move over the last 20% of steps against delta) is
met at any budget under a decaying learning rate: the studies' cosine schedules shrink the move with the rate, so it
says the run settled at its budget, not that the model reached its capacity (reports/studies/masks_density/RUN.md,
P-budget: the vision gap at density 0.5 fell from +0.046 to +0.005 when the steps doubled). A budget check trains a
comparison's arms again at a larger budget on some of its seeds and asks, by an equivalence test on the per-seed
change of the effect, whether the effect moved by less than the comparison's delta:

    budget_checks:
      - {of: 4/vision-d0.125-long, grid: masks_density_16k_long}       # both arms' `where` on another grid
      - {of: stored/vision-d0.5-long, a: {grid: G, where: {...}}, b: {grid: H, where: {...}}}  # or each arm named

A check is descriptive: it never changes a verdict. Its reading is "stable" (the change is within +-delta: TOST at
alpha 0.05, uncorrected), "moved" (the change is shown to exceed delta) or "undetermined"; its prediction belongs in
the study file's header, written before its runs (``tiedlab-study`` refuses a change to a check already recorded).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping

from . import stats
from .primary import Arm, PrimarySpec, RunLike, _value, arm_runs, replicate_id

CHECK_ALPHA = stats.ALPHA  # each check's equivalence test, uncorrected (a check decides no verdict)
READINGS = {"equivalent": "stable", "fails": "moved", "undetermined": "undetermined"}
_KEYS = {"of", "grid", "a", "b"}


@dataclass(frozen=True)
class BudgetCheckSpec:
    """A registered comparison (``of``, its key) read again on the arms ``a`` and ``b`` at a larger budget."""

    of: str
    a: Arm
    b: Arm

    @classmethod
    def from_dict(cls, raw: Any, comparisons: Mapping[str, PrimarySpec], grids: Iterable[str],
                  index: int) -> "BudgetCheckSpec":
        context = f"budget check #{index + 1}"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{context}: a check is {{of: COMPARISON, grid: NAME}} or {{of: ..., a: ARM, b: ARM}}, "
                             f"got {raw!r}")
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise ValueError(f"{context}: unknown key(s) {unknown}; valid keys: {sorted(_KEYS)}")
        of = str(raw.get("of", ""))
        if of not in comparisons:
            raise ValueError(f"{context}: of={of!r} names no primary comparison; registered: {sorted(comparisons)}")
        spec = comparisons[of]
        if spec.kind != "mean":
            raise ValueError(f"{context}: {of!r} is a {spec.kind} comparison; a budget check reads mean comparisons")
        if ("grid" in raw) == ("a" in raw or "b" in raw):
            raise ValueError(f"{context}: name either grid (both arms' 'where' on another grid) or both arms a and b")
        if "grid" in raw:
            a, b = Arm(str(raw["grid"]), spec.a.where), Arm(str(raw["grid"]), spec.b.where)
        elif "a" in raw and "b" in raw:
            a, b = Arm.from_dict(raw["a"], f"{context}, arm a"), Arm.from_dict(raw["b"], f"{context}, arm b")
        else:
            raise ValueError(f"{context}: name both arms, a and b")
        known = set(grids)
        for arm, base in ((a, spec.a), (b, spec.b)):
            if known and arm.grid not in known:
                raise ValueError(f"{context}: grid {arm.grid!r} is not in the study; grids: {sorted(known)}")
            if arm.grid == base.grid:
                raise ValueError(f"{context}: arm on grid {arm.grid!r}, the comparison's own; a check reads the arms "
                                 "at another budget, so on a grid of its own")
        return cls(of, a, b)


def load_budget_checks(study: Mapping[str, Any], specs: list[PrimarySpec]) -> list[BudgetCheckSpec]:
    """The budget checks a study file names (an empty list when it names none).

    Raises:
        ValueError: a malformed check, or one whose comparison or grids the study does not have.
    """
    raw = study.get("budget_checks") or []
    if not isinstance(raw, list):
        raise ValueError(f"budget_checks: must be a list of checks, got {raw!r}")
    comparisons = {s.key: s for s in specs}
    grids = [g["name"] for g in study.get("grids") or []]
    return [BudgetCheckSpec.from_dict(entry, comparisons, grids, i) for i, entry in enumerate(raw)]


@dataclass
class BudgetCheck:
    """A check's reading. ``base`` and ``check`` are the mean effects (positive favours arm A, as the comparison's)
    on ``seeds`` at the registered and at the check's budget; ``change`` is their paired difference (check - base)
    with its two-sided 1 - alpha t interval (``stats.compare``); ``arms`` maps "A" and "B" to the arm's mean metric at (base, check)."""

    spec: BudgetCheckSpec
    comparison: PrimarySpec
    seeds: list[Hashable] = field(default_factory=list)
    steps: tuple[float, float] = (math.nan, math.nan)
    base: float = math.nan
    check: float = math.nan
    change: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    reading: str = "undetermined"
    reason: str = ""
    arms: dict[str, tuple[float, float]] = field(default_factory=dict)


def _by_seed(comparison: PrimarySpec, runs: list[RunLike]) -> dict[Hashable, float]:
    """An arm's completed runs, one value per replicate (the comparison's orientation: higher is better)."""
    values: dict[Hashable, list[float]] = {}
    for run in runs:
        if run.status == "completed":
            values.setdefault(replicate_id(run), []).append(_value(comparison, run))
    return {k: statistics.fmean(v) for k, v in values.items() if all(math.isfinite(x) for x in v)}


def _steps(runs: list[RunLike]) -> float:
    steps = [s for r in runs if isinstance(s := getattr(r, "total_steps", None), (int, float))]
    return float(statistics.median(steps)) if steps else math.nan


def evaluate_budget_checks(checks: list[BudgetCheckSpec], comparisons: list[PrimarySpec], runs: list[RunLike],
                           grids: Iterable[str] = ()) -> list[BudgetCheck]:
    """Each check on the seeds that have a completed run in all four arms (the comparison's two at its budget and
    the check's two), read by an equivalence test of the per-seed change of the effect at the comparison's delta."""
    runs, grids = list(runs), list(grids)
    by_key = {s.key: s for s in comparisons}
    out = []
    for check in checks:
        comparison = by_key[check.of]
        arms = {name: arm_runs(arm, runs, grids) for name, arm in
                (("A", comparison.a), ("B", comparison.b), ("A2", check.a), ("B2", check.b))}
        values = {name: _by_seed(comparison, members) for name, members in arms.items()}
        seeds = sorted(set.intersection(*(set(v) for v in values.values())), key=str)
        result = BudgetCheck(check, comparison, seeds=seeds,
                             steps=(_steps(arms["A"] + arms["B"]), _steps(arms["A2"] + arms["B2"])))
        out.append(result)
        if len(seeds) < 2:
            result.reason = f"{len(seeds)} seed(s) with a completed run in all four arms; a check needs 2"
            continue
        base = {s: values["A"][s] - values["B"][s] for s in seeds}
        longer = {s: values["A2"][s] - values["B2"][s] for s in seeds}
        test = stats.compare(longer, base, claim="equivalence", delta=comparison.delta, alpha=CHECK_ALPHA)
        sign = 1.0 if comparison.direction == "higher" else -1.0  # the arms' means in the metric's own units
        result.arms = {side: (sign * statistics.fmean(values[side][s] for s in seeds),
                              sign * statistics.fmean(values[side + "2"][s] for s in seeds)) for side in ("A", "B")}
        result.base, result.check = statistics.fmean(base.values()), statistics.fmean(longer.values())
        result.change, result.ci_low, result.ci_high = test.effect, test.ci_low, test.ci_high
        result.reading, result.reason = READINGS[test.verdict], test.reason
    return out
