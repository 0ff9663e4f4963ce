"""Summaries shared by the benchmarks: the median of per-repeat values and its distribution-free 95% interval."""

from __future__ import annotations

import math


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median: order statistics k and n - k + 1 of the sorted values (k from the
    normal approximation of Binomial(n, 1/2); `level` 0.95 only)."""
    if level != 0.95:
        raise ValueError("median_interval computes 95% intervals only")
    ordered, n = sorted(values), len(values)
    k = max(1, math.floor(n / 2 - 1.96 * math.sqrt(n) / 2))
    return ordered[k - 1], ordered[n - k]
