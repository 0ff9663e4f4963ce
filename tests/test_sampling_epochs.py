"""The sampler across epochs: each task's examples run on from one epoch to the next (no example repeats before all
of its task's examples were seen, epoch boundaries included), and epoch 0, `proportional` and single-task runs draw
exactly what they drew before that change."""

import hashlib
import itertools
import json
import logging

import numpy as np
import pytest

from hf_multitask import MultitaskBatchSampler
from hf_multitask.checkpointing import MANIFEST_NAME
from hf_multitask.sampling import SamplerPlanState

from .conftest import make_model, make_trainer

SIZES = {"sst": 30, "quora": 100, "sts": 20}
OFFSETS = {"sst": 0, "quora": 30, "sts": 130}
LENGTHS = {name: np.random.default_rng(0).integers(5, 100, size=n).tolist() for name, n in SIZES.items()}


def task_of(index):
    return max((o, n) for n, o in OFFSETS.items() if index >= o)[1]


def batches_digest(strategy, by_length, grouped, processes, epoch, tasks, epochs_budget):
    """sha256 (first 16 hex digits) of every rank's batches of one epoch, as JSON."""
    sizes = SIZES if tasks == "three" else {tasks: SIZES[tasks]}
    ranks = []
    for rank in range(processes):
        sampler = MultitaskBatchSampler(sizes, 4, strategy, seed=3, num_processes=processes, process_index=rank,
                                        lengths={k: LENGTHS[k] for k in sizes} if by_length else None,
                                        group_by_length=by_length, grouped=grouped)
        sampler.set_total_batches(int(epochs_budget * len(sampler)))
        sampler.set_epoch(epoch)
        ranks.append(list(sampler))
    return hashlib.sha256(json.dumps(ranks).encode()).hexdigest()[:16]


# Computed with the sampler of 3961bde, whose task streams restarted at every epoch. Key: (strategy,
# group_by_length, grouped, processes, epoch, tasks, budget in epochs). Epoch 0 of every plan; epochs 1 and 2 of
# the plans whose every task is drawn one pass per epoch (`proportional`, a single task), which still restart.
PINNED = {
    ('round_robin', False, False, 1, 0, 'three', 3): 'ca744c654e66e5f9',
    ('round_robin', False, False, 2, 0, 'three', 3): 'a445c3983995268a',
    ('round_robin', True, False, 1, 0, 'three', 3): 'a3ea91735fa49b5f',
    ('round_robin', True, False, 2, 0, 'three', 3): '454a049b32aad103',
    ('proportional', False, False, 1, 0, 'three', 3): '8afc99244bc20718',
    ('proportional', False, False, 2, 0, 'three', 3): '0a6969b36e9bb937',
    ('proportional', True, False, 1, 0, 'three', 3): '4db24895d0403aac',
    ('proportional', True, False, 2, 0, 'three', 3): 'd322a3a28fcde804',
    ('annealed', False, False, 1, 0, 'three', 3): '22090a217a7bfbec',
    ('annealed', False, False, 2, 0, 'three', 3): '2204b5265a663e73',
    ('annealed', False, True, 1, 0, 'three', 3): '1e84ad104573c0e6',
    ('annealed', False, True, 2, 0, 'three', 3): 'fe2b719bb5c8ccba',
    ('annealed', True, False, 1, 0, 'three', 3): '0830c1e818775428',
    ('annealed', True, False, 2, 0, 'three', 3): '4fb7794685c0ca64',
    ('annealed', True, True, 1, 0, 'three', 3): '9384905f475db995',
    ('annealed', True, True, 2, 0, 'three', 3): '90121b3bfa8f6e43',
    ('uniform', False, False, 1, 0, 'three', 3): 'f66298e36a85fb62',
    ('uniform', False, False, 2, 0, 'three', 3): '1481a093f0bcf0cd',
    ('uniform', True, False, 1, 0, 'three', 3): '3e8e994d247547a5',
    ('uniform', True, False, 2, 0, 'three', 3): 'd28f1e0b3c80c5ad',
    ('annealed', False, False, 1, 0, 'three', 2.5): 'b6473106131867c6',
    ('proportional', False, False, 2, 1, 'three', 3): '9717bdbb4d96de65',
    ('round_robin', False, False, 2, 1, 'quora', 3): '356f634b23192231',
    ('proportional', True, False, 2, 1, 'three', 3): '71404d9c692006fc',
    ('round_robin', True, False, 2, 1, 'quora', 3): '38e7522b9a18e851',
    ('proportional', False, False, 2, 2, 'three', 3): 'ad6880eb46c49461',
    ('round_robin', False, False, 2, 2, 'quora', 3): '93e654f60ff0c537',
    ('proportional', True, False, 2, 2, 'three', 3): '480d8ed1643b5704',
    ('round_robin', True, False, 2, 2, 'quora', 3): 'f514030fe768d1df',
}


@pytest.mark.parametrize("config", list(PINNED), ids=lambda c: "-".join(map(str, c)))
def test_epoch_zero_proportional_and_single_task_batches_are_unchanged(config):
    assert batches_digest(*config) == PINNED[config]


def run_epochs(strategy, epochs, by_length=False, processes=1, grouped=False, batch_size=4, seed=0):
    """Every rank's batches of epochs 0 to `epochs` - 1 of a run of `epochs`, joined per step into the global batch
    (grouped: each task's part, one after the other)."""
    samplers = [MultitaskBatchSampler(SIZES, batch_size, strategy, seed, processes, rank,
                                      lengths=LENGTHS if by_length else None, group_by_length=by_length,
                                      grouped=grouped) for rank in range(processes)]
    steps = []
    for epoch in range(epochs):
        for sampler in samplers:
            sampler.set_total_batches(epochs * len(sampler))
            sampler.set_epoch(epoch)
        steps += [sorted((i for batch in batches for i in batch), key=task_of) for batches in zip(*samplers)]
    return steps


@pytest.mark.parametrize("by_length", [False, True], ids=["plain", "group_by_length"])
@pytest.mark.parametrize("strategy", ["round_robin", "uniform", "annealed"])
def test_no_example_repeats_across_epochs_before_its_task_is_covered(strategy, by_length):
    drawn = {name: [] for name in SIZES}
    steps = run_epochs(strategy, 4, by_length, seed=1)
    for batch in steps:
        drawn[task_of(batch[0])].extend(batch)
    assert sum(task_of(b[0]) == "quora" for b in steps[:38]) * 4 % SIZES["quora"] > 0  # epoch 1 goes on mid-pass
    for name, rows in drawn.items():
        size = SIZES[name]
        assert len(rows) > size
        for start in range(0, len(rows) - size + 1, size):  # every pass holds each of the task's examples once
            assert len(set(rows[start:start + size])) == size, (name, start)


@pytest.mark.parametrize("by_length", [False, True], ids=["plain", "group_by_length"])
def test_proportional_covers_every_example_in_every_epoch(by_length):
    steps = run_epochs("proportional", 3, by_length)
    for epoch in range(3):
        assert {i for batch in steps[38 * epoch:38 * (epoch + 1)] for i in batch} == set(range(150)), epoch


@pytest.mark.parametrize("grouped", [False, True], ids=["one_task", "grouped"])
@pytest.mark.parametrize("strategy", ["round_robin", "proportional", "annealed", "uniform"])
def test_ranks_together_make_the_single_process_batches_in_later_epochs(strategy, grouped):
    assert run_epochs(strategy, 3, processes=2, grouped=grouped) == run_epochs(strategy, 3, grouped=grouped,
                                                                                batch_size=8)


@pytest.mark.parametrize("grouped", [False, True], ids=["one_task", "grouped"])
@pytest.mark.parametrize("strategy", ["round_robin", "proportional", "annealed", "uniform"])
def test_state_dict_resumes_a_later_epoch_exactly(strategy, grouped):
    def make():
        return MultitaskBatchSampler(SIZES, 4, strategy, seed=5, grouped=grouped, lengths=LENGTHS,
                                     group_by_length=True, total_batches=4 * 38)

    sampler = make()
    sampler.set_epoch(2)
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(sampler.state_dict())
    uninterrupted = make()
    for epoch in range(3):  # epochs 0 and 1 iterated first: the same epoch 2 as a sampler set to it directly
        uninterrupted.set_epoch(epoch)
        batches = list(uninterrupted)
    assert head + list(resumed) == batches


@pytest.mark.parametrize(("size", "width"), [(10, 4), (3, 8), (5, 5), (12, 8), (1, 3)])
def test_a_task_stream_fast_forwards_to_the_batches_it_would_draw(size, width):
    sampler = MultitaskBatchSampler({"a": size, "b": 2}, width, "uniform", seed=1)
    stream = [b.tolist() for b in itertools.islice(sampler._global_batches(0), 60)]
    for skip in (1, 2, 3, 7, 13, 31):
        assert [b.tolist() for b in itertools.islice(sampler._global_batches(0, skip), 60 - skip)] == stream[skip:]


def old_state(sampler, epoch):
    sampler.set_epoch(epoch)
    return {k: v for k, v in sampler.state_dict().items() if k != "task_streams"}  # as saved before the change


def warnings_of(sampler, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_multitask"):
        list(sampler)
    return [r.getMessage() for r in caplog.records if "restarted each task's examples" in r.getMessage()]


@pytest.mark.parametrize(("strategy", "epoch", "warned"),
                         [("annealed", 1, True), ("round_robin", 2, True), ("annealed", 0, False),
                          ("proportional", 1, False)])
def test_a_state_saved_before_continuous_streams_warns_when_resumed_in_a_later_epoch(strategy, epoch, warned, caplog):
    resumed = MultitaskBatchSampler(SIZES, 4, strategy)
    resumed.load_state_dict(old_state(MultitaskBatchSampler(SIZES, 4, strategy), epoch))
    assert len(warnings_of(resumed, caplog)) == warned
    resumed.set_epoch(epoch + 1)
    assert len(warnings_of(resumed, caplog)) == warned  # once, at the resumed epoch


def test_a_checkpoint_plan_without_task_streams_warns_when_resumed_in_a_later_epoch(caplog):
    sampler = MultitaskBatchSampler(SIZES, 4, "annealed")
    plan_state = SamplerPlanState(sampler.plan, on_old_streams=sampler.resume_old_streams)
    plan_state.load_state_dict({k: v for k, v in sampler.plan().items() if k != "task_streams"})
    sampler.set_epoch(1)  # what the Trainer does at the resumed epoch, before it skips the trained batches
    assert len(warnings_of(sampler, caplog)) == 1


def test_the_trainer_warns_when_it_resumes_an_old_checkpoint_in_a_later_epoch(bert_config, tokenized, tokenizer,
                                                                              tmp_path, caplog):
    """7 batches an epoch: checkpoint-4 is in epoch 0 (the same batches under both versions), checkpoint-8 in 1."""
    settings = dict(eval=None, max_steps=9, save_strategy="steps", save_steps=4)
    make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **settings).train()
    for step in (4, 8):  # as saved before `task_streams`: the manifest holds the plan
        manifest = json.loads((tmp_path / f"checkpoint-{step}" / MANIFEST_NAME).read_text())
        del manifest["scalars"]["sampler_plan"]["task_streams"]
        (tmp_path / f"checkpoint-{step}" / MANIFEST_NAME).write_text(json.dumps(manifest))
    for step, warned in ((4, False), (8, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_multitask"):
            trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "resumed", **settings)
            trainer.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{step}"))
        assert ("Resuming in epoch 1 a checkpoint whose sampler restarted" in caplog.text) == warned, step
