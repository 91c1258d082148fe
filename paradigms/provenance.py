"""Where a result came from: the code's commit, packages, machine, device, times and command.

Every run directory records ``run_provenance()`` in metrics.json (one entry per process that trained it), and
the report's header lists the commits of the runs it read. Imports nothing heavy (no torch).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

# The packages whose versions change what a run computes.
PACKAGES = ("torch", "torchvision", "numpy", "scipy", "torch-geometric", "transformers", "tokenizers", "lightly",
            "hydra-core", "omegaconf")
CODE_DIR = Path(__file__).resolve().parents[1]  # the checkout (or installed tree) this code runs from
# Set by a study's launcher for the processes it starts: the most training processes it runs at once on one device
# (a GPU, or the machine's CPU cores), which a run records (``processes_per_device``): processes sharing a device
# train slower.
PROCESSES_PER_DEVICE_ENV = "TIEDLAB_PROCESSES_PER_DEVICE"


def _git(args: list[str], cwd: str | Path | None) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse --short HEAD`` in ``cwd`` (default: the current folder), "unknown" outside a repo."""
    out = (_git(["rev-parse", "--short", "HEAD"], cwd) or "").strip()
    return out or "unknown"


OUTPUT_DIRS = ("reports/studies/",)  # where studies write their reports into the checkout: not the code


def code_version() -> dict[str, Any]:
    """The commit of the code that is running (not of the current folder) and whether its tree was dirty
    (files changed or added since the commit, but under ``OUTPUT_DIRS``; None when it is not a git checkout)."""
    commit = git_commit(CODE_DIR)
    # untracked files count too (a new module the run imported); ignored ones (runs/, .venv/) do not, nor do the
    # reports a study writes into the checkout (every run after a report would otherwise read as modified code)
    status = _git(["status", "--porcelain", "-z", "--untracked-files=all"], CODE_DIR) if commit != "unknown" else None
    # NUL-separated "XY path" entries, a rename's or copy's followed by its old path: both sides count (a module
    # moved into reports/studies/ leaves its old place)
    changed, entries = [], (status or "").split("\0")
    while entries:
        entry = entries.pop(0)
        if len(entry) > 3:
            changed.append(entry[3:])
            if entry[0] in "RC" and entries:
                changed.append(entries.pop(0))
    dirty = None if status is None else any(not path.startswith(OUTPUT_DIRS) for path in changed)
    return {"commit": commit, "dirty": dirty, "path": str(CODE_DIR)}


def package_version(name: str) -> str:
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
            "torch": package_version("torch"), "cuda_device": cuda_device()}


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def run_provenance(device: str, threads: int | None = None, overrides: list[str] | None = None,
                   world_size: int = 1, seed_batch: int = 1) -> dict[str, Any]:
    """What one process that trains a run records at its start (``ended`` is filled in at its end): ``command``
    is the process's (a whole sweep's, in a multirun), ``overrides`` this run's own, ``world_size`` the number of
    processes that train it together (data-parallel under torchrun; ``device`` and ``threads`` are rank 0's),
    ``seed_batch`` the number of runs this process trains as one vectorised model (``paradigms/seedbatch.py``;
    their step seconds and peak memory are the batch's, its seconds divided by K), ``processes_per_device`` how many
    training processes the launcher that started it runs at once on its device (None: no launcher said)."""
    return {**code_version(), "packages": {name: package_version(name) for name in PACKAGES},
            "host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "device": device, "threads": threads, "world_size": world_size,
            "seed_batch": seed_batch, "processes_per_device": processes_per_device(),
            # the GPUs this process was given (a scheduler pins each run to its own; None: not set)
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "command": shlex.join([sys.argv[0], *sys.argv[1:]]), "overrides": list(overrides or []),
            # the machine's load when the process started (1-minute load average) and this process's niceness:
            # a run that shares the cores, or yields them, trains slower (its seconds say less)
            "load_average": _load_average(), "niceness": _niceness(),
            "started": now(), "ended": None}


def processes_per_device() -> int | None:
    """The most training processes (a seed batch is one) the study launcher that started this process runs at once
    on its device (``$TIEDLAB_PROCESSES_PER_DEVICE``: ``--per-gpu`` on a GPU, ``--jobs`` on this machine's CPU, 1
    for a study's grids run one at a time, joblib's ``n_jobs`` under ``hydra/launcher=local_parallel``, 1 for a
    Slurm task on a GPU of its own); None when no launcher says (a run started by hand, a CPU run placed by Ray on a
    cluster or by Slurm, beside jobs the study does not know, submitit's local executor, Hydra's Slurm launcher).

    Raises:
        ValueError: the variable is set to something other than a positive integer.
    """
    value = os.environ.get(PROCESSES_PER_DEVICE_ENV)
    if value is None or value == "":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{PROCESSES_PER_DEVICE_ENV}={value!r} must be a positive integer (the launcher's "
                         "training processes at once on one device) or unset")
    return int(value)


def _load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _niceness() -> int | None:
    """This process's niceness (0: the default priority; None where the platform has none)."""
    try:
        return os.nice(0)
    except (AttributeError, OSError):
        return None
