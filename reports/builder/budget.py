"""Budget checks: does a primary comparison's effect stay put when the arms train longer?

The "near convergence" note of a primary comparison (the metric's move over the last 20% of steps against delta) is
met at any budget under a decaying learning rate: the studies' cosine schedules shrink the move with the rate, so it
says the run settled at its budget, not that the model reached its capacity (reports/studies/masks_density/RUN.md,
P-budget: the vision gap at density 0.5 fell from +0.046 to +0.005 when the steps doubled). A budget check trains a
comparison's arms again at a larger budget on some of its seeds, each arm on a grid of its own with the arm's own
``where``, and asks whether the effect's size changed by less than the comparison's delta:

    budget_checks:
      - {of: 4/vision-d0.125-long, grid: masks_density_16k_long}   # both arms on another grid
      - {of: stored/vision-d0.5-long, a: masks_16k, b: dense_16k}  # or each arm on a grid of its own

The change of the effect (A - B, the comparison's orientation) is taken per seed and read by ``stats.compare``
with claim equivalence at alpha 0.05, uncorrected: "stable" when its 95% t interval lies within +-delta (each
one-sided test at 0.025), "moved" when the interval lies wholly beyond delta on one side, else "undetermined". A
check is descriptive: it never changes a verdict, and it tests the effect's size on the seeds it has, not the
verdict's claim (a gap may shrink by more than delta and stay positive). Its prediction belongs in the study file's
header, written before its runs (``tiedlab-study`` refuses a change to a check already recorded).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping

from . import stats
from .load import REPLICATE_KEYS, set_apart
from .primary import Arm, PrimarySpec, RunLike, _text, _value, arm_runs, replicate_id

CHECK_ALPHA = stats.ALPHA  # each check's equivalence reading, uncorrected (a check decides no verdict)
READINGS = {"equivalent": "stable", "fails": "moved", "undetermined": "undetermined"}
_KEYS = {"of", "grid", "a", "b"}


@dataclass(frozen=True)
class BudgetCheckSpec:
    """A registered comparison (``of``, its key) read again on the arms ``a`` and ``b``: the comparison's arms with
    the same ``where`` on the check's grids."""

    of: str
    a: Arm
    b: Arm

    @classmethod
    def from_dict(cls, raw: Any, comparisons: Mapping[str, PrimarySpec], grids: Mapping[str, Mapping[str, Any]],
                  index: int) -> "BudgetCheckSpec":
        context = f"budget check #{index + 1}"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{context}: a check is {{of: COMPARISON, grid: NAME}} or {{of: ..., a: NAME, b: NAME}}, "
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
        if "grid" in raw and ("a" in raw or "b" in raw) or not ("grid" in raw or ("a" in raw and "b" in raw)):
            raise ValueError(f"{context}: name either grid (both arms on one grid) or the grids of both arms, a and b")
        names = (raw["grid"], raw["grid"]) if "grid" in raw else (raw["a"], raw["b"])
        a, b = (Arm(str(name), base.where) for name, base in zip(names, (spec.a, spec.b)))
        for side, arm, base in (("a", a, spec.a), ("b", b, spec.b)):
            check_arm(arm, base, grids, f"{context}, arm {side}")
        return cls(of, a, b)


def check_arm(arm: Arm, base: Arm, grids: Mapping[str, Mapping[str, Any]], context: str) -> None:
    """The check's arm selects exactly one cell of its grid: a grid of the study other than the comparison's own
    whose sweep has every key of ``where`` (with its value) and no other key of several values but the seed.

    Raises:
        ValueError: naming the grid, the key and the grid's sweep.
    """
    if arm.grid not in grids:
        raise ValueError(f"{context}: grid {arm.grid!r} is not in the study; grids: {sorted(grids)}")
    if arm.grid == base.grid:
        raise ValueError(f"{context}: grid {arm.grid!r} is the comparison's own; a check reads the arms at another "
                         "budget, so on a grid of its own")
    sweep = grids[arm.grid].get("sweep") or {}
    values = {str(k): [_text(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in sweep.items()}
    for key, value in arm.where:
        if value not in values.get(key, []):
            raise ValueError(f"{context}: grid {arm.grid!r} does not sweep {key}={value} (the comparison's arm); "
                             f"its sweep: {sweep}")
    loose = sorted(k for k, vs in values.items() if len(vs) > 1 and k not in REPLICATE_KEYS
                   and k not in dict(arm.where))
    if loose:
        raise ValueError(f"{context}: grid {arm.grid!r} sweeps {loose} over several values, which the comparison's "
                         f"arm does not name, so the arm would span several cells; its sweep: {sweep}")


def load_budget_checks(study: Mapping[str, Any], specs: list[PrimarySpec]) -> list[BudgetCheckSpec]:
    """The budget checks a study file names (an empty list when it names none).

    Raises:
        ValueError: a malformed check, or one whose comparison or grids the study does not have.
    """
    raw = study.get("budget_checks") or []
    if not isinstance(raw, list):
        raise ValueError(f"budget_checks: must be a list of checks, got {raw!r}")
    comparisons = {s.key: s for s in specs}
    grids = {str(g["name"]): g for g in study.get("grids") or []}
    return [BudgetCheckSpec.from_dict(entry, comparisons, grids, i) for i, entry in enumerate(raw)]


@dataclass
class BudgetCheck:
    """A check's reading. ``base`` and ``check`` are the mean effects (positive favours arm A, as the comparison's)
    on ``seeds`` at the registered and at the check's budget; ``change`` is their paired difference (check - base)
    with its two-sided 1 - alpha t interval (``stats.compare``); ``arms`` maps "A" and "B" to the arm's mean metric
    (as the runs recorded it) at (base, check); ``seeds_needed``: for an undetermined reading, seeds for power 80%
    at the observed change and spread."""

    spec: BudgetCheckSpec
    comparison: PrimarySpec
    seeds: list[str] = field(default_factory=list)
    steps: tuple[float, float] = (math.nan, math.nan)
    base: float = math.nan
    check: float = math.nan
    change: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    reading: str = "undetermined"
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    seeds_needed: int | None = None
    arms: dict[str, tuple[float, float]] = field(default_factory=dict)


def _seed_label(rid: Hashable) -> str:
    """"3" for seed 3, "3/fold 1" with a swept fold ("-/fold 1" without a seed: all folds one replicate, as in the
    primary comparisons), the run name when it has neither."""
    if isinstance(rid, tuple):
        seed, fold = rid[0], rid[-1]
        return f"{'-' if seed is None else seed}/fold {fold}" if fold is not None else str(seed)
    return str(rid)


def _seed_of(label: str) -> str:
    """"3" for "3/fold 1" (and for "3")."""
    return label.split("/fold ", 1)[0]


def _over_folds(values: dict[str, float]) -> dict[str, float]:
    """One value per seed: the mean over its folds (the seed is the replicate, as in the primary comparisons)."""
    by_seed: dict[str, list[float]] = {}
    for label, value in values.items():
        by_seed.setdefault(_seed_of(label), []).append(value)
    return {seed: statistics.fmean(v) for seed, v in by_seed.items()}


def _sort_key(label: str) -> tuple:
    head = label.split("/", 1)[0]
    return (0, int(head), label) if head.isdigit() else (1, 0, label)


def _by_seed(comparison: PrimarySpec, runs: list[RunLike]) -> tuple[dict[str, float], dict[str, float]]:
    """An arm's completed runs (not set apart as off equilibrium), one value per replicate: (in the comparison's
    orientation, higher is better; as recorded). A replicate with a non-finite value is left out."""
    oriented: dict[str, list[float]] = {}
    raw: dict[str, list[float]] = {}
    for run in runs:
        if run.status == "completed" and not set_apart(run):
            label = _seed_label(replicate_id(run))
            oriented.setdefault(label, []).append(_value(comparison, run))
            raw.setdefault(label, []).append(float(run.metrics.get(comparison.metric, math.nan)))
    keep = [k for k, v in oriented.items() if all(math.isfinite(x) for x in v)]
    return ({k: statistics.fmean(oriented[k]) for k in keep}, {k: statistics.fmean(raw[k]) for k in keep})


def _steps(runs: list[RunLike]) -> float:
    steps = [s for r in runs if isinstance(s := getattr(r, "total_steps", None), (int, float))]
    return float(statistics.median(steps)) if steps else math.nan


def evaluate_budget_checks(checks: list[BudgetCheckSpec], comparisons: list[PrimarySpec], runs: list[RunLike],
                           grids: Iterable[str] = ()) -> list[BudgetCheck]:
    """Each check on the seeds that have a completed run in all four arms (the comparison's two at its budget and
    the check's two), read by an equivalence test of the per-seed change of the effect at the comparison's delta.
    A check that cannot be read (an arm spans several cells or has no run) is undetermined with the reason."""
    runs, grids = list(runs), list(grids)
    by_key = {s.key: s for s in comparisons}
    out = []
    for check in checks:
        comparison = by_key[check.of]
        result = BudgetCheck(check, comparison)
        out.append(result)
        sides = {"A": comparison.a, "B": comparison.b, "A2": check.a, "B2": check.b}
        try:
            arms = {name: arm_runs(arm, runs, grids) for name, arm in sides.items()}
        except ValueError as error:
            result.reason = str(error)
            continue
        result.steps = (_steps(arms["A"] + arms["B"]), _steps(arms["A2"] + arms["B2"]))
        result.notes = [f"arm {name[0]}{' at the larger budget' if name.endswith('2') else ''} ({arm.title()}) "
                        "matches no run" for name, arm in sides.items() if not arms[name]]
        if not all(math.isfinite(s) for s in result.steps) or result.steps[1] <= result.steps[0]:
            result.notes.append(f"the check's budget ({result.steps[1]:g} steps) is not known to be larger than the "
                                f"comparison's ({result.steps[0]:g})")
        read = {name: _by_seed(comparison, members) for name, members in arms.items()}
        values = {name: oriented for name, (oriented, _) in read.items()}
        started = {_seed_label(replicate_id(r)) for r in arms["A2"] + arms["B2"]}
        seeds = sorted(set.intersection(*(set(v) for v in values.values())), key=_sort_key)
        dropped = sorted(started - set(seeds), key=_sort_key)
        if dropped:
            what = "seed/fold run(s)" if any("/fold " in d for d in dropped) else "seed(s)"
            result.notes.append(f"{what} {', '.join(dropped)} ran at the larger budget but lack a completed run in "
                                "some arm (diverged, unfinished, off equilibrium or non-finite): left out")
        result.seeds = sorted({_seed_of(label) for label in seeds}, key=_sort_key)
        if len(result.seeds) < 2:
            result.reason = f"{len(result.seeds)} seed(s) with a completed run in all four arms; a check needs 2"
            continue
        base = _over_folds({s: values["A"][s] - values["B"][s] for s in seeds})
        longer = _over_folds({s: values["A2"][s] - values["B2"][s] for s in seeds})
        test = stats.compare(longer, base, claim="equivalence", delta=comparison.delta, alpha=CHECK_ALPHA)
        result.arms = {side: tuple(statistics.fmean(_over_folds({s: read[name][1][s] for s in seeds}).values())
                                   for name in (side, side + "2")) for side in ("A", "B")}
        result.base, result.check = statistics.fmean(base.values()), statistics.fmean(longer.values())
        result.change, result.ci_low, result.ci_high = test.effect, test.ci_low, test.ci_high
        result.reading, result.reason, result.seeds_needed = READINGS[test.verdict], test.reason, test.seeds_needed
    return out


def budget_note(check: BudgetCheck) -> str:
    """"budget check (8,000 -> 16,000 steps, seeds 0, 1): the effect +0.097 -> +0.073, change -0.025 [-0.035,
    -0.015]: undetermined" (a primary comparison's note; its verdict stays)."""
    steps = " -> ".join(f"{s:,.0f}" if math.isfinite(s) else "?" for s in check.steps)
    if not math.isfinite(check.change):
        return f"budget check ({steps} steps): {check.reading} ({check.reason})"
    interval = f" [{check.ci_low:+.3g}, {check.ci_high:+.3g}]" if math.isfinite(check.ci_low) else ""
    return (f"budget check ({steps} steps, seeds {', '.join(check.seeds)}): the effect {check.base:+.3g} -> "
            f"{check.check:+.3g}, change {check.change:+.3g}{interval}: {check.reading} (descriptive; the verdict "
            "reads the registered budget)")
