"""Build a report folder from run directories: load, group, decide, plot, write."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from tiedlab.paradigms import provenance
from .aggregate import Cell, group_cells
from .guidelines import guidelines
from .insights import InsightResult, evaluate
from .load import Run, load_runs, runs_from_summary
from .budget import BudgetCheck, budget_note, evaluate_budget_checks, load_budget_checks
from .primary import LIMIT_NOTE, PrimaryResult, evaluate_primaries, load_primaries
from .plots import Plot, forest_plot, make_plots
from .render import document, to_html, to_markdown
from .summary import summary


@dataclass
class Report:
    """Everything a report shows."""

    title: str
    runs: list[Run]
    cells: list[Cell]
    insights: list[InsightResult]
    guidelines: list[dict[str, Any]]
    plots: list[Plot] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    report_command: str = ""
    inputs: list[str] = field(default_factory=list)
    primaries: list[PrimaryResult] = field(default_factory=list)  # the study's pre-registered comparisons
    budget_checks: list[BudgetCheck] = field(default_factory=list)  # the comparisons read again at larger budgets
    study: dict[str, Any] | None = None  # the study file the runs were made by (None: runs without a study)
    looks: int = 1  # looks of the sequential design the seeds were added by (1: a fixed design)
    rebuilt_from: str = ""  # the summary.json this report re-analysed (its run directories were not read)
    seed_limits: dict[str, int] = field(default_factory=dict)  # sequential studies: seeds read
    sequential_record: dict[str, Any] | None = None  # sequential studies: the looks' record (sequential.yaml)
    not_registered: str = ""  # why the comparisons tested are not the ones the runs were registered with ("": they are)
    registered_primary: dict[str, Any] | None = None  # the comparisons the runs were registered with (None: no record)
    commit: str = "unknown"  # the commit of the code that built the report ("+dirty": its tree had changes)
    run_commits: dict[str, int] = field(default_factory=dict)  # the commits the runs were trained at -> runs
    date: str = ""
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs if r.seed is not None})

    @property
    def total_train_s(self) -> float:
        return sum(t for r in self.runs if math.isfinite(t := r.metrics.get("time/train_s", math.nan)))


def _remove_old_plots(out: Path) -> None:
    """Delete the PNGs an earlier build listed in its summary.json (this build may not redraw them)."""
    try:
        files = json.loads((out / "summary.json").read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return
    for name in files:
        if isinstance(name, str) and name.endswith((".png", ".svg")) and "/" not in name and "\\" not in name:
            (out / name).unlink(missing_ok=True)


STUDY_FILE = "study.yaml"  # written by tiedlab-study into its runs folder


def find_study(paths: Iterable[str | Path], study: str | Path | None = None) -> dict[str, Any] | None:
    """The study the runs under ``paths`` belong to: ``study`` (a study name or a YAML file) when given, else the
    ``study.yaml`` that tiedlab-study wrote into an input folder; None when there is none.

    Raises:
        ValueError: two inputs hold different studies, or ``study`` names no study.
    """
    if study is None:  # a summary.json being rebuilt carries the study it was made for
        for p in paths:
            if Path(p).is_file() and Path(p).suffix == ".json":
                carried = json.loads(Path(p).read_text()).get("study_spec")
                if carried:
                    return carried
    if study is not None:
        from tiedlab.paradigms.study import load_study, read_study_file

        path = Path(study)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            return read_study_file(path, runnable=False)
        return load_study(str(study))
    found = {}
    for p in paths:
        path = Path(p) / STUDY_FILE
        if path.is_file():
            found[str(path)] = yaml.safe_load(path.read_text()) or {}
    names = {str(s.get("name")) for s in found.values()}
    if len(names) > 1:
        raise ValueError(f"the inputs hold runs of different studies ({sorted(names)} in {sorted(found)}); "
                         "report them separately")
    return next(iter(found.values()), None)


def analyse(paths: Iterable[str | Path], title: str = "tiedlab report", study: str | Path | None = None,
            runs: list[Run] | None = None) -> Report:
    """Load and analyse the runs under ``paths`` (or the given ``runs``; no files written, no plots): the study's
    pre-registered primary comparisons (when the runs come from a study) and the descriptive secondary ones."""
    paths = list(paths)
    runs = load_runs(paths) if runs is None else runs
    cells = group_cells(runs)
    refuse_study_parents(paths, study)
    spec, limits = find_study(paths, study), {}
    recorded = find_study(paths) if study is not None else spec  # what the runs folder says it was run as
    registered = registered_primary(paths, recorded)
    not_registered = ""
    if spec is not None and registered is not None and (spec.get("primary") or None) != registered:
        if (recorded or {}).get("sequential"):  # its looks' alpha belongs to the registered comparisons
            raise ValueError(f"--study {study} names other primary comparisons than the runs were registered "
                             "with (study.yaml in the runs folder); report them without --study")
        not_registered = (f"the primary comparisons tested here{f' (--study {study})' if study is not None else ''} "
                          f"are not the ones the runs were registered with (study {(recorded or {}).get('name')!r}, "
                          "recorded beside its runs): they were chosen after the runs, so their verdicts are not "
                          "pre-registered ones")
    if recorded and spec is not recorded and spec is not None and recorded.get("sequential"):
        spec = {**spec, "sequential": recorded["sequential"]}
    plan = (spec or {}).get("sequential")
    looks = int((plan or {}).get("looks", 1))
    specs = load_primaries(spec) if spec else []
    if plan:
        limits = _seed_limits(paths, specs, plan)
    record = next((s for s in map(_recorded_state, paths) if s is not None), None) if plan else None
    no_record = bool(plan) and record is None and not any(Path(p).is_file() for p in paths)
    if no_record:  # the looks' record is gone, or no look was read yet: never read past the plan's last look
        limits = {s.key: int(plan["max_seeds"]) for s in specs}
    grids = [g["name"] for g in (spec or {}).get("grids") or []]
    primaries = (evaluate_primaries(specs, runs, looks=looks, grids=grids, seed_limits=limits,
                                    first_seed=int((plan or {}).get("first_seed", 0))) if spec else [])
    for r in primaries if no_record else []:
        r.notes = [n.replace(LIMIT_NOTE, NO_RECORD_NOTE) for n in r.notes]
    if record is not None:
        flag_departures_from_the_record(primaries, record)
        note_budget_skips(primaries, record)
    checks = evaluate_budget_checks(load_budget_checks(spec, specs), specs, runs, grids) if spec else []
    for check in checks:  # the comparison's notes say what its budget check read (its verdict stays)
        for r in primaries:
            if r.spec.key == check.spec.of:
                r.notes.append(budget_note(check))
    return Report(title, runs, cells, evaluate(cells), guidelines(cells), inputs=[str(p) for p in paths],
                  primaries=primaries, budget_checks=checks, study=spec, looks=looks, seed_limits=limits,
                  sequential_record=record, not_registered=not_registered, registered_primary=registered)


def refuse_study_parents(paths: list[str | Path], study: str | Path | None = None) -> None:
    """Refuse an input folder that holds study runs folders below it but is none itself (``runs/study`` rather than
    ``runs/study/quick``): its report would read their runs without the registration and the looks' record kept
    beside them (every seed at the full alpha, even with ``--study``), and mix the studies' runs. With ``study``
    (primary comparisons to test), a folder inside a study's runs folder (one grid's) is refused likewise.

    Raises:
        ValueError: naming the study folders to report instead.
    """
    for p in paths:
        folder = Path(p)
        if not folder.is_dir() or (folder / STUDY_FILE).is_file():
            continue
        above = next((d for d in folder.resolve().parents if (d / STUDY_FILE).is_file()), None)
        if study is not None and above is not None:
            raise ValueError(f"{folder} is inside the runs folder of a study ({above}), whose registration and looks' "
                             f"record are read only from that folder: report it, e.g. tiedlab-report {above}")
        nested = sorted(str(f.parent) for f in folder.rglob(STUDY_FILE))
        if nested:
            shown = ", ".join(nested[:4]) + (f" and {len(nested) - 4} more" if len(nested) > 4 else "")
            raise ValueError(f"{folder} holds the runs folders of studies ({shown}), whose registration and looks' "
                             f"record are read only from the folder itself: report each study's folder, e.g. "
                             f"tiedlab-report {nested[0]}")


NO_RECORD_NOTE = ("(at most the plan's --max-seeds: no sequential.yaml beside the runs, so the look each comparison "
                  "was decided at is unknown; deleted, or no look has been read yet)")


def registered_primary(paths: list[str | Path], recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The primary comparisons the runs were registered with: a rebuilt summary.json's ``registered_primary``
    (the registration its report compared with, whatever it tested), else the recorded study's (``recorded``: the
    runs folder's study.yaml or the summary's study); None without a recorded study."""
    for p in paths:
        if Path(p).is_file() and Path(p).suffix == ".json":
            data = json.loads(Path(p).read_text())
            if "registered_primary" in data:
                return data["registered_primary"]
    return (recorded.get("primary") or None) if recorded else None


def _seed_limits(paths: list[str | Path], specs: list[Any], plan: dict[str, int]) -> dict[str, int]:
    """The seeds each comparison of a sequential study is read on: from the runs folder's sequential.yaml, or
    the seed limits a rebuilt summary.json carried."""
    from tiedlab.paradigms.study import seed_limits

    for p in paths:
        p = Path(p)
        if p.is_file() and p.suffix == ".json":
            rows = json.loads(p.read_text()).get("seed_limits") or []
            return {str(r.get("id") or f"{r['insight']}/{r['paradigm']}"): int(r["seeds"]) for r in rows}
        state = _recorded_state(p)
        if state is not None:
            return seed_limits(specs, plan, state)
    return {}


def _recorded_state(path: str | Path) -> dict[str, Any] | None:
    """The sequential plan's record (``sequential.yaml``) in a runs folder, or the one a summary.json being rebuilt
    carried; None without one."""
    from tiedlab.paradigms.study import SEQUENTIAL_FILE, read_sequential_state

    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return json.loads(path.read_text()).get("sequential_record")
    return read_sequential_state(path) if (path / SEQUENTIAL_FILE).is_file() else None


def flag_departures_from_the_record(primaries: list[Any], state: dict[str, Any]) -> None:
    """Mark a comparison (``departs_from_record``, and why in its reason) whose verdict here is not the one the
    sequential plan recorded (``state``, from sequential.yaml: decided at a look, with its verdict where the record
    keeps it, or still undetermined): the runs it reads changed since that look (a failed run retried, runs added
    by hand), or its family's Holm levels did (a comparison decided at a later look released its share). The
    report's verdict stands as read, marked; the record is what the plan decided."""
    if state.get("look", -1) < 0:
        return
    decided, verdicts = state.get("decided") or {}, state.get("verdicts") or {}
    for r in primaries:
        key = r.spec.key
        recorded = f" '{verdicts[key]}'" if key in verdicts else ""
        if key in decided and (r.verdict == "undetermined" or verdicts.get(key, r.verdict) != r.verdict):
            r.departs_from_record = True
            r.reason += (f"; departs from the record: sequential.yaml has it decided{recorded} at look "
                         f"{decided[key] + 1} (since then the runs it reads, or its family's Holm levels, changed)")
        elif key not in decided and r.verdict != "undetermined":
            r.departs_from_record = True
            r.reason += ("; departs from the record: no look of sequential.yaml decided it (it is read here on "
                         "runs, or at a Holm level, that no look read it on)")


def note_budget_skips(primaries: list[Any], state: dict[str, Any]) -> None:
    """A note on each comparison a look left behind for ``--budget-min`` (sequential.yaml's ``budget_skipped``:
    look -> keys): it was not advanced there, so it is read on fewer seeds than that look's."""
    for look, keys in sorted((state.get("budget_skipped") or {}).items()):
        for r in primaries:
            if r.spec.key in keys:
                r.notes.append(f"not advanced at look {int(look) + 1}: its runs did not fit the time --budget-min "
                               "left (a later command without it, or with more time, adds them)")


def run_commits(runs: Iterable[Run]) -> dict[str, int]:
    """How many runs each code version trained ("abc1234", "abc1234+dirty"; a run resumed under another
    commit counts under each; "unknown" for runs without provenance)."""
    counts: dict[str, int] = {}
    for run in runs:
        versions = {f"{p.get('commit', 'unknown')}{'+dirty' if p.get('dirty') else ''}" for p in run.provenance}
        for version in sorted(versions or {"unknown"}):
            counts[version] = counts.get(version, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


class NoRunsError(Exception):
    """The inputs of a report hold no run directory (a study whose runs all failed to start, a mistyped path)."""


def build_report(paths: Iterable[str | Path], out: str | Path, title: str = "tiedlab report",
                 commands: Iterable[str] = (), report_command: str = "", study: str | Path | None = None,
                 from_summary: str | Path | None = None) -> Report:
    """Write README.md, index.html, summary.json and the plots into ``out``; returns the report.

    Raises:
        FileNotFoundError: a path in ``paths`` does not exist.
        NoRunsError: ``paths`` hold no run directory: nothing is written (a report already in ``out`` stays).
    """
    if from_summary is not None:  # a new analysis of an old report's results: its summary.json is the input
        report = analyse([from_summary], title, study, runs=runs_from_summary(from_summary))
        report.rebuilt_from = str(from_summary)
        # a summary's runs carry no configs: what the arms differ in is the summary's (from its run directories),
        # for a comparison of the same arms (a rebuild may test other comparisons under the same ids)
        stored = {(p.get("id"), p.get("a"), p.get("b")): p.get("differ") or []
                  for p in json.loads(Path(from_summary).read_text()).get("primaries") or []}
        for r in report.primaries:
            r.differ = r.differ or list(stored.get((r.spec.key, r.spec.a.title(), r.spec.b.title()), []))
    else:
        paths = list(paths)
        report = analyse(paths, title, study)
        if not report.runs:
            raise NoRunsError(f"no run directories (with config.yaml or metrics.json) under "
                              f"{' '.join(map(str, paths))}: nothing written to {out}")
    code = provenance.code_version()  # before anything is written: a report folder inside the checkout would
    # make its tree dirty
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_plots(out)
    forest = forest_plot(report.primaries, out)
    report.plots = ([forest] if forest else []) + make_plots(report.cells, out)
    report.commands = list(commands)
    report.report_command = report_command
    report.commit = code["commit"] + ("+dirty" if code["dirty"] else "")  # the code that analysed the runs
    report.run_commits = run_commits(report.runs)
    report.date = provenance.now()
    report.machine = provenance.machine()
    if from_summary is not None:  # the runs ran where and when the original report says
        original = json.loads(Path(from_summary).read_text())
        report.machine = original.get("machine") or report.machine
        first = str(original.get("date", "?")).split(" (the original report: ")[-1].rstrip(")")
        report.date = f"{report.date} (the original report: {first})"
    blocks = document(report)
    (out / "README.md").write_text(to_markdown(blocks))
    (out / "index.html").write_text(to_html(blocks, title, out))
    (out / "summary.json").write_text(json.dumps(summary(report), indent=2, sort_keys=False) + "\n")
    return report
