"""What the header needs to rerun a report: git commit, date, machine."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse --short HEAD`` in ``cwd`` (default: the current folder), "unknown" outside a repo."""
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "unknown"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cuda_device() -> str:
    """The CUDA device name: from torch when the caller already imported it, else nvidia-smi, else "none"."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - a broken CUDA setup just means no device name
            pass
    if shutil.which("nvidia-smi"):
        try:
            proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=10)
            names = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
            if proc.returncode == 0 and names:
                return ", ".join(names)
        except (OSError, subprocess.SubprocessError):
            pass
    return "none"


def machine() -> dict[str, Any]:
    """Platform, Python, CPU count, torch version (without importing torch) and CUDA device."""
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": _package_version("torch"), "cuda_device": cuda_device()}


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
