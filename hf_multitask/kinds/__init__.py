"""Task kinds: one module per kind, each a [`TaskKind`] registered by name (see docs/architecture.md).

Importing a kind's module registers it; adding a kind is its module and one import line below (`X as X`: a
re-export, so the class is importable from here without a second line in `__all__`).
"""

from .base import (
    KINDS,
    MODEL_INPUTS,
    PAIR_SUFFIX,
    DataValidationError,
    MissingKindMethod,
    TaskKind,
    get_kind,
    register_kind,
)
from .classification import ClassificationKind as ClassificationKind
from .multiple_choice import MultipleChoiceKind as MultipleChoiceKind
from .regression import RegressionKind as RegressionKind
from .token_classification import TokenClassificationKind as TokenClassificationKind

__all__ = ["KINDS", "MODEL_INPUTS", "PAIR_SUFFIX", "DataValidationError", "MissingKindMethod", "TaskKind", "get_kind",
           "register_kind"]
