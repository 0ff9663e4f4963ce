"""Inference on raw text: [`predict`], the `multitask-text-classification` pipeline (with the text normalisers of
`normalization.py`), and the worst-predicted examples of an evaluation."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from .configuration import is_multitask_model
from .data import MultitaskCollator, checked_max_length, effective_max_length, encode_texts, warn_left_padding
from .kinds.base import label_array, visible
from .normalization import NORMALIZERS, get_normalizer, normalize_ptb  # noqa: F401 (public here too)
from .tasks import TaskSpec

PIPELINE_TASK = "multitask-text-classification"
TOKENIZER_CONFIG = "tokenizer_config.json"  # a folder holding it holds a saved tokenizer
NOT_GIVEN = object()  # a pipeline option left out (top_k=None means every label)

# ---- predict ----


def check_input(spec: TaskSpec, item: Any, where: str) -> tuple[str, ...]:
    """One input as a tuple of texts: `(text,)` for a single-sentence task, `(a, b)` for a pair task, one text per
    text column for more (a multiple-choice task's context and choices); a token-level task takes a string or a
    list of words."""
    count = len(spec.text_columns)
    if count > 1:
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != count:
            takes = "sentence pairs (a, b)" if count == 2 else f"tuples of {count} texts {spec.text_columns}"
            raise ValueError(f"{where}: task {spec.name!r} takes {takes}, got {item!r}")
        texts = tuple(item)
    elif isinstance(item, str) or not spec.task_kind.token_level:
        if not isinstance(item, str):
            raise ValueError(f"{where}: task {spec.name!r} takes single sentences (str), got {item!r}")
        texts = (item,)
    else:  # a token-level task also takes a list of words
        return (spec.task_kind.parse_text(spec, item, f"{where}: {spec.text_columns[0]!r}"),)
    for column, text in zip(spec.text_columns, texts):
        if not isinstance(text, str) or not visible(text):
            raise ValueError(f"{where}: {column!r} is empty or not a string ({text!r})")
    return texts


def check_batch_size(batch_size: Any) -> None:
    """A `batch_size` that is not a positive int is a `ValueError` naming it (0 or a negative one gave no batches)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (examples per forward pass), got {batch_size!r}")


def task_spec(model, task_name: str) -> TaskSpec:
    """`model`'s spec of `task_name`; an unknown task is an error naming the model's tasks."""
    if task_name not in model.specs:
        raise ValueError(f"Unknown task_name {task_name!r}; this model has heads for {list(model.specs)}")
    return model.specs[task_name]


def predict_logits(
    model,
    task_name: str,
    inputs: Sequence[str] | Sequence[tuple[str, str]],
    tokenizer,
    batch_size: int = 32,
    normalize: str | None = None,
) -> np.ndarray:
    """Raw head outputs `(n, num_labels)` for raw texts, tokenised as in training ([`tokenize_task`]).

    Args:
        model: A [`MultitaskModel`]; it runs in eval mode, without gradients, on its own device, and is put back
            in training mode afterwards if it was in it.
        task_name: The task (and head).
        inputs: Strings for a single-sentence task, `(a, b)` pairs for a pair task (cross- or bi-encoded, as the
            task's spec says): a list, or any other iterable of them (a numpy array, a pandas Series, a generator).
        tokenizer: The model's tokenizer.
        batch_size: Examples per forward pass.
        normalize: `"ptb"` rewrites each text with [`normalize_ptb`] first (for SST); `None` leaves texts alone.
    """
    spec = task_spec(model, task_name)
    check_batch_size(batch_size)
    what = "(a, b) pairs" if spec.is_pair else "strings"
    if isinstance(inputs, str):
        raise ValueError(f"inputs must be a list of {what}; wrap a single input in a list")
    if isinstance(inputs, Mapping) or hasattr(inputs, "columns") or not isinstance(inputs, Iterable):
        raise ValueError(f"inputs must be a list of {what}, or another iterable of them (tuple, numpy array, pandas "
                         f"Series, generator, zip(texts_a, texts_b)); got {type(inputs).__name__} (for a table, pass "
                         "its text column, or zip its two columns)")
    inputs = [tuple(item) if isinstance(item, np.ndarray) else item for item in inputs]  # rows of a 2-D array: pairs
    rows = [check_input(spec, item, f"input {i}") for i, item in enumerate(inputs)]
    if not rows:
        return np.zeros((0, spec.num_labels), dtype=np.float32)
    normalizer = get_normalizer(normalize)
    if normalizer is not None:
        rows = [tuple(normalizer(text) if isinstance(text, str) else text for text in row) for row in rows]
    return task_logits(model, task_name, encode_rows(spec, tokenizer, rows), tokenizer, batch_size)


def batches(model, task_name: str, features, tokenizer, batch_size: int = 32) -> Iterator[dict]:
    """Padded batches of tokenised `features` (a list of dicts or a tokenised `Dataset`), collated as in training and
    moved to the model's device, with `torch.no_grad()` and the model in eval mode while they are consumed (put back
    in training mode afterwards if it was in it). The one way hf-multitask feeds a model outside the Trainer."""
    for _, batch in _batches_with_rows(model, task_name, features, tokenizer, batch_size):
        yield batch


def _batches_with_rows(model, task_name: str, features, tokenizer, batch_size: int) -> Iterator[tuple[list, dict]]:
    """[`batches`], each with the rows (feature dicts) it was collated from."""
    check_batch_size(batch_size)
    collator = MultitaskCollator(tokenizer, specs=model.specs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(features), batch_size):
                chunk = features[start:start + batch_size]  # a Dataset's slice is a dict of columns
                rows = chunk if isinstance(chunk, list) else [dict(zip(chunk, row)) for row in zip(*chunk.values())]
                batch = collator.collate_one(task_name, rows)
                yield rows, {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    finally:
        model.train(was_training)


def task_logits(model, task_name: str, features, tokenizer, batch_size: int = 32) -> np.ndarray:
    """Raw head outputs `(n, num_labels)` of `task_name` on tokenised `features` (see [`batches`]). A token-level
    kind's outputs are its [`TaskKind.example_outputs`] of each example (a row per word for token classification),
    stacked as `(n, longest, num_labels)` with NaN beyond each example's own rows."""
    spec = task_spec(model, task_name)
    kind = spec.task_kind
    outputs = []
    for rows, batch in _batches_with_rows(model, task_name, features, tokenizer, batch_size):
        logits = model(**batch).logits.float().cpu()
        if not kind.token_level:
            outputs.append(logits)
            continue
        mask = batch["attention_mask"].bool().cpu()  # the example's own tokens, on either padding side
        outputs += [kind.example_outputs(spec, row[keep].numpy(), feature)
                    for row, keep, feature in zip(logits, mask, rows)]
    if not kind.token_level:
        return torch.cat(outputs).numpy() if outputs else np.zeros((0, spec.num_labels), dtype=np.float32)
    stacked = np.full((len(outputs), max((len(o) for o in outputs), default=0), spec.num_labels), np.nan,
                      dtype=np.float32)
    for i, output in enumerate(outputs):
        stacked[i, :len(output)] = output
    return stacked


def encode_rows(spec: TaskSpec, tokenizer, rows: list[tuple[str, ...]]) -> list[dict[str, Any]]:
    """Tokenised features of checked inputs (tuples of texts, see [`check_input`]), exactly as [`tokenize_task`]
    tokenises a training split (the same [`encode_texts`] and warnings), without its `Dataset.map`: `datasets` hashed
    the tokenizer to fingerprint each call, about 0.5 s however few the inputs."""
    kind = spec.task_kind  # a token-level task's rows are words, given as a list or a string: one form in a column
    columns = {column: [kind.parse_text(spec, row[j], f"input {i}: {column!r}") for i, row in enumerate(rows)]
               for j, column in enumerate(spec.text_columns)}
    features = encode_texts(spec, tokenizer, list(columns.values()), checked_max_length(spec, tokenizer, columns))
    return [dict(zip(features, values)) for values in zip(*features.values())]


def predict(
    model,
    task_name: str,
    inputs: Sequence[str] | Sequence[tuple[str, str]],
    tokenizer,
    batch_size: int = 32,
    normalize: str | None = None,
    return_probabilities: bool = False,
) -> list[str] | list[float] | tuple[list[str], np.ndarray]:
    """Label names (classification) or scores (regression) for raw texts.

    Args:
        model: A [`MultitaskModel`].
        task_name: The task (and head).
        inputs: Strings for a single-sentence task, `(a, b)` pairs for a pair task: a list, or any other iterable.
        tokenizer: The model's tokenizer.
        batch_size: Examples per forward pass.
        normalize: `"ptb"` for SST-style text (see [`normalize_ptb`]); off by default.
        return_probabilities: Classification only: also return the softmax probabilities `(n, num_labels)`.

    Returns:
        A list of label names, or `(labels, probabilities)` with `return_probabilities`; for regression a list
        of floats.

    Example:

    ```python
    >>> from hf_multitask import MultitaskModel, predict
    >>> model = MultitaskModel.from_pretrained("runs/main")  # doctest: +SKIP
    >>> predict(model, "sst", ["A gorgeous, witty movie."], tokenizer, normalize="ptb")  # doctest: +SKIP
    ['very positive']
    >>> predict(model, "sts", [("A man plays guitar.", "A person plays a guitar.")], tokenizer)  # doctest: +SKIP
    [4.61]
    ```
    """
    spec = task_spec(model, task_name)
    kind = spec.task_kind
    if return_probabilities:
        kind.probabilities(spec, np.zeros((0, spec.num_labels)))  # a kind without probabilities says so first
    logits = predict_logits(model, task_name, inputs, tokenizer, batch_size, normalize)
    decoded = kind.decode(spec, logits)
    return (decoded, kind.probabilities(spec, logits)) if return_probabilities else decoded


def has_tokenizer(folder: str | os.PathLike) -> bool:
    """Whether a local `folder` holds a saved tokenizer (its `tokenizer_config.json`)."""
    return os.path.isfile(os.path.join(folder, TOKENIZER_CONFIG))


def missing_tokenizer(path: str | os.PathLike) -> str | None:
    """Why `path` gives no tokenizer when it is a local folder without one (transformers then says that a backend
    such as sentencepiece is missing, which is not the cause); `None` when it may give one."""
    if not os.path.isdir(path) or has_tokenizer(path):
        return None
    return (f"{str(path)!r} holds no tokenizer (no {TOKENIZER_CONFIG}: the model was saved without one, e.g. by "
            f"model.save_pretrained alone). Save the tokenizer it was trained with beside it, "
            f"tokenizer.save_pretrained({str(path)!r}) (trainer.save_model and hf-multitask train do)")


def load_tokenizer(path: str | os.PathLike):
    """`AutoTokenizer.from_pretrained(path)` for a saved model's `path`; a local folder without a tokenizer is a
    `ValueError` saying so and how to add one ([`missing_tokenizer`])."""
    if (problem := missing_tokenizer(path)) is not None:
        raise ValueError(problem)
    return AutoTokenizer.from_pretrained(path)


def default_tokenizer(model):
    """The tokenizer saved beside `model` (its `name_or_path`, else its encoder's), loaded once and cached."""
    path = model.name_or_path or model.encoder.name_or_path
    if not path:
        raise ValueError("The model has no name_or_path to load a tokenizer from (it was not loaded with "
                         "from_pretrained or from_encoder): pass tokenizer=")
    cached = getattr(model, "_default_tokenizer", None)
    if cached is not None and cached[0] == path:
        return cached[1]
    if (problem := missing_tokenizer(path)) is not None:
        raise ValueError(f"The model's folder {problem}; or pass tokenizer=")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"Could not load a tokenizer from the model's path {path!r}: pass tokenizer= ({err})") \
            from err
    model._default_tokenizer = (path, tokenizer)
    return tokenizer


def add_tokenizer(model, folder: str | os.PathLike, tokenizer=None) -> bool:
    """Save `tokenizer` into a saved model's `folder`; without one, keep a tokenizer saved there already, or else save
    the one saved beside the model ([`default_tokenizer`]: its `name_or_path`, or its encoder's).

    Returns:
        Whether `folder` holds a tokenizer now; when not, a warning (the card then says how to load one).
    """
    if tokenizer is None:
        if os.path.isfile(os.path.join(folder, TOKENIZER_CONFIG)):
            return True
        try:
            tokenizer = default_tokenizer(model)
        except ValueError as err:
            logging.get_logger(__name__).warning(f"No tokenizer goes with the model ({err}); its card says to load "
                                                 "the encoder's")
            return False
    tokenizer.save_pretrained(str(folder))
    return True


# ---- errors of an evaluation ----


def worst_examples(spec: TaskSpec, dataset: Dataset, logits: np.ndarray, n: int) -> list[dict[str, Any]]:
    """The `n` examples the model gets most wrong, worst first.

    Classification ranks by the probability given to the gold label (lowest first), regression by the absolute
    error (largest first); ties keep the dataset's order.

    Args:
        spec: The task.
        dataset: The validated (untokenised) dataset: its text columns, `labels` and `id` if present.
        logits: The head's outputs on `dataset`, in its order, `(len(dataset), num_labels)`.
        n: How many examples to return.

    Returns:
        One dict per example: `task`, `id` (when the data has one), the text columns, `gold`, `prediction` and
        `gold_probability` (classification) or `abs_error` (regression).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) != len(dataset):
        raise ValueError(f"Task {spec.name!r}: {len(logits)} predictions for {len(dataset)} examples")
    gold = label_array(dataset["labels"])
    badness = spec.task_kind.error_scores(spec, logits, gold)
    records = []
    order = np.lexsort((np.arange(len(gold)), -badness))[:n]  # worst first, then dataset order
    for i in order.tolist():
        row = dataset[i]
        record = {"task": spec.name, **({"id": row["id"]} if "id" in row else {})}
        record.update({column: row[column] for column in spec.text_columns})
        record.update(spec.task_kind.error_fields(spec, logits[i], gold[i], float(badness[i])))
        records.append(record)
    return records


# ---- the pipeline ----


class MultitaskPipeline(Pipeline):
    """`pipeline("multitask-text-classification", model=..., task_name=...)`: one task of a [`MultitaskModel`]
    with the inputs, outputs, `top_k` and `batch_size` of transformers' text-classification pipeline (its
    `function_to_apply` and `truncation` only as this pipeline computes anyway: `"softmax"`, `True`).

    Inputs are a string, a `{"text": a, "text_pair": b}` dict for pair tasks, or a list of either. Each input gives
    `{"label": name, "score": probability}` (classification) or `{"score": value}` (regression); as in
    text-classification, one string gives a one-element list (unless `top_k` is passed in the call), one dict its
    answer. Texts are tokenised as in training (the task's `max_length`, its cross- or bi-encoding).

    Args:
        task_name: The task; may be left out when the model has one task, and given per call instead.
        normalize: `"ptb"` rewrites texts with [`normalize_ptb`] (for SST); off by default.
        top_k: As in text-classification: the `top_k` most probable labels per input, most probable first (`None`:
            all), a list per input (a single input gives its list); classification tasks only.
        function_to_apply: Only `"softmax"`, what classification scores are (text-classification's `"sigmoid"` and
            `"none"` are a `ValueError`: `predict_logits` gives raw outputs).
        truncation: Only `True`: inputs are always truncated to the task's `max_length`, as in training.

    Example:

    ```python
    >>> import hf_multitask  # registers the pipeline and the model type
    >>> from transformers import pipeline
    >>> classifier = pipeline("multitask-text-classification", model="runs/main", task_name="sst")  # doctest: +SKIP
    >>> classifier("a gorgeous , witty , seductive movie .")  # doctest: +SKIP
    [{'label': 'very positive', 'score': 0.61}]
    >>> pair = {"text": "A man plays guitar.", "text_pair": "A person plays guitar."}
    >>> classifier(pair, task_name="sts")  # doctest: +SKIP
    {'score': 4.62}
    ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not is_multitask_model(self.model):
            raise TypeError(f"{PIPELINE_TASK} needs a MultitaskModel, got {type(self.model).__name__}")

    def _sanitize_parameters(self, task_name: str | None = None, normalize: str | None = None, top_k=NOT_GIVEN,
                             function_to_apply=None, truncation=None):
        preprocess, forward, postprocess = {}, {}, {}
        if function_to_apply is not None:  # a string, or text-classification's ClassificationFunction
            if str(getattr(function_to_apply, "value", function_to_apply)).lower() != "softmax":
                raise ValueError(f"function_to_apply={function_to_apply!r}: {PIPELINE_TASK} scores a classification "
                                 "task's labels with their softmax probabilities ('softmax', the default) and gives a "
                                 "regression task's predicted value; hf_multitask.inference.predict_logits gives the "
                                 "raw head outputs")
            preprocess["function_to_apply"] = "softmax"
        if truncation is not None and truncation not in (True, "longest_first"):
            raise ValueError(f"truncation={truncation!r}: {PIPELINE_TASK} always truncates to the task's max_length "
                             "(longest first for a cross-encoded pair), as in training; leave truncation out")
        if top_k is not NOT_GIVEN:
            if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"top_k must be a positive int, or None for every label; got {top_k!r}")
            postprocess["top_k"] = top_k
        if task_name is not None:
            task_spec(self.model, task_name)
            preprocess["task_name"] = forward["task_name"] = postprocess["task_name"] = task_name
        if normalize is not None:
            get_normalizer(normalize)
            preprocess["normalize"] = normalize
        return preprocess, forward, postprocess

    def __call__(self, inputs, **kwargs):
        result = super().__call__(inputs, **kwargs)
        # as text-classification: one string gives a one-element list unless top_k is passed in the call
        return [result] if isinstance(inputs, str) and "top_k" not in kwargs else result

    def _spec(self, task_name: str | None) -> TaskSpec:
        if task_name is None:
            if len(self.model.specs) != 1:
                raise ValueError(f"Pass task_name=, one of {list(self.model.specs)}")
            (task_name,) = self.model.specs
        return task_spec(self.model, task_name)

    def preprocess(self, inputs, task_name: str | None = None, normalize: str | None = None,
                   function_to_apply: str | None = None) -> dict:
        spec = self._spec(task_name)
        if function_to_apply is not None and not spec.task_kind.implements("probabilities"):
            raise ValueError(f"function_to_apply: task {spec.name!r} is a {spec.task_kind.name} task; its score is "
                             "not a probability (leave function_to_apply out)")
        warn_left_padding(self.tokenizer)  # batching pads on the tokenizer's side, as predict's collator does
        if isinstance(inputs, dict):
            if set(inputs) not in ({"text"}, {"text", "text_pair"}):  # as text-classification takes a dict
                raise ValueError(f'A dict input is {{"text": a, "text_pair": b}} or {{"text": a}}: got {list(inputs)}')
            inputs = (inputs["text"], inputs["text_pair"]) if "text_pair" in inputs else inputs["text"]
        texts = check_input(spec, inputs, "pipeline input")
        normalizer = get_normalizer(normalize)
        if normalizer is not None:
            texts = tuple(normalizer(text) for text in texts)
        return encode_texts(spec, self.tokenizer, texts, effective_max_length(spec, self.tokenizer),
                            return_tensors="pt")

    def _forward(self, model_inputs: dict, task_name: str | None = None) -> dict:
        spec = self._spec(task_name)
        extras = {k: model_inputs.pop(k) for k in spec.task_kind.extra_features if k in model_inputs}
        if (mask := model_inputs.get("attention_mask")) is not None:  # batching pads unknown features with 0: -100
            extras = {k: v.masked_fill(mask == 0, -100) if v.shape == mask.shape else v for k, v in extras.items()}
        was_training = self.model.training  # as predict(): no dropout, whatever mode the model was left in
        self.model.eval()
        try:
            return {"logits": self.model(task_name=spec.name, **model_inputs).logits, **extras}
        finally:
            self.model.train(was_training)

    def postprocess(self, model_outputs: dict, task_name: str | None = None, top_k=NOT_GIVEN) -> dict | list[dict]:
        spec = self._spec(task_name)
        logits = model_outputs["logits"][0].float().numpy()  # (num_labels,), or (tokens, num_labels)
        if spec.task_kind.token_level:
            feature = {k: model_outputs[k][0] for k in spec.task_kind.extra_features}  # (one example, no padding)
            logits = spec.task_kind.example_outputs(spec, logits, feature)
        if top_k is not NOT_GIVEN:
            return spec.task_kind.pipeline_ranking(spec, logits, top_k)
        return spec.task_kind.pipeline_output(spec, logits)


PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=MultitaskPipeline, pt_model=AutoModel,
                                    type="text")
