"""Parameters of verified MinHash LSH: the signature check's cut and the banding that feeds it.

Model: a pair of sets with Jaccard ``s`` has ``M ~ Binomial(num_perm, s)`` equal signature values (classic
MinHash; C-MinHash's estimate has no larger variance). A pair is kept when ``M >= min_matches``.

Cut: the rule that minimises datasketch's own criterion, ``fp_weight * FP + fn_weight * FN`` with FP the
integral over ``s`` in [0, threshold] of the probability of keeping a pair and FN the integral over
[threshold, 1] of the probability of dropping it (``s`` uniform, as in datasketch). Per value ``k`` of
``M`` the integrand is minimised by keeping ``k`` iff ``P(s >= t | M = k) >= fp_weight / (fp_weight +
fn_weight)``; with the uniform prior the posterior is Beta(k + 1, n - k + 1), and
``P(Beta(k + 1, n - k + 1) >= t) = P(Binomial(n + 1, t) <= k)``, increasing in ``k``: the cut is the
smallest such ``k``. With equal weights it is the median of Binomial(num_perm + 1, threshold).

Banding: the bands only decide which pairs get checked. Among ``rows`` = 1, 2, ... (``bands = num_perm //
rows``, the most that fit), the longest bands (fewest candidates to check) whose misses cost at most
``RECALL_LOSS`` of the pairs the check alone would keep, integrated over [threshold, 1]. The miss rate
uses ``P(check passes) * P(no band collides)``: both events increase with every equal value, so by the
Harris-FKG inequality the true loss is no larger than this bound.
"""

from __future__ import annotations

import functools
import math
from typing import Tuple

import numpy as np

#: At most this fraction of the pairs the signature check would keep may be lost to the banding
#: (integrated over Jaccard in [threshold, 1]).
RECALL_LOSS = 0.01

_GRID = 401  # Simpson's rule on an odd number of points


def _log_binom_coef(n: int) -> np.ndarray:
    k = np.arange(1, n + 1, dtype=np.float64)
    return np.concatenate([[0.0], np.cumsum(np.log((n - k + 1) / k))])


def _binom_cdf(n: int, p: float, k_max: int) -> np.ndarray:
    """``P(Binomial(n, p) <= k)`` for k = 0..k_max."""
    k = np.arange(n + 1, dtype=np.float64)
    if p <= 0.0:
        pmf = (k == 0).astype(np.float64)
    elif p >= 1.0:
        pmf = (k == n).astype(np.float64)
    else:
        pmf = np.exp(_log_binom_coef(n) + k * math.log(p) + (n - k) * math.log1p(-p))
    return np.cumsum(pmf)[: k_max + 1]


@functools.lru_cache(maxsize=256)
def verify_min_matches(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> int:
    """Fewest equal signature values (of ``num_perm``) for a pair to pass the check (see the module doc).

    Never above ``num_perm``: at ``threshold = 1`` identical signatures pass.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if not (fp_weight >= 0 and fn_weight >= 0 and math.isfinite(fp_weight) and math.isfinite(fn_weight)
            and fp_weight + fn_weight > 0):
        raise ValueError(f"weights must be two non-negative finite numbers, not both 0, got ({fp_weight}, {fn_weight})")
    target = fp_weight / (fp_weight + fn_weight)
    cdf = _binom_cdf(num_perm + 1, threshold, num_perm)
    # Rounding: a cumulative sum that should reach `target` may fall short by a few ulps.
    passing = np.nonzero(cdf >= target - 1e-12)[0]
    return int(passing[0]) if len(passing) else num_perm


def _pass_probability(num_perm: int, min_matches: int, s: np.ndarray) -> np.ndarray:
    """``P(Binomial(num_perm, s) >= min_matches)`` for each ``s``, in blocks to bound memory."""
    if min_matches <= 0:
        return np.ones_like(s)
    k = np.arange(min_matches, num_perm + 1, dtype=np.float64)
    coef = _log_binom_coef(num_perm)[min_matches:]
    out = np.empty_like(s)
    step = max(1, (1 << 22) // len(k))
    for lo in range(0, len(s), step):
        x = np.clip(s[lo:lo + step], 1e-300, 1.0 - 1e-15)[:, None]
        out[lo:lo + step] = np.exp(coef + k * np.log(x) + (num_perm - k) * np.log1p(-x)).sum(axis=1)
    return np.minimum(out, 1.0)


def _simpson(y: np.ndarray, h: float) -> float:
    w = np.ones_like(y)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return float((w * y).sum() * h / 3.0)


@functools.lru_cache(maxsize=256)
def verify_bands_rows(threshold: float, num_perm: int, min_matches: int,
                      recall_loss: float = RECALL_LOSS) -> Tuple[int, int]:
    """(bands, rows) for the check ``M >= min_matches``: the longest bands whose misses stay within
    ``recall_loss`` of what the check keeps (see the module doc); one-value bands when none do."""
    s = np.linspace(threshold, 1.0, _GRID)
    h = (1.0 - threshold) / (_GRID - 1)
    keep = _pass_probability(num_perm, min_matches, s)
    kept = _simpson(keep, h)
    if kept <= 0.0:  # threshold 1: only identical signatures pass, one band of every value finds them all
        return (1, num_perm)
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        miss = np.exp(bands * np.log1p(-np.minimum(s ** rows, 1.0 - 1e-16)))  # no band collides
        if _simpson(keep * miss, h) > recall_loss * kept:
            break  # longer bands only miss more (up to the rounding of num_perm // rows)
        best = (bands, rows)
    return best
