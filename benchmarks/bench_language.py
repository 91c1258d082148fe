"""Language benchmark: the tiny-shakespeare target through the adapter, and adapter vs bare-loop speed.

``train`` builds the model with ``LanguageParadigm`` (build_data / build_model / training_step /
evaluate) and trains it with AdamW and a warmup + cosine schedule, timing itself. By default it
trains for ``--budget-s`` seconds of training time (evaluation excluded) with the cosine running over
that time, so a machine whose load changes still ends its schedule at the budget; ``--max-steps``
makes it a plain step count instead. It reports when the val loss first reached ``--target``.

``speed`` measures tokens/s of the adapter path (``paradigm.training_step`` + backward + AdamW) and
of :func:`bare_loop` over a plain ``nn.Module`` that embeds, runs the same transformers
``GPT2Block`` ``depth`` times (the same weights, checked by comparing logits) and projects, without
tiedlab. The two run interleaved in rounds so that a change in machine load hits both alike; the
ratio adapter / bare is printed. ``--engine`` adds a third entry: the real engine
(``tiedlab.paradigms.engine.train``, the loop behind ``tiedlab-language``) on the same model size, timed by
wall clock between its first and last ``training_step`` call of each round, so everything the engine does
per step (batch iteration, clipping off, schedule, stats hooks, bookkeeping) is inside the measurement; its
ratio to the bare loop is printed too.

Run one at a time (2 shared cores):
  flock /tmp/tiedlab-cpu.lock python benchmarks/bench_language.py train --mode tied --budget-s 600
  flock /tmp/tiedlab-cpu.lock python benchmarks/bench_language.py train --mode explicit --budget-s 600
  flock /tmp/tiedlab-cpu.lock python benchmarks/bench_language.py speed --mode tied --engine
  flock /tmp/tiedlab-cpu.lock python benchmarks/bench_language.py albert --budget-s 600
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
from transformers import AlbertConfig, AlbertModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from tiedlab.core import BlockSpec, model_param_counts
from tiedlab.paradigms.base import eval_mode
from tiedlab.paradigms.language.adapter import LanguageParadigm
from tiedlab.paradigms.language.model import CausalLM

Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- set-up
def make_paradigm(args: argparse.Namespace) -> tuple[LanguageParadigm, Any]:
    """The adapter and its data for the command-line options."""
    data = dict(name=args.dataset, eval_batches=args.eval_batches, eval_batch_size=64)
    model = dict(width=args.width, heads=args.heads, context=args.context, max_positions=args.context,
                 dropout=args.dropout, out_norm=not args.no_out_norm)
    paradigm = LanguageParadigm(data, model, torch.device("cpu"), seed=args.seed, batch_size=args.batch_size)
    return paradigm, paradigm.build_data()


def block_spec(args: argparse.Namespace) -> BlockSpec:
    spec: dict[str, Any] = dict(mode=args.mode, depth=args.depth)
    if args.mask_sparsity > 0:
        spec["mask"] = dict(mode="distinct", sparsity=args.mask_sparsity)
    if args.mode == "deq":
        spec.update(solver=dict(name=args.solver, max_iter=args.max_iter, tol=args.tol), grad=dict(mode=args.grad))
    return BlockSpec.from_dict(spec)


def optimizer_for(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only (not biases, LayerNorm gains, or the shared embedding)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.99))


def cosine_lr(step: int, progress: float, base: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio * base`` as ``progress``
    (fraction of the run done: steps, or training seconds of the budget) goes from 0 to 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, max(0.0, progress))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


# --------------------------------------------------------------------------- training to a target
def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    paradigm, data = make_paradigm(args)
    if args.command == "albert":
        model: nn.Module = AlbertLM(data.meta["vocab_size"], args.width, args.heads, args.depth, args.context)
    else:
        model = paradigm.build_model(data, block_spec(args))
    leak = check_causal(model, data.meta["vocab_size"], args.context)
    counts = model_param_counts(model)
    opt = optimizer_for(model, args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    batches = _endless(data.train_batches, gen)
    total = args.max_steps or None
    train_s = 0.0
    t_wall = time.perf_counter()
    step, best, history, reached = 0, (math.inf, -1), [], None
    print(json.dumps({"config": vars(args), "params": counts, "data": data.meta, "causal_leak_at_init": leak}),
          flush=True)

    def log_eval() -> None:
        nonlocal best, reached
        m = paradigm.evaluate(model, data, "val")
        best = min(best, (m["val/loss"], step))
        if reached is None and m["val/loss"] <= args.target:
            reached = {"step": step, "train_s": round(train_s, 1), "wall_s": round(time.perf_counter() - t_wall, 1)}
        rec = {"step": step, "train_s": round(train_s, 1), "tokens_per_s": round(step * data.samples_per_step / train_s),
               "lr": opt.param_groups[0]["lr"], "train/loss": round(last_loss, 4), **{k: round(v, 4) for k, v in m.items()}}
        if last_stats is not None:  # the core block's cost and convergence on the last training batch
            rec.update(nfe_forward=last_stats.nfe_forward, nfe_backward=last_stats.nfe_backward,
                       rel_residual=round(float(last_stats.rel_residual), 5))
        history.append(rec)
        print(json.dumps(rec), flush=True)

    last_loss, last_stats = float("nan"), None
    while (step < total) if total else (train_s < args.budget_s):
        progress = step / total if total else train_s / args.budget_s
        lr = cosine_lr(step, progress, args.lr, args.warmup, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        model.train()
        out = paradigm.training_step(model, next(batches))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last_loss, last_stats = out.loss.item(), out.stats
        train_s += time.perf_counter() - t0
        step += 1
        done = (step >= total) if total else (train_s >= args.budget_s)
        if step % args.eval_every == 0 or done:
            log_eval()
    final = {k: v for split in ("val", "test") for k, v in paradigm.evaluate(model, data, split).items()}
    summary = {
        "model": "albert" if args.command == "albert" else args.mode, "depth": args.depth, "width": args.width,
        "context": args.context, "steps": step,
        "train_s": round(train_s, 1), "wall_s": round(time.perf_counter() - t_wall, 1),
        "tokens_per_s": round(step * data.samples_per_step / train_s),
        "best_val_loss": round(best[0], 4), "best_val_step": best[1], "target": args.target, "reached_target": reached,
        **{k: round(v, 4) for k, v in final.items()}, **counts,
    }
    print(json.dumps({"summary": summary}), flush=True)
    return summary


def check_causal(model: nn.Module, vocab: int, context: int) -> float:
    """Changing the tokens from position context // 2 on must leave every earlier logit unchanged;
    returns the leak (a DEQ too: the adapter solves it per position, see ``model.causal_spec``)."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, vocab, (2, context), generator=gen)
    idx2 = idx.clone()
    at = context // 2
    idx2[:, at:] = (idx2[:, at:] + torch.randint(1, vocab, (2, context - at), generator=gen)) % vocab
    with eval_mode(model):
        a, b = model(idx)[0], model(idx2)[0]
    leak = (a[:, :at] - b[:, :at]).abs().max().item()
    if leak > 1e-5:
        raise SystemExit(f"model is not causal: future tokens moved earlier logits by {leak:.2e}")
    return leak


class AlbertLM(nn.Module):
    """Reference for cross-layer sharing as transformers ships it: ``AlbertModel`` with one layer shared by
    ``depth`` layers (post-LN, embedding LayerNorm, no re-injection of the input), made causal with a
    prepared 4D mask (returned as-is by its mask builder), and an LM head tied to its word embedding.

    Shapes: idx (B, T), T <= context -> logits (B, T, vocab), None (no block stats)
    """

    def __init__(self, vocab: int, width: int, heads: int, depth: int, context: int):
        super().__init__()
        config = AlbertConfig(
            vocab_size=vocab, embedding_size=width, hidden_size=width, num_hidden_layers=depth, num_hidden_groups=1,
            inner_group_num=1, num_attention_heads=heads, intermediate_size=4 * width, hidden_act="gelu",
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=context,
            type_vocab_size=1, pad_token_id=None, bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")
        self.albert = AlbertModel(config, add_pooling_layer=False)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.albert.embeddings.word_embeddings.weight
        self.register_buffer("causal", torch.ones(context, context, dtype=torch.bool).tril()[None, None],
                             persistent=False)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        t = idx.shape[1]
        h = self.albert(input_ids=idx, attention_mask=self.causal[:, :, :t, :t]).last_hidden_state
        return self.lm_head(h), None


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


class StepTimedLanguage(LanguageParadigm):
    """The language adapter, recording the wall-clock time of each ``training_step`` call (engine timing)."""

    calls: list[float] = []

    def training_step(self, model, batch):  # type: ignore[override]
        StepTimedLanguage.calls.append(time.perf_counter())
        return super().training_step(model, batch)


def engine_loop(args: argparse.Namespace, steps: int, run_root: str) -> float:
    """Tokens/s of ``steps`` engine steps (a fresh run, same sizes as the bare loop; steps 2..steps timed).

    The run is composed from the real Hydra config (``size=language_quick``) with the benchmark's sizes,
    AdamW with the bare loop's settings (lr 1e-3, no weight decay, no clipping, no warm-up), no evaluation
    before the last step and one evaluation batch.
    """
    from omegaconf import OmegaConf

    from tiedlab.paradigms.cli import compose_config
    from tiedlab.paradigms.engine import train as engine_train

    overrides = ["paradigm=language", "size=language_quick", f"block={args.mode}", f"block.depth={args.depth}",
                 f"model.width={args.width}", f"model.heads={args.heads}", f"model.context={args.context}",
                 f"model.max_positions={args.context}", f"model.dropout={args.dropout}",
                 f"model.out_norm={not args.no_out_norm}", f"train.batch_size={args.batch_size}",
                 f"train.max_steps={steps}", f"train.eval_every={10 * steps}", f"train.ckpt_every={10 * steps}",
                 "train.progress=false", "train.device=cpu", f"train.threads={args.threads}", "data.eval_batches=1",
                 "optim.lr=0.001", "optim.weight_decay=0.0", "optim.clip=null", "optim.warmup_steps=0",
                 f"seed={args.seed}"]
    cfg = compose_config(overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.paradigm = f"{__name__}:StepTimedLanguage"
    run_dir = os.path.join(run_root, f"engine-{len(os.listdir(run_root))}")
    cfg.run_dir = run_dir  # composed outside a Hydra app: no ${hydra:runtime.output_dir}
    StepTimedLanguage.calls = []
    engine_train(cfg, run_dir)
    calls = StepTimedLanguage.calls
    if len(calls) != steps:
        raise SystemExit(f"the engine made {len(calls)} training steps, expected {steps}")
    return (steps - 1) * args.batch_size * args.context / (calls[-1] - calls[0])


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
    if args.engine:
        import tempfile

        run_root = tempfile.mkdtemp(prefix="bench-language-engine-")
        # the engine's steps 2..n are timed: give it one step more so that each entry times args.steps steps
        loops["engine"] = lambda n: engine_loop(args, n + 1, run_root)
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
        print(json.dumps({"round": r, "tokens_per_s": row, "ratio": round(row["adapter"] / row["bare"], 3),
                          **({"engine_ratio": round(row["engine"] / row["bare"], 3)} if "engine" in row else {})}),
              flush=True)
    rate = {k: tokens[k] / seconds[k] for k in loops}
    summary = {"mode": args.mode, "depth": args.depth, "width": args.width, "context": args.context,
               "batch_size": args.batch_size, "logit_diff": diff,
               "tokens_per_s": {k: round(v) for k, v in rate.items()},
               "ratio_adapter_over_bare": round(rate["adapter"] / rate["bare"], 4),
               **({"ratio_engine_over_bare": round(rate["engine"] / rate["bare"], 4)} if "engine" in rate else {}),
               "threads": torch.get_num_threads()}
    print(json.dumps({"summary": summary}), flush=True)
    return summary


# --------------------------------------------------------------------------- command line
def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("train", "speed", "albert"),
                   help="train: the adapter model to a target; speed: adapter vs bare loop; albert: train the "
                        "transformers ALBERT reference (one shared layer, depth times) in the same loop")
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
    p.add_argument("--max-steps", type=int, default=0,
                   help="train this many steps, cosine over steps (0: train for --budget-s seconds, cosine over time)")
    p.add_argument("--budget-s", type=float, default=600.0, help="training seconds (evaluation excluded)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--target", type=float, default=1.80, help="report when val/loss first gets <= target")
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--rounds", type=int, default=8, help="speed: interleaved rounds")
    p.add_argument("--steps", type=int, default=10, help="speed: steps per loop per round")
    p.add_argument("--engine", action="store_true", help="speed: also time the engine (tiedlab-language's loop)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    (speed if args.command == "speed" else train)(args)


if __name__ == "__main__":
    main(sys.argv[1:])
