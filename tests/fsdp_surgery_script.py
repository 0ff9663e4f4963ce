"""Grouped steps with gradient surgery on a tiny model sharded by FSDP2 (`fully_shard`), and the same steps unsharded.

Usage: torchrun --nproc_per_node 2 fsdp_surgery_script.py OUT_DIR METHOD [METHOD ...]

For each METHOD (a registered aggregator), every rank trains the sharded model for STEPS grouped steps (one batch of
every task, its own batch of each: a different slice of the global batch per rank) with `ShardedGradientSurgery`
and SGD, and writes OUT_DIR/<method>-rank<r>.json (its buffer's shape, its surgery's state and logged stats).
Rank 0 also writes the sharded run's final weights (gathered) to <method>-sharded.safetensors, then trains the
unwrapped model alone with `GradientSurgery` on the global batches (each rank's batch with loss / world, as FSDP2
averages over ranks) and writes <method>-whole.safetensors. Vocabulary 99 and intermediate size 37 make uneven
shards (50 / 49 rows, 19 / 18).
"""

import json
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, distribute_tensor
from transformers import BertConfig

from hf_multitask import GradientSurgery, MultitaskConfig, MultitaskModel, cs224n_tasks
from hf_multitask.aggregators import ShardedGradientSurgery

STEPS, BATCH, LENGTH = 3, 2, 9


def make_model() -> MultitaskModel:
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return MultitaskModel(MultitaskConfig(encoder=config, tasks=cs224n_tasks(), classifier_dropout=0.0))


def make_batch(task_name: str, step: int, rank: int) -> dict:
    """A fixed batch of `task_name` for (step, rank): random token ids, labels of the task's kind."""
    generator = torch.Generator().manual_seed(1000 * step + 10 * rank + len(task_name))
    ids = torch.randint(5, 99, (BATCH, LENGTH), generator=generator)
    labels = {"sst": torch.randint(0, 5, (BATCH,), generator=generator),
              "quora": torch.randint(0, 2, (BATCH,), generator=generator),
              "sts": torch.rand(BATCH, generator=generator) * 5}[task_name]
    return {"task_name": task_name, "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def make_surgery(cls, model: MultitaskModel, method: str):
    shared = model.named_shared_parameters()
    names = {"names": [n for n, _ in shared]} if cls is ShardedGradientSurgery else {}
    return cls(method, [p for _, p in shared], num_tasks=len(model.config.task_names), seed=0,
               segment_ids=[model.parameter_group(n) for n, _ in shared], **names)


def train(model: MultitaskModel, surgery, ranks: list[int], world: int) -> list[str]:
    """STEPS grouped steps: per task, backward of each rank's loss in `ranks` (divided by `world`), accumulate;
    then combine and an SGD step. Returns the type names of the shared parameters' `.grad` after `combine`.

    SGD, not AdamW: AdamW divides by the root of the second moment, which turns rounding-level gradients of
    parameters whose exact gradient is zero (attention key biases) into steps of size ~lr, and so compares
    rounding rather than surgery (with AdamW(lr=1e-2) the two runs differed by 2.5e-5 in key biases only).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for step in range(STEPS):
        surgery.zero_()
        for index, task_name in enumerate(model.config.task_names):
            for rank in ranks:
                (model(**make_batch(task_name, step, rank)).loss / world).backward()
            surgery.accumulate(index)
        surgery.combine()
        grad_types = sorted({type(p.grad).__name__ for p in surgery.params})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return grad_types


def replicated_is_refused(mesh) -> str:
    """The error for a replicated (not sharded) DTensor parameter."""
    param = torch.nn.Parameter(distribute_tensor(torch.zeros(4), mesh, [Replicate()]))
    try:
        ShardedGradientSurgery("pcgrad", [param], num_tasks=2, names=["replicated.weight"])
    except ValueError as error:
        return str(error)
    return ""


def run_sharded(out_dir: str, method: str, rank: int, world: int) -> None:
    model = make_model()
    for layer in model.encoder.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    surgery = make_surgery(ShardedGradientSurgery, model, method)
    grad_types = train(model, surgery, [rank], 1)  # FSDP2 averages each task's gradient over the ranks
    stats = surgery.pop_stats(model.config.task_names)
    state = {k: v.tolist() if torch.is_tensor(v) else v for k, v in surgery.state_dict().items()}
    report = {"buffer": list(surgery.buffer.shape), "shared": sum(p.numel() for p in surgery.params),
              "stats": stats, "state": state, "grad_types": grad_types,
              "refused": replicated_is_refused(surgery.params[0].device_mesh)}
    with open(f"{out_dir}/{method}-rank{rank}.json", "w") as f:
        json.dump(report, f)
    weights = {n: p.full_tensor().detach().contiguous() for n, p in model.named_parameters()}  # a collective
    if rank == 0:
        save_file(weights, f"{out_dir}/{method}-sharded.safetensors")


def run_whole(out_dir: str, method: str, world: int) -> None:
    model = make_model()
    train(model, make_surgery(GradientSurgery, model, method), list(range(world)), world)
    weights = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    save_file(weights, f"{out_dir}/{method}-whole.safetensors")


def main(out_dir: str, *methods: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for method in methods:
        run_sharded(out_dir, method, rank, world)
        if rank == 0:
            run_whole(out_dir, method, world)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
