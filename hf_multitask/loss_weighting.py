"""Loss weighting without per-task gradients: each task's loss gets a weight, the step backpropagates their sum once.

What LibMTL calls a weighting strategy, for users who cannot afford T backward passes (gradient surgery): the
weights come from the losses alone (DWA) or from learned per-task parameters (uncertainty weighting). Both run in
grouped mode, where every step sees one batch of every task (see [`summed_training_step`] in `summed_step.py`).

The pure math (`uncertainty_loss`, `dwa_weights`) takes tensors and is tested without a model. A new method is a
[`LossWeighting`] subclass and one `@register_loss_weighting` line (docs/loss_weighting.md, "Adding a weighting").
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .callbacks import LossWeightingCallback
from .utils import Registry, constructor_options

LOSS_WEIGHTINGS: Registry = Registry("loss weighting", first=("none",),
                                    unknown="Unknown loss_weighting {name!r}{hint}; known: {known}")


def uncertainty_loss(losses: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """Kendall et al. 2018 (https://arxiv.org/abs/1705.07115): `sum_i exp(-s_i) L_i + s_i`, s_i = log sigma_i^2.

    Args:
        losses: `(T,)` task losses.
        log_vars: `(T,)` learned s_i; at the minimum over s_i, exp(-s_i) = 1 / L_i.
    """
    return (torch.exp(-log_vars) * losses + log_vars).sum()


def dwa_weights(previous: torch.Tensor, before: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Dynamic Weight Average (Liu et al. 2019, https://arxiv.org/abs/1803.10704): `T softmax(r / temperature)`.

    Args:
        previous: `(T,)` each task's average loss over the last window (epoch).
        before: `(T,)` each task's average loss over the window before it.
        temperature: The paper's T = 2; larger values flatten the weights towards 1.

    Returns:
        `(T,)` weights that sum to T; r_i = previous_i / before_i, a task whose loss falls more slowly weighs more.
    """
    ratios = previous / before.clamp_min(torch.finfo(before.dtype).tiny)
    return previous.numel() * torch.softmax(ratios / temperature, dim=0)


class LossWeighting:
    """One weight per task for the summed loss `sum_i w_i L_i` (+ a method's own terms), in the task order given.

    The trainer calls, per micro-batch: [`advance`] (the optimizer step about to run), [`combine`] (the objective to
    backpropagate, and the weights for the logs); and once per optimizer step [`observe`] with the step's task losses
    averaged over the micro-batches and all ranks, so the state is the same on every rank and in the checkpoint.

    Args:
        task_names: The tasks, in the model's order.

    Attributes:
        name: The `loss_weighting` value that selects the method.
        option_fields: `{__init__ parameter: MultitaskTrainingArguments field}` for options that have a field of
            their own (DWA: `{"temperature": "dwa_temperature", ...}`); every other named parameter of `__init__`
            after `task_names` is set through `loss_weighting_kwargs` ([`loss_weighting_options`]).
    """

    name = ""
    option_fields: ClassVar[dict[str, str]] = {}

    def __init__(self, task_names: list[str]):
        self.task_names = list(task_names)
        self.pending: torch.Tensor | float = 0.0  # the current optimizer step's losses, summed over micro-batches
        self.step_losses: torch.Tensor | None = None  # the step's averaged losses, observed once the step is applied

    @classmethod
    def from_args(cls, task_names: list[str], args) -> LossWeighting:
        """Build from `MultitaskTrainingArguments`: the fields of [`option_fields`], and `loss_weighting_kwargs`."""
        fields = {option: getattr(args, field) for option, field in cls.option_fields.items()}
        return cls(task_names, **fields, **(getattr(args, "loss_weighting_kwargs", None) or {}))

    def attach(self, model: nn.Module) -> None:
        """Give the model the method's per-task parameters (before the optimizer is built); none by default."""

    def advance(self, step: int, epoch_steps: int) -> None:
        """The optimizer step `step` (0-based) is about to run; an epoch has `epoch_steps` optimizer steps."""

    def weights(self, device: torch.device) -> torch.Tensor:
        """`(T,)` weights of the task losses (may carry gradients to the method's parameters)."""
        raise NotImplementedError

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective for `(T,)` task losses and the detached `(T,)` weights applied to them."""
        weights = self.weights(losses.device)
        return (weights * losses).sum(), weights.detach()

    def observe(self, losses: torch.Tensor) -> None:
        """Task losses `(T,)` of an applied optimizer step (not one that the non-finite-loss guard or an fp16 scaler
        skipped), averaged over micro-batches and ranks."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def register_loss_weighting(cls: type[LossWeighting]) -> type[LossWeighting]:
    """Register a [`LossWeighting`] subclass under `cls.name` (usable as a decorator); returns it."""
    if cls.name == "none":
        raise ValueError(f"{cls.__name__}.name must be a name other than 'none' (no weighting), got {cls.name!r}")
    return LOSS_WEIGHTINGS.add(cls.name, cls, cls)


def loss_weighting_options(cls: type[LossWeighting]) -> list[str]:
    """The options `loss_weighting_kwargs` can set for `cls`: its `__init__`'s named parameters after `task_names`,
    less those with a field of their own ([`LossWeighting.option_fields`])."""
    return constructor_options(cls, skip=("task_names", *cls.option_fields))


def get_loss_weighting(name: str) -> type[LossWeighting]:
    """The registered weighting called `name`; an unknown name is an error listing the known ones."""
    return LOSS_WEIGHTINGS.lookup(name)


class LogVariance(nn.Module):
    """One task's learned s = log sigma^2 of uncertainty weighting, starting at 0 (weight exp(-s) = 1)."""

    def __init__(self):
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(()))


@register_loss_weighting
class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall et al. 2018): `sum_i exp(-s_i) L_i + s_i`.

    The s_i are the model's per-task parameters under `model.loss_weights` (an `nn.ModuleDict` keyed by task name,
    listed in `MultitaskModel.task_module_attributes`): owned by their task, saved in checkpoints with the weights,
    trained by the optimizer without weight decay.
    """

    name = "uncertainty"

    def attach(self, model: nn.Module) -> None:
        existing = getattr(model, "loss_weights", None)
        if existing is None or list(existing) != self.task_names:
            device = next(model.parameters()).device
            model.loss_weights = nn.ModuleDict({name: LogVariance() for name in self.task_names}).to(device)
        self.log_variances = model.loss_weights

    def log_vars(self) -> torch.Tensor:
        return torch.stack([self.log_variances[name].log_var for name in self.task_names])

    def weights(self, device: torch.device) -> torch.Tensor:
        return torch.exp(-self.log_vars()).to(device)

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_vars = self.log_vars().to(losses.device)
        return uncertainty_loss(losses, log_vars), torch.exp(-log_vars).detach()


@register_loss_weighting
class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu et al. 2019): w_i = T softmax_i((L̄_i(k-1) / L̄_i(k-2)) / temperature), with
    L̄_i(k) task i's average loss over window k, a window being an epoch (the paper's) or `period` optimizer steps;
    w_i = 1 until two windows are complete.

    Args:
        task_names: The tasks.
        temperature: The paper's T = 2.
        period: Optimizer steps per window; 0 = one epoch.
    """

    name = "dwa"

    option_fields = {"temperature": "dwa_temperature", "period": "dwa_period"}

    def __init__(self, task_names: list[str], temperature: float = 2.0, period: int = 0):
        super().__init__(task_names)
        self.temperature, self.period = temperature, period
        num_tasks = len(self.task_names)
        self.window = 0  # index of the window the running sums belong to
        self.sums, self.count = torch.zeros(num_tasks, dtype=torch.float64), 0
        self.history = torch.zeros(0, num_tasks, dtype=torch.float64)  # the last two complete windows' averages

    def advance(self, step: int, epoch_steps: int) -> None:
        window = step // (self.period or max(epoch_steps, 1))
        if window != self.window and self.count:
            self.history = torch.cat([self.history, (self.sums / self.count)[None]])[-2:]
            self.sums.zero_()
            self.count = 0
        self.window = window

    def weights(self, device: torch.device) -> torch.Tensor:
        if len(self.history) < 2:
            return torch.ones(len(self.task_names), device=device)
        return dwa_weights(self.history[1], self.history[0], self.temperature).float().to(device)

    def observe(self, losses: torch.Tensor) -> None:
        self.sums += losses.detach().double().cpu()
        self.count += 1

    def state_dict(self) -> dict:
        return {"window": self.window, "count": self.count, "sums": self.sums.clone(), "history": self.history.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.window, self.count = int(state["window"]), int(state["count"])
        self.sums, self.history = state["sums"].double(), state["history"].double()


def build_loss_weighting(trainer) -> LossWeighting | None:
    """The trainer's `args.loss_weighting` (`None` for `"none"`), its per-task parameters added to the model, its
    state registered for checkpoints and its weights for the logs (`task_weight_<task>`)."""
    name = getattr(trainer.args, "loss_weighting", "none")
    if name == "none":
        return None
    weighting = get_loss_weighting(name).from_args(trainer.trained_tasks, trainer.args)
    weighting.attach(trainer.multitask_model)
    trainer._stateful["loss_weighting"] = weighting
    trainer._task_metric_names.append("task_weight")
    trainer.add_callback(LossWeightingCallback(trainer, weighting))
    return weighting
