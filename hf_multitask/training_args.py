"""[`MultitaskTrainingArguments`]: `TrainingArguments` plus the multitask knobs."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .aggregators import aggregator_names, aggregator_options, get_aggregator
from .loss_weighting import get_loss_weighting, loss_weighting_options
from .regularizers import build_regularizers
from .sampling import STRATEGIES
from .sharding import sharding_refusal

SMART_NOISE_STD = 1e-5  # the paper's σ (Jiang et al. 2020, Sec. 5; MT-DNN's generate_noise uses 1e-5 the same way)


@dataclass
class MultitaskTrainingArguments(TrainingArguments):
    r"""Arguments of [`MultitaskTrainer`]; every `TrainingArguments` field works as usual.

    > Parameters that control task sampling

    task_sampling (`str`, defaults to `"annealed"`):
        How the task of each batch is chosen: `round_robin`, `proportional`, `annealed` (p_i ~ n_i^alpha,
        alpha = 1 - 0.8 t) or `uniform`. See [`MultitaskBatchSampler`] for what an epoch is under each.
    task_sampling_group_by_length (`bool`, defaults to `False`):
        Batch examples of similar length together (within windows of 50 batches) to cut padding.

    > Parameters that control gradient surgery (see docs/gradients.md)

    gradient_surgery (`str`, defaults to `"none"`):
        A registered aggregator (`aggregator_names()`): `none`, `pcgrad` (Yu et al. 2020), `gradvac` (Wang et al.
        2021), `mgda`, `upgrad`, `dualproj`, `imtl_g`, `aligned_mtl` (docs/gradients.md), applied to the gradients of
        the parameters shared by all tasks; heads and PALs keep their own gradients. Anything but `none` turns on
        grouped batches.
    task_sampling_grouped (`bool`, defaults to `False`):
        Every step takes one batch of `per_device_train_batch_size` examples from every task. `task_sampling` then
        sets each task's loss weight instead of choosing tasks: T p_i with p_i ~ n_i^alpha for `proportional`
        (alpha = 1) and `annealed` (alpha = 1 - 0.8 t); 1 for `uniform` and `round_robin`. With
        `gradient_surgery="none"` this is the plain summed-loss baseline that surgery is compared with.
    gradvac_beta (`float`, defaults to `0.01`):
        EMA rate of GradVac's cosine targets.
    gradvac_per_layer (`bool`, defaults to `True`):
        One GradVac target per encoder layer (the paper's choice) instead of one for the whole shared model.
    gradient_surgery_kwargs (`dict` or `str`, *optional*):
        Options for the aggregator's constructor, as `lr_scheduler_kwargs` are for the scheduler (a JSON object on
        the command line): e.g. `{"c": 0.5}` for an aggregator of your own whose `__init__` takes `c`. A name the
        aggregator's `__init__` does not take is an error (GradVac's options are the two fields above).

    > Parameters that control loss weighting (see docs/loss_weighting.md)

    loss_weighting (`str`, defaults to `"none"`):
        `none`, `uncertainty` (Kendall et al. 2018: sum_i exp(-s_i) L_i + s_i with a learned s_i per task) or `dwa`
        (Liu et al. 2019: weights from the ratio of each task's average loss over the last two epochs), or any name
        registered with `register_loss_weighting`. Anything but `none` turns on grouped batches and replaces the
        grouped-mode weights of `task_sampling`; it cannot be combined with `gradient_surgery`. One backward pass per
        step, of the weighted sum.
    loss_weighting_kwargs (`dict` or `str`, *optional*):
        Options for the loss weighting's constructor (a JSON object on the command line), for a weighting of your
        own; a name its `__init__` does not take is an error (DWA's options are the two fields below).
    dwa_temperature (`float`, defaults to `2.0`):
        DWA's temperature T (the paper's 2).
    dwa_period (`int`, defaults to `0`):
        DWA's window in optimizer steps over which each task's loss is averaged; 0 = one epoch (the paper's).

    > Parameters that control fault handling (see docs/reliability.md)

    nonfinite_loss_limit (`int`, defaults to `10`):
        An optimizer step whose loss is NaN or inf for any task on any rank is skipped (no optimizer update at all);
        after this many skipped steps in a row training stops with an error naming the task and the step.

    > Parameters that control regularisers (see docs/regularizers.md)

    regularizers (`dict` or `str`, *optional*, defaults to `None`):
        `{name: {option: value}}`: the registered regularisers to add to the training loss and their options, each
        with the `tasks` it applies to, e.g. `{"rdrop": {"tasks": ["sst", "sts"], "alpha": 1.0}}`; a JSON string on
        the command line. SMART can be configured here (`"smart"`) or with the `smart_*` fields below, not both.

    > Parameters that control SMART (Jiang et al. 2020, https://arxiv.org/abs/1911.03437; see docs/smart.md)

    smart_tasks (`list[str]` or `None`, defaults to `None`):
        Tasks whose loss gets SMART's λ_s R_s + μ D_Breg; `None` turns SMART off. The CS224N study used SST and STS.
    smart_noise_std (`float`, defaults to `1e-5`):
        Standard deviation σ of the initial perturbation ν_0 ~ N(0, σ²) of the word embeddings (the paper's σ, and
        what MT-DNN's `adv_noise_var` is used as).
    smart_noise_var (`float` or `None`, defaults to `None`):
        Deprecated: the variance σ² that earlier versions took (with the same 1e-5 default, so a noise 316 times the
        paper's). When set, `smart_noise_std = sqrt(smart_noise_var)` with a `FutureWarning`, which reproduces the old
        runs; setting both is an error.
    smart_step_size (`float`, defaults to `1e-3`):
        Step size η of the ascent steps ν ← ν + η g / (‖g‖_∞ + ε).
    smart_epsilon (`float`, defaults to `1e-6`):
        ε of the ascent step, a guard of the division (the CS224N study's "noise norm constraint").
    smart_radius (`float` or `None`, defaults to `None`):
        When set, ν is projected onto ‖ν‖_∞ ≤ radius after each step (MT-DNN does not project).
    smart_steps (`int`, defaults to `1`):
        Number K of ascent steps (0: random noise only).
    smart_lambda (`float`, defaults to `1.0`):
        Weight λ_s of the adversarial term R_s (MT-DNN's default `adv_alpha`; the paper searched {1, 3, 5}).
    smart_mu (`float`, defaults to `1.0`):
        Weight μ of the Bregman term D_Breg (the paper's value); 0 keeps no EMA teacher.
    smart_momentum (`float`, defaults to `0.99`):
        β of the EMA teacher, θ̃ ← β θ̃ + (1 - β) θ after each optimizer step (β weighs the old teacher).

    > Parameters that control the optimizer

    head_learning_rate (`float` or `None`, defaults to `None`):
        Learning rate of the task heads' parameters, in their own param groups with the same schedule and weight-decay
        split; `None` uses `learning_rate`. Task-specific heads start from random weights and often want a larger rate
        than the pretrained encoder (0 keeps them fixed).

    Differences from the parent's defaults: `metric_for_best_model` may be `"overall"` (the mean of every task's
    metric mapped to [0, 1]), which evaluation reports as `eval_overall`, `"loss"` (the mean of the tasks' losses,
    the parent's default) or `"<task>_<metric>"`; `dataloader_pin_memory` is turned off where there is no
    accelerator to pin memory for (CPU runs).
    """

    # the parent's JSON-object fields, parsed from a string in its __post_init__, and ours
    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "gradient_surgery_kwargs", "loss_weighting_kwargs"]

    task_sampling: str = field(
        default="annealed", metadata={"help": f"Task sampling strategy, one of {STRATEGIES}."}
    )
    task_sampling_group_by_length: bool = field(
        default=False, metadata={"help": "Group examples of similar length into batches (less padding)."}
    )
    gradient_surgery: str = field(
        default="none", metadata={"help": "Aggregator of the shared gradients: built in, "
                                          f"{', '.join(aggregator_names())}; or a name registered by a module "
                                          "given with --import."}
    )
    task_sampling_grouped: bool = field(
        default=False, metadata={"help": "One batch of every task per step (implied by gradient surgery)."}
    )
    gradvac_beta: float = field(default=0.01, metadata={"help": "GradVac: EMA rate of the cosine targets."})
    gradvac_per_layer: bool = field(default=True, metadata={"help": "GradVac: one target per encoder layer."})
    gradient_surgery_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Options of the aggregator's __init__, a JSON object (e.g. '{\"c\": 0.5}')."}
    )
    loss_weighting: str = field(
        default="none", metadata={"help": "Task loss weighting: none, uncertainty, dwa or a registered name (implies "
                                          "grouped batches)."}
    )
    loss_weighting_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Options of the loss weighting's __init__, a JSON object."}
    )
    dwa_temperature: float = field(default=2.0, metadata={"help": "DWA: temperature of the softmax."})
    dwa_period: int = field(default=0, metadata={"help": "DWA: window in optimizer steps (0: one epoch)."})
    nonfinite_loss_limit: int = field(
        default=10, metadata={"help": "Stop after this many steps in a row skipped for a NaN or inf loss."}
    )
    regularizers: dict | str | None = field(
        default=None, metadata={"help": 'Regularisers and their options, as JSON: \'{"rdrop": {"tasks": ["sst"]}}\'.'}
    )
    smart_tasks: list[str] | None = field(
        default=None, metadata={"help": "Tasks regularised with SMART (None: SMART off)."}
    )
    smart_noise_std: float = field(
        default=SMART_NOISE_STD, metadata={"help": "SMART: standard deviation of the initial noise."}
    )
    smart_noise_var: float | None = field(
        default=None, metadata={"help": "Deprecated (a variance): use smart_noise_std = sqrt(smart_noise_var)."}
    )
    smart_step_size: float = field(default=1e-3, metadata={"help": "SMART: step size of the ascent steps."})
    smart_epsilon: float = field(default=1e-6, metadata={"help": "SMART: epsilon in g / (max|g| + epsilon)."})
    smart_radius: float | None = field(
        default=None, metadata={"help": "SMART: bound on max|noise| (None: no projection)."}
    )
    smart_steps: int = field(default=1, metadata={"help": "SMART: number of ascent steps K."})
    smart_lambda: float = field(default=1.0, metadata={"help": "SMART: weight of the adversarial term."})
    smart_mu: float = field(default=1.0, metadata={"help": "SMART: weight of the Bregman term (0: no teacher)."})
    smart_momentum: float = field(default=0.99, metadata={"help": "SMART: momentum of the EMA teacher."})
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the task heads (None: learning_rate)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dataloader_pin_memory and (self.use_cpu or not _has_accelerator()):
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch would warn at every dataloader
        if self.task_sampling not in STRATEGIES:
            raise ValueError(f"task_sampling must be one of {STRATEGIES}, got {self.task_sampling!r}")
        get_aggregator(self.gradient_surgery)  # an unknown name is an error listing the registered ones
        self._check_kwargs("gradient_surgery_kwargs", "gradient_surgery", "aggregator",
                           lambda: aggregator_options(get_aggregator(self.gradient_surgery)))
        if not 0.0 < self.gradvac_beta <= 1.0:
            raise ValueError(f"gradvac_beta must be in (0, 1], got {self.gradvac_beta}")
        if self.gradient_surgery != "none":
            self.task_sampling_grouped = True
        self._check_loss_weighting()
        self._check_smart()
        self._check_regularizers()
        if self.nonfinite_loss_limit < 0:
            raise ValueError(f"nonfinite_loss_limit must be >= 0, got {self.nonfinite_loss_limit}")
        if self.head_learning_rate is not None and self.head_learning_rate < 0:
            raise ValueError(f"head_learning_rate must be >= 0 or None, got {self.head_learning_rate}")
        self._check_sharding()

    def _check_kwargs(self, field_name: str, method_field: str, what: str, takes) -> None:
        """`<field_name>` (e.g. `gradient_surgery_kwargs`): a dict, only with a method other than 'none' in
        `method_field`, and naming only options `takes()` lists (the method's `__init__` parameters)."""
        options, method = getattr(self, field_name) or {}, getattr(self, method_field)
        if not isinstance(options, dict):
            raise ValueError(f"{field_name} must be a dict (a JSON object on the command line), got {options!r}")
        if options and method == "none":
            raise ValueError(f"{field_name}={options} needs a {method_field} other than 'none'")
        known = takes() if options else []
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"{field_name}: {unknown} not among the options of the {method!r} {what}'s __init__ "
                             f"({known or 'it takes none'})")

    def _check_sharding(self) -> None:
        """Sharded training with what it cannot run (DeepSpeed or FSDP1 with grouped batches, SMART or regularisers;
        FSDP2 with a loss weighting or another regulariser than SMART) is refused here: sharding.py."""
        kind = "fsdp" if self.fsdp else "deepspeed" if self.deepspeed else None
        reason = sharding_refusal(kind, int((self.fsdp_config or {}).get("version", 2)), self)
        if reason:
            raise ValueError(reason)

    def _check_loss_weighting(self) -> None:
        self._check_kwargs("loss_weighting_kwargs", "loss_weighting", "loss weighting",
                           lambda: loss_weighting_options(get_loss_weighting(self.loss_weighting)))
        if self.loss_weighting == "none":
            return
        get_loss_weighting(self.loss_weighting)  # an unknown name: an error listing the known ones
        if self.gradient_surgery != "none":
            raise ValueError(f"loss_weighting={self.loss_weighting!r} cannot be combined with gradient_surgery="
                             f"{self.gradient_surgery!r}: a loss weighting sums the weighted losses in one backward "
                             "pass, surgery edits per-task gradients; pick one")
        if self.dwa_temperature <= 0:
            raise ValueError(f"dwa_temperature must be > 0, got {self.dwa_temperature}")
        if self.dwa_period < 0:
            raise ValueError(f"dwa_period must be >= 0 (0: one epoch), got {self.dwa_period}")
        self.task_sampling_grouped = True

    def _check_smart(self) -> None:
        if self.smart_tasks is not None:
            self.smart_tasks = [self.smart_tasks] if isinstance(self.smart_tasks, str) else list(self.smart_tasks)
            if not self.smart_tasks:
                raise ValueError("smart_tasks must name at least one task, or be None to turn SMART off")
        if self.smart_noise_var is not None:
            self._convert_smart_noise_var()
        for name in ("smart_noise_std", "smart_step_size", "smart_epsilon", "smart_lambda", "smart_mu"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.smart_radius is not None and self.smart_radius <= 0:
            raise ValueError(f"smart_radius must be > 0 or None, got {self.smart_radius}")
        if self.smart_steps < 0:
            raise ValueError(f"smart_steps must be >= 0, got {self.smart_steps}")
        if not 0.0 <= self.smart_momentum < 1.0:
            raise ValueError(f"smart_momentum must be in [0, 1), got {self.smart_momentum}")


    def _convert_smart_noise_var(self) -> None:
        if self.smart_noise_var < 0:
            raise ValueError(f"smart_noise_var must be >= 0, got {self.smart_noise_var}")
        if self.smart_noise_std != SMART_NOISE_STD:
            raise ValueError("smart_noise_var (deprecated) and smart_noise_std are both set: give smart_noise_std")
        self.smart_noise_std, self.smart_noise_var = math.sqrt(self.smart_noise_var), None
        warnings.warn(f"smart_noise_var is deprecated: it was a variance; using smart_noise_std = "
                      f"sqrt(smart_noise_var) = {self.smart_noise_std:.4g}, which reproduces the old runs. The new "
                      f"default is the paper's σ, smart_noise_std = {SMART_NOISE_STD:g} (docs/smart.md).",
                      FutureWarning, stacklevel=3)

    def _check_regularizers(self) -> None:
        if isinstance(self.regularizers, str):
            try:
                self.regularizers = json.loads(self.regularizers)
            except json.JSONDecodeError as e:
                raise ValueError(f"regularizers must be a JSON object, got {self.regularizers!r}: {e}") from None
        if self.regularizers is not None and not isinstance(self.regularizers, dict):
            raise ValueError(f"regularizers must be a dict {{name: {{option: value}}}}, got {self.regularizers!r}")
        build_regularizers(self)  # unknown names and options, bad values: errors now, not when training starts


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6; older: CUDA only
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
