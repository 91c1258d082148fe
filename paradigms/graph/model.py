"""The graph cell and the model around the core block: input stem -> Block(cell) -> head (with
``model.embed_width``, two bias-free maps join a stem and head of that width to a cell of another).

The cell is ``z' = act(norm(gamma * conv(drop * (z + U x), edge_index)))`` (``model.inject_into=conv``, the default;
``output``: ``act(norm(gamma * conv(drop * z, edge_index) + U x))``) with ``conv`` one of PyG's
GCNConv, SAGEConv, GINConv (2-layer MLP) or GATConv. ``x`` is the input already projected to the
width by the stem (computed once per forward, not once per layer), ``U`` a Linear(d, d) or the identity.

The block state is the whole graph as ONE sample: ``(1, N, d)``. Nodes are coupled through the
edges, so the DEQ solvers (Anderson, Broyden) mix and stop on the whole system, not node by node. For graph
tasks that system is a whole batch of disjoint graphs (as in IGNN), so a graph's DEQ output depends on the
other graphs of its batch, within the solver's tolerance: on MUTAG (GIN, width 32, random init, 18 test graphs)
logits batched vs one graph at a time differed by up to 2e-3 to 6e-3 at a relative residual of 5e-4 to 9e-4.
Solving per node (solver and grad option ``sample_dims=2``: per-node mixing and holding, never across graphs)
made them agree to 1e-6 at the same residual, for about twice the solver's iterations (30, its max_iter, against
16-17), so it is an option, not the default.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv, global_add_pool, global_mean_pool

from tiedlab.core import Block, BlockStats
from tiedlab.paradigms.base import WeightsCache

CONVS = ("gcn", "sage", "gin", "gat")
NORMS = ("none", "layer", "batch")
ACTS = ("relu", "tanh", "elu", "gelu", "none")
INJECTS = ("linear", "identity")
INJECT_INTO = ("output", "conv")
STEM_NORMS = ("layer", "none")
POOLS = ("sum", "mean")
HEADS = ("linear", "conv")

_ACT_FNS = {"relu": F.relu, "tanh": torch.tanh, "elu": F.elu, "gelu": F.gelu, "none": lambda t: t}


def make_conv(kind: str, width: int, *, heads: int = 1, cached: bool = False) -> nn.Module:
    """A PyG conv mapping width -> width.

    ``cached`` (GCN only) keeps the normalised adjacency after the first call: right for one fixed
    graph (node tasks), wrong for mini-batches of different graphs.

    Shapes: (N, width), edge_index (2, E) -> (N, width)
    """
    if kind == "gcn":
        return GCNConv(width, width, cached=cached)
    if kind == "sage":
        return SAGEConv(width, width)
    if kind == "gin":
        mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        return GINConv(mlp, train_eps=True)
    if kind == "gat":
        if heads < 1 or width % heads:
            raise ValueError(f"gat needs heads >= 1 dividing width={width}, got heads={heads}")
        return GATConv(width, width // heads, heads=heads, concat=True)
    raise ValueError(f"conv {kind!r} is not valid; choose one of {CONVS}")


def make_norm(kind: str, width: int) -> nn.Module:
    """Normalisation of the cell's pre-activation: per node ("layer"), or over every node of the batch ("batch",
    explicit blocks only). Shapes: (N, width) -> (N, width)"""
    if kind == "none":
        return nn.Identity()
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "batch":
        return nn.BatchNorm1d(width)
    raise ValueError(f"norm {kind!r} is not valid; choose one of {NORMS}")


class GraphCell(nn.Module):
    """One message-passing layer with input injection, the f(z, x, **ctx) the core block drives.

    ``inject_into="output"``: ``z' = act(norm(gamma * conv(drop * z, edge_index) + U x))``;
    ``inject_into="conv"``: ``z' = act(norm(gamma * conv(drop * (z + U x), edge_index)))``, the injection
    propagated with the state (IGNN-style: every layer's output is fully smoothed). ``drop`` is a variational dropout
    mask drawn once per model forward (the same at every layer and solver step, so a DEQ map stays
    deterministic). ``gamma < 1`` with the block's spectral norm makes a GCN cell contractive.

    Shapes: z, x: (1, N, width) or (N, width); edge_index: (2, E) int64; drop: like z or None -> like z
    """

    def __init__(self, width: int, conv: str = "gcn", *, heads: int = 1, norm: str = "layer",
                 act: str = "relu", inject: str = "linear", inject_into: str = "output", gamma: float = 1.0,
                 cached: bool = False):
        super().__init__()
        if inject_into not in INJECT_INTO:
            raise ValueError(f"inject_into {inject_into!r} is not valid; choose one of {INJECT_INTO}")
        if act not in ACTS:
            raise ValueError(f"act {act!r} is not valid; choose one of {ACTS}")
        if inject not in INJECTS:
            raise ValueError(f"inject {inject!r} is not valid; choose one of {INJECTS}")
        self.width = width
        self.gamma = float(gamma)
        self.act_name = act
        self.inject_into = inject_into
        self.conv = make_conv(conv, width, heads=heads, cached=cached)
        self.inject = nn.Linear(width, width) if inject == "linear" else nn.Identity()
        self.norm = make_norm(norm, width)

    def not_weights(self) -> list[str]:
        """GAT's attention vectors ((1, heads, C)): not weight matrices, so neither masked nor normed."""
        return [n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in ("att_src", "att_dst", "att_edge")]

    def forward(self, z: Tensor, x: Tensor, edge_index: Tensor, drop: Tensor | None = None) -> Tensor:
        h = z.reshape(-1, self.width)
        u = self.inject(x.reshape(-1, self.width))
        if self.inject_into == "conv":
            h = h + u
        if drop is not None:
            h = h * drop.reshape(-1, self.width)
        out = self.conv(h, edge_index)
        if self.gamma != 1.0:
            out = out * self.gamma
        if self.inject_into == "output":
            out = out + u
        return _ACT_FNS[self.act_name](self.norm(out)).view(z.shape)

    def extra_repr(self) -> str:
        return f"width={self.width}, act={self.act_name}, inject_into={self.inject_into}, gamma={self.gamma:g}"


class InputStem(nn.Module):
    """Dropout on the raw features, one Linear to the width, then (``norm="layer"``) a LayerNorm.

    Bag-of-words features (Cora: 98.7% zeros) are kept as a sparse COO/CSR tensor: dropout acts on
    the stored values and ``torch.sparse.mm`` does ~80x fewer multiply-adds than a dense matmul.
    The LayerNorm puts the injected input at unit scale per node: row-normalised bag-of-words rows
    project to ~1e-3 (under the Linear's own bias), which leaves a normalised cell's output, and a DEQ's
    fixed point, nearly independent of the node.

    Shapes: x: (N, in_features) dense or sparse -> (N, width)
    """

    def __init__(self, in_features: int, width: int, dropout: float = 0.0, norm: str = "layer"):
        super().__init__()
        if norm not in STEM_NORMS:
            raise ValueError(f"stem norm {norm!r} is not valid; choose one of {STEM_NORMS}")
        self.in_features = in_features
        self.lin = nn.Linear(in_features, width)
        self.norm = nn.LayerNorm(width) if norm == "layer" else nn.Identity()
        self.dropout = float(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"the model expects node features of shape (N, {self.in_features}) but got {tuple(x.shape)}; "
                f"set data.num_features / rebuild the model for this data")
        if x.layout == torch.strided:
            return self.norm(self.lin(F.dropout(x, self.dropout, self.training)))
        if self.training and self.dropout > 0:
            x = _sparse_dropout(x, self.dropout)
        with torch.autocast(x.device.type, enabled=False):  # sparse matmul has no bf16 backward: fp32 under autocast
            return self.norm(torch.sparse.mm(x, self.lin.weight.t()) + self.lin.bias)


def _sparse_dropout(x: Tensor, p: float) -> Tensor:
    """Dropout on the stored values of a sparse COO or CSR matrix. Shapes: (N, F) -> (N, F)"""
    if x.layout == torch.sparse_csr:
        vals = F.dropout(x.values(), p, True)
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), vals, x.shape, check_invariants=False)
    if x.layout == torch.sparse_coo:
        return torch.sparse_coo_tensor(x.indices(), F.dropout(x.values(), p, True), x.shape, is_coalesced=True,
                                       check_invariants=False)
    raise ValueError(f"sparse layout {x.layout} is not supported; use COO or CSR")


class GraphModel(nn.Module):
    """stem [-> proj_in] -> Block over the graph cell [-> proj_out] -> head (node logits, or pooled graph logits).

    ``forward(data)`` takes a PyG ``Data``/``Batch`` with ``x``, ``edge_index`` (and ``batch`` for graph
    tasks) and returns ``(logits, BlockStats)``. ``proj_in``/``proj_out`` (both or neither) map the stem's width
    to the cell's and back, so that the stem and the head keep one width whatever the cell's
    (``model.embed_width``); ``z0="input"`` starts the block from the mapped input.

    Shapes: data.x (N, F) -> logits (N, C) for task "node", (num_graphs, C) for task "graph"
    """

    def __init__(self, stem: InputStem, block: Block, head: nn.Module, *, task: str, pool: str = "sum",
                 dropout: float = 0.0, cell_dropout: float = 0.0, z0: str = "zeros",
                 proj_in: nn.Module | None = None, proj_out: nn.Module | None = None):
        super().__init__()
        if (proj_in is None) != (proj_out is None):
            raise ValueError("proj_in and proj_out come together (the stem's width to the cell's and back) or not at all")
        if task not in ("node", "graph"):
            raise ValueError(f"task must be 'node' or 'graph', got {task!r}")
        if pool not in POOLS:
            raise ValueError(f"pool {pool!r} is not valid; choose one of {POOLS}")
        if z0 not in ("zeros", "input"):
            raise ValueError(f"z0 {z0!r} is not valid; choose one of ('zeros', 'input')")
        self.stem, self.proj_in, self.block, self.proj_out, self.head = stem, proj_in, block, proj_out, head
        self.task, self.pool, self.z0 = task, pool, z0
        self.dropout, self.cell_dropout = float(dropout), float(cell_dropout)
        # model selection by validation (the graph adapter's evaluate): {"val_acc", "val_loss", "test_acc"} of
        # the best validation so far; extra state, so a checkpoint and a resumed run carry it
        self.best_val: dict[str, float] | None = None
        # the last node-task eval forward (the adapter's cache; not state, cleared by each training step)
        self.eval_cache = WeightsCache()

    def get_extra_state(self) -> dict[str, Any]:
        return {"best_val": None if self.best_val is None else dict(self.best_val)}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints written before the record was saved have no extra state: load them with no record
        state_dict.setdefault(prefix + "_extra_state", {"best_val": None})
        super()._load_from_state_dict(state_dict, prefix, *args)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "best_val" not in state:
            raise ValueError(f"GraphModel extra state must be a dict with 'best_val', got {state!r}")
        self.best_val = None if state["best_val"] is None else dict(state["best_val"])

    def forward(self, data: Any) -> tuple[Tensor, BlockStats]:
        x = self.stem(data.x)
        if self.proj_in is not None:
            x = self.proj_in(x)
        x = x.unsqueeze(0)  # (1, N, d): the whole graph is one sample of the block
        ctx: dict[str, Tensor] = {"edge_index": data.edge_index}
        if self.training and self.cell_dropout > 0:
            keep = 1.0 - self.cell_dropout
            ctx["drop"] = torch.bernoulli(torch.full_like(x, keep)) / keep
        z, stats = self.block(x, z0=x if self.z0 == "input" else None, **ctx)
        z = z.squeeze(0)
        if self.proj_out is not None:
            z = self.proj_out(z)
        if self.task == "node":
            z = F.dropout(z, self.dropout, self.training)
            if isinstance(self.head, GCNConv):  # GCN's last layer: one more propagation, to the classes
                return self.head(z, data.edge_index), stats
        else:  # the head's own dropout acts after pooling
            pool = global_add_pool if self.pool == "sum" else global_mean_pool
            z = pool(z, data.batch, size=data.num_graphs)
        return self.head(z), stats


def make_head(task: str, width: int, num_classes: int, dropout: float, kind: str = "linear") -> nn.Module:
    """Node task: Linear(width, C), or (``kind="conv"``) a cached GCNConv(width, C) that propagates once more,
    like the GCN paper's last layer. Graph task: Linear -> ReLU -> Dropout -> Linear on the pooled state.

    Shapes: (N or num_graphs, width) -> (N or num_graphs, C)
    """
    if kind not in HEADS:
        raise ValueError(f"head {kind!r} is not valid; choose one of {HEADS}")
    if kind == "conv" and task != "node":
        raise ValueError("head 'conv' is only valid for node tasks; graph tasks pool before the head")
    if task == "node":
        return GCNConv(width, num_classes, cached=True) if kind == "conv" else nn.Linear(width, num_classes)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, num_classes))
