"""Group runs that differ only in seed into cells, and their mean, sample std and n."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from .load import EQUILIBRIUM_MEASURES, SUMMARY_OTHER, Run, set_apart

# Keys the label and depth already show, and the width's key (each run's ``width_key``); any other key that
# varies between cells is named.
EXPLAINED = {"paradigm", "data.name", "block.mode", "block.depth", "mask.mode", "mask.kind", "mask.sparsity",
             "solver.name", "grad.mode", "train.jacobian_weight"}
MODE_ORDER = {"explicit": 0, "tied": 1, "deq": 2}
# Final metrics the tables show (key, column heading).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("fit/loss", "fit loss"), ("fit/acc", "fit acc"),  # the training split, scored at the end (train.score_train)
    ("params/unique", "params unique"), ("params/dense", "params dense"), ("params/nonzero", "params nonzero"),
    ("params/used", "params used"),
    ("time/train_s", "train s"), ("time/step_ms", "step ms"), ("throughput/samples_per_s", "samples/s"),
    ("memory/peak_mb", "peak MB"), ("core/nfe_forward", "NFE fwd"), ("core/nfe_backward", "NFE bwd"),
    ("core/rel_residual", "rel residual"),
)


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (ddof=1; None for n < 2) and n of the finite values."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stat":
        vals = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return cls(math.nan, None, 0)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))

    @property
    def se(self) -> float:
        """Standard error of the mean (nan for n < 2)."""
        return self.std / math.sqrt(self.n) if self.std is not None else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass(eq=False)  # identity: cells are dict keys
class Cell:
    """Runs of one paradigm and dataset that differ only in seed."""

    paradigm: str
    dataset: str
    label: str
    mode: str
    width: int | None
    depth: int | None
    mask_mode: str
    mask_kind: str
    sparsity: float
    other: str  # the cell's values of other config keys that vary between cells ("" if none)
    runs: list[Run] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.runs[0].metric

    @property
    def higher_is_better(self) -> bool:
        return self.runs[0].higher_is_better

    @property
    def completed(self) -> list[Run]:
        """The completed runs the cell's values are over: every completed run but those flagged not at
        equilibrium (``not_at_equilibrium``), which are counted apart."""
        return [r for r in self.runs if r.status == "completed" and not set_apart(r)]

    @property
    def not_at_equilibrium(self) -> list[Run]:
        """Completed DEQ runs flagged not at equilibrium: counted and shown, never averaged in."""
        return [r for r in self.runs if set_apart(r)]

    @property
    def ended(self) -> list[Run]:
        """The runs a divergence rate is over: every diverged and every completed one, those not at equilibrium
        included (they did not diverge; leaving them out alone would inflate the rate)."""
        return [r for r in self.runs if r.status in ("diverged", "completed")]

    @property
    def diverged(self) -> int:
        return sum(r.status == "diverged" for r in self.runs)

    def equilibrium(self) -> dict[str, Any]:
        """Over the cell's completed DEQ runs (those set apart included): how many are at equilibrium, not at it,
        or not measured; the median of each measured value over the runs that measured it (finite values only);
        and the flags by how often they occur (``flag_kind``), most common first."""
        runs = [r for r in self.runs if r.status == "completed" and r.mode == "deq"]
        measured = [r.equilibrium_measured for r in runs]
        names = [*EQUILIBRIUM_MEASURES, *sorted({k for m in measured for k in m} - set(EQUILIBRIUM_MEASURES))]
        medians = {}
        for name in names:
            values = [m[name] for m in measured if math.isfinite(m.get(name, math.nan))]
            if values:
                medians[name] = statistics.median(values)
        flags = Counter(flag_kind(f) for r in runs for f in r.equilibrium_flags)
        states = [r.at_equilibrium for r in runs]
        return {"at": states.count(True), "not_at": states.count(False), "not_measured": states.count(None),
                "medians": medians,
                "flags": sorted(flags.items(), key=lambda kv: (-kv[1], kv[0]))}

    @property
    def unfinished(self) -> int:
        """Runs neither completed nor diverged (running, failed, no metrics.json, unreadable)."""
        return sum(r.status not in ("completed", "diverged") for r in self.runs)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs if r.seed is not None})

    def replicates(self) -> dict[Any, list[Run]]:
        """The completed runs by replicate (seed and fold): several run directories of one seed are one
        replicate, never several (``duplicates`` names them)."""
        out: dict[Any, list[Run]] = {}
        for r in self.completed:
            out.setdefault((r.seed, (r.config.get("data") or {}).get("fold")) if r.seed is not None else r.name,
                           []).append(r)
        return out

    @property
    def duplicates(self) -> list[str]:
        """"seed 0: 2 run directories (merged)" for each replicate with more than one completed run."""
        return [f"seed {key[0] if isinstance(key, tuple) else key}: {len(runs)} run directories (merged)"
                for key, runs in self.replicates().items() if len(runs) > 1]

    def _per_replicate(self, value: Any) -> list[float]:
        out = []
        for runs in self.replicates().values():
            vals = [v for v in (value(r) for r in runs) if math.isfinite(v)]
            out.append(statistics.fmean(vals) if vals else math.nan)
        return out

    def stat(self, key: str) -> Stat:
        """A final metric over the completed runs, one value per replicate (duplicates of a seed averaged)."""
        return Stat.of(self._per_replicate(lambda r: r.metrics.get(key, math.nan)))

    def values(self, key: str) -> list[float]:
        """A final metric's finite value per replicate (what ``stat`` is over): the single seeds a plot shows."""
        return [v for v in self._per_replicate(lambda r: r.metrics.get(key, math.nan)) if math.isfinite(v)]

    def primary(self, split: str = "val") -> Stat:
        return self.stat(f"{split}/{self.metric}")

    def scores(self) -> list[float]:
        """Final val primary metric of each replicate, signed so that larger is better."""
        return [v for v in self._per_replicate(lambda r: r.score(r.value("val"))) if math.isfinite(v)]

    def score(self) -> float:
        """Mean score (nan without completed runs)."""
        vals = self.scores()
        return statistics.fmean(vals) if vals else math.nan

    @property
    def group(self) -> tuple[str, str]:
        return self.paradigm, self.dataset

    def title(self) -> str:
        """"tied d=4 w=32 [optim.lr=0.01]" - the label with depth, width and other keys."""
        parts = [self.label]
        if self.depth is not None:
            parts.append(f"d={self.depth}")
        if self.width is not None:
            parts.append(f"w={self.width}")
        if self.other:
            parts.append(f"[{self.other}]")
        return " ".join(parts)


_FLAG_VALUE = re.compile(r"^(\S+) \S+ ([<>]=?) (\S+)")  # "rel_residual 0.21 > 0.01 (...)"
_FLAG_WORDS = re.compile(r"^(\S+) (not measured|is nan)")  # "grad_cosine not measured (...)"


def flag_kind(flag: str) -> str:
    """A flag less the run's own value, so that runs failing one check count together: "rel_residual 0.21 > 0.01
    (mean relative residual ...)" -> "rel_residual > 0.01", "grad_cosine not measured (...)" -> "grad_cosine not
    measured"; a flag of another form is kept whole."""
    match = _FLAG_VALUE.match(flag)
    if match:
        return f"{match.group(1)} {match.group(2)} {match.group(3)}"
    match = _FLAG_WORDS.match(flag)
    return f"{match.group(1)} {match.group(2)}" if match else flag


def _fmt_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _varies(name: str, keys: list[dict[str, Any]]) -> bool:
    """Whether cells differ in ``name``: two values, or (for model/data/optim/train keys) set in some only.

    Solver, grad and mask keys are absent where the mode ignores them, so absence alone does not count.
    """
    if len({repr(key[name]) for key in keys if name in key}) > 1:
        return True
    present = sum(name in key for key in keys)
    return 0 < present < len(keys) and name.startswith(("model.", "data.", "optim.", "train.", "block."))


def _usual_values(keys: list[dict[str, Any]], explained: set[str]) -> dict[str, str | None]:
    """For each key that varies between cells (beyond label, width, depth: ``explained``): the repr of its most
    common value.

    A cell names a varying key only where it differs from the usual value; where some cells lack the key,
    every cell that has it names it (the usual value is then None).
    """
    out: dict[str, str | None] = {}
    for name in sorted({k for key in keys for k in key} - explained):
        if not _varies(name, keys):
            continue
        values = [repr(key[name]) for key in keys if name in key]
        out[name] = max(values, key=values.count) if len(values) == len(keys) else None
    return out


def group_cells(runs: list[Run]) -> list[Cell]:
    """Cells of runs with the same paradigm, dataset and config (less seeds), in report order."""
    buckets: dict[tuple, list[Run]] = {}
    for run in runs:
        key = (run.paradigm, run.dataset, tuple(sorted((k, repr(v)) for k, v in run.key.items())))
        buckets.setdefault(key, []).append(run)
    per_group: dict[tuple[str, str], list[dict[str, Any]]] = {}
    width_keys: dict[tuple[str, str], set[str]] = {}
    for (paradigm, dataset, _), members in buckets.items():
        per_group.setdefault((paradigm, dataset), []).append(members[0].key)
        width_keys.setdefault((paradigm, dataset), set()).update(r.width_key for r in members if r.width_key)
    usual = {group: _usual_values(keys, EXPLAINED | width_keys[group]) for group, keys in per_group.items()}
    cells = []
    for (paradigm, dataset, _), members in buckets.items():
        first = members[0]
        other = first.key.get(SUMMARY_OTHER)  # runs rebuilt from a summary.json keep their cell's description
        if other is None:
            other = ", ".join(f"{k}={_fmt_value(first.key[k])}" for k, common in usual[(paradigm, dataset)].items()
                              if k in first.key and repr(first.key[k]) != common)
        members.sort(key=lambda r: (r.seed if r.seed is not None else -1, r.name))
        cells.append(Cell(paradigm, dataset, first.label, first.mode, first.width, first.depth, first.mask_mode,
                          first.mask_kind, first.sparsity, other, members))
    cells.sort(key=lambda c: (c.paradigm, c.dataset, MODE_ORDER.get(c.mode, 9), c.mask_mode != "none", c.label,
                              c.width if c.width is not None else -1, c.depth if c.depth is not None else -1, c.other))
    return cells


def groups(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    """Cells by (paradigm, dataset), in order."""
    out: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        out.setdefault(cell.group, []).append(cell)
    return out


def best(cells: Iterable[Cell]) -> Cell | None:
    """The cell with the best mean score, preferring cells with >= 2 completed seeds."""
    scored = [c for c in cells if math.isfinite(c.score())]
    multi = [c for c in scored if len(c.scores()) >= 2]
    pool = multi or scored
    return max(pool, key=lambda c: c.score()) if pool else None
