"""Regularisers of the training loss: the protocol and registry (base.py), SMART (smart.py), R-Drop (rdrop.py).

A new one is a module with a registered [`Regularizer`] subclass and its import line here (docs/regularizers.md)."""

from .base import (
    REGULARIZERS,
    Regularizer,
    build_regularizer,
    build_regularizers,
    get_regularizer,
    register_regularizer,
    regularizer_term,
)
from .rdrop import RDropRegularizer
from .smart import EmaTeacher, SmartRegularizer

__all__ = [
    "REGULARIZERS",
    "EmaTeacher",
    "RDropRegularizer",
    "Regularizer",
    "SmartRegularizer",
    "build_regularizer",
    "build_regularizers",
    "get_regularizer",
    "register_regularizer",
    "regularizer_term",
]
