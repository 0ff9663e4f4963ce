"""`MultitaskTrainer`'s own training step on a tiny model sharded by FSDP2, as accelerate's FSDP plugin shards it on a
GPU, and the same steps unsharded in one process.

Usage: torchrun --nproc_per_node 2 fsdp_trainer_script.py OUT_DIR

accelerate does not shard on a CPU (the Trainer runs as MULTI_CPU, `is_fsdp_enabled` False), so this script does by
hand what `accelerator.prepare` does with `fsdp_version: 2` and a transformer-layer wrap policy: `fully_shard` on
each BERT layer (and the word embedding, for SMART: `fsdp_config={"transformer_layer_cls_to_wrap": ["BertLayer",
"Embedding"]}`), then on the whole model, in place, after the Trainer was built. It then drives the Trainer as its
training loop does: `on_train_begin`, `training_step` (the Trainer's, unchanged), the optimizer, `on_optimizer_step`.

Cases (each rank on its slice of the global batch; OUT_DIR/<case>-rank<r>.json has what the rank saw, rank 0 writes
the gathered weights to <case>-sharded.safetensors):

- `pcgrad`, `gradvac`: grouped steps with surgery; the Trainer switches to `ShardedGradientSurgery` by itself. The
  reference is fsdp_surgery_script's `run_whole` (`GradientSurgery` on the global batches, AdamW, same steps).
- `summed`: grouped batches without surgery (the summed-loss step); reference `run_whole("none")`.
- `smart`: one task per step with SMART (R_s and the Bregman term, SGD); reference fsdp_smart_script's `run_whole`.
  The teacher's `state_dict` (gathered on every rank) goes to smart-teacher.safetensors; each rank then loads it
  into a fresh teacher and checks that its first use cuts exactly this rank's shards.
- `smart_unwrapped_embedding`: SMART on a model whose word embedding is not a unit of its own: the error at start.
"""

import json
import sys
from contextlib import contextmanager

import fsdp_smart_script as smart_script  # torchrun puts this file's folder on sys.path
import fsdp_surgery_script as surgery_script
import torch
import torch.distributed as dist
from fsdp_surgery_script import BATCH, make_batch, make_model
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import TrainerControl

from hf_multitask import MultitaskTrainer, MultitaskTrainingArguments
from hf_multitask.regularizers import EmaTeacher
from hf_multitask.regularizers.smart_fsdp import local_tensor

CASES = {"pcgrad": {"gradient_surgery": "pcgrad"}, "gradvac": {"gradient_surgery": "gradvac"},
         "summed": {"task_sampling_grouped": True}}
SMART_ARGS = {"smart_tasks": ["sst", "quora", "sts"], "smart_noise_std": 1e-3, "smart_step_size": 1e-2,
              "smart_steps": 1, "smart_lambda": 1.0, "smart_mu": 1.0, "smart_momentum": 0.5}


def sharded_trainer(out_dir: str, changes: dict, embedding_unit: bool) -> MultitaskTrainer:
    """A Trainer built on the unsharded model, whose model is then sharded in place (what accelerate's FSDP2 does)."""
    model = make_model()
    args = MultitaskTrainingArguments(f"{out_dir}/run", use_cpu=True, report_to=[], per_device_train_batch_size=BATCH,
                                      disable_tqdm=True, **changes)
    trainer = MultitaskTrainer(model=model, args=args, data_collator=lambda features: features)
    if embedding_unit:
        fully_shard(model.get_input_embeddings())
    for layer in model.encoder.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    trainer.accelerator.no_sync = fsdp2_no_sync  # on a CPU accelerate's is a no-op; this is its FSDP2 branch
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    return trainer


@contextmanager
def fsdp2_no_sync(model):
    """What `Accelerator.no_sync` does under FSDP2 (accelerate/accelerator.py): no reduce-scatter in the backward."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def steps(trainer: MultitaskTrainer, batches: list[dict], optimizer: torch.optim.Optimizer) -> None:
    """The training loop's calls around the Trainer's `training_step`, one optimizer step per batch."""
    handler, control = trainer.callback_handler, TrainerControl()
    trainer.optimizer = optimizer
    handler.on_train_begin(trainer.args, trainer.state, control)
    for batch in batches:
        trainer.training_step(trainer.model, batch)
        optimizer.step()
        handler.on_optimizer_step(trainer.args, trainer.state, control)
        optimizer.zero_grad()


def save_gathered(model, path: str, rank: int) -> None:
    weights = {n: p.full_tensor().detach().contiguous() for n, p in model.named_parameters()}  # collectives
    if rank == 0:
        save_file(weights, path)


def run_surgery(out_dir: str, case: str, rank: int) -> None:
    trainer = sharded_trainer(out_dir, {**CASES[case], "seed": 0}, embedding_unit=False)
    model = trainer.model
    tasks = model.config.task_names
    batches = [{t: make_batch(t, step, rank) for t in tasks} for step in range(surgery_script.STEPS)]
    built = trainer.surgery  # before accelerate (here: by hand) sharded the model
    steps(trainer, batches, torch.optim.AdamW(model.parameters(), lr=surgery_script.LEARNING_RATE))
    surgery = trainer.surgery
    report = {"surgery": type(surgery).__name__, "stateful_is_surgery": trainer._stateful.get("gradient_surgery")
              is surgery, "buffer": list(surgery.buffer.shape) if surgery else None,
              "replaced_never_allocated": built is None or (built is not surgery and built._buffer is None),
              "local_shared": sum(local_tensor(p).numel() for _, p in model.named_shared_parameters()),
              "param_types": sorted({type(p).__name__ for p in model.parameters()})}
    with open(f"{out_dir}/{case}-rank{rank}.json", "w") as f:
        json.dump(report, f)
    save_gathered(model, f"{out_dir}/{case}-sharded.safetensors", rank)


def run_smart(out_dir: str, rank: int) -> None:
    trainer = sharded_trainer(out_dir, {**SMART_ARGS, "seed": smart_script.SEED}, embedding_unit=True)
    model = trainer.model
    batches = [make_batch(task, step, rank) for step, task in enumerate(smart_script.task_order(model))]
    steps(trainer, batches, torch.optim.SGD(model.parameters(), lr=smart_script.LEARNING_RATE))
    smart = trainer.regularizers["smart"]
    state = smart.state_dict()  # every rank: the teacher's whole tensors are gathered
    fresh = EmaTeacher(momentum=0.5)
    fresh.load_state_dict({k: v for k, v in state.items() if k != "noise_draws"})
    fresh._params(model)  # the first use cuts this rank's shards out of the whole tensors
    report = {"first_example": smart.first_example, "noise_draws": state["noise_draws"],
              "whole_shapes": all(state[n].shape == p.shape for n, p in model.named_parameters()),
              "cut_equal": all(torch.equal(fresh.shadow[n], t) for n, t in smart.teacher.shadow.items()),
              "cut_local": all(fresh.shadow[n].shape == local_tensor(p).shape and isinstance(p, DTensor)
                               for n, p in model.named_parameters())}
    with open(f"{out_dir}/smart-rank{rank}.json", "w") as f:
        json.dump(report, f)
    save_gathered(model, f"{out_dir}/smart-sharded.safetensors", rank)
    if rank == 0:
        teacher = {n: state[n].contiguous() for n, _ in model.named_parameters()}
        save_file(teacher, f"{out_dir}/smart-teacher.safetensors")


def run_unwrapped_embedding(out_dir: str, rank: int) -> None:
    trainer = sharded_trainer(out_dir, SMART_ARGS, embedding_unit=False)
    try:
        trainer.callback_handler.on_train_begin(trainer.args, trainer.state, TrainerControl())
        error = ""
    except ValueError as e:
        error = str(e)
    with open(f"{out_dir}/smart_unwrapped_embedding-rank{rank}.json", "w") as f:
        json.dump({"error": error}, f)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for case in CASES:
        run_surgery(out_dir, case, rank)
    run_smart(out_dir, rank)
    run_unwrapped_embedding(out_dir, rank)
    if rank == 0:
        for method in ("pcgrad", "gradvac", "none"):
            surgery_script.run_whole(out_dir, method, world)
        smart_script.run_whole(out_dir, world)


if __name__ == "__main__":
    main(*sys.argv[1:])
    from dist_exit import finish

    finish()
