"""Gradient aggregators: one module per method, a registry, and the `[T, P]` buffer with one `combine` path.

Importing this package registers the built-in methods (the import line below); `aggregator_names()` lists them.
The functions on `[T, P]` gradients (`pcgrad`, `gradvac`) are in their method's module.
"""

from . import aligned_mtl, dualproj, gradvac, imtl_g, mgda, none, pcgrad, upgrad  # noqa: F401  (registers them)
from .base import (
    AGGREGATORS,
    Aggregator,
    aggregate,
    aggregator_names,
    aggregator_options,
    get_aggregator,
    register_aggregator,
    visiting_orders,
)
from .sharded import ShardedGradientSurgery
from .surgery import (
    GradientSurgery,
    combine,
    cosines_from_gram,
    gram_matrices,
    segment_grams,
    segment_runs,
    task_cosines,
)

__all__ = [
    "AGGREGATORS", "Aggregator", "GradientSurgery", "ShardedGradientSurgery", "aggregate", "aggregator_names",
    "aggregator_options", "combine", "cosines_from_gram", "get_aggregator", "gram_matrices", "register_aggregator",
    "segment_grams", "segment_runs", "task_cosines", "visiting_orders",
]
