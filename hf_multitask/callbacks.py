"""Trainer callbacks and per-step bookkeeping of [`MultitaskTrainer`]: the sampler's epoch, the regularisers' hooks,
per-task training metrics and the non-finite-loss guard."""

from __future__ import annotations

import torch
from transformers import ProgressCallback, TrainerCallback


class SamplerEpochCallback(TrainerCallback):
    """Sets the sampler's epoch before each epoch, whatever wrappers accelerate put around it."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = self.trainer.train_sampler
        if sampler is not None:
            sampler.set_epoch(int((state.epoch or 0.0) + 1e-9))


class RegularizerCallback(TrainerCallback):
    """Calls each regulariser's `on_train_begin` and `after_optimizer_step` hooks with the unwrapped model.

    Both run on every rank, after DDP has synchronised the weights, so per-rank state (SMART's teacher) stays the same
    everywhere. Whether a step was applied is the Trainer's public `optimizer_step_applied()`.
    """

    def __init__(self, trainer, regularizers):
        self.trainer, self.regularizers = trainer, list(regularizers)

    def _model(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def on_train_begin(self, args, state, control, **kwargs):
        for regularizer in self.regularizers:
            regularizer.on_train_begin(self._model())

    def on_optimizer_step(self, args, state, control, **kwargs):
        applied = self.trainer.optimizer_step_applied()
        for regularizer in self.regularizers:
            regularizer.after_optimizer_step(self._model(), applied)


class LossWeightingCallback(TrainerCallback):
    """Hands the loss weighting the losses of each optimizer step that changed the weights: a step that an fp16
    scaler skipped for an overflow (known only after `optimizer.step()`) or the non-finite-loss guard skipped is
    not observed (DWA's loss averages would otherwise count losses whose update never happened)."""

    def __init__(self, trainer, weighting):
        self.trainer, self.weighting = trainer, weighting

    def on_optimizer_step(self, args, state, control, **kwargs):
        losses, self.weighting.step_losses = self.weighting.step_losses, None
        if losses is not None and self.trainer.optimizer_step_applied():
            self.weighting.observe(losses)


class TaskMetrics:
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


class NonFiniteLossError(RuntimeError):
    """Raised after `nonfinite_loss_limit` optimizer steps in a row were skipped for NaN or inf losses."""


class NonFiniteGuard:
    """Decides, the same way on every rank, whether an optimizer step must be skipped for a NaN or inf loss.

    Losses are flagged per task on device (no host sync per micro-batch); at each optimizer step the flags are
    summed across ranks in one small all-reduce, and the step is skipped everywhere when any is set.
    """

    def __init__(self, task_names: list[str], limit: int):
        self.task_names, self.limit = list(task_names), limit
        self.flags: torch.Tensor | None = None
        self.in_a_row = 0  # skipped steps since the last good one
        self.skipped = 0  # skipped steps in the whole run
        self.unlogged = 0  # skipped steps since the last log
        self.skipping = False  # the current optimizer step is skipped

    def record(self, task_name: str, loss: torch.Tensor) -> None:
        if self.flags is None or self.flags.device != loss.device:
            self.flags = torch.zeros(len(self.task_names), device=loss.device)
        self.flags[self.task_names.index(task_name)] += (~torch.isfinite(loss.detach())).float().sum()

    def bad_tasks(self, accelerator) -> list[str]:
        """Tasks with a non-finite loss on any rank since the last call (call at every optimizer step)."""
        if self.flags is None:
            return []
        flags = accelerator.reduce(self.flags, reduction="sum") if accelerator.num_processes > 1 else self.flags
        self.flags = None
        return [name for name, flag in zip(self.task_names, flags.tolist()) if flag > 0]

    def state_dict(self) -> dict:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row, self.skipped = int(state.get("in_a_row", 0)), int(state.get("skipped", 0))


def end_prediction_bars(callback_handler) -> None:
    """Close transformers' evaluation progress bar after one task's loop, so that the next task's bar starts with its
    own total (`ProgressCallback` keeps a single bar until `on_evaluate`, which comes once after all tasks)."""
    for callback in callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.prediction_bar is not None:
            callback.prediction_bar.close()
            callback.prediction_bar = None
