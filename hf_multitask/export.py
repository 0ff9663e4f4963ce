"""Export one task of a [`MultitaskModel`] as a plain transformers checkpoint: `AutoModelForSequenceClassification`
(classification, regression), `AutoModelForMultipleChoice` or `AutoModelForTokenClassification`, as the task's kind
says (`TaskKind.export_class`).

Sentence and choice heads: ours is dropout + linear on the pooled vector; `BertForSequenceClassification` (and
RoBERTa's head, and `*ForMultipleChoice`) puts `tanh(W_p h_cls + b_p)` between the [CLS] vector and its classifier.
With `W_p = s I`, `b_p = 0` and the classifier's weight `W_head / s`, the plain model computes
`W_head tanh(s h) / s + b`, which equals our `W_head h + b` up to `W_head (s h)^3 / (3 s)`. With s = 1e-3 the logits
of a fine-tuned MiniLM differ by at most 2e-6 on the SST, Quora and STS dev sets (docs/inference.md has the
measurement and the other values of s). Token heads: `*ForTokenClassification` is dropout + linear on every token's
hidden state, as ours: the weights are copied as they are, and any pooling exports.
"""

from __future__ import annotations

import copy
import os

import torch
import transformers
from transformers import PreTrainedModel
from transformers.utils import logging

from .inference import batches, check_input, default_tokenizer, encode_rows, task_spec
from .kinds import MODEL_INPUTS
from .tasks import TaskSpec

logger = logging.get_logger(__name__)

EXPORT_SCALE = 1e-3
# (Auto class, encoder model_type) -> (the linear layer before tanh, or None where there is none; the classifier)
EXPORTABLE = {
    ("AutoModelForSequenceClassification", "bert"): ("bert.pooler.dense", "classifier"),
    ("AutoModelForSequenceClassification", "roberta"): ("classifier.dense", "classifier.out_proj"),
    ("AutoModelForMultipleChoice", "bert"): ("bert.pooler.dense", "classifier"),
    ("AutoModelForMultipleChoice", "roberta"): ("roberta.pooler.dense", "classifier"),
    ("AutoModelForTokenClassification", "bert"): (None, "classifier"),
    ("AutoModelForTokenClassification", "roberta"): (None, "classifier"),
}


def export_task(
    model,
    task_name: str,
    output_dir: str | os.PathLike,
    tokenizer=None,
    scale: float = EXPORT_SCALE,
) -> PreTrainedModel:
    """Write `task_name` of `model` as a checkpoint that the task kind's Auto class (`TaskKind.export_class`:
    `AutoModelForSequenceClassification`, `AutoModelForMultipleChoice`, `AutoModelForTokenClassification`) loads
    without hf-multitask.

    Exact up to the tanh approximation above (fp32; token classification exactly). Needs `pooling="cls"` (but for
    token classification), a single-sentence or cross-encoded task, a BERT or RoBERTa encoder and no active PAL for
    the task; anything else has no plain-transformers equivalent and is a `ValueError` that says why. The config
    gets the task's `id2label` / `label2id` (regression: `num_labels=1`, `problem_type="regression"`). Truncate
    inputs to the task's `max_length` to match training.

    Args:
        model: A [`MultitaskModel`].
        task_name: The task to export.
        output_dir: Where to write `config.json`, `model.safetensors` and the tokenizer.
        tokenizer: Saved with the model; defaults to the one saved beside `model` (a warning if there is none).
        scale: `s` of the pooler's `s I`; smaller is closer in fp32, larger is kinder to fp16.

    Returns:
        The exported model (fp32, eval mode).

    Example:

    ```python
    >>> from hf_multitask import MultitaskModel, export_task
    >>> model = MultitaskModel.from_pretrained("runs/cls")  # doctest: +SKIP
    >>> export_task(model, "sst", "exports/sst")  # doctest: +SKIP
    >>> from transformers import pipeline
    >>> classifier = pipeline("text-classification", model="exports/sst")  # doctest: +SKIP
    >>> classifier("a gorgeous , witty , seductive movie .")  # doctest: +SKIP
    [{'label': 'very positive', 'score': 0.62}]
    ```
    """
    spec = task_spec(model, task_name)
    pre_tanh, classifier = _check_exportable(model, spec)
    if not 0 < scale <= 0.1:
        raise ValueError(f"scale must be in (0, 0.1], got {scale}")
    exported = getattr(transformers, spec.task_kind.export_class).from_config(_plain_config(model, spec)).float()
    base = getattr(exported, exported.base_model_prefix)
    if any("lora_" in key for key in model.encoder.state_dict()):
        raise ValueError(f"Task {task_name!r}: the encoder holds LoRA layers (peft); merge them into it first, "
                         "model = model.merge_and_unload(), then export")
    missing, unexpected = base.load_state_dict(model.encoder.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise ValueError(f"The encoder's weights do not fit {type(exported).__name__}: missing {missing}, "
                         f"unexpected {unexpected}")
    head = model.heads[task_name].out_proj
    with torch.no_grad():
        out = exported.get_submodule(classifier)
        if pre_tanh is not None:
            dense = exported.get_submodule(pre_tanh)
            dense.weight.copy_(scale * torch.eye(dense.in_features))
            dense.bias.zero_()
        out.weight.copy_(head.weight.float() / (scale if pre_tanh is not None else 1.0))
        out.bias.copy_(head.bias.float())
    exported.eval()
    exported.save_pretrained(output_dir)
    _save_tokenizer(model, tokenizer, output_dir)
    return exported


def _check_exportable(model, spec: TaskSpec) -> tuple[str | None, str]:
    spec.task_kind.export_config(spec, copy.deepcopy(model.config.encoder))  # first: a kind without one says so
    model_type, auto_class = model.config.encoder.model_type, spec.task_kind.export_class
    if (auto_class, model_type) not in EXPORTABLE:
        types = sorted(t for c, t in EXPORTABLE if c == auto_class)
        raise ValueError(f"Task {spec.name!r}: export supports {types} encoders, whose {auto_class} heads can "
                         f"reproduce ours; this encoder is {model_type!r} "
                         "(DistilBERT's and ELECTRA's heads put ReLU / GELU before the classifier). Serve it with "
                         "hf-multitask instead (predict, or the multitask-text-classification pipeline)")
    if spec.is_bi_encoded:
        raise ValueError(f"Task {spec.name!r} is bi-encoded: its head compares two separately encoded sentences, "
                         "while a *ForSequenceClassification model reads one sequence, so there is no plain "
                         "equivalent. Train the task with pair_encoding: cross to export it, or serve it with "
                         "hf-multitask (predict, or the multitask-text-classification pipeline)")
    pre_tanh, classifier = EXPORTABLE[auto_class, model_type]
    if pre_tanh is not None and model.config.pooling != "cls":
        raise ValueError(f"Task {spec.name!r}: the model pools with {model.config.pooling!r}, but "
                         f"{model_type.capitalize()}'s {auto_class.removeprefix('AutoModel')} head reads the first "
                         "token; "
                         "transformers has no masked-mean option for it (classifier_pooling exists only for "
                         "ModernBERT and EuroBERT, other architectures). Train with pooling: cls to export; or load "
                         "the saved model itself with transformers alone: AutoModel.from_pretrained(dir, "
                         "trust_remote_code=True) (docs/inference.md, 'Loading with transformers alone')")
    if model.pal is not None and model.pal.enabled and spec.name in model.pal:
        raise ValueError(f"Task {spec.name!r} has a PAL, which a plain encoder cannot run: export a model without "
                         "PALs for this task, or serve it with hf-multitask")
    return pre_tanh, classifier


def _plain_config(model, spec: TaskSpec):
    config = copy.deepcopy(model.config.encoder)
    config.architectures = None
    config.classifier_dropout = model.config.classifier_dropout
    spec.task_kind.export_config(spec, config)
    return config


def _save_tokenizer(model, tokenizer, output_dir) -> None:
    if tokenizer is None:
        try:
            tokenizer = default_tokenizer(model)
        except ValueError as err:
            logger.warning(f"The export in {output_dir} has no tokenizer: {err}")
            return
    tokenizer.save_pretrained(output_dir)


def max_logit_difference(model, task_name: str, exported: PreTrainedModel, inputs: list, tokenizer,
                         batch_size: int = 32) -> float:
    """The largest |logit difference| between `model`'s task head and the exported model on `inputs` (strings,
    or `(a, b)` pairs), both in fp32, on the same batches (tokenised and collated as [`predict_logits`] does)."""
    spec = task_spec(model, task_name)
    rows = [check_input(spec, item, f"input {i}") for i, item in enumerate(inputs)]
    features = encode_rows(spec, tokenizer, rows)
    largest = 0.0
    exported.eval()
    for batch in batches(model, task_name, features, tokenizer, batch_size):
        ours = model(**batch).logits.float()
        plain = {k: v.to(exported.device) for k, v in batch.items() if k in MODEL_INPUTS}
        theirs = exported(**plain).logits.float()
        largest = max(largest, (ours - theirs.to(ours.device)).abs().max().item())
    return largest
