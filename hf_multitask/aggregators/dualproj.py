"""DualProj (Lopez-Paz & Ranzato 2017, https://arxiv.org/abs/1706.08840, eq. 11): project the mean onto the cone."""

from __future__ import annotations

import torch

from .base import Aggregator, register_aggregator
from .upgrad import project_onto_dual_cone


@register_aggregator
class DualProj(Aggregator):
    """The mean gradient projected onto the dual cone of the task gradients (GEM's projection; torchjd's
    `DualProj`): weights = argmin_{w >= 1/T} w^T G w. Degree 1, no state.
    """

    name = "dualproj"
    title = "DualProj (Lopez-Paz & Ranzato 2017)"

    def weights(self, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        num_tasks = grams.shape[1]
        w, count = project_onto_dual_cone(torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64), grams[0])
        return w[None], count
