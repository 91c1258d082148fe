"""Data decoded once and shared by the runs one process trains together.

A seed batch (``paradigms.seedbatch``) builds K runs of one configuration in one process; inside
:func:`shared_data` a loader that wraps its work in :func:`decoded_once` decodes each dataset once and hands the
same tensors to every run. Outside it every call loads afresh (so a changed file is read again). The tensors are
shared: callers must not modify them in place (the adapters do not).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Hashable, Iterator, TypeVar

T = TypeVar("T")

_STORE: dict[Hashable, Any] | None = None  # None: not sharing


@contextlib.contextmanager
def shared_data() -> Iterator[None]:
    """Within this block, :func:`decoded_once` returns one result per key (nested blocks share the outer one)."""
    global _STORE
    outer = _STORE
    _STORE = {} if outer is None else outer
    try:
        yield
    finally:
        _STORE = outer


def decoded_once(key: Hashable, load: Callable[[], T]) -> T:
    """``load()``, or inside :func:`shared_data` the result of the first call with this ``key``."""
    if _STORE is None:
        return load()
    if key not in _STORE:
        _STORE[key] = load()
    return _STORE[key]
