"""The grid of the null-simulation benchmarks (``spread_calibration``, ``verdict_calibration``) on the command line:
simulations a cell, seed counts, distributions, levels and the random seed, declared and checked in one place."""

from __future__ import annotations

import argparse
from typing import Iterable


def add_grid_arguments(parser: argparse.ArgumentParser, *, sims: int, what: str, seeds: str,
                       distributions: Iterable[str], levels: Iterable[float], levels_help: str) -> None:
    """--sims, --seeds, --dists, --levels and --seed, with these defaults (``what``: what one simulation is)."""
    names = list(distributions)
    parser.add_argument("--sims", type=int, default=sims, help=f"{what} per cell (default {sims})")
    parser.add_argument("--seeds", default=seeds, help=f"seeds per arm, comma-separated (default {seeds})")
    parser.add_argument("--dists", default=",".join(names),
                        help=f"distributions, comma-separated (default all: {', '.join(names)})".replace("%", "%%"))
    # (argparse formats help with %: "10% at 5x" broke --help)
    parser.add_argument("--levels", default=",".join(f"{a:.3g}" for a in levels),
                        help=f"levels alpha, comma-separated (default: {levels_help})")
    parser.add_argument("--seed", type=int, default=2026, help="the simulations' random seed (default 2026)")


def read_grid(parser: argparse.ArgumentParser, args: argparse.Namespace,
              distributions: Iterable[str]) -> tuple[list[int], list[float]]:
    """The seed counts and levels of ``args``; a bad value, or a distribution not in ``distributions``, ends the
    command through ``parser.error`` (one line, exit 2)."""
    try:
        seeds = [int(n) for n in args.seeds.split(",")]
        levels = [float(a) for a in args.levels.split(",")]
    except ValueError as err:
        parser.error(f"--seeds {args.seeds} / --levels {args.levels}: comma-separated numbers ({err})")
    if min(seeds) < 2 or args.sims < 1:
        parser.error(f"--seeds {args.seeds} and --sims {args.sims}: need >= 2 seeds per arm and >= 1 simulation")
    names = list(distributions)
    unknown = sorted(set(args.dists.split(",")) - set(names))
    if unknown:
        parser.error(f"unknown distribution(s) {unknown}; choose from {', '.join(names)}")
    if not all(0 < a < 1 for a in levels):
        parser.error(f"--levels {args.levels}: each level must lie in (0, 1)")
    return seeds, levels
