"""What a task is: [`TaskSpec`] and the three CS224N presets (SST-5, Quora, STS-B)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .kinds import KINDS, TaskKind, get_kind
from .metrics import metric_key
from .utils import did_you_mean

PAIR_ENCODINGS = ("cross", "bi")


@dataclass
class TaskSpec:
    """Everything the library needs to know about one task.

    Args:
        name: The task's name: key of its head, value of the batch's `task_name`, prefix of its metrics.
        kind: A registered task kind (hf_multitask/kinds/): `"classification"` or `"regression"` built in.
        text_columns: One column (single sentence) or two (a sentence pair); a `multiple_choice` task names its
            context and then its choices.
        label_column: The column holding the gold label.
        label_names: Class names, index = class id (classification only).
        score_range: `(low, high)` of the gold score (regression only).
        loss: `cross_entropy` / `ordinal` / `cross_entropy+ordinal` for classification, `mse` for regression.
        ordinal_alpha: Exponent of the ordinal log loss's distance weight |y - i|^alpha.
        metric: `accuracy` or `f1` (classification), `pearson` or `spearman` (regression).
        pair_encoding: `cross` ([CLS] a [SEP] b [SEP] through the encoder once) or `bi` (a and b apart).
        loss_weight: Multiplies the task's loss in the Trainer.
        max_length: Truncation length in tokens (pairs together for `cross`, each sentence for `bi`).
        file_stem: Data files are `<file_stem>-<split>.<ext>`; defaults to `name`.
        extra: Options for the task's kind: regression takes `initial_bias` (a number, or `"center"` of
            `score_range`), token_classification `scheme` (seqeval's, e.g. `"IOB2"`); the others take none.

    Example:

    ```python
    >>> from hf_multitask import TaskSpec
    >>> spec = TaskSpec(name="nli", kind="classification", text_columns=("premise", "hypothesis"),
    ...                 label_column="label", label_names=["entailment", "neutral", "contradiction"])
    >>> spec.num_labels
    3
    ```
    """

    name: str
    kind: str
    text_columns: tuple[str, ...]
    label_column: str
    label_names: list[str] | None = None
    score_range: tuple[float, float] | None = None
    loss: str | None = None
    ordinal_alpha: float = 1.0
    metric: str | None = None
    pair_encoding: str = "cross"
    loss_weight: float = 1.0
    max_length: int = 128
    file_stem: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.text_columns = tuple(self.text_columns)
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"TaskSpec.name must be a non-empty identifier, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"TaskSpec {self.name!r}: kind must be one of {sorted(KINDS)}, got {self.kind!r}"
                             f"{did_you_mean(self.kind, KINDS)}{KINDS.import_note()}")
        if isinstance(self.label_names, str) or (self.label_names is not None
                                                 and not all(isinstance(n, str) for n in self.label_names)):
            raise ValueError(f"TaskSpec {self.name!r}: label_names must be a list of class names (strings), got "
                             f"{self.label_names!r}; YAML reads unquoted yes/no/true/false/on/off as booleans and "
                             "digits as numbers: quote them")
        kind = self.task_kind
        kind.check_text_columns(self)
        columns = (*self.text_columns, self.label_column)
        if len(set(columns)) != len(columns):
            raise ValueError(f"TaskSpec {self.name!r}: text_columns and label_column must be distinct, got "
                             f"{self.text_columns} and {self.label_column!r}")
        kind.check_spec(self)
        if self.pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"TaskSpec {self.name!r}: pair_encoding must be one of {PAIR_ENCODINGS}")
        if self.loss_weight < 0:
            raise ValueError(f"TaskSpec {self.name!r}: loss_weight must be >= 0")
        if self.max_length < 8:
            raise ValueError(f"TaskSpec {self.name!r}: max_length must be >= 8")

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def is_bi_encoded(self) -> bool:
        return self.is_pair and self.pair_encoding == "bi"

    @property
    def task_kind(self) -> TaskKind:
        """The registered [`TaskKind`] named by `kind`: everything kind-specific is asked of it."""
        return get_kind(self.kind)

    @property
    def num_labels(self) -> int:
        """Output size of the head (number of classes; 1 for regression)."""
        return self.task_kind.num_labels(self)

    @property
    def id2label(self) -> dict[int, str] | None:
        return dict(enumerate(self.label_names)) if self.label_names else None

    @property
    def metric_key(self) -> str:
        """The metric's key in evaluation results without a prefix: `<task>_<metric>` ([`metric_key`])."""
        return metric_key(None, self.name, self.metric)

    def metric_to_unit(self, value: float) -> float:
        """The task's metric mapped to [0, 1] for the overall score (correlations r -> (r + 1) / 2)."""
        return self.task_kind.metric_to_unit(self, value)

    def check_head_fits(self, source: TaskSpec) -> None:
        """Raise unless the head of `source` (a task of another model) can be loaded as this task's head: the same
        number of outputs and the same pair encoding (a bi-encoded head reads two pooled sentences)."""
        if source.num_labels != self.num_labels:
            raise ValueError(f"Task {self.name!r}: source head has {source.num_labels} labels, this model's has "
                             f"{self.num_labels}")
        theirs, ours = (("cross-encoded", "bi-encoded")[spec.is_bi_encoded] for spec in (source, self))
        if theirs != ours:
            raise ValueError(f"Task {self.name!r}: the source head is {theirs}, this model's is {ours}")

    def replace(self, **changes) -> TaskSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["text_columns"] = list(self.text_columns)
        if self.score_range is not None:
            out["score_range"] = list(self.score_range)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown TaskSpec field(s) {unknown}{did_you_mean(unknown[0], known)}; "
                             f"known fields: {sorted(known)}")
        data = dict(data)
        if data.get("score_range") is not None:
            data["score_range"] = tuple(data["score_range"])
        return cls(**data)


SST_LABELS = ["very negative", "negative", "neutral", "positive", "very positive"]


def sst_task(**overrides) -> TaskSpec:
    """SST-5 sentiment: 5 ordered classes, accuracy. `loss="ordinal"` uses the ordinal log loss."""
    return TaskSpec(
        **{
            "name": "sst",
            "kind": "classification",
            "text_columns": ("sentence",),
            "label_column": "sentiment",
            "label_names": SST_LABELS,
            **overrides,
        }
    )


def quora_task(**overrides) -> TaskSpec:
    """Quora Question Pairs paraphrase detection: binary, accuracy."""
    return TaskSpec(
        **{
            "name": "quora",
            "kind": "classification",
            "text_columns": ("sentence1", "sentence2"),
            "label_column": "is_duplicate",
            "label_names": ["not_duplicate", "duplicate"],
            **overrides,
        }
    )


def sts_task(**overrides) -> TaskSpec:
    """STS-B semantic similarity: a score in [0, 5], Pearson r."""
    return TaskSpec(
        **{
            "name": "sts",
            "kind": "regression",
            "text_columns": ("sentence1", "sentence2"),
            "label_column": "similarity",
            "score_range": (0.0, 5.0),
            **overrides,
        }
    )


PRESETS = {"sst": sst_task, "quora": quora_task, "sts": sts_task}


def get_task(name: str, **overrides) -> TaskSpec:
    """A preset task by name (`sst`, `quora`, `sts`), with field overrides.

    Unknown preset names and unknown override fields are errors that suggest the closest known name.

    Example:

    ```python
    >>> get_task("sst", loss="ordinal").loss
    'ordinal'
    ```
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown task {name!r}{did_you_mean(name, PRESETS)}; presets are {sorted(PRESETS)} "
                         "(or build a TaskSpec yourself; on the command line, define the task in task_overrides "
                         "with its kind)")
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"Task {name!r}: unknown TaskSpec field(s) {unknown}{did_you_mean(unknown[0], known)}; "
                         f"known fields: {sorted(known)}")
    return PRESETS[name](**overrides)


def cs224n_tasks(pair_encoding: str = "cross", **overrides) -> list[TaskSpec]:
    """The three tasks of the CS224N study, in its order (sst, quora, sts)."""
    return [get_task(name, pair_encoding=pair_encoding, **overrides) for name in ("sst", "quora", "sts")]
