"""`hf-multitask train | evaluate | predict`.

`train` takes a YAML/JSON config whose keys are fields of [`ModelArguments`], [`DataArguments`] and
[`MultitaskTrainingArguments`], and `--key value` flags that override it (trl's config-plus-flags pattern).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, HfArgumentParser, set_seed
from transformers.utils import logging

from .configuration import MultitaskConfig
from .data import load_task_data, read_delimited, tokenize_task
from .export import export_task, max_logit_difference
from .inference import NORMALIZERS, worst_examples
from .inference import predict as predict_texts
from .modeling import MultitaskModel, resolve_encoder_path
from .pal import PalConfig
from .report import report
from .tasks import TaskSpec, did_you_mean, get_task
from .trainer import MultitaskTrainer
from .training_args import MultitaskTrainingArguments

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="minilm",
        metadata={"help": "Encoder checkpoint (hub id, local dir, or 'minilm' for the bundled all-MiniLM-L6-v2), "
                          "or a saved multitask model to continue from."},
    )
    tasks: list[str] = field(default_factory=lambda: ["sst", "quora", "sts"], metadata={"help": "Task presets."})
    task_overrides: str | None = field(
        default=None,
        metadata={"help": 'JSON {task: {TaskSpec field: value}}, e.g. {"sst": {"loss": "ordinal"}}; '
                          "a YAML mapping in a config file."},
    )
    pair_encoding: str = field(default="cross", metadata={"help": "Pair encoding of every pair task: cross | bi."})
    pooling: str = field(default="mean", metadata={"help": "Sentence representation: cls | mean."})
    classifier_dropout: float = field(default=0.1, metadata={"help": "Dropout before each head."})
    max_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    freeze_encoder: bool = field(default=False, metadata={"help": "Train the heads only (the frozen baseline)."})
    init_heads_from: str | None = field(
        default=None, metadata={"help": "A saved multitask model whose heads start this run (baseline transfer)."}
    )
    pal_rank: int | None = field(
        default=None, metadata={"help": "Add Projected Attention Layers of rank r (102 suits MiniLM); None: no PALs."}
    )
    pal_g: str = field(default="identity", metadata={"help": "PAL function in r dims: identity | attention."})
    pal_placement: str = field(default="layer", metadata={"help": "LayerNorm the PAL term enters: layer | attention."})


@dataclass
class DataArguments:
    data_dir: str = field(default="../shared/data", metadata={"help": "Directory of <task>-<split>.tsv files."})
    train_split: str = field(default="train", metadata={"help": "Split name of the training files."})
    eval_split: str = field(default="dev", metadata={"help": "Split name of the evaluation files."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N rows of each task."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N eval rows per task."})


TRAIN_DATACLASSES = (ModelArguments, DataArguments, MultitaskTrainingArguments)


def parse_train_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, MultitaskTrainingArguments]:
    """`CONFIG.yaml [--key value ...]` or flags alone -> the three argument dataclasses."""
    parser = HfArgumentParser(TRAIN_DATACLASSES)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        config = load_config_file(argv[0])
        parser.set_defaults(**config)
        argv = argv[1:]
    model_args, data_args, training_args, rest = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if rest:
        raise SystemExit(f"hf-multitask train: unknown argument(s) {rest}")
    return model_args, data_args, training_args


def load_config_file(path: str) -> dict:
    """A YAML (safe loader: no Python tags, nothing executed) or JSON config.

    Unparsable files, unknown keys (with the closest known key) and a `tasks` that is not a list are errors
    naming the file.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        config = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a valid {'JSON' if path.endswith('.json') else 'YAML'} config: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of argument names to values")
    known = {f.name for cls in TRAIN_DATACLASSES for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}{did_you_mean(unknown[0], known)}")
    if "tasks" in config and not isinstance(config["tasks"], list):
        raise ValueError(f"{path}: tasks must be a list of task names, e.g. [sst, sts], got {config['tasks']!r}")
    if isinstance(config.get("task_overrides"), dict):
        config["task_overrides"] = json.dumps(config["task_overrides"])
    return config


def build_task_specs(model_args: ModelArguments) -> list[TaskSpec]:
    try:
        overrides = json.loads(model_args.task_overrides) if model_args.task_overrides else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"task_overrides is not valid JSON ({err}): {model_args.task_overrides!r}") from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ValueError(f"task_overrides must map task names to {{field: value}}, got {model_args.task_overrides!r}")
    unknown = sorted(set(overrides) - set(model_args.tasks))
    if unknown:
        raise ValueError(f"task_overrides names task(s) {unknown} that are not in tasks={model_args.tasks}")
    return [get_task(name, **{"pair_encoding": model_args.pair_encoding, "max_length": model_args.max_length,
                               **overrides.get(name, {})}) for name in model_args.tasks]


def build_model(model_args: ModelArguments, specs: list[TaskSpec]) -> MultitaskModel:
    path = resolve_encoder_path(model_args.model_name_or_path)
    if _is_multitask_checkpoint(path):
        model = MultitaskModel.from_pretrained(path)
        saved, wanted = model.config.task_names, [s.name for s in specs]
        if saved != wanted:
            raise ValueError(f"{path} has heads for tasks {saved}, but the config asks for tasks {wanted}")
        _check_saved_specs(path, model.specs, specs)
    else:
        model = MultitaskModel.from_encoder(path, specs, pooling=model_args.pooling,
                                            classifier_dropout=model_args.classifier_dropout)
    if model_args.init_heads_from:
        model.load_heads_from(model_args.init_heads_from)
    if model_args.pal_rank is not None:
        pal = PalConfig(rank=model_args.pal_rank, g=model_args.pal_g, placement=model_args.pal_placement)
        if model.pal is None:
            model.add_pal(pal)
        elif (model.pal.pal_config.rank, model.pal.pal_config.g, model.pal.pal_config.placement) != (
                pal.rank, pal.g, pal.placement):
            raise ValueError(f"{path} has PALs {model.config.pal}, but the config asks for pal_rank={pal.rank}, "
                             f"pal_g={pal.g!r}, pal_placement={pal.placement!r}")
    model.freeze_encoder(model_args.freeze_encoder)
    return model


def _check_saved_specs(path: str, saved: dict[str, TaskSpec], wanted: list[TaskSpec]) -> None:
    """The model trains with its saved specs and the data is tokenised with the config's: they must agree
    (pair_encoding only matters for pair tasks)."""
    differ = []
    for spec in wanted:
        fields = [f.name for f in dataclasses.fields(TaskSpec) if f.name != "pair_encoding" or spec.is_pair]
        differ += [f"task {spec.name!r}: {name}={getattr(spec, name)!r} (saved: {getattr(saved[spec.name], name)!r})"
                   for name in fields if getattr(spec, name) != getattr(saved[spec.name], name)]
    if differ:
        raise ValueError(f"{path} was saved with other task settings than the config asks for: {'; '.join(differ)}. "
                         "Make the config (task_overrides, pair_encoding, max_length) match.")


def _is_multitask_checkpoint(path: str) -> bool:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    return json.loads(config_file.read_text()).get("model_type") == MultitaskConfig.model_type


def fit_tokenizer_to_model(tokenizer, model: MultitaskModel) -> None:
    """Lower the tokenizer's `model_max_length` to the longest sequence the encoder's position embeddings cover,
    where the tokenizer has no limit or a larger one (tokenizers saved without one report a huge number), so that
    [`tokenize_task`] truncates to what the model can read and says so when `max_length` is longer."""
    limit = model.max_sequence_length
    current = getattr(tokenizer, "model_max_length", None)
    if limit is not None and (current is None or current > limit):
        logger.info(f"tokenizer model_max_length set to {limit}, the encoder's position limit (was {current})")
        tokenizer.model_max_length = limit


def load_tokenized(specs, tokenizer, data_dir: str, split: str, limit: int | None) -> dict:
    out = {}
    for spec in specs:
        dataset = load_task_data(spec, data_dir, splits=(split,))[split]
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        out[spec.name] = tokenize_task(dataset, spec, tokenizer)
    return out


def print_metrics_table(metrics: dict[str, float], specs, prefix: str = "eval") -> None:
    rows = [(spec.name, spec.metric, metrics[f"{prefix}_{spec.metric_key}"]) for spec in specs
            if f"{prefix}_{spec.metric_key}" in metrics]
    rows.append(("overall", "mean of [0,1] scores", metrics[f"{prefix}_overall"]))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'task'.ljust(width)}  {'metric'.ljust(20)}  value")
    for name, metric, value in rows:
        print(f"{name.ljust(width)}  {metric.ljust(20)}  {value:.4f}")


def train(argv: list[str]) -> dict:
    model_args, data_args, training_args = parse_train_args(argv)
    set_seed(training_args.seed)
    specs = build_task_specs(model_args)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(model_args.model_name_or_path))
    model = build_model(model_args, specs)
    fit_tokenizer_to_model(tokenizer, model)
    train_data = load_tokenized(specs, tokenizer, data_args.data_dir, data_args.train_split,
                                data_args.max_train_samples)
    eval_data = load_tokenized(specs, tokenizer, data_args.data_dir, data_args.eval_split,
                               data_args.max_eval_samples)
    trainer = MultitaskTrainer(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_data,
                               processing_class=tokenizer)
    if trainer.is_world_process_zero():
        _print_summary(model, specs, train_data, training_args)
    resume = training_args.resume_from_checkpoint
    # `--resume_from_checkpoint true` (or `last`): the last complete checkpoint of output_dir
    trainer.train(resume_from_checkpoint=True if str(resume).lower() in ("true", "last") else resume)
    metrics = trainer.evaluate()
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.is_world_process_zero():
        print_metrics_table(metrics, specs)
        _write_json(Path(training_args.output_dir) / "eval_results.json", metrics)
    return metrics


def _print_summary(model, specs, train_data, args) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    per_task = model.num_parameters_per_task()
    print(f"hf-multitask: {len(specs)} tasks, sampling={args.task_sampling}, "
          f"trainable parameters {trainable:,} of {total:,}")
    for spec in specs:
        print(f"  {spec.name:<8} {spec.kind:<14} {len(train_data[spec.name]):>7,} train examples, "
              f"loss={spec.loss}, metric={spec.metric}, pairs={spec.pair_encoding if spec.is_pair else '-'}, "
              f"task-only parameters {per_task[spec.name]:,}")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"metrics written to {path}")


def evaluate(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="hf-multitask evaluate", description="Evaluate a saved multitask model.")
    parser.add_argument("model_dir")
    parser.add_argument("--data", required=True, help="Directory laid out like ../shared/data.")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--tasks", nargs="*", help="Subset of the model's tasks (default: all).")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output", help="JSON file for the metrics (default: MODEL_DIR/<split>_results.json).")
    parser.add_argument("--errors", type=int, default=0, metavar="N",
                        help="Also write the N worst-predicted examples of each task (one more prediction pass).")
    parser.add_argument("--errors_output", help="JSON lines, or a .tsv, for them (default: "
                                                "MODEL_DIR/<split>_errors.jsonl).")
    args = parser.parse_args(argv)
    if args.errors < 0:
        raise SystemExit(f"--errors must be >= 0, got {args.errors}")
    model = MultitaskModel.from_pretrained(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    unknown = sorted(set(args.tasks or []) - set(model.specs))
    if unknown:
        raise SystemExit(f"{args.model_dir} has no head for task(s) {unknown}; it has {list(model.specs)}")
    specs = [model.specs[name] for name in (args.tasks or model.specs)]
    raw = {spec.name: load_task_data(spec, args.data, splits=(args.split,))[args.split] for spec in specs}
    eval_data = {spec.name: tokenize_task(raw[spec.name], spec, tokenizer) for spec in specs}
    training_args = MultitaskTrainingArguments(output_dir=os.path.join(args.model_dir, "eval"), report_to=[],
                                               per_device_eval_batch_size=args.batch_size)
    trainer = MultitaskTrainer(model=model, args=training_args, processing_class=tokenizer)
    metrics = trainer.evaluate(eval_data, metric_key_prefix=args.split)
    print_metrics_table(metrics, specs, prefix=args.split)
    _write_json(Path(args.output or Path(args.model_dir) / f"{args.split}_results.json"), metrics)
    if args.errors:
        records = [record for spec in specs for record in worst_examples(
            spec, raw[spec.name], trainer.predict_task(spec.name, eval_data[spec.name]), args.errors)]
        path = Path(args.errors_output or Path(args.model_dir) / f"{args.split}_errors.jsonl")
        _write_records(path, records)
        print(f"the {args.errors} worst examples of each task written to {path}")
    return metrics


def _write_records(path: Path, records: list[dict]) -> None:
    """JSON lines, or a TSV (standard quoting, empty cells for fields a record lacks) when `path` ends in .tsv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        if path.suffix != ".tsv":
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            return
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in records for k in r)), delimiter="\t",
                                restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


def predict(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="hf-multitask predict", description="Predict with a saved model.")
    parser.add_argument("model_dir")
    parser.add_argument("--task", required=True)
    parser.add_argument("texts", nargs="*", help="Inputs; for pair tasks separate the two sentences with ' ||| '.")
    parser.add_argument("--file", help="A TSV/CSV/JSONL file with the task's text columns.")
    parser.add_argument("--output", help="Write JSON lines here instead of stdout.")
    parser.add_argument("--normalize", choices=sorted(NORMALIZERS),
                        help="ptb: rewrite raw text in the Penn Treebank form of the SST training sentences "
                             "(for sst; off by default).")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_intermixed_args(argv)
    model = MultitaskModel.from_pretrained(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if args.task not in model.specs:
        raise SystemExit(f"{args.model_dir} has no head for task {args.task!r}; it has {list(model.specs)}")
    spec = model.specs[args.task]
    dataset = _prediction_inputs(spec, args)
    if torch.cuda.is_available():
        model.to("cuda")
    inputs, kwargs = _texts_of(spec, dataset), {"batch_size": args.batch_size, "normalize": args.normalize}
    if spec.kind == "classification":
        labels, probabilities = predict_texts(model, spec.name, inputs, tokenizer, return_probabilities=True, **kwargs)
        outputs = [{"label": label, "label_id": spec.label_names.index(label), "probability": float(p.max())}
                   for label, p in zip(labels, probabilities)]
    else:
        outputs = [{"score": score} for score in predict_texts(model, spec.name, inputs, tokenizer, **kwargs)]
    records = [{**{c: dataset[i][c] for c in spec.text_columns}, **output} for i, output in enumerate(outputs)]
    lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n"
    if args.output:
        Path(args.output).write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)
    return records


def _texts_of(spec: TaskSpec, dataset) -> list:
    """A dataset's text columns as `predict`'s inputs: strings, or `(a, b)` pairs."""
    columns = [dataset[c] for c in spec.text_columns]
    return list(columns[0]) if len(columns) == 1 else list(zip(*columns))


def export(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hf-multitask export",
                                     description="Write one task as a plain AutoModelForSequenceClassification.")
    parser.add_argument("model_dir")
    parser.add_argument("--task", required=True)
    parser.add_argument("--output", required=True, help="Directory for the exported model and tokenizer.")
    parser.add_argument("--check_data", help="A data directory: print the largest logit difference between the "
                                             "export and the model on the first 256 examples of --split.")
    parser.add_argument("--split", default="dev")
    args = parser.parse_args(argv)
    model = MultitaskModel.from_pretrained(args.model_dir).eval()
    if args.task not in model.specs:
        raise SystemExit(f"{args.model_dir} has no head for task {args.task!r}; it has {list(model.specs)}")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    try:
        exported = export_task(model, args.task, args.output, tokenizer=tokenizer)
    except ValueError as err:
        raise SystemExit(f"hf-multitask export: {err}") from None
    print(f"task {args.task!r} exported to {args.output}: AutoModelForSequenceClassification.from_pretrained("
          f"{str(args.output)!r})")
    if args.check_data:
        spec = model.specs[args.task]
        data = load_task_data(spec, args.check_data, splits=(args.split,))[args.split]
        inputs = _texts_of(spec, data.select(range(min(256, len(data)))))
        difference = max_logit_difference(model, args.task, exported, inputs, tokenizer)
        print(f"largest |logit difference| on {len(inputs)} {args.split} examples: {difference:.2e}")


def _prediction_inputs(spec: TaskSpec, args):
    from datasets import Dataset

    if args.file:
        return _load_texts(spec, args.file)
    if not args.texts:
        raise SystemExit("hf-multitask predict: give texts or --file")
    rows = [t.split(" ||| ") for t in args.texts]
    for i, row in enumerate(rows, start=1):
        if len(row) != len(spec.text_columns):
            raise SystemExit(f"input {i}: task {spec.name!r} needs {len(spec.text_columns)} text(s) "
                             f"separated by ' ||| ', got {len(row)}")
        if any(not text.strip() for text in row):
            raise SystemExit(f"input {i}: empty text")
    return Dataset.from_dict({c: [r[j] for r in rows] for j, c in enumerate(spec.text_columns)})


def _load_texts(spec: TaskSpec, path: str):
    """The task's text columns of a file (labels not needed); empty texts are an error naming the row."""
    from datasets import Dataset, load_dataset

    if not Path(path).is_file():
        raise SystemExit(f"{path}: no such file")
    if path.endswith((".tsv", ".csv")):
        columns, rows = read_delimited(path)
    else:
        rows = load_dataset("parquet" if path.endswith(".parquet") else "json", data_files=path, split="train")
        columns = rows.column_names
    missing = [c for c in spec.text_columns if c not in columns]
    if missing:
        raise SystemExit(f"{path}: task {spec.name!r} needs column(s) {missing}, the file has {columns}")
    for i, row in enumerate(rows, start=1):
        for c in spec.text_columns:
            if not isinstance(row[c], str) or not row[c].strip():
                raise SystemExit(f"{path}: row {i}, column {c!r}: empty text")
    return Dataset.from_dict({c: [r[c] for r in rows] for c in spec.text_columns})


COMMANDS = {"train": train, "evaluate": evaluate, "predict": predict, "export": export, "report": report}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: hf-multitask {train CONFIG.yaml [--key value ...] | evaluate MODEL_DIR --data DIR | "
              "predict MODEL_DIR --task TASK TEXT... | export MODEL_DIR --task TASK --output DIR | "
              "report RUN_DIR [--data DIR] [--output DIR]}", file=sys.stderr)
        raise SystemExit(2)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
