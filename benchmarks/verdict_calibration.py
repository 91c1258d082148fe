"""How often the mean comparisons' t rule (``stats.compare``: a paired t test on the per-seed differences) decides a
difference that is not there when those differences are not normal: per seed count, level and distribution of the
per-seed differences (centred on a true effect of 0, the superiority claim's boundary), the rate of a false verdict.

    python benchmarks/verdict_calibration.py [--sims 1000000] [--seeds 4,6,8,10,16] [--dists "normal,chi2(1)"]
        [--levels 0.0167,0.00208,0.00104] [--unpaired]

``--unpaired``: arms that share no seeds (Welch's statistic with Hsu's df): arm A's seeds from the distribution,
scaled to unit standard deviation, against a normal arm B of the same spread and mean.

Each cell reads "two-sided rate (x alpha) / worse side (x alpha/2)": the two-sided rate counts both false readings at
a true effect of 0 ("holds" and "fails" of a superiority claim); the worse side is the larger of the two one-sided
rates, which under normal differences are alpha/2 each: a noninferiority claim at its boundary (-delta) is decided
falsely at that rate by its "holds" reading, and a skewed difference inflates one side while it deflates the other.
The rows run the verdict's own vectorised code (``stats.batch_compare``, equal to ``stats.compare`` row by row,
tested); about 90 s at the defaults on a 2-core CPU.

The distributions of a per-seed difference: normal; t(3) (heavy tails); 10% of seeds at 5x the spread (symmetric
contamination); 10% of seeds 4 standard deviations off (an occasional bad seed on one side, as a DEQ arm's may be);
exponential, chi2(1) and lognormal(0, 1) (skewed). Each is centred on its true mean; the t test does not depend on
the scale. The levels: a study's per-look level (3 looks), and those of one comparison of a family of 8 and 16 at
3 looks.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from simulation_grid import add_grid_arguments, read_grid  # benchmarks/, a sibling module

# each draws per-seed differences with a true mean of 0 (centred analytically)
DISTRIBUTIONS = {
    "normal": lambda rng, s: rng.standard_normal(s),
    "t(3)": lambda rng, s: rng.standard_t(3, s),
    "10% at 5x": lambda rng, s: rng.standard_normal(s) * np.where(rng.random(s) < 0.1, 5.0, 1.0),
    "10% 4 SD off": lambda rng, s: rng.standard_normal(s) - 4.0 * (rng.random(s) < 0.1) + 0.4,
    "exponential": lambda rng, s: rng.exponential(size=s) - 1.0,
    "chi2(1)": lambda rng, s: rng.chisquare(1, s) - 1.0,
    "lognormal 1": lambda rng, s: rng.lognormal(0.0, 1.0, s) - math.exp(0.5),
}
LEVELS = (0.05 / 3, 0.05 / 3 / 8, 0.05 / 3 / 16)
CHUNK = 200_000  # simulations drawn and tested at once


def false_rates(draw, n: int, sims: int, levels, rng: np.random.Generator,
                unpaired: bool = False) -> tuple[list[float], list[float]]:
    """Per level, the share of ``sims`` simulated comparisons (a true effect of 0) that the t rule decides ("holds" or
    "fails"), and the larger of the shares of either reading alone: n per-seed differences from ``draw`` (the paired
    t test), or with ``unpaired`` n seeds of arm A from ``draw`` scaled to unit standard deviation against n of a
    normal arm B (Welch's statistic with Hsu's df, the rule for arms that share no seeds)."""
    from tiedlab.reports import stats

    sd = float(np.std(draw(np.random.default_rng(0), 2_000_000))) if unpaired else 1.0
    holds, fails = np.zeros(len(levels)), np.zeros(len(levels))
    done = 0
    while done < sims:
        size = min(CHUNK, sims - done)
        a = draw(rng, (size, n)) / sd
        b = rng.standard_normal((size, n)) if unpaired else np.zeros_like(a)
        for j, alpha in enumerate(levels):
            verdict = stats.batch_compare(a, b, claim="superiority", delta=1.0, alpha=alpha,
                                          paired=not unpaired).verdict
            holds[j] += int(np.sum(verdict == "holds"))
            fails[j] += int(np.sum(verdict == "fails"))
        done += size
    return [float(h + f) / sims for h, f in zip(holds, fails)], [float(max(h, f)) / sims for h, f in zip(holds, fails)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_arguments(parser, sims=1_000_000, what="simulated comparisons", seeds="4,6,8,10,16",
                       distributions=DISTRIBUTIONS, levels=LEVELS, levels_help="a look's 0.0167 and 0.0167 / 8, 16")
    parser.add_argument("--unpaired", action="store_true",
                        help="arms that share no seeds: arm A's seeds from the distribution (unit SD), arm B's normal; "
                             "Welch's statistic with Hsu's df")
    args = parser.parse_args(argv)
    seeds, levels = read_grid(parser, args, DISTRIBUTIONS)
    rng = np.random.default_rng(args.seed)
    rule = ("Welch's t rule (arm A from the distribution, arm B normal, no shared seeds)" if args.unpaired
            else "the paired t rule")
    print(f"False verdicts of {rule} at a true effect of 0, {args.sims} simulations a cell: two-sided rate "
          "(x alpha) / the worse one-sided rate (x alpha/2)\n")
    print(f"| seeds | {'arm A' if args.unpaired else 'per-seed difference'} | "
          + " | ".join(f"alpha {a:.3g}" for a in levels) + " |")
    print("|---:|---|" + "---|" * len(levels))
    for n in seeds:
        for name in args.dists.split(","):
            both, worse = false_rates(DISTRIBUTIONS[name], n, args.sims, levels, rng, args.unpaired)
            cells = [f"{r:.5f} ({r / a:.2f}x) / {w:.5f} ({2 * w / a:.2f}x)" for r, w, a in zip(both, worse, levels)]
            print(f"| {n} | {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
