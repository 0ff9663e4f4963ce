"""UPGrad (Quinton & Rey 2024, https://arxiv.org/abs/2406.16232): project every gradient onto the dual cone."""

from __future__ import annotations

import numpy as np
import torch

from .base import Aggregator, register_aggregator


def project_onto_dual_cone(u: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Weights w of the projection of u^T J onto the dual cone {x : J x >= 0} of the task gradients J `[T, P]`.

    The projection is w^T J with w = argmin_{w >= u} w^T G w (Quinton & Rey, Proposition 1), G = J J^T. With
    w = u + z this is min_{z >= 0} |A^T (u + z)|^2 for any A^T A = G: non-negative least squares, solved exactly by
    Lawson-Hanson (`scipy.optimize.nnls`) in float64 on A = diag(λ)^(1/2) V^T from G's eigendecomposition (no
    regularisation, singular G included). Returns w and the number of active constraints (z_i > 0).

    Args:
        u: `[T]` weights of the vector to project (float64).
        gram: `[T, T]` Gram matrix (float64).
    """
    from scipy.optimize import nnls  # here: scipy.optimize takes a while to import

    eigenvalues, vectors = np.linalg.eigh(gram.double().cpu().numpy())
    factor = np.sqrt(np.clip(eigenvalues, 0, None))[:, None] * vectors.T  # A, with A^T A = G
    base = u.double().cpu().numpy()
    z, _ = nnls(factor, -factor @ base, maxiter=50 * len(base))
    return torch.from_numpy(base + z).to(gram), int((z > 0).sum())


@register_aggregator
class UPGrad(Aggregator):
    """UPGrad on the whole shared model: the mean of the gradients each projected onto the dual cone of all.

    With preference vector 1/T: weights = sum_i w_i, w_i = argmin_{w >= e_i / T} w^T G w. The update never
    conflicts with any task's gradient (its dot product with each is >= 0). Degree 1, no state.
    """

    name = "upgrad"
    title = "UPGrad (Quinton & Rey 2024)"

    def weights(self, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        gram, num_tasks = grams[0], grams.shape[1]
        total, count = torch.zeros(num_tasks, dtype=gram.dtype, device=gram.device), 0
        for i in range(num_tasks):
            u = torch.zeros(num_tasks, dtype=torch.float64)
            u[i] = 1.0 / num_tasks
            w, active = project_onto_dual_cone(u, gram)
            total, count = total + w, count + active
        return total[None], count
