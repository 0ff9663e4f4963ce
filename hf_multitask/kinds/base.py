"""[`TaskKind`]: everything that differs between kinds of task, behind one interface, and the kinds registry.

A [`TaskSpec`](../tasks.py) names its kind (`spec.kind`); `spec.task_kind` is the registered `TaskKind`, and every
other module asks it instead of testing the kind's name. A kind is one module: a `TaskKind` subclass and a
`register_kind(...)` line (see docs/architecture.md, "Adding a task kind").
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..utils import Registry, did_you_mean


def visible(text: str) -> bool:
    """Whether `text` holds a character a tokenizer keeps: not only whitespace, control or format characters
    (`\\u200b`, a byte-order mark, `\\x00`), which become an empty `[CLS] [SEP]`."""
    return any(not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf") for char in text)


PAIR_SUFFIX = "_b"  # the second sentence of a bi-encoded pair: input_ids_b, attention_mask_b, token_type_ids_b
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class DataValidationError(ValueError):
    """A data file or dataset does not match its task spec; the message names file, row and column."""


class MissingKindMethod(NotImplementedError):
    """A feature was used with a task kind that does not implement the method the feature needs."""

    def __init__(self, kind: TaskKind, method: str, feature: str):
        super().__init__(f"Task kind {kind.name!r} ({type(kind).__name__}) does not implement `{method}`, which "
                         f"{feature} needs: add it to the kind (see TaskKind.{method}'s docstring)")
        self.method = method


class TaskKind:
    """The behaviour of one kind of task. Subclasses set the class attributes and implement what they use of the
    methods without a default; the others have defaults that suit sentence-level tasks.

    To train and evaluate, a kind needs `num_labels`, `build_head`, `loss`, `parse_value` and `predictions`; each of
    the other methods without a default serves one feature and raises [`MissingKindMethod`], naming the method
    and the feature, when that feature is used without it: `divergence` (SMART, R-Drop), `decode` (`model.predict`),
    `pipeline_output` (the pipeline), `prediction_records` (`hf-multitask predict`, `train --predictions_file`,
    `evaluate --predictions`), `error_scores` and `error_fields` (the worst examples), `plot_predictions`
    (`hf-multitask report`, which skips the plot).

    A kind holds no per-task state, so one instance serves every task of the kind: the methods that depend on a
    task take its spec; `encoder_inputs`, `collate`, `example_lengths` and `divergence` work on tensors alone and
    cannot read a spec's options.

    Attributes:
        name: The value of `TaskSpec.kind` that selects this kind.
        losses: Allowed values of `TaskSpec.loss`; the first is the default.
        metrics: Allowed values of `TaskSpec.metric`; the first is the default.
        options: Keys the kind reads from `TaskSpec.extra` (regression: `initial_bias`; token classification:
            `scheme`; none for the other built-in kinds).
        token_level: The head reads every token's hidden state `(batch, seq, hidden)` instead of the pooled sentence,
            and gives `(batch, seq, num_labels)`; [`example_outputs`] turns a row of those into one example's output.
        extra_features: Tokenised features that are not model inputs (kept in the dataset for the kind's
            [`collate`] and [`example_outputs`], never passed to the model).
        export_class: The transformers Auto class an exported task loads with (`hf_multitask.export_task`).
        hub_task_type: The Hub's task type of the task's results in the model card's `model-index`.
    """

    name: ClassVar[str] = ""
    losses: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[str, ...]] = ()
    token_level: ClassVar[bool] = False
    extra_features: ClassVar[tuple[str, ...]] = ()
    export_class: ClassVar[str] = "AutoModelForSequenceClassification"
    hub_task_type: ClassVar[str] = "text-classification"

    def implements(self, method: str) -> bool:
        """Whether this kind's class overrides `TaskKind.<method>` (a feature's method, or a default)."""
        return getattr(type(self), method) is not getattr(TaskKind, method)

    # ---- the spec ----

    def check_spec(self, spec) -> None:
        """Fill the spec's kind-dependent defaults (`loss`, `metric`) and reject what makes no sense for the kind,
        with a `ValueError` naming the task and the field. Called by `TaskSpec.__post_init__`."""
        spec.loss = spec.loss or self.losses[0]
        spec.metric = spec.metric or self.metrics[0]
        if spec.loss not in self.losses:
            raise ValueError(f"TaskSpec {spec.name!r}: loss {spec.loss!r} not valid for {self.name}: {self.losses}")
        if spec.metric not in self.metrics:
            raise ValueError(f"TaskSpec {spec.name!r}: metric {spec.metric!r} not valid for {self.name}")
        unknown = sorted(set(spec.extra) - set(self.options))
        if unknown:
            raise ValueError(f"TaskSpec {spec.name!r}: extra has option(s) {unknown} that {self.name} tasks do not "
                             f"take{did_you_mean(unknown[0], self.options)}; they take {list(self.options)}")

    def check_text_columns(self, spec) -> None:
        """Reject a number of `spec.text_columns` the kind cannot read (one sentence or a pair by default)."""
        if len(spec.text_columns) not in (1, 2):
            raise ValueError(f"TaskSpec {spec.name!r}: text_columns must name 1 or 2 columns, got {spec.text_columns}")

    def num_labels(self, spec) -> int:
        """The head's output size."""
        raise MissingKindMethod(self, "num_labels", "every task")

    # ---- the model ----

    def build_head(self, spec, hidden_size: int, dropout: float) -> nn.Module:
        """The task's head: `forward(pooled, pooled_b)` -> `(batch, num_labels)`."""
        raise MissingKindMethod(self, "build_head", "every task")

    def checked_logits(self, spec, logits, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None):
        """The head's output, checked against what the kind's loss and predictions read: a tensor of `batch` rows
        (the batch's first dimension) and `num_labels(spec)` columns; a `ValueError` naming task and head if not.
        A kind whose head gives another shape overrides this."""
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if not torch.is_tensor(logits) or logits.dim() < 2 or logits.shape[0] != batch or (
                logits.shape[-1] != self.num_labels(spec)):
            shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
            raise ValueError(f"Task {spec.name!r}: the head ({self.name} kind's build_head) must give (batch={batch}, "
                             f"..., num_labels={self.num_labels(spec)}) outputs, got {shape}")
        return logits

    def encoder_inputs(self, *inputs: torch.Tensor | None) -> tuple:
        """The batch's `(input_ids, attention_mask, token_type_ids, inputs_embeds)` as the encoder reads them,
        `(n, seq)` rows (`None` stays `None`); the default passes them through."""
        return inputs

    def loss(self, spec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss named by `spec.loss`, a mean over the batch."""
        raise MissingKindMethod(self, "loss", "every task")

    def divergence(self, a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """SMART's l_s between two head outputs of the same inputs (`"mean"` or `"sum"` over the batch)."""
        raise MissingKindMethod(self, "divergence", "SMART and R-Drop")

    # ---- data ----

    def parse_text(self, spec, value: Any, where: str) -> Any:
        """One text cell from a file or dataset; an empty, missing or non-string value is a [`DataValidationError`]
        that starts with `where` (file, row, column)."""
        if value is None or (isinstance(value, str) and not visible(value)):
            raise DataValidationError(f"{where}: empty or missing text ({value!r})")
        if not isinstance(value, str):
            raise DataValidationError(f"{where}: expected text, got {type(value).__name__} {value!r}")
        return value

    def check_row(self, spec, texts: dict[str, Any], label: Any, where: str) -> None:
        """Check one row's parsed texts (`{column: value}`) against its parsed label, where they must agree (a tag
        per word, say); a [`DataValidationError`] starts with `where` (file and row)."""

    def parse_label(self, spec, value: Any, where: str) -> Any:
        """One gold label from a file or dataset; an empty, boolean or invalid value is a [`DataValidationError`]
        that starts with `where` (file, row, column)."""
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataValidationError(f"{where}: empty label")
        if isinstance(value, bool):  # float(True) == 1.0 would silently pick class 1
            raise DataValidationError(f"{where}: label {value!r} is a boolean; write the class id or name")
        return self.parse_value(spec, value, where)

    def parse_value(self, spec, value: Any, where: str) -> Any:
        """[`parse_label`] after the checks every kind shares."""
        raise MissingKindMethod(self, "parse_value", "every task")

    def check_labels(self, spec, labels: list, source: str) -> None:
        """A look at all of a split's parsed labels at once (e.g. a warning for classes that never occur)."""

    def check_tokenized(self, spec, dataset, where: str) -> None:
        """Check a tokenised `datasets.Dataset` row by row where its columns must agree with each other (a tag per
        word, a number of choices), when the Trainer is built; a [`DataValidationError`] names `where` (argument and
        task), the row and the column. The default checks nothing."""

    def check_label_column(self, spec, labels: np.ndarray, where: str) -> None:
        """Check a tokenised dataset's whole `labels` column (one value per row, as the Trainer receives it)
        against the spec, when the Trainer is built; a [`DataValidationError`] names `where` (the argument and
        task), the first bad row (the dataset index) and the column, with the count of bad rows.

        The default parses every value with [`parse_label`] (a Python loop); the built-in kinds vectorise.
        """
        for row, value in enumerate(np.asarray(labels).tolist()):
            self.parse_label(spec, value, f"{where}: row {row}, column 'labels'")

    def encode(self, spec, tokenizer, texts, max_length: int, **tokenizer_kwargs) -> dict:
        """Tokenizer features of one column of texts per entry of `spec.text_columns` (lists for a batch, strings
        for one example): see [`hf_multitask.data.encode_texts`]."""
        if spec.is_bi_encoded:
            features = dict(tokenizer(texts[0], truncation=True, max_length=max_length, **tokenizer_kwargs))
            second = tokenizer(texts[1], truncation=True, max_length=max_length, **tokenizer_kwargs)
            features.update({f"{k}{PAIR_SUFFIX}": v for k, v in second.items()})
            return features
        truncation = "longest_first" if spec.is_pair else True
        return dict(tokenizer(*texts, truncation=truncation, max_length=max_length, **tokenizer_kwargs))

    def tokenizer_kwargs(self, spec) -> dict:
        """Keyword arguments every call of the tokenizer on this kind's texts takes (none by default)."""
        return {}

    def truncation_groups(self, spec) -> list[list[str]]:
        """The groups of text columns that are tokenised together (each group is one sequence), to count the
        examples truncated at `max_length`: the pair together when cross-encoded, each sentence when bi-encoded."""
        return [[t] for t in spec.text_columns] if spec.is_bi_encoded else [list(spec.text_columns)]

    def example_lengths(self, dataset) -> list[int]:
        """Token count of each example of a tokenised dataset, for length grouping (both sentences of a
        bi-encoded pair)."""
        ids = dataset["input_ids"]
        ids_b = dataset[f"input_ids{PAIR_SUFFIX}"] if f"input_ids{PAIR_SUFFIX}" in dataset.column_names else None
        return [len(a) + (len(ids_b[i]) if ids_b is not None else 0) for i, a in enumerate(ids)]

    def collate(self, features: list[dict], pad: Callable[[list[dict]], dict]) -> dict:
        """One padded batch of this kind's tokenised examples; `pad` pads a list of tokenizer features."""
        batch = pad([{k: f[k] for k in MODEL_INPUTS if k in f} for f in features])
        if f"input_ids{PAIR_SUFFIX}" in features[0]:
            second = pad([{k: f[f"{k}{PAIR_SUFFIX}"] for k in MODEL_INPUTS if f"{k}{PAIR_SUFFIX}" in f}
                          for f in features])
            batch.update({f"{k}{PAIR_SUFFIX}": v for k, v in second.items()})
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    # ---- predictions and metrics ----

    def predictions(self, spec, logits: np.ndarray) -> np.ndarray:
        """Predicted labels (ids or values) from the head's `(n, num_labels)` outputs."""
        raise MissingKindMethod(self, "predictions", "every task")

    def example_outputs(self, spec, logits: np.ndarray, feature: dict) -> np.ndarray:
        """One example's output from its head outputs and its tokenised `feature`; for a [`token_level`] kind,
        `logits` are `(tokens, num_labels)` for the example's tokens without padding. The default returns `logits`."""
        return logits

    def compute_metrics(self, spec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """`{metric name: value}` from raw head outputs and gold labels (`spec.metric` through `evaluate`)."""
        from ..metrics import load_metric

        predictions, references = self.predictions(spec, logits), np.asarray(labels)
        if references.ndim > 1 and references.size != np.asarray(predictions).size:
            raise ValueError(f"Task {spec.name!r} ({self.name}): the default compute_metrics compares one prediction "
                             f"per example with one label, but the labels have shape {references.shape} and the "
                             f"predictions {np.asarray(predictions).shape}; a kind with several labels per example "
                             "overrides compute_metrics (and reported_metrics)")
        return load_metric(spec.metric).compute(predictions=predictions, references=references.reshape(-1))

    def reported_metrics(self, spec) -> tuple[str, ...] | None:
        """The names [`compute_metrics`] returns, which `metric_for_best_model` is checked against when the trainer
        is built (`None`: not known, any name is let through). The default compute_metrics returns `spec.metric`;
        a kind that overrides it says what it returns here."""
        return None if self.implements("compute_metrics") else (spec.metric,)

    def metric_to_unit(self, spec, value: float) -> float:
        """The task's metric mapped to [0, 1] for the overall score."""
        return value

    def decode(self, spec, logits: np.ndarray) -> list:
        """Human-readable predictions, one per example (label names, scores)."""
        raise MissingKindMethod(self, "decode", "model.predict")

    def probabilities(self, spec, logits: np.ndarray) -> np.ndarray:
        """Per-label probabilities `(n, num_labels)`; a `ValueError` for kinds that have none."""
        raise ValueError(f"return_probabilities: task {spec.name!r} is a {self.name} task; it has no probabilities")

    def pipeline_output(self, spec, logits: np.ndarray) -> dict:
        """The pipeline's answer for one example from its `(num_labels,)` outputs."""
        raise MissingKindMethod(self, "pipeline_output", "the pipeline")

    def pipeline_ranking(self, spec, logits: np.ndarray, top_k: int | None) -> list[dict]:
        """The pipeline's answer with `top_k` (text-classification's): the `top_k` most probable labels of one
        example (all for `None`), most probable first; a `ValueError` for kinds with no labels to rank."""
        raise ValueError(f"top_k: task {spec.name!r} is a {self.name} task; it has no labels to rank")

    def prediction_records(self, spec, logits: np.ndarray) -> list[dict]:
        """`hf-multitask predict`'s fields for each example."""
        raise MissingKindMethod(self, "prediction_records", "hf-multitask predict, train --predictions_file and "
                                "evaluate --predictions")

    def error_scores(self, spec, logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
        """How wrong each prediction is (larger is worse), to rank the worst examples."""
        raise MissingKindMethod(self, "error_scores", "listing the worst examples")

    def error_fields(self, spec, logits: np.ndarray, gold: Any, score: float) -> dict:
        """`gold`, `prediction` and the error measure of one example, for the worst-examples listing."""
        raise MissingKindMethod(self, "error_fields", "listing the worst examples")

    # ---- export, model card, report ----

    def export_config(self, spec, config) -> None:
        """Set `num_labels`, `id2label` / `label2id` and `problem_type` of an exported [`export_class`] config; a
        `ValueError` where the kind has no plain-transformers equivalent."""
        raise ValueError(f"Task {spec.name!r}: {self.name} tasks have no {self.export_class} equivalent; serve the "
                         "model with hf-multitask")

    def card_outputs(self, spec) -> str:
        """What the head outputs, for the model card's task table (the default: how many outputs, and the kind)."""
        return f"{spec.num_labels} output(s) per example ({self.name})"

    def card_tags(self, spec) -> list[str]:
        """Hub tags this task adds to the model card."""
        return []

    def plot_predictions(self, spec, gold: np.ndarray, predicted: np.ndarray, output_dir, split: str):
        """A PNG in `output_dir` (a `Path`) comparing predictions on `split` with gold labels (`hf-multitask
        report`); returns its path."""
        raise MissingKindMethod(self, "plot_predictions", "hf-multitask report's prediction plots")


def label_array(labels) -> np.ndarray:
    """Gold labels as one array: a label per row as they are; lists of labels per row (a tag per word, a multi-hot
    vector) stacked, ragged ones padded with -100 to the longest row. The values keep their dtype (float
    multi-hot targets stay float)."""
    labels = list(labels)
    if not labels or not isinstance(labels[0], (list, tuple, np.ndarray)):
        return np.asarray(labels)
    rows = [np.asarray(row) for row in labels]
    dtype = np.result_type(*(row for row in rows if row.size), np.int64)
    out = np.full((len(rows), max(len(row) for row in rows)), -100, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def label_column_error(where: str, bad: np.ndarray, values: np.ndarray, problem: str) -> DataValidationError:
    """The error for the first row flagged in `bad`: `<where>: row <i>, column 'labels': label <v> <problem>`."""
    rows = np.flatnonzero(bad)
    row = int(rows[0])
    value = values[row].item() if hasattr(values[row], "item") else values[row]
    others = f" ({len(rows)} rows in all)" if len(rows) > 1 else ""
    return DataValidationError(f"{where}: row {row}, column 'labels': label {value!r} {problem}{others}")


def numeric_labels(where: str, labels: np.ndarray, what: str) -> np.ndarray:
    """`labels` as float64, one per row; strings, booleans and nested values are a [`DataValidationError`]."""
    values = np.asarray(labels)
    if values.ndim != 1:
        raise DataValidationError(f"{where}: column 'labels' holds {values.ndim}-d values; {what} needs one label "
                                  "per row")
    if values.dtype == bool or not (np.issubdtype(values.dtype, np.number) or values.dtype == object):
        raise DataValidationError(f"{where}: column 'labels' has dtype {values.dtype}; {what} needs numbers "
                                  f"(first row: {values[0].item()!r})")
    if values.dtype == object:  # None or mixed values
        numeric = np.array([isinstance(v, (int, float)) and not isinstance(v, bool) for v in values])
        if not numeric.all():
            raise label_column_error(where, ~numeric, values, f"is not a number ({what})")
    return values.astype(np.float64)


# ---- the registry ----

KINDS: Registry = Registry("task kind", unknown="Unknown task kind {name!r}{hint}; known kinds: {known}")


def register_kind(kind: TaskKind) -> TaskKind:
    """Register `kind` under `kind.name` (a new name, or the same class again); returns it.

    Example:

    ```python
    >>> from hf_multitask.kinds import ClassificationKind, register_kind
    >>> class Binary(ClassificationKind):  # doctest: +SKIP
    ...     name = "binary"
    >>> register_kind(Binary())  # doctest: +SKIP
    ```
    """
    if not isinstance(kind, TaskKind):
        what = f"the class {kind.__name__}" if isinstance(kind, type) else repr(kind)
        raise TypeError(f"register_kind takes an instance of a TaskKind subclass (register_kind(MyKind())), got "
                        f"{what}")
    if not kind.losses or not kind.metrics:
        raise ValueError(f"Task kind {kind.name!r} ({type(kind).__name__}) needs at least one name in losses and in "
                         f"metrics (the first is a task's default), got losses={kind.losses!r}, "
                         f"metrics={kind.metrics!r}")
    return KINDS.add(kind.name, kind, type(kind))


def get_kind(name: str) -> TaskKind:
    """The registered kind called `name`; an unknown name is an error listing the known ones."""
    return KINDS.lookup(name)
