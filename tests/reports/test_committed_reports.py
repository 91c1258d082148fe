"""The committed reports and the README say only what their verdicts decided: each committed report's primary
verdicts are rebuilt from its own summary.json under the current rule and must match what it and the README
state."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path

import pytest

from tiedlab.reports.build import analyse
from tiedlab.reports.load import runs_from_summary
from tiedlab.reports.render import transfer_rows

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = {name: ROOT / "reports" / "studies" / name for name in ("quick", "demo", "masks", "masks_head",
                                                                              "masks_language", "masks_graph",
                                                                              "masks_ssl", "masks_density",
                                                                              "masks_graph_density",
                                                                              "masks_language_density",
                                                                              "masks_capacity",
                                                                              "masks_ssl_density",
                                                                              "paper_graph_cpu", "quick_ssl",
                                                                              "masks_ssl_rerun",
                                                                              "masks_ssl_density_rerun",
                                                                              "masks_ssl_grids_rerun",
                                                                              "masks_head_ssl_rerun")}
STUDY_OF = {"paper_graph_cpu": "paper", "quick_ssl": "quick", "masks_ssl_rerun": "masks_ssl",
            "masks_ssl_density_rerun": "masks_ssl_density",
            "masks_ssl_grids_rerun": "masks", "masks_head_ssl_rerun": "masks_head"}  # a committed report named apart from its study file (some of its grids)
PARADIGM_COLUMNS = ("vision", "graph", "language", "ssl")  # the README answer table's column order


# The Insight transfer paragraph of reports built before the table named the comparisons with ids: such a report's
# cell for an insight and paradigm without a headline comparison reads "not pre-registered" (reports/README.md).
LEGACY_TRANSFER = "the effect in the claim's direction (A - B; for spread var B / var A)"


def _md(text: str) -> str:
    """A table cell as the Markdown writer escapes it."""
    from tiedlab.reports.render import _md_cell

    return _md_cell(text).strip()


@functools.cache
def rebuilt_results(name: str) -> dict[str, object]:
    """Each primary comparison of a committed report rebuilt from its summary.json, by key ("4/vision", or its id),
    under the registration the summary carries (a study file may have grown by amendments since); built once per
    process, read only."""
    summary = COMMITTED[name] / "summary.json"
    report = analyse([summary], runs=runs_from_summary(summary))
    return {r.spec.key: r for r in report.primaries}


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_committed_reports_registration_is_the_study_files_or_its_start(name):
    """A committed report tested what its study file registers, or the part registered before an amendment."""
    from tiedlab.paradigms.study import load_study

    carried = json.loads((COMMITTED[name] / "summary.json").read_text())["study_spec"]["primary"]
    current = load_study(STUDY_OF.get(name, name))["primary"]
    assert carried["defaults"] == current["defaults"]
    assert carried["comparisons"] == current["comparisons"][:len(carried["comparisons"])]


def rebuilt(name: str) -> dict[str, str]:
    return {key: r.verdict for key, r in rebuilt_results(name).items()}


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_committed_report_verdicts_are_what_its_summary_decides(name):
    verdicts = rebuilt(name)
    assert verdicts, f"reports/studies/{name} has no primary comparisons"
    summary = json.loads((COMMITTED[name] / "summary.json").read_text())
    stated = {p.get("id") or f"{p['insight']}/{p['paradigm']}": p["verdict"] for p in summary["primaries"]}
    assert stated == verdicts
    readme = (COMMITTED[name] / "README.md").read_text()
    assert "## Primary comparisons (pre-registered)" in readme
    transfer = readme.split("## Insight transfer", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in transfer.splitlines() if line.startswith("| insight |"))
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in transfer.splitlines()
            if re.match(r"\| (\d)\. ", line)]
    assert [int(row[0].split(".")[0]) for row in rows] == [1, 2, 3, 4, 5, 6]
    results = list(rebuilt_results(name).values())
    if LEGACY_TRANSFER in transfer:
        # built before the transfer table named comparisons with ids (reports/README.md): its headline cells
        # state the rebuilt verdicts; a cell without a headline comparison reads "not pre-registered"
        for row in rows:
            for paradigm, cell in zip(columns, row[1:]):
                expected = verdicts.get(f"{row[0].split('.')[0]}/{paradigm}")
                assert cell.split(":")[0] == (expected or "not pre-registered"), (name, row)
    else:  # every cell as the current builder writes it from the rebuilt comparisons, but for the fields the report
        # states under an earlier rule (below), which it writes as it stated them
        earlier = STATED_UNDER_AN_EARLIER_RULE.get(name, {})
        by_key = {p.get("id") or f"{p['insight']}/{p['paradigm']}": p for p in summary["primaries"]}
        as_stated = [dataclasses.replace(r, **{f: _stated(by_key[r.spec.key][f])
                                               for f in earlier.get("*", set()) | earlier.get(r.spec.key, set())})
                     for r in results]
        assert rows == [[_md(c) for c in row] for row in transfer_rows(as_stated, columns)], name


# Fields a committed report states that its rebuild under the current rule gives otherwise, per comparison ("*":
# every one), with the reason in the report's RUN.md; any other difference fails.
STATED_UNDER_AN_EARLIER_RULE = {
    # seeds to decide counted to the claim's decision only; the spread test's p was the F test's alone; the families
    # without runs were read as if they had 0 comparisons (reports/studies/paper_graph_cpu/RUN.md)
    "paper_graph_cpu": {"*": {"seeds_needed", "p", "level"}},
    # a spread verdict needs 10 seeds a side since 2026-12-07: read at 6, its p is nan now; and since 2026-12-07 its
    # seeds to decide count its secondary reading (alike within a variance ratio of 4) too (reports/studies/quick/RUN.md)
    "quick_ssl": {"3/ssl": {"p", "seeds_needed"}},
}


def _stated(value: object) -> object:
    """A field as summary.json states it, read back (it writes NaN as a string)."""
    return float("nan") if value == "nan" else value


def _same(x: object, y: object) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return (x != x and y != y) or abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y))
    if isinstance(x, str) and x == "nan" and isinstance(y, float):  # summary.json writes NaN as a string
        return y != y
    return x == y


@pytest.mark.parametrize("name", sorted(STATED_UNDER_AN_EARLIER_RULE))
def test_each_field_listed_as_stated_under_an_earlier_rule_still_differs_from_its_rebuild(name):
    """The list above cannot go stale: each report and comparison it names exists, and each comparison it names
    has each field listed differing from its rebuild ("*": some comparison has), else the entry is to be removed."""
    results = rebuilt_results(name)
    summary = json.loads((COMMITTED[name] / "summary.json").read_text())
    stated = {p.get("id") or f"{p['insight']}/{p['paradigm']}": p for p in summary["primaries"]}
    for key, fields in STATED_UNDER_AN_EARLIER_RULE[name].items():
        keys = sorted(stated) if key == "*" else [key]
        assert key == "*" or key in stated, (name, key)
        for field in fields:
            assert any(not _same(stated[k].get(field), getattr(results[k], field)) for k in keys), (name, key, field)


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_committed_report_numbers_are_what_its_summary_decides(name):
    """Every number a committed report states for a primary comparison (effect, interval, n, p, the alpha it was
    read at, the seeds to decide) is its rebuild's, but for the fields listed as stated under an earlier rule."""
    results = rebuilt_results(name)
    earlier = STATED_UNDER_AN_EARLIER_RULE.get(name, {})
    summary = json.loads((COMMITTED[name] / "summary.json").read_text())
    for stated in summary["primaries"]:
        key = stated.get("id") or f"{stated['insight']}/{stated['paradigm']}"
        rebuilt = results[key]
        skip = earlier.get("*", set()) | earlier.get(key, set())
        fields = [f for f in ("verdict", "effect", "ci_low", "ci_high", "n_a", "n_b", "p", "level", "seeds_needed")
                  if f not in skip]
        wrong = {f: (stated.get(f), getattr(rebuilt, f)) for f in fields if not _same(stated.get(f), getattr(rebuilt, f))}
        assert not wrong, (name, rebuilt.spec.key, wrong)


def cell_states(cell: str, r: object) -> bool:
    """A README cell "verdict (effect, [low, high], n_a/n_b seeds[; ~N seeds to decide])" says what ``r`` holds."""
    import math

    interval = (f"[{r.ci_low:+.3g}, {r.ci_high:+.3g}]" if math.isfinite(r.ci_low) and math.isfinite(r.ci_high)
                else "no interval")
    return (cell.split(" ")[0] == r.verdict and cell.split(" (", 1)[1].startswith(f"{r.effect:+.3g}, {interval}, ")
            and re.search(rf"(?<!\d){r.n_a}/{r.n_b} seeds", cell) is not None
            and (f"~{r.seeds_needed} seeds to decide" in cell) == bool(r.verdict == "undetermined" and r.seeds_needed))


def test_readme_states_only_the_quick_verdicts_the_report_holds():
    """The README's quick table (<!-- answer:quick -->): a row per insight (the headline comparisons) and a row per
    extra comparison id (`matched`, `flops`: "-" where a paradigm has none), each cell the verdict, effect, interval
    and seeds the rebuilt report holds; every registered comparison appears once."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- answer:quick", 1)[1].split("<!-- /answer -->", 1)[0]
    results = rebuilt_results("quick")
    shown = []
    for line in block.splitlines():
        match = re.match(r"\| (?:(\d)\. |`(\w+)` )", line)
        if not match:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert len(cells) == len(PARADIGM_COLUMNS), line
        for paradigm, cell in zip(PARADIGM_COLUMNS, cells):
            key = f"{match.group(1)}/{paradigm}" if match.group(1) else f"{match.group(2)}/{paradigm}"
            if key not in results:
                assert cell == "-", (key, cell)
                continue
            assert cell_states(cell, results[key]), (key, cell)
            shown.append(key)
    assert sorted(shown) == sorted(results)
    # the retired rule's words are not the README's answer
    answer = readme.split("## Status", 1)[1]
    # nor a label's "at least as accurate" for a noninferiority verdict (not worse by more than delta)
    for phrase in ("equal within noise", "at least as accurate", "width buys more than depth in all"):
        assert phrase not in answer


@pytest.mark.parametrize("name", ["masks", "masks_head", "masks_language", "masks_graph", "masks_ssl",
                                  "masks_density", "masks_graph_density", "masks_language_density",
                                  "masks_capacity", "masks_ssl_density", "paper_graph_cpu"])
def test_readme_states_only_the_mask_study_verdicts_its_report_holds(name):
    """The README's lines for the mask studies and the paper study's graph family (<!-- answer:masks -->,
    <!-- answer:masks_head -->, <!-- answer:masks_language -->, <!-- answer:masks_graph -->, <!-- answer:masks_ssl -->,
    <!-- answer:masks_density -->, <!-- answer:masks_graph_density -->, <!-- answer:masks_language_density -->,
    <!-- answer:masks_capacity -->, <!-- answer:masks_ssl_density -->, <!-- answer:paper_graph_cpu -->): one row per primary comparison of reports/studies/NAME that has runs (paper's
    vision and language comparisons have none there), with the verdict, effect, interval and seeds the rebuilt
    report holds."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split(f"<!-- answer:{name} ", 1)[1].split("<!-- /answer -->", 1)[0]
    results = {key: r for key, r in rebuilt_results(name).items() if r.n_a or r.n_b}
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert sorted(line.split("`")[1] for line in rows) == sorted(results)
    for line in rows:
        r = results[line.split("`")[1]]
        cell = [c.strip() for c in line.strip("|").split("|")][1]
        assert cell.split(" ")[0] == r.verdict, line
        assert cell.split(" (", 1)[1].startswith(f"{r.effect:+.3g}, [{r.ci_low:+.3g}, {r.ci_high:+.3g}]"), line
        assert re.search(rf"(?<!\d){r.n_a}/{r.n_b} seeds", cell), line


def test_readme_insight4_transfer_table_states_what_each_cited_report_holds():
    """The README's insight-4 transfer table (<!-- answer:insight4 -->): every cell but "-" is a verdict with its
    effect, interval and seeds followed by the committed report and comparison it comes from (`study:id`), and the
    rebuilt report holds exactly that; the comparison is of the row's paradigm and, under a "density D" column, its
    label names density D; every row cites at least one comparison, and none is cited twice."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- answer:insight4 ", 1)[1].split("<!-- /answer -->", 1)[0]
    cited, header, rows = [], [], 0
    for line in block.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        first, *cells = [c.strip() for c in line.strip("|").split("|")]
        if first.startswith("paradigm"):
            header = cells
            continue
        rows += 1
        paradigm = re.match(r"\w+", first).group(0).lower()
        assert paradigm in PARADIGM_COLUMNS and len(cells) == len(header), line
        in_row = 0
        for column, cell in zip(header, cells):
            if cell == "-":
                continue
            match = re.fullmatch(r"(.+) `(\w+):([\w/.-]+)`", cell)
            assert match, (line, cell)
            stated, study, key = match.groups()
            r = rebuilt_results(study)[key]
            assert r.spec.paradigm == paradigm, (study, key, paradigm)
            density = re.fullmatch(r"density ([\d.]+)", column)
            assert not density or re.search(rf"density {re.escape(density.group(1))}\b", r.spec.label), (key, column)
            assert cell_states(stated, r), (study, key, stated)
            cited.append((study, key))
            in_row += 1
        assert in_row, f"a row cites nothing: {line}"
    assert rows >= 10, f"{rows} rows: the two tables have five each (vision twice, graph, language, SSL)"
    assert len(cited) == len(set(cited)), cited
