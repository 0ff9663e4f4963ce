"""Projected Attention Layers (Stickland & Murray 2019) as task-keyed adapters, in peft's config/layer/model shape."""

from .config import DEFAULT_TARGETS, PalConfig
from .layer import ProjectedAttention, TaskPal
from .model import PalModel, adapter_state_dict, keeping_pal_task, load_adapter, save_adapter

__all__ = [
    "DEFAULT_TARGETS",
    "PalConfig",
    "PalModel",
    "ProjectedAttention",
    "TaskPal",
    "adapter_state_dict",
    "keeping_pal_task",
    "load_adapter",
    "save_adapter",
]
