import math

import numpy as np
import pytest
import torch

from hf_multitask.gradients import gradvac, pcgrad, task_cosines, visiting_orders


def reference_pcgrad(grads, orders):
    """The paper's Algorithm 1, written with numpy and one pair at a time."""
    g = [np.array(x, dtype=np.float64) for x in grads]
    out = []
    for i, order in enumerate(orders):
        gi = g[i].copy()
        for j in order:
            if gi.dot(g[j]) < 0:
                gi = gi - gi.dot(g[j]) / g[j].dot(g[j]) * g[j]
        out.append(gi)
    return np.stack(out)


def reference_gradvac(grads, targets, orders, beta, segments):
    """The paper's Algorithm 2 per segment, with numpy and explicit loops."""
    g = [np.array(x, dtype=np.float64) for x in grads]
    targets = np.array(targets, dtype=np.float64)
    out = [x.copy() for x in g]
    for i, order in enumerate(orders):
        for j in order:
            for k in range(targets.shape[0]):
                mask = segments == k
                gi, gj = out[i][mask], g[j][mask]
                phi = gi.dot(gj) / (np.linalg.norm(gi) * np.linalg.norm(gj))
                t = targets[k, i, j]
                if phi < t:
                    a = np.linalg.norm(gi) * (t * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - t**2))
                    a /= np.linalg.norm(gj) * math.sqrt(1 - t**2)
                    out[i][mask] = gi + a * gj
                targets[k, i, j] = (1 - beta) * t + beta * phi
    return np.stack(out), targets


def random_grads(num_tasks=3, size=40, seed=0):
    return torch.randn(num_tasks, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("seed", range(5))
def test_pcgrad_equals_reference(seed):
    grads = random_grads(4, 30, seed)
    orders = visiting_orders(4, torch.Generator().manual_seed(seed))
    projected, _ = pcgrad(grads, orders)
    np.testing.assert_allclose(projected.numpy(), reference_pcgrad(grads.numpy(), orders), rtol=1e-10, atol=1e-10)


def test_pcgrad_leaves_non_conflicting_gradients_unchanged():
    grads = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    projected, count = pcgrad(grads, visiting_orders(3))
    assert count == 0 and torch.equal(projected, grads)


def test_pcgrad_two_tasks_removes_the_conflict_and_is_orthogonal():
    grads = torch.tensor([[1.0, 0.2, -0.5], [-0.8, 0.4, 0.3]], dtype=torch.float64)
    projected, count = pcgrad(grads, [[1], [0]])
    assert count == 2
    assert projected[0] @ grads[1] == pytest.approx(0.0, abs=1e-12)  # g_i ⟂ g_j right after projection
    assert projected[1] @ grads[0] == pytest.approx(0.0, abs=1e-12)
    assert projected[0] @ projected[1] >= -1e-12  # for T = 2 no conflict remains


def test_pcgrad_skips_zero_gradients():
    grads = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    projected, count = pcgrad(grads, [[1], [0]])
    assert count == 0 and torch.equal(projected, grads)


@pytest.mark.parametrize("num_segments", [1, 3])
def test_gradvac_equals_reference(num_segments):
    grads = random_grads(3, 36, seed=1)
    segments = torch.arange(36) % num_segments
    targets = torch.rand(num_segments, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.5
    orders = visiting_orders(3, torch.Generator().manual_seed(3))
    adjusted, new_targets, _ = gradvac(grads, targets, orders, beta=0.1, segments=segments)
    expected, expected_targets = reference_gradvac(grads.numpy(), targets.numpy(), orders, 0.1, segments.numpy())
    np.testing.assert_allclose(adjusted.numpy(), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(new_targets.numpy(), expected_targets, rtol=1e-9, atol=1e-9)


def test_gradvac_moves_the_treated_cosine_to_its_target():
    grads = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)  # cosine 0
    targets = torch.full((1, 2, 2), 0.5, dtype=torch.float64)
    adjusted, new_targets, count = gradvac(grads, targets, [[1], []], beta=0.01)
    assert count == 1
    assert task_cosines(torch.stack([adjusted[0], grads[1]]))[0, 1] == pytest.approx(0.5, abs=1e-9)
    assert new_targets[0, 0, 1] == pytest.approx(0.99 * 0.5 + 0.01 * 0.0)
    assert torch.equal(adjusted[1], grads[1])


def test_gradvac_leaves_pairs_above_target_alone_and_guards_extreme_targets():
    grads = random_grads(2, 10, seed=4)
    low = torch.full((1, 2, 2), -1.0, dtype=torch.float64)
    adjusted, _, count = gradvac(grads, low, [[1], [0]])
    assert count == 0 and torch.equal(adjusted, grads)
    high = torch.full((1, 2, 2), 1.0, dtype=torch.float64)
    adjusted, _, _ = gradvac(grads, high, [[1], [0]])
    assert torch.isfinite(adjusted).all()


def test_visiting_orders_are_permutations_of_the_other_tasks():
    orders = visiting_orders(4, torch.Generator().manual_seed(0))
    for i, order in enumerate(orders):
        assert sorted(order) == [j for j in range(4) if j != i]


def _surgery_setup(method):
    from hf_multitask.gradients import GradientSurgery

    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    params = list(layer.parameters())
    return layer, GradientSurgery(method, params, num_tasks=2, seed=0, segment_ids=[0, 1])


def _task_grads(layer):
    x = torch.tensor([[1.0, -2.0, 0.5]])
    return [lambda: layer(x).sum(), lambda: -(layer(x) ** 2).sum()]


def test_surgery_none_writes_the_sum_of_task_gradients():
    layer, surgery = _surgery_setup("none")
    expected = [torch.zeros_like(p) for p in layer.parameters()]
    for t, loss_fn in enumerate(_task_grads(layer)):
        loss_fn().backward()
        for e, p in zip(expected, layer.parameters()):
            e += p.grad
        surgery.accumulate(t)
        assert all(p.grad is None for p in layer.parameters())
    surgery.combine()
    for e, p in zip(expected, layer.parameters()):
        torch.testing.assert_close(p.grad, e)


def test_surgery_pcgrad_writes_the_sum_of_projected_rows():
    layer, surgery = _surgery_setup("pcgrad")
    for t, loss_fn in enumerate(_task_grads(layer)):
        loss_fn().backward()
        surgery.accumulate(t)
    rows = surgery.buffer.clone()
    generator_state = surgery.generator.get_state()
    surgery.combine()
    expected, _ = pcgrad(rows, visiting_orders(2, torch.Generator().set_state(generator_state)))
    flat = torch.cat([p.grad.reshape(-1) for p in layer.parameters()])
    torch.testing.assert_close(flat, expected.sum(0))
    stats = surgery.pop_stats(["a", "b"])
    assert set(stats) == {"grad_cos_a_b", "surgery_adjustments_per_step"}


def test_surgery_state_round_trips():
    layer, surgery = _surgery_setup("gradvac")
    for t, loss_fn in enumerate(_task_grads(layer)):
        loss_fn().backward()
        surgery.accumulate(t)
    surgery.combine()
    state = surgery.state_dict()
    _, restored = _surgery_setup("gradvac")
    restored.load_state_dict(state)
    assert torch.equal(restored.aggregator.targets, surgery.aggregator.targets)
    assert torch.equal(torch.randperm(5, generator=restored.generator), torch.randperm(5, generator=surgery.generator))


def test_unknown_surgery_method_is_rejected():
    from hf_multitask.gradients import GradientSurgery

    with pytest.raises(ValueError, match="gradient_surgery must be one of .*did you mean 'pcgrad'"):
        GradientSurgery("pcgard", [torch.nn.Parameter(torch.zeros(1))], num_tasks=2)
