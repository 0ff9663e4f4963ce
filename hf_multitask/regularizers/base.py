"""The regulariser protocol: extra loss terms for some tasks' batches, the values they log, their checkpointed state
and a hook after every optimizer step; a registry of the known ones and the builder the Trainer calls.

A regulariser is one module with a [`Regularizer`] subclass and a `register_regularizer(...)` call, plus one import
line in `regularizers/__init__.py` (see docs/regularizers.md). The Trainer knows none of them by name.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
from torch import nn

from ..utils import Registry, did_you_mean


class Regularizer:
    """One regulariser of the training loss, for the batches of the tasks in `tasks`.

    The Trainer calls, in this order: `on_train_begin(model)` once when training starts (after a resume's
    `load_state_dict`), `loss(model, inputs, outputs, spec)` for every training batch of a task it `applies_to`
    (then reads `logs`), and `after_optimizer_step(model, applied)` after every optimizer step. `model` is the
    unwrapped model in the two hooks, and the model the Trainer trains (possibly DDP-wrapped) in `loss`.

    Args:
        tasks: Names of the tasks whose loss gets the regulariser's terms.

    Class attributes:
        name: The registered name (`regularizers={name: {...}}` in [`MultitaskTrainingArguments`]).
        log_names: The keys `loss` may put in `logs`; each is logged as `<key>_<task>`, averaged since the last log.
    """

    name: ClassVar[str] = ""
    log_names: tuple[str, ...] = ()

    def __init__(self, tasks: list[str]):
        if isinstance(tasks, str):
            tasks = [tasks]
        if not tasks:
            raise ValueError(f"{type(self).__name__}: tasks must name at least one task")
        self.tasks = list(tasks)
        self.logs: dict[str, torch.Tensor] = {}  # the last batch's values, unweighted, for logging

    def applies_to(self, task_name: str) -> bool:
        return task_name in self.tasks

    def loss(self, model: nn.Module, inputs: dict, outputs, spec) -> torch.Tensor:
        """The weighted terms to add to the task loss of one batch, given the model's `outputs` on `inputs`; sets
        `logs` to the batch's unweighted values (a subset of `log_names`)."""
        raise NotImplementedError

    @classmethod
    def options_from_args(cls, args) -> dict | None:
        """Constructor options read from dedicated fields of the training arguments (SMART's `smart_*`), or `None`
        when those fields do not turn the regulariser on. Most regularisers have none: they are configured through
        `regularizers={name: options}` alone."""
        return None

    @property
    def has_state(self) -> bool:
        """Whether `state_dict` holds anything to checkpoint."""
        return False

    def state_dict(self) -> dict:
        """Tensors and JSON values that a resumed run needs (saved with every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned; called before `on_train_begin` when resuming."""

    def configure(self, args) -> None:
        """Called once when the Trainer builds the regulariser, with its training arguments (the seed, the process
        layout: `args.process_index`, `args.per_device_train_batch_size`)."""

    def on_train_begin(self, model: nn.Module) -> None:
        """Called once when training starts, on every rank, after the weights are synchronised."""

    def after_optimizer_step(self, model: nn.Module, applied: bool) -> None:
        """Called after every optimizer step on every rank; `applied` is `False` when the step left the weights
        unchanged (skipped by the fp16 scaler or for a non-finite loss)."""


REGULARIZERS: Registry = Registry("regulariser", unknown="Unknown regulariser {name!r}{hint}; known regularisers: "
                                                         "{known}")


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    """Register the [`Regularizer`] subclass `cls` under `cls.name`; returns it (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
        raise TypeError(f"register_regularizer takes a Regularizer subclass (the class, not an instance), got {cls!r}")
    if not isinstance(cls.log_names, property) and (  # a property (SMART's) is read from each instance
            isinstance(cls.log_names, str) or not all(isinstance(key, str) for key in cls.log_names)):
        raise TypeError(f"{cls.__name__}.log_names must be a tuple of strings, got {cls.log_names!r} (one name: "
                        "('name',), with the comma)")
    return REGULARIZERS.add(cls.name, cls, cls)


def regularizer_term(regularizer: Regularizer, model: nn.Module, inputs: dict, outputs, spec) -> torch.Tensor:
    """`regularizer.loss(...)`, checked: a scalar tensor, and `logs` keys among the class's `log_names` (a key
    outside them would never be logged)."""
    term = regularizer.loss(model, inputs, outputs, spec)
    if not torch.is_tensor(term) or term.dim() != 0:
        shape = tuple(term.shape) if torch.is_tensor(term) else type(term).__name__
        raise ValueError(f"Regulariser {regularizer.name!r}.loss must return a scalar tensor (the batch's weighted "
                         f"terms, reduced), got {shape} on a batch of task {spec.name!r}")
    unknown = sorted(set(regularizer.logs) - set(regularizer.log_names))
    if unknown:
        raise ValueError(f"Regulariser {regularizer.name!r} logged {unknown}, which are not in its log_names "
                         f"{tuple(regularizer.log_names)}: add them there to have them logged")
    return term


def get_regularizer(name: str) -> type[Regularizer]:
    """The registered regulariser class called `name`; an unknown name is an error listing the known ones."""
    return REGULARIZERS.lookup(name)


def configured_options(args) -> dict[str, tuple[dict, str]]:
    """`{name: (options, where)}` of the regularisers `args` turns on, in registration order: from
    `args.regularizers` and from each class's own fields (`options_from_args`); `where` names the argument, for
    error messages."""
    given = dict(getattr(args, "regularizers", None) or {})
    for name in given:
        get_regularizer(name)
    found = {}
    for name, cls in REGULARIZERS.items():
        own = cls.options_from_args(args)
        if own is not None and name in given:
            raise ValueError(f"Regulariser {name!r} is configured twice: in regularizers and in its own fields")
        if own is not None:
            found[name] = (own, f"{name}_tasks")
        elif name in given:
            options = given[name]
            if not isinstance(options, dict):
                raise ValueError(f"regularizers[{name!r}] must be a dict of options, got {options!r}")
            found[name] = (options, f"regularizers[{name!r}]['tasks']")
    return found


def build_regularizer(name: str, options: dict) -> Regularizer:
    """`get_regularizer(name)(**options)`; an unknown option is a `ValueError` naming the ones it takes."""
    cls = get_regularizer(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ValueError(f"Regulariser {name!r} has no option {unknown[0]!r}{did_you_mean(unknown[0], accepted)}; "
                         f"it takes {accepted}")
    return cls(**options)


def build_regularizers(args, task_names: list[str] | None = None) -> dict[str, Regularizer]:
    """`{name: Regularizer}` for the regularisers `args` turns on; with `task_names`, a task that is not among them
    is a `ValueError` naming it."""
    built = {}
    for name, (options, where) in configured_options(args).items():
        regularizer = build_regularizer(name, options)
        regularizer.configure(args)
        unknown = [t for t in regularizer.tasks if task_names is not None and t not in task_names]
        if unknown:
            raise ValueError(f"{where} has task(s) {unknown} with no head in the model (heads: {list(task_names)})")
        built[name] = regularizer
    return built
