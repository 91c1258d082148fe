"""Vision paradigm benchmarks: time-boxed accuracy runs and adapter-vs-bare-loop throughput.

Everything is built through the adapter (``VisionParadigm(...).build_data / build_model /
training_step / evaluate``); only the optimiser loop lives here, so the engine can later be timed
against the same model by adding one function next to ``bare_loop`` and ``adapter_loop``.

  # accuracy within a training-time budget (evaluation time not counted); best validation
  # checkpoint selected, its test accuracy reported
  flock /tmp/tiedlab-cpu.lock python benchmarks/bench_vision.py train --data mnist --block tied \\
      --width 32 --expansion 1 --depth 4 --stem-stride 2 --budget-s 300

  # samples/s: the adapter's training path (train_batches + training_step) vs a bare loop over
  # pre-made tensors, same model, interleaved rounds
  flock /tmp/tiedlab-cpu.lock python benchmarks/bench_vision.py speed --data cifar10 --width 48 --depth 4

Both print one JSON object (and append it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tiedlab.core import BlockSpec, model_param_counts
from tiedlab.paradigms.base import check_choice, epoch_generator
from tiedlab.paradigms.config import OptimConfig
from tiedlab.paradigms.engine import build_optimizer
from tiedlab.paradigms.vision.adapter import VisionDataBundle, VisionParadigm

Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------- building
def block_spec(args: argparse.Namespace) -> BlockSpec:
    """The BlockSpec the command line asks for."""
    spec: dict[str, Any] = {"mode": args.block, "depth": args.depth, "norm": args.norm}
    if args.block == "deq":
        spec.update(solver={"name": args.solver, "max_iter": args.max_iter, "tol": args.tol},
                    grad={"mode": args.grad, "steps": args.grad_steps})
    if args.mask != "none":
        spec["mask"] = {"mode": args.mask, "kind": args.mask_kind, "sparsity": args.sparsity}
    return BlockSpec.from_dict(spec)


def build(args: argparse.Namespace) -> tuple[VisionParadigm, VisionDataBundle, nn.Module]:
    """Paradigm, data and model from the command line (seeded)."""
    data = {"name": args.data, "augment": args.augment}
    if args.limit_train:
        data["limit_train"] = args.limit_train
    model = {"width": args.width, "expansion": args.expansion, "groups": args.groups, "dropout": args.dropout,
             "stem_stride": args.stem_stride, "feature_mult": args.feature_mult, "pool_size": args.pool_size,
             "label_smoothing": args.label_smoothing}
    torch.manual_seed(args.seed)
    paradigm = VisionParadigm(data, model, torch.device(args.device), seed=args.seed, batch_size=args.batch_size)
    bundle = paradigm.build_data()
    net = paradigm.build_model(bundle, block_spec(args))
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return paradigm, bundle, net


def make_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    """The engine's optimiser (``engine.build_optimizer``): AdamW or SGD (Nesterov), weight decay only on tensors
    with >= 2 dims."""
    check_choice("--optim", args.optim, ("adamw", "sgd"))
    return build_optimizer(OptimConfig(name=args.optim, lr=args.lr, weight_decay=args.weight_decay, momentum=0.9,
                                       nesterov=True), model)


def lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0 over ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------- loops
def bare_loop(model: nn.Module, batches: Sequence[Batch], steps: int, lr: float = 1e-3) -> float:
    """Samples/s of a plain loop (forward, cross-entropy, backward, AdamW step) over pre-made batches.

    Shapes: batches: [(images (B, C, H, W) float normalised, labels (B,))]
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    samples = 0
    t0 = time.perf_counter()
    for i in range(steps):
        images, labels = batches[i % len(batches)]
        logits, _ = model(images)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        samples += len(labels)
    _sync(images)
    return samples / (time.perf_counter() - t0)


def adapter_loop(paradigm: VisionParadigm, model: nn.Module, bundle: VisionDataBundle, steps: int,
                 lr: float = 1e-3, seed: int = 0) -> float:
    """Samples/s of the adapter's path: ``bundle.train_batches(generator)`` (shuffle, augment,
    normalise on the device) and ``paradigm.training_step``, with the same optimiser as ``bare_loop``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    samples, epoch = 0, 0
    t0 = time.perf_counter()
    while samples < steps * bundle.samples_per_step:
        for batch in bundle.train_batches(epoch_generator(seed, epoch)):
            out = paradigm.training_step(model, batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            samples += len(batch[1])
            if samples >= steps * bundle.samples_per_step:
                break
        epoch += 1
    _sync(out.loss)
    return samples / (time.perf_counter() - t0)


def _sync(t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)


# --------------------------------------------------------------------------------------------- commands
def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds of bare_loop and adapter_loop on copies of one model; medians compared."""
    paradigm, bundle, net = build(args)
    gen = torch.Generator().manual_seed(1)
    premade = [(x.clone(), y.clone()) for _, (x, y) in zip(range(args.steps), bundle.train_batches(gen))]
    bare_net, adapter_net = copy.deepcopy(net), copy.deepcopy(net)
    bare_loop(bare_net, premade, 2)  # warm-up (allocator, kernels)
    adapter_loop(paradigm, adapter_net, bundle, 2)
    bare, adapter = [], []
    for r in range(args.rounds):
        bare.append(bare_loop(bare_net, premade, args.steps))
        adapter.append(adapter_loop(paradigm, adapter_net, bundle, args.steps, seed=r))
    b, a = statistics.median(bare), statistics.median(adapter)
    return {"command": "speed", "dataset": bundle.meta["dataset"], "spec": block_spec(args).as_dict(),
            "model": vars(paradigm.model_opts), "batch_size": bundle.samples_per_step, "steps": args.steps,
            "rounds": args.rounds, "bare_samples_per_s": bare, "adapter_samples_per_s": adapter,
            "bare_median": b, "adapter_median": a, "adapter_over_bare": a / b,
            "threads": torch.get_num_threads(), **model_param_counts(net)}


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train within ``--budget-s`` seconds of training time (or ``--epochs``), cosine schedule over
    whichever runs out first; validate every ``--eval-every`` steps, keep the best-validation
    weights and report their test accuracy (and the last weights')."""
    paradigm, bundle, net = build(args)
    opt = make_optimizer(args, net)
    total_steps = int(args.epochs * bundle.steps_per_epoch) if args.epochs else None
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"val/acc": -1.0}
    train_s, step, epoch, samples = 0.0, 0, 0, 0
    t_wall = time.perf_counter()

    def progress() -> float:
        by_time = train_s / args.budget_s if args.budget_s else 0.0
        by_step = step / total_steps if total_steps else 0.0
        return max(by_time, by_step)

    def validate() -> None:
        metrics = paradigm.evaluate(net, bundle, "val")
        record = {"step": step, "epoch": epoch, "train_s": round(train_s, 1), **metrics}
        history.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
        if metrics["val/acc"] > best["val/acc"]:
            best.update(metrics, step=step, train_s=train_s, state=copy.deepcopy(net.state_dict()))

    done = False
    while not done:
        gen = epoch_generator(args.seed, epoch)
        for batch in bundle.train_batches(gen):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = args.lr * lr_factor(progress(), step, args.warmup)
            out = paradigm.training_step(net, batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if args.clip:
                nn.utils.clip_grad_norm_(net.parameters(), args.clip)
            opt.step()
            _sync(out.loss)
            train_s += time.perf_counter() - t0
            step += 1
            samples += len(batch[1])
            if not math.isfinite(out.loss.item()):
                raise RuntimeError(f"non-finite loss at step {step}")
            done = progress() >= 1.0
            if step % args.eval_every == 0 or done:
                validate()
            if done:
                break
        epoch += 1

    last_test = paradigm.evaluate(net, bundle, "test")
    net.load_state_dict(best.pop("state"))
    best_test = paradigm.evaluate(net, bundle, "test")
    return {
        "command": "train", "dataset": bundle.meta["dataset"], "spec": block_spec(args).as_dict(),
        "model": vars(paradigm.model_opts), "args": vars(args), **model_param_counts(net),
        "train_s": train_s, "wall_s": time.perf_counter() - t_wall, "steps": step,
        "epochs": samples / bundle.meta["train_size"], "samples_per_s": samples / train_s,
        "best_val_acc": best["val/acc"], "best_step": best["step"], "best_train_s": best["train_s"],
        "test_acc_at_best_val": best_test["test/acc"], "test_acc_last": last_test["test/acc"],
        "history": history,
    }


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("train", "speed"))
    p.add_argument("--data", default="cifar10")
    p.add_argument("--augment", default="auto")
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--block", default="tied", choices=("explicit", "tied", "deq"))
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--norm", default="none")
    p.add_argument("--solver", default="anderson")
    p.add_argument("--max-iter", type=int, default=12)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--grad", default="phantom")
    p.add_argument("--grad-steps", type=int, default=3)
    p.add_argument("--mask", default="none", choices=("none", "shared", "distinct"))
    p.add_argument("--mask-kind", default="unstructured")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--expansion", type=int, default=1)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument("--feature-mult", type=int, default=4)
    p.add_argument("--pool-size", type=int, default=4, help="side of the pooling grid before the head (1 = global)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optim", default="adamw", choices=("adamw", "sgd"))
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--budget-s", type=float, default=None, help="training-time budget in seconds")
    p.add_argument("--epochs", type=float, default=None, help="or a fixed number of epochs")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--steps", type=int, default=20, help="speed: steps per round")
    p.add_argument("--rounds", type=int, default=3, help="speed: interleaved rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append the JSON result to this file")
    args = p.parse_args(argv)
    if args.command == "train" and not (args.budget_s or args.epochs):
        p.error("train needs --budget-s or --epochs")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    result = run_train(args) if args.command == "train" else run_speed(args)
    text = json.dumps(result, default=str)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
