"""GraphParadigm: node classification (Cora, CiteSeer) and graph classification (TU benchmarks).

Node tasks train full-batch: one "batch" per epoch is the whole graph; "val"/"test" are the public
Planetoid masks. Graph tasks use the standard 10 folds: ``data.fold`` (0..9) picks the fold, its test
graphs are "test", and ``data.val_fraction`` of its training graphs (stratified, seeded by
``data.split_seed``) are held out as "val" for model selection. ``val_fraction=0`` makes "val" the
test fold itself: the GIN protocol, which selects on the test fold and so is optimistic. The 10-fold
mean and std come from 10 runs, ``data.fold=0..9`` (the experiment files sweep it).

Public API: GraphParadigm, GraphDataOptions, GraphModelOptions, GraphBundle, task_of.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from tiedlab.core import Block, BlockSpec
from tiedlab.paradigms.base import DataBundle, Paradigm, StepOutput, weights_key

from .data import PLANETOID_NAMES, TU_NAMES, load_planetoid, load_tu, sparse_features, validate_graph
from .model import ACTS, CONVS, HEADS, INJECT_INTO, INJECTS, NORMS, POOLS, STEM_NORMS, GraphCell, GraphModel, InputStem, make_head

SPARSE_CHOICES = ("auto", "coo", "csr", "dense")
SPLITS = ("train", "val", "test")
NUM_FOLDS = 10


def task_of(name: str) -> str:
    """'node' for a Planetoid name, 'graph' for a TU name (case-insensitive, '-'/'_' ignored)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key in PLANETOID_NAMES:
        return "node"
    if key.upper() in TU_NAMES or key.upper() == "PTCMR":
        return "graph"
    raise ValueError(f"unknown graph dataset {name!r}; valid names: node tasks {sorted(PLANETOID_NAMES)}, "
                     f"graph tasks {list(TU_NAMES)}")


def _choice(what: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{what}={value!r} is not valid; choose one of {choices}")


@dataclass
class GraphDataOptions:
    """The ``data`` config section.

    Attributes:
        name: dataset: cora, citeseer (node tasks) or a TU name (MUTAG, PROTEINS, ENZYMES, NCI1, ...).
        num_features: the model's expected input size; None = take it from the data. A mismatch is an error.
        normalize_features: row-normalise Planetoid bag-of-words features (as the GCN paper).
        source: Planetoid reader, "npz" or "pyg" (see data.load_planetoid).
        fold: TU fold 0..9.
        val_fraction: TU: fraction of the fold's training graphs held out as "val" (stratified);
            0 = "val" is the test fold (GIN protocol, optimistic).
        split_seed: seeds the TU val hold-out.
        batch_size: graphs per training batch (TU only; node tasks are full-batch).
        eval_batch_size: graphs per evaluation batch (TU only).
        degree_as_tag, max_degree: TU node features from degrees (see data.load_tu).
    """

    name: str = "cora"
    num_features: int | None = None
    normalize_features: bool = True
    source: str = "npz"
    fold: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0
    batch_size: int = 32
    eval_batch_size: int = 512
    degree_as_tag: bool | None = None
    max_degree: int | None = None

    def __post_init__(self) -> None:
        task_of(self.name)
        _choice("data.source", self.source, ("npz", "pyg"))
        if isinstance(self.fold, bool) or not isinstance(self.fold, int) or not 0 <= self.fold < NUM_FOLDS:
            raise ValueError(f"data.fold must be an int in 0..{NUM_FOLDS - 1}, got {self.fold!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        for key in ("batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{key} must be a positive int, got {value!r}")
        if self.num_features is not None and self.num_features < 1:
            raise ValueError(f"data.num_features={self.num_features} must be >= 1 or null")


@dataclass
class GraphModelOptions:
    """The ``model`` config section.

    Attributes:
        width: state size d.
        conv: message passing of the cell: gcn, sage, gin (2-layer MLP) or gat.
        heads: attention heads (gat; must divide width).
        norm: none, layer or batch (batch only with block.mode=explicit: shared running stats are
            wrong for a tied or DEQ cell that sees a different input at every layer).
        act: relu, tanh, elu, gelu or none (a linear cell, SGC-like).
        inject: how the cell takes the projected input: linear (its own U) or identity.
        inject_into: output (z' = act(norm(conv(z) + U x))) or conv (z' = act(norm(conv(z + U x))):
            the injection propagated with the state, IGNN-style).
        gamma: scale of the conv term; < 1 with block.norm=spectral makes a GCN cell a contraction.
        dropout: node tasks: on the block output before the head; graph tasks: inside the head MLP.
        input_dropout: on the raw features (on the stored values when they are sparse).
        stem_norm: layer (a LayerNorm after the input Linear: the injected input at unit scale per node,
            which a normalised cell and a DEQ need on row-normalised bag-of-words) or none.
        cell_dropout: variational dropout on the state inside the cell (one mask per forward).
        z0: the block's initial state: zeros, or input (the projected features).
        sparse_input: features as auto (sparse COO for node tasks, dense for graph tasks), coo, csr
            (node tasks) or dense.
        pool: graph tasks: sum or mean pooling of the final node states.
        head: node tasks: linear (Linear(width, C)) or conv (a GCNConv(width, C): one more propagation to
            the classes, like the GCN paper's last layer). Graph tasks need linear.
    """

    width: int = 64
    conv: str = "gcn"
    heads: int = 1
    norm: str = "layer"
    act: str = "relu"
    inject: str = "linear"
    inject_into: str = "conv"
    gamma: float = 1.0
    dropout: float = 0.5
    input_dropout: float = 0.5
    stem_norm: str = "layer"
    cell_dropout: float = 0.0
    z0: str = "zeros"
    sparse_input: str = "auto"
    pool: str = "sum"
    head: str = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"model.width must be a positive int, got {self.width!r}")
        _choice("model.conv", self.conv, CONVS)
        _choice("model.norm", self.norm, NORMS)
        _choice("model.act", self.act, ACTS)
        _choice("model.inject", self.inject, INJECTS)
        _choice("model.inject_into", self.inject_into, INJECT_INTO)
        _choice("model.stem_norm", self.stem_norm, STEM_NORMS)
        _choice("model.z0", self.z0, ("zeros", "input"))
        _choice("model.sparse_input", self.sparse_input, SPARSE_CHOICES)
        _choice("model.pool", self.pool, POOLS)
        _choice("model.head", self.head, HEADS)
        if self.conv == "gat" and (self.heads < 1 or self.width % self.heads):
            raise ValueError(f"model.heads={self.heads} must be >= 1 and divide model.width={self.width}")
        for key in ("dropout", "input_dropout", "cell_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"model.{key}={getattr(self, key)} must be in [0, 1)")
        if not self.gamma > 0:
            raise ValueError(f"model.gamma={self.gamma} must be > 0")


@dataclass
class GraphBundle(DataBundle):
    """A DataBundle with what the graph model and evaluation need.

    Attributes:
        task: "node" or "graph".
        num_features, num_classes: input size and classes.
        graph: node tasks: the whole graph on the device (x sparse or dense, masks, y).
        eval_batches: graph tasks: {"train"|"val"|"test": pre-collated Batches on the device}.
    """

    task: str = "node"
    num_features: int = 0
    num_classes: int = 0
    graph: Data | None = None
    eval_batches: dict[str, list[Batch]] = field(default_factory=dict)


class GraphParadigm(Paradigm):
    """Graph learning with a message-passing cell driven by the core block (see module docstring)."""

    name = "graph"
    DataOptions = GraphDataOptions
    ModelOptions = GraphModelOptions
    primary_metric = "acc"
    higher_is_better = True

    def __init__(self, data: Any, model: Any, device: torch.device | str, seed: int = 0, batch_size: int = 32):
        # TU graph batches use data.batch_size (graphs per batch); node tasks are full-batch.
        super().__init__(data, model, torch.device(device), seed, batch_size)
        self.task = task_of(self.data_opts.name)
        if self.task == "graph" and self.model_opts.sparse_input in ("coo", "csr"):
            raise ValueError(f"model.sparse_input={self.model_opts.sparse_input!r} applies to node tasks only; "
                             f"{self.data_opts.name!r} is a graph task: use 'auto' or 'dense'")

    # ------------------------------------------------------------------ data
    def build_data(self) -> GraphBundle:
        return self._node_data() if self.task == "node" else self._graph_data()

    def _node_data(self) -> GraphBundle:
        o = self.data_opts
        data = load_planetoid(o.name, source=o.source, normalize_features=o.normalize_features)
        validate_graph(data, num_features=o.num_features, task="node")
        layout = self.model_opts.sparse_input
        x = data.x if layout == "dense" else sparse_features(data.x, "csr" if layout == "csr" else "coo")
        graph = Data(x=x, edge_index=data.edge_index, y=data.y, train_mask=data.train_mask,
                     val_mask=data.val_mask, test_mask=data.test_mask).to(self.device)
        n = int(data.num_nodes)

        def train_batches(generator: torch.Generator) -> Iterator[Data]:
            yield graph  # full batch: no order, no augmentation, nothing to draw

        meta = {
            "dataset": data.name, "task": "node", "num_nodes": n, "num_edges": int(data.num_edges),
            "num_features": int(data.x.shape[1]), "num_classes": int(data.num_classes),
            "train_size": int(data.train_mask.sum()), "val_size": int(data.val_mask.sum()),
            "test_size": int(data.test_mask.sum()), "feature_layout": str(x.layout).replace("torch.", ""),
        }
        return GraphBundle(train_batches=train_batches, steps_per_epoch=1, samples_per_step=n, meta=meta,
                           task="node", num_features=int(data.x.shape[1]), num_classes=int(data.num_classes),
                           graph=graph)

    def _graph_data(self) -> GraphBundle:
        o = self.data_opts
        td = load_tu(o.name, degree_as_tag=o.degree_as_tag, max_degree=o.max_degree)
        validate_graph(td.graphs[0], num_features=o.num_features, task="graph")
        labels = torch.cat([g.y for g in td.graphs])
        train_ids, test_ids = td.folds[o.fold]
        if o.val_fraction > 0:
            train_ids, val_ids = stratified_holdout(train_ids, labels, o.val_fraction, o.split_seed)
        else:
            val_ids = test_ids
        if train_ids.numel() == 0 or val_ids.numel() == 0:
            raise ValueError(f"{td.name} fold {o.fold}: val_fraction={o.val_fraction} leaves an empty split "
                             f"(train {train_ids.numel()}, val {val_ids.numel()})")
        train = [td.graphs[i] for i in train_ids.tolist()]
        device, bs = self.device, o.batch_size

        def train_batches(generator: torch.Generator) -> Iterator[Batch]:
            for batch in DataLoader(train, batch_size=bs, shuffle=True, generator=generator):
                yield batch.to(device)

        def collate(ids: Tensor) -> list[Batch]:
            graphs = [td.graphs[i] for i in ids.tolist()]
            return [Batch.from_data_list(graphs[i:i + o.eval_batch_size]).to(device)
                    for i in range(0, len(graphs), o.eval_batch_size)]

        eval_batches = {"train": collate(train_ids), "val": collate(val_ids), "test": collate(test_ids)}
        meta = {
            "dataset": td.name, "task": "graph", "num_graphs": len(td), "num_features": td.num_features,
            "num_classes": td.num_classes, "fold": o.fold, "train_size": int(train_ids.numel()),
            "val_size": int(val_ids.numel()), "test_size": int(test_ids.numel()),
            "val_protocol": "holdout" if o.val_fraction > 0 else "test fold (GIN protocol)",
            "avg_nodes": sum(g.num_nodes for g in td.graphs) / len(td),
        }
        return GraphBundle(train_batches=train_batches, steps_per_epoch=-(-len(train) // bs), samples_per_step=bs,
                           meta=meta, task="graph", num_features=td.num_features, num_classes=td.num_classes,
                           eval_batches=eval_batches)

    # ------------------------------------------------------------------ model
    def cell(self, data: GraphBundle) -> GraphCell:
        m = self.model_opts
        return GraphCell(m.width, m.conv, heads=m.heads, norm=m.norm, act=m.act, inject=m.inject,
                         inject_into=m.inject_into, gamma=m.gamma,
                         cached=data.task == "node")

    def build_model(self, data: GraphBundle, spec: BlockSpec) -> GraphModel:
        m = self.model_opts
        if m.norm == "batch" and spec.mode != "explicit":
            raise ValueError(f"model.norm='batch' is only valid with block.mode='explicit', not {spec.mode!r}: one "
                             "BatchNorm's running stats shared by every layer/solver step are wrong at eval; "
                             "use model.norm='layer' or 'none'")
        if self.data_opts.num_features is not None and self.data_opts.num_features != data.num_features:
            raise ValueError(f"data.num_features={self.data_opts.num_features} but the data has "
                             f"{data.num_features} features per node")
        stem = InputStem(data.num_features, m.width, dropout=m.input_dropout, norm=m.stem_norm)
        block = Block(lambda: self.cell(data), spec)
        head = make_head(data.task, m.width, data.num_classes, m.dropout, m.head)
        model = GraphModel(stem, block, head, task=data.task, pool=m.pool, dropout=m.dropout,
                           cell_dropout=m.cell_dropout, z0=m.z0)
        return model.to(self.device)

    # ------------------------------------------------------------------ steps
    def training_step(self, model: nn.Module, batch: Any) -> StepOutput:
        _core(model).eval_cache = None  # the weights are about to change
        logits, stats = model(batch)
        if self.task == "node":
            mask = batch.train_mask
            logits, y = logits[mask], batch.y[mask]
        else:
            y = batch.y
        loss = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(-1) == y).float().mean().item()
        return StepOutput(loss=loss, stats=stats, metrics={"train/acc": acc})

    def evaluate(self, model: nn.Module, data: GraphBundle, split: str) -> dict[str, float]:
        """Accuracy and mean cross-entropy on ``split`` (train, val or test), plus the block's forward
        NFE and relative residual. Node tasks run one full-graph forward, shared by the splits until the
        model's weights change.

        Model selection by validation: every "val" evaluation also scores the test split and keeps the
        test accuracy of the best validation accuracy so far (ties: lower val loss), per model; a "test"
        evaluation reports it as ``test/acc_at_best_val`` (with ``test/best_val_acc``), next to the final
        model's ``test/acc``. The record lives on the model (``GraphModel.best_val``, saved in its state dict),
        so a resumed run continues it.
        """
        _choice("split", split, SPLITS)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = self._score(model, data, split)
                if split in ("val", "test"):
                    other = self._score(model, data, "test" if split == "val" else "val")
                    val, test = (out, other) if split == "val" else (other, out)
                    best = self._update_best(model, val, test)
                    if split == "test":
                        out["acc_at_best_val"], out["best_val_acc"] = best["test_acc"], best["val_acc"]
        finally:
            model.train(was_training)
        return {f"{split}/{k}": float(v) for k, v in out.items()}

    def _score(self, model: nn.Module, data: GraphBundle, split: str) -> dict[str, float]:
        """acc, loss, nfe, rel_residual of the eval-mode model on one split (no grad, eval mode set)."""
        if data.task == "node":
            logits, stats = self._node_eval(model, data)
            mask = data.graph[f"{split}_mask"]
            logits, y = logits[mask], data.graph.y[mask]
            return {"acc": (logits.argmax(-1) == y).float().mean().item(), "loss": F.cross_entropy(logits, y).item(),
                    "nfe": float(stats.nfe_forward), "rel_residual": float(stats.rel_residual)}
        loss_sum = correct = count = nfe = rel = 0.0
        batches = data.eval_batches[split]
        for b in batches:
            logits, stats = model(b)
            loss_sum += F.cross_entropy(logits, b.y, reduction="sum").item()
            correct += (logits.argmax(-1) == b.y).sum().item()
            count += b.num_graphs
            nfe += stats.nfe_forward / len(batches)
            rel += stats.rel_residual / len(batches)
        return {"acc": correct / count, "loss": loss_sum / count, "nfe": nfe, "rel_residual": rel}

    @staticmethod
    def _update_best(model: nn.Module, val: dict[str, float], test: dict[str, float]) -> dict[str, float]:
        """Keep on the model the test accuracy at the best (val acc, -val loss) seen so far; returns the record."""
        core = _core(model)
        best = core.best_val
        if best is None or (val["acc"], -val["loss"]) > (best["val_acc"], -best["val_loss"]):
            core.best_val = {"val_acc": val["acc"], "val_loss": val["loss"], "test_acc": test["acc"]}
        return core.best_val

    @staticmethod
    def _node_eval(model: nn.Module, data: GraphBundle) -> tuple[Tensor, Any]:
        """Eval-mode logits of the whole graph, reused while no parameter or buffer has changed."""
        core, key = _core(model), weights_key(model)
        cache = core.eval_cache
        if cache is not None and cache[0]() is data and cache[1] == key:
            return cache[2], cache[3]
        logits, stats = model(data.graph)
        core.eval_cache = (weakref.ref(data), key, logits, stats)
        return logits, stats


def _core(model: nn.Module) -> GraphModel:
    """The GraphModel behind a torch.compile wrapper."""
    core = getattr(model, "_orig_mod", model)
    if not isinstance(core, GraphModel):
        raise TypeError(f"expected the GraphModel that build_model returned, got {type(core).__name__}")
    return core


def stratified_holdout(ids: Tensor, labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split ``ids`` into (kept, held out) with round(fraction * n_c) held out of every class c.

    Shapes: ids (n,) int64, labels (num_graphs,) int64 -> (n - k,), (k,) int64, both sorted
    """
    gen = torch.Generator().manual_seed(int(seed))
    y = labels[ids]
    held = []
    for c in torch.unique(y).tolist():
        members = ids[y == c]
        members = members[torch.randperm(members.numel(), generator=gen)]
        held.append(members[: round(fraction * members.numel())])
    out = torch.cat(held).sort().values
    keep = ids[~torch.isin(ids, out)].sort().values
    return keep, out
