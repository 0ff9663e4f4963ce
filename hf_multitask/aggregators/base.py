"""The aggregator interface and registry: Gram matrices of the per-task gradients in, combination weights out.

An aggregator sees only the `[K, T, T]` Gram matrices of the T task gradients (one per segment: a layer, or the
whole shared model) and its own state, never the `[T, P]` gradients themselves. [`aggregate`] normalises each Gram
matrix by its largest diagonal entry before the method sees it, and rescales the weights afterwards so that the
update has the degree of homogeneity the method declares. The `[T, P]` buffer, and the one `combine` path that
turns weights into `.grad`, are in `aggregators/surgery.py`.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch

from ..utils import Registry, constructor_options


class Aggregator:
    """One gradient aggregation method: weights of the task gradients from their (normalised) Gram matrices.

    The update written into `.grad` is `sum_i w[k, i] g_i` on each segment k. Subclasses set the class attributes
    and implement [`weights`]; stateful ones (GradVac's targets) also `state_dict` / `load_state_dict`, whose
    tensors go into every checkpoint and are identical on every rank (every rank computes them from the same
    averaged Gram matrices).

    Attributes:
        name: The `gradient_surgery` value that selects the method.
        title: The method and its paper, for model cards: `"PCGrad (Yu et al. 2020)"`.
        degree: Homogeneity degree d: gradients scaled by c > 0 give c**d times the update (1 for PCGrad, GradVac,
            MGDA-style methods; 0 for methods whose update does not depend on the gradients' scale).
        per_segment: `True`: `weights` gets one Gram matrix per segment (GradVac's per-layer targets) and returns
            one weight vector per segment; `False`: it gets the whole model's Gram matrix, `[1, T, T]`. The segments
            are the model's layers while `gradvac_per_layer` is true (its default); with it false, every
            per-segment method, not only GradVac, gets one segment: the whole model.

    Args:
        num_tasks: T.
        num_segments: K, the number of segments (layers) of a per-segment method.
        options: The method's options: `gradvac_beta` (a `MultitaskTrainingArguments` field, given to every
            method; others ignore it through `**options`), and the entries of `gradient_surgery_kwargs`, which must
            be named parameters of the method's `__init__` ([`aggregator_options`]). `__init__` takes `**options`.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    degree: ClassVar[int] = 1
    per_segment: ClassVar[bool] = False

    def __init__(self, num_tasks: int, num_segments: int = 1, **options) -> None:
        self.num_tasks, self.num_segments = num_tasks, num_segments

    def weights(self, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Weights `[K', T]` (float64) for normalised Gram matrices `[K', T, T]` (float64, largest diagonal 1).

        Args:
            grams: K' = K for a per-segment method, else 1. Every matrix has a largest diagonal entry of 1, except
                all-zero ones (every gradient zero on that segment): the method must accept them (their weights
                are then replaced by 1), and it is not called at all when every matrix is zero.
            generator: The run's one seeded generator, for random visiting orders (the same on every rank).

        Returns:
            The weights and the number of adjustments made (projections, active constraints; logged per step).
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


def aggregator_options(cls: type[Aggregator]) -> list[str]:
    """The options `gradient_surgery_kwargs` can set for `cls`: its `__init__`'s named parameters after `num_tasks`
    and `num_segments`, less `gradvac_beta` (a field of its own)."""
    return constructor_options(cls, skip=("num_tasks", "num_segments", "gradvac_beta"))


AGGREGATORS: Registry = Registry("aggregator", first=("none",),
                                 unknown="gradient_surgery must be one of {known}, got {name!r}{hint}")


def register_aggregator(cls: type[Aggregator]) -> type[Aggregator]:
    """Register an [`Aggregator`] subclass under `cls.name` (usable as a class decorator); returns it.

    Example:

    ```python
    >>> import torch
    >>> from hf_multitask.aggregators import AGGREGATORS, Aggregator, aggregator_names, register_aggregator
    >>> @register_aggregator
    ... class Mean(Aggregator):
    ...     name = "mean"
    ...     def weights(self, grams, generator):
    ...         return torch.full(grams.shape[:2], 1.0 / grams.shape[1], dtype=grams.dtype), 0
    >>> "mean" in aggregator_names()
    True
    >>> del AGGREGATORS["mean"]

    ```
    """
    if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
        raise TypeError(f"register_aggregator takes an Aggregator subclass (the class, not an instance), got {cls!r}")
    if cls.degree not in (0, 1):
        raise ValueError(f"{cls.__name__}.degree must be 0 or 1, got {cls.degree}")
    parameters = inspect.signature(cls.__init__).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise TypeError(f"{cls.__name__}.__init__ must end with **options: every aggregator is built with the run's "
                        "shared options (gradvac_beta, ...) and takes what it needs of them by name")
    return AGGREGATORS.add(cls.name, cls, cls)


def aggregator_names() -> tuple[str, ...]:
    """The registered `gradient_surgery` values, `none` first."""
    return tuple(AGGREGATORS.names())


def get_aggregator(name: str) -> type[Aggregator]:
    """The aggregator class registered as `name`; an unknown name is an error listing the known ones."""
    return AGGREGATORS.lookup(name)


def aggregate(aggregator: Aggregator, grams: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Weights `[K, T]` (float64, on the CPU) of the task gradients on each of the K segments, from Gram matrices.

    Each Gram matrix the method sees (per segment, or the sum over segments) is divided by its largest diagonal
    entry s, so that no threshold inside a method depends on the gradients' scale and nothing overflows; the
    weights are then multiplied by s ** ((degree - 1) / 2), which gives the update its declared degree (the Gram
    matrix scales as c**2). An all-zero Gram matrix (every gradient zero) gets weights 1: the plain sum.

    Args:
        aggregator: The method.
        grams: `[K, T, T]` Gram matrices of the task gradients on each segment (any float dtype, finite).
        generator: Passed on to the method (visiting orders).
    """
    grams = grams.detach().to("cpu", torch.float64)  # [K, T, T]: the methods' small loops run on the CPU
    seen = grams if aggregator.per_segment else grams.sum(0, keepdim=True)
    scale = seen.diagonal(dim1=1, dim2=2).amax(1)  # (K',) largest squared norm
    nonzero = scale > 0
    safe = torch.where(nonzero, scale, torch.ones_like(scale))
    weights = torch.ones(seen.shape[:2], dtype=torch.float64)
    count = 0
    if nonzero.any():  # an all-zero segment among others reaches the method as zeros; its weights are set to 1
        result = aggregator.weights(seen / safe[:, None, None], generator)
        if not (isinstance(result, tuple) and len(result) == 2 and torch.is_tensor(result[0])
                and result[0].shape == weights.shape):
            raise TypeError(f"Aggregator {aggregator.name!r}.weights must return (weights {list(weights.shape)}, "
                            f"number of adjustments), got {_describe(result)}")
        found, count = result
        if not torch.isfinite(found).all():  # applied unchecked, NaN weights would write NaN into every gradient
            raise FloatingPointError(f"Aggregator {aggregator.name!r}.weights returned non-finite weights "
                                     f"{found.tolist()} for finite Gram matrices (scaled to a largest diagonal "
                                     "entry of 1): a division by a zero norm, say, when a task's gradient is 0")
        found = found.to(weights) * safe[:, None] ** ((aggregator.degree - 1) / 2)
        weights = torch.where(nonzero[:, None], found, weights)
    return weights.expand(grams.shape[0], -1), count


def _describe(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}: ({', '.join(_describe(v) for v in value)})"
    return f"a tensor {list(value.shape)}" if torch.is_tensor(value) else type(value).__name__


def visiting_orders(num_tasks: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """For each task i, the other tasks j in a random order (the order PCGrad and GradVac visit them in)."""
    orders = []
    for i in range(num_tasks):
        others = torch.randperm(num_tasks - 1, generator=generator).tolist()
        orders.append([j if j < i else j + 1 for j in others])
    return orders
