"""The reference a user would otherwise run: three separate single-task fine-tunes with the plain HF `Trainer`.

One `AutoModelForSequenceClassification` per task, each from the same encoder (the bundled all-MiniLM-L6-v2) and
each trained alone: SST-5 (5 classes, accuracy), Quora (2 classes, accuracy), STS-B (regression, `num_labels=1`,
Pearson r); pairs are cross-encoded (`[CLS] a [SEP] b [SEP]`), and the head is transformers' own (the [CLS]
pooler and a linear layer, where the multitask rows mean-pool). Learning rate, batch size, schedule, warm-up,
weight decay, clipping, `max_length` and seed are main.yaml's. Only the data files are read with hf-multitask (the
same validated rows the multitask runs see); model, collator, training and metrics are plain transformers.

Budget: the ablation rows' 25,600 training examples split evenly over the three tasks, 267 batches of 32 per task
(`--max_steps_per_task 267`, 8,544 examples per task, 25,632 in all). Each task is evaluated on its dev set; the
output directory gets `eval_results.json` with `eval_sst_accuracy`, `eval_quora_accuracy`, `eval_sts_pearson`,
`eval_overall` = (sst + quora + (r + 1) / 2) / 3 and each task's wall time (loading, training and
evaluation), and how many batches each task trained on.

At the reference's budget, `--num_train_epochs_per_task 3` (what a user runs instead of the multitask job): 3 passes
over each task's training rows, 801 + 2,595 + 567 = 3,963 batches of 32 on the shared data. `--save_steps K` saves
model-only checkpoints into `<output_dir>/<task>/checkpoint-<step>` every K steps and at the end, plus
`checkpoint-0`, the untrained model, and `timeline.json` in the output directory gives each task's wall-clock
`start`, `train_end` (training done, before its dev evaluation) and `end` (`time.time()` seconds), so that
`benchmarks/time_to_quality.py` can place the checkpoints of all three tasks on one clock.

    HF_HUB_OFFLINE=1 python examples/cs224n/single_task_hf.py --output_dir runs/ablation/r800_single_task_hf \\
        --predictions runs/ablation/r800_single_task_hf/dev_predictions.jsonl.gz  # per-example dev predictions too
    python examples/cs224n/single_task_hf.py --output_dir /tmp/smoke --max_steps_per_task 2 \\
        --max_train_samples 64 --max_eval_samples 64                   # a smoke run
    python examples/cs224n/single_task_hf.py --num_train_epochs_per_task 3 --save_steps 200 \\
        --output_dir runs/single_task_3ep                              # the reference's budget, with checkpoints
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
from datasets import Value
from scipy.stats import pearsonr
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from hf_multitask import get_task, load_task_data, resolve_encoder_path

TASKS = {"sst": ("accuracy", 5), "quora": ("accuracy", 2), "sts": ("pearson", 1)}  # task: (metric, num_labels)
BATCH_SIZE = 32
DEFAULT_STEPS = 267  # the ablation's budget: 25,600 training examples over three tasks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default="minilm", help="Encoder ('minilm': the bundled copy).")
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--output_dir", default="runs/ablation/r800_single_task_hf")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--max_steps_per_task", type=int,
                        help=f"Batches of 32 per task (default {DEFAULT_STEPS}, unless --num_train_epochs_per_task).")
    parser.add_argument("--num_train_epochs_per_task", type=int, help="Instead of --max_steps_per_task: passes over "
                        "each task's training rows (3: the reference's 3,963 batches of 32 on the shared data).")
    parser.add_argument("--save_steps", type=int, help="Save a model-only checkpoint every K steps (and at the end) "
                        "into <output_dir>/<task>/checkpoint-<step>, and the untrained model as checkpoint-0.")
    parser.add_argument("--max_train_samples", type=int, help="Keep the first N training rows of each task.")
    parser.add_argument("--max_eval_samples", type=int, help="Keep the first N dev rows of each task.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--predictions", metavar="PATH", help="Also write every dev example's prediction as JSON "
                        "lines (gzipped for .gz), in `hf-multitask evaluate --predictions`' format.")
    args = parser.parse_args(argv)
    check_budget(parser, args)
    return args


def check_budget(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse both budgets at once (which one would win is not obvious) and budgets below 1, naming the flag;
    without either, the ablation's `--max_steps_per_task 267`."""
    if args.max_steps_per_task is not None and args.num_train_epochs_per_task is not None:
        parser.error("--max_steps_per_task and --num_train_epochs_per_task are alternatives: give one of them")
    for name in ("max_steps_per_task", "num_train_epochs_per_task", "save_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if args.num_train_epochs_per_task is None and args.max_steps_per_task is None:
        args.max_steps_per_task = DEFAULT_STEPS


def planned_batches(train_rows: int, args: argparse.Namespace) -> int:
    """The batches of 32 one task trains on: `--max_steps_per_task`, or `--num_train_epochs_per_task` passes of
    ceil(rows / 32) batches (the last batch of a pass is short; the length-grouped sampler keeps every row)."""
    if args.max_steps_per_task is not None:
        return args.max_steps_per_task
    return args.num_train_epochs_per_task * math.ceil(train_rows / BATCH_SIZE)


def load_split(task: str, data_dir: str, split: str, limit: int | None, tokenizer):
    """One task's split, tokenised: cross-encoded pairs, truncation at 128 tokens, `labels` kept."""
    spec = get_task(task)
    dataset = load_task_data(spec, data_dir, splits=(split,))[split]
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    columns = list(spec.text_columns)

    def encode(batch):
        texts = [batch[c] for c in columns]
        return tokenizer(*texts, truncation=True, max_length=128)

    ids = dataset["id"]
    dataset = dataset.map(encode, batched=True, remove_columns=[c for c in dataset.column_names if c != "labels"])
    # MSELoss needs float32 targets like the float32 logits (the files' scores load as float64)
    return (dataset.cast_column("labels", Value("float32")) if spec.kind == "regression" else dataset), ids


def metric_fn(metric: str):
    """`compute_metrics` for the Trainer: accuracy of the argmax, or Pearson r of the regression output."""

    def compute(prediction) -> dict[str, float]:
        logits, labels = prediction.predictions, prediction.label_ids
        if metric == "accuracy":
            return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}
        return {"pearson": float(pearsonr(logits.reshape(-1), labels.reshape(-1))[0])}

    return compute


def prediction_records(task: str, ids: list, output) -> list[dict]:
    """`hf-multitask evaluate --predictions`' records from a `trainer.predict` output: task, id, gold `labels` and
    `label_id` (classification) or `score` (regression)."""
    logits, gold = np.asarray(output.predictions), np.asarray(output.label_ids)
    if TASKS[task][1] == 1:
        fields = [{"score": float(v)} for v in logits.reshape(-1)]
    else:
        fields = [{"label_id": int(v)} for v in logits.argmax(-1)]
    return [{"task": task, "id": i, "labels": g.item(), **f} for i, g, f in zip(ids, gold, fields, strict=True)]


def training_arguments(task: str, args: argparse.Namespace) -> TrainingArguments:
    """main.yaml's optimisation settings, the budget in steps or epochs, and model-only checkpoints every
    `--save_steps` (no optimizer state: they are for evaluating afterwards, not for resuming)."""
    return TrainingArguments(
        output_dir=str(Path(args.output_dir) / task), max_steps=args.max_steps_per_task or -1,
        num_train_epochs=args.num_train_epochs_per_task or 1, per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=128, learning_rate=1e-4, weight_decay=0.01, warmup_steps=0.06,
        lr_scheduler_type="linear", max_grad_norm=1.0, seed=args.seed, logging_steps=50,
        train_sampling_strategy="group_by_length", eval_strategy="no", report_to="none", dataloader_pin_memory=False,
        save_strategy="steps" if args.save_steps else "no", save_steps=args.save_steps or 500, save_only_model=True,
    )


def fine_tune(task: str, args: argparse.Namespace, encoder: str, tokenizer) -> dict:
    """Fine-tune a fresh model on one task and evaluate it on dev.

    Returns `value` (the dev metric), `seconds` (wall time), `batches` (optimizer steps taken), `records` (per-example
    predictions) and `span`: the wall-clock `start`, `train_end` and `end` of the task (`time.time()`).
    """
    span, start = {"start": time.time()}, time.perf_counter()
    metric, num_labels = TASKS[task]
    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=num_labels, problem_type="regression" if num_labels == 1 else None
    )
    train = load_split(task, args.data_dir, "train", args.max_train_samples, tokenizer)[0]
    dev, ids = load_split(task, args.data_dir, "dev", args.max_eval_samples, tokenizer)
    print(f"{task}: {len(train):,} training rows, {planned_batches(len(train), args):,} batches of {BATCH_SIZE}")
    training_args = training_arguments(task, args)
    trainer = Trainer(
        model=model, args=training_args, processing_class=tokenizer, train_dataset=train, eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metric_fn(metric),
    )
    if args.save_steps:  # the untrained model: the task's score until its first checkpoint
        trainer.save_model(str(Path(training_args.output_dir) / "checkpoint-0"))
    trainer.train()
    span["train_end"] = time.time()
    # Under train_sampling_strategy="group_by_length" the Trainer orders the evaluation set by length as well (a
    # shuffle seeded with the seed): predict in the dataset's order, so that the predictions line up with `ids`
    trainer.args.train_sampling_strategy = "random"
    output = trainer.predict(dev, metric_key_prefix="eval")  # the metrics `evaluate` gives, and the predictions
    span["end"] = time.time()
    return {"value": output.metrics[f"eval_{metric}"], "seconds": time.perf_counter() - start,
            "batches": trainer.state.global_step, "records": prediction_records(task, ids, output), "span": span}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    encoder = resolve_encoder_path(args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    if args.max_steps_per_task is not None:
        results = {"max_steps_per_task": args.max_steps_per_task,
                   "train_examples_per_task": BATCH_SIZE * args.max_steps_per_task}
    else:
        results = {"num_train_epochs_per_task": args.num_train_epochs_per_task}
    records, timeline = [], {"clock": "time.time() seconds", "tasks": {}}
    for task in args.tasks:
        outcome = fine_tune(task, args, encoder, tokenizer)
        records += outcome["records"]
        results[f"eval_{task}_{TASKS[task][0]}"] = outcome["value"]
        results[f"wall_seconds_{task}"] = round(outcome["seconds"], 1)
        results[f"train_batches_{task}"] = outcome["batches"]
        timeline["tasks"][task] = outcome["span"]
        write_json(Path(args.output_dir) / "timeline.json", timeline)  # after each task: a crash keeps the done ones
        print(f"{task}: {TASKS[task][0]} {outcome['value']:.4f} ({outcome['seconds']:.0f} s, "
              f"{outcome['batches']:,} batches)")
    results["train_batches"] = sum(results[f"train_batches_{task}"] for task in args.tasks)
    print(f"{results['train_batches']:,} batches of {BATCH_SIZE} in all")
    if set(args.tasks) == set(TASKS):
        results["eval_overall"] = (results["eval_sst_accuracy"] + results["eval_quora_accuracy"]
                                   + (results["eval_sts_pearson"] + 1) / 2) / 3
        print(f"overall {results['eval_overall']:.4f}")
    path = Path(args.output_dir) / "eval_results.json"
    write_json(path, results)
    print(f"metrics written to {path}")
    if args.predictions:
        opener = gzip.open if args.predictions.endswith(".gz") else open
        with opener(args.predictions, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
        print(f"{len(records)} predictions written to {args.predictions}")
    return results


if __name__ == "__main__":
    main()
