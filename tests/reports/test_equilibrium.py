"""DEQ runs not at equilibrium: metrics.json's "equilibrium" check read and validated, flagged runs counted apart
and never averaged into a cell or a primary arm, an arm left with < 2 usable runs undetermined, old runs (no check)
included as before, and all of it kept through summary.json."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tiedlab.reports.aggregate import flag_kind, group_cells
from tiedlab.reports.build import analyse, build_report
from tiedlab.reports.load import NOT_MEASURED, load_run, load_runs, parse_equilibrium, runs_from_summary
from tiedlab.reports.primary import EQUILIBRIUM_REASON, LEFT_OUT_NOTE, evaluate_primaries, load_primaries

from .conftest import ABSENT, eq_check, write_run

AT = [eq_check(), eq_check(rel_residual=2e-3, converged_fraction=0.98, spectral_norm=0.9, grad_cosine=0.98)]
OFF = [eq_check(rel_residual=0.21, converged_fraction=0.3, spectral_norm=1.15, grad_cosine=0.63),
       eq_check(rel_residual=0.05, converged_fraction=0.95, spectral_norm=1.3, grad_cosine=math.nan)]
FLAGGED = ["g/block=deq,seed=3", "g/block=deq,seed=4"]
APART = ["g/block=deq,seed=2", *FLAGGED]  # the unmeasured DEQ run is set apart with the flagged ones


def _study(*comparisons: dict) -> dict:
    return {"name": "eq", "grids": [{"name": "g"}, {"name": "h"}], "primary": {"comparisons": list(comparisons)}}


def _comparison(insight: int, grid: str) -> dict:
    return {"insight": insight, "paradigm": "vision", "claim": "superiority", "metric": "val/acc",
            "a": {"grid": grid, "where": {"block": "tied"}}, "b": {"grid": grid, "where": {"block": "deq"}}}


def build_runs(root: Path) -> Path:
    """Grid g (width 32): tied seeds 0-4 (0.90 ... 0.94); DEQ seeds 0, 1 at equilibrium (0.80, 0.82), seed 2
    written before the check (0.84, not measured: not certified, so set apart too), seeds 3, 4 not at equilibrium
    (0.50, 0.40: they would drag the mean down). Grid h (width 64): tied seeds 0-2, DEQ seed 0 at equilibrium and seeds 1, 2 not: one usable run."""
    g, h = root / "g", root / "h"
    for seed, val in enumerate([0.90, 0.91, 0.92, 0.93, 0.94]):
        write_run(g, f"block=tied,seed={seed}", seed=seed, val=val)
    for seed, (val, check) in enumerate(zip([0.80, 0.82, 0.84, 0.50, 0.40], [*AT, None, *OFF])):
        kw = {"equilibrium": check if check is not None else ABSENT}
        write_run(g, f"block=deq,seed={seed}", mode="deq", seed=seed, val=val, train_s=40.0, **kw)
    for seed, val in enumerate([0.90, 0.91, 0.92]):
        write_run(h, f"block=tied,seed={seed}", seed=seed, val=val, width=64)
    for seed, (val, check) in enumerate(zip([0.80, 0.50, 0.40], [AT[0], *OFF])):
        write_run(h, f"block=deq,seed={seed}", mode="deq", seed=seed, val=val, width=64, equilibrium=check)
    (root / "study.yaml").write_text(yaml.safe_dump(_study(_comparison(1, "g"), _comparison(2, "h"))))
    return root


@pytest.fixture(scope="module")
def eq_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, Path]:
    """(runs folder, the built report, its output folder)."""
    runs = build_runs(tmp_path_factory.mktemp("eqruns"))
    out = tmp_path_factory.mktemp("eqreport") / "out"
    return runs, build_report([runs], out, "eq"), out


def _deq_cell(report, width: int):
    return next(c for c in report.cells if c.mode == "deq" and c.width == width)


def test_the_check_is_read_and_old_runs_are_not_measured(eq_report):
    runs, _, _ = eq_report
    at, old, off = (load_run(runs / "g" / f"block=deq,seed={s}") for s in (0, 2, 3))
    assert at.status == "completed" and at.at_equilibrium is True and at.equilibrium_flags == []
    assert old.status == "completed" and old.at_equilibrium is None and old.equilibrium_measured == {}
    assert off.status == "completed" and off.at_equilibrium is False
    assert off.equilibrium_flags == OFF[0]["flags"] and len(off.equilibrium_flags) == 3
    assert off.equilibrium_measured == {"rel_residual": 0.21, "converged_fraction": 0.3, "spectral_norm": 1.15,
                                        "grad_cosine": 0.63}
    assert off.equilibrium.thresholds["spectral_norm"] is None
    nan = load_run(runs / "g" / "block=deq,seed=4")
    assert math.isnan(nan.equilibrium_measured["grad_cosine"])  # written as the string "nan"
    assert load_run(runs / "g" / "block=tied,seed=0").at_equilibrium is None  # not a DEQ


def test_flagged_runs_are_counted_apart_and_never_averaged(eq_report):
    _, report, _ = eq_report
    cell = _deq_cell(report, 32)
    assert [r.name for r in cell.not_at_equilibrium] == APART
    assert len(cell.completed) == 2 and {r.seed for r in cell.completed} == {0, 1}  # the unmeasured run is not
    stat = cell.primary("val")
    assert stat.n == 2 and stat.mean == pytest.approx(0.81) and stat.std == pytest.approx(0.02 / 2 ** 0.5)
    assert cell.stat("test/acc").mean == pytest.approx(0.80)
    assert cell.unfinished == 0 and cell.diverged == 0 and len(cell.ended) == 5  # a divergence rate counts all
    eq = cell.equilibrium()
    assert (eq["at"], eq["not_at"], eq["not_measured"]) == (2, 2, 1)
    assert eq["medians"] == pytest.approx({"rel_residual": 0.026, "converged_fraction": 0.965,
                                           "spectral_norm": 1.025, "grad_cosine": 0.98})
    assert eq["flags"] == [("rel_residual > 0.01", 2), ("converged_fraction < 0.9", 1),
                           ("grad_cosine < 0.95", 1), ("grad_cosine is nan", 1)]


def test_primary_arms_leave_flagged_runs_out_and_say_how_many(eq_report, tmp_path):
    runs, report, _ = eq_report
    g, h = report.primaries
    assert g.not_at_equilibrium == {"a": [], "b": APART}
    assert any(f"arm b: 3 run(s) not at equilibrium and left out ({', '.join(APART)})" in n for n in g.notes)
    assert (g.n_a, g.n_b) == (2, 2) and g.paired  # paired on seeds 0, 1
    assert g.effect == pytest.approx(0.095)  # mean of 0.90-0.80, 0.91-0.82
    assert g.verdict == "undetermined" and g.reason.endswith("; not at equilibrium, left out: arm a 0, arm b 3; " + LEFT_OUT_NOTE)
    # leaving them out is exactly deleting their run directories
    bare = tmp_path / "bare"
    shutil.copytree(runs, bare)
    for name in APART:
        shutil.rmtree(bare / name)
    same = analyse([bare]).primaries[0]
    assert (same.verdict, same.effect, same.p, same.ci_low, same.ci_high) == (g.verdict, g.effect, g.p, g.ci_low,
                                                                             g.ci_high)


def test_an_arm_left_with_one_usable_run_is_undetermined_baseline_not_at_equilibrium(eq_report):
    _, report, _ = eq_report
    h = report.primaries[1]
    assert h.verdict == "undetermined" and h.test is None and (h.n_a, h.n_b) == (3, 1)  # the usable replicates
    assert h.reason == (f"{EQUILIBRIUM_REASON}: arm b has 1 usable replicate(s) after 2 not at equilibrium were "
                        "left out (needs 2); not at equilibrium, left out: arm a 0, arm b 2")  # not read: no note
    assert h.not_at_equilibrium == {"a": [], "b": ["h/block=deq,seed=1", "h/block=deq,seed=2"]}
    assert h.level == 0.025 and math.isnan(h.p)  # no test, never decided, still counted by Holm: g is read at 0.025
    assert report.primaries[0].level == 0.025


def test_markdown_shows_counts_medians_flags_and_the_flagged_runs(eq_report, check_html):
    _, _, out = eq_report
    readme = (out / "README.md").read_text()
    table = readme.split("\n## vision / cifar10\n", 1)[1].split("\n## ", 1)[0]
    compact, full = [line for line in table.splitlines() if line.startswith("| deq anderson+ift | 4 | 32 |")]
    assert "| 2 (+3 not at equilibrium) | 0.81 [0.68, 0.94] |" in compact  # 0.81 ± 12.7 * 0.02 / 2
    assert "| 2 (+3 not at equilibrium) | 0.810 ± 0.014 |" in full
    section = readme.split("## Equilibrium", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if "deq anderson+ift d=4 w=32" in line)
    assert row.startswith("| vision / cifar10 | deq anderson+ift d=4 w=32 | 2 | 2 | 1 | 0.026 | 0.965 | 1.025 | 0.98 |")
    assert row.endswith("| rel_residual > 0.01 (2), converged_fraction < 0.9 (1), grad_cosine < 0.95 (1), 1 more |")
    flagged = section.split("### Runs not at equilibrium (counted, not averaged)", 1)[1]
    for name in [*APART, "h/block=deq,seed=1", "h/block=deq,seed=2"]:
        assert f"| {name} |" in flagged
    assert "rel_residual 0.21 > 0.01" in flagged and "| g/block=deq,seed=0 |" not in flagged
    assert f"| g/block=deq,seed=2 | deq anderson+ift d=4 w=32 | 2 | {NOT_MEASURED} |" in flagged
    runs_table = readme.split("## Runs", 1)[1]
    assert runs_table.count("completed, not at equilibrium (not averaged)") == 5
    assert "not at equilibrium: 5 completed DEQ run(s) flagged" in readme
    assert "baseline not at equilibrium: arm b has 1 usable replicate(s)" in readme
    assert "| undetermined: +0.095 [-0.0323, +0.222], n=2/2; ~3 seeds/arm to decide; not at equilibrium, left out: " \
           "0/3 |" in readme  # transfer
    assert "| undetermined: -, n=3/1; not at equilibrium, left out: 0/2 |" in readme
    parser = check_html(out)
    assert 'class="noteq"' in (out / "index.html").read_text() and parser.counts["table"] >= 6
    # which parameter counts the tables show, and that a DEQ's count one application of its map
    assert "Parameters: unique = stored (a tied cell once)" in readme and "which a forward applies NFE times" in readme


def test_summary_carries_the_counts_and_rebuilds_the_same_verdicts(eq_report, tmp_path):
    _, report, out = eq_report
    data = json.loads((out / "summary.json").read_text())
    cell = next(c for c in data["cells"] if c["mode"] == "deq" and c["width"] == 32)
    assert (cell["n"], cell["not_at_equilibrium"]) == (2, 3)
    assert {k: cell["equilibrium"][k] for k in ("at", "not_at", "not_measured")} == {"at": 2, "not_at": 2,
                                                                                     "not_measured": 1}
    assert next(c for c in data["cells"] if c["mode"] == "tied")["equilibrium"] is None
    entry = next(r for r in data["runs"] if r["name"] == "g/block=deq,seed=4")
    assert entry["equilibrium"]["at_equilibrium"] is False and entry["equilibrium"]["measured"]["grad_cosine"] == "nan"
    assert data["primaries"][1]["not_at_equilibrium"]["b"] == ["h/block=deq,seed=1", "h/block=deq,seed=2"]
    rebuilt = build_report([], tmp_path / "again", "eq", from_summary=out / "summary.json")
    for new, old in zip(rebuilt.primaries, report.primaries):
        assert (new.verdict, new.reason, new.effect, new.p, new.not_at_equilibrium) == (
            old.verdict, old.reason, old.effect, old.p, old.not_at_equilibrium)
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert [(c["n"], c["not_at_equilibrium"], c["equilibrium"]) for c in again["cells"]] == [
        (c["n"], c["not_at_equilibrium"], c["equilibrium"]) for c in data["cells"]]


def test_without_any_deq_run_there_is_no_equilibrium_section(tmp_path):
    for seed in range(2):
        write_run(tmp_path / "runs", f"tied-s{seed}", seed=seed, val=0.9 + seed / 100)
    build_report([tmp_path / "runs"], tmp_path / "out", "t")
    assert "## Equilibrium" not in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("value,match", [
    ("yes", r"equilibrium must be an object with keys \['at_equilibrium', 'flags', 'measured', 'thresholds', "
            r"'measured_with'\], got 'yes'"),
    ({**AT[0], "at_equilibrium": "no"}, r"equilibrium.at_equilibrium='no' must be true or false"),
    ({**AT[0], "flags": "rel_residual"}, r"equilibrium.flags='rel_residual' must be a list of strings"),
    ({**AT[0], "measured": {"rel_residual": "small"}}, r"equilibrium.measured.rel_residual='small' must be a number"),
    ({**AT[0], "measured": [0.1]}, r"equilibrium.measured must be an object \{name: number\}, got \[0.1\]"),
    ({**AT[0], "thresholds": {"grad_cosine": True}}, r"equilibrium.thresholds.grad_cosine=True must be a number"),
    ({**AT[0], "residual": 0.1}, r"unknown key\(s\) \['residual'\] / lacks \[\]"),
    ({"at_equilibrium": True, "flags": []}, r"lacks \['measured'\]"),
    ({**AT[0], "at_equilibrium": False}, r"equilibrium.at_equilibrium=False contradicts equilibrium.flags=\[\]"),
    ({**OFF[0], "at_equilibrium": True}, r"equilibrium.at_equilibrium=True contradicts"),
])
def test_a_malformed_check_makes_the_run_unreadable_naming_it(tmp_path, value, match):
    with pytest.raises(ValueError, match=match):
        parse_equilibrium(value)
    run = load_run(write_run(tmp_path, "deq-s0", mode="deq", equilibrium=value))
    assert run.status == "unreadable" and run.equilibrium is None
    assert run.reason.startswith("metrics.json: ") and re.search(match, run.reason)


def test_a_check_on_a_run_that_is_not_a_deq_is_unreadable_and_null_is_not_measured(tmp_path):
    tied = load_run(write_run(tmp_path, "tied-s0", mode="tied", equilibrium=AT[0]))
    assert tied.status == "unreadable" and "block.mode is 'tied'; only DEQ runs" in tied.reason
    null = load_run(write_run(tmp_path, "deq-s0", mode="deq", equilibrium=None))
    assert null.status == "completed" and null.at_equilibrium is None


def test_unreadable_checks_are_counted_unfinished_not_averaged(tmp_path):
    write_run(tmp_path, "deq-s0", mode="deq", seed=0, val=0.8, equilibrium=AT[0])
    write_run(tmp_path, "deq-s1", mode="deq", seed=1, val=0.9, equilibrium={"at_equilibrium": 1})
    (cell,) = group_cells(load_runs([tmp_path]))
    assert cell.primary().n == 1 and cell.primary().mean == pytest.approx(0.8) and cell.unfinished == 1


def test_flag_kinds_drop_the_runs_own_value():
    assert [flag_kind(f) for f in OFF[1]["flags"]] == ["rel_residual > 0.01", "grad_cosine is nan"]
    assert flag_kind("grad_cosine not measured (cosine ...; threshold 0.95)") == "grad_cosine not measured"
    assert flag_kind("solver hit max_iter") == "solver hit max_iter"


@dataclass
class FakeRun:
    name: str
    status: str = "completed"
    metrics: dict[str, float] = field(default_factory=dict)
    at_equilibrium: bool | None = None


def test_spread_arms_leave_flagged_runs_out_and_divergence_rates_count_them_as_not_diverged():
    specs = load_primaries({"primary": {"comparisons": [
        {**_comparison(3, "g"), "kind": "divergence"},
        {**_comparison(4, "g"), "kind": "spread"}]}})
    runs = ([FakeRun(f"g/block=tied,seed={i}", metrics={"val/acc": 0.9 + i / 100}) for i in range(4)]
            + [FakeRun("g/block=deq,seed=0", status="diverged"),
               *[FakeRun(f"g/block=deq,seed={i}", metrics={"val/acc": 0.8 + i / 50}) for i in (1, 2)],
               *[FakeRun(f"g/block=deq,seed={i}", metrics={"val/acc": 0.1}, at_equilibrium=False) for i in (3, 4)]])
    divergence, spread = evaluate_primaries(specs, runs)
    # 1 diverged + 4 completed: the 2 off equilibrium did not diverge (left out, the rate would read 1/3, not 1/5)
    assert (divergence.n_a, divergence.n_b) == (4, 5)
    assert (divergence.test.k_a, divergence.test.n_a) == (1, 5)  # arm b's (the test is called with b, a)
    assert "arm b: 2 completed run(s) not at equilibrium counted as not diverged" in divergence.notes
    assert "left out" not in divergence.reason
    assert (spread.n_a, spread.n_b) == (4, 2) and spread.not_at_equilibrium["b"] == ["g/block=deq,seed=3",
                                                                                    "g/block=deq,seed=4"]
