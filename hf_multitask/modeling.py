"""[`MultitaskModel`]: one shared encoder, one head per task, chosen by `task_name`."""

from __future__ import annotations

import inspect
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import MultitaskConfig, is_multitask_model
from .encoders import (
    accepts_pooling_flag,
    adapter_parameter_ids,
    encoder_from_config,
    load_encoder,
    naming_unreadable_weights,
)
from .pal import PalConfig, PalModel, keeping_pal_task, load_adapter, save_adapter
from .tasks import TaskSpec
from .utils import resolve_encoder_path


@dataclass
class MultitaskModelOutput(ModelOutput):
    """Output of [`MultitaskModel.forward`].

    Args:
        loss: The task's unweighted loss, when `labels` were given.
        logits: `(batch, num_labels)`: class logits, or `(batch, 1)` predicted scores for regression.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class MultitaskModel(PreTrainedModel):
    """A shared BERT-family encoder with one head per task.

    Build it from a plain encoder checkpoint with [`MultitaskModel.from_encoder`]; restore a trained one with
    `from_pretrained` (or `AutoModel.from_pretrained` after `import hf_multitask`).

    Example:

    ```python
    >>> from hf_multitask import MultitaskModel, cs224n_tasks
    >>> model = MultitaskModel.from_encoder("minilm", tasks=cs224n_tasks())  # doctest: +SKIP
    >>> out = model(task_name="sst", input_ids=ids, attention_mask=mask)  # doctest: +SKIP
    >>> out.logits.shape  # doctest: +SKIP
    torch.Size([8, 5])
    ```
    """

    config_class = MultitaskConfig
    base_model_prefix = "multitask"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    accepts_loss_kwargs = False  # the loss is a per-batch mean: let the Trainer scale it for accumulation
    # Attributes holding per-task modules, each a ModuleDict keyed by task name (or None): their parameters belong
    # to one task; every other parameter is shared. A new kind of per-task module registers its attribute here.
    task_module_attributes: tuple[str, ...] = ("heads", "pal", "loss_weights")
    _keys_to_ignore_on_load_unexpected = [r"^loss_weights\."]  # training-only (loss_weighting.py): not rebuilt

    def __init__(self, config: MultitaskConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.card_context: dict | None = None  # model-card arguments while a Trainer saves (metrics, arguments)
        self.encoder = encoder if encoder is not None else encoder_from_config(config.encoder)
        if self.encoder.config._attn_implementation is None:
            # Wrapping a loaded encoder's config in MultitaskConfig resets its attention implementation, and the
            # encoder would then fall back to eager attention with a warning: give it the top-level choice.
            self.encoder.config._attn_implementation = self.config._attn_implementation
        hidden, dropout = config.hidden_size, config.classifier_dropout
        self.heads = nn.ModuleDict({n: s.task_kind.build_head(s, hidden, dropout) for n, s in self.specs.items()})
        self._encoder_accepts_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self._no_split_modules = [*(self.encoder._no_split_modules or []), "Embedding"]  # FSDP2 units: sharding.py
        self.pal, self.loss_weights = None, None  # loss_weights: learned per-task loss weights, set by a trainer
        if config.pal is not None:
            self._build_pal(PalConfig.from_dict(config.pal))
        self.post_init()

    @property
    def specs(self) -> dict[str, TaskSpec]:
        """`{task_name: TaskSpec}`, cached from the config."""
        if getattr(self, "_specs", None) is None or list(self._specs) != self.config.task_names:
            self._specs = self.config.specs
        return self._specs

    @classmethod
    def from_encoder(cls, encoder_name_or_path: str | os.PathLike, tasks: list[TaskSpec], pooling: str = "mean",
                     classifier_dropout: float = 0.1, **encoder_kwargs) -> MultitaskModel:
        """A new multitask model on a pretrained encoder, with freshly initialised heads.

        Args:
            encoder_name_or_path: A hub id or local directory of any `AutoModel` encoder (BERT, RoBERTa,
                DistilBERT, ...), or `"minilm"` for the bundled all-MiniLM-L6-v2.
            tasks: The task specs; one head is built per task.
            pooling: `"cls"` or `"mean"`.
            classifier_dropout: Dropout before each head.
            encoder_kwargs: Passed to `AutoModel.from_pretrained` (e.g. `attn_implementation`).
        """
        path = resolve_encoder_path(encoder_name_or_path)
        encoder_config = AutoConfig.from_pretrained(path)
        if accepts_pooling_flag(encoder_config):
            encoder_kwargs.setdefault("add_pooling_layer", False)  # heads pool themselves
        encoder = load_encoder(path, **encoder_kwargs)
        config = MultitaskConfig(encoder=encoder.config, tasks=[t.to_dict() for t in tasks], pooling=pooling,
                                 classifier_dropout=classifier_dropout)
        return cls(config, encoder=encoder)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a weights file that cannot be read (cut off, damaged) is named."""
        with naming_unreadable_weights(pretrained_model_name_or_path):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def _init_weights(self, module):
        std = getattr(self.config.encoder, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):  # a PAL's V_D: a fresh PAL must add nothing
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:  # `bias_init`: a regression head's `initial_bias` option
                nn.init.constant_(module.bias, getattr(module, "bias_init", 0.0))

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.set_input_embeddings(value)

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        """The encoder's, with `config.encoder.vocab_size` (what a saved model is rebuilt from) set to match."""
        embeddings = self.encoder.resize_token_embeddings(*args, **kwargs)
        self.config.encoder.vocab_size = embeddings.num_embeddings
        return embeddings

    # ---- heads and freezing ----

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the shared parameters (the encoder); heads, PALs and peft adapters (LoRA) stay as
        they are. The CS224N frozen baseline. Unfreezing under peft is refused: peft's save holds no base weight."""
        if (adapters := adapter_parameter_ids(self)) and not frozen:
            raise ValueError("freeze_encoder(False): the encoder carries peft adapters, and peft's save_pretrained "
                             "saves the adapters, not the base weights; merge_and_unload() first to train them all")
        for param in [p for _, p in self.named_shared_parameters(trainable_only=False) if id(p) not in adapters]:
            param.requires_grad = not frozen

    def load_heads_from(self, source: MultitaskModel | str | os.PathLike, tasks: list[str] | None = None) -> None:
        """Copy the heads of `source` (a model or a saved model directory) into this model.

        Used to start full fine-tuning from a trained frozen-encoder baseline's heads.
        """
        if isinstance(source, (str, os.PathLike)):
            source = MultitaskModel.from_pretrained(source)
        elif not is_multitask_model(source):
            raise TypeError(f"load_heads_from needs a multitask model or its directory, got {type(source).__name__}")
        for name in tasks or self.config.task_names:
            if name not in source.heads:
                raise ValueError(f"Task {name!r} has no head in the source model (it has {list(source.heads)})")
            self.specs[name].check_head_fits(source.specs[name])
            self.heads[name].load_state_dict(source.heads[name].state_dict())

    def add_task(self, spec: TaskSpec, pal: bool = True) -> None:
        """Add a task to a (trained) model: a new head initialised like the others and, when the model has PALs, a
        new PAL (V_D at zero, so the other tasks' outputs do not change). The spec joins `config.tasks` (and the
        PAL config's tasks), so `save_pretrained` / `from_pretrained` rebuild both.

        Args:
            spec: The new task; its name must differ from the model's tasks.
            pal: Give the task a PAL when the model has PALs (`False`: it runs on the plain encoder).

        docs/concepts.md ("Adding a task") has the example: `add_task`, then `train_only`.
        """
        if spec.name in self.config.task_names:
            raise ValueError(f"Task {spec.name!r} exists already (tasks: {self.config.task_names}): pick a new name")
        param, new_modules = next(self.encoder.parameters()), []
        if self.pal is not None and pal:  # first: it rejects names that clash with PalModel attributes
            new_modules.append(self.pal.add_task(spec.name, self.config.hidden_size))
            self.config.pal = self.pal.pal_config.to_dict()
        self.heads[spec.name] = spec.task_kind.build_head(spec, self.config.hidden_size,
                                                          self.config.classifier_dropout)
        new_modules.append(self.heads[spec.name])
        self.config.tasks = [*self.config.tasks, spec.to_dict()]
        with torch.no_grad():
            for module in new_modules:
                module.apply(self._init_weights)
                module.to(device=param.device, dtype=param.dtype).train(self.training)

    def train_only(self, task_names: str | list[str]) -> None:
        """Freeze everything except the heads and PALs of `task_names`, e.g. to train a task added with
        [`~MultitaskModel.add_task`] while the encoder and the other tasks stay bit-identical.
        `model.requires_grad_(True)` makes everything trainable again.
        """
        names = [task_names] if isinstance(task_names, str) else list(task_names)
        unknown = [name for name in names if name not in self.heads]
        if unknown or not names:
            raise ValueError(f"train_only: unknown task(s) {unknown or names} (tasks: {self.config.task_names})")
        owned = self.task_parameter_owners()
        params = [p for _, p in self.named_parameters() if owned.get(id(p), (None,))[0] in names]
        if not params:
            raise ValueError(f"train_only: task(s) {names} have no parameters of their own (a bi-encoded regression "
                             "head is a parameter-free cosine): nothing would train")
        self.requires_grad_(False)
        for param in params:
            param.requires_grad_(True)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        push_to_hub: bool = False, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, plus the code for transformers alone ([`hf_multitask.remote_code`])
        and a README.md card ([`hf_multitask.model_card`]; a README.md that hf-multitask did not write is kept) with
        `card_context` in it (metrics, training arguments: set by the Trainer while it saves). `push_to_hub=True`
        uploads the directory afterwards (`repo_id`, `tokenizer`, ... as in [`push_to_hub`])."""
        try:
            from .hub import push_folder
            from .model_card import write_model_card
        except ImportError:  # in the copy that travels with a saved model, without hf-multitask: transformers' save
            return super().save_pretrained(save_directory, is_main_process, push_to_hub=push_to_hub, **kwargs)
        hub = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr", "token", "private", "revision",
                                          "commit_description", "tokenizer") if k in kwargs}
        self._save_with_code(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            write_model_card(save_directory, self, **(self.card_context or {}))
            if push_to_hub:
                repo_id = hub.pop("repo_id", os.path.basename(os.path.normpath(str(save_directory))))
                push_folder(self, save_directory, repo_id, **hub)

    def push_to_hub(self, repo_id: str, *, tokenizer=None, max_shard_size: int | str | None = "50GB",
                    tags: list[str] | None = None, **hub):
        """Upload the model as one commit, as `PreTrainedModel.push_to_hub` does (`hub`: `commit_message`, `private`,
        `token`, `create_pr`, `revision`, `commit_description`): weights, config, the code for transformers alone,
        hf-multitask's card (unless the Hub holds the user's own) and `tokenizer`, by default the one saved beside the
        model ([`hf_multitask.inference.add_tokenizer`]; without one, a warning and a note in the card)."""
        import tempfile

        try:
            from .hub import push_folder
        except ImportError:  # in the copy that travels with a saved model, without hf-multitask: transformers' push
            return super().push_to_hub(repo_id, max_shard_size=max_shard_size, tags=tags, **hub)
        with tempfile.TemporaryDirectory() as folder:
            self._save_with_code(folder, max_shard_size=max_shard_size)
            return push_folder(self, folder, repo_id, tags=tags, card=self.card_context or {}, tokenizer=tokenizer,
                               **hub)

    def _save_with_code(self, directory: str | os.PathLike, is_main_process: bool = True, **kwargs) -> None:
        from .remote_code import save_with_code

        save_with_code(self, super().save_pretrained, directory, is_main_process=is_main_process, **kwargs)

    # ---- which parameters belong to which task ----

    def task_parameter_owners(self) -> dict[int, tuple[str, str]]:
        """`{id(parameter): (task_name, attribute)}` for every parameter that belongs to one task: those of the
        modules under [`task_module_attributes`] (heads, PALs). Keyed by identity, so it answers for the parameters
        of a wrapper around this model too (peft, DDP), whatever names the wrapper gives them."""
        owners = {}
        for attribute in self.task_module_attributes:
            container = getattr(self, attribute, None)
            for task_name, module in (container.items() if container is not None else ()):
                owners.update({id(p): (task_name, attribute) for p in module.parameters()})
        return owners

    def named_shared_parameters(self, root: nn.Module | None = None, trainable_only: bool = True) -> list:
        """`[(name, parameter)]` of the parameters shared by all tasks (not a head's, not a PAL's), named as in
        `root` (this model, or a wrapper around it such as a `PeftModel`), in `root`'s order.

        Gradient surgery projects exactly these; `freeze_encoder` freezes them.
        """
        owners = self.task_parameter_owners()
        return [(n, p) for n, p in (root or self).named_parameters()
                if id(p) not in owners and (p.requires_grad or not trainable_only)]

    def parameter_group(self, name: str) -> str:
        """GradVac's per-layer segment of a shared parameter, by its name: `layer.<i>` for encoder layers, else its
        top-level module under the encoder (`embeddings`, ...)."""
        match = re.search(r"\blayer\.(\d+)\.", name)
        return f"layer.{match.group(1)}" if match else name.split(".")[1] if name.count(".") > 1 else name

    def num_parameters_per_task(self) -> dict[str, int]:
        """Trainable parameters that belong to each task alone (its head; its PAL where present)."""
        counts = dict.fromkeys(self.config.task_names, 0)
        owners = self.task_parameter_owners()
        for param in self.parameters():
            if param.requires_grad and id(param) in owners:
                counts[owners[id(param)][0]] += param.numel()
        return counts

    def predict(self, task_name: str, inputs: list, tokenizer=None, **kwargs) -> list:
        """Label names (classification) or scores (regression) for raw texts: [`hf_multitask.inference.predict`];
        `model.predict("sst", ["A gorgeous, witty movie."], normalize="ptb")` gives `['very positive']`.

        Args:
            task_name: The task (and head).
            inputs: Strings for a single-sentence task, `(a, b)` pairs for a pair task.
            tokenizer: Defaults to the tokenizer saved at the model's `name_or_path` (loaded once).
            kwargs: `batch_size`, `normalize` (`"ptb"` for SST-style text), `return_probabilities`.
        """
        from .inference import default_tokenizer, predict

        return predict(self, task_name, inputs, tokenizer if tokenizer is not None else default_tokenizer(self),
                       **kwargs)

    # ---- PALs (Projected Attention Layers, see hf_multitask/pal and docs/pal.md) ----

    def _build_pal(self, pal_config: PalConfig) -> None:
        self.pal = PalModel(pal_config, self.encoder, self.config.task_names)
        self.config.pal = self.pal.pal_config.to_dict()  # tasks filled in: saved with the model

    def add_pal(self, pal_config: PalConfig) -> None:
        """Add Projected Attention Layers to the encoder; V_D starts at zero, so outputs do not change."""
        if self.pal is not None:
            raise ValueError("The model already has PALs: remove_pal() first")
        self._build_pal(pal_config)
        with torch.no_grad():
            self.pal.apply(self._init_weights)
        param = next(self.encoder.parameters())
        self.pal.to(device=param.device, dtype=param.dtype)

    def remove_pal(self) -> None:
        """Detach and delete the PALs (the encoder is as before `add_pal`)."""
        if self.pal is not None:
            self.pal.remove_hooks()
        self.pal, self.config.pal = None, None

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs):
        """transformers' hook, with each layer's recomputation under its forward's PAL task ([`keeping_pal_task`])."""
        func = gradient_checkpointing_func or checkpoint
        super()._set_gradient_checkpointing(enable, keeping_pal_task(self, func), **kwargs)

    def enable_pal(self) -> None:
        self._require_pal().enabled = True

    def disable_pal(self) -> None:
        """Run the plain encoder (PALs kept, not applied) until `enable_pal()`; not saved, as peft saves adapters but
        not their state: a saved model loads with its PALs on (`remove_pal()` to save one without them)."""
        self._require_pal().enabled = False

    @contextmanager
    def pal_disabled(self):
        """`with model.pal_disabled(): ...` runs the plain encoder, as peft's `disable_adapter()`."""
        enabled = self._require_pal().enabled
        self.pal.enabled = False
        try:
            yield
        finally:
            self.pal.enabled = enabled

    def save_pal_adapter(self, save_directory: str | os.PathLike, include_heads: bool = True) -> None:
        """Save the PALs (and their tasks' heads) alone: `adapter_config.json` + `adapter_model.safetensors`."""
        save_adapter(self, save_directory, include_heads)

    def load_pal_adapter(self, directory: str | os.PathLike) -> None:
        """Load an adapter saved by `save_pal_adapter` onto this (matching) model, replacing its PALs."""
        load_adapter(self, directory)

    def _require_pal(self) -> PalModel:
        if self.pal is None:
            raise ValueError("The model has no PALs: add_pal(PalConfig(...)) first")
        return self.pal

    # ---- forward ----

    @property
    def max_sequence_length(self) -> int | None:
        """The longest sequence the encoder's position embeddings cover, or `None` where it has none
        (`max_position_embeddings`, less RoBERTa's padding offset)."""
        positions = getattr(self.encoder.config, "max_position_embeddings", None)
        if positions is None:
            return None
        padding_idx = getattr(getattr(self.encoder, "embeddings", None), "padding_idx", None)
        return positions - (padding_idx + 1 if isinstance(padding_idx, int) else 0)

    def encode(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pool: bool = True,
    ) -> torch.Tensor:
        """Pooled sentence representations `(batch, hidden)`; `pool=False`: every token's `(batch, seq, hidden)`."""
        ids_or_embeds = input_ids if input_ids is not None else inputs_embeds  # neither: the encoder says so
        length, limit = ids_or_embeds.shape[1] if ids_or_embeds is not None else 0, self.max_sequence_length
        if limit is not None and length > limit:
            raise ValueError(f"A batch of {length} tokens per sequence is longer than the encoder's position "
                             f"embeddings allow ({limit}, from max_position_embeddings): set max_length <= {limit}")
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None and self._encoder_accepts_token_types:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
        if not pool:
            return hidden
        if self.config.pooling == "cls":  # the first token of each row's own: [CLS], on either padding side
            first = attention_mask.int().argmax(1) if attention_mask is not None else 0
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
        if attention_mask is None:
            return hidden.mean(1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(
        self,
        task_name: str,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        input_ids_b: torch.Tensor | None = None,
        attention_mask_b: torch.Tensor | None = None,
        token_type_ids_b: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        inputs_embeds_b: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> MultitaskModelOutput:
        """Run `task_name`'s head on a batch of that task.

        Args:
            task_name: Which task (and head) the batch belongs to.
            input_ids, attention_mask, token_type_ids: The sentence, or the cross-encoded pair.
            input_ids_b, attention_mask_b, token_type_ids_b: The second sentence of a bi-encoded pair.
            inputs_embeds, inputs_embeds_b: Word embeddings instead of ids (SMART perturbs these).
            labels: Gold labels `(batch,)` (`(batch, seq)`, -100 where ignored, for a token-level kind); when given,
                `loss` is the task's loss.
            return_dict: `False` returns the tuple `(loss, logits)` (`(logits,)` without labels) instead.
        """
        if task_name not in self.heads:
            raise ValueError(f"Unknown task_name {task_name!r}; this model has heads for {list(self.heads)}")
        spec = self.specs[task_name]
        if self.pal is not None:
            self.pal.set_task(task_name)
        inputs = spec.task_kind.encoder_inputs(input_ids, attention_mask, token_type_ids, inputs_embeds)
        pooled = self.encode(*inputs, pool=not spec.task_kind.token_level)  # (multiple choice: flattened rows)
        pooled_b = None
        if spec.is_bi_encoded:
            if input_ids_b is None and inputs_embeds_b is None:
                raise ValueError(f"Task {task_name!r} is bi-encoded: the batch needs input_ids_b")
            pooled_b = self.encode(input_ids_b, attention_mask_b, token_type_ids_b, inputs_embeds_b)
        logits = spec.task_kind.checked_logits(spec, self.heads[task_name](pooled, pooled_b), input_ids, inputs_embeds)
        loss = spec.task_kind.loss(spec, logits, labels) if labels is not None else None
        output = MultitaskModelOutput(loss=loss, logits=logits)
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()

