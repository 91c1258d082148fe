"""The report over hand-written run directories (conftest.build_synthetic): numbers, verdicts, files."""

from __future__ import annotations

import json
import math

import pytest

from tiedlab.reports.build import analyse


def cell_of(summary: dict, paradigm: str, label: str, width: int, depth: int) -> dict:
    (found,) = [c for c in summary["cells"] if (c["paradigm"], c["label"], c["width"], c["depth"]) ==
                (paradigm, label, width, depth)]
    return found


def verdict(summary: dict, paradigm: str, insight: int) -> dict:
    (found,) = [r for r in summary["insights"] if (r["paradigm"], r["insight"]) == (paradigm, insight)]
    return found


def test_exit_code_and_files(synthetic_report):
    out, summary, code = synthetic_report
    assert code == 0
    for name in ("README.md", "index.html", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    kinds = {(p["paradigm"], p["kind"]) for p in summary["plots"]}
    # Vision has several depths, widths and mask sparsities; graph has one of each: no such plots there.
    assert {("vision", k) for k in ("depth", "width", "sparsity", "time", "memory")} <= kinds
    assert ("graph", "time") in kinds and ("graph", "memory") in kinds
    assert not {("graph", "depth"), ("graph", "width"), ("graph", "sparsity")} & kinds
    for plot in summary["plots"]:
        data = (out / plot["file"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, plot["file"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p["file"] for p in summary["plots"])
    # vector output beside every PNG, listed in summary.json's files
    assert sorted(p.name for p in out.glob("*.svg")) == sorted(p["svg"] for p in summary["plots"])
    assert all(b"<svg" in (out / p["svg"]).read_bytes()[:500] for p in summary["plots"])
    assert {p["svg"] for p in summary["plots"]} <= set(summary["files"])


def test_header_names_commit_commands_seeds_machine(synthetic_report):
    out, summary, _ = synthetic_report
    readme = (out / "README.md").read_text()
    assert readme.startswith("# synthetic\n")
    assert summary["commands"] == ["make runs", "tiedlab-study demo"]
    assert "command: `make runs`" in readme and "command: `tiedlab-study demo`" in readme
    assert "report command: `tiedlab-report " in readme
    assert summary["commit"] != "" and f"report built at commit: {summary['commit']}" in readme
    # the runs' own commits (from their metrics.json), not the checkout's; runs without metrics count as unknown
    assert summary["run_commits"]["abc1234"] >= 40 and "code of the runs: abc1234 (" in readme
    assert summary["seeds"] == [0, 1, 2, 3] and "seeds: 0, 1, 2, 3" in readme
    assert summary["machine"]["cpus"] >= 1 and "CUDA device:" in readme and "torch" in summary["machine"]
    # 12 tied@32 + 9 masked + 3 w64 at 10 s; DEQ 3 x 40 + 12 (diverged) + 3 x 40 + 40; graph/ssl/language 14 x 10.
    expected = 24 * 10 + 3 * 40 + 12 + 3 * 40 + 40 + 14 * 10
    assert summary["total_train_s"] == pytest.approx(expected)
    assert "11.2 min" in readme


def test_every_run_is_listed_with_its_status(synthetic_report):
    out, summary, _ = synthetic_report
    runs = {r["name"]: r for r in summary["runs"]}
    assert len(runs) == 48
    assert runs["vision/deq-s3"]["status"] == "diverged"
    assert runs["vision/deq-s3"]["reason"] == "non-finite loss (nan) at step 41"
    assert runs["vision/tied-d8-s3"]["status"] == "running"
    assert runs["vision/tied-w128-d4-s0"]["status"] == "missing"
    assert "no metrics.json" in runs["vision/tied-w128-d4-s0"]["reason"]
    assert runs["vision/tied-w128-d4-s0"]["dataset"] == "cifar10"
    readme = (out / "README.md").read_text()
    for name, status in (("vision/deq-s3", "diverged"), ("vision/tied-d8-s3", "running"),
                         ("vision/tied-w128-d4-s0", "missing")):
        (row,) = [line for line in readme.splitlines() if line.startswith(f"| {name} |")]
        assert f"| {status} |" in row, row
    assert "non-finite loss (nan) at step 41" in readme
    html = (out / "index.html").read_text()
    assert '<tr class="diverged"><td>vision/deq-s3</td>' in html


def test_labels_and_primary_metrics(synthetic_report):
    _, summary, _ = synthetic_report
    labels = {r["label"] for r in summary["runs"]}
    assert {"tied", "tied+distinct/unstructured@0.5", "tied+shared/unstructured@0.5", "tied+shared/nm@0.5",
            "deq anderson+ift", "deq broyden+phantom", "deq anderson+ift+jac"} <= labels
    metrics = {(r["paradigm"], r["metric"], r["higher_is_better"]) for r in summary["runs"]}
    assert metrics == {("vision", "acc", True), ("graph", "acc", True), ("ssl", "knn_acc", True),
                       ("language", "loss", False)}


def test_cells_mean_std_n(synthetic_report):
    out, summary, _ = synthetic_report
    tied = cell_of(summary, "vision", "tied", 32, 4)
    assert tied["n"] == 3 and tied["runs"] == 3 and tied["seeds"] == [0, 1, 2]
    assert tied["stats"]["val/acc"]["mean"] == pytest.approx(0.90)
    assert tied["stats"]["val/acc"]["std"] == pytest.approx(0.01)  # sample std, ddof=1
    assert tied["stats"]["test/acc"]["mean"] == pytest.approx(0.89)
    assert tied["stats"]["params/unique"]["mean"] == 1024 and tied["stats"]["params/dense"]["mean"] == 4096
    deq = cell_of(summary, "vision", "deq anderson+ift", 32, 4)
    assert (deq["n"], deq["runs"], deq["diverged"], deq["seeds"]) == (3, 4, 1, [0, 1, 2, 3])
    assert deq["stats"]["val/acc"]["mean"] == pytest.approx(0.80)
    assert deq["stats"]["time/train_s"]["mean"] == pytest.approx(40.0)  # completed runs only
    running = cell_of(summary, "vision", "tied", 32, 8)
    assert (running["n"], running["runs"], running["unfinished"]) == (3, 4, 1)
    single = cell_of(summary, "vision", "deq anderson+ift+jac", 32, 4)
    assert single["n"] == 1 and single["stats"]["val/acc"]["std"] is None
    assert cell_of(summary, "vision", "tied", 128, 4)["n"] == 0
    lang = cell_of(summary, "language", "tied", 64, 4)
    assert lang["stats"]["val/loss"]["mean"] == pytest.approx(1.50)
    readme = (out / "README.md").read_text()
    # the compact table: the val metric with its 95% t interval (0.80 ± 4.30 * 0.01 / sqrt(3)), the diverged run
    # counted, one value for parameters every seed shares; then the full table behind a disclosure
    compact, full = [line for line in readme.splitlines() if line.startswith("| deq anderson+ift | 4 | 32 |")]
    assert "| 3 (1 diverged) | 0.800 [0.775, 0.825] | 1024 |" in compact
    assert "| 3 | 0.800 ± 0.01 | 0.790 ± 0.01 |" in full and "| 1 / 4 |" in full
    assert readme.index(compact) < readme.index("<details><summary>Full table: ", readme.index(compact)) \
        < readme.index(full)
    compact, full = [line for line in readme.splitlines() if line.startswith("| deq anderson+ift+jac | 4 | 32 |")]
    assert "| 1 | 0.79 (n=1) |" in compact and "| 0.79 |" in full


@pytest.mark.parametrize("paradigm,insight,expected,reason", [
    ("vision", 1, "holds", None),
    ("graph", 1, "fails", None),
    ("ssl", 1, "inconclusive", "n<2"),
    ("language", 1, "holds", None),  # loss: lower is better, the sign is flipped
    ("vision", 2, "holds", None),
    ("language", 2, "holds", None),
    ("vision", 3, "inconclusive", "within 2 SE"),
    ("graph", 3, "holds", None),
    ("vision", 4, "holds", None),
    ("graph", 4, "inconclusive", "no runs"),
    ("vision", 5, "holds", None),
    ("graph", 5, "inconclusive", "no runs"),
    ("vision", 6, "holds", None),
    ("language", 6, "inconclusive", "no runs"),
])
def test_verdicts(synthetic_report, paradigm, insight, expected, reason):
    _, summary, _ = synthetic_report
    result = verdict(summary, paradigm, insight)
    assert result["verdict"] == expected, result
    if reason:
        assert result["reason"] == reason, result


def test_effect_sizes_and_runs_behind_them(synthetic_report):
    _, summary, _ = synthetic_report
    v1 = verdict(summary, "vision", 1)
    # Best tied at width 32 is depth 16 (0.945, 3 seeds); best DEQ with >= 2 seeds is anderson (0.80).
    (comp,) = v1["comparisons"]
    assert comp["effect"] == pytest.approx(0.145) and comp["se"] == pytest.approx(math.sqrt(2 * 0.01 ** 2 / 3))
    assert sorted(comp["a_runs"]) == ["vision/tied-d16-s0", "vision/tied-d16-s1", "vision/tied-d16-s2"]
    assert sorted(comp["b_runs"]) == ["vision/deq-s0", "vision/deq-s1", "vision/deq-s2"]
    assert (v1["n_a"], v1["n_b"]) == (3, 3) and v1["text"] == "holds (+0.145 acc, n=3 vs 3)"
    assert verdict(summary, "graph", 1)["effect"] == pytest.approx(-0.15)
    assert verdict(summary, "language", 1)["effect"] == pytest.approx(0.30)
    # Insight 2: target 0.95 * 0.80; tied crosses it at 5 s, DEQ at 40 s; memory shown beside it. In steps
    # (learning speed without step time): tied at its 2nd evaluation (step 20), DEQ at its 3rd (step 30).
    comp, steps = verdict(summary, "vision", 2)["comparisons"]
    assert steps["unit"] == "steps" and steps["setting"].endswith(", in steps")
    assert steps["extra"]["tied_s"]["mean"] == 20.0 and steps["extra"]["deq_s"]["mean"] == 30.0
    assert steps["effect"] == pytest.approx(10.0)
    assert comp["extra"]["target"] == pytest.approx(0.76)
    assert comp["extra"]["tied_s"]["mean"] == pytest.approx(5.0) and comp["extra"]["deq_s"]["mean"] == 40.0
    assert comp["extra"]["deq_peak_mb"]["mean"] == 60.0 and comp["effect"] == pytest.approx(35.0)
    # Insight 3: the diverged DEQ seed is counted (1 of 8 DEQ runs at width 32; the running tied run is not).
    div = next(c for c in verdict(summary, "vision", 3)["comparisons"] if c["setting"].endswith("divergence"))
    assert (div["extra"]["deq_diverged"], div["extra"]["deq_runs"]) == (1, 8)
    assert (div["extra"]["tied_diverged"], div["extra"]["tied_runs"]) == (0, 12)
    assert div["effect"] == pytest.approx(0.125) and div["verdict"] == "inconclusive"
    assert "vision/deq-s3" in div["b_runs"]
    spread = next(c for c in verdict(summary, "graph", 3)["comparisons"] if "spread" in c["setting"])
    assert spread["effect"] == pytest.approx(math.log(25)) and spread["se"] == pytest.approx(math.sqrt(2))
    # Insight 4: distinct vs shared (same kind and sparsity) and vs no mask, at width 32 depth 4.
    comps = {c["setting"]: c for c in verdict(summary, "vision", 4)["comparisons"]}
    assert comps["width=32, depth=4: vs shared unstructured@0.5"]["effect"] == pytest.approx(0.08)
    assert comps["width=32, depth=4: vs no mask"]["effect"] == pytest.approx(0.03)
    # Insight 5: 0.25 * (0.90 - 0.80) - (0.945 - 0.94) = 0.02.
    (comp,) = verdict(summary, "vision", 5)["comparisons"]
    assert comp["effect"] == pytest.approx(0.02) and comp["extra"]["depths"] == [2, 4, 8, 16]
    # Insight 6: width 64 depth 4 (0.97) vs width 32 depth 8 (0.94).
    (comp,) = verdict(summary, "vision", 6)["comparisons"]
    assert comp["effect"] == pytest.approx(0.03)
    assert comp["extra"]["wider_params"] == 4096 and comp["extra"]["deeper_params"] == 1024


def test_insight_table_in_readme(synthetic_report):
    out, _, _ = synthetic_report
    readme = (out / "README.md").read_text()
    assert "| insight | graph / cora | language / tinyshakespeare | ssl / cifar10 | vision / cifar10 |" in readme
    (row,) = [line for line in readme.splitlines() if line.startswith("| 1. tied >= DEQ accuracy |")]
    # a description, not a verdict: the 2 SE screen's words claim nothing
    assert row.split(" | ")[1:] == ["B ahead (-0.15 acc, n=3 vs 3)", "A ahead (+0.3 loss, n=3 vs 3)",
                                    "not separated (n<2)", "A ahead (+0.145 acc, n=3 vs 3) |"]
    assert "## Secondary comparisons (descriptive)" in readme and "Not verdicts." in readme and "d > 2 SE" in readme
    # runs without a study file: no primary verdicts, and the report says why
    assert "come from no study file with pre-registered primary comparisons" in readme


def test_guidelines(synthetic_report):
    out, summary, _ = synthetic_report
    (vision,) = [g for g in summary["guidelines"] if g["paradigm"] == "vision"]
    picks = {(p["budget"], p["which"]): p for p in vision["picks"]}
    small = picks[("params/unique", "smallest")]
    assert (small["limit"], small["label"], small["depth"], small["width"]) == (1024, "tied", 16, 32)
    assert small["mean"] == pytest.approx(0.945) and small["n"] == 3
    large = picks[("params/unique", "largest")]
    assert (large["limit"], large["depth"], large["width"], large["sparsity"]) == (4096, 4, 64, 0.0)
    assert ("params/unique", "median") not in picks  # the median equals the smallest budget: not repeated
    assert picks[("time/train_s", "largest")]["limit"] == 40
    (lang,) = [g for g in summary["guidelines"] if g["paradigm"] == "language"]
    assert lang["picks"][0]["label"] == "tied" and lang["picks"][0]["mean"] == pytest.approx(1.5)  # lower loss
    assert "| unique params <= 1024 (smallest) | tied d=16 w=32 | 16 | 32 |" in (out / "README.md").read_text()


def test_html_parses_and_images_exist(synthetic_report, check_html):
    out, summary, _ = synthetic_report
    parser = check_html(out)
    assert sorted(parser.images) == sorted(p["file"] for p in summary["plots"])
    assert parser.counts["table"] >= 8 and parser.counts["td"] > 500
    html = (out / "index.html").read_text()
    assert "<style>" in html and "http://" not in html and "https://" not in html
    # sortable tables, a table of contents that links every section
    assert parser.counts["table"] == html.count('<table class="sortable">') and "<script>" in html
    assert '<nav id="toc"' in html and '<a href="#primary-comparisons-pre-registered">' in html
    assert '<a href="#vision-cifar10">vision / cifar10</a>' in html


def test_summary_is_strict_json(synthetic_report):
    out, _, _ = synthetic_report
    text = (out / "summary.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_analyse_without_writing(synthetic_runs):
    report = analyse([synthetic_runs / "graph"])
    assert len(report.runs) == 6 and len(report.cells) == 2 and report.plots == []
    assert {r.verdict for r in report.insights if r.insight == 1} == {"fails"}
