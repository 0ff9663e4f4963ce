"""`token_classification`: a tag per word (BIO tags: named entities, chunks), on every token's hidden state.

`text_columns` is one column of words: a list of strings per row (a JSON list, a `datasets` `Sequence`, as in
CoNLL-2003's `tokens`), or a string split on whitespace (TSV, CSV and `predict` inputs). The label column holds one
tag per word: names from `label_names` or their ids, as a list or a whitespace-separated string (CoNLL-2003's
`ner_tags`). Words are tokenised with `is_split_into_words=True` (a fast tokenizer, for `word_ids`); the dataset keeps
the tags per word and the `word_ids`, and each batch puts every word's tag on its first sub-token, -100 on the other
sub-tokens, the special tokens and the padding, on the tokenizer's padding side. Predictions are per word: the
first sub-token's. Entity-level precision, recall and F1 are seqeval's (default mode, as conlleval, unless the task's
`extra={"scheme": "IOB2"}` (or another seqeval scheme) asks for strict mode); `accuracy` is the share of words whose
tag is right. Words cut off by `max_length` are not scored (a warning counts the truncated examples).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..heads import SentenceHead
from ..losses import symmetric_kl
from ..utils import softmax
from .base import MODEL_INPUTS, DataValidationError, TaskKind, label_array, register_kind, visible
from .classification import ClassificationKind

IGNORE = -100  # a token without a tag: later sub-tokens, special tokens, padding
SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")  # seqeval's, for strict mode


class TokenClassificationKind(ClassificationKind):
    """One of `label_names` per word: dropout + linear on each token's hidden state, cross-entropy over the words'
    first sub-tokens; entity F1 (seqeval) or word accuracy as the task's metric, both always reported.

    Refused when the spec is built: more than one text column (pair encoding has no meaning here), the ordinal
    losses (tags have no order), F1 over classes (the entity F1 is the measure), an unknown `scheme`. SMART works:
    the perturbation is per token anyway, and l_s is the symmetric KL per token, averaged over the batch's tokens.
    """

    name = "token_classification"
    losses = ("cross_entropy",)
    hub_task_type = "token-classification"
    metrics = ("f1", "accuracy")
    options = ("scheme",)
    token_level = True
    extra_features = ("word_ids",)
    export_class = "AutoModelForTokenClassification"

    def check_text_columns(self, spec) -> None:
        if len(spec.text_columns) != 1:
            raise ValueError(f"TaskSpec {spec.name!r}: a token_classification task reads one column of words, got "
                             f"text_columns {spec.text_columns}")

    def check_spec(self, spec) -> None:
        scheme = spec.extra.get("scheme")
        if scheme is not None and scheme not in SCHEMES:
            raise ValueError(f"TaskSpec {spec.name!r}: extra scheme {scheme!r} is not one of seqeval's {SCHEMES} "
                             "(leave it out for seqeval's default mode)")
        super().check_spec(spec)

    # ---- the model ----

    def build_head(self, spec, hidden_size: int, dropout: float):
        return SentenceHead(hidden_size, self.num_labels(spec), dropout)  # on (batch, seq, hidden): per token

    def loss(self, spec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        flat = labels.long().view(-1)
        total = F.cross_entropy(logits.float().view(flat.numel(), -1), flat, ignore_index=IGNORE, reduction="sum")
        return total / (flat != IGNORE).sum().clamp(min=1)  # a batch without tags gives 0, not NaN

    def divergence(self, a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return symmetric_kl(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), reduction)

    # ---- data ----

    def parse_text(self, spec, value: Any, where: str) -> list[str]:
        words = value.split() if isinstance(value, str) else value
        if not isinstance(words, (list, tuple)) or not words:
            raise DataValidationError(f"{where}: expected words (a list of strings, or a string), got {value!r}")
        for j, word in enumerate(words):
            if not isinstance(word, str) or not visible(word):
                raise DataValidationError(f"{where}: word {j + 1} is empty or not a string ({word!r})")
        return list(words)

    def parse_value(self, spec, value: Any, where: str) -> list[int]:
        tags = value.split() if isinstance(value, str) else value
        if not isinstance(tags, (list, tuple, np.ndarray)) or not len(tags):
            raise DataValidationError(f"{where}: expected a tag per word (a list, or a string), got {value!r}")
        return [self.parse_tag(spec, tag, f"{where}: tag {j + 1}") for j, tag in enumerate(tags)]

    def parse_tag(self, spec, tag: Any, where: str) -> int:
        """One tag: a name from `label_names` or its id."""
        if tag is None or isinstance(tag, bool) or (isinstance(tag, str) and not tag.strip()):
            raise DataValidationError(f"{where}: {tag!r} is not a tag (empty, missing or boolean)")
        return ClassificationKind.parse_value(self, spec, tag, where)

    def check_row(self, spec, texts: dict[str, Any], label: Any, where: str) -> None:
        (column, words), = texts.items()
        if len(words) != len(label):
            raise DataValidationError(f"{where}: column {column!r} has {len(words)} words but column "
                                      f"{spec.label_column!r} has {len(label)} tags; a task needs one tag per word")

    def check_labels(self, spec, labels: list, source: str) -> None:
        tags = [tag for row in labels for tag in row]
        self.warn_absent_classes(spec, set(tags), source, f"{len(tags)} tags ({len(labels)} rows)")

    def check_tokenized(self, spec, dataset, where: str) -> None:
        """Tags per word (with `word_ids`): at least one per kept word; tags per token (an HF-aligned dataset):
        one per token of `input_ids`."""
        if "labels" not in dataset.column_names:
            return
        labels, input_ids = dataset["labels"], dataset["input_ids"]
        word_ids = dataset["word_ids"] if "word_ids" in dataset.column_names else None
        for row, tags in enumerate(labels):
            count = len(tags) if isinstance(tags, (list, tuple)) else None
            if count is None:
                continue  # not a list of tags: check_label_column names it
            if word_ids is not None and count < (needed := max(word_ids[row], default=IGNORE) + 1):
                raise DataValidationError(f"{where}: row {row}, column 'labels': {count} tags for the {needed} "
                                          f"words kept of the row; task {spec.name!r} needs one tag per word")
            if word_ids is None and count != len(input_ids[row]):
                raise DataValidationError(f"{where}: row {row}, column 'labels': {count} labels for "
                                          f"{len(input_ids[row])} tokens of 'input_ids'; labels aligned per token "
                                          "need one per token (-100 where none), or give tags per word with the "
                                          "'word_ids' of hf_multitask.tokenize_task")

    def check_label_column(self, spec, labels: np.ndarray, where: str) -> None:
        count = self.num_labels(spec)
        for row, values in enumerate(labels):
            if values is None or np.ndim(values) != 1:
                raise DataValidationError(f"{where}: row {row}, column 'labels': {values!r} is not a list of tags")
            values = np.asarray(values)
            if not np.issubdtype(values.dtype, np.integer):
                raise DataValidationError(f"{where}: row {row}, column 'labels': tags of dtype {values.dtype}; "
                                          f"task {spec.name!r} needs tag ids in 0..{count - 1} (or -100)")
            bad = (values != IGNORE) & ((values < 0) | (values >= count))
            if bad.any():
                raise DataValidationError(f"{where}: row {row}, column 'labels': tag {int(values[bad][0])} is not a "
                                          f"tag id in 0..{count - 1} (task {spec.name!r}: {spec.label_names})")

    def tokenizer_kwargs(self, spec) -> dict:
        return {"is_split_into_words": True}

    def encode(self, spec, tokenizer, texts, max_length: int, **tokenizer_kwargs) -> dict:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"Task {spec.name!r}: token_classification needs a fast tokenizer (for word_ids); "
                             f"{type(tokenizer).__name__} is not one (AutoTokenizer.from_pretrained(...))")
        single = isinstance(texts[0], str)  # one example (the pipeline), else a batch of strings or of word lists
        rows = [texts[0]] if single else list(texts[0])
        words = [row.split() if isinstance(row, str) else list(row) for row in rows]
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                            **tokenizer_kwargs)
        word_ids = [[IGNORE if w is None else w for w in encoded.word_ids(i)] for i in range(len(words))]
        for i, ids in enumerate(word_ids):  # a word with no tokens would shift every later word's tag
            mask = encoded["attention_mask"][i] if "attention_mask" in encoded else encoded["input_ids"][i]
            cut = int(sum(1 for m in np.asarray(mask).reshape(-1) if m) if "attention_mask" in encoded
                      else len(mask)) >= max_length  # max_length cut words off the end: they have no tokens
            last = max(ids, default=IGNORE) if cut else len(words[i]) - 1
            empty = sorted(set(range(last + 1)) - set(ids))
            if empty:
                raise DataValidationError(f"Task {spec.name!r}, example {i}: word {empty[0]} "
                                          f"({words[i][empty[0]]!r}) gives no tokens with this tokenizer, so no "
                                          "tag can be read for it; remove it from the words")
        features = dict(encoded)
        features["word_ids"] = torch.tensor(word_ids) if tokenizer_kwargs.get("return_tensors") else word_ids
        if single and not tokenizer_kwargs.get("return_tensors"):
            return {k: v[0] for k, v in features.items()}
        return features

    def collate(self, features: list[dict], pad: Callable[[list[dict]], dict]) -> dict:
        batch = pad([{k: f[k] for k in MODEL_INPUTS if k in f} for f in features])
        if "labels" not in features[0]:
            return batch
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
        labels = torch.full(batch["input_ids"].shape, IGNORE, dtype=torch.long)
        for i, feature in enumerate(features):
            tags = token_tags(feature)
            if len(tags) != int(mask[i].sum()):
                raise ValueError(f"A token_classification example has {len(tags)} token labels for "
                                 f"{int(mask[i].sum())} tokens (labels per token must match input_ids)")
            labels[i, mask[i]] = torch.as_tensor(tags, dtype=torch.long)
        batch["labels"] = labels  # (batch, seq), on the tokenizer's padding side
        return batch

    # ---- predictions and metrics ----

    def example_outputs(self, spec, logits: np.ndarray, feature: dict) -> np.ndarray:
        return logits[first_subtokens(np.asarray(feature["word_ids"]).tolist())]  # (words, num_labels)

    def predictions(self, spec, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits)
        return np.where(np.isnan(logits).any(-1), IGNORE, np.nan_to_num(logits).argmax(-1))

    def compute_metrics(self, spec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        from ..metrics import load_metric

        predicted, labels = self.predictions(spec, logits), label_array(labels)
        width = max(predicted.shape[1], labels.shape[1])  # per word: truncated words have gold but no prediction
        predicted, labels = (np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=IGNORE)
                             for a in (predicted, labels))
        gold_tags, predicted_tags = [], []
        for gold_row, predicted_row in zip(labels, predicted):
            scored = (gold_row != IGNORE) & (predicted_row != IGNORE)
            gold_tags.append([spec.label_names[i] for i in gold_row[scored]])
            predicted_tags.append([spec.label_names[i] for i in predicted_row[scored]])
        result = load_metric("seqeval").compute(predictions=predicted_tags, references=gold_tags,
                                                scheme=spec.extra.get("scheme"))
        return {key: result[key] for key in self.reported_metrics(spec)}

    def reported_metrics(self, spec) -> tuple[str, ...]:
        return ("f1", "precision", "recall", "accuracy")

    def decode(self, spec, logits: np.ndarray) -> list[list[str]]:
        return [[spec.label_names[i] for i in row if i != IGNORE] for row in self.predictions(spec, logits)]

    def probabilities(self, spec, logits: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(logits))  # (n, words, num_labels); NaN beyond an example's words

    def pipeline_output(self, spec, logits: np.ndarray) -> dict:
        record = self.prediction_records(spec, logits[None])[0]
        return {"labels": record["tags"], "scores": record["probabilities"]}

    pipeline_ranking = TaskKind.pipeline_ranking  # one label per word: nothing to rank

    def prediction_records(self, spec, logits: np.ndarray) -> list[dict]:
        probabilities = np.nan_to_num(self.probabilities(spec, logits), nan=-1.0).max(-1)
        return [{"tags": tags, "probabilities": [float(p) for p in row[:len(tags)]]}  # (`labels`: a record's gold)
                for tags, row in zip(self.decode(spec, logits), probabilities)]

    def error_scores(self, spec, logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
        predicted, gold = self.predictions(spec, logits), label_array(gold)
        width = min(predicted.shape[1], gold.shape[1])
        scored = (gold[:, :width] != IGNORE) & (predicted[:, :width] != IGNORE)  # truncated words: no prediction
        wrong = scored & (predicted[:, :width] != gold[:, :width])
        return wrong.sum(1) / np.maximum(scored.sum(1), 1)  # the share of scored words tagged wrong

    def error_fields(self, spec, logits: np.ndarray, gold: Any, score: float) -> dict:
        gold = [spec.label_names[i] for i in np.asarray(gold).tolist() if i != IGNORE]
        return {"gold": gold, "prediction": self.decode(spec, np.asarray(logits)[None])[0], "word_error_rate": score}

    # ---- export, model card, report ----

    def export_config(self, spec, config) -> None:
        config.num_labels = self.num_labels(spec)
        config.id2label, config.label2id = spec.id2label, {name: i for i, name in spec.id2label.items()}


    def card_outputs(self, spec) -> str:
        return "a tag per word: " + ", ".join(f"{i} = {label}" for i, label in enumerate(spec.label_names))

    def card_tags(self, spec) -> list[str]:
        return ["token-classification"]

    def plot_predictions(self, spec, gold: np.ndarray, predicted: np.ndarray, output_dir, split: str):
        gold, predicted = label_array(gold), np.asarray(predicted)
        width = min(gold.shape[1], predicted.shape[1])
        gold, predicted = gold[:, :width], predicted[:, :width]
        scored = (gold != IGNORE) & (predicted != IGNORE)
        return super().plot_predictions(spec, gold[scored], predicted[scored], output_dir, f"{split}, per word")


def first_subtokens(word_ids: list[int]) -> list[int]:
    """Positions of each word's first sub-token in a sequence's `word_ids` (-100 for special tokens)."""
    return [j for j, w in enumerate(word_ids) if w != IGNORE and (j == 0 or word_ids[j - 1] != w)]


def token_tags(feature: dict) -> list[int]:
    """One label per token of a tokenised example: each word's tag on its first sub-token and -100 elsewhere, from
    tags per word and `word_ids`; labels given per token already (an HF-aligned dataset, no `word_ids`) as they are."""
    tags = list(np.asarray(feature["labels"]).reshape(-1).tolist())
    if "word_ids" not in feature:
        return tags
    word_ids = np.asarray(feature["word_ids"]).tolist()
    needed = max(word_ids, default=IGNORE) + 1
    if needed > len(tags):
        raise ValueError(f"A token_classification example has {len(tags)} tags for {needed} words")
    out = [IGNORE] * len(word_ids)
    for j in first_subtokens(word_ids):
        out[j] = tags[word_ids[j]]
    return out


register_kind(TokenClassificationKind())
