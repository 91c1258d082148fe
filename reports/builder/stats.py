"""The statistics behind the report's verdicts: t intervals read against 0 and a margin, corrected for multiplicity.

The rule, in plain words (``RULE`` is the text the report prints):

* A comparison contrasts two sides A and B over replicates (seeds; the caller averages a seed's data folds
  first). Its effect is mean A - mean B, signed by the caller so that larger is better for A. Several runs of one replicate are first
  averaged (``merge_duplicates``).
* It is paired (a t test on the per-replicate differences, as ``scipy.stats.ttest_rel``) when both sides hold the
  same replicates, at least 2 of them; otherwise it is Welch's t statistic (as ``scipy.stats.ttest_ind(
  equal_var=False)``) referred to t with min(n_a, n_b) - 1 degrees of freedom (Hsu's conservative df), not the
  Welch-Satterthwaite df, which is liberal at 2-3 seeds when the side with fewer seeds is the noisier one (0.095
  instead of 0.05 at 2 vs 4 seeds with an sd ratio of 3, in the tests; 0.10 at 2 vs 10 seeds even with equal
  sds, in a one-off simulation). Hsu's df is the textbook conservative choice for unequal variances (the Welch-Satterthwaite df is never
  below it); its simulated level was at most 0.048 over a grid of 2-10 seeds a side and sd ratios 1/4 to 4.
* Every verdict is read from the two-sided 1 - alpha confidence interval [lo, hi] of the effect (alpha = 0.05):
  a superiority claim holds if lo > 0, fails if hi < 0, and is read "equivalent" if -delta < lo and hi < delta; a
  noninferiority claim holds if lo > -delta and fails if hi < -delta; an equivalence claim is "equivalent" if
  -delta < lo and hi < delta and fails if lo > delta or hi < -delta. Anything else is undetermined, as is a
  comparison with fewer than 2 replicates on a side or no spread at all (the t interval does not exist).
  A verdict can only be false when the interval misses the true effect, which happens with probability at most
  alpha.
* The report's primary comparisons are corrected together (``holm``) so that the chance of any false verdict
  among them is at most alpha, by Holm's step-down procedure with one restriction: a decided comparison hands its
  share of alpha on to the others only if it has no other reading left that could still be false. A superiority
  claim's "equivalent" reading and an equivalence claim's "fails" reading could be, so those comparisons keep
  their share; a family of such comparisons is read as by Bonferroni, each at level 1 - alpha/m.
* A spread comparison (``variance_test``) reads the variance ratio with the F, Brown-Forsythe and Fligner-Killeen
  tests together; its smallest effect of interest is a ratio of ``SPREAD_MARGIN`` (4) either way, which its
  secondary reading, "equivalent", tests by two one-sided readings of the scaled arms (``spread_equivalence_p``).
* A sequential plan looks after its first pass's seeds and again after each ``--seed-step`` more (quick: 4, 6, 8
  seeds per arm) and stops at the first verdict; each of its K looks is
  read at level 1 - alpha/K (equal alpha spending), so over all looks the chance of a false verdict is at most
  alpha, and a rerun that resumes reaches the same verdict at the same look.

Every distribution comes from ``scipy.stats`` (t, noncentral t, F, chi-squared, normal, Fisher's exact test);
nothing here computes a distribution by hand. The tests in ``tests/reports/test_stats.py`` simulate the false
verdict rates of these procedures under the null and their power under a planted effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Hashable, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import integrate, stats

ALPHA = 0.05
POWER = 0.8
CLAIMS = ("superiority", "noninferiority", "equivalence")
VERDICTS = ("holds", "fails", "equivalent", "undetermined")
MAX_N = 1000  # seeds_needed gives up beyond this many seeds per arm
# Values that differ by no more than this fraction of their size count as equal: subtraction rounds (0.9 - 0.7 and
# 0.3 - 0.1 differ in the last digit), and a t or F statistic read from rounding noise would decide anything.
SPREAD_RTOL = 1e-12

# the fewest values per side a spread verdict is read at: with fewer the three tests together are liberal under
# skewed seed outcomes (at 8 seeds, Weibull(0.5) ones: 1.10x alpha at a family's level 0.0021), and Fligner-Killeen
# cannot reach p <= 0.001 (benchmarks/spread_calibration.py; tests/reports/test_stats.py)
MIN_SPREAD_N = 10
# A spread comparison's smallest effect of interest: a variance ratio of 4 (standard deviations 2x apart) either way.
# Its secondary reading, "equivalent", needs the three tests to place the ratio within [1/4, 4] (``spread_tests`` of
# one arm scaled by 1/2 and by 2: two one-sided tests); a spread verdict "holds" at any ratio beyond 1 they detect,
# as a superiority claim of means holds at any difference beyond 0.
SPREAD_MARGIN = 4.0


RULE = (
    "Each comparison contrasts two sides over replicates (seeds): its effect is mean A - mean B, signed so that "
    "larger is better for A; several runs of one seed (a repeated run directory, the data folds of a k-fold sweep) "
    "are averaged first. When both sides hold "
    "the same replicates (at least 2), the comparison is paired (t test on the per-replicate differences); otherwise "
    "it uses Welch's t statistic with min(n_a, n_b) - 1 degrees of freedom (Hsu's conservative choice; the "
    "Welch-Satterthwaite df is liberal at 2-3 seeds). Verdicts are read from the two-sided "
    f"{1 - ALPHA:.0%} confidence interval [lo, hi] of the effect (alpha = {ALPHA:g}) against 0 and the claim's "
    "margin delta: a superiority claim holds if lo > 0, fails if hi < 0, and is read equivalent if -delta < lo and "
    "hi < delta; a noninferiority claim (A not worse than B by more than delta) holds if lo > -delta and fails if "
    "hi < -delta; an equivalence claim is equivalent if -delta < lo and hi < delta and fails if lo > delta or "
    "hi < -delta; anything else is undetermined, as is a comparison with fewer than 2 replicates on a side (n<2) or "
    "with no spread at all. A verdict can be false only when its interval misses the true effect. The report's "
    "primary comparisons are corrected together so that the chance of any false verdict among them is at most "
    "alpha, by Holm's step-down on each comparison's p (the smallest alpha at which its interval reaches the "
    "claim's decision): with m registered comparisons (those that cannot be read count too) of which r have "
    "released their share, the next smallest p is decided if p <= alpha/(m - r) and read from its interval at "
    "level 1 - alpha/(m - r); the others are read at the level "
    "where this stops. A decided noninferiority comparison releases its share, as does a decided divergence "
    "comparison (it has no secondary reading); a superiority or equivalence comparison of means, or a spread "
    "comparison, never does, because its secondary reading (equivalent, resp. fails) could still be false, so a "
    "family of those is "
    "read as by Bonferroni, each at level 1 - alpha/m. A spread comparison (the variance ratio over seeds) is decided "
    "by the F, Brown-Forsythe and Fligner-Killeen tests together (all three within the level, in one direction; at "
    f"least {MIN_SPREAD_N} seeds a side): it holds at any ratio beyond 1 that they detect; its smallest effect of "
    f"interest is a variance ratio of {SPREAD_MARGIN:g} either way (standard deviations {math.sqrt(SPREAD_MARGIN):g}x "
    "apart), and it is read equivalent (its secondary reading) when the same three tests, on one arm's values scaled "
    f"by {math.sqrt(SPREAD_MARGIN):g} and by 1/{math.sqrt(SPREAD_MARGIN):g}, place the ratio within "
    f"[1/{SPREAD_MARGIN:g}, {SPREAD_MARGIN:g}] at the level (two one-sided tests). A sequential plan looks after its first "
    "pass's seeds and again after each --seed-step more (quick: 4, 6, 8 seeds per arm) and stops at the first "
    "verdict; each of its K looks is read at level 1 - alpha/K (equal alpha spending), so the chance of a false verdict over all its looks is at most alpha. For an undetermined "
    f"comparison, seeds needed is the number of seeds per arm that would reach a verdict (the claim's decision or "
    f"its secondary reading, whichever needs fewer) with power {POWER:.0%} at the observed effect and spread.")


# --------------------------------------------------------------------------------------------------- checks


def _check_claim(claim: str) -> str:
    if claim not in CLAIMS:
        raise ValueError(f"claim {claim!r} is not one of {', '.join(CLAIMS)}")
    return claim


def _check_delta(delta: float) -> float:
    if not (isinstance(delta, (int, float, np.floating, np.integer)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta={delta!r}: the margin must be a finite number > 0 (in the metric's units)")
    return float(delta)


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float, np.floating)) and 0 < alpha < 1):
        raise ValueError(f"alpha={alpha!r}: must be a number strictly between 0 and 1")
    return float(alpha)


def _check_margin(margin: float) -> float:
    if not (isinstance(margin, (int, float, np.floating, np.integer)) and math.isfinite(margin) and margin > 1):
        raise ValueError(f"margin={margin!r}: a spread comparison's margin is a variance ratio > 1")
    return float(margin)


def _check_n(n: int, name: str = "n", low: int = 2) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < low:
        raise ValueError(f"{name}={n!r}: must be an integer >= {low}")
    return int(n)


# ----------------------------------------------------------------------------------------------- replicates


def merge_duplicates(values: Mapping[Hashable, Sequence[float]]) -> tuple[dict[Hashable, float], list[str]]:
    """One value per replicate id, with a warning for everything that was not taken as is.

    ``values`` maps a replicate id (a seed, or a (seed, fold) tuple before folds are averaged) to the values found for it: usually one, several
    when two run directories share the config and the seed. Non-finite values are dropped (one warning per id,
    with the count); an id left with no value is dropped (its warning says so); several finite values are merged
    into their mean (one warning per id naming it and the count). None counts as non-finite. Returns
    (id -> value, warnings).
    """
    merged: dict[Hashable, float] = {}
    warnings: list[str] = []
    for rid, vals in values.items():
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence):
            raise ValueError(f"replicate {rid!r}: expected a sequence of values, got {type(vals).__name__} {vals!r}")
        floats = [math.nan if v is None else float(v) for v in vals]  # None: a metric the run never wrote
        finite = [v for v in floats if math.isfinite(v)]
        if len(finite) < len(floats):
            bad = [v for v in floats if not math.isfinite(v)]
            left = "the replicate is left out" if not finite else f"{len(finite)} kept"
            warnings.append(f"replicate {rid!r}: dropped {len(bad)} non-finite value(s) {bad}; {left}")
        if not finite:
            continue
        if len(finite) > 1:
            warnings.append(f"replicate {rid!r}: {len(finite)} values (runs with the same config and replicate) "
                            f"merged into their mean")
        merged[rid] = float(np.mean(finite))
    return merged, warnings


# ----------------------------------------------------------------------------------------- interval reading


def interval(effect, se, df, alpha: float):
    """Two-sided 1 - alpha t interval effect +- t_{1 - alpha/2, df} * se (``scipy.stats.t.interval``; arrays work).

    For a paired comparison these are the numbers of ``scipy.stats.ttest_rel(...).confidence_interval(1 - alpha)``;
    ``compare``, ``holm`` and the sequential looks all read their intervals from it.
    """
    lo, hi = stats.t.interval(1 - np.asarray(alpha, dtype=float), df, loc=effect, scale=se)
    return lo, hi


def claim_p(claim: str, effect, se, df, delta: float):
    """The smallest alpha at which the 1 - alpha interval reaches the claim's decision (arrays work).

    superiority: the two-sided t test p of effect = 0 (the interval excludes 0, on either side);
    noninferiority: the two-sided p of effect = -delta (the interval excludes -delta: holds above, fails below;
    it is 2 x the one-sided p of H0: effect <= -delta whenever the estimate is above -delta);
    equivalence: 2 x the larger of the two one-sided (TOST) p values of H0: effect <= -delta and H0: effect >= delta,
    capped at 1 (the interval lies within +-delta). From ``scipy.stats.t``.
    """
    _check_claim(claim)
    effect, se, df = (np.asarray(x, dtype=float) for x in (effect, se, df))
    if claim == "superiority":
        p = 2 * stats.t.sf(np.abs(effect) / se, df)
    elif claim == "noninferiority":
        p = 2 * stats.t.sf(np.abs(effect + delta) / se, df)
    else:
        above_low = stats.t.sf((effect + delta) / se, df)  # H0: effect <= -delta
        below_high = stats.t.cdf((effect - delta) / se, df)  # H0: effect >= delta
        p = np.minimum(1.0, 2 * np.maximum(above_low, below_high))
    return p[()] if p.ndim == 0 else p


def read(claim: str, lo, hi, delta: float, *, primary=True, secondary: bool = True):
    """The verdict of an interval [lo, hi] (arrays work): holds, fails, equivalent or undetermined.

    superiority: holds if lo > 0, fails if hi < 0, else (secondary reading) equivalent if -delta < lo and hi < delta.
    noninferiority: holds if lo > -delta, fails if hi < -delta (no secondary reading).
    equivalence: equivalent if -delta < lo and hi < delta, else (secondary reading) fails if lo > delta or
    hi < -delta: shown to differ by more than the margin.
    ``primary`` (bool or boolean array) False skips the primary decision (Holm left it undecided); ``secondary``
    False skips the secondary one. A nan interval is undetermined.
    """
    _check_claim(claim)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    primary = np.asarray(primary, dtype=bool)
    inside = (lo > -delta) & (hi < delta)
    if claim == "superiority":
        conds = [primary & (lo > 0), primary & (hi < 0), secondary & inside]
        choices = ["holds", "fails", "equivalent"]
    elif claim == "noninferiority":
        conds, choices = [primary & (lo > -delta), primary & (hi < -delta)], ["holds", "fails"]
    else:
        conds = [primary & inside, secondary & ((lo > delta) | (hi < -delta))]
        choices = ["equivalent", "fails"]
    out = np.select(conds, choices, default="undetermined")
    return str(out) if out.ndim == 0 else out


def _reason(claim: str, verdict: str, lo: float, hi: float, delta: float, alpha: float) -> str:
    ci = f"{100 * (1 - alpha):.4g}% CI [{lo:.3g}, {hi:.3g}]"
    margin = f"+-{delta:g}"
    if claim == "superiority":
        return {"holds": f"{ci} above 0", "fails": f"{ci} below 0", "equivalent": f"{ci} within {margin}",
                "undetermined": f"{ci} contains 0"}[verdict]
    if claim == "noninferiority":
        return {"holds": f"{ci} above -{delta:g}", "fails": f"{ci} below -{delta:g}",
                "undetermined": f"{ci} contains -{delta:g}"}[verdict]
    return {"equivalent": f"{ci} within {margin}", "fails": f"{ci} outside {margin}",
            "undetermined": f"{ci} crosses {margin}"}[verdict]


# ----------------------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """One comparison of side A with side B under a claim, read at level 1 - alpha_used.

    effect: mean A - mean B (paired: the mean of the per-replicate differences, the same number). sd: the spread
    used for planning: paired, the sample sd of the differences (ddof=1); unpaired, sqrt((s_a^2 + s_b^2) / 2), the
    root mean square of the two sample sds, so that sd * sqrt(2/n) is the standard error at n seeds per arm.
    se: the standard error of the effect (paired sd/sqrt(n); unpaired Welch's sqrt(s_a^2/n_a + s_b^2/n_b)); df: the
    test's degrees of freedom (paired n - 1; unpaired min(n_a, n_b) - 1, Hsu's). [ci_low, ci_high]: the two-sided
    1 - alpha_used t interval. p: ``claim_p``, the smallest alpha at which the interval reaches the claim's
    decision. seeds_needed: for an undetermined verdict, seeds per arm (pairs when paired) for power ``POWER`` at
    level alpha_used at the observed effect and sd; None when decided or not computable (n<2, zero spread, not
    reachable by MAX_N).
    """

    claim: str
    delta: float
    n_a: int
    n_b: int
    paired: bool
    effect: float
    ci_low: float
    ci_high: float
    alpha_used: float
    p: float
    verdict: str
    reason: str
    seeds_needed: int | None
    sd: float
    df: float
    se: float

    @property
    def decided(self) -> bool:
        return self.verdict != "undetermined"

    @property
    def readable(self) -> bool:
        """False when no interval exists (n<2, zero spread): no level can decide it."""
        return math.isfinite(self.se) and self.se > 0 and math.isfinite(self.df)


def _side(values: Mapping[Hashable, float], name: str) -> dict[Hashable, float]:
    out = {}
    for rid, v in values.items():
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"side {name}, replicate {rid!r}: value {v} is not finite (clean it with "
                             f"merge_duplicates first)")
        out[rid] = v
    return out


def no_spread(a, b, *, paired: bool):
    """True for each row of a and b (1-D: one comparison) without spread to judge an effect against: every paired
    difference equal (paired), or each side's values equal (unpaired), to within SPREAD_RTOL of the largest |value|
    of the row, so that rounding in a subtraction does not count as spread."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    tol = SPREAD_RTOL * np.maximum(np.abs(a).max(axis=-1), np.abs(b).max(axis=-1))
    if paired:
        return np.ptp(a - b, axis=-1) <= tol
    return (np.ptp(a, axis=-1) <= tol) & (np.ptp(b, axis=-1) <= tol)


def summarize(a, b, *, paired: bool):
    """(effect, sd, se, df) of the rows of a and b (1-D: one comparison; 2-D: one per row), n >= 2 a side.

    paired: effect = mean of the differences, sd = their sample sd, se = sd/sqrt(n), df = n - 1 (the numbers of
    ``scipy.stats.ttest_rel``). unpaired: effect = mean A - mean B, se = sqrt(s_a^2/n_a + s_b^2/n_b) (Welch's, as in
    ``scipy.stats.ttest_ind(equal_var=False)``), sd = sqrt((s_a^2 + s_b^2)/2), df = min(n_a, n_b) - 1 (Hsu).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n_a, n_b = a.shape[-1], b.shape[-1]
    if paired:
        diff = a - b
        sd = np.std(diff, axis=-1, ddof=1)
        return diff.mean(axis=-1), sd, sd / math.sqrt(n_a), np.full_like(sd, n_a - 1.0)
    var_a, var_b = np.var(a, axis=-1, ddof=1), np.var(b, axis=-1, ddof=1)
    se = np.sqrt(var_a / n_a + var_b / n_b)
    return (a.mean(axis=-1) - b.mean(axis=-1), np.sqrt((var_a + var_b) / 2), se,
            np.full_like(se, min(n_a, n_b) - 1.0))


def _plan(effect: float, sd: float, claim: str, delta: float, alpha: float, paired: bool,
          secondary: bool = True) -> int | None:
    """Seeds per arm to reach a verdict with power POWER at the observed effect and spread: the claim's decision
    or, with ``secondary``, its secondary reading, whichever needs fewer (a sequential plan stops on either):
    superiority's "equivalent" (the interval within +-delta), equivalence's "fails" (beyond the margin on the
    effect's side: superiority of |effect| - delta)."""
    if not (math.isfinite(effect) and math.isfinite(sd) and sd > 0):
        return None
    needs = [seeds_needed(effect, sd, claim=claim, delta=delta, alpha=alpha, paired=paired)]
    if secondary and claim == "superiority":
        needs.append(seeds_needed(effect, sd, claim="equivalence", delta=delta, alpha=alpha, paired=paired))
    elif secondary and claim == "equivalence" and abs(effect) > delta:
        needs.append(seeds_needed(abs(effect) - delta, sd, claim="superiority", delta=delta, alpha=alpha,
                                  paired=paired))
    return min((n for n in needs if n is not None), default=None)


def compare(a: Mapping[Hashable, float], b: Mapping[Hashable, float], *, claim: str, delta: float,
            alpha: float = ALPHA) -> Comparison:
    """Compare side A with side B (replicate id -> value, one value per id: see ``merge_duplicates``).

    Paired t test (on the common ids, in A's order) when both sides hold the same ids and at least 2 of them;
    otherwise Welch's statistic with Hsu's df (``summarize``). The interval is ``interval`` at level 1 - alpha (for
    the paired test, the numbers of scipy's ``ttest_rel(...).confidence_interval(1 - alpha)``), read by ``read``.
    Fewer than 2 replicates on a side (or pairs): undetermined, reason "n<2", nan interval. No spread at all
    (every difference equal when paired, every value of each side equal when not): the t interval does not exist,
    so undetermined with the exact difference in the reason, nan interval and p (scipy would return an infinite
    statistic and an interval of width 0).
    """
    _check_claim(claim)
    delta, alpha = _check_delta(delta), _check_alpha(alpha)
    a, b = _side(a, "A"), _side(b, "B")
    paired = set(a) == set(b) and len(a) >= 2
    xa = np.array(list(a.values()))
    xb = np.array([b[k] for k in a]) if paired else np.array(list(b.values()))
    n_a, n_b = len(xa), len(xb)
    nan = math.nan
    effect = float(xa.mean() - xb.mean()) if n_a and n_b else nan
    base = dict(claim=claim, delta=delta, n_a=n_a, n_b=n_b, paired=paired, effect=effect, alpha_used=alpha)
    if n_a < 2 or n_b < 2:
        return Comparison(**base, ci_low=nan, ci_high=nan, p=nan, verdict="undetermined",
                          reason=f"n<2: {n_a} replicate(s) for A, {n_b} for B", seeds_needed=None, sd=nan,
                          df=nan, se=nan)
    if bool(no_spread(xa, xb, paired=paired)):
        what = "every paired difference is" if paired else "each side is constant and the difference is"
        return Comparison(**base, ci_low=nan, ci_high=nan, p=nan, verdict="undetermined",
                          reason=f"zero spread: {what} {effect:.6g} (to within {SPREAD_RTOL:g} of the values' "
                                 f"size), so there is no t interval (the replicates show no noise to judge it "
                                 f"against)",
                          seeds_needed=None, sd=0.0, df=nan, se=0.0)
    _, sd, se, df = (float(x) for x in summarize(xa, xb, paired=paired))
    lo, hi = (float(x) for x in interval(effect, se, df, alpha))
    verdict = read(claim, lo, hi, delta)
    return Comparison(**base, ci_low=lo, ci_high=hi, p=float(claim_p(claim, effect, se, df, delta)),
                      verdict=verdict, reason=_reason(claim, verdict, lo, hi, delta, alpha),
                      seeds_needed=None if verdict != "undetermined" else _plan(effect, sd, claim, delta, alpha,
                                                                                paired),
                      sd=sd, df=df, se=se)


def reread(c: Comparison, alpha: float, *, primary: bool = True, secondary: bool = True,
           note: str = "") -> Comparison:
    """``c`` read at level 1 - alpha: its interval recomputed (``interval``), its verdict, reason and plan.

    ``primary``/``secondary`` as in ``read``; ``note`` is put in front of the reason. A comparison without an
    interval (n<2, zero spread) keeps its verdict and reason, with alpha_used updated.
    """
    alpha = _check_alpha(alpha)
    prefix = f"{note}: " if note else ""
    if not c.readable:
        return replace(c, alpha_used=alpha, reason=prefix + c.reason)
    lo, hi = (float(x) for x in interval(c.effect, c.se, c.df, alpha))
    verdict = read(c.claim, lo, hi, c.delta, primary=primary, secondary=secondary)
    return replace(c, ci_low=lo, ci_high=hi, alpha_used=alpha, verdict=verdict,
                   reason=prefix + _reason(c.claim, verdict, lo, hi, c.delta, alpha),
                   seeds_needed=None if verdict != "undetermined" else _plan(c.effect, c.sd, c.claim, c.delta,
                                                                             alpha, c.paired, secondary))


# ------------------------------------------------------------------------------------------- multiplicity


def releases(claim: str, secondary: bool = True) -> bool:
    """Whether a decided comparison of this claim hands its share of alpha on (see ``holm``)."""
    _check_claim(claim)
    return claim == "noninferiority" or not secondary


def holm_levels(p, release, alpha: float = ALPHA):
    """Holm's step-down with release flags, vectorised over families: (levels, decided), each shaped like ``p``.

    ``p``: (m,) or (N, m) claim p values; nan marks a comparison that cannot be read (no runs, n<2, its baseline
    set apart): it is never decided and still counts in m, so that which comparisons could be read (which can depend
    on the outcome) never raises the others' levels.
    ``release``: (m,) booleans, whether a decided comparison hands its share on. With m comparisons (readable or
    not) of which r decided ones have released their share, the smallest remaining p is decided if
    p <= alpha/(m - r), at that level; the first that is not stops the procedure and every undecided comparison
    gets the level alpha/(m - r) reached there. With every flag True this is Holm's procedure; with every flag
    False, Bonferroni.
    """
    alpha = _check_alpha(alpha)
    p = np.asarray(p, dtype=float)
    one = p.ndim == 1
    p = np.atleast_2d(p)
    release = np.broadcast_to(np.asarray(release, dtype=bool), p.shape)
    readable = np.isfinite(p)
    m = p.shape[1]
    order = np.argsort(np.where(readable, p, np.inf), axis=1, kind="stable")
    ps = np.take_along_axis(np.where(readable, p, np.inf), order, axis=1)
    rel = np.take_along_axis(release, order, axis=1)
    released_before = np.cumsum(rel, axis=1) - rel
    with np.errstate(divide="ignore"):
        thresh = alpha / np.maximum(m - released_before, 1)
    decided_sorted = np.cumprod(ps <= thresh, axis=1).astype(bool)
    r_final = np.sum(decided_sorted & rel, axis=1, keepdims=True)
    final = alpha / np.maximum(m - r_final, 1)
    levels_sorted = np.where(decided_sorted, thresh, final)
    levels, decided = np.empty_like(levels_sorted), np.empty_like(decided_sorted)
    np.put_along_axis(levels, order, levels_sorted, axis=1)
    np.put_along_axis(decided, order, decided_sorted, axis=1)
    return (levels[0], decided[0]) if one else (levels, decided)


def holm(comparisons: Sequence[Comparison], alpha: float = ALPHA, *, secondary: bool = True) -> list[Comparison]:
    """The report's primary comparisons corrected together: chance of any false verdict among them <= alpha.

    Step-down on each comparison's ``p`` (``holm_levels``): a decided comparison is read from its interval at the
    level at which it was decided (1 - alpha/(m - r)), where its primary decision is reached by construction; the
    undecided ones are read at the level where the procedure stopped, which can give only a secondary reading.
    A decided noninferiority comparison releases its share (r grows). A superiority or equivalence comparison
    never does when ``secondary`` is True (the default): its secondary reading ("equivalent", resp. "fails") is
    false when the true effect is on the far side of the margin while its primary null is false, and a
    comparison that might still make a false reading cannot give its alpha away (releasing it lets the family
    reach nearly 2 x alpha: 0.085 at m = 6 in the tests). ``secondary=False`` drops those readings (they come
    out undetermined) and every decided comparison releases: Holm's procedure proper, whose directional errors
    are then covered only as described for noninferiority below.

    Why it holds (any dependence between comparisons): let J be the comparisons whose primary null is true
    (superiority: effect 0; noninferiority: -delta; equivalence: |effect| >= delta) and K those with a secondary
    reading whose primary null is false. Each of these |J| + |K| intervals misses its true effect at level 1 -
    alpha/(|J| + |K|) with probability at most alpha/(|J| + |K|), so all cover with probability >= 1 - alpha. Then
    no comparison of J is decided, since only decided comparisons outside J and K can have released, which keeps
    every level <= alpha/(|J| + |K|); so every verdict of J and K comes from an interval that covers the truth and
    is true. What remains are the released noninferiority verdicts, whose only possible error is the direction
    (holds at an effect below -delta or fails above it), as in Holm's procedure with directional decisions
    (controlled for independent t statistics: Shaffer 1980, Finner 1999; not proved for dependent ones).
    Comparisons that cannot be read (n<2, zero spread) stay undetermined and still count in m. The returned list
    is in the input order; p is unchanged, alpha_used is the level each was read at.
    """
    alpha = _check_alpha(alpha)
    if not comparisons:
        return []
    p = np.array([c.p if c.readable else math.nan for c in comparisons], dtype=float)
    release = np.array([releases(c.claim, secondary) for c in comparisons])
    levels, decided = holm_levels(p, release, alpha)
    m = len(p)  # every comparison counts, read or not
    out = []
    for c, level, dec in zip(comparisons, levels, decided):
        note = f"Holm {'decided' if dec else 'undecided'} at alpha {level:.3g} ({m} comparisons)"
        out.append(reread(c, float(level), primary=bool(dec), secondary=secondary, note=note))
    return out


# ---------------------------------------------------------------------------------------------------- power


def _design(n: int, sd: float, paired: bool) -> tuple[int, int, float]:
    """(df of the variance estimate, df of the critical value, true standard error) at n seeds per arm.

    paired: n - 1, n - 1, sd/sqrt(n). unpaired at equal n and equal variances: Welch's se is then the pooled se,
    whose variance estimate has 2n - 2 df, while the test refers it to t with n - 1 df (Hsu); se = sd*sqrt(2/n).
    """
    return (n - 1, n - 1, sd / math.sqrt(n)) if paired else (2 * n - 2, n - 1, sd * math.sqrt(2 / n))


def _tost_power(effect: float, delta: float, sigma: float, df: int, crit: float) -> float:
    """P(-delta < lo and hi < delta), lo/hi = effect-hat -+ crit * se-hat, for effect-hat ~ N(effect, sigma^2) and
    se-hat = sigma sqrt(V / df), V ~ chi2(df) independent of it.

    Integrated over u = chi2.cdf(V), so that the integrand is a smooth probability on [0, u_max] at any df, where
    u_max is the point beyond which the interval is wider than the margin band; 128-point Gauss-Legendre
    (``scipy.integrate.fixed_quad``) agrees with adaptive ``quad`` to about 1e-5.
    """
    u_max = float(stats.chi2.cdf(df * (delta / (crit * sigma)) ** 2, df))

    def inside(u: np.ndarray) -> np.ndarray:
        half = crit * np.sqrt(stats.chi2.ppf(u, df) / df)
        return np.maximum(0.0, stats.norm.cdf((delta - effect) / sigma - half)
                          - stats.norm.cdf((-delta - effect) / sigma + half))

    value, _ = integrate.fixed_quad(inside, 0.0, u_max, n=128)
    return float(min(1.0, max(0.0, value)))


def power_of(n: int, effect: float, sd: float, *, claim: str, delta: float, alpha: float = ALPHA,
             paired: bool) -> float:
    """Probability that n seeds per arm (n pairs when paired) reach the claim's decision at level alpha.

    The decision is the one on the side of the true effect: superiority, the interval excludes 0 on that side
    (holds for effect > 0); noninferiority, it excludes -delta on that side (holds for effect > -delta);
    equivalence, it lies within +-delta. Paired: the paired t test, n - 1 df. Unpaired: equal n, both arms with
    sd; Welch's statistic is then the pooled two-sample t (2n - 2 df, noncentral under the effect), compared with
    the critical value of t with n - 1 df that ``compare`` uses (Hsu). superiority and noninferiority use the
    noncentral t (``scipy.stats.nct``), exact under these assumptions; equivalence integrates the normal
    probability of the effect estimate over the chi-squared distribution of the variance estimate
    (``scipy.stats.norm``, ``chi2``, ``scipy.integrate.fixed_quad``), exact too, since the two TOST statistics
    share that estimate.
    """
    _check_claim(claim)
    n, delta, alpha = _check_n(n), _check_delta(delta), _check_alpha(alpha)
    if not (math.isfinite(effect) and math.isfinite(sd) and sd > 0):
        raise ValueError(f"effect={effect!r}, sd={sd!r}: need a finite effect and a finite sd > 0")
    df_var, df_crit, sigma = _design(n, sd, paired)
    crit = float(stats.t.ppf(1 - alpha / 2, df_crit))
    if claim == "equivalence":
        return _tost_power(effect, delta, sigma, df_var, crit)
    boundary = 0.0 if claim == "superiority" else -delta
    return float(stats.nct.sf(crit, df_var, abs(effect - boundary) / sigma))


def seeds_needed(effect: float, sd: float, *, claim: str, delta: float, alpha: float = ALPHA, paired: bool,
                 power: float = POWER, max_n: int = MAX_N) -> int | None:
    """The smallest n >= 2 per arm (pairs when paired) with ``power_of(n, ...) >= power``; None beyond max_n.

    None also means not reachable at all: a superiority effect of 0, a noninferiority effect of exactly -delta, an
    equivalence effect at or beyond the margin. Power grows with n, so the search bisects.
    """
    if not 0 < power < 1:
        raise ValueError(f"power={power!r}: must be strictly between 0 and 1")
    max_n = _check_n(max_n, "max_n")

    def enough(n: int) -> bool:
        return power_of(n, effect, sd, claim=claim, delta=delta, alpha=alpha, paired=paired) >= power

    if enough(2):
        return 2
    if not enough(max_n):
        return None
    lo, hi = 2, max_n  # enough(lo) is False, enough(hi) is True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


# ----------------------------------------------------------------------------------------- batch (simulation)


@dataclass(frozen=True)
class Batch:
    """``compare`` over N comparisons at once (rows of (N, n) arrays): arrays of length N."""

    effect: np.ndarray
    se: np.ndarray
    df: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p: np.ndarray
    verdict: np.ndarray


def batch_compare(a: np.ndarray, b: np.ndarray, *, claim: str, delta: float, alpha: float = ALPHA,
                  paired: bool) -> Batch:
    """The same procedure as ``compare`` for the rows of a (N, n_a) and b (N, n_b), vectorised (``summarize``).

    ``paired`` says which test (rows of a and b are then the same replicates, in order). For simulations; rows
    with no spread come out undetermined with a nan interval and p, like ``compare``; n_a, n_b must be >= 2.
    """
    _check_claim(claim)
    delta, alpha = _check_delta(delta), _check_alpha(alpha)
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    _check_n(a.shape[1], "n_a")
    _check_n(b.shape[1], "n_b")
    effect, _, se, df = summarize(a, b, paired=paired)
    se = np.where(no_spread(a, b, paired=paired), np.nan, se)
    lo, hi = interval(effect, se, df, alpha)
    p = claim_p(claim, effect, se, df, delta)
    return Batch(effect=effect, se=se, df=df, ci_low=lo, ci_high=hi, p=p, verdict=read(claim, lo, hi, delta))


# ------------------------------------------------------------------------------------------ spread and rates


@dataclass(frozen=True)
class VarianceTest:
    """var A / var B on pooled within-cell variances: the F test's two-sided p (``p_f``) and 1 - alpha interval of
    the ratio, the robust Brown-Forsythe (``p_robust``) and Fligner-Killeen (``p_rank``) tests' two-sided p, and
    ``p``, the p the verdict reads.

    reason is "" when computed, else says why p and the interval are nan.
    """

    var_a: float
    var_b: float
    df_a: int
    df_b: int
    ratio: float
    ci_low: float
    ci_high: float
    p: float
    alpha: float
    reason: str
    p_f: float = math.nan
    p_robust: float = math.nan
    p_rank: float = math.nan
    p_equiv: float = math.nan  # the secondary reading's p: spread alike within the margin (``spread_equivalence_p``)
    margin: float = SPREAD_MARGIN


def _pooled(groups: Sequence[Sequence[float]], name: str) -> tuple[float, int]:
    ss, df = 0.0, 0
    for i, g in enumerate(groups):
        x = np.asarray(g, dtype=float)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"side {name}, cell {i}: non-finite values {x[~np.isfinite(x)].tolist()}")
        if len(x) >= 2:
            if np.ptp(x) > SPREAD_RTOL * np.abs(x).max():  # else rounding in the mean, not spread
                ss += float(np.sum((x - x.mean()) ** 2))
            df += len(x) - 1
    return (ss / df if df else math.nan), df


class SpreadTests(NamedTuple):
    """The spread verdict's three tests on rows of values (``spread_tests``), each an array over the rows."""

    ratio: np.ndarray  # var A / var B (ddof 1)
    p_f: np.ndarray  # the F test's two-sided p
    p_robust: np.ndarray  # Brown-Forsythe's (Levene's about the medians) two-sided p; nan: no spread to test
    robust_diff: np.ndarray  # mean |x - median| of A minus that of B
    p_rank: np.ndarray  # Fligner-Killeen's (about the medians) two-sided p; nan likewise
    rank_diff: np.ndarray  # mean normal score of the ranked |x - median| of A minus that of B
    p: np.ndarray  # the verdict's p: the largest of the three when all say the same side varies more, else 1


def spread_tests(a: Any, b: Any) -> SpreadTests:
    """The F, Brown-Forsythe and Fligner-Killeen tests of equal spread of a and b, row by row (a: (rows, n_a),
    b: (rows, n_b), n >= 2; one row: 1-D), equal to ``scipy.stats.f``, ``levene(center='median')`` and
    ``fligner(center='median')`` on each row (tested), vectorised so that the null simulations that check the
    verdict's level run the verdict's own code.

    Brown-Forsythe's statistic with two samples is the square of the pooled two-sample t statistic of the absolute
    deviations from each sample's median; Fligner-Killeen's ranks those deviations over both samples, scores rank r
    as Phi^-1(1/2 + r / (2(N + 1))) and compares the samples' mean scores (chi2 with 1 df). Both robust p are nan
    where no deviation differs from another beyond rounding (``SPREAD_RTOL``): nothing to rank or compare; p is nan
    there and where a side has no spread beyond rounding (as ``variance_test``: no F test, p_f nan too).

    Shapes: a (rows, n_a) or (n_a,), b likewise -> each field (rows,) (a float array of one row for 1-D input).
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    (rows, na), nb = a.shape, b.shape[1]
    if b.shape[0] != rows or min(na, nb) < 2:
        raise ValueError(f"spread_tests needs rows of >= 2 values a side, as many rows: got {a.shape} and {b.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = a.var(axis=1, ddof=1) / b.var(axis=1, ddof=1)
        p_f = np.minimum(1.0, 2 * np.minimum(stats.f.cdf(ratio, na - 1, nb - 1), stats.f.sf(ratio, na - 1, nb - 1)))
        za, zb = np.abs(a - np.median(a, axis=1, keepdims=True)), np.abs(b - np.median(b, axis=1, keepdims=True))
        robust_diff = za.mean(axis=1) - zb.mean(axis=1)
        z = np.concatenate([za, zb], axis=1)
        size = np.maximum(np.abs(a).max(axis=1), np.abs(b).max(axis=1))
        flat = np.ptp(z, axis=1) <= SPREAD_RTOL * size  # levene: 0 / 0
        constant = (np.ptp(a, axis=1) <= SPREAD_RTOL * np.abs(a).max(axis=1)) | \
                   (np.ptp(b, axis=1) <= SPREAD_RTOL * np.abs(b).max(axis=1))  # a side without spread: no F test
        pooled = (za.var(axis=1, ddof=1) * (na - 1) + zb.var(axis=1, ddof=1) * (nb - 1)) / (na + nb - 2)
        t = robust_diff / np.sqrt(pooled * (1 / na + 1 / nb))
        p_robust = np.where(flat, np.nan, 2 * stats.t.sf(np.abs(t), na + nb - 2))
        n = na + nb
        score = stats.norm.ppf(0.5 + stats.rankdata(z, axis=1) / (2 * (n + 1)))
        sa, sb, mean = score[:, :na].mean(axis=1), score[:, na:].mean(axis=1), score.mean(axis=1)
        chi2 = (na * (sa - mean) ** 2 + nb * (sb - mean) ** 2) / score.var(axis=1, ddof=1)
        p_rank = np.where(flat, np.nan, stats.chi2.sf(chi2, 1))
    rank_diff = sa - sb
    up = ratio > 1
    agree = (ratio != 1) & (robust_diff != 0) & (rank_diff != 0) & (up == (robust_diff > 0)) & (up == (rank_diff > 0))
    p = np.where(agree, np.fmax(p_f, np.maximum(p_robust, p_rank)), 1.0)
    p = np.where(np.isnan(p_robust) | np.isnan(p_rank) | constant, np.nan, p)
    p_f = np.where(constant, np.nan, p_f)
    return SpreadTests(ratio, p_f, p_robust, robust_diff, p_rank, rank_diff, p)


def spread_equivalence_p(a: Any, b: Any, margin: float = SPREAD_MARGIN) -> np.ndarray:
    """The p of "a and b spread alike": var a / var b within [1/margin, margin], by two one-sided tests, each the
    verdict's three tests (``spread_tests``) on a's values scaled by s = sqrt(margin): a / s against b rejects
    "var a >= margin var b" when a / s varies less than b (all three tests agreeing), a * s against b rejects
    "var a <= var b / margin" when a * s varies more. p is the larger of the two tests' two-sided p (1 where a test
    points the other way), as an equivalence claim of means reads 2 x the larger one-sided p: the equivalence is
    decided at level alpha exactly when the two-sided 1 - alpha readings of both scaled comparisons lie beyond the
    margins. The three tests are scale-equivariant (F's ratio scales by s^2, the deviations from a median by s), so
    at a true ratio on the margin the scaled arms spread alike and each test keeps the level the null simulations
    give the verdict (equal seeds a side; ``benchmarks/spread_calibration.py --margin``). nan where ``spread_tests``
    reads no p.

    Shapes: a (rows, n_a) or (n_a,), b likewise -> (rows,).
    """
    s = math.sqrt(_check_margin(margin))
    a = np.asarray(a, dtype=float)
    below, above = spread_tests(a / s, b), spread_tests(a * s, b)
    p_below = np.where(below.ratio < 1, below.p, np.where(np.isnan(below.p), np.nan, 1.0))
    p_above = np.where(above.ratio > 1, above.p, np.where(np.isnan(above.p), np.nan, 1.0))
    return np.maximum(p_below, p_above)  # nan where either reads none


def variance_test(a_groups: Sequence[Sequence[float]], b_groups: Sequence[Sequence[float]],
                  alpha: float = ALPHA, margin: float = SPREAD_MARGIN) -> VarianceTest:
    """Spread of side A vs side B, each side pooling several cells (e.g. widths): the F test and two robust tests
    (Brown-Forsythe, Fligner-Killeen), and a verdict only where all three agree.

    Each side's variance is the pooled within-cell variance sum of squares about each cell's mean / df, with
    df = sum of (n - 1) over its cells (cells of one value add nothing). ratio = var_a / var_b; under normality
    ratio / (true ratio) ~ F(df_a, df_b) (``scipy.stats.f``), which gives the two-sided p of "equal spread",
    ``p_f`` = 2 x min(F.cdf, F.sf) capped at 1, and the interval [ratio / F_{1-alpha/2}, ratio / F_{alpha/2}] of
    the true ratio. The F test is exact under normality and badly liberal with heavy tails (a DEQ arm with an
    occasional bad seed: at 12 seeds and alpha 0.0024 it decides 28x too often under t(3) tails, 60x with 10% of
    seeds at 5x the spread); Brown-Forsythe's with it is still liberal under skewed seeds at a family's level
    (chi2(1) seeds: 1.3-1.7x alpha at 10 seeds and levels 0.0021-0.0005). So the verdict reads p = the largest of the three (``spread_tests``) when all three say the same side
    varies more and p = 1 when they do not: a decision needs all three, and ``MIN_SPREAD_N`` (10) values a side.
    There the null simulations (benchmarks/spread_calibration.py, 2,000,000 a cell; tests/reports/test_stats.py)
    keep its rate within alpha under normal, t(3), contaminated, exponential, lognormal, chi2(1) and Weibull(0.5)
    continuous seeds at levels 0.0167 to 0.0005, up to the simulations' error (at most 1.00x in the committed table,
    +-0.03x between draws: Weibull(0.5) and chi2(1) at 10 seeds sit at alpha); with discrete
    outcomes that tie (a small validation split's accuracies) strongly skewed seeds still decide up to 1.55x alpha at
    a family's level (chi2(1) at 2.5-3 grid steps of standard deviation; ``--ties``). With fewer values, p is nan and
    p_f and the interval are given. The robust tests take one cell per side; with several, p is nan (no verdict)
    likewise. Where p is read, ``p_equiv`` is the secondary reading's (``spread_equivalence_p`` at ``margin``, a
    variance ratio): at most alpha when the three tests place the ratio within [1/margin, margin].
    """
    alpha, margin = _check_alpha(alpha), _check_margin(margin)
    (va, dfa), (vb, dfb) = _pooled(a_groups, "A"), _pooled(b_groups, "B")
    nan = math.nan
    base = dict(var_a=va, var_b=vb, df_a=dfa, df_b=dfb, alpha=alpha, margin=margin)
    if dfa == 0 or dfb == 0:
        which = " and ".join(s for s, d in (("A", dfa), ("B", dfb)) if d == 0)
        return VarianceTest(**base, ratio=nan, ci_low=nan, ci_high=nan, p=nan,
                            reason=f"no cell with >= 2 values on side {which} (df=0)")
    if va == 0 or vb == 0:
        which = " and ".join(s for s, v in (("A", va), ("B", vb)) if v == 0)
        return VarianceTest(**base, ratio=va / vb if vb else nan, ci_low=nan, ci_high=nan, p=nan,
                            reason=f"zero spread on side {which}: no F test")
    ratio = va / vb
    p_f = min(1.0, 2 * min(float(stats.f.cdf(ratio, dfa, dfb)), float(stats.f.sf(ratio, dfa, dfb))))
    lo = ratio / float(stats.f.ppf(1 - alpha / 2, dfa, dfb))
    hi = ratio / float(stats.f.ppf(alpha / 2, dfa, dfb))
    cells = [[g for g in side if len(g) >= 2] for side in (a_groups, b_groups)]
    if any(len(c) != 1 for c in cells):
        return VarianceTest(**base, ratio=ratio, ci_low=lo, ci_high=hi, p=nan, p_f=p_f,
                            reason="the robust tests take one cell of >= 2 values per side: no verdict")
    if min(len(cells[0][0]), len(cells[1][0])) < MIN_SPREAD_N:
        return VarianceTest(**base, ratio=ratio, ci_low=lo, ci_high=hi, p=nan, p_f=p_f,
                            reason=f"a spread verdict needs >= {MIN_SPREAD_N} values a side (has "
                                   f"{len(cells[0][0])} and {len(cells[1][0])}): with fewer its level is not kept "
                                   "under skewed seed outcomes")
    tests = SpreadTests(*(float(field[0]) for field in spread_tests(cells[0][0], cells[1][0])))
    if not math.isfinite(tests.p):
        return VarianceTest(**base, ratio=ratio, ci_low=lo, ci_high=hi, p=nan, p_f=p_f, p_robust=tests.p_robust,
                            p_rank=tests.p_rank,
                            reason="no spread in the deviations from the cell medians: no robust test")
    p_equiv = float(spread_equivalence_p(cells[0][0], cells[1][0], margin)[0])
    return VarianceTest(**base, ratio=ratio, ci_low=lo, ci_high=hi, p=tests.p, p_f=p_f, p_robust=tests.p_robust,
                        p_rank=tests.p_rank, p_equiv=p_equiv, reason="")


def variance_seeds_needed(ratio: float, *, alpha: float = ALPHA, power: float = POWER,
                          max_n: int = MAX_N, margin: float = SPREAD_MARGIN) -> int | None:
    """Seeds per arm (one cell each) for the F test at level alpha to reach a spread comparison's decision or its
    secondary reading, whichever needs fewer, at a true variance ratio ``ratio``, with the given power: the smallest
    n >= ``MIN_SPREAD_N`` where, with F ~ F(n-1, n-1) (``scipy.stats.f``), either the two-sided test of equal
    spread rejects, P(F > F_{1-alpha/2} / r) + P(F < F_{alpha/2} / r), or its 1 - alpha interval
    [r F / F_{1-alpha/2}, r F / F_{alpha/2}] lies within [1/margin, margin], reaches ``power``. None for a
    non-finite ratio or one <= 0, or beyond max_n. A lower bound under normal data: the verdict also needs the
    Brown-Forsythe and Fligner-Killeen tests (``variance_test``), which have less power."""
    alpha, margin = _check_alpha(alpha), _check_margin(margin)
    if not (math.isfinite(ratio) and ratio > 0):
        return None
    for n in range(MIN_SPREAD_N, max_n + 1):
        df = n - 1
        hi, lo = float(stats.f.ppf(1 - alpha / 2, df, df)), float(stats.f.ppf(alpha / 2, df, df))
        differ = float(stats.f.sf(hi / ratio, df, df)) + float(stats.f.cdf(lo / ratio, df, df))
        low, high = hi / margin / ratio, lo * margin / ratio  # F's range where the interval lies within the margins
        alike = max(0.0, float(stats.f.cdf(high, df, df)) - float(stats.f.cdf(low, df, df)))
        if max(differ, alike) >= power:
            return n
    return None


@dataclass(frozen=True)
class SpreadTest:
    """Brown-Forsythe test (Levene's test about the medians) of equal spread of two samples."""

    statistic: float
    p: float


def brown_forsythe(a: Sequence[float], b: Sequence[float]) -> SpreadTest:
    """``scipy.stats.levene(a, b, center='median')``: robust to non-normal tails; needs >= 2 values per sample."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    for name, x in (("A", a), ("B", b)):
        if len(x) < 2 or not np.all(np.isfinite(x)):
            raise ValueError(f"sample {name} = {x.tolist()}: need >= 2 finite values")
    res = stats.levene(a, b, center="median")
    return SpreadTest(statistic=float(res.statistic), p=float(res.pvalue))


@dataclass(frozen=True)
class RateTest:
    """Fisher's exact test of two event rates (e.g. divergence): rate_a - rate_b and the two-sided p."""

    k_a: int
    n_a: int
    k_b: int
    n_b: int
    rate_a: float
    rate_b: float
    difference: float
    odds_ratio: float
    p: float
    alpha: float


def rate_test(k_a: int, n_a: int, k_b: int, n_b: int, alpha: float = ALPHA) -> RateTest:
    """k events among n runs on each side: ``scipy.stats.fisher_exact([[k_a, n_a-k_a], [k_b, n_b-k_b]])``.

    Exact at any n (the two-proportion normal test is not at a handful of runs); decided when p <= alpha (within a
    family, at the family's level). difference = k_a/n_a - k_b/n_b; odds_ratio is scipy's sample odds ratio.
    """
    alpha = _check_alpha(alpha)
    for name, k, n in (("A", k_a, n_a), ("B", k_b, n_b)):
        _check_n(n, f"n_{name.lower()}", low=1)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
            raise ValueError(f"k_{name.lower()}={k!r}: must be an integer count between 0 and n_{name.lower()}={n}")
    res = stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="two-sided")
    return RateTest(k_a=int(k_a), n_a=int(n_a), k_b=int(k_b), n_b=int(n_b), rate_a=k_a / n_a, rate_b=k_b / n_b,
                    difference=k_a / n_a - k_b / n_b, odds_ratio=float(res.statistic), p=float(res.pvalue),
                    alpha=alpha)


# ------------------------------------------------------------------------------------------------ sequential


def sequential_alpha(looks: int, alpha: float = ALPHA) -> list[float]:
    """Per-look levels of a group-sequential plan: equal (Bonferroni) spending, alpha/looks at each look.

    Valid for any correlation between looks (the union bound), and a look's level does not depend on what was
    seen before, so a resumed rerun reads each look the same way. Pocock / O'Brien-Fleming boundaries would spend
    less conservatively but rest on normal theory that does not hold for t statistics at 2-10 seeds.
    """
    looks, alpha = _check_n(looks, "looks", low=1), _check_alpha(alpha)
    return [alpha / looks] * looks


def plan_looks(n_start: int, n_max: int, step: int) -> list[int]:
    """Seeds per arm at each look: n_start, n_start + step, ..., and n_max as the last look (e.g. 2, 4, ..., 10)."""
    n_start, step = _check_n(n_start, "n_start"), _check_n(step, "step", low=1)
    n_max = _check_n(n_max, "n_max", low=n_start)
    looks = list(range(n_start, n_max + 1, step))
    return looks if looks[-1] == n_max else looks + [n_max]
