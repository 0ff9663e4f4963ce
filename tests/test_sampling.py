from collections import Counter

import numpy as np
import pytest

from hf_multitask import MultitaskBatchSampler, annealed_alpha
from hf_multitask.sampling import task_probabilities

SIZES = {"sst": 30, "quora": 100, "sts": 20}
OFFSETS = {"sst": 0, "quora": 30, "sts": 130}


def task_of(index):
    return max((o, n) for n, o in OFFSETS.items() if index >= o)[1]


def test_annealed_alpha_endpoints_and_paper_formula():
    assert annealed_alpha(0.0) == 1.0
    assert annealed_alpha(1.0) == pytest.approx(0.2)
    epochs = 5
    for e in range(1, epochs + 1):  # the paper: alpha = 1 - 0.8 (e - 1) / (E - 1)
        assert annealed_alpha((e - 1) / (epochs - 1)) == pytest.approx(1 - 0.8 * (e - 1) / (epochs - 1))


def test_annealed_schedule_is_one_at_first_epoch_and_point_two_at_last():
    sampler = MultitaskBatchSampler(SIZES, batch_size=4, strategy="annealed")
    sampler.set_total_batches(3 * len(sampler))
    sampler.set_epoch(0)
    assert {annealed_alpha(sampler.progress(b)) for b in range(len(sampler))} == {1.0}
    sampler.set_epoch(2)
    assert {round(annealed_alpha(sampler.progress(b)), 6) for b in range(len(sampler))} == {0.2}


def test_annealed_within_one_epoch_goes_from_one_to_point_two():
    sampler = MultitaskBatchSampler(SIZES, batch_size=4, strategy="annealed")
    assert annealed_alpha(sampler.progress(0)) == 1.0
    assert annealed_alpha(sampler.progress(len(sampler) - 1)) == pytest.approx(0.2)


def test_task_probabilities():
    np.testing.assert_allclose(task_probabilities([10, 30], 1.0), [0.25, 0.75])
    np.testing.assert_allclose(task_probabilities([10, 30], 0.0), [0.5, 0.5])


@pytest.mark.parametrize("strategy", ["round_robin", "proportional", "annealed", "uniform"])
def test_every_batch_is_single_task_and_full(strategy):
    sampler = MultitaskBatchSampler(SIZES, batch_size=8, strategy=strategy, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4 + 13 + 3
    for batch in batches:
        assert len(batch) == 8 and len({task_of(i) for i in batch}) == 1


@pytest.mark.parametrize("strategy", ["round_robin", "proportional", "annealed", "uniform"])
def test_deterministic_given_seed_and_epoch(strategy):
    def run(seed, epoch):
        sampler = MultitaskBatchSampler(SIZES, batch_size=4, strategy=strategy, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert run(0, 1) == run(0, 1)
    assert run(0, 1) != run(0, 2)
    assert run(0, 1) != run(1, 1)


def test_proportional_covers_every_example_each_epoch():
    sampler = MultitaskBatchSampler(SIZES, batch_size=8, strategy="proportional")
    seen = Counter(i for batch in sampler for i in batch)
    assert set(seen) == set(range(150))  # every example at least once; batch-filling repeats a few


def test_round_robin_cycles_tasks_in_order():
    sampler = MultitaskBatchSampler(SIZES, batch_size=4, strategy="round_robin")
    assert [task_of(b[0]) for b in list(sampler)[:6]] == ["sst", "quora", "sts"] * 2


def test_no_example_repeats_before_its_task_is_covered():
    sampler = MultitaskBatchSampler(SIZES, batch_size=4, strategy="round_robin")
    sts = [i for batch in sampler for i in batch if task_of(i) == "sts"]
    assert len(set(sts[:20])) == 20


@pytest.mark.parametrize("strategy", ["round_robin", "proportional", "annealed", "uniform"])
def test_ranks_agree_on_the_task_and_take_disjoint_shards(strategy):
    world = 3
    per_rank = [list(MultitaskBatchSampler(SIZES, 4, strategy, seed=7, num_processes=world, process_index=r))
                for r in range(world)]
    single = list(MultitaskBatchSampler(SIZES, 4 * world, strategy, seed=7))
    assert len({len(b) for b in per_rank}) == 1
    for step, batches in enumerate(zip(*per_rank)):
        assert len({task_of(b[0]) for b in batches}) == 1
        flat = [i for b in batches for i in b]
        assert len(set(flat)) == len(flat)
        assert flat == single[step]  # the ranks together make the single-process global batch


def test_group_by_length_makes_batches_of_similar_length():
    rng = np.random.default_rng(0)
    lengths = {name: rng.integers(5, 100, size=n).tolist() for name, n in SIZES.items()}
    grouped = MultitaskBatchSampler(SIZES, 5, "proportional", lengths=lengths, group_by_length=True)
    plain = MultitaskBatchSampler(SIZES, 5, "proportional")

    def padded(sampler):
        return sum(max(lengths[task_of(i)][i - OFFSETS[task_of(i)]] for i in b) * len(b) for b in sampler)

    assert padded(grouped) < 0.8 * padded(plain)
    assert Counter(task_of(b[0]) for b in grouped) == Counter(task_of(b[0]) for b in plain)


def test_grouped_mode_yields_one_batch_of_every_task():
    sampler = MultitaskBatchSampler(SIZES, batch_size=2, grouped=True)
    for batch in sampler:
        assert Counter(task_of(i) for i in batch) == {"sst": 2, "quora": 2, "sts": 2}


def test_state_dict_resumes_the_exact_sequence():
    sampler = MultitaskBatchSampler(SIZES, batch_size=4, strategy="annealed", seed=5)
    sampler.set_epoch(1)
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(7)]
    state = sampler.state_dict()
    resumed = MultitaskBatchSampler(SIZES, batch_size=4, strategy="annealed", seed=5)
    resumed.load_state_dict(state)
    sampler.set_epoch(1)
    assert head + list(resumed) == list(sampler)


def test_state_dict_after_set_epoch_resumes_at_the_new_epochs_start():
    """A state saved between two epochs (after `set_epoch`, before the first batch) resumes the whole new epoch."""
    sampler = MultitaskBatchSampler(SIZES, batch_size=4, strategy="annealed", seed=5)
    list(sampler)
    sampler.set_epoch(1)
    resumed = MultitaskBatchSampler(SIZES, batch_size=4, strategy="annealed", seed=5)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == list(sampler) and len(list(resumed)) == len(sampler)


def test_state_dict_at_an_epochs_end_resumes_the_whole_next_epoch():
    """A state saved after an epoch's last batch (position == len), then `set_epoch(next)`: the whole next epoch,
    not an empty one (the skip of the loaded position belongs to the old epoch)."""
    sampler = MultitaskBatchSampler(SIZES, batch_size=4, strategy="annealed", seed=5)
    list(sampler)
    state = sampler.state_dict()
    assert state["position"] == len(sampler)
    resumed = MultitaskBatchSampler(SIZES, batch_size=4, strategy="annealed", seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    sampler.set_epoch(1)
    assert list(resumed) == list(sampler) and len(list(resumed)) == len(sampler)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="Unknown task_sampling strategy 'random'"):
        MultitaskBatchSampler(SIZES, 4, "random")
    with pytest.raises(ValueError, match="at least one example"):
        MultitaskBatchSampler({"sst": 0}, 4)
    with pytest.raises(ValueError, match="group_by_length needs"):
        MultitaskBatchSampler(SIZES, 4, group_by_length=True)
    with pytest.raises(ValueError, match="saved with another task_sizes {'sst': 3}"):
        MultitaskBatchSampler(SIZES, 4).load_state_dict(MultitaskBatchSampler({"sst": 3}, 4).state_dict())
    with pytest.raises(ValueError, match=r"another grouped True \(this sampler: False\); global_batch_size 8 "):
        MultitaskBatchSampler(SIZES, 4).load_state_dict(MultitaskBatchSampler(SIZES, 8, grouped=True).state_dict())
