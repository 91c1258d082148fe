"""Graph paradigm benchmark: the accuracy targets and the speed claim, through the adapter's own API.

Every model is built by GraphParadigm (build_data / build_model / training_step / evaluate) and trained
by a bare loop here (the engine's optimiser and cosine schedule with optional linear warm-up; no gradient clipping), selecting the epoch by
validation accuracy and reporting the test accuracy at that epoch. The test split never steers anything.

Usage (wrap long runs in ``flock /tmp/tiedlab-cpu.lock``):
  python benchmarks/bench_graph.py node  --data cora     [--set block.mode=deq model.width=64 ...]
  python benchmarks/bench_graph.py tu    --data mutag --folds 0-9 [--set ...]
  python benchmarks/bench_graph.py speed --data cora --steps 200 [--set block.depth=2 ...]

``--set`` takes dotted keys under data., model., block. (a BlockSpec), optim. {name, lr, weight_decay,
warmup}, train. {epochs, eval_every}. ``speed`` times ``bare_loop`` (a plain PyG model written directly,
the same function as the adapter's tied GCN model: checked) against ``adapter_loop`` in one process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiedlab.core import BlockSpec, model_param_counts  # noqa: E402
from tiedlab.paradigms.base import epoch_generator  # noqa: E402
from tiedlab.paradigms.config import OPTIMIZERS, OptimConfig  # noqa: E402
from tiedlab.paradigms.engine import build_optimizer, cosine_with_warmup  # noqa: E402
from tiedlab.paradigms.graph.adapter import GraphParadigm  # noqa: E402
from overrides import parse_sets  # noqa: E402  (benchmarks/overrides.py, a sibling module)

# ------------------------------------------------------------------------------------------ defaults

NODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"name": "cora"},
    "model": {"width": 64, "conv": "gcn", "norm": "none", "dropout": 0.5, "input_dropout": 0.5},
    "block": {"mode": "tied", "depth": 3},
    "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 5e-4, "warmup": 0},
    "train": {"epochs": 200, "eval_every": 1},
}
TU_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"name": "MUTAG", "batch_size": 32, "val_fraction": 0.1},
    "model": {"width": 64, "conv": "gin", "norm": "layer", "dropout": 0.5, "input_dropout": 0.0, "pool": "sum"},
    "block": {"mode": "tied", "depth": 4},
    "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 1e-4, "warmup": 0},
    "train": {"epochs": 100, "eval_every": 1},
}


# ------------------------------------------------------------------------------------------ training


def make_optimizer(model: nn.Module, optim: dict[str, Any], total_steps: int):
    """The engine's optimiser (``build_optimizer``: adamw, adam or sgd, decay on >= 2-dim weights only) and its
    schedule (linear warm-up over ``optim["warmup"]`` steps, cosine to 0 over ``total_steps``)."""
    known = {"name", "lr", "weight_decay", "warmup"}
    if set(optim) - known:
        raise ValueError(f"optim keys {sorted(set(optim) - known)} are not valid here; valid keys: {sorted(known)}")
    if optim["name"] not in OPTIMIZERS:
        raise ValueError(f"optim.name={optim['name']!r} is not valid; choose one of {OPTIMIZERS}")
    opt = build_optimizer(OptimConfig(name=optim["name"], lr=float(optim["lr"]),
                                      weight_decay=float(optim["weight_decay"])), model)
    return opt, cosine_with_warmup(opt, int(optim.get("warmup", 0)), total_steps, 0.0)


def train_run(cfg: dict[str, dict[str, Any]], seed: int = 0, verbose: bool = False) -> dict[str, Any]:
    """Train one model as ``cfg`` says; the reported test accuracy is the one at the best-val epoch."""
    torch.manual_seed(seed)
    paradigm = GraphParadigm(cfg["data"], cfg["model"], torch.device("cpu"), seed=seed)
    bundle = paradigm.build_data()
    model = paradigm.build_model(bundle, BlockSpec.from_dict(cfg["block"]))
    epochs, every = int(cfg["train"]["epochs"]), int(cfg["train"]["eval_every"])
    opt, sched = make_optimizer(model, cfg["optim"], epochs * bundle.steps_per_epoch)
    best = {"val/acc": -1.0, "val/loss": math.inf}
    t0 = time.perf_counter()
    train_s = 0.0
    for epoch in range(epochs):
        gen = epoch_generator(seed, epoch)
        t = time.perf_counter()
        model.train()
        for batch in bundle.train_batches(gen):
            out = paradigm.training_step(model, batch)
            loss = out.loss + (0.0 if out.stats.jacobian_loss is None else out.stats.jacobian_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        train_s += time.perf_counter() - t
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            val = paradigm.evaluate(model, bundle, "val")
            if (val["val/acc"], -val["val/loss"]) > (best["val/acc"], -best["val/loss"]):
                test = paradigm.evaluate(model, bundle, "test")
                best = {"epoch": epoch + 1, **val, **test}
            if verbose and (epoch + 1) % max(every, 10) == 0:
                print(f"  epoch {epoch + 1:4d} loss {out.loss.item():.4f} val {val['val/acc']:.4f} "
                      f"nfe {out.stats.nfe_forward} rel {out.stats.rel_residual:.3g}", flush=True)
    final = paradigm.evaluate(model, bundle, "test")
    return {
        "dataset": bundle.meta["dataset"], "best_epoch": best["epoch"], "val_acc": best["val/acc"],
        "test_acc_at_best_val": best["test/acc"], "final_test_acc": final["test/acc"],
        "eval_nfe": best["test/nfe"], "eval_rel_residual": best["test/rel_residual"],
        "wall_s": time.perf_counter() - t0, "train_s_per_epoch": train_s / epochs,
        **model_param_counts(model),
    }


# ------------------------------------------------------------------------------------------ speed


def _samples(batch: Any) -> int:
    return int(batch.num_graphs) if hasattr(batch, "num_graphs") and batch.batch is not None else int(batch.num_nodes)


def bare_loop(model: nn.Module, batches: list[Any], steps: int, warmup: int = 5) -> float:
    """Samples per second of a plain loop: ``loss = model(batch)``, backward, Adam step.

    ``model(batch)`` must return the scalar loss. Batches are reused cyclically."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    n = 0
    for i in range(warmup + steps):
        if i == warmup:
            t0, n = time.perf_counter(), 0
        batch = batches[i % len(batches)]
        loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += _samples(batch)
    return n / (time.perf_counter() - t0)


def adapter_loop(paradigm: GraphParadigm, model: nn.Module, batches: list[Any], steps: int, warmup: int = 5) -> float:
    """Samples per second of the same loop through ``paradigm.training_step`` (block stats, metrics)."""

    class Step(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, batch):
            return paradigm.training_step(self.inner, batch).loss

    return bare_loop(Step(), batches, steps, warmup)


class BareTiedGCN(nn.Module):
    """A plain PyG node classifier, written directly: sparse input linear (+ LayerNorm), one GCNConv + Linear U
    (or the identity, inject="identity") applied ``depth`` times as z = act(norm(conv(z + U h)))
    (inject_into="conv") or act(norm(conv(z) + U h)), dropout, a linear head or (head="conv") a GCNConv to the
    classes; returns the loss."""

    def __init__(self, in_features: int, width: int, num_classes: int, depth: int, *, norm: str = "none",
                 dropout: float = 0.5, input_dropout: float = 0.5, stem_norm: str = "layer",
                 inject_into: str = "conv", inject: str = "linear", head: str = "linear"):
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.lin_in = nn.Linear(in_features, width)
        self.norm_in = nn.LayerNorm(width) if stem_norm == "layer" else nn.Identity()
        self.conv = GCNConv(width, width, cached=True)
        self.U = nn.Linear(width, width) if inject == "linear" else nn.Identity()
        self.norm = nn.LayerNorm(width) if norm == "layer" else nn.Identity()
        self.head = GCNConv(width, num_classes, cached=True) if head == "conv" else nn.Linear(width, num_classes)
        self.head_conv = head == "conv"
        self.depth, self.dropout, self.input_dropout = depth, dropout, input_dropout
        self.inject_into = inject_into

    def logits(self, data: Any) -> torch.Tensor:
        x = data.x
        if self.training and self.input_dropout > 0:
            x = torch.sparse_coo_tensor(x.indices(), F.dropout(x.values(), self.input_dropout, True), x.shape,
                                        is_coalesced=True, check_invariants=False)
        h = self.norm_in(torch.sparse.mm(x, self.lin_in.weight.t()) + self.lin_in.bias)
        z = torch.zeros_like(h)
        u = self.U(h)
        for _ in range(self.depth):
            if self.inject_into == "conv":
                z = F.relu(self.norm(self.conv(z + u, data.edge_index)))
            else:
                z = F.relu(self.norm(self.conv(z, data.edge_index) + u))
        z = F.dropout(z, self.dropout, self.training)
        return self.head(z, data.edge_index) if self.head_conv else self.head(z)

    def forward(self, data: Any) -> torch.Tensor:
        out = self.logits(data)
        return F.cross_entropy(out[data.train_mask], data.y[data.train_mask])


def speed(cfg: dict[str, dict[str, Any]], steps: int, rounds: int) -> dict[str, Any]:
    """Training throughput of the adapter path vs the bare PyG model on a node task (tied GCN)."""
    if cfg["model"].get("conv", "gcn") != "gcn" or cfg["block"].get("mode") != "tied":
        raise ValueError("speed compares a tied GCN model; set model.conv=gcn block.mode=tied")
    torch.manual_seed(0)
    paradigm = GraphParadigm(cfg["data"], cfg["model"], torch.device("cpu"))
    bundle = paradigm.build_data()
    if bundle.task != "node":
        raise ValueError("speed runs on a node task (cora or citeseer)")
    model = paradigm.build_model(bundle, BlockSpec.from_dict(cfg["block"]))
    m = paradigm.model_opts
    bare = BareTiedGCN(bundle.num_features, m.width, bundle.num_classes, model.block.spec.depth, norm=m.norm,
                       dropout=m.dropout, input_dropout=m.input_dropout, stem_norm=m.stem_norm,
                       inject_into=m.inject_into, inject=m.inject, head=m.head)
    # the same function: copy the adapter's weights into the bare model and compare in eval mode
    cell = model.block.cells[0]
    with torch.no_grad():
        bare.lin_in.load_state_dict(model.stem.lin.state_dict())
        bare.norm_in.load_state_dict(model.stem.norm.state_dict())
        bare.conv.load_state_dict(cell.conv.state_dict())
        bare.U.load_state_dict(cell.inject.state_dict())
        bare.norm.load_state_dict(cell.norm.state_dict())
        bare.head.load_state_dict(model.head.state_dict())
        model.eval(), bare.eval()
        torch.testing.assert_close(model(bundle.graph)[0], bare.logits(bundle.graph), rtol=1e-4, atol=1e-5)
    batches = list(bundle.train_batches(torch.Generator().manual_seed(0)))
    bare_sps, adapter_sps = [], []
    for _ in range(rounds):  # interleaved, so drifts in machine load hit both alike
        bare_sps.append(bare_loop(bare, batches, steps))
        adapter_sps.append(adapter_loop(paradigm, model, batches, steps))
    b, a = statistics.median(bare_sps), statistics.median(adapter_sps)
    return {"dataset": bundle.meta["dataset"], "depth": model.block.spec.depth, "width": m.width,
            "bare_ms_per_epoch": 1e3 * bundle.samples_per_step / b,
            "adapter_ms_per_epoch": 1e3 * bundle.samples_per_step / a,
            "time_ratio_adapter_over_bare": b / a, "rounds": rounds, "steps": steps}


# ------------------------------------------------------------------------------------------ main


def parse_folds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(t) for t in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("node", "tu", "speed"))
    ap.add_argument("--data", default=None, help="dataset name (data.name)")
    ap.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
    ap.add_argument("--seeds", default="0", help="comma list of seeds (node)")
    ap.add_argument("--folds", default="0-9", help="TU folds, e.g. 0-9 or 0,3")
    ap.add_argument("--steps", type=int, default=200, help="speed: timed steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="speed: interleaved rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base = TU_DEFAULTS if args.what == "tu" else NODE_DEFAULTS
    cfg = parse_sets(args.set, base)
    if args.data:
        cfg["data"]["name"] = args.data
    print("config:", json.dumps(cfg), flush=True)

    if args.what == "speed":
        print(json.dumps(speed(cfg, args.steps, args.rounds)), flush=True)
        return
    if args.what == "node":
        results = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            r = train_run(cfg, seed=seed, verbose=args.verbose)
            results.append(r)
            print(json.dumps({"seed": seed, **r}), flush=True)
        accs = [r["test_acc_at_best_val"] for r in results]
        print(json.dumps({"summary": cfg["data"]["name"], "mode": cfg["block"].get("mode"), "seeds": len(accs),
                          "test_acc_mean": statistics.mean(accs),
                          "test_acc_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                          "wall_s_total": sum(r["wall_s"] for r in results)}), flush=True)
        return
    results = []
    for fold in parse_folds(args.folds):
        run_cfg = json.loads(json.dumps(cfg))
        run_cfg["data"]["fold"] = fold
        r = train_run(run_cfg, seed=0, verbose=args.verbose)
        results.append(r)
        print(json.dumps({"fold": fold, **r}), flush=True)
    accs = [r["test_acc_at_best_val"] for r in results]
    finals = [r["final_test_acc"] for r in results]
    print(json.dumps({"summary": cfg["data"]["name"], "mode": cfg["block"].get("mode"), "folds": len(accs),
                      "test_acc_mean": statistics.mean(accs), "test_acc_std": statistics.pstdev(accs),
                      "final_test_acc_mean": statistics.mean(finals),
                      "wall_s_total": sum(r["wall_s"] for r in results)}), flush=True)


if __name__ == "__main__":
    main()
