"""Trackers beyond the run directory's local files: none (local) or wandb, which never blocks."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Protocol

WANDB_MODES = ("offline", "online", "disabled")
_warned_disabled = False  # the WANDB_MODE=disabled warning is printed once per process


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


class WandbTracker:
    """One wandb run per training run (so one per multirun job), finished at the end of the job.

    The mode is ``logger.mode``, else ``$WANDB_MODE``, else offline. Offline opens no network connection
    (see ``_offline_without_network``); disabled logs nothing and, when it comes from ``$WANDB_MODE``
    (the Makefile's and .ci/env.sh's default), says so once on stderr. The files go to ``logger.dir``
    or the run directory, so nothing blocks without a network.
    """

    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any]):
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
        directory = Path(cfg.dir or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(project=cfg.project, mode=mode, dir=str(directory), config=config,
                              name=run_dir.name, tags=list(cfg.tags), reinit="finish_previous",
                              settings=wandb.Settings(init_timeout=30, silent=True))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish()


def _warn_disabled_by_environment() -> None:
    global _warned_disabled
    if _warned_disabled:
        return
    _warned_disabled = True
    print("[tiedlab] warning: logger=wandb logs nothing because WANDB_MODE=disabled (the Makefile's and "
          ".ci/env.sh's default); set WANDB_MODE=offline or online, or logger.mode=offline, to record wandb runs",
          file=sys.stderr)


def make_tracker(cfg: Any, run_dir: Path, config: dict[str, Any]) -> Tracker:
    if cfg.name == "wandb":
        return WandbTracker(cfg, run_dir, config)
    return LocalTracker()
