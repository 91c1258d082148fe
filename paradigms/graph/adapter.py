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

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from tiedlab.core import Block, BlockSpec
from tiedlab.paradigms.base import (DataBundle, Paradigm, StepOutput, check_choice, off_the_record, unwrap,
                                   weights_key)

from .data import load_planetoid, load_tu, sparse_features, stratified_holdout, validate_graph
from .model import GraphCell, GraphModel, InputStem, make_head
from .options import GraphDataOptions, GraphModelOptions, task_of

SPLITS = ("train", "val", "test")


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
    data_parallel = ("node tasks train on the whole graph as one batch and graph tasks on torch_geometric "
                     "Batches, which do not split into equal slices of tensors")
    scores_train = True  # the training nodes (or graphs), without dropout
    seed_batch = "its batches are torch_geometric graphs (Data, Batch), which do not stack into one tensor per seed"

    @classmethod
    def unread_options(cls, data: Any, model: Any) -> dict[str, str]:
        """train.batch_size always (TU batches hold data.batch_size graphs); on a node task data.batch_size, the
        TU split's and TU features' options (data.fold is refused there: ``__init__``) and model.pool; on a graph
        task the Planetoid reader's options; model.heads unless model.conv=gat."""
        out = {"train.batch_size": "a graph-classification batch holds data.batch_size graphs, and a node task "
                                   "trains on the whole graph"}
        if task_of(str((data or {}).get("name", ""))) == "node":
            out["data.batch_size"] = "a node task trains on the whole graph"
            for key in ("data.val_fraction", "data.split_seed"):
                out[key] = "a node task uses the dataset's fixed public split (these shape the TU folds' val hold-out)"
            out["data.eval_batch_size"] = "a node task evaluates the whole graph at once (TU graphs per batch)"
            for key in ("data.degree_as_tag", "data.max_degree"):
                out[key] = "a Planetoid graph has its own node features (these build TU node features from degrees)"
            out["model.pool"] = "a node task classifies nodes, not pooled graphs"
        else:
            for key in ("data.normalize_features", "data.source"):
                out[key] = "a TU dataset is not read by the Planetoid reader these options configure"
        if (model or {}).get("conv") != "gat":
            out["model.heads"] = f"model.conv={(model or {}).get('conv')} has no attention heads (gat only)"
        return out

    def __init__(self, data: Any, model: Any, device: torch.device | str, seed: int = 0, batch_size: int = 32):
        # TU graph batches use data.batch_size (graphs per batch); node tasks are full-batch.
        super().__init__(data, model, torch.device(device), seed, batch_size)
        self.task = task_of(self.data_opts.name)
        if self.task == "node" and self.data_opts.fold != 0:
            raise ValueError(f"data.fold={self.data_opts.fold} on the node task {self.data_opts.name!r}: its split is "
                             "the dataset's fixed public one, so every fold would train the same run (and a report "
                             "would count the copies as replicates); folds are the TU graph tasks' (use data.fold=0)")
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
        outer = m.width if m.embed_width is None else m.embed_width  # the stem's and the head's width
        stem = InputStem(data.num_features, outer, dropout=m.input_dropout, norm=m.stem_norm)
        maps = ((nn.Linear(outer, m.width, bias=False), nn.Linear(m.width, outer, bias=False))
                if outer != m.width else (None, None))
        block = Block(lambda: self.cell(data), spec)
        head = make_head(data.task, outer, data.num_classes, m.dropout, m.head)
        model = GraphModel(stem, block, head, task=data.task, pool=m.pool, dropout=m.dropout,
                           cell_dropout=m.cell_dropout, z0=m.z0, proj_in=maps[0], proj_out=maps[1])
        return model.to(self.device)

    # ------------------------------------------------------------------ steps
    def training_step(self, model: nn.Module, batch: Any) -> StepOutput:
        unwrap(model, GraphModel).eval_cache.clear()  # the weights are about to change
        logits, stats = model(batch)
        if self.task == "node":
            mask = batch.train_mask
            logits, y = logits[mask], batch.y[mask]
        else:
            y = batch.y
        loss = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(-1) == y).float().mean()  # read by the engine at its log interval
        return StepOutput(loss=loss, stats=stats, metrics={"train/acc": acc})

    def score(self, model: nn.Module, data: GraphBundle, split: str) -> dict[str, float]:
        """Accuracy and mean cross-entropy on ``split`` (train, val or test), plus the block's forward
        NFE and relative residual. Node tasks run one full-graph forward, shared by the splits until the
        model's weights change.

        Model selection by validation: every "val" evaluation also scores the test split and keeps the
        test accuracy of the best validation accuracy so far (ties: lower val loss), per model; a "test"
        evaluation reports it as ``test/acc_at_best_val`` (with ``test/best_val_acc``), next to the final
        model's ``test/acc``. The record lives on the model (``GraphModel.best_val``, saved in its state dict),
        so a resumed run continues it. The other split's forwards are off the record: a graph-classification
        run's ``core/val_*`` statistics are those of the val graphs alone (a node task's one full-graph forward
        is every split's).
        """
        check_choice("split", split, SPLITS)
        out = self._split_scores(model, data, split)
        if split in ("val", "test"):
            with off_the_record():
                other = self._split_scores(model, data, "test" if split == "val" else "val")
            val, test = (out, other) if split == "val" else (other, out)
            best = self._update_best(model, val, test)
            if split == "test":
                out["acc_at_best_val"], out["best_val_acc"] = best["test_acc"], best["val_acc"]
        return {f"{split}/{k}": float(v) for k, v in out.items()}

    def _split_scores(self, model: nn.Module, data: GraphBundle, split: str) -> dict[str, float]:
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
            rel += float(stats.rel_residual) / len(batches)
        return {"acc": correct / count, "loss": loss_sum / count, "nfe": nfe, "rel_residual": rel}

    @staticmethod
    def _update_best(model: nn.Module, val: dict[str, float], test: dict[str, float]) -> dict[str, float]:
        """Keep on the model the test accuracy at the best (val acc, -val loss) seen so far; returns the record."""
        core = unwrap(model, GraphModel)
        best = core.best_val
        if best is None or (val["acc"], -val["loss"]) > (best["val_acc"], -best["val_loss"]):
            core.best_val = {"val_acc": val["acc"], "val_loss": val["loss"], "test_acc": test["acc"]}
        return core.best_val

    @staticmethod
    def _node_eval(model: nn.Module, data: GraphBundle) -> tuple[Tensor, Any]:
        """Eval-mode logits of the whole graph, reused while no parameter or buffer has changed."""
        return unwrap(model, GraphModel).eval_cache.get("graph", data, weights_key(model), lambda: model(data.graph))
