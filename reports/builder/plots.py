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
    kind: str  # depth | width | sparsity | maskgap | capacity | fitgap | time | memory | forest

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


FIT = "fit/loss"  # the capacity measure: the final weights' loss on the training split (train.score_train)
GAP_NOTE = "points: mean gap; bars: 95% Welch interval"
MATCH_TOLERANCE = 1.25  # a dense width matches a masked cell when their cell nonzeros differ by at most 25%


def _welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) with its 95% Welch interval (unpaired). Needs >= 2 values per side."""
    from scipy import stats

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    gap, se = statistics.fmean(a) - statistics.fmean(b), math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else math.inf
    half = float(stats.t.ppf(0.975, df)) * se if se > 0 else 0.0
    return gap, gap - half, gap + half


def _signed(cell: Cell, key: str | None) -> list[float]:
    """A cell's per-replicate values signed so that larger is better: the val primary metric (``key`` None) or a
    loss ``key`` such as ``fit/loss`` (negated)."""
    if key is None:
        return cell.scores()
    return [-v if key.endswith("loss") else v for v in cell.values(key)]


def mask_gaps(cells: list[Cell], key: str | None = None) -> dict[tuple[Any, ...], list[tuple[float, float, float, float]]]:
    """Distinct minus shared masks, per (mode, kind, width, depth, other): one (density, gap, interval low, high)
    per density that both mask modes ran, the gap in the val primary metric (or in ``key``, e.g. ``fit/loss``)
    signed so that > 0 means distinct is better, with a 95% Welch interval (unpaired: masks differ per seed
    anyway). Cells with < 2 values per side are left out (no interval)."""
    by_key: dict[tuple[Any, ...], dict[str, Cell]] = {}
    for c in cells:
        if c.mask_mode in ("distinct", "shared") and len(_signed(c, key)) >= 2:
            by_key.setdefault((c.mode, c.mask_kind, c.width, c.depth, c.other, c.sparsity), {})[c.mask_mode] = c
    out: dict[tuple[Any, ...], list[tuple[float, float, float, float]]] = {}
    for (mode, kind, width, depth, other, sparsity), pair in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        if len(pair) < 2:
            continue
        gap = _welch(_signed(pair["distinct"], key), _signed(pair["shared"], key))
        out.setdefault((mode, kind, width, depth, other), []).append((1.0 - sparsity, *gap))
    return {k: sorted(v) for k, v in out.items()}


def matched_dense(cell: Cell, cells: list[Cell]) -> Cell | None:
    """The dense tied cell (same depth and other keys) whose width gives a cell the nonzeros and FLOPs per layer of
    ``cell``'s masks: width ~ cell.width * sqrt(density), within ``MATCH_TOLERANCE`` in nonzeros (None: none ran)."""
    if cell.width is None:
        return None
    target = (1.0 - cell.sparsity) * cell.width ** 2
    found = [c for c in cells if c.mode == cell.mode and c.mask_mode == "none" and c.depth == cell.depth
             and c.other == cell.other and c.width is not None
             and 1 / MATCH_TOLERANCE <= c.width ** 2 / target <= MATCH_TOLERANCE]
    return min(found, key=lambda c: abs(math.log(c.width ** 2 / target)), default=None)


def dense_gaps(cells: list[Cell], key: str | None = None) -> dict[tuple[Any, ...], list[tuple[float, float, float, float]]]:
    """Distinct masks minus the dense tied model of matched nonzeros and FLOPs per layer (``matched_dense``), per
    (mode, kind, width, depth, other): (density, gap, low, high), signed as in ``mask_gaps``."""
    out: dict[tuple[Any, ...], list[tuple[float, float, float, float]]] = {}
    for c in cells:
        a = _signed(c, key)
        if c.mask_mode != "distinct" or len(a) < 2:
            continue
        dense = matched_dense(c, cells)
        if dense is None or len(_signed(dense, key)) < 2:
            continue
        out.setdefault((c.mode, c.mask_kind, c.width, c.depth, c.other), []).append(
            (1.0 - c.sparsity, *_welch(a, _signed(dense, key))))
    return {k: sorted(v) for k, v in sorted(out.items(), key=lambda kv: str(kv[0]))}


def _gap_lines(ax: Any, gaps: dict[tuple[Any, ...], list[tuple[float, float, float, float]]], styler: Any,
               linestyle: str | None, what: str, by_depth: bool = False) -> set[float]:
    """One line (or point) per key of ``gaps``; ``styler`` gets "MODE d=DEPTH" (a ``Styler``: the variant's colour)
    or, with ``by_depth``, (depth, other) (a ``_DepthStyler``: one colour per depth and setting)."""
    densities: set[float] = set()
    for (mode, kind, width, depth, other), points in gaps.items():
        x = [p[0] for p in points]
        densities.update(x)
        color, default_ls, marker = styler((depth, other)) if by_depth else styler(f"{mode} d={depth}")
        ax.errorbar(x, [p[1] for p in points], yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
                    color=color, ls=linestyle or default_ls, marker=marker, capsize=3, lw=1.4, ms=4,
                    label=_fmt([what, mode, kind, f"w={width}" if width is not None else "",
                                f"d={depth}" if depth is not None else "", other]))
    return densities


def plot_mask_gap(cells: list[Cell], path: Path, title: str, colors: dict[str, str] | None = None) -> bool:
    """Distinct minus shared masks against mask density (log2 axis), one line per depth (and width, kind), with
    95% Welch intervals: the paper's claim that distinct masks raise capacity as density falls and depth grows."""
    gaps = mask_gaps(cells)  # a depth with one density is a point with its interval
    if not gaps:
        return False
    styler = Styler(colors if colors is not None else variant_colors(cells))
    fig, ax = _figure(title, "mask density (1 - sparsity)", f"distinct - shared, val {cells[0].metric} "
                      f"({'higher' if cells[0].higher_is_better else 'lower'}-is-better sign)")
    densities = _gap_lines(ax, gaps, styler, None, "")
    ax.axhline(0.0, color="black", lw=0.8)
    _log2_axis(ax, densities)
    _save(fig, ax, path, note=GAP_NOTE)
    return True


def plot_fit_gap(cells: list[Cell], path: Path, title: str, colors: dict[str, str] | None = None) -> bool:
    """On the training-set fit (``fit/loss``, the capacity measure): distinct minus shared masks (solid) and distinct
    masks minus the dense tied model of the same nonzeros and FLOPs per layer (dashed) against density, one colour
    per depth, with 95% Welch intervals; > 0: distinct fits its training data better."""
    shared, dense = mask_gaps(cells, FIT), dense_gaps(cells, FIT)  # one density: a point with its interval
    if not shared and not dense:
        return False
    styler = depth_styler([*shared, *dense])
    fig, ax = _figure(title, "mask density (1 - sparsity)", "gap in training-set loss (> 0: distinct fits better)")
    densities = set()
    for gaps, ls, what in ((shared, "-", "distinct - shared:"), (dense, "--", "distinct - dense at w*sqrt(density):")):
        densities |= _gap_lines(ax, gaps, styler, ls, what, by_depth=True)
    ax.axhline(0.0, color="black", lw=0.8)
    _log2_axis(ax, densities)
    _save(fig, ax, path, note=GAP_NOTE + "; dense: the width with the masked cell's nonzeros per layer")
    return True


def depth_styler(keys: Iterable[tuple[Any, ...]]) -> "_DepthStyler":
    """The gap lines' styles: one colour and marker per (depth, other) of the (mode, kind, width, depth, other)
    ``keys``, so a depth trained at two budgets is two lines."""
    lines = sorted({(k[3], k[4]) for k in keys}, key=str)
    return _DepthStyler({line: PALETTE[i % len(PALETTE)] for i, line in enumerate(lines)},
                        {line: MARKERS[i % len(MARKERS)] for i, line in enumerate(lines)})


class _DepthStyler:
    """One colour and marker per (depth, other settings), whatever the mode: a depth trained at two budgets is two
    lines that can be told apart."""

    def __init__(self, palette: dict[tuple[Any, str], str], markers: dict[tuple[Any, str], str]) -> None:
        self.palette, self.markers = palette, markers

    def __call__(self, line: tuple[Any, str]) -> tuple[str, str, str]:
        return self.palette.get(line, "black"), "-", self.markers.get(line, "o")


def _arm(c: Cell) -> str:
    """A cell's arm in the capacity picture: "tied dense", "tied shared", "tied distinct", "tied disjoint",
    "explicit", "deq"."""
    if c.mode == "tied":
        return f"tied {'dense' if c.mask_mode == 'none' else c.mask_mode}"
    return c.mode if c.mask_mode == "none" else f"{c.mode} {c.mask_mode}"


def capacity_series(cells: list[Cell]) -> dict[tuple[Any, str, Any, str], list[Cell]]:
    """The capacity plot's lines: (depth, arm, width of a masked arm's line or None, other) -> its cells in order of
    nonzero parameters. A masked arm is drawn over density at each width, a dense one over width; cells that
    differ in any other setting (``Cell.other``, e.g. a longer training run) are never joined into one line; a
    setting all of them share is left out of the key."""
    parts = {c: [p for p in c.other.split(", ") if p] for c in cells}
    common = set.intersection(*(set(v) for v in parts.values())) if parts else set()

    def line(c: Cell) -> tuple[Any, str, Any, str]:
        arm = _arm(c)
        return (c.depth, arm, c.width if arm.endswith(("shared", "distinct")) else None,
                ", ".join(p for p in parts[c] if p not in common))

    out = _series(cells, line)
    return {k: sorted(v, key=lambda c: statistics.fmean(c.values("params/nonzero")))
            for k, v in sorted(out.items(), key=lambda kv: str(kv[0]))}


def plot_capacity(cells: list[Cell], path: Path, title: str, colors: dict[str, str] | None = None) -> bool:
    """Training-set loss (``fit/loss``) against nonzero parameters (summed over layers: a proxy of the weights'
    FLOPs per sample, in which an embedding lookup or a stem or head counts by its size, not its cost), one panel per depth: dense tied models over width, shared and distinct masks over density, disjoint
    masks and explicit layers (``capacity_series``); mean over seeds with +-1 std bars, single seeds faint. Capacity
    reads as the lower envelope: the arm lowest at a given nonzero count fits best per FLOP. DEQ cells are left
    out: their count is one application of the map, which their solve applies many times."""
    from matplotlib.figure import Figure

    cells = [c for c in cells if c.values(FIT) and c.values("params/nonzero") and c.depth is not None
             and c.mode != "deq"]
    depths = sorted({c.depth for c in cells})
    if len(cells) < 3 or not any(c.mask_mode != "none" for c in cells):
        return False
    arms = sorted({_arm(c) for c in cells})
    palette = {a: (BASE_COLOR.get(a.split(" ")[0]) if a in ("explicit", "tied dense") else None) for a in arms}
    free = iter(PALETTE)
    palette = {a: c or next(free) for a, c in palette.items()}
    fig = Figure(figsize=(3.3 * len(depths) + 0.6, AXES_HEIGHT + 0.35), layout="constrained")
    axes = fig.subplots(1, len(depths), sharey=True, squeeze=False)[0]
    lines = capacity_series(cells)
    labelled: set[str] = set()
    for ax, depth in zip(axes, depths):
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("nonzero parameters (over layers)")
        ax.grid(True, alpha=0.3)
        ax.set_xscale("log", base=2)
        seen: dict[str, int] = {}
        for (_, arm, _, other), members in ((k, v) for k, v in lines.items() if k[0] == depth):
            i = seen[arm] = seen.get(arm, -1) + 1
            xs = [statistics.fmean(c.values("params/nonzero")) for c in members]
            stats = [c.stat(FIT) for c in members]
            label = _fmt([arm, f"[{other}]" if other else ""])
            ax.errorbar(xs, [s.mean for s in stats], yerr=[s.std or 0.0 for s in stats], color=palette[arm],
                        ls=LINESTYLES[i % len(LINESTYLES)], marker=MARKERS[arms.index(arm) % len(MARKERS)],
                        capsize=2, lw=1.3, ms=4, mfc="white" if other else None,
                        label=None if label in labelled else label)
            labelled.add(label)
            seeds = [(x, v) for x, c in zip(xs, members) for v in c.values(FIT)]
            ax.scatter([p[0] for p in seeds], [p[1] for p in seeds], s=8, color=palette[arm], alpha=0.3,
                       linewidths=0)
    axes[0].set_ylabel("training-set loss (fit/loss; lower fits better)")
    fig.suptitle(title, fontsize=9.5)
    handles, labels = [sum(hl, []) for hl in zip(*(ax.get_legend_handles_labels() for ax in axes))]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 3 if len(handles) > 5 else 5),
               frameon=False, fontsize=7, title="mean over seeds +-1 std; faint: single seeds; masked arms over "
               "density, dense over width; open markers: cells with other settings [named]", title_fontsize=7.5)
    save_figure(fig, path)
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
    ("capacity", "training-set fit vs nonzero parameters", plot_capacity),
    ("fitgap", "training-set fit: distinct - shared and distinct - matched dense vs density", plot_fit_gap),
    ("time", "vs training time", plot_time), ("memory", "vs peak memory", plot_memory))


FIT_PLOTS = ("capacity", "fitgap")  # plots of the training-set fit, not of the val primary metric


def make_plots(cells: list[Cell], out: Path) -> list[Plot]:
    """Write every plot the cells have data for into ``out`` (PNG and SVG), one colour per variant across all of
    them; returns what was written."""
    written = []
    colors = variant_colors(cells)
    with _style():
        for (paradigm, dataset), group in groups(cells).items():
            for kind, what, fn in PLOTS:
                name = f"{slug(paradigm)}-{slug(dataset)}-{kind}.png"
                title = f"{paradigm} / {dataset}: " + (what if kind in FIT_PLOTS else f"val {group[0].metric} {what}")
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


def forest_segment(lo: float, hi: float, clip: float = FOREST_CLIP) -> tuple[tuple[float, float], list[float]]:
    """The drawn part of an interval [lo, hi] (in delta units) on an axis clipped at +-clip, and the edges where
    an arrow says it goes on: one per end beyond the clip, on that end's side (an interval wholly beyond one edge
    is a point at that edge with its arrow there, never one at the other edge)."""
    a, b = (min(max(end, -clip), clip) for end in (lo, hi))
    return (a, b), sorted({math.copysign(clip, end) for end in (lo, hi) if abs(end) > clip})


def _forest(rows: list[Any], out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 0.22 * len(rows) + 1.3), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for y, r in enumerate(reversed(rows)):
        colour = VERDICT_COLOR.get(r.verdict, "black")
        if r.spec.kind == "mean" and math.isfinite(r.effect):
            lo, hi = (r.ci_low / r.spec.delta, r.ci_high / r.spec.delta) if math.isfinite(r.ci_low) else (None, None)
            if lo is not None:
                (a, b), arrows = forest_segment(lo, hi)
                ax.plot([a, b], [y, y], color=colour, lw=2, solid_capstyle="butt")
                for edge in arrows:
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
