"""One command that measures what a lent GPU does with tiedlab, in well under 10 minutes on one GPU.

    python benchmarks/gpu_check.py                  # the device it finds (cuda if any), paper sizes
    python benchmarks/gpu_check.py --tiny --device cpu --steps 3   # the same path at toy sizes (tested on CPU)
    python benchmarks/gpu_check.py --study paper --steps 30 --out paper-step-times.json [KEY=VALUE ...]
        # the training step time of every cell of a study, for `tiedlab-study paper --plan --step-times FILE`

Prints, per paradigm (vision, ssl, graph, language; ``--only`` picks some): samples/s and step ms of training
after the first third of the steps (start-up and autotuning left out; evaluation excluded; bf16 autocast on CUDA),
the mean step ms over all steps, peak memory, and for vision an MFU estimate from the FLOPs of one
training step (``torch.utils.flop_counter``) against the device's dense bf16 peak; then the time a short vision
run takes to reach a validation accuracy, the vision step with channels-last convolutions, and the speed-up of seed
batching (K seeds of the quick-size vision and language models as one vectorised model against K separate runs;
``paradigms/seedbatch.py``). Writes everything to ``--out`` (JSON) as well. Every run goes through the engine
(``engine.train``) in a temporary folder, so what it measures is what a study runs.

``--study NAME`` measures a study instead: one short run of every cell (its first seed; the cell's own overrides,
with a DEQ's weight-tied warm-up and gradient probe off: its steps are solver steps) and, from its history, the ms per
training step after the first third of the steps (start-up, autotuning); times the steps of a full run of the cell
(train.max_steps, else epochs x the data's batches per epoch) and its runs in the study's first pass, that is the
first pass's training time per cell, for all cells and for those the pre-registered comparisons read. Evaluation is
left out (each short run evaluates lightly, once, at its end). A DEQ's solver iterations change as it trains, so its
early steps are an estimate of its later ones, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of the devices this project may be lent.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

# Per paradigm: the overrides of a measured run (paper sizes on a GPU) and of a tiny one (CPU tests).
SIZES: dict[str, dict[str, list[str]]] = {
    "vision": {"paper": ["paradigm=vision", "size=vision_paper", "data=cifar10", "data.val_size=1000",
                         "data.limit_test=1000"],
               "tiny": ["paradigm=vision", "size=vision_quick", "data=mnist", "data.limit_train=512",
                        "data.val_size=128", "data.limit_test=128", "model.width=8", "train.batch_size=32"]},
    "ssl": {"paper": ["paradigm=ssl", "size=ssl_paper", "data.val_size=1000", "data.limit_test=1000",
                      "data.knn_bank_size=2000", "data.linear_steps=10"],
            "tiny": ["paradigm=ssl", "size=ssl_quick", "data.limit_train=256", "data.val_size=64",
                     "data.limit_test=64", "data.knn_bank_size=256", "data.linear_steps=2", "train.batch_size=32"]},
    "graph": {"paper": ["paradigm=graph", "size=graph_paper", "data=cora"],
              "tiny": ["paradigm=graph", "data=cora", "model.width=16"]},
    "language": {"paper": ["paradigm=language", "size=language_paper", "data.eval_batches=4"],
                 "tiny": ["paradigm=language", "size=language_quick", "model.width=32", "train.batch_size=8",
                          "data.eval_batches=1"]},
}


def compose(overrides: list[str]) -> Any:
    """The run config the command line would build from ``overrides`` (``cli.compose_config``)."""
    from tiedlab.paradigms.cli import compose_config

    return compose_config(overrides)


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, when it is one of ``PEAK_BF16_TFLOPS``."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


def step_flops(cfg: Any, device: torch.device) -> float:
    """FLOPs of one training step (forward and backward) of the configured model on one batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from tiedlab.paradigms.base import get_paradigm
    from tiedlab.paradigms.config import validate
    from tiedlab.paradigms.engine import as_config

    cfg = as_config(cfg)
    spec = validate(cfg)
    paradigm = get_paradigm(cfg.paradigm)(cfg.data, cfg.model, device, seed=0, batch_size=int(cfg.train.batch_size))
    data = paradigm.build_data()
    model = paradigm.build_model(data, spec).to(device)
    batch = next(iter(data.train_batches(torch.Generator().manual_seed(0))))
    counter = FlopCounterMode(display=False)
    with counter:
        paradigm.training_step(model, batch).loss.backward()
    return float(counter.get_total_flops())


def short_run(overrides: Sequence[str], steps: int, device: str, run_dir: Path, eval_every: int | None = None) -> Any:
    """The config of a run of exactly ``steps`` steps on ``device`` in ``run_dir``: no epochs, time limit or progress
    bar, one checkpoint (at the end), an evaluation every ``eval_every`` steps (default: at the end only)."""
    return compose([*overrides, f"train.max_steps={steps}", f"train.eval_every={eval_every or steps}",
                    f"train.ckpt_every={steps}", "train.epochs=null", "train.progress=false", f"train.device={device}",
                    "train.time_limit_s=null", f"run_dir={run_dir}"])


def failure(results: Sequence[dict[str, Any]], folders: Sequence[Path]) -> str | None:
    """Why the first failed of ``results`` (the engine's) failed: its reason and the end of its traceback (the run
    folders are temporary, so the log and the JSON keep them); None when all completed."""
    from tiedlab.paradigms import rundir

    for result, folder in zip(results, folders):
        if result["status"] != "completed":
            trace = folder / rundir.TRACEBACK
            tail = trace.read_text()[-2000:] if trace.exists() else ""
            print(f"[gpu_check] {folder.name} {result['status']}: {result.get('reason', '')}\n{tail}", flush=True)
            return f"{result['status']}: {result.get('reason', '')}\n{tail}"
    return None


def steady_step_ms(folder: Path, third: int) -> float | None:
    """Milliseconds per training step of the run in ``folder`` between steps ``third`` and ``3 * third``, from its
    history's training clock: the first third (CUDA start-up, autotuning, first allocations) left out. None when
    the history lacks either step (a run that failed)."""
    from tiedlab.paradigms.rundir import read_history

    clock = {r["step"]: r["time/train_s"] for r in read_history(folder) if "time/train_s" in r}
    if third not in clock or 3 * third not in clock:
        return None
    return 1000 * (clock[3 * third] - clock[third]) / (2 * third)


def measure(name: str, overrides: list[str], steps: int, device: str, root: Path) -> dict[str, Any]:
    """Train ``steps`` steps (rounded up to a multiple of 3) through the engine: step ms and samples/s after the
    first third (``steady_step_ms``), the mean step ms over all steps, peak memory."""
    from tiedlab.paradigms.engine import train

    third = max(1, -(-steps // 3))
    cfg = short_run(overrides, 3 * third, device, root / name, eval_every=third)
    started = time.perf_counter()
    result = train(cfg, root / name)
    m = result["metrics"]
    step_ms = steady_step_ms(root / name, third) if result["status"] == "completed" else None
    rate, mean_ms = m.get("throughput/samples_per_s"), m.get("time/step_ms")
    per_step = rate * mean_ms / 1000 if rate and mean_ms else None  # samples in one step
    return {"paradigm": name, "status": result["status"], "steps": result["step"],
            "samples_per_s": 1000 * per_step / step_ms if per_step and step_ms else None, "step_ms": step_ms,
            "mean_step_ms": mean_ms, "peak_mb": m.get("memory/peak_mb"),
            "wall_s": time.perf_counter() - started, "params_unique": m.get("params/unique"),
            "failure": failure([result], [root / name]), "cfg": cfg, **solve_effort(m)}


def time_to_accuracy(overrides: list[str], steps: int, eval_every: int, target: float, device: str,
                     root: Path) -> dict[str, Any]:
    """A short vision run evaluated every ``eval_every`` steps: the training time of the first evaluation at or
    above ``target`` validation accuracy (None if never reached)."""
    from tiedlab.paradigms.engine import train
    from tiedlab.paradigms.rundir import read_history

    cfg = short_run(overrides, steps, device, root / "time-to-accuracy", eval_every)
    result = train(cfg, root / "time-to-accuracy")
    reached = next((r for r in read_history(root / "time-to-accuracy") if r.get("val/acc", 0.0) >= target), None)
    return {"target_val_acc": target, "reached_at_step": reached and reached["step"],
            "train_s": reached and reached["time/train_s"], "final_val_acc": result["metrics"].get("val/acc"),
            "failure": failure([result], [root / "time-to-accuracy"])}


# Seed batching is for models too small to fill a device: the quick sizes of the CPU studies (vision on MNIST, whose
# images have Fashion-MNIST's shape, so the same model and cost: benchmarks/device/ carries MNIST, 11 MB, not 30).
SEED_BATCH_SIZES = {
    "vision": ["paradigm=vision", "size=vision_quick", "data=mnist", "data.limit_train=12000",
               "data.val_size=500", "data.limit_test=500", "model.width=24", "block=tied"],
    "language": ["paradigm=language", "size=language_quick", "model.width=64", "train.batch_size=32",
                 "data.eval_batches=1", "block=tied"],
}


def seed_batching(name: str, overrides: list[str], k: int, steps: int, device: str, root: Path) -> dict[str, Any]:
    """Training milliseconds per seed and step of ``k`` separate runs and of one seed batch of ``k`` (each run's
    ``time/train_s``: evaluation excluded), and the speed-up."""
    from tiedlab.paradigms.engine import train
    from tiedlab.paradigms.seedbatch import train_seed_batch

    def cfg(seed: int, folder: str) -> Any:
        return short_run([*overrides, f"seed={seed}"], steps, device, root / folder / str(seed))

    folders = {kind: [root / f"{name}-{kind}" / str(s) for s in range(k)] for kind in ("separate", "batch")}
    separate = [train(cfg(s, f"{name}-separate"), folder) for s, folder in enumerate(folders["separate"])]
    batch = train_seed_batch([cfg(s, f"{name}-batch") for s in range(k)], folders["batch"])
    failed = failure([*separate, *batch], [*folders["separate"], *folders["batch"]])
    per = lambda results: 1000 * sum(r["metrics"]["time/train_s"] for r in results) / (k * steps)
    sep_ms, batch_ms = (None, None) if failed else (per(separate), per(batch))
    return {"paradigm": name, "k": k, "separate_ms_per_seed_step": sep_ms, "batch_ms_per_seed_step": batch_ms,
            "speedup": sep_ms / batch_ms if batch_ms else None, "failure": failed}


# --study: evaluation kept light in the short runs (it is not what they measure; training is unchanged by these)
LIGHT_EVAL = {"vision": ["data.limit_test=500", "train.score_train=false"],
              "ssl": ["data.limit_test=500", "data.knn_bank_size=1000", "data.linear_steps=2",
                      "train.score_train=false"],
              "language": ["data.eval_batches=1", "train.score_train=false"],
              "graph": []}


def light_eval(run: Any) -> list[str]:
    """``run``'s overrides with its paradigm's ``LIGHT_EVAL`` ones after them."""
    paradigm = next(o.split("=", 1)[1] for o in run.overrides if o.split("=", 1)[0].lstrip("+~") == "paradigm")
    return [*run.overrides, *LIGHT_EVAL[paradigm]]


def study_cells(name: str, extra: Sequence[str] = ()) -> list[tuple[Any, int]]:
    """The first run of every cell of study ``name`` (``plan.cell_key``: grid and swept values but the seed), with
    the overrides ``extra``, and the number of runs of that cell in the study's first pass."""
    from tiedlab.paradigms import launch
    from tiedlab.paradigms.plan import cell_key
    from tiedlab.paradigms.study import load_study

    cells: dict[Any, list[Any]] = {}
    for run in launch.study_runs(load_study(name), Path("runs") / "study" / name, extra):
        cells.setdefault(cell_key(run), []).append(run)
    return [(runs[0], len(runs)) for runs in cells.values()]


def run_budget(cfg: Any) -> dict[str, Any]:
    """The budget of a full run of ``cfg``: its ``full_steps`` as the engine counts them (train.max_steps, else
    epochs x the batches per epoch of its data, built here on the CPU), with the ``max_steps``, ``epochs`` and
    ``steps_per_epoch`` they come from (the plan prices the cell at another budget from them)."""
    from tiedlab.paradigms.base import get_paradigm
    from tiedlab.paradigms.engine import as_config

    cfg = as_config(cfg)
    paradigm = get_paradigm(cfg.paradigm)(cfg.data, cfg.model, torch.device("cpu"), seed=0,
                                          batch_size=int(cfg.train.batch_size))
    per_epoch = int(paradigm.build_data().steps_per_epoch)
    max_steps = int(cfg.train.max_steps) if cfg.train.max_steps else None
    epochs = float(cfg.train.epochs) if cfg.train.epochs is not None else None
    total = max_steps if max_steps else int(math.ceil(float(epochs) * per_epoch))
    return {"full_steps": total, "max_steps": max_steps, "epochs": epochs, "steps_per_epoch": per_epoch}


# A timed short run of a cell: one evaluation (at its end), and a DEQ's every step a solver step with no probe.
TIMED_CELL = ("train.validate_from=1.0", "train.deq_warmup_steps=0", "equilibrium.probe_every=0")


def measure_cell(run: Any, steps: int, device: str, root: Path) -> dict[str, Any]:
    """One short run of ``run``'s cell: milliseconds per training step over its last two thirds (``steps`` is
    rounded up to a multiple of 3), from the training clock its history records at steps/3 and at the end."""
    from tiedlab.paradigms.engine import train

    third = max(1, -(-steps // 3))
    folder = root / "study" / re.sub(r"[^A-Za-z0-9_.-]", "_", run.name)  # a Hydra value: no '=' or ','
    cfg = short_run([*light_eval(run), *TIMED_CELL], 3 * third, device, folder, eval_every=third)
    started = time.perf_counter()
    try:
        result = train(cfg, folder)
    except Exception as err:  # one cell that fails (out of memory, say) is recorded and the others still measured
        reason = f"failed: {type(err).__name__}: {err}"[:300]
        print(f"[gpu_check] {folder.name} {reason}", flush=True)
        return {"status": reason, "failure": reason, "block": str(cfg.block.mode), "step_ms": None,
                "measured_steps": 0, "wall_s": time.perf_counter() - started, "peak_mb": None}
    step_ms = steady_step_ms(folder, third) if result["status"] == "completed" else None
    return {"status": result["status"], "failure": failure([result], [folder]), "block": str(cfg.block.mode),
            "step_ms": step_ms, "measured_steps": 2 * third, "wall_s": time.perf_counter() - started,
            "peak_mb": result["metrics"].get("memory/peak_mb"), **solve_effort(result["metrics"])}


SOLVE_KEYS = ("core/nfe_forward", "core/nfe_backward", "core/converged", "core/adjoint_rel_residual")


def solve_effort(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's mean solver effort over its training steps (NFE forward and backward, the converged fraction, the
    IFT adjoint's residual): a DEQ whose solves run to their budget costs more per step than one that converges,
    so a step time is read beside them. Keys without their ``core/`` prefix; those the run did not record left out."""
    return {key.split("/", 1)[1]: metrics[key] for key in SOLVE_KEYS if key in metrics}


def primary_cells(name: str, cells: list[tuple[Any, int]]) -> set[Any]:
    """The cells (``plan.cell_key``) whose runs an arm of a pre-registered comparison of study ``name`` reads."""
    from tiedlab.paradigms.plan import cell_key
    from tiedlab.paradigms.study import load_study
    from tiedlab.reports.primary import load_primaries

    arms = [arm for spec in load_primaries(load_study(name)) for arm in (spec.a, spec.b)]
    return {cell_key(run) for run, _ in cells if any(arm.matches(run.name) for arm in arms)}


def _study_totals(name: str, rows: list[dict[str, Any]], cells: int) -> dict[str, Any]:
    measured = [r for r in rows if r["train_h"] is not None]
    return {"study": name, "cells": rows, "complete": len(rows) == cells, "unmeasured_cells": cells - len(measured),
            "first_pass_train_h": sum(r["train_h"] for r in measured),
            "primary_first_pass_train_h": sum(r["train_h"] for r in measured if r["primary"])}


def study_check(name: str, steps: int, device: str, root: Path,
                written: Callable[[dict[str, Any]], None] = lambda partial: None,
                extra: Sequence[str] = ()) -> dict[str, Any]:
    """Per cell of study ``name`` (with the overrides ``extra``): its measured step time and the training hours of
    its first-pass runs; ``written`` gets the totals so far after each cell (``complete`` false until the last)."""
    from tiedlab.paradigms.plan import cell_key, cell_overrides
    from tiedlab.paradigms.shared_data import shared_data

    cells = study_cells(name, extra)
    read = primary_cells(name, cells)
    rows: list[dict[str, Any]] = []
    with shared_data():  # each dataset decoded once for all cells
        for run, count in cells:
            grid, values = cell_key(run)
            budget = run_budget(compose([*light_eval(run), f"run_dir={root / 'compose'}"]))  # the same data
            total = budget["full_steps"]
            row = {"grid": grid, "cell": list(values), "runs": count, **budget,
                   "overrides": [o for o in cell_overrides(run) if o not in extra],  # the plan checks them
                   "primary": (grid, values) in read, **measure_cell(run, steps, device, root)}
            row["train_h"] = count * total * row["step_ms"] / 3.6e6 if row["step_ms"] is not None else None
            rows.append(row)
            print(f"{grid:<22} {','.join(values) or '-':<28} {row['block']:<8} {count:>3} runs x {total:>6} steps x "
                  f"{row['step_ms'] or math.nan:9.2f} ms = {row['train_h'] or math.nan:8.3f} h"
                  f"{'' if row['primary'] else '  (descriptive)'}", flush=True)
            written(_study_totals(name, rows, len(cells)))
    out = _study_totals(name, rows, len(cells))
    print(f"study {name}, first pass (training only, evaluation left out): {out['first_pass_train_h']:.2f} h, of it "
          f"the cells the primary comparisons read {out['primary_first_pass_train_h']:.2f} h"
          + (f"; {out['unmeasured_cells']} cells failed to measure" if out["unmeasured_cells"] else ""), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of the whole path)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per paradigm")
    parser.add_argument("--only", default=None, help="comma-separated paradigms (default: all four)")
    parser.add_argument("--study", default=None, metavar="NAME",
                        help="measure the step time of every cell of study NAME instead (its own sizes)")
    parser.add_argument("--out", default=None, help="also write the results here (JSON)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="with --study: overrides added to every cell (e.g. train.threads=1)")
    args = parser.parse_args(argv)
    if args.study is not None and (args.tiny or args.only is not None):
        parser.error("--study measures the study's own cells at their own sizes: drop --tiny and --only")
    if args.overrides and args.study is None:
        parser.error(f"overrides {args.overrides} apply to --study's cells only")
    names = [n for n in (args.only or "vision,ssl,graph,language").split(",") if n]
    unknown = sorted(set(names) - set(SIZES))
    if unknown:
        parser.error(f"--only {unknown} not known; choose from {sorted(SIZES)}")
    os.environ.setdefault("WANDB_MODE", "disabled")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.study is not None:
        from tiedlab.paradigms.study import load_study

        load_study(args.study)  # an unknown name fails here, naming the valid ones
        where = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "steps": args.steps, "overrides": args.overrides}

        def write(result: dict[str, Any]) -> None:
            if args.out:
                Path(args.out).write_text(json.dumps({**result, **where}, indent=2, default=str) + "\n")

        with tempfile.TemporaryDirectory(prefix="tiedlab-gpu-check-") as tmp:
            result = study_check(args.study, args.steps, device.type, Path(tmp), written=write,
                                 extra=args.overrides)
        write(result)
        return 0 if not result["unmeasured_cells"] else 1
    size = "tiny" if args.tiny else "paper"
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "torch": torch.__version__, "size": size, "steps": args.steps, "complete": False,
                           "paradigms": []}

    def save() -> None:  # after each measurement: a run stopped by its time limit keeps what it measured
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")

    from tiedlab.paradigms.shared_data import shared_data

    with tempfile.TemporaryDirectory(prefix="tiedlab-gpu-check-") as tmp, shared_data():  # each dataset decoded once
        root = Path(tmp)
        for name in names:
            row = measure(name, SIZES[name][size], args.steps, device.type, root)
            cfg = row.pop("cfg")
            if name == "vision":
                flops, peak = step_flops(cfg, device), peak_flops(device)
                row["step_gflops"] = flops / 1e9
                row["mfu"] = (flops / (row["step_ms"] / 1e3) / peak) if peak and row["step_ms"] else None
            out["paradigms"].append(row)
            save()
            print(f"{name:9s} {row['status']:9s} {row['samples_per_s'] or math.nan:10.1f} samples/s "
                  f"{row['step_ms'] or math.nan:8.2f} ms/step "
                  f"(mean with start-up {row['mean_step_ms'] or math.nan:.2f}) "
                  f"{row['peak_mb'] or math.nan:9.1f} MB peak"
                  + (f"  {row['step_gflops']:.2f} GFLOP/step, MFU {row['mfu']:.1%}" if row.get("mfu") is not None
                     else f"  {row['step_gflops']:.2f} GFLOP/step, MFU n/a (no known peak)" if "step_gflops" in row
                     else ""), flush=True)
        if "vision" in names:  # the same vision run with NHWC convolutions (train.channels_last)
            base = next(r for r in out["paradigms"] if r["paradigm"] == "vision")
            row = measure("vision-channels-last", [*SIZES["vision"][size], "train.channels_last=true"], args.steps,
                          device.type, root)
            row.pop("cfg")
            row["speedup"] = (base["step_ms"] / row["step_ms"]) if base["step_ms"] and row["step_ms"] else None
            out["vision_channels_last"] = row
            save()
            print(f"vision channels-last {row['step_ms'] or math.nan:8.2f} ms/step "
                  f"({row['speedup'] or math.nan:.2f}x the default layout's)", flush=True)
            tta = time_to_accuracy(SIZES["vision"]["tiny" if args.tiny else "paper"], 8 * max(args.steps, 2),
                                   max(1, args.steps // 2), 0.5, device.type, root)  # 8x the steps: long enough
            out["time_to_accuracy"] = tta
            save()
            print(f"vision time to val acc {tta['target_val_acc']}: step {tta['reached_at_step']}, "
                  f"{tta['train_s']} s of training (final val acc {tta['final_val_acc']})", flush=True)
        out["seed_batching"] = []
        for name in [n for n in names if n in SEED_BATCH_SIZES]:
            sizes = SIZES[name]["tiny"] if args.tiny else SEED_BATCH_SIZES[name]
            row = seed_batching(name, sizes, 2 if args.tiny else 4, args.steps, device.type, root)
            out["seed_batching"].append(row)
            save()
            print(f"seed batching {name} K={row['k']}: " + ("failed (above)" if row["failure"] else
                  f"{row['separate_ms_per_seed_step']:.2f} ms per seed-step separate, "
                  f"{row['batch_ms_per_seed_step']:.2f} batched: {row['speedup']:.2f}x"), flush=True)
    out["complete"] = True
    save()
    failed = [r for r in out["paradigms"] if r["status"] != "completed"] + \
        [r for r in [out.get("vision_channels_last"), out.get("time_to_accuracy"), *out["seed_batching"]]
         if r and r.get("failure")]
    return 1 if failed else 0  # every failure printed above with its reason


if __name__ == "__main__":
    sys.exit(main())
