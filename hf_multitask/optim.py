"""Optimizer param groups: the task heads at their own learning rate (`head_learning_rate`), and no weight decay
on the learned loss weights."""

from __future__ import annotations

import torch


def head_lr_param_groups(model, multitask_model, head_lr: float, weight_decay: float, decay: set[str]) -> list[dict]:
    """`model`'s trainable parameters in up to four groups: (shared and PALs | heads) x (weight decay | none).

    Args:
        model: The model the optimizer steps (the `MultitaskModel`, or a wrapper such as a `PeftModel`).
        multitask_model: The `MultitaskModel` inside it, which says which parameters are heads.
        head_lr: The heads' learning rate.
        weight_decay: The decay of the decaying groups.
        decay: Names (in `model`) of the parameters that decay (the Trainer's `get_decay_parameter_names`).
    """
    owners = multitask_model.task_parameter_owners()
    groups = {(is_head, decays): [] for is_head in (False, True) for decays in (True, False)}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[owners.get(id(param), (None, None))[1] == "heads", name in decay].append(param)
    return [  # the encoder's decay group first: the Trainer logs param_groups[0]'s rate as `learning_rate`
        {"params": params, "weight_decay": weight_decay if decays else 0.0, **({"lr": head_lr} if is_head else {})}
        for (is_head, decays), params in groups.items() if params
    ]


def build_optimizer(chosen: tuple, groups: list[dict], optim) -> torch.optim.Optimizer:
    """The Trainer's chosen `(optimizer class, kwargs)` built on `groups`; a `ValueError` for an `optim` that builds
    its own groups (it cannot honour `head_learning_rate`)."""
    optimizer_cls, kwargs = chosen[0], dict(chosen[1])
    is_class = isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
    if not is_class or {"params", "model", "optimizer_dict"} & set(kwargs):
        raise ValueError(f"head_learning_rate needs an optimizer built from param groups; "
                         f"optim={getattr(optim, 'value', optim)!r} builds its own: leave head_learning_rate unset")
    return optimizer_cls(groups, **kwargs)


def no_decay_names(names: list[str], model: torch.nn.Module, multitask_model) -> list[str]:
    """`names` (the Trainer's weight-decay parameters) without the learned loss weights (`loss_weights.*`): decay
    would pull every log sigma^2 towards 0, i.e. every task weight towards 1."""
    owners = multitask_model.task_parameter_owners()
    excluded = {n for n, p in model.named_parameters() if owners.get(id(p), (None, None))[1] == "loss_weights"}
    return [name for name in names if name not in excluded]
