"""Pre-registered primary comparisons: what a study file names before it runs, and their verdicts.

A study file lists, per insight and paradigm, one primary comparison under ``primary:``: two arms (a grid and
the swept values its runs have, never a best-of pick on the metric under test), the metric and its direction,
the kind of claim and the smallest effect of interest ``delta``. Everything else in a report is secondary and
descriptive. The verdicts come from ``reports.stats`` (paired or Welch t intervals, Fisher's exact test, the F,
Brown-Forsythe and Fligner-Killeen tests) with Holm's correction across the report's primary comparisons, family by family. A
``family`` is a set of comparisons whose error rate is controlled together: a study may name them in its first
registration (the quick study: one family per paradigm, since "does insight N transfer to paradigm X" is asked per
paradigm); comparisons added after a study's first runs must carry a ``family`` of their own and arms on grids of
their own (``tiedlab-study`` refuses any other change to a registration), and are corrected apart, as a study apart
would be.

    primary:
      defaults: {delta: {acc: 0.005, knn_acc: 0.005, loss: 0.02}}
      comparisons:
        - {insight: 1, paradigm: vision, claim: noninferiority, metric: val/acc,
           a: {grid: vision_tied_vs_deq, where: {block: tied}},
           b: {grid: vision_tied_vs_deq, where: {block: deq}}}
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping, Protocol

from . import stats
from .load import REPLICATE_KEYS  # the run-name keys that tell replicates apart (seed, fold), never arms
from .load import mixed_layouts  # arms trained in other layouts (seed batches, threads...): their times do not compare
from .load import (PER_PROCESS_METRICS, differing_parts, is_timing,  # time and memory: at one layout
                   layout_difference, layout_parts_label, layout_why, process_layout)
from .load import set_apart  # completed runs flagged not at equilibrium: left out of the arms, counted
from .load import to_float

LATE_FRACTION = 0.2  # "near convergence": the metric's move over the last 20% of a run's steps

KINDS = ("mean", "divergence", "spread")
TRANSFORMS = ("none", "log")
DIRECTIONS = ("higher", "lower")
# The smallest effects of interest when a study names none, by metric name (accuracies are fractions).
DEFAULT_DELTA = {"acc": 0.005, "knn_acc": 0.005, "loss": 0.02}
_ENTRY_KEYS = {"id", "family", "insight", "paradigm", "claim", "metric", "direction", "delta", "kind", "transform", "a", "b", "label"}


class RunLike(Protocol):
    """What a primary comparison reads of a run (``reports.load.Run`` or a run rebuilt from summary.json); a run
    may also have ``at_equilibrium`` (False: left out of its arm, see ``reports.load.set_apart``)."""

    name: str
    status: str
    metrics: dict[str, float]


def run_values(name: str) -> dict[str, str]:
    """The swept ``key=value`` pairs of a run directory's name (its last path component), e.g.
    "vision_depth/block.depth=8,seed=1" -> {"block.depth": "8", "seed": "1"}."""
    leaf = name.rstrip("/").rsplit("/", 1)[-1]
    out = {}
    for part in leaf.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def run_grid(name: str, grids: Iterable[str] = ()) -> str:
    """The grid a run belongs to: the first component of its name that names one of the study's ``grids``
    (names carry a prefix when a report reads several folders), else the first component."""
    parts = name.strip("/").split("/")
    known = set(grids)
    return next((p for p in parts[:-1] if p in known), parts[0])


def same_value(written: str, wanted: str) -> bool:
    """Whether a run directory's value (as Hydra wrote it) is the one a study names: equal as text, as numbers
    (0.001 and 1e-3) or as booleans (True and true)."""
    if written == wanted:
        return True
    if written.lower() in ("true", "false") or wanted.lower() in ("true", "false"):
        return written.lower() == wanted.lower()
    try:
        return float(written) == float(wanted)
    except ValueError:
        return False


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: the runs of ``grid`` whose swept values include ``where``."""

    grid: str
    where: tuple[tuple[str, str], ...]

    @classmethod
    def from_dict(cls, raw: Any, context: str) -> "Arm":
        if not isinstance(raw, Mapping) or set(raw) - {"grid", "where"} or "grid" not in raw:
            raise ValueError(f"{context}: an arm is {{grid: NAME, where: {{key: value, ...}}}}, got {raw!r}")
        where = raw.get("where") or {}
        if not isinstance(where, Mapping):
            raise ValueError(f"{context}: 'where' must map swept keys to values, got {where!r}")
        bad = sorted(k for k in where if k in REPLICATE_KEYS)
        if bad:
            raise ValueError(f"{context}: {bad} tell replicates apart and cannot select an arm")
        return cls(str(raw["grid"]), tuple(sorted((str(k), _text(v)) for k, v in where.items())))

    def matches(self, name: str, grids: Iterable[str] = ()) -> bool:
        values = run_values(name)
        return (run_grid(name, {self.grid, *grids}) == self.grid
                and all(k in values and same_value(values[k], v) for k, v in self.where))

    def title(self) -> str:
        return f"{self.grid}: {', '.join(f'{k}={v}' for k, v in self.where) or 'all'}"


def _text(value: Any) -> str:
    """A YAML value as Hydra writes it in a run directory's name (true -> true, 0.5 -> 0.5)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass(frozen=True)
class PrimarySpec:
    """One pre-registered comparison. A positive effect always favours arm ``a``."""

    insight: int
    paradigm: str
    a: Arm
    b: Arm
    claim: str
    delta: float
    metric: str = "val/acc"
    direction: str = "higher"
    kind: str = "mean"
    transform: str = "none"
    label: str = ""
    id: str = ""  # set when one study pre-registers several comparisons of one insight and paradigm
    family: str = ""  # the comparisons Holm corrects together ("": those the study file puts in no family)

    @property
    def key(self) -> str:
        """The comparison's name in a study: its ``id``, else "INSIGHT/PARADIGM" (the one the transfer table shows)."""
        return self.id or f"{self.insight}/{self.paradigm}"

    @property
    def headline(self) -> bool:
        """True for the comparison the transfer table shows for its insight and paradigm (the one without an id)."""
        return not self.id

    def __post_init__(self) -> None:
        from .insights import INSIGHTS  # the transfer table's rows

        if isinstance(self.insight, bool) or self.insight not in INSIGHTS:
            raise ValueError(f"insight={self.insight!r} is not one of the transfer table's rows {sorted(INSIGHTS)}: "
                             "name the insight the comparison informs (a question of your own takes an id, e.g. "
                             "id: NAME/PARADIGM, beside the insight it bears on)")
        if self.claim not in stats.CLAIMS:
            raise ValueError(f"claim={self.claim!r} is not valid; choose one of {stats.CLAIMS}")
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is not valid; choose one of {KINDS}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction={self.direction!r} is not valid; choose one of {DIRECTIONS}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform={self.transform!r} is not valid; choose one of {TRANSFORMS}")
        if not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta) and self.delta > 0):
            raise ValueError(f"delta={self.delta!r} must be a number > 0 (the smallest effect of interest)")
        if self.kind != "mean" and self.claim != "superiority":
            raise ValueError(f"kind={self.kind} tests a difference only: claim must be 'superiority', "
                             f"got {self.claim!r}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], defaults: Mapping[str, Any], index: int) -> "PrimarySpec":
        context = f"primary comparison #{index + 1}"
        unknown = sorted(set(raw) - _ENTRY_KEYS)
        if unknown:
            raise ValueError(f"{context}: unknown key(s) {unknown}; valid keys: {sorted(_ENTRY_KEYS)}")
        missing = sorted({"insight", "paradigm", "claim", "a", "b"} - set(raw))
        if missing:
            raise ValueError(f"{context}: missing key(s) {missing}")
        metric = str(raw.get("metric", "val/acc"))
        delta, transform = raw.get("delta"), str(raw.get("transform", "none"))
        if transform not in TRANSFORMS:  # named before the delta it would need (``__post_init__`` checks it too)
            raise ValueError(f"{context}: transform={transform!r} is not valid; choose one of {TRANSFORMS}")
        if delta is None and transform != "none":  # the default deltas are in the metric's units
            raise ValueError(f"{context}: transform {transform!r} needs its own delta (the defaults are in the units "
                             f"of {metric!r}, not of its {transform}); set delta")
        if delta is None:
            table = defaults.get("delta") or {}
            delta = table.get(metric.rsplit("/", 1)[-1])
            if delta is None:
                raise ValueError(f"{context}: no delta for metric {metric!r} (defaults name {sorted(table)}); "
                                 "set delta: the smallest effect of interest")
        direction = raw.get("direction") or default_direction(metric)
        if direction is None and str(raw.get("kind", "mean")) == "mean":
            raise ValueError(f"{context}: metric {metric!r} has no known direction (accuracies are higher-is-better, "
                             "losses and perplexities lower); set direction: higher or lower")
        insight = raw["insight"]
        if isinstance(insight, bool) or not isinstance(insight, int):
            raise ValueError(f"{context}: insight={insight!r} must be an integer (the transfer table's row)")
        return cls(insight=insight, paradigm=str(raw["paradigm"]),
                   a=Arm.from_dict(raw["a"], f"{context}, arm a"), b=Arm.from_dict(raw["b"], f"{context}, arm b"),
                   claim=str(raw["claim"]), delta=float(delta), metric=metric,
                   direction=str(direction or "higher"),
                   kind=str(raw.get("kind", "mean")), transform=transform,
                   label=str(raw.get("label", "")), id=str(raw.get("id") or ""),
                   family=str(raw.get("family") or ""))

    def title(self) -> str:
        return self.label or f"{self.a.title()} vs {self.b.title()}"


def default_direction(metric: str) -> str | None:
    """"higher" for an accuracy (``.../acc``, ``.../knn_acc``, ``acc_at_best_val``), "lower" for a loss or
    perplexity; None for any other metric (a time, a residual, a count: its comparison names its direction)."""
    name = metric.rsplit("/", 1)[-1]
    if name.endswith("loss") or name in ("ppl", "perplexity"):
        return "lower"
    if name == "acc" or name.endswith("_acc") or name.startswith("acc_"):
        return "higher"
    return None


def load_primaries(study: Mapping[str, Any]) -> list[PrimarySpec]:
    """The primary comparisons a study file names (an empty list when it names none).

    Raises:
        ValueError: a malformed entry, or two entries with one key (the ``id``, else "INSIGHT/PARADIGM": a study
            may name several comparisons of one insight and paradigm, each but the headline one with an id).
    """
    block = study.get("primary")
    if not block:
        return []
    if not isinstance(block, Mapping) or set(block) - {"defaults", "comparisons"}:
        raise ValueError(f"primary: must be {{defaults: ..., comparisons: [...]}}, got keys {sorted(block)}")
    defaults = block.get("defaults") or {}
    DEFAULT = {"delta": {**DEFAULT_DELTA, **(defaults.get("delta") or {})}}
    specs = [PrimarySpec.from_dict(raw, DEFAULT, i) for i, raw in enumerate(block.get("comparisons") or [])]
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.key in seen:
            raise ValueError(f"primary comparisons #{seen[spec.key] + 1} and #{i + 1} are both {spec.key!r}: "
                             "pre-register one headline comparison per insight and paradigm and give any other an "
                             "id of its own")
        seen[spec.key] = i
    grids = {g["name"] for g in study.get("grids") or []}
    for spec in specs:
        for arm in (spec.a, spec.b):
            if grids and arm.grid not in grids:
                raise ValueError(f"primary comparison of insight {spec.insight} in {spec.paradigm}: grid "
                                 f"{arm.grid!r} is not in the study; grids: {sorted(grids)}")
    return specs


@dataclass
class PrimaryResult:
    """A primary comparison's arms, its test and its (Holm-corrected) verdict. ``effect`` favours arm a when
    positive: mean a - mean b (kind mean; mean b - mean a where lower is better, of the logs under transform log),
    rate b - rate a (divergence), variance b / variance a (spread)."""

    spec: PrimarySpec
    a_runs: list[str]
    b_runs: list[str]
    test: Any  # stats.Comparison for kind mean; stats.RateTest / stats.VarianceTest otherwise
    verdict: str = "undetermined"
    reason: str = ""
    p: float = math.nan
    notes: list[str] = field(default_factory=list)
    effect: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n_a: int = 0
    n_b: int = 0
    paired: bool = False
    seeds_needed: int | None = None
    level: float = math.nan  # the alpha its verdict was read at (after Holm)
    groups: tuple = ()  # kind spread: the values of arm b and arm a the F test compares
    not_at_equilibrium: dict[str, list[str]] = field(default_factory=dict)  # arm ("a", "b") -> runs left out
    diverged: dict[str, int] = field(default_factory=dict)  # arm -> its diverged runs a comparison of values left out
    departs_from_record: bool = False  # a sequential study's verdict that its looks' record does not hold
    differ: list[str] = field(default_factory=list)  # what arm b's cell config sets otherwise than arm a's
    matching: str = ""  # arm b's stored, used and nonzero parameters, step and training time over arm a's


def correct(results: list[PrimaryResult], alpha: float = stats.ALPHA) -> list[PrimaryResult]:
    """Holm across every primary comparison of a report (``stats.holm_levels``): a mean comparison is re-read
    from its interval at its level (``stats.reread``); a divergence or spread test is decided when its p is within
    its level, in the direction its effect has. A divergence test has no other reading and releases its share like
    Holm's; a spread test, undecided, reads "equivalent" when its ``p_equiv`` is within the level (the variance
    ratio within the margin), so it keeps its share, as a superiority comparison of means does."""
    if not results:
        return []
    p = [math.nan if r.test is None else r.test.p if r.spec.kind != "mean" or r.test.readable else math.nan
         for r in results]
    release = [stats.releases(r.spec.claim) if r.spec.kind == "mean" else r.spec.kind == "divergence"
               for r in results]  # a spread comparison keeps its share: its "equivalent" reading could be false
    levels, decided = stats.holm_levels(p, release, alpha)
    m = len(p)  # every registered comparison counts, read or not (stats.holm_levels)
    for r, level, dec in zip(results, levels, decided):
        if r.test is None:  # a reason set before the test (baseline not at equilibrium) stays
            r.level, r.verdict = float(level), "undetermined"
            r.reason = r.reason or "no test: " + "; ".join(r.notes)
            continue
        r.level, r.p = float(level), float(r.test.p)
        if r.spec.kind == "mean":
            c = stats.reread(r.test, float(level), primary=bool(dec),
                             note=f"Holm {'decided' if dec else 'undecided'} at alpha {level:.3g} ({m} comparisons)")
            if not dec and c.verdict != "undetermined":  # the secondary reading (superiority's "equivalent",
                # equivalence's "fails"), not the claim: say so, beside the claim's p
                c = dataclasses.replace(c, reason=(
                    f"the {c.claim} claim is undecided by Holm at alpha {level:.3g} ({m} comparisons; p={c.p:.3g}); "
                    f"its secondary reading: {c.reason.split(': ', 1)[-1]}"))
            r.test, r.verdict, r.reason = c, c.verdict, c.reason
            r.effect, r.ci_low, r.ci_high, r.n_a, r.n_b = c.effect, c.ci_low, c.ci_high, c.n_a, c.n_b
            r.paired, r.seeds_needed = c.paired, c.seeds_needed
            continue
        t = r.test
        if r.spec.kind == "divergence":
            t = r.test = dataclasses.replace(t, alpha=float(level))  # the level it is read at (it has no interval)
            r.effect, r.n_a, r.n_b = t.difference, t.n_b, t.n_a  # the test was called with (b, a)
        else:  # the ratio's interval at the level the verdict is read at, like a mean comparison's
            t = r.test = stats.variance_test(*r.groups, alpha=float(level))
            r.effect, r.ci_low, r.ci_high = t.ratio, t.ci_low, t.ci_high
            r.n_a, r.n_b = (sum(len(cell) for cell in side) for side in reversed(r.groups))  # groups are (b, a)
            r.seeds_needed = (stats.variance_seeds_needed(t.ratio, alpha=float(level), margin=t.margin)
                              if not dec and not t.p_equiv <= level else None)
        favours_a = r.effect > (1.0 if r.spec.kind == "spread" else 0.0)
        if not math.isfinite(t.p):
            r.verdict, r.reason = "undetermined", getattr(t, "reason", "") or "no test"
        elif dec:
            r.verdict = "holds" if favours_a else "fails"
            r.reason = f"Holm decided at alpha {level:.3g} ({m} comparisons): p={t.p:.3g}{_spread_ps(t)}"
        elif r.spec.kind == "spread" and t.p_equiv <= level:  # the secondary reading, as a superiority's
            r.verdict, r.reason = "equivalent", (
                f"the superiority claim is undecided by Holm at alpha {level:.3g} ({m} comparisons; p={t.p:.3g}); "
                f"its secondary reading: the variance ratio lies within [1/{t.margin:g}, {t.margin:g}] "
                f"(two one-sided tests, each of the F, Brown-Forsythe and Fligner-Killeen tests: p={t.p_equiv:.3g})")
        else:
            r.verdict, r.reason = "undetermined", (f"Holm undecided at alpha {level:.3g} ({m} comparisons): "
                                                   f"p={t.p:.3g}{_spread_ps(t)}")
    return results


def _spread_ps(test: Any) -> str:
    """A spread test's three p values (the verdict reads the largest, when their directions agree) and its
    secondary reading's."""
    if not hasattr(test, "p_robust"):
        return ""
    alike = (f"; alike within a variance ratio of {test.margin:g}, the secondary reading: p={test.p_equiv:.3g}"
             if math.isfinite(test.p_equiv) else "")
    return (f" (F test p={test.p_f:.3g}, Brown-Forsythe p={test.p_robust:.3g}, Fligner-Killeen p={test.p_rank:.3g}: "
            f"a verdict needs all three{alike})")


def missing_metric_notes(spec: PrimarySpec, a: list[RunLike], b: list[RunLike]) -> list[str]:
    """A note per arm whose completed runs all lack the comparison's metric (a metric another paradigm writes,
    a typo), naming the metrics of its kind that they record: else the comparison reads "n<2: 0 replicates" with
    runs in both arms and no hint why. Divergence comparisons read statuses, not a metric: none."""
    if spec.kind == "divergence":
        return []
    notes = []
    split = spec.metric.split("/", 1)[0] + "/" if "/" in spec.metric else ""
    for side, members in (("a", a), ("b", b)):
        completed = [r for r in members if r.status == "completed"]
        if completed and not any(spec.metric in r.metrics for r in completed):
            have = sorted({k for r in completed for k in r.metrics if k.startswith(split)})[:6]
            notes.append(f"arm {side}: none of its {len(completed)} completed run(s) records {spec.metric}"
                         + (f" (they record {', '.join(have)})" if have else ""))
    return notes


def replicate_id(run: RunLike) -> Hashable:
    """The seed (and fold) of a run, from its name; the run's name when it has neither."""
    values = run_values(run.name)
    key = tuple(values.get(k) for k in REPLICATE_KEYS)
    return key if any(v is not None for v in key) else run.name


def arm_runs(arm: Arm, runs: Iterable[RunLike], grids: Iterable[str] = ()) -> list[RunLike]:
    """The runs of an arm. Raises ValueError when they span several cells (``where`` names too few keys)."""
    chosen = [r for r in runs if arm.matches(r.name, grids)]
    cells = {tuple(sorted((k, v) for k, v in run_values(r.name).items() if k not in REPLICATE_KEYS)) for r in chosen}
    if len(cells) > 1:
        raise ValueError(f"arm {arm.title()} matches runs of {len(cells)} cells "
                         f"({sorted(', '.join(f'{k}={v}' for k, v in c) for c in cells)}); name the keys that tell "
                         "them apart in 'where'")
    return chosen


def _late_window(run: Any, key: str) -> tuple[tuple[int, float], tuple[int, float], int] | None:
    """(the last evaluation of ``key`` in history.jsonl, the last one at or before 80% of the steps, the run's
    steps), each evaluation as (step, value); None without both. ``fit/*`` is read from ``train/*``. The steps are
    those the run made: a run that ``train.time_limit_s`` stopped early is read over the end of what it trained."""
    hist_key = "train/" + key.split("/", 1)[1] if key.startswith("fit/") else key
    points = [(h["step"], to_float(h.get(hist_key))) for h in getattr(run, "history", None) or []
              if isinstance(h.get("step"), int)]
    points = [p for p in points if math.isfinite(p[1])]
    made = [n for n in (getattr(run, "total_steps", None), getattr(run, "step", None)) if isinstance(n, int) and n > 0]
    total = min(made) if made else (points[-1][0] if points else 0)
    early = [p for p in points if p[0] <= (1 - LATE_FRACTION) * total]
    if len(points) < 2 or not early or early[-1] == points[-1]:
        return None
    return points[-1], early[-1], total


def late_span(run: Any, key: str) -> float | None:
    """The fraction of a run's steps ``late_change`` spans: from the last evaluation at or before 80% of the steps
    to the end, more than ``LATE_FRACTION`` when no evaluation falls at 80% (None without a history)."""
    window = _late_window(run, key)
    return (window[2] - window[1][0]) / window[2] if window else None


def late_change(run: Any, key: str) -> float | None:
    """How far ``key`` moved over the last ``LATE_FRACTION`` of a run's steps: |its last evaluation - the last one
    at or before 80% of the steps| from history.jsonl (None without both). ``fit/*`` is scored once, at the end:
    its move is read from ``train/*``, the training steps' running mean. A run rebuilt from summary.json has no
    history: its move is the one the summary kept (``late_changes``)."""
    kept = getattr(run, "late_changes", None)
    if not getattr(run, "history", None) and kept is not None:
        value = kept.get("train/" + key.split("/", 1)[1] if key.startswith("fit/") else key)
        return value if isinstance(value, float) and math.isfinite(value) else None
    window = _late_window(run, key)
    return abs(window[0][1] - window[1][1]) if window else None


def late_changes(run: Any) -> dict[str, float] | None:
    """``late_change`` of every numeric key of the run's history (what a summary keeps for a rebuild's convergence
    notes; {} for a run without a history, None for a rebuilt run whose summary kept none)."""
    if not getattr(run, "history", None):
        return getattr(run, "late_changes", None) if getattr(run, "from_summary", False) else {}
    keys = sorted({k for h in run.history for k, v in h.items() if k != "step" and isinstance(v, (int, float))})
    moves = {k: late_change(run, k) for k in keys}
    return {k: v for k, v in moves.items() if v is not None}


def per_seed_moves(runs: list[Any], key: str) -> list[float]:
    """``late_change`` of ``key`` per seed: the mean of its runs' moves where a seed has several (the data folds of
    a k-fold grid, a repeated run; at least the move of their mean), so that each seed counts once, as in the
    comparison's test."""
    by_seed: dict[Hashable, list[float]] = {}
    for run in runs:
        if (move := late_change(run, key)) is not None:
            seed = replicate_seed(replicate_id(run)) if hasattr(run, "name") else id(run)  # unnamed: its own
            by_seed.setdefault(seed, []).append(move)
    return [sum(v) / len(v) for v in by_seed.values()]


def convergence_note(spec: PrimarySpec, a: list[Any], b: list[Any]) -> str | None:
    """Whether the arms were read near convergence: the median move of the metric over the last 20% of steps in
    each arm's completed runs (a diverged run has no convergence to read) against the comparison's delta (None when
    the history does not hold the metric). Under a decaying learning rate (the studies' cosine schedules) the move
    shrinks with the rate, so "yes" says the run settled at its budget, not that a longer one would not fit better
    (reports/studies/masks_density/RUN.md, P-budget)."""
    completed = {side: [r for r in runs if getattr(r, "status", "completed") == "completed"]
                 for side, runs in (("A", a), ("B", b))}
    moves = {side: per_seed_moves(runs, spec.metric) for side, runs in completed.items()}
    if not all(moves.values()):
        rebuilt = [r for runs in completed.values() for r in runs]
        if rebuilt and all(getattr(r, "from_summary", False) and r.late_changes is None for r in rebuilt):
            return ("near convergence not read: rebuilt from a summary.json that kept neither the runs' histories "
                    "nor their late moves (summaries written before they were); the report it was rebuilt from says")
        return None
    medians = {side: statistics.median(v) for side, v in moves.items()}
    read = "train/" + spec.metric.split("/", 1)[1] if spec.metric.startswith("fit/") else spec.metric
    settled = max(medians.values()) < spec.delta
    spans = [x for runs in completed.values() for x in (late_span(r, spec.metric) for r in runs) if x is not None]
    span = max(spans, default=math.nan)
    over = (f"the last {LATE_FRACTION:.0%} of steps or more (from the last evaluation at or before "
            f"{1 - LATE_FRACTION:.0%} of them; a rebuild does not know which)" if not spans else
            f"the last {LATE_FRACTION:.0%} of steps" if span <= LATE_FRACTION + 1e-9 else
            f"the last {span:.0%} of steps (no evaluation at {1 - LATE_FRACTION:.0%} of them: from the one before)")
    return (f"near convergence {'yes' if settled else 'no'}: over {over} {read} moved by "
            f"{medians['A']:.3g} (arm A) and {medians['B']:.3g} (arm B), median over seeds, against delta "
            f"{spec.delta:g} (a move, not capacity: a decaying learning rate shrinks it too)")


def _value(spec: PrimarySpec, run: RunLike) -> float:
    value = run.metrics.get(spec.metric, math.nan)
    value = float(value) if isinstance(value, (int, float)) else math.nan
    if spec.transform == "log":
        value = math.log(value) if value > 0 else math.nan
    return value if spec.direction == "higher" else -value


def _values(spec: PrimarySpec, runs: list[RunLike], notes: list[str], side: str) -> dict[Hashable, float]:
    grouped: dict[Hashable, list[float]] = {}
    for run in runs:
        if run.status == "completed":
            grouped.setdefault(replicate_id(run), []).append(_value(spec, run))
    skipped = [r for r in runs if r.status != "completed"]
    if skipped:
        notes.append(f"arm {side}: {len(skipped)} run(s) not completed and left out "
                     f"({', '.join(sorted({r.status for r in skipped}))})")
    merged, merge_notes = stats.merge_duplicates(grouped)
    notes.extend(f"arm {side}: {n}" for n in merge_notes)
    return merged


def replicate_name(rid: Hashable) -> str:
    """A replicate id as a note says it: "seed 3", "seed 3, fold 1", or the run's name."""
    if not isinstance(rid, tuple):
        return str(rid)
    return ", ".join(f"{k.split('.')[-1]} {v}" for k, v in zip(REPLICATE_KEYS, rid) if v is not None)


def replicate_seed(rid: Hashable) -> Hashable:
    """The seed of a replicate id ((seed, fold) -> seed; a run name, the id of a run without either, as it is)."""
    return rid[0] if isinstance(rid, tuple) else rid


def seed_values(spec: PrimarySpec, a: list[RunLike], b: list[RunLike], notes: list[str]
                ) -> tuple[dict[Hashable, float], dict[Hashable, float]]:
    """Each arm's completed runs as one value per seed: repeated runs merged, folds averaged (for a mean comparison
    over the folds both arms have for the seed, ``common_folds``)."""
    va, vb = _values(spec, a, notes, "a"), _values(spec, b, notes, "b")
    if spec.kind == "mean":
        return common_folds(va, vb, notes)
    return seeds_over_folds(va, notes, "a"), seeds_over_folds(vb, notes, "b")


def has_folds(values: Mapping[Hashable, float]) -> bool:
    """Whether replicate ids carry a data fold (the runs sweep ``data.fold``)."""
    return any(isinstance(k, tuple) and k[-1] is not None for k in values)


def seeds_over_folds(values: dict[Hashable, float], notes: list[str], side: str) -> dict[Hashable, float]:
    """One value per seed: the mean over a seed's data folds where the runs sweep ``data.fold`` (the folds of one
    seed share its initialisation and most of their training data, so counting (seed, fold) pairs as independent
    replicates reads a k-fold t test at several times its alpha); ids without a fold are kept as they are. Runs
    that sweep folds but not the seed are all one replicate (a note says so)."""
    if not has_folds(values):
        return values
    by_seed: dict[Hashable, list[float]] = {}
    for key, value in values.items():
        by_seed.setdefault((replicate_seed(key), None) if isinstance(key, tuple) else key, []).append(value)
    folds = sorted({len(v) for v in by_seed.values()})
    notes.append(f"arm {side}: the folds of each seed averaged ({'/'.join(map(str, folds))} per seed): the seed is "
                 "the replicate" + ("; the runs sweep no seed, so all their folds are one replicate"
                                    if (None, None) in by_seed else ""))
    return {seed: sum(v) / len(v) for seed, v in by_seed.items()}


def common_folds(va: dict[Hashable, float], vb: dict[Hashable, float], notes: list[str]
                 ) -> tuple[dict[Hashable, float], dict[Hashable, float]]:
    """Where the runs sweep folds, each arm's seeds averaged over their folds, and for a seed both arms have over the
    folds both have: a fold one arm lost (diverged, off equilibrium, not finite) is left out of the other arm's mean
    for that seed too, so that the seed's paired difference compares like folds (each fold's own difficulty would
    otherwise enter it). A seed in one arm only keeps its own folds; an arm without folds is as it is."""
    if not (has_folds(va) and has_folds(vb)):
        return seeds_over_folds(va, notes, "a"), seeds_over_folds(vb, notes, "b")
    shared = {replicate_seed(k) for k in va} & {replicate_seed(k) for k in vb}
    ka = {k: v for k, v in va.items() if replicate_seed(k) not in shared or k in vb}
    kb = {k: v for k, v in vb.items() if replicate_seed(k) not in shared or k in va}
    unpaired = len(va) - len(ka) + len(vb) - len(kb)
    if unpaired:
        notes.append(f"{unpaired} (seed, fold) run(s) whose fold the other arm lacks for that seed left out: a seed "
                     "both arms have is averaged over the folds both have")
    return seeds_over_folds(ka, notes, "a"), seeds_over_folds(kb, notes, "b")


def ended_replicates(runs: list[RunLike], notes: list[str], side: str) -> dict[Hashable, bool]:
    """Per seed of an arm's runs that ended (completed or diverged): whether it diverged. Several runs of one seed
    (run directories repeated by two folders or name layouts, or its data folds) are one replicate, not several:
    training is deterministic per seed, and folds of one seed are not independent; the seed counts as diverged
    when any of its runs did (a note says so when they disagree)."""
    by_seed: dict[Hashable, list[bool]] = {}
    for run in runs:
        if run.status in ("completed", "diverged"):
            by_seed.setdefault(replicate_seed(replicate_id(run)), []).append(run.status == "diverged")
    repeated = {seed: v for seed, v in by_seed.items() if len(v) > 1}
    if repeated:
        split = sorted(str(seed) for seed, v in repeated.items() if len(set(v)) > 1)
        notes.append(f"arm {side}: {len(repeated)} seed(s) with several runs counted once"
                     + (f"; seed(s) {', '.join(split)} diverged in some of their runs only (counted as diverged)"
                        if split else ""))
    return {seed: any(v) for seed, v in by_seed.items()}


LIMIT_NOTE = "(the look it was decided at, or the last look it was read at)"  # why a comparison reads its seeds
EQUILIBRIUM_REASON = "baseline not at equilibrium"
MIXED_REASON = "not read: its runs were not made alike"  # see config_differences, layout_differences
MIN_USABLE = 2  # an arm left with fewer usable replicates after leaving out runs not at equilibrium is undetermined


def leave_out_not_at_equilibrium(runs: list[RunLike], notes: list[str], side: str) -> tuple[list[RunLike], list[str]]:
    """(the arm's runs less those flagged not at equilibrium, their names); a note names how many were left out."""
    out = [r.name for r in runs if set_apart(r)]
    if out:
        notes.append(f"arm {side}: {len(out)} run(s) not at equilibrium and left out ({', '.join(sorted(out))})")
    return [r for r in runs if not set_apart(r)], out


def _recorded_keys(members: list[RunLike]) -> list[dict[str, Any]]:
    """The cell configs (``Run.key``) of an arm's runs that ended, for runs read from run directories (a run rebuilt
    from a summary has no config: the report that wrote the summary checked it)."""
    return [r.key for r in members if r.status in ("completed", "diverged") and getattr(r, "config", None)]


def config_differences(a: list[RunLike], b: list[RunLike], thresholds: bool = True) -> str:
    """How the runs a comparison reads differ where they must not ("" when they do not, or when configs are not
    known): within an arm, in the config that defines their cell (``Run.key``: every setting but the replicate
    keys and bookkeeping; a key only some of them record, added after the others ran, is not compared:
    ``config_gaps`` names it), and across both arms' DEQ runs, in the equilibrium thresholds and measurement
    settings that decide which of them are set apart (``thresholds``; each compared over the runs that record it;
    not for a
    divergence rate, which counts those runs). Runs of an arm are told
    apart by their directory names only, so an edited study file or an extra override could otherwise pool two
    configs."""
    out = []
    for side, members in (("a", a), ("b", b)):
        keys = _recorded_keys(members)
        shared = sorted(set.intersection(*(set(k) for k in keys))) if keys else []
        differ = [n for n in shared if len({json.dumps(k[n], default=str) for k in keys}) > 1]
        if differ:
            shown = ", ".join(f"{n} ({' vs '.join(sorted({str(k[n]) for k in keys}))})" for n in differ[:4])
            out.append(f"arm {side}'s runs differ in {shown}{f' and {len(differ) - 4} more' if len(differ) > 4 else ''}")
    judged: dict[str, set[str]] = {}  # each threshold or setting: its values over the runs that record it
    for r in (*a, *b):
        if r.status == "completed" and (eq := getattr(r, "equilibrium", None)) is not None:
            for key, value in eq.judged_by().items():
                judged.setdefault(key, set()).add(json.dumps(value, default=str))
    differ = {k: v for k, v in sorted(judged.items()) if len(v) > 1}
    if thresholds and differ:
        out.append("the DEQ runs were judged at equilibrium under different thresholds or measurement settings ("
                   + "; ".join(f"{k}: {' vs '.join(sorted(v))}" for k, v in differ.items()) + ")")
    return "; ".join(out)


def arm_differences(keys_a: list[Mapping[str, Any]], keys_b: list[Mapping[str, Any]]) -> list[str]:
    """What two arms' cell configs (``Run.key``, or ``launch._cell_config``: flattened, less seeds and
    bookkeeping) set otherwise: ``"key: A vs B"`` for each key both arms record with other values (each side's
    values over the runs that record it, joined by "/" when they disagree), then the sections of the keys no run of
    the other arm records (``"only B: grad.*, solver.*"``: what its mode reads); [] when either arm's configs are
    unknown. What a comparison is about shows up here too (``block.mode: tied vs deq``), beside anything else that
    differs (a DEQ recipe's norm). A key only some runs of an arm record (another code version) is named by
    ``config_gaps``."""
    if not keys_a or not keys_b:
        return []

    def values(keys: list[Mapping[str, Any]], name: str) -> str:
        return " / ".join(sorted({_text(k[name]) for k in keys if name in k}))

    all_a, all_b = set().union(*keys_a), set().union(*keys_b)
    out = [f"{name}: {values(keys_a, name)} vs {values(keys_b, name)}" for name in sorted(all_a & all_b)
           if values(keys_a, name) != values(keys_b, name)]
    for side, own, other in (("A", all_a, all_b), ("B", all_b, all_a)):
        sections = sorted({name.rsplit(".", 1)[0] + ".*" if "." in name else name for name in own - other})
        if sections:
            out.append(f"only {side}: {', '.join(sections)}")
    return out


MATCHED = (("stored", "params/unique"), ("used", "params/used"), ("nonzero over layers", "params/nonzero"),
           ("forward cell calls", "core/nfe_forward"), ("step time", "time/step_ms"),
           ("training time", "time/train_s"))


def arm_matching(a: list[RunLike], b: list[RunLike]) -> str:
    """How the arms match in size and compute: arm b's median over its completed runs of each ``MATCHED``
    metric, over arm a's (``"B/A: stored 1x, used 1x, nonzero over layers 0.66x, ..., step time 3.05x"``;
    a metric an arm's runs do not record is left out, as are the times when the arms did not train alike:
    ``mixed_layouts``). Descriptive: the times are measured (machine load moves them)."""
    parts = []
    mixed = mixed_layouts([r for r in (*a, *b) if r.status == "completed"])
    for name, key in MATCHED:
        if mixed and key.startswith(PER_PROCESS_METRICS):
            continue
        medians = []
        for members in (a, b):
            got = [v for r in members if r.status == "completed"
                   and isinstance(v := (getattr(r, "metrics", None) or {}).get(key), (int, float)) and math.isfinite(v)]
            medians.append(statistics.median(got) if got else None)
        if medians[0] and medians[1] is not None:
            parts.append(f"{name} {medians[1] / medians[0]:.3g}x")
    return "B/A: " + ", ".join(parts) if parts else ""


def config_gaps(a: list[RunLike], b: list[RunLike]) -> list[str]:
    """One note per arm whose runs do not all record the same config keys (runs of another code version: a key
    added later is missing from the older runs' config.yaml), naming the keys; ``config_differences`` compares the
    others."""
    out = []
    for side, members in (("a", a), ("b", b)):
        keys = [set(k) for k in _recorded_keys(members)]
        gaps = sorted(set().union(*keys) - set.intersection(*keys)) if keys else []
        if gaps:
            out.append(f"arm {side}: some runs' configs lack {', '.join(gaps[:4])}{' ...' if len(gaps) > 4 else ''} "
                       "(written by another code version; not compared)")
    return out


def stopped_early_notes(a: list[RunLike], b: list[RunLike]) -> list[str]:
    """One note per arm with completed runs that stopped before their last step (``train.time_limit_s``: a cap
    that a slow machine reaches first), naming the steps they reached: such a run is read as it ended, so an arm
    cut short trained less than its design says."""
    out = []
    for side, members in (("a", a), ("b", b)):
        cut = [r for r in members if r.status == "completed" and isinstance(getattr(r, "step", None), int)
               and isinstance(getattr(r, "total_steps", None), int) and r.step < r.total_steps]
        if cut:
            out.append(f"arm {side}: {len(cut)} of {len(members)} run(s) stopped by train.time_limit_s before their "
                       f"last step (at {', '.join(f'{r.step}/{r.total_steps}' for r in cut)} steps), read as they ended")
    return out




def warmup_notes(metric: str, a: list[RunLike], b: list[RunLike]) -> list[str]:
    """For ``time/step_ms`` or ``time/train_s``: one note per arm whose DEQ runs trained their first steps unrolled
    (``train.deq_warmup_steps``, about a tied step's cost each), which the metric includes, with the mean step time
    of the steps that solved and of the warm-up (``time/solve_step_ms``, ``time/warmup_step_ms``; runs that record
    them), so that a reader sees how far the warm-up lowers the DEQ's cost."""
    if metric not in ("time/step_ms", "time/train_s"):
        return []
    out = []
    for side, members in (("a", a), ("b", b)):
        done = [r for r in members if r.status == "completed"]
        warm = [r for r in done if math.isfinite(to_float(r.metrics.get("time/warmup_step_ms")))]
        if warm:
            solve, unrolled = (statistics.fmean(to_float(r.metrics.get(k)) for r in warm)
                               for k in ("time/solve_step_ms", "time/warmup_step_ms"))
            out.append(f"arm {side}: {metric} includes the unrolled warm-up of {len(warm)} DEQ run(s) "
                       f"(train.deq_warmup_steps; mean ms per step: {solve:.3g} solving, {unrolled:.3g} warm-up)")
        # runs from before the phases were timed: their config says whether they warmed up
        timed = {id(r) for r in warm}
        untimed = [r for r in done if id(r) not in timed and _warmup_steps(r)]
        if untimed:
            steps = "/".join(map(str, sorted({_warmup_steps(r) for r in untimed})))
            out.append(f"arm {side}: {metric} includes the unrolled warm-up of {len(untimed)} DEQ run(s) "
                       f"(train.deq_warmup_steps={steps}; its time was not recorded)")
    return out


def _warmup_steps(run: RunLike) -> int:
    """A DEQ run's warm-up steps as its config records them (0: none, not a DEQ, or no config: a rebuild)."""
    config = getattr(run, "config", None) or {}
    if (config.get("block") or {}).get("mode") != "deq":
        return 0
    return int((config.get("train") or {}).get("deq_warmup_steps") or 0)


def layout_differences(metric: str, a: list[RunLike], b: list[RunLike]) -> str:
    """For a time, throughput or memory metric: how the runs' layouts (``process_layout``: seed batches, process
    counts and, for a time, threads and processes sharing the device) differ ("" when each pair of runs of one
    seed, or every run when the arms are not paired, trained alike, or when no provenance says). A run trained in a
    seed batch of K records the batch's step seconds divided by K and the batch's peak memory, and a torchrun rank
    one process's share, so it is not compared with a run trained in batches of another size (separate runs: K = 1)
    or over another number of processes, nor its seconds with threads or processes per device other than its own,
    nor with one whose provenance does not say beside one whose does (``mixed_layouts``' rule)."""
    if not metric.startswith(PER_PROCESS_METRICS):
        return ""

    def sizes(members: list[RunLike]) -> dict[Hashable, tuple]:  # replicate -> its layout
        return {replicate_id(r): process_layout(r, is_timing(metric)) for r in members
                if r.status in ("completed", "diverged")}

    ka, kb = sizes(a), sizes(b)
    common = ka.keys() & kb.keys()
    if common:  # paired by seed: each pair's runs must have trained alike
        differ = sorted((replicate_name(s), ka[s], kb[s]) for s in common if ka[s] != kb[s])
    else:
        differ = [] if len(set(ka.values()) | set(kb.values())) <= 1 else [("-", ka, kb)]
    if not differ:
        return ""
    if common:
        shown = ", ".join(f"{s}: {layout_difference([x, y], ordered=True)}" for s, x, y in differ[:3])
        apart = [layout for _, x, y in differ for layout in (x, y)]  # why: from the pairs that differ
    else:
        apart = [*ka.values(), *kb.values()]
        parts = differing_parts(apart)
        shown = "; ".join(f"arm {side}: " + " or ".join(layout_parts_label(x, parts) for x in sorted(set(k.values())))
                          for side, k in (("a", ka), ("b", kb)))
    return f"{metric} was measured by runs that did not train alike ({shown}): {layout_why(apart)}"


def short_of_equilibrium(left_out: dict[str, list[str]], usable: dict[str, int]) -> str:
    """The reason a comparison is undetermined because leaving out runs not at equilibrium left an arm with fewer
    than ``MIN_USABLE`` usable replicates ("" when no arm is)."""
    short = [f"arm {side} has {usable[side]} usable replicate(s) after {len(left_out[side])} not at equilibrium "
             "were left out" for side in ("a", "b") if left_out[side] and usable[side] < MIN_USABLE]
    return f"{EQUILIBRIUM_REASON}: {'; '.join(short)} (needs {MIN_USABLE})" if short else ""


def equilibrium_text(result: PrimaryResult) -> str:
    """"not at equilibrium, left out: arm a 0, arm b 2", and "diverged, left out: arm a 0, arm b 3" for a comparison
    of final values, which a diverged run has none of, then, for a comparison read, what that does to its verdict
    ("" when no run was left out): it is read on the runs kept, and where an arm's lost runs were its bad draws its
    kept ones flatter it, so that a false verdict for that arm is more likely than the level says."""
    left, diverged = result.not_at_equilibrium, result.diverged
    parts = []
    if any(left.values()):
        parts.append(f"not at equilibrium, left out: arm a {len(left.get('a', []))}, arm b {len(left.get('b', []))}")
    if any(diverged.values()):
        parts.append(f"diverged, left out: arm a {diverged.get('a', 0)}, arm b {diverged.get('b', 0)}")
    if parts and result.test is not None:  # read (not undetermined for want of runs)
        parts.append(LEFT_OUT_NOTE)
    return "; ".join(parts)


LEFT_OUT_NOTE = ("read on the runs kept, which flatter an arm whose lost runs were its bad draws (its divergence and "
                 "equilibrium counts are the other half of the answer)")


def seed_of(run: RunLike) -> int | None:
    """The run's seed, from its name (None when its name has none)."""
    try:
        return int(run_values(run.name)["seed"])
    except (KeyError, ValueError):
        return None


def evaluate_primaries(specs: list[PrimarySpec], runs: list[RunLike], alpha: float = stats.ALPHA,
                       looks: int = 1, grids: Iterable[str] = (),
                       seed_limits: Mapping[str, int] | None = None, first_seed: int = 0) -> list[PrimaryResult]:
    """Each spec's test on its arms' runs, then Holm across the comparisons of each ``family`` (at ``alpha / looks``
    per look when the seeds were added sequentially: ``tiedlab-study --until-decided``). Families are named in
    the study file (unnamed: family ""); an amendment is always a family of its own (see ``tiedlab-study``).
    ``seed_limits`` maps a comparison's ``key`` to how many seeds it is read on, from ``first_seed`` on (the look
    it was decided at)."""
    runs, grids = list(runs), list(grids) or sorted({s.a.grid for s in specs} | {s.b.grid for s in specs})
    status_of = {r.name: r.status for r in runs}
    results = []
    for spec in specs:
        limit = (seed_limits or {}).get(spec.key)
        a, b = ([r for r in arm_runs(arm, runs, grids) if limit is None or (seed_of(r) is not None and
                                                                         0 <= seed_of(r) - first_seed < limit)]
                for arm in (spec.a, spec.b))
        notes: list[str] = [f"arm {side} ({arm.title()}) matches no run" for side, arm, members
                            in (("a", spec.a, a), ("b", spec.b, b)) if not members]
        if limit is not None:
            seeds = f"seeds < {limit}" if first_seed == 0 else f"seeds {first_seed}-{first_seed + limit - 1}"
            notes.append(f"read on {seeds} {LIMIT_NOTE}")
        names = ([r.name for r in a], [r.name for r in b])
        described = {"differ": arm_differences(_recorded_keys(a), _recorded_keys(b)), "matching": arm_matching(a, b)}
        notes.extend([*missing_metric_notes(spec, a, b), *config_gaps(a, b), *stopped_early_notes(a, b),
                      *warmup_notes(spec.metric, a, b)])
        mixed = "; ".join(x for x in (config_differences(a, b, thresholds=spec.kind != "divergence"),
                                      layout_differences(spec.metric, a, b)) if x)
        if mixed:
            results.append(PrimaryResult(spec, *names, None, reason=f"{MIXED_REASON}: {mixed}", notes=notes,
                                         n_a=len(a), n_b=len(b), **described))
            continue
        if spec.kind == "divergence":  # a rate over every run that ended: one that completed off equilibrium
            left_out = {"a": [], "b": []}  # did not diverge, and leaving it out alone would inflate the rate
            notes.extend(f"arm {side}: {n} completed run(s) not at equilibrium counted as not diverged"
                         for side, members in (("a", a), ("b", b)) if (n := sum(map(set_apart, members))))
        else:
            (a, out_a), (b, out_b) = (leave_out_not_at_equilibrium(members, notes, side)
                                      for side, members in (("a", a), ("b", b)))
            left_out = {"a": out_a, "b": out_b}
        if spec.kind == "divergence":
            usable = {"a": len(ended_replicates(a, [], "a")), "b": len(ended_replicates(b, [], "b"))}
        else:
            ua, ub = seed_values(spec, a, b, [])  # the seeds the test will read
            usable = {"a": len(ua), "b": len(ub)}
        short = short_of_equilibrium(left_out, usable)
        if short:
            results.append(PrimaryResult(spec, *names, None, reason=short, notes=notes, n_a=usable["a"],
                                         n_b=usable["b"], not_at_equilibrium=left_out, **described))
            continue
        if spec.kind == "mean":
            note = convergence_note(spec, a, b)
            if note:
                notes.append(note)
            va, vb = seed_values(spec, a, b, notes)
            common = set(va) & set(vb)
            if set(va) != set(vb) and len(common) >= 2:  # pair on the seeds both arms have
                notes.append(f"paired on the {len(common)} seeds both arms have; "
                             f"{len(set(va) ^ set(vb))} unpaired replicate(s) left out")
                va, vb = {k: va[k] for k in common}, {k: vb[k] for k in common}
            elif set(va) != set(vb) and len(va) >= 2 and len(vb) >= 2:
                notes.append(f"not paired: the arms share {len(common)} seed(s); Welch's t with Hsu's df")
            test = stats.compare(va, vb, claim=spec.claim, delta=spec.delta, alpha=alpha)
        elif spec.kind == "divergence":  # a positive effect favours a: fewer of its runs diverged
            ended_a, ended_b = ended_replicates(a, notes, "a"), ended_replicates(b, notes, "b")
            if not ended_a or not ended_b:
                notes.append("an arm has no completed or diverged run: no rate to compare")
                results.append(PrimaryResult(spec, *names, None, notes=notes, not_at_equilibrium=left_out,
                                             **described))
                continue
            test = stats.rate_test(sum(ended_b.values()), len(ended_b), sum(ended_a.values()), len(ended_a),
                                   alpha=alpha)
        else:  # spread: a positive effect favours a: its runs vary less over seeds
            va, vb = seed_values(spec, a, b, notes)
            groups = ([list(vb.values())], [list(va.values())])
            test = stats.variance_test(*groups, alpha=alpha)
        results.append(PrimaryResult(spec, *names, test, notes=notes, not_at_equilibrium=left_out, **described))
        if spec.kind == "spread":
            results[-1].groups = groups
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for family in dict.fromkeys(r.spec.family for r in results):  # Holm within each family, in study order
            correct([r for r in results if r.spec.family == family], alpha=stats.sequential_alpha(looks, alpha)[-1])
    for r in results:  # the verdict says how many runs of each arm were left out (not at equilibrium, diverged)
        if r.spec.kind != "divergence":
            r.diverged = {side: sum(status_of.get(name) == "diverged" for name in names)
                          for side, names in (("a", r.a_runs), ("b", r.b_runs))}
        extra = equilibrium_text(r)
        if extra:
            r.reason = f"{r.reason}; {extra}" if r.reason else extra
    return results
