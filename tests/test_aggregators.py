"""The aggregator registry: every method against a reference on the same normalised Gram matrix (torchjd 0.18 where it
has the method, the paper's algorithm in float64 otherwise), declared homogeneity, the scale edge cases, the
zero-gradient conventions, state, and the one `combine` path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_multitask.aggregators import (
    AGGREGATORS,
    Aggregator,
    GradientSurgery,
    aggregate,
    aggregator_names,
    combine,
    get_aggregator,
    register_aggregator,
    segment_runs,
    visiting_orders,
)
from hf_multitask.aggregators.gradvac import gradvac

BUILT_IN = ("none", "pcgrad", "gradvac", "mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl")


def random_jacobian(num_tasks, size=24, seed=0, dtype=torch.float64):
    return torch.randn(num_tasks, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def normalised_gram(jacobian):
    gram = (jacobian @ jacobian.T).double()
    return gram / gram.diagonal().max()


def our_weights(name, gram, seed=0, **options):
    aggregator = get_aggregator(name)(gram.shape[0], 1, **options)
    weights, _ = aggregate(aggregator, gram[None], torch.Generator().manual_seed(seed))
    return weights[0]


def fresh_update(name, jacobian, seed=0):
    aggregator = get_aggregator(name)(jacobian.shape[0], 1)
    update, _, _ = combine(aggregator, jacobian, torch.Generator().manual_seed(seed))
    return update.clone()


def assert_relative(actual, expected, rtol=1e-5, label=""):
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    scale = expected.abs().max().clamp_min(1e-300)
    assert float((actual - expected).abs().max() / scale) <= rtol, f"{label}: {actual} vs {expected}"


# ---- the registry ----

def test_every_built_in_method_is_registered_and_none_comes_first():
    assert set(BUILT_IN) <= set(aggregator_names()) and aggregator_names()[0] == "none"
    for name in BUILT_IN:
        assert get_aggregator(name).degree in (0, 1)


def test_unknown_aggregator_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match="gradient_surgery must be one of .*did you mean 'upgrad'"):
        get_aggregator("upgard")


def test_a_second_aggregator_under_a_taken_name_is_rejected():
    class Other(Aggregator):
        name = "pcgrad"

    with pytest.raises(ValueError, match="aggregator named .pcgrad. is registered already"):
        register_aggregator(Other)


def test_training_arguments_take_their_choices_from_the_registry(tmp_path):
    from hf_multitask import MultitaskTrainingArguments

    for name in BUILT_IN:
        args = MultitaskTrainingArguments(str(tmp_path), gradient_surgery=name, use_cpu=True, report_to=[])
        assert args.task_sampling_grouped == (name != "none") or name == "none"
    with pytest.raises(ValueError, match="did you mean 'mgda'"):
        MultitaskTrainingArguments(str(tmp_path), gradient_surgery="mgdaa", use_cpu=True, report_to=[])


# ---- references: torchjd 0.18 on the same normalised Gram matrix, same visiting orders ----

def forced_randperm(permutations):
    queue = list(permutations)

    def randperm(n, *args, **kwargs):
        return torch.tensor(queue.pop(0), dtype=torch.long)

    return randperm


@pytest.mark.parametrize(("num_tasks", "seed"), itertools.product((2, 3, 5), range(6)))
def test_pcgrad_equals_torchjd(num_tasks, seed, monkeypatch):
    torchjd = pytest.importorskip("torchjd.aggregation")
    gram = normalised_gram(random_jacobian(num_tasks, seed=seed) - 0.3 * seed)
    orders = visiting_orders(num_tasks, torch.Generator().manual_seed(seed))
    ours = our_weights("pcgrad", gram, seed)
    monkeypatch.setattr(torch, "randperm", forced_randperm([[*order, i] for i, order in enumerate(orders)]))
    assert_relative(ours, torchjd.PCGradWeighting()(gram), label="pcgrad")


@pytest.mark.parametrize(("num_tasks", "seed"), itertools.product((2, 3, 5), range(4)))
def test_gradvac_equals_torchjd_over_steps(num_tasks, seed, monkeypatch):
    torchjd = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(seed)
    ours = get_aggregator("gradvac")(num_tasks, 1, gradvac_beta=0.5)
    theirs = torchjd.GradVacWeighting(beta=0.5, eps=0.0)
    for step in range(6):
        gram = normalised_gram(random_jacobian(num_tasks, seed=100 * seed + step) + 0.2 * step)
        orders = visiting_orders(num_tasks, torch.Generator().set_state(generator.get_state()))
        weights, _ = aggregate(ours, gram[None], generator)
        others = [[j for j in range(num_tasks) if j != i] for i in range(num_tasks)]
        with monkeypatch.context() as patch:
            patch.setattr(torch, "randperm", forced_randperm(
                [[others[i].index(j) for j in order] for i, order in enumerate(orders)]))
            expected = theirs(gram)
        assert_relative(weights[0], expected, label=f"gradvac step {step}")
        torch.testing.assert_close(ours.targets[0], theirs._phi_t.double(), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", ["mgda", "imtl_g", "aligned_mtl"])
@pytest.mark.parametrize(("num_tasks", "seed"), itertools.product((2, 3, 5), range(6)))
def test_gram_only_methods_equal_torchjd(name, num_tasks, seed):
    torchjd = pytest.importorskip("torchjd.aggregation")
    reference = {"mgda": torchjd.MGDAWeighting, "imtl_g": torchjd.IMTLGWeighting,
                 "aligned_mtl": torchjd.AlignedMTLWeighting}[name]()
    gram = normalised_gram(random_jacobian(num_tasks, seed=seed) - 0.2 * seed)
    assert_relative(our_weights(name, gram), reference(gram), label=name)


def dual_cone_reference(u, gram):
    """argmin_{w >= u} w^T G w by enumerating which constraints are active, with the KKT conditions (float64)."""
    num_tasks, best = len(u), None
    for free in itertools.product((False, True), repeat=num_tasks):
        free = np.array(free)
        w = u.copy()
        if free.any():
            w[free] = np.linalg.solve(gram[np.ix_(free, free)], -gram[np.ix_(free, ~free)] @ u[~free])
        multipliers = gram @ w
        if (w[free] >= u[free] - 1e-12).all() and (multipliers[~free] >= -1e-12).all():
            if best is None or w @ gram @ w < best @ gram @ best:
                best = w
    return best


@pytest.mark.parametrize(("num_tasks", "seed"), itertools.product((2, 3, 5), range(6)))
def test_upgrad_and_dualproj_equal_the_papers_projection(num_tasks, seed):
    gram = normalised_gram(random_jacobian(num_tasks, seed=seed) - 0.4 * seed)
    g = gram.numpy()
    mean = np.full(num_tasks, 1.0 / num_tasks)
    assert_relative(our_weights("dualproj", gram), dual_cone_reference(mean, g), label="dualproj")
    upgrad = sum(dual_cone_reference(np.eye(num_tasks)[i] / num_tasks, g) for i in range(num_tasks))
    assert_relative(our_weights("upgrad", gram), upgrad, label="upgrad")


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_projection_methods_never_conflict_with_a_task(name):
    for seed in range(10):
        jacobian = random_jacobian(4, seed=seed) - 0.5
        update = fresh_update(name, jacobian, seed)
        assert (jacobian @ update >= -1e-9 * update.norm() * jacobian.norm(dim=1)).all()


# ---- homogeneity and the scale edge cases ----

@settings(deadline=None, max_examples=40)
@given(name=st.sampled_from(BUILT_IN), num_tasks=st.sampled_from([2, 3, 5]), seed=st.integers(0, 10**6),
       exponent=st.floats(-8, 8))
def test_every_method_has_its_declared_homogeneity(name, num_tasks, seed, exponent):
    c = 10.0**exponent
    jacobian = random_jacobian(num_tasks, 48, seed, dtype=torch.float32) - 0.2
    degree = get_aggregator(name).degree
    expected = fresh_update(name, jacobian, seed).double() * c**degree
    assert_relative(fresh_update(name, jacobian * c, seed), expected, rtol=1e-5, label=f"{name} c={c:g}")


@pytest.mark.parametrize("name", BUILT_IN)
def test_gradients_beyond_float32_gram_range_are_aggregated(name):
    jacobian = random_jacobian(3, 48, seed=5, dtype=torch.float32) - 0.3
    big = jacobian * 2.0**64  # |g| ~ 1.8e19: the float32 Gram matrix overflows
    assert not torch.isfinite(big @ big.T).all()
    assert_relative(fresh_update(name, big, 5), fresh_update(name, jacobian, 5).double() * 2.0**64, rtol=1e-5,
                    label=name)


def test_pcgrad_projects_tiny_conflicting_gradients_like_torchjd(monkeypatch):
    torchjd = pytest.importorskip("torchjd.aggregation")
    jacobian = torch.tensor([[1.0, 0.2, -0.4], [-0.9, 0.5, 0.1], [0.1, -1.0, 0.6]]) * 3e-7  # |g|^2 ~ 1e-13
    orders = visiting_orders(3, torch.Generator().manual_seed(0))
    update, _, count = combine(get_aggregator("pcgrad")(3), jacobian, torch.Generator().manual_seed(0))
    assert count > 0
    monkeypatch.setattr(torch, "randperm", forced_randperm([[*order, i] for i, order in enumerate(orders)]))
    expected = torchjd.PCGradWeighting()(normalised_gram(jacobian.double())) @ jacobian.double()
    assert_relative(update, expected, rtol=1e-6, label="pcgrad at 3e-7")


def test_gradvac_is_exact_at_tiny_gradients():
    jacobian = (random_jacobian(3, 30, seed=2) - 0.3).float()
    targets = torch.full((1, 3, 3), 0.3)
    orders = visiting_orders(3, torch.Generator().manual_seed(1))
    small = jacobian * 1.2e-7
    adjusted_small, _, count = gradvac(small, targets, orders)
    adjusted, _, _ = gradvac(jacobian, targets, orders)
    assert count > 0
    assert_relative(adjusted_small.sum(0), adjusted.sum(0).double() * 1.2e-7, rtol=1e-5, label="gradvac at 1.2e-7")


def test_a_gradvac_target_of_one_is_not_adjusted_to_but_still_moves():
    jacobian = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # cosine 0.6
    adjusted, targets, count = gradvac(jacobian, torch.ones(1, 2, 2, dtype=torch.float64), [[1], [0]], beta=0.1)
    assert count == 0 and torch.equal(adjusted, jacobian)
    assert targets[0, 0, 1] == pytest.approx(0.9 + 0.1 * 0.6)


# ---- zero gradients ----

@pytest.mark.parametrize("name", BUILT_IN)
def test_all_zero_gradients_give_a_zero_update(name):
    update = fresh_update(name, torch.zeros(3, 10))
    assert torch.equal(update, torch.zeros(10))


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_task_with_a_zero_gradient_gives_a_finite_update(name):
    jacobian = random_jacobian(3, 20, seed=3, dtype=torch.float32) - 0.3
    jacobian[1] = 0
    update = fresh_update(name, jacobian)
    assert torch.isfinite(update).all()
    if name == "mgda":  # the zero gradient is the hull's min-norm point
        assert torch.equal(update, torch.zeros(20))
    if name == "none":
        assert torch.equal(update, jacobian.sum(0))


def test_pcgrad_never_projects_onto_a_zero_gradient():
    jacobian = torch.tensor([[1.0, -1.0], [0.0, 0.0], [-1.0, 0.2]])
    _, _, count = combine(get_aggregator("pcgrad")(3), jacobian, torch.Generator().manual_seed(0))
    expected_count = 2  # tasks 0 and 2 conflict with each other; task 1 is skipped
    assert count == expected_count


def test_non_finite_gradients_are_summed_as_without_surgery():
    jacobian = random_jacobian(2, 6, dtype=torch.float32)
    jacobian[0, 0] = float("nan")
    update, _, count = combine(get_aggregator("upgrad")(2), jacobian, torch.Generator())
    assert count == 0 and torch.isnan(update[0]) and torch.equal(update[1:], jacobian[:, 1:].sum(0))


# ---- a degree-0 method, and adding one ----

class UnitMean(Aggregator):
    """Test-only: the mean of the unit gradients (degree 0: the update does not depend on the gradients' scale)."""

    name = "test_unit_mean"
    degree = 0

    def weights(self, grams, generator):
        return 1.0 / grams.diagonal(dim1=1, dim2=2).sqrt() / grams.shape[1], 0


@pytest.fixture
def unit_mean():
    register_aggregator(UnitMean)
    yield UnitMean
    del AGGREGATORS[UnitMean.name]


def test_a_degree_zero_method_is_rescaled_to_its_degree(unit_mean):
    jacobian = random_jacobian(3, 12, seed=4)
    expected = (jacobian / jacobian.norm(dim=1, keepdim=True)).mean(0)
    for c in (1e-8, 1.0, 1e8):
        torch.testing.assert_close(fresh_update(unit_mean.name, jacobian * c), expected)


def test_a_registered_aggregator_trains_through_gradient_surgery(unit_mean):
    layer = torch.nn.Linear(3, 2)
    surgery = GradientSurgery(unit_mean.name, list(layer.parameters()), num_tasks=2)
    for task, sign in enumerate((1.0, -2.0)):
        (sign * layer(torch.ones(1, 3)).sum()).backward()
        surgery.accumulate(task)
    rows = surgery.buffer.clone()
    surgery.combine()
    flat = torch.cat([p.grad.reshape(-1) for p in layer.parameters()])
    torch.testing.assert_close(flat, (rows / rows.norm(dim=1, keepdim=True)).mean(0))


# ---- GradientSurgery: the combine path, per-layer GradVac, state ----

def test_surgery_gradvac_per_layer_equals_gradvac():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (5, 7, 4)]
    surgery = GradientSurgery("gradvac", params, num_tasks=3, seed=3, gradvac_beta=0.3, segment_ids=["a", "b", "a"])
    targets = torch.zeros(2, 3, 3, dtype=torch.float64)
    for _ in range(4):
        surgery.buffer.copy_(torch.randn(3, 16) - 0.3)
        rows, state = surgery.buffer.clone(), surgery.generator.get_state()
        surgery.combine()
        orders = visiting_orders(3, torch.Generator().set_state(state))
        adjusted, targets, _ = gradvac(rows, targets, orders, beta=0.3, segments=surgery.segments)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch.testing.assert_close(flat, adjusted.sum(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(surgery.aggregator.targets, targets)
    assert [k for k, _, _ in segment_runs(surgery.segments)] == [0, 1, 0]


def test_surgery_writes_into_the_same_storage_every_step():
    params = [torch.nn.Parameter(torch.zeros(4))]
    surgery = GradientSurgery("pcgrad", params, num_tasks=2)
    pointers = set()
    for _ in range(3):
        surgery.buffer.copy_(torch.randn(2, 4))
        surgery.combine()
        pointers.add(params[0].grad.data_ptr())
    assert pointers == {surgery.total.data_ptr()}


@pytest.mark.parametrize("name", BUILT_IN)
def test_surgery_state_round_trips_and_continues_identically(name):
    def build():
        params = [torch.nn.Parameter(torch.zeros(n)) for n in (6, 4)]
        return params, GradientSurgery(name, params, num_tasks=3, seed=7, segment_ids=[0, 1])

    (params, first), (params_b, second) = build(), build()
    buffers = [torch.randn(3, 10, generator=torch.Generator().manual_seed(s)) - 0.3 for s in range(4)]
    for buffer in buffers[:2]:
        first.buffer.copy_(buffer)
        first.combine()
    second.load_state_dict({k: v.clone() for k, v in first.state_dict().items()})
    for buffer in buffers[2:]:
        first.buffer.copy_(buffer)
        second.buffer.copy_(buffer)
        first.combine()
        second.combine()
        assert torch.equal(torch.cat([p.grad for p in params]), torch.cat([p.grad for p in params_b]))


def test_the_docs_example_aggregator_registers_and_trains(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "gradients.md").read_text(encoding="utf-8")
    section = text[text.index("## Adding an aggregator"):]
    code = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 9)]
    monkeypatch.chdir(tmp_path)
    try:
        namespace = {}
        exec(compile(code, "docs/gradients.md", "exec"), namespace)
        assert namespace["args"].gradient_surgery == "rlw" and namespace["args"].task_sampling_grouped
        layer = torch.nn.Linear(3, 2)
        surgery = GradientSurgery("rlw", list(layer.parameters()), num_tasks=2, seed=1)
        surgery.buffer.copy_(torch.randn(2, 8))
        draw = torch.softmax(torch.randn(2, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 0)
        surgery.combine()
        flat = torch.cat([p.grad.reshape(-1) for p in layer.parameters()])
        torch.testing.assert_close(flat, draw.float() @ surgery.buffer)
    finally:
        AGGREGATORS.pop("rlw", None)


@pytest.mark.parametrize("returned, described", [
    (lambda grams: (torch.ones(grams.shape[:2]),), r"a tuple of 1: \(a tensor \[1, 3\]\)"),
    (lambda grams: torch.ones(grams.shape[:2]), r"a tensor \[1, 3\]"),
    (lambda grams: (torch.ones(3), 0), r"a tuple of 2: \(a tensor \[3\], int\)"),
])
def test_a_method_returning_the_wrong_shape_is_named(returned, described):
    class Wrong(Aggregator):
        name = "wrong"

        def weights(self, grams, generator):
            return returned(grams)

    with pytest.raises(TypeError, match=r"Aggregator 'wrong'.weights must return \(weights \[1, 3\], number of "
                                        r"adjustments\), got " + described):
        aggregate(Wrong(3), torch.eye(3)[None], torch.Generator())
