"""The per-task loop behind [`MultitaskTrainer`]'s `evaluate` and `predict`: one `evaluation_loop` per task,
our metrics and the user's `compute_metrics` per task, and the overall score."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from transformers.trainer_utils import EvalLoopOutput, EvalPrediction
from transformers.utils import logging

from .callbacks import end_prediction_bars
from .conventions import user_task_metrics
from .data import MultitaskDataset
from .metrics import compute_task_metrics, metric_key, overall_key, overall_score

logger = logging.get_logger(__name__)


def task_dataloader(trainer, task_name: str, dataset):
    """One task's evaluation or prediction DataLoader, rows in dataset order.

    Not `Trainer.get_eval_dataloader`: under `train_sampling_strategy="group_by_length"` its sampler orders the rows
    by length (predictions would come back shuffled), and with `dataloader_persistent_workers` it keeps one loader
    for all evaluations, which would serve the first task's rows to every task. Here, with persistent workers, the
    loaders of the trainer's own `eval_dataset` are kept one per task; any other dataset gets a fresh loader.
    """
    own = isinstance(trainer.eval_dataset, Mapping) and trainer.eval_dataset.get(task_name) is dataset
    keep = own and trainer.args.dataloader_persistent_workers
    kept = trainer.__dict__.setdefault("_task_eval_dataloaders", {})
    if keep and kept.get(task_name, (None,))[0] is dataset:
        return kept[task_name][1]
    # sampler_fn=None: the DataLoader's sequential order (accelerate shards it across ranks, as the Trainer's)
    loader = trainer._get_dataloader(MultitaskDataset({task_name: dataset}), description="Evaluation",
                                     batch_size=trainer.args.eval_batch_size)
    if keep:
        kept[task_name] = (dataset, loader)
    return loader


def task_loss(spec, output: EvalLoopOutput) -> float:
    """The task's loss over its evaluation rows, each once, from the gathered outputs and labels.

    `Trainer.evaluation_loop`'s loss repeats each batch's mean loss once per row, and under several processes the
    last batch of a rank that ran out of rows is filled with repeated rows (accelerate's `even_batches`), which the
    gathered predictions drop but that loss keeps: it would depend on the number of processes.
    """
    logits, labels = torch.as_tensor(np.asarray(output.predictions)), torch.as_tensor(np.asarray(output.label_ids))
    with torch.no_grad():
        return float(spec.task_kind.loss(spec, logits.float(), labels))


def evaluate_tasks(trainer, datasets: Mapping, prefix: str, ignore_keys=None,
                   description: str = "Evaluation") -> tuple[dict[str, EvalLoopOutput], dict[str, float], int]:
    """Run `trainer.evaluation_loop` on each task's dataset. Returns (`{task: EvalLoopOutput}`, metrics, number of
    examples); metrics hold `<prefix>_<task>_loss`, their mean over tasks `<prefix>_loss` and, for tasks with
    labels, `<prefix>_<task>_<metric>`, the user's metrics ([`user_task_metrics`]) and, when every task has labels,
    `<prefix>_overall`."""
    specs, outputs, metrics, num_samples = trainer.specs, {}, {}, 0
    user_fns = getattr(trainer, "task_compute_metrics", {})
    for task_name, dataset in datasets.items():
        output = trainer.evaluation_loop(
            task_dataloader(trainer, task_name, dataset),
            description=f"{description} [{task_name}]", prediction_loss_only=False, ignore_keys=ignore_keys,
            metric_key_prefix=f"{prefix}_{task_name}",
        )
        end_prediction_bars(trainer.callback_handler)  # each task's progress bar with its own total
        metrics.update(output.metrics)
        if output.label_ids is not None and output.predictions is not None:  # over each row once (see task_loss)
            metrics[metric_key(prefix, task_name, "loss")] = task_loss(specs[task_name], output)
        if output.label_ids is not None:
            ours = compute_task_metrics(specs[task_name], output.predictions, output.label_ids)
            undefined = [name for name, value in ours.items() if isinstance(value, float) and np.isnan(value)]
            if undefined:  # a Pearson r of constant predictions, say: the overall score is NaN too
                logger.warning(f"{prefix} task {task_name!r}: {undefined} undefined (NaN; constant predictions or "
                               f"labels?), so {overall_key(prefix)} is NaN too")
            metrics.update({metric_key(prefix, task_name, k): v for k, v in ours.items()})
            prediction = EvalPrediction(predictions=output.predictions, label_ids=output.label_ids)
            metrics.update(user_task_metrics(user_fns.get(task_name), task_name, prediction, ours, prefix))
        outputs[task_name] = output
        num_samples += output.num_samples
    losses = [metrics[key] for key in (metric_key(prefix, name, "loss") for name in outputs) if key in metrics]
    if losses:  # as `Trainer`'s `eval_loss` (what load_best_model_at_end and early stopping use by default)
        metrics[f"{prefix}_loss"] = float(np.mean(losses))
    if all(output.label_ids is not None for output in outputs.values()):
        metrics[overall_key(prefix)] = overall_score([specs[name] for name in outputs], metrics, prefix=prefix)
    return outputs, metrics, num_samples
