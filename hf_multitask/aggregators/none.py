"""`none`: the plain sum of the task gradients (the grouped baseline that every other method is compared with)."""

from __future__ import annotations

import torch

from .base import Aggregator, register_aggregator


@register_aggregator
class Sum(Aggregator):
    """Weights 1 for every task: the update is the sum of the task gradients (degree 1, no state)."""

    name = "none"
    title = "The plain sum of the task gradients"

    def weights(self, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        return torch.ones(grams.shape[:2], dtype=grams.dtype, device=grams.device), 0
