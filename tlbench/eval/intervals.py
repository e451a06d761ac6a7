"""The intervals `tlbench eval` reports: a bootstrap over images for the linear probe and k-NN (as
the report computes it for runs, `tlbench.report.stats`), and Student's t over episodes for few-shot
accuracies, alone and paired between two backbones.

The t distribution is computed here (its CDF through the regularised incomplete beta function, its
quantile by bisection), so scipy stays a development dependency.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LEVEL = 0.95


def bootstrap_interval(correct: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile-bootstrap interval of an accuracy, from each image's right/wrong
    (`tlbench.report.stats.image_resamples`: 2,000 resamples, seed 0, as the report's)."""
    from tlbench.report.stats import image_resamples

    draws = image_resamples(np.asarray(correct, dtype=bool)[None, :])[:, 0]
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for aa in (even, odd):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t (bisection on `t_cdf`, to 1e-10)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2


def t_interval(values: np.ndarray) -> dict[str, float]:
    """Mean, 95 % t-interval (mean +- t(0.975, n-1) sd / sqrt(n)) and sd of per-episode values."""
    v = np.asarray(values, dtype=np.float64)
    n, mean = len(v), float(v.mean())
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    half = t_quantile((1 + LEVEL) / 2, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "sd": sd, "n": n}


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """`a` against `b`, episode by episode: the mean difference with its 95 % t-interval and the
    two-sided paired t-test's p-value (1 where every difference is 0)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    out = t_interval(diff)
    sd, n = out["sd"], out["n"]
    if not sd > 0:
        p = 1.0 if out["mean"] == 0 else 0.0
    else:
        t = out["mean"] / (sd / math.sqrt(n))
        p = min(1.0, 2 * t_cdf(-abs(t), n - 1))
    return {"diff": out["mean"], "low": out["low"], "high": out["high"], "p_value": p, "episodes": n}
