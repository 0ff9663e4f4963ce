"""`classification`: one of `label_names` per example (SST-5, Quora); cross-entropy or the ordinal log loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..heads import PairClassificationHead, SentenceHead
from ..losses import ordinal_log_loss, symmetric_kl
from ..utils import softmax
from .base import DataValidationError, TaskKind, label_column_error, numeric_labels, register_kind


class ClassificationKind(TaskKind):
    """Single-label classification over `spec.label_names` (index = class id); accuracy or F1.

    The head is dropout + linear on the pooled sentence (or cross-encoded pair), or on [u; v; |u - v|] for a
    bi-encoded pair (Reimers & Gurevych 2019). Losses: `cross_entropy`, `ordinal` (Castagnos et al. 2022, for
    ordered classes such as SST-5's) or their sum.
    """

    name = "classification"
    losses = ("cross_entropy", "ordinal", "cross_entropy+ordinal")
    metrics = ("accuracy", "f1")

    def check_spec(self, spec) -> None:
        if not spec.label_names or len(spec.label_names) < 2:
            raise ValueError(f"TaskSpec {spec.name!r}: classification needs label_names with >= 2 entries")
        if len(set(spec.label_names)) != len(spec.label_names):
            raise ValueError(f"TaskSpec {spec.name!r}: label_names has duplicates: {spec.label_names}")
        if spec.score_range is not None:
            raise ValueError(f"TaskSpec {spec.name!r}: score_range is for regression tasks; a classification task "
                             "has label_names")
        super().check_spec(spec)  # sets the default loss
        if "ordinal" in spec.loss and not spec.ordinal_alpha > 0:  # 0 weighs the gold class in, < 0 gives inf
            raise ValueError(f"TaskSpec {spec.name!r}: ordinal_alpha must be > 0, got {spec.ordinal_alpha}")

    def num_labels(self, spec) -> int:
        return len(spec.label_names)

    # ---- the model ----

    def build_head(self, spec, hidden_size: int, dropout: float):
        head = PairClassificationHead if spec.is_bi_encoded else SentenceHead
        return head(hidden_size, self.num_labels(spec), dropout)

    def loss(self, spec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long().view(-1)
        if spec.loss == "cross_entropy":
            return F.cross_entropy(logits.float(), labels)
        if spec.loss == "ordinal":
            return ordinal_log_loss(logits, labels, spec.ordinal_alpha)
        return F.cross_entropy(logits.float(), labels) + ordinal_log_loss(logits, labels, spec.ordinal_alpha)

    def divergence(self, a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return symmetric_kl(a, b, reduction)

    # ---- data ----

    def parse_value(self, spec, value: Any, where: str) -> int:
        if isinstance(value, str) and value.strip() in spec.label_names:
            return spec.label_names.index(value.strip())
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataValidationError(
                f"{where}: label {value!r} is neither a class id nor one of {spec.label_names}"
            ) from None
        if not number.is_integer() or not 0 <= number < self.num_labels(spec):
            raise DataValidationError(f"{where}: label {value!r} is not a class id in 0..{self.num_labels(spec) - 1}")
        return int(number)

    def check_label_column(self, spec, labels: np.ndarray, where: str) -> None:
        count = self.num_labels(spec)
        values = numeric_labels(where, labels, f"a class id in 0..{count - 1}")
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values != np.floor(values)) | (values < 0) | (values >= count)
        if bad.any():
            problem = f"is not a class id in 0..{count - 1} (task {spec.name!r}: {spec.label_names})"
            raise label_column_error(where, bad, np.asarray(labels), problem)  # shown as given: 7, not 7.0

    def check_labels(self, spec, labels: list, source: str) -> None:
        self.warn_absent_classes(spec, set(labels), source, f"{len(labels)} rows")

    def warn_absent_classes(self, spec, seen: set, source: str, counted: str) -> None:
        """The warning for classes of the spec that never occur among the labels `seen` (`counted`: in how many)."""
        from transformers.utils import logging

        absent = [name for k, name in enumerate(spec.label_names) if k not in seen]
        if absent:
            logging.get_logger("hf_multitask.data").warning(
                f"{source}: task {spec.name!r} has {self.num_labels(spec)} classes, but class(es) {absent} never "
                f"occur in its {counted}")

    # ---- predictions and metrics ----

    def predictions(self, spec, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits).argmax(-1)

    def decode(self, spec, logits: np.ndarray) -> list[str]:
        return [spec.label_names[i] for i in self.predictions(spec, logits).tolist()]

    def probabilities(self, spec, logits: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(logits))

    def pipeline_output(self, spec, logits: np.ndarray) -> dict:
        probabilities = self.probabilities(spec, logits[None])[0]
        best = int(probabilities.argmax())
        return {"label": spec.label_names[best], "score": float(probabilities[best])}

    def pipeline_ranking(self, spec, logits: np.ndarray, top_k: int | None) -> list[dict]:
        probabilities = self.probabilities(spec, logits[None])[0]
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        return [{"label": spec.label_names[i], "score": float(probabilities[i])} for i in order.tolist()]

    def prediction_records(self, spec, logits: np.ndarray) -> list[dict]:
        best = np.asarray(logits).argmax(-1)
        probabilities = self.probabilities(spec, logits).max(-1)
        return [{"label": spec.label_names[i], "label_id": int(i), "probability": float(p)}
                for i, p in zip(best.tolist(), probabilities)]

    def error_scores(self, spec, logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
        return -softmax(logits)[np.arange(len(gold)), gold]  # minus the gold label's probability

    def error_fields(self, spec, logits: np.ndarray, gold: Any, score: float) -> dict:
        return {"gold": spec.label_names[int(gold)], "prediction": spec.label_names[int(np.argmax(logits))],
                "gold_probability": float(-score)}

    # ---- export, model card, report ----

    def export_config(self, spec, config) -> None:
        config.num_labels = self.num_labels(spec)
        config.id2label, config.label2id = spec.id2label, {name: i for i, name in spec.id2label.items()}
        config.problem_type = "single_label_classification"

    def card_outputs(self, spec) -> str:
        return ", ".join(f"{i} = {label}" for i, label in enumerate(spec.label_names))

    def card_tags(self, spec) -> list[str]:
        return ["ordinal-regression"] if "ordinal" in spec.loss else []

    def plot_predictions(self, spec, gold: np.ndarray, predicted: np.ndarray, output_dir, split: str):
        from ..plots import confusion_matrix, plot_confusion

        matrix = confusion_matrix(spec.name, gold, predicted, self.num_labels(spec))
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        title = f"{spec.name}: confusion matrix on {split} (n={matrix.sum()}, accuracy {accuracy:.3f})"
        return plot_confusion(matrix, spec.label_names, output_dir / f"confusion_{spec.name}.png", title)


register_kind(ClassificationKind())
