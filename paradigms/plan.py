"""``tiedlab-study NAME --plan``: what a study costs and what deciding it would cost, from measured run times.

Per grid: its runs, how many are finished, the steps per run, the measured wall seconds per run (the median over
its finished runs: the sum of each run's sessions, from run start to metrics.json, evaluation included) and the
estimated seconds of the runs still to go (a cell's own median where some seed of it finished, else the grid's
median seconds per step times the run's steps). Per pre-registered primary comparison: the seeds per arm now, the
verdict so far and, for an undetermined one, the seeds per arm the verdict rules would need (the report's power
calculation at the observed spread) and what those extra runs would cost. Nothing is estimated without a
measurement: a grid with no finished run says "not measured", and the plan says which device the measurements
come from (CPU now; a GPU once runs finished there).

Before any run of a study has finished on a device, ``--step-times FILE`` prices its runs from the training step
times that ``benchmarks/gpu_check.py --study NAME`` measured there, one short run per cell: a run's training
seconds are its cell's milliseconds per step times the steps of a full run. Those estimates leave evaluation out
and the plan says so; a finished run's own measurement always wins. The file records each cell's overrides: a
cell the study has changed since is not priced from it, and the plan says how many, except for a change of length
alone (``train.epochs``, ``train.max_steps``): its measured milliseconds per step times its own steps.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import launch, rundir


@dataclass
class RunCost:
    """One run of the study as the plan sees it."""

    spec: launch.RunSpec
    state: str  # launch.run_state ("done" for a run that used its train.time_limit_s: launch.used_time_limit)
    steps: int | None  # total steps (metrics.json, else the last train.max_steps override; None: unknown); the
    #                    steps it trained for a run its time limit ended
    wall_s: float | None  # measured wall seconds of a finished run (None: not finished)
    device: str | None  # where it ran ("cpu", "cuda:0"; None: not run)

    @property
    def cell(self) -> tuple[str, tuple[str, ...]]:
        """The run's grid and swept values less the replicate keys (seed, data.fold)."""
        return cell_key(self.spec)


def cell_key(spec: launch.RunSpec) -> tuple[str, tuple[str, ...]]:
    """A run's grid and swept values less the replicate keys (seed, data.fold): the runs of one cell share it."""
    from tiedlab.reports.load import REPLICATE_KEYS

    leaf = Path(spec.run_dir).name
    return spec.grid, tuple(sorted(p for p in leaf.split(",") if p.split("=")[0] not in REPLICATE_KEYS))


def cell_overrides(spec: launch.RunSpec) -> list[str]:
    """A run's overrides less the replicate keys (seed, data.fold): what every run of its cell trains with."""
    from tiedlab.reports.load import REPLICATE_KEYS

    return [o for o in spec.overrides if o.split("=")[0].lstrip("+~") not in REPLICATE_KEYS]


# The overrides that set a run's length: a cell that differs from its measurement in these only is priced at the
# measured milliseconds per step times its own steps.
BUDGET_KEYS = ("train.epochs", "train.max_steps")


def _split_budget(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``overrides`` as (the sorted ones that are not budget keys, the last value of each budget key given)."""
    rest, budget = [], {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") in BUDGET_KEYS:
            budget[key.lstrip("+~")] = value
        else:
            rest.append(o)
    return sorted(rest), budget


def _null(value: str | None) -> bool:
    return value in (None, "null", "None", "")


@dataclass(frozen=True)
class CellBudget:
    """How long a measured cell's full run was: the steps it counted and what they came from (None: not recorded)."""

    full_steps: int
    max_steps: int | None = None
    epochs: float | None = None
    steps_per_epoch: int | None = None


def _steps_at(budget: CellBudget, then: dict[str, str], now: dict[str, str]) -> int | None:
    """The steps of a cell measured at ``budget`` with the length overrides ``then``, run with ``now`` instead: the
    engine's rule (train.max_steps, else epochs x batches per epoch) on what ``now`` sets, else on what was measured.
    None when that is not known: a key set then and not now falls back to a size default the file did not record."""
    recorded = budget.steps_per_epoch is not None  # files before 2026-12-04 record the full steps alone
    max_steps = now.get("train.max_steps")
    if not _null(max_steps):
        return int(float(max_steps))
    if max_steps is None:  # not set now: as measured
        if "train.max_steps" in then or not recorded:
            return None
        if budget.max_steps:
            return budget.max_steps
    epochs = now.get("train.epochs")
    if epochs is None:
        if "train.epochs" in then:
            return None
        epochs = None if budget.epochs is None else str(budget.epochs)
    if _null(epochs) or not recorded:
        return None
    return int(math.ceil(float(epochs) * budget.steps_per_epoch))


@dataclass(frozen=True)
class StepTimes:
    """Training milliseconds per step of each cell of a study and the steps of a full run, measured on ``device``
    by ``benchmarks/gpu_check.py --study`` (evaluation excluded)."""

    study: str
    device: str
    cells: dict[tuple[str, tuple[str, ...]], tuple[float, CellBudget]]  # cell_key -> (ms per step, its budget)
    overrides: dict[tuple[str, tuple[str, ...]], list[str]] = field(default_factory=dict)  # cell_key -> as measured
    extra: tuple[str, ...] = ()  # the plan's own extra overrides (not the study's: left out of the comparison)

    def steps(self, run: RunCost) -> int | None:
        """The steps of a full run of ``run``'s cell: the file's count when the cell trains as measured (or the file
        does not record the overrides: it cannot tell), the cell's own budget when it changed in its length only
        (train.max_steps, or train.epochs times the measured batches per epoch), else None."""
        if run.cell not in self.cells:
            return None
        budget = self.cells[run.cell][1]
        measured = self.overrides.get(run.cell)
        now = [o for o in cell_overrides(run.spec) if o not in self.extra]
        if measured is None or sorted(measured) == sorted(now):
            return budget.full_steps
        (rest_then, then), (rest_now, now_budget) = _split_budget(measured), _split_budget(now)
        return _steps_at(budget, then, now_budget) if rest_then == rest_now else None

    def changed(self, run: RunCost) -> bool:
        """Whether ``run``'s cell was measured but can no longer be priced from the file: it trains with other
        overrides than the ones measured, beyond its length (a study edited since)."""
        return run.cell in self.cells and self.steps(run) is None

    def resized(self, run: RunCost) -> bool:
        """Whether ``run``'s cell is priced at another length than the one measured."""
        steps = self.steps(run)
        return steps is not None and steps != self.cells[run.cell][1].full_steps

    def seconds(self, run: RunCost) -> float | None:
        """Training seconds of one full run of ``run``'s cell (None: not measured, or changed since)."""
        steps = self.steps(run)
        return None if steps is None else self.cells[run.cell][0] * steps / 1000.0


def _study_id(study: Any) -> str:
    """A study's name, or a study file's path (``tiedlab-study PATH.yaml``) resolved, as measured and as asked."""
    text = str(study)
    return str(Path(text).resolve()) if text.endswith((".yaml", ".yml")) else text


def load_step_times(path: str | Path, study: str) -> StepTimes:
    """The step times ``gpu_check.py --study STUDY --out PATH`` wrote. Raises ValueError (one line) when the file
    is missing, not such a file, or measured another study."""
    def optional(cell: dict[str, Any], key: str, kind: Any) -> Any:
        return kind(cell[key]) if cell.get(key) is not None else None

    try:
        raw = json.loads(Path(path).read_text())
        measured = raw["study"]
        cells = {(c["grid"], tuple(c["cell"])): (float(c["step_ms"]),
                                                 CellBudget(int(c["full_steps"]), optional(c, "max_steps", int),
                                                            optional(c, "epochs", float),
                                                            optional(c, "steps_per_epoch", int)))
                 for c in raw["cells"] if c.get("step_ms") is not None}
        overrides = {(c["grid"], tuple(c["cell"])): [str(o) for o in c["overrides"]]
                     for c in raw["cells"] if "overrides" in c}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--step-times {path}: not a step-times file of benchmarks/gpu_check.py --study "
                         f"({type(err).__name__}: {err})") from None
    if _study_id(measured) != _study_id(study):
        raise ValueError(f"--step-times {path} measured study {measured!r}, not {study!r}: run "
                         f"benchmarks/gpu_check.py --study {study}")
    return StepTimes(measured, str(raw.get("device", "?")), cells, overrides)


@dataclass
class GridPlan:
    name: str
    runs: int
    finished: int
    steps: str  # "1500", "300-900", "?"
    measured_s: float | None  # median wall seconds per finished run
    remaining_s: float | None  # estimated seconds of the unfinished runs (None: some are not measured)
    unmeasured: int = 0  # unfinished runs without an estimate
    from_step_times: int = 0  # unfinished runs estimated from step times alone (training only)
    changed: int = 0  # unfinished runs whose cell changed since its step time was measured (not priced)
    resized: int = 0  # unfinished runs priced from step times at another length than the one measured


@dataclass
class PrimaryPlan:
    key: str
    label: str
    n: str  # "4/4"
    verdict: str
    seeds_needed: int | None
    extra_runs: int
    extra_s: float | None
    needed_text: str = "-"  # as the report writes it: "~N", "> 1000" (none up to 1000 would decide it), "-"


@dataclass
class StudyPlan:
    grids: list[GridPlan] = field(default_factory=list)
    primaries: list[PrimaryPlan] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    step_times: StepTimes | None = None
    sequential: dict[str, int] | None = None  # --until-decided's plan: the primaries are read at alpha / its looks

    @property
    def remaining_s(self) -> float:
        return sum(g.remaining_s or 0.0 for g in self.grids)

    @property
    def extra_s(self) -> float:
        return sum(p.extra_s or 0.0 for p in self.primaries)


def wall_seconds(metrics: dict[str, Any]) -> float | None:
    """A run's wall time: the sum over its sessions (a resumed run has several) of ended - started, a session
    trained in a seed batch of K runs (its ``seed_batch``) counted as 1/K of it (the batch's runs share it)."""
    total = 0.0
    for session in metrics.get("provenance") or []:
        try:
            start = _dt.datetime.fromisoformat(session["started"])
            end = _dt.datetime.fromisoformat(session["ended"])
        except (KeyError, TypeError, ValueError):
            return None
        total += (end - start).total_seconds() / max(1, int(session.get("seed_batch") or 1))
    return total or None


def _override_steps(overrides: Sequence[str]) -> int | None:
    """The last train.max_steps the overrides give (None: none, or null)."""
    value = _split_budget(overrides)[1].get("train.max_steps")
    return None if _null(value) else int(value)


def run_costs(spec: dict[str, Any], runs: Path, extra: Sequence[str]) -> list[RunCost]:
    """Every run of the study with its state, steps and (when finished) measured wall seconds and device."""
    out = []
    for run in launch.study_runs(spec, runs, extra):
        state = launch.run_state(Path(run.run_dir))
        try:
            metrics = rundir.read_metrics(Path(run.run_dir))
        except rundir.RunDirError:
            metrics = {}
        # a run its time limit ended trains nothing when rerun under that limit: priced as done, per step trained
        limited = state == "stopped" and launch.used_time_limit(Path(run.run_dir), metrics)
        finished = state in launch.FINISHED_STATES or limited
        sessions = metrics.get("provenance") or [{}]
        steps = metrics.get("step") if limited else metrics.get("total_steps") or _override_steps(run.overrides)
        out.append(RunCost(run, "done" if limited else state, steps, wall_seconds(metrics) if finished else None,
                           sessions[-1].get("device") if metrics else None))
    return out


def _steps_text(counts: list[int | None]) -> str:
    steps = sorted({n for n in counts if n})
    if not steps or len(steps) < len(set(counts)):
        return "?" if not steps else f"{steps[0]}-{steps[-1]}, some ?"
    return str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"


def estimate(run: RunCost, costs: list[RunCost]) -> float | None:
    """Seconds ``run`` should take: the median of its cell's finished seeds (those that did not diverge, when any:
    a run that diverged early says little of a whole one), else its grid's median seconds per step times its steps
    (None when neither was measured)."""
    finished = [c for c in costs if c.cell == run.cell and c.wall_s]
    whole = [c for c in finished if c.state != "diverged"]
    same_cell = [c.wall_s for c in (whole or finished)]
    if same_cell:
        return statistics.median(same_cell)
    per_step = [c.wall_s / c.steps for c in costs if c.spec.grid == run.spec.grid and c.wall_s and c.steps]
    if per_step and run.steps:
        return statistics.median(per_step) * run.steps
    return None


def grid_plans(costs: list[RunCost], step_times: StepTimes | None = None) -> list[GridPlan]:
    out = []
    for grid in dict.fromkeys(c.spec.grid for c in costs):
        members = [c for c in costs if c.spec.grid == grid]
        done = [c for c in members if c.wall_s]
        todo = [c for c in members if c.state not in launch.FINISHED_STATES]
        guesses, from_step_times, changed, resized = [], 0, 0, 0
        for run in todo:  # a measured estimate, else the run's cell priced from the step times
            guess = estimate(run, costs)
            if guess is None and step_times is not None:
                guess = step_times.seconds(run)
                from_step_times += guess is not None
                changed += step_times.changed(run)
                resized += step_times.resized(run)
            guesses.append(guess)
        unmeasured = sum(g is None for g in guesses)
        counts = [c.steps or (step_times.steps(c) if step_times is not None else None) for c in members]
        out.append(GridPlan(grid, len(members), len(members) - len(todo), _steps_text(counts),
                            statistics.median(c.wall_s for c in done) if done else None,
                            sum(g for g in guesses if g is not None) if not unmeasured else None, unmeasured,
                            from_step_times, changed, resized))
    return out


def primary_plans(spec: dict[str, Any], runs: Path, costs: list[RunCost], step_times: StepTimes | None = None,
                  registered: dict[str, Any] | None = None,
                  sequential: dict[str, int] | None = None) -> list[PrimaryPlan]:
    """Each primary comparison's state on the finished runs and the cost of the seeds it still needs: those of
    ``registered`` (the whole study; default ``spec``) that read only ``spec``'s grids. Read as the report reads
    them: Holm over every registered comparison of a family, and with a ``sequential`` plan (``tiedlab-study
    --until-decided``) at alpha / looks, each on the seeds of the look its runs folder's record reached."""
    from tiedlab.paradigms.study import SEQUENTIAL_FILE, read_sequential_state, seed_limits
    from tiedlab.reports.load import load_runs
    from tiedlab.reports.primary import arm_runs, evaluate_primaries, load_primaries
    from tiedlab.reports.render import seeds_needed_text

    grids = [g["name"] for g in spec["grids"]]
    registered = registered or spec
    every = load_primaries(registered)
    # a plan of some grids (--grids) prices the comparisons that read only those
    wanted = {s.key for s in every if s.a.grid in grids and s.b.grid in grids}
    if not wanted:
        return []
    found = load_runs([runs]) if Path(runs).exists() else []
    limits = (seed_limits(every, sequential, read_sequential_state(runs))
              if sequential and (Path(runs) / SEQUENTIAL_FILE).is_file() else {})
    out = []
    for result in evaluate_primaries(every, found, looks=int((sequential or {}).get("looks", 1)),
                                     grids=[g["name"] for g in registered.get("grids") or spec["grids"]],
                                     seed_limits=limits, first_seed=int((sequential or {}).get("first_seed", 0))):
        s = result.spec
        if s.key not in wanted:
            continue
        extra_runs, extra_s = 0, 0.0
        if result.verdict == "undetermined" and result.seeds_needed:
            for arm, n in ((s.a, result.n_a), (s.b, result.n_b)):
                more = max(0, result.seeds_needed - n)
                if not more:
                    continue
                names = {r.name for r in arm_runs(arm, found, grids)}
                walls = [c.wall_s for c in costs if c.wall_s and c.spec.name in names]
                if not walls and step_times is not None:  # no run of the arm finished: its cells' step times
                    walls = [step_times.seconds(c) for c in costs if c.spec.name in names]
                    walls = [w for w in walls if w is not None]
                extra_runs += more
                extra_s = None if extra_s is None or not walls else extra_s + more * statistics.median(walls)
        out.append(PrimaryPlan(s.key, s.label, f"{result.n_a}/{result.n_b}", result.verdict, result.seeds_needed,
                               extra_runs, extra_s, seeds_needed_text(result)))
    return out


def study_plan(spec: dict[str, Any], runs: Path, extra: Sequence[str] = (),
               step_times: StepTimes | None = None, registered: dict[str, Any] | None = None,
               sequential: dict[str, int] | None = None) -> StudyPlan:
    """The plan of ``spec`` (some grids of the study ``registered``, default all) over its runs folder;
    ``step_times`` prices the runs no finished run measures; ``sequential``: the plan of ``--until-decided``, whose
    looks split alpha (``primary_plans``)."""
    costs = run_costs(spec, runs, extra)
    if step_times is not None:
        step_times = dataclasses.replace(step_times, extra=tuple(extra))
    return StudyPlan(grid_plans(costs, step_times),
                     primary_plans(spec, runs, costs, step_times, registered, sequential),
                     sorted({c.device for c in costs if c.wall_s and c.device}), step_times, sequential)


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def format_plan(plan: StudyPlan, slots: int = 1) -> str:
    """The plan as plain-text tables, with totals at ``slots`` runs at a time."""
    lines = ["grid                              runs  done  steps/run   measured s/run  to go (est.)"]
    for g in plan.grids:
        measured = f"{g.measured_s:.0f}" if g.measured_s is not None else "-"
        to_go = _hours(g.remaining_s) if g.finished < g.runs else "done"
        if g.unmeasured:
            to_go = f"{g.unmeasured} runs not measured" + (f" ({g.changed} changed since the step times)"
                                                             if g.changed else "")
        elif g.from_step_times:
            to_go += f" ({g.from_step_times} from step times)"
        lines.append(f"{g.name:<32} {g.runs:>5} {g.finished:>5}  {g.steps:<11} {measured:>14}  {to_go}")
    if any("?" in g.steps for g in plan.grids):
        lines.append("steps/run ?: no train.max_steps in the overrides (train.epochs or the config's default sets "
                     "them) and no run of the cell has recorded its steps yet")
    if plan.primaries:
        seq = plan.sequential
        lines += ["", "primary comparisons read as the report reads them: Holm within each family, "
                  + (f"alpha / {seq['looks']} looks (--until-decided: {seq['start']} to {seq['max_seeds']} seeds "
                     f"per arm, {seq['step']} a look; seeds to decide beyond {seq['max_seeds']} are past the plan)"
                     if seq else "one look (a fixed design; with --until-decided, alpha is split over its looks)"),
                  "primary comparison         n A/B   verdict        seeds/arm to decide  extra runs  extra (est.)"]
        for p in plan.primaries:
            needed = p.needed_text
            lines.append(f"{p.key:<26} {p.n:<7} {p.verdict:<14} {needed:>19}  {p.extra_runs:>10}  "
                         f"{_hours(p.extra_s) if p.extra_runs else '-'}")
    unmeasured = sum(g.unmeasured for g in plan.grids)
    rests = f"measured on {', '.join(plan.devices)}" if plan.devices else "no run finished yet"
    if plan.step_times is not None and any(g.from_step_times for g in plan.grids):
        rests += (f"; runs marked 'from step times': training only, evaluation left out, from the step times "
                  f"gpu_check measured on {plan.step_times.device}")
        if not plan.step_times.overrides:
            rests += (" (a file that does not record its cells' overrides: a cell the study changed since is priced "
                      "as measured, so check the steps)")
        resized = sum(g.resized for g in plan.grids)
        if resized:
            rests += (f"; {resized} of them at another length than measured (the measured ms per step times their "
                      "own steps)")
    if unmeasured and not plan.remaining_s:  # "0.0 min (+126 not measured)" read as an estimate: there is none
        lines += ["", f"to go: not estimated: none of the {unmeasured} unfinished runs' cells has a measured run yet "
                      f"({rests}); train some, or give --step-times FILE"]
        return "\n".join(lines)
    lines += ["", f"to go: {_hours(plan.remaining_s)} of runs" + (f" (+{unmeasured} runs not measured)" if unmeasured else "")
              + f", plus {_hours(plan.extra_s)} for the seeds the undetermined primaries need; "
              f"at {slots} run(s) at a time: {_hours((plan.remaining_s + plan.extra_s) / max(slots, 1))} "
              f"(wall seconds of finished runs, {rests}; runs at once share the machine, so divide with care)"]
    return "\n".join(lines)
