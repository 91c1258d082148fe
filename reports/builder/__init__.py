"""Reports from run directories: ``tiedlab-report RUNS... --out reports/studies/NAME`` (see ``cli``).

load (run dirs -> Run, labels) -> aggregate (cells: mean, std, n) -> insights (verdicts) and guidelines
-> plots (PNG) -> render (README.md, index.html) and summary (summary.json); build ties them together.
"""
