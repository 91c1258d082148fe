"""How often the spread verdict (insight 3: the F, Brown-Forsythe and Fligner-Killeen tests, all three needed)
decides a difference of spread that is not there: both arms' seeds from one distribution, per seed count and level,
the false-decision rate and its ratio to alpha, for the verdict (``stats.variance_test``: at ``MIN_SPREAD_N`` seeds
a side or more) and for the F and Brown-Forsythe tests alone (the rule before 2026-12-07), read at any seed count.

    python benchmarks/spread_calibration.py [--sims 200000] [--seeds 8,10,12,16] [--dists "chi2(1),weibull(0.5)"]
        [--levels 0.0167,0.00208,0.00104,0.00052] [--sd-ratio 1] [--ties STEPS [--tie-offset 0.5]] [--permutations B]
        [--margin 4]

Prints a markdown table (half a minute at the defaults on a 2-core CPU: the tests run vectorised,
``stats.spread_tests``; each cell's first 200 simulations are checked against ``stats.variance_test`` one by one).
The distributions: normal, t(3), 10% of seeds at 5x the spread, exponential, lognormal (sigma 1.5 and 2), chi2(1)
and weibull(0.5) (skewed seed outcomes). The levels: a study's per-look level (3 looks), and those of one comparison
of a family of 8, 16 and 32 at 3 looks. With ``--sd-ratio R`` arm A's seeds are R times as spread (the rates are
then the tests' power to find that difference). With ``--ties STEPS`` the outcomes are discrete, as accuracies on a
validation split are: each distribution scaled to STEPS grid steps of standard deviation, shifted by
``--tie-offset`` of a step (0.5: its mode half a step off the grid) and rounded to the grid, so that seeds tie.
``--permutations B`` adds a third rate: the verdict together with a permutation test of the median-centred
deviations (``permutation_p``; a candidate fix for the ties, not the rule), B relabellings a simulation.
``--margin M`` prints instead the rate of the secondary reading, "alike within a variance ratio of M"
(``stats.spread_equivalence_p``), with arm A's seeds on the margin (sqrt(M) and 1/sqrt(M) times as spread: a
false reading) or, given ``--sd-ratio``, that many times as spread (its power; 1: arms alike).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from simulation_grid import add_grid_arguments, read_grid  # benchmarks/, a sibling module

DISTRIBUTIONS = {
    "normal": lambda rng, s: rng.standard_normal(s),
    "t(3)": lambda rng, s: rng.standard_t(3, s),
    "10% at 5x": lambda rng, s: rng.standard_normal(s) * np.where(rng.random(s) < 0.1, 5.0, 1.0),
    "exponential": lambda rng, s: rng.exponential(size=s),
    "lognormal 1.5": lambda rng, s: rng.lognormal(0.0, 1.5, s),
    "lognormal 2": lambda rng, s: rng.lognormal(0.0, 2.0, s),
    "chi2(1)": lambda rng, s: rng.chisquare(1, s),
    "weibull(0.5)": lambda rng, s: rng.weibull(0.5, s),
}
LEVELS = (0.05 / 3, 0.05 / 3 / 8, 0.05 / 3 / 16, 0.05 / 3 / 32)
CHUNK = 50_000  # simulations drawn and tested at once
CHECKED = 200  # simulations of each cell compared with stats.variance_test one by one


def two_tests_p(tests) -> np.ndarray:
    """The p the rule before 2026-12-07 read (max of the F and Brown-Forsythe tests' when their directions agree,
    else 1), at any seed count."""
    agree = (tests.ratio != 1) & (tests.robust_diff != 0) & ((tests.ratio > 1) == (tests.robust_diff > 0))
    return np.where(agree, np.fmax(tests.p_f, tests.p_robust), 1.0)


def permutation_p(a: np.ndarray, b: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """Two-sided p of Brown-Forsythe's difference (mean |x - median| of a minus that of b) over ``permutations``
    random relabellings of the pooled deviations, (1 + as large or larger) / (1 + permutations). Exact if the
    deviations were exchangeable; they are not quite (each side's median is its own), which is what the benchmark
    measures. Shapes: a (n_a,), b (n_b,) -> float."""
    z = np.concatenate([np.abs(a - np.median(a)), np.abs(b - np.median(b))])
    observed = abs(z[: len(a)].mean() - z[len(a):].mean())
    shuffled = z[np.argsort(rng.random((permutations, len(z))), axis=1)]
    diffs = np.abs(shuffled[:, : len(a)].mean(axis=1) - shuffled[:, len(a):].mean(axis=1))
    return float((1 + np.sum(diffs >= observed * (1 - 1e-12))) / (1 + permutations))


def on_a_grid(draw, steps: float, offset: float):
    """``draw`` scaled to ``steps`` grid steps of standard deviation (measured on a million draws), shifted by
    ``offset`` of a step and rounded to the grid: discrete outcomes that tie."""
    sd = float(np.std(draw(np.random.default_rng(0), 1_000_000)))
    return lambda rng, shape: np.round(draw(rng, shape) / sd * steps + offset)


def false_rates(draw, n: int, sims: int, levels, rng: np.random.Generator, sd_ratio: float = 1.0,
                permutations: int = 0, perm_rng: np.random.Generator | None = None
                ) -> tuple[list[float], list[float], list[float]]:
    """Per level, the share of ``sims`` simulations (n seeds a side from ``draw``; arm A's times ``sd_ratio``, 1: the
    null) decided by the verdict, by the F and Brown-Forsythe tests alone, and (with ``permutations``) by the verdict
    together with ``permutation_p`` (drawing from ``perm_rng``, so that ``rng``'s simulations are those drawn
    without it), computed only where the verdict decides at the largest level."""
    from tiedlab.reports import stats

    verdict, two, with_perm = np.zeros(len(levels)), np.zeros(len(levels)), np.zeros(len(levels))
    perm_rng = np.random.default_rng(0) if perm_rng is None else perm_rng
    done = 0
    while done < sims:
        size = min(CHUNK, sims - done)
        a, b = draw(rng, (size, n)) * sd_ratio, draw(rng, (size, n))
        tests = stats.spread_tests(a, b)
        p = tests.p if n >= stats.MIN_SPREAD_N else np.full(size, np.nan)
        if done == 0:  # the vectorised tests are the verdict's: checked against variance_test row by row
            for i in range(min(CHECKED, size)):
                one = stats.variance_test([a[i]], [b[i]])
                if not (np.isclose(one.p, p[i], rtol=1e-9, atol=0, equal_nan=True)
                        and np.isclose(one.p_f, tests.p_f[i], rtol=1e-9, atol=0, equal_nan=True)):
                    raise AssertionError(f"spread_tests and variance_test differ at n={n}, row {i}: {one} vs "
                                         f"p={p[i]}, p_f={tests.p_f[i]}")
        old = two_tests_p(tests)
        joint = np.full(size, np.nan)
        for i in np.flatnonzero(p <= max(levels)) if permutations else ():
            joint[i] = max(p[i], permutation_p(a[i], b[i], permutations, perm_rng))
        for j, alpha in enumerate(levels):
            verdict[j] += int(np.sum(p <= alpha))
            two[j] += int(np.sum(old <= alpha))
            with_perm[j] += int(np.sum(joint <= alpha))
        done += size
    return [v / sims for v in verdict], [t / sims for t in two], [w / sims for w in with_perm]


def equivalent_rates(draw, n: int, sims: int, levels, rng: np.random.Generator, sd_ratio: float,
                     margin: float) -> list[float]:
    """Per level, the share of ``sims`` simulations (n seeds a side from ``draw``, arm A's times ``sd_ratio``) read
    "alike within ``margin``" (``stats.spread_equivalence_p``; no p below ``MIN_SPREAD_N`` seeds), the first
    ``CHECKED`` checked against ``stats.variance_test``."""
    from tiedlab.reports import stats

    hits, done = np.zeros(len(levels)), 0
    while done < sims:
        size = min(CHUNK, sims - done)
        a, b = draw(rng, (size, n)) * sd_ratio, draw(rng, (size, n))
        p = stats.spread_equivalence_p(a, b, margin) if n >= stats.MIN_SPREAD_N else np.full(size, np.nan)
        if done == 0:
            for i in range(min(CHECKED, size)):
                one = stats.variance_test([a[i]], [b[i]], margin=margin)
                if not np.isclose(one.p_equiv, p[i], rtol=1e-9, atol=0, equal_nan=True):
                    raise AssertionError(f"spread_equivalence_p and variance_test differ at n={n}, row {i}: "
                                         f"{one.p_equiv} vs {p[i]}")
        hits += [int(np.sum(p <= alpha)) for alpha in levels]
        done += size
    return list(hits / sims)


def main(argv: list[str] | None = None) -> int:
    from tiedlab.reports import stats

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_arguments(parser, sims=200_000, what="simulated pairs of arms", seeds="8,10,12,16",
                       distributions=DISTRIBUTIONS, levels=LEVELS,
                       levels_help="a look's 0.0167 and 0.0167 / 8, 16, 32")
    parser.add_argument("--sd-ratio", type=float, default=None,
                        help="arm A's seeds this many times as spread as B's (default 1: the null; with --margin, "
                             "on the margin both ways)")
    parser.add_argument("--ties", type=float, default=None, metavar="STEPS",
                        help="discrete outcomes: STEPS grid steps of standard deviation, rounded to the grid")
    parser.add_argument("--tie-offset", type=float, default=None,
                        help="with --ties, the shift before rounding, in grid steps (default 0.5)")
    parser.add_argument("--permutations", type=int, default=0, metavar="B",
                        help="also the verdict with a permutation test of the median-centred deviations, B "
                             "relabellings (default 0: not run)")
    parser.add_argument("--margin", type=float, default=None, metavar="M",
                        help="the rate of the secondary reading 'alike within a variance ratio of M' instead, arm "
                             "A on the margin (sd sqrt(M) and 1/sqrt(M) times B's) or at --sd-ratio")
    args = parser.parse_args(argv)
    seeds, levels = read_grid(parser, args, DISTRIBUTIONS)
    if args.sd_ratio is not None and not (math.isfinite(args.sd_ratio) and args.sd_ratio > 0):
        parser.error(f"--sd-ratio {args.sd_ratio}: must be a positive number")
    if args.ties is not None and not (math.isfinite(args.ties) and args.ties > 0):
        parser.error(f"--ties {args.ties}: must be a positive number of grid steps")
    if args.tie_offset is not None and args.ties is None:
        parser.error("--tie-offset applies to outcomes on a grid: give --ties STEPS too")
    if args.permutations < 0:
        parser.error(f"--permutations {args.permutations}: a number of relabellings, >= 0")
    if args.margin is not None and not (math.isfinite(args.margin) and args.margin > 1):
        parser.error(f"--margin {args.margin}: a variance ratio > 1")
    if args.margin is not None and args.permutations:
        parser.error("--permutations reads the verdict's level, --margin its secondary reading's: give one")
    offset = 0.5 if args.tie_offset is None else args.tie_offset
    rng, perm_rng = np.random.default_rng(args.seed), np.random.default_rng([args.seed, 1])
    if args.margin is not None:
        return print_equivalent_rates(args, seeds, levels, offset, rng)
    args.sd_ratio = 1.0 if args.sd_ratio is None else args.sd_ratio
    what = ("False spread verdicts under the null" if args.sd_ratio == 1 else
            f"Spread verdicts with arm A's seeds {args.sd_ratio:g}x as spread (power)")
    if args.ties is not None:
        what += f", outcomes on a grid ({args.ties:g} steps of standard deviation, offset {offset:g})"
    print(f"{what}, {args.sims} simulations a cell: rate (x alpha) of the verdict "
          f"(three tests; no p below MIN_SPREAD_N = {stats.MIN_SPREAD_N} seeds) / of the F and Brown-Forsythe tests "
          f"alone, at any seed count"
          + (f" / of the verdict with a permutation test ({args.permutations} relabellings)" if args.permutations
             else "") + "\n")

    def cells(draw, n: int) -> list[str]:
        verdict, two, joint = false_rates(draw, n, args.sims, levels, rng, args.sd_ratio, args.permutations, perm_rng)
        return [f"{v:.5f} ({v / a:.2f}x) / {t:.5f} ({t / a:.2f}x)"
                + (f" / {w:.5f} ({w / a:.2f}x)" if args.permutations else "")
                for v, t, w, a in zip(verdict, two, joint, levels)]

    print_table(args, seeds, levels, offset, cells)
    return 0


def print_table(args: argparse.Namespace, seeds: list[int], levels: list[float], offset: float, cells) -> None:
    """The markdown table: a header of the levels, then a row per seed count and distribution (on the grid with
    ``--ties``) with the cells ``cells(draw, n)`` gives."""
    print("| seeds | distribution | " + " | ".join(f"alpha {a:.3g}" for a in levels) + " |")
    print("|---:|---|" + "---|" * len(levels))
    for n in seeds:
        for name in args.dists.split(","):
            draw = DISTRIBUTIONS[name]
            if args.ties is not None:
                draw = on_a_grid(draw, args.ties, offset)
            print(f"| {n} | {name} | " + " | ".join(cells(draw, n)) + " |", flush=True)


def print_equivalent_rates(args: argparse.Namespace, seeds: list[int], levels: list[float], offset: float,
                           rng: np.random.Generator) -> int:
    """The ``--margin`` table: per seed count, distribution and level, the rate (x alpha) of the reading "alike
    within the margin", arm A on the margin both ways (two rates, "A sqrt(M)x / A 1/sqrt(M)x"; no --sd-ratio) or at
    --sd-ratio."""
    from tiedlab.reports import stats

    on_margin = args.sd_ratio is None
    ratios = [math.sqrt(args.margin), 1 / math.sqrt(args.margin)] if on_margin else [args.sd_ratio]
    what = (f"False 'alike within a variance ratio of {args.margin:g}' readings, arm A's seeds on the margin "
            f"({ratios[0]:g}x / {ratios[1]:g}x as spread)" if on_margin else
            f"'Alike within a variance ratio of {args.margin:g}' readings with arm A's seeds {args.sd_ratio:g}x as "
            "spread (power)")
    if args.ties is not None:
        what += f", outcomes on a grid ({args.ties:g} steps of standard deviation, offset {offset:g})"
    print(f"{what}, {args.sims} simulations a cell: rate (x alpha); no p below MIN_SPREAD_N = "
          f"{stats.MIN_SPREAD_N} seeds\n")

    def cells(draw, n: int) -> list[str]:
        rates = [equivalent_rates(draw, n, args.sims, levels, rng, r, args.margin) for r in ratios]
        return [" / ".join(f"{rate[j]:.5f} ({rate[j] / a:.2f}x)" for rate in rates) for j, a in enumerate(levels)]

    print_table(args, seeds, levels, offset, cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
