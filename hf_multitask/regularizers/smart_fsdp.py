"""SMART on a model sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`), in a training loop of your own.

SMART reaches the weights in two places where FSDP2's hooks do not gather them for it (torch 2.13, measured with 2
ranks on CPU):

- R_s calls the word embeddings on the batch's ids outside the model's forward (`embedding_forward`). In the root
  unit they are gathered then only because FSDP2 keeps the root gathered after its forward by default; with
  `reshard_after_forward=True` they are sharded and the call fails ("mixed torch.Tensor and DTensor").
  [`fully_shard_for_smart`] makes the word embedding its own unit, whose own hooks gather it wherever it is called.
- The EMA teacher's `functional_call` runs, but FSDP2's hooks put their gathered parameters back in place of the
  swapped ones: the teacher's outputs would be the model's, and D_Breg 0. Under FSDP2 the teacher instead keeps
  float32 shadows of this rank's local shards (4 × P / world bytes, not 4 × P) and [`swapped_shards`] copies them
  into the sharded parameters for the teacher's forward: FSDP2 all-gathers the teacher's weights as it would the
  model's, unit by unit, and no rank keeps θ̃ whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from ..sharding import reshard_all


def fully_shard_for_smart(model: nn.Module, layers: Iterable[nn.Module] = (), **kwargs) -> nn.Module:
    """`fully_shard` a model for SMART: the word embedding (`model.get_input_embeddings()`) as its own unit, then
    each of `layers`, then the model as the root unit.

    Args:
        model: E.g. a `MultitaskModel`, on this rank's device, after `dist.init_process_group`.
        layers: Modules to shard as units of their own, as in any FSDP2 setup (a BERT's
            `model.encoder.encoder.layer`); the word embedding is sharded first whatever they are.
        kwargs: Passed to every `fully_shard` call (`mesh`, `reshard_after_forward`, ...).

    Returns: The model, sharded in place.
    """
    fully_shard(model.get_input_embeddings(), **kwargs)
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def local_tensor(param: torch.Tensor) -> torch.Tensor:
    """This rank's shard of `param` when it is a DTensor (a view of FSDP2's sharded storage), else `param`."""
    return param.to_local() if isinstance(param, DTensor) else param


def is_sharded(params: Iterable[torch.Tensor]) -> bool:
    """Whether any of `params` is a DTensor: the teacher then takes the swapping path."""
    return any(isinstance(p, DTensor) for p in params)


@contextmanager
def swapped_shards(model: nn.Module, params: list[torch.Tensor], shadows: list[torch.Tensor]) -> Iterator[None]:
    """Within the block, `model`'s parameters `params` hold `shadows` (this rank's shards, cast to their dtype).

    The model's own shards are copied aside (P / world elements in the parameters' dtype, for the block's length)
    and copied back in place, after resharding again: FSDP2 all-gathers from the same storage, and the autograd
    graph of earlier forwards holds the gathered copies, which its backward pass gathers again from the restored
    shards. The block runs without gradients: it is for the teacher's forward only.

    Args:
        model: The sharded model (every `FSDPModule` in it is resharded on entry and on exit).
        params: Its parameters in the order of `shadows`, as `named_parameters()` gives them with every unit
            resharded: DTensors (plain tensors, e.g. in one process, are swapped whole).
        shadows: One tensor of each parameter's local shape.
    """
    targets = [local_tensor(p) for p in params]
    with torch.no_grad():
        reshard_all(model)
        saved = [t.clone() for t in targets]
        torch._foreach_copy_(targets, [s.to(t.dtype) for s, t in zip(shadows, targets)])
        try:
            yield
        finally:
            reshard_all(model)
            torch._foreach_copy_(targets, saved)


def whole_tensors(shadows: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The whole tensors of which `shadows` hold this rank's shards, sharded as `params` (in the same order) are; a
    collective when any is a DTensor (every rank must call it at once). Shadows of plain parameters are returned
    as they are."""
    return {n: DTensor.from_local(t, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                  stride=p.stride()).full_tensor() if isinstance(p, DTensor) else t
            for (n, t), p in zip(shadows.items(), params)}


def local_part(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's shard of `whole`, cut as the DTensor `param` is sharded, without communication; `whole` itself
    when `param` is a plain tensor."""
    if not isinstance(param, DTensor):
        return whole
    return distribute_tensor(whole.to(param.device), param.device_mesh, param.placements,
                             src_data_rank=None).to_local()
