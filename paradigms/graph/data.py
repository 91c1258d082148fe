"""Graph datasets: Planetoid citation graphs (node classification) and TU benchmarks (graph classification).

Everything is read from the read-only data root (``$TIEDLAB_DATA``, see :mod:`tiedlab.paradigms.paths`).
The only thing ever written is PyG's own processed copy of Planetoid (``source="pyg"``), which goes to the
cache dir (``$TIEDLAB_CACHE``), never next to the data. Every file read is first checked against the
root's ``SHA256SUMS`` when it has one (``DataIntegrityError``); a file that cannot be parsed raises
``DataFormatError`` naming it. Both are ``ValueError`` subclasses.

Modules: :mod:`.data_planetoid` (node tasks), :mod:`.data_tu` (graph tasks and their folds),
:mod:`.data_validate` (the checks both share); this one re-exports their public names.

Public API:
    load_planetoid(name, *, source="npz", download=False, normalize_features=False) -> Data
    sparse_features(x, layout="coo") -> sparse Tensor
    normalize_rows(x) -> Tensor
    validate_graph(data, *, num_features=None, task="node") -> None
    load_tu(name, *, degree_as_tag=None, max_degree=None) -> TUData
    stratified_holdout(ids, labels, fraction, seed) -> (kept ids, held-out ids)
"""

from .data_planetoid import PLANETOID_NAMES, load_planetoid, normalize_rows, sparse_features
from .data_tu import NUM_FOLDS, TU_NAMES, TUData, load_tu, stratified_holdout
from .data_validate import validate_graph

__all__ = [
    "NUM_FOLDS",
    "PLANETOID_NAMES",
    "TU_NAMES",
    "TUData",
    "load_planetoid",
    "load_tu",
    "normalize_rows",
    "sparse_features",
    "stratified_holdout",
    "validate_graph",
]
