"""SMART: smoothness-inducing adversarial regularisation and a Bregman proximal term towards an EMA teacher.

Jiang et al. 2020, "SMART: Robust and Efficient Fine-Tuning for Pre-trained Natural Language Models through
Principled Regularized Optimization" (https://arxiv.org/abs/1911.03437). For one task's batch:

    loss = L(θ) + λ_s R_s(θ) + μ D_Breg(θ, θ̃)
    R_s    = mean_i l_s(f(x_i + ν_i; θ), f(x_i; θ))    x = word-embedding output, ν adversarial (K ascent steps)
    D_Breg = mean_i l_s(f(x_i; θ), f(x_i; θ̃))          θ̃ ← β θ̃ + (1 - β) θ after every optimizer step

l_s is the symmetric KL for classification and the squared error for regression. The perturbation is kept in
float32 whatever the model's compute dtype (a 1e-3 step vanishes in bf16). The teacher is a dict of float32
tensors evaluated with `torch.func.functional_call`: no second module, so it never reaches `save_pretrained`.
"""

from __future__ import annotations

import hashlib

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from ..kinds import TaskKind, get_kind
from ..sharding import check_smart_units
from .base import Regularizer, register_regularizer
from .smart_fsdp import is_sharded, local_part, local_tensor, reshard_all, swapped_shards, whole_tensors

PAIRS = (("input_ids", "inputs_embeds"), ("input_ids_b", "inputs_embeds_b"))  # ids -> where the embeddings go


def smart_divergence(kind: str | TaskKind, a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """SMART's l_s between two head outputs, as the task's kind defines it (`TaskKind.divergence`): symmetric KL
    for classification, squared error for regression.

    Args:
        kind: The task's kind, or its registered name.
        a, b: `(batch, num_labels)` logits, or `(batch, 1)` scores.
        reduction: `"mean"` or `"sum"` over the batch.
    """
    return (get_kind(kind) if isinstance(kind, str) else kind).divergence(a, b, reduction)


def init_noise(embeds: torch.Tensor, noise_std: float, radius: float | None = None) -> torch.Tensor:
    """ν_0 ~ N(0, noise_std²) in float32, shaped like `embeds` `(batch, seq, hidden)`, clipped to the radius."""
    noise = torch.randn(embeds.shape, device=embeds.device, dtype=torch.float32) * noise_std
    return noise if radius is None else noise.clamp(-radius, radius)


def ascent_step(noise: torch.Tensor, grad: torch.Tensor, step_size: float, epsilon: float,
                radius: float | None = None) -> torch.Tensor:
    """ν ← ν + η g / (‖g‖_∞ + ε), the ∞-norm taken per token over the hidden size; then ‖ν‖_∞ ≤ radius if given.

    Args:
        noise, grad: `(batch, seq, hidden)` float32.
        step_size: η.
        epsilon: ε, guards the division.
        radius: Optional bound on every coordinate of ν (projection onto the ∞-norm ball).
    """
    grad = torch.nan_to_num(grad.float(), nan=0.0, posinf=0.0, neginf=0.0)
    noise = noise + step_size * grad / (grad.abs().amax(-1, keepdim=True) + epsilon)
    return noise if radius is None else noise.clamp(-radius, radius)


def example_noise(embeds: torch.Tensor, mask: torch.Tensor | None, noise_std: float, radius: float | None,
                  keys: tuple[int, ...], first_example: int) -> torch.Tensor:
    """ν_0 ~ N(0, noise_std²) in float32, shaped like `embeds` `(batch, [choices,] seq, hidden)`, drawn per example
    from a generator seeded by `(*keys, the example's index in the global batch)` and put on its real tokens (`mask`;
    padding gets 0): the same noise for an example whatever the number of processes, its rank or the padding around
    it, so that SMART trains alike on any process layout. Clipped to the radius when given.

    Args:
        keys: E.g. (seed, draw, input stream): what makes this draw differ from the others.
        first_example: The index in the global batch of this rank's first example (rank × per-device batch).
    """
    noise = torch.zeros(embeds.shape, dtype=torch.float32, device=embeds.device)
    rows = noise.view(embeds.shape[0], -1, *embeds.shape[-2:])  # (batch, choices or 1, seq, hidden)
    real = (torch.ones(rows.shape[:-1], dtype=torch.bool, device=embeds.device) if mask is None
            else mask.reshape(rows.shape[:-1]).bool())
    generator = torch.Generator(device=embeds.device)
    for i in range(rows.shape[0]):
        digest = hashlib.blake2b(repr((*keys, first_example + i)).encode(), digest_size=8).digest()
        generator.manual_seed(int.from_bytes(digest, "little") >> 1)
        for j in range(rows.shape[1]):
            count = int(real[i, j].sum())
            rows[i, j, real[i, j]] = torch.randn((count, rows.shape[-1]), generator=generator, device=embeds.device)
    noise.mul_(noise_std)
    return noise if radius is None else noise.clamp(-radius, radius)


@torch.no_grad()
def ema_update_(shadow: list[torch.Tensor], params: list[torch.Tensor], momentum: float) -> None:
    """In place: θ̃ ← β θ̃ + (1 - β) θ for every pair (β = `momentum` weighs the old teacher, as in the paper)."""
    torch._foreach_lerp_(shadow, [p.detach().float() for p in params], 1.0 - momentum)


def embedding_forward(model: nn.Module, inputs: dict) -> tuple[list[torch.Tensor], object]:
    """The word embeddings x of a batch's inputs and a forward from x + ν.

    Returns `embeds` (one `(batch, seq, hidden)` tensor per encoded input: the sentence, and the second sentence
    of a bi-encoded pair) and `forward(noises, detach)`, the model's logits at x + ν, added in float32 and cast
    back to x's dtype; `detach=True` cuts the graph into the embedding table (for the ascent steps). Call it on the
    unwrapped model: the adversarial passes bypass DDP, whose reducer expects one forward per backward.
    """
    embedding = model.get_input_embeddings()
    names = [(ids, emb) for ids, emb in PAIRS if inputs.get(ids) is not None]
    embeds = [embedding(inputs[ids]) for ids, _ in names]
    base = {k: v for k, v in inputs.items() if k != "labels" and k not in dict(names)}

    def forward(noises: list[torch.Tensor], detach: bool) -> torch.Tensor:
        perturbed = {emb: ((x.detach() if detach else x).float() + n).to(x.dtype)
                     for (_, emb), x, n in zip(names, embeds, noises)}
        return model(**base, **perturbed).logits

    return embeds, forward


class EmaTeacher:
    """A float32 EMA θ̃ of the model's trainable parameters, evaluated by swapping it into the model.

    Frozen parameters and buffers are not copied: the teacher shares them with the model. On a model sharded by
    FSDP2 (DTensor parameters) θ̃ holds this rank's local shards only, and its forward copies them into the model's
    shards for its length (`smart_fsdp.swapped_shards`). `state_dict` then gathers the whole tensors (a collective:
    every rank calls it) and a loaded state is cut to this rank's shards at its first use, so that a checkpoint is
    the same whatever the number of ranks.

    Args:
        momentum: β in θ̃ ← β θ̃ + (1 - β) θ (0.99: the teacher averages about the last 100 steps).
    """

    def __init__(self, momentum: float = 0.99):
        self.momentum = momentum
        self.shadow: dict[str, torch.Tensor] | None = None
        self.num_updates = 0
        self.restored = False  # set by load_state_dict, consumed by the Trainer when training starts
        self.whole = False  # the shadows are whole tensors from a checkpoint, not yet cut to this rank's shards
        self.params: list[torch.Tensor] = []  # the model's parameters at the last use, for a sharded state_dict

    def initialize(self, model: nn.Module) -> None:
        """θ̃ ← θ (trainable parameters only; under FSDP2 this rank's shards)."""
        reshard_all(model)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = {n: local_tensor(p).detach().float().clone() for n, p in named}
        self.params = [p for _, p in named]
        self.num_updates, self.whole = 0, False

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        reshard_all(model)  # FSDP2 registers a gathered unit's plain tensors in place of its DTensors; none otherwise
        if self.shadow is None:
            self.initialize(model)
        named = dict(model.named_parameters())
        missing = [n for n in self.shadow if n not in named]
        if missing:
            raise ValueError(f"The EMA teacher has parameters the model lacks: {missing[:5]}")
        params = self.params = [named[n] for n in self.shadow]
        if self.whole:  # a checkpoint's whole tensors: keep this rank's shards (all of them on one process)
            self.shadow = {n: local_part(t, p) for (n, t), p in zip(self.shadow.items(), params)}
            self.whole = False
        wrong = [n for n, p in zip(self.shadow, params) if self.shadow[n].shape != local_tensor(p).shape]
        if wrong:  # e.g. a teacher of whole tensors on a model sharded since, or the other way round
            raise ValueError(f"The EMA teacher's shapes differ from the model's (local shards under FSDP2) for "
                             f"{wrong[:5]}: initialize or load the teacher for the model as it is sharded now")
        if params and next(iter(self.shadow.values())).device != params[0].device:  # after a load or a move
            self.shadow = {n: t.to(p.device) for (n, t), p in zip(self.shadow.items(), params)}
        return params

    def update(self, model: nn.Module) -> None:
        """One EMA step towards the model's current parameters; call after every optimizer step."""
        params = self._params(model)
        ema_update_(list(self.shadow.values()), [local_tensor(p) for p in params], self.momentum)
        self.num_updates += 1

    @torch.no_grad()
    def logits(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        """f(x; θ̃): the model's forward with θ̃ swapped in for its trainable parameters, without dropout.

        The teacher gives a deterministic target (dropout off); the student's side keeps its training-mode noise.
        Under FSDP2 `functional_call` would mix plain tensors with the DTensors FSDP2 manages: the local shards are
        swapped in place instead.
        """
        params = self._params(model)
        kwargs = {k: v for k, v in inputs.items() if k != "labels"}
        was_training = model.training
        model.eval()
        try:
            if is_sharded(params):
                with swapped_shards(model, params, list(self.shadow.values())):
                    return model(**kwargs).logits
            swapped = {n: t if t.dtype == p.dtype else t.to(p.dtype) for (n, t), p in zip(self.shadow.items(), params)}
            return torch.func.functional_call(model, swapped, args=(), kwargs=kwargs, strict=False).logits
        finally:
            model.train(was_training)

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.shadow or {}).values())

    def state_dict(self) -> dict:
        """The shadows as whole tensors (gathered under FSDP2: call on every rank) and the number of updates."""
        shadow = self.shadow or {}
        if not self.whole and is_sharded(self.params):
            shadow = whole_tensors(shadow, self.params)
        return {**shadow, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.num_updates = int(state.pop("num_updates", 0))
        self.shadow = {n: t.float().clone() for n, t in state.items()}
        self.restored = self.whole = True


class SmartRegularizer(Regularizer):
    """λ_s R_s + μ D_Breg for the batches of the tasks in `tasks` (see the module docstring).

    Args:
        tasks: Names of the tasks to regularise.
        noise_std: σ, standard deviation of the initial noise ν_0 (the paper's σ = 1e-5).
        step_size: η of the ascent steps.
        epsilon: ε in g / (‖g‖_∞ + ε).
        radius: Optional bound on ‖ν‖_∞ (`None`: no projection, as in MT-DNN).
        steps: K, the number of ascent steps (0: random noise only).
        lambda_s: Weight of R_s (0 turns the adversarial term off).
        mu: Weight of D_Breg (0 turns the teacher off: no copy of the parameters is kept).
        momentum: β of the EMA teacher.

    Example:

    ```python
    >>> smart = SmartRegularizer(["sst", "sts"], steps=1, mu=1.0)  # doctest: +SKIP
    >>> outputs = model(**batch)  # doctest: +SKIP
    >>> loss = outputs.loss + smart.loss(model, batch, outputs, model.specs[batch["task_name"]])  # doctest: +SKIP
    >>> loss.backward(); optimizer.step(); smart.after_optimizer_step(model, applied=True)  # doctest: +SKIP
    ```
    """

    name = "smart"

    def __init__(self, tasks: list[str], noise_std: float = 1e-5, step_size: float = 1e-3, epsilon: float = 1e-6,
                 radius: float | None = None, steps: int = 1, lambda_s: float = 1.0, mu: float = 1.0,
                 momentum: float = 0.99):
        super().__init__(tasks)
        self.noise_std, self.step_size, self.epsilon, self.radius = noise_std, step_size, epsilon, radius
        self.steps, self.lambda_s, self.mu = steps, lambda_s, mu
        self.teacher = EmaTeacher(momentum) if mu > 0 else None
        self.seed, self.first_example, self.draws = 0, 0, 0  # the noise's keys (see `configure`, `example_noise`)

    def configure(self, args) -> None:
        """The noise's seed (`args.seed`) and this rank's place in the global batch (rank × per-device batch)."""
        self.seed = args.seed
        self.first_example = args.process_index * args.per_device_train_batch_size

    @property
    def log_names(self) -> tuple[str, ...]:
        return ("smart_adv",) * (self.lambda_s > 0) + ("smart_breg",) * (self.teacher is not None)

    @classmethod
    def options_from_args(cls, args) -> dict | None:
        """From the `smart_*` fields of [`MultitaskTrainingArguments`] (`None` when `smart_tasks` is unset)."""
        if getattr(args, "smart_tasks", None) is None:
            return None
        return dict(tasks=args.smart_tasks, noise_std=args.smart_noise_std, step_size=args.smart_step_size,
                    epsilon=args.smart_epsilon, radius=args.smart_radius, steps=args.smart_steps,
                    lambda_s=args.smart_lambda, mu=args.smart_mu, momentum=args.smart_momentum)

    def adversarial_noise(self, forward, embeds: list[torch.Tensor], clean_logits: torch.Tensor, kind: str | TaskKind,
                          noises: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """ν after `steps` ascent steps on l_s(forward(x + ν), clean), from `noises` or fresh N(0, σ²) draws.

        Args:
            forward: `forward(noises, detach)` -> logits at x + ν (see [`embedding_forward`]).
            embeds: The clean embeddings x, one `(batch, seq, hidden)` tensor per encoded input.
            clean_logits: f(x; θ), treated as a constant here.
            kind: The task's kind, or its name (picks l_s).
            noises: Starting ν_0 (float32), e.g. to inspect a step; `None` draws them.
        """
        if noises is None:
            noises = [init_noise(x, self.noise_std, self.radius) for x in embeds]
        target = clean_logits.detach()
        for _ in range(self.steps):
            noises = [n.detach().requires_grad_() for n in noises]
            # summed over the batch, so that ε compares with a per-example gradient whatever the batch size
            grads = torch.autograd.grad(smart_divergence(kind, forward(noises, True), target, "sum"), noises)
            noises = [ascent_step(n.detach(), g, self.step_size, self.epsilon, self.radius)
                      for n, g in zip(noises, grads)]
        return [n.detach() for n in noises]

    def adversarial_loss(self, model: nn.Module, inputs: dict, clean_logits: torch.Tensor,
                         kind: str | TaskKind) -> torch.Tensor:
        """R_s: l_s between the outputs at x + ν (ν found by `steps` ascent steps) and the clean outputs.

        Under autocast (bf16, fp16) the perturbed passes and their clean reference run in float32, the reference
        being one more forward pass: σ = 1e-5 on embeddings of size ~0.05 is below bf16's and fp16's resolution, so
        in the compute dtype ν would mostly round away, and l_s against the autocast clean logits would measure
        rounding rather than smoothness.
        """
        embeds, forward = embedding_forward(extract_model_from_parallel(model), inputs)
        masks = [inputs.get(mask) for ids, mask in (("input_ids", "attention_mask"),
                                                   ("input_ids_b", "attention_mask_b")) if inputs.get(ids) is not None]
        noises = [example_noise(x, mask, self.noise_std, self.radius, (self.seed, self.draws, stream),
                                self.first_example) for stream, (x, mask) in enumerate(zip(embeds, masks))]
        self.draws += 1  # the same count on every rank: every rank trains the same task at each step
        device = embeds[0].device.type
        autocast = torch.is_autocast_enabled(device)
        with torch.autocast(device, enabled=False):
            if autocast:
                clean_logits = forward([torch.zeros_like(n) for n in noises], False)  # f(x) in float32
            noises = self.adversarial_noise(forward, embeds, clean_logits, kind, noises)
            return smart_divergence(kind, forward(noises, False), clean_logits)

    def bregman_loss(self, model: nn.Module, inputs: dict, clean_logits: torch.Tensor,
                     kind: str | TaskKind) -> torch.Tensor:
        """D_Breg: l_s between the clean outputs and the EMA teacher's."""
        model = extract_model_from_parallel(model)
        return smart_divergence(kind, clean_logits, self.teacher.logits(model, inputs))

    def loss(self, model: nn.Module, inputs: dict, outputs, spec) -> torch.Tensor:
        """λ_s R_s + μ D_Breg for one batch of `spec`'s task, given the model's clean `outputs` on it."""
        total = outputs.logits.new_zeros((), dtype=torch.float32)
        self.logs = {}
        if self.lambda_s > 0:
            self.logs["smart_adv"] = self.adversarial_loss(model, inputs, outputs.logits, spec.task_kind)
            total = total + self.lambda_s * self.logs["smart_adv"]
        if self.teacher is not None:
            self.logs["smart_breg"] = self.bregman_loss(model, inputs, outputs.logits, spec.task_kind)
            total = total + self.mu * self.logs["smart_breg"]
        return total

    @property
    def has_state(self) -> bool:
        return True  # the count of noise draws, and the teacher

    def state_dict(self) -> dict:
        return {**(self.teacher.state_dict() if self.teacher is not None else {}), "noise_draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.draws = int(state.pop("noise_draws", 0))
        if self.teacher is not None and state:
            self.teacher.load_state_dict(state)

    def on_train_begin(self, model: nn.Module) -> None:
        """Start the teacher from the model's weights (after DDP's broadcast), unless a checkpoint restored it."""
        check_smart_units(model)  # under FSDP2 the word embedding must be a unit of its own
        if self.teacher is not None:
            if not self.teacher.restored:  # a resumed run continues the checkpoint's teacher
                self.teacher.initialize(model)
            self.teacher.restored = False

    def after_optimizer_step(self, model: nn.Module, applied: bool) -> None:
        """θ̃ ← β θ̃ + (1 - β) θ after every applied step (on every rank, so the teacher is the same everywhere)."""
        if self.teacher is not None and applied:
            self.teacher.update(model)


register_regularizer(SmartRegularizer)
