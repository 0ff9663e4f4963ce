import math

import pytest
import torch
import torch.nn.functional as F

from hf_multitask import get_task, ordinal_log_loss, symmetric_kl, task_loss


def reference_ordinal_loss(logits, labels, alpha):
    """Castagnos et al. 2022 written out with Python floats: mean_b -sum_i |y_b - i|^alpha log(1 - softmax_i)."""
    total = 0.0
    for row, gold in zip(logits.double().tolist(), labels.tolist()):
        exps = [math.exp(v - max(row)) for v in row]
        probs = [e / sum(exps) for e in exps]
        total -= sum(abs(gold - i) ** alpha * math.log(1.0 - p) for i, p in enumerate(probs))
    return total / len(labels)


def peaked_logits(peak, num_classes=5, height=4.0):
    return (height * F.one_hot(torch.tensor([peak]), num_classes)).float()  # (1, num_classes)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_ordinal_log_loss_matches_an_independent_reference(alpha):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=generator) * 2
    labels = torch.randint(0, 5, (16,), generator=generator)
    expected = reference_ordinal_loss(logits, labels, alpha)
    assert ordinal_log_loss(logits, labels, alpha).item() == pytest.approx(expected, rel=1e-5)


def test_ordinal_log_loss_is_smallest_at_the_gold_class():
    for gold in range(5):
        losses = [ordinal_log_loss(peaked_logits(peak), torch.tensor([gold])).item() for peak in range(5)]
        assert min(range(5), key=losses.__getitem__) == gold


def test_ordinal_log_loss_grows_with_the_distance_from_the_gold_class():
    losses = [ordinal_log_loss(peaked_logits(peak), torch.tensor([0])).item() for peak in range(5)]
    assert all(a < b for a, b in zip(losses, losses[1:]))


def test_ordinal_alpha_sharpens_the_distance_weight():
    logits, labels = peaked_logits(4), torch.tensor([0])
    assert ordinal_log_loss(logits, labels, alpha=2.0) > ordinal_log_loss(logits, labels, alpha=1.0)


def test_task_loss_cross_entropy_plus_ordinal_is_their_sum():
    spec = get_task("sst", loss="cross_entropy+ordinal", ordinal_alpha=1.5)
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    expected = F.cross_entropy(logits, labels) + reference_ordinal_loss(logits, labels, 1.5)
    assert task_loss(spec, logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_task_loss_ordinal_uses_the_spec_alpha():
    spec = get_task("sst", loss="ordinal", ordinal_alpha=2.0)
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert task_loss(spec, logits, labels).item() == pytest.approx(reference_ordinal_loss(logits, labels, 2.0),
                                                                   rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_ordinal_log_loss_rejects_an_alpha_that_is_not_positive(alpha):
    with pytest.raises(ValueError, match="alpha must be > 0"):
        ordinal_log_loss(torch.randn(2, 5), torch.tensor([0, 3]), alpha)


@pytest.mark.parametrize("loss", ["ordinal", "cross_entropy+ordinal"])
def test_a_task_spec_rejects_an_ordinal_alpha_that_is_not_positive(loss):
    with pytest.raises(ValueError, match="'sst': ordinal_alpha must be > 0, got 0"):
        get_task("sst", loss=loss, ordinal_alpha=0.0)


def test_symmetric_kl_is_zero_for_equal_inputs():
    logits = torch.randn(6, 5)
    assert symmetric_kl(logits, logits.clone()).item() == 0.0
    assert symmetric_kl(logits, logits + 3.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant


def test_symmetric_kl_is_symmetric_and_positive():
    p, q = torch.randn(6, 5), torch.randn(6, 5)
    assert symmetric_kl(p, q).item() == pytest.approx(symmetric_kl(q, p).item(), rel=1e-6)
    assert (symmetric_kl(p, q, reduction="none") > 0).all()


def test_symmetric_kl_equals_the_sum_of_both_kl_divergences():
    p, q = torch.randn(6, 5), torch.randn(6, 5)
    log_p, log_q = F.log_softmax(p, -1), F.log_softmax(q, -1)
    expected = (F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
                + F.kl_div(log_p, log_q, log_target=True, reduction="batchmean"))
    assert symmetric_kl(p, q).item() == pytest.approx(expected.item(), rel=1e-5)
    assert symmetric_kl(p, q, reduction="sum").item() == pytest.approx(6 * expected.item(), rel=1e-5)


def test_symmetric_kl_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be"):
        symmetric_kl(torch.randn(2, 3), torch.randn(2, 3), reduction="batchmean")
