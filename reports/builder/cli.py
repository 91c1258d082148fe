"""``tiedlab-report RUNS... --out reports/studies/NAME [--title T] [--command CMD]``."""

from __future__ import annotations

import argparse
import shlex
import sys

from .build import NoRunsError, build_report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tiedlab-report",
        description="Build a report (README.md, index.html, summary.json, PNG plots) from tiedlab run directories.")
    p.add_argument("runs", nargs="*", help="run directories, or folders searched recursively for them")
    p.add_argument("--from-summary", default=None,
                   help="re-analyse the runs an earlier report's summary.json lists (no run directories needed; "
                        "no time curves), e.g. under a new rule or new primary comparisons")
    p.add_argument("--out", required=True, help="report folder, e.g. reports/studies/NAME")
    p.add_argument("--title", default="tiedlab report")
    p.add_argument("--command", action="append", default=[],
                   help="the command that made the runs, shown in the header (repeatable)")
    p.add_argument("--study", default=None,
                   help="the study whose primary comparisons to test (a name in configs/study/ or a YAML file); "
                        "default: the study.yaml tiedlab-study wrote into the runs folder")
    return p


def main(argv: list[str] | None = None) -> int:
    """Build the report; 0 on success, 1 when no run directory was found, 2 for a path that does not exist. Ctrl-C
    raises KeyboardInterrupt (tiedlab-study builds its report in its own process: its stop is its own)."""
    args = parser().parse_args(argv)
    invocation = shlex.join(["tiedlab-report", *(argv if argv is not None else sys.argv[1:])])
    try:
        if bool(args.runs) == bool(args.from_summary):
            print("tiedlab-report: error: give run folders or --from-summary FILE (one of the two)", file=sys.stderr)
            return 2
        report = build_report(args.runs, args.out, args.title, args.command, invocation, args.study,
                              args.from_summary)
    except FileNotFoundError as err:
        print(f"tiedlab-report: {err}", file=sys.stderr)
        return 2
    except NoRunsError as err:  # the report folder keeps what it held
        print(f"tiedlab-report: {err}", file=sys.stderr)
        return 1
    except (FileExistsError, NotADirectoryError) as err:  # --out (or a folder above it) is a file
        print(f"tiedlab-report: error: --out {args.out}: {err.strerror}: {err.filename}", file=sys.stderr)
        return 2
    except ValueError as err:  # a malformed study file or primary comparison
        print(f"tiedlab-report: error: {err}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for run in report.runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    status = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    print(f"[tiedlab] report {args.out}: {len(report.runs)} runs ({status}), {len(report.cells)} cells, "
          f"{len(report.plots)} plots -> {args.out}/README.md, index.html, summary.json", file=sys.stderr)
    return 0


def run() -> None:
    """``tiedlab-report``: ``main``, and Ctrl-C as one line (exit 130) instead of a traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("tiedlab-report: stopped by Ctrl-C: the report folder (--out) may be incomplete; rerun the command",
              file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    run()
