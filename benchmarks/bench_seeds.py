"""Cheap seeds: what K seeds of one quick-size model cost per seed, three ways, measured in one run.

    python benchmarks/bench_seeds.py                         # vision, language, graph at quick sizes, K = 1, 2, 4, 8
    python benchmarks/bench_seeds.py --only vision --ks 1 2 --steps 20

Per paradigm and K: (a) K separate runs one after another with all the cores (``train.threads`` = cores),
(b) the same K runs two at a time with the cores split (``tiedlab-study --jobs 2``), (c) one seed batch of K
(``tiedlab-study --seed-batch K``; not for paradigms that cannot be vectorised, which say why). Each number is
the wall seconds of training per seed and step (from ``time/train_s`` of each run's metrics.json: evaluation and
start-up excluded; for (b) the wall time of a pair over its two runs), and its ratio to (a). Every run goes through
the engine on real data in a temporary folder. Ratios measured in one process on one machine are what to compare
(machine load moves absolute numbers); the study runner's default is whatever wins here.

Last, per paradigm, the compute floor: the FLOPs of one training step of the model (``torch.utils.flop_counter``)
over this CPU's fp32 matrix-multiply rate with all cores (measured in the same run): no way of training K seeds, a
seed batch included, costs less per seed-step than that, so when separate runs are already near it, batching cannot
halve them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_check, beside this script

QUICK = {
    "vision": ["paradigm=vision", "size=vision_quick", "data=fashion-mnist", "data.limit_train=12000",
               "data.val_size=500", "data.limit_test=500", "model.width=24", "block=tied", "block.depth=4"],
    "language": ["paradigm=language", "size=language_quick", "model.width=64", "train.batch_size=32",
                 "data.eval_batches=1", "block=tied"],
    "graph": ["paradigm=graph", "size=graph_quick", "data=cora", "model.width=64", "block=tied", "block.depth=2"],
}


def overrides(paradigm: str, steps: int, threads: int, seed: int, run_dir: Path) -> list[str]:
    from tiedlab.paradigms.launch import _quoted

    return [*QUICK[paradigm], "train.epochs=null", f"train.max_steps={steps}", f"train.eval_every={steps}",
            f"train.ckpt_every={steps}", "train.progress=false", "train.log_every=0", f"train.threads={threads}",
            "train.time_limit_s=null", f"seed={seed}", f"run_dir={_quoted(str(run_dir))}"]


def per_step(metrics: dict, steps: int) -> float:
    return metrics["metrics"]["time/train_s"] / steps


def separate(paradigm: str, k: int, steps: int, cores: int, root: Path) -> float:
    """Seconds per seed-step of K runs one after another, all cores each."""
    from tiedlab.paradigms.cli import compose_config
    from tiedlab.paradigms.engine import train

    total = 0.0
    for seed in range(k):
        d = root / f"sep{seed}"
        total += per_step(train(compose_config(overrides(paradigm, steps, cores, seed, d)), d), steps)
    return total / k


def pairs(paradigm: str, k: int, steps: int, cores: int, root: Path) -> float:
    """Seconds per seed-step of K runs two at a time, the cores split (separate processes)."""
    threads = max(1, cores // 2)
    total = 0.0
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for first in range(0, k, 2):
        seeds = list(range(first, min(k, first + 2)))
        procs = []
        for seed in seeds:
            d = root / f"pair{seed}"
            procs.append((d, subprocess.Popen([sys.executable, "-m", "tiedlab.paradigms.cli",
                                               *overrides(paradigm, steps, threads, seed, d)[:-1],
                                               f"hydra.run.dir={d}"], env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)))
        for _, p in procs:
            p.wait()
        walls = [per_step(json.loads((d / "metrics.json").read_text()), steps) for d, _ in procs]
        total += max(walls)  # the pair trains side by side: its wall time is the slower run's
    return total / k


def batched(paradigm: str, k: int, steps: int, cores: int, root: Path) -> float | str:
    """Seconds per seed-step of one seed batch of K (the reason instead where the paradigm cannot batch)."""
    from tiedlab.paradigms.cli import compose_config
    from tiedlab.paradigms.seedbatch import train_seed_batch, why_not_batchable

    cfgs = [compose_config(overrides(paradigm, steps, cores, seed, root / f"batch{seed}")) for seed in range(k)]
    why = why_not_batchable(cfgs[0])
    if why:
        return why
    if k == 1:
        return separate(paradigm, 1, steps, cores, root / "one")
    results = train_seed_batch(cfgs, [root / f"batch{seed}" for seed in range(k)])
    return sum(per_step(r, steps) for r in results) / k


def matmul_flops_per_s(seconds: float = 2.0, n: int = 1024) -> float:
    """This CPU's fp32 matrix-multiply rate with the current threads: n x n products for about ``seconds``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):  # warm-up
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2.0 * n ** 3 * count / (time.perf_counter() - started)


def compute_floor(paradigm: str, steps: int, cores: int, root: Path, rate: float) -> dict[str, float]:
    """One training step's FLOPs of the paradigm's quick model and the milliseconds they take at ``rate``."""
    from gpu_check import compose, step_flops

    flops = step_flops(compose(overrides(paradigm, steps, cores, 0, root)), torch.device("cpu"))
    return {"step_gflop": flops / 1e9, "floor_ms": 1000.0 * flops / rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(QUICK), choices=list(QUICK))
    parser.add_argument("--ks", nargs="*", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    rows = []
    print(f"bench_seeds: {cores} cores, {args.steps} steps per run, torch {torch.__version__}", flush=True)
    print(f"{'paradigm':<9} {'K':>2}  {'separate ms':>11}  {'2 at a time ms':>14} {'ratio':>6}  "
          f"{'seed batch ms':>13} {'ratio':>6}", flush=True)
    for paradigm in args.only:
        for k in args.ks:
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                t0 = time.perf_counter()
                sep = separate(paradigm, k, args.steps, cores, root / "a")
                two = pairs(paradigm, k, args.steps, cores, root / "b")
                bat = batched(paradigm, k, args.steps, cores, root / "c")
            row = {"paradigm": paradigm, "k": k, "separate_ms": 1000 * sep, "two_at_a_time_ms": 1000 * two,
                   "seed_batch_ms": 1000 * bat if isinstance(bat, float) else None,
                   "seed_batch_refused": bat if isinstance(bat, str) else None, "bench_s": time.perf_counter() - t0}
            rows.append(row)
            batch_text = (f"{row['seed_batch_ms']:>13.1f} {row['seed_batch_ms'] / row['separate_ms']:>6.2f}"
                          if row["seed_batch_ms"] is not None else f"{'refused':>13} {'-':>6}")
            print(f"{paradigm:<9} {k:>2}  {row['separate_ms']:>11.1f}  {row['two_at_a_time_ms']:>14.1f} "
                  f"{row['two_at_a_time_ms'] / row['separate_ms']:>6.2f}  {batch_text}", flush=True)
            if row["seed_batch_refused"] and k == args.ks[-1]:
                print(f"  ({paradigm}: {row['seed_batch_refused']})", flush=True)
    for paradigm in args.only:  # runs per hour of training at the best way, against one run at a time
        mine = [r for r in rows if r["paradigm"] == paradigm]
        best = min(mine, key=lambda r: min(v for v in (r["separate_ms"], r["two_at_a_time_ms"], r["seed_batch_ms"])
                                           if v is not None))
        fastest = min(v for v in (best["separate_ms"], best["two_at_a_time_ms"], best["seed_batch_ms"]) if v is not None)
        base = next(r for r in mine if r["k"] == min(args.ks))["separate_ms"]
        print(f"{paradigm}: seed-steps per hour {3.6e6 / base:.0f} one run at a time -> {3.6e6 / fastest:.0f} at the "
              f"best way (K={best['k']})", flush=True)
    rate = matmul_flops_per_s()
    print(f"compute floor: this CPU multiplies fp32 matrices at {rate / 1e9:.1f} GFLOP/s with {cores} threads",
          flush=True)
    floors = {}
    for paradigm in args.only:
        with tempfile.TemporaryDirectory() as tmp:
            floors[paradigm] = compute_floor(paradigm, args.steps, cores, Path(tmp), rate)
        best_separate = min(r["separate_ms"] for r in rows if r["paradigm"] == paradigm)
        print(f"{paradigm}: {floors[paradigm]['step_gflop']:.3f} GFLOP per seed-step -> at least "
              f"{floors[paradigm]['floor_ms']:.1f} ms; separate runs took {best_separate:.1f} ms at best "
              f"({floors[paradigm]['floor_ms'] / best_separate:.0%} of it is the floor)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"cores": cores, "steps": args.steps, "rows": rows,
                                              "matmul_gflops": rate / 1e9, "floors": floors}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
