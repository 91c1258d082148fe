"""The run directory contract: the only files reports read, and checkpoints that resume.

    config.yaml     the resolved config
    history.jsonl   one JSON line per evaluation (step, elapsed training seconds, metrics)
    metrics.json    status (running, completed, diverged, failed), reason, final metrics
    checkpoint.pt   model, optimiser, schedule, RNG and loop state; written atomically
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
STATUSES = ("running", "completed", "diverged", "failed")


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; the message names the file and what to do."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


def write_json(path: Path, obj: dict[str, Any]) -> None:
    clean = {k: ({kk: _finite(vv) for kk, vv in v.items()} if isinstance(v, dict) else _finite(v)) for k, v in obj.items()}
    atomic_write_bytes(path, (json.dumps(clean, indent=2, sort_keys=True) + "\n").encode())


def append_history(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / HISTORY, "a") as fh:
        fh.write(json.dumps({k: _finite(v) for k, v in record.items()}, sort_keys=True) + "\n")


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: the rest is not trustworthy
    return out


def truncate_history(run_dir: Path, step: int) -> None:
    """Drop history lines after ``step`` (written after the checkpoint a resumed run restarts from)."""
    kept = [r for r in read_history(run_dir) if r.get("step", 0) <= step]
    atomic_write_bytes(Path(run_dir) / HISTORY, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Atomically write ``checkpoint.pt`` (temp file, then rename)."""
    import io

    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir``, or None when there is none.

    Raises:
        CheckpointError: the file is corrupt, of another format, or from a run with another config
            (``fingerprint`` differs); it is never silently ignored or overwritten.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling error means the same thing here
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {err}). "
            "Delete it to start over, or use another run directory.") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format') if isinstance(state, dict) else '?'}, "
                              f"expected {CHECKPOINT_FORMAT}; delete it or use another run directory")
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with a different config (fingerprint {state.get('fingerprint')} != "
            f"{fingerprint}); use another run directory, or delete it to start over")
    return state
