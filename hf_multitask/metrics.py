"""Per-task metrics through `evaluate` (modules shipped in this package) and the overall score."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import evaluate
import numpy as np

from .tasks import TaskSpec

MODULES_DIR = Path(__file__).parent / "evaluate_modules"


@functools.cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """An `evaluate` module shipped with hf-multitask (`accuracy`, `f1`, `pearson`, `spearman`).

    `keep_in_memory=True`: processes of a distributed run would otherwise collide on evaluate's cache files.
    """
    return evaluate.load(str(MODULES_DIR / name), keep_in_memory=True)


def predictions_from_logits(spec: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Class ids (classification) or scores (regression) from a head's `(n, num_labels)` outputs."""
    logits = np.asarray(logits)
    if spec.kind == "classification":
        return logits.argmax(-1)
    return logits.reshape(-1)


def compute_task_metrics(spec: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`{<metric>: value}` for one task, from raw head outputs and gold labels."""
    predictions = predictions_from_logits(spec, logits)
    references = np.asarray(labels).reshape(-1)
    return load_metric(spec.metric).compute(predictions=predictions, references=references)


def overall_score(specs: Mapping[str, TaskSpec], metrics: Mapping[str, float], prefix: str = "") -> float:
    """Mean over tasks of each task's metric mapped to [0, 1].

    For the CS224N tasks this is (sst_acc + para_acc + (sts_pearson + 1) / 2) / 3.
    `metrics` holds `<prefix><task>_<metric>` keys.
    """
    return float(np.mean([spec.metric_to_unit(metrics[f"{prefix}{spec.metric_key}"]) for spec in specs.values()]))
