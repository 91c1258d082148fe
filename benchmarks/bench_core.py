"""Core benchmark: forward+backward time and training-graph memory of every block mode on a conv cell.

Variants run interleaved (round-robin, median over rounds) in one process, so the ratios to `tied`
are measured under the same conditions. Memory is the bytes autograd saves for the backward pass
(the activation memory a training step holds), counted exactly with saved-tensor hooks.

    python benchmarks/bench_core.py                 # width 32, depth 6, batch 32 of 16x16, 2 threads
    python benchmarks/bench_core.py --rounds 20 --width 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from tiedlab.core import build_block


class ConvCell(nn.Module):
    """An MDEQ-style residual conv cell: z' = GN(relu(z + GN(conv(relu(GN(conv(z)))) + x)))."""

    def __init__(self, width: int, expansion: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(width, expansion * width, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(expansion * width, width, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(4, expansion * width)
        self.gn2 = nn.GroupNorm(4, width)
        self.gn3 = nn.GroupNorm(4, width)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.gn1(self.conv1(z)))
        y = self.gn2(self.conv2(y) + x)
        return self.gn3(torch.relu(z + y))


def variants(depth: int) -> dict[str, dict]:
    deq = dict(mode="deq")
    budget = dict(max_iter=12, tol=1e-3)
    return {
        "explicit": dict(mode="explicit", depth=depth),
        "tied": dict(mode="tied", depth=depth),
        "tied+distinct/unstructured": dict(mode="tied", depth=depth, mask=dict(mode="distinct", sparsity=0.5)),
        "tied+distinct/nm2:4": dict(mode="tied", depth=depth, mask=dict(mode="distinct", kind="nm")),
        "tied+disjoint": dict(mode="tied", depth=depth, mask=dict(mode="disjoint")),
        "deq anderson+ift": dict(deq, solver=dict(budget, name="anderson"), grad=dict(mode="ift", max_iter=12)),
        "deq broyden+phantom": dict(deq, solver=dict(budget, name="broyden"), grad=dict(mode="phantom", steps=5, tau=0.7)),
        "deq fixed_point+onestep": dict(deq, solver=dict(budget, name="fixed_point", options=dict(damping=0.7)),
                                        grad=dict(mode="onestep")),
    }


def saved_bytes(block: nn.Module, x: torch.Tensor) -> tuple[int, object]:
    """Bytes autograd saves for backward during one forward (the training graph's activation memory)."""
    total = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z, stats = block(x)
    return total, (z, stats)


def step_time(block: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    z, _ = block(x)
    z.square().mean().backward()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.width, args.size, args.size)
    blocks = {name: build_block(lambda: ConvCell(args.width), spec) for name, spec in variants(args.depth).items()}

    for block in blocks.values():  # warm-up
        step_time(block, x)
    times: dict[str, list[float]] = {name: [] for name in blocks}
    for _ in range(args.rounds):
        for name, block in blocks.items():
            block.zero_grad(set_to_none=True)
            times[name].append(step_time(block, x))

    memory, nfe = {}, {}
    for name, block in blocks.items():
        memory[name], (_, stats) = saved_bytes(block, x)
        nfe[name] = stats.nfe_forward
    med = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"conv cell width {args.width}, depth {args.depth}, batch {args.batch}x{args.width}x{args.size}x{args.size}, "
          f"{args.threads} threads, median of {args.rounds} interleaved rounds (torch {torch.__version__})")
    print(f"| variant | fwd+bwd ms | time / tied | graph MB | memory / tied | forward NFE |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in blocks:
        print(f"| {name} | {med[name]:.1f} | {med[name] / med['tied']:.3f} | {memory[name] / 2**20:.1f} | "
              f"{memory[name] / memory['tied']:.3f} | {nfe[name]} |")

    print("\nDEQ training-graph memory against solver steps (tol 0, so every step runs):")
    print("| solver steps | anderson+ift MB | broyden+phantom MB | fixed_point+onestep MB |")
    print("|---:|---:|---:|---:|")
    for steps in (5, 10, 20, 40):
        row = []
        for name in ("deq anderson+ift", "deq broyden+phantom", "deq fixed_point+onestep"):
            spec = variants(args.depth)[name]
            spec = dict(spec, solver=dict(spec["solver"], max_iter=steps, tol=0.0))
            row.append(saved_bytes(build_block(lambda: ConvCell(args.width), spec), x)[0] / 2**20)
        print(f"| {steps} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()
