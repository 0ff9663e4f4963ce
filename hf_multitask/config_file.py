"""`hf-multitask train`'s config files: a YAML or JSON mapping of argument names to values, checked against the
argument dataclasses before argparse sees it (argparse converts and checks only string defaults)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .build import DataArguments, ModelArguments
from .training_args import MultitaskTrainingArguments
from .utils import did_you_mean

TRAIN_DATACLASSES = (ModelArguments, DataArguments, MultitaskTrainingArguments)


def load_config_file(path: str) -> dict:
    """A YAML (safe loader: no Python tags, nothing executed) or JSON config.

    Unparsable files, unknown keys (with the closest known key) and a `tasks` that is not a list are errors
    naming the file.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        config = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a valid {'JSON' if path.endswith('.json') else 'YAML'} config: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of argument names to values")
    known = {f.name for cls in TRAIN_DATACLASSES for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}{did_you_mean(unknown[0], known)}")
    if "tasks" in config and not isinstance(config["tasks"], list):
        raise ValueError(f"{path}: tasks must be a list of task names, e.g. [sst, sts], got {config['tasks']!r}")
    if "task_overrides" in config and not isinstance(config["task_overrides"], (dict, str, type(None))):
        raise ValueError(f"{path}: task_overrides must map task names to {{field: value}}, got "
                         f"{config['task_overrides']!r}")
    if isinstance(config.get("task_overrides"), dict):
        config["task_overrides"] = json.dumps(config["task_overrides"])
    return config


def check_config_types(parser: HfArgumentParser, config: dict, path: str) -> dict:
    """`config` with its numbers checked against the arguments' types: argparse converts only string defaults, so a
    `null`, `2.5` for an integer, or a list for a number would otherwise reach torch or transformers unchecked.
    Errors name the file and the key."""
    checked = dict(config)
    for key, value in config.items():
        action = parser._option_string_actions.get(f"--{key}")  # argparse keeps no public map of its actions
        if action is None or isinstance(value, str):
            continue
        if value is None:
            if action.default is not None:
                raise ValueError(f"{path}: {key} is empty (null); give a value or leave the key out (default "
                                 f"{action.default!r})")
        elif action.nargs in ("+", "*"):
            items = value if isinstance(value, list) else [value]
            if any(isinstance(item, (list, dict)) or item is None for item in items):
                raise ValueError(f"{path}: {key} must be a list of plain values, got {value!r}")
        elif action.type in (int, float):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or (action.type is int and not float(value).is_integer()):
                wanted = "an integer" if action.type is int else "a number"
                raise ValueError(f"{path}: {key} must be {wanted}, got {value!r}")
            checked[key] = action.type(value)
    return checked
