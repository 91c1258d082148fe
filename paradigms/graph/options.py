"""The graph paradigm's ``data`` and ``model`` config sections, validated on construction, and which task a
dataset name is (``task_of``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import check_choice, check_int, check_range
from .data import NUM_FOLDS, PLANETOID_NAMES, TU_NAMES
from .model import ACTS, CONVS, HEADS, INJECT_INTO, INJECTS, NORMS, POOLS, STEM_NORMS

__all__ = ["SPARSE_CHOICES", "GraphDataOptions", "GraphModelOptions", "task_of"]

SPARSE_CHOICES = ("auto", "coo", "csr", "dense")


def task_of(name: str) -> str:
    """'node' for a Planetoid name, 'graph' for a TU name (case-insensitive, '-'/'_' ignored)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key in PLANETOID_NAMES:
        return "node"
    if key.upper() in TU_NAMES or key.upper() == "PTCMR":
        return "graph"
    raise ValueError(f"unknown graph dataset {name!r}; valid names: node tasks {sorted(PLANETOID_NAMES)}, "
                     f"graph tasks {list(TU_NAMES)}")


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
        check_choice("data.source", self.source, ("npz", "pyg"))
        check_int("data.fold", self.fold, 0, NUM_FOLDS - 1)
        check_range("data.val_fraction", self.val_fraction, 0, 1, high_open=True)
        check_int("data.batch_size", self.batch_size)
        check_int("data.eval_batch_size", self.eval_batch_size)
        check_int("data.num_features", self.num_features, allow_none=True)


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
        embed_width: width of the input stem and the head, the same at every cell width (two bias-free linear maps
            connect it to the cell: ``model.GraphModel``); None: the cell's width (no maps). Arms that differ in
            cell width (a FLOP-matched mask comparison) then differ in the cell and those maps only. What reaches
            the cell is still ``width``-dimensional: with ``stem_norm=none`` the stem and its map compose to one
            linear map of rank <= width, and a linear or GCNConv head after the map back is one as well, so there
            the option changes the parameters (and their count), not the functions; the stem's LayerNorm and a
            graph task's MLP head sit between and do add capacity.
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
    embed_width: int | None = None

    def __post_init__(self) -> None:
        check_int("model.width", self.width)
        check_int("model.embed_width", self.embed_width, allow_none=True)
        check_choice("model.conv", self.conv, CONVS)
        check_choice("model.norm", self.norm, NORMS)
        check_choice("model.act", self.act, ACTS)
        check_choice("model.inject", self.inject, INJECTS)
        check_choice("model.inject_into", self.inject_into, INJECT_INTO)
        check_choice("model.stem_norm", self.stem_norm, STEM_NORMS)
        check_choice("model.z0", self.z0, ("zeros", "input"))
        check_choice("model.sparse_input", self.sparse_input, SPARSE_CHOICES)
        check_choice("model.pool", self.pool, POOLS)
        check_choice("model.head", self.head, HEADS)
        if self.conv == "gat" and (self.heads < 1 or self.width % self.heads):
            raise ValueError(f"model.heads={self.heads} must be >= 1 and divide model.width={self.width}")
        for key in ("dropout", "input_dropout", "cell_dropout"):
            check_range(f"model.{key}", getattr(self, key), 0, 1, high_open=True)
        check_range("model.gamma", self.gamma, 0, low_open=True)
