"""[`MultitaskTrainer`]: the HF `Trainer` with task-aware sampling, per-task losses and per-task evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import speed_metrics

from .data import MultitaskCollator, MultitaskDataset
from .metrics import compute_task_metrics, overall_score
from .sampling import MultitaskBatchSampler


class _SamplerEpochCallback(TrainerCallback):
    """Sets the sampler's epoch before each epoch, whatever wrappers accelerate put around it."""

    def __init__(self, trainer: MultitaskTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = self.trainer.train_sampler
        if sampler is not None:
            sampler.set_epoch(int((state.epoch or 0.0) + 1e-9))


class MultitaskTrainer(Trainer):
    """Trains a [`MultitaskModel`] on several tasks at once.

    Args:
        train_dataset: `{task_name: tokenized Dataset}` or a [`MultitaskDataset`].
        eval_dataset: `{task_name: tokenized Dataset}`; evaluation reports `eval_<task>_<metric>` for each task
            and `eval_overall`.
        Everything else as in `transformers.Trainer`. The default collator is a [`MultitaskCollator`].

    Example:

    ```python
    >>> trainer = MultitaskTrainer(model=model, args=MultitaskTrainingArguments("out"),  # doctest: +SKIP
    ...                            train_dataset={"sst": sst_train, "sts": sts_train},
    ...                            eval_dataset={"sst": sst_dev, "sts": sts_dev}, processing_class=tokenizer)
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, **kwargs):
        if isinstance(train_dataset, Mapping):
            train_dataset = MultitaskDataset(train_dataset)
        if eval_dataset is not None and not isinstance(eval_dataset, Mapping):
            raise TypeError("MultitaskTrainer needs eval_dataset as {task_name: Dataset}")
        if data_collator is None and processing_class is not None:
            data_collator = MultitaskCollator(processing_class)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        self._check_tasks()
        self.train_sampler: MultitaskBatchSampler | None = None
        self._task_loss_sums: dict[str, float] = {}
        self._task_loss_counts: dict[str, int] = {}
        self.add_callback(_SamplerEpochCallback(self))

    @property
    def specs(self):
        return self.accelerator.unwrap_model(self.model).specs if hasattr(self, "accelerator") else self.model.specs

    def _check_tasks(self) -> None:
        heads = set(self.specs)
        given = {"train_dataset": getattr(self.train_dataset, "task_names", []),
                 "eval_dataset": list(self.eval_dataset or {})}
        for where, names in given.items():
            unknown = [name for name in names if name not in heads]
            if unknown:
                raise ValueError(f"{where} has task(s) {unknown} with no head in the model (heads: {sorted(heads)})")

    # ---- data ----

    def get_train_dataloader(self) -> DataLoader:
        if not isinstance(self.train_dataset, MultitaskDataset):
            raise TypeError("MultitaskTrainer needs train_dataset as {task_name: Dataset} or a MultitaskDataset")
        self.train_sampler = self._build_train_sampler(self.train_dataset)
        dataloader = DataLoader(
            self.train_dataset, batch_sampler=self.train_sampler, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
        )
        prepared = self.accelerator.prepare(dataloader)
        # The sampler is rank-aware already: accelerate's BatchSamplerShard would deal batches round-robin to
        # ranks (different tasks per rank) on top of our slicing. Make the wrapper a pass-through.
        wrapper = getattr(prepared, "batch_sampler", None)
        if wrapper is not None and getattr(wrapper, "batch_sampler", None) is self.train_sampler:
            wrapper.num_processes, wrapper.process_index = 1, 0
        return prepared

    def _build_train_sampler(self, dataset: MultitaskDataset) -> MultitaskBatchSampler:
        args = self.args
        group = getattr(args, "task_sampling_group_by_length", False)
        sampler = MultitaskBatchSampler(
            dataset.task_sizes, batch_size=self._train_batch_size,
            strategy=getattr(args, "task_sampling", "annealed"), seed=args.data_seed or args.seed,
            num_processes=args.world_size, process_index=args.process_index,
            lengths=dataset.lengths() if group else None, group_by_length=group,
        )
        if args.max_steps > 0:
            sampler.set_total_batches(args.max_steps * args.gradient_accumulation_steps)
        else:
            sampler.set_total_batches(math.ceil(args.num_train_epochs * len(sampler)))
        return sampler

    # ---- loss and logging ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task_name = inputs["task_name"]
        outputs = model(**inputs)
        loss = outputs.loss * self.specs[task_name].loss_weight
        if model.training:
            self._task_loss_sums[task_name] = self._task_loss_sums.get(task_name, 0.0) + loss.detach()
            self._task_loss_counts[task_name] = self._task_loss_counts.get(task_name, 0) + 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._task_loss_counts is not None:
            logs.update(self._drain_task_losses())
        super().log(logs, start_time)

    def _drain_task_losses(self) -> dict[str, float]:
        """Mean training loss per task since the last log, averaged over all ranks."""
        names = list(self.specs)
        device = self.args.device
        sums = torch.stack([torch.as_tensor(self._task_loss_sums.get(n, 0.0), device=device, dtype=torch.float32)
                            for n in names])
        counts = torch.tensor([self._task_loss_counts.get(n, 0) for n in names], device=device, dtype=torch.float32)
        totals = self.accelerator.reduce(torch.stack([sums, counts]), reduction="sum")
        self._task_loss_sums, self._task_loss_counts = {}, {}
        return {f"loss_{n}": round(float(s / c), 4) for n, s, c in zip(names, *totals.tolist()) if c > 0}

    # ---- evaluation ----

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate every task; returns `<prefix>_<task>_<metric>`, `<prefix>_<task>_loss` and `<prefix>_overall`."""
        datasets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(datasets, Mapping) or not datasets:
            raise TypeError("MultitaskTrainer.evaluate needs eval_dataset as a non-empty {task_name: Dataset}")
        self._memory_tracker.start()
        start_time, num_samples, metrics = time.time(), 0, {}
        specs = self.specs
        for task_name, dataset in datasets.items():
            if task_name not in specs:
                raise ValueError(f"eval_dataset has task {task_name!r} with no head in the model")
            output = self.evaluation_loop(
                self.get_eval_dataloader(MultitaskDataset({task_name: dataset})),
                description=f"Evaluation [{task_name}]", prediction_loss_only=False, ignore_keys=ignore_keys,
                metric_key_prefix=f"{metric_key_prefix}_{task_name}",
            )
            metrics.update(output.metrics)
            task_metrics = compute_task_metrics(specs[task_name], output.predictions, output.label_ids)
            metrics.update({f"{metric_key_prefix}_{task_name}_{k}": v for k, v in task_metrics.items()})
            num_samples += output.num_samples
        evaluated = {name: specs[name] for name in datasets}
        metrics[f"{metric_key_prefix}_overall"] = overall_score(evaluated, metrics, prefix=f"{metric_key_prefix}_")
        total_batch_size = self.args.eval_batch_size * self.args.world_size
        metrics.update(speed_metrics(metric_key_prefix, start_time, num_samples=num_samples,
                                     num_steps=math.ceil(num_samples / total_batch_size)))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics

    def predict_task(self, task_name: str, dataset) -> torch.Tensor:
        """Raw head outputs `(n, num_labels)` for one task's tokenised dataset."""
        output = self.evaluation_loop(self.get_eval_dataloader(MultitaskDataset({task_name: dataset})),
                                      description=f"Prediction [{task_name}]", prediction_loss_only=False,
                                      metric_key_prefix=f"test_{task_name}")
        return output.predictions
