"""index.html looked at in a real browser: a report built from real tiny runs, rendered by headless Chromium at
1400 x 1000 px with no network. Every image loaded, nothing overflows the page width (wide tables scroll inside
their own box), the forest plot is on the first screen, the table of contents and column sorting work. The
screenshot is kept as a test artifact ($TIEDLAB_ARTIFACTS, default .pytest-artifacts/). `.ci/run` installs
Chromium from Debian's packages when it is absent; without it this test is skipped, saying so."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import toy_cfg
from tiedlab.reports.cli import main

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 1400, 1000
CHROMIUM = os.environ.get("TIEDLAB_CHROMIUM") or next(
    (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)

# Injected into a copy of index.html: after load, the checks are written into the page as JSON, which
# `chromium --dump-dom` prints (no DevTools client needed).
CHECK_JS = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var forest = document.querySelector("#fig-forest img"), box = forest && forest.getBoundingClientRect();
  var wide = [];
  Array.prototype.forEach.call(document.querySelectorAll("main *"), function (el) {
    var r = el.getBoundingClientRect();
    if (r.width && r.right > innerWidth + 1 && !el.closest(".tw")) wide.push(el.tagName + "." + el.className);
  });
  var sorted = null, section = document.getElementById("toy-scikit-learn-digits");
  var table = section && section.nextElementSibling.nextElementSibling.querySelector("table.sortable");
  if (table) {
    var th = Array.prototype.filter.call(table.tHead.rows[0].cells,
                                         function (c) { return /^val acc/.test(c.textContent); })[0];
    var column = Array.prototype.indexOf.call(table.tHead.rows[0].cells, th);
    th.click();
    sorted = {order: th.getAttribute("aria-sort"), values: Array.prototype.map.call(table.tBodies[0].rows,
              function (row) { return parseFloat(row.cells[column].textContent); })};
  }
  var out = document.createElement("script");
  out.type = "application/json";
  out.id = "browser-check";
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                  .map(function (i) { return i.getAttribute("data-file"); }),
    scrollWidth: document.documentElement.scrollWidth, innerWidth: innerWidth, innerHeight: innerHeight,
    forest: box ? {top: box.top, bottom: box.bottom, left: box.left, right: box.right} : null,
    wide: wide.slice(0, 10), tables: document.querySelectorAll("table.sortable").length,
    toc: document.querySelectorAll("nav#toc a").length, sorted: sorted});
  document.body.appendChild(out);
});
"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium with no network (every host name fails to resolve) and a throw-away profile."""
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", "--disable-background-networking",
                           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
                           f"--window-size={WIDTH},{HEIGHT}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def browser_report(toy_runs, tmp_path_factory) -> Path:
    """The shared toy runs plus tied at width 32 (a width plot), under a study with one pre-registered primary
    comparison (a forest plot)."""
    from tiedlab.paradigms.engine import train

    extra = tmp_path_factory.mktemp("browser_runs")
    for seed in (0, 1):
        result = train(toy_cfg("tied", seed, width=32), extra / "toy_width" / f"model.width=32,seed={seed}")
        assert result["status"] == "completed"
    study = extra / "toy-study.yaml"
    study.write_text(yaml.safe_dump({"name": "toy", "primary": {"comparisons": [
        {"insight": 1, "paradigm": "toy", "claim": "noninferiority", "metric": "val/acc", "delta": 0.05,
         "a": {"grid": "toy", "where": {"block": "tied"}}, "b": {"grid": "toy", "where": {"block": "deq"}}}]}}))
    out = tmp_path_factory.mktemp("browser_report") / "toy"
    assert main([str(toy_runs), str(extra), "--out", str(out), "--title", "toy in a browser", "--study", str(study),
                 "--command", "pytest tests/reports/test_report_browser.py"]) == 0
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it: apt-get install "
                                             "chromium); the browser check of index.html did not run")
def test_report_in_headless_chromium(browser_report, tmp_path, check_html):
    out = browser_report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["primaries"] and {p["kind"] for p in summary["plots"]} >= {"forest", "width", "time", "memory"}
    check_html(out)
    # the page alone, away from its folder: it needs no other file (PNGs embedded; only the SVG links point out)
    page = tmp_path / "alone" / "index.html"
    page.parent.mkdir()
    html = (out / "index.html").read_text()
    page.write_text(html)
    checked = tmp_path / "alone" / "check.html"
    checked.write_text(html.replace("</body>", f"<script>{CHECK_JS}</script>\n</body>"))

    dom = chromium("--virtual-time-budget=10000", "--dump-dom", checked.as_uri(), profile=tmp_path / "profile")
    found = re.search(r'<script type="application/json" id="browser-check">(.*?)</script>', dom.stdout, re.S)
    assert found, f"no result from Chromium (exit {dom.returncode}): {dom.stderr[-2000:]}"
    result = json.loads(found.group(1))
    assert result["images"] == len(summary["plots"]) and result["broken"] == [], result
    assert result["innerWidth"] == WIDTH and result["scrollWidth"] <= result["innerWidth"], result
    assert result["wide"] == [], result  # no element reaches past the right edge outside a table's scroll box
    forest = result["forest"]
    assert forest and 0 <= forest["top"] < result["innerHeight"] and forest["right"] <= WIDTH, result
    assert forest["bottom"] - forest["top"] > 100, result  # shown, not a sliver
    assert result["tables"] >= 6 and result["toc"] >= 8, result
    values = result["sorted"]["values"]
    assert result["sorted"]["order"] == "ascending" and values == sorted(values) and len(values) == 4, result

    shot = tmp_path / "report-1400.png"
    done = chromium(f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "profile2")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr[-2000:]
    from PIL import Image

    assert Image.open(shot).size == (WIDTH, HEIGHT)
    artifacts = Path(os.environ.get("TIEDLAB_ARTIFACTS") or ROOT / ".pytest-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifacts / "report-browser-1400.png")
