"""TU graph-classification benchmarks in the GIN/DGCNN text format, with their 10 standard folds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from tiedlab.paradigms.paths import DataFormatError, DataNotFoundError, data_path, read_text_file, verify_files

from .data_validate import validate_graph

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
    # one-hot over the tags of every graph, test folds included (as GIN's and PyG's TU loaders do): a tag seen only
    # in held-out graphs gets a column whose input weights training never moves (NCI1 fold 1: 2 in val, 2 in test)
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
