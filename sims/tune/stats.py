"""Statistics of an evaluation: Student's t quantile, 95% t-intervals and verdicts."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["t_interval", "t_quantile_975", "verdict"]

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile (table to 30 degrees of freedom, then the Cornish-Fisher
    expansion, accurate to 1e-4)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def t_interval(values) -> dict[str, float]:
    """Mean and 95% t-interval of independent samples:
    ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` with the sample standard deviation.

    **Returns:** ``{"mean", "lo", "hi", "sd", "n"}`` (``lo = hi = mean`` when ``n = 1``).
    """
    v = np.asarray(values, np.float64).ravel()
    n = v.size
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(np.mean(v))
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "sd": 0.0, "n": 1}
    sd = float(np.std(v, ddof=1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": n}


def verdict(delta: Mapping[str, float] | None) -> str:
    """The reading of a paired difference's t-interval (lower objective is better):
    ``"better"`` when it lies below 0, ``"worse"`` above, else ``"no significant
    difference"``; ``""`` for ``None``."""
    if delta is None:
        return ""
    if delta["hi"] < 0:
        return "better"
    if delta["lo"] > 0:
        return "worse"
    return "no significant difference"
