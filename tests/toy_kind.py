"""A task kind defined outside the library: three ordered classes read from words ("low" / "mid" / "high" or 0-2),
with a two-layer head of its own. tests/test_kinds.py checks that it goes through every path with no library
edit: registering it is all it takes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hf_multitask.kinds import DataValidationError, TaskKind, register_kind
from hf_multitask.losses import symmetric_kl
from hf_multitask.utils import softmax

LEVELS = ["low", "mid", "high"]


class MLPHead(nn.Module):
    """pooled -> linear -> tanh -> linear (3 logits)."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(hidden_size, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, pooled: torch.Tensor, pooled_b: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.dropout(pooled))))


class LevelKind(TaskKind):
    name = "level"
    losses = ("cross_entropy",)
    metrics = ("accuracy",)

    def check_spec(self, spec) -> None:
        if spec.label_names != LEVELS:
            raise ValueError(f"TaskSpec {spec.name!r}: a level task has label_names {LEVELS}")
        if spec.is_pair:
            raise ValueError(f"TaskSpec {spec.name!r}: a level task reads one sentence")
        super().check_spec(spec)

    def num_labels(self, spec) -> int:
        return 3

    def build_head(self, spec, hidden_size: int, dropout: float) -> nn.Module:
        return MLPHead(hidden_size, dropout)

    def loss(self, spec, logits, labels):
        return F.cross_entropy(logits.float(), labels.long().view(-1))

    def divergence(self, a, b, reduction="mean"):
        return symmetric_kl(a, b, reduction)

    def parse_value(self, spec, value, where):
        text = str(value).strip()
        if text in LEVELS:
            return LEVELS.index(text)
        if text in ("0", "1", "2"):
            return int(text)
        raise DataValidationError(f"{where}: level {value!r} is not one of {LEVELS}")

    def predictions(self, spec, logits):
        return np.asarray(logits).argmax(-1)

    def decode(self, spec, logits):
        return [LEVELS[i] for i in self.predictions(spec, logits).tolist()]

    def probabilities(self, spec, logits):
        return softmax(np.asarray(logits))

    def pipeline_output(self, spec, logits):
        return {"level": LEVELS[int(np.argmax(logits))]}

    def prediction_records(self, spec, logits):
        return [{"level": level} for level in self.decode(spec, logits)]

    def error_scores(self, spec, logits, gold):
        return -softmax(logits)[np.arange(len(gold)), gold]

    def error_fields(self, spec, logits, gold, score):
        return {"gold": LEVELS[int(gold)], "prediction": LEVELS[int(np.argmax(logits))]}

    def card_outputs(self, spec) -> str:
        return "a level: low < mid < high"

    def card_tags(self, spec) -> list[str]:
        return ["levels"]


LEVEL_KIND = register_kind(LevelKind())
