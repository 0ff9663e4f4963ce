"""Loss functions on tensors: the ordinal log loss and the symmetric KL; [`task_loss`] asks the task's kind."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ordinal_log_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Ordinal log loss, mean over the batch: -sum_i |y - i|^alpha * log(1 - p_i).

    Castagnos et al. 2022, "A Simple Log-based Loss Function for Ordinal Text Classification"
    (https://aclanthology.org/2022.coling-1.407). Wrong classes are pushed down in proportion to their
    distance from the gold class; the gold class itself has weight 0.

    Args:
        logits: `(batch, num_classes)`.
        labels: `(batch,)` class ids.
        alpha: Exponent of the distance weight, > 0 (with 0, 0^0 = 1 would put the gold class into the sum; below 0,
            its weight would be inf).
    """
    if not alpha > 0:
        raise ValueError(f"ordinal_log_loss: alpha must be > 0, got {alpha}")
    num_classes = logits.shape[-1]
    classes = torch.arange(num_classes, device=logits.device)
    distance = (labels.unsqueeze(-1) - classes).abs().to(logits.dtype) ** alpha  # (batch, classes)
    # log(1 - p_i) = log sum_{j != i} p_j: exact, also when p_i rounds to 1 (where log1p(-p_i) would lose it all)
    log_p = F.log_softmax(logits.float(), dim=-1)
    others = log_p.unsqueeze(-2).expand(*log_p.shape[:-1], num_classes, num_classes)  # (batch, i, j)
    eye = torch.eye(num_classes, dtype=torch.bool, device=logits.device)
    log_one_minus_p = torch.logsumexp(others.masked_fill(eye, float("-inf")), dim=-1)
    return -(distance * log_one_minus_p).sum(-1).mean()


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Symmetric KL divergence KL(P || Q) + KL(Q || P) = sum_i (p_i - q_i)(log p_i - log q_i), in float32.

    SMART's l_s for classification (Jiang et al. 2020, https://arxiv.org/abs/1911.03437). Gradients flow into both
    arguments; detach one to treat it as a fixed target.

    Args:
        logits_p, logits_q: `(batch, num_classes)` logits of the two distributions.
        reduction: `"mean"` over the batch, `"sum"` over the batch, or `"none"` for `(batch,)`.
    """
    log_p = F.log_softmax(logits_p.float(), dim=-1)
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    per_example = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)  # (batch,)
    if reduction == "none":
        return per_example
    if reduction not in ("mean", "sum"):
        raise ValueError(f"symmetric_kl: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return per_example.mean() if reduction == "mean" else per_example.sum()


def task_loss(spec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss named by `spec.loss` for a head's `logits` (`(batch, num_labels)`) and gold `labels`, as the task's
    kind computes it."""
    return spec.task_kind.loss(spec, logits, labels)
