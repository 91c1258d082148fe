"""Guidelines drawn from the runs: the best depth, width and sparsity under a parameter or time budget."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .aggregate import Cell, best, groups
from .load import PER_PROCESS_METRICS, mixed_layouts

BUDGETS: tuple[tuple[str, str], ...] = (("params/unique", "unique params"), ("params/nonzero", "nonzero params"),
                                        ("time/train_s", "training s"))
RULE = ("For each budget (the smallest, median and largest cell mean over the cells' completed runs, for unique "
        "(stored) parameters, nonzero parameters (kept by the masks, summed over the unrolled layers: a proxy "
        "of the weights' FLOPs, in which embeddings, stem and head count by size, not cost; DEQ cells are left out of this budget, as their count is one application of the map their solve "
        "applies many times) and training seconds), the cell with the best mean val primary metric among cells "
        "whose mean cost is within the budget (preferring cells none of whose runs diverged, then cells with >= 2 seeds; a "
        "pick's diverged runs are shown beside it; a cell with fewer runs had fewer chances to diverge). Training "
        "seconds are not a budget where the cells' runs did not train alike (seed batches of different sizes: a "
        "batched run's seconds are its batch's divided by K; other thread or process counts; other processes sharing the "
        "device).")
# budgets a DEQ cell is not priced under: its params/nonzero counts one application of its map, not a solve's
NOT_FOR_DEQ = ("params/nonzero",)


def _budgets(values: list[float]) -> list[tuple[str, float]]:
    if not values:
        return []
    out: list[tuple[str, float]] = []
    for name, value in (("smallest", min(values)), ("median", statistics.median(values)), ("largest", max(values))):
        if not out or value > out[-1][1] * (1 + 1e-9):
            out.append((name, value))
    return out


def pick(cells: list[Cell], key: str, budget: float) -> Cell | None:
    """The best cell whose mean ``key`` is at most ``budget``: among the cells none of whose runs diverged, if any
    is within it (a recommendation's mean over the runs that survived says nothing of those that did not)."""
    within = [c for c in cells if c.stat(key).mean <= budget * (1 + 1e-9)]
    return best(c for c in within if not c.diverged) or best(within)


def guidelines(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per (paradigm, dataset): one pick per budget, with what it achieves and costs."""
    out = []
    for (paradigm, dataset), group in groups(cells).items():
        scored = [c for c in group if c.scores()]
        picks, notes = [], []
        for key, name in BUDGETS:
            priced = [c for c in scored if not (key in NOT_FOR_DEQ and c.mode == "deq")]
            mixed = mixed_layouts(r for c in priced for r in c.completed) \
                if key.startswith(PER_PROCESS_METRICS) else ""
            if mixed:
                notes.append(f"no {name} budget: the cells' runs did not train alike ({mixed})")
                continue
            # budgets are cell means, as the costs they are compared with (a single run's cost, say the fastest
            # run's seconds, can lie below every cell's mean and then picks nothing)
            values = [c.stat(key).mean for c in priced]
            for budget_name, budget in _budgets([v for v in values if math.isfinite(v)]):
                cell = pick(priced, key, budget)
                if cell is None:
                    continue
                stat = cell.primary()
                picks.append({
                    "budget": key, "budget_name": name, "which": budget_name, "limit": budget,
                    "label": cell.label, "mode": cell.mode, "depth": cell.depth, "width": cell.width,
                    "sparsity": cell.sparsity, "mask": cell.mask_mode, "other": cell.other, "title": cell.title(),
                    "metric": cell.metric, "mean": stat.mean, "std": stat.std, "n": stat.n,
                    "diverged": cell.diverged, "runs": len(cell.runs),
                    "params_unique": cell.stat("params/unique").mean, "train_s": cell.stat("time/train_s").mean,
                })
        if picks or notes:
            out.append({"paradigm": paradigm, "dataset": dataset, "metric": group[0].metric,
                        "higher_is_better": group[0].higher_is_better, "picks": picks, "notes": notes})
    return out
