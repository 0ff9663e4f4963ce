"""Property tests (hypothesis): the sampler for any sizes, strategy and world size; the projections."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_multitask import MultitaskBatchSampler
from hf_multitask.gradients import gradvac, pcgrad, task_cosines, visiting_orders

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
    ranks, offsets = run_ranks(sizes, batch_size, strategy, world, seed, epoch, group)
    assert len({len(r) for r in ranks}) == 1
    consumed = {t: [] for t in range(len(sizes))}
    for step_batches in zip(*ranks):
        tasks = {int(np.searchsorted(offsets, i, side="right") - 1) for b in step_batches for i in b}
        assert len(tasks) == 1  # every rank on the same task
        flat = [i for b in step_batches for i in b]
        task = tasks.pop()
        if sizes[task] >= batch_size * world:
            assert len(set(flat)) == len(flat)  # shards don't overlap
        consumed[task].extend(flat)
    for task, seen in consumed.items():
        head = seen[: sizes[task]]
        assert len(set(head)) == len(head)  # no repeat before the task's data is covered


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
