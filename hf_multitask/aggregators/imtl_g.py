"""IMTL-G (Liu et al. 2021, https://openreview.net/forum?id=IMPnRXEWpvr): equal projections onto the update."""

from __future__ import annotations

import torch

from .base import Aggregator, register_aggregator


def imtl_g_weights(gram: torch.Tensor) -> torch.Tensor:
    """Weights v / sum(v), v = pinv(G) diag(G)^(1/2), on the Gram matrix `[T, T]`: the update d = sum_i w_i g_i has
    the same projection d . g_i / |g_i| on every unit gradient (torchjd's `IMTLGWeighting`, the pseudo-inverse
    generalisation of the paper's closed form to linearly dependent gradients). All zeros when |sum(v)| < 1e-12
    (relative: the Gram matrix is normalised), e.g. when every gradient is zero.
    """
    v = torch.linalg.pinv(gram, hermitian=True) @ gram.diagonal().clamp_min(0).sqrt()
    total = v.sum()
    return torch.zeros_like(v) if total.abs() < 1e-12 else v / total


@register_aggregator
class IMTLG(Aggregator):
    """IMTL-G on the whole shared model (degree 1, no state)."""

    name = "imtl_g"
    title = "IMTL-G (Liu et al. 2021)"

    def weights(self, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        return imtl_g_weights(grams[0])[None], 0
