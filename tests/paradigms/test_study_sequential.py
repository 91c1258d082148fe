"""tiedlab-study --until-decided: seed rounds only for the arms of undetermined primary comparisons, at the levels
of a fixed group-sequential plan, continuing where a rerun left off (the real runner, toy paradigm)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tiedlab.paradigms import study as cli_module

TESTS = Path(__file__).resolve().parents[1]


def test_until_decided_adds_seeds_to_undetermined_arms_only(tmp_path, monkeypatch, capsys):
    studies = tmp_path / "studies"
    studies.mkdir()
    toy = ["paradigm=toy", f"hydra.searchpath=[file://{TESTS / 'support' / 'configs'}]", "train.max_steps=3",
           "train.eval_every=3", "train.threads=1", "model.width=8"]
    study = {"name": "toy", "grids": [{"name": "g", "overrides": toy, "sweep": {"block": ["tied", "explicit"],
                                                                               "seed": [0, 1]}},
                                      {"name": "h", "overrides": toy, "sweep": {"model.width": [4, 16], "seed": [0, 1]}}],
             # g: a wide margin, decided once a few seeds narrow the interval; h: never decidable (delta tiny)
             "primary": {"comparisons": [
                 {"insight": 1, "paradigm": "toy", "claim": "noninferiority", "metric": "val/acc", "delta": 0.3,
                  "a": {"grid": "g", "where": {"block": "tied"}}, "b": {"grid": "g", "where": {"block": "explicit"}}},
                 {"insight": 4, "paradigm": "toy", "claim": "superiority", "metric": "val/acc", "delta": 1e-6,
                  "a": {"grid": "h", "where": {"model.width": 4}}, "b": {"grid": "h", "where": {"model.width": 16}}}]}}
    (studies / "toy.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.setattr(cli_module, "study_dir", lambda: studies)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = tmp_path / "runs"
    args = ["toy", "--runs", str(runs), "--no-report", "--until-decided", "--max-seeds", "4", "--seed-step", "2"]
    assert cli_module.study(args) == 0
    out = capsys.readouterr().out
    recorded = yaml.safe_load((runs / "study.yaml").read_text())
    assert recorded["sequential"] == {"start": 2, "step": 2, "max_seeds": 4, "looks": 2}
    seeds = lambda grid, cell: sorted(int(p.name.split("seed=")[1]) for p in (runs / grid).glob(f"{cell},seed=*"))
    # g was undetermined at 2 seeds (df=1 at alpha/2) and got seeds 2, 3 on both arms ...
    assert seeds("g", "block=tied") == seeds("g", "block=explicit") == [0, 1, 2, 3]
    # ... h never decides: it stops at --max-seeds
    assert seeds("h", "model.width=4") == seeds("h", "model.width=16") == [0, 1, 2, 3]
    assert "adding seeds [2, 3] to g" in out
    from tiedlab.reports.build import analyse

    by_insight = {r.spec.insight: r for r in analyse([runs]).primaries}
    assert by_insight[1].verdict == "holds" and by_insight[1].n_a == 4 and by_insight[1].level <= 0.05 / 2
    assert by_insight[4].verdict == "undetermined"
    # a rerun continues where it stopped: nothing to add, nothing retrained
    assert cli_module.study(args) == 0
    assert "adding seeds" not in capsys.readouterr().out
    # the looks are fixed in advance: another plan on the same runs is refused
    try:
        cli_module.study(["toy", "--runs", str(runs), "--no-report", "--until-decided", "--max-seeds", "6"])
    except ValueError as err:
        assert "sequential plan" in str(err)
    else:
        raise AssertionError("a different sequential plan was accepted")
