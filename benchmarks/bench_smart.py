"""Cost of SMART against a plain training step, on the bundled all-MiniLM-L6-v2.

Three variants, each a full training step (forward, backward, optimizer step; the Bregman variant also updates its
EMA teacher, as the Trainer's callback does) through `MultitaskTrainer.training_step`, on fixed SST and STS
batches of real sentences from the shared data:

    plain         the task loss
    adv           + λ_s R_s with K ascent steps (default K = 1), no teacher
    adv_breg      + λ_s R_s + μ D_Breg with the EMA teacher

The variants run interleaved (one step of each in turn, repeated), so slow drifts of a shared machine hit them
alike; medians per variant and task, and ratios to plain from the same run. Floor of the ratios, counting a
backward as two forwards and the ascent's backward (input gradients only) as one: adv (6 + 2K) / 3 = 2.67 at K = 1,
adv_breg (7 + 2K) / 3 = 3.0 (see docs/smart.md). The teacher's memory is exact (float32 copy of the trainable
parameters); `--rss` adds the peak resident memory of each variant, measured in a subprocess of its own.

    HF_HUB_OFFLINE=1 python benchmarks/bench_smart.py --threads 2 --repeats 20 --output smart_bench.json
    HF_HUB_OFFLINE=1 python benchmarks/bench_smart.py --smoke      # tiny random model, 2 repeats: checks the script
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from bench_stats import median_interval
from transformers import AutoTokenizer, BertConfig

from hf_multitask import (
    MultitaskConfig,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    load_task_data,
    resolve_encoder_path,
    sst_task,
    sts_task,
    tokenize_task,
)

VARIANTS = {"plain": None, "adv": {"smart_mu": 0.0}, "adv_breg": {"smart_mu": 1.0}}
LIMITS = {"adv": 3.0, "adv_breg": 3.4}  # the bounds on the measured ratios


def floor_ratio(variant: str, steps: int) -> float:
    """Forward-pass units of a step over those of a plain step (3: forward + backward)."""
    return {"plain": 3, "adv": 6 + 2 * steps, "adv_breg": 7 + 2 * steps}[variant] / 3


def build(args):
    """Model, tokenizer and the fixed `{task: batch}` of `args.batch_size` real examples."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path("minilm"))
    tasks = [sst_task(), sts_task()]
    if args.smoke:
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=37, max_position_embeddings=512)
        torch.manual_seed(0)
        model = MultitaskModel(MultitaskConfig(encoder=config, tasks=tasks))
    else:
        model = MultitaskModel.from_encoder("minilm", tasks=tasks)
    batches = {}
    with tempfile.TemporaryDirectory() as head_dir:  # the first rows only: loading whole files would set the RSS peak
        for spec in tasks:
            with open(os.path.join(args.data_dir, f"{spec.name}-train.tsv"), encoding="utf-8") as f:
                head = [next(f) for _ in range(args.batch_size + 1)]
            with open(os.path.join(head_dir, f"{spec.name}-train.tsv"), "w", encoding="utf-8") as f:
                f.writelines(head)
            train = load_task_data(spec, head_dir, splits=("train",))["train"]
            batches[spec.name] = tokenize_task(train, spec, tokenizer)
    return model, tokenizer, batches


def make_trainer(model, tokenizer, data, variant: str, args, out_dir: str) -> MultitaskTrainer:
    smart = {} if VARIANTS[variant] is None else {"smart_tasks": list(data), "smart_steps": args.smart_steps,
                                                  **VARIANTS[variant]}
    training_args = MultitaskTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, learning_rate=1e-5, report_to=[],
        use_cpu=args.cpu, bf16=args.bf16, seed=0, **smart)
    trainer = MultitaskTrainer(model=model, args=training_args, train_dataset=data, processing_class=tokenizer)
    trainer.model = trainer.model_wrapped = trainer.accelerator.prepare_model(trainer.model)  # bf16: autocast forward
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, read by training_step
    for regularizer in trainer.regularizers.values():
        regularizer.on_train_begin(model)  # what the Trainer's callback does when training starts
    return trainer


def train_step(trainer: MultitaskTrainer, batch) -> float:
    """One full step, as the Trainer runs it; returns seconds."""
    model = trainer.model
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.training_step(model, batch)
    trainer.optimizer.step()
    for regularizer in getattr(trainer, "regularizers", {}).values():  # (a plain HF Trainer has none)
        regularizer.after_optimizer_step(model, applied=True)  # what the Trainer's on_optimizer_step callback does
    model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def collate(trainer, data):
    return {name: trainer.data_collator([dict(row) | {"task_name": name} for row in dataset])
            for name, dataset in data.items()}


def run_timing(args) -> dict:
    model, tokenizer, data = build(args)
    with tempfile.TemporaryDirectory() as out_dir:
        trainers = {v: make_trainer(copy.deepcopy(model), tokenizer, data, v, args, out_dir) for v in VARIANTS}
        batches = collate(trainers["plain"], data)
        times = {v: {task: [] for task in batches} for v in VARIANTS}
        for repeat in range(args.warmup + args.repeats):
            for variant, trainer in trainers.items():  # interleaved
                for task, batch in batches.items():
                    seconds = train_step(trainer, batch)
                    if repeat >= args.warmup:
                        times[variant][task].append(seconds)
        teacher = trainers["adv_breg"].regularizers["smart"].teacher
        result = {"variants": {}, "teacher_mb": teacher.num_bytes / 2**20,
                  "teacher_parameters": sum(t.numel() for t in teacher.shadow.values())}
    medians = {v: {task: statistics.median(ts) for task, ts in per_task.items()} for v, per_task in times.items()}
    steps = {v: [sum(ts) for ts in zip(*per_task.values())] for v, per_task in times.items()}  # SST + STS, per repeat
    for variant in VARIANTS:
        step = sum(medians[variant].values())  # one SST step + one STS step
        ratios = [a / b for a, b in zip(steps[variant], steps["plain"])]  # per interleaved repeat
        low, high = median_interval(ratios)
        floor = floor_ratio(variant, args.smart_steps)
        result["variants"][variant] = {
            "ratio_median_of_repeats": round(statistics.median(ratios), 3),
            "ratio_interval_95": [round(low, 3), round(high, 3)],
            "over_floor": round(statistics.median(ratios) / floor, 3),
            "over_floor_interval_95": [round(low / floor, 3), round(high / floor, 3)],
            **{f"{task}_ms": round(1000 * m, 2) for task, m in medians[variant].items()},
            "step_ms": round(1000 * step, 2),
            "ratio": round(step / sum(medians["plain"].values()), 3),
            **{f"ratio_{task}": round(m / medians["plain"][task], 3) for task, m in medians[variant].items()},
            "floor_ratio": round(floor_ratio(variant, args.smart_steps), 3),
        }
    result["within_limits"] = {v: result["variants"][v]["ratio"] <= limit for v, limit in LIMITS.items()}
    result["within_1.1x_floor"] = {v: result["variants"][v]["over_floor"] <= 1.1 for v in LIMITS}
    result["sequence_lengths"] = {task: int(b["input_ids"].shape[1]) for task, b in batches.items()}
    return result


def run_rss(args) -> dict:
    """Peak resident memory (MB) of each variant alone, each in its own process (CPU has no per-phase counter)."""
    peaks = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--only", variant, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"--rss run of {variant} failed:\n{done.stderr[-3000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[variant] = {k: measured[k] for k in ("peak_rss_mb", "before_steps_mb")}
    return peaks


def run_only(args) -> None:
    model, tokenizer, data = build(args)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = make_trainer(model, tokenizer, data, args.only, args, out_dir)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
        for _ in range(2):
            for batch in collate(trainer, data).values():
                train_step(trainer, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": args.only, "peak_rss_mb": round(peak, 1), "before_steps_mb": round(before, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (fixed for comparability)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per variant and task")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant and task first")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--smart_steps", type=int, default=1, help="K, the ascent steps")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (slow on CPUs without AVX-512 BF16)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    parser.add_argument("--data_dir", default=os.environ.get("HF_MULTITASK_DATA", "/work/shared/data"))
    parser.add_argument("--rss", action="store_true", help="also measure each variant's peak RSS in a subprocess")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 repeats: checks the script only")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--only", choices=list(VARIANTS), help=argparse.SUPPRESS)  # internal: one --rss process
    args = parser.parse_args()
    args.cpu = args.cpu or not torch.cuda.is_available()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.repeats, args.warmup = 2, 1
    if args.only:
        return run_only(args)
    result = {"model": "tiny random BERT (smoke)" if args.smoke else "all-MiniLM-L6-v2 (bundled)",
              "device": platform.processor() or "cpu" if args.cpu else torch.cuda.get_device_name(),
              "threads": args.threads, "batch_size": args.batch_size, "repeats": args.repeats,
              "smart_steps": args.smart_steps, "bf16": args.bf16, "torch": torch.__version__, **run_timing(args)}
    if args.rss:
        result["peak_rss_mb"] = run_rss(args)
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
