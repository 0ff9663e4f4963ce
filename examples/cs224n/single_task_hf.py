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
evaluation).

    HF_HUB_OFFLINE=1 python examples/cs224n/single_task_hf.py --output_dir runs/ablation/r800_single_task_hf \\
        --predictions runs/ablation/r800_single_task_hf/dev_predictions.jsonl.gz  # per-example dev predictions too
    python examples/cs224n/single_task_hf.py --output_dir /tmp/smoke --max_steps_per_task 2 \\
        --max_train_samples 64 --max_eval_samples 64                   # a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import json
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default="minilm", help="Encoder ('minilm': the bundled copy).")
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--output_dir", default="runs/ablation/r800_single_task_hf")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--max_steps_per_task", type=int, default=267, help="Batches of 32 per task.")
    parser.add_argument("--max_train_samples", type=int, help="Keep the first N training rows of each task.")
    parser.add_argument("--max_eval_samples", type=int, help="Keep the first N dev rows of each task.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--predictions", metavar="PATH", help="Also write every dev example's prediction as JSON "
                        "lines (gzipped for .gz), in `hf-multitask evaluate --predictions`' format.")
    return parser.parse_args(argv)


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


def fine_tune(task: str, args: argparse.Namespace, encoder: str, tokenizer) -> tuple[float, float, list[dict]]:
    """Fine-tune a fresh model on one task and evaluate it on dev. Returns (metric, wall seconds, per-example
    prediction records)."""
    start = time.perf_counter()
    metric, num_labels = TASKS[task]
    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=num_labels, problem_type="regression" if num_labels == 1 else None
    )
    training_args = TrainingArguments(
        output_dir=str(Path(args.output_dir) / task), max_steps=args.max_steps_per_task,
        per_device_train_batch_size=32, per_device_eval_batch_size=128, learning_rate=1e-4, weight_decay=0.01,
        warmup_steps=0.06, lr_scheduler_type="linear", max_grad_norm=1.0, seed=args.seed, logging_steps=50,
        train_sampling_strategy="group_by_length", eval_strategy="no", save_strategy="no", report_to="none",
        dataloader_pin_memory=False,
    )
    dev, ids = load_split(task, args.data_dir, "dev", args.max_eval_samples, tokenizer)
    trainer = Trainer(
        model=model, args=training_args, processing_class=tokenizer,
        train_dataset=load_split(task, args.data_dir, "train", args.max_train_samples, tokenizer)[0],
        eval_dataset=dev, data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metric_fn(metric),
    )
    trainer.train()
    output = trainer.predict(dev, metric_key_prefix="eval")  # the metrics `evaluate` gives, and the predictions
    return output.metrics[f"eval_{metric}"], time.perf_counter() - start, prediction_records(task, ids, output)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    encoder = resolve_encoder_path(args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    results = {"max_steps_per_task": args.max_steps_per_task, "train_examples_per_task": 32 * args.max_steps_per_task}
    records = []
    for task in args.tasks:
        value, seconds, task_records = fine_tune(task, args, encoder, tokenizer)
        records += task_records
        results[f"eval_{task}_{TASKS[task][0]}"] = value
        results[f"wall_seconds_{task}"] = round(seconds, 1)
        print(f"{task}: {TASKS[task][0]} {value:.4f} ({seconds:.0f} s)")
    if set(args.tasks) == set(TASKS):
        results["eval_overall"] = (results["eval_sst_accuracy"] + results["eval_quora_accuracy"]
                                   + (results["eval_sts_pearson"] + 1) / 2) / 3
        print(f"overall {results['eval_overall']:.4f}")
    path = Path(args.output_dir) / "eval_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"metrics written to {path}")
    if args.predictions:
        opener = gzip.open if args.predictions.endswith(".gz") else open
        with opener(args.predictions, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
        print(f"{len(records)} predictions written to {args.predictions}")
    return results


if __name__ == "__main__":
    main()
