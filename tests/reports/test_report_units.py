"""The pieces: decision rule, labels, paradigm names, run-dir discovery, number formatting, CLI errors."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from tiedlab.reports.aggregate import Stat
from tiedlab.reports.cli import main
from tiedlab.reports.insights import contrast, decide, divergence
from tiedlab.reports.load import find_run_dirs, load_run, paradigm_name, to_float, variant_label
from tiedlab.reports.render import fmt, fmt_stat


def test_stat_uses_sample_std_and_skips_non_finite():
    s = Stat.of([0.89, 0.90, 0.91, math.nan, math.inf])
    assert s.n == 3 and s.mean == pytest.approx(0.90) and s.std == pytest.approx(0.01)
    assert Stat.of([0.5]).std is None and Stat.of([]).n == 0


@pytest.mark.parametrize("a,b,expected,reason", [
    ([0.89, 0.90, 0.91], [0.79, 0.80, 0.81], "holds", "d > 2 SE"),
    ([0.79, 0.80, 0.81], [0.89, 0.90, 0.91], "fails", "d < -2 SE"),
    ([0.80, 0.85, 0.90], [0.79, 0.80, 0.81], "inconclusive", "within 2 SE"),  # d=0.05, 2 SE=0.06
    ([0.90], [0.80, 0.81], "inconclusive", "n<2"),
    ([], [0.80, 0.81], "inconclusive", "no runs"),
])
def test_decision_rule(a, b, expected, reason):
    effect, se, n = contrast([(1.0, a), (-1.0, b)])
    assert decide(effect, se, n) == (expected, reason)


def test_contrast_standard_error():
    effect, se, n = contrast([(1.0, [1.0, 2.0, 3.0]), (-0.5, [0.0, 2.0])])
    assert effect == pytest.approx(2.0 - 0.5) and n == 2
    assert se == pytest.approx(math.sqrt(1.0 / 3 + 0.25 * 2.0 / 2))


def test_divergence_uses_the_two_proportion_standard_error():
    class R:
        def __init__(self, status: str, name: str):
            self.status, self.name = status, name

    tied = [R("completed", f"t{i}") for i in range(3)]
    comp = divergence("w", tied, [R("diverged", f"d{i}") for i in range(3)])
    assert comp.effect == 1.0 and comp.se == pytest.approx(math.sqrt(0.25 * 2 / 3)) and comp.verdict == "holds"
    comp = divergence("w", tied[:2], [R("diverged", "d0"), R("diverged", "d1")])
    assert comp.verdict == "inconclusive"  # 2 of 2 vs 0 of 2 is not enough


@pytest.mark.parametrize("config,label", [
    ({"block": {"mode": "explicit"}}, "explicit"),
    ({"block": {"mode": "tied"}, "mask": {"mode": "distinct", "kind": "unstructured", "sparsity": 0.5}},
     "tied+distinct/unstructured@0.5"),
    ({"block": {"mode": "tied"}, "mask": {"mode": "shared", "kind": "nm", "sparsity": 0.0, "n": 2, "m": 4}},
     "tied+shared/nm@0.5"),
    ({"block": {"mode": "tied"}, "mask": {"mode": "distinct", "kind": "unstructured", "sparsity": 0.0}}, "tied"),
    ({"block": {"mode": "deq"}, "solver": {"name": "broyden"}, "grad": {"mode": "phantom"}}, "deq broyden+phantom"),
    ({"block": {"mode": "deq"}, "solver": {"name": "fixed_point"}, "grad": {"mode": "onestep"},
      "train": {"jacobian_weight": 0.5}}, "deq fixed_point+onestep+jac"),
])
def test_variant_label(config, label):
    assert variant_label(config) == label


@pytest.mark.parametrize("raw,short", [("vision", "vision"), ("support.toy:ToyParadigm", "toy"),
                                       ("tiedlab.paradigms.ssl.adapter:SSLParadigm", "ssl")])
def test_paradigm_name(raw, short):
    assert paradigm_name(raw) == short


def test_a_run_is_named_by_its_adapters_name_where_metrics_json_records_it(tmp_path):
    """An out-of-tree adapter's class name need not be its name (``TabularRegressor``, name "tabreg"): the run is
    read by the name the engine records (``paradigm_name``), so that every section of a report says one name;
    a run from before it was recorded falls back on the class name."""
    from .conftest import write_run

    run = write_run(tmp_path, "r", paradigm="pkg.adapter:TabularRegressor")
    metrics = json.loads((run / "metrics.json").read_text())
    assert load_run(run).paradigm == "tabularregressor"
    (run / "metrics.json").write_text(json.dumps({**metrics, "paradigm_name": "tabreg"}))
    assert load_run(run).paradigm == "tabreg"


def test_to_float_reads_the_strings_run_dirs_use_for_non_finite():
    assert math.isnan(to_float("nan")) and to_float("inf") == math.inf and to_float(3) == 3.0
    assert math.isnan(to_float(None)) and math.isnan(to_float("x")) and math.isnan(to_float(True))


def test_find_run_dirs_skips_hidden_folders_and_does_not_descend(tmp_path):
    run = tmp_path / "multirun" / "toy" / "block=tied"
    (run / ".hydra").mkdir(parents=True)
    (run / "config.yaml").write_text("paradigm: vision\n")
    (run / ".hydra" / "config.yaml").write_text("paradigm: vision\n")
    (run / "nested").mkdir()
    (run / "nested" / "metrics.json").write_text("{}")
    other = tmp_path / "b"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"status": "failed", "reason": "RuntimeError at step 3: boom"}))
    found = find_run_dirs([tmp_path])
    assert [name for _, name in found] == ["b", "multirun/toy/block=tied"]
    assert find_run_dirs([run]) == [(run.resolve(), "block=tied")]  # a run dir given directly
    failed = load_run(other)
    assert failed.status == "failed" and failed.reason == "RuntimeError at step 3: boom" and failed.label == "?"


def test_find_run_dirs_follows_links_to_run_dirs_and_folders_once(tmp_path):
    """A seed linked in from elsewhere is found (it was skipped without a word, and an arm lost it), and a link to a
    folder above does not loop."""
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    for run in (runs / "g" / "seed=0", elsewhere / "seed=1", elsewhere / "sub" / "seed=2"):
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("paradigm: vision\n")
    (runs / "g" / "seed=1").symlink_to(elsewhere / "seed=1", target_is_directory=True)
    (runs / "g" / "sub").symlink_to(elsewhere / "sub", target_is_directory=True)
    (runs / "g" / "loop").symlink_to(runs, target_is_directory=True)
    assert [name for _, name in find_run_dirs([runs])] == ["g/seed=0", "g/seed=1", "g/sub/seed=2"]


def test_unreadable_metrics_is_a_status_not_a_crash(tmp_path):
    (tmp_path / "config.yaml").write_text("paradigm: vision\nblock: {mode: tied, depth: 2}\nmodel: {width: 8}\n")
    (tmp_path / "metrics.json").write_text('{"status": "compl')
    run = load_run(tmp_path)
    assert run.status == "unreadable" and "metrics.json unreadable" in run.reason
    assert (run.label, run.width, run.depth) == ("tied", 8, 2)


@pytest.mark.parametrize("config,metrics,history,found", [
    ("just a string\n", '{"status": "completed"}', "", "config.yaml holds a str, not a mapping"),
    ("paradigm: vision\n", "[1, 2]", "", "metrics.json holds a list, not an object"),
    ("paradigm: vision\n", b"\xff\xfe{", "", "metrics.json unreadable (UnicodeDecodeError"),
    (b"\xff\xfe: x", '{"status": "completed"}', "", "config.yaml unreadable (UnicodeDecodeError)"),
    ("paradigm: vision\n", '{"status": "completed"}', b"[1]\n\xff\n", None),
])
def test_a_broken_run_directory_is_a_status_never_a_crash(tmp_path, config, metrics, history, found):
    """load_run never raises: files that are not what the run contract says make the run unreadable, naming why
    (a history that cannot be read gives no history)."""
    for name, text in (("config.yaml", config), ("metrics.json", metrics), ("history.jsonl", history)):
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    run = load_run(tmp_path)
    if found is None:
        assert run.history == [] and run.status == "completed"
    else:
        assert run.status == "unreadable" and found in run.reason


def test_runs_trained_in_another_precision_form_a_cell_of_their_own(tmp_path):
    """train.device is not grouped, but with train.amp a CUDA run trains in bf16 autocast and a CPU run in fp32."""
    from .conftest import write_run
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.load import load_runs

    for seed, device in enumerate(("cpu", "cpu", "cuda:0", "cuda:0")):
        run = write_run(tmp_path, f"r{seed}", seed=seed)
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["provenance"] = [{"device": device}]
        (run / "metrics.json").write_text(json.dumps(metrics))
    cells = group_cells(load_runs([tmp_path]))
    assert len(cells) == 2 and sorted(len(c.completed) for c in cells) == [2, 2]
    assert {c.runs[0].key["train.precision"] for c in cells} == {"bf16 autocast", "fp32"}


def test_number_formatting():
    assert fmt(0.9) == "0.9" and fmt(123456.0) == "123,456" and fmt(math.nan) == "-" and fmt(None) == "-"
    assert fmt_stat(Stat(0.9, 0.01, 3), 3) == "0.900 ± 0.01" and fmt_stat(Stat(0.9, None, 1), 1) == "0.9"
    assert fmt_stat(Stat(0.9, 0.01, 2), 3) == "0.900 ± 0.01 (n=2)" and fmt_stat(Stat(math.nan, None, 0)) == "-"
    # digits follow the spread; constants say so instead of "± 0"
    assert fmt_stat(Stat(0.81234, 0.0123, 3)) == "0.812 ± 0.012"
    assert fmt_stat(Stat(1523.7, 41.2, 3)) == "1524 ± 41"
    assert fmt_stat(Stat(64.0, 0.0, 3)) == "64 (all equal)"


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 1
    assert "no run directories" in capsys.readouterr().err and not (tmp_path / "r").exists()
    # a report already in --out stays (a study whose runs all failed to start rewrote it as an empty one)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "README.md").write_text("the last report\n")
    (tmp_path / "r" / "plot.png").write_bytes(b"png")
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 1
    assert "nothing written to" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["README.md", "plot.png"]
    assert (tmp_path / "r" / "README.md").read_text() == "the last report\n"
    assert main(["--out", str(tmp_path / "r")]) == 2  # run folders or --from-summary are required
    assert "give run folders or --from-summary FILE" in capsys.readouterr().err
    assert main(["--from-summary", str(tmp_path / "nope.json"), "--out", str(tmp_path / "r")]) == 2
    assert "is not a tiedlab report's summary.json" in capsys.readouterr().err


def test_ctrl_c_while_building_is_one_line_and_a_caller_of_main_gets_the_interrupt(tmp_path, capsys, monkeypatch):
    """The command: one line, exit 130 (was a traceback). ``main`` called by another program (tiedlab-study builds
    its report in its own process) lets it through: the study's SIGTERM, raised as a KeyboardInterrupt, is its own
    stop (exit 143), not the report's."""
    from tiedlab.reports import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_report", interrupted)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr("sys.argv", ["tiedlab-report", str(tmp_path / "runs"), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as done:
        cli.run()
    assert done.value.code == 130
    assert capsys.readouterr().err == ("tiedlab-report: stopped by Ctrl-C: the report folder (--out) may be "
                                       "incomplete; rerun the command\n")
    with pytest.raises(KeyboardInterrupt):
        cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "r")])


def test_cross_validation_folds_are_replicates_of_one_cell(tmp_path):
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.load import load_runs

    from .conftest import write_run

    for fold, acc in enumerate([0.8, 0.9, 0.7]):
        write_run(tmp_path, f"f{fold}", paradigm="graph", dataset="MUTAG", val=acc, data={"fold": fold})
    write_run(tmp_path, "other", paradigm="graph", dataset="MUTAG", width=64, val=0.5)
    cells = group_cells(load_runs([tmp_path]))
    assert sorted(len(c.runs) for c in cells) == [1, 3]
    folds = next(c for c in cells if len(c.runs) == 3)
    stat = folds.stat("val/acc")
    assert stat.n == 3 and stat.mean == pytest.approx(0.8)


def test_duplicate_seeds_are_one_replicate_and_the_report_says_so(tmp_path):
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.build import build_report
    from tiedlab.reports.load import load_runs

    from .conftest import write_run

    write_run(tmp_path, "a", seed=0, val=0.90)
    write_run(tmp_path, "a-again", seed=0, val=0.80)  # the same config and seed run twice
    write_run(tmp_path, "b", seed=1, val=0.70)
    (cell,) = group_cells(load_runs([tmp_path]))
    assert cell.primary().n == 2 and cell.primary().mean == pytest.approx((0.85 + 0.70) / 2)
    assert cell.duplicates == ["seed 0: 2 run directories (merged)"]
    build_report([tmp_path], tmp_path / "out")
    assert "duplicates of one seed count once" in (tmp_path / "out" / "README.md").read_text()


def _rewrite(run, model: dict | None = None, **top):
    """Set keys of a written run's ``model`` (config.yaml, fingerprint refreshed) and top-level metrics.json fields."""
    import yaml

    from tiedlab.paradigms import rundir

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"].update(model or {})
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = json.loads((run / "metrics.json").read_text())
    result.update(top, fingerprint=rundir.fingerprint(config))
    (run / "metrics.json").write_text(json.dumps(result))
    return run


@pytest.mark.parametrize("declared, expected", [
    (None, ("model.width", 8)),  # a run dir from before metrics.json named its width: the guess
    ({"key": "model.hidden", "value": 96}, ("model.hidden", 96)),  # what metrics.json names wins over the guess
    ({"key": "model.hidden"}, ("model.hidden", 96)),  # a key alone: the value is the config's
    ({"key": None}, (None, None)),  # the model has no one width: no guess
])
def test_the_width_is_what_metrics_json_names_else_the_guess(tmp_path, declared, expected):
    from .conftest import write_run

    run = _rewrite(write_run(tmp_path, "r", width=8), model={"hidden": 96},
                   **({"width": declared} if declared is not None else {}))
    loaded = load_run(run)
    assert (loaded.width_key, loaded.width) == expected
    assert loaded.status == "completed"


def test_cells_name_every_varying_key_but_the_declared_width(tmp_path):
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.load import load_runs

    from .conftest import write_run

    # the width is model.hidden (declared); model.width varies too and is not the width, so the cells name it
    for i, (hidden, width) in enumerate([(96, 8), (96, 16), (128, 8)]):
        _rewrite(write_run(tmp_path, f"r{i}", width=width), model={"hidden": hidden},
                 width={"key": "model.hidden", "value": hidden})
    cells = group_cells(load_runs([tmp_path]))
    assert sorted((c.width, c.other) for c in cells) == [(96, ""), (96, "model.width=16"), (128, "")]


def test_replicate_and_bookkeeping_keys_have_one_list_each():
    from tiedlab.paradigms import rundir
    from tiedlab.reports import load, primary

    assert primary.REPLICATE_KEYS is load.REPLICATE_KEYS
    assert load.NOT_GROUPED == (*load.REPLICATE_KEYS, "mask.seed", *rundir.NOT_FINGERPRINTED)


def test_runs_from_before_an_option_existed_share_a_cell_with_runs_at_its_default_layout(tmp_path):
    """A study that spans the commit adding ``train.channels_last``: its earlier runs lack the key, its later ones
    have it at False; they are one cell (one line per depth in the mask pictures); runs that turned it on, and a
    setting that changes what is computed, still form cells of their own."""
    import yaml

    from .conftest import write_run
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.load import load_runs

    from tiedlab.paradigms import rundir

    def with_train(run, **train):
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["train"].update(train)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        result = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**result, "fingerprint": rundir.fingerprint(config)}))

    write_run(tmp_path, "before", seed=0)
    with_train(write_run(tmp_path, "after", seed=1), channels_last=False)
    with_train(write_run(tmp_path, "longer", seed=0), max_steps=800)
    with_train(write_run(tmp_path, "nhwc", seed=0), channels_last=True)
    cells = group_cells(load_runs([tmp_path]))
    assert sorted((len(c.runs), c.other) for c in cells) == [(1, "train.channels_last=True"),
                                                               (1, "train.max_steps=800"), (2, "")]


def test_spread_digits_interval_and_compact_values():
    from tiedlab.reports.render import fmt_interval, fmt_value

    assert fmt_stat(Stat(2531.2, 140.3, 2)) == "2530 ± 140"  # never "1.4e+02"
    # 95% t interval over the seeds, rounded to its half-width's second digit: 0.856 ± 12.71 * 0.0046 / sqrt(2)
    assert fmt_interval(Stat(0.8558, 0.0046, 2)) == "0.856 [0.814, 0.897]"
    assert fmt_interval(Stat(0.79, None, 1)) == "0.79 (n=1)" and fmt_interval(Stat(math.nan, None, 0)) == "-"
    assert fmt_interval(Stat(0.5, 0.0, 3)) == "0.5 (all equal)"
    assert fmt_value(Stat(60178.0, 0.0, 2), 2) == "60,178" and fmt_value(Stat(17.3, 1.2, 2), 2) == "17.3 ± 1.2"


def test_one_colour_per_variant_across_a_report():
    from tiedlab.reports.plots import variant, variant_colors

    class C:
        def __init__(self, label):
            self.label = label

    labels = ["explicit", "tied", "tied+distinct/unstructured@0.5", "tied+distinct/unstructured@0.75",
              "tied+shared/unstructured@0.5", "deq anderson+ift", "deq broyden+phantom", "deq anderson+ift+jac"]
    labels += [f"tied+other{i}/x@0.5" for i in range(20)]
    colors = variant_colors([C(x) for x in labels])
    assert variant("tied+distinct/unstructured@0.75") == "tied+distinct/unstructured" == variant(labels[2])
    assert len(colors) == len({variant(x) for x in labels}) == len(set(colors.values()))  # no colour repeats
    assert (colors["explicit"], colors["tied"], colors["deq anderson+ift"]) == ("#555555", "#1f77b4", "#d62728")


def test_mask_gap_is_distinct_minus_shared_per_density_and_depth_with_a_welch_interval(tmp_path):
    """The picture of the mask claim: distinct - shared at each density, one line per depth, 95% Welch intervals
    (checked against scipy's own), and the plot written as PNG and SVG."""
    from scipy import stats

    from .conftest import write_run
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.load import load_runs
    from tiedlab.reports.plots import mask_gaps, plot_mask_gap

    vals = {("distinct", 0.5, 4): [0.80, 0.82, 0.81], ("shared", 0.5, 4): [0.78, 0.77, 0.79],
            ("distinct", 0.75, 4): [0.76, 0.79, 0.77], ("shared", 0.75, 4): [0.70, 0.72, 0.69],
            ("distinct", 0.5, 8): [0.83, 0.84, 0.82], ("shared", 0.5, 8): [0.78, 0.80, 0.79],
            ("distinct", 0.75, 8): [0.80, 0.81, 0.79], ("shared", 0.75, 8): [0.70, 0.71, 0.73]}
    for (mode, sparsity, depth), scores in vals.items():
        for seed, v in enumerate(scores):
            write_run(tmp_path, f"{mode}-{sparsity}-{depth}-s{seed}", depth=depth, seed=seed, val=v,
                      mask={"mode": mode, "kind": "unstructured", "sparsity": sparsity})
    cells = group_cells(load_runs([tmp_path]))
    gaps = mask_gaps(cells)
    assert sorted(k[3] for k in gaps) == [4, 8]
    for (mode, kind, width, depth, other), points in gaps.items():
        assert [round(p[0], 6) for p in points] == [0.25, 0.5]  # densities, ascending
        for density, gap, lo, hi in points:
            a, b = vals[("distinct", 1 - density, depth)], vals[("shared", 1 - density, depth)]
            ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
            assert gap == pytest.approx(sum(a) / 3 - sum(b) / 3)
            assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert plot_mask_gap(cells, tmp_path / "gap.png", "vision: distinct - shared")
    assert (tmp_path / "gap.png").stat().st_size > 0 and (tmp_path / "gap.svg").exists()


def test_fit_gap_lines_of_one_depth_at_two_budgets_look_different():
    """A depth trained at two budgets (cells that differ in ``other``) is two lines of their own colour and marker;
    the distinct - shared and distinct - dense lines of one (depth, other) share theirs."""
    from tiedlab.reports.plots import depth_styler

    short, long = ("tied", "unstructured", 16, 8, ""), ("tied", "unstructured", 16, 8, "train.max_steps=6000")
    shallow = ("tied", "unstructured", 16, 4, "")
    styler = depth_styler([short, long, shallow])
    styles = {styler((k[3], k[4])) for k in (short, long, shallow)}
    assert len(styles) == 3 and len({s[0] for s in styles}) == 3 and len({s[2] for s in styles}) == 3
    assert styler((8, "")) == depth_styler([long, shallow, short])((8, ""))  # the keys' order does not matter


def test_fit_gaps_against_shared_masks_and_the_nonzero_matched_dense_width(tmp_path):
    """The capacity picture of the mask study, on the training-set loss (fit/loss, lower is better): distinct minus
    shared and distinct minus the dense tied width with the masked cell's nonzeros per layer (16 * sqrt(0.25) = 8;
    none ran for density 0.5 within 25%: no point), signed so that > 0 means distinct fits better, with Welch
    intervals; the capacity plot and the gap plot are written."""
    from scipy import stats

    from .conftest import write_run
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.load import load_runs
    from tiedlab.reports import plots as plot_module
    from tiedlab.reports.plots import (dense_gaps, mask_gaps, matched_dense, plot_capacity, plot_fit_gap,
                                       plot_mask_gap)

    fits = {("distinct", 0.75, 16): [0.30, 0.32, 0.31], ("shared", 0.75, 16): [0.40, 0.41, 0.43],
            ("distinct", 0.5, 16): [0.25, 0.26, 0.27], ("shared", 0.5, 16): [0.30, 0.29, 0.31],
            ("none", 0.0, 8): [0.35, 0.36, 0.33], ("none", 0.0, 16): [0.20, 0.21, 0.22],
            ("none", 0.0, 6): [0.50, 0.52, 0.49]}
    for (mode, sparsity, width), values in fits.items():
        for seed, v in enumerate(values):
            write_run(tmp_path, f"{mode}-{sparsity}-{width}-s{seed}", width=width, depth=8, seed=seed, val=0.8,
                      mask={"mode": mode, "kind": "unstructured", "sparsity": sparsity},
                      extra={"fit/loss": v, "params/nonzero": int(width * width * 8 * (1 - sparsity))})
    cells = group_cells(load_runs([tmp_path]))
    (distinct_25,) = [c for c in cells if c.mask_mode == "distinct" and c.sparsity == 0.75]
    (distinct_50,) = [c for c in cells if c.mask_mode == "distinct" and c.sparsity == 0.5]
    assert matched_dense(distinct_25, cells).width == 8 and matched_dense(distinct_50, cells) is None  # 128 nonzeros: 8^2=64, 16^2=256 (none)
    (shared_points,) = mask_gaps(cells, "fit/loss").values()
    (dense_points,) = dense_gaps(cells, "fit/loss").values()
    assert [p[0] for p in shared_points] == [0.25, 0.5] and [p[0] for p in dense_points] == [0.25]
    a, b = fits[("distinct", 0.75, 16)], fits[("none", 0.0, 8)]
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)  # loss: b - a > 0 when distinct fits better
    assert dense_points[0][1:] == (pytest.approx(sum(b) / 3 - sum(a) / 3), pytest.approx(ci.low), pytest.approx(ci.high))
    assert shared_points[0][1] == pytest.approx((0.40 + 0.41 + 0.43 - 0.30 - 0.32 - 0.31) / 3)
    assert plot_fit_gap(cells, tmp_path / "fitgap.png", "fit gap") and (tmp_path / "fitgap.svg").exists()
    # one density read (a follow-up study of one cell pair): a point with its interval, not left out
    one_density = [c for c in cells if c.sparsity == 0.75 or c.width == 8]
    assert plot_fit_gap(one_density, tmp_path / "fitgap1.png", "fit gap") and (tmp_path / "fitgap1.svg").exists()
    assert plot_mask_gap(one_density, tmp_path / "gap1.png", "gap")
    assert plot_capacity(cells, tmp_path / "capacity.png", "capacity") and (tmp_path / "capacity.svg").exists()
    # the capacity plot's lines: masked arms over density, dense over width, and a cell with another setting (a
    # longer run, say) is a line of its own, never joined to the others
    for seed, v in enumerate([0.10, 0.12]):
        write_run(tmp_path / "long", f"distinct-long-s{seed}", width=16, depth=8, seed=seed, val=0.8,
                  mask={"mode": "distinct", "kind": "unstructured", "sparsity": 0.75}, data={"limit_train": 500},
                  extra={"fit/loss": v, "params/nonzero": 512})
    with_long = group_cells(load_runs([tmp_path]))
    lines = {k: [(c.sparsity, c.width) for c in v] for k, v in plot_module.capacity_series(with_long).items()}
    assert lines == {(8, "tied dense", None, ""): [(0.0, 6), (0.0, 8), (0.0, 16)],
                     (8, "tied distinct", 16, ""): [(0.75, 16), (0.5, 16)],
                     (8, "tied distinct", 16, "data.limit_train=500"): [(0.75, 16)],
                     (8, "tied shared", 16, ""): [(0.75, 16), (0.5, 16)]}
    assert plot_capacity(with_long, tmp_path / "capacity2.png", "capacity")
    long_only = [c for c in with_long if c.other]  # a setting every plotted cell shares is not named
    assert list(plot_module.capacity_series(long_only)) == [(8, "tied distinct", 16, "")]
    plain = [c for c in cells if c.mask_mode == "none"]
    assert not plot_capacity(plain, tmp_path / "none.png", "no masks")  # nothing to compare: no figure


def test_disjoint_masks_are_their_own_cell_at_sparsity_one_minus_one_over_depth(tmp_path):
    """A disjoint-mask run (its config says sparsity 0: the layers partition W) is neither the dense tied cell nor
    a mask-free one: label, mode and sparsity 1 - 1/L, as core.MaskSpec.active has it."""
    from .conftest import write_run
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.load import load_runs

    for seed in (0, 1):
        write_run(tmp_path, f"dense-s{seed}", depth=4, seed=seed, val=0.8)
        write_run(tmp_path, f"disjoint-s{seed}", depth=4, seed=seed, val=0.7,
                  mask={"mode": "disjoint", "kind": "unstructured", "sparsity": 0.0})
    cells = {c.label: c for c in group_cells(load_runs([tmp_path]))}
    assert sorted(cells) == ["tied", "tied+disjoint/unstructured@0.75"]
    disjoint = cells["tied+disjoint/unstructured@0.75"]
    assert (disjoint.mask_mode, disjoint.sparsity, len(disjoint.completed)) == ("disjoint", 0.75, 2)
    assert len(cells["tied"].completed) == 2


def test_an_equivalent_reading_is_coloured_as_the_claim_holding_only_for_an_equivalence_claim():
    from tiedlab.reports.render import verdict_class

    assert verdict_class("equivalent", "equivalence") == "holds"
    assert verdict_class("equivalent", "superiority") == "equivalent"  # decided, but not the claim: blue, not green
    assert verdict_class("holds", "noninferiority") == "holds" and verdict_class("fails", "superiority") == "fails"
    assert verdict_class("undetermined", "superiority") == "inconclusive"


def test_guideline_budgets_are_cell_means_so_the_smallest_budget_picks_a_cell(tmp_path):
    """The training-time budget: seeds of a cell take different seconds; the smallest budget is the cheapest cell's
    mean (11 s), not its fastest run's 10 s, which no cell's mean is within."""
    from .conftest import write_run
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.guidelines import guidelines
    from tiedlab.reports.load import load_runs

    for depth, times, vals in ((4, (10.0, 12.0), (0.80, 0.82)), (8, (20.0, 22.0), (0.85, 0.87))):
        for seed, (t, v) in enumerate(zip(times, vals)):
            write_run(tmp_path, f"d{depth}-s{seed}", depth=depth, seed=seed, train_s=t, val=v)
    (group,) = guidelines(group_cells(load_runs([tmp_path])))
    picks = {p["which"]: p for p in group["picks"] if p["budget"] == "time/train_s"}
    assert sorted(picks) == ["largest", "median", "smallest"]
    assert (picks["smallest"]["limit"], picks["smallest"]["depth"]) == (pytest.approx(11.0), 4)
    assert (picks["median"]["limit"], picks["median"]["depth"]) == (pytest.approx(16.0), 4)
    assert (picks["largest"]["limit"], picks["largest"]["depth"]) == (pytest.approx(21.0), 8)



def test_seeds_to_decide_reads_as_an_estimate():
    from types import SimpleNamespace

    from tiedlab.reports.render import seeds_needed_text

    def result(verdict: str, needed: int | None, kind: str = "mean", low: float = -0.1) -> SimpleNamespace:
        return SimpleNamespace(verdict=verdict, seeds_needed=needed, spec=SimpleNamespace(kind=kind), ci_low=low)

    assert seeds_needed_text(result("undetermined", 7)) == "~7"
    assert seeds_needed_text(result("undetermined", None)) == "> 1000"  # none up to 1000 would decide it
    assert seeds_needed_text(result("holds", None)) == "-"
    assert seeds_needed_text(result("undetermined", 7, low=float("nan"))) == "-"  # no interval (n<2, zero spread)
    assert seeds_needed_text(result("undetermined", 7, kind="divergence")) == "-"


def _primary(insight: int, paradigm: str, verdict: str, **raw):
    from tiedlab.reports.primary import PrimaryResult, PrimarySpec

    spec = PrimarySpec.from_dict({"insight": insight, "paradigm": paradigm, "claim": "superiority", "delta": 0.1,
                                  "a": {"grid": "g", "where": {"block": "tied"}},
                                  "b": {"grid": "g", "where": {"block": "deq"}}, **raw}, {}, 0)
    return PrimaryResult(spec, [], [], None, verdict=verdict, effect=0.2, ci_low=0.1, ci_high=0.3, n_a=4, n_b=4)


def test_transfer_rows_name_comparisons_with_ids_where_an_insight_has_no_headline():
    """A cell shows its headline comparison, else the comparisons with ids and their verdicts (never "not
    pre-registered" beside a registered one), and a row's label is a headline comparison's claim."""
    from tiedlab.reports.insights import INSIGHTS
    from tiedlab.reports.render import transfer_rows

    primaries = [_primary(1, "vision", "holds", label="tied wins"),
                 _primary(4, "graph", "holds", id="graph-fold1", label="fold 1: distinct beats shared"),
                 _primary(4, "graph", "undetermined", id="flops/graph")]
    rows = transfer_rows(primaries, ["graph", "vision"])
    assert [row[0] for row in rows] == ["1. tied wins"] + [f"{n}. {INSIGHTS[n][0]}" for n in range(2, 7)]
    assert rows[0][1:] == ["not pre-registered", "holds: +0.2 [+0.1, +0.3], n=4/4"]
    assert rows[3][1:] == ["no headline comparison; graph-fold1 (holds), flops/graph (undetermined)",
                           "not pre-registered"]


@pytest.mark.parametrize("raw,formula", [
    ({"metric": "val/acc"}, "A - B"), ({"metric": "val/loss"}, "B - A"),
    ({"metric": "time/step_ms", "direction": "lower", "transform": "log"}, "log B - log A"),
    ({"metric": "val/acc", "transform": "log"}, "log A - log B"),
    ({"kind": "divergence"}, "rate B - rate A"), ({"kind": "spread"}, "var B / var A"),
])
def test_the_effects_formula_is_signed_so_that_positive_favours_a(raw, formula):
    from tiedlab.reports.render import effect_formula

    assert effect_formula(_primary(1, "vision", "holds", **raw).spec) == formula


def test_a_deq_cell_is_not_priced_by_its_nonzero_count(tmp_path):
    """A DEQ's params/nonzero counts one application of its map, not the ~20 its solve makes: it stays out of the
    nonzero budget (the FLOPs' proxy) but is priced by stored parameters and time like any cell."""
    from .conftest import write_run
    from tiedlab.reports.aggregate import group_cells
    from tiedlab.reports.guidelines import guidelines
    from tiedlab.reports.load import load_runs

    for seed in (0, 1):
        write_run(tmp_path, f"tied-s{seed}", depth=4, seed=seed, val=0.80, params=1000)
        write_run(tmp_path, f"deq-s{seed}", mode="deq", depth=1, seed=seed, val=0.85, params=1000)
    (group,) = guidelines(group_cells(load_runs([tmp_path])))
    nonzero = {p["mode"] for p in group["picks"] if p["budget"] == "params/nonzero"}
    unique = {p["mode"] for p in group["picks"] if p["budget"] == "params/unique"}
    assert nonzero == {"tied"} and unique == {"deq"}


def test_guidelines_prefer_a_cell_none_of_whose_runs_diverged_and_show_divergence(tmp_path):
    """A mean over the runs that survived says nothing of those that did not: 2 of 8 seeds completing at 0.90 is
    not recommended over 8 of 8 at 0.85 within the same budget, and where it is the only cell its row says so."""
    from tiedlab.reports.build import build_report

    from .conftest import write_run

    for s in range(8):
        write_run(tmp_path, f"w8-s{s}", width=8, seed=s, val=0.90 + 0.001 * s,
                  status="completed" if s < 2 else "diverged")
        write_run(tmp_path, f"w16-s{s}", width=16, seed=s, val=0.85 + 0.001 * s)
    report = build_report([tmp_path], tmp_path / "out")
    picks = {(p["budget"], p["which"]): p for g in report.guidelines for p in g["picks"]}
    assert picks[("params/unique", "largest")]["width"] == 16 and picks[("params/unique", "largest")]["diverged"] == 0
    smallest = picks[("params/unique", "smallest")]  # only the width-8 cell is within it
    assert (smallest["width"], smallest["diverged"], smallest["runs"]) == (8, 6, 8)
    assert "(n=2; 6 of 8 runs diverged)" in (tmp_path / "out" / "README.md").read_text()


def test_time_to_target_does_not_call_a_side_ahead_on_runs_that_never_reached_it(tmp_path):
    """A run that never reaches the target counts its whole training time, a lower bound: the tied side's runs
    stop early below the target, so their short times cannot make tied 'ahead'; a rebuild (no curves) reads none."""
    from tiedlab.reports.build import build_report

    from .conftest import write_run

    for s in range(3):
        write_run(tmp_path, f"tied-s{s}", seed=s, val=0.90, train_s=2.0 + 0.1 * s,
                  history=[(1.0, 0.10), (2.0 + 0.1 * s, 0.20)])  # its curve never reaches the target (0.76)
        write_run(tmp_path, f"deq-s{s}", mode="deq", seed=s, val=0.80, train_s=60.0 + s,
                  history=[(20.0, 0.5), (40.0 + s, 0.78), (60.0 + s, 0.80)])
    build_report([tmp_path], tmp_path / "out")

    def insight2(path):
        data = json.loads(path.read_text())
        return next(i for i in data["insights"] if i["insight"] == 2)["comparisons"]

    seconds, steps = insight2(tmp_path / "out" / "summary.json")
    assert seconds["extra"]["tied_not_reached"] == 3 and seconds["effect"] > 2 * seconds["se"]  # 'ahead' before
    assert seconds["verdict"] == "inconclusive" and "3 run(s) of the side ahead never reached" in seconds["reason"]
    build_report([], tmp_path / "again", from_summary=tmp_path / "out" / "summary.json")
    assert {c["reason"] for c in insight2(tmp_path / "again" / "summary.json")} == {
        "no time curves (the runs' histories hold none, as in a rebuild from summary.json)"}


def test_time_to_target_is_not_read_when_validation_starts_late(tmp_path):
    """With train.validate_from the first validation comes after evaluations without one: a run that meets the
    target there met it at or before that step, so neither side is called ahead on it (quick's rows were)."""
    from tiedlab.reports.build import build_report

    from .conftest import write_run

    for s in range(3):
        for name, mode, first in (("tied", "tied", 80), ("deq", "deq", 32)):  # validation from 80% of the steps
            run = write_run(tmp_path, f"{name}-s{s}", mode=mode, seed=s, val=0.9 - 0.01 * s, train_s=float(first))
            lines = [{"step": step, "epoch": 0, "time/train_s": step / 10, "train/loss": 1.0} for step in (10, 20)]
            lines += [{"step": step, "epoch": 0, "time/train_s": step / 10, "train/loss": 1.0,
                       "val/acc": 0.9 - 0.01 * s} for step in (first, first + 10)]
            (run / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    build_report([tmp_path], tmp_path / "out")
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    for comparison in next(i for i in data["insights"] if i["insight"] == 2)["comparisons"]:
        assert comparison["verdict"] == "inconclusive", comparison
        assert comparison["reason"].startswith("6 run(s) reached the target at their first validation"), comparison


def test_seconds_from_seed_batches_of_different_sizes_are_not_compared_outside_the_primaries(tmp_path):
    """A run trained in a seed batch of K records its batch's seconds / K: time to target (insight 2), insight 6's
    ms/step and the training-seconds guideline budget do not set such runs beside runs of another K; with one K on
    every run they read as before, and a rebuild from summary.json keeps the sizes."""
    from tiedlab.reports.build import build_report

    from .conftest import write_run

    def study(root, k_deq):
        for s in range(3):
            write_run(root, f"tied-s{s}", seed=s, val=0.90, train_s=10.0 + s, seed_batch=3,
                      history=[(5.0, 0.5), (10.0 + s, 0.90)])
            write_run(root, f"deq-s{s}", mode="deq", seed=s, val=0.80, train_s=60.0 + s, seed_batch=k_deq,
                      history=[(30.0, 0.5), (60.0 + s, 0.80)])
            for width, depth in ((16, 2), (32, 2), (16, 4)):  # insight 6: wider (32, 2) vs deeper (16, 4)
                write_run(root, f"w{width}d{depth}-s{s}", width=width, depth=depth, seed=s, val=0.5 + width / 100,
                          train_s=float(width * depth), seed_batch=k_deq if depth == 4 else 3)
        return build_report([root], root / "out")

    def read(report):
        by = {i.insight: i.comparisons for i in report.insights}
        seconds = next(c for c in by[2] if "in steps" not in c.setting)
        wider = next(c for c in by[6] if "from w=16, d=2" in c.setting)
        budgets = {p["budget"] for g in report.guidelines for p in g["picks"]}
        notes = [n for g in report.guidelines for n in g.get("notes", [])]
        return seconds, wider, budgets, notes

    seconds, wider, budgets, notes = read(study(tmp_path / "mixed", k_deq=1))
    assert seconds.verdict == "inconclusive" and "did not train alike (K = 1 vs 3)" in seconds.reason
    assert "ms/step not compared: K = 1 vs 3" in wider.b and math.isnan(wider.extra["deeper_step_ms"])
    assert "time/train_s" not in budgets and "params/unique" in budgets
    assert notes == ["no training s budget: the cells' runs did not train alike (K = 1 vs 3)"]
    assert "peak" not in seconds.a and math.isnan(seconds.extra["deq_peak_mb"]["mean"])  # a batch's memory
    rebuilt = build_report([], tmp_path / "again", from_summary=tmp_path / "mixed" / "out" / "summary.json")
    assert [n for g in rebuilt.guidelines for n in g.get("notes", [])] == notes

    seconds, wider, budgets, notes = read(study(tmp_path / "alike", k_deq=3))
    assert seconds.verdict == "holds" and "ms/step not compared" not in wider.b and "peak" in seconds.a
    assert "time/train_s" in budgets and notes == []
    # a provenance that does not say: K = 1 for a session from before seed batches existed (the fixture's, 2026-01),
    # unknown after
    seconds, *_ = read(study(tmp_path / "silent", k_deq=None))
    assert seconds.verdict == "inconclusive" and "(K = 1 vs 3)" in seconds.reason
    from tiedlab.reports.load import mixed_layouts, seed_batch_sizes

    later = SimpleNamespace(provenance=[{"started": "2026-12-04T10:00:00+00:00"}])
    assert seed_batch_sizes(later) == () and seed_batch_sizes(SimpleNamespace(provenance=[])) == ()
    assert mixed_layouts([later, SimpleNamespace(provenance=[{"seed_batch": 3}])]) == "K = unknown vs 3"
    resumed = SimpleNamespace(provenance=[{"seed_batch": 1, "world_size": 2}, {"seed_batch": 1, "world_size": 1}])
    assert mixed_layouts([resumed, SimpleNamespace(provenance=[{"seed_batch": 1}])]) == \
        "K = 1 vs 1 over 1/2 processes"
    # threads and the runs sharing the device (recorded when a study launched the run) are part of how a run trained
    alone, shared = ({"seed_batch": 1, "threads": 2, "processes_per_device": 1},
                     {"seed_batch": 1, "threads": 1, "processes_per_device": 2})
    assert mixed_layouts([SimpleNamespace(provenance=[alone]), SimpleNamespace(provenance=[shared])]) == \
        "threads 1 vs 2; processes per device 1 vs 2"
    assert mixed_layouts([SimpleNamespace(provenance=[alone]), SimpleNamespace(provenance=[dict(alone)])]) == ""
    by_hand = {"seed_batch": 3, "threads": 2, "processes_per_device": None}  # started by hand: the sharing is unknown
    assert mixed_layouts([SimpleNamespace(provenance=[alone]), SimpleNamespace(provenance=[by_hand])]) == \
        "K = 1 vs 3; processes per device unrecorded vs 1"
    # memory moves with neither the threads nor the processes sharing a device
    assert mixed_layouts([SimpleNamespace(provenance=[alone]), SimpleNamespace(provenance=[shared])],
                         timing=False) == ""


def test_the_cell_table_counts_seeds_where_run_directories_repeat_one(tmp_path):
    from tiedlab.reports.build import build_report

    from .conftest import write_run

    write_run(tmp_path, "a", seed=0, val=0.90)
    write_run(tmp_path, "a-again", seed=0, val=0.80)
    write_run(tmp_path, "b", seed=1, val=0.70)
    build_report([tmp_path], tmp_path / "out")
    assert "| 3 runs, 2 seeds |" in (tmp_path / "out" / "README.md").read_text()
    (cell,) = json.loads((tmp_path / "out" / "summary.json").read_text())["cells"]
    assert (cell["n"], cell["replicates"], cell["stats"]["val/acc"]["n"]) == (3, 2, 2)
