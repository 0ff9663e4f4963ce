"""Task kinds: one module per kind, each a [`TaskKind`] registered by name (see docs/architecture.md)."""

from .base import KINDS, MODEL_INPUTS, PAIR_SUFFIX, DataValidationError, TaskKind, get_kind, register_kind
from .classification import ClassificationKind
from .multiple_choice import MultipleChoiceKind
from .regression import RegressionKind

__all__ = [
    "KINDS",
    "MODEL_INPUTS",
    "MultipleChoiceKind",
    "PAIR_SUFFIX",
    "ClassificationKind",
    "DataValidationError",
    "RegressionKind",
    "TaskKind",
    "get_kind",
    "register_kind",
]
