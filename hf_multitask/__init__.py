"""hf-multitask: fine-tune one BERT-style encoder on several tasks with the Hugging Face Trainer."""

from transformers import AutoConfig, AutoModel

from .aggregators import Aggregator, GradientSurgery, aggregator_names, get_aggregator, register_aggregator
from .build import DataArguments, ModelArguments, build_model, build_task_specs, build_tokenizer
from .checkpointing import CheckpointError
from .configuration import MultitaskConfig, is_multitask_model
from .data import MultitaskCollator, MultitaskDataset, load_task_data, load_task_split, load_tokenized, tokenize_task
from .export import export_task
from .inference import MultitaskPipeline, normalize_ptb, predict
from .kinds import (
    ClassificationKind,
    MultipleChoiceKind,
    RegressionKind,
    TaskKind,
    TokenClassificationKind,
    get_kind,
    register_kind,
)
from .loss_weighting import (
    DynamicWeightAverage,
    LossWeighting,
    UncertaintyWeighting,
    get_loss_weighting,
    register_loss_weighting,
)
from .losses import ordinal_log_loss, symmetric_kl, task_loss
from .metrics import compute_task_metrics, metric_key, overall_score
from .model_card import render_model_card, write_model_card
from .modeling import MultitaskModel, MultitaskModelOutput
from .pal import PalConfig, PalModel
from .regularizers import (
    EmaTeacher,
    RDropRegularizer,
    Regularizer,
    SmartRegularizer,
    get_regularizer,
    register_regularizer,
)
from .sampling import MultitaskBatchSampler, annealed_alpha
from .tasks import TaskSpec, cs224n_tasks, get_task, quora_task, sst_task, sts_task
from .trainer import MultitaskTrainer, NonFiniteLossError
from .training_args import MultitaskTrainingArguments
from .utils import resolve_encoder_path

AutoConfig.register(MultitaskConfig.model_type, MultitaskConfig, exist_ok=True)
AutoModel.register(MultitaskConfig, MultitaskModel, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "GradientSurgery",
    "aggregator_names",
    "get_aggregator",
    "register_aggregator",
    "ClassificationKind",
    "DataArguments",
    "ModelArguments",
    "RegressionKind",
    "TaskKind",
    "build_model",
    "build_task_specs",
    "build_tokenizer",
    "get_kind",
    "is_multitask_model",
    "load_tokenized",
    "metric_key",
    "register_kind",
    "CheckpointError",
    "MultitaskBatchSampler",
    "MultitaskCollator",
    "MultitaskConfig",
    "MultitaskDataset",
    "MultitaskModel",
    "MultitaskModelOutput",
    "MultitaskPipeline",
    "MultitaskTrainer",
    "MultitaskTrainingArguments",
    "NonFiniteLossError",
    "PalConfig",
    "PalModel",
    "TaskSpec",
    "annealed_alpha",
    "compute_task_metrics",
    "cs224n_tasks",
    "export_task",
    "get_task",
    "load_task_data",
    "load_task_split",
    "normalize_ptb",
    "ordinal_log_loss",
    "overall_score",
    "predict",
    "quora_task",
    "render_model_card",
    "resolve_encoder_path",
    "sst_task",
    "sts_task",
    "task_loss",
    "tokenize_task",
    "write_model_card",
    "EmaTeacher",
    "RDropRegularizer",
    "Regularizer",
    "SmartRegularizer",
    "get_regularizer",
    "register_regularizer",
    "symmetric_kl",
    "MultipleChoiceKind",
    "TokenClassificationKind",
    "DynamicWeightAverage",
    "LossWeighting",
    "UncertaintyWeighting",
    "get_loss_weighting",
    "register_loss_weighting",
]
