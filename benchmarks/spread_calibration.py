"""How often the spread verdict (insight 3: the F test and Brown-Forsythe's, both needed) decides a difference of
spread that is not there: both arms' seeds from one distribution, per seed count and level, the false-decision rate
and its ratio to alpha, with and without the ``MIN_SPREAD_N`` rule (the two tests' agreement read at any n).

    python benchmarks/spread_calibration.py [--sims 4000] [--seeds 4,6,8,12] [--dists "chi2(1),weibull(0.5)"]

Prints a markdown table (1.5-2 minutes at the defaults on a 2-core CPU). The distributions: normal, t(3), 10% of
seeds at 5x the spread, exponential, lognormal (sigma 1.5 and 2), chi2(1) and weibull(0.5) (skewed seed outcomes).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "t(3)": lambda rng, n: rng.standard_t(3, n),
    "10% at 5x": lambda rng, n: rng.standard_normal(n) * np.where(rng.random(n) < 0.1, 5.0, 1.0),
    "exponential": lambda rng, n: rng.exponential(size=n),
    "lognormal 1.5": lambda rng, n: rng.lognormal(0.0, 1.5, n),
    "lognormal 2": lambda rng, n: rng.lognormal(0.0, 2.0, n),
    "chi2(1)": lambda rng, n: rng.chisquare(1, n),
    "weibull(0.5)": lambda rng, n: rng.weibull(0.5, n),
}
LEVELS = (0.05 / 3, 0.05 / 3 / 8)  # a study's per-look level (3 looks), and that of one of a family of 8


def agreed_p(a: np.ndarray, b: np.ndarray) -> float:
    """The p the verdict reads when both tests are read whatever n is: max(F test's, Brown-Forsythe's) when their
    directions agree, else 1 (``stats.variance_test`` without its seed minimum)."""
    from tiedlab.reports import stats

    test = stats.variance_test([a], [b])
    p_robust, diff = stats.robust_spread_p(a, b)
    agree = (test.ratio > 1) == (diff > 0) and test.ratio != 1 and diff != 0
    return max(test.p_f, p_robust) if agree and math.isfinite(p_robust) else 1.0


def main(argv: list[str] | None = None) -> int:
    from tiedlab.reports import stats

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=4000, help="simulated pairs of arms per cell (default 4000)")
    parser.add_argument("--seeds", default="4,6,8,12", help="seeds per arm, comma-separated (default 4,6,8,12)")
    parser.add_argument("--dists", default=",".join(DISTRIBUTIONS),
                        help=f"distributions, comma-separated (default all: {', '.join(DISTRIBUTIONS)})")
    args = parser.parse_args(argv)
    seeds = [int(n) for n in args.seeds.split(",")]
    unknown = sorted(set(args.dists.split(",")) - set(DISTRIBUTIONS))
    if unknown:
        parser.error(f"unknown distribution(s) {unknown}; choose from {', '.join(DISTRIBUTIONS)}")
    dists = {name: DISTRIBUTIONS[name] for name in args.dists.split(",")}
    rng = np.random.default_rng(2026)
    print(f"False spread verdicts under the null, {args.sims} simulations a cell (rate, x alpha; MIN_SPREAD_N = "
          f"{stats.MIN_SPREAD_N}: below it the verdict reads no p)\n")
    header = " | ".join(f"alpha {a:.4f}: both tests / verdict" for a in LEVELS)
    print(f"| seeds | distribution | {header} |")
    print("|---:|---|" + "---|" * len(LEVELS))
    for n in seeds:
        for name, draw in dists.items():
            pairs = [(draw(rng, n), draw(rng, n)) for _ in range(args.sims)]
            agreed = np.array([agreed_p(a, b) for a, b in pairs])
            verdict = np.array([stats.variance_test([a], [b]).p for a, b in pairs])
            cells = []
            for alpha in LEVELS:
                both, read = float(np.mean(agreed <= alpha)), float(np.mean(verdict <= alpha))
                cells.append(f"{both:.4f} ({both / alpha:.1f}x) / {read:.4f} ({read / alpha:.1f}x)")
            print(f"| {n} | {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
