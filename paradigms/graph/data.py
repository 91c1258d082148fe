"""Graph datasets: Planetoid citation graphs (node classification) and TU benchmarks (graph classification).

Everything is read from the read-only data root (``$TIEDLAB_DATA``, see :mod:`tiedlab.paradigms.paths`).
The only thing ever written is PyG's own processed copy of Planetoid (``source="pyg"``), which goes to the
cache dir (``$TIEDLAB_CACHE``), never next to the data. Every file read is first checked against the
root's ``SHA256SUMS`` when it has one (``DataIntegrityError``); a file that cannot be parsed raises
``DataFormatError`` naming it. Both are ``ValueError`` subclasses.

Public API:
    load_planetoid(name, *, source="npz", download=False, normalize_features=False) -> Data
    sparse_features(x, layout="coo") -> sparse Tensor
    normalize_rows(x) -> Tensor
    validate_graph(data, *, num_features=None, task="node") -> None
    load_tu(name, *, degree_as_tag=None, max_degree=None) -> TUData
    tu_loaders(data, fold, batch_size, seed) -> (train DataLoader, test DataLoader)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from tiedlab.paradigms.paths import (
    DataFormatError,
    DataNotFoundError,
    cache_dir,
    data_path,
    data_root,
    read_npz,
    read_text_file,
    verify_files,
)

__all__ = [
    "PLANETOID_NAMES",
    "TU_NAMES",
    "TUData",
    "load_planetoid",
    "load_tu",
    "normalize_rows",
    "sparse_features",
    "tu_loaders",
    "validate_graph",
]

# ----------------------------------------------------------------------------------------------------------
# Planetoid
# ----------------------------------------------------------------------------------------------------------

#: lower-case name -> PyG's spelling (also the folder name PyG uses under its root)
PLANETOID_NAMES: dict[str, str] = {"cora": "Cora", "citeseer": "CiteSeer"}
_PLANETOID_RAW = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
_MASKS = ("train_mask", "val_mask", "test_mask")


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
    arrays = read_npz(path, ("x", "y", "edge_index", *_MASKS), fix=fix)
    return Data(
        x=torch.from_numpy(arrays["x"]).to(torch.float32),
        y=torch.from_numpy(arrays["y"]).to(torch.int64),
        edge_index=torch.from_numpy(arrays["edge_index"]).to(torch.int64),
        **{m: torch.from_numpy(arrays[m]).to(torch.bool) for m in _MASKS},
    )


def _copy_if_changed(src: Path, dst: Path) -> bool:
    """Copy ``src`` to ``dst`` (atomically) unless an identical-looking copy is there. True if copied."""
    if dst.exists():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and int(s.st_mtime) == int(d.st_mtime):
            return False
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    tmp.replace(dst)
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
            f"<data root>/planetoid/raw/, pass download=True to let PyG download them into {raw_cache}, "
            "or use source='npz'."
        )
    # else: PyG finds the raw files already in the cache, or downloads them there.
    dataset = Planetoid(str(root), pyg_name, split="public", force_reload=copied)
    data = dataset[0]
    return Data(
        x=data.x.to(torch.float32),
        y=data.y.to(torch.int64),
        edge_index=data.edge_index.to(torch.int64),
        **{m: data[m].to(torch.bool) for m in _MASKS},
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


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


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
    for m in _MASKS:
        mask = getattr(data, m, None)
        if mask is None:
            continue
        if mask.dtype != torch.bool:
            raise ValueError(f"{m} must be bool, got {mask.dtype}")
        if mask.dim() != 1 or int(mask.shape[0]) != n:
            raise ValueError(f"{m} has shape {tuple(mask.shape)} but num_nodes={n}")


# ----------------------------------------------------------------------------------------------------------
# TU graph classification (GIN / DGCNN text format)
# ----------------------------------------------------------------------------------------------------------

TU_NAMES: tuple[str, ...] = (
    "MUTAG", "PTC", "PROTEINS", "ENZYMES", "NCI1", "NCI109", "IMDBBINARY", "IMDBMULTI",
)  # fmt: skip
_TU_ALIASES = {"PTCMR": "PTC"}
NUM_FOLDS = 10


@dataclass
class TUData:
    """A TU benchmark: graphs, sizes and the 10 standard (GIN/DGCNN) train/test folds.

    ``folds[k] = (train_ids, test_ids)`` for k = 0..9 (files ``*_idx-{k+1}.txt``); each fold's train
    and test ids partition the graphs. The test sets are disjoint across folds but do NOT always cover
    every graph (MUTAG, PTC, PROTEINS and NCI109 leave N mod 10 graphs out: see ``never_tested``).

    Shapes: each graph has x (n, num_features) float32 one-hot, edge_index (2, e) int64, y (1,) int64;
        fold ids are (k,) int64 graph indices.
    """

    graphs: list[Data]
    num_features: int
    num_classes: int
    folds: list[tuple[Tensor, Tensor]]
    name: str = ""

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def never_tested(self) -> Tensor:
        """Graph ids that are in no fold's test set. Shapes: (k,) int64."""
        seen = torch.zeros(len(self.graphs), dtype=torch.bool)
        for _, test in self.folds:
            seen[test] = True
        return torch.nonzero(~seen).flatten()


def _tu_name(name: str) -> str:
    key = str(name).upper().replace("-", "").replace("_", "")
    key = _TU_ALIASES.get(key, key)
    if key not in TU_NAMES:
        raise ValueError(
            f"unknown TU dataset {name!r}; valid names (case-insensitive, '-' optional): {list(TU_NAMES)}"
        )
    return key


def _parse_gin_txt(path: Path) -> tuple[list[int], list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Parse the GIN text format.

    Returns (nodes per graph, graph labels, node tags (total_nodes,), edge src, edge dst) where the
    edges use global node ids (graph offset + local id) exactly as listed in the file.
    """
    fix = f"copy {path.parent.name}/{path.name} again from the shared data folder"
    lines = read_text_file(path, fix=fix).split("\n")
    nlines = len(lines)

    def bad(lineno: int, msg: str) -> DataFormatError:  # lineno is 1-based
        return DataFormatError(f"{path}: line {lineno}: {msg}. Fix: {fix}")

    def ints(i: int) -> list[int]:
        if i >= nlines or not lines[i].strip():
            raise bad(i + 1, "unexpected end of file (truncated?)")
        try:
            return [int(t) for t in lines[i].split()]
        except ValueError:
            raise bad(i + 1, f"expected integers, got {lines[i].strip()[:80]!r}") from None

    head = ints(0)
    if len(head) != 1 or head[0] < 0:
        raise bad(1, f"expected the number of graphs, got {lines[0].strip()[:80]!r}")
    num_graphs = head[0]

    sizes: list[int] = []
    labels: list[int] = []
    tags: list[int] = []
    src: list[int] = []
    dst: list[int] = []
    i, offset = 1, 0
    for g in range(num_graphs):
        row = ints(i)
        if len(row) != 2 or row[0] < 0:
            raise bad(i + 1, f"graph {g}: expected 'n label', got {lines[i].strip()[:80]!r}")
        n, label = row
        i += 1
        sizes.append(n)
        labels.append(label)
        for v in range(n):
            row = ints(i)
            if len(row) < 2 or row[1] < 0 or len(row) != 2 + row[1]:
                raise bad(
                    i + 1,
                    f"graph {g} node {v}: expected 'tag m nbr_1 .. nbr_m' (2+m integers), "
                    f"got {len(row)} values",
                )
            tags.append(row[0])
            nbrs = row[2:]
            if nbrs:
                if min(nbrs) < 0 or max(nbrs) >= n:
                    badid = min(nbrs) if min(nbrs) < 0 else max(nbrs)
                    raise bad(
                        i + 1, f"graph {g} node {v}: neighbour id {badid} out of range [0, {n})"
                    )
                src.extend([offset + v] * len(nbrs))
                dst.extend(offset + u for u in nbrs)
            i += 1
        offset += n
    for j in range(i, nlines):
        if lines[j].strip():
            raise bad(j + 1, f"unexpected content after the last of {num_graphs} graphs")
    return (
        sizes,
        labels,
        np.asarray(tags, dtype=np.int64),
        np.asarray(src, dtype=np.int64),
        np.asarray(dst, dtype=np.int64),
    )


def _read_ids(path: Path) -> np.ndarray:
    """The integer graph ids of one fold file, or DataFormatError naming it."""
    fix = "copy the 10fold_idx folder again from the shared data folder"
    try:
        return np.asarray([int(t) for t in read_text_file(path, fix=fix).split()], dtype=np.int64)
    except DataFormatError:
        raise
    except ValueError as err:
        raise DataFormatError(f"{path}: expected one integer graph id per line ({err}). Fix: {fix}") from None


def _line_of(ids: np.ndarray, value: int) -> int:
    return int(np.flatnonzero(ids == value)[0]) + 1


def _fold_files(folder: Path) -> list[Path]:
    """The 20 fold files ``{train,test}_idx-{1..10}.txt``, all present and checked against SHA256SUMS."""
    paths = [folder / f"{split}_idx-{k}.txt" for k in range(1, NUM_FOLDS + 1) for split in ("train", "test")]
    for path in paths:
        if not path.is_file():
            raise DataNotFoundError(f"missing fold file {path}")
    verify_files(paths)
    return paths


def _read_folds(folder: Path, num_graphs: int) -> list[tuple[Tensor, Tensor]]:
    folds: list[tuple[Tensor, Tensor]] = []
    tested_in = np.full(num_graphs, -1, dtype=np.int64)
    _fold_files(folder)
    for k in range(1, NUM_FOLDS + 1):
        parts = {}
        for split in ("train", "test"):
            path = folder / f"{split}_idx-{k}.txt"
            ids = _read_ids(path)
            out = ids[(ids < 0) | (ids >= num_graphs)]
            if out.size:
                raise DataFormatError(
                    f"{path}: line {_line_of(ids, out[0])}: graph id {int(out[0])} out of range "
                    f"[0, {num_graphs}) (the dataset has {num_graphs} graphs)"
                )
            uniq, counts = np.unique(ids, return_counts=True)
            if (counts > 1).any():
                dup = int(uniq[counts > 1][0])
                raise DataFormatError(f"{path}: graph id {dup} is listed {int(counts[counts > 1][0])} times")
            parts[split] = (path, ids)
        (train_path, train), (test_path, test) = parts["train"], parts["test"]
        both = np.intersect1d(train, test)
        if both.size:
            raise DataFormatError(
                f"{test_path}: graph id {int(both[0])} is in both {train_path.name} and {test_path.name}"
            )
        if train.size + test.size != num_graphs:
            missing = np.setdiff1d(np.arange(num_graphs), np.concatenate([train, test]))
            raise DataFormatError(
                f"{train_path} + {test_path.name}: graph id {int(missing[0])} is in neither "
                f"({missing.size} of {num_graphs} graphs missing); train and test must partition the graphs"
            )
        prev = tested_in[test]
        if (prev >= 0).any():
            j = int(np.flatnonzero(prev >= 0)[0])
            raise DataFormatError(
                f"{test_path}: graph id {int(test[j])} is also in test_idx-{int(prev[j])}.txt; "
                "test folds must be disjoint"
            )
        tested_in[test] = k
        folds.append((torch.from_numpy(train), torch.from_numpy(test)))
    return folds


def load_tu(name: str, *, degree_as_tag: bool | None = None, max_degree: int | None = None) -> TUData:
    """Load a TU benchmark from ``<root>/tu-gin/<NAME>/<NAME>.txt`` with its 10 standard folds.

    Node features are one-hot node tags over the dataset's sorted tag vocabulary (the same width as
    GIN's; GIN orders columns by first appearance). IMDB graphs have a single tag, so for them
    (``degree_as_tag=None`` -> auto) the tag is the node degree, as GIN's ``--degree_as_tag``: one-hot
    over the sorted distinct degrees seen in the dataset (IMDBBINARY F=65, IMDBMULTI F=59). GIN does
    not cap degrees; pass ``max_degree`` to clip degrees above it first. Graph labels are remapped to
    0..C-1 with ``np.unique`` (MUTAG stores {0, 2}). Edges are made undirected (both directions) and
    de-duplicated. Parsing NCI1 (4110 graphs) takes well under a second; nothing is cached.

    Names (case-insensitive, '-'/'_' ignored, PTC_MR = PTC): MUTAG, PTC, PROTEINS, ENZYMES, NCI1,
    NCI109, IMDBBINARY, IMDBMULTI.

    Shapes: graphs[i].x (n_i, F) float32, .edge_index (2, e_i) int64, .y (1,) int64.

    Raises:
        ValueError: unknown ``name`` (lists the valid ones) or a bad ``max_degree``.
        DataNotFoundError: the dataset file or a fold file is missing.
        DataIntegrityError: a file read differs from its line in ``<root>/SHA256SUMS``.
        DataFormatError: a file is empty, not UTF-8 or not in the GIN format (names file and line).
    """
    key = _tu_name(name)
    path = data_path("tu-gin", key, f"{key}.txt")
    fold_dir = data_path("tu-gin", key, "10fold_idx")
    sizes, labels, tags, src, dst = _parse_gin_txt(path)
    num_graphs = len(sizes)
    total = int(sum(sizes))

    # undirected, de-duplicated, sorted by (src, dst) over global ids; graphs stay contiguous.
    both_src = np.concatenate([src, dst])
    both_dst = np.concatenate([dst, src])
    keys = np.unique(both_src * max(total, 1) + both_dst)
    esrc, edst = keys // max(total, 1), keys % max(total, 1)

    if degree_as_tag is None:
        degree_as_tag = key.startswith("IMDB")
    if degree_as_tag:
        tags = np.bincount(esrc, minlength=total).astype(np.int64)
    if max_degree is not None:
        if not degree_as_tag:
            raise ValueError("max_degree only applies with degree_as_tag=True (IMDB* by default)")
        if max_degree < 0:
            raise ValueError(f"max_degree must be >= 0, got {max_degree}")
        tags = np.minimum(tags, max_degree)
    vocab, tag_idx = np.unique(tags, return_inverse=True)
    num_features = int(vocab.size)
    x_all = torch.zeros(total, num_features, dtype=torch.float32)
    x_all[torch.arange(total), torch.from_numpy(tag_idx.reshape(-1))] = 1.0

    classes, y_all = np.unique(np.asarray(labels, dtype=np.int64), return_inverse=True)
    y_all = torch.from_numpy(y_all.reshape(-1).astype(np.int64))

    offsets = np.zeros(num_graphs + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    edge_cut = np.searchsorted(esrc, offsets)  # edges of graph g: [edge_cut[g], edge_cut[g+1])
    ei_all = torch.from_numpy(np.stack([esrc, edst]))
    graphs: list[Data] = []
    for g in range(num_graphs):
        a, b = int(offsets[g]), int(offsets[g + 1])
        ea, eb = int(edge_cut[g]), int(edge_cut[g + 1])
        graphs.append(Data(x=x_all[a:b], edge_index=ei_all[:, ea:eb] - a, y=y_all[g : g + 1]))
    for g in graphs:  # ~15 us a graph
        validate_graph(g, num_features=num_features, task="graph")

    folds = _read_folds(fold_dir, num_graphs)
    return TUData(
        graphs=graphs,
        num_features=num_features,
        num_classes=int(classes.size),
        folds=folds,
        name=key,
    )


def tu_loaders(
    data: TUData, fold: int, batch_size: int, seed: int
) -> tuple[DataLoader, DataLoader]:
    """PyG DataLoaders (train shuffled with a ``seed``-ed generator, test in order) for one fold.

    Shapes: each batch has x (sum n_i, F), edge_index (2, sum e_i), y (B,), batch (sum n_i,).
    """
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < len(data.folds):
        raise ValueError(f"fold must be an int in 0..{len(data.folds) - 1}, got {fold!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    train_ids, test_ids = data.folds[fold]
    train = [data.graphs[i] for i in train_ids.tolist()]
    test = [data.graphs[i] for i in test_ids.tolist()]
    gen = torch.Generator().manual_seed(int(seed))
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
        DataLoader(test, batch_size=batch_size, shuffle=False),
    )
