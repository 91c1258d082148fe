"""Self-supervised paradigm benchmark: the CIFAR-10 kNN target, view throughput and the speed claim,
all through the adapter's own API (SSLParadigm.build_data / build_model / training_step / evaluate).

  train   pre-train under a wall-clock budget (training time only; evaluation is timed apart) with
          AdamW or SGD (weight decay and gradient clipping as the engine applies them) and a cosine
          schedule whose progress is max(step / steps, train_s / budget_s),
          so the rate anneals to its floor by the end of whichever limit comes first. The checkpoint
          with the best val/knn_acc is scored on test; the test split never steers anything. Prints
          the trained, random-init and raw-pixel kNN (and linear-probe) accuracies side by side.
          (The target's reference command is the engine's ``tiedlab-ssl size=ssl_quick``, same model and
          data; see reports/targets/ssl.md. This variant anneals by wall-clock time instead of steps.)
  views   images/s of the two view backends on the same uint8 batches: the batched tensor path
          (tensor_views) and lightly's PIL SimCLRTransform (LightlyViews), each making 2 views.
  speed   samples/s of ``bare_loop`` (pre-made views, ``model(v0, v1)``, backward, AdamW) vs
          ``adapter_loop`` (``paradigm.training_step`` on ``bundle.train_batches``: views made on the
          fly), interleaved rounds on the same model.

Usage (wrap runs in ``flock /tmp/tiedlab-cpu.lock``; set TIEDLAB_DATA and TIEDLAB_CACHE):
  python benchmarks/bench_ssl.py train --budget-s 600 [--set model.method=byol block.mode=deq ...]
  python benchmarks/bench_ssl.py views --batch 256 --rounds 3
  python benchmarks/bench_ssl.py speed --steps 10 --rounds 3

``--set`` takes dotted keys under data., model., block. (a BlockSpec), optim. {name, lr, weight_decay,
warmup, min_lr_ratio, clip (gradient-norm clip as the engine's optim.clip; 0 = none)}, train. {batch_size,
steps, eval_every}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
from typing import Any, Iterable

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiedlab.core import BlockSpec, model_param_counts  # noqa: E402
from tiedlab.paradigms.base import check_choice, epoch_generator  # noqa: E402
from tiedlab.paradigms.config import OptimConfig  # noqa: E402
from tiedlab.paradigms.engine import build_optimizer  # noqa: E402
from tiedlab.paradigms.ssl.adapter import SSLParadigm  # noqa: E402
from tiedlab.paradigms.ssl.views import LightlyViews, tensor_views  # noqa: E402
from overrides import parse_sets  # noqa: E402  (benchmarks/overrides.py, a sibling module)

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"name": "cifar10", "knn_bank_size": 10000, "crop_scale_min": 0.2},
    "model": {"width": 16, "expansion": 2, "groups": 4, "stem_stride": 2, "feature_mult": 8,
              "method": "simclr", "proj_hidden": 512, "proj_dim": 128, "temperature": 0.2},
    "block": {"mode": "tied", "depth": 4},
    "optim": {"name": "adamw", "lr": 4e-3, "weight_decay": 1e-4, "warmup": 50, "min_lr_ratio": 0.0, "clip": 1.0},
    "train": {"batch_size": 128, "steps": 100000, "eval_every": 200},
}


def build(cfg: dict[str, dict[str, Any]], seed: int = 0):
    """(paradigm, bundle, model) exactly as the engine builds them."""
    torch.manual_seed(seed)
    paradigm = SSLParadigm(cfg["data"], cfg["model"], torch.device("cpu"), seed=seed,
                           batch_size=int(cfg["train"]["batch_size"]))
    bundle = paradigm.build_data()
    model = paradigm.build_model(bundle, BlockSpec.from_dict(cfg["block"]))
    return paradigm, bundle, model


def make_optimizer(model: nn.Module, optim: dict[str, Any]) -> torch.optim.Optimizer:
    """The engine's optimiser (``engine.build_optimizer``): AdamW or SGD (momentum 0.9), weight decay only on
    weights with >= 2 dims."""
    check_choice("optim.name", optim["name"], ("adamw", "sgd"))
    return build_optimizer(OptimConfig(name=optim["name"], lr=float(optim["lr"]),
                                       weight_decay=float(optim["weight_decay"])), model)


def lr_factor(step: int, progress: float, warmup: int, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` as progress goes 0 -> 1."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------------------------------ train


def train_run(cfg: dict[str, dict[str, Any]], budget_s: float, seed: int = 0, verbose: bool = True) -> dict[str, Any]:
    """Pre-train within ``budget_s`` seconds of training time; test at the best-val checkpoint."""
    paradigm, bundle, model = build(cfg, seed)
    opt = make_optimizer(model, cfg["optim"])
    base_lrs = [g["lr"] for g in opt.param_groups]
    steps, every = int(cfg["train"]["steps"]), int(cfg["train"]["eval_every"])
    warmup, floor = int(cfg["optim"].get("warmup", 0)), float(cfg["optim"].get("min_lr_ratio", 0.0))
    clip = float(cfg["optim"].get("clip", 0.0))
    t_eval = time.perf_counter()
    val0 = paradigm.evaluate(model, bundle, "val")
    eval_s = time.perf_counter() - t_eval
    if verbose:
        print(f"  step     0 val {json.dumps({k: round(v, 4) for k, v in val0.items()})} ({eval_s:.1f}s)", flush=True)
    best = {"step": 0, **val0}
    best_state = copy.deepcopy(model.state_dict())
    history = [{"step": 0, "train_s": 0.0, "val/knn_acc": val0["val/knn_acc"]}]
    train_s, step, epoch, loss_sum, loss_n = 0.0, 0, 0, 0.0, 0
    done = False
    while not done:
        gen = epoch_generator(seed, epoch)
        batches = iter(bundle.train_batches(gen))
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            progress = max(step / steps, train_s / budget_s)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * lr_factor(step, progress, warmup, floor)
            model.train()
            out = paradigm.training_step(model, batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            train_s += time.perf_counter() - t0
            step += 1
            loss_sum, loss_n = loss_sum + out.loss.item(), loss_n + 1
            done = step >= steps or train_s >= budget_s
            if step % every == 0 or done:
                t_eval = time.perf_counter()
                val = paradigm.evaluate(model, bundle, "val")
                eval_s += time.perf_counter() - t_eval
                history.append({"step": step, "train_s": round(train_s, 1), "loss": loss_sum / loss_n,
                                "val/knn_acc": val["val/knn_acc"]})
                if val["val/knn_acc"] > best["val/knn_acc"]:
                    best = {"step": step, **val}
                    best_state = copy.deepcopy(model.state_dict())
                if verbose:
                    print(f"  step {step:5d} train_s {train_s:6.1f} loss {loss_sum / loss_n:.4f} "
                          f"val/knn {val['val/knn_acc']:.4f} val/linear {val['val/linear_acc']:.4f} "
                          f"nfe {out.stats.nfe_forward} rel {out.stats.rel_residual:.3g} "
                          f"lr {opt.param_groups[0]['lr']:.2e}", flush=True)
                loss_sum, loss_n = 0.0, 0
            if done:
                break
        epoch += 1
    model.load_state_dict(best_state)
    t_eval = time.perf_counter()
    test = paradigm.evaluate(model, bundle, "test")
    eval_s += time.perf_counter() - t_eval
    keys = ("knn_acc", "knn_acc_random_init", "knn_acc_pixels", "linear_acc", "linear_acc_random_init",
            "linear_acc_pixels")
    return {
        "dataset": bundle.meta["dataset"], "knn_bank_size": bundle.meta["knn_bank_size"],
        "test_size": bundle.meta["test_size"], "method": cfg["model"]["method"], "block": cfg["block"],
        "best_step": best["step"], "steps": step, "epochs": round(step / bundle.steps_per_epoch, 2),
        "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
        "train_images_per_s": round(step * bundle.samples_per_step / max(train_s, 1e-9), 1),
        **{f"val/{k}": best[f"val/{k}"] for k in keys}, **{f"test/{k}": test[f"test/{k}"] for k in keys},
        "test_gain_over_random_init": test["test/knn_acc"] - test["test/knn_acc_random_init"],
        "test_gain_over_pixels": test["test/knn_acc"] - test["test/knn_acc_pixels"],
        **model_param_counts(model), "history": history,
    }


# ------------------------------------------------------------------------------------------ views


def views_speed(cfg: dict[str, dict[str, Any]], batch: int, rounds: int) -> dict[str, Any]:
    """Images/s (each image -> 2 views) of the tensor path and of lightly's PIL path, same batches."""
    cfg = parse_sets([f"train.batch_size={batch}"], cfg)
    paradigm = SSLParadigm(cfg["data"], cfg["model"], torch.device("cpu"), batch_size=batch)
    bundle = paradigm.build_data()
    images = bundle.splits["bank"][0][:batch]
    spec = paradigm.data_opts.view_spec(int(images.shape[-1]))
    lightly_views = LightlyViews(spec, bundle.mean, bundle.std)
    tensor_ips, lightly_ips = [], []
    for r in range(rounds):
        gen = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        for _ in range(5):
            tensor_views(images, spec, bundle.mean, bundle.std, gen)
        tensor_ips.append(5 * batch / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        lightly_views(images, gen)
        lightly_ips.append(batch / (time.perf_counter() - t0))
    t, li = statistics.median(tensor_ips), statistics.median(lightly_ips)
    return {"dataset": bundle.meta["dataset"], "batch": batch, "view_size": spec.size,
            "threads": torch.get_num_threads(),
            "tensor_images_per_s": round(t, 1), "lightly_pil_images_per_s": round(li, 1),
            "speedup_tensor_over_lightly": round(t / li, 2), "rounds": rounds}


# ------------------------------------------------------------------------------------------ speed


def bare_loop(model: nn.Module, batches: list[Any], steps: int, warmup: int = 2) -> float:
    """Samples (images) per second of a plain loop over pre-made view pairs: ``before_step`` (BYOL's
    EMA), ``loss, _ = model(v0, v1)``, backward, AdamW step. Batches are reused cyclically."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    n, t0 = 0, time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            t0, n = time.perf_counter(), 0
        v0, v1 = batches[i % len(batches)]
        model.before_step()
        loss, _ = model(v0, v1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += v0.shape[0]
    return n / (time.perf_counter() - t0)


def adapter_loop(paradigm: SSLParadigm, bundle: Any, model: nn.Module, steps: int, warmup: int = 2,
                 seed: int = 0) -> float:
    """Samples per second of the same update through ``paradigm.training_step`` on ``bundle.train_batches``
    (views made on the fly, as the engine runs it)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    batches = iter(bundle.train_batches(torch.Generator().manual_seed(seed)))
    n, t0 = 0, time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            t0, n = time.perf_counter(), 0
        out = paradigm.training_step(model, next(batches))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        n += bundle.samples_per_step
    return n / (time.perf_counter() - t0)


def speed(cfg: dict[str, dict[str, Any]], steps: int, rounds: int) -> dict[str, Any]:
    """bare_loop vs adapter_loop on one model, interleaved so machine-load drifts hit both alike."""
    paradigm, bundle, model = build(cfg)
    batches = list(itertools_take(bundle.train_batches(torch.Generator().manual_seed(123)), 4))
    bare, adapter = [], []
    for r in range(rounds):
        bare.append(bare_loop(model, batches, steps))
        adapter.append(adapter_loop(paradigm, bundle, model, steps, seed=r))
    b, a = statistics.median(bare), statistics.median(adapter)
    return {"dataset": bundle.meta["dataset"], "method": cfg["model"]["method"], "block": cfg["block"],
            "batch": bundle.samples_per_step, "bare_images_per_s": round(b, 1), "adapter_images_per_s": round(a, 1),
            "time_ratio_adapter_over_bare": round(b / a, 3), "steps": steps, "rounds": rounds}


def itertools_take(iterable: Iterable[Any], n: int) -> list[Any]:
    out = []
    for item in iterable:
        out.append(item)
        if len(out) == n:
            break
    return out


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("train", "views", "speed"))
    ap.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
    ap.add_argument("--budget-s", type=float, default=600.0, help="train: training-time budget in seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=256, help="views: batch size")
    ap.add_argument("--steps", type=int, default=10, help="speed: timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="views / speed: interleaved rounds")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = parse_sets(args.set, DEFAULTS)
    print("config:", json.dumps(cfg), flush=True)
    if args.what == "views":
        print(json.dumps(views_speed(cfg, args.batch, args.rounds)), flush=True)
    elif args.what == "speed":
        print(json.dumps(speed(cfg, args.steps, args.rounds)), flush=True)
    else:
        print(json.dumps(train_run(cfg, args.budget_s, seed=args.seed)), flush=True)


if __name__ == "__main__":
    main()
