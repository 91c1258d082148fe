"""Plots (matplotlib, Agg canvas): a PNG and an SVG of each, only those the runs have data for.

Per paradigm and dataset: primary metric vs depth and vs width (log2 axes), vs mask sparsity (per block mode,
mask mode and kind), vs training time (the history.jsonl curves) and vs peak memory. Every figure draws the mean
over seeds as a line with a band of +-1 sample std and the single seeds faint; each variant (the label less its
mask sparsity) keeps one colour across every figure of a report (``variant_colors``); the legend sits below the
axes, never over the data.
"""

from __future__ import annotations

import math
import re
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .aggregate import Cell, groups
from .insights import depth_matters

MODE_MARKER = {"explicit": "o", "tied": "s", "deq": "^"}
# Variant colours: the base modes keep theirs, every other variant takes the next unused one (no repeats up to
# 17 variants; beyond that, evenly spaced hues).
BASE_COLOR = {"explicit": "#555555", "tied": "#1f77b4", "deq": "#d62728"}
PALETTE = ("#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78",
           "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
NO_DEPTH_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))  # a DEQ without depth: a horizontal line
MAX_LEGEND = 24
AXES_HEIGHT = 3.0  # inches for the title, axes and x label; the legend below adds its rows
PNG_DPI = 110  # the PNG beside each SVG (embedded in index.html): 6.4 in -> ~700 px
BAND_NOTE = "line: mean over seeds; band: +-1 sample std; faint: single seeds"
STYLE = {"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "svg.hashsalt": "tiedlab", "svg.fonttype": "none"}


@dataclass
class Plot:
    """One written figure (``file`` is the PNG; the SVG beside it has the same stem)."""

    file: str  # name inside the report folder
    title: str
    paradigm: str
    dataset: str
    kind: str  # depth | width | sparsity | time | memory | forest

    @property
    def svg(self) -> str:
        return self.file[: -len(".png")] + ".svg" if self.file.endswith(".png") else self.file


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def variant(label: str) -> str:
    """A cell's variant: its label less the mask sparsity ("tied+distinct/unstructured@0.5" ->
    "tied+distinct/unstructured"), so a sparsity sweep is one variant."""
    return re.sub(r"@[^+ ]*", "", label)


def variant_colors(cells: Iterable[Cell]) -> dict[str, str]:
    """One colour per variant for a whole report, in report order: explicit grey, tied blue, the first DEQ
    variant red, the others from ``PALETTE`` (then evenly spaced hues), never one colour for two variants."""
    names = list(dict.fromkeys(variant(c.label) for c in cells))
    out: dict[str, str] = {}
    for name in names:
        base = BASE_COLOR.get(name if not name.startswith("deq") else "deq")
        if base and base not in out.values():
            out[name] = base
    free = [c for c in PALETTE if c not in out.values()]
    rest = [n for n in names if n not in out]
    for i, name in enumerate(rest):
        if i < len(free):
            out[name] = free[i]
        else:
            from matplotlib.colors import hsv_to_rgb, to_hex

            out[name] = to_hex(hsv_to_rgb(((i - len(free)) / max(1, len(rest) - len(free)), 0.75, 0.8)))
    return {n: out[n] for n in names}


class Styler:
    """Colour from the report's variant colours; line style and marker cycle over a variant's series within one
    figure (two widths of tied: both blue, solid and dashed)."""

    def __init__(self, colors: dict[str, str]) -> None:
        self.colors, self.seen = colors, {}

    def __call__(self, label: str) -> tuple[str, str, str]:
        name = variant(label)
        i = self.seen.get(name, 0)
        self.seen[name] = i + 1
        return self.colors.get(name, "black"), LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, AXES_HEIGHT + 0.35), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def save_figure(fig: Any, path: Path, dpi: int = PNG_DPI) -> None:
    """``path`` (PNG at ``PNG_DPI``, reduced to a 256-colour palette: a third of the size, embedded in index.html)
    and the SVG beside it (the figure for print); no dates in either, so a rebuild is byte-stable."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.05)
    image = Image.open(buffer).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    fig.savefig(path.with_suffix(".svg"), metadata={"Date": None}, bbox_inches="tight", pad_inches=0.05)


def _save(fig: Any, ax: Any, path: Path, note: str = BAND_NOTE) -> None:
    """The legend below the axes (never over the data), in up to three columns, and the reading note."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        widest = max(len(t) for t in labels[:MAX_LEGEND])
        ncol = max(1, min(len(handles[:MAX_LEGEND]), 3 if widest <= 28 else 2 if widest <= 45 else 1))
        more = f" ({len(handles) - MAX_LEGEND} more not listed)" if len(handles) > MAX_LEGEND else ""
        fig.legend(handles[:MAX_LEGEND], labels[:MAX_LEGEND], loc="outside lower center", ncol=ncol,
                   frameon=False, title=(note + more) if note else None, title_fontsize=7.5)
        rows = math.ceil(len(handles[:MAX_LEGEND]) / ncol) + bool(note)
        fig.set_size_inches(fig.get_figwidth(), AXES_HEIGHT + 0.17 * rows)  # the axes keep their height
    elif note:
        fig.legend([], [], loc="outside lower center", frameon=False, title=note, title_fontsize=7.5)
    save_figure(fig, path)


def _ylabel(cell: Cell) -> str:
    return f"val {cell.metric} ({'higher' if cell.higher_is_better else 'lower'} is better)"


def _line(ax: Any, cells: list[Cell], x: Callable[[Cell], float], label: str, style: tuple[str, str, str]) -> None:
    """Mean over seeds (line and markers), +-1 std band, single seeds as faint points."""
    color, linestyle, marker = style
    cells = sorted(cells, key=x)
    key = f"val/{cells[0].metric}"
    xs = [x(c) for c in cells]
    stats = [c.primary() for c in cells]
    means = [s.mean for s in stats]
    spread = [s.std or 0.0 for s in stats]
    if any(spread):
        ax.fill_between(xs, [m - d for m, d in zip(means, spread)], [m + d for m, d in zip(means, spread)],
                        color=color, alpha=0.15, linewidth=0)
    seeds = [(xv, v) for xv, c in zip(xs, cells) for v in c.values(key)]
    if seeds:
        ax.scatter([p[0] for p in seeds], [p[1] for p in seeds], s=9, color=color, alpha=0.35, linewidths=0)
    ax.plot(xs, means, marker=marker, markersize=4, linestyle=linestyle, color=color, label=label)


def _log2_axis(ax: Any, values: Iterable[float], axis: str = "x") -> None:
    """A log2 axis with ticks at the values present, written as integers."""
    ticks = sorted(set(values))
    if axis == "x":
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()


def _series(cells: Iterable[Cell], key: Callable[[Cell], Any]) -> dict[Any, list[Cell]]:
    out: dict[Any, list[Cell]] = {}
    for c in cells:
        out.setdefault(key(c), []).append(c)
    return out


def _fmt(parts: Iterable[Any]) -> str:
    return " ".join(str(p) for p in parts if p not in (None, ""))


def plot_depth(cells: list[Cell], path: Path, title: str, colors: dict[str, str] | None = None) -> bool:
    cells = [c for c in cells if c.scores()]
    if not cells:
        return False
    axis = [c for c in cells if depth_matters(c) and c.depth is not None]
    if len({c.depth for c in axis}) < 2:
        return False
    styler = Styler(colors if colors is not None else variant_colors(cells))
    fig, ax = _figure(title, "depth (layers, log2 axis; DEQ with distinct masks: cycle length)", _ylabel(cells[0]))
    for (label, width, other), line in _series(axis, lambda c: (c.label, c.width, c.other)).items():
        _line(ax, line, lambda c: c.depth, _fmt([label, f"w={width}" if width is not None else "", other]),
              styler(label))
    for c in cells:
        if c.mode == "deq" and not depth_matters(c):
            color, linestyle, _ = styler(c.label)
            mean, std = c.primary().mean, c.primary().std
            if std:
                ax.axhspan(mean - std, mean + std, color=color, alpha=0.07, linewidth=0)
            ax.axhline(mean, linestyle=NO_DEPTH_STYLES[LINESTYLES.index(linestyle)], color=color,
                       label=_fmt([c.label, f"w={c.width}" if c.width is not None else "", c.other, "(no depth)"]))
    _log2_axis(ax, [c.depth for c in axis])
    _save(fig, ax, path)
    return True


def plot_width(cells: list[Cell], path: Path, title: str, colors: dict[str, str] | None = None) -> bool:
    cells = [c for c in cells if c.scores()]
    if not cells:
        return False
    axis = [c for c in cells if c.width is not None]
    if len({c.width for c in axis}) < 2:
        return False
    styler = Styler(colors if colors is not None else variant_colors(cells))
    fig, ax = _figure(title, "width (log2 axis)", _ylabel(cells[0]))
    for (label, depth, other), line in _series(axis, lambda c: (c.label, c.depth if depth_matters(c) else None,
                                                                 c.other)).items():
        _line(ax, line, lambda c: c.width, _fmt([label, f"d={depth}" if depth is not None else "", other]),
              styler(label))
    _log2_axis(ax, [c.width for c in axis])
    _save(fig, ax, path)
    return True


def plot_sparsity(cells: list[Cell], path: Path, title: str, colors: dict[str, str] | None = None) -> bool:
    cells = [c for c in cells if c.scores()]
    if not cells:
        return False
    masked = [c for c in cells if c.mask_mode != "none"]
    plain = {(c.mode, c.width, c.depth, c.other, c.label.endswith("+jac")): c for c in cells if c.mask_mode == "none"}
    lines = _series(masked, lambda c: (c.mode, c.mask_mode, c.mask_kind, c.width, c.depth, c.other,
                                       c.label.endswith("+jac")))
    xs = {c.sparsity for c in masked} | {0.0 for key in lines if (key[0], *key[3:]) in plain}
    if not masked or len(xs) < 2:
        return False
    styler = Styler(colors if colors is not None else variant_colors(cells))
    fig, ax = _figure(title + " (sparsity 0 = the unmasked cell)", "mask sparsity", _ylabel(cells[0]))
    for (mode, mask_mode, kind, width, depth, other, jac), line in lines.items():
        base = plain.get((mode, width, depth, other, jac))
        label = _fmt([variant(line[0].label), f"w={width}" if width is not None else "",
                      f"d={depth}" if depth is not None else "", other])
        _line(ax, line + ([base] if base else []), lambda c: c.sparsity, label, styler(line[0].label))
    _save(fig, ax, path)
    return True


def mask_gaps(cells: list[Cell]) -> dict[tuple[Any, ...], list[tuple[float, float, float, float]]]:
    """Distinct minus shared masks, per (mode, kind, width, depth, other): one (density, gap, interval low, high)
    per density that both mask modes ran, the gap in the primary metric signed so that > 0 means distinct is
    better, with a 95% Welch interval (unpaired: masks differ per seed anyway). Cells with < 2 scores per side are
    left out (no interval)."""
    from scipy import stats

    by_key: dict[tuple[Any, ...], dict[str, Cell]] = {}
    for c in cells:
        if c.mask_mode in ("distinct", "shared") and len(c.scores()) >= 2:
            by_key.setdefault((c.mode, c.mask_kind, c.width, c.depth, c.other, c.sparsity), {})[c.mask_mode] = c
    out: dict[tuple[Any, ...], list[tuple[float, float, float, float]]] = {}
    for (mode, kind, width, depth, other, sparsity), pair in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        if len(pair) < 2:
            continue
        a, b = pair["distinct"].scores(), pair["shared"].scores()
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        gap, se = statistics.fmean(a) - statistics.fmean(b), math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else math.inf
        half = float(stats.t.ppf(0.975, df)) * se if se > 0 else 0.0
        out.setdefault((mode, kind, width, depth, other), []).append((1.0 - sparsity, gap, gap - half, gap + half))
    return {k: sorted(v) for k, v in out.items()}


def plot_mask_gap(cells: list[Cell], path: Path, title: str, colors: dict[str, str] | None = None) -> bool:
    """Distinct minus shared masks against mask density (log2 axis), one line per depth (and width, kind), with
    95% Welch intervals: the paper's claim that distinct masks raise capacity as density falls and depth grows."""
    gaps = {k: v for k, v in mask_gaps(cells).items() if len(v) >= 2}
    if not gaps:
        return False
    styler = Styler(colors if colors is not None else variant_colors(cells))
    fig, ax = _figure(title, "mask density (1 - sparsity)", f"distinct - shared, val {cells[0].metric} "
                      f"({'higher' if cells[0].higher_is_better else 'lower'}-is-better sign)")
    densities = set()
    for i, ((mode, kind, width, depth, other), points) in enumerate(gaps.items()):
        x = [p[0] for p in points]
        densities.update(x)
        color, linestyle, marker = styler(f"{mode} d={depth}")
        ax.errorbar(x, [p[1] for p in points], yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
                    color=color, ls=linestyle, marker=marker, capsize=3, lw=1.4, ms=4,
                    label=_fmt([mode, kind, f"w={width}" if width is not None else "",
                                f"d={depth}" if depth is not None else "", other]))
    ax.axhline(0.0, color="black", lw=0.8)
    _log2_axis(ax, densities)
    _save(fig, ax, path, note="points: mean gap; bars: 95% Welch interval")
    return True


def _mean_curve(runs: list[Any]) -> list[tuple[float, float, float]]:
    """(mean time, mean value, std of value) at each evaluation step that at least half the runs (and two, when
    there are two or more) reached; a single run's own curve."""
    at: dict[float, list[tuple[float, float]]] = {}
    for run in runs:
        for i, rec in enumerate(run.history):
            t, v = rec.get("time/train_s"), rec.get(f"val/{run.metric}")
            if isinstance(t, (int, float)) and isinstance(v, (int, float)) and math.isfinite(t) and math.isfinite(v):
                at.setdefault(rec.get("step", i), []).append((float(t), float(v)))
    need = max(1, min(2, len(runs)), math.ceil(len(runs) / 2))
    out = []
    for step in sorted(at, key=lambda s: (not isinstance(s, (int, float)), s if isinstance(s, (int, float)) else 0)):
        pts = at[step]
        if len(pts) >= need:
            vals = [v for _, v in pts]
            out.append((statistics.fmean(t for t, _ in pts), statistics.fmean(vals),
                        statistics.stdev(vals) if len(vals) > 1 else 0.0))
    return sorted(out)


def plot_time(cells: list[Cell], path: Path, title: str, colors: dict[str, str] | None = None) -> bool:
    curves = [(c, r, r.curve()) for c in cells for r in c.runs]
    curves = [x for x in curves if x[2]]
    if not curves:
        return False
    styler = Styler(colors if colors is not None else variant_colors(cells))
    fig, ax = _figure(title, "training time (s, time/train_s)", _ylabel(cells[0]))
    marked = False
    for cell in dict.fromkeys(c for c, _, _ in curves):
        color, linestyle, marker = styler(cell.label)
        mine = [(r, curve) for c, r, curve in curves if c is cell]
        for run, curve in mine:
            ax.plot([t for t, _ in curve], [v for _, v in curve], linestyle=linestyle, linewidth=0.8, alpha=0.3,
                    color=color)
            if run.status == "diverged":
                ax.plot([curve[-1][0]], [curve[-1][1]], marker="x", color="black", markersize=7, linestyle="none",
                        label=None if marked else "diverged (last evaluation)")
                marked = True
        mean = _mean_curve([r for r in cell.completed if r.curve()])
        if mean:
            ts, vs, sd = zip(*mean)
            if any(sd):
                ax.fill_between(ts, [v - d for v, d in zip(vs, sd)], [v + d for v, d in zip(vs, sd)], color=color,
                                alpha=0.15, linewidth=0)
            ax.plot(ts, vs, marker=marker, markersize=3, linestyle=linestyle, linewidth=1.6, color=color,
                    label=cell.title())
    _save(fig, ax, path, note="line: mean over seeds at each evaluation; band: +-1 sample std; faint: single seeds")
    return True


def plot_memory(cells: list[Cell], path: Path, title: str, colors: dict[str, str] | None = None) -> bool:
    points = [(c, c.stat("memory/peak_mb"), c.primary()) for c in cells]
    points = [p for p in points if p[1].n and p[2].n and math.isfinite(p[1].mean)]
    if not points:
        return False
    colors = colors if colors is not None else variant_colors(cells)
    fig, ax = _figure(title, "peak memory (MB, memory/peak_mb)", _ylabel(cells[0]))
    labelled: set[str] = set()
    for cell, mem, score in points:
        name = variant(cell.label)
        color = colors.get(name, "black")
        marker = MODE_MARKER.get(cell.mode, "D")
        seeds = [(m, v) for r in cell.completed
                 if math.isfinite(m := r.metrics.get("memory/peak_mb", math.nan))
                 and math.isfinite(v := r.value("val"))]
        if seeds:
            ax.scatter([p[0] for p in seeds], [p[1] for p in seeds], s=9, color=color, alpha=0.35, linewidths=0)
        ax.errorbar([mem.mean], [score.mean], xerr=[mem.std or 0.0], yerr=[score.std or 0.0], marker=marker,
                    markersize=5, linestyle="none", capsize=2, elinewidth=0.8, color=color,
                    label=None if name in labelled else name)
        labelled.add(name)
    _save(fig, ax, path, note="marker: mean of a cell; bars: +-1 sample std; faint: single seeds")
    return True


PLOTS: tuple[tuple[str, str, Callable[..., bool]], ...] = (
    ("depth", "vs depth", plot_depth), ("width", "vs width", plot_width),
    ("sparsity", "vs mask sparsity", plot_sparsity), ("maskgap", "distinct - shared masks vs density", plot_mask_gap),
    ("time", "vs training time", plot_time), ("memory", "vs peak memory", plot_memory))


def make_plots(cells: list[Cell], out: Path) -> list[Plot]:
    """Write every plot the cells have data for into ``out`` (PNG and SVG), one colour per variant across all of
    them; returns what was written."""
    written = []
    colors = variant_colors(cells)
    with _style():
        for (paradigm, dataset), group in groups(cells).items():
            for kind, what, fn in PLOTS:
                name = f"{slug(paradigm)}-{slug(dataset)}-{kind}.png"
                title = f"{paradigm} / {dataset}: val {group[0].metric} {what}"
                if fn(group, out / name, title, colors):
                    written.append(Plot(name, title, paradigm, dataset, kind))
    return written


FOREST = "forest"  # the headline figure's file stem (PNG and SVG)
VERDICT_COLOR = {"holds": "tab:green", "fails": "tab:red", "equivalent": "tab:blue", "undetermined": "tab:gray"}
FOREST_DPI = 150  # the headline figure: sharper than the others, shown at the top of the report
FOREST_CLIP = 5.0  # effects and interval ends beyond +-5 delta are drawn at the edge, with an arrow


def forest_plot(primaries: list[Any], out: Path) -> Plot | None:
    """The primary comparisons as a forest plot: one row per insight and paradigm, the effect and its interval
    (at the level each verdict was read at) in units of that comparison's delta, against 0 and +-delta, coloured
    by verdict. Spread and divergence comparisons (ratios and rates, not in units of delta) are listed in the
    row label without a bar. Writes forest.png and forest.svg; None without primary comparisons."""
    if not primaries:
        return None
    rows = sorted(primaries, key=lambda r: (r.spec.insight, r.spec.paradigm))
    with _style():
        _forest(rows, out)
    return Plot(f"{FOREST}.png", "Primary comparisons: effect and interval against 0 and +-delta, by verdict",
                "all", "all", "forest")


def _forest(rows: list[Any], out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 0.22 * len(rows) + 1.3), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for y, r in enumerate(reversed(rows)):
        colour = VERDICT_COLOR.get(r.verdict, "black")
        if r.spec.kind == "mean" and math.isfinite(r.effect):
            lo, hi = (r.ci_low / r.spec.delta, r.ci_high / r.spec.delta) if math.isfinite(r.ci_low) else (None, None)
            if lo is not None:
                a, b = max(lo, -FOREST_CLIP), min(hi, FOREST_CLIP)
                ax.plot([a, b], [y, y], color=colour, lw=2, solid_capstyle="butt")
                for end, edge in ((lo, -FOREST_CLIP), (hi, FOREST_CLIP)):
                    if abs(end) > FOREST_CLIP:
                        ax.annotate("", xy=(edge, y), xytext=(edge * 0.93, y),
                                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.2})
            ax.plot([max(min(r.effect / r.spec.delta, FOREST_CLIP), -FOREST_CLIP)], [y], "o", color=colour, ms=5)
    ax.axvline(0, color="black", lw=0.8)
    for edge in (-1, 1):
        ax.axvline(edge, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r.spec.insight}. {r.spec.paradigm}{'' if r.spec.headline else f' ({r.spec.id})'}: {r.verdict}"
                        + ("" if r.spec.kind == "mean" else f" ({r.spec.kind}, not in delta units)")
                        for r in reversed(rows)], fontsize=8)
    ax.set_xlim(-FOREST_CLIP * 1.05, FOREST_CLIP * 1.05)
    ax.set_xlabel("effect of arm A over arm B in units of the comparison's delta (dashed: +-delta)")
    ax.set_title("Primary comparisons: effect and interval at the verdict's level", loc="right")
    ax.grid(True, axis="x", alpha=0.3)
    save_figure(fig, out / f"{FOREST}.png", dpi=FOREST_DPI)
