"""Gradient Vaccine (Wang et al. 2021, https://arxiv.org/abs/2010.05874) on per-segment Gram matrices."""

from __future__ import annotations

import torch

from .base import Aggregator, register_aggregator, visiting_orders
from .surgery import segment_grams, segment_runs


def gradvac_coefficients(
    grams: torch.Tensor, targets: torch.Tensor, orders: list[list[int]], beta: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """GradVac on per-segment Gram matrices `[K, T, T]`: returns A `[K, T, T]`, the new targets and the count.

    Conventions: a pair whose running g_i or original g_j is zero on a segment (norm 0) is neither adjusted nor
    counted, and its target stays; a target of exactly 1 is never adjusted to (it would take an infinite multiple
    of g_j), though its EMA still updates. No other threshold: the coefficients are invariant to the scale of each
    segment's gradients.
    """
    num_segments, num_tasks, _ = grams.shape
    coeffs = torch.eye(num_tasks, dtype=grams.dtype, device=grams.device).repeat(num_segments, 1, 1)
    targets = targets.clone().to(grams.dtype)
    norms = grams.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # (K, T) original norms
    count = 0
    for i, order in enumerate(orders):
        for j in order:
            a = coeffs[:, i, :]  # (K, T): running g_i = sum_m a[m] g_m, per segment
            dot = (a * grams[:, :, j]).sum(-1)  # (K,)
            norm_i = torch.einsum("km,kmn,kn->k", a, grams, a).clamp_min(0).sqrt()
            norm_j = norms[:, j]
            valid = (norm_i > 0) & (norm_j > 0)
            ones = torch.ones_like(norm_i)
            phi = (dot / torch.where(valid, norm_i * norm_j, ones)).clamp(-1.0, 1.0)
            target = targets[:, i, j]
            adjust = valid & (phi < target) & (target < 1)
            sin_target = (1 - target**2).clamp_min(0).sqrt()
            coef = norm_i * (target * (1 - phi**2).clamp_min(0).sqrt() - phi * sin_target) / torch.where(
                adjust, norm_j * sin_target, ones)
            coeffs[:, i, j] += torch.where(adjust, coef, torch.zeros_like(coef))
            targets[:, i, j] = torch.where(valid, (1 - beta) * target + beta * phi, target)
            count += int(adjust.sum())
    return coeffs, targets, count


def gradvac(
    grads: torch.Tensor,
    targets: torch.Tensor,
    orders: list[list[int]],
    beta: float = 0.01,
    segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gradient Vaccine (Wang et al. 2021, https://arxiv.org/abs/2010.05874).

    For each task i, for the other tasks j in `orders[i]`, in each segment (the whole vector, or each layer):
    phi = cos(g_i, g_j); if phi < target phî_ij,
    g_i <- g_i + |g_i| (phî sqrt(1 - phi^2) - phi sqrt(1 - phî^2)) / (|g_j| sqrt(1 - phî^2)) g_j,
    which sets cos(g_i, g_j) to exactly phî_ij; then phî_ij <- (1 - beta) phî_ij + beta phi. The coefficients are
    computed in float64 on each segment's Gram matrix divided by its largest diagonal entry.

    Args:
        grads: `[T, P]` per-task gradients of the shared parameters.
        targets: `[K, T, T]` EMA targets phî for K segments (zeros at the start of training).
        orders: Visiting orders, as for [`pcgrad`].
        beta: EMA rate of the targets (the paper: 0.01).
        segments: `(P,)` segment id in [0, K) of every coordinate (e.g. its layer); `None` = one segment.

    Returns:
        The adjusted `[T, P]` gradients, the updated targets, and the number of (segment, pair) adjustments.
    """
    runs = segment_runs(segments) if segments is not None else [(0, 0, grads.shape[1])]
    grams = segment_grams(grads, runs, targets.shape[0]).double()
    scale = grams.diagonal(dim1=1, dim2=2).amax(1)
    grams = grams / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None, None]
    coeffs, new_targets, count = gradvac_coefficients(grams, targets, orders, beta)
    adjusted = torch.empty_like(grads)
    for k, start, end in runs:
        adjusted[:, start:end] = coeffs[k].to(grads.dtype) @ grads[:, start:end]
    return adjusted, new_targets.to(targets.dtype), count


@register_aggregator
class GradVac(Aggregator):
    """GradVac with one EMA target per (segment, task pair): per layer, or one segment for the whole model.

    Degree 1. State: `targets` `[K, T, T]` (float64, zeros at the start), in every checkpoint.

    Args:
        gradvac_beta: EMA rate of the targets (the paper: 0.01).
    """

    name = "gradvac"
    title = "GradVac (Wang et al. 2021)"
    per_segment = True

    def __init__(self, num_tasks: int, num_segments: int = 1, gradvac_beta: float = 0.01, **options) -> None:
        super().__init__(num_tasks, num_segments)
        self.beta = gradvac_beta
        self.targets = torch.zeros(num_segments, num_tasks, num_tasks, dtype=torch.float64)

    def weights(self, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        orders = visiting_orders(self.num_tasks, generator)
        coeffs, self.targets, count = gradvac_coefficients(grams, self.targets, orders, self.beta)
        return coeffs.sum(1), count  # the update on segment k: sum over tasks i of A_k[i] @ grads

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"targets": self.targets.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.targets = state["targets"].to(torch.float64).cpu()
