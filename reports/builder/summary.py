"""summary.json: the report's content, machine-readable (non-finite floats as "nan"/"inf" strings, like run dirs)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .aggregate import COLUMNS, Cell
from .insights import INSIGHTS, RULE, InsightResult
from .load import Run
from .primary import late_changes

def clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become strings, tuples lists, dataclasses dicts."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return clean(dataclasses.asdict(obj))
    return obj


def run_entry(run: Run) -> dict[str, Any]:
    return {
        "dir": str(run.dir), "name": run.name, "status": run.status, "reason": run.reason, "label": run.label,
        "paradigm": run.paradigm, "dataset": run.dataset, "seed": run.seed, "mode": run.mode, "width": run.width,
        "depth": run.depth, "mask": run.mask_mode, "mask_kind": run.mask_kind, "sparsity": run.sparsity,
        "step": run.step, "total_steps": run.total_steps, "metric": run.metric,
        "higher_is_better": run.higher_is_better, "val": run.value("val"), "test": run.value("test"),
        "metrics": dict(run.metrics),  # all of them: a rebuild may test any metric a primary comparison names
        "history_points": len(run.history),
        "fold": (run.config.get("data") or {}).get("fold"),  # a replicate key like the seed (k-fold TU runs)
        # each history key's move over the last 20% of steps: a rebuild's convergence notes read them
        "late_changes": late_changes(run),
        # DEQ runs: metrics.json's equilibrium check as it was (None: not measured or not a DEQ); a rebuild re-reads it
        "equilibrium": run.equilibrium.as_dict() if run.equilibrium is not None else None,
        "code": [{"commit": p.get("commit", "unknown"), "dirty": p.get("dirty"),
                  **({"seed_batch": p["seed_batch"]} if "seed_batch" in p else {})} for p in run.provenance],
    }


def cell_entry(cell: Cell) -> dict[str, Any]:
    stats = {f"val/{cell.metric}": cell.primary("val").as_dict(), f"test/{cell.metric}": cell.primary("test").as_dict()}
    stats.update({key: cell.stat(key).as_dict() for key, _ in COLUMNS})
    return {
        "paradigm": cell.paradigm, "dataset": cell.dataset, "label": cell.label, "title": cell.title(),
        "mode": cell.mode, "width": cell.width, "depth": cell.depth, "mask": cell.mask_mode,
        "mask_kind": cell.mask_kind, "sparsity": cell.sparsity, "other": cell.other, "metric": cell.metric,
        "higher_is_better": cell.higher_is_better, "n": len(cell.completed), "runs": len(cell.runs),
        "replicates": len(cell.replicates()),  # what the stats' n count (several run directories of a seed: one)
        "diverged": cell.diverged, "unfinished": cell.unfinished, "not_at_equilibrium": len(cell.not_at_equilibrium),
        "equilibrium": cell.equilibrium() if cell.mode == "deq" else None, "seeds": cell.seeds,
        "run_names": [r.name for r in cell.runs], "stats": stats,
    }


def insight_entry(result: InsightResult) -> dict[str, Any]:
    return {"insight": result.insight, "name": INSIGHTS[result.insight][0], "paradigm": result.paradigm,
            "dataset": result.dataset, "verdict": result.verdict, "reason": result.reason, "text": result.short(),
            "effect": result.effect, "unit": result.unit, "n_a": result.n_a, "n_b": result.n_b,
            "comparisons": [dataclasses.asdict(c) for c in result.comparisons]}


def primary_entry(result: Any) -> dict[str, Any]:
    spec, test = result.spec, result.test
    return {"id": spec.key, "insight": spec.insight, "paradigm": spec.paradigm, "label": spec.label, "claim": spec.claim,
            "delta": spec.delta, "metric": spec.metric, "direction": spec.direction, "kind": spec.kind,
            "transform": spec.transform, "a": spec.a.title(), "b": spec.b.title(), "verdict": result.verdict,
            "reason": result.reason, "p": result.p, "level": result.level, "effect": result.effect,
            "ci_low": result.ci_low, "ci_high": result.ci_high, "n_a": result.n_a, "n_b": result.n_b,
            "paired": result.paired, "seeds_needed": result.seeds_needed, "notes": result.notes,
            "not_at_equilibrium": result.not_at_equilibrium, "departs_from_record": result.departs_from_record,
            "differ": result.differ, "matching": result.matching,
            "a_runs": result.a_runs,
            "b_runs": result.b_runs, "test": dataclasses.asdict(test) if dataclasses.is_dataclass(test) else str(test)}


def budget_check_entry(check: Any) -> dict[str, Any]:
    return {"of": check.spec.of, "a": check.spec.a.title(), "b": check.spec.b.title(), "seeds": list(check.seeds),
            "steps": list(check.steps), "base": check.base, "check": check.check, "change": check.change,
            "ci_low": check.ci_low, "ci_high": check.ci_high, "delta": check.comparison.delta,
            "reading": check.reading, "reason": check.reason, "notes": check.notes,
            "seeds_needed": check.seeds_needed, "arms": {side: list(values) for side, values in check.arms.items()}}


def summary(report: Any) -> dict[str, Any]:
    """Everything the README shows, as one JSON-ready dict."""
    return clean({
        "title": report.title, "commit": report.commit, "run_commits": report.run_commits, "date": report.date, "commands": report.commands,
        "report_command": report.report_command, "inputs": report.inputs, "machine": report.machine,
        "seeds": report.seeds, "total_train_s": report.total_train_s, "rule": RULE,
        "study": (report.study or {}).get("name"), "looks": report.looks, "rebuilt_from": report.rebuilt_from,
        "study_spec": report.study,  # the registered comparisons (and sequential plan) a rebuild re-reads
        "seed_limits": [{"id": key, "seeds": n} for key, n in sorted(report.seed_limits.items())],
        "not_registered": report.not_registered,  # why its comparisons are not the registered ones ("": they are)
        "registered_primary": report.registered_primary,  # what a rebuild compares its comparisons with
        "sequential_record": report.sequential_record,  # the looks' record, so a rebuild still flags departures
        "primaries": [primary_entry(r) for r in report.primaries],
        "budget_checks": [budget_check_entry(c) for c in getattr(report, "budget_checks", [])],
        "insight_texts": {str(k): {"name": v[0], "method": v[1]} for k, v in INSIGHTS.items()},
        "runs": [run_entry(r) for r in report.runs], "cells": [cell_entry(c) for c in report.cells],
        "insights": [insight_entry(r) for r in report.insights], "guidelines": report.guidelines,
        "plots": [{**dataclasses.asdict(p), "svg": p.svg} for p in report.plots],
        "files": ["README.md", "index.html", "summary.json", *[p.file for p in report.plots],
                  *[p.svg for p in report.plots]],
    })
