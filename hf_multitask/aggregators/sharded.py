"""Gradient surgery under FSDP2 sharding: each rank keeps the per-task gradients of its own shard, `[T, P / world]`.

Every aggregator is a function of the `[K, T, T]` Gram matrices, and a Gram matrix is a sum over columns, so the
sum over ranks of each rank's partial Gram matrices (one all-reduce of `[K, T, T]`) is the whole model's. Every rank
then gets the same weights from the same [`aggregate`] call (the same generator, advanced identically) and combines
its own columns. No rank holds the whole `[T, P]` matrix.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

from .base import get_aggregator
from .surgery import GradientSurgery, combine, cosines_from_gram


def check_sharded(params: list[torch.nn.Parameter], names: list[str]) -> dist.ProcessGroup | None:
    """The process group that `params` are sharded over; an error naming the first parameter that is not a
    `fully_shard` DTensor sharded on a 1-D mesh (a replicated one would count in the Gram matrices once per rank),
    or that is sharded over other ranks than the first (the one all-reduce would miss some columns)."""
    group, ranks = None, None
    for name, p in zip(names, params):
        if not isinstance(p, DTensor):
            raise ValueError(f"ShardedGradientSurgery: parameter {name!r} is not a DTensor; wrap the model with "
                             "torch.distributed.fsdp.fully_shard first, or use GradientSurgery")
        if p.device_mesh.ndim != 1 or not isinstance(p.placements[0], Shard):
            raise ValueError(f"ShardedGradientSurgery: parameter {name!r} has placements {p.placements} on a "
                             f"{p.device_mesh.ndim}-D mesh; only FSDP2's 1-D sharding (Shard) is supported")
        own = dist.get_process_group_ranks(p.device_mesh.get_group())
        if ranks is not None and own != ranks:
            raise ValueError(f"ShardedGradientSurgery: parameter {name!r} is sharded over ranks {own}, parameter "
                             f"{names[0]!r} over {ranks}; the shared parameters must be sharded over the same ranks")
        group, ranks = p.device_mesh.get_group(), own
    return group


class ShardedGradientSurgery(GradientSurgery):
    """[`GradientSurgery`] for parameters sharded by FSDP2 (`fully_shard`): a `[T, local]` buffer of this rank's shard.

    Same use as `GradientSurgery`: after each task's backward pass (FSDP2 has reduce-scattered, so `.grad` is this
    rank's shard of the gradient averaged over ranks), [`accumulate`] adds it to the task's row; [`combine`] writes
    this rank's shard of the aggregated update into `.grad` (a DTensor, as FSDP2 left it). The buffer is
    T × (this rank's elements) float32: T × P / world × 4 bytes, shards of uneven size included. Every rank must call
    `combine` at the same step (it all-reduces). Equal to `GradientSurgery` on the whole gradients to fp32 tolerance
    (`tests/test_fsdp_surgery.py`).

    Args:
        method: A registered aggregator (`aggregator_names()`), as for `GradientSurgery`.
        params: The shared trainable parameters, in the same order on every rank: DTensors sharded by `fully_shard`
            on one 1-D mesh (`model.named_shared_parameters()` after `fully_shard`).
        num_tasks: T.
        seed: Seeds the generator of the visiting orders; the same on every rank.
        gradvac_beta: EMA rate of GradVac's targets.
        gradvac_per_layer: A per-segment method (GradVac) gets one Gram matrix per parameter group (`segment_ids`)
            instead of one overall.
        segment_ids: Group id (`MultitaskModel.parameter_group(name)`) of every parameter, for `gradvac_per_layer`.
        names: The parameters' names, for error messages (default `params[i]`).

    Example (after `fully_shard` on each encoder layer and on the model; `shared = model.named_shared_parameters()`;
    docs/scaling.md has the whole loop, which the tests run):

    ```python
    surgery = ShardedGradientSurgery("pcgrad", [p for _, p in shared], num_tasks=len(batches),
                                     names=[n for n, _ in shared])
    surgery.zero_()
    for i, batch in enumerate(batches):           # one batch of every task
        model(**batch).loss.backward()            # FSDP2 reduce-scatters: .grad is this rank's shard
        surgery.accumulate(i)
    surgery.combine()                             # one [K, T, T] all-reduce; .grad = this rank's update
    optimizer.step()
    optimizer.zero_grad()
    ```
    """

    def __init__(self, method: str, params: list[torch.nn.Parameter], num_tasks: int, seed: int = 0,
                 gradvac_beta: float = 0.01, gradvac_per_layer: bool = True, segment_ids: list | None = None,
                 aggregator_options: dict | None = None, names: list[str] | None = None):
        get_aggregator(method)  # an unknown method is named before the parameters are checked
        names = names if names is not None else [f"params[{i}]" for i in range(len(params))]
        if len(names) != len(params):
            raise ValueError(f"ShardedGradientSurgery: names has {len(names)} entries for {len(params)} params")
        self.group = check_sharded(params, names)
        super().__init__(method, params, num_tasks, seed=seed, gradvac_beta=gradvac_beta,
                         gradvac_per_layer=gradvac_per_layer, segment_ids=segment_ids,
                         aggregator_options=aggregator_options)

    @staticmethod
    def local_part(param: torch.Tensor) -> torch.Tensor:
        """This rank's shard of `param` (its rows of the buffer hold only those columns)."""
        return param.to_local()

    def store(self, task_index: int, index: int, grad: torch.Tensor) -> None:
        """[`GradientSurgery.store`] of this rank's shard of `grad` (FSDP2 leaves a DTensor in `.grad`)."""
        super().store(task_index, index, grad.to_local() if isinstance(grad, DTensor) else grad)

    def combine(self) -> None:
        """All-reduce the partial Gram matrices, aggregate, and write this rank's shard of the update into `.grad`."""
        if not self.params:
            return
        total, grams, count = combine(self.aggregator, self.buffer, self.generator, self.runs, self.total,
                                      self.grams, num_segments=self.num_segments, reduce_grams=self._sum_over_ranks)
        self.cosine_sum += cosines_from_gram(grams.sum(0)).cpu()
        self.steps += 1
        self.adjustments += count
        for p, flat, shape in zip(self.params, total.split(self.numels), self.shapes):
            p.grad = DTensor.from_local(flat.view(shape).to(p.dtype), p.device_mesh, p.placements, run_check=False,
                                        shape=p.shape, stride=p.stride())

    def _sum_over_ranks(self, grams: torch.Tensor) -> torch.Tensor:
        """The whole model's Gram matrices from this rank's partial ones `[K, T, T]`, in float64.

        float64 because the partials may exceed float32's range (`gram_matrices` rescales an overflowing float32
        Gram matrix into float64), and their float64 sum adds no rounding of its own; the tensor is K × T × T
        numbers (a few KiB), so the wider type costs nothing measurable in the collective.
        """
        dist.all_reduce(grams, op=dist.ReduceOp.SUM, group=self.group)
        return grams
