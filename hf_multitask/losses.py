"""Task losses: cross-entropy, MSE and the ordinal log loss, chosen by a [`TaskSpec`]'s `loss`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tasks import TaskSpec


def ordinal_log_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Ordinal log loss, mean over the batch: -sum_i |y - i|^alpha * log(1 - p_i).

    Castagnos et al. 2022, "A Simple Log-based Loss Function for Ordinal Text Classification"
    (https://aclanthology.org/2022.coling-1.407). Wrong classes are pushed down in proportion to their
    distance from the gold class; the gold class itself has weight 0.

    Args:
        logits: `(batch, num_classes)`.
        labels: `(batch,)` class ids.
        alpha: Exponent of the distance weight.
    """
    num_classes = logits.shape[-1]
    classes = torch.arange(num_classes, device=logits.device)
    distance = (labels.unsqueeze(-1) - classes).abs().to(logits.dtype) ** alpha  # (batch, classes)
    # log(1 - p) computed stably from log-probabilities: log1p(-exp(log p)), clamped away from p = 1
    log_p = F.log_softmax(logits.float(), dim=-1).clamp(max=-1e-7)
    log_one_minus_p = torch.log1p(-log_p.exp())
    return -(distance * log_one_minus_p).sum(-1).mean()


def task_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss named by `spec.loss` for a head's `logits` (`(batch, num_labels)`) and gold `labels`."""
    if spec.kind == "regression":
        return F.mse_loss(logits.float().view(-1), labels.float().view(-1))
    labels = labels.long().view(-1)
    if spec.loss == "cross_entropy":
        return F.cross_entropy(logits.float(), labels)
    if spec.loss == "ordinal":
        return ordinal_log_loss(logits, labels, spec.ordinal_alpha)
    if spec.loss == "cross_entropy+ordinal":
        return F.cross_entropy(logits.float(), labels) + ordinal_log_loss(logits, labels, spec.ordinal_alpha)
    raise ValueError(f"Task {spec.name!r}: unknown loss {spec.loss!r}")
