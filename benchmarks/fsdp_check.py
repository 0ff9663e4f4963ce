"""The Trainer path under accelerate's FSDP2 plugin: `MultitaskTrainer.train()` with grouped PCGrad and SMART, sharded
by accelerate, and the same run unsharded; `gpu_check.py` launches both (one process per GPU).

    torchrun --nproc_per_node 1 benchmarks/fsdp_check.py --sharded --output fsdp2.json       # on a GPU, bf16
    torchrun --nproc_per_node 1 benchmarks/fsdp_check.py --output unsharded.json             # the same, no FSDP
    torchrun --nproc_per_node 1 benchmarks/fsdp_check.py --sharded --smoke --output f.json   # tiny model, CPU

One run per process (accelerate's state is per process). A run trains `--steps` optimizer steps on synthetic
batches (random token ids of each task's shape; BERT-base shapes, random weights) and reports whether accelerate
sharded the model (`is_fsdp_enabled`, the parameters' type), the surgery's class after training
(`ShardedGradientSurgery` under FSDP2), the median step time from the third step on, the peak GPU memory and the
logged losses. accelerate does not shard on a CPU, so `--smoke` runs the same Trainer calls unsharded: it checks
the script, not FSDP (tests/fsdp_trainer_script.py tests the sharded step on CPU below accelerate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import BertConfig, BertTokenizerFast, TrainerCallback

from hf_multitask import MultitaskConfig, MultitaskModel, MultitaskTrainer, MultitaskTrainingArguments, cs224n_tasks

CLS, SEP = 2, 3  # pad_tokenizer's ids
FSDP_CONFIG = {"version": 2}  # accelerate's default wrap: the model's _no_split_modules, "Embedding" included


class StepClock(TrainerCallback):
    """The wall time of every optimizer step (CUDA-synchronised on a GPU)."""

    def __init__(self):
        self.times, self.last = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.last)


def encoder_config(smoke: bool) -> BertConfig:
    if smoke:
        return BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37)
    return BertConfig()  # bert-base-uncased's shapes


def task_datasets(config: BertConfig, rows: int, length: int) -> dict[str, Dataset]:
    """`rows` examples of each CS224N task: random ids (one segment, or a cross-encoded pair), labels of its kind."""
    generator, data = torch.Generator().manual_seed(0), {}
    for spec in cs224n_tasks():
        ids = torch.randint(5, config.vocab_size, (rows, length), generator=generator)
        types = torch.zeros_like(ids)
        ids[:, 0], ids[:, -1] = CLS, SEP
        if spec.is_pair:  # [CLS] a [SEP] b [SEP]
            ids[:, length // 2 - 1] = SEP
            types[:, length // 2:] = 1
        labels = (torch.rand(rows, generator=generator) * 5 if spec.kind == "regression"
                  else torch.randint(0, spec.num_labels, (rows,), generator=generator))
        columns = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": types, "labels": labels}
        data[spec.name] = Dataset.from_dict({name: column.tolist() for name, column in columns.items()})
    return data


def pad_tokenizer() -> BertTokenizerFast:
    """A tokenizer for the collator's padding only (the ids are synthetic): a vocabulary file of special tokens."""
    path = f"{tempfile.mkdtemp()}/vocab.txt"
    with open(path, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
    return BertTokenizerFast(vocab_file=path)


def run(args, sharded: bool) -> dict:
    config = encoder_config(args.smoke)
    world = dist.get_world_size() if dist.is_initialized() else 1
    data = task_datasets(config, args.batch_size * world * (args.steps + 1), args.length)
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=config, tasks=cs224n_tasks(), pooling="cls"))
    options = dict(fsdp=True, fsdp_config=FSDP_CONFIG) if sharded else {}
    training_args = MultitaskTrainingArguments(
        tempfile.mkdtemp(), report_to=[], use_cpu=args.smoke, bf16=not args.smoke, max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=1e-5, logging_steps=1, save_strategy="no",
        disable_tqdm=True, gradient_surgery="pcgrad", smart_tasks=["sst"], **options)
    clock = StepClock()
    trainer = MultitaskTrainer(model=model, args=training_args, train_dataset=data, processing_class=pad_tokenizer(),
                               callbacks=[clock])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"fsdp_requested": sharded, "is_fsdp_enabled": trainer.is_fsdp_enabled,
            "parameters": sorted({type(p).__name__ for p in trainer.model.parameters()}),
            "surgery": type(trainer.surgery).__name__, "processes": world,
            "step_ms_median": round(1000 * statistics.median(clock.times[2:] or clock.times), 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else 0.0,
            "last_loss": losses[-1] if losses else None,
            "loss_finite": bool(losses) and all(map(lambda x: x == x and abs(x) != float("inf"), losses))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--sharded", action="store_true", help="train under accelerate's FSDP2 plugin")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (no sharding): checks the script")
    parser.add_argument("--output", help="write the results as JSON here (rank 0)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch_size, args.length = 4, 2, 16
    elif not torch.cuda.is_available():
        raise SystemExit("fsdp_check: no GPU here; --smoke checks the script")
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke)",
              "dtype": "fp32 (smoke)" if args.smoke else "bf16 autocast", "torch": torch.__version__,
              "batch": [args.batch_size, args.length], "steps": args.steps,
              **run(args, args.sharded)}
    if args.sharded and not args.smoke:  # what the check is for: say plainly when accelerate did not shard
        result["sharded_as_expected"] = (result["is_fsdp_enabled"] and result["parameters"] == ["DTensor"]
                                         and result["surgery"] == "ShardedGradientSurgery")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        print(json.dumps(result, indent=2))
        if args.output:
            with open(args.output, "w") as f:
                json.dump(result, f, indent=2)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
