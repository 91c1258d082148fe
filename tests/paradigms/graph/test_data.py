"""Tests for tiedlab.paradigms.graph.data on the shared data root (read-only) with a tmp cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.datasets import Planetoid
from torch_geometric.transforms import NormalizeFeatures

from tiedlab.paradigms.graph.data import (
    TUData,
    load_planetoid,
    load_tu,
    normalize_rows,
    sparse_features,
    validate_graph,
)
from tiedlab.paradigms import paths
from tiedlab.paradigms.paths import DataFormatError, DataIntegrityError, DataNotFoundError, data_root

DATA = data_root()  # $TIEDLAB_DATA; unset is an error naming the fix, as in the other adapters' tests

PLANETOID = {
    # name: (N, F, C, E, train, val, test)
    "cora": (2708, 1433, 7, 10556, 140, 500, 1000),
    "citeseer": (3327, 3703, 6, 9104, 120, 500, 1000),
}


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path_factory.getbasetemp() / "tiedlab-cache"))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p)] = (st.st_mtime_ns, st.st_size)
    return out


def _edge_set(ei: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, ei.t().tolist()))


def _fake_root(tmp_path: Path, *datasets: str) -> Path:
    """A writable copy of part of the data root (files re-created, so not read-only)."""
    root = tmp_path / "root"
    for ds in datasets:
        src = DATA / ds
        for p in src.rglob("*"):
            if p.is_file():
                dst = root / ds / p.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(p.read_bytes())
    return root


# --------------------------------------------------------------------------------------------------
# Planetoid
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PLANETOID))
def test_planetoid_npz_sizes(name):
    n, f, c, e, ntr, nva, nte = PLANETOID[name]
    d = load_planetoid(name.upper())
    assert d.x.shape == (n, f) and d.x.dtype == torch.float32
    assert d.y.shape == (n,) and d.y.dtype == torch.int64
    assert d.edge_index.shape == (2, e) and d.edge_index.dtype == torch.int64
    assert d.num_classes == c and int(d.y.max()) == c - 1
    assert [int(d[m].sum()) for m in ("train_mask", "val_mask", "test_mask")] == [ntr, nva, nte]
    assert not (d.train_mask & d.val_mask).any() and not (d.val_mask & d.test_mask).any()
    assert set(d.x.unique().tolist()) <= {0.0, 1.0}
    # undirected, no self loops
    edges = _edge_set(d.edge_index)
    assert len(edges) == e and all((b, a) in edges for a, b in edges)
    assert not (d.edge_index[0] == d.edge_index[1]).any()


@pytest.mark.parametrize("name", sorted(PLANETOID))
def test_planetoid_npz_equals_pyg(name):
    a = load_planetoid(name, source="npz")
    b = load_planetoid(name, source="pyg")
    assert a.num_nodes == b.num_nodes and a.num_edges == b.num_edges and a.num_classes == b.num_classes
    assert torch.equal(a.y, b.y)
    assert torch.equal(a.x, b.x)
    for m in ("train_mask", "val_mask", "test_mask"):
        assert torch.equal(a[m], b[m]), m
    assert _edge_set(a.edge_index) == _edge_set(b.edge_index)

    # normalize_features matches PyG's NormalizeFeatures on PyG's own reader
    an = load_planetoid(name, source="npz", normalize_features=True)
    ref = Planetoid(str(Path(os.environ["TIEDLAB_CACHE"]) / "graph" / "planetoid"),
                    {"cora": "Cora", "citeseer": "CiteSeer"}[name], transform=NormalizeFeatures())[0]
    torch.testing.assert_close(an.x, ref.x, rtol=0, atol=1e-7)
    rows = an.x.sum(1)
    assert torch.allclose(rows[rows > 0], torch.ones(()))


def test_planetoid_bad_names_and_sources():
    with pytest.raises(ValueError, match=r"'pubmed'.*CiteSeer.*Cora"):
        load_planetoid("pubmed")
    with pytest.raises(ValueError, match=r"'coraa'.*\['CiteSeer', 'Cora'\]"):
        load_planetoid("coraa")
    with pytest.raises(ValueError, match=r"'csv'.*'npz', 'pyg'"):
        load_planetoid("cora", source="csv")


def test_planetoid_pyg_missing_raw_without_download(tmp_path, monkeypatch):
    root = tmp_path / "empty"
    (root / "planetoid").mkdir(parents=True)
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match=r"ind\.cora\..*data\.source=npz.*download=True"):
        load_planetoid("cora", source="pyg")
    with pytest.raises(DataNotFoundError, match="cora.npz"):
        load_planetoid("cora")


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_features_cora():
    x = load_planetoid("cora").x
    zeros = float((x == 0).float().mean())
    assert 0.986 < zeros < 0.988  # Cora's x is 98.7% zeros
    w = torch.randn(x.shape[1], 4, requires_grad=True)
    for layout in ("coo", "csr"):
        xs = sparse_features(x, layout=layout)
        assert xs.layout == (torch.sparse_coo if layout == "coo" else torch.sparse_csr)
        assert xs.shape == x.shape and torch.equal(xs.to_dense(), x)
        out = torch.sparse.mm(xs, w)
        torch.testing.assert_close(out, x @ w)
        out.sum().backward()
        assert w.grad is not None and w.grad.abs().sum() > 0
        w.grad = None
    with pytest.raises(ValueError, match="'dense'"):
        sparse_features(x, layout="dense")


def test_normalize_rows_matches_pyg():
    x = torch.tensor([[0.0, 2.0, 2.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0]])
    from torch_geometric.data import Data

    ref = NormalizeFeatures()(Data(x=x.clone())).x
    assert torch.equal(normalize_rows(x), ref)
    assert torch.equal(x[0], torch.tensor([0.0, 2.0, 2.0]))  # input untouched


# --------------------------------------------------------------------------------------------------
# validate_graph
# --------------------------------------------------------------------------------------------------


def _tiny():
    from torch_geometric.data import Data

    return Data(
        x=torch.zeros(4, 3),
        edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]),
        y=torch.zeros(4, dtype=torch.long),
        train_mask=torch.ones(4, dtype=torch.bool),
    )


def test_validate_graph_errors():
    validate_graph(_tiny(), num_features=3)

    d = _tiny()
    d.edge_index = torch.tensor([[0, 1, 2], [1, 7, 3]])
    with pytest.raises(ValueError, match=r"node id 7 .*num_nodes=4"):
        validate_graph(d)
    d.edge_index = torch.tensor([[0, -1], [1, 2]])
    with pytest.raises(ValueError, match="negative node id -1"):
        validate_graph(d)
    d.edge_index = torch.tensor([[0, 1], [1, 2]], dtype=torch.int32)
    with pytest.raises(ValueError, match="int64.*int32"):
        validate_graph(d)
    d.edge_index = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"\(2, E\).*\(3,\)"):
        validate_graph(d)

    with pytest.raises(ValueError, match=r"3 features.*num_features=5.*data\.num_features"):
        validate_graph(_tiny(), num_features=5)

    d = _tiny()
    d.y = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"y has shape \(3,\).*num_nodes=4"):
        validate_graph(d)
    d = _tiny()
    d.train_mask = torch.ones(5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"train_mask has shape \(5,\).*num_nodes=4"):
        validate_graph(d)
    d = _tiny()
    d.y = torch.zeros(1, dtype=torch.long)
    validate_graph(d, task="graph")
    with pytest.raises(ValueError, match="'edge'"):
        validate_graph(d, task="edge")


def test_cora_wrong_num_features():
    with pytest.raises(ValueError, match=r"1433 features.*num_features=1000.*data\.num_features"):
        validate_graph(load_planetoid("cora"), num_features=1000)


def test_loader_validates_npz(tmp_path, monkeypatch):
    """A corrupt npz (edge id out of range) is caught inside load_planetoid."""
    root = tmp_path / "root"
    (root / "planetoid").mkdir(parents=True)
    with np.load(DATA / "planetoid" / "cora.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["edge_index"] = arrays["edge_index"].copy()
    arrays["edge_index"][1, 5] = 2708
    np.savez(root / "planetoid" / "cora.npz", **arrays)
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    with pytest.raises(ValueError, match=r"node id 2708 .*num_nodes=2708"):
        load_planetoid("cora")


# --------------------------------------------------------------------------------------------------
# TU datasets
# --------------------------------------------------------------------------------------------------


def _check_graphs(td: TUData):
    for g in td.graphs:
        assert g.x.shape[1] == td.num_features
        assert torch.equal(g.x.sum(1), torch.ones(g.num_nodes))  # one-hot
        assert g.y.shape == (1,) and 0 <= int(g.y) < td.num_classes
        ei = g.edge_index
        assert ei.dtype == torch.int64 and (ei >= 0).all() and (ei < g.num_nodes).all()
        keys = (ei[0] * g.num_nodes + ei[1]).tolist()
        assert len(set(keys)) == len(keys)  # no duplicate edges
        rev = set((ei[1] * g.num_nodes + ei[0]).tolist())
        assert rev == set(keys)  # undirected


def _check_folds(td: TUData):
    n = len(td.graphs)
    assert len(td.folds) == 10
    tested = []
    for train, test in td.folds:
        assert train.dtype == torch.int64 and test.dtype == torch.int64
        both = torch.cat([train, test]).sort().values
        assert torch.equal(both, torch.arange(n))  # train/test partition the graphs
        tested.append(test)
    tested = torch.cat(tested)
    assert tested.unique().numel() == tested.numel()  # test folds disjoint


def test_mutag():
    td = load_tu("mutag")
    assert len(td) == 188 and td.num_classes == 2 and td.num_features == 7 and td.name == "MUTAG"
    ys = torch.cat([g.y for g in td.graphs])
    assert torch.bincount(ys).tolist() == [63, 125]  # file labels {0, 2} remapped to {0, 1}
    _check_graphs(td)
    _check_folds(td)
    # 188 is not a multiple of 10: the standard folds test 180 graphs, leaving these 8 out
    assert td.never_tested.tolist() == [0, 13, 37, 114, 161, 163, 169, 187]
    assert td.graphs[0].num_nodes == 23 and td.graphs[0].num_edges == 54


def test_enzymes():
    td = load_tu("ENZYMES")
    assert len(td) == 600 and td.num_classes == 6 and td.num_features == 3
    assert torch.bincount(torch.cat([g.y for g in td.graphs])).tolist() == [100] * 6
    _check_graphs(td)
    _check_folds(td)
    # here the test folds partition 0..599
    assert torch.equal(torch.cat([t for _, t in td.folds]).sort().values, torch.arange(600))
    assert td.never_tested.numel() == 0


def test_imdb_degree_features():
    td = load_tu("IMDB-BINARY")
    assert len(td) == 1000 and td.num_classes == 2 and td.num_features == 65
    pairs = set()
    for g in td.graphs[:300]:
        deg = torch.bincount(g.edge_index[0], minlength=g.num_nodes)
        pairs |= set(zip(deg.tolist(), g.x.argmax(1).tolist()))
    pairs = sorted(pairs)
    assert [c for _, c in pairs] == sorted(c for _, c in pairs)  # column is monotone in degree
    assert len({d for d, _ in pairs}) == len(pairs)  # one column per degree
    capped = load_tu("imdbbinary", max_degree=20)
    assert capped.num_features <= 21
    with pytest.raises(ValueError, match="max_degree"):
        load_tu("MUTAG", max_degree=3)


def test_tu_bad_name():
    with pytest.raises(ValueError, match=r"'COLLAB'.*MUTAG.*IMDBMULTI"):
        load_tu("COLLAB")


def test_nci1_parses():
    td = load_tu("NCI1")
    assert len(td) == 4110 and td.num_classes == 2 and td.num_features == 37


# corrupt files in a fake root ---------------------------------------------------------------------


@pytest.fixture
def fake_mutag(tmp_path, monkeypatch):
    root = _fake_root(tmp_path, "tu-gin/MUTAG")
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    load_tu("MUTAG")  # the copy itself is fine
    return root / "tu-gin" / "MUTAG"


def test_fold_id_out_of_range(fake_mutag):
    f = fake_mutag / "10fold_idx" / "test_idx-3.txt"
    lines = f.read_text().split("\n")
    lines[4] = "188"
    f.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"test_idx-3\.txt: line 5: graph id 188 out of range \[0, 188\)"):
        load_tu("MUTAG")


def test_fold_train_test_overlap(fake_mutag):
    folder = fake_mutag / "10fold_idx"
    train_id = (folder / "train_idx-4.txt").read_text().split()[0]
    with open(folder / "test_idx-4.txt", "a") as fh:
        fh.write(f"{train_id}\n")
    with pytest.raises(ValueError, match=rf"test_idx-4\.txt: graph id {train_id} is in both"):
        load_tu("MUTAG")


def test_fold_not_partition_and_test_overlap(fake_mutag):
    folder = fake_mutag / "10fold_idx"
    ids = (folder / "train_idx-1.txt").read_text().split()
    (folder / "train_idx-1.txt").write_text("\n".join(ids[1:]) + "\n")
    with pytest.raises(ValueError, match=rf"train_idx-1\.txt.*graph id {ids[0]} is in neither"):
        load_tu("MUTAG")
    (folder / "train_idx-1.txt").write_text("\n".join(ids) + "\n")
    # fold 2's test set repeats a graph from fold 1's test set
    t1 = (folder / "test_idx-1.txt").read_text().split()
    t2 = (folder / "test_idx-2.txt").read_text().split()
    tr2 = (folder / "train_idx-2.txt").read_text().split()
    tr2.remove(t1[0])
    (folder / "test_idx-2.txt").write_text("\n".join(t2 + [t1[0]]) + "\n")
    (folder / "train_idx-2.txt").write_text("\n".join(tr2) + "\n")
    with pytest.raises(ValueError, match=rf"test_idx-2\.txt: graph id {t1[0]} is also in test_idx-1\.txt"):
        load_tu("MUTAG")


def test_fold_garbage_and_missing(fake_mutag):
    folder = fake_mutag / "10fold_idx"
    (folder / "test_idx-7.txt").write_text("1\nx2\n")
    with pytest.raises(ValueError, match=r"test_idx-7\.txt.*integer"):
        load_tu("MUTAG")
    (folder / "test_idx-7.txt").unlink()
    with pytest.raises(DataNotFoundError, match=r"test_idx-7\.txt"):
        load_tu("MUTAG")


def test_graph_neighbour_out_of_range(fake_mutag):
    f = fake_mutag / "MUTAG.txt"
    lines = f.read_text().split("\n")
    assert lines[2] == "2 2 1 13"  # graph 0 (23 nodes), node 0
    lines[2] = "2 2 1 23"
    f.write_text("\n".join(lines))
    msg = r"MUTAG\.txt: line 3: graph 0 node 0: neighbour id 23 out of range \[0, 23\)"
    with pytest.raises(ValueError, match=msg):
        load_tu("MUTAG")


def test_graph_file_truncated_or_bad_row(fake_mutag):
    f = fake_mutag / "MUTAG.txt"
    text = f.read_text()
    lines = text.split("\n")
    f.write_text("\n".join(lines[:1000]))
    with pytest.raises(ValueError, match=r"MUTAG\.txt: line 1001: unexpected end of file"):
        load_tu("MUTAG")
    bad = list(lines)
    bad[2] = "2 3 1 13"  # says degree 3 but lists 2 neighbours
    f.write_text("\n".join(bad))
    with pytest.raises(ValueError, match=r"MUTAG\.txt: line 3: graph 0 node 0: expected .*got 4 values"):
        load_tu("MUTAG")
    f.write_text(text + "1 0\n")
    with pytest.raises(ValueError, match=r"line 3561: unexpected content after the last of 188 graphs"):
        load_tu("MUTAG")


def test_graph_file_empty_or_not_text(fake_mutag):
    f = fake_mutag / "MUTAG.txt"
    f.write_bytes(b"")
    with pytest.raises(DataFormatError, match=rf"^{f} is empty \(0 bytes\)\. Fix: copy MUTAG/MUTAG\.txt again"):
        load_tu("MUTAG")
    f.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DataFormatError, match=rf"^{f} is not UTF-8 text"):
        load_tu("MUTAG")


# SHA256SUMS and unreadable npz files -------------------------------------------------------------


def _copy_sums(root: Path, prefix: str) -> None:
    """The real SHA256SUMS lines for files under ``prefix`` as the fake root's SHA256SUMS."""
    lines = [ln for ln in (DATA / "SHA256SUMS").read_text().splitlines() if ln.split("  ./", 1)[1].startswith(prefix)]
    assert lines, f"the real SHA256SUMS lists nothing under {prefix}"
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_planetoid_damaged_npz_names_the_file(tmp_path, monkeypatch, damage):
    path = tmp_path / "root" / "planetoid" / "cora.npz"
    path.parent.mkdir(parents=True)
    good = (DATA / "planetoid" / "cora.npz").read_bytes()
    path.write_bytes(good[: len(good) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(len(good)))
    monkeypatch.setenv("TIEDLAB_DATA", str(tmp_path / "root"))  # no SHA256SUMS: the format check speaks
    with pytest.raises(DataFormatError) as err:
        load_planetoid("cora")
    msg = str(err.value)
    assert msg.startswith(f"{path} is truncated or not an .npz archive") and "copy planetoid/cora.npz again" in msg
    assert "allow_pickle" not in msg and "\n" not in msg


def test_planetoid_npz_checked_against_sums(tmp_path, monkeypatch):
    root = _fake_root(tmp_path, "planetoid")
    _copy_sums(root, "planetoid/")
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    assert load_planetoid("cora").num_nodes == 2708
    path = root / "planetoid" / "cora.npz"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(DataIntegrityError) as err:
        load_planetoid("cora")
    msg = str(err.value)
    assert msg.startswith(f"{path} does not match {root / 'SHA256SUMS'}: sha256 ")
    assert "expected 3b07ed20c630..." in msg and "sha256sum ./planetoid/cora.npz" in msg


def test_planetoid_raw_files_checked_before_copy(tmp_path, monkeypatch):
    root = _fake_root(tmp_path, "planetoid/raw")
    _copy_sums(root, "planetoid/raw/ind.cora.")
    monkeypatch.setenv("TIEDLAB_DATA", str(root))
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path / "cache"))
    bad = root / "planetoid" / "raw" / "ind.cora.graph"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataIntegrityError, match=rf"^{bad} does not match"):
        load_planetoid("cora", source="pyg")
    assert not (tmp_path / "cache" / "graph" / "planetoid" / "Cora" / "raw" / "ind.cora.graph").exists()


def test_tu_files_checked_against_sums(fake_mutag, monkeypatch):
    root = fake_mutag.parent.parent
    _copy_sums(root, "tu-gin/MUTAG/")
    load_tu("MUTAG")
    fold = fake_mutag / "10fold_idx" / "train_idx-9.txt"
    fold.write_text(fold.read_text().replace("\n", "\n\n", 1))  # still a valid fold file, but not the listed one
    with pytest.raises(DataIntegrityError, match=rf"^{fold} does not match"):
        load_tu("MUTAG")


def test_real_tu_hashed_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path / "cache"))
    calls = []
    real = paths._sha256_file
    monkeypatch.setattr(paths, "_sha256_file", lambda p: calls.append(p) or real(p))
    load_tu("MUTAG")
    assert len(calls) == 21  # MUTAG.txt and the 20 fold files, all listed in the real SHA256SUMS
    load_tu("MUTAG")
    assert len(calls) == 21  # unchanged files: a stat each


# --------------------------------------------------------------------------------------------------
# read-only data root
# --------------------------------------------------------------------------------------------------


def test_data_root_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path / "fresh-cache"))
    parts = [DATA / "planetoid", DATA / "tu-gin"]
    before = {str(p): _snapshot(p) for p in parts}
    for name in ("cora", "citeseer"):
        load_planetoid(name, source="pyg")  # PyG processes from scratch into the fresh cache
        load_planetoid(name)
    for name in ("MUTAG", "PTC", "IMDBMULTI"):
        load_tu(name)
    after = {str(p): _snapshot(p) for p in parts}
    assert after == before
    processed = tmp_path / "fresh-cache" / "graph" / "planetoid" / "Cora" / "processed"
    assert (processed / "data.pt").is_file()
