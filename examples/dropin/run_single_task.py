"""Fine-tune a sequence classifier on one CS224N task with the Hugging Face `Trainer`.

A compact version of transformers' examples/pytorch/text-classification/run_glue.py, written the way an HF user
writes it: `datasets` with a `label` column, `AutoTokenizer`, `map(tokenize)`, `DataCollatorWithPadding`,
`compute_metrics`, `Trainer`, `trainer.predict`. run_multitask.py is the same script for several tasks at once; it
differs from this one only in the lines marked `# multitask`.

    python examples/dropin/run_single_task.py --task_name sst --data_dir ../shared/data --output_dir runs/single
"""

import argparse
import os

import numpy as np
from datasets import DatasetDict, Value, load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    set_seed,
)

from hf_multitask import resolve_encoder_path

task_to_keys = {  # task: (first sentence column, second sentence column, label column, number of labels)
    "sst": ("sentence", None, "sentiment", 5),
    "quora": ("sentence1", "sentence2", "is_duplicate", 2),
    "sts": ("sentence1", "sentence2", "similarity", 1),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="Default: the bundled all-MiniLM-L6-v2.")
    parser.add_argument("--data_dir", default="../shared/data", help="<task>-train.tsv and <task>-dev.tsv")
    parser.add_argument("--task_name", default="sst", choices=list(task_to_keys))
    parser.add_argument("--output_dir", default="runs/dropin")
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--max_samples", type=int, default=512, help="Keep the first N rows of each split.")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def load_and_tokenize(task_name, args, tokenizer):
    sentence1_key, sentence2_key, label_column, num_labels = task_to_keys[task_name]
    data_files = {split: os.path.join(args.data_dir, f"{task_name}-{split}.tsv") for split in ("train", "dev")}
    raw_datasets = load_dataset("csv", data_files=data_files, delimiter="\t")
    raw_datasets = DatasetDict({split: ds.select(range(min(args.max_samples, len(ds))))
                                for split, ds in raw_datasets.items()})
    raw_datasets = raw_datasets.rename_column(label_column, "label")
    raw_datasets = raw_datasets.cast_column("label", Value("float32" if num_labels == 1 else "int64"))

    def preprocess_function(examples):
        texts = (examples[sentence1_key],) if sentence2_key is None else (examples[sentence1_key],
                                                                           examples[sentence2_key])
        return tokenizer(*texts, truncation=True, max_length=128)

    columns = [c for c in raw_datasets["train"].column_names if c != "label"]
    return raw_datasets.map(preprocess_function, batched=True, remove_columns=columns)


def make_compute_metrics(task_name):
    is_regression = task_to_keys[task_name][3] == 1

    def compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.squeeze(preds) if is_regression else np.argmax(preds, axis=1)
        if is_regression:
            return {"mse": ((preds - p.label_ids) ** 2).mean().item()}
        return {"accuracy": (preds == p.label_ids).astype(np.float32).mean().item()}

    return compute_metrics


def write_predictions(output_dir, task_name, predictions):
    is_regression = task_to_keys[task_name][3] == 1
    predictions = np.squeeze(predictions) if is_regression else np.argmax(predictions, axis=1)
    with open(os.path.join(output_dir, f"predict_results_{task_name}.txt"), "w") as writer:
        writer.write("index\tprediction\n")
        for index, item in enumerate(predictions):
            writer.write(f"{index}\t{item:3.3f}\n" if is_regression else f"{index}\t{item}\n")


def main(argv=None):
    args = parse_args(argv)
    set_seed(args.seed)
    model_path = args.model_name_or_path or resolve_encoder_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=task_to_keys[args.task_name][3])
    tokenized = load_and_tokenize(args.task_name, args, tokenizer)
    train_dataset, eval_dataset = tokenized["train"], tokenized["dev"]

    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=16, learning_rate=5e-5,
        train_sampling_strategy="group_by_length", seed=args.seed, report_to=[], save_strategy="no",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=make_compute_metrics(args.task_name),
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)

    predictions = trainer.predict(eval_dataset, metric_key_prefix="predict").predictions
    write_predictions(args.output_dir, args.task_name, predictions)
    return metrics


if __name__ == "__main__":
    print(main())
