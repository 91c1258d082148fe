"""Trackers beyond the run directory's local files: none (local) or wandb, which never blocks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


class LocalTracker:
    """The run directory already holds everything; nothing else to do."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


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

    Offline unless the environment says otherwise (``WANDB_MODE=online`` or ``logger.mode=online``);
    offline opens no network connection (see ``_offline_without_network``) and the files go to
    ``logger.dir`` or the run directory, so nothing blocks without a network.
    """

    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError as err:
            raise ValueError("logger=wandb needs the wandb package: pip install 'tiedlab[wandb]'") from err
        mode = cfg.mode or os.environ.get("WANDB_MODE") or "offline"
        if mode == "offline":
            _offline_without_network()
        directory = Path(cfg.dir or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(project=cfg.project, mode=mode, dir=str(directory), config=config,
                              name=run_dir.name, tags=list(cfg.tags), reinit="finish_previous",
                              settings=wandb.Settings(init_timeout=30, silent=True))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish()


def make_tracker(cfg: Any, run_dir: Path, config: dict[str, Any]) -> Tracker:
    if cfg.name == "wandb":
        return WandbTracker(cfg, run_dir, config)
    return LocalTracker()
