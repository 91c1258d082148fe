"""Runs at once on one GPU: the training throughput of N concurrent runs of one paper-size cell against one alone.

    python benchmarks/gpu_concurrency.py --paradigm vision --runs 1,4 --steps 400 --out vision-concurrency.json
    python benchmarks/gpu_concurrency.py --tiny --device cpu --runs 1,2 --steps 6     # the same path on CPU (tested)

The paper study's models are small for a GPU (the vision cell ran at 11-16% of an H200's bf16 peak), so
``tiedlab-study paper --gpus all --per-gpu K`` may train K runs at once for nearly the price of one. This measures
it instead of assuming it: for each N, N separate processes (as ``--per-gpu N`` starts them) each train the tied
(or, with ``--block deq``, the DEQ: every step a solver step) cell of ``gpu_check.SIZES[paradigm]`` for ``--steps``
steps; a run's ms per step is read from its history's training clock between the first evaluation (a third of the
steps: start-up and autotuning left out) and the last. Reported per N: each run's ms per step (its torch threads:
the machine's CPUs divided by N, as the GPU launcher divides them), and the throughput in run-steps per second
against N = 1's (the speed-up of running N at once). The processes start together but decode their data alone, so
their measured windows overlap only roughly: read a speed-up as an estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check  # noqa: E402  (benchmarks/ is not a package)


def child(paradigm: str, block: str, tiny: bool, steps: int, device: str, threads: int,
          folder: Path) -> dict[str, Any]:
    """One run of the cell in this process: its status and ms per step after the first third of its steps."""
    from tiedlab.paradigms.engine import train

    third = max(1, -(-steps // 3))
    light = [] if tiny else gpu_check.LIGHT_EVAL[paradigm]  # the tiny sizes evaluate lightly already
    overrides = [*gpu_check.SIZES[paradigm]["tiny" if tiny else "paper"], *light, f"block={block}",
                 f"train.threads={threads}", *gpu_check.TIMED_CELL]  # timed as the study check times a cell
    cfg = gpu_check.short_run(overrides, 3 * third, device, folder, eval_every=third)
    result = train(cfg, folder)
    return {"status": result["status"], "failure": gpu_check.failure([result], [folder]),
            "step_ms": gpu_check.steady_step_ms(folder, third) if result["status"] == "completed" else None}


def concurrent(n: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """``n`` child processes at once; their rows and the throughput in run-steps per second."""
    threads = max(1, (os.cpu_count() or 1) // n)  # the CPUs split between the runs, as the GPU launcher does
    command = [sys.executable, __file__, "--child", "--paradigm", args.paradigm, "--block", args.block,
               "--steps", str(args.steps), "--device", args.device, "--threads", str(threads), *(["--tiny"] if args.tiny else [])]
    folders = [root / f"n{n}" / str(i) for i in range(n)]
    procs = [subprocess.Popen([*command, "--folder", str(folder)]) for folder in folders]  # their output: ours
    rows = []
    for proc, folder in zip(procs, folders):
        proc.wait()
        result = folder / "concurrency.json"
        rows.append(json.loads(result.read_text()) if proc.returncode == 0 and result.exists() else
                    {"status": f"exit {proc.returncode}", "failure": f"run {folder} exited {proc.returncode}",
                     "step_ms": None})
    measured = [r["step_ms"] for r in rows if r["step_ms"]]
    throughput = sum(1000 / ms for ms in measured) if len(measured) == n else None
    return {"runs": n, "threads_per_run": threads, "step_ms": [r["step_ms"] for r in rows],
            "run_steps_per_s": throughput,
            "failures": [r["failure"] for r in rows if r.get("failure")]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_concurrency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paradigm", default="vision", choices=sorted(gpu_check.SIZES))
    parser.add_argument("--block", default="tied", choices=("tied", "deq"), help="the cell's block (default tied)")
    parser.add_argument("--runs", default="1,4", help="comma-separated numbers of runs at once (first: the reference)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of the whole path)")
    parser.add_argument("--out", default=None, help="also write the results here (JSON)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        folder = Path(args.folder)
        row = child(args.paradigm, args.block, args.tiny, args.steps, args.device, args.threads, folder)
        (folder / "concurrency.json").write_text(json.dumps(row) + "\n")  # a file: the parent may stop reading
        return 0
    try:
        counts = [int(n) for n in args.runs.split(",")]
    except ValueError:
        parser.error(f"--runs {args.runs!r}: give comma-separated positive integers, e.g. 1,4")
    if not counts or min(counts) < 1:
        parser.error(f"--runs {args.runs!r}: give comma-separated positive integers, e.g. 1,4")
    out: dict[str, Any] = {"paradigm": args.paradigm, "block": args.block, "size": "tiny" if args.tiny else "paper",
                           "steps": args.steps, "device": args.device, "levels": []}
    with tempfile.TemporaryDirectory(prefix="tiedlab-gpu-concurrency-") as tmp:
        for n in counts:
            level = concurrent(n, args, Path(tmp))
            reference = out["levels"][0]["run_steps_per_s"] if out["levels"] else level["run_steps_per_s"]
            level["speedup"] = (level["run_steps_per_s"] / reference
                                if level["run_steps_per_s"] and reference else None)
            out["levels"].append(level)
            if args.out:
                Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
            shown = " ".join(f"{ms:.2f}" if ms else "failed" for ms in level["step_ms"])
            print(f"{args.paradigm} {args.block} {n} at once: ms/step {shown}; "
                  + (f"{level['run_steps_per_s']:.1f} run-steps/s, {level['speedup']:.2f}x one run's"
                     if level["speedup"] else "not measured") + "".join(f"\n  {f}" for f in level["failures"]),
                  flush=True)
    return 0 if all(level["speedup"] for level in out["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
