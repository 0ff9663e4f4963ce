"""[`MultitaskTrainer`]: the HF `Trainer` with task-aware sampling, per-task losses and per-task evaluation."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, speed_metrics
from transformers.utils import logging

from .data import MultitaskCollator, MultitaskDataset
from .gradients import GradientSurgery, is_shared_parameter, layer_group
from .metrics import compute_task_metrics, overall_score
from .sampling import MultitaskBatchSampler
from .smart import SmartRegularizer

logger = logging.get_logger(__name__)

STATE_TENSORS_NAME, STATE_SCALARS_NAME = "multitask_state.safetensors", "multitask_state.json"


class _SamplerEpochCallback(TrainerCallback):
    """Sets the sampler's epoch before each epoch, whatever wrappers accelerate put around it."""

    def __init__(self, trainer: MultitaskTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = self.trainer.train_sampler
        if sampler is not None:
            sampler.set_epoch(int((state.epoch or 0.0) + 1e-9))


class _SmartTeacherCallback(TrainerCallback):
    """Starts SMART's EMA teacher from the wrapped model's weights and updates it after every optimizer step.

    Both hooks run on every rank, after DDP has synchronised the weights, so the teacher is the same everywhere.
    """

    def __init__(self, trainer: MultitaskTrainer):
        self.trainer = trainer

    def _model(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def on_train_begin(self, args, state, control, **kwargs):
        teacher = self.trainer.smart.teacher
        if not teacher.restored:  # a resumed run continues the checkpoint's teacher
            teacher.initialize(self._model())
        teacher.restored = False

    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self.trainer.accelerator.optimizer_step_was_skipped:
            self.trainer.smart.teacher.update(self._model())


class _TaskMetrics:
    """Per-task training metrics (`loss_<task>`, `smart_adv_<task>`, ...) summed on device between two logs."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()
        self.counts[key] = self.counts.get(key, 0) + 1

    def drain(self, keys: list[str], accelerator, device) -> dict[str, float]:
        """Means since the last drain, averaged over all ranks (`keys`: the same list, in order, on every rank)."""
        sums = torch.stack([torch.as_tensor(self.sums.get(k, 0.0), device=device, dtype=torch.float32) for k in keys])
        counts = torch.tensor([self.counts.get(k, 0) for k in keys], device=device, dtype=torch.float32)
        totals = accelerator.reduce(torch.stack([sums, counts]), reduction="sum")
        self.sums, self.counts = {}, {}
        return {k: float(f"{s / c:.4g}") for k, s, c in zip(keys, *totals.tolist()) if c > 0}


def save_training_state(folder: str, states: dict[str, dict]) -> None:
    """Save `{component: state_dict}` into `folder`: tensors to safetensors `<component>/<key>`, the rest to JSON."""
    tensors, scalars = {}, {}
    for component, state in states.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{component}/{key}"] = value.detach().cpu().contiguous()
            elif isinstance(value, (bool, int, float, str, list, type(None))):
                scalars.setdefault(component, {})[key] = value
            else:
                raise ValueError(f"Training state {component}.{key}: {type(value).__name__} is neither a tensor "
                                 "nor a JSON value")
    save_file(tensors, os.path.join(folder, STATE_TENSORS_NAME))
    with open(os.path.join(folder, STATE_SCALARS_NAME), "w") as f:
        json.dump({"components": list(states), "scalars": scalars}, f, indent=2)


def load_training_state(folder: str) -> dict[str, dict]:
    """Read what [`save_training_state`] wrote; `{}` when `folder` has none."""
    if not os.path.isfile(os.path.join(folder, STATE_SCALARS_NAME)):
        return {}
    with open(os.path.join(folder, STATE_SCALARS_NAME)) as f:
        saved = json.load(f)
    states = {component: dict(saved["scalars"].get(component, {})) for component in saved["components"]}
    for name, tensor in load_file(os.path.join(folder, STATE_TENSORS_NAME)).items():
        component, key = name.split("/", 1)
        states[component][key] = tensor
    return states


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
        self._task_metrics = _TaskMetrics()
        self._task_metric_names = ["loss"]
        # Extra training state saved with every checkpoint and restored on resume: {name: has state_dict()}
        self._stateful: dict[str, object] = {}
        self.add_callback(_SamplerEpochCallback(self))
        self.smart = self._build_smart()
        self.surgery = self._build_surgery()
        self._surgery_fresh = True  # the per-task gradient buffer starts a new optimizer step

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

    def _build_smart(self) -> SmartRegularizer | None:
        if getattr(self.args, "smart_tasks", None) is None:
            return None
        unknown = [name for name in self.args.smart_tasks if name not in self.specs]
        if unknown:
            raise ValueError(f"smart_tasks has task(s) {unknown} with no head in the model "
                             f"(heads: {list(self.specs)})")
        smart = SmartRegularizer.from_args(self.args)
        self._task_metric_names += [name for name, on in (("smart_adv", smart.lambda_s > 0),
                                                          ("smart_breg", smart.teacher is not None)) if on]
        if smart.teacher is not None:
            self._stateful["smart"] = smart
            self.add_callback(_SmartTeacherCallback(self))
        return smart

    def _build_surgery(self) -> GradientSurgery | None:
        if not getattr(self.args, "task_sampling_grouped", False):
            return None
        model = self.accelerator.unwrap_model(self.model)
        shared = [(n, p) for n, p in model.named_parameters() if p.requires_grad and is_shared_parameter(n)]
        if not shared:
            logger.warning("Grouped batches with no shared trainable parameters (frozen encoder?): gradient surgery "
                           "has nothing to project, so each step is the plain sum of the task losses.")
        method = self.args.gradient_surgery if shared else "none"
        surgery = GradientSurgery(
            method, [p for _, p in shared], num_tasks=len(self.specs), seed=self.args.seed,
            gradvac_beta=self.args.gradvac_beta, gradvac_per_layer=self.args.gradvac_per_layer,
            segment_ids=[layer_group(n) for n, _ in shared],
        )
        self._stateful["gradient_surgery"] = surgery
        return surgery

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
        # ranks (different tasks per rank) on top of our slicing. Make the wrapper a pass-through; batch_size=None
        # is its mode for batches of any length (grouped batches hold T times the batch size).
        wrapper = getattr(prepared, "batch_sampler", None)
        if wrapper is not None and getattr(wrapper, "batch_sampler", None) is self.train_sampler:
            wrapper.num_processes, wrapper.process_index, wrapper.batch_size = 1, 0, None
        return prepared

    def _build_train_sampler(self, dataset: MultitaskDataset) -> MultitaskBatchSampler:
        args = self.args
        group = getattr(args, "task_sampling_group_by_length", False)
        sampler = MultitaskBatchSampler(
            dataset.task_sizes, batch_size=self._train_batch_size,
            strategy=getattr(args, "task_sampling", "annealed"), seed=args.data_seed or args.seed,
            num_processes=args.world_size, process_index=args.process_index,
            lengths=dataset.lengths() if group else None, group_by_length=group,
            grouped=getattr(args, "task_sampling_grouped", False),
        )
        if args.max_steps > 0:
            sampler.set_total_batches(args.max_steps * args.gradient_accumulation_steps)
        else:
            sampler.set_total_batches(math.ceil(args.num_train_epochs * len(sampler)))
        return sampler

    # ---- training step ----

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.surgery is None or "task_name" in inputs:
            return super().training_step(model, inputs, num_items_in_batch)
        return self._grouped_training_step(model, inputs)

    def _grouped_training_step(self, model, inputs: dict[str, dict]) -> torch.Tensor:
        """One batch of every task: unsynchronised per-task backward passes, one all-reduce, surgery, `.grad`."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        if self._surgery_fresh:
            self.surgery.zero_()
            self._surgery_fresh = False
        weights = self.train_sampler.task_weights(self._batch_in_epoch()) if self.train_sampler else {}
        task_index = {name: i for i, name in enumerate(self.specs)}
        total = torch.zeros((), device=self.args.device)
        for task_name, batch in inputs.items():
            with self.accelerator.no_sync(model), self.compute_loss_context_manager():
                loss = self.compute_loss(model, batch) * weights.get(task_name, 1.0)
            loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)  # set by the training loop
            self.accelerator.backward(loss)
            self.surgery.accumulate(task_index[task_name])
            total += loss.detach()
        if self.accelerator.sync_gradients:
            self._average_grouped_gradients(model)
            self.surgery.combine()
            self._surgery_fresh = True
        return total

    def _batch_in_epoch(self) -> int:
        steps = self.state.global_step * self.args.gradient_accumulation_steps
        return steps % len(self.train_sampler)

    def _average_grouped_gradients(self, model) -> None:
        """Average the per-task shared gradients and every other gradient (heads, PALs) across ranks at once."""
        if self.args.world_size <= 1:
            return
        shared = {id(p) for p in self.surgery.params}
        others = [p for p in model.parameters() if p.grad is not None and id(p) not in shared]
        flat = torch.cat([self.surgery.buffer.reshape(-1), *(p.grad.reshape(-1).float() for p in others)])
        flat = self.accelerator.reduce(flat, reduction="mean")
        self.surgery.buffer.copy_(flat[: self.surgery.buffer.numel()].view_as(self.surgery.buffer))
        offset = self.surgery.buffer.numel()
        for p in others:
            p.grad.copy_(flat[offset: offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    # ---- loss and logging ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task_name = inputs["task_name"]
        outputs = model(**inputs)
        spec = self.specs[task_name]
        loss = outputs.loss
        if model.training:
            self._task_metrics.add(f"loss_{task_name}", loss * spec.loss_weight)
        if self.smart is not None and model.training and task_name in self.smart.tasks:
            loss = loss + self.smart.loss(model, inputs, outputs, spec)
            for key, value in self.smart.last.items():
                self._task_metrics.add(f"{key}_{task_name}", value)
        loss = loss * spec.loss_weight
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and hasattr(self, "_task_metrics"):
            keys = [f"{metric}_{name}" for metric in self._task_metric_names for name in self.specs]
            logs.update(self._task_metrics.drain(keys, self.accelerator, self.args.device))
            if getattr(self, "surgery", None) is not None:
                logs.update(self.surgery.pop_stats(list(self.specs)))
        super().log(logs, start_time)

    # ---- extra training state in checkpoints ----

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self._stateful and self.args.should_save and not self.args.save_only_model:
            folder = os.path.join(self._get_output_dir(trial=trial),
                                  f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            save_training_state(folder, {name: obj.state_dict() for name, obj in self._stateful.items()})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        states = load_training_state(resume_from_checkpoint)
        for name, obj in self._stateful.items():
            if name in states:
                obj.load_state_dict(states[name])
            else:
                logger.warning(f"{resume_from_checkpoint} has no saved state for {name!r}: it starts afresh")

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
