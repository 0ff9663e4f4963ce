"""Cost of gradient surgery against the grouped `none` step, on the bundled all-MiniLM-L6-v2.

One optimizer step over the same T task batches (one batch of each task: forward, backward per task, surgery,
clipping, AdamW step) through `MultitaskTrainer.training_step`, for `gradient_surgery` = none | pcgrad | gradvac.
The variants run interleaved (one step of each in turn, repeated) and the median per variant is compared with the
median of `none` from the same run. Peak memory is measured per variant in a subprocess of its own (`ru_maxrss`),
since CPU has no per-phase peak counter; its growth over `none` is compared with T x P x 4 bytes (P = shared
trainable parameters).

    HF_HUB_OFFLINE=1 python benchmarks/bench_gradients.py --threads 2 --repeats 10 --output grad_bench.json
    HF_HUB_OFFLINE=1 python benchmarks/bench_gradients.py --smoke     # tiny random model: checks the script
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import AutoTokenizer, BertConfig

from hf_multitask import (
    MultitaskCollator,
    MultitaskConfig,
    MultitaskDataset,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    cs224n_tasks,
    load_task_data,
    resolve_encoder_path,
    tokenize_task,
)

METHODS = ("none", "pcgrad", "gradvac")
DATA_DIR = "../shared/data"


def build(args, method: str):
    """A trainer in grouped mode and one fixed grouped batch of `args.batch_size` real examples per task."""
    tasks = cs224n_tasks()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path("minilm"))
    if args.smoke:
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=37)
        model = MultitaskModel(MultitaskConfig(encoder=config, tasks=tasks))
    else:
        model = MultitaskModel.from_encoder("minilm", tasks)
    data = {t.name: tokenize_task(load_task_data(t, args.data_dir, splits=("dev",))["dev"].select(
        range(args.batch_size)), t, tokenizer) for t in tasks}
    training_args = MultitaskTrainingArguments(
        output_dir=tempfile.mkdtemp(), gradient_surgery=method, task_sampling_grouped=True, report_to=[],
        use_cpu=True, per_device_train_batch_size=args.batch_size, learning_rate=1e-5, disable_tqdm=True,
    )
    trainer = MultitaskTrainer(model=model, args=training_args, train_dataset=data, processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    dataset = MultitaskDataset(data)
    batch = MultitaskCollator(tokenizer)(dataset.__getitems__(list(range(len(dataset)))))
    return trainer, batch


def step(trainer, batch) -> float:
    """One full optimizer step; returns its wall time in seconds."""
    start = time.perf_counter()
    trainer.training_step(trainer.model, batch)
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
    trainer.optimizer.step()
    trainer.model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure_memory(args, method: str) -> int:
    """Peak RSS (bytes) of a process that builds the model and runs 3 steps of `method`."""
    command = [sys.executable, __file__, "--memory_of", method, "--threads", str(args.threads),
               "--batch_size", str(args.batch_size), "--data_dir", args.data_dir] + (["--smoke"] if args.smoke else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--data_dir", default=DATA_DIR)
    parser.add_argument("--smoke", action="store_true", help="Tiny random model, 2 repeats.")
    parser.add_argument("--output", help="Write the results as JSON here.")
    parser.add_argument("--memory_of", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        trainer, batch = build(args, args.memory_of)
        for _ in range(3):
            step(trainer, batch)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return
    repeats = 2 if args.smoke else args.repeats
    setups = {method: build(args, method) for method in METHODS}
    for method in METHODS:  # warm-up
        step(*setups[method])
    times = {method: [] for method in METHODS}
    for _ in range(repeats):
        for method in METHODS:
            times[method].append(step(*setups[method]))
    medians = {m: statistics.median(t) for m, t in times.items()}
    num_shared = sum(p.numel() for p in setups["none"][0].surgery.params)
    bound = len(cs224n_tasks()) * num_shared * 4
    memory = {m: measure_memory(args, m) for m in METHODS}
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "model": "tiny random BERT (smoke)" if args.smoke else "all-MiniLM-L6-v2",
        "batch_per_task": args.batch_size, "repeats": repeats, "shared_parameters": num_shared,
        "median_step_s": medians, "ratio_to_none": {m: medians[m] / medians["none"] for m in METHODS},
        "peak_rss_bytes": memory, "rss_growth_over_none_bytes": {m: memory[m] - memory["none"] for m in METHODS},
        "bound_TxPx4_bytes": bound,
    }
    print(f"{'method':<8} {'median step (s)':>16} {'ratio to none':>14} {'peak RSS (MB)':>14} {'growth (MB)':>12}")
    for m in METHODS:
        print(f"{m:<8} {medians[m]:>16.3f} {results['ratio_to_none'][m]:>14.3f} {memory[m] / 2**20:>14.0f} "
              f"{(memory[m] - memory['none']) / 2**20:>12.0f}")
    print(f"T x P x 4 bytes = {bound / 2**20:.0f} MB (P = {num_shared:,} shared parameters)")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
