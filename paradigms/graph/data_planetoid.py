"""Planetoid citation graphs (Cora, CiteSeer) with the public split: node classification, full batch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch_geometric.data import Data

from tiedlab.paradigms.paths import DataNotFoundError, cache_dir, data_path, data_root, read_npz, verify_files
from tiedlab.paradigms.rundir import atomic_write_bytes

from .data_validate import MASKS, validate_graph

#: lower-case name -> PyG's spelling (also the folder name PyG uses under its root)
PLANETOID_NAMES: dict[str, str] = {"cora": "Cora", "citeseer": "CiteSeer"}
_PLANETOID_RAW = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def _planetoid_name(name: str) -> str:
    key = str(name).lower().replace("-", "").replace("_", "")
    if key in PLANETOID_NAMES:
        return key
    hint = " (PubMed is not in the data snapshot)" if key == "pubmed" else ""
    raise ValueError(
        f"unknown Planetoid dataset {name!r}{hint}; valid names (case-insensitive): "
        f"{sorted(PLANETOID_NAMES.values())}"
    )


def normalize_rows(x: Tensor) -> Tensor:
    """Row-normalise features exactly like PyG's ``NormalizeFeatures`` (shift by the global min, divide
    each row by its sum clamped to >= 1). Returns a new tensor.

    Shapes: x (N, F) float -> (N, F) float.
    """
    if x.numel() == 0:
        return x.clone()
    x = x - x.min()
    return x.div_(x.sum(dim=-1, keepdim=True).clamp_(min=1.0))


def sparse_features(x: Tensor, layout: Literal["coo", "csr"] = "coo") -> Tensor:
    """A sparse copy of a dense feature matrix, for ``torch.sparse.mm(x_sparse, W)``.

    Planetoid bag-of-words features are very sparse (Cora: 98.7% zeros, 49k non-zeros of 3.9M;
    CiteSeer: 99.1%), so a first layer ``x @ W`` does ~80-120x fewer multiply-adds in sparse form.
    COO (coalesced) is the default: stable, and gradients flow to the dense ``W``; ``"csr"`` is often
    faster for spmm but torch still warns that CSR is beta.

    Shapes: x (N, F) dense -> (N, F) sparse with the same dtype and device.
    """
    if layout not in ("coo", "csr"):
        raise ValueError(f"layout must be 'coo' or 'csr', got {layout!r}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, F), got shape {tuple(x.shape)}")
    if x.layout != torch.strided:
        x = x.to_dense()
    return x.to_sparse_csr() if layout == "csr" else x.to_sparse_coo().coalesce()


def _planetoid_from_npz(key: str) -> Data:
    path = data_path("planetoid", f"{key}.npz")
    fix = f"copy planetoid/{key}.npz again from the shared data folder, or use source='pyg'"
    arrays = read_npz(path, ("x", "y", "edge_index", *MASKS), fix=fix)
    return Data(
        x=torch.from_numpy(arrays["x"]).to(torch.float32),
        y=torch.from_numpy(arrays["y"]).to(torch.int64),
        edge_index=torch.from_numpy(arrays["edge_index"]).to(torch.int64),
        **{m: torch.from_numpy(arrays[m]).to(torch.bool) for m in MASKS},
    )


def _copy_if_changed(src: Path, dst: Path) -> bool:
    """Copy ``src`` to ``dst`` (atomically) unless an identical-looking copy is there. True if copied."""
    if dst.exists():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and int(s.st_mtime) == int(d.st_mtime):
            return False
    atomic_write_bytes(dst, src.read_bytes())
    shutil.copystat(src, dst)  # the times (and mode) the next call compares
    return True


def _planetoid_from_pyg(key: str, download: bool) -> Data:
    from torch_geometric.datasets import Planetoid

    pyg_name = PLANETOID_NAMES[key]
    files = [f"ind.{key}.{suffix}" for suffix in _PLANETOID_RAW]
    root = cache_dir("graph", "planetoid")
    raw_cache = cache_dir("graph", "planetoid", pyg_name, "raw")

    raw_src: Path | None = None
    missing = files
    try:
        raw_src = data_root() / "planetoid" / "raw"
        missing = [f for f in files if not (raw_src / f).is_file()]
    except DataNotFoundError:
        pass  # no data root: the cache or a download may still serve

    copied = False
    if raw_src is not None and not missing:
        verify_files(raw_src / f for f in files)
        for f in files:
            copied |= _copy_if_changed(raw_src / f, raw_cache / f)
    elif not download and not all((raw_cache / f).is_file() for f in files):
        where = (
            [str(raw_src / f) for f in missing]
            if raw_src is not None
            else "no data root ($TIEDLAB_DATA unset or not a directory)"
        )
        raise DataNotFoundError(
            f"source='pyg' needs the raw Planetoid files ind.{key}.*; missing: {where}. Put them in "
            f"<data root>/planetoid/raw/, or use data.source=npz (the shared data's copy); from Python, "
            f"download=True lets PyG download them into {raw_cache}."
        )
    # else: PyG finds the raw files already in the cache, or downloads them there.
    dataset = Planetoid(str(root), pyg_name, split="public", force_reload=copied)
    data = dataset[0]
    return Data(
        x=data.x.to(torch.float32),
        y=data.y.to(torch.int64),
        edge_index=data.edge_index.to(torch.int64),
        **{m: data[m].to(torch.bool) for m in MASKS},
    )


def load_planetoid(
    name: str,
    *,
    source: Literal["npz", "pyg"] = "npz",
    download: bool = False,
    normalize_features: bool = False,
) -> Data:
    """Load Cora or CiteSeer with the standard public split (20 labels per class / 500 val / 1000 test).

    ``source="npz"`` reads ``<root>/planetoid/<name>.npz``; ``source="pyg"`` copies
    ``<root>/planetoid/raw/ind.<name>.*`` into ``cache_dir("graph", "planetoid", <Name>, "raw")`` and
    reads them with ``torch_geometric.datasets.Planetoid`` (processed files land in the cache).
    ``download=True`` (pyg only) lets PyG download into the cache when the data root lacks the raw
    files. Both sources give the same graph (edges may be in a different order).

    Features are dense 0/1 float32 bag-of-words, not normalised unless ``normalize_features=True``
    (row-normalised like PyG's ``NormalizeFeatures``); see :func:`sparse_features` for a sparse view.

    Shapes: x (N, F) float32, y (N,) int64, edge_index (2, E) int64 (both directions, no self loops),
        train_mask/val_mask/test_mask (N,) bool; ``data.num_classes`` is an int.
        Cora N=2708 F=1433 C=7 E=10556; CiteSeer N=3327 F=3703 C=6 E=9104.

    Raises:
        ValueError: unknown ``name`` or ``source``.
        DataNotFoundError: the npz (or, for ``source="pyg"``, a raw file) is missing.
        DataIntegrityError: a file read differs from its line in ``<root>/SHA256SUMS``.
        DataFormatError: the npz is truncated, not an npz, or lacks an array (names the file).
    """
    key = _planetoid_name(name)
    if source == "npz":
        if download:
            raise ValueError("download=True only applies to source='pyg' (the npz files are not online)")
        data = _planetoid_from_npz(key)
    elif source == "pyg":
        data = _planetoid_from_pyg(key, download)
    else:
        raise ValueError(f"unknown source {source!r}; valid choices: 'npz', 'pyg'")
    if normalize_features:
        data.x = normalize_rows(data.x)
    data.num_classes = int(data.y.max()) + 1 if data.y.numel() else 0
    data.name = PLANETOID_NAMES[key]
    validate_graph(data)
    return data

