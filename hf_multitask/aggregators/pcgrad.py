"""PCGrad (Yu et al. 2020, https://arxiv.org/abs/2001.06782) on the Gram matrix of the task gradients."""

from __future__ import annotations

import torch

from .base import Aggregator, register_aggregator, visiting_orders

# PCGrad only ever adds multiples of the *original* task gradients to a task's gradient, so the edited gradients are
# A @ G for a small [T, T] coefficient matrix A, and every dot product it needs is a combination of the Gram matrix.


def pcgrad_coefficients(gram: torch.Tensor, orders: list[list[int]]) -> tuple[torch.Tensor, int]:
    """PCGrad on the Gram matrix `[T, T]` of the task gradients: returns A (projected = A @ grads) and the count.

    A task j whose squared norm `gram[j, j]` is 0 (a zero gradient, or one below the dtype's smallest number) is
    never projected onto. There is no other threshold: the projections are invariant to the gradients' scale.
    """
    coeffs = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    count = 0
    for i, order in enumerate(orders):
        for j in order:
            if gram[j, j] <= 0:
                continue
            dot = coeffs[i] @ gram[:, j]  # (running g_i) . g_j
            if dot < 0:
                coeffs[i, j] -= dot / gram[j, j]
                count += 1
    return coeffs, count


def pcgrad(grads: torch.Tensor, orders: list[list[int]]) -> tuple[torch.Tensor, int]:
    """Projecting Conflicting Gradients (Yu et al. 2020, https://arxiv.org/abs/2001.06782).

    For each task i, for the other tasks j in `orders[i]`: if g_i . g_j < 0, g_i <- g_i - (g_i . g_j / |g_j|^2) g_j,
    with g_j the *original* gradient of task j and g_i the running, already-projected one. The coefficients are
    computed in float64 on the Gram matrix divided by its largest diagonal entry.

    Args:
        grads: `[T, P]` per-task gradients of the shared parameters.
        orders: `orders[i]` lists the tasks j != i in visiting order (see [`visiting_orders`]).

    Returns:
        The projected `[T, P]` gradients (the update is their sum) and the number of projections made.
    """
    gram = (grads @ grads.T).double()
    scale = gram.diagonal().max()
    coeffs, count = pcgrad_coefficients(gram / scale if scale > 0 else gram, orders)
    return coeffs.to(grads.dtype) @ grads, count


@register_aggregator
class PCGrad(Aggregator):
    """PCGrad on the whole shared model: the update is the sum of the projected gradients (degree 1, no state).

    The visiting orders come from the run's generator (one `visiting_orders` draw per step).
    """

    name = "pcgrad"
    title = "PCGrad (Yu et al. 2020)"

    def weights(self, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        coeffs, count = pcgrad_coefficients(grams[0], visiting_orders(self.num_tasks, generator))
        return coeffs.sum(0, keepdim=True), count
