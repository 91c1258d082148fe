"""Does each insight of Song, Majumder & Lin (2023) transfer? Verdicts from matched comparisons of cells.

Every insight is a set of comparisons; each is a linear contrast of cell means (usually side A minus
side B) signed so that a positive effect is the insight's direction, decided by one rule (``RULE``).
"""

from __future__ import annotations

import dataclasses

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .aggregate import Cell, Stat, best, groups
from .load import Run, layout_why, mixed_layouts, process_layout, to_float
from .stats import MIN_SPREAD_N

Z = 2.0  # a comparison is decided when |effect| > Z * SE
SATURATION = 0.25  # insight 5: the last depth step gains less than this fraction of the first
TARGET_FRACTION = 0.95  # insight 2: target = 95% of the worse of the two best final values

RULE = (
    "A descriptive screen, not a test: each insight is screened per paradigm and dataset by matched comparisons of "
    "two sides (e.g. tied vs DEQ at one width). A comparison's effect d is the difference of the sides' means in "
    "the insight's direction (the sign is flipped where lower is better: loss, time, divergence, spread), and "
    "SE = sqrt(s_a^2/n_a + s_b^2/n_b) (s: sample std over seeds, ddof=1). The screen reads 'A ahead' if d > 2 SE, "
    "'B ahead' if d < -2 SE, and 'not separated' otherwise or when a side has fewer than 2 runs (n<2). Per insight: "
    "A ahead when some comparison is and none has B ahead, B ahead in the mirror case, else not separated (mixed, "
    "within 2 SE, n<2 or no runs). Accuracy comparisons use the final val primary metric of completed runs; a "
    "side's cell is the one with the best mean among cells with >= 2 seeds (a best-of pick on the metric compared). "
    "Insight 3 screens a divergence rate (two-proportion SE) and a log variance ratio (large-sample SE) the same "
    "way. The headline effect is that of the comparison with the largest |d|/SE. Completed DEQ runs flagged not at "
    "equilibrium are left out of every comparison (counted under Equilibrium).")

INSIGHTS: dict[int, tuple[str, str]] = {
    1: ("tied >= DEQ accuracy",
        "Weight-tied (unmasked) is at least as accurate as the DEQ variants at the same width: best tied cell vs best "
        "DEQ cell at each width; d = tied - DEQ."),
    2: ("tied reaches accuracy faster",
        f"Weight-tied reaches a given accuracy in less training time than DEQ: with the cells of insight 1, the target "
        f"is {TARGET_FRACTION:.0%} of the worse of the two best final values (within 5% of it when lower is better); a "
        "run's time to target is the training time (time/train_s) of its first evaluation in history.jsonl at or "
        "beyond it (a run that never reaches it counts its whole training time, a lower bound, so a side with such a "
        "run is not called ahead; without time curves, as in a rebuild from summary.json, or when the runs did not "
        "train alike (seed batches of different sizes, whose seconds are a batch's divided by K, other thread or "
        "process counts, other processes sharing the device), the seconds are not read); d = "
        "DEQ - tied seconds. Peak memory is shown beside it."),
    3: ("tied is more stable",
        "Weight-tied is more stable than DEQ at the same width: (a) divergence over the completed and diverged runs "
        "of every tied / DEQ cell, d = DEQ rate - tied rate with the two-proportion SE sqrt(p(1-p)(1/n_a + 1/n_b)) "
        "(p: the pooled rate); (b) spread over seeds, d = ln(pooled within-cell variance of DEQ / of tied) with "
        "SE = sqrt(2/df_a + 2/df_b) (df = sum of n - 1 over cells with >= 2 seeds; the large-sample SE of a log "
        "variance). Both use the 2 SE rule, a screen: at a few seeds, and with skewed seed outcomes, (b) calls a "
        f"difference more often than its SE says (the primary spread verdict needs {MIN_SPREAD_N} seeds a side and "
        "three tests)."),
    4: ("distinct masks win",
        "Distinct masks beat a shared mask and no mask at the same unique parameters: among tied runs of the same "
        "width and depth (masks add no parameters), best distinct vs best shared cell of the same mask kind and "
        "sparsity, and best distinct vs the unmasked cell; d = distinct - other."),
    5: ("accuracy saturates with depth",
        f"Accuracy saturates with depth: for each variant and width with >= 3 depths (d1 < d2 < ... < dk), the "
        f"contrast "
        f"{SATURATION:g} * (m(d2) - m(d1)) - (m(dk) - m(dk-1)) is positive, i.e. the last depth step gains less than "
        f"{SATURATION:.0%} of the first."),
    6: ("width buys more than depth",
        "Width buys more than depth: for each variant, from each (width, depth) of the grid, one step up in width vs "
        "one step up in depth (the next larger value in the grid, a doubling in the usual grids); d = m(wider) - "
        "m(deeper). Unique parameters and step time of both sides are shown (for tied models depth adds no unique "
        "parameters, so this favours depth at matched parameters; step times only when both sides trained in seed "
        "batches of one size)."),
}


@dataclass
class Comparison:
    """One matched comparison: side A (favoured by the insight) against side B."""

    setting: str
    a: str
    b: str
    n_a: int
    n_b: int
    effect: float
    se: float
    verdict: str
    reason: str
    unit: str
    a_runs: list[str] = field(default_factory=list)
    b_runs: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def z(self) -> float:
        if not math.isfinite(self.effect):
            return 0.0
        if self.se > 0:
            return abs(self.effect) / self.se
        return math.inf if self.effect != 0 else 0.0


@dataclass
class InsightResult:
    """The verdict on one insight for one paradigm and dataset."""

    insight: int
    paradigm: str
    dataset: str
    verdict: str
    reason: str
    effect: float
    unit: str
    n_a: int
    n_b: int
    comparisons: list[Comparison]

    def short(self) -> str:
        """"holds (+0.1 acc, n=3 vs 3)" or "inconclusive (no runs)"."""
        if self.verdict == "inconclusive" and self.reason in ("no runs", "n<2"):
            return f"inconclusive ({self.reason})"
        detail = f"{self.effect:+.3g} {self.unit}, n={self.n_a} vs {self.n_b}" if math.isfinite(self.effect) else ""
        if self.verdict == "inconclusive":
            detail = f"{self.reason}; {detail}" if detail else self.reason
        return f"{self.verdict} ({detail})" if detail else self.verdict


def decide(effect: float, se: float, min_n: int) -> tuple[str, str]:
    """(verdict, reason) of one comparison under ``RULE``."""
    if min_n == 0:
        return "inconclusive", "no runs"
    if min_n < 2:
        return "inconclusive", "n<2"
    if not math.isfinite(effect) or not math.isfinite(se):
        return "inconclusive", "not finite"
    if effect > Z * se:
        return "holds", f"d > {Z:g} SE"
    if effect < -Z * se:
        return "fails", f"d < -{Z:g} SE"
    return "inconclusive", f"within {Z:g} SE"


def contrast(terms: list[tuple[float, list[float]]]) -> tuple[float, float, int]:
    """(sum c * mean, sqrt(sum c^2 s^2 / n), smallest n) of independent samples with coefficients c."""
    stats = [(c, Stat.of(v)) for c, v in terms]
    min_n = min((s.n for _, s in stats), default=0)
    if min_n == 0:
        return math.nan, math.nan, 0
    effect = sum(c * s.mean for c, s in stats)
    se = math.sqrt(sum(c * c * (s.std or 0.0) ** 2 / s.n for c, s in stats)) if min_n >= 2 else math.nan
    return effect, se, min_n


def compare(setting: str, a: str, b: str, a_values: list[float], b_values: list[float], unit: str,
            a_runs: Iterable[Run] = (), b_runs: Iterable[Run] = (), **extra: Any) -> Comparison:
    """A two-sample comparison: d = mean(a) - mean(b) (values already signed in the insight's direction)."""
    effect, se, min_n = contrast([(1.0, a_values), (-1.0, b_values)])
    verdict, reason = decide(effect, se, min_n)
    return Comparison(setting, a, b, Stat.of(a_values).n, Stat.of(b_values).n, effect, se, verdict, reason, unit,
                      [r.name for r in a_runs], [r.name for r in b_runs], extra)


def side(cell: Cell) -> str:
    stat = cell.primary()
    return f"{cell.title()} ({stat.mean:.4g}, n={stat.n})" if stat.n else f"{cell.title()} (n=0)"


def is_plain_tied(cell: Cell) -> bool:
    return cell.mode == "tied" and cell.mask_mode == "none" and not cell.label.endswith("+jac")


def depth_matters(cell: Cell) -> bool:
    """Depth is a real axis for explicit and tied blocks, and for DEQ only with distinct masks (cycle length)."""
    return cell.mode in ("explicit", "tied") or (cell.mode == "deq" and cell.mask_mode == "distinct")


def _by(cells: Iterable[Cell], key: Callable[[Cell], Any]) -> dict[Any, list[Cell]]:
    out: dict[Any, list[Cell]] = {}
    for c in cells:
        out.setdefault(key(c), []).append(c)
    return out


def _sorted_keys(keys: Iterable[Any]) -> list[Any]:
    return sorted(keys, key=lambda k: (k is None, k if k is not None else 0))


def _metric_unit(cells: list[Cell]) -> str:
    return cells[0].metric if cells else ""


def _tied_vs_deq(cells: list[Cell]) -> list[tuple[Any, list[Cell], list[Cell]]]:
    tied, deq = _by(filter(is_plain_tied, cells), lambda c: c.width), _by((c for c in cells if c.mode == "deq"),
                                                                            lambda c: c.width)
    return [(w, tied[w], deq[w]) for w in _sorted_keys(set(tied) & set(deq))]


def insight1(cells: list[Cell]) -> list[Comparison]:
    out = []
    for w, tied, deq in _tied_vs_deq(cells):
        a, b = best(tied), best(deq)
        if a is None or b is None:
            continue
        out.append(compare(f"width={w}", side(a), side(b), a.scores(), b.scores(), _metric_unit(cells),
                           a.completed, b.completed))
    return out


def time_to_target(run: Run, target_score: float, x: str = "time/train_s") -> tuple[float, bool, bool]:
    """(training seconds, or steps with ``x="step"``, at the first evaluation whose score reaches ``target_score``,
    reached?, censored?). Its resolution is the run's evaluation interval (``train.eval_every``); censored: reached
    at a first validation that came after evaluations without one (``train.validate_from``), so the target was met
    at or before it, how long before unknown."""
    curve = run.curve(x)
    for i, (t, v) in enumerate(curve):
        if run.score(v) >= target_score:
            return t, True, i == 0 and any(to_float(rec.get(x)) < t for rec in run.history)
    total = run.metrics.get("time/train_s" if x == "time/train_s" else "train/steps", math.nan)
    return (total if math.isfinite(total) else (curve[-1][0] if curve else math.nan)), False, False


def insight2(cells: list[Cell]) -> list[Comparison]:
    out = []
    for w, tied, deq in _tied_vs_deq(cells):
        a, b = best(tied), best(deq)
        if a is None or b is None:
            continue
        worse = min(a.score(), b.score())
        target = worse - (1 - TARGET_FRACTION) * abs(worse)
        mixed = mixed_layouts(a.completed + b.completed)  # seconds then do not compare
        why = layout_why(process_layout(r) for r in a.completed + b.completed)
        apart = mixed_layouts(a.completed + b.completed, timing=False)  # memory then does not compare
        memory = {c: c.stat("memory/peak_mb") if not apart else Stat.of([]) for c in (a, b)}
        target_metric = target if a.higher_is_better else -target
        # seconds to the target (step time and learning speed together) and steps to it (learning speed alone)
        for x, unit in (("time/train_s", "s"), ("step", "steps")):
            times = {c: [time_to_target(r, target, x) for r in c.completed] for c in (a, b)}
            ta, tb = ([t for t, _, _ in times[c] if math.isfinite(t)] for c in (a, b))
            missed = {c: sum(not ok for _, ok, _ in times[c]) for c in (a, b)}
            censored = sum(late for c in (a, b) for _, _, late in times[c])

            def shown(c: Cell, values: list[float]) -> str:
                return (f"{c.title()} ({statistics.fmean(values) if values else math.nan:.3g} {unit}"
                        + (f", peak {memory[c].mean:.4g} MB" if unit == "s" and not mixed else "")
                        + (f", {missed[c]} never reached" if missed[c] else "") + ")")

            comparison = compare(
                f"width={w}, target {a.metric}={target_metric:.4g}" + (", in steps" if unit == "steps" else ""),
                shown(a, ta), shown(b, tb), [-t for t in ta], [-t for t in tb], unit, a.completed, b.completed,
                target=target_metric, tied_s=Stat.of(ta).as_dict(), deq_s=Stat.of(tb).as_dict(),
                tied_peak_mb=memory[a].as_dict(), deq_peak_mb=memory[b].as_dict(),
                tied_not_reached=missed[a], deq_not_reached=missed[b])
            # a run that never reached the target counts its whole training: a lower bound of its time, which
            # flatters its side; so that side is not called ahead
            ahead_missed = {"holds": missed[a], "fails": missed[b]}.get(comparison.verdict, 0)
            if not any(run.curve(x) for c in (a, b) for run in c.completed):
                comparison = dataclasses.replace(comparison, verdict="inconclusive",
                                                 reason="no time curves (the runs' histories hold none, as in a "
                                                        "rebuild from summary.json)")
            elif mixed and unit == "s":
                comparison = dataclasses.replace(
                    comparison, verdict="inconclusive",
                    reason=f"the runs did not train alike ({mixed}): {why}")
            elif ahead_missed:
                comparison = dataclasses.replace(
                    comparison, verdict="inconclusive",
                    reason=f"{ahead_missed} run(s) of the side ahead never reached the target (their times are lower "
                           "bounds)")
            elif censored:  # validation that starts late (train.validate_from) times the start of validation
                comparison = dataclasses.replace(
                    comparison, verdict="inconclusive",
                    reason=f"{censored} run(s) reached the target at their first validation, after evaluations "
                           "without one (train.validate_from): their times are upper bounds")
            out.append(comparison)
    return out


def _pooled_variance(cells: list[Cell]) -> tuple[float, int, list[Run]]:
    """(pooled within-cell variance of the scores, its degrees of freedom, the runs behind it)."""
    ss, df, runs = 0.0, 0, []
    for c in cells:
        vals = c.scores()
        if len(vals) >= 2:
            ss += statistics.variance(vals) * (len(vals) - 1)
            df += len(vals) - 1
            runs += [r for r in c.completed if math.isfinite(r.value("val"))]
    return (ss / df if df else math.nan), df, runs


def divergence(setting: str, tied: list[Run], deq: list[Run]) -> Comparison:
    """Two-proportion test: d = DEQ divergence rate - tied rate, SE from the pooled rate."""
    x_t, x_d = sum(r.status == "diverged" for r in tied), sum(r.status == "diverged" for r in deq)
    n_t, n_d = len(tied), len(deq)
    if n_t and n_d:
        pooled = (x_t + x_d) / (n_t + n_d)
        effect, se = x_d / n_d - x_t / n_t, math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_d))
    else:
        effect, se = math.nan, math.nan
    verdict, reason = decide(effect, se, min(n_t, n_d))
    return Comparison(setting, f"tied: {x_t}/{n_t} diverged", f"DEQ: {x_d}/{n_d} diverged", n_t, n_d, effect, se,
                      verdict, reason, "divergence rate", [r.name for r in tied], [r.name for r in deq],
                      {"tied_diverged": x_t, "tied_runs": n_t, "deq_diverged": x_d, "deq_runs": n_d})


def spread(setting: str, tied: list[Cell], deq: list[Cell]) -> Comparison:
    """Log variance ratio: d = ln(pooled var DEQ / pooled var tied), SE = sqrt(2/df_tied + 2/df_DEQ)."""
    (v_t, df_t, r_t), (v_d, df_d, r_d) = _pooled_variance(tied), _pooled_variance(deq)
    if df_t and df_d and v_t > 0 and v_d > 0:
        effect, se = math.log(v_d / v_t), math.sqrt(2 / df_t + 2 / df_d)
        verdict, reason = decide(effect, se, 2)
    else:
        effect, se = math.nan, math.nan
        has_runs = any(c.scores() for c in tied) and any(c.scores() for c in deq)
        verdict, reason = "inconclusive", ("zero spread on a side" if df_t and df_d else
                                           "n<2" if has_runs else "no runs")
    return Comparison(setting, f"tied: std {math.sqrt(v_t) if df_t else math.nan:.3g} (df={df_t})",
                      f"DEQ: std {math.sqrt(v_d) if df_d else math.nan:.3g} (df={df_d})", len(r_t), len(r_d),
                      effect, se, verdict, reason, "ln variance ratio", [r.name for r in r_t], [r.name for r in r_d],
                      {"tied_var": v_t, "tied_df": df_t, "deq_var": v_d, "deq_df": df_d})


def insight3(cells: list[Cell]) -> list[Comparison]:
    out = []
    for w, tied, deq in _tied_vs_deq(cells):
        ended = [[r for c in side_cells for r in c.ended] for side_cells in (tied, deq)]
        out.append(divergence(f"width={w}: divergence", *ended))
        out.append(spread(f"width={w}: spread over seeds", tied, deq))
    return out


def insight4(cells: list[Cell]) -> list[Comparison]:
    out = []
    tied = [c for c in cells if c.mode == "tied" and not c.label.endswith("+jac")]
    for (w, d), group in sorted(_by(tied, lambda c: (c.width, c.depth)).items(),
                                key=lambda kv: tuple(x if x is not None else -1 for x in kv[0])):
        distinct = [c for c in group if c.mask_mode == "distinct"]
        shared = _by((c for c in group if c.mask_mode == "shared"), lambda c: (c.mask_kind, round(c.sparsity, 6)))
        plain = [c for c in group if c.mask_mode == "none"]
        for (kind, sp), s_cells in sorted(shared.items()):
            a = best(c for c in distinct if (c.mask_kind, round(c.sparsity, 6)) == (kind, sp))
            b = best(s_cells)
            if a and b:
                out.append(compare(f"width={w}, depth={d}: vs shared {kind}@{sp:g}", side(a), side(b), a.scores(),
                                   b.scores(), _metric_unit(cells), a.completed, b.completed))
        a, b = best(distinct), best(plain)
        if a and b:
            out.append(compare(f"width={w}, depth={d}: vs no mask", side(a), side(b), a.scores(), b.scores(),
                               _metric_unit(cells), a.completed, b.completed))
    return out


def _depth_grids(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    return _by((c for c in cells if depth_matters(c) and c.depth is not None and c.scores()),
               lambda c: (c.label, c.other))


def insight5(cells: list[Cell]) -> list[Comparison]:
    out = []
    for (label, other), group in _depth_grids(cells).items():
        for w, line in _by(group, lambda c: c.width).items():
            line = sorted(line, key=lambda c: c.depth)
            if len(line) < 3:
                continue
            (c1, c2), (cj, ck) = line[:2], line[-2:]
            coef: dict[int, float] = {}
            for cell, c in ((c1, -SATURATION), (c2, SATURATION), (cj, 1.0), (ck, -1.0)):
                coef[id(cell)] = coef.get(id(cell), 0.0) + c
            by_id = {id(c): c for c in (c1, c2, cj, ck)}
            effect, se, min_n = contrast([(coef[i], by_id[i].scores()) for i in coef])
            verdict, reason = decide(effect, se, min_n)
            sign = 1 if c1.higher_is_better else -1
            g_low, g_high = sign * (c2.score() - c1.score()), sign * (ck.score() - cj.score())
            out.append(Comparison(
                f"{label} w={w}{f' [{other}]' if other else ''}",
                f"depth {cj.depth}->{ck.depth}: {g_high:+.3g} (n={len(cj.scores())}, {len(ck.scores())})",
                f"depth {c1.depth}->{c2.depth}: {g_low:+.3g} (n={len(c1.scores())}, {len(c2.scores())})",
                len(cj.scores()) + len(ck.scores()), len(c1.scores()) + len(c2.scores()), effect, se, verdict, reason,
                c1.metric, [r.name for r in cj.completed + ck.completed], [r.name for r in c1.completed + c2.completed],
                {"depths": [c.depth for c in line], "means": [c.primary().mean for c in line], "gain_first": g_low,
                 "gain_last": g_high}))
    return out


def insight6(cells: list[Cell]) -> list[Comparison]:
    out = []
    for (label, other), group in _depth_grids(cells).items():
        grid = {(c.width, c.depth): c for c in group if c.width is not None}
        widths, depths = sorted({w for w, _ in grid}), sorted({d for _, d in grid})
        if len(widths) < 2 or len(depths) < 2:
            continue
        for i, w in enumerate(widths[:-1]):
            for j, d in enumerate(depths[:-1]):
                wide, deep = grid.get((widths[i + 1], d)), grid.get((w, depths[j + 1]))
                if wide is None or deep is None:
                    continue
                # step times compare only when both cells' runs trained alike (``mixed_layouts``)
                mixed = mixed_layouts(wide.completed + deep.completed)
                extra = {"wider_params": wide.stat("params/unique").mean,
                         "deeper_params": deep.stat("params/unique").mean,
                         "wider_step_ms": math.nan if mixed else wide.stat("time/step_ms").mean,
                         "deeper_step_ms": math.nan if mixed else deep.stat("time/step_ms").mean}

                def cost(c: Cell, params: float, step_ms: float) -> str:
                    timed = f"ms/step not compared: {mixed}" if mixed else f"{step_ms:.3g} ms/step"
                    return f"{side(c)}, {params:.4g} params, {timed}"

                out.append(compare(
                    f"{label} from w={w}, d={d}{f' [{other}]' if other else ''}",
                    cost(wide, extra["wider_params"], extra["wider_step_ms"]),
                    cost(deep, extra["deeper_params"], extra["deeper_step_ms"]),
                    wide.scores(), deep.scores(), wide.metric, wide.completed, deep.completed, **extra))
    return out


CHECKS: dict[int, Callable[[list[Cell]], list[Comparison]]] = {
    1: insight1, 2: insight2, 3: insight3, 4: insight4, 5: insight5, 6: insight6}
NEEDS: dict[int, str] = {
    1: "tied and DEQ runs at the same width", 2: "tied and DEQ runs at the same width",
    3: "tied and DEQ runs at the same width",
    4: "tied runs with distinct and shared (or no) masks at one width and depth",
    5: ">= 3 depths of one variant and width", 6: ">= 2 widths and >= 2 depths of one variant"}


def verdict_of(insight: int, paradigm: str, dataset: str, comps: list[Comparison]) -> InsightResult:
    """Combine the comparisons of one insight under ``RULE``."""
    a_runs = {r for c in comps for r in c.a_runs}
    b_runs = {r for c in comps for r in c.b_runs}
    if not comps:
        return InsightResult(insight, paradigm, dataset, "inconclusive", "no runs", math.nan, "", 0, 0, [])
    holds = [c for c in comps if c.verdict == "holds"]
    fails = [c for c in comps if c.verdict == "fails"]
    if holds and not fails:
        verdict, reason = "holds", f"{len(holds)}/{len(comps)} comparisons hold, none fails"
    elif fails and not holds:
        verdict, reason = "fails", f"{len(fails)}/{len(comps)} comparisons fail, none holds"
    elif holds and fails:
        verdict, reason = "inconclusive", f"mixed: {len(holds)} hold, {len(fails)} fail"
    elif all(c.reason in ("n<2", "no runs") for c in comps):
        verdict, reason = "inconclusive", "n<2" if any(c.reason == "n<2" for c in comps) else "no runs"
    else:
        verdict, reason = "inconclusive", "; ".join(sorted({c.reason for c in comps} - {"no runs"}))
    usable = [c for c in comps if c.reason not in ("n<2", "no runs")] or comps
    head = max(usable, key=lambda c: (c.z, c.n_a + c.n_b))
    return InsightResult(insight, paradigm, dataset, verdict, reason, head.effect, head.unit, len(a_runs),
                         len(b_runs), comps)


def evaluate(cells: list[Cell]) -> list[InsightResult]:
    """Every insight for every (paradigm, dataset), in order."""
    out = []
    for (paradigm, dataset), group in groups(cells).items():
        for number, check in CHECKS.items():
            out.append(verdict_of(number, paradigm, dataset, check(group)))
    return out
