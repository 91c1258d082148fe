"""Checks every graph passes, node task or graph task: shapes, dtypes and node ids."""

from __future__ import annotations

from typing import Literal

import torch
from torch_geometric.data import Data

MASKS = ("train_mask", "val_mask", "test_mask")


def validate_graph(
    data: Data, *, num_features: int | None = None, task: Literal["node", "graph"] = "node"
) -> None:
    """Check a graph's tensors and raise ``ValueError`` naming what is wrong.

    ``task="node"``: y has one label per node; ``task="graph"``: y holds a single graph label.
    ``num_features`` (the model's input size, config key ``data.num_features``) must equal x's F.

    Shapes: x (N, F), edge_index (2, E) int64 with 0 <= id < N, y (N,) or (1,), masks (N,) bool.
    """
    if task not in ("node", "graph"):
        raise ValueError(f"task must be 'node' or 'graph', got {task!r}")
    x = getattr(data, "x", None)
    if x is None:
        raise ValueError("graph has no node features x (expected a tensor of shape (N, F))")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, F), got shape {tuple(x.shape)}")
    n, f = int(x.shape[0]), int(x.shape[1])
    if num_features is not None and f != num_features:
        raise ValueError(
            f"x has {f} features per node but num_features={num_features} (config key "
            f"data.num_features, the model's input size); set data.num_features={f}"
        )

    ei = getattr(data, "edge_index", None)
    if ei is None:
        raise ValueError("graph has no edge_index (expected an int64 tensor of shape (2, E))")
    if ei.dtype != torch.int64:
        raise ValueError(f"edge_index must be int64, got {ei.dtype}")
    if ei.dim() != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(ei.shape)}")
    if ei.numel():
        lo, hi = int(ei.min()), int(ei.max())
        if lo < 0:
            raise ValueError(f"edge_index has a negative node id {lo}; ids must be in [0, num_nodes={n})")
        if hi >= n:
            raise ValueError(
                f"edge_index has node id {hi} (max id found) but num_nodes={n}; ids must be in [0, {n})"
            )

    y = getattr(data, "y", None)
    if y is not None:
        expected = 1 if task == "graph" else n
        if y.dim() == 0 or int(y.shape[0]) != expected:
            what = "one graph label" if task == "graph" else f"one label per node (num_nodes={n})"
            raise ValueError(f"y has shape {tuple(y.shape)} but {task}-level data needs {what}")
    for m in MASKS:
        mask = getattr(data, m, None)
        if mask is None:
            continue
        if mask.dtype != torch.bool:
            raise ValueError(f"{m} must be bool, got {mask.dtype}")
        if mask.dim() != 1 or int(mask.shape[0]) != n:
            raise ValueError(f"{m} has shape {tuple(mask.shape)} but num_nodes={n}")

