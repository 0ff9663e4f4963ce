"""Loading the shared encoder: any `AutoModel` of the BERT family, without the pooler the heads replace."""

from __future__ import annotations

import inspect
import json
import logging as std_logging
import os
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers import MODEL_MAPPING, AutoModel, PreTrainedModel
from transformers.utils import cached_file, logging

logger = logging.get_logger(__name__)


def accepts_pooling_flag(encoder_config) -> bool:
    """Whether the encoder's `AutoModel` class takes `add_pooling_layer` (BERT, RoBERTa, ... do)."""
    model_class = MODEL_MAPPING.get(type(encoder_config), None)
    return model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters


def load_encoder(path: str, **kwargs) -> PreTrainedModel:
    """`AutoModel.from_pretrained` without transformers' load report about the checkpoint's pooler, which the heads
    replace (`add_pooling_layer=False`); any other missing, unexpected or resized weight is still reported."""
    loader = logging.get_logger("transformers.modeling_utils")  # the logger of transformers' load report
    report_filter = _DropLoadReport()
    loader.addFilter(report_filter)  # (raising the logger's level would turn on other checks in transformers)
    try:
        with naming_unreadable_weights(path):
            encoder, info = AutoModel.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        loader.removeFilter(report_filter)
    unused = {key: sorted(k for k in info.get(key, ()) if not str(k).startswith("pooler."))
              for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(unused.values()):
        logger.warning(f"{path}: the encoder's weights do not match its checkpoint: "
                       + "; ".join(f"{key}: {keys}" for key, keys in unused.items() if keys))
    return encoder


def encoder_from_config(encoder_config) -> PreTrainedModel:
    """A randomly initialised encoder for `encoder_config` (the weights come from the saved model after)."""
    kwargs = {"add_pooling_layer": False} if accepts_pooling_flag(encoder_config) else {}
    return AutoModel.from_config(encoder_config, **kwargs)


@contextmanager
def naming_unreadable_weights(name_or_path: str | os.PathLike):
    """Turn safetensors' error about a weights file it cannot read (`invalid header length`, `incomplete metadata`:
    the file was cut off while saving or downloading, or damaged) into an `OSError` that names the file. A
    directory holding a PAL adapter alone (no `config.json`) is refused first, saying how such an adapter loads."""
    folder = Path(name_or_path)
    if folder.is_dir() and not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file():
        if json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("adapter_type") == "PAL":
            raise OSError(f"{folder} holds a PAL adapter, not a model: load its base model, then "
                          f"model.load_pal_adapter({str(folder)!r})")
    try:
        yield
    except SafetensorError as error:
        raise OSError(f"{_unreadable_weights(name_or_path)}: cannot read the weights ({error}); the file is damaged "
                      "or was cut off while being saved or downloaded: save or download it again") from error


def _unreadable_weights(name_or_path: str | os.PathLike) -> str:
    """The `.safetensors` files of a model directory (or of a Hub model in the local cache) that fail to open."""
    if Path(name_or_path).is_dir():
        files = sorted(Path(name_or_path).glob("*.safetensors"))
    else:
        try:
            cached = cached_file(str(name_or_path), "model.safetensors", local_files_only=True,
                                 _raise_exceptions_for_missing_entries=False,
                                 _raise_exceptions_for_connection_errors=False)
        except (OSError, ValueError):  # not a Hub id, or not in the cache
            cached = None
        files = [Path(cached)] if cached else []
    unreadable = []
    for file in files:
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError):
            unreadable.append(str(file))
    return ", ".join(unreadable) or f"{name_or_path}'s weights"


class _DropLoadReport(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def adapter_parameter_ids(model) -> set[int]:
    """Identities of the parameters of peft adapter layers inside `model` (LoRA's `lora_A`/`lora_B`, ...: the names
    each peft tuner layer lists in `adapter_layer_names`); empty without peft."""
    ids = set()
    for module in model.modules():
        for name in getattr(module, "adapter_layer_names", ()):
            layer = getattr(module, name, None)
            ids |= {id(p) for p in layer.parameters()} if hasattr(layer, "parameters") else set()
    return ids
