"""The report as a list of blocks, written out as Markdown (README.md) and self-contained HTML (index.html)."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import guidelines as guide
from .aggregate import COLUMNS, Stat, groups
from .insights import INSIGHTS, NEEDS, RULE
from .load import EQUILIBRIUM_MEASURES, apart_reasons, set_apart
from .stats import SPREAD_MARGIN


@dataclass
class Block:
    """One piece of the document: heading, paragraph, list, code, table or image."""

    kind: str  # h1 | h2 | h3 | p | ul | code | table | img
    text: str = ""
    items: list[str] = field(default_factory=list)  # ul items; img: [PNG file, SVG file (optional)]
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    details: str = ""  # table: shown folded behind this summary line (<details>), in README.md and index.html


def fmt(value: Any) -> str:
    """A number in a table: 4 significant digits, thousands separators for large values, "-" for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def duration(seconds: float) -> str:
    """"42.0 s", "12.5 min", "3.20 h"."""
    if not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def fmt_stat(stat: Stat, n_row: int | None = None) -> str:
    """"mean ± std" with the mean rounded to the std's second significant digit ("0.812 ± 0.012"); one run
    shows its value alone, runs that all agree show "(all equal)" rather than "± 0"; "(n=k)" when k differs
    from the row's n."""
    if stat.n == 0:
        return "-"
    if stat.std is None:
        out = fmt(stat.mean)
    elif stat.std == 0:
        out = f"{fmt(stat.mean)} (all equal)"
    elif math.isfinite(stat.std) and math.isfinite(stat.mean) and abs(stat.mean) < 1e4:
        place = 1 - math.floor(math.log10(stat.std))  # decimals that keep the std's second significant digit
        if place >= 0:
            out = f"{stat.mean:.{place}f} ± {stat.std:.2g}"
        else:  # a std of 100 or more: both rounded to its second digit, never "1.4e+02"
            out = f"{round(stat.mean, place):.0f} ± {round(stat.std, place):.0f}"
    else:
        out = f"{fmt(stat.mean)} ± {fmt(stat.std)}"
    return out if n_row is None or stat.n == n_row else f"{out} (n={stat.n})"


def fmt_value(stat: Stat, n_row: int | None = None) -> str:
    """A compact table's value: the mean alone when the runs agree (parameter counts), else ``fmt_stat``."""
    if stat.n and (stat.std is None or stat.std == 0):
        out = fmt(stat.mean)
        return out if n_row is None or stat.n == n_row else f"{out} (n={stat.n})"
    return fmt_stat(stat, n_row)


def fmt_interval(stat: Stat, level: float = 0.95) -> str:
    """"0.856 [0.815, 0.897]": the mean and its t interval over the replicates (level 95%), rounded to the
    interval's half-width's second significant digit; one run shows its value and "(n=1)", runs that all agree
    "(all equal)"."""
    if stat.n == 0 or not math.isfinite(stat.mean):
        return "-"
    if stat.std is None:
        return f"{fmt(stat.mean)} (n=1)"
    if stat.std == 0 or not math.isfinite(stat.std):
        return fmt_stat(stat)
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, stat.n - 1)) * stat.std / math.sqrt(stat.n)
    place = 1 - math.floor(math.log10(half))
    if place < 0 or abs(stat.mean) >= 1e4:
        return f"{fmt(round(stat.mean, min(place, 0)))} [{fmt(round(stat.mean - half, min(place, 0)))}, " \
               f"{fmt(round(stat.mean + half, min(place, 0)))}]"
    return f"{stat.mean:.{place}f} [{stat.mean - half:.{place}f}, {stat.mean + half:.{place}f}]"


def header_blocks(report: Any) -> list[Block]:
    counts: dict[str, int] = {}
    for run in report.runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    m = report.machine
    items = [
        "code of the runs: " + (", ".join(f"{c} ({n} runs)" for c, n in report.run_commits.items()) or "-"),
        f"report built at commit: {report.commit}",
        f"date: {report.date}",
        *[f"command: `{c}`" for c in report.commands],
        f"report command: `{report.report_command}`",
        f"runs: {len(report.runs)} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'}) in "
        f"{len(report.cells)} cells",
        f"seeds: {', '.join(map(str, report.seeds)) or '-'}",
        f"machine: {m['platform']}, Python {m['python']}, {m['cpus']} CPUs, torch {m['torch']}, "
        f"CUDA device: {m['cuda_device']}",
        f"total run time: {duration(report.total_train_s)} of training (sum of time/train_s over all runs)",
        (f"verdicts: {len(report.primaries)} "
         f"{'primary comparisons NOT as registered (see Primary comparisons)' if report.not_registered else 'pre-registered primary comparisons'} of study "
         f"{(report.study or {}).get('name')!r}, alpha 0.05 with Holm's correction " + holm_scope(report.primaries)
         + (f", seeds added in up to {report.looks} looks (alpha/{report.looks} each)" if report.looks > 1 else "")
         + " (rule under Primary comparisons); every other comparison is descriptive" if report.primaries
         else "verdicts: none (no pre-registered primary comparisons); every comparison is descriptive"),
    ]
    apart = sum(len(c.not_at_equilibrium) for c in report.cells)
    if apart:
        items.append(f"not at equilibrium: {apart} completed DEQ run(s) flagged, counted apart and never averaged "
                     "(see Equilibrium)")
    duplicated = [f"{c.title()} ({c.paradigm}): {d}" for c in report.cells for d in c.duplicates]
    if duplicated:
        items.append("replicates: duplicates of one seed count once, their runs averaged: " + "; ".join(duplicated))
    if report.rebuilt_from:
        items.insert(0, f"rebuilt from {report.rebuilt_from}: the runs and final metrics that summary lists, analysed "
                        "by this version's rules; it keeps no configs or histories, so there are no time curves and "
                        "the secondary time-to-target comparison counts every run's whole training time")
    return [Block("h1", report.title), Block("ul", items=items)]


def family_name(family: str) -> str:
    """A family of comparisons as the report names it ("unnamed" for comparisons the study file puts in none)."""
    return f"family {family!r}" if family else "unnamed family"


def holm_scope(primaries: list[Any]) -> str:
    """"across them", or, when the study names families (per paradigm, or an amendment), within each apart."""
    families = list(dict.fromkeys(r.spec.family for r in primaries))
    if len(families) < 2:
        return "across them"
    sizes = [sum(r.spec.family == f for r in primaries) for f in families]
    return ("within each family, apart (" + ", ".join(f"{family_name(f)}: {n}" for f, n in zip(families, sizes))
            + "; the study file names the families, and comparisons added after its first runs always form one of "
              "their own, on grids of their own)")


SECONDARY_NOTE = (
    "Not verdicts. These comparisons pick the best cell of each side on the metric they compare, are not "
    "pre-registered and are not corrected for multiplicity; their 'd > 2 SE' screen decides about one null "
    "comparison in five at 2 seeds per side. Read them as a description of the grid; the answer is the primary "
    "comparisons above.")
VERDICT_CLASS = {"holds": "holds", "fails": "fails", "equivalent": "equivalent", "undetermined": "inconclusive"}


def verdict_class(verdict: str, claim: str) -> str:
    """A primary row's colour class: "equivalent" is the claim holding only for an equivalence claim; for a
    superiority claim it is a decided reading that does not support the claim (blue, as in the forest plot)."""
    return "holds" if (verdict, claim) == ("equivalent", "equivalence") else VERDICT_CLASS.get(verdict, "")


def _interval(result: Any) -> str:
    """"+0.012 [+0.004, +0.020]" (the interval at the level the verdict was read at), or the effect alone."""
    effect, lo, hi = result.effect, result.ci_low, result.ci_high
    if not math.isfinite(effect):
        return "-"
    return f"{effect:+.3g} [{lo:+.3g}, {hi:+.3g}]" if math.isfinite(lo) and math.isfinite(hi) else f"{effect:+.3g}"


def primary_text(result: Any) -> str:
    """"holds: +0.012 [+0.004, +0.020], n=5/5" (the transfer table's cell)."""
    more = (f"; ~{result.seeds_needed} seeds/arm to decide" if result.verdict == "undetermined" and result.seeds_needed
            else "")
    left = result.not_at_equilibrium
    apart = (f"; not at equilibrium, left out: {len(left.get('a', []))}/{len(left.get('b', []))}"
             if any(left.values()) else "")
    record = "; not the sequential record's verdict" if getattr(result, "departs_from_record", False) else ""
    return f"{result.verdict}: {_interval(result)}, n={result.n_a}/{result.n_b}{more}{apart}{record}"


def seeds_needed_text(result: Any) -> str:
    """Seeds per arm to decide an undetermined comparison at its observed effect and spread (power 80%), an
    estimate: "~N", or "> 1000" where none up to 1000 would (an effect of exactly 0 never does)."""
    if result.verdict != "undetermined" or result.spec.kind == "divergence" or not math.isfinite(result.ci_low):
        return "-"
    return f"~{fmt(result.seeds_needed)}" if result.seeds_needed else "> 1000"


def effect_formula(spec: Any) -> str:
    """How a comparison's effect is computed, signed so that a positive effect favours arm A: "A - B", "B - A"
    (lower is better), "log B - log A", "rate B - rate A", "var B / var A"."""
    if spec.kind != "mean":
        return {"divergence": "rate B - rate A", "spread": "var B / var A"}[spec.kind]
    first, second = ("A", "B") if spec.direction == "higher" else ("B", "A")
    return f"log {first} - log {second}" if spec.transform == "log" else f"{first} - {second}"


def primary_blocks(report: Any) -> list[Block]:
    """The pre-registered primary comparisons, their verdicts, and the transfer table built from them."""
    from .stats import RULE as STATS_RULE

    if not report.primaries:
        text = ("These runs come from no study file with pre-registered primary comparisons (`primary:` in "
                "configs/study/NAME.yaml, or `tiedlab-report --study NAME`): no verdicts, only the descriptive "
                "comparisons below.")
        return [Block("h2", "Primary comparisons (pre-registered)"), Block("p", text)]
    looks = (f" The seeds were added in up to {report.looks} looks (tiedlab-study --until-decided): each look "
             f"tests at alpha/{report.looks}." if report.looks > 1 else "")
    blocks = [Block("h2", "Primary comparisons (not the registered ones)" if report.not_registered
                    else "Primary comparisons (pre-registered)")]
    if report.not_registered:
        blocks.append(Block("p", report.not_registered + "."))
    blocks += [Block("img", p.title, items=[p.file, p.svg]) for p in report.plots if p.kind == "forest"]
    blocks.append(Block("p", "Rule: " + STATS_RULE + looks + " Seeds/arm to decide (est.): the seeds per arm at "
                        "which the verdict's level would decide with 80% power if the observed effect and spread "
                        "were the true ones; an estimate, noisy at few seeds and optimistic (it takes the fewer of "
                        "the claim's decision and the secondary reading), and a sequential plan stops at its "
                        "--max-seeds whatever it says."))
    rows, compact, classes = [], [], []
    for r in report.primaries:
        s = r.spec
        effect = effect_formula(s)
        margin = (f"margin: variance ratio {SPREAD_MARGIN:g} either way" if s.kind == "spread" else
                  "no margin" if s.kind == "divergence" else f"delta {s.delta:g}")
        claim, n = f"{s.claim}, {margin}", f"{r.n_a}/{r.n_b}" + (" paired" if r.paired else "")
        name = (str(s.insight) if s.headline else f"{s.insight} ({s.id})") + (f" [{s.family}]" if s.family else "")
        rows.append([name, s.paradigm, s.label or "-", f"A: {s.a.title()}", f"B: {s.b.title()}",
                     claim, f"{s.kind}: {s.metric}"
                     + (f" ({s.direction} is better)" if s.kind == "mean" else "")
                     + (", log" if s.transform == "log" else "") + f"; effect {effect}",
                     n, _interval(r), fmt(r.p), r.verdict + (f" ({r.reason})" if r.reason else ""),
                     seeds_needed_text(r), arms_text(r)])
        compact.append([name, s.paradigm, s.label or "-", s.a.title(), s.b.title(), claim, n,
                        _interval(r), fmt(r.p), fmt(r.level), r.verdict + (" (not the sequential record's: see the full table)"
                                                             if r.departs_from_record else ""), seeds_needed_text(r)])
        classes.append(verdict_class(r.verdict, s.claim))
    blocks.append(Block("table", header=["insight", "paradigm", "claim", "arm A", "arm B", "claim, delta", "n A/B",
                                         "effect [CI at the verdict's level]", "p", "alpha (Holm)", "verdict (Holm)",
                                         "seeds/arm to decide (est.)"], rows=compact, row_classes=classes))
    blocks.append(Block("table", header=["insight", "paradigm", "claim", "arm A", "arm B", "claim, delta", "test",
                                         "n A/B", "effect [CI at the verdict's level]", "p", "verdict (Holm)",
                                         "seeds/arm to decide (est.)", "how the arms differ (B vs A)"],
                        rows=rows, row_classes=classes,
                        details="Full table: each comparison's test, why its verdict is what it is, and how its arms "
                                "differ: every config key they set otherwise (from the runs' config.yaml; blank "
                                "when the report did not read them) and arm B's parameters (stored; used; nonzero "
                                "over layers: the unmasked entries a forward pass multiplies with, a DEQ's cell "
                                "counted once), forward cell calls (a DEQ's solver iterations) and measured step "
                                "and training time over arm A's, medians over completed runs"))
    notes = [f"{r.spec.key}: {n}" for r in report.primaries for n in r.notes]
    if notes:
        blocks.append(Block("ul", items=notes))
    paradigms = sorted({r.spec.paradigm for r in report.primaries})
    blocks += [Block("h2", "Insight transfer"),
               Block("p", "One pre-registered primary comparison per insight and paradigm (its headline, the one "
                          "without an id): the verdict, the effect signed so that positive favours arm A (A - B, or B - A "
                          "where lower is better; for spread var B / var A) with its interval at the level the verdict was read at (after Holm's correction, see "
                          "the table above), the seeds per arm, and for an undetermined verdict the seeds per arm that "
                          "would decide it. Where an insight and paradigm has only comparisons with ids, the cell names "
                          "them and their verdicts (their claims are in the table above). A row's label is its "
                          "headline comparison's registered wording; a verdict says what the test decided: a "
                          "noninferiority claim holds when A is not worse than B by more than delta (the table "
                          "above gives each delta), whatever the label says (\"at least as accurate\", \"within "
                          "delta\"); \"equivalent\" (an equivalence claim, or a superiority claim's secondary "
                          "reading) says the effect lies within +-delta (for spread: the variance ratio within "
                          f"[1/{SPREAD_MARGIN:g}, {SPREAD_MARGIN:g}])."),
               Block("table", header=["insight"] + paradigms, rows=transfer_rows(report.primaries, paradigms))]
    return blocks


def arms_text(result: Any) -> str:
    """A primary comparison's ``differ`` and ``matching``, as its row in the full table says them."""
    return "; ".join(x for x in ("; ".join(result.differ), result.matching) if x) or "-"


def transfer_rows(primaries: list[Any], paradigms: list[str]) -> list[list[str]]:
    """The insight transfer table's rows: per insight, its headline comparison's claim as the label (the insight's
    short name when it has none) and per paradigm the headline's ``primary_text``; else "no headline comparison;
    ID (verdict), ..." for the comparisons with ids, else "not pre-registered"."""
    headline = {(r.spec.insight, r.spec.paradigm): r for r in primaries if r.spec.headline}
    labels = {r.spec.insight: r.spec.label for r in reversed(primaries) if r.spec.headline and r.spec.label}

    def cell(insight: int, paradigm: str) -> str:
        if (insight, paradigm) in headline:
            return primary_text(headline[(insight, paradigm)])
        others = [r for r in primaries if (r.spec.insight, r.spec.paradigm) == (insight, paradigm)]
        if others:
            return "no headline comparison; " + ", ".join(f"{r.spec.id} ({r.verdict})" for r in others)
        return "not pre-registered"

    return [[f"{n}. {labels.get(n, short)}"] + [cell(n, p) for p in paradigms] for n, (short, _) in INSIGHTS.items()]


def _steps(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "?"


def budget_check_blocks(report: Any) -> list[Block]:
    """The comparisons read again at a larger budget (``budget_checks:`` in the study file): did the effect move?"""
    from .budget import CHECK_ALPHA

    checks = getattr(report, "budget_checks", [])
    if not checks:
        return []
    text = ("The 20% rule of the convergence notes above is met at any budget once a decaying learning rate (the "
            "studies' cosine schedules) has shrunk the steps, so it says a run settled at its budget, not that its "
            "model is at capacity. A budget check trains a comparison's arms again at a larger budget on some of its "
            "seeds and reads the per-seed change of the effect (A - B, the comparison's orientation) against the "
            f"comparison's delta: \"stable\" when its {100 * (1 - CHECK_ALPHA):g}% t interval lies within +-delta "
            "(an equivalence test, each one-sided test at "
            f"{CHECK_ALPHA / 2:g}, uncorrected), \"moved\" when it lies wholly beyond delta, else \"undetermined\". "
            "A check is descriptive and changes no verdict; it tests the effect's size, not the verdict's claim (a "
            "gap may shrink by more than delta and stay positive).")
    rows = []
    for c in checks:
        change = (f"{c.change:+.3g} [{c.ci_low:+.3g}, {c.ci_high:+.3g}]" if math.isfinite(c.ci_low)
                  else f"{c.change:+.3g}" if math.isfinite(c.change) else "-")
        arms = [f"{c.arms[side][0]:.4g} -> {c.arms[side][1]:.4g}" if side in c.arms else "-" for side in ("A", "B")]
        more = f"; ~{c.seeds_needed} seeds to decide" if c.reading == "undetermined" and c.seeds_needed else ""
        rows.append([c.spec.of, f"{_steps(c.steps[0])} -> {_steps(c.steps[1])}", ", ".join(c.seeds) or "-",
                     f"{c.base:+.3g}" if math.isfinite(c.base) else "-",
                     f"{c.check:+.3g}" if math.isfinite(c.check) else "-", change, *arms,
                     c.reading + (f" ({c.reason}{more})" if c.reason else more)])
    metric = "/".join(sorted({c.comparison.metric for c in checks}))
    blocks = [Block("h2", "Budget checks (the same comparison at a larger budget)"), Block("p", text),
              Block("table", header=["comparison", "steps", "seeds", "effect at its budget", "effect at the larger",
                                     f"change [{100 * (1 - CHECK_ALPHA):g}% CI]", f"arm A {metric}",
                                     f"arm B {metric}", "reading (delta: the comparison's)"], rows=rows)]
    notes = [f"{c.spec.of}: {n}" for c in checks for n in c.notes]
    return blocks + ([Block("ul", items=notes)] if notes else [])


def screen(text: str) -> str:
    """A secondary comparison's 2 SE screen in words that claim no verdict: "A ahead", "B ahead", "within"."""
    for word, said in (("holds", "A ahead"), ("fails", "B ahead"), ("inconclusive", "not separated")):
        if text.startswith(word):
            return said + text[len(word):]
    return text


def insight_blocks(report: Any) -> list[Block]:
    cols = list(groups(report.cells))
    by_key = {(r.insight, r.paradigm, r.dataset): r for r in report.insights}
    rows, classes = [], []
    for number, (short, _) in INSIGHTS.items():
        rows.append([f"{number}. {short}"] + [screen(by_key[(number, *g)].short()) if (number, *g) in by_key
                                              else "-" for g in cols])
        classes.append("")
    blocks = [Block("h2", "Secondary comparisons (descriptive)"),
              Block("p", SECONDARY_NOTE + " How the screen reads: " + RULE)]
    if cols:
        blocks.append(Block("table", header=["insight"] + [f"{p} / {d}" for p, d in cols], rows=rows,
                            row_classes=classes))
    else:
        blocks.append(Block("p", "No runs: nothing to describe."))
    blocks.append(Block("h3", "What each insight compares"))
    blocks.append(Block("ul", items=[f"{n}. {text} Needs {NEEDS[n]}." for n, (_, text) in INSIGHTS.items()]))
    detail = []
    detail_classes = []
    for r in report.insights:
        if not r.comparisons:
            detail.append([str(r.insight), f"{r.paradigm} / {r.dataset}", f"no runs (needs {NEEDS[r.insight]})", "-",
                           "-", "-", "-", "no runs"])
            detail_classes.append("")
        for c in r.comparisons:
            detail.append([str(r.insight), f"{r.paradigm} / {r.dataset}", c.setting, c.a, c.b,
                           f"{c.n_a} vs {c.n_b}", f"{fmt(c.effect)} ± {fmt(c.se)} {c.unit}",
                           screen(f"{c.verdict} ({c.reason})")])
            detail_classes.append("")
    blocks.append(Block("h3", "The secondary comparisons"))
    blocks.append(Block("table", header=["insight", "paradigm / dataset", "comparison", "side A (insight favours)",
                                         "side B", "n A vs B", "d ± SE", "2 SE screen"], rows=detail,
                        row_classes=detail_classes, details=f"All {len(detail)} secondary comparisons"))
    return blocks


def guideline_blocks(report: Any) -> list[Block]:
    blocks = [Block("h2", "Guidelines"), Block("p", guide.RULE)]
    if not report.guidelines:
        blocks.append(Block("p", "No completed runs with a finite primary metric: no guidelines."))
    for g in report.guidelines:
        rows = [[f"{p['budget_name']} <= {fmt(p['limit'])} ({p['which']})", p["title"], fmt(p["depth"]),
                 fmt(p["width"]), fmt(p["sparsity"]) + (f" ({p['mask']})" if p["mask"] != "none" else ""),
                 f"{fmt_stat(Stat(p['mean'], p['std'], p['n']))} (n={p['n']}"
                 + (f"; {p['diverged']} of {p['runs']} runs diverged)" if p.get("diverged") else ")"),
                 fmt(p["params_unique"]),
                 fmt(p["train_s"])] for p in g["picks"]]
        blocks.append(Block("h3", f"{g['paradigm']} / {g['dataset']}: best val {g['metric']} "
                                  f"({'higher' if g['higher_is_better'] else 'lower'} is better) within a budget"))
        if rows:
            blocks.append(Block("table", header=["budget", "best cell", "depth", "width", "sparsity",
                                                 f"val {g['metric']}", "params unique", "train s"], rows=rows))
        blocks.extend(Block("p", note) for note in g.get("notes") or [])
    return blocks


COMPACT = (("fit/loss", "fit loss"), ("params/unique", "params unique"), ("params/used", "params used"),
           ("params/nonzero", "params nonzero"), ("time/train_s", "train s"), ("memory/peak_mb", "peak MB"))


PARAMS_NOTE = ("Parameters: unique = stored (a tied cell once); dense = as if every layer had its own cell; "
               "nonzero = entries no mask removes, summed over the layers of one forward; used = stored entries some "
               "layer keeps. A DEQ's dense and nonzero count one application of its map, which a forward applies "
               "NFE times; none of them is a FLOP count (the matched-compute arms: reports/targets/flops-matching.md).")


def cell_blocks(report: Any) -> list[Block]:
    """Per paradigm and dataset: a compact table (variant, depth, width, n, the primary metric with its 95%
    interval, parameters, time, memory), every column behind a disclosure, then the plots."""
    blocks: list[Block] = []
    for (paradigm, dataset), cells in groups(report.cells).items():
        metric, higher = cells[0].metric, cells[0].higher_is_better
        show_other = any(c.other for c in cells)
        header = ["variant", "depth", "width", *(["other"] if show_other else []), "n", f"val {metric}",
                  f"test {metric}", *[name for _, name in COLUMNS], "diverged / runs", "unfinished"]
        rows, classes, compact = [], [], []
        for c in cells:
            n, apart, reps = len(c.completed), len(c.not_at_equilibrium), len(c.replicates())
            # intervals are over replicates (seeds, folds): run directories of one seed are one replicate
            unit = "seeds" if all(isinstance(k, tuple) and k[1] is None for k in c.replicates()) else "replicates"
            shown_n = (f"{n} runs, {reps} {unit}" if reps != n else str(n)) + (
                f" (+{apart} not at equilibrium)" if apart else "")
            rows.append([c.label, fmt(c.depth), fmt(c.width), *([c.other] if show_other else []), shown_n,
                         fmt_stat(c.primary("val"), n), fmt_stat(c.primary("test"), n),
                         *[fmt_stat(c.stat(key), n) for key, _ in COLUMNS], f"{c.diverged} / {len(c.runs)}",
                         str(c.unfinished)])
            compact.append([c.label, fmt(c.depth), fmt(c.width), *([c.other] if show_other else []),
                            shown_n + (f" ({c.diverged} diverged)" if c.diverged else "")
                            + (f" ({c.unfinished} unfinished)" if c.unfinished else ""),
                            fmt_interval(c.primary("val")), *[fmt_value(c.stat(key), n) for key, _ in COMPACT]])
            classes.append("diverged" if c.diverged else ("unfinished" if c.unfinished else
                                                          ("noteq" if apart else "")))
        lead = 5 + show_other  # variant, depth, width, (other), n, the metric: always shown
        keep = [i for i in range(len(compact[0])) if i < lead or any(row[i] != "-" for row in compact)]
        compact_header = ["variant", "depth", "width", *(["other"] if show_other else []), "n",
                          f"val {metric}, mean [95% CI]", *[name for _, name in COMPACT]]
        blocks.append(Block("h2", f"{paradigm} / {dataset}"))
        blocks.append(Block("p", f"Primary metric: {metric} ({'higher' if higher else 'lower'} is better). Each row "
                                 "is a cell of runs that differ only in seed, n = its completed runs: the val metric's "
                                 "mean with its 95% t interval over the seeds, and the mean of the other values (fit loss: the final "
                                 "weights' loss on the training split, where the study scored it; one "
                                 "value where every seed agrees, else mean ± sample std). Diverged and unfinished "
                                 "(running, failed, no metrics.json) runs, and completed DEQ runs flagged not at "
                                 "equilibrium (\"+k not at equilibrium\"), are counted, not averaged. Every column "
                                 "(test metric, dense and nonzero parameters, step time, throughput, NFE, residual) "
                                 "as mean ± sample std (ddof=1) is in the full table below it. " + PARAMS_NOTE))
        blocks.append(Block("table", header=[compact_header[i] for i in keep],
                            rows=[[row[i] for i in keep] for row in compact], row_classes=classes))
        blocks.append(Block("table", header=header, rows=rows, row_classes=classes,
                            details=f"Full table: {len(header)} columns, mean ± sample std"))
        for plot in report.plots:
            if (plot.paradigm, plot.dataset) == (paradigm, dataset):
                blocks.append(Block("img", plot.title, items=[plot.file, plot.svg]))
    return blocks


EQUILIBRIUM_NOTE = (
    "DEQ runs whose metrics.json states an equilibrium check (`equilibrium`: the relative residual, the fraction of "
    "converged samples, the spectral norm of df/dz at z*, and grad_cosine: the cosine of the run's gradient with "
    "the one its backward mode gives after a tight-tolerance solve (over the DEQ blocks' parameters since 2026-12-06), against the run's thresholds; grad_cosine_ift, "
    "the cosine with the exact implicit gradient, is shown but not judged). A completed run flagged not at equilibrium is counted here and in "
    "its cell's n (\"+k not at equilibrium\"), never averaged into its cell, a comparison or a primary arm; runs "
    "written before the check are \"not measured\" and included as before. Counts and medians are over each "
    "cell's completed DEQ runs (a median over the runs that measured the value); flags are grouped by the check "
    "failed, most common first.")


def _flags_text(flags: list[tuple[str, int]], most: int = 3) -> str:
    """"rel_residual > 0.01 (2), grad_cosine < 0.95 (1)" - the ``most`` most common flag kinds."""
    shown = ", ".join(f"{kind} ({count})" for kind, count in flags[:most])
    return (shown + (f", {len(flags) - most} more" if len(flags) > most else "")) or "-"


def equilibrium_blocks(report: Any) -> list[Block]:
    """Per DEQ cell: runs at / not at equilibrium / not measured, the medians of the measured values and the most
    common flags, then the flagged runs themselves; nothing when the report has no DEQ run."""
    cells = [c for c in report.cells if c.mode == "deq"]
    if not cells:
        return []
    summaries = [(c, c.equilibrium()) for c in cells]
    names = [*EQUILIBRIUM_MEASURES, *sorted({k for _, e in summaries for k in e["medians"]}
                                            - set(EQUILIBRIUM_MEASURES))]
    rows, classes = [], []
    for c, e in summaries:
        rows.append([f"{c.paradigm} / {c.dataset}", c.title(), str(e["at"]), str(e["not_at"]), str(e["not_measured"]),
                     *[fmt(e["medians"].get(name)) for name in names], _flags_text(e["flags"])])
        classes.append("noteq" if e["not_at"] else "")
    blocks = [Block("h2", "Equilibrium"), Block("p", EQUILIBRIUM_NOTE),
              Block("table", header=["paradigm / dataset", "cell", "at equilibrium", "not at equilibrium",
                                     "not measured", *[f"median {name}" for name in names], "most common flags"],
                    rows=rows, row_classes=classes)]
    flagged = [(c, r) for c in cells for r in c.not_at_equilibrium]
    if flagged:
        blocks.append(Block("h3", "Runs not at equilibrium (counted, not averaged)"))
        blocks.append(Block("table", header=["run", "cell", "seed", "flags", "val", "test"], rows=[
            [r.name, c.title(), fmt(r.seed), "; ".join(apart_reasons(r)), fmt(r.value("val")), fmt(r.value("test"))]
            for c, r in flagged], row_classes=["noteq"] * len(flagged)))
    return blocks


def _run_status(run: Any) -> tuple[str, str]:
    """(status text, row class) of a run in the Runs table; a run set apart says so."""
    if set_apart(run):
        return "completed, not at equilibrium (not averaged)", "noteq"
    if run.status == "completed":
        return run.status, ""
    return run.status, "diverged" if run.status == "diverged" else "unfinished"


def run_blocks(report: Any) -> list[Block]:
    rows, classes = [], []
    for r in report.runs:
        status, cls = _run_status(r)
        reason = "; ".join(x for x in (r.reason, *apart_reasons(r)) if x)
        rows.append([r.name, r.paradigm, r.dataset, r.label, fmt(r.width), fmt(r.depth), fmt(r.seed), status,
                     reason, f"{fmt(r.step)} / {fmt(r.total_steps)}", fmt(r.value("val")),
                     fmt(r.value("test")), fmt(r.metrics.get("time/train_s"))])
        classes.append(cls)
    return [Block("h2", "Runs"),
            Block("p", "Every run directory found, whatever its status; val/test are the primary metric. A completed "
                       "run not at equilibrium shows its flags as its reason."),
            Block("table", header=["run", "paradigm", "dataset", "variant", "width", "depth", "seed", "status",
                                   "reason", "step", "val", "test", "train s"], rows=rows, row_classes=classes,
                  details=f"All {len(rows)} runs")]


def document(report: Any) -> list[Block]:
    """The whole report, in order."""
    return [*header_blocks(report), *primary_blocks(report), *budget_check_blocks(report), *insight_blocks(report),
            *guideline_blocks(report), *cell_blocks(report), *equilibrium_blocks(report), *run_blocks(report)]


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(b: Block) -> str:
    lines = ["| " + " | ".join(map(_md_cell, b.header)) + " |", "|" + "---|" * len(b.header)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
    table = "\n".join(lines)
    if b.details:  # GitHub renders a table inside <details> when blank lines surround it
        return f"<details><summary>{html.escape(b.details)}</summary>\n\n{table}\n\n</details>"
    return table


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "ul":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "code":
            out.append(f"```\n{b.text}\n```")
        elif b.kind == "table":
            out.append(_md_table(b))
        elif b.kind == "img":
            svg = b.items[1] if len(b.items) > 1 and b.items[1] != b.items[0] else ""
            out.append(f"![{b.text}]({b.items[0]})" + (f"\n\n*{b.text}* (vector: [{svg}]({svg}))" if svg else ""))
    return "\n\n".join(out) + "\n"


CSS = r"""
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0; color: #222;
       line-height: 1.4; }
nav#toc { font-size: 0.85em; padding: 1em 1.2em; background: #f7f7f7; border-bottom: 1px solid #ddd; }
nav#toc ul { list-style: none; margin: 0.2em 0; padding-left: 0.9em; }
nav#toc > ul { padding-left: 0; }
nav#toc a { color: #2a5a9a; text-decoration: none; } nav#toc a:hover { text-decoration: underline; }
main { padding: 1em 2em 3em; min-width: 0; max-width: 1500px; }
@media (min-width: 1100px) {
  body { display: grid; grid-template-columns: 15em minmax(0, 1fr); }
  nav#toc { position: sticky; top: 0; height: 100vh; overflow-y: auto; box-sizing: border-box;
            border-bottom: 0; border-right: 1px solid #ddd; }
}
h1 { margin: 0.3em 0 0.4em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #eee; } h3 { margin-top: 1.2em; }
.tw { overflow-x: auto; max-width: 100%; margin: 0.5em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; position: relative; }
table.sortable th { cursor: pointer; padding-right: 1.2em; }
table.sortable th::after { content: "\2195"; position: absolute; right: 0.3em; color: #aaa; font-size: 0.8em; }
table.sortable th[aria-sort="ascending"]::after { content: "\2191"; color: #333; }
table.sortable th[aria-sort="descending"]::after { content: "\2193"; color: #333; }
tr.diverged td, tr.fails td { background: #fde2e2; }
tr.unfinished td { background: #fff4d6; }
tr.noteq td { background: #ece4f7; }
tr.holds td { background: #e3f6e3; }
tr.equivalent td { background: #e4edf8; }
code { background: #f4f4f4; padding: 1px 3px; overflow-wrap: anywhere; }
details { margin: 0.3em 0 1.2em; } summary { cursor: pointer; color: #2a5a9a; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 520px), 1fr)); gap: 1em 2em;
        margin: 1em 0; }
.figs.one { grid-template-columns: minmax(0, 900px); }
figure { margin: 0; } figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
"""

# Click (or Enter on) a column heading to sort its table; again to reverse. Numbers sort as numbers ("1,234",
# "0.81 ± 0.01", "3 / 4" by their leading number), text as text, "-" last.
SORT_JS = """
(function () {
  function key(cell) {
    var text = cell.textContent.trim(), m = text.replace(/,/g, "").match(/^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i);
    if (text === "-" || text === "") return [2, 0, ""];
    return m ? [0, parseFloat(m[0]), text] : [1, 0, text];
  }
  function compare(a, b) {
    if (a[0] !== b[0]) return a[0] - b[0];
    if (a[0] === 0 && a[1] !== b[1]) return a[1] - b[1];
    return a[2].localeCompare(b[2], undefined, {numeric: true});
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells, body = table.tBodies[0];
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      function sort() {
        var up = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        var rows = Array.prototype.map.call(body.rows, function (row, i) { return [key(row.cells[col]), i, row]; });
        rows.sort(function (a, b) { return (up ? compare(a[0], b[0]) : compare(b[0], a[0])) || a[1] - b[1]; });
        rows.forEach(function (r) { body.appendChild(r[2]); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
  });
})();
"""

_NUMERIC = re.compile(r"^[-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?( ± [\d.e+-]+| \[[^\]]*\])?( \((all equal|n=\d+)\))?$")


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def anchors(blocks: list[Block]) -> dict[int, str]:
    """A unique id for every h2 and h3 (the table of contents links to them), by block index."""
    out, used = {}, set()
    for i, b in enumerate(blocks):
        if b.kind in ("h2", "h3"):
            base = re.sub(r"[^a-z0-9]+", "-", b.text.lower()).strip("-") or "section"
            name, k = base, 2
            while name in used:
                name, k = f"{base}-{k}", k + 1
            used.add(name)
            out[i] = name
    return out


def _toc(blocks: list[Block], ids: dict[int, str]) -> str:
    out, open_sub = ["<nav id=\"toc\" aria-label=\"Contents\"><strong>Contents</strong><ul>"], False
    for i, b in enumerate(blocks):
        if i not in ids:
            continue
        text = b.text if b.kind == "h2" else b.text.split(":")[0]  # "graph / cora: best val acc ..." -> "graph / cora"
        link = f"<a href=\"#{ids[i]}\">{html.escape(text)}</a>"
        if b.kind == "h2":
            out.append(("</ul></li>" if open_sub else "</li>") if len(out) > 1 else "")
            out.append(f"<li>{link}")
            open_sub = False
        else:
            out.append(("" if open_sub else "<ul>") + f"<li>{link}</li>")
            open_sub = True
    if len(out) > 1:
        out.append("</ul></li>" if open_sub else "</li>")
    out.append("</ul></nav>")
    return "".join(out)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _figure_html(b: Block, folder: Path | None) -> str:
    """A figure: the PNG embedded as a data URI when ``folder`` holds it (index.html needs no other file), else
    linked; the caption links the SVG beside it."""
    file = b.items[0]
    svg = b.items[1] if len(b.items) > 1 and b.items[1] != file else ""
    src, size = file, None
    path = folder / file if folder is not None else None
    if path is not None and path.is_file():
        data = path.read_bytes()
        size = _png_size(data)
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    ident = re.sub(r"[^a-z0-9]+", "-", Path(file).stem.lower()).strip("-")
    link = f' <a href="{html.escape(svg, quote=True)}">SVG</a>' if svg else ""
    return (f"<figure id=\"fig-{ident}\"><img src=\"{html.escape(src, quote=True)}\" "
            f"data-file=\"{html.escape(file, quote=True)}\" alt=\"{html.escape(b.text, quote=True)}\"{dims}>"
            f"<figcaption>{html.escape(b.text)}{link}</figcaption></figure>")


def _table_html(b: Block) -> str:
    out = ["<div class=\"tw\"><table class=\"sortable\">",
           "<thead><tr>" + "".join(f"<th scope=\"col\">{html.escape(h)}</th>" for h in b.header) + "</tr></thead>",
           "<tbody>"]
    for i, row in enumerate(b.rows):
        cls = b.row_classes[i] if i < len(b.row_classes) else ""
        attr = f' class="{html.escape(cls)}"' if cls else ""
        out.append(f"<tr{attr}>" + "".join(
            f"<td class=\"num\">{html.escape(str(c))}</td>" if j and _NUMERIC.match(str(c))
            else f"<td>{html.escape(str(c))}</td>" for j, c in enumerate(row)) + "</tr>")
    out += ["</tbody>", "</table></div>"]
    table = "\n".join(out)
    if b.details:
        return f"<details><summary>{html.escape(b.details)}</summary>\n{table}\n</details>"
    return table


def to_html(blocks: list[Block], title: str, folder: str | Path | None = None) -> str:
    """One self-contained page: a table of contents from the headings, sortable tables, the PNGs of ``folder``
    embedded (the SVGs beside them linked), no network."""
    folder = Path(folder) if folder is not None else None
    ids = anchors(blocks)
    out = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">",
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           _toc(blocks, ids), "<main>"]
    figures: list[str] = []

    def flush() -> None:
        if figures:  # a figure alone (the forest plot) takes the width; several share it in columns
            out.append(f"<div class=\"figs{' one' if len(figures) == 1 else ''}\">" + "".join(figures) + "</div>")
            figures.clear()

    for i, b in enumerate(blocks):
        if b.kind != "img":
            flush()
        if b.kind in ("h1", "h2", "h3"):
            ident = f' id="{ids[i]}"' if i in ids else ""
            out.append(f"<{b.kind}{ident}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "code":
            out.append(f"<pre>{html.escape(b.text)}</pre>")
        elif b.kind == "table":
            out.append(_table_html(b))
        elif b.kind == "img":
            figures.append(_figure_html(b, folder))
    flush()
    out += ["</main>", f"<script>{SORT_JS}</script>", "</body>", "</html>"]
    return "\n".join(out) + "\n"
