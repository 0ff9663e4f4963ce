"""`multiple_choice`: a context and N candidate answers (N fixed per task), one score per candidate (SWAG, COPA).

`text_columns` are `(context, choice_0, ..., choice_{N-1})`; the gold label is the index of the right choice (or
its name in `label_names`, which default to the choice columns). Each (context, choice) pair is cross-encoded:
a batch is `(batch, N, seq)`, flattened to `(batch * N, seq)` rows for the encoder, and the head's one score per
row is read back as `(batch, N)` logits. Predictions, metrics and decoding are classification's over the N choices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..heads import ChoiceHead
from .base import MODEL_INPUTS, DataValidationError, register_kind
from .classification import ClassificationKind


class MultipleChoiceKind(ClassificationKind):
    """One of N choices per example, scored each against the context; cross-entropy over the N scores, accuracy.

    Refused when the spec is built: `pair_encoding="bi"` (each choice is read with its context, in one sequence),
    the ordinal losses (choices have no order) and F1 (accuracy is the measure of SWAG and COPA).
    """

    name = "multiple_choice"
    losses = ("cross_entropy",)
    hub_task_type = "multiple-choice"
    metrics = ("accuracy",)
    export_class = "AutoModelForMultipleChoice"

    def check_text_columns(self, spec) -> None:
        if len(spec.text_columns) < 3:
            raise ValueError(f"TaskSpec {spec.name!r}: a multiple_choice task names a context column and >= 2 choice "
                             f"columns in text_columns, got {spec.text_columns}")

    def check_spec(self, spec) -> None:
        choices = list(spec.text_columns[1:])
        if spec.pair_encoding != "cross":
            raise ValueError(f"TaskSpec {spec.name!r}: pair_encoding {spec.pair_encoding!r} is not valid for "
                             "multiple_choice: each choice is cross-encoded with its context")
        spec.label_names = list(spec.label_names) if spec.label_names else choices
        if len(spec.label_names) != len(choices):
            raise ValueError(f"TaskSpec {spec.name!r}: label_names {spec.label_names} must name the "
                             f"{len(choices)} choices {choices}, one each")
        super().check_spec(spec)

    # ---- the model ----

    def build_head(self, spec, hidden_size: int, dropout: float):
        return ChoiceHead(hidden_size, self.num_labels(spec), dropout)

    def encoder_inputs(self, *inputs: torch.Tensor | None) -> tuple:
        return tuple(None if t is None else t.reshape(-1, *t.shape[2:]) for t in inputs)

    def loss(self, spec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels.long().view(-1))

    # ---- data ----

    def encode(self, spec, tokenizer, texts, max_length: int, **tokenizer_kwargs) -> dict:
        single = isinstance(texts[0], str)
        contexts = [texts[0]] if single else list(texts[0])
        choices = [[t] for t in texts[1:]] if single else [list(t) for t in texts[1:]]
        n = len(choices)
        firsts = [c for c in contexts for _ in range(n)]
        seconds = [choices[j][i] for i in range(len(contexts)) for j in range(n)]
        if tokenizer_kwargs.get("return_tensors"):  # the pipeline's one example: (1, N, seq) tensors
            # to max_length: the pipeline's batching pads dimension 1 only (here N), so every example's seq must agree
            tokenizer_kwargs.setdefault("padding", "max_length")
        flat = tokenizer(firsts, seconds, truncation="longest_first", max_length=max_length, **tokenizer_kwargs)
        if isinstance(flat["input_ids"], torch.Tensor):  # (examples * n, seq) -> (examples, n, seq)
            return {k: v.view(len(contexts), n, -1) for k, v in flat.items()}
        grouped = {k: [v[i * n:(i + 1) * n] for i in range(len(contexts))] for k, v in flat.items()}
        return {k: v[0] for k, v in grouped.items()} if single else grouped

    def check_tokenized(self, spec, dataset, where: str) -> None:
        """Every row holds the task's number of choices (a sequence each) in `input_ids`."""
        wanted = len(spec.text_columns) - 1
        counts = [len(ids) if isinstance(ids, list) and all(isinstance(c, list) for c in ids) else None
                  for ids in dataset["input_ids"]]
        bad = [row for row, count in enumerate(counts) if count != wanted]
        if bad:
            raise DataValidationError(
                f"{where}: row {bad[0]}, column 'input_ids': {counts[bad[0]] or 'not a list of'} choices, but task "
                f"{spec.name!r} has {wanted} ({list(spec.text_columns[1:])}; {len(bad)} rows in all); tokenise each "
                "choice with the context, a (choices, seq) list per row (hf_multitask.tokenize_task does)")

    def truncation_groups(self, spec) -> list[list[str]]:
        return [[spec.text_columns[0], choice] for choice in spec.text_columns[1:]]

    def example_lengths(self, dataset) -> list[int]:
        return [max(len(choice) for choice in ids) for ids in dataset["input_ids"]]  # the longest choice, not N

    def collate(self, features: list[dict], pad: Callable[[list[dict]], dict]) -> dict:
        counts = {len(f["input_ids"]) for f in features}
        if len(counts) != 1:
            raise ValueError(f"A multiple_choice batch mixes examples with {sorted(counts)} choices; a task has one "
                             "number of choices")
        (n,) = counts
        flat = pad([{k: f[k][j] for k in MODEL_INPUTS if k in f} for f in features for j in range(n)])
        batch = {k: v.view(len(features), n, -1) for k, v in flat.items()}  # (batch, n, seq)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    # ---- export, model card ----

    def export_config(self, spec, config) -> None:
        """Nothing to set: a `*ForMultipleChoice` head gives one score per choice whatever `num_labels` says."""

    def card_outputs(self, spec) -> str:
        return "a score per choice: " + ", ".join(f"{i} = {label}" for i, label in enumerate(spec.label_names))

    def card_tags(self, spec) -> list[str]:
        return ["multiple-choice"]


register_kind(MultipleChoiceKind())
