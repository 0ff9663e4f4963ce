"""[`MultitaskTrainingArguments`]: `TrainingArguments` plus the multitask knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .sampling import STRATEGIES


@dataclass
class MultitaskTrainingArguments(TrainingArguments):
    r"""Arguments of [`MultitaskTrainer`]; every `TrainingArguments` field works as usual.

    > Parameters that control task sampling

    task_sampling (`str`, defaults to `"annealed"`):
        How the task of each batch is chosen: `round_robin`, `proportional`, `annealed` (p_i ~ n_i^alpha,
        alpha = 1 - 0.8 t) or `uniform`. See [`MultitaskBatchSampler`] for what an epoch is under each.
    task_sampling_group_by_length (`bool`, defaults to `False`):
        Batch examples of similar length together (within windows of 50 batches) to cut padding.

    Differences from the parent's defaults: `metric_for_best_model` may be `"overall"` (the mean of every task's
    metric mapped to [0, 1]), which evaluation reports as `eval_overall`.
    """

    task_sampling: str = field(
        default="annealed", metadata={"help": f"Task sampling strategy, one of {STRATEGIES}."}
    )
    task_sampling_group_by_length: bool = field(
        default=False, metadata={"help": "Group examples of similar length into batches (less padding)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.task_sampling not in STRATEGIES:
            raise ValueError(f"task_sampling must be one of {STRATEGIES}, got {self.task_sampling!r}")
