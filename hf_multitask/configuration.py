"""[`MultitaskConfig`]: the encoder's config, the task specs and the PAL config, in one `config.json`."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .tasks import TaskSpec

POOLINGS = ("cls", "mean")


class MultitaskConfig(PreTrainedConfig):
    """Configuration of a [`MultitaskModel`].

    Args:
        encoder: The shared encoder's config (any BERT-family `PreTrainedConfig`, or its dict).
        tasks: One dict per task, as written by [`TaskSpec.to_dict`]; the heads are rebuilt from them.
        pooling: Sentence representation: `"cls"` (first token, as in BERT and the CS224N study) or
            `"mean"` (masked mean over tokens; MiniLM sentence encoders were trained with it).
        classifier_dropout: Dropout before each head's linear layer.
        pal: The Projected Attention Layer config as a dict, or `None` for no PALs.

    Example:

    ```python
    >>> from transformers import BertConfig
    >>> from hf_multitask import MultitaskConfig, cs224n_tasks
    >>> config = MultitaskConfig(encoder=BertConfig(hidden_size=32), tasks=[t.to_dict() for t in cs224n_tasks()])
    >>> config.task_names
    ['sst', 'quora', 'sts']
    ```
    """

    model_type = "hf_multitask"
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder: PreTrainedConfig | dict | None = None
    tasks: list[dict[str, Any]] | None = None
    pooling: str = "mean"
    classifier_dropout: float = 0.1
    pal: dict[str, Any] | None = None

    def __post_init__(self, **kwargs):
        if "hidden_size" in kwargs:  # a plain encoder's config.json given to MultitaskModel.from_pretrained, say
            raise ValueError(f"MultitaskConfig got hidden_size={kwargs['hidden_size']}: this is a plain encoder's "
                             "config, not a multitask model's; build a multitask model on that encoder with "
                             "MultitaskModel.from_encoder(path, tasks=[...])")
        refuse_model_level_labels({"num_labels": kwargs.get("num_labels"), "id2label": self.id2label,
                                   "label2id": self.label2id, "problem_type": self.problem_type})
        super().__post_init__(**kwargs)
        if self.pooling not in POOLINGS:
            raise ValueError(f"MultitaskConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"MultitaskConfig.classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        self.tasks = [t.to_dict() if isinstance(t, TaskSpec) else dict(t) for t in (self.tasks or [])]
        names = [t["name"] for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"MultitaskConfig.tasks has duplicate task names: {names}")
        for task in self.tasks:  # validate early: a bad spec in a config.json names itself here
            TaskSpec.from_dict(task)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`PreTrainedConfig.from_dict`, which sets `id2label` and the like from `from_pretrained`'s keyword
        arguments after building the config; those are refused here as in `__init__`."""
        refuse_model_level_labels(kwargs)
        return super().from_dict(config_dict, **kwargs)

    @property
    def specs(self) -> dict[str, TaskSpec]:
        """`{task_name: TaskSpec}` in the config's order."""
        return {t["name"]: TaskSpec.from_dict(t) for t in self.tasks}

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size


_DEFAULT_LABELS = {"0": "LABEL_0", "1": "LABEL_1"}  # what `PreTrainedConfig.to_dict` writes when none were set
_LABEL_SETTINGS = ("num_labels", "id2label", "label2id", "problem_type")


def refuse_model_level_labels(settings: dict) -> None:
    """A multitask model has one label set per task, so `num_labels` / `id2label` / `label2id` / `problem_type`
    given to the model's config (`MultitaskModel.from_pretrained(path, num_labels=3)`, a run_glue.py habit) would
    be written into config.json and change no head. Refused, naming where labels go. Two default labels are let
    through: `PreTrainedConfig.to_dict` writes them for a config given none, so a dict round trip still loads."""
    given = {}
    for name, value in settings.items():
        if name not in _LABEL_SETTINGS or value is None:
            continue
        if name == "num_labels" and value == 2:
            continue
        if name in ("id2label", "label2id") and {str(k): str(v) for k, v in value.items()} in (
                _DEFAULT_LABELS, {v: k for k, v in _DEFAULT_LABELS.items()}):
            continue
        given[name] = value
    if given:
        raise ValueError(f"MultitaskConfig got {', '.join(f'{k}={v!r}' for k, v in given.items())}: a multitask "
                         "model's labels belong to its tasks (TaskSpec.label_names / score_range, kept in "
                         "config.tasks), one set per head; a model-level label setting would change no head. "
                         "To change a task's classes, build the model with the new TaskSpec (MultitaskModel"
                         ".from_encoder or the CLI's --tasks) and transfer the encoder.")


def is_multitask_model(model) -> bool:
    """Whether `model` is a multitask model: hf-multitask's [`MultitaskModel`], or the class that transformers
    builds from the code saved with it (`trust_remote_code=True`), which is not an instance of ours. Asks
    `config.model_type`, never the class."""
    return getattr(getattr(model, "config", None), "model_type", None) == MultitaskConfig.model_type
