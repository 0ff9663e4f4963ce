"""The grouped step without per-task gradients: one backward of the weighted sum of the T task losses.

Grouped mode (`task_sampling_grouped`) with `gradient_surgery="none"`, or with a loss weighting, needs no task's
gradient on its own, so it pays for no `[T, P]` buffer and no per-task backward: the T forwards build one graph and
one backward of `sum_i w_i L_i` gives the update. This is the cost floor every grouped step is compared with
(benchmarks/bench_steps.py). The weights w_i come from the loss weighting ([`LossWeighting`]) when one is set, else
from the task sampler (T p_i for `proportional` and `annealed`, 1 otherwise), as in the per-task-buffer step.

Under DDP the forwards and the backward run unsynchronised; at the optimizer step one collective averages every
gradient across ranks together with the step's task losses (which the loss weighting then observes), so every
rank applies the single-process update over the global batch and holds the same weighting state.
"""

from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor

from .loss_weighting import LossWeighting


def summed_training_step(trainer, model, inputs: dict[str, dict]) -> torch.Tensor:
    """One batch of every task: T forwards, one backward of the weighted sum; returns the objective (detached)."""
    trainer.train_mode(model)
    inputs = trainer._prepare_inputs(inputs)
    accumulation = getattr(trainer, "current_gradient_accumulation_steps", 1)  # set by the training loop
    weighting: LossWeighting | None = trainer.loss_weighting
    losses = {}
    for task_name, batch in inputs.items():
        with trainer.accelerator.no_sync(model), trainer.compute_loss_context_manager():
            losses[task_name] = trainer.compute_loss(model, batch)
    if weighting is None:
        sampler = trainer.train_sampler
        prior = sampler.task_weights(trainer._batch_in_epoch()) if sampler is not None else {}
        terms = [losses[name] * prior.get(name, 1.0) / accumulation for name in losses]
        total = torch.stack(terms).sum()
    else:
        missing = [name for name in weighting.task_names if name not in losses]
        if missing:
            raise ValueError(f"loss_weighting needs a batch of every task at every step; this one lacks {missing}")
        weighting.advance(trainer.state.global_step, epoch_steps(trainer))
        stacked = torch.stack([losses[name] for name in weighting.task_names])
        objective, weights = weighting.combine(stacked)
        if objective.dim() != 0 or weights.shape != stacked.shape:
            raise ValueError(f"loss weighting {weighting.name!r}: combine must give a scalar objective and weights of "
                             f"the losses' shape {tuple(stacked.shape)}, got an objective of shape "
                             f"{tuple(objective.shape)} and weights of shape {tuple(weights.shape)} (weights() "
                             "returns (T,), one per task)")
        total = objective / accumulation
        terms = list(stacked.detach() * weights / accumulation)
        losses = dict(zip(weighting.task_names, stacked))
        for name, weight in zip(weighting.task_names, weights):
            trainer._task_metrics.add(f"task_weight_{name}", weight)
        weighting.pending = weighting.pending + stacked.detach() / accumulation
    for name, term in zip(losses, terms):
        trainer._nonfinite.record(name, term)
    trainer.accelerator.backward(total)
    if trainer.accelerator.sync_gradients:
        if not trainer._skip_update_if_nonfinite(model):
            step_losses = weighting.pending if weighting is not None else None
            step_losses = average_gradients(trainer, model, step_losses)
            if weighting is not None:  # observed if the optimizer applies the step (LossWeightingCallback)
                weighting.step_losses = step_losses
        if weighting is not None:
            weighting.pending = 0.0
    return total.detach()


def epoch_steps(trainer) -> int:
    """Optimizer steps in one epoch of the grouped sampler (as the Trainer counts them)."""
    sampler = trainer.train_sampler
    return math.ceil(len(sampler) / trainer.args.gradient_accumulation_steps) if sampler is not None else 1


def average_gradients(trainer, model, extra: torch.Tensor | None) -> torch.Tensor | None:
    """Average every `.grad` (and `extra`) across ranks in one collective; returns the averaged `extra`."""
    if trainer.args.world_size <= 1:
        return extra
    params = [p for p in model.parameters() if p.grad is not None]
    if any(isinstance(p.grad, DTensor) for p in params):  # FSDP2 averaged them in the backward (no loss weighting)
        return extra
    mean_across_ranks(trainer.accelerator, [p.grad for p in params] + ([extra] if extra is not None else []))
    return extra


def mean_across_ranks(accelerator, tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean across ranks, in place, with one all-reduce of them all laid end to end."""
    flat = accelerator.reduce(torch.cat([t.reshape(-1).float() for t in tensors]), reduction="mean")
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset: offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
