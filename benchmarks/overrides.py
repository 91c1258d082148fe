"""``--set section.key=value`` overrides for the benchmark scripts (imported as a sibling module)."""

from __future__ import annotations

import json
from typing import Any, Iterable


def parse_sets(items: Iterable[str], base: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Apply ``section.key=value`` overrides (nested with more dots) to a copy of ``base``.

    Values are JSON when they parse as JSON, else strings. A missing ``=``, a key without a section or an
    unknown section is a ValueError naming the item and the valid sections.
    """
    cfg = json.loads(json.dumps(base))
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) < 2 or parts[0] not in cfg:
            raise ValueError(f"--set {item!r}: expected section.key=value with section in {sorted(cfg)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = cfg[parts[0]]
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg
