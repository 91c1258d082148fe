"""The study runner: a named cross-paradigm set of grids (``configs/study/NAME.yaml``), run grid by grid with
Hydra multirun, finished grids skipped, then its report; ``--until-decided`` adds seed rounds to the arms of
undetermined pre-registered primary comparisons (a group-sequential plan recorded in the runs folder).

    tiedlab-study NAME [--dry-run | --plan [--step-times FILE] | --status] [--jobs N] [--grids 'graph_*,vision_masks']
                  [--until-decided] [overrides]
    tiedlab-study NAME --gpus all|0,1,.. [--per-gpu K] [--ray-address ADDR]   (Ray: all grids' runs at once)
    tiedlab-study NAME --slurm [--slurm-option KEY=VALUE ...]                  (one submitit job array; returns)
    tiedlab-study NAME --status                                                (per grid, from the run folders)

Without a launcher flag the grids run one after another as Hydra multiruns (any ``hydra/launcher=`` given as an
override applies to each). ``--jobs N`` (N > 1), ``--gpus``, ``--slurm`` and a ``hydra/launcher=`` override each
choose how runs are launched: two of them together are an error, never one silently replacing the other. A grid
marked ``optional: true`` runs only when ``--grids`` names it (and is never a primary comparison's arm).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import launch, rundir


def study_dir() -> Path:
    """The folder of study files inside the installed configs package."""
    import importlib.resources

    return Path(str(importlib.resources.files("tiedlab.configs"))) / "study"


STUDY_KEYS = ("name", "question", "grids", "report", "primary", "budget_checks")


def load_study(name: str) -> dict[str, Any]:
    """The study file ``configs/study/NAME.yaml``, or the file ``name`` names when it ends in .yaml or .yml (a
    study kept outside the repository); a ValueError lists the valid names."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"no study file {name}")
        return read_study_file(path)
    folder = study_dir()
    path = folder / f"{name}.yaml"
    if not path.exists():
        valid = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"unknown study {name!r}; valid studies: {valid}")
    return read_study_file(path)


def read_study_file(path: Path, runnable: bool = True) -> dict[str, Any]:
    """A study file, checked before any run: its structure, grid names, primary comparisons (their arms' ``where``
    against the grids' sweeps) and budget checks. ``runnable=False`` (``tiedlab-report --study``: a re-analysis of
    runs that exist) checks that it is a YAML mapping alone; the report checks its comparisons.

    Raises:
        ValueError: one line naming the file and what is wrong in it.
    """
    try:
        study = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(study, dict):
        raise ValueError(f"{path} must hold a mapping with the keys {sorted(STUDY_KEYS)}, not {type(study).__name__}")
    if not runnable:
        return study
    unknown = sorted(set(study) - set(STUDY_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {path}; valid keys: {sorted(STUDY_KEYS)}")
    name = study.get("name")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)):
        raise ValueError(f"{path}: name={name!r} must be letters, digits, '_', '.' or '-' (it names the study's "
                         "runs and report folders)")
    grids = study.get("grids")
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) and g.get("name") for g in grids):
        raise ValueError(f"{path}: grids must be a list of mappings, each with a name")
    names = [str(g["name"]) for g in grids]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{path}: grid name(s) {twice} appear more than once (a grid's name is its runs' folder)")
    for grid in study["grids"]:
        if not isinstance(grid.get("sweep") or {}, dict) or not isinstance(grid.get("overrides") or [], list):
            raise ValueError(f"grid {grid['name']!r} of {path}: sweep must be a mapping (key: [values]) and "
                             "overrides a list")
        bad = sorted(set(grid) - {"name", "optional", "overrides", "sweep"})
        if bad:
            raise ValueError(f"unknown key(s) {bad} in grid {grid.get('name')!r} of {path}; valid keys: "
                             "['name', 'optional', 'overrides', 'sweep']")
        if not isinstance(grid.get("optional", False), bool):
            raise ValueError(f"grid {grid.get('name')!r} of {path}: optional={grid['optional']!r} must be true or "
                             "false")
        grid["overrides"] = _flatten(grid.get("overrides") or [])
    read = sorted(set(optional_grids(study)) & {arm.get("grid") for arm in _primary_arms(study)})
    if read:
        raise ValueError(f"optional grid(s) {read} of {path} are read by a primary comparison: a registered "
                         "comparison's grids run by default, so drop 'optional' or the comparison")
    if study.get("primary") is not None or study.get("budget_checks"):  # malformed ones fail here, before any run
        from tiedlab.reports.budget import load_budget_checks
        from tiedlab.reports.primary import load_primaries

        try:
            primaries = load_primaries(study)
            load_budget_checks(study, primaries)
            check_arms(study, primaries)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return study


def check_arms(study: dict[str, Any], primaries: list[Any]) -> None:
    """Each primary arm's ``where`` names keys its grid sweeps, with values it sweeps: a typo would select no run
    (and the comparison read nothing, registered as it is).

    Raises:
        ValueError: naming the comparison, the arm, the key or value and what the grid sweeps.
    """
    from tiedlab.reports.primary import same_value

    # a swept +key or ~key names its runs' folders without the sign (``primary.run_values``)
    sweeps = {g["name"]: {str(k).lstrip("+~"): v for k, v in (g.get("sweep") or {}).items()} for g in study["grids"]}
    for p in primaries:
        for side, arm in (("a", p.a), ("b", p.b)):
            sweep = sweeps.get(arm.grid, {})
            for key, value in arm.where:
                if key not in sweep:
                    raise ValueError(f"primary {p.key} arm {side}: where {key}={value!r}, but grid {arm.grid!r} does "
                                     f"not sweep {key} (it sweeps {sorted(sweep)})")
                values = sweep[key] if isinstance(sweep[key], list) else [sweep[key]]
                if not any(same_value(str(v), value) for v in values):
                    raise ValueError(f"primary {p.key} arm {side}: where {key}={value!r}, which grid {arm.grid!r} "
                                     f"does not sweep (its values: {values})")


def optional_grids(study: dict[str, Any]) -> list[str]:
    """The names of the study's optional grids: run only when ``--grids`` names them, never read by a primary."""
    return [g["name"] for g in study["grids"] if g.get("optional", False)]


def default_grids(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The grids a study runs when ``--grids`` is not given: all but the optional ones."""
    return [g for g in study["grids"] if not g.get("optional", False)]


def _primary_arms(study: dict[str, Any]) -> list[dict[str, Any]]:
    comparisons = (study.get("primary") or {}).get("comparisons") or []
    return [arm for c in comparisons if isinstance(c, dict) for arm in (c.get("a"), c.get("b"))
            if isinstance(arm, dict)]


def _flatten(overrides: list[Any]) -> list[str]:
    """Nested lists of overrides (a YAML anchor reused inside another list: ``[*vision, block=tied]``) made flat."""
    flat: list[str] = []
    for item in overrides:
        flat.extend(_flatten(item) if isinstance(item, list) else [str(item)])
    return flat


def study_commands(study: dict[str, Any], out: Path, extra: list[str], jobs: int) -> list[list[str]]:
    """One multirun command per grid of the study (each run's tracker grouped as ``<study>/<grid>``)."""
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
               f"logger.group={study.get('name', 'study')}/{grid['name']}",
               f"hydra.job.config.override_dirname.exclude_keys=[{','.join(hidden)}]"]
        if swept:  # RUNS/<grid>/<swept values>: a grid has one paradigm, so no paradigm level in between
            cmd.append("hydra.sweep.subdir='${tiedlab_dirname:${hydra:job.override_dirname}}'")
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


# Overrides that never name a run directory: the run-directory bookkeeping keys and the launcher's own.
_HIDDEN_KEYS = ("paradigm", "hydra.searchpath", *rundir.NOT_FINGERPRINTED, "logger.group", "hydra.launcher.n_jobs",
                "hydra/launcher")


def study(argv: list[str] | None = None) -> int:
    """Run every grid of a named study, then build its report."""
    parser = argparse.ArgumentParser(prog="tiedlab-study", description=study.__doc__)
    parser.add_argument("name", help="a file in configs/study/ (without .yaml), or the path of a study file "
                                     "(ending in .yaml) kept elsewhere, named by its name: key")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. train.device=cpu")
    parser.add_argument("--runs", default=None, help="where run directories go (default runs/study/NAME)")
    parser.add_argument("--out", default=None, help="report folder (default reports/studies/NAME)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once on this machine's CPUs, all grids together (Ray), the cores split "
                             "between them (train.threads)")
    parser.add_argument("--gpus", default=None,
                        help="'all' or device ids (0,1,3): all grids' runs over these GPUs, --per-gpu at a time on "
                             "each, each run seeing only its own (Ray)")
    parser.add_argument("--per-gpu", type=int, default=None, help="runs at once per GPU with --gpus (default 1)")
    parser.add_argument("--seed-batch", type=int, default=None, metavar="K",
                        help="train up to K seeds of a cell in one process as one vectorised model (Ray path; "
                             "paradigms and blocks that cannot be vectorised run their seeds separately); "
                             "benchmarks/bench_seeds.py measures whether it pays on your machine")
    parser.add_argument("--ray-address", default=None,
                        help="with --gpus or --jobs: an existing Ray cluster ('auto', or HOST:PORT) instead of a "
                             "Ray started on this machine; the runs folder must be on a shared file system")
    parser.add_argument("--slurm", action="store_true",
                        help="submit every unfinished run as one Slurm job array (submitit) and return; timed-out "
                             "or preempted jobs checkpoint, are requeued and resume")
    parser.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                        help="with --slurm: change a value of configs/hydra/launcher/slurm.yaml (partition=gpu, "
                             "timeout_min=600, array_parallelism=32, ...)")
    parser.add_argument("--submitit-cluster", default=None, choices=["slurm", "local", "debug"],
                        help="with --slurm: submitit's executor (default: Slurm when sbatch exists; 'local' runs "
                             "the same submission as processes on this machine)")
    parser.add_argument("--status", action="store_true",
                        help="print, per grid, how many runs are done, not at equilibrium, diverged, failed, "
                             "running, stopped (resumable) and pending; run nothing")
    parser.add_argument("--plan", action="store_true",
                        help="print, per grid, the runs, those finished and the estimated time of the rest (from "
                             "measured run times), and per primary comparison the seeds the verdict rules need and "
                             "their cost, read as the report would (at alpha / looks under the runs folder's "
                             "sequential plan or --until-decided's); run nothing")
    parser.add_argument("--step-times", default=None, metavar="FILE",
                        help="with --plan: price the runs no finished run measures from the training step times "
                             "that `python benchmarks/gpu_check.py --study NAME --out FILE` measured (evaluation "
                             "left out)")
    parser.add_argument("--arms", action="store_true",
                        help="print, per primary comparison, every config key its two arms set otherwise (each "
                             "arm's cell composed from the study file and configs/ now, with the command's "
                             "overrides); run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--grids", default=None,
                        help="comma-separated grid names or fnmatch patterns to run (default: every grid but the "
                             "study's optional ones, which a pattern may name), e.g. 'graph_*'")
    parser.add_argument("--until-decided", action="store_true",
                        help="after the grids, add seed rounds to the arms of undetermined primary comparisons until "
                             "each is decided or has --max-seeds seeds (group-sequential: alpha split over the looks)")
    parser.add_argument("--max-seeds", type=int, default=None, help="seeds per arm at most (--until-decided; 10)")
    parser.add_argument("--seed-step", type=int, default=None, help="seeds added per round (--until-decided; 2)")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="with --until-decided: wall minutes for this command; each look advances only the "
                             "undetermined comparisons whose new runs fit the time left, cheapest first (estimated "
                             "from finished runs of the same cells, as --plan does)")
    args = parser.parse_intermixed_args(argv)  # overrides before or after the flags
    launcher = choose_launcher(args)
    given = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("max_seeds", "seed_step", "budget_min")
             if getattr(args, k) is not None]
    if given and not args.until_decided:
        raise ValueError(f"{', '.join(given)} shape the looks of --until-decided: use them with it")
    args.max_seeds = 10 if args.max_seeds is None else args.max_seeds
    args.seed_step = 2 if args.seed_step is None else args.seed_step
    if args.budget_min is not None and not args.budget_min > 0:
        raise ValueError(f"--budget-min={args.budget_min} must be a positive number of minutes")
    if args.grids is not None and not args.grids.strip(","):
        raise ValueError(f"--grids={args.grids!r} names no grid (leave it out to run the study's default grids)")
    if args.status and (args.plan or args.dry_run or args.until_decided or args.step_times is not None):
        raise ValueError("--status reads the run directories: --plan, --dry-run, --until-decided and --step-times "
                         "do not apply to it")
    other = ([f"--{k.replace('_', '-')}" for k in ("status", "plan", "dry_run", "until_decided", "no_report",
                                                     "slurm", "slurm_option") if getattr(args, k)]
             + [f"--{k.replace('_', '-')}" for k in ("step_times", "seed_batch", "grids", "gpus", "per_gpu",
                                                     "ray_address", "submitit_cluster", "out")
                if getattr(args, k) is not None] + (["--jobs"] if args.jobs != 1 else []))
    if args.arms and other:
        raise ValueError(f"--arms prints the primary comparisons' arms and runs nothing: {', '.join(other)} do not "
                         "apply to it")
    if args.plan and args.budget_min is not None:
        raise ValueError(f"--budget-min={args.budget_min} cuts a run's looks to the time left; --plan prices every "
                         "look in full: leave it out")
    if args.plan and (args.dry_run or args.seed_batch is not None):
        raise ValueError("--plan prints the plan and runs nothing: --dry-run and --seed-batch do not apply to it")
    spec = load_study(args.name)
    ref = args.ref = args.name  # how a later command names the study (a study file's path, or a shipped name)
    if args.name.endswith((".yaml", ".yml")):  # a study file outside configs/study: named by its name: key (an
        args.name = str(spec.get("name") or Path(args.name).stem)  # amended copy is the same study), else its stem
        if (study_dir() / f"{args.name}.yaml").exists() and (args.runs is None or (
                args.out is None and not (args.no_report or args.status or args.plan or args.arms or args.dry_run))):
            raise ValueError(f"{ref} has the name of the shipped study {args.name!r}: give it --runs (and --out, "
                             "or --no-report), so that its runs and report stay out of that study's folders")
    runs = Path(args.runs or Path(os.environ.get("TIEDLAB_RUNS", "runs")) / "study" / args.name)
    if args.ray_address:  # the workers start in the directory their `ray start` ran in, not this one
        runs = runs.absolute()
    full = dict(spec)
    spec["grids"] = select_grids(spec, args.grids.split(",")) if args.grids else default_grids(spec)
    if args.arms:
        return print_arms(full, runs, args.overrides)
    check_same_study(runs, spec.get("name"))  # whatever is asked of the folder
    if args.status:
        return print_status(spec, runs, args.overrides)
    if args.step_times is not None and not args.plan:
        raise ValueError(f"--step-times={args.step_times} prices a plan: use it with --plan")
    if args.plan:
        looks = planned_looks(runs, full, args)  # a plan other than the recorded one: said the plan's way
    if args.plan or args.dry_run:  # what the command would register must pass the checks the run makes
        check_study_file(runs, full, sequential_plan(full, args.max_seeds, args.seed_step) if args.until_decided
                         else None)
    check_primary_paradigms(full, runs, args.overrides)  # before anything is registered or run
    if args.plan:
        from .plan import format_plan, load_step_times, study_plan

        planned = launch.study_runs(spec, runs, args.overrides)
        launch.check_reused(planned)  # as the run would (a dry run does)
        step_times = load_step_times(args.step_times, ref) if args.step_times is not None else None
        slots, slots_note = study_slots(args)
        text = format_plan(study_plan(spec, runs, args.overrides, step_times, full, looks), slots=slots)
        launch.check_composes(planned)  # a mistyped key of a grid or the command: one line, as the run gives it
        print(f"study {spec.get('name')} in {runs}")
        print(text)
        if slots_note:
            print(slots_note)
        left_out = [g for g in optional_grids(full) if g not in {grid["name"] for grid in spec["grids"]}]
        if left_out:
            print(f"optional grids, not in this plan (select them with --grids): {', '.join(left_out)}")
        return 0
    if launcher == "ray" and args.gpus is not None and args.ray_address is None and not args.dry_run:
        launch.node_gpus(args.gpus)  # no GPU here for --gpus: one line before anything is written or counted
    plan = sequential_plan(full, args.max_seeds, args.seed_step) if args.until_decided else None
    held = contextlib.ExitStack()
    if plan is not None and not args.dry_run:  # one --until-decided command on a runs folder at a time: each reads
        runs.mkdir(parents=True, exist_ok=True)  # sequential.yaml once and rewrites it after every look
        held.enter_context(rundir.hold_lock(runs))
    with held:
        if not args.dry_run:
            write_study_file(runs, full, plan)  # the whole study (its registered comparisons), whatever --grids ran
        if launcher == "slurm":
            return submit_study(spec, runs, args)
        execute = (lambda grids: run_grids_with_ray(spec.get("name", "study"), grids, runs, args)) \
            if launcher == "ray" else (lambda grids: run_grids(spec.get("name", "study"), grids, runs, args))
        if plan is not None and not args.dry_run:
            migrate_sequential_state(full, runs, plan)  # before this command trains anything
        started = time.time()
        failures = execute(spec["grids"])
        if args.dry_run:
            return 0
        if plan is not None:
            deadline = started + 60 * args.budget_min if args.budget_min is not None else None
            slots, slots_note = study_slots(args)
            if slots_note and deadline is not None:
                print(f"[tiedlab] {slots_note}", flush=True)
            failures += add_seeds_until_decided(full, runs, plan, args.overrides, slots, execute, deadline,
                                                {g["name"] for g in spec["grids"]} if args.grids else None,
                                                args.seed_batch or 1)
        elapsed = time.time() - started
        counts = closing_counts(spec, runs, args.overrides)
        print(f"[tiedlab] study {args.name}: {len(spec['grids'])} grids in {elapsed / 60:.1f} min, {failures} exited "
              f"non-zero; runs: {', '.join(f'{n} {status}' for status, n in counts.items())}", flush=True)
        if spec.get("report", True) and not args.no_report:
            from tiedlab.reports.cli import main as report_main

            command = shlex.join(["tiedlab-study", *(argv if argv is not None else sys.argv[1:])])
            reported = report_main([str(runs), "--out", args.out or f"reports/studies/{args.name}",
                                    "--title", f"study {args.name}", "--command", command])
            if reported:
                print(f"[tiedlab] the report of study {args.name} failed (exit {reported})", flush=True)
                return 1
        return 1 if failures or counts["failed"] else 0


def choose_launcher(args: argparse.Namespace) -> str:
    """"multirun" (grid by grid, Hydra's launcher), "ray" (--jobs N > 1, --gpus or --seed-batch) or "slurm"
    (--slurm), from flags that must not contradict each other.

    Raises:
        ValueError: two ways of launching at once (--gpus, --jobs N, --slurm, a hydra/launcher= or
            hydra.launcher.* override), or an option of one without it.
    """
    chosen = [name for name, on in (("--gpus", args.gpus is not None), (f"--jobs {args.jobs}", args.jobs > 1),
                                    ("--slurm", args.slurm)) if on]
    hydra_launcher = [o for o in args.overrides if o.split("=")[0].lstrip("+~").startswith(("hydra/launcher",
                                                                                            "hydra.launcher"))]
    if args.jobs < 1:
        raise ValueError(f"--jobs={args.jobs} must be >= 1")
    if len(chosen) > 1 or (chosen and hydra_launcher):
        raise ValueError(f"{' and '.join(chosen + hydra_launcher)} each choose how runs are launched; give one "
                         "(--gpus places runs on GPUs, --jobs N on CPU cores, --slurm submits to Slurm)")
    if args.per_gpu is not None and args.gpus is None:
        raise ValueError("--per-gpu needs --gpus")
    if args.per_gpu is not None and args.per_gpu < 1:
        raise ValueError(f"--per-gpu={args.per_gpu} must be >= 1")
    if args.ray_address and not (args.gpus is not None or args.jobs > 1):
        raise ValueError("--ray-address needs --gpus or --jobs N")
    if (args.slurm_option or args.submitit_cluster) and not args.slurm:
        raise ValueError("--slurm-option and --submitit-cluster need --slurm")
    if args.seed_batch is not None and (args.seed_batch < 2 or args.slurm or hydra_launcher):
        raise ValueError(f"--seed-batch={args.seed_batch} needs K >= 2 and the Ray path (--jobs N or --gpus; "
                         "with neither, one run at a time), not --slurm or a hydra/launcher= override")
    if args.slurm and args.out is not None:
        raise ValueError(f"--out {args.out}: --slurm returns once the runs are submitted and builds no report; build "
                         "it when they ended: tiedlab-report RUNS --out DIR")
    if args.slurm and args.until_decided:
        raise ValueError("--until-decided reads results between its seed rounds, so it needs a launcher that waits: "
                         "use --gpus or --jobs, or run the looks after the Slurm jobs ended")
    if any(o.split("=")[0].startswith("hydra/launcher") and o.split("=", 1)[1] == "slurm" for o in hydra_launcher):
        print("[tiedlab] note: hydra/launcher=slurm runs the grids one after another and waits for each job array; "
              "--slurm submits the whole study as one array and returns", flush=True)
    return "slurm" if args.slurm else "ray" if chosen or args.seed_batch else "multirun"


def run_grids(study_name: str, grids: list[dict[str, Any]], runs: Path, args: argparse.Namespace) -> int:
    """Each grid as one Hydra multirun, one after another (finished grids skipped); returns how many exited
    non-zero.

    Raises:
        ValueError: a finished run was trained with another config, or a grid's overrides and the command's do not
            compose (``launch.check_reused``, ``launch.check_composes``).
    """
    failures = 0
    planned = launch.study_runs({"name": study_name, "grids": grids}, runs, args.overrides)
    launch.check_reused(planned)
    launch.check_composes(planned)  # a mistyped override: one line before any grid starts (a dry run's too)
    cmds = study_commands({"name": study_name, "grids": grids}, runs, args.overrides, 1)
    for grid, cmd in zip(grids, cmds):
        if not args.dry_run and not args.overrides and grid_finished(grid, runs):
            print(f"= {grid['name']}: every run finished; skipped", flush=True)
            continue
        print("+ " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            failures += launch.call(cmd) != 0
    return failures


def _unfinished(study_name: str, grids: list[dict[str, Any]], runs: Path, args: argparse.Namespace) -> list[Any]:
    """The runs of ``grids`` to launch: all but the finished ones (``launch.check_reused`` has checked that they
    are this command's, extra overrides included) and those running now. One run of each grid is composed first,
    so that a mistyped override is one line here, not a failure in every task a scheduler starts.

    Raises:
        ValueError: a finished run was trained with another config (``launch.check_reused``), or a grid's
            overrides and the command's do not compose.
    """
    todo = []
    every = launch.study_runs({"name": study_name, "grids": grids}, runs, args.overrides)
    launch.check_reused(every)
    launch.check_composes(every)
    for run in every:
        state = launch.run_state(Path(run.run_dir))
        if state == "running":
            print(f"= {run.name}: running in another process; left to it", flush=True)
        elif state in launch.FINISHED_STATES:
            continue
        else:
            todo.append(run)
    return todo


def _why_not_batchable(run: Any) -> str | None:
    """Why ``run``'s cell cannot train as a seed batch (``seedbatch.why_not_batchable``; None: it can), composed
    once per cell for this process (a look's budget asks again for every union of comparisons it tries)."""
    cell = tuple(o for o in run.overrides if o.split("=", 1)[0] != "seed")
    if cell not in _WHY_NOT_BATCHABLE:
        from .cli import compose_config
        from .seedbatch import why_not_batchable

        from hydra.errors import HydraException

        from .cli import config_error

        try:
            composed = compose_config([*run.overrides, f"run_dir={launch._quoted(run.run_dir)}"])
        except HydraException as err:
            raise ValueError(f"{run.name}: its overrides do not compose ({config_error(err)})") from None
        _WHY_NOT_BATCHABLE[cell] = why_not_batchable(composed)
    return _WHY_NOT_BATCHABLE[cell]


_WHY_NOT_BATCHABLE: dict[tuple[str, ...], str | None] = {}


def _batchable_quietly(run: Any) -> bool:
    """Whether ``run``'s cell trains as a seed batch, saying nothing (a look's price)."""
    return _why_not_batchable(run) is None


def _batchable_reporter() -> Any:
    """``launch.seed_batches``' test of a cell: its first run's config can train as a seed batch; says once per
    grid why not."""
    said: set[str] = set()

    def batchable(run: Any) -> bool:
        why = _why_not_batchable(run)
        cell = ",".join(p for p in Path(run.run_dir).name.split(",") if not p.startswith("seed="))
        if why and why not in said:
            said.add(why)
            print(f"[tiedlab] {run.grid}/{cell} (and any other cell like it): seeds run separately ({why})", flush=True)
        return why is None

    return batchable


def run_grids_with_ray(study_name: str, grids: list[dict[str, Any]], runs: Path, args: argparse.Namespace) -> int:
    """Every unfinished run of ``grids`` at once through Ray (``launch.run_with_ray``); returns how many runs
    did not end with status 0."""
    todo = _unfinished(study_name, grids, runs, args)
    count = len(todo)
    if args.seed_batch:
        todo = launch.seed_batches(todo, args.seed_batch, _batchable_reporter())
    where = (f"GPUs {args.gpus}, {args.per_gpu or 1} per GPU" if args.gpus is not None
             else f"{args.jobs} at a time on CPU")
    batches = sum(isinstance(t, launch.SeedBatchSpec) for t in todo)
    print(f"[tiedlab] {count} runs to train" + (f" ({batches} seed batches of up to {args.seed_batch})" if batches else "")
          + f" over {where}"
          + (f" on the Ray cluster {args.ray_address}" if args.ray_address else ""), flush=True)
    if args.dry_run:
        for run in todo:
            print("+ " + shlex.join(launch.run_command(run)), flush=True)
        return 0
    if not todo:
        return 0

    def done(result: dict[str, Any]) -> None:
        state = "ok" if result["code"] == 0 else f"exit {result['code']}"
        print(f"[tiedlab] {result['run']}" + (f" (GPU {result['gpu']})" if result.get("gpu") else "") + f": {state}",
              flush=True)

    results = launch.run_with_ray(todo, gpus=args.gpus, per_gpu=args.per_gpu or 1, jobs=args.jobs,
                                  address=args.ray_address, record=runs / ".launch" / "events.jsonl", on_done=done)
    return sum(r["code"] != 0 for r in results)


def submit_study(spec: dict[str, Any], runs: Path, args: argparse.Namespace) -> int:
    """Submit every unfinished run of the study as one submitit job array and return at once."""
    import json

    options = launch.slurm_options(args.slurm_option)
    name = f"tiedlab-{spec.get('name', 'study')}"
    todo = _unfinished(spec.get("name", "study"), spec["grids"], runs, args)
    # submitit's local executor (named, or chosen by its AutoExecutor where Slurm's srun is absent) has no queue
    slurm = args.submitit_cluster == "slurm" or (args.submitit_cluster is None and shutil.which("srun"))
    if todo and slurm and not args.dry_run:
        queued = launch.slurm_queued(runs / ".submitit" / "submissions.jsonl", name)
        waiting = {r.name: queued.get(str(Path(r.run_dir).resolve())) for r in todo}
        for run_name, task in waiting.items():
            if task:
                print(f"= {run_name}: in Slurm's queue as task {task}; left to it", flush=True)
        todo = [r for r in todo if not waiting[r.name]]
    if options.get("gpus_per_node"):  # each task's run on its GPU, or a one-line failure: never the CPU unseen
        todo = [launch.on_gpu(r) for r in todo]
    if args.dry_run or not todo:
        print(f"[tiedlab] {len(todo)} runs to submit; options {options}", flush=True)
        for run in todo if args.dry_run else []:
            print("+ " + shlex.join(launch.run_command(run)), flush=True)
        return 0
    folder = runs / ".submitit"
    jobs = launch.submit_slurm(todo, folder, options, name=name, cluster=args.submitit_cluster)
    ids = [str(j.job_id) for j in jobs]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "submissions.jsonl", "a") as fh:
        fh.write(json.dumps({"time": time.time(), "jobs": ids, "runs": [str(Path(r.run_dir).absolute()) for r in todo],
                             "options": options}) + "\n")
    first = ids[0].split("_")[0]
    print(f"[tiedlab] submitted {len(todo)} runs of study {spec.get('name')} as job array {first} "
          f"(at most {options.get('array_parallelism')} at once, {options.get('timeout_min')} min per job, requeued "
          f"after a timeout or preemption); logs in {folder}\n"
          f"[tiedlab] follow it with: tiedlab-study {args.ref} --status"
          + (f" --runs {args.runs}" if args.runs else ""), flush=True)
    return 0


def arms_first_runs(full: dict[str, Any], runs: Path, extra: list[str]) -> list[tuple[Any, tuple[Any, Any]]]:
    """Per primary comparison of the study ``full``, the first run its arm a and its arm b select (None: the arm
    selects none), over every grid, optional ones too (an arm may live in one): a run of each arm's cell, for
    composing what the arms' runs would record."""
    from tiedlab.reports.primary import arm_runs, load_primaries

    specs = load_primaries(full)
    runs_of = launch.study_runs(full, runs, extra) if specs else []
    grids = [g["name"] for g in full.get("grids") or []]
    return [(spec, tuple(next(iter(arm_runs(arm, runs_of, grids)), None) for arm in (spec.a, spec.b)))
            for spec in specs]


def check_primary_paradigms(full: dict[str, Any], runs: Path, extra: list[str]) -> None:
    """Each primary comparison names the paradigm its arms' runs train (the adapter's ``name``, which the report
    shows): a typo, or an out-of-tree adapter named by its class, would register a transfer-table column no run
    fills. One composition per arm's cell (``launch._cell_config``, cached; an arm that selects no run is left to
    the report, a cell that does not compose to ``launch.check_composes``).

    Raises:
        ValueError: naming the comparison, the paradigm it registers and the one its arm's grid trains.
    """
    from .base import get_paradigm

    for spec, firsts in arms_first_runs(full, runs, extra):
        for side, arm, first in zip("ab", (spec.a, spec.b), firsts):
            try:
                cell = launch._cell_config(launch._cell_of(first)) if first else None
            except ValueError:  # a cell that does not compose: said by launch.check_composes, in every command
                continue  # that composes (a dry run, --plan, a run), with the other cells' errors
            if cell is None:
                continue
            name = get_paradigm(str(cell["paradigm"])).name
            if name != spec.paradigm:
                raise ValueError(f"primary comparison {spec.key}: paradigm {spec.paradigm!r}, but arm {side} (grid "
                                 f"{arm.grid!r}) trains paradigm {name!r}: register the paradigm its runs train")


def print_arms(full: dict[str, Any], runs: Path, extra: list[str]) -> int:
    """``--arms``: per primary comparison, its arms and every key of their cells' configs that differs
    (``reports.primary.arm_differences`` on ``launch._cell_config``: what a run of each arm would record now,
    flattened as the report groups cells). What a label says is matched, and what is not, is checked here before
    any compute is spent; the report lists the same from the runs' own configs."""
    from tiedlab.reports.primary import arm_differences

    arms = arms_first_runs(full, runs, extra)
    if not arms:
        print(f"study {full.get('name')} registers no primary comparisons")
        return 0
    print(f"study {full.get('name')}: what each primary comparison's arms set otherwise (A vs B), composed now")
    for spec, firsts in arms:
        cells = [[launch._cell_config(launch._cell_of(first))] if first else [] for first in firsts]
        print(f"\n{spec.key}: {spec.label or '-'}\n  A: {spec.a.title()}\n  B: {spec.b.title()}")
        if not all(cells):
            print("  an arm selects no run of its grid")
            continue
        for line in arm_differences(*cells) or ["nothing: the arms compose to the same config"]:
            print(f"  {line}")
    return 0


def print_status(spec: dict[str, Any], runs: Path, extra: list[str]) -> int:
    """``--status``: the run folders' states per grid (``launch.run_state``), and the last submission."""
    import json

    table = launch.study_status(launch.study_runs(spec, runs, extra))
    print(f"study {spec.get('name')} in {runs}")
    print(launch.format_status(table))
    record = runs / ".submitit" / "submissions.jsonl"
    if record.exists():
        lines = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        if lines:
            print(f"last Slurm submission: job array {lines[-1]['jobs'][0].split('_')[0]}, {len(lines[-1]['runs'])} "
                  f"runs, at {time.strftime('%Y-%m-%d %H:%M', time.localtime(lines[-1]['time']))} "
                  f"(logs in {record.parent})")
    return 0


def grid_finished(grid: dict[str, Any], runs: Path) -> bool:
    """Whether every run of a grid already finished (``launch.FINISHED_STATES``: all its steps trained, or
    diverged), by the run directory names Hydra gives its sweep (the sorted ``key=value`` pairs of the swept
    keys). A run its time limit ended is not: the engine decides whether the limit it is given now continues it."""
    import itertools

    sweep = grid.get("sweep") or {}
    if not sweep:
        return False
    keys = list(sweep)
    values = [v if isinstance(v, list) else [v] for v in sweep.values()]
    return all(launch.run_state(runs / grid["name"] / ",".join(sorted(f"{k}={v}" for k, v in zip(keys, combo))))
               in launch.FINISHED_STATES for combo in itertools.product(*values))


STUDY_FILE = "study.yaml"  # in a study's runs folder: the study as run (its primary comparisons, the seed plan)


def planned_looks(runs: Path, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, int] | None:
    """The sequential plan ``--plan`` reads the primaries under: the one the runs folder records, else the one
    ``--until-decided`` (with ``--max-seeds``, ``--seed-step``) would use; None for a fixed design.

    Raises:
        ValueError: --until-decided asks for another plan than the one the runs folder records.
    """
    path = runs / STUDY_FILE
    recorded = (read_record(path) or {}).get("sequential") if path.exists() else None
    asked = sequential_plan(spec, args.max_seeds, args.seed_step) if args.until_decided else None
    if recorded and asked and recorded != asked:
        raise ValueError(f"{path} was run with the sequential plan {recorded}, not {asked}: plan it with the same "
                         "--max-seeds and --seed-step (or without --until-decided)")
    return recorded or asked


def write_study_file(runs: Path, spec: dict[str, Any], plan: dict[str, int] | None) -> None:
    """Record the study (and the sequential plan, when seeds are added until decided) beside its runs, so the
    report reads the pre-registered comparisons and the looks from the runs folder itself.

    Raises:
        ValueError: as ``check_study_file``.
    """
    record = check_study_file(runs, spec, plan)
    runs.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write_bytes(runs / STUDY_FILE, yaml.safe_dump(record, sort_keys=False).encode())


def check_same_study(runs: Path, name: Any) -> dict[str, Any] | None:
    """The study the runs folder recorded (None: none yet).

    Raises:
        ValueError: it recorded another study.
    """
    path = runs / STUDY_FILE
    if not path.exists():
        return None
    old = read_record(path) or {}
    if old.get("name") != name:
        raise ValueError(f"{runs} holds the runs of study {old.get('name')!r}, not {name!r}; use another --runs folder")
    return old


def check_study_file(runs: Path, spec: dict[str, Any], plan: dict[str, int] | None) -> dict[str, Any]:
    """What ``write_study_file`` would record, after its checks against the study the runs folder recorded
    (nothing is written: ``--plan`` and ``--dry-run`` check too).

    Raises:
        ValueError: the folder already holds another study, or a sequential plan other than this one, or runs of
            the study's primary grids made without a plan (a fixed design: its verdicts are read at full alpha), or
            a registered comparison, a primary grid or a budget check that changed (``check_registration``,
            ``check_primary_grids``, ``check_budget_checks``).
    """
    path = runs / STUDY_FILE
    record = {**spec, **({"sequential": plan} if plan else {})}
    old = check_same_study(runs, spec.get("name"))
    if old is not None:
        if old.get("sequential") and plan and old["sequential"] != plan:
            raise ValueError(f"{path} was run with the sequential plan {old['sequential']}, not {plan}: the looks "
                             "of a group-sequential design are fixed in advance; rerun with the same --max-seeds "
                             "and --seed-step")
        if old.get("sequential") and not plan:
            record["sequential"] = old["sequential"]  # seeds were added sequentially: the looks stay counted
        if plan and not old.get("sequential"):
            read = sorted(g for g in primary_grids(old) if has_runs(runs / g))
            if read:
                raise ValueError(f"{runs} holds runs of grids {read} made without --until-decided, whose verdicts "
                                 "may have been read at the full alpha: a sequential plan added now would not count "
                                 "that look; use another --runs folder (or go on without --until-decided)")
        check_registration(runs, old.get("primary") or {}, spec.get("primary") or {}, spec.get("name"))
        check_primary_grids(runs, old, spec)
        check_budget_checks(runs, old.get("budget_checks") or [], spec.get("budget_checks") or [], spec.get("name"))
    return record


def primary_grids(spec: dict[str, Any]) -> set[str]:
    """The grids the study's registered primary comparisons read (their arms' ``grid``)."""
    return {str(arm["grid"]) for c in (spec.get("primary") or {}).get("comparisons") or []
            for arm in (c.get("a"), c.get("b")) if isinstance(arm, dict) and arm.get("grid")}


def check_registration(runs: Path, old: dict[str, Any], new: dict[str, Any], name: Any) -> None:
    """A registration may only grow: the comparisons registered with earlier runs stay as they were (same
    defaults, same entries in the same order), and the ones added after them form a family of their own
    (``family: NAME``, a name no earlier comparison has) whose arms' grids have no runs yet, so that they are
    registered before their data exist and corrected apart from the earlier ones.

    Raises:
        ValueError: an earlier comparison changed or was dropped, or an added one shares a family with an earlier
            one, or one of its grids already has runs in ``runs``.
    """
    before, after = old.get("comparisons") or [], new.get("comparisons") or []
    if (old.get("defaults") or None) != (new.get("defaults") or None) or after[:len(before)] != before:
        raise ValueError(f"{runs / STUDY_FILE} registered other primary comparisons than the file of study "
                         f"{name!r} now names ({registration_change(old, new)}): a pre-registered comparison is not "
                         "changed after its runs (new ones may be appended, as a family of their own); use another "
                         "--runs folder otherwise")
    families = {str(c.get("family") or "") for c in before}
    for index, added in enumerate(after[len(before):], start=len(before) + 1):
        family = str(added.get("family") or "")
        if family in families:
            taken = ", ".join(repr(f) if f else "the unnamed family" for f in sorted(families))
            raise ValueError(f"primary comparison #{index} was added after the study's first runs: give it a family "
                             f"of its own (family: NAME; taken: {taken}), so Holm corrects it apart")
        for arm in ("a", "b"):
            grid = (added.get(arm) or {}).get("grid")
            if grid and has_runs(runs / str(grid)):
                raise ValueError(f"primary comparison #{index} was added after the study's first runs, but its grid "
                                 f"{grid!r} already has runs in {runs}: a comparison is registered before its data")


def registration_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first difference between two registrations (``primary:`` sections), in words: the defaults, or a
    comparison's changed keys with their values (a key set on one side only reads "(absent)" on the other), or a
    comparison dropped; entries that are not mappings (a hand-edited record) are shown as they are."""
    if (old.get("defaults") or None) != (new.get("defaults") or None):
        return f"defaults {old.get('defaults')} -> {new.get('defaults')}"
    before, after = old.get("comparisons") or [], new.get("comparisons") or []
    if not isinstance(before, list) or not isinstance(after, list):
        return f"comparisons {before!r} -> {after!r}"

    absent = object()  # a key set on one side only (compared with ==, as check_registration compares)

    def shown(entry: dict[str, Any], key: Any) -> str:
        return repr(entry[key]) if key in entry else "(absent)"

    for index, was in enumerate(before, start=1):
        name = (f"#{index} ({was.get('id') or was.get('insight')}/{was.get('paradigm')})" if isinstance(was, dict)
                else f"#{index}")
        if index > len(after):
            return f"comparison {name} dropped"
        now = after[index - 1]
        if not isinstance(was, dict) or not isinstance(now, dict):
            if was != now:
                return f"comparison {name}: {was!r} -> {now!r}"
            continue
        keys = [k for k in sorted(set(was) | set(now), key=str) if was.get(k, absent) != now.get(k, absent)]
        if keys:
            return f"comparison {name}: " + ", ".join(f"{k} {shown(was, k)} -> {shown(now, k)}" for k in keys)
    return "the same comparisons"


GRID_DEFINITION = ("overrides", "sweep")  # what a grid's runs are: their fixed overrides and the values swept


def check_primary_grids(runs: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """A grid a registered comparison reads is fixed once it has runs: its overrides and its sweep (the seeds
    with them) stay as recorded. More seeds in the file after a fixed-design verdict was read would be a second
    look at the full alpha; another override would pool runs of two configs in one arm. (``--until-decided``
    adds seeds by its plan, not by the file; new grids and comparisons may still be appended.)

    Raises:
        ValueError: such a grid changed, or is gone from the study file, naming it and what differs.
    """
    before = {g.get("name"): g for g in old.get("grids") or []}
    after = {g.get("name"): g for g in new.get("grids") or []}
    for name in sorted(primary_grids(old)):
        folder = runs / name
        if name not in before or not has_runs(folder):
            continue
        if name not in after:
            raise ValueError(f"grid {name!r} has runs in {runs} and a registered comparison reads it, but "
                             f"the file of study {new.get('name')!r} no longer defines it; use another --runs folder")
        changed = [k for k in GRID_DEFINITION if (before[name].get(k) or None) != (after[name].get(k) or None)]
        if changed:
            raise ValueError(f"grid {name!r} has runs in {runs} and a registered comparison reads it, but its "
                             f"{' and '.join(changed)} differ from {runs / STUDY_FILE}: runs of one arm would "
                             "mix two designs (more seeds read again at the full alpha, or two configs); use "
                             "another --runs folder (seeds are added by --until-decided's looks, not by the file)")


def check_budget_checks(runs: Path, old: list[Any], new: list[Any], name: Any) -> None:
    """Budget checks (``reports.budget``) may only grow: the ones recorded with earlier runs stay as they were. A
    check changes no verdict, so one may be added when its grids already have runs; its prediction belongs in the
    study file's header, written before them.

    Raises:
        ValueError: a recorded check changed or was dropped.
    """
    if new[:len(old)] != old:
        raise ValueError(f"{runs / STUDY_FILE} recorded other budget checks than the file of study {name!r} now names: "
                         "a recorded check is not changed (new ones may be appended); use another --runs folder "
                         "otherwise")


def sequential_plan(spec: dict[str, Any], max_seeds: int, step: int) -> dict[str, int]:
    """The looks of ``--until-decided``: from the seeds the study's grids start with, ``step`` more per round,
    up to ``max_seeds``. Raises ValueError when the study names no primary comparison or the plan is empty."""
    from tiedlab.reports import stats
    from tiedlab.reports.primary import load_primaries

    specs = load_primaries(spec)
    if not specs:
        raise ValueError(f"study {spec.get('name')!r} names no primary comparison: --until-decided has nothing to "
                         "decide (add a 'primary:' block to the study file)")
    grids = {g["name"]: g for g in spec["grids"]}
    seeds = {arm.grid: list((grids[arm.grid].get("sweep") or {}).get("seed") or [0])
             for p in specs for arm in (p.a, p.b)}
    firsts = {}
    for grid, values in seeds.items():
        if not all(isinstance(v, int) for v in values) or values != list(range(values[0], values[0] + len(values))):
            raise ValueError(f"grid {grid!r} sweeps seed {values}: --until-decided continues a run of consecutive "
                             "integer seeds (e.g. [0, 1, 2, 3], or [100, 101] for a replication on fresh seeds)")
        firsts.setdefault(values[0], []).append(grid)
    if len(firsts) > 1:
        starts = "; ".join(f"{first} ({', '.join(sorted(names))})" for first, names in sorted(firsts.items()))
        raise ValueError("--until-decided pairs the arms by seed, so the primary arms' grids must start at one seed; "
                         f"they start at {starts}")
    start = min(len(values) for values in seeds.values())
    if step < 1 or max_seeds < start:
        raise ValueError(f"--max-seeds={max_seeds} must be >= the {start} seeds the grids start with, and "
                         f"--seed-step={step} >= 1")
    looks = stats.plan_looks(start, max_seeds, step)
    (first,) = firsts
    return {"start": start, "step": step, "max_seeds": max_seeds, "looks": len(looks),
            **({"first_seed": first} if first else {})}  # seeds first .. first + n - 1 at a look of n seeds


SEQUENTIAL_FILE = "sequential.yaml"  # in a study's runs folder: the look reached and the look each verdict came at


def read_record(path: Path) -> dict[str, Any] | None:
    """A record the runner keeps in a runs folder (study.yaml, sequential.yaml): a YAML mapping, or None when empty.

    Raises:
        ValueError: one line naming the file, when it is not valid YAML or not a mapping (edited or damaged by
            hand: the runner writes each atomically).
    """
    try:
        record = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML ({' '.join(str(err).split())}): restore it, or use another "
                         "--runs folder") from None
    if record is not None and not isinstance(record, dict):
        raise ValueError(f"{path} must hold a mapping, not {type(record).__name__}: restore it, or use another "
                         "--runs folder")
    return record


SEQUENTIAL_HEADER = ("# tiedlab-study --until-decided's record. Looks count from 0 (look 0: the first pass; the log's "
                     "'look 1/K'); -1: none.\n# decided / verdicts: the look a comparison was decided at and its "
                     "verdict; read: the last look whose seeds it was read on;\n# budget_skipped: look -> the "
                     "comparisons --budget-min left behind there.\n")


def write_sequential_state(runs: Path, state: dict[str, Any]) -> None:
    """``sequential.yaml`` (``read_sequential_state``'s dict) with a header that says how to read it."""
    text = SEQUENTIAL_HEADER + yaml.safe_dump(state, sort_keys=True)
    rundir.atomic_write_bytes(runs / SEQUENTIAL_FILE, text.encode())


def read_sequential_state(runs: Path) -> dict[str, Any]:
    """{"look": index of the last look analysed (-1: none), "decided": {comparison key: the look it was decided at},
    "verdicts": {comparison key: the verdict it was decided with}, "read": {comparison key: the last look whose seeds
    it was read on}, "budget_skipped": {look: [keys]}} ("verdicts" is absent from records written before it was
    kept)."""
    path = Path(runs) / SEQUENTIAL_FILE
    state = read_record(path) if path.exists() else None
    return state or {"look": -1, "decided": {}}


def looks_read(specs: list[Any], state: dict[str, Any]) -> dict[str, int]:
    """The last look each comparison was read at (-1: none). A ``sequential.yaml`` written before comparisons
    kept their own record gives the last look reached that did not skip it for the budget (the runner then goes
    back to the last of those looks whose seeds its arms have: ``migrate_sequential_state``)."""
    if "read" in state:
        return {s.key: int((state.get("read") or {}).get(s.key, -1)) for s in specs}
    skipped = state.get("budget_skipped") or {}
    last = int(state.get("look", -1))
    return {s.key: max([k for k in range(last + 1) if s.key not in (skipped.get(k) or [])], default=-1)
            for s in specs}


def migrate_sequential_state(spec: dict[str, Any], runs: Path, plan: dict[str, int]) -> None:
    """Give a ``sequential.yaml`` written before comparisons kept their own looks its ``read`` record: the last
    look reached that did not skip the comparison for the budget (``looks_read``), taken back to the last of those
    whose seeds both its arms have (a comparison outside an earlier ``--grids`` pass has none). Run before the
    command trains anything, so that only runs the record's looks could have read count."""
    from tiedlab.reports import stats
    from tiedlab.reports.load import load_runs
    from tiedlab.reports.primary import load_primaries

    state = read_sequential_state(runs)
    if state.get("look", -1) < 0 or "read" in state:
        return
    specs = load_primaries(spec)
    grids = {g["name"]: g for g in spec["grids"]}
    counts = stats.plan_looks(plan["start"], plan["max_seeds"], plan["step"])
    first = plan.get("first_seed", 0)
    found = load_runs([runs])
    read = looks_read(specs, state)
    for s in specs:
        while read[s.key] >= 0 and not has_look_seeds(s, found, grids, first, counts[read[s.key]]):
            read[s.key] -= 1
    state["read"] = read
    write_sequential_state(runs, state)


def seed_limits(specs: list[Any], plan: dict[str, int], state: dict[str, Any]) -> dict[str, int]:
    """How many seeds each primary comparison is read on (the plan's first seed onwards): the seed count of the look
    it was decided at, or of the last look it was read at (a look it took no seeds in, outside ``--grids`` or
    skipped for the budget, does not count; all the seeds of a fixed design: no limits before the first look)."""
    from tiedlab.reports import stats

    if state.get("look", -1) < 0:
        return {}
    counts = stats.plan_looks(plan["start"], plan["max_seeds"], plan["step"])
    decided = state.get("decided") or {}
    read = looks_read(specs, state)
    return {s.key: counts[min(decided[s.key] if s.key in decided else max(read[s.key], 0), len(counts) - 1)]
            for s in specs}


def add_seeds_until_decided(spec: dict[str, Any], runs: Path, plan: dict[str, int], extra: list[str],
                            jobs: int, execute: Any = None, deadline: float | None = None,
                            selected: set[str] | None = None, seed_batch: int = 1) -> int:
    """The looks of the group-sequential plan: at look k every primary comparison still undetermined gets seeds
    f..f+n_k-1 on both arms (f: the plan's ``first_seed``, 0 unless the grids start elsewhere; missing or
    unfinished runs only) and is read on exactly those seeds at alpha/looks (Holm across the comparisons); a
    decided comparison is frozen at the look it was decided at (``sequential.yaml``). A rerun replays the looks on
    the same data and continues where it stopped. With a ``deadline`` (epoch seconds), a look advances only the
    comparisons whose runs fit the time left, cheapest first (``fit_look_to_budget``); the others keep the seeds
    they have (the alpha split over every planned look stays, which only makes their verdicts conservative), and
    ``sequential.yaml`` lists them under ``budget_skipped``. With ``selected`` grid names (``--grids``) only the
    comparisons whose two arms read those grids take seeds; the others keep theirs, as when the budget skips them.
    A comparison the report cannot read because its runs were not made alike (``primary.MIXED_REASON``) takes no
    more seeds. ``seed_batch``: the runner's --seed-batch, which the budget's estimate prices (``look_cost_s``).
    Returns how many grid commands (Hydra's launcher) or runs (Ray) failed."""
    from tiedlab.reports import stats
    from tiedlab.reports.load import load_runs
    from tiedlab.reports.primary import MIXED_REASON, evaluate_primaries, load_primaries

    specs = load_primaries(spec)
    grids = {g["name"]: g for g in spec["grids"]}
    counts = stats.plan_looks(plan["start"], plan["max_seeds"], plan["step"])
    first = plan.get("first_seed", 0)
    state = read_sequential_state(runs)
    state["decided"] = dict(state.get("decided") or {})
    verdicts = dict(state.get("verdicts") or {})
    read_before = looks_read(specs, state)
    state["read"] = dict(read_before)
    by_key = {s.key: s for s in specs}
    failures = 0
    outside = [s.key for s in specs if selected is not None and not {s.a.grid, s.b.grid} <= selected]
    if outside:
        print(f"[tiedlab] --grids: {len(outside)} registered comparisons read other grids and take no seeds here "
              f"({', '.join(outside)})", flush=True)
    mixed: dict[str, str] = {}  # comparisons whose runs were not made alike: more seeds cannot make them readable
    for look, n in enumerate(counts):
        found = load_runs([runs]) if runs.exists() else []
        pending = [s for s in specs if s.key not in state["decided"] and s.key not in outside and s.key not in mixed]
        if not pending:
            break
        wanted = {s.key: look_cells(s, found, grids, range(first, first + n)) for s in pending}
        skipped = []
        if deadline is not None:
            advanced, skipped = fit_look_to_budget(spec, wanted, grids, runs, extra, jobs, deadline - time.time(),
                                                   seed_batch)
            if skipped:
                print(f"[tiedlab] look {look + 1}/{len(counts)}: {', '.join(skipped)} not advanced: their runs do not "
                      f"fit the {max(deadline - time.time(), 0) / 60:.0f} min left of --budget-min", flush=True)
            wanted = {k: v for k, v in wanted.items() if k in advanced}
        todo = merge_cells(wanted.values())
        look_grids = []
        for grid in cell_grids(todo, grids):
            if grid_finished(grid, runs):
                launch.check_reused(launch.grid_runs(spec.get("name", "study"), grid, runs, extra))
                continue
            cell = {k: v[0] for k, v in grid["sweep"].items() if k not in ("seed", "data.fold")}
            print(f"[tiedlab] look {look + 1}/{len(counts)}: seeds {first}-{first + n - 1} for {grid['name']} {cell}",
                  flush=True)
            if execute is None:
                (cmd,) = study_commands({"name": spec.get("name"), "grids": [grid]}, runs, extra, jobs)
                print("+ " + shlex.join(cmd), flush=True)
                failures += launch.call(cmd) != 0
            else:
                look_grids.append(grid)
        if look_grids:
            failures += execute(look_grids)
        found = load_runs([runs]) if runs.exists() else []
        # the comparisons this look read: advanced, with runs for all its seeds on both arms. Only a look a
        # comparison had not been read at can decide it: a replay decides nothing new (its reading there is on
        # record), nor does a look it took no seeds in (outside --grids, skipped for the budget, arms without runs)
        read_now = {key for key in wanted if has_look_seeds(by_key[key], found, grids, first, n)}
        newly = {key for key in read_now if look > read_before[key]}
        for key in read_now:
            state["read"][key] = max(state["read"][key], look)
        # the record of the comparisons a look skipped: one read at that look since leaves it; the others stay
        record = state.get("budget_skipped") or {}
        entry = (set(record.get(look) or []) - newly) | set(skipped)
        if entry:
            record[look] = sorted(entry)
        else:
            record.pop(look, None)
        if record:
            state["budget_skipped"] = record
        else:
            state.pop("budget_skipped", None)
        state["look"] = max(int(state.get("look", -1)), look)
        limits = seed_limits(specs, plan, state)
        for r in evaluate_primaries(specs, found, looks=plan["looks"], grids=grids, seed_limits=limits,
                                    first_seed=first):
            key = r.spec.key
            if key not in state["decided"] and r.verdict != "undetermined" and key in newly:
                state["decided"][key] = look
                verdicts[key] = r.verdict
            if r.reason.startswith(MIXED_REASON) and key not in mixed:
                mixed[key] = r.reason
                print(f"[tiedlab] {key} takes no more seeds: {r.reason}", flush=True)
        if verdicts:
            state["verdicts"] = verdicts
        write_sequential_state(runs, state)
        print(f"[tiedlab] look {look + 1}/{len(counts)} ({n} seeds): {len(state['decided'])} of {len(specs)} "
              "primary comparisons decided", flush=True)
    return failures


Cells = dict  # {(grid name, ((key, value), ...) less the replicate keys): (seeds, data folds)}


def has_look_seeds(comparison: Any, found: list[Any], grids: dict[str, Any], first: int, n: int) -> bool:
    """Whether both arms of a comparison have runs that ended (completed or diverged) for every seed of a look of
    ``n`` seeds from ``first``, every run of the seed (each data fold): a failed, interrupted or unreadable run does
    not make a look readable (a rerun of the command retries it, then reads the look)."""
    from tiedlab.reports.primary import arm_runs, run_values

    want = set(range(first, first + n))
    for arm in (comparison.a, comparison.b):
        ended: dict[int, bool] = {}
        folds: dict[int, set[str]] = {}
        for r in arm_runs(arm, found, grids):
            values = run_values(r.name)
            if values.get("seed") is not None:
                seed = int(values["seed"])
                ended[seed] = ended.get(seed, True) and r.status in ("completed", "diverged")
                folds.setdefault(seed, set()).add(values.get("data.fold", ""))
        # a fold whose run crashed before writing its config is not among the runs found: count the grid's folds
        swept = swept_folds(grids.get(arm.grid))
        if not want <= {seed for seed, all_ended in ended.items() if all_ended and swept <= folds[seed]}:
            return False
    return True


def swept_folds(grid: dict[str, Any] | None) -> set[str]:
    """The data folds a grid sweeps (``data.fold`` in its ``sweep``), as run names spell them; empty when it
    sweeps none."""
    value = ((grid or {}).get("sweep") or {}).get("data.fold")
    return set() if value is None else {str(f) for f in launch.sweep_values("data.fold", value)}


def look_cells(comparison: Any, found: list[Any], grids: dict[str, Any], seeds: range) -> Cells:
    """The cells of a comparison's two arms with the look's ``seeds`` (and the folds their runs have); none while
    an arm has no runs (seeds of the other arm alone could never be read)."""
    from tiedlab.reports.primary import arm_runs, run_values

    out: Cells = {}
    arms = {arm: arm_runs(arm, found, grids) for arm in (comparison.a, comparison.b)}
    empty = [arm.title() for arm, members in arms.items() if not members]
    if empty:
        print(f"[tiedlab] warning: arm {' and '.join(empty)} has no runs: run its grid first; this comparison "
              "takes no seeds at this look", flush=True)
        return out
    for arm, members in arms.items():
        values = run_values(members[0].name)
        cell = tuple(sorted((k, v) for k, v in values.items() if k not in ("seed", "data.fold")))
        folds = swept_folds(grids.get(arm.grid)) | {run_values(r.name)["data.fold"] for r in members
                                                     if "data.fold" in run_values(r.name)}
        have_seeds, all_folds = out.setdefault((arm.grid, cell), (set(), set()))
        have_seeds.update(seeds)
        all_folds.update(folds)
    return out


def merge_cells(parts: Any) -> Cells:
    """The union of several comparisons' cells (a cell shared by two arms is run once, with both seed sets)."""
    out: Cells = {}
    for part in parts:
        for key, (seeds, folds) in part.items():
            have_seeds, have_folds = out.setdefault(key, (set(), set()))
            have_seeds.update(seeds)
            have_folds.update(folds)
    return out


def cell_grids(cells: Cells, grids: dict[str, Any]) -> list[dict[str, Any]]:
    """One single-cell grid per cell: its grid's overrides, the cell's values, its seeds and folds."""
    return [{"name": grid_name, "overrides": grids[grid_name].get("overrides") or [],
             "sweep": {**{k: [v] for k, v in cell}, **({"data.fold": sorted(folds)} if folds else {}),
                       "seed": sorted(seeds)}}
            for (grid_name, cell), (seeds, folds) in cells.items()]


def fit_look_to_budget(spec: dict[str, Any], wanted: dict[str, Cells], grids: dict[str, Any], runs: Path,
                       extra: list[str], jobs: int, left_s: float, seed_batch: int = 1
                       ) -> tuple[set[str], list[str]]:
    """Which comparisons a look can advance within ``left_s`` seconds: cheapest first (a comparison's runs at
    ``look_cost_s``), each taken while the union of the taken ones' runs still fits; one whose runs cannot be
    estimated is not taken. What is skipped depends on the estimated costs and on which comparisons are still
    undecided, not on their interim effects; each planned look is read at alpha / looks whichever looks a
    comparison takes, so the split holds. Returns (keys taken, keys skipped)."""
    from .plan import run_costs

    measured = run_costs(spec, runs, extra)  # read once: every estimate below draws on the same finished runs

    def cost(cells: Cells) -> float | None:
        return look_cost_s(spec, cell_grids(cells, grids), runs, extra, jobs, measured, seed_batch)

    alone = {key: cost(cells) for key, cells in wanted.items()}
    taken: set[str] = set()
    for key in sorted(wanted, key=lambda k: (alone[k] is None, alone[k] or 0.0, k)):
        if alone[key] is None:
            continue
        trial = merge_cells(wanted[k] for k in taken | {key})
        total = cost(trial)
        if total is not None and (total == 0 or total <= left_s):  # nothing left to run costs no budget
            taken.add(key)
    return taken, [k for k in wanted if k not in taken]


def look_cost_s(spec: dict[str, Any], look_grids: list[dict[str, Any]], runs: Path, extra: list[str],
                jobs: int, measured: list[Any] | None = None, seed_batch: int = 1) -> float | None:
    """Estimated wall seconds of a look's unfinished runs, ``jobs`` at a time: each run at the median wall time of
    its cell's finished seeds, else its grid's seconds per step (``plan.estimate``); None when a run has neither.
    With ``seed_batch`` > 1 the runs the runner would batch (``launch.seed_batches``) hold one slot together, for
    the sum of their estimates (a batched run's measured time is its share, 1/K, of its batch's; runs measured
    alone price a batch at the sum of their times, an upper bound where batching pays). The bound of any
    scheduler that starts a run whenever a slot frees (Graham's list-scheduling bound): sum / jobs + (1 - 1 / jobs)
    * the longest run (or batch), so a look whose runs do not divide evenly over the slots is not taken on the
    hope that they will."""
    from .plan import estimate, run_costs

    measured = run_costs(spec, runs, extra) if measured is None else measured
    todo = [c for c in run_costs({"name": spec.get("name"), "grids": look_grids}, runs, extra)
            if c.state not in launch.FINISHED_STATES]
    each = {c.spec.run_dir: estimate(c, measured) for c in todo}
    if any(g is None for g in each.values()):
        return None
    units = launch.seed_batches([c.spec for c in todo], seed_batch, _batchable_quietly) if seed_batch > 1 \
        else [c.spec for c in todo]
    guesses = [sum(each[d] for d in u.run_dirs) if isinstance(u, launch.SeedBatchSpec) else each[u.run_dir]
               for u in units]
    jobs = max(1, jobs)
    return sum(guesses) / jobs + (1 - 1 / jobs) * max(guesses, default=0.0)


def study_slots(args: argparse.Namespace) -> tuple[int, str]:
    """How many runs the study trains at once, which prices its plan and its looks: ``--jobs``, or ``--per-gpu``
    on each GPU of ``--gpus`` (``--gpus all``: those this node gives, as the runner places them), and a line
    saying what was assumed where the count cannot be known here ("" otherwise): ``--gpus all`` with
    ``--ray-address`` (the cluster's GPUs are counted once Ray has joined it) or on a node without a GPU (a plan
    made on a login node); both count one GPU, which overprices a look rather than starting one that overruns."""
    if args.gpus is None:
        return args.jobs, ""
    per_gpu = args.per_gpu or 1
    if args.gpus != "all":
        return per_gpu * len(args.gpus.split(",")), ""
    if args.ray_address:
        return per_gpu, (f"--gpus all with --ray-address counts one GPU ({per_gpu} run(s) at once) in the plan's "
                         "and the looks' times (the cluster's GPUs are known only once the study joins it): they "
                         "are upper bounds")
    try:
        return per_gpu * len(launch.node_gpus("all")), ""
    except ValueError:
        return per_gpu, (f"--gpus all counts one GPU ({per_gpu} run(s) at once) in the plan's and the looks' times: "
                         "this node shows none")


def closing_counts(spec: dict[str, Any], runs: Path, extra: list[str]) -> dict[str, int]:
    """How many of the study's runs are in each state ``--status`` counts (``launch.run_state``: done,
    not_at_equilibrium, diverged, failed, running, stopped, pending): every run its grids sweep, written or not (a run
    that failed before it wrote its config is failed, one never started pending), and any other run directory in a
    grid's folder (the seeds a sequential look added)."""
    dirs = {Path(r.run_dir) for r in launch.study_runs(spec, runs, extra)}
    for grid in spec["grids"]:
        folder = runs / grid["name"]
        for config in folder.rglob(rundir.CONFIG) if folder.is_dir() else []:
            if not any(part.startswith(".") for part in config.relative_to(folder).parts):  # not .hydra/config.yaml
                dirs.add(config.parent)
    counts = dict.fromkeys(launch.STATUS_COLUMNS[1:], 0)
    for run_dir in dirs:
        counts[launch.run_state(run_dir)] += 1
    return counts


def has_runs(folder: Path) -> bool:
    """Whether a grid's folder holds a run directory (one with config.yaml, which the engine writes once a run's
    config has passed validation; Hydra's own files, such as .hydra/ and multirun.yaml, are not runs)."""
    return sum(count_statuses([folder]).values()) > 0


def count_statuses(folders: Any) -> dict[str, int]:
    """How many run directories (folders holding config.yaml) under ``folders`` are completed, diverged,
    failed, unfinished (running, or no metrics.json yet) or unreadable (metrics.json is not a run's)."""
    counts = dict.fromkeys(("completed", "diverged", "failed", "unfinished", "unreadable"), 0)
    for folder in folders:
        for config in sorted(Path(folder).rglob(rundir.CONFIG)) if Path(folder).is_dir() else []:
            if any(part.startswith(".") for part in config.relative_to(folder).parts):
                continue  # Hydra's own .hydra/config.yaml
            try:
                status = rundir.read_metrics(config.parent).get("status", "unfinished")
            except rundir.RunDirError:
                status = "unreadable"
            counts[status if status in counts else "unfinished"] += 1
    return counts
