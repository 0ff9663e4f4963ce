"""Which task each training batch comes from: [`MultitaskBatchSampler`] and its schedules.

Every batch holds examples of one task (in grouped mode: one batch of every task). The sequence is a pure
function of (seed, epoch) and, for annealed sampling, the run's total budget, so every rank of a multi-process run
computes the same task order and takes its own slice of each global batch, and a resumed run replays it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

STRATEGIES = ("round_robin", "proportional", "annealed", "uniform")


def annealed_alpha(progress: float) -> float:
    """Sampling exponent of the annealed schedule at training progress `progress` in [0, 1]: 1 - 0.8 t.

    Stickland & Murray 2019 (https://arxiv.org/abs/1902.02671), sec. 4: alpha = 1 - 0.8 (e - 1) / (E - 1)
    for epoch e of E; `progress` = (e - 1) / (E - 1) gives exactly that formula.
    """
    return 1.0 - 0.8 * min(max(progress, 0.0), 1.0)


def task_probabilities(sizes: Sequence[int], alpha: float) -> np.ndarray:
    """p_i proportional to n_i ** alpha (alpha = 1: proportional, alpha = 0: uniform)."""
    weights = np.asarray(sizes, dtype=np.float64) ** alpha
    return weights / weights.sum()


class MultitaskBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of single tasks over a [`MultitaskDataset`]'s index space.

    An epoch has as many (global) batches as one pass over every task's data: sum_i ceil(n_i / global_batch).
    Within it the strategy picks the task of each batch:

    - `proportional`: each task's ceil(n_i / global_batch) batches in a shuffled order: one pass over every task.
    - `round_robin`: tasks in turn (sst, quora, sts, sst, ...); small tasks are cycled, large ones not finished.
    - `annealed`: a task drawn per batch with p_i ~ n_i ** alpha, alpha = 1 - 0.8 t over training progress t.
      With E >= 2 whole epochs, t = e / (E - 1) for (0-based) epoch e, the paper's per-epoch formula; for
      shorter runs t grows batch by batch from 0 to 1.
    - `uniform`: a task drawn per batch with equal probability.

    Each task's examples are visited in a fresh permutation per pass, so no example repeats before all of its
    task's examples were seen; a task that runs out starts a new permutation. A task's passes run on across
    epochs: epoch e picks up each task's stream where epoch e - 1 left it. Where every task is drawn exactly one
    pass per epoch (`proportional` without `grouped`, or a single task) each epoch starts a fresh pass instead,
    so every epoch covers all their examples. With `group_by_length`, each window of `megabatch_size` batches is
    sorted by length before it is cut into batches (less padding), and the batches are shuffled again.

    Args:
        task_sizes: `{task_name: number of examples}` in the dataset's order.
        batch_size: Per-process batch size.
        strategy: One of `round_robin`, `proportional`, `annealed`, `uniform`.
        seed: Base seed; the batches of epoch e depend only on (seed, e) and, for annealed sampling, the budget
            (the task sequences of epochs 0 to e - 1 say where each task's stream stands).
        num_processes, process_index: Data-parallel world size and rank; each global batch of
            `batch_size * num_processes` examples is split between the ranks.
        total_batches: Batches in the whole run (for the annealed schedule); defaults to one epoch.
        lengths: `{task_name: [length of each example]}`, needed for `group_by_length`.
        group_by_length: Sort windows of examples by length before batching.
        grouped: Yield one batch of every task per step (for gradient surgery) instead of one task's batch.
        megabatch_size: Window of `group_by_length`, in batches.
    """

    def __init__(
        self,
        task_sizes: Mapping[str, int],
        batch_size: int,
        strategy: str = "annealed",
        seed: int = 0,
        num_processes: int = 1,
        process_index: int = 0,
        total_batches: int | None = None,
        lengths: Mapping[str, Sequence[int]] | None = None,
        group_by_length: bool = False,
        grouped: bool = False,
        megabatch_size: int = 50,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown task_sampling strategy {strategy!r}; choose from {STRATEGIES}")
        if not task_sizes or any(n <= 0 for n in task_sizes.values()):
            raise ValueError(f"Every task needs at least one example, got sizes {dict(task_sizes)}")
        if batch_size <= 0 or not 0 <= process_index < num_processes:
            raise ValueError(f"Bad batch_size={batch_size} or rank {process_index} of {num_processes}")
        if group_by_length and (lengths is None or set(lengths) != set(task_sizes)):
            raise ValueError("group_by_length needs the example lengths of every task")
        self.task_names = list(task_sizes)
        self.sizes = [int(task_sizes[name]) for name in self.task_names]
        self.offsets = np.cumsum([0, *self.sizes[:-1]]).tolist()
        self.batch_size, self.strategy, self.seed = batch_size, strategy, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.lengths = {k: np.asarray(v) for k, v in lengths.items()} if group_by_length else None
        self.grouped, self.megabatch_size = grouped, megabatch_size
        self.global_batch_size = batch_size * num_processes
        self.batches_per_task = [math.ceil(n / self.global_batch_size) for n in self.sizes]
        self.total_batches = total_batches
        # every task drawn exactly one pass per epoch: each epoch starts fresh passes, seeded by the epoch
        self.per_epoch_passes = len(self.sizes) == 1 or (strategy == "proportional" and not grouped)
        self._drawn: dict[tuple, np.ndarray] = {}  # {(seed, total_batches, epoch): global batches of each task}
        self._old_streams = False  # resuming a state of the per-epoch streams: warn if it resumes in epoch >= 1
        self.epoch = 0
        self._position = 0  # batches of the current epoch yielded so far
        self._skip = 0  # batches to skip on the next __iter__ (load_state_dict); the Trainer skips by itself

    # ---- epoch bookkeeping ----

    def __len__(self) -> int:
        total = sum(self.batches_per_task)
        return math.ceil(total / len(self.sizes)) if self.grouped else total

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:  # no batch of the new epoch yielded yet (what `state_dict` must say), and none
            self._position = self._skip = 0  # to skip: a state saved at the old epoch's end resumes at the new start
        self.epoch = int(epoch)

    def set_total_batches(self, total_batches: int) -> None:
        """Batches in the whole run ([`batches_in_steps`] for a run of `max_steps`); the annealed schedule's
        horizon."""
        self.total_batches = int(total_batches)

    def state_dict(self) -> dict:
        """Position in the run, for loops without the Trainer (the Trainer resumes through `skip_first_batches`)."""
        return {"epoch": self.epoch, "seed": self.seed, "strategy": self.strategy, "position": self._position,
                "total_batches": self.total_batches, "task_sizes": dict(zip(self.task_names, self.sizes)),
                "grouped": self.grouped, "global_batch_size": self.global_batch_size,
                "task_streams": self.task_streams}

    def load_state_dict(self, state: dict) -> None:
        """Resume at the saved position, with the saved seed (the plan of the run being resumed); the position counts
        batches, so it is refused for other tasks, sizes, strategy, grouping or global batch size."""
        ours = {"task_sizes": dict(zip(self.task_names, self.sizes)), "strategy": self.strategy,
                "grouped": self.grouped, "global_batch_size": self.global_batch_size}
        differ = differences(state, ours, "this sampler")  # (states saved before 2026-12-02 lack the last two)
        if differ:
            raise ValueError(f"Sampler state was saved with another {'; '.join(differ)}: cannot resume from it")
        self.epoch, self.seed, self._skip = state["epoch"], state["seed"], state["position"]
        self.total_batches = state["total_batches"]
        if "task_streams" not in state:
            self.resume_old_streams()

    @property
    def task_streams(self) -> str:
        """`continuous` (each task's examples run on across epochs) or `per_epoch` (a fresh pass each epoch)."""
        return "per_epoch" if self.per_epoch_passes else "continuous"

    def resume_old_streams(self) -> None:
        """The state being resumed was written by a version whose task streams restarted at every epoch (it has no
        `task_streams`): the next `__iter__` warns if it is in epoch 1 or later, whose rows that version drew
        differently. Epoch 0 draws the same batches under both."""
        self._old_streams = True

    def plan(self) -> dict:
        """What fixes the batch sequence, as JSON values: the Trainer resumes by skipping the batches it counts as
        trained, which are the checkpoint's only under the same plan ([`SamplerPlanState`])."""
        return {"task_names": self.task_names, "task_sizes": self.sizes, "strategy": self.strategy,
                "grouped": self.grouped, "global_batch_size": self.global_batch_size, "seed": self.seed,
                "group_by_length": self.lengths is not None, "total_batches": self.total_batches,
                "task_streams": self.task_streams}

    def progress(self, batch_in_epoch: int, epoch: int | None = None) -> float:
        """Training progress t in [0, 1] at a batch of an epoch (default: the current one), for the annealed
        schedule."""
        epoch = self.epoch if epoch is None else epoch
        per_epoch = len(self)
        total = self.total_batches or per_epoch
        num_epochs = total / per_epoch
        if num_epochs >= 2 and float(num_epochs).is_integer():
            return epoch / (num_epochs - 1)  # the paper's per-epoch alpha
        return min((epoch * per_epoch + batch_in_epoch) / max(total - 1, 1), 1.0)

    def task_weights(self, batch_in_epoch: int) -> dict[str, float]:
        """Grouped mode's loss weight per task: T p_i (proportional, annealed), 1 (uniform, round_robin).

        They average to 1, so the summed loss keeps the scale of a plain step over T tasks.
        """
        num_tasks = len(self.sizes)
        if self.strategy in ("uniform", "round_robin"):
            return dict.fromkeys(self.task_names, 1.0)
        alpha = 1.0 if self.strategy == "proportional" else annealed_alpha(self.progress(batch_in_epoch))
        return {n: float(num_tasks * p) for n, p in zip(self.task_names, task_probabilities(self.sizes, alpha))}

    # ---- the plan ----

    def task_sequence(self, epoch: int | None = None) -> list[int]:
        """Task index of every batch of an epoch (the same on every rank; -1 in grouped mode: every task). An
        `epoch` given is set as the current one."""
        if epoch is not None:
            self.set_epoch(epoch)
        return self._sequence(self.epoch)

    def _sequence(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch, 0])
        num_tasks, steps = len(self.sizes), len(self)
        if self.grouped:
            return [-1] * steps
        if self.strategy == "proportional":
            sequence = np.repeat(np.arange(num_tasks), self.batches_per_task)
            return rng.permutation(sequence).tolist()
        if self.strategy == "round_robin":
            return [step % num_tasks for step in range(steps)]
        if self.strategy == "uniform":
            return rng.integers(0, num_tasks, size=steps).tolist()
        probabilities = [task_probabilities(self.sizes, annealed_alpha(self.progress(step, epoch)))
                         for step in range(steps)]
        return [int(rng.choice(num_tasks, p=p)) for p in probabilities]

    def _batches_drawn(self, sequence: Sequence[int]) -> np.ndarray:
        """Global batches each task gives to a task sequence (grouped mode: every task at every step)."""
        if self.grouped:
            return np.full(len(self.sizes), len(sequence), dtype=np.int64)
        return np.bincount(np.asarray(sequence, dtype=np.int64), minlength=len(self.sizes))

    def _stream_start(self, epoch: int) -> np.ndarray:
        """Global batches each task's stream gave to the epochs before `epoch`: where `epoch` picks it up."""
        start = np.zeros(len(self.sizes), dtype=np.int64)
        for past in range(0 if self.per_epoch_passes else epoch):
            key = (self.seed, self.total_batches, past)
            if key not in self._drawn:  # (annealed sequences follow the budget; the others ignore it)
                self._drawn[key] = self._batches_drawn(self._sequence(past))
            start += self._drawn[key]
        return start

    def _task_stream(self, task: int, first_cycle: int = 0) -> Iterator[np.ndarray]:
        """Passes over one task from pass `first_cycle` on: successive permutations, length-sorted in windows if
        asked. Seeded by epoch 0 for the whole run, or by the current epoch with `per_epoch_passes`."""
        size, name = self.sizes[task], self.task_names[task]
        epoch = self.epoch if self.per_epoch_passes else 0
        for cycle in range(first_cycle, 10**12):
            rng = np.random.default_rng([self.seed, epoch, 1 + task, cycle])
            order = rng.permutation(size)
            if self.lengths is not None:
                window = self.global_batch_size * self.megabatch_size
                chunks = [order[i:i + window] for i in range(0, size, window)]
                order = np.concatenate([c[np.argsort(self.lengths[name][c], kind="stable")] for c in chunks])
                batches = [order[i:i + self.global_batch_size] for i in range(0, size, self.global_batch_size)]
                order = np.concatenate([batches[i] for i in rng.permutation(len(batches))])
            yield order

    def _global_batches(self, task: int, skip: int = 0) -> Iterator[np.ndarray]:
        """Global batches of one task, from batch `skip` of its stream on.

        A pass's order depends on the examples the one before left over (a partial batch), so the stream is rebuilt
        from the last pass that starts with none left over: every G / gcd(n, G) passes, at most G of them.
        """
        size, width = self.sizes[task], self.global_batch_size
        period = width // math.gcd(size, width)  # passes from one batch boundary at a pass boundary to the next
        first_cycle = skip * width // size // period * period
        skip -= first_cycle * size // width
        buffer = np.empty(0, dtype=np.int64)
        for order in self._task_stream(task, first_cycle):
            if len(buffer):  # a batch straddling two passes: fill it with examples it does not hold yet
                held = np.isin(order, buffer)
                order = np.concatenate([order[~held], order[held]])
            buffer = np.concatenate([buffer, order])
            dropped = min(skip, len(buffer) // width)  # batches skipped, never yielded
            buffer, skip = buffer[dropped * width:], skip - dropped
            while len(buffer) >= self.global_batch_size:
                yield buffer[: self.global_batch_size]
                buffer = buffer[self.global_batch_size:]

    def __iter__(self) -> Iterator[list[int]]:
        self._warn_if_old_streams()
        skip, self._skip = self._skip, 0
        sequence = self._sequence(self.epoch)
        self._drawn[(self.seed, self.total_batches, self.epoch)] = self._batches_drawn(sequence)  # for the next epoch
        start = self._stream_start(self.epoch) + self._batches_drawn(sequence[:skip])
        streams = [self._global_batches(t, int(start[t])) for t in range(len(self.sizes))]
        rank_slice = slice(self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size)
        for step in range(skip, len(sequence)):
            tasks = range(len(self.sizes)) if sequence[step] == -1 else (sequence[step],)
            batch = [int(i) + self.offsets[t] for t in tasks for i in next(streams[t])[rank_slice]]
            self._position = step + 1
            yield batch

    def _warn_if_old_streams(self) -> None:
        if self._old_streams and self.epoch >= 1 and not self.per_epoch_passes:
            logger.warning(f"Resuming in epoch {self.epoch} a checkpoint whose sampler restarted each task's examples "
                           "at every epoch (saved by an hf-multitask without `task_streams` in its plan): this "
                           "version runs them on across epochs, so from this epoch on the batches hold other rows "
                           "than the old one drew (the task of every step is unchanged) and some of this epoch's "
                           "rows may be trained twice, others not at all. Epoch 0 is the same under both.")
        self._old_streams = False


def batches_in_steps(max_steps: int, batches_per_epoch: int, accumulation: int) -> int:
    """Batches a run of `max_steps` optimizer steps draws, as transformers' Trainer counts them: an epoch is
    ceil(batches / accumulation) steps (its last step accumulates fewer batches), so `max_steps * accumulation`
    overcounts whenever an epoch's batches are not a multiple of the accumulation."""
    steps_per_epoch = max(math.ceil(batches_per_epoch / accumulation), 1)
    epochs, steps = divmod(max_steps, steps_per_epoch)
    return epochs * batches_per_epoch + min(steps * accumulation, batches_per_epoch)


def differences(saved: Mapping, ours: Mapping, label: str) -> list[str]:
    """`"<key> <saved value> (<label>: <our value>)"` for each key of `ours` that `saved` holds with another value
    (a key `saved` lacks is not compared: states written before it was recorded)."""
    return [f"{key} {saved[key]!r} ({label}: {value!r})" for key, value in ours.items()
            if key in saved and saved[key] != value]


class SamplerPlanState:
    """The training sampler's plan ([`MultitaskBatchSampler.plan`], with the gradient accumulation) as a part of
    [`MultitaskTrainer`]'s checkpointed state. A resumed run whose plan differs is refused: the Trainer skips
    `global_step` steps' worth of batches of the *new* sequence, so another global batch, accumulation, seed, task
    set or sampling would retrain some examples and never see others, silently. So would a changed budget
    (`total_batches`, from `max_steps` or the epochs) under annealed sampling, whose every step's task follows the
    budget; the other strategies do not read it, and resume with any budget.

    A checkpoint whose plan has no `task_streams` was written when every task's examples restarted at each epoch:
    `on_old_streams` is called (the sampler's [`MultitaskBatchSampler.resume_old_streams`]: a warning if the run
    resumes in epoch 1 or later, whose rows this version draws differently; epoch 0 is the same).

    Args:
        current: The running sampler's plan, or `None` before the sampler is built (the check then waits for
            [`check`], which the Trainer calls when it builds the sampler).
        on_old_streams: Called when the resumed plan predates `task_streams` and this run's streams are continuous.
    """

    optional = True  # a checkpoint written before plans were saved resumes without one, unchecked

    def __init__(self, current, on_old_streams=None):
        self.current, self.on_old_streams, self.saved = current, on_old_streams, None

    def state_dict(self) -> dict:
        return self.current() or {}

    def load_state_dict(self, state: dict) -> None:
        self.saved = dict(state) or None
        self.check()

    def check(self) -> None:
        plan = self.current()
        if self.saved is None or plan is None:
            return
        saved, self.saved = self.saved, None
        compared = {k: v for k, v in plan.items() if k != "total_batches" or plan["strategy"] == "annealed"}
        differ = differences(saved, compared, "this run")
        if differ:
            budget = (" (annealed sampling draws every step's task by its share of the budget, so a new max_steps "
                      "or number of epochs changes the steps already trained too)"
                      if any(d.startswith("total_batches") for d in differ) else "")
            raise ValueError(f"The checkpoint being resumed was trained with {'; '.join(differ)}{budget}. The "
                             "Trainer skips the batches it counts as trained, which are the checkpoint's only with "
                             "the same batch plan: resume with the checkpoint's settings (the same global batch: "
                             "per-device batch x processes x accumulation), or start a new run from its weights")
        if "task_streams" not in saved and plan.get("task_streams") == "continuous" and self.on_old_streams:
            self.on_old_streams()
