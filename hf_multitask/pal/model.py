"""[`PalModel`]: every task's PAL, the hooks that add its term into the encoder, and the adapter's save/load."""

from __future__ import annotations

import dataclasses
import os
import re
from functools import partial

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import DEFAULT_TARGETS, PalConfig
from .layer import TaskPal

WEIGHTS_NAME = "adapter_model.safetensors"
_ATTRIBUTES = ("pal_config", "layer_indices", "active_task", "enabled")  # task names must not shadow these


def keeping_pal_task(model: nn.Module, checkpoint):
    """`checkpoint` (torch's, with the model's options: what transformers hands each layer) whose recomputation in
    the backward runs under the PAL state (task, enabled) of the layer's first forward. The state is the model's,
    set by each forward: a step that runs several tasks' forwards before one backward (the summed step) would
    otherwise recompute every task's layers with the last task's PAL. The wrapped function is what torch recomputes,
    with or without `use_reentrant`; `model.pal` is read at each call (PALs may be added after checkpointing is on)."""

    def checkpointed(function, *args, **kwargs):
        pal = getattr(model, "pal", None)
        if pal is None:
            return checkpoint(function, *args, **kwargs)
        state = (pal.active_task, pal.enabled)

        def run(*run_args, **run_kwargs):
            outer = (pal.active_task, pal.enabled)
            pal.active_task, pal.enabled = state
            try:
                return function(*run_args, **run_kwargs)
            finally:
                pal.active_task, pal.enabled = outer

        return checkpoint(run, *args, **kwargs)

    return checkpointed


def find_layers(encoder: nn.Module, layers_pattern: str | None) -> tuple[str, nn.ModuleList]:
    """`(path, layers)`: the encoder's `nn.ModuleList` of layers, at `layers_pattern` or a known family's path."""
    for pattern in [layers_pattern] if layers_pattern else DEFAULT_TARGETS:
        try:
            module = encoder.get_submodule(pattern)
        except AttributeError:
            continue
        if isinstance(module, nn.ModuleList):
            return pattern, module
    if layers_pattern:
        raise ValueError(f"PalConfig.layers_pattern {layers_pattern!r} is not an nn.ModuleList of the "
                         f"{type(encoder).__name__}")
    raise ValueError(f"PalConfig: the {type(encoder).__name__} has none of the known layer lists "
                     f"{list(DEFAULT_TARGETS)}; set layers_pattern, target_modules and input_module")


class PalModel(nn.ModuleDict):
    """The PALs of all tasks (an `nn.ModuleDict` of [`TaskPal`] keyed by task name), hooked into an encoder.

    Hooks only, so the encoder's module tree and state-dict keys stay those of the plain encoder: in each target
    layer, a forward pre-hook on `input_module` reads the layer's input h (and attention mask), and a forward
    pre-hook on `target_modules` (a LayerNorm) turns its input x into x + TS(h) for the active task. Both run inside
    the layer's forward, so gradient checkpointing's recomputation repeats them. The active task is set by
    `MultitaskModel.forward(task_name=...)` and stays set until the next forward (the recomputation in backward
    reads it); a task without a PAL, or `enabled = False`, leaves the encoder unchanged.

    Args:
        config: The [`PalConfig`]; `tasks=None` means every name in `task_names`.
        encoder: The encoder to hook into.
        task_names: The model's tasks.

    Example:

    ```python
    >>> from hf_multitask import MultitaskModel, cs224n_tasks
    >>> from hf_multitask.pal import PalConfig
    >>> model = MultitaskModel.from_encoder("minilm", tasks=cs224n_tasks())  # doctest: +SKIP
    >>> model.add_pal(PalConfig(rank=102, g="attention"))  # doctest: +SKIP
    >>> model.freeze_encoder()  # doctest: +SKIP
    >>> model.num_parameters_per_task()  # doctest: +SKIP
    {'sst': 269855, 'quora': 268700, 'sts': 268315}
    ```
    """

    def __init__(self, config: PalConfig, encoder: nn.Module, task_names: list[str]):
        tasks = config.tasks or list(task_names)
        unknown = [t for t in tasks if t not in task_names]
        if unknown:
            raise ValueError(f"PalConfig.tasks has task(s) {unknown} that the model lacks (it has {list(task_names)})")
        shadowing = [t for t in tasks if t in _ATTRIBUTES or hasattr(nn.ModuleDict, t)]
        if shadowing:
            raise ValueError(f"PalConfig.tasks: task name(s) {shadowing} clash with PalModel attributes")
        pattern, layers = find_layers(encoder, config.layers_pattern)
        indices = config.layers_to_transform or list(range(len(layers)))
        if max(indices) >= len(layers):
            raise ValueError(f"PalConfig.layers_to_transform {indices}: the encoder has {len(layers)} layers")
        defaults = DEFAULT_TARGETS.get(pattern, {})
        paths = {"input_module": config.input_module or defaults.get("input"),
                 "target_modules": config.target_modules or defaults.get(config.placement)}
        for field_name, path in paths.items():
            if path is None:
                raise ValueError(f"PalConfig.{field_name} must be set for layers_pattern {pattern!r}")
            for i in indices:
                try:
                    layers[i].get_submodule(path)
                except AttributeError:
                    raise ValueError(f"PalConfig.{field_name} {path!r} is not a module of {pattern}.{i}") from None
        if getattr(encoder.config, "chunk_size_feed_forward", 0):
            raise ValueError("PALs need the whole sequence in each LayerNorm: set chunk_size_feed_forward=0")
        super().__init__({t: TaskPal(config, encoder.config.hidden_size, indices) for t in tasks})
        self.pal_config = dataclasses.replace(config, tasks=tasks)
        self.layer_indices = indices
        self.active_task: str | None = None
        self.enabled = True
        self._inputs: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._handles = []
        for i in indices:
            source, target = layers[i].get_submodule(paths["input_module"]), layers[i].get_submodule(
                paths["target_modules"])
            self._handles.append(source.register_forward_pre_hook(partial(self._read_input, i), with_kwargs=True))
            self._handles.append(target.register_forward_pre_hook(partial(self._add_term, i)))

    def add_task(self, task_name: str, hidden_size: int) -> TaskPal:
        """A fresh PAL (V_D at zero) for a new task, on the same layers as the others; returns it."""
        if task_name in self:
            raise ValueError(f"Task {task_name!r} has a PAL already")
        if task_name in _ATTRIBUTES or hasattr(nn.ModuleDict, task_name):
            raise ValueError(f"Task name {task_name!r} clashes with a PalModel attribute: it cannot get a PAL")
        self[task_name] = TaskPal(self.pal_config, hidden_size, self.layer_indices)
        self.pal_config = dataclasses.replace(self.pal_config, tasks=[*self.pal_config.tasks, task_name])
        return self[task_name]

    def set_task(self, task_name: str | None) -> None:
        """The task whose PAL the next forward passes use (`None`: none)."""
        self.active_task = task_name

    def _current(self) -> str | None:
        return self.active_task if self.enabled and self.active_task in self else None

    def _read_input(self, layer: int, module, args, kwargs):
        if self._current() is not None:
            h = args[0] if args else kwargs["hidden_states"]
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            self._inputs[layer] = (h, mask)  # (batch, seq, d), the layer's own mask

    def _add_term(self, layer: int, module, args):
        task = self._current()
        if task is None:
            return None
        if layer not in self._inputs:
            raise RuntimeError(f"PAL of layer {layer}: the LayerNorm ran before the layer's input was seen; check "
                               "PalConfig.input_module")
        h, mask = self._inputs.pop(layer)
        return (args[0] + self[task](h, mask, layer), *args[1:])  # LN(x + TS(h))

    def remove_hooks(self) -> None:
        """Detach from the encoder (the parameters stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inputs.clear()


def adapter_state_dict(model, include_heads: bool = True) -> dict[str, torch.Tensor]:
    """The PAL parameters (and the PAL tasks' heads) of `model`, under their names in the model; which parameters
    those are is the model's answer (`MultitaskModel.task_parameter_owners`). Under peft, a PAL or head trained as
    one of `modules_to_save` is saved from its trained copy under its plain name; one that LoRA wraps is refused
    (merge first)."""
    owners, tasks = model.task_parameter_owners(), set(model.pal.pal_config.tasks)

    def wanted(param) -> bool:
        task, attribute = owners.get(id(param), (None, None))
        return attribute == "pal" or (include_heads and attribute == "heads" and task in tasks)

    state = {}
    for name, param in model.named_parameters():
        if not wanted(param) or ".original_module." in name:  # peft's modules_to_save: the untrained original
            continue
        if ".base_layer." in name or ".lora_" in name:
            raise ValueError(f"save_pal_adapter: {name} is wrapped by a peft adapter (LoRA on a PAL or a head); "
                             "merge_and_unload() first, then save the PAL adapter")
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)  # peft's trained copy, under the plain name
        state[name] = param.detach().cpu().contiguous()
    return state


def save_adapter(model, directory: str | os.PathLike, include_heads: bool = True) -> None:
    """`adapter_config.json` + `adapter_model.safetensors`: the PALs (and their tasks' heads) alone."""
    if model.pal is None:
        raise ValueError("The model has no PALs to save: add_pal() first")
    encoder_config = model.config.encoder
    base = {"model_type": encoder_config.model_type, "hidden_size": model.config.hidden_size,
            "num_hidden_layers": getattr(encoder_config, "num_hidden_layers", None)}
    model.pal.pal_config.save_pretrained(directory, base_model=base, include_heads=include_heads)
    save_file(adapter_state_dict(model, include_heads), os.path.join(directory, WEIGHTS_NAME),
              metadata={"format": "pt"})


def load_adapter(model, directory: str | os.PathLike) -> None:
    """Add the saved PALs (and heads) of `directory` to `model`, replacing any PALs it has; an adapter that does
    not fit is refused before anything of the model changes."""
    config, extra = PalConfig.from_pretrained(directory)
    base = extra.get("base_model", {})
    for key, ours in (("hidden_size", model.config.hidden_size),
                      ("num_hidden_layers", getattr(model.config.encoder, "num_hidden_layers", None))):
        if base.get(key) is not None and base[key] != ours:
            raise ValueError(f"{directory}: the adapter was saved for {key}={base[key]}, the model has {ours}")
    state = load_file(os.path.join(directory, WEIGHTS_NAME))
    candidate = PalModel(config, model.encoder, model.config.task_names)  # the PALs it would add, not attached
    candidate.remove_hooks()
    ours = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("pal.")}
    ours.update({f"pal.{k}": v.shape for k, v in candidate.state_dict().items()})
    missing = sorted(k for k in ours if k.startswith("pal.") and k not in state)
    unexpected = sorted(k for k in state if k not in ours)
    wrong = sorted(k for k in state if k in ours and state[k].shape != ours[k])
    if missing or unexpected or wrong:
        raise ValueError(f"{directory} does not fit the model: missing {missing}, unexpected {unexpected}, "
                         f"shape mismatch {wrong}; the model is unchanged")
    if model.pal is not None:
        model.remove_pal()
    model.add_pal(config)
    model.load_state_dict(state, strict=False)
