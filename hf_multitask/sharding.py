"""Sharded training through the Trainer: what runs under FSDP2, what is refused at start, and the surgery's switch to
this rank's shards once accelerate has sharded the model.

accelerate's FSDP plugin (fsdp_version 2) applies `fully_shard` in place when the Trainer prepares the model, after
[`MultitaskTrainer`] was built: the shared parameters the surgery was given are then replaced by DTensors. At the
first grouped step [`sharded_surgery`] rebuilds the surgery as a [`ShardedGradientSurgery`] over the new
parameters, with the old one's state (the aggregator's, the generator's; a resumed run's included). Each task's
backward then reduce-scatters as FSDP2 does by default, so the rows hold this rank's shard of the gradient already
averaged over ranks, and the Trainer neither skips the synchronisation nor averages the buffer itself.

Supported with FSDP2: plain training, grouped batches with any aggregator (gradient surgery) or the summed-loss
step, and SMART (its word embedding must be an FSDP2 unit of its own: [`check_smart_units`]). Refused at start, with
the reason: DeepSpeed or FSDP1 with any of them, and FSDP2 with a loss weighting or another regulariser (not tested).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from .aggregators import GradientSurgery, ShardedGradientSurgery

SMART_WRAP = '"transformer_layer_cls_to_wrap": ["BertLayer", "Embedding"]'


def sharding_refusal(kind: str | None, version: int, args) -> str | None:
    """Why `args` cannot train under `kind` ("fsdp", "deepspeed" or None) of FSDP `version`; None when it can."""
    if kind is None:
        return None
    weighting = getattr(args, "loss_weighting", "none")  # anything but "none" groups the batches
    grouped = (getattr(args, "task_sampling_grouped", False) or getattr(args, "gradient_surgery", "none") != "none"
               or weighting != "none")
    smart, others = bool(getattr(args, "smart_tasks", None)), dict(getattr(args, "regularizers", None) or {})
    smart = smart or "smart" in others
    others.pop("smart", None)
    if kind == "deepspeed" or version != 2:
        if grouped or smart or others:
            name = "deepspeed" if kind == "deepspeed" else "fsdp (FSDP1)"
            return (f"{name} with grouped batches (gradient surgery), SMART or other regularisers is not supported: "
                    "they need each task's whole gradient, or the whole weights outside the model's forward, which "
                    "ZeRO and FSDP1 do not give. Use FSDP2 (fsdp_config version 2, the default), or DDP (torchrun / "
                    "accelerate launch without sharding); docs/scaling.md")
        return None
    if weighting != "none" or others:
        what = f"loss_weighting={weighting!r}" if weighting != "none" else f"the regularisers {sorted(others)}"
        return (f"fsdp with {what} is not supported (not tested under sharding); FSDP2 supports gradient surgery, "
                "the summed-loss grouped step and SMART. Train with DDP instead; docs/scaling.md")
    return None


def check_sharded_trainer(trainer) -> None:
    """The same refusal at the Trainer, for sharding that an `accelerate launch` config turned on without `fsdp` in
    the training arguments (the Trainer's `is_fsdp_enabled` / `is_deepspeed_enabled`)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    kind = "deepspeed" if trainer.is_deepspeed_enabled else "fsdp" if trainer.is_fsdp_enabled else None
    reason = sharding_refusal(kind, getattr(plugin, "fsdp_version", 2), trainer.args)
    if reason:
        raise ValueError(reason)


def sharded_surgery(surgery: GradientSurgery, model: nn.Module, root: nn.Module, **options) -> GradientSurgery:
    """`surgery`, or its sharded twin when `model`'s shared parameters have become DTensors since it was built.

    Args:
        surgery: The Trainer's surgery, built over the parameters the model had at the Trainer's construction.
        model: The [`MultitaskModel`] (sharded in place by accelerate's FSDP2, or not).
        root: What the Trainer trains (`model`, or a wrapper): the parameters' names are taken from it.
        options: `gradvac_beta`, `gradvac_per_layer`, `aggregator_options`, as `surgery` was built with.
    """
    if isinstance(surgery, ShardedGradientSurgery) or not any(isinstance(m, FSDPModule) for m in root.modules()):
        return surgery
    reshard_all(root)
    shared = model.named_shared_parameters(root=root)
    if not shared:
        return surgery
    sharded = ShardedGradientSurgery(
        surgery.method, [p for _, p in shared], num_tasks=surgery.num_tasks,
        segment_ids=[model.parameter_group(n) for n, _ in shared], names=[n for n, _ in shared], **options)
    sharded.load_state_dict(surgery.state_dict())  # the generator's and the aggregator's state go on
    return sharded


def reshard_all(model: nn.Module) -> None:
    """Free every FSDP2 unit's gathered parameters, so that the next forward all-gathers from the local shards.

    A gathered unit registers plain tensors in place of its DTensors, so `named_parameters()` sees the sharded
    parameters only after this. The root unit is not resharded after its forward by default (its parameters are
    needed first in the backward pass); without this its gathered copy would also hide a swap of the shards.
    """
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def check_smart_units(model: nn.Module) -> None:
    """Under FSDP2, SMART calls the word embedding outside the model's forward: it must be an FSDP2 unit of its own,
    whose hooks gather it wherever it is called (`smart_fsdp.fully_shard_for_smart` makes it one)."""
    if any(isinstance(p, DTensor) for p in model.parameters()) and not isinstance(
            model.get_input_embeddings(), FSDPModule):
        raise ValueError("SMART under FSDP2 needs the word embedding as an FSDP2 unit of its own (it is called "
                         "outside the model's forward). With the Trainer, wrap it by class name: fsdp_config = "
                         f"{{{SMART_WRAP}}}; in a loop of your own, shard with fully_shard_for_smart; docs/scaling.md")
