"""Aligned-MTL (Senushkin et al. 2023, https://arxiv.org/abs/2305.19000): align the principal components."""

from __future__ import annotations

import torch

from .base import Aggregator, register_aggregator


def aligned_mtl_weights(gram: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of the paper on the Gram matrix `[T, T]`, with the mean as preference vector and the smallest
    non-zero eigenvalue as scale (torchjd's `AlignedMTLWeighting`, `scale_mode="min"`): with G = V diag(λ) V^T
    restricted to the rank r (λ > λ_max T eps), weights = sqrt(λ_r) V diag(λ)^(-1/2) V^T (1/T, ..., 1/T).
    Rank 0 (every gradient zero): the mean weights.
    """
    num_tasks = gram.shape[0]
    mean = torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
    eigenvalues, vectors = torch.linalg.eigh(gram)
    keep = eigenvalues > eigenvalues.max() * num_tasks * torch.finfo(gram.dtype).eps
    if not keep.any():
        return mean
    eigenvalues, vectors = eigenvalues[keep], vectors[:, keep]
    balance = eigenvalues.min().sqrt() * (vectors / eigenvalues.sqrt()) @ vectors.T
    return balance @ mean


@register_aggregator
class AlignedMTL(Aggregator):
    """Aligned-MTL on the whole shared model (degree 1, no state)."""

    name = "aligned_mtl"
    title = "Aligned-MTL (Senushkin et al. 2023)"

    def weights(self, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        return aligned_mtl_weights(grams[0])[None], 0
