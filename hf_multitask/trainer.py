"""[`MultitaskTrainer`]: the HF `Trainer` with task-aware sampling, per-task losses and per-task evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from functools import partial

import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PredictionOutput, seed_worker, speed_metrics
from transformers.utils import logging

from . import conventions
from .aggregators import GradientSurgery, ShardedGradientSurgery
from .callbacks import NonFiniteGuard, NonFiniteLossError, RegularizerCallback, SamplerEpochCallback, TaskMetrics
from .conventions import multitask_base
from .data import MultitaskDataset
from .evaluation import evaluate_tasks, task_dataloader
from .loss_weighting import build_loss_weighting
from .mixed_precision import active_scaler, combine_unscaled, drop_gradients
from .optim import build_optimizer, head_lr_param_groups, no_decay_names
from .regularizers import Regularizer, build_regularizers, regularizer_term
from .sampling import MultitaskBatchSampler, SamplerPlanState, batches_in_steps
from .sharding import check_sharded_trainer, sharded_surgery
from .summed_step import mean_across_ranks, summed_training_step
from .trainer_card import TrainerModelCard
from .trainer_checkpoints import TrainerCheckpoints

logger = logging.get_logger(__name__)

class MultitaskTrainer(TrainerCheckpoints, TrainerModelCard, Trainer):
    """Trains a [`MultitaskModel`] on several tasks at once.

    Every argument not listed below is as in `transformers.Trainer`. The default collator is a [`MultitaskCollator`].

    Args:
        train_dataset: `{task_name: tokenized Dataset}` or a [`MultitaskDataset`] (one Dataset for a one-task model);
            validated against the tasks' specs here (docs/conventions.md).
        eval_dataset: `{task_name: tokenized Dataset}`; evaluation reports `eval_<task>_<metric>` for each task
            and `eval_overall`.
        compute_metrics: `{task_name: fn}`, a `fn(eval_pred, task_name)`, or a plain `fn(eval_pred)` for a one-task
            model; results go under `eval_<task>_<name>`.

    Example:

    ```python
    >>> trainer = MultitaskTrainer(model=model, args=MultitaskTrainingArguments("out"),  # doctest: +SKIP
    ...                            train_dataset={"sst": sst_train, "sts": sts_train},
    ...                            eval_dataset={"sst": sst_dev, "sts": sts_dev}, processing_class=tokenizer)
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, compute_metrics=None, **kwargs):
        train_dataset, eval_dataset, data_collator = conventions.prepare_inputs(
            model, train_dataset, eval_dataset, data_collator, processing_class)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        conventions.check_training_args(self.args)
        self.task_compute_metrics = conventions.scope_compute_metrics(compute_metrics, self.specs,
                                                                      self.args.batch_eval_metrics)
        conventions.check_trainer_options(self)
        check_sharded_trainer(self)  # FSDP / DeepSpeed turned on by an accelerate config: sharding.py
        self._checked_eval_dataset = self.eval_dataset  # normalised and validated by prepare_inputs
        self._checked_train_dataset = self.train_dataset
        self.train_sampler: MultitaskBatchSampler | None = None
        self._task_metrics = TaskMetrics()
        self._task_metric_names = ["loss"]
        # Extra training state saved with every checkpoint and restored on resume: {name: has state_dict()}
        self._stateful: dict[str, object] = {}
        self.add_callback(SamplerEpochCallback(self))
        self._nonfinite = NonFiniteGuard(list(self.specs), getattr(self.args, "nonfinite_loss_limit", 10))
        self._stateful["nonfinite"] = self._nonfinite
        self._stateful["sampler_plan"] = SamplerPlanState(lambda: self.train_sampler and {
            **self.train_sampler.plan(), "gradient_accumulation_steps": self.args.gradient_accumulation_steps},
            on_old_streams=lambda: self.train_sampler.resume_old_streams())
        self.regularizers = self._build_regularizers()
        self.surgery = self._build_surgery()
        self.loss_weighting = build_loss_weighting(self)
        self._surgery_fresh = True  # the per-task gradient buffer starts a new optimizer step
        self._surgery_placed = False  # checked for FSDP2 sharding at the first grouped step (sharding.py)

    @property
    def specs(self):
        return self.multitask_model.specs

    @property
    def trained_tasks(self) -> list[str]:
        """The tasks with training data, in the model's order: the rows of the per-task gradients and the loss
        weights. A task without data would be a zero row (MGDA's min-norm point of {g1, g2, 0} is 0)."""
        sizes = getattr(self.train_dataset, "task_sizes", None) or self.specs
        return [name for name in self.specs if name in sizes]

    @property
    def multitask_model(self):
        """The [`MultitaskModel`] inside whatever wraps it (accelerate, DDP, peft)."""
        wrapped = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        return multitask_base(wrapped)

    def _build_regularizers(self) -> dict[str, Regularizer]:
        regularizers = build_regularizers(self.args, list(self.specs))  # docs/regularizers.md
        self._task_metric_names += [key for regularizer in regularizers.values() for key in regularizer.log_names]
        self._stateful.update({name: r for name, r in regularizers.items() if r.has_state})
        if regularizers:
            self.add_callback(RegularizerCallback(self, regularizers.values()))
        return regularizers

    def _build_surgery(self) -> GradientSurgery | None:
        args, self._surgery_options = self.args, {}
        if not getattr(args, "task_sampling_grouped", False) or args.gradient_surgery == "none":
            return None  # no per-task gradients needed: the summed-loss step (summed_step.py)
        self._surgery_options = dict(gradvac_beta=args.gradvac_beta, gradvac_per_layer=args.gradvac_per_layer,
                                     aggregator_options=getattr(args, "gradient_surgery_kwargs", None))
        model = self.multitask_model
        shared = model.named_shared_parameters(root=self.accelerator.unwrap_model(self.model))
        if not shared:
            logger.warning("Grouped batches with no shared trainable parameters (frozen encoder?): gradient surgery "
                           "has nothing to project, so each step is the plain sum of the task losses.")
        method = self.args.gradient_surgery if shared else "none"
        surgery = GradientSurgery(method, [p for _, p in shared], num_tasks=len(self.trained_tasks), seed=args.seed,
                                  segment_ids=[model.parameter_group(n) for n, _ in shared], **self._surgery_options)
        self._stateful["gradient_surgery"] = surgery
        return surgery

    # ---- data ----

    def _set_signature_columns_if_needed(self) -> None:
        """The model's forward arguments, which `remove_unused_columns` keeps, and the features the kinds read in
        their collation (`TaskKind.extra_features`: a token-classification task's `word_ids`)."""
        super()._set_signature_columns_if_needed()
        extras = {name for spec in self.specs.values() for name in spec.task_kind.extra_features}
        self._signature_columns += sorted(extras - set(self._signature_columns))

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset ({task_name: Dataset}).")
        if self.train_dataset is not self._checked_train_dataset:  # assigned after construction: as if passed to it
            train = conventions.multitask_dataset(self.train_dataset, self.specs)
            conventions.validate_datasets(train.datasets, self.specs, "train_dataset", self._tokenizer(),
                                          vocab_size=conventions.vocab_size(self.model))
            self.train_dataset = self._checked_train_dataset = train
        self.train_sampler, args = self._build_train_sampler(self.train_dataset), self.args
        self._stateful["sampler_plan"].check()  # against a resumed checkpoint's plan, if one was loaded first
        dataloader = DataLoader(  # the Trainer's DataLoader settings (`Trainer._get_dataloader`), our batch sampler
            self.train_dataset, batch_sampler=self.train_sampler, collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers, prefetch_factor=args.dataloader_prefetch_factor,
            multiprocessing_context=args.dataloader_multiprocessing_context, in_order=args.dataloader_in_order,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
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
        group = conventions.groups_by_length(args)
        sampler = MultitaskBatchSampler(
            dataset.task_sizes, batch_size=self._train_batch_size,
            strategy=getattr(args, "task_sampling", "annealed"),
            seed=args.data_seed if args.data_seed is not None else args.seed,
            num_processes=args.world_size, process_index=args.process_index,
            lengths=dataset.lengths(self.specs) if group else None, group_by_length=group,
            grouped=getattr(args, "task_sampling_grouped", False),
        )
        if args.max_steps > 0:
            sampler.set_total_batches(batches_in_steps(args.max_steps, len(sampler), args.gradient_accumulation_steps))
        else:
            sampler.set_total_batches(math.ceil(args.num_train_epochs * len(sampler)))
        return sampler

    # ---- training step ----

    def training_step(self, model, inputs, num_items_in_batch=None):
        if "task_name" not in inputs and self.surgery is None:  # grouped, no surgery: one backward of the sum
            return summed_training_step(self, model, inputs)
        if "task_name" in inputs:
            loss = super().training_step(model, inputs, num_items_in_batch)
            self._nonfinite.record(inputs["task_name"], loss)
            if self.accelerator.sync_gradients:
                self._skip_update_if_nonfinite(model)
            return loss
        return self._grouped_training_step(model, inputs)

    def train_mode(self, model) -> None:
        """Model and optimizer in training mode, as `Trainer.training_step` puts them (schedule-free optimizers have
        a train and an eval mode, and evaluation leaves them in eval); the grouped steps call it first."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()

    def floating_point_ops(self, inputs) -> int:
        """`total_flos`: a grouped batch (`{task: batch}`) counts each task's batch (the parent counts 0)."""
        if "task_name" in inputs:
            return super().floating_point_ops(inputs)
        return sum(super(MultitaskTrainer, self).floating_point_ops(batch) for batch in inputs.values())

    def _track_num_input_tokens(self, inputs) -> None:
        """`include_num_input_tokens_seen`: a grouped batch (`{task: batch}`) counts each task's batch."""
        if "task_name" in inputs:
            return super()._track_num_input_tokens(inputs)
        for batch in inputs.values():
            super()._track_num_input_tokens(batch)

    def _grouped_training_step(self, model, inputs: dict[str, dict]) -> torch.Tensor:
        """One batch of every task: per-task backward passes, one all-reduce, surgery, `.grad`.

        Only the forward runs under `no_sync`: DDP decides at the forward whether the backward all-reduces, so the
        per-task backward passes stay local and `_average_grouped_gradients` averages them once. FSDP2 decides at the
        backward, which stays outside `no_sync` on purpose: its reduce-scatter is what fills the sharded gradients
        the sharded surgery reads (inside, the shards would get no `.grad` at all)."""
        self.train_mode(model)
        inputs = self._prepare_inputs(inputs)
        if not self._surgery_placed:  # once the model is prepared: under FSDP2 it moves to this rank's shards
            self.surgery = self._stateful["gradient_surgery"] = sharded_surgery(
                self.surgery, self.multitask_model, self.accelerator.unwrap_model(model), **self._surgery_options)
            self._surgery_placed = True
        if self._surgery_fresh:
            self.surgery.zero_()
            self._surgery_fresh = False
        weights = self.train_sampler.task_weights(self._batch_in_epoch()) if self.train_sampler else {}
        task_index = {name: i for i, name in enumerate(self.trained_tasks)}
        total = torch.zeros((), device=self.args.device)
        for task_name, batch in inputs.items():
            with self.accelerator.no_sync(model), self.compute_loss_context_manager():
                loss = self.compute_loss(model, batch) * weights.get(task_name, 1.0)
            loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)  # set by the training loop
            self._nonfinite.record(task_name, loss)
            with self.surgery.capture(task_index[task_name]):  # the shared gradients go into the task's row
                self.accelerator.backward(loss)
            total += loss.detach()
        if self.accelerator.sync_gradients:
            self._surgery_fresh = True
            if not self._skip_update_if_nonfinite(model):
                self._average_grouped_gradients(model)
                combine_unscaled(self.surgery, active_scaler(self.accelerator), model)  # fp16: mixed_precision.py
        return total

    def get_decay_parameter_names(self, model) -> list[str]:
        """The parent's weight-decay parameters, less the learned loss weights (optim.no_decay_names)."""
        return no_decay_names(super().get_decay_parameter_names(model), model, self.multitask_model)

    def _skip_update_if_nonfinite(self, model) -> bool:
        """At an optimizer step: when any rank saw a NaN or inf loss, drop every gradient so that the optimizer
        leaves weights and moments alone (AdamW skips parameters without `.grad`; zeroed gradients would still
        move them); stop after `nonfinite_loss_limit` such steps in a row."""
        guard = self._nonfinite
        bad = guard.bad_tasks(self.accelerator)
        guard.skipping = bool(bad)
        if not bad:
            guard.in_a_row = 0
            return False
        drop_gradients(model, active_scaler(self.accelerator))  # under fp16's scaler: one NaN gradient
        guard.in_a_row, guard.skipped, guard.unlogged = guard.in_a_row + 1, guard.skipped + 1, guard.unlogged + 1
        step = self.state.global_step + 1
        if guard.in_a_row > guard.limit:
            raise NonFiniteLossError(
                f"Step {step}: non-finite loss in task(s) {bad} for {guard.in_a_row} optimizer steps in a row "
                f"(nonfinite_loss_limit={guard.limit}); training stopped, the last checkpoint saved before is intact.")
        logger.warning(f"Step {step}: non-finite loss in task(s) {bad}; optimizer update skipped "
                       f"({guard.in_a_row} in a row, limit {guard.limit}, {guard.skipped} in this run)")
        return True

    def optimizer_step_applied(self) -> bool:
        """Whether the optimizer step that just ran changed the weights: not skipped by the fp16 scaler nor by the
        non-finite-loss guard (what regularisers' `after_optimizer_step` hooks are told)."""
        return not (self.accelerator.optimizer_step_was_skipped or self._nonfinite.skipping)

    def _batch_in_epoch(self) -> int:
        """The first batch of the current optimizer step within its epoch (the Trainer's steps restart with each
        epoch; an epoch's last step takes the batches left over from the accumulation)."""
        accumulation = self.args.gradient_accumulation_steps
        return self.state.global_step % math.ceil(len(self.train_sampler) / accumulation) * accumulation

    def _average_grouped_gradients(self, model) -> None:
        """Average the per-task shared gradients and every other gradient (heads, PALs) across ranks at once."""
        if self.args.world_size <= 1 or isinstance(self.surgery, ShardedGradientSurgery):  # FSDP2 averaged them
            return
        shared = {id(p) for p in self.surgery.params}
        others = [p.grad for p in model.parameters() if p.grad is not None and id(p) not in shared]
        mean_across_ranks(self.accelerator, [self.surgery.buffer, *others])

    # ---- loss and logging ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task_name = inputs["task_name"]
        outputs = model(**inputs)
        spec = self.specs[task_name]
        loss = outputs.loss
        if loss is None:
            raise ValueError(f"A batch of task {task_name!r} has no 'labels' (its keys: {sorted(inputs)}): keep the "
                             "dataset's label column, as 'labels' or HF's 'label'")
        if model.training:  # the task's weight scales its training loss; logs and evaluation show it unweighted
            self._task_metrics.add(f"loss_{task_name}", loss)
            for regularizer in self.regularizers.values():
                if regularizer.applies_to(task_name):
                    loss = loss + regularizer_term(regularizer, model, inputs, outputs, spec)
                    for key, value in regularizer.logs.items():
                        self._task_metrics.add(f"{key}_{task_name}", value)
            loss = loss * spec.loss_weight
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and hasattr(self, "_task_metrics"):
            keys = [f"{metric}_{name}" for metric in self._task_metric_names for name in self.specs]
            logs.update(self._task_metrics.drain(keys, self.accelerator, self.args.device))
            if getattr(self, "surgery", None) is not None:
                logs.update(self.surgery.pop_stats(self.trained_tasks))
            if self._nonfinite.unlogged:
                logs["nonfinite_skipped_steps"], self._nonfinite.unlogged = self._nonfinite.unlogged, 0
        super().log(logs, start_time)

    # ---- optimizer ----

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The parent's optimizer; with `args.head_learning_rate` set, the heads' parameters (`heads.*`) get their own
        param groups at that rate (the parent's weight-decay split kept), and the scheduler scales both rates alike."""
        head_lr = getattr(self.args, "head_learning_rate", None)
        if head_lr is not None and self.optimizer is not None:
            logger.warning_once(f"head_learning_rate={head_lr} does not apply to an optimizer passed to the trainer "
                                "(optimizers=(optimizer, ...)): its param groups keep their own rates")
        if head_lr is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        chosen = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        groups = head_lr_param_groups(opt_model, self.multitask_model, head_lr, self.args.weight_decay,
                                      set(self.get_decay_parameter_names(opt_model)))
        self.optimizer = build_optimizer(chosen, groups, self.args.optim)
        return self.optimizer

    # ---- evaluation ----

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate every task; returns `<prefix>_<task>_<metric>`, `<prefix>_<task>_loss`, the user's
        `compute_metrics` per task and `<prefix>_overall`. `eval_dataset` as at construction."""
        eval_dataset = self._named_eval_dataset(eval_dataset, "evaluate")
        datasets = self._task_datasets(eval_dataset if eval_dataset is not None else self.eval_dataset, "eval_dataset")
        self._memory_tracker.start()  # the parent's evaluate does this too; transformers has no public API for it
        start_time = time.time()
        _, metrics, num_samples = evaluate_tasks(self, datasets, metric_key_prefix, ignore_keys)
        total_batch_size = self.args.eval_batch_size * self.args.world_size
        metrics.update(speed_metrics(metric_key_prefix, start_time, num_samples=num_samples,
                                     num_steps=math.ceil(num_samples / total_batch_size)))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)  # as the parent does: no public API for it
        return metrics

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test") -> PredictionOutput:
        """Predict every task of `{task_name: Dataset}` (or one Dataset, for a model with one task). Returns
        `PredictionOutput(predictions, label_ids, metrics)`: `{task: array}` for a dict (arrays for one Dataset; label
        ids `None` where a dataset has no labels) and the metrics `evaluate` gives, `test_<task>_<metric>` ...
        `test_overall` (metrics that need labels only where every dataset has them)."""
        datasets = self._task_datasets(test_dataset, "test_dataset", labels_required=False)
        self._memory_tracker.start()  # as the parent's predict: no public API for it
        start_time = time.time()
        outputs, metrics, num_samples = evaluate_tasks(self, datasets, metric_key_prefix, ignore_keys, "Prediction")
        metrics.update(speed_metrics(metric_key_prefix, start_time, num_samples=num_samples, num_steps=math.ceil(
            num_samples / (self.args.eval_batch_size * self.args.world_size))))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)  # no public API for it
        predictions = {name: output.predictions for name, output in outputs.items()}
        label_ids = {name: output.label_ids for name, output in outputs.items()}
        if not isinstance(test_dataset, (Mapping, MultitaskDataset)):  # one Dataset in, arrays out, as Trainer's
            predictions, label_ids = next(iter(predictions.values())), next(iter(label_ids.values()))
        return PredictionOutput(predictions=predictions, label_ids=label_ids, metrics=metrics)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        """One task's evaluation DataLoader, rows in dataset order (each task is evaluated on its own loader):
        `eval_dataset` names a task of the trainer's `eval_dataset`, or is `{task_name: Dataset}` of one task (or,
        like `None`, the trainer's eval_dataset, when that holds one task)."""
        eval_dataset = self._named_eval_dataset(eval_dataset, "get_eval_dataloader")
        return self._one_task_dataloader(eval_dataset if eval_dataset is not None else self.eval_dataset,
                                         "get_eval_dataloader", "eval_dataset", labels_required=True)

    def get_test_dataloader(self, test_dataset) -> DataLoader:
        """One task's prediction DataLoader, rows in order: `{task_name: Dataset}` of one task, or one Dataset for a
        model with one task (labels optional)."""
        return self._one_task_dataloader(test_dataset, "get_test_dataloader", "test_dataset", labels_required=False)

    def _one_task_dataloader(self, datasets, method: str, argument: str, labels_required: bool) -> DataLoader:
        checked = self._task_datasets(datasets, argument, labels_required)
        if len(checked) != 1:
            raise ValueError(f"{method}: each task is evaluated on its own DataLoader; ask for one task's, e.g. "
                             f"{method}({{{next(iter(checked))!r}: dataset}}) (got the tasks {list(checked)}); "
                             "evaluate() and predict() take them all")
        (name, dataset), = checked.items()
        return task_dataloader(self, name, dataset)

    def _named_eval_dataset(self, eval_dataset, method: str):
        """A task name (a key of the trainer's eval datasets, as `Trainer.evaluate` takes it) as `{name: Dataset}`."""
        if not isinstance(eval_dataset, str):
            return eval_dataset
        own = self._task_datasets(self.eval_dataset, "eval_dataset")
        if eval_dataset not in own:
            raise KeyError(f"{method}(eval_dataset={eval_dataset!r}): the trainer's eval_dataset has {list(own)}")
        return {eval_dataset: own[eval_dataset]}

    def _task_datasets(self, datasets, argument: str, labels_required: bool = True) -> dict:
        if datasets is None:
            raise TypeError(f"MultitaskTrainer needs {argument} as a non-empty {{task_name: Dataset}}")
        if datasets is self._checked_eval_dataset:  # normalised and validated already
            return datasets
        checked = conventions.task_datasets(datasets, self.specs, argument)
        conventions.validate_datasets(checked, self.specs, argument, self._tokenizer(), labels_required,
                                      conventions.vocab_size(self.model))
        if datasets is self.eval_dataset:  # assigned after construction: keep the checked form
            self.eval_dataset = self._checked_eval_dataset = checked
        return checked

    def _tokenizer(self):
        return self.processing_class or getattr(self.data_collator, "tokenizer", None)
