"""R-Drop: two dropout passes over the same batch, their outputs pulled together.

Liang et al. 2021, "R-Drop: Regularized Dropout for Neural Networks" (https://arxiv.org/abs/2106.14448). The paper's
objective for a batch (its Eq. 3, per example) is

    L = L(P_1) + L(P_2) + α · ½ (KL(P_1 ‖ P_2) + KL(P_2 ‖ P_1))

with P_1, P_2 the outputs of two forward passes under different dropout masks. We train half of it, so that the task
loss keeps the scale of a plain step (the mean of the two passes' losses; with Adam the updates are the same):

    ½ (L(P_1) + L(P_2)) + (α / 4) l_s(P_1, P_2)

l_s is the task kind's divergence (`TaskKind.divergence`, SMART's l_s): the symmetric KL KL(P‖Q) + KL(Q‖P) for
classification, the squared error for regression (as the authors' BERT code does for regression: the MSE between
the two passes). The Trainer's task loss is L(P_1)
already, so the regulariser adds ½ (L(P_2) − L(P_1)) + (α / 4) l_s. With dropout off both passes agree and every
term is exactly zero.
"""

from __future__ import annotations

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from .base import Regularizer, register_regularizer


class RDropRegularizer(Regularizer):
    """R-Drop for the batches of the tasks in `tasks` (see the module docstring).

    Args:
        tasks: Names of the tasks to regularise.
        alpha: α, the paper's weight of the averaged KL ½ (KL(P_1‖P_2) + KL(P_2‖P_1)); a per-task hyperparameter,
            1.0 is a starting point, not a tuned value.

    Example:

    ```python
    >>> args = MultitaskTrainingArguments("out", regularizers={"rdrop": {"tasks": ["sst"]}})  # doctest: +SKIP
    ```
    """

    name = "rdrop"
    log_names = ("rdrop",)

    def __init__(self, tasks: list[str], alpha: float = 1.0):
        super().__init__(tasks)
        if not alpha >= 0:
            raise ValueError(f"rdrop: alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def loss(self, model: nn.Module, inputs: dict, outputs, spec) -> torch.Tensor:
        """½ (L(P_2) − L(P_1)) + (α / 4) l_s(P_1, P_2), P_1 being `outputs` and P_2 a second pass with fresh dropout;
        logs `rdrop`, the unweighted l_s(P_1, P_2)."""
        # the unwrapped model, as SMART's extra passes: DDP's reducer expects one forward per backward
        second = extract_model_from_parallel(model)(**inputs)
        divergence = spec.task_kind.divergence(outputs.logits, second.logits)
        self.logs = {"rdrop": divergence}
        return 0.5 * (second.loss - outputs.loss) + 0.25 * self.alpha * divergence


register_regularizer(RDropRegularizer)
