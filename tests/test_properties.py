"""Property tests (hypothesis): the sampler for any sizes, strategy and world size; the projections; the losses."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_multitask import MultitaskBatchSampler
from hf_multitask.gradients import gradvac, pcgrad, task_cosines, visiting_orders
from hf_multitask.losses import ordinal_log_loss, symmetric_kl

sizes_strategy = st.lists(st.integers(1, 60), min_size=1, max_size=4)


def run_ranks(sizes, batch_size, strategy, world, seed, epoch, group):
    task_sizes = {f"t{i}": n for i, n in enumerate(sizes)}
    lengths = {name: list(np.random.default_rng(seed).integers(1, 50, n)) for name, n in task_sizes.items()}
    ranks = []
    for rank in range(world):
        sampler = MultitaskBatchSampler(task_sizes, batch_size, strategy, seed=seed, num_processes=world,
                                        process_index=rank, lengths=lengths if group else None,
                                        group_by_length=group)
        sampler.set_epoch(epoch)
        ranks.append(list(sampler))
    offsets = np.cumsum([0, *sizes[:-1]])
    return ranks, offsets


@settings(deadline=None, max_examples=60)
@given(sizes=sizes_strategy, batch_size=st.integers(1, 8), world=st.integers(1, 4), seed=st.integers(0, 10**6),
       epoch=st.integers(0, 5), group=st.booleans(),
       strategy=st.sampled_from(["round_robin", "proportional", "annealed", "uniform"]))
def test_sampler_properties(sizes, batch_size, world, seed, epoch, group, strategy):
    restarts = len(sizes) == 1 or strategy == "proportional"  # every task drawn one pass per epoch
    consumed = {t: [] for t in range(len(sizes))}  # each task's examples from epoch 0 on (or from this epoch's start)
    for current in range(epoch + 1):
        ranks, offsets = run_ranks(sizes, batch_size, strategy, world, seed, current, group)
        assert len({len(r) for r in ranks}) == 1
        consumed = {t: [] for t in range(len(sizes))} if restarts else consumed
        for step_batches in zip(*ranks):
            tasks = {int(np.searchsorted(offsets, i, side="right") - 1) for b in step_batches for i in b}
            assert len(tasks) == 1  # every rank on the same task
            flat = [i for b in step_batches for i in b]
            task = tasks.pop()
            if sizes[task] >= batch_size * world:
                assert len(set(flat)) == len(flat)  # shards don't overlap
            consumed[task].extend(flat)
    for task, seen in consumed.items():
        for start in range(0, len(seen) - sizes[task] + 1, sizes[task]):
            passed = seen[start:start + sizes[task]]
            assert len(set(passed)) == len(passed)  # no repeat before the task's data is covered, epochs included


@settings(deadline=None, max_examples=60)
@given(num_tasks=st.integers(2, 5), size=st.integers(1, 30), seed=st.integers(0, 10**6))
def test_pcgrad_properties(num_tasks, size, seed):
    grads = torch.randn(num_tasks, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    orders = visiting_orders(num_tasks, torch.Generator().manual_seed(seed))
    projected, _ = pcgrad(grads, orders)
    assert torch.isfinite(projected).all()
    for i in range(num_tasks):  # a projected gradient never conflicts with the last task it was projected on
        last = orders[i][-1]
        assert projected[i] @ grads[last] >= -1e-9 * grads[last].norm() * max(projected[i].norm(), 1)
    if num_tasks == 2:
        assert projected[0] @ projected[1] >= -1e-9


@settings(deadline=None, max_examples=60)
@given(num_tasks=st.integers(2, 4), size=st.integers(2, 30), seed=st.integers(0, 10**6),
       target=st.floats(-0.99, 0.99))
def test_gradvac_reaches_target_for_its_last_pair(num_tasks, size, seed, target):
    grads = torch.randn(num_tasks, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    targets = torch.full((1, num_tasks, num_tasks), target, dtype=torch.float64)
    orders = visiting_orders(num_tasks, torch.Generator().manual_seed(seed))
    adjusted, _, _ = gradvac(grads, targets, orders)
    assert torch.isfinite(adjusted).all()
    for i in range(num_tasks):
        j = orders[i][-1]
        cosine = task_cosines(torch.stack([adjusted[i], grads[j]]))[0, 1]
        assert cosine >= target - 1e-6  # raised to the target when below it, else left above it


@settings(deadline=None, max_examples=40)
@given(sizes=sizes_strategy, batch_size=st.integers(1, 8), world=st.integers(1, 4), seed=st.integers(0, 10**6),
       strategy=st.sampled_from(["round_robin", "proportional", "annealed", "uniform"]))
def test_grouped_sampler_gives_every_task_at_every_step(sizes, batch_size, world, seed, strategy):
    task_sizes = {f"t{i}": n for i, n in enumerate(sizes)}
    offsets = np.cumsum([0, *sizes[:-1]])
    ranks = [list(MultitaskBatchSampler(task_sizes, batch_size, strategy, seed=seed, num_processes=world,
                                        process_index=rank, grouped=True)) for rank in range(world)]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) > 0
    for step_batches in zip(*ranks):
        for rank_batch in step_batches:
            tasks = [int(np.searchsorted(offsets, i, side="right") - 1) for i in rank_batch]
            assert set(tasks) == set(range(len(sizes)))  # one batch of every task on every rank
        for task in range(len(sizes)):
            if sizes[task] >= batch_size * world:
                flat = [i for b in step_batches for i in b if offsets[task] <= i < offsets[task] + sizes[task]]
                assert len(set(flat)) == len(flat)  # the task's shards don't overlap


logits_strategy = st.integers(2, 7).flatmap(lambda c: st.tuples(
    st.just(c), st.integers(1, 6), st.integers(0, 10**6), st.floats(0.1, 30.0)))


@settings(deadline=None, max_examples=80)
@given(shape=logits_strategy, alpha=st.floats(0.25, 3.0))
def test_ordinal_log_loss_properties(shape, alpha):
    classes, batch, seed, scale = shape
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * scale
    labels = torch.randint(0, classes, (batch,), generator=generator)
    loss = ordinal_log_loss(logits, labels, alpha)
    assert torch.isfinite(loss) and loss >= 0
    total = 0.0  # independent reference: plain Python in float64, log(1 - p_i) = log(sum_{j != i} e^z_j / sum_j e^z_j)
    for row, y in zip(logits.tolist(), labels.tolist()):
        top = max(row)
        log_all = math.log(math.fsum(math.exp(z - top) for z in row))
        for i in range(classes):
            if i != y:
                log_rest = math.log(math.fsum(math.exp(z - top) for j, z in enumerate(row) if j != i))
                total -= abs(y - i) ** alpha * (log_rest - log_all)
    assert math.isclose(float(loss), total / batch, rel_tol=1e-4, abs_tol=1e-5)
    confident = torch.full((batch, classes), -50.0).scatter(1, labels[:, None], 50.0)
    assert ordinal_log_loss(confident, labels, alpha) < 1e-6  # all mass on the gold class: no loss
    assert ordinal_log_loss(confident, labels, alpha) <= loss + 1e-6


@settings(deadline=None, max_examples=80)
@given(shape=logits_strategy)
def test_symmetric_kl_properties(shape):
    classes, batch, seed, scale = shape
    generator = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(batch, classes, generator=generator) * scale for _ in range(2))
    ab, ba = symmetric_kl(a, b, "none"), symmetric_kl(b, a, "none")
    assert torch.isfinite(ab).all() and (ab >= -1e-6).all()
    torch.testing.assert_close(ab, ba)
    assert symmetric_kl(a, a, "none").abs().max() < 1e-6
    assert symmetric_kl(a, a + 3.0, "none").abs().max() < 1e-5  # invariant to a shift of the logits
