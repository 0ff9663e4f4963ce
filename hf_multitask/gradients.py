"""Where gradient surgery used to live; kept so that `from hf_multitask.gradients import ...` goes on working.

Everything is now in `hf_multitask/aggregators/` (one module per method, a registry, one `combine` path).
"""

from __future__ import annotations

from .aggregators import (
    GradientSurgery,
    aggregator_names,
    cosines_from_gram,
    segment_grams,
    segment_runs,
    task_cosines,
    visiting_orders,
)
from .aggregators.gradvac import gradvac, gradvac_coefficients
from .aggregators.pcgrad import pcgrad, pcgrad_coefficients

SURGERY_METHODS = aggregator_names()  # the built-in methods; `aggregator_names()` also lists later registrations

__all__ = [
    "SURGERY_METHODS", "GradientSurgery", "cosines_from_gram", "gradvac", "gradvac_coefficients", "pcgrad",
    "pcgrad_coefficients", "segment_grams", "segment_runs", "task_cosines", "visiting_orders",
]
