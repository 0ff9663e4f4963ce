"""MGDA (Désidéri 2012; Sener & Koltun 2018, https://arxiv.org/abs/1810.04650): the min-norm point of the hull."""

from __future__ import annotations

import torch

from .base import Aggregator, register_aggregator


def mgda_weights(gram: torch.Tensor, epsilon: float = 1e-3, max_iters: int = 100) -> torch.Tensor:
    """Frank-Wolfe for min_{alpha in simplex} |sum_i alpha_i g_i|^2 on the Gram matrix `[T, T]` (Sener & Koltun,
    Algorithm 2; torchjd's `MGDAWeighting`, whose stopping rule this keeps: stop when the step gamma < epsilon).

    A zero gradient is the min-norm point itself: its task gets weight 1 and the update is zero.
    """
    num_tasks = gram.shape[0]
    alpha = torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
    for _ in range(max_iters):
        t = int(torch.argmin(gram @ alpha))
        a = alpha @ gram[:, t]  # alpha . G e_t
        b = alpha @ gram @ alpha
        c = gram[t, t]
        if c <= a:
            gamma = 1.0
        elif b <= a:
            gamma = 0.0
        else:
            gamma = float((b - a) / (b + c - 2 * a))
        alpha = (1 - gamma) * alpha
        alpha[t] += gamma
        if gamma < epsilon:
            break
    return alpha


@register_aggregator
class MGDA(Aggregator):
    """MGDA on the whole shared model: the update is the smallest-norm convex combination of the task gradients.

    Degree 1 (the weights are scale-free), no state. The update is zero at a Pareto-stationary point, so MGDA
    stalls when the tasks' gradients conflict much (see docs/gradients.md).
    """

    name = "mgda"
    title = "MGDA (Sener & Koltun 2018)"

    def weights(self, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        return mgda_weights(grams[0])[None], 0
