"""The GPU check, ready to run: a BERT-base-sized multitask model (random weights: speed depends on shapes, not
weights) in bf16 on one GPU, in a few minutes, with nothing to download (synthetic batches, no tokenizer files).

Printed and written as JSON, each as the median of interleaved repeats with a 95% interval of the per-repeat ratio:

- the time of the multitask step (`MultitaskTrainer`, one SST-shaped batch; its inverse is the throughput ratio)
  against the plain HF `Trainer` + `BertForSequenceClassification` step on the same batch;
- the grouped PCGrad and GradVac steps against the summed-loss step over the same three task batches;
- the SMART step (R_s with K = 1 and the Bregman term) against the plain multitask step;
- the peak GPU memory of each variant (`torch.cuda.max_memory_allocated` over one step);
- the Trainer under accelerate's FSDP2 plugin (`fsdp_check.py`, launched with torchrun, one process per GPU):
  `MultitaskTrainer.train()` with PCGrad and SMART, sharded and unsharded, whether accelerate sharded it, the
  surgery it ended with, step time and peak memory of each.

    python benchmarks/gpu_check.py --output benchmarks/results/gpu_check.json     # one GPU, bf16
    python benchmarks/gpu_check.py --smoke                                        # tiny model, CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_smart import train_step
from bench_stats import median_interval
from bench_steps import ready
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from hf_multitask import MultitaskConfig, MultitaskModel, MultitaskTrainer, MultitaskTrainingArguments, cs224n_tasks

# variant: (what it is compared with, MultitaskTrainingArguments overrides; None: the plain HF Trainer)
VARIANTS = {
    "hf_trainer": ("hf_trainer", None),
    "multitask": ("hf_trainer", {}),
    "smart": ("multitask", {"smart_tasks": ["sst"]}),
    "summed": ("summed", {"task_sampling_grouped": True}),
    "pcgrad": ("summed", {"gradient_surgery": "pcgrad"}),
    "gradvac": ("summed", {"gradient_surgery": "gradvac"}),
}


def encoder_config(smoke: bool) -> BertConfig:
    if smoke:
        return BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37)
    return BertConfig()  # bert-base-uncased's shapes: 12 layers, hidden 768, 12 heads, vocabulary 30,522


def synthetic_batch(config: BertConfig, spec, batch_size: int, length: int, generator: torch.Generator) -> dict:
    """Random token ids with the task's shape: one segment, or two (a cross-encoded pair); labels of its kind."""
    ids = torch.randint(5, config.vocab_size, (batch_size, length), generator=generator)
    types = torch.zeros_like(ids)
    if spec.is_pair:
        types[:, length // 2:] = 1
    labels = (torch.rand(batch_size, generator=generator) * 5 if spec.kind == "regression"
              else torch.randint(0, spec.num_labels, (batch_size,), generator=generator))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": types, "labels": labels,
            "task_name": spec.name}


def build(args) -> dict[str, tuple]:
    """`{variant: (trainer, batch)}` on the device, in bf16 autocast unless `--smoke`."""
    config, tasks = encoder_config(args.smoke), cs224n_tasks()
    generator = torch.Generator().manual_seed(0)
    batches = {spec.name: synthetic_batch(config, spec, args.batch_size, args.length, generator) for spec in tasks}
    common = dict(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=args.smoke, bf16=not args.smoke,
                  per_device_train_batch_size=args.batch_size, learning_rate=1e-5, disable_tqdm=True)
    setups = {}
    for name, (_, overrides) in VARIANTS.items():
        torch.manual_seed(0)
        if overrides is None:
            model = BertForSequenceClassification(BertConfig(**config.to_dict(), num_labels=tasks[0].num_labels))
            trainer = Trainer(model=model, args=TrainingArguments(**common))
            batch = {k: v for k, v in batches["sst"].items() if k != "task_name"}
        else:
            grouped = overrides.get("task_sampling_grouped") or "gradient_surgery" in overrides
            specs = tasks if grouped else tasks[:1]
            model = MultitaskModel(MultitaskConfig(encoder=config, tasks=specs, pooling="cls"))
            trainer = MultitaskTrainer(model=model, args=MultitaskTrainingArguments(**common, **overrides),
                                       data_collator=lambda features: features)  # batches come collated
            for regularizer in trainer.regularizers.values():
                regularizer.on_train_begin(trainer.model)
            batch = {s.name: batches[s.name] for s in specs} if grouped else batches["sst"]
        trainer.model = trainer.model_wrapped = trainer.accelerator.prepare_model(trainer.model)  # bf16 autocast
        setups[name] = (ready(trainer), batch)
    return setups


def fsdp_runs(args) -> dict:
    """fsdp_check.py under torchrun, with accelerate's FSDP2 plugin and without (one process per GPU; one CPU process
    with `--smoke`), each in its own processes since accelerate's state is per process."""
    here = Path(__file__).resolve().parent
    sizes = ["--smoke"] if args.smoke else ["--batch_size", str(args.batch_size), "--length", str(args.length)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), os.environ.get("PYTHONPATH", "")])}
    runs = {}
    for name, flags in (("fsdp2", ["--sharded"]), ("unsharded", [])):
        with tempfile.TemporaryDirectory() as folder:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                       str(max(torch.cuda.device_count(), 1)), str(here / "fsdp_check.py"), *flags, *sizes,
                       "--output", f"{folder}/run.json"]
            subprocess.run(command, check=True, env=env, cwd=here)
            with open(f"{folder}/run.json") as f:
                runs[name] = json.load(f)
    sharded, plain = runs["fsdp2"], runs["unsharded"]
    runs["fsdp2_step_ratio"] = round(sharded["step_ms_median"] / plain["step_ms_median"], 3)
    return runs


def peak_memory(setups: dict) -> dict[str, float]:
    """GiB allocated at the peak of one step of each variant (0 on the CPU)."""
    peaks = {}
    for name, (trainer, batch) in setups.items():
        if not torch.cuda.is_available():
            peaks[name] = 0.0
            continue
        torch.cuda.reset_peak_memory_stats()
        train_step(trainer, batch)
        peaks[name] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, 3 repeats: checks the script")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.warmup, args.batch_size, args.length = 3, 1, 4, 16
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check: no GPU here (torch.cuda.is_available() is False); --smoke checks the script")
    setups = build(args)
    times = {name: [] for name in setups}
    for repeat in range(args.warmup + args.repeats):
        for name, (trainer, batch) in setups.items():  # interleaved
            seconds = train_step(trainer, batch)
            if repeat >= args.warmup:
                times[name].append(seconds)
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke)",
              "dtype": "fp32 (smoke)" if args.smoke else "bf16 autocast", "torch": torch.__version__,
              "encoder": "tiny (smoke)" if args.smoke else "BERT-base shapes, random weights",
              "batch": [args.batch_size, args.length], "repeats": args.repeats, "variants": {}}
    peaks = peak_memory(setups)
    for name, (baseline, _) in VARIANTS.items():
        ratios = [a / b for a, b in zip(times[name], times[baseline])]
        low, high = median_interval(ratios)
        result["variants"][name] = {"step_ms": round(1000 * statistics.median(times[name]), 2), "against": baseline,
                                    "time_ratio": round(statistics.median(ratios), 3),
                                    "time_ratio_95": [round(low, 3), round(high, 3)], "peak_gib": peaks[name]}
    result["fsdp"] = fsdp_runs(args)
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
