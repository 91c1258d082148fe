"""PNG plots (matplotlib, Agg canvas): only those the runs have data for.

Per paradigm and dataset: primary metric vs depth, vs width, vs mask sparsity (per block mode, mask
mode and kind), vs training time (the history.jsonl curves of every run) and vs peak memory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .aggregate import Cell, groups
from .insights import depth_matters

MODE_STYLE = {"explicit": ("o", "-"), "tied": ("s", "-"), "deq": ("^", "--")}
MODE_COLOR = {"explicit": "tab:gray", "tied": "tab:blue", "deq": "tab:red"}
MAX_LEGEND = 24


@dataclass
class Plot:
    """One written figure."""

    file: str  # name inside the report folder
    title: str
    paradigm: str
    dataset: str
    kind: str  # depth | width | sparsity | time | memory


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, ax: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles[:MAX_LEGEND], labels[:MAX_LEGEND], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)
    FigureCanvasAgg(fig)
    fig.savefig(path, bbox_inches="tight")


def _ylabel(cell: Cell) -> str:
    return f"val {cell.metric} ({'higher' if cell.higher_is_better else 'lower'} is better)"


def _line(ax: Any, cells: list[Cell], x: Callable[[Cell], float], label: str, mode: str) -> None:
    cells = sorted(cells, key=x)
    stats = [c.primary() for c in cells]
    marker, style = MODE_STYLE.get(mode, ("D", ":"))
    ax.errorbar([x(c) for c in cells], [s.mean for s in stats], yerr=[s.std or 0.0 for s in stats], marker=marker,
                linestyle=style, capsize=3, label=label)


def _series(cells: Iterable[Cell], key: Callable[[Cell], Any]) -> dict[Any, list[Cell]]:
    out: dict[Any, list[Cell]] = {}
    for c in cells:
        out.setdefault(key(c), []).append(c)
    return out


def _fmt(parts: Iterable[Any]) -> str:
    return " ".join(str(p) for p in parts if p not in (None, ""))


def plot_depth(cells: list[Cell], path: Path, title: str) -> bool:
    cells = [c for c in cells if c.scores()]
    if not cells:
        return False
    axis = [c for c in cells if depth_matters(c) and c.depth is not None]
    if len({c.depth for c in axis}) < 2:
        return False
    fig, ax = _figure(title, "depth (layers; DEQ with distinct masks: cycle length)", _ylabel(cells[0]))
    for (label, width, other), line in _series(axis, lambda c: (c.label, c.width, c.other)).items():
        _line(ax, line, lambda c: c.depth, _fmt([label, f"w={width}" if width is not None else "", other]),
              line[0].mode)
    for c in cells:
        if c.mode == "deq" and not depth_matters(c):
            ax.axhline(c.primary().mean, linestyle="--", color=MODE_COLOR["deq"], alpha=0.6,
                       label=_fmt([c.label, f"w={c.width}" if c.width is not None else "", c.other, "(DEQ, no depth)"]))
    _save(fig, ax, path)
    return True


def plot_width(cells: list[Cell], path: Path, title: str) -> bool:
    cells = [c for c in cells if c.scores()]
    if not cells:
        return False
    axis = [c for c in cells if c.width is not None]
    if len({c.width for c in axis}) < 2:
        return False
    fig, ax = _figure(title, "width", _ylabel(cells[0]))
    for (label, depth, other), line in _series(axis, lambda c: (c.label, c.depth if depth_matters(c) else None,
                                                                 c.other)).items():
        _line(ax, line, lambda c: c.width, _fmt([label, f"d={depth}" if depth is not None else "", other]),
              line[0].mode)
    widths = sorted({c.width for c in axis})
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
    _save(fig, ax, path)
    return True


def plot_sparsity(cells: list[Cell], path: Path, title: str) -> bool:
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
    fig, ax = _figure(title + " (sparsity 0 = the unmasked cell)", "mask sparsity", _ylabel(cells[0]))
    for (mode, mask_mode, kind, width, depth, other, jac), line in lines.items():
        base = plain.get((mode, width, depth, other, jac))
        label = _fmt([mode, f"{mask_mode}/{kind}", f"w={width}" if width is not None else "",
                      f"d={depth}" if depth is not None else "", other, "+jac" if jac else ""])
        _line(ax, line + ([base] if base else []), lambda c: c.sparsity, label, mode)
    _save(fig, ax, path)
    return True


def plot_time(cells: list[Cell], path: Path, title: str) -> bool:
    curves = [(c, r, r.curve()) for c in cells for r in c.runs]
    curves = [x for x in curves if x[2]]
    if not curves:
        return False
    fig, ax = _figure(title, "training time (s, time/train_s)", _ylabel(cells[0]))
    palette = _palette(len({id(c) for c, _, _ in curves}))
    colors: dict[int, Any] = {}
    marked = False
    for cell, run, curve in curves:
        first = id(cell) not in colors
        color = colors.setdefault(id(cell), palette[len(colors) % len(palette)])
        marker, style = MODE_STYLE.get(cell.mode, ("D", ":"))
        ax.plot([t for t, _ in curve], [v for _, v in curve], marker=marker, markersize=3, linestyle=style,
                alpha=0.8, color=color, label=cell.title() if first else None)
        if run.status == "diverged":
            ax.plot([curve[-1][0]], [curve[-1][1]], marker="x", color="black", markersize=8, linestyle="none",
                    label=None if marked else "diverged (last evaluation)")
            marked = True
    _save(fig, ax, path)
    return True


def _palette(n: int) -> list[Any]:
    """Distinct colours: tab10 up to 10, tab20 beyond (then repeating)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i) for i in range(cmap.N)]


def plot_memory(cells: list[Cell], path: Path, title: str) -> bool:
    points = [(c, c.stat("memory/peak_mb"), c.primary()) for c in cells]
    points = [p for p in points if p[1].n and p[2].n and math.isfinite(p[1].mean)]
    if not points:
        return False
    fig, ax = _figure(title, "peak memory (MB, memory/peak_mb)", _ylabel(cells[0]))
    for mode, group in _series(points, lambda p: p[0].mode).items():
        marker, _ = MODE_STYLE.get(mode, ("D", ":"))
        ax.errorbar([p[1].mean for p in group], [p[2].mean for p in group], xerr=[p[1].std or 0 for p in group],
                    yerr=[p[2].std or 0 for p in group], marker=marker, linestyle="none", capsize=3,
                    color=MODE_COLOR.get(mode), label=mode)
    _save(fig, ax, path)
    return True


PLOTS: tuple[tuple[str, str, Callable[[list[Cell], Path, str], bool]], ...] = (
    ("depth", "vs depth", plot_depth), ("width", "vs width", plot_width),
    ("sparsity", "vs mask sparsity", plot_sparsity),
    ("time", "vs training time", plot_time), ("memory", "vs peak memory", plot_memory))


def make_plots(cells: list[Cell], out: Path) -> list[Plot]:
    """Write every plot the cells have data for into ``out``; returns what was written."""
    written = []
    for (paradigm, dataset), group in groups(cells).items():
        for kind, what, fn in PLOTS:
            name = f"{slug(paradigm)}-{slug(dataset)}-{kind}.png"
            title = f"{paradigm} / {dataset}: val {group[0].metric} {what}"
            if fn(group, out / name, title):
                written.append(Plot(name, title, paradigm, dataset, kind))
    return written


FOREST = "forest"  # the headline figure's file stem (PNG and SVG)
VERDICT_COLOR = {"holds": "tab:green", "fails": "tab:red", "equivalent": "tab:blue", "undetermined": "tab:gray"}
FOREST_CLIP = 5.0  # effects and interval ends beyond +-5 delta are drawn at the edge, with an arrow


def forest_plot(primaries: list[Any], out: Path) -> Plot | None:
    """The primary comparisons as a forest plot: one row per insight and paradigm, the effect and its interval
    (at the level each verdict was read at) in units of that comparison's delta, against 0 and +-delta, coloured
    by verdict. Spread and divergence comparisons (ratios and rates, not in units of delta) are listed in the
    row label without a bar. Writes forest.png and forest.svg; None without primary comparisons."""
    if not primaries:
        return None
    rows = sorted(primaries, key=lambda r: (r.spec.insight, r.spec.paradigm))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 0.32 * len(rows) + 1.4), dpi=150)
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
    ax.set_yticklabels([f"{r.spec.insight}. {r.spec.paradigm}: {r.verdict}"
                        + ("" if r.spec.kind == "mean" else f" ({r.spec.kind}, not in delta units)")
                        for r in reversed(rows)], fontsize=7)
    ax.set_xlim(-FOREST_CLIP * 1.05, FOREST_CLIP * 1.05)
    ax.set_xlabel("effect of arm A over arm B, in units of the comparison's delta (dashed: +-delta)")
    ax.set_title("Primary comparisons: effect and interval at the verdict's level", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(out / f"{FOREST}.png", bbox_inches="tight")
    fig.savefig(out / f"{FOREST}.svg", bbox_inches="tight")
    return Plot(f"{FOREST}.png", "Primary comparisons: effect and interval against 0 and +-delta, by verdict",
                "all", "all", "forest")
