"""Pre-registered primary comparisons: study-file parsing, arm selection by grid and swept values, verdicts with
Holm's correction, the report's primary section, and the study runner's seed rounds until decided."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from tiedlab.paradigms.study import load_study, optional_grids
from tiedlab.reports import primary, stats
from tiedlab.reports.build import analyse, build_report
from tiedlab.reports.primary import Arm, PrimarySpec, evaluate_primaries, load_primaries, run_values

from .conftest import write_run


@dataclass
class FakeRun:
    name: str
    status: str = "completed"
    metrics: dict[str, float] = field(default_factory=dict)


def spec(**changes):
    raw = {"insight": 1, "paradigm": "vision", "claim": "superiority", "metric": "val/acc",
           "a": {"grid": "g", "where": {"block": "tied"}}, "b": {"grid": "g", "where": {"block": "deq"}}}
    raw.update(changes)
    return raw


def test_every_shipped_study_pre_registers_valid_primaries():
    for name in ("demo", "quick", "paper"):
        study = load_study(name)
        specs = load_primaries(study)
        assert specs, name
        grids = {g["name"]: g for g in study["grids"]}
        for s in specs:
            for arm in (s.a, s.b):
                sweep = grids[arm.grid].get("sweep") or {}
                for key, value in arm.where:  # every selector names a value the grid really sweeps
                    assert key in sweep and value in [primary._text(v) for v in sweep[key]], (name, s, key)
                assert ("block.depth", "1") not in arm.where  # depth 1 is never a tied arm
    quick = load_primaries(load_study("quick"))
    assert {(s.insight, s.paradigm) for s in quick} == {(i, p) for i in range(1, 7)
                                                         for p in ("vision", "graph", "language", "ssl")}


def test_the_paper_study_registers_the_comparisons_of_quick_on_arms_of_the_same_kind():
    """paper is quick at GPU sizes: the same comparisons (key, family, claim, metric, delta, kind) between grids of
    the same names, so that a GPU run answers the question the CPU run asked, not a drifted one -- all but SSL's,
    whose grids the 8-GPU-hour resize made optional (they are quick's SSL arms at the paper size, unregistered)."""
    def registered(name):
        return {s.key: (s.family, s.insight, s.paradigm, s.claim, s.metric, s.direction, s.kind, s.transform, s.delta,
                        s.a.grid, s.b.grid, s.a.where, s.b.where) for s in load_primaries(load_study(name))}

    quick, paper = registered("quick"), registered("paper")
    assert paper == {k: v for k, v in quick.items() if v[0] != "ssl"} and len(paper) == 23
    study = load_study("paper")
    sizes = {o for g in study["grids"] for o in g["overrides"] if o.startswith("size=")}
    assert sizes == {"size=vision_paper", "size=ssl_paper", "size=graph_paper", "size=language_paper"}
    ssl_arms = {arm["grid"] for c in load_study("quick")["primary"]["comparisons"] if c["family"] == "ssl"
                for arm in (c["a"], c["b"])}
    assert ssl_arms and ssl_arms <= set(optional_grids(study))


@pytest.mark.parametrize("change,match", [
    ({"claim": "better"}, r"claim='better' is not valid; choose one of \('superiority', 'noninferiority', 'equivalence'\)"),
    ({"delta": -1}, r"delta=-1.0 must be a number > 0"),
    ({"kind": "median"}, r"kind='median' is not valid; choose one of \('mean', 'divergence', 'spread'\)"),
    ({"metric": "val/bleu"}, r"no delta for metric 'val/bleu'"),
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"a": {"grid": "g", "where": {"seed": 0}}}, r"\['seed'\] tell replicates apart"),
    ({"kind": "spread", "claim": "noninferiority"}, r"kind=spread tests a difference only"),
    ({"insight": 7}, r"insight=7 is not one of the transfer table's rows \[1, 2, 3, 4, 5, 6\]"),
    ({"insight": "3"}, r"insight='3' must be an integer"),
])
def test_bad_primary_entries_are_errors_naming_the_value(change, match):
    with pytest.raises(ValueError, match=match):
        load_primaries({"primary": {"comparisons": [spec(**change)]}})


def test_one_headline_primary_per_insight_and_paradigm_others_by_id_and_known_grids():
    with pytest.raises(ValueError, match=r"#1 and #2 are both '1/vision'"):
        load_primaries({"primary": {"comparisons": [spec(), spec()]}})
    with pytest.raises(ValueError, match=r"#2 and #3 are both 'flops'"):
        load_primaries({"primary": {"comparisons": [spec(), spec(id="flops"), spec(id="flops")]}})
    head, other = load_primaries({"primary": {"comparisons": [spec(), spec(id="flops")]}})
    assert (head.key, head.headline, other.key, other.headline) == ("1/vision", True, "flops", False)
    with pytest.raises(ValueError, match=r"grid 'g' is not in the study"):
        load_primaries({"grids": [{"name": "other"}], "primary": {"comparisons": [spec()]}})


def test_defaults_direction_and_delta_by_metric():
    (loss,) = load_primaries({"primary": {"comparisons": [spec(metric="val/loss")]}})
    assert loss.direction == "lower" and loss.delta == 0.02
    (acc,) = load_primaries({"primary": {"defaults": {"delta": {"acc": 0.01}}, "comparisons": [spec()]}})
    assert acc.direction == "higher" and acc.delta == 0.01


def test_arms_select_by_grid_and_swept_values_in_both_run_layouts():
    arm = Arm.from_dict({"grid": "vision_masks", "where": {"mask": "distinct", "mask.sparsity": 0.5}}, "t")
    assert arm.matches("vision_masks/mask.sparsity=0.5,mask=distinct,seed=1")
    assert arm.matches("vision_masks/vision/mask.sparsity=0.5,mask=distinct,seed=0")  # the older layout
    assert not arm.matches("vision_masks/mask.sparsity=0.75,mask=distinct,seed=0")
    assert not arm.matches("vision_depth/mask.sparsity=0.5,mask=distinct,seed=0")
    assert run_values("g/block.depth=8,seed=1") == {"block.depth": "8", "seed": "1"}
    loose = Arm.from_dict({"grid": "vision_masks", "where": {"mask": "distinct"}}, "t")
    runs = [FakeRun(f"vision_masks/mask.sparsity={s},mask=distinct,seed=0") for s in (0.5, 0.75)]
    with pytest.raises(ValueError, match=r"matches runs of 2 cells"):
        primary.arm_runs(loose, runs)


def _runs(values_a, values_b, metric="val/acc"):
    return ([FakeRun(f"g/block=tied,seed={i}", metrics={metric: v}) for i, v in enumerate(values_a)]
            + [FakeRun(f"g/block=deq,seed={i}", metrics={metric: v}) for i, v in enumerate(values_b)])


def test_a_clear_effect_holds_a_null_one_stays_undetermined_and_says_how_many_seeds():
    (s,) = load_primaries({"primary": {"comparisons": [spec()]}})
    (clear,) = evaluate_primaries([s], _runs([0.90, 0.91, 0.92, 0.905, 0.915], [0.80, 0.805, 0.81, 0.79, 0.82]))
    assert clear.verdict == "holds" and clear.test.paired and clear.test.n_a == 5
    (noisy,) = evaluate_primaries([s], _runs([0.90, 0.80], [0.85, 0.86]))
    assert noisy.verdict == "undetermined"
    (short,) = evaluate_primaries([s], _runs([0.90, 0.84, 0.92], [0.85, 0.86, 0.84]))  # +0.037, noisy, 3 seeds
    assert short.verdict == "undetermined" and short.seeds_needed is not None and short.seeds_needed > 3


def test_arms_whose_runs_lack_the_metric_say_which_they_record():
    """A metric the arms' runs never write (another paradigm's, a typo) reads n<2 as before, with a note per arm
    naming what its runs record, not only "0 replicates"."""
    (s,) = load_primaries({"primary": {"comparisons": [spec()]}})
    runs = _runs([0.1, 0.2], [0.3, 0.4], metric="val/mse")
    for r in runs:
        r.metrics["val/r2"] = 0.5
    (r,) = evaluate_primaries([s], runs)
    assert r.verdict == "undetermined" and r.n_a == 0
    assert r.notes[:2] == ["arm a: none of its 2 completed run(s) records val/acc (they record val/mse, val/r2)",
                           "arm b: none of its 2 completed run(s) records val/acc (they record val/mse, val/r2)"]
    (fine,) = evaluate_primaries([s], _runs([0.9, 0.91], [0.8, 0.82]))
    assert not any("records" in n for n in fine.notes)


def test_a_spread_comparison_counts_the_runs_of_each_arm():
    (s,) = load_primaries({"primary": {"comparisons": [spec(kind="spread")]}})
    (none,) = evaluate_primaries([s], [])
    assert (none.n_a, none.n_b, none.verdict) == (0, 0, "undetermined")
    (some,) = evaluate_primaries([s], _runs([0.90, 0.91, 0.92, 0.905], [0.80, 0.85, 0.70]))
    assert (some.n_a, some.n_b) == (4, 3) and some.effect > 1  # arm b varies more: the ratio favours a


def test_a_decided_spread_or_divergence_verdict_points_the_right_way():
    """Which way a decided verdict points: arm a steadier (sd 0.001 against 0.05) or diverging less (0 of 12 against
    10 of 12) holds, and with the arms swapped the same data fail."""
    steady = [0.90 + 0.001 * (i % 3 - 1) for i in range(12)]
    spread = [0.85 + 0.05 * (i % 3 - 1) for i in range(12)]
    for kind, runs in (("spread", _runs(steady, spread)),
                       ("divergence", [FakeRun(f"g/block=tied,seed={i}", metrics={"val/acc": 0.9}) for i in range(12)]
                        + [FakeRun(f"g/block=deq,seed={i}", status="diverged" if i < 10 else "completed",
                                   metrics={"val/acc": 0.9}) for i in range(12)])):
        (s,) = load_primaries({"primary": {"comparisons": [spec(kind=kind)]}})
        (r,) = evaluate_primaries([s], runs)
        assert r.verdict == "holds" and r.effect > (1.0 if kind == "spread" else 0.0), (kind, r.effect)
        (swapped,) = load_primaries({"primary": {"comparisons": [spec(kind=kind, a=spec()["b"], b=spec()["a"])]}})
        (w,) = evaluate_primaries([swapped], runs)
        assert w.verdict == "fails", (kind, w.verdict)


def test_arms_that_vary_alike_read_equivalent_and_a_spread_comparison_keeps_its_share_of_alpha():
    """40 seeds a side of one spread (sd 0.01): the claim is undecided and the secondary reading says the variance
    ratio lies within [1/4, 4], its reason naming it; no seeds are asked for. Arm b 3x as spread: never equivalent.
    A decided spread comparison keeps its share of alpha (its equivalent reading could have been false), so an
    undecided comparison beside it is read at alpha / 2, not alpha."""
    rng = np.random.default_rng(4)
    a, b = 0.9 + 0.01 * rng.standard_normal(40), 0.85 + 0.01 * rng.standard_normal(40)
    (s,) = load_primaries({"primary": {"comparisons": [spec(insight=3, kind="spread")]}})
    (alike,) = evaluate_primaries([s], _runs(a, b))
    assert alike.verdict == "equivalent" and alike.seeds_needed is None, alike.reason
    assert "its secondary reading: the variance ratio lies within [1/4, 4]" in alike.reason
    assert 1 / 4 < alike.ci_low < 1 < alike.ci_high < 4
    (apart,) = evaluate_primaries([s], _runs(a, 0.85 + 3 * (b - 0.85)))
    assert apart.verdict != "equivalent" and apart.effect > 1
    steady = [0.90 + 0.001 * (i % 3 - 1) for i in range(12)]
    spread = [0.85 + 0.05 * (i % 3 - 1) for i in range(12)]
    runs = [FakeRun(f"g/block=tied,seed={i}", metrics={"val/acc": v, "val/loss": 1.0 + 0.1 * (i % 2)})
            for i, v in enumerate(steady)]
    runs += [FakeRun(f"g/block=deq,seed={i}", metrics={"val/acc": v, "val/loss": 1.0 + 0.1 * ((i // 2) % 2)})
             for i, v in enumerate(spread)]
    specs = load_primaries({"primary": {"comparisons": [spec(insight=3, kind="spread"),
                                                        spec(metric="val/loss", delta=0.01)]}})
    decided, other = evaluate_primaries(specs, runs)
    assert decided.verdict == "holds" and decided.level == pytest.approx(0.025)
    assert other.verdict == "undetermined" and other.level == pytest.approx(0.025)  # not 0.05: no share released


def test_arms_are_paired_by_seed_whatever_order_their_runs_come_in():
    """The order of run directories differs between arms when they come from two folders: pairing is by seed id."""
    (s,) = load_primaries({"primary": {"comparisons": [spec()]}})
    runs = _runs([0.90, 0.80, 0.85, 0.70], [0.889, 0.791, 0.838, 0.69])
    (ordered,) = evaluate_primaries([s], runs)
    (shuffled,) = evaluate_primaries([s], runs[:4] + runs[4:][::-1])
    assert ordered.verdict == shuffled.verdict == "holds" and ordered.p == pytest.approx(shuffled.p)
    a = {i: v for i, v in enumerate([0.90, 0.80, 0.85, 0.70])}
    b = {3: 0.69, 2: 0.838, 0: 0.889, 1: 0.791}
    assert stats.compare(a, b, claim="superiority", delta=0.005).p == pytest.approx(
        stats.compare(a, dict(sorted(b.items())), claim="superiority", delta=0.005).p)


def test_lower_is_better_metrics_are_signed_for_arm_a():
    (s,) = load_primaries({"primary": {"comparisons": [spec(metric="val/loss")]}})
    (r,) = evaluate_primaries([s], _runs([1.50, 1.51, 1.49, 1.50], [1.90, 1.92, 1.88, 1.91], "val/loss"))
    assert r.verdict == "holds" and r.test.effect > 0  # tied's lower loss is a positive effect


def test_duplicate_seeds_are_merged_with_a_note_and_unfinished_runs_named():
    (s,) = load_primaries({"primary": {"comparisons": [spec()]}})
    runs = _runs([0.9, 0.91, 0.92], [0.8, 0.81, 0.82])
    runs.append(FakeRun("g2/block=tied,seed=0", metrics={"val/acc": 0.95}))  # another grid: not in the arm
    runs.append(FakeRun("g/block=tied,seed=0", metrics={"val/acc": 0.93}))  # a second run dir of seed 0
    runs.append(FakeRun("g/block=deq,seed=3", status="diverged"))
    (r,) = evaluate_primaries([s], runs)
    assert r.test.n_a == 3 and any("merged" in n or "seed" in n for n in r.notes)
    assert any("not completed" in n and "diverged" in n for n in r.notes)


def test_holm_counts_every_primary_comparison():
    specs = load_primaries({"primary": {"comparisons": [spec(insight=i) for i in range(1, 7)]}})
    one = evaluate_primaries(specs[:1], _runs([0.90, 0.905, 0.91], [0.88, 0.883, 0.89]))
    six = evaluate_primaries(specs, _runs([0.90, 0.905, 0.91], [0.88, 0.883, 0.89]))
    assert one[0].p == six[0].p  # the same test ...
    assert one[0].level == 0.05 and six[0].level == pytest.approx(0.05 / 6)  # ... read against 6 (superiority
    # comparisons keep their share: Bonferroni levels), so its interval is wider
    assert six[0].ci_high - six[0].ci_low > one[0].ci_high - one[0].ci_low


def test_holm_corrects_each_family_apart():
    """An amendment (family: NAME) is corrected as a study of its own: its comparisons do not widen the first
    registration's intervals, and the first registration's do not widen its own."""
    first = [spec(insight=i) for i in (1, 2)]
    later = [spec(insight=i, family="transfer") for i in (3, 4, 5)]
    specs = load_primaries({"primary": {"comparisons": first + later}})
    runs = _runs([0.90, 0.905, 0.91], [0.88, 0.883, 0.89])
    alone = evaluate_primaries(load_primaries({"primary": {"comparisons": first}}), runs)
    both = evaluate_primaries(specs, runs)
    assert [r.spec.family for r in both] == ["", "", "transfer", "transfer", "transfer"]
    assert [r.level for r in both[:2]] == [r.level for r in alone] == [pytest.approx(0.025)] * 2
    assert [r.level for r in both[2:]] == [pytest.approx(0.05 / 3)] * 3
    assert (both[0].ci_low, both[0].ci_high) == (alone[0].ci_low, alone[0].ci_high)
    assert "(3 comparisons)" in both[2].reason and "(2 comparisons)" in both[0].reason


def test_run_names_match_arms_as_hydra_writes_values_and_under_a_prefix():
    arm = Arm.from_dict({"grid": "g", "where": {"flag": True, "optim.lr": "1e-3"}}, "t")
    assert arm.matches("g/flag=True,optim.lr=0.001,seed=0")
    assert arm.matches("study-a/g/flag=True,optim.lr=0.001,seed=0", ["g"])  # several report inputs: a prefix
    assert not arm.matches("g/flag=False,optim.lr=0.001,seed=0")


def test_an_arm_without_runs_and_a_divergence_arm_without_ended_runs_are_named(tmp_path):
    specs = load_primaries({"primary": {"comparisons": [
        spec(), spec(insight=3, kind="divergence", a={"grid": "g", "where": {"block": "tied"}},
                     b={"grid": "g", "where": {"block": "explicit"}})]}})
    results = evaluate_primaries(specs, _runs([0.9, 0.91], [0.8, 0.81]))
    assert any("arm b (g: block=explicit) matches no run" in n for n in results[1].notes)
    assert results[1].verdict == "undetermined" and "no rate to compare" in results[1].reason


def test_pairs_on_the_seeds_both_arms_have():
    (s,) = load_primaries({"primary": {"comparisons": [spec()]}})
    runs = _runs([0.90, 0.91, 0.92, 0.93], [0.80, 0.81, 0.82])  # seed 3 of arm b is missing (failed, say)
    (r,) = evaluate_primaries([s], runs)
    assert r.paired and (r.n_a, r.n_b) == (3, 3) and any("paired on the 3 seeds" in n for n in r.notes)
    # arms on disjoint seeds: unpaired, and said
    disjoint = ([FakeRun(f"g/block=tied,seed={i}", metrics={"val/acc": v}) for i, v in enumerate([0.9, 0.91, 0.92])]
                + [FakeRun(f"g/block=deq,seed={i + 10}", metrics={"val/acc": v}) for i, v in enumerate([0.8, 0.82])])
    (u,) = evaluate_primaries([s], disjoint)
    assert not u.paired and any("not paired: the arms share 0 seed(s)" in n for n in u.notes)


def test_a_log_ratio_comparison_pairs_the_logs_and_drops_a_value_with_no_log():
    """transform: log on a lower-is-better metric (step time): the effect is the mean over seeds of log(b / a), the
    paired t test's on those logs; a step time of 0 has no log: that seed is dropped on both sides, and said."""
    import numpy as np
    from scipy import stats as sps

    (s,) = load_primaries({"primary": {"comparisons": [spec(metric="time/step_ms", direction="lower", transform="log", delta=0.1)]}})
    tied, deq = [10.0, 11.0, 9.5, 10.5, 0.0], [30.0, 35.0, 27.0, 33.0, 31.0]
    (r,) = evaluate_primaries([s], _runs(tied, deq, "time/step_ms"))
    logs = np.log(np.array(deq[:4]) / np.array(tied[:4]))
    assert r.paired and (r.n_a, r.n_b) == (4, 4) and r.verdict == "holds"
    assert r.effect == pytest.approx(logs.mean())
    low, high = sps.ttest_1samp(logs, 0.0).confidence_interval(1 - r.level)
    assert (r.ci_low, r.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert any("non-finite" in n and "4" in n for n in r.notes), r.notes
    # the default deltas are in the metric's units (a loss's 0.02), not its log's: a log ratio sets its own
    with pytest.raises(ValueError, match=r"transform 'log' needs its own delta .* set delta"):
        load_primaries({"primary": {"comparisons": [spec(metric="val/loss", transform="log")]}})
    with pytest.raises(ValueError, match=r"transform='lg' is not valid; choose one of \('none', 'log'\)"):
        load_primaries({"primary": {"comparisons": [spec(metric="val/loss", transform="lg")]}})


def test_noninferiority_on_a_lower_is_better_metric_allows_a_loss_worse_by_less_than_delta():
    """Arm a's loss 0.01 worse than b's (delta 0.05): noninferior, holds; 0.2 worse: fails; the effect is signed for
    arm a (negative: a is worse)."""
    (s,) = load_primaries({"primary": {"comparisons": [spec(metric="val/loss", claim="noninferiority", delta=0.05)]}})
    b = [1.50, 1.52, 1.49, 1.51, 1.50]
    (close,) = evaluate_primaries([s], _runs([v + 0.01 + 0.001 * i for i, v in enumerate(b)], b, "val/loss"))
    assert close.verdict == "holds" and close.effect == pytest.approx(-0.012) and close.ci_low > -0.05
    (far,) = evaluate_primaries([s], _runs([v + 0.2 + 0.001 * i for i, v in enumerate(b)], b, "val/loss"))
    assert far.verdict == "fails" and far.ci_high < -0.05


def tied_vs_deq(runs: Path, registered: bool = True) -> None:
    """Four seeds of a tied arm (val 0.90-0.92) and a DEQ arm (0.79-0.81) in grid g, and a study.yaml beside them
    that registers ``spec()`` (the claim that tied beats the DEQ)."""
    for seed, (a, b) in enumerate([(0.90, 0.80), (0.91, 0.81), (0.92, 0.79), (0.905, 0.805)]):
        write_run(runs / "g", f"block=tied,seed={seed}", mode="tied", seed=seed, val=a)
        write_run(runs / "g", f"block=deq,seed={seed}", mode="deq", seed=seed, val=b)
    if registered:
        (runs / "study.yaml").write_text(yaml.safe_dump({"name": "t", "grids": [{"name": "g"}],
                                                         "primary": {"comparisons": [spec()]}}))


def test_report_reads_the_study_file_beside_the_runs_and_leads_with_the_primaries(tmp_path):
    runs = tmp_path / "runs"
    tied_vs_deq(runs)
    build_report([runs], tmp_path / "out", "t")
    readme = (tmp_path / "out" / "README.md").read_text()
    assert readme.index("## Primary comparisons (pre-registered)") < readme.index("## Secondary comparisons")
    assert "| 1. tied >= DEQ accuracy | holds: +" in readme  # no label: the insight's short name
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["primaries"][0]["verdict"] == "holds" and summary["study"] == "t"
    assert stats.RULE in readme
    assert "a noninferiority claim holds when A is not worse than B by more than delta" in readme  # not its label
    # the headline figure: the forest plot of the primaries, PNG and SVG, at the top of the primary section
    out = tmp_path / "out"
    assert (out / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in (out / "forest.svg").read_bytes()
    section = readme.split("## Primary comparisons (pre-registered)", 1)[1]
    assert section.lstrip().startswith("![Primary comparisons") and "forest.svg" in summary["files"]
    assert "Holm's correction across them" in readme
    # an amendment: the report says Holm ran within each registration, and which comparison belongs to which
    (runs / "study.yaml").write_text(yaml.safe_dump({"name": "t", "grids": [{"name": "g"}], "primary": {
        "comparisons": [spec(), spec(insight=2, family="later")]}}))
    build_report([runs], tmp_path / "out2", "t")
    readme = (tmp_path / "out2" / "README.md").read_text()
    assert "within each family, apart (unnamed family: 1, family 'later': 1;" in readme
    assert "| 2 [later] |" in readme


def test_a_folder_above_a_studys_runs_folder_is_refused_with_the_folder_to_report(tmp_path):
    """``runs/study`` instead of ``runs/study/t``: the study.yaml and looks' record beside the runs are read only
    from the folder itself, so the report read every seed at the full alpha (with --study too) and called it so."""
    tied_vs_deq(tmp_path / "runs" / "study" / "t")
    for study in (None, tmp_path / "runs" / "study" / "t" / "study.yaml"):
        with pytest.raises(ValueError, match=r"holds the runs folders of studies .*report each study's folder, e\.g\. "
                                             f"tiedlab-report {tmp_path / 'runs' / 'study' / 't'}$"):
            build_report([tmp_path / "runs" / "study"], tmp_path / "out", "t", study=study)
    # one grid's folder with --study: the looks' record is the study folder's; without, no verdict is read there
    with pytest.raises(ValueError, match=r"is inside the runs folder of a study .* tiedlab-report "):
        build_report([tmp_path / "runs" / "study" / "t" / "g"], tmp_path / "out", "t",
                     study=tmp_path / "runs" / "study" / "t" / "study.yaml")
    assert not build_report([tmp_path / "runs" / "study" / "t" / "g"], tmp_path / "grid", "t").primaries
    build_report([tmp_path / "runs" / "study" / "t"], tmp_path / "out", "t")  # the study's own folder
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["primaries"][0]["verdict"] == "holds"


def test_comparisons_other_than_the_recorded_registration_are_labelled_as_chosen_after_the_runs(tmp_path):
    """--study FILE on a fixed-design runs folder whose study.yaml registered other comparisons: the report tests
    the file's (a re-analysis is allowed) but never calls them pre-registered, and a rebuild from its summary keeps
    the label."""
    runs = tmp_path / "runs"
    tied_vs_deq(runs)
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump({"name": "t", "grids": [{"name": "g"}],
                                      "primary": {"comparisons": [spec(claim="noninferiority", delta=0.5)]}}))
    same = tmp_path / "same.yaml"
    same.write_text((runs / "study.yaml").read_text())
    build_report([runs], tmp_path / "same", "t", study=same)
    assert "## Primary comparisons (pre-registered)" in (tmp_path / "same" / "README.md").read_text()
    build_report([runs], tmp_path / "out", "t", study=edited)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "## Primary comparisons (not the registered ones)" in readme and "pre-registered)" not in readme
    assert "chosen after the runs" in readme and "primary comparisons NOT as registered" in readme
    summary = tmp_path / "out" / "summary.json"
    for name, study in (("again", None), ("same_edit", edited), ("registered", same)):
        build_report([], tmp_path / name, "t", from_summary=summary, study=study)
    assert "## Primary comparisons (not the registered ones)" in (tmp_path / "again" / "README.md").read_text()
    assert "## Primary comparisons (not the registered ones)" in (tmp_path / "same_edit" / "README.md").read_text()
    assert "## Primary comparisons (pre-registered)" in (tmp_path / "registered" / "README.md").read_text()


def test_an_arm_whose_runs_differ_in_config_is_not_read(tmp_path):
    """Runs of an arm are picked by directory name: a seed trained with another override (an edited study file, an
    extra command-line override) lands in the same arm. The comparison is then not read, and says why; DEQ runs
    judged under different equilibrium thresholds likewise."""
    from tiedlab.reports.load import load_runs

    runs = tmp_path / "runs"
    tied_vs_deq(runs, registered=False)
    (s,) = load_primaries({"primary": {"comparisons": [spec()]}})
    (clean,) = evaluate_primaries([s], load_runs([runs]))
    assert clean.verdict == "holds"
    write_run(runs / "h", "block=tied,seed=3", mode="tied", seed=3, val=0.905, data={"limit_train": 100})
    pooled = [r for r in load_runs([runs]) if r.name != "g/block=tied,seed=3"]
    for r in pooled:  # seed 3 of arm a from a run with another override, under the arm's directory name
        if r.name == "h/block=tied,seed=3":
            r.name = "g/block=tied,seed=3"
    (gap,) = evaluate_primaries([s], pooled)  # a key only one run records: a run of another code version
    assert gap.verdict == "holds" and any("arm a: some runs' configs lack data.limit_train" in n for n in gap.notes)
    for r in pooled:
        if r.key.get("data.limit_train") is None:
            r.key = {**r.key, "data.limit_train": 200} if r.name.startswith("g/block=tied") else r.key
    (mixed,) = evaluate_primaries([s], pooled)
    assert mixed.verdict == "undetermined" and mixed.reason.startswith("not read: its runs were not made alike")
    assert "arm a's runs differ in data.limit_train (100 vs 200)" in mixed.reason
    metrics = runs / "g" / "block=deq,seed=2" / "metrics.json"
    m = json.loads(metrics.read_text())
    m["equilibrium"] = {"at_equilibrium": True, "flags": [], "measured": {"rel_residual": 1e-3},
                        "thresholds": {"rel_residual": 0.5}}
    metrics.write_text(json.dumps(m))
    other = runs / "g" / "block=deq,seed=1" / "metrics.json"
    m = json.loads(other.read_text())
    m["equilibrium"] = {"at_equilibrium": True, "flags": [], "measured": {"rel_residual": 1e-3},
                        "thresholds": {"rel_residual": 0.01}}
    other.write_text(json.dumps(m))
    (judged,) = evaluate_primaries([s], load_runs([runs]))
    assert judged.verdict == "undetermined" and "settings (rel_residual: 0.01 vs 0.5)" in judged.reason
    # the same thresholds, measured with another reference solve: another test; a run that does not record its
    # settings (written before they were) is compared on its thresholds alone
    for path in (runs / "g").glob("block=deq,seed=*/metrics.json"):
        m = json.loads(path.read_text())
        m["equilibrium"] = {"at_equilibrium": True, "flags": [], "measured": {"rel_residual": 1e-3},
                            "thresholds": {"rel_residual": 0.01}}
        if path in (metrics, other):
            m["equilibrium"]["measured_with"] = {"reference_tol": 1e-6 if path == metrics else 1e-8}
        path.write_text(json.dumps(m))
    (measured,) = evaluate_primaries([s], load_runs([runs]))
    assert measured.verdict == "undetermined" and measured.reason.endswith(
        "under different thresholds or measurement settings (measured_with.reference_tol: 1e-06 vs 1e-08)")
    m = json.loads(other.read_text())
    m["equilibrium"]["measured_with"] = {"reference_tol": 1e-6}
    other.write_text(json.dumps(m))
    (alike,) = evaluate_primaries([s], load_runs([runs]))
    assert alike.verdict == "holds", alike.reason


def test_step_times_from_seed_batches_of_another_size_are_not_compared():
    """A run trained in a seed batch of K records the batch's step seconds / K: its time is not compared with that
    of runs trained separately; accuracy still is, and times from batches of one size are."""
    @dataclass
    class Timed(FakeRun):
        provenance: list = field(default_factory=list)

    def arms(k_a, k_b):
        return ([Timed(f"g/block=tied,seed={i}", metrics={"time/step_ms": 10.0 + i * i, "val/acc": 0.9 + i * i / 100},
                       provenance=[{"seed_batch": k_a}]) for i in range(4)]
                + [Timed(f"g/block=deq,seed={i}", metrics={"time/step_ms": 30.0 + i, "val/acc": 0.8 + i / 100},
                         provenance=[{"seed_batch": k_b}]) for i in range(4)])

    timing = load_primaries({"primary": {"comparisons": [spec(metric="time/step_ms", direction="lower",
                                                              delta=0.1)]}})
    accuracy = load_primaries({"primary": {"comparisons": [spec()]}})
    (t,) = evaluate_primaries(timing, arms(4, 1))
    assert t.verdict == "undetermined" and "did not train alike (seed 0: K = 4 vs 1, seed 1: K = 4 vs 1" in t.reason
    assert t.reason.endswith("a batched run's seconds are its batch's divided by K and its memory the batch's, a "
                             "torchrun rank's one process's share"), t.reason
    looks = arms(4, 4)  # a later look's seeds in batches of 2, on both arms alike: still comparable
    for r in looks:
        if r.name.endswith(("seed=2", "seed=3")):
            r.provenance = [{"seed_batch": 2}]
    (paired,) = evaluate_primaries(timing, looks)
    assert paired.verdict == "holds"
    (acc,) = evaluate_primaries(accuracy, arms(4, 1))
    assert acc.verdict == "holds"
    (same,) = evaluate_primaries(timing, arms(1, 1))
    assert same.verdict == "holds"
    silent = arms(1, 1)  # arm b's provenance does not say (a run from before it did): not set beside K = 1
    for r in silent[4:]:
        r.provenance = []
    (unknown,) = evaluate_primaries(timing, silent)
    assert unknown.verdict == "undetermined" and "(seed 0: K = 1 vs unknown, seed 1: K = 1 vs unknown" in unknown.reason
    for r in silent:  # no provenance says: compared, as before seed batches existed
        r.provenance = []
    (before,) = evaluate_primaries(timing, silent)
    assert before.verdict == "holds"
    ranks = arms(1, 1)  # arm b's runs trained over 2 torchrun processes: a rank's time is one process's share
    for r in ranks[4:]:
        r.provenance = [{"seed_batch": 1, "world_size": 2}]
    (spread_out,) = evaluate_primaries(timing, ranks)
    assert spread_out.verdict == "undetermined" and "(seed 0: K = 1 vs 1 over 2 processes" in spread_out.reason
    (acc,) = evaluate_primaries(accuracy, ranks)
    assert acc.verdict == "holds"
    shared = arms(1, 1)  # seed 1's DEQ run shared its device with another run and had one thread: not compared
    for r in shared:
        r.provenance = [{"seed_batch": 1, "threads": 2, "processes_per_device": 1}]
    shared[5].provenance = [{"seed_batch": 1, "threads": 1, "processes_per_device": 2}]
    (sharing,) = evaluate_primaries(timing, shared)
    assert sharing.verdict == "undetermined"
    assert "(seed 1: threads 2 vs 1; processes per device 1 vs 2): a step's seconds depend on its threads; " \
           "processes sharing a device slow each other's steps" in sharing.reason, sharing.reason
    for i in (2, 3, 6, 7):  # seeds 2-3 trained in seed batches of 2 in both arms: alike, and not a reason
        shared[i].provenance = [{**shared[i].provenance[0], "seed_batch": 2}]
    (sharing,) = evaluate_primaries(timing, shared)
    assert "(seed 1: threads 2 vs 1; processes per device 1 vs 2)" in sharing.reason
    assert "batch" not in sharing.reason.split("):", 1)[1], sharing.reason
    for r in shared:  # memory moves with neither: compared
        r.metrics["memory/peak_mb"] = r.metrics["time/step_ms"]
    memory = load_primaries({"primary": {"comparisons": [spec(metric="memory/peak_mb", direction="lower",
                                                              delta=0.1)]}})
    (peak,) = evaluate_primaries(memory, shared)
    assert peak.verdict == "holds", peak.reason
    unpaired = arms(1, 1)  # arms not paired by seed: what differs, per arm
    for i, r in enumerate(unpaired):
        r.provenance = [{"seed_batch": 1, "threads": 1 if i < 4 else 2}]
        r.name = r.name.replace("seed=", "seed=1") if i >= 4 else r.name
    (apart,) = evaluate_primaries(timing, unpaired)
    assert apart.verdict == "undetermined" and "(arm a: threads 1; arm b: threads 2)" in apart.reason, apart.reason


def test_a_step_time_comparison_says_how_much_of_the_deqs_time_was_its_unrolled_warm_up():
    """time/step_ms averages a DEQ's cheap unrolled warm-up steps in (conservative for 'tied is cheaper'): the
    comparison's notes give the solving and warm-up steps' means; an accuracy comparison does not."""
    runs = ([FakeRun(f"g/block=tied,seed={i}", metrics={"time/step_ms": 10.0 + i, "val/acc": 0.9}) for i in range(4)]
            + [FakeRun(f"g/block=deq,seed={i}", metrics={"time/step_ms": 25.0 + i, "val/acc": 0.8,
                                                         "time/solve_step_ms": 28.0 + i, "time/warmup_step_ms": 10.0})
               for i in range(4)])
    (t,) = evaluate_primaries(load_primaries({"primary": {"comparisons": [
        spec(metric="time/step_ms", direction="lower", delta=0.1, a={"grid": "g", "where": {"block": "deq"}},
             b={"grid": "g", "where": {"block": "tied"}})]}}), runs)
    assert "arm a: time/step_ms includes the unrolled warm-up of 4 DEQ run(s) (train.deq_warmup_steps; mean ms per " \
        "step: 29.5 solving, 10 warm-up)" in t.notes
    assert not any("warm-up" in n for n in t.notes if n.startswith("arm b"))
    (acc,) = evaluate_primaries(load_primaries({"primary": {"comparisons": [spec()]}}), runs)
    assert not any("warm-up" in n for n in acc.notes)
    for r in runs[4:6]:  # runs from before the phases were timed: their config says they warmed up
        r.metrics = {k: v for k, v in r.metrics.items() if "warmup" not in k and "solve" not in k}
        r.config, r.key = {"block": {"mode": "deq"}, "train": {"deq_warmup_steps": 50}}, {}
    (older,) = evaluate_primaries(load_primaries({"primary": {"comparisons": [
        spec(metric="time/step_ms", direction="lower", delta=0.1, a={"grid": "g", "where": {"block": "deq"}},
             b={"grid": "g", "where": {"block": "tied"}})]}}), runs)
    assert "arm a: time/step_ms includes the unrolled warm-up of 2 DEQ run(s) (train.deq_warmup_steps; mean ms " \
        "per step: 30.5 solving, 10 warm-up)" in older.notes
    assert "arm a: time/step_ms includes the unrolled warm-up of 2 DEQ run(s) (train.deq_warmup_steps=50; its " \
        "time was not recorded)" in older.notes


def test_runs_cut_by_the_time_limit_are_named_in_the_comparisons_notes():
    @dataclass
    class Stepped(FakeRun):
        step: int = 100
        total_steps: int = 100

    runs = ([Stepped(f"g/block=tied,seed={i}", metrics={"val/acc": 0.9 + i * i / 100}) for i in range(4)]
            + [Stepped(f"g/block=deq,seed={i}", metrics={"val/acc": 0.8 + i * i / 100}, step=60 if i < 2 else 100)
               for i in range(4)])
    (r,) = evaluate_primaries(load_primaries({"primary": {"comparisons": [spec()]}}), runs)
    assert "arm b: 2 of 4 run(s) stopped by train.time_limit_s before their last step (at 60/100, 60/100 steps)" \
        in " ".join(r.notes)
    assert not any(n.startswith("arm a: ") and "time_limit" in n for n in r.notes)


def test_diverged_runs_left_out_of_a_comparison_of_values_are_counted_in_its_verdict():
    runs = ([FakeRun(f"g/block=tied,seed={i}", metrics={"val/acc": 0.9 + i * i / 100}) for i in range(4)]
            + [FakeRun(f"g/block=deq,seed={i}", metrics={"val/acc": 0.8 + i / 100}) for i in range(4)]
            + [FakeRun(f"g/block=deq,seed={i}", status="diverged") for i in (4, 5)])
    (r,) = evaluate_primaries(load_primaries({"primary": {"comparisons": [spec()]}}), runs)
    assert r.verdict == "holds" and r.reason.endswith("diverged, left out: arm a 0, arm b 2; " + primary.LEFT_OUT_NOTE)


def test_without_its_looks_record_a_sequential_study_is_read_on_no_more_than_its_planned_seeds(tmp_path):
    """sequential.yaml deleted (or no look read yet), and seeds beyond --max-seeds in the folder: the report reads each
    comparison on the plan's --max-seeds seeds at most, and says why it cannot tell the look it was decided at."""
    runs = tmp_path / "runs"
    for seed in range(6):
        write_run(runs / "g", f"block=tied,seed={seed}", mode="tied", seed=seed, val=0.9 + seed * seed / 1000)
        write_run(runs / "g", f"block=deq,seed={seed}", mode="deq", seed=seed, val=0.8 + seed / 1000)
    (runs / "study.yaml").write_text(yaml.safe_dump({"name": "t", "grids": [{"name": "g"}],
                                                     "primary": {"comparisons": [spec()]},
                                                     "sequential": {"start": 2, "step": 2, "max_seeds": 4, "looks": 2}}))
    (r,) = analyse([runs]).primaries
    assert (r.n_a, r.n_b) == (4, 4) and any("no sequential.yaml beside the runs" in n for n in r.notes)


def test_a_metric_without_a_known_direction_must_name_it():
    """A time or a residual read as higher-is-better would reverse the verdict: only accuracies, losses and
    perplexities have a default direction."""
    with pytest.raises(ValueError, match=r"metric 'time/step_ms' has no known direction"):
        load_primaries({"primary": {"comparisons": [spec(metric="time/step_ms", delta=0.1)]}})
    (t,) = load_primaries({"primary": {"comparisons": [spec(metric="time/step_ms", delta=0.1, direction="lower")]}})
    (k,) = load_primaries({"primary": {"comparisons": [spec(metric="val/knn_acc", delta=0.01)]}})
    (f,) = load_primaries({"primary": {"comparisons": [spec(metric="fit/loss", delta=0.01)]}})
    assert (t.direction, k.direction, f.direction) == ("lower", "higher", "lower")


def test_convergence_note_reads_the_last_fifth_of_each_runs_history_against_delta():
    """'Near convergence': the metric's move over the last 20% of steps (fit/* from the train/* running mean),
    median over an arm's seeds, against the comparison's delta."""
    from types import SimpleNamespace

    from tiedlab.reports.primary import convergence_note, late_change

    def run(values, total=1000):  # evaluations every 200 steps
        return SimpleNamespace(total_steps=total, history=[{"step": 200 * (i + 1), "train/loss": v}
                                                           for i, v in enumerate(values)])

    assert late_change(run([1.0, 0.6, 0.5, 0.45, 0.44]), "fit/loss") == pytest.approx(0.01)  # step 800 -> 1000
    assert late_change(run([1.0]), "fit/loss") is None and late_change(run([1.0, 0.5]), "val/acc") is None
    (s,) = load_primaries({"primary": {"comparisons": [spec(metric="fit/loss", delta=0.02)]}})
    settled = convergence_note(s, [run([1, 0.6, 0.5, 0.45, 0.44]), run([1, 0.6, 0.5, 0.45, 0.43])],
                               [run([1, 0.7, 0.6, 0.55, 0.545])])
    assert settled.startswith("near convergence yes") and "train/loss moved by 0.015 (arm A)" in settled
    moving = convergence_note(s, [run([1, 0.6, 0.5, 0.45, 0.40])], [run([1, 0.7, 0.6, 0.55, 0.545])])
    assert moving.startswith("near convergence no")
    # a rebuild from summary.json has no histories: it reads the moves the summary kept, and says when it kept none
    a, b = [run([1, 0.6, 0.5, 0.45, 0.44]), run([1, 0.6, 0.5, 0.45, 0.43])], [run([1, 0.7, 0.6, 0.55, 0.545])]
    assert primary.late_changes(a[0]) == {"train/loss": pytest.approx(0.01)}

    def rebuilt(r, kept=True):
        return SimpleNamespace(total_steps=1000, history=[], from_summary=True,
                               late_changes=primary.late_changes(r) if kept else None)

    again = convergence_note(s, [rebuilt(r) for r in a], [rebuilt(r) for r in b])
    assert again.split(" train/loss moved by ")[1] == settled.split(" train/loss moved by ")[1]
    assert "over the last 20% of steps or more (from the last evaluation at or before 80% of them" in again
    # evaluations every 500 of 1,500 steps: the move is read from step 1,000, a third of the run, and said so
    third = [SimpleNamespace(total_steps=1500, history=[{"step": 500 * (i + 1), "train/loss": v}
                                                        for i, v in enumerate((1.0, 0.5, 0.49))])]
    assert "over the last 33% of steps (no evaluation at 80% of them: from the one before) train/loss moved by " \
        "0.01 (arm A)" in convergence_note(s, third, third)
    assert convergence_note(s, [rebuilt(r, False) for r in a], [rebuilt(r, False) for r in b]).startswith(
        "near convergence not read: rebuilt from a summary.json that kept neither")


def test_convergence_note_counts_each_seed_once_and_reads_runs_cut_short_over_what_they_trained():
    """A seed's folds are one replicate in the test, so they are one move in the median (their mean move); a run
    that train.time_limit_s stopped at step 600 of 1,000 is read over its last 20% of what it trained (it was left
    out: no evaluation after 80% of the planned steps)."""
    from types import SimpleNamespace

    from tiedlab.reports.primary import convergence_note, late_change

    def run(name, move, total=1000, step=None):  # evaluations every 100 steps, the last one `move` below the one before
        made = step or total
        values = [1.0 - 0.001 * i for i in range(made // 100 - 1)] + [1.0 - 0.001 * (made // 100 - 2) - move]
        return SimpleNamespace(name=name, status="completed", total_steps=total, step=made,
                               history=[{"step": 100 * (i + 1), "train/loss": v} for i, v in enumerate(values)])

    (s,) = load_primaries({"primary": {"comparisons": [spec(metric="fit/loss", delta=0.02)]}})
    # over the last 200 steps: seed 0 in three folds moved 0.051 each, seeds 1 and 2 moved 0.002
    folds = [run(f"g/block=tied,data.fold={f},seed=0", 0.05) for f in range(3)]
    a = folds + [run(f"g/block=tied,data.fold=0,seed={i}", 0.001) for i in (1, 2)]
    b = [run(f"g/block=deq,seed={i}", 0.001) for i in range(3)]
    note = convergence_note(s, a, b)
    assert note.startswith("near convergence yes") and "moved by 0.002 (arm A)" in note  # over runs: 0.051, "no"
    cut = run("g/block=deq,seed=0", 0.05, step=600)
    assert late_change(cut, "fit/loss") == pytest.approx(0.051)  # step 400 -> 600 (was None: dropped)
    assert "moved by 0.002 (arm A) and 0.051 (arm B)" in convergence_note(s, a[3:], [cut])


def test_a_rebuild_from_summary_keeps_folds_as_replicates_and_the_late_moves(tmp_path):
    """k-fold runs of one seed are replicates (a rebuild merged them into one), and the moves over the last 20% of
    steps survive the rebuild (its convergence notes were dropped)."""
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.load import load_runs, runs_from_summary

    history = [(float(t), 0.5 + 0.04 * t) for t in range(1, 11)]  # steps 10..100 of 100
    for fold, val in ((0, 0.70), (1, 0.80)):
        write_run(tmp_path / "runs", f"f{fold}", seed=0, val=val, data={"fold": fold}, history=history)
    build_report([tmp_path / "runs"], tmp_path / "out")
    (cell,) = group_cells(runs_from_summary(tmp_path / "out" / "summary.json"))
    assert cell.primary().n == 2 and cell.duplicates == []
    (run, _) = runs_from_summary(tmp_path / "out" / "summary.json")
    assert run.late_changes["val/acc"] == pytest.approx(0.08) and primary.late_change(run, "val/acc") == \
        pytest.approx(0.08)


def test_a_forest_interval_beyond_the_clip_is_drawn_at_its_own_edge():
    """An interval wholly right of the axis (a large effect in delta units) is a point at the right edge with an arrow
    there, not an arrow at the left edge too; one that spans the axis gets an arrow at each edge it passes."""
    from tiedlab.reports.plots import FOREST_CLIP, forest_segment

    assert forest_segment(5.1, 8.2) == ((FOREST_CLIP, FOREST_CLIP), [FOREST_CLIP])
    assert forest_segment(-9.0, -6.0) == ((-FOREST_CLIP, -FOREST_CLIP), [-FOREST_CLIP])
    assert forest_segment(-7.0, 6.0) == ((-FOREST_CLIP, FOREST_CLIP), [-FOREST_CLIP, FOREST_CLIP])
    assert forest_segment(-0.5, 2.0) == ((-0.5, 2.0), [])


def test_a_divergence_rate_counts_each_seed_once():
    """Two folders (or name layouts) holding the same runs are one result per seed, not two: Fisher's test on
    duplicated directories read 4/12 against 0/6 as p = 0.013 where the six seeds give p = 0.061."""
    (s,) = load_primaries({"primary": {"comparisons": [spec(insight=3, kind="divergence")]}})
    tied = [FakeRun(f"g/block=tied,seed={i}", metrics={"val/acc": 0.9}) for i in range(6)]
    deq = [FakeRun(f"g/block=deq,seed={i}", status="diverged" if i < 4 else "completed", metrics={"val/acc": 0.9})
           for i in range(6)]
    (once,) = evaluate_primaries([s], tied + deq)
    again = [FakeRun(f"g/vision/block=deq,seed={i}", status=r.status, metrics=r.metrics) for i, r in enumerate(deq)]
    (twice,) = evaluate_primaries([s], tied + deq + again)
    assert once.verdict == twice.verdict == "undetermined" and twice.p == pytest.approx(once.p)
    assert (twice.n_a, twice.n_b) == (6, 6) and "arm b: 6 seed(s) with several runs counted once" in twice.notes
    split = [FakeRun("g/vision/block=deq,seed=5", status="diverged")]  # disagrees with seed 5's completed run
    (odd,) = evaluate_primaries([s], tied + deq + split)
    assert any("seed(s) 5 diverged in some of their runs only (counted as diverged)" in n for n in odd.notes)


def test_the_folds_of_a_seed_are_one_replicate_of_a_mean_comparison():
    """k folds of each seed are averaged: the paired t test runs on seeds (df = seeds - 1), not on (seed, fold)
    pairs, which share a seed's effect and read a k-fold t test at several times its alpha."""
    (s,) = load_primaries({"primary": {"comparisons": [spec(delta=0.01)]}})
    runs = [FakeRun(f"g/block={b},data.fold={f},seed={i}", metrics={"val/acc": base + step * i + 0.02 * f})
            for b, base, step in (("tied", 0.8, 0.01), ("deq", 0.7, 0.013)) for i in range(3) for f in range(4)]
    (r,) = evaluate_primaries([s], runs)
    assert (r.n_a, r.n_b) == (3, 3) and r.test.df == 2
    assert "arm a: the folds of each seed averaged (4 per seed): the seed is the replicate" in r.notes


def test_a_seed_is_averaged_over_the_folds_both_arms_have():
    """Two arms alike fold by fold (fold f is 0.05 f harder) where one arm lost fold 0 of every seed: averaging each
    arm over its own folds read the lost fold's ease as an effect (-0.026: "fails"); over the folds both have they
    are equivalent. A seed in one arm only keeps its folds; runs that sweep folds and no seed are one replicate, said."""
    (s,) = load_primaries({"primary": {"comparisons": [spec(delta=0.01)]}})
    runs = [FakeRun(f"g/block={b},data.fold={f},seed={i}", metrics={"val/acc": 0.8 - 0.05 * f + 0.001 * i * (b == "deq")})
            for b in ("tied", "deq") for i in range(4) for f in range(4)]
    lost = [r for r in runs if not ("block=tied" in r.name and "data.fold=0" in r.name)]
    (r,) = evaluate_primaries([s], lost)
    assert r.verdict == "equivalent" and (r.n_a, r.n_b) == (4, 4) and abs(r.test.effect) < 0.01
    assert "4 (seed, fold) run(s) whose fold the other arm lacks for that seed left out: a seed both arms have is " \
           "averaged over the folds both have" in r.notes
    extra = [FakeRun(f"g/block=deq,data.fold={f},seed=9", metrics={"val/acc": 0.7}) for f in range(4)]
    (more,) = evaluate_primaries([s], lost + extra)  # seed 9 in arm b only: kept to the pairing, which says so
    assert any(n.startswith("paired on the 4 seeds both arms have; 1 unpaired replicate(s) left out") for n in more.notes)
    one_sided = [r for r in lost if "block=deq" in r.name and "data.fold=0" in r.name]  # b: folds; a: none swept
    plain_a = [FakeRun(f"g/block=tied,seed={i}", metrics={"val/acc": 0.725}) for i in range(4)]
    (mixed,) = evaluate_primaries([s], plain_a + one_sided)
    assert (mixed.n_a, mixed.n_b) == (4, 4)  # each arm by its own seeds (before: no (seed, fold) key in common)
    no_seed = [FakeRun(f"g/block={b},data.fold={f}", metrics={"val/acc": 0.8 - 0.01 * f}) for b in ("tied", "deq")
               for f in range(5)]
    (one,) = evaluate_primaries([s], no_seed)
    assert one.verdict == "undetermined" and (one.n_a, one.n_b) == (1, 1)
    assert any("the runs sweep no seed, so all their folds are one replicate" in n for n in one.notes)


def test_each_comparison_says_every_config_key_its_arms_set_otherwise_and_how_they_match(tmp_path):
    """A label can claim more matching than was done (a DEQ arm with its recipe's norm, a half-width arm with half
    the heads): the report lists every key the arms' cell configs set otherwise, the sections only one arm has,
    and arm B's parameters and measured times over arm A's; a rebuild from summary.json keeps the config part."""
    runs = tmp_path / "runs"
    for seed in range(4):
        write_run(runs / "g", f"block=tied,seed={seed}", mode="tied", seed=seed, val=0.90 + 0.01 * seed, train_s=10.0,
                  params=1000)
        write_run(runs / "g", f"block=deq,seed={seed}", mode="deq", seed=seed, val=0.80 + 0.01 * seed,
                  train_s=30.0 + seed, params=1000, width=32, data={"noise": 0.1})
    (runs / "study.yaml").write_text(yaml.safe_dump({"name": "t", "grids": [{"name": "g"}],
                                                     "primary": {"comparisons": [spec()]}}))
    report = build_report([runs], tmp_path / "out", "t")
    (r,) = report.primaries
    assert r.differ == ["block.mode: tied vs deq", "only B: data.*, grad.*, solver.*"], r.differ
    # medians: stored 1000 both; train_s 10 vs 31.5; step_ms 10x; nfe 4 vs 20; nonzero equal (the fake's)
    assert r.matching == ("B/A: stored 1x, nonzero over layers 1x, forward cell calls 5x, step time 3.15x, "
                          "training time 3.15x"), r.matching
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "block.mode: tied vs deq; only B: data.*, grad.*, solver.*; B/A: stored 1x" in readme
    rebuilt = build_report([], tmp_path / "again", "t", from_summary=tmp_path / "out" / "summary.json")
    assert (rebuilt.primaries[0].differ, rebuilt.primaries[0].matching) == (r.differ, r.matching)
    # an arm whose runs disagree on a key shows its values; times are left out across seed-batch sizes
    keys_a = [{"model.width": 32, "block.mode": "tied"}, {"model.width": 64, "block.mode": "tied"}]
    assert primary.arm_differences(keys_a, [{"model.width": 32, "block.mode": "deq"}]) == [
        "block.mode: tied vs deq", "model.width: 32 / 64 vs 32"]
    assert primary.arm_differences(keys_a, []) == []
    # a key only some runs of an arm record (another code version) is compared over the runs that record it
    assert primary.arm_differences([{"model.heads": 4}, {}], [{"model.heads": 2}]) == ["model.heads: 4 vs 2"]
    assert primary.arm_differences([{"train.x": None}, {}], [{"train.x": None}]) == []
    # a rebuild testing other arms under the same id does not inherit the old arms' differences
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(yaml.safe_dump({"name": "t", "grids": [{"name": "g"}], "primary": {"comparisons": [
        spec(a={"grid": "g", "where": {"block": "deq"}}, b={"grid": "g", "where": {"block": "tied"}})]}}))
    other = build_report([], tmp_path / "other", "t", study=swapped, from_summary=tmp_path / "out" / "summary.json")
    assert other.primaries[0].differ == [] and other.primaries[0].matching.startswith("B/A: stored 1x")
    other = tmp_path / "batched"
    for seed in range(2):
        write_run(other / "g", f"block=tied,seed={seed}", mode="tied", seed=seed, seed_batch=1)
        write_run(other / "g", f"block=deq,seed={seed}", mode="deq", seed=seed, seed_batch=4)
    from tiedlab.reports.load import load_runs

    loaded = load_runs([other])
    a, b = ([x for x in loaded if f"block={m}" in x.name] for m in ("tied", "deq"))
    assert primary.arm_matching(a, b) == "B/A: stored 1x, nonzero over layers 1x, forward cell calls 5x"


def test_the_report_names_the_commit_of_the_code_that_built_it_wherever_it_ran(tmp_path, monkeypatch):
    """Built from a folder outside the checkout, the header said 'commit: unknown' (git ran in the current
    folder)."""
    from tiedlab.paradigms import provenance

    runs = tmp_path / "runs"
    tied_vs_deq(runs)
    monkeypatch.chdir(tmp_path)  # not a git checkout
    assert provenance.git_commit() == "unknown"
    report = build_report([runs], tmp_path / "out", "t")
    code = provenance.code_version()
    assert code["commit"] != "unknown" and report.commit == code["commit"] + ("+dirty" if code["dirty"] else "")


def test_a_report_written_into_a_clean_checkout_does_not_call_it_dirty(tmp_path, monkeypatch):
    """The plots went into the report folder before git status ran: a report built inside the tree (the default
    reports/studies/NAME) always said +dirty."""
    import subprocess

    from tiedlab.paradigms import provenance

    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["init", "-q"], ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty",
                                "-m", "x"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    monkeypatch.setattr(provenance, "CODE_DIR", repo)
    runs = tmp_path / "runs"
    tied_vs_deq(runs)
    report = build_report([runs], repo / "reports" / "t", "t")
    assert report.commit == provenance.git_commit(repo) and "+dirty" not in report.commit


def test_a_superioritys_equivalent_reading_says_the_claim_is_undecided_and_its_p():
    """An "equivalent" verdict of a superiority claim read "Holm undecided at alpha ...: CI within +-delta" beside
    the claim's p (0.63 in a user's report): the reason now says the claim is undecided and this is its secondary
    reading."""
    (s,) = load_primaries({"primary": {"comparisons": [spec(delta=0.05)]}})
    (r,) = evaluate_primaries([s], _runs([0.900, 0.902, 0.899, 0.901, 0.900, 0.901],
                                         [0.901, 0.900, 0.900, 0.899, 0.902, 0.900]))
    assert r.verdict == "equivalent", r.reason
    assert re.fullmatch(r"the superiority claim is undecided by Holm at alpha 0.05 \(1 comparisons; p=0\.\d+\); "
                        r"its secondary reading: 95% CI \[\S+, \S+\] within \+-0.05", r.reason), r.reason
