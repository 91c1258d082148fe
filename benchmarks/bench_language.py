"""Language benchmark: the tiny-shakespeare target through the adapter, and adapter vs bare-loop speed.

``train`` builds the model with ``LanguageParadigm`` (build_data / build_model / training_step /
evaluate) and trains it with AdamW and a warmup + cosine schedule, timing itself. With ``--budget-s``
the number of steps is calibrated from the first ``--calib-steps`` steps so that the cosine schedule
ends at the budget (training time, evaluation excluded); ``--max-steps`` fixes it instead.

``speed`` measures tokens/s of the adapter path (``paradigm.training_step`` + backward + AdamW) and
of :func:`bare_loop` over a plain ``nn.Module`` that embeds, runs the same transformers
``GPT2Block`` ``depth`` times (the same weights, checked by comparing logits) and projects, without
tiedlab. The two run interleaved in rounds so that a change in machine load hits both alike; the
ratio adapter / bare is printed. An engine loop can be added as a third entry of ``LOOPS``.

Run one at a time (2 shared cores):
  flock /tmp/tiedlab-cpu.lock python benchmarks/bench_language.py train --mode tied --budget-s 600
  flock /tmp/tiedlab-cpu.lock python benchmarks/bench_language.py train --mode explicit --budget-s 600
  flock /tmp/tiedlab-cpu.lock python benchmarks/bench_language.py speed --mode tied
Needs TIEDLAB_DATA (read-only) and writes its corpus cache under TIEDLAB_CACHE.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from tiedlab.core import BlockSpec, model_param_counts
from tiedlab.paradigms.language.adapter import LanguageParadigm
from tiedlab.paradigms.language.model import CausalLM

Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- set-up
def make_paradigm(args: argparse.Namespace) -> tuple[LanguageParadigm, Any]:
    """The adapter and its data for the command-line options."""
    data = dict(name=args.dataset, eval_batches=args.eval_batches, eval_batch_size=64)
    model = dict(width=args.width, heads=args.heads, context=args.context, max_positions=max(256, args.context),
                 dropout=args.dropout, out_norm=not args.no_out_norm)
    paradigm = LanguageParadigm(data, model, torch.device("cpu"), seed=args.seed, batch_size=args.batch_size)
    return paradigm, paradigm.build_data()


def block_spec(args: argparse.Namespace) -> BlockSpec:
    spec: dict[str, Any] = dict(mode=args.mode, depth=args.depth)
    if args.mask_sparsity > 0:
        spec["mask"] = dict(mode="distinct", sparsity=args.mask_sparsity)
    if args.mode == "deq":
        spec.update(solver=args.solver, max_iter=args.max_iter, tol=args.tol, grad=dict(mode=args.grad))
    return BlockSpec.from_dict(spec)


def optimizer_for(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only (not biases, LayerNorm gains, or the shared embedding)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.99))


def cosine_lr(step: int, total: int, base: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup then cosine decay to ``min_ratio * base`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


# --------------------------------------------------------------------------- training to a target
def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    paradigm, data = make_paradigm(args)
    spec = block_spec(args)
    model = paradigm.build_model(data, spec)
    counts = model_param_counts(model)
    opt = optimizer_for(model, args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    batches = _endless(data.train_batches, gen)
    total = args.max_steps or None
    train_s = 0.0
    t_wall = time.perf_counter()
    step, best, history = 0, (math.inf, -1), []
    print(json.dumps({"config": vars(args), "params": counts, "data": data.meta}), flush=True)

    def log_eval() -> None:
        nonlocal best
        m = paradigm.evaluate(model, data, "val")
        best = min(best, (m["val/loss"], step))
        rec = {"step": step, "train_s": round(train_s, 1), "tokens_per_s": round(step * data.samples_per_step / train_s),
               "lr": opt.param_groups[0]["lr"], "train/loss": round(last_loss, 4), **{k: round(v, 4) for k, v in m.items()}}
        history.append(rec)
        print(json.dumps(rec), flush=True)

    last_loss = float("nan")
    while total is None or step < total:
        lr = cosine_lr(step, total or 10**9, args.lr, args.warmup, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        model.train()
        out = paradigm.training_step(model, next(batches))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last_loss = out.loss.item()
        train_s += time.perf_counter() - t0
        step += 1
        if total is None and step == args.calib_steps:
            total = max(step + 1, int(args.budget_s / (train_s / step)))
            print(json.dumps({"calibrated_total_steps": total, "s_per_step": round(train_s / step, 4)}), flush=True)
        if step % args.eval_every == 0 or step == total:
            log_eval()
    final = {k: v for split in ("val", "test") for k, v in paradigm.evaluate(model, data, split).items()}
    summary = {
        "mode": args.mode, "depth": args.depth, "width": args.width, "context": args.context, "steps": step,
        "train_s": round(train_s, 1), "wall_s": round(time.perf_counter() - t_wall, 1),
        "tokens_per_s": round(step * data.samples_per_step / train_s),
        "best_val_loss": round(best[0], 4), "best_val_step": best[1],
        **{k: round(v, 4) for k, v in final.items()}, **counts,
    }
    print(json.dumps({"summary": summary}), flush=True)
    return summary


def _endless(make: Callable[[torch.Generator], Iterable[Batch]], gen: torch.Generator):
    while True:
        yield from make(gen)


# --------------------------------------------------------------------------- the bare model and loops
class BareLM(nn.Module):
    """Embedding -> the same GPT2Block(s) ``depth`` times (h = z + x, optional output LayerNorm) -> LayerNorm
    -> tied head, as plain PyTorch: no tiedlab Block, no functional_call, no stats.

    Shapes: idx (B, T) -> logits (B, T, vocab)
    """

    def __init__(self, lm: CausalLM):
        super().__init__()
        cells = lm.block.cells
        self.depth = lm.block.spec.depth
        self.blocks = nn.ModuleList(GPT2Block(c.block.attn.config) for c in cells)
        self.ln_outs = nn.ModuleList(nn.LayerNorm(lm.ln_f.normalized_shape) if c.ln_out is not None else nn.Identity()
                                     for c in cells)
        for blk, ln, cell in zip(self.blocks, self.ln_outs, cells):  # same weights as the adapter model
            blk.load_state_dict(cell.block.state_dict())
            if cell.ln_out is not None:
                ln.load_state_dict(cell.ln_out.state_dict())
        # own copies of the stem and head too, so the two models do not share parameters
        self.wte, self.wpe, self.ln_f = (copy.deepcopy(m) for m in (lm.wte, lm.wpe, lm.ln_f))
        self.lm_head = nn.Linear(self.wte.embedding_dim, self.wte.num_embeddings, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        z = torch.zeros_like(x)
        for i in range(self.depth):
            j = i if len(self.blocks) > 1 else 0
            z = self.ln_outs[j](self.blocks[j](z + x))
        return self.lm_head(self.ln_f(z))


def bare_loop(model: nn.Module, batches: Sequence[Batch], steps: int,
              optimizer: torch.optim.Optimizer | None = None) -> float:
    """Train ``model`` (``idx -> logits``) for ``steps`` AdamW steps over ``batches``; returns tokens/s."""
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batches[0][0].numel() / (time.perf_counter() - t0)


def adapter_loop(paradigm: LanguageParadigm, model: nn.Module, batches: Sequence[Batch], steps: int,
                 optimizer: torch.optim.Optimizer | None = None) -> float:
    """The same loop through ``paradigm.training_step`` (tiedlab Block, stats); returns tokens/s."""
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for i in range(steps):
        out = paradigm.training_step(model, batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return steps * batches[0][0].numel() / (time.perf_counter() - t0)


def speed(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    paradigm, data = make_paradigm(args)
    spec = block_spec(args)
    if spec.mode == "deq" or spec.mask.active:
        raise SystemExit("speed compares an unrolled, unmasked block with the bare loop; use --mode tied|explicit")
    model = paradigm.build_model(data, spec)
    bare = BareLM(model)
    batches = [b for _, b in zip(range(8), data.train_batches(torch.Generator().manual_seed(args.seed)))]
    with torch.no_grad():
        model.eval(), bare.eval()
        diff = (model(batches[0][0])[0] - bare(batches[0][0])).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"bare model does not compute the adapter model's function (max |logit diff| = {diff:.2e})")
    loops: dict[str, Callable[[int], float]] = {}
    opts = {"adapter": optimizer_for(model, 1e-3, 0.0), "bare": optimizer_for(bare, 1e-3, 0.0)}
    loops["adapter"] = lambda n: adapter_loop(paradigm, model, batches, n, opts["adapter"])
    loops["bare"] = lambda n: bare_loop(bare, batches, n, opts["bare"])
    for fn in loops.values():  # warm-up
        fn(3)
    tokens = {k: 0.0 for k in loops}
    seconds = {k: 0.0 for k in loops}
    per_step = batches[0][0].numel()
    for r in range(args.rounds):
        order = list(loops) if r % 2 == 0 else list(reversed(loops))
        row = {}
        for k in order:
            tps = loops[k](args.steps)
            tokens[k] += args.steps * per_step
            seconds[k] += args.steps * per_step / tps
            row[k] = round(tps)
        print(json.dumps({"round": r, "tokens_per_s": row, "ratio": round(row["adapter"] / row["bare"], 3)}), flush=True)
    rate = {k: tokens[k] / seconds[k] for k in loops}
    summary = {"mode": args.mode, "depth": args.depth, "width": args.width, "context": args.context,
               "batch_size": args.batch_size, "logit_diff": diff,
               "tokens_per_s": {k: round(v) for k, v in rate.items()},
               "ratio_adapter_over_bare": round(rate["adapter"] / rate["bare"], 4),
               "threads": torch.get_num_threads()}
    print(json.dumps({"summary": summary}), flush=True)
    return summary


# --------------------------------------------------------------------------- command line
def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("train", "speed"))
    p.add_argument("--dataset", default="tinyshakespeare")
    p.add_argument("--mode", default="tied", choices=("explicit", "tied", "deq"))
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--no-out-norm", action="store_true", help="drop the LayerNorm on the cell output")
    p.add_argument("--mask-sparsity", type=float, default=0.0, help="> 0: distinct unstructured masks")
    p.add_argument("--solver", default="anderson")
    p.add_argument("--max-iter", type=int, default=12)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--grad", default="phantom")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--max-steps", type=int, default=0, help="fix the number of steps (0: calibrate from --budget-s)")
    p.add_argument("--budget-s", type=float, default=600.0, help="training-time budget for the calibrated schedule")
    p.add_argument("--calib-steps", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--rounds", type=int, default=8, help="speed: interleaved rounds")
    p.add_argument("--steps", type=int, default=10, help="speed: steps per loop per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    (train if args.command == "train" else speed)(args)


if __name__ == "__main__":
    main(sys.argv[1:])
