"""`hf-multitask train`'s config files: a YAML or JSON mapping of argument names to values, checked against the
argument dataclasses before argparse sees it (argparse converts and checks only string defaults), and HF scripts'
`do_train` / `do_eval` / `do_predict` switches, which TrainingArguments keeps but nothing in the Trainer reads."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

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


DO_SWITCHES = ("do_train", "do_eval", "do_predict")


def given_do_switches(config: dict, argv: list[str]) -> dict[str, bool]:
    """The `do_*` switches the user set, in the config or as flags (a flag wins), and only those: TrainingArguments
    cannot tell `--do_eval false` from its default, and turns `do_eval` on by itself when `eval_strategy` is set."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in DO_SWITCHES:
        parser.add_argument(f"--{name}", nargs="?", const="true", default=None)
    flags = vars(parser.parse_known_args(argv)[0])
    given = {name: config[name] for name in DO_SWITCHES if name in config}
    given.update({name: value for name, value in flags.items() if value is not None})
    return {name: string_to_bool(value) for name, value in given.items()}


def apply_do_switches(given: dict[str, bool], data_args: DataArguments, training_args) -> None:
    """`hf-multitask train` trains, then evaluates on `eval_split`: `do_eval: false` skips that evaluation (as
    `eval_split: none`); switches asking for what `train` does not do are errors that say which command does it."""
    if given.get("do_train") is False:
        raise ValueError("hf-multitask train: do_train is false, and train always trains; to evaluate a saved model: "
                         "hf-multitask evaluate MODEL_DIR --data DIR")
    if given.get("do_predict"):
        raise ValueError("hf-multitask train: do_predict is not a train option; predictions for a split: "
                         "hf-multitask evaluate MODEL_DIR --data DIR --split test --predictions FILE, or "
                         "train --predictions_file FILE for the eval split's")
    if given.get("do_eval") is False:
        if training_args.eval_strategy != "no":
            raise ValueError(f"hf-multitask train: do_eval is false but eval_strategy is "
                             f"{training_args.eval_strategy.value!r}, which evaluates during training; drop one")
        if data_args.predictions_file:
            raise ValueError("hf-multitask train: do_eval is false, and predictions_file writes the evaluation's "
                             "predictions")
        data_args.eval_split = "none"
