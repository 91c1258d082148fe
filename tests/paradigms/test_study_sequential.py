"""tiedlab-study --until-decided: the looks of a group-sequential plan. Seeds go only to the arms of undetermined
primary comparisons, a decided comparison is frozen at the look it was decided at (even when an arm it shares
grows), and a rerun replays the looks and continues (the real runner, toy paradigm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tiedlab.paradigms import study as study_module
from tiedlab.reports.build import analyse

TESTS = Path(__file__).resolve().parents[1]
TOY = ["paradigm=toy", f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]", "train.max_steps=3",
       "train.eval_every=3", "train.threads=1", "model.width=8"]



def _run_dir(path):
    """A run directory as the engine leaves it once its config passed validation (config.yaml)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("paradigm: toy\n")

def arm(block: str) -> dict:
    return {"grid": "g", "where": {"block": block}}


def use_toy_study(study: dict, tmp_path: Path, monkeypatch) -> Path:
    """Make ``study`` the runner's only study file (toy paradigm, one thread); returns the runs folder to use."""
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "toy.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.setattr(study_module, "study_dir", lambda: studies)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "runs"


def decided_and_undetermined(seeds: list[int]) -> dict:
    """A toy study of two comparisons sharing the tied arm, one decided at the first look and one never."""
    return {"name": "toy", "grids": [{"name": "g", "overrides": TOY,
                                      "sweep": {"block": ["tied", "explicit", "deq"], "seed": seeds}}],
            "primary": {"comparisons": [
                # a wide margin: decided at the first look (2 seeds)
                {"insight": 1, "paradigm": "toy", "claim": "noninferiority", "metric": "val/acc", "delta": 1.0,
                 "a": arm("tied"), "b": arm("explicit")},
                # shares the tied arm; superiority between near-identical models: undetermined to the end
                {"insight": 4, "paradigm": "toy", "claim": "superiority", "metric": "val/acc", "delta": 1e-6,
                 "a": arm("tied"), "b": arm("deq")}]}}


def test_until_decided_freezes_decided_comparisons_and_seeds_only_undetermined_arms(tmp_path, monkeypatch, capsys):
    study = decided_and_undetermined([0, 1])
    runs = use_toy_study(study, tmp_path, monkeypatch)
    args = ["toy", "--runs", str(runs), "--no-report", "--until-decided", "--max-seeds", "4", "--seed-step", "2"]
    assert study_module.study(args) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load((runs / "study.yaml").read_text())["sequential"] == {"start": 2, "step": 2,
                                                                              "max_seeds": 4, "looks": 2}
    state = yaml.safe_load((runs / "sequential.yaml").read_text())
    assert state == {"look": 1, "decided": {"1/toy": 0}, "verdicts": {"1/toy": "holds"},
                     "read": {"1/toy": 0, "4/toy": 1}}
    seeds = lambda block: sorted(int(p.name.split("seed=")[1]) for p in (runs / "g").glob(f"block={block},seed=*"))
    assert seeds("explicit") == [0, 1]  # decided at look 1: its arm gets no more seeds
    assert seeds("tied") == seeds("deq") == [0, 1, 2, 3]  # the undetermined comparison's arms
    assert "look 2/2: seeds 0-3 for g {'block': 'deq'}" in out and "for g {'block': 'explicit'}" not in out
    for run_dir in (runs / "g").glob("block=*"):  # one run at a time, which each run records
        sessions = json.loads((run_dir / "metrics.json").read_text())["provenance"]
        assert [s["processes_per_device"] for s in sessions] == [1], run_dir
    by_insight = {r.spec.insight: r for r in analyse([runs]).primaries}
    # frozen at its look: read on seeds 0-1 although the tied arm now has 4, at alpha / 2 looks
    assert by_insight[1].verdict == "holds" and (by_insight[1].n_a, by_insight[1].n_b) == (2, 2)
    assert by_insight[1].level <= 0.05 / 2
    assert by_insight[4].verdict == "undetermined" and by_insight[4].n_a == 4
    # a rerun replays the looks on the same data: nothing to train, the same state
    assert study_module.study(args) == 0
    assert "look 2/2: seeds" not in capsys.readouterr().out
    assert yaml.safe_load((runs / "sequential.yaml").read_text()) == state
    assert not any("departs from the record" in r.reason for r in analyse([runs]).primaries)
    # a record the runs no longer match (here: edited by hand) is said in the verdict's reason
    (runs / "sequential.yaml").write_text(yaml.safe_dump({**state, "decided": {"4/toy": 1}}))
    reasons = {r.spec.insight: r.reason for r in analyse([runs]).primaries}
    assert "departs from the record: sequential.yaml has it decided at look 2 (since then" in reasons[4]
    assert "departs from the record: no look of sequential.yaml decided it (it is read here" in reasons[1]
    # a decided verdict that flipped since its look (holds -> fails, say) is said too
    (runs / "sequential.yaml").write_text(yaml.safe_dump({**state, "verdicts": {"1/toy": "fails"}}))
    reasons = {r.spec.insight: r.reason for r in analyse([runs]).primaries}
    assert "departs from the record: sequential.yaml has it decided 'fails' at look 1 (since then" in reasons[1]
    # marked where the verdict is shown, not only in the full table's reason, and kept by a rebuild from the summary
    from tiedlab.reports.build import build_report

    build_report([runs], tmp_path / "report", "t")
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "| holds (not the sequential record's: see the full table) |" in readme
    assert "; not the sequential record's verdict" in readme  # the transfer table's cell
    rebuilt = build_report([], tmp_path / "rebuilt", "t", from_summary=tmp_path / "report" / "summary.json")
    assert [r.spec.insight for r in rebuilt.primaries if r.departs_from_record] == [1]
    assert "departs from the record: sequential.yaml has it decided 'fails'" in rebuilt.primaries[0].reason
    # a record written before verdicts were kept says nothing about them
    (runs / "sequential.yaml").write_text(yaml.safe_dump({k: v for k, v in state.items() if k != "verdicts"}))
    assert not any("departs from the record" in r.reason for r in analyse([runs]).primaries)
    (runs / "sequential.yaml").write_text(yaml.safe_dump(state))
    # the looks are fixed in advance, and so are the registered comparisons
    with pytest.raises(ValueError, match="sequential plan"):
        study_module.study(["toy", "--runs", str(runs), "--no-report", "--until-decided", "--max-seeds", "6"])
    study["primary"]["comparisons"][1]["delta"] = 0.1
    (tmp_path / "studies" / "toy.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(ValueError, match="registered other primary comparisons"):
        study_module.study(args)


def test_until_decided_continues_from_the_grids_first_seed(tmp_path, monkeypatch, capsys):
    """A replication on fresh seeds: grids that start at seed 100 get 102, 103 at the next look (never 0..3), and
    the comparisons are read on seeds 100.. (the look's count of them); seeds that do not run on from one first
    seed are refused with one line before anything runs."""
    runs = use_toy_study(decided_and_undetermined([100, 101]), tmp_path, monkeypatch)
    args = ["toy", "--runs", str(runs), "--no-report", "--until-decided", "--max-seeds", "4", "--seed-step", "2"]
    assert study_module.study(args) == 0
    assert "look 2/2: seeds 100-103 for g {'block': 'deq'}" in capsys.readouterr().out
    assert yaml.safe_load((runs / "study.yaml").read_text())["sequential"] == {
        "start": 2, "step": 2, "max_seeds": 4, "looks": 2, "first_seed": 100}
    seeds = lambda block: sorted(int(p.name.split("seed=")[1]) for p in (runs / "g").glob(f"block={block},seed=*"))
    assert seeds("explicit") == [100, 101] and seeds("tied") == seeds("deq") == [100, 101, 102, 103]
    by_insight = {r.spec.insight: r for r in analyse([runs]).primaries}
    assert (by_insight[1].n_a, by_insight[1].n_b) == (2, 2) and (by_insight[4].n_a, by_insight[4].n_b) == (4, 4)
    assert any("read on seeds 100-101" in n for n in by_insight[1].notes)

    plan = lambda seeds_g, seeds_h: study_module.sequential_plan(
        {"name": "toy", "grids": [{"name": "g", "sweep": {"seed": seeds_g}}, {"name": "h", "sweep": {"seed": seeds_h}}],
         "primary": {"comparisons": [{"insight": 1, "paradigm": "toy", "claim": "superiority", "delta": 0.5,
                                      "a": {"grid": "g"}, "b": {"grid": "h"}}]}}, 4, 2)
    assert plan([0, 1], [0, 1, 2]) == {"start": 2, "step": 2, "max_seeds": 4, "looks": 2}  # no first_seed key at 0
    with pytest.raises(ValueError, match=r"grid 'g' sweeps seed \[0, 2\]: .* consecutive"):
        plan([0, 2], [0, 1])
    with pytest.raises(ValueError, match=r"must start at one seed; they start at 0 \(h\); 100 \(g\)"):
        plan([100, 101], [0, 1])


def test_a_registration_grows_only_by_a_family_of_its_own_on_grids_without_runs(tmp_path):
    """Appending comparisons after the first runs is an amendment: allowed as a new family whose arms' grids have
    no runs yet; changing, dropping or reordering a registered comparison, reusing a family or adding a comparison
    on data that exist already is refused with one line."""
    first = {"insight": 1, "paradigm": "toy", "claim": "superiority", "delta": 0.5, "a": arm("tied"), "b": arm("deq")}
    later = {"family": "more", "insight": 4, "paradigm": "toy", "claim": "superiority", "delta": 0.5,
             "a": {"grid": "h", "where": {"block": "tied"}}, "b": {"grid": "h", "where": {"block": "deq"}}}
    runs = tmp_path / "runs"
    _run_dir(runs / "g" / "block=tied,seed=0")
    write = lambda *cs: study_module.write_study_file(runs, {"name": "toy", "primary": {"comparisons": list(cs)}},
                                                      None)
    write(first)
    write(first, later)  # h has no runs: allowed, and recorded
    assert yaml.safe_load((runs / "study.yaml").read_text())["primary"]["comparisons"][1]["family"] == "more"
    write(first, later)  # the same registration again
    with pytest.raises(ValueError, match=r"registered other primary comparisons than the file of study 'toy' now names "
                                         r"\(comparison #1 \(1/toy\): a .*family \(absent\) -> 'more'"):
        write(later, first)
    with pytest.raises(ValueError, match=r"registered other primary comparisons .*\(comparison #2 \(4/toy\) "
                                         r"dropped\)"):
        write(first)
    with pytest.raises(ValueError, match=r"registered other primary comparisons .*\(comparison #1 \(1/toy\): "
                                         r"delta 0.5 -> 0.25\)"):
        write({**first, "delta": 0.25}, later)
    with pytest.raises(ValueError, match=r"\(comparison #1 \(1/toy\): family \(absent\) -> None\)"):
        write({**first, "family": None}, later)  # null and absent differ: the message names it
    assert study_module.registration_change({"comparisons": ["x"]}, {"comparisons": ["y"]}) == "comparison #1: 'x' -> 'y'"
    # compared as check_registration compares (1 == 1.0): the change it names is the one that refused it
    assert study_module.registration_change(
        {"comparisons": [{**first, "delta": 1}, later]},
        {"comparisons": [{**first, "delta": 1.0}, {**later, "delta": 0.25}]}).startswith("comparison #2 (4/toy): delta")
    assert study_module.registration_change({"comparisons": {"a": 1}}, {"comparisons": []}).startswith("comparisons {")
    with pytest.raises(ValueError, match=r"#3 was added .* family of its own \(family: NAME; taken: the unnamed "
                                         r"family, 'more'\)"):
        write(first, later, {**later, "insight": 5, "family": ""})
    _run_dir(runs / "k" / "block=tied,seed=0")
    on_old_data = {**later, "family": "late", "insight": 5, "a": {"grid": "k", "where": {"block": "tied"}}}
    with pytest.raises(ValueError, match=r"#3 .* grid 'k' already has runs"):
        write(first, later, on_old_data)


def test_a_sequential_plan_is_refused_on_runs_made_without_one(tmp_path):
    """Runs of a fixed design may have been read at the full alpha: adding --until-decided's looks afterwards would
    leave that reading uncounted, so a plan is refused once the primary grids hold runs made without one."""
    first = {"insight": 1, "paradigm": "toy", "claim": "superiority", "delta": 0.5, "a": arm("tied"), "b": arm("deq")}
    spec = {"name": "toy", "primary": {"comparisons": [first]}}
    plan = {"start": 2, "step": 2, "max_seeds": 6, "looks": 3}
    fresh = tmp_path / "fresh"
    study_module.write_study_file(fresh, spec, None)  # registered, no runs yet: a plan may still be chosen
    study_module.write_study_file(fresh, spec, plan)
    study_module.write_study_file(fresh, spec, plan)
    fixed = tmp_path / "fixed"
    study_module.write_study_file(fixed, spec, None)
    _run_dir(fixed / "g" / "block=tied,seed=0")
    study_module.write_study_file(fixed, spec, None)  # more fixed-design runs are fine
    with pytest.raises(ValueError, match=r"runs of grids \['g'\] made without --until-decided"):
        study_module.write_study_file(fixed, spec, plan)


def test_a_primary_grid_with_runs_keeps_its_seeds_and_overrides(tmp_path):
    """More seeds in the file after a fixed-design verdict was read would be a second look at the full alpha, and
    another override would pool two configs in one arm: once a registered comparison's grid has runs, its sweep
    and overrides are fixed. A grid no comparison reads, and a new grid, may still change."""
    first = {"insight": 1, "paradigm": "toy", "claim": "superiority", "delta": 0.5, "a": arm("tied"), "b": arm("deq")}
    grid = {"name": "g", "overrides": ["train.max_steps=10"], "sweep": {"block": ["tied", "deq"], "seed": [0, 1]}}
    side = {"name": "side", "overrides": [], "sweep": {"seed": [0]}}
    spec = {"name": "toy", "grids": [grid, side], "primary": {"comparisons": [first]}}
    runs = tmp_path / "runs"
    study_module.write_study_file(runs, spec, None)
    more_seeds = {**spec, "grids": [{**grid, "sweep": {**grid["sweep"], "seed": [0, 1, 2, 3]}}, side]}
    study_module.write_study_file(runs, more_seeds, None)  # no runs yet: the design may still change
    (runs / "g" / "block=tied,seed=0" / ".hydra").mkdir(parents=True)  # what Hydra leaves of a job whose config
    (runs / "g" / "multirun.yaml").write_text("{}\n")  # failed validation: not a run
    study_module.write_study_file(runs, spec, None)
    (runs / "g" / "block=tied,seed=0" / ".hydra").rmdir()
    (runs / "g" / "block=tied,seed=0").rmdir()
    _run_dir(runs / "g" / "block=tied,seed=0")
    _run_dir(runs / "side" / "seed=0")
    with pytest.raises(ValueError, match=r"grid 'g' has runs .* its sweep differ"):
        study_module.write_study_file(runs, more_seeds, None)
    longer = {**spec, "grids": [{**grid, "overrides": ["train.max_steps=20"]}, side]}
    with pytest.raises(ValueError, match=r"grid 'g' has runs .* its overrides differ"):
        study_module.write_study_file(runs, longer, None)
    with pytest.raises(ValueError, match=r"grid 'g' has runs .* no longer defines it"):
        study_module.write_study_file(runs, {**spec, "grids": [side]}, None)
    extra = {"name": "new", "overrides": [], "sweep": {"seed": [0]}}
    study_module.write_study_file(runs, {**spec, "grids": [grid, {**side, "sweep": {"seed": [0, 1]}}, extra]}, None)


def test_until_decided_with_grids_selected_still_sees_every_registered_grid(tmp_path, monkeypatch):
    """--grids runs a subset, but the plan and the registered comparisons are the whole study's."""
    studies = tmp_path / "studies"
    studies.mkdir()
    study = {"name": "toy", "grids": [{"name": "g", "overrides": TOY, "sweep": {"block": ["tied"], "seed": [0, 1]}},
                                      {"name": "h", "overrides": TOY, "sweep": {"block": ["tied"], "seed": [0, 1]}}],
             "primary": {"comparisons": [{"insight": 1, "paradigm": "toy", "claim": "superiority", "delta": 0.5,
                                          "a": {"grid": "g", "where": {"block": "tied"}},
                                          "b": {"grid": "h", "where": {"block": "tied"}}}]}}
    (studies / "toy.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.setattr(study_module, "study_dir", lambda: studies)
    assert study_module.study(["toy", "--runs", str(tmp_path / "runs"), "--dry-run", "--grids", "g",
                               "--until-decided", "--max-seeds", "2"]) == 0


def test_until_decided_with_grids_seeds_only_the_comparisons_inside_the_selection(tmp_path, monkeypatch, capsys):
    """--grids g: the comparison on g's arms takes its looks; the one that reads grid h (not selected) takes no
    seeds, and h gets no runs."""
    undetermined = {"claim": "superiority", "metric": "val/acc", "delta": 1e-6}
    study = {"name": "toy", "grids": [{"name": "g", "overrides": TOY, "sweep": {"block": ["tied", "deq"], "seed": [0, 1]}},
                                      {"name": "h", "overrides": TOY, "sweep": {"block": ["tied"], "seed": [0, 1]}}],
             "primary": {"comparisons": [{"insight": 4, "paradigm": "toy", **undetermined, "a": arm("tied"),
                                          "b": arm("deq")},
                                         {"insight": 5, "paradigm": "toy", **undetermined, "a": arm("tied"),
                                          "b": {"grid": "h", "where": {"block": "tied"}}}]}}
    runs = use_toy_study(study, tmp_path, monkeypatch)
    assert study_module.study(["toy", "--runs", str(runs), "--no-report", "--until-decided", "--max-seeds", "4",
                               "--grids", "g"]) == 0
    out = capsys.readouterr().out
    assert "--grids: 1 registered comparisons read other grids and take no seeds here (5/toy)" in out
    assert "has no runs" not in out
    assert sorted(p.name for p in (runs / "g").glob("block=*")) == [f"block={b},seed={s}" for b in ("deq", "tied")
                                                             for s in range(4)]
    assert not (runs / "h").exists()


def test_a_grids_pass_keeps_the_seeds_and_looks_of_the_comparisons_outside_it(tmp_path, monkeypatch, capsys):
    """A second pass with --grids that decides its own comparisons at the first look (and stops there) leaves the
    others as they were: read on the seeds of the look they reached, the state's look not set back, no new verdict
    recorded for them."""
    g = {"name": "g", "overrides": TOY, "sweep": {"block": ["tied", "explicit"], "seed": [0, 1]}}
    h = {"name": "h", "overrides": TOY, "sweep": {"block": ["tied", "deq"], "seed": [0, 1]}}
    study = {"name": "toy", "grids": [g, h], "primary": {"comparisons": [
        {"insight": 1, "paradigm": "toy", "claim": "noninferiority", "metric": "val/acc", "delta": 1.0,
         "a": arm("tied"), "b": arm("explicit")},
        {"insight": 4, "paradigm": "toy", "claim": "superiority", "metric": "val/acc", "delta": 1e-6,
         "a": {"grid": "h", "where": {"block": "tied"}}, "b": {"grid": "h", "where": {"block": "deq"}}}]}}
    runs = use_toy_study(study, tmp_path, monkeypatch)
    args = ["toy", "--runs", str(runs), "--no-report", "--until-decided", "--max-seeds", "4"]
    assert study_module.study(args + ["--grids", "h"]) == 0
    assert yaml.safe_load((runs / "sequential.yaml").read_text()) == {"look": 1, "decided": {},
                                                                      "read": {"1/toy": -1, "4/toy": 1}}
    # the same folder with a record written before comparisons kept their own looks: the one without runs was
    # never read, and the pass below still decides it at its first look
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(runs, legacy)
    (legacy / "sequential.yaml").write_text(yaml.safe_dump({"look": 1, "decided": {}}))
    assert study_module.study(["toy", "--runs", str(legacy), "--no-report", "--until-decided", "--max-seeds", "4",
                               "--grids", "g"]) == 0
    assert yaml.safe_load((legacy / "sequential.yaml").read_text()) == {"look": 1, "decided": {"1/toy": 0},
                                                                        "verdicts": {"1/toy": "holds"},
                                                                        "read": {"1/toy": 0, "4/toy": 1}}
    assert study_module.study(args + ["--grids", "g"]) == 0
    assert yaml.safe_load((runs / "sequential.yaml").read_text()) == {"look": 1, "decided": {"1/toy": 0},
                                                                      "verdicts": {"1/toy": "holds"},
                                                                      "read": {"1/toy": 0, "4/toy": 1}}
    by_insight = {r.spec.insight: r for r in analyse([runs]).primaries}
    assert by_insight[1].verdict == "holds" and by_insight[1].n_a == 2
    assert by_insight[4].verdict == "undetermined" and (by_insight[4].n_a, by_insight[4].n_b) == (4, 4)
    capsys.readouterr()


def test_budget_min_does_not_start_a_look_estimated_to_end_past_it(tmp_path, monkeypatch, capsys):
    """--budget-min: a look advances only the comparisons whose new runs (estimated from the finished seeds of the
    same cells: their median wall time, jobs at a time) fit the time left, cheapest first; the state lists the rest."""
    import json

    from tiedlab.paradigms import rundir

    study = {"name": "toy", "grids": [{"name": "g", "overrides": TOY, "sweep": {"block": ["tied", "deq"], "seed": [0, 1]}}],
             "primary": {"comparisons": [{"insight": 4, "paradigm": "toy", "claim": "superiority", "metric": "val/acc",
                                          "delta": 1e-6, "a": arm("tied"), "b": arm("deq")}]}}
    runs = use_toy_study(study, tmp_path, monkeypatch)
    args = ["toy", "--runs", str(runs), "--no-report", "--until-decided", "--max-seeds", "4", "--budget-min", "0.001"]
    assert study_module.study(args) == 0
    out = capsys.readouterr().out
    assert "look 2/2: 4/toy not advanced: their runs do not fit the 0 min left of --budget-min" in out
    assert sorted(p.name for p in (runs / "g").glob("block=*")) == [f"block={b},seed={s}" for b in ("deq", "tied")
                                                                    for s in (0, 1)]
    state = yaml.safe_load((runs / "sequential.yaml").read_text())
    assert state == {"look": 1, "decided": {}, "read": {"4/toy": 0}, "budget_skipped": {1: ["4/toy"]}}
    assert (runs / "sequential.yaml").read_text().startswith("# tiedlab-study --until-decided's record. Looks "
                                                             "count from 0 (look 0: the first pass")
    (read,) = analyse([runs]).primaries  # the report says why it reads 2 seeds, not the look's 4
    assert "not advanced at look 2: its runs did not fit the time --budget-min left" in " ".join(read.notes)
    # the estimate: each new run at its cell's median wall time (the sessions' ended - started), jobs at a time
    walls = {("tied", 0): 10, ("tied", 1): 20, ("deq", 0): 30, ("deq", 1): 50}
    for (block, seed), wall in walls.items():
        path = runs / "g" / f"block={block},seed={seed}" / rundir.METRICS
        metrics = json.loads(path.read_text())
        metrics["provenance"] = [{**metrics["provenance"][-1], "started": "2026-12-02T10:00:00+00:00",
                                  "ended": f"2026-12-02T10:00:{wall:02d}+00:00"}]
        path.write_text(json.dumps(metrics))
    look = [{"name": "g", "overrides": TOY, "sweep": {"block": [b], "seed": [0, 1, 2, 3]}} for b in ("tied", "deq")]
    # two slots: the even split (2 * 15 + 2 * 40) / 2 = 55 s plus half the longest run (40 s), Graham's bound for
    # a scheduler that fills a slot as it frees (started in the order 15, 40, 15, 40 they take 70 s, not 55)
    assert study_module.look_cost_s(study, look, runs, [], jobs=2) == pytest.approx((2 * 15 + 2 * 40) / 2 + 40 / 2)
    assert study_module.look_cost_s(study, look[:1], runs, [], jobs=1) == pytest.approx(2 * 15)
    # --seed-batch 2: the tied cell's two new seeds hold one slot together (30 s), not one each (15 s and 15 s);
    # a DEQ's seeds cannot be batched and still take a slot each
    assert study_module.look_cost_s(study, look[:1], runs, [], jobs=2) == pytest.approx(30 / 2 + 15 / 2)
    assert study_module.look_cost_s(study, look[:1], runs, [], jobs=2, seed_batch=2) == pytest.approx(30 / 2 + 30 / 2)
    batched = study_module.look_cost_s(study, look, runs, [], jobs=2, seed_batch=2)
    assert batched == pytest.approx((30 + 2 * 40) / 2 + 40 / 2)
    # cheapest first: with room for 40 s (jobs=1), the comparison needing only the tied cell is taken, not the other
    grids = {"g": study["grids"][0]}
    cells = lambda *blocks: {("g", (("block", b),)): ({0, 1, 2, 3}, set()) for b in blocks}
    wanted = {"cheap": cells("tied"), "dear": cells("tied", "deq"), "free": cells()}
    assert study_module.fit_look_to_budget(study, wanted, grids, runs, [], 1, 40.0) == ({"cheap", "free"}, ["dear"])
    assert study_module.fit_look_to_budget(study, wanted, grids, runs, [], 1, 110.0)[0] == {"cheap", "dear", "free"}
    with pytest.raises(ValueError, match="--budget-min=0.001 shape the looks of --until-decided"):
        study_module.study(["toy", "--runs", str(runs), "--no-report", "--budget-min", "0.001"])
    # the same command with time to spare takes the skipped look, and the record no longer says it was skipped
    assert study_module.study(args[:-2] + ["--budget-min", "60"]) == 0
    assert len(list((runs / "g").glob("block=*"))) == 8
    assert yaml.safe_load((runs / "sequential.yaml").read_text()) == {"look": 1, "decided": {}, "read": {"4/toy": 1}}


def test_a_look_is_readable_only_when_every_seed_of_both_arms_ended():
    """A failed or interrupted run leaves its look unread (a rerun retries it, then reads the look): counting it
    as present would read the look on fewer pairs and use it up."""
    from types import SimpleNamespace

    from tiedlab.reports.primary import load_primaries

    (comparison,) = load_primaries({"primary": {"comparisons": [
        {"insight": 1, "paradigm": "toy", "claim": "superiority", "delta": 0.5, "a": arm("tied"), "b": arm("deq")}]}})
    grids = {"g": {"name": "g"}}

    def runs(deq_seed_3: str) -> list[SimpleNamespace]:
        return ([SimpleNamespace(name=f"g/block=tied,seed={i}", status="completed") for i in range(4)]
                + [SimpleNamespace(name=f"g/block=deq,seed={i}", status="diverged" if i == 0 else "completed")
                   for i in range(3)] + [SimpleNamespace(name="g/block=deq,seed=3", status=deq_seed_3)])

    assert study_module.has_look_seeds(comparison, runs("completed"), grids, 0, 4)
    for status in ("failed", "interrupted", "unreadable"):
        assert not study_module.has_look_seeds(comparison, runs(status), grids, 0, 4), status
    assert study_module.has_look_seeds(comparison, runs("failed"), grids, 0, 3)  # the look at 3 seeds is whole
    folds = [SimpleNamespace(name=f"g/block={b},data.fold={f},seed={i}", status="completed")
             for b in ("tied", "deq") for f in (0, 1) for i in range(2)]
    assert study_module.has_look_seeds(comparison, folds, grids, 0, 2)
    folds[-1].status = "failed"  # deq, fold 1, seed 1: the seed is not whole though fold 0 ended
    assert not study_module.has_look_seeds(comparison, folds, grids, 0, 2)
    # a fold whose run crashed before writing its config is not found at all: the grid's sweep says it is missing
    swept = {"g": {"name": "g", "sweep": {"block": ["tied", "deq"], "data.fold": [0, 1], "seed": [0, 1]}}}
    folds[-1].status = "completed"
    assert study_module.has_look_seeds(comparison, folds, swept, 0, 2)
    assert study_module.has_look_seeds(comparison, folds[:-1], grids, 0, 2)  # blind without the sweep
    assert not study_module.has_look_seeds(comparison, folds[:-1], swept, 0, 2)
    assert study_module.has_look_seeds(comparison, folds[:-1], swept, 0, 1)
    for spelled in ("0,1", "range(0,2)"):  # a sweep as Hydra's sweeper spells it
        other = {"g": {"name": "g", "sweep": {"data.fold": spelled}}}
        assert study_module.swept_folds(other["g"]) == {"0", "1"}
        assert not study_module.has_look_seeds(comparison, folds[:-1], other, 0, 2)
    assert study_module.look_cells(comparison, [f for f in folds if "fold=0" in f.name], swept, range(2, 4)) == {
        ("g", (("block", "tied"),)): ({2, 3}, {"0", "1"}), ("g", (("block", "deq"),)): ({2, 3}, {"0", "1"})}


def test_a_comparison_with_an_arm_without_runs_takes_no_seeds(capsys):
    """Seeds for one arm alone could never be read (the look needs both): while arm b has no runs (its grid failed
    to start, say), a look trains nothing for the comparison and says why; once both have runs it seeds both."""
    from types import SimpleNamespace

    from tiedlab.reports.primary import load_primaries

    (comparison,) = load_primaries({"primary": {"comparisons": [
        {"insight": 1, "paradigm": "toy", "claim": "superiority", "delta": 0.5, "a": arm("tied"), "b": arm("deq")}]}})
    grids = {"g": {"name": "g"}}
    tied = [SimpleNamespace(name=f"g/block=tied,seed={i}", status="completed") for i in range(2)]
    assert study_module.look_cells(comparison, tied, grids, range(2, 4)) == {}
    assert "arm g: block=deq has no runs: run its grid first; this comparison takes no seeds" in capsys.readouterr().out
    deq = [SimpleNamespace(name=f"g/block=deq,seed={i}", status="completed") for i in range(2)]
    assert study_module.look_cells(comparison, tied + deq, grids, range(2, 4)) == {
        ("g", (("block", "tied"),)): ({2, 3}, set()), ("g", (("block", "deq"),)): ({2, 3}, set())}


def test_one_until_decided_command_at_a_time_on_a_runs_folder(tmp_path, monkeypatch):
    """Each --until-decided command reads sequential.yaml once and rewrites it after every look: a second one on
    the same runs folder is refused with one line naming the holder, instead of overwriting the first one's record."""
    from tiedlab.paradigms import rundir

    study = {"name": "toy", "grids": [{"name": "g", "overrides": TOY, "sweep": {"block": ["tied", "deq"],
                                                                                 "seed": [0, 1]}}],
             "primary": {"comparisons": [{"insight": 1, "paradigm": "toy", "claim": "superiority", "delta": 0.5,
                                          "a": arm("tied"), "b": arm("deq")}]}}
    use_toy_study(study, tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    runs.mkdir()
    with rundir.hold_lock(runs):  # as a first command would, while it runs
        with pytest.raises(rundir.RunLockedError, match=r"runs is in use by another process \(pid \d+ on "):
            study_module.study(["toy", "--runs", str(runs), "--until-decided", "--max-seeds", "4", "--no-report"])
    assert not (runs / "study.yaml").exists() and not (runs / "g").exists()  # refused before anything was written


def test_a_study_ends_with_its_report_naming_the_command(tmp_path, monkeypatch):
    study = {"name": "toy", "grids": [{"name": "g", "overrides": TOY, "sweep": {"block": ["tied", "deq"],
                                                                                 "seed": [0, 1]}}],
             "primary": {"comparisons": [{"insight": 1, "paradigm": "toy", "claim": "superiority", "delta": 0.5,
                                          "a": arm("tied"), "b": arm("deq")}]}}
    runs = use_toy_study(study, tmp_path, monkeypatch)
    argv = ["toy", "--runs", str(runs), "--out", str(tmp_path / "report"), "--until-decided", "--max-seeds", "2"]
    assert study_module.study(argv) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["report_command"].endswith("--command 'tiedlab-study " + " ".join(argv) + "'")
    assert [p["id"] for p in summary["primaries"]] == ["1/toy"] and summary["sequential_record"]["look"] == 0


def test_a_look_decides_at_alpha_over_the_planned_looks(tmp_path, monkeypatch):
    """The runner records a decision only at the look level, alpha / looks: seeds 0-2 give p = 0.035 for the
    superiority claim (decided at 0.05, not at 0.025 = 0.05 / 2 looks), so the first look leaves it undetermined and
    the second, on seeds 0-5, decides it."""
    from reports.conftest import write_run

    # written metrics stand in for trained runs: no config composes to their fingerprint (test_launch checks that)
    monkeypatch.setattr(study_module.launch, "check_reused", lambda runs: None)
    monkeypatch.setattr(study_module.launch, "check_composes", lambda runs: None)  # a paradigm off the search path

    values = {"tied": [0.80, 0.81, 0.79, 0.80, 0.80, 0.80], "deq": [0.74, 0.69, 0.70, 0.70, 0.70, 0.70]}
    spec = {"name": "toy", "grids": [{"name": "g", "overrides": [], "sweep": {"block": ["tied", "deq"],
                                                                                "seed": [0, 1, 2]}}],
            "primary": {"comparisons": [{"insight": 1, "paradigm": "vision", "claim": "superiority",
                                         "metric": "val/acc", "delta": 0.01, "a": arm("tied"), "b": arm("deq")}]}}
    runs = tmp_path / "runs"
    seen = []  # sequential.yaml as each look that trains finds it

    def execute(grids):
        found = runs / "sequential.yaml"
        seen.append(yaml.safe_load(found.read_text()) if found.exists() else None)
        for grid in grids:
            (block,) = grid["sweep"]["block"]
            for seed in grid["sweep"]["seed"]:  # a look's grid sweeps all its seeds: train the missing ones
                if not (runs / "g" / f"block={block},seed={seed}").exists():
                    write_run(runs / "g", f"block={block},seed={seed}", mode=block, seed=seed,
                              val=values[block][seed])
        return 0

    execute([{"sweep": {"block": [block], "seed": [0, 1, 2]}} for block in values])  # the study's first pass
    plan = {"start": 3, "step": 3, "max_seeds": 6, "looks": 2}
    assert study_module.add_seeds_until_decided(spec, runs, plan, [], 1, execute=execute) == 0
    assert seen[1] == {"look": 0, "decided": {}, "read": {"1/vision": 0}}  # the first look read 3 seeds: undecided
    state = yaml.safe_load((runs / "sequential.yaml").read_text())
    assert state["decided"] == {"1/vision": 1} and state["verdicts"] == {"1/vision": "holds"}
