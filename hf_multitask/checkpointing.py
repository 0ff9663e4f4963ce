"""Checkpoints that are complete or refused: our training state, a manifest written last, and its checks.

The HF `Trainer` writes a checkpoint file by file and resumes from the highest-numbered `checkpoint-*` folder,
complete or not. [`MultitaskTrainer`] adds, after every file of a checkpoint is written (on every rank),

- `multitask_state.safetensors`: the tensors of the extra training state (SMART's EMA teacher, GradVac's
  targets, PCGrad's ordering RNG, ...), and
- `multitask_state.json`, the manifest, written last and atomically: the state's JSON values and the size and
  SHA-256 of every file in the checkpoint.

A folder without the manifest was cut short while saving; one whose files differ from their recorded sizes or
digests was truncated or altered afterwards (a flipped bit in a weights file loads without complaint otherwise).
[`last_complete_checkpoint`] skips the first kind, [`verify_checkpoint`] refuses both, naming the file. Nothing here
is read with pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

STATE_TENSORS_NAME, MANIFEST_NAME = "multitask_state.safetensors", "multitask_state.json"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: incomplete, truncated or unreadable. The message names the file."""


def save_training_state(folder: str, states: dict[str, dict]) -> None:
    """Save `{component: state_dict}` into `folder`, then the manifest of every file there (written last).

    Tensors go to `multitask_state.safetensors` as `<component>/<key>`; bools, numbers, strings, lists and
    `None` to the manifest's JSON.
    """
    tensors, scalars = {}, {}
    for component, state in states.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{component}/{key}"] = value.detach().cpu().contiguous()
            elif isinstance(value, (bool, int, float, str, list, type(None))):
                try:  # before anything is written: a list holding a tensor would leave a half-written checkpoint
                    json.dumps(value)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"Training state {component}.{key}: a list of JSON values only ({error}); "
                                     "stack tensors into one tensor instead") from error
                scalars.setdefault(component, {})[key] = value
            else:
                raise ValueError(f"Training state {component}.{key}: {type(value).__name__} is neither a tensor "
                                 "nor a JSON value")
    save_file(tensors, os.path.join(folder, STATE_TENSORS_NAME))
    write_manifest(folder, {"components": list(states), "scalars": scalars})


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: str, content: dict) -> None:
    """Write `MANIFEST_NAME` atomically, recording the size and SHA-256 of every other file under `folder`."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative != MANIFEST_NAME and not name.endswith(".tmp"):
                files[relative] = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
    temporary = os.path.join(folder, MANIFEST_NAME + ".tmp")
    with open(temporary, "w") as f:
        json.dump({**content, "files": dict(sorted(files.items()))}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, os.path.join(folder, MANIFEST_NAME))


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST_NAME)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is incomplete: it has no {MANIFEST_NAME}, the file written last when a "
                              "checkpoint is complete (was the run killed while saving it?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path} is not a checkpoint manifest (no 'files' table)")
    return manifest


def verify_checkpoint(folder: str) -> dict:
    """Check that `folder` is a complete checkpoint whose files have their recorded sizes and digests (a manifest
    of an earlier version records sizes only); returns the manifest.

    Raises:
        CheckpointError: naming the missing, truncated or corrupt file.
    """
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint directory")
    manifest = read_manifest(folder)
    for name, recorded in manifest["files"].items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing from the checkpoint")
        size, digest = (recorded, None) if isinstance(recorded, int) else (recorded["size"], recorded["sha256"])
        if os.path.getsize(path) != size:
            raise CheckpointError(f"{path} has {os.path.getsize(path)} bytes, the checkpoint recorded {size}: "
                                  "it was truncated or changed after saving")
        if digest is not None and file_sha256(path) != digest:
            raise CheckpointError(f"{path} has the recorded size but not the recorded SHA-256: its content changed "
                                  "after saving (disk or copy corruption)")
    return manifest


def checkpoint_folders(output_dir: str) -> list[str]:
    """The `checkpoint-<step>` folders of `output_dir`, highest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir)
             if (m := _CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-step complete checkpoint of `output_dir`; newer incomplete ones are skipped with a warning."""
    for folder in checkpoint_folders(output_dir):
        try:
            verify_checkpoint(folder)
        except CheckpointError as e:
            logger.warning(f"Not resuming from {folder}: {e}")
            continue
        return folder
    return None


def load_training_state(folder: str) -> dict[str, dict]:
    """Read what [`save_training_state`] wrote; `{}` when `folder` has no manifest."""
    if not os.path.isfile(os.path.join(folder, MANIFEST_NAME)):
        return {}
    saved = read_manifest(folder)
    states = {component: dict(saved["scalars"].get(component, {})) for component in saved["components"]}
    path = os.path.join(folder, STATE_TENSORS_NAME)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is unreadable: {e}") from None
    for name, tensor in tensors.items():
        component, key = name.split("/", 1)
        states[component][key] = tensor
    return states


def finished_at(training_args, resume) -> int | None:
    """The step of the checkpoint `resume` names (`True`: output_dir's last complete one) when it reached
    `max_steps` already, else `None`."""
    if not resume or training_args.max_steps <= 0:
        return None
    path = last_complete_checkpoint(training_args.output_dir) if resume is True else resume
    state = Path(path or "") / "trainer_state.json"
    if not path or not state.is_file():
        return None  # the trainer names what is missing
    step = json.loads(state.read_text(encoding="utf-8")).get("global_step", 0)
    return step if step >= training_args.max_steps else None


def warn_about_earlier_checkpoints(output_dir: str) -> None:
    """A fresh run into an output_dir that holds another run's checkpoints: said, since a later
    `--resume_from_checkpoint true` picks the newest, whichever run wrote it."""
    earlier = sorted(Path(output_dir).glob("checkpoint-*")) if Path(output_dir).is_dir() else []
    if earlier:
        names = ", ".join(path.name for path in earlier)
        print(f"hf-multitask train: {output_dir} holds checkpoints of an earlier run ({names}); this run starts "
              "afresh and writes beside them: use another output_dir, or --resume_from_checkpoint true to continue "
              "the newest", file=sys.stderr)
