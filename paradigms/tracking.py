"""Trackers beyond the run directory's local files: none (local) or wandb, which never blocks."""

from __future__ import annotations

import os
import re
import secrets
import string
import sys
from pathlib import Path
from typing import Any, Protocol

from .rundir import atomic_write_bytes

WANDB_ID = "wandb-id"  # in the run directory: the id of the wandb run this directory logs to
WANDB_MODES = ("offline", "online", "disabled")
WANDB_INIT_TIMEOUT_S = 30.0
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_warned_disabled = False  # the WANDB_MODE=disabled warning is printed once per process


class TrackerError(RuntimeError):
    """The tracker could not start (the message names the mode, folder and run id)."""


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


class LocalTracker:
    """The run directory already holds everything; nothing else to do."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def wandb_mode(cfg: Any) -> str:
    """``logger.mode``, else ``$WANDB_MODE``, else offline; anything but offline/online/disabled is an error."""
    if cfg.mode is not None:
        mode, source = cfg.mode, "logger.mode"
    else:
        mode, source = os.environ.get("WANDB_MODE") or "offline", "WANDB_MODE"
    if mode not in WANDB_MODES:
        raise ValueError(f"{source}={mode!r} is not a wandb mode; choose one of {', '.join(WANDB_MODES)}")
    return mode


def read_run_id(run_dir: Path) -> str | None:
    """The wandb run id stored in ``run_dir/wandb-id``, or None when there is none yet."""
    path = Path(run_dir) / WANDB_ID
    if not path.exists():
        return None
    text = path.read_text().strip()
    if not _ID_PATTERN.fullmatch(text):
        raise ValueError(f"{path} holds {text!r}, not a wandb run id (1-64 letters, digits, '-' or '_'); "
                         "delete the file to start a new wandb run for this run directory")
    return text


def _new_run_id() -> str:
    """A wandb-style id: 8 random base-36 characters."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _offline_without_network() -> None:
    """Switch off what wandb sends home even in offline mode (checked for wandb 0.31).

    ``WANDB_ERROR_REPORTING=false`` (wandb/env.py ``error_reporting_enabled``) does two things: the Python
    telemetry recorder (wandb/analytics/opentelemetry) records nothing, so its OTLP exporter never posts
    to ``base_url`` (in offline mode it otherwise resolves and connects to api.forge.coreweave.com), and
    wandb-core is started with ``--no-observability`` (wandb/sdk/lib/service/service_process.py), which
    turns off its error reporting and analytics. It must be in the environment before the first
    ``wandb.init`` of the process (wandb-core is started once per process), and it overrides a user's
    ``WANDB_ERROR_REPORTING=true``: offline means no network. Nothing else in an offline run opens a
    network socket (no login, no version check; git and system stats are read locally).
    """
    os.environ["WANDB_ERROR_REPORTING"] = "false"


# The wandb runs this process opened and has not finished, by id: the runs of a seed batch log side by side
# (``reinit="create_new"``), and a run directory opened again in the same process closes its stale run first.
_open_runs: dict[str, Any] = {}


class WandbTracker:
    """One wandb run per run directory, continued when the run resumes; grouped by ``logger.group``.

    The mode is ``logger.mode``, else ``$WANDB_MODE``, else offline. Offline opens no network connection
    (see ``_offline_without_network``); disabled logs nothing and, when it comes from ``$WANDB_MODE``
    (the Makefile's and .ci/env.sh's default), says so once on stderr. The run's id is kept in
    ``run_dir/wandb-id`` and a later process continues that run (``resume="allow"``); ``fresh=True``
    (the run directory starts again from step 0) starts a new wandb run instead. The files go to
    ``logger.dir`` or the run directory. ``wandb.init`` gives up after ``WANDB_INIT_TIMEOUT_S`` and any
    failure in it is a TrackerError naming the mode and the folder.
    """

    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any], fresh: bool = False):
        try:
            import wandb
        except ImportError as err:
            raise ValueError("logger=wandb needs the wandb package: pip install 'tiedlab[wandb]'") from err
        self.run = None
        self.mode = mode = wandb_mode(cfg)
        if mode == "disabled":
            if cfg.mode is None:
                _warn_disabled_by_environment()
            return
        if mode == "offline":
            _offline_without_network()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = None if fresh else read_run_id(run_dir)
        if run_id is None:
            run_id = _new_run_id()
            atomic_write_bytes(run_dir / WANDB_ID, (run_id + "\n").encode())
        directory = Path(cfg.dir or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        stale = _open_runs.pop(run_id, None)
        if stale is not None:  # this process opened the run before and left it open (a Ctrl-C, a crash): close it
            stale.finish()
        try:
            self.run = wandb.init(project=cfg.project, mode=mode, dir=str(directory), config=config,
                                  name=run_dir.name, group=cfg.group, tags=list(cfg.tags),
                                  id=run_id, resume="allow", reinit="create_new",
                                  settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S, silent=True))
        except Exception as err:  # wandb raises its own Error types, TimeoutError, OSError, ...
            hint = "" if mode == "offline" else "; logger.mode=offline logs without a network"
            raise TrackerError(f"wandb.init failed (mode {mode}, dir {directory}, run id {run_id}): "
                               f"{type(err).__name__}: {err}{hint}") from err
        _open_runs[run_id] = self.run

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        for key, value in summary.items():
            self.run.summary[key] = value
        _open_runs.pop(self.run.id, None)
        self.run.finish()


def _warn_disabled_by_environment() -> None:
    global _warned_disabled
    if _warned_disabled:
        return
    _warned_disabled = True
    print("[tiedlab] warning: logger=wandb logs nothing because WANDB_MODE=disabled (the Makefile's and "
          ".ci/env.sh's default); set WANDB_MODE=offline or online, or logger.mode=offline, to record wandb runs",
          file=sys.stderr)


def make_tracker(cfg: Any, run_dir: Path, config: dict[str, Any], fresh: bool = False) -> Tracker:
    """The tracker ``logger.name`` names (local or wandb); ``fresh``: the run directory starts from step 0."""
    if cfg.name == "wandb":
        return WandbTracker(cfg, run_dir, config, fresh=fresh)
    return LocalTracker()
