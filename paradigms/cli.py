"""Console commands: one Hydra app with the paradigm preselected, and the study runner.

    tiedlab-vision  [overrides]    = tiedlab-train paradigm=vision [overrides]
    tiedlab-ssl / tiedlab-graph / tiedlab-language
    tiedlab-train -m +experiment=vision_depth      (a multirun grid; hydra/launcher=local_parallel for joblib)
    tiedlab-study NAME [--dry-run] [--jobs N] [--grids 'graph_*,vision_masks'] [extra overrides]
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from .config import TrainConfig

CONFIG_PATH = "pkg://tiedlab.configs"
ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _hydra_main(cfg: DictConfig) -> Any:
    from .base import get_paradigm
    from .engine import train as run_training

    result = run_training(cfg, cfg.run_dir)
    cls = get_paradigm(cfg.paradigm)
    metric = result.get("metrics", {}).get(f"val/{cls.primary_metric}")
    print(f"[tiedlab] {result['status']}: {cfg.run_dir} val/{cls.primary_metric}={metric}", file=sys.stderr)
    return metric


def _run_with_paradigm(paradigm: str | None) -> None:
    args = sys.argv[1:]
    if paradigm is not None and not any(a.split("=")[0].lstrip("+~") == "paradigm" for a in args):
        # Hydra's flags (-m, --cfg job, ...) must precede the overrides: insert before the first override.
        first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
        args = [*args[:first], f"paradigm={paradigm}", *args[first:]]
    sys.argv = [sys.argv[0], *args]
    _hydra_main()


def train() -> None:
    _run_with_paradigm(None)


def vision() -> None:
    _run_with_paradigm("vision")


def ssl() -> None:
    _run_with_paradigm("ssl")


def graph() -> None:
    _run_with_paradigm("graph")


def language() -> None:
    _run_with_paradigm("language")


# ----------------------------------------------------------------------------------- studies
def study_dir() -> Path:
    """The folder of study files inside the installed configs package."""
    import importlib.resources

    return Path(str(importlib.resources.files("tiedlab.configs"))) / "study"


def load_study(name: str) -> dict[str, Any]:
    """The study file ``configs/study/NAME.yaml``; a ValueError lists the valid names."""
    folder = study_dir()
    path = folder / f"{name}.yaml"
    if not path.exists():
        valid = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"unknown study {name!r}; valid studies: {valid}")
    study = yaml.safe_load(path.read_text())
    unknown = sorted(set(study) - {"name", "question", "grids", "report"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {path}; valid keys: ['grids', 'name', 'question', 'report']")
    for grid in study["grids"]:
        bad = sorted(set(grid) - {"name", "overrides", "sweep"})
        if bad:
            raise ValueError(f"unknown key(s) {bad} in grid {grid.get('name')!r} of {path}; valid keys: "
                             "['name', 'overrides', 'sweep']")
        grid["overrides"] = _flatten(grid.get("overrides") or [])
    return study


def _flatten(overrides: list[Any]) -> list[str]:
    """Nested lists of overrides (a YAML anchor reused inside another list: ``[*vision, block=tied]``) made flat."""
    flat: list[str] = []
    for item in overrides:
        flat.extend(_flatten(item) if isinstance(item, list) else [str(item)])
    return flat


def study_commands(study: dict[str, Any], out: Path, extra: list[str], jobs: int) -> list[list[str]]:
    """One multirun command per grid of the study."""
    cmds = []
    for grid in study["grids"]:
        sweep = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in (grid.get("sweep") or {}).items()]
        fixed = [*grid.get("overrides", []), *extra]
        # Name each run directory after what its grid sweeps only (the fixed overrides are in config.yaml). A key
        # both fixed and swept (an anchor's model.width=24, swept over 12,48: the sweep wins) must stay in the name,
        # or its runs would share one directory.
        swept = set(grid.get("sweep") or {})
        hidden = sorted(({o.split("=")[0].lstrip("+~") for o in fixed} | set(_HIDDEN_KEYS)) - swept)
        cmd = [sys.executable, "-m", "tiedlab.paradigms.cli", "-m", *fixed, *sweep,
               f"hydra.sweep.dir={out / grid['name']}", "train.progress=false",
               f"hydra.job.config.override_dirname.exclude_keys=[{','.join(hidden)}]"]
        if swept:  # RUNS/<grid>/<swept values>: a grid has one paradigm, so no paradigm level in between
            cmd.append("hydra.sweep.subdir=${hydra:job.override_dirname}")
        if jobs > 1:
            cmd += ["hydra/launcher=local_parallel", f"hydra.launcher.n_jobs={jobs}"]
        cmds.append(cmd)
    return cmds


def select_grids(study: dict[str, Any], patterns: list[str]) -> list[dict[str, Any]]:
    """The study's grids whose names match any of ``patterns`` (fnmatch), in study order.

    A pattern that matches no grid is an error naming the valid grid names (a typo must not run nothing).
    """
    names = [g["name"] for g in study["grids"]]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ValueError(f"--grids pattern {pattern!r} matches no grid of study {study['name']!r}; "
                             f"valid grids: {names}")
    return [g for g in study["grids"] if any(fnmatch.fnmatchcase(g["name"], p) for p in patterns)]


_HIDDEN_KEYS = ("paradigm", "hydra.searchpath", "run_dir", "resume", "train.progress", "train.device", "train.threads",
                "logger", "hydra.launcher.n_jobs", "hydra/launcher")


def study(argv: list[str] | None = None) -> int:
    """Run every grid of a named study, then build its report."""
    parser = argparse.ArgumentParser(prog="tiedlab-study", description=study.__doc__)
    parser.add_argument("name", help="a file in configs/study/ (without .yaml)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. train.device=cpu")
    parser.add_argument("--runs", default=None, help="where run directories go (default runs/study/NAME)")
    parser.add_argument("--out", default=None, help="report folder (default reports/NAME)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel runs per grid (joblib launcher)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--grids", default=None,
                        help="comma-separated grid names or fnmatch patterns to run (default all), e.g. 'graph_*'")
    args = parser.parse_args(argv)
    spec = load_study(args.name)
    if args.grids:
        spec["grids"] = select_grids(spec, args.grids.split(","))
    runs = Path(args.runs or Path(os.environ.get("TIEDLAB_RUNS", "runs")) / "study" / args.name)
    cmds = study_commands(spec, runs, args.overrides, args.jobs)
    started = time.time()
    failures = 0
    for cmd in cmds:
        print("+ " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            failures += subprocess.call(cmd) != 0
    if args.dry_run:
        return 0
    elapsed = time.time() - started
    print(f"[tiedlab] study {args.name}: {len(cmds)} grids in {elapsed / 60:.1f} min, {failures} failed", flush=True)
    if spec.get("report", True) and not args.no_report:
        from tiedlab.reports.cli import main as report_main

        report_main([str(runs), "--out", args.out or f"reports/{args.name}", "--title", f"study {args.name}",
                     "--command", shlex.join(["tiedlab-study", *(argv if argv is not None else sys.argv[1:])])])
    return 1 if failures else 0


def study_main() -> None:
    sys.exit(study())


if __name__ == "__main__":
    _hydra_main()
