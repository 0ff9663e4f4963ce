"""Per-task metrics through `evaluate` (modules shipped in this package), their keys, and the overall score."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import evaluate
import numpy as np

MODULES_DIR = Path(__file__).parent / "evaluate_modules"


@functools.cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """An `evaluate` module shipped with hf-multitask (`accuracy`, `f1`, `pearson`, `spearman`).

    `keep_in_memory=True`: processes of a distributed run would otherwise collide on evaluate's cache files.
    """
    return evaluate.load(str(MODULES_DIR / name), keep_in_memory=True)


def metric_key(prefix: str | None, task_name: str, name: str) -> str:
    """The one spelling of a per-task metric's key: `<prefix>_<task>_<name>`, or `<task>_<name>` without a prefix.

    Example:

    ```python
    >>> metric_key("eval", "sst", "accuracy")
    'eval_sst_accuracy'
    ```
    """
    return f"{prefix}_{task_name}_{name}" if prefix else f"{task_name}_{name}"


def overall_key(prefix: str | None) -> str:
    """The key of the overall score: `<prefix>_overall`."""
    return f"{prefix}_overall" if prefix else "overall"


def compute_task_metrics(spec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`{<metric>: value}` for one task, from raw head outputs and gold labels; it must hold the task's own metric
    (`spec.metric`, which the overall score reads)."""
    found = spec.task_kind.compute_metrics(spec, logits, labels)
    if not isinstance(found, Mapping) or spec.metric not in found:
        got = sorted(found) if isinstance(found, Mapping) else type(found).__name__
        raise ValueError(f"Task {spec.name!r}: {type(spec.task_kind).__name__}.compute_metrics must return a dict "
                         f"holding the task's metric {spec.metric!r} (the overall score reads it), got {got}")
    return found


def overall_score(specs: Iterable, metrics: Mapping[str, float], prefix: str | None = None) -> float:
    """Mean over tasks of each task's metric mapped to [0, 1].

    For the CS224N tasks this is (sst_acc + para_acc + (sts_pearson + 1) / 2) / 3.

    Args:
        specs: The tasks' specs (or a `{task_name: spec}` mapping).
        metrics: Holds [`metric_key`]`(prefix, task, metric)` for every task.
        prefix: The keys' prefix (`"eval"`, `"test"`, a split name), or `None`.
    """
    specs = specs.values() if isinstance(specs, Mapping) else specs
    return float(np.mean([spec.metric_to_unit(metrics[metric_key(prefix, spec.name, spec.metric)]) for spec in specs]))
