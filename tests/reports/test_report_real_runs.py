"""The report end to end over real tiny runs of the test-only toy paradigm (engine.train, ~0.1-3 s each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiedlab.reports.cli import main


@pytest.fixture(scope="module")
def real_report(toy_runs, tmp_path_factory) -> tuple[Path, dict, int]:
    out = tmp_path_factory.mktemp("real_report") / "toy"
    code = main([str(toy_runs), "--out", str(out), "--title", "toy end to end", "--command", "pytest tests/reports"])
    return out, json.loads((out / "summary.json").read_text()), code


def test_real_runs_build_a_report(real_report, check_html):
    out, summary, code = real_report
    assert code == 0
    assert len(summary["runs"]) == 6 and {r["status"] for r in summary["runs"]} == {"completed"}
    assert {(r["paradigm"], r["dataset"], r["metric"]) for r in summary["runs"]} == {
        ("toy", "scikit-learn digits", "acc")}
    cells = {c["label"]: c for c in summary["cells"]}
    assert set(cells) == {"explicit", "tied", "deq anderson+ift"}
    for cell in cells.values():
        assert cell["n"] == 2 and cell["seeds"] == [0, 1] and cell["other"] == ""
        vals = [r["val"] for r in summary["runs"] if r["label"] == cell["label"]]
        assert cell["stats"]["val/acc"]["mean"] == pytest.approx(sum(vals) / 2)
        assert 0.0 < cell["stats"]["val/acc"]["mean"] <= 1.0
    assert cells["tied"]["stats"]["params/unique"]["mean"] < cells["explicit"]["stats"]["params/unique"]["mean"]
    assert cells["deq anderson+ift"]["stats"]["core/nfe_forward"]["mean"] > 3  # the solver iterates
    # Tied and DEQ share a width: insights 1-3 have a comparison with 2 seeds a side; 4-6 have no runs.
    for result in summary["insights"]:
        if result["insight"] <= 3:
            assert result["comparisons"] and result["n_a"] == 2 and result["n_b"] == 2, result
            assert result["verdict"] in ("holds", "fails", "inconclusive")
        else:
            assert result["text"] == "inconclusive (no runs)"
    kinds = {p["kind"] for p in summary["plots"]}
    assert kinds == {"time", "memory"}  # one depth, one width, no masks
    assert summary["total_train_s"] > 0 and summary["guidelines"][0]["picks"]
    check_html(out)
    readme = (out / "README.md").read_text()
    assert "## toy / scikit-learn digits" in readme and "`pytest tests/reports`" in readme


def test_rebuilding_removes_stale_plots(real_report):
    out, summary, _ = real_report
    stale, keep = out / "toy-old-depth.png", out / "notes.png"
    stale.write_bytes(b"a plot an earlier build listed")
    keep.write_bytes(b"not the report's")
    (out / "summary.json").write_text(json.dumps({**summary, "files": [*summary["files"], stale.name]}))
    one_run = Path(summary["runs"][0]["dir"])
    assert main([str(one_run), "--out", str(out)]) == 0
    rebuilt = json.loads((out / "summary.json").read_text())
    assert len(rebuilt["runs"]) == 1 and not stale.exists() and keep.exists()
    assert sorted(p.name for p in out.glob("*.png") if p != keep) == sorted(p["file"] for p in rebuilt["plots"])
