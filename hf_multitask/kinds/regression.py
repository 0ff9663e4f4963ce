"""`regression`: one score in `score_range` per example (STS-B); mean squared error, Pearson or Spearman r."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..heads import CosineRegressionHead, SentenceHead
from .base import DataValidationError, TaskKind, label_column_error, numeric_labels, register_kind


class RegressionKind(TaskKind):
    """A real-valued score in `spec.score_range`; MSE loss; Pearson or Spearman correlation, mapped to [0, 1] for
    the overall score as (r + 1) / 2.

    The head is dropout + linear to one output on the pooled sentence (or cross-encoded pair); for a bi-encoded
    pair it is the cosine of the two sentence vectors scaled onto the range (sentence-transformers' convention).

    Option (`TaskSpec.extra`): `initial_bias`, the linear head's starting bias: `"center"` (the middle of
    `score_range`, so that early updates need not first learn the scores' offset from 0) or a number; 0 by default.
    """

    name = "regression"
    losses = ("mse",)
    metrics = ("pearson", "spearman")
    options = ("initial_bias",)

    def check_spec(self, spec) -> None:
        if spec.score_range is None or len(spec.score_range) != 2 or spec.score_range[0] >= spec.score_range[1]:
            raise ValueError(f"TaskSpec {spec.name!r}: regression needs score_range=(low, high) with low < high")
        if spec.label_names is not None:
            raise ValueError(f"TaskSpec {spec.name!r}: label_names are for classification tasks; a regression task "
                             "has a score_range")
        spec.score_range = (float(spec.score_range[0]), float(spec.score_range[1]))
        super().check_spec(spec)
        if "initial_bias" in spec.extra:
            self.initial_bias(spec)  # validates it

    def initial_bias(self, spec) -> float:
        """The head's starting bias (`extra["initial_bias"]`: `"center"`, a number, or absent for 0)."""
        value = spec.extra.get("initial_bias", 0.0)
        if spec.is_bi_encoded and "initial_bias" in spec.extra:
            raise ValueError(f"TaskSpec {spec.name!r}: extra initial_bias needs a linear head; a bi-encoded "
                             "regression head is a scaled cosine without a bias")
        if value == "center":
            return (spec.score_range[0] + spec.score_range[1]) / 2
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"TaskSpec {spec.name!r}: extra initial_bias must be 'center' or a finite number, "
                             f"got {value!r}")
        return float(value)

    def num_labels(self, spec) -> int:
        return 1

    # ---- the model ----

    def build_head(self, spec, hidden_size: int, dropout: float):
        if spec.is_bi_encoded:
            return CosineRegressionHead(spec.score_range)
        head = SentenceHead(hidden_size, 1, dropout)
        head.out_proj.bias_init = self.initial_bias(spec)  # read by the model's `_init_weights`
        return head

    def loss(self, spec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().view(-1), labels.float().view(-1))

    def divergence(self, a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        per_example = (a.float() - b.float()).pow(2).flatten(1).sum(-1)  # (batch,)
        return per_example.mean() if reduction == "mean" else per_example.sum()

    # ---- data ----

    def parse_value(self, spec, value: Any, where: str) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataValidationError(f"{where}: score {value!r} is not a number") from None
        low, high = spec.score_range
        if not math.isfinite(number) or not low <= number <= high:
            raise DataValidationError(f"{where}: score {value!r} is outside the task's range [{low}, {high}]")
        return number

    def check_label_column(self, spec, labels: np.ndarray, where: str) -> None:
        low, high = spec.score_range
        values = numeric_labels(where, labels, f"a score in [{low}, {high}]")
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values < low) | (values > high)
        if bad.any():
            raise label_column_error(where, bad, values,
                                     f"is outside task {spec.name!r}'s score_range [{low}, {high}]")

    # ---- predictions and metrics ----

    def predictions(self, spec, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits).reshape(-1)

    def metric_to_unit(self, spec, value: float) -> float:
        return (value + 1.0) / 2.0  # a correlation r in [-1, 1]

    def decode(self, spec, logits: np.ndarray) -> list[float]:
        return [float(v) for v in self.predictions(spec, logits).tolist()]

    def pipeline_output(self, spec, logits: np.ndarray) -> dict:
        return {"score": float(logits[0])}

    def prediction_records(self, spec, logits: np.ndarray) -> list[dict]:
        return [{"score": score} for score in self.decode(spec, logits)]

    def error_scores(self, spec, logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
        return np.abs(self.predictions(spec, logits) - gold)

    def error_fields(self, spec, logits: np.ndarray, gold: Any, score: float) -> dict:
        return {"gold": float(gold), "prediction": float(self.predictions(spec, logits)[0]), "abs_error": float(score)}

    # ---- export, model card, report ----

    def export_config(self, spec, config) -> None:
        config.num_labels = 1
        config.id2label, config.label2id = {0: spec.label_column}, {spec.label_column: 0}
        config.problem_type = "regression"

    def card_outputs(self, spec) -> str:
        return f"a score in [{spec.score_range[0]:g}, {spec.score_range[1]:g}]"

    def plot_predictions(self, spec, gold: np.ndarray, predicted: np.ndarray, output_dir, split: str):
        from ..plots import plot_scatter

        value = self.compute_metrics(spec, np.asarray(predicted)[:, None], gold)[spec.metric]
        title = f"{spec.name}: predicted vs gold on {split} (n={len(gold)}, {spec.metric} r = {value:.3f})"
        return plot_scatter(gold, predicted, spec.score_range, output_dir / f"scatter_{spec.name}.png", title)


register_kind(RegressionKind())
