"""From arguments to a run: the [`ModelArguments`] and [`DataArguments`] of `hf-multitask train`, and the task
specs, model and tokenizer they build. Scripts use the same functions as the command line.

Example:

```python
>>> from hf_multitask.build import ModelArguments, build_model, build_task_specs, build_tokenizer
>>> args = ModelArguments(model_name_or_path="minilm", tasks=["sst", "sts"], pal_rank=102)
>>> specs = build_task_specs(args)
>>> model = build_model(args, specs)  # doctest: +SKIP
>>> tokenizer = build_tokenizer(args, model)  # doctest: +SKIP
```
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedConfig
from transformers.utils import logging

from .configuration import MultitaskConfig
from .modeling import MultitaskModel
from .pal import PalConfig
from .tasks import PRESETS, TaskSpec, get_task
from .utils import did_you_mean, resolve_encoder_path

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """What to train: the encoder (or a saved multitask model), the tasks and how they are encoded and pooled, and
    the CS224N options (frozen baseline, transferred heads, PALs). Each field is a `hf-multitask train` flag and a
    config-file key."""

    model_name_or_path: str = field(
        default="minilm",
        metadata={"help": "Encoder checkpoint (hub id, local dir, or 'minilm' for the bundled all-MiniLM-L6-v2), "
                          "or a saved multitask model to continue from."},
    )
    tasks: list[str] = field(default_factory=lambda: ["sst", "quora", "sts"], metadata={"help": "Task presets."})
    task_overrides: str | None = field(
        default=None,
        metadata={"help": 'JSON {task: {TaskSpec field: value}}, e.g. {"sst": {"loss": "ordinal"}}; '
                          "a YAML mapping in a config file."},
    )
    pair_encoding: str = field(default="cross", metadata={"help": "Pair encoding of every pair task: cross | bi."})
    pooling: str = field(default="mean", metadata={"help": "Sentence representation: cls | mean."})
    classifier_dropout: float = field(default=0.1, metadata={"help": "Dropout before each head."})
    max_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    freeze_encoder: bool = field(default=False, metadata={"help": "Train the heads only (the frozen baseline)."})
    init_heads_from: str | None = field(
        default=None, metadata={"help": "A saved multitask model whose heads start this run (baseline transfer)."}
    )
    pal_rank: int | None = field(
        default=None, metadata={"help": "Add Projected Attention Layers of rank r (102 suits MiniLM); None: no PALs."}
    )
    pal_g: str = field(default="identity", metadata={"help": "PAL function in r dims: identity | attention."})
    pal_placement: str = field(default="layer", metadata={"help": "LayerNorm the PAL term enters: layer | attention."})


@dataclass
class DataArguments:
    """Where the data is: a directory of `<task>-<split>.<ext>` files, the split names, optional row limits."""

    data_dir: str = field(default="../shared/data", metadata={"help": "Directory of <task>-<split>.tsv files."})
    train_split: str = field(default="train", metadata={"help": "Split name of the training files."})
    eval_split: str = field(default="dev", metadata={
        "help": "Split name of the evaluation files; 'none': train without evaluation (no eval files needed)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N rows of each task."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N eval rows per task."})
    predictions_file: str | None = field(default=None, metadata={
        "help": "After training, also write every eval example's prediction and gold label here (JSON lines, "
                "gzipped for .gz; the format of `hf-multitask evaluate --predictions`), from the evaluation pass."})

    @property
    def evaluates(self) -> bool:
        """Whether `train` reads an evaluation split (`eval_split: none` trains without one)."""
        return str(self.eval_split).lower() not in ("none", "")

    def __post_init__(self):
        if not self.evaluates and self.predictions_file:
            raise ValueError("predictions_file writes the evaluation's predictions, and eval_split is none")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (rows kept per task), got {value}; leave it out to keep all")


def build_task_specs(model_args: ModelArguments) -> list[TaskSpec]:
    """The tasks `model_args.tasks` with `pair_encoding`, `max_length` and the JSON `task_overrides` applied: presets
    by name, and tasks of any kind defined by their `task_overrides` entry, which then names the `kind` and every
    field the kind needs (`text_columns`, `label_column`, `label_names`, ...). Malformed overrides, or overrides
    for tasks not in the list, are errors."""
    try:
        overrides = json.loads(model_args.task_overrides) if model_args.task_overrides else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"task_overrides is not valid JSON ({err}): {model_args.task_overrides!r}") from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ValueError(f"task_overrides must map task names to {{field: value}}, got {model_args.task_overrides!r}")
    unknown = sorted(set(overrides) - set(model_args.tasks))
    if unknown:
        raise ValueError(f"task_overrides names task(s) {unknown} that are not in tasks={model_args.tasks}")
    return [_task_spec(name, {"pair_encoding": model_args.pair_encoding, "max_length": model_args.max_length,
                              **overrides.get(name, {})}) for name in model_args.tasks]


def _task_spec(name: str, fields: dict) -> TaskSpec:
    """A preset with `fields` applied, or, for a name that is no preset, the task `fields` define (with a `kind`)."""
    if name in PRESETS or "kind" not in fields:
        return get_task(name, **fields)  # (an unknown preset without a kind: the error lists the presets)
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"task_overrides[{name!r}]: unknown TaskSpec field(s) {unknown}"
                         f"{did_you_mean(unknown[0], known)}")
    return TaskSpec(name=name, **fields)


def build_model(model_args: ModelArguments, specs: list[TaskSpec]) -> MultitaskModel:
    """A model for `specs`: a saved multitask model when `model_name_or_path` is one (its tasks and settings must
    match `specs`), else a new one on the encoder checkpoint; then the baseline heads (`init_heads_from`), PALs
    (`pal_rank`) and the frozen encoder (`freeze_encoder`) as the arguments ask."""
    path = resolve_encoder_path(model_args.model_name_or_path)
    if is_multitask_checkpoint(path):
        model = MultitaskModel.from_pretrained(path)
        saved, wanted = model.config.task_names, [s.name for s in specs]
        if saved != wanted:
            raise ValueError(f"{path} has heads for tasks {saved}, but the config asks for tasks {wanted}")
        _check_saved_settings(path, model, model_args, specs)
    else:
        model = MultitaskModel.from_encoder(path, specs, pooling=model_args.pooling,
                                            classifier_dropout=model_args.classifier_dropout)
    if model_args.init_heads_from:
        model.load_heads_from(model_args.init_heads_from)
    if model_args.pal_rank is not None:
        pal = PalConfig(rank=model_args.pal_rank, g=model_args.pal_g, placement=model_args.pal_placement)
        if model.pal is None:
            model.add_pal(pal)
        elif (model.pal.pal_config.rank, model.pal.pal_config.g, model.pal.pal_config.placement) != (
                pal.rank, pal.g, pal.placement):
            raise ValueError(f"{path} has PALs {model.config.pal}, but the config asks for pal_rank={pal.rank}, "
                             f"pal_g={pal.g!r}, pal_placement={pal.placement!r}")
    model.freeze_encoder(model_args.freeze_encoder)
    return model


def _check_saved_settings(path: str, model: MultitaskModel, model_args: ModelArguments, wanted: list[TaskSpec]):
    """The model trains with its saved pooling, dropout and specs, and the data is tokenised with the config's specs:
    they must agree with the config (pair_encoding only matters for pair tasks)."""
    saved = model.specs
    differ = [f"{name}={getattr(model_args, name)!r} (saved: {getattr(model.config, name)!r})"
              for name in ("pooling", "classifier_dropout")
              if getattr(model_args, name) != getattr(model.config, name)]
    for spec in wanted:
        fields = [f.name for f in dataclasses.fields(TaskSpec) if f.name != "pair_encoding" or spec.is_pair]
        differ += [f"task {spec.name!r}: {name}={getattr(spec, name)!r} (saved: {getattr(saved[spec.name], name)!r})"
                   for name in fields if getattr(spec, name) != getattr(saved[spec.name], name)]
    if differ:
        raise ValueError(f"{path} was saved with other settings than the config asks for: {'; '.join(differ)}. "
                         "Make the config (pooling, classifier_dropout, task_overrides, pair_encoding, max_length) "
                         "match.")


def is_multitask_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding a saved multitask model (its config.json's `model_type`)."""
    if not (Path(path) / "config.json").is_file():
        return False
    config, _ = PreTrainedConfig.get_config_dict(str(path))
    return config.get("model_type") == MultitaskConfig.model_type


def build_tokenizer(model_args: ModelArguments, model: MultitaskModel):
    """The encoder checkpoint's tokenizer, its `model_max_length` fitted to the model ([`fit_tokenizer_to_model`])."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(model_args.model_name_or_path))
    fit_tokenizer_to_model(tokenizer, model)
    return tokenizer


def fit_tokenizer_to_model(tokenizer, model: MultitaskModel) -> None:
    """Lower the tokenizer's `model_max_length` to the longest sequence the encoder's position embeddings cover,
    where the tokenizer has no limit or a larger one (tokenizers saved without one report a huge number), so that
    [`tokenize_task`] truncates to what the model can read and says so when `max_length` is longer."""
    limit = model.max_sequence_length
    current = getattr(tokenizer, "model_max_length", None)
    if limit is not None and (current is None or current > limit):
        logger.info(f"tokenizer model_max_length set to {limit}, the encoder's position limit (was {current})")
        tokenizer.model_max_length = limit
