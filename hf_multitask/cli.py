"""`hf-multitask train | evaluate | predict | export | report`: parsing arguments and printing results.

`train` takes a YAML/JSON config whose keys are fields of [`ModelArguments`], [`DataArguments`] and
[`MultitaskTrainingArguments`], and `--key value` flags that override it (trl's config-plus-flags pattern). What
the commands build (specs, models, tokenizers, data) comes from the library: hf_multitask.build, .data, .inference.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import importlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments, set_seed

from .build import DataArguments, ModelArguments, build_model, build_task_specs, build_tokenizer
from .checkpointing import finished_at, warn_about_earlier_checkpoints
from .config_file import TRAIN_DATACLASSES, apply_do_switches, check_config_types, given_do_switches, load_config_file
from .data import DataValidationError, load_task_data, load_task_split, load_tokenized, tokenize_task
from .export import export_task, max_logit_difference
from .inference import NORMALIZERS, load_tokenizer, predict_logits, task_logits, worst_examples
from .kinds import MissingKindMethod
from .metrics import metric_key, overall_key
from .modeling import MultitaskModel
from .report import write_report
from .trainer import MultitaskTrainer
from .training_args import MultitaskTrainingArguments
from .utils import did_you_mean


def parse_train_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, MultitaskTrainingArguments]:
    """`CONFIG.yaml [--key value ...]` or flags alone -> the three argument dataclasses."""
    if "-h" in argv or "--help" in argv:
        print(train_help())
        raise SystemExit(0)
    parser, config = HfArgumentParser(TRAIN_DATACLASSES), {}
    if argv and argv[0].lower().endswith((".yaml", ".yml", ".json")):
        config = check_config_types(parser, load_config_file(argv[0]), argv[0])
        parser.set_defaults(**config)
        argv = argv[1:]
    model_args, data_args, training_args, rest = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if rest:
        config_later = [a for a in rest if a.lower().endswith((".yaml", ".yml", ".json"))]
        hint = (f"; the config file goes first: hf-multitask train {config_later[0]} [--key value ...]"
                if config_later else "")
        raise SystemExit(f"hf-multitask train: unknown argument(s) {rest}{hint}")
    apply_do_switches(given_do_switches(config, argv), data_args, training_args)
    return model_args, data_args, training_args


def train_help() -> str:
    """`train --help`: our arguments (model, data, multitask training) first, then transformers' TrainingArguments."""
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    ours = [dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)
            for f in dataclasses.fields(MultitaskTrainingArguments) if f.name not in inherited]
    names = [f.name for f in dataclasses.fields(MultitaskTrainingArguments) if f.name not in inherited]
    types = {f.name: f.type for f in dataclasses.fields(MultitaskTrainingArguments)}
    multitask = dataclasses.make_dataclass("MultitaskArguments", [(n, types[n], f) for n, f in zip(names, ours)])
    groups = {ModelArguments: "model", DataArguments: "data", multitask: "multitask training"}
    shown = [type(cls.__name__, (cls,), {"_argument_group_name": f"{title} arguments"})  # HfArgumentParser's groups
             for cls, title in groups.items()]
    parser = HfArgumentParser(shown, prog="hf-multitask train", usage="hf-multitask train [CONFIG.yaml] "
                              "[--key value ...]", description="Train one encoder on several tasks; every key of a "
                              "config file can be given as a flag, and flags override the file.")
    plain = HfArgumentParser(TrainingArguments, add_help=False).format_help().split("\n", 2)[-1]
    return (parser.format_help() + "\nEvery transformers.TrainingArguments option works as well "
            f"(https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments):\n{plain}")


def print_metrics_table(metrics: dict[str, float], specs, prefix: str = "eval") -> None:
    rows = [(spec.name, spec.metric, metrics[metric_key(prefix, spec.name, spec.metric)]) for spec in specs
            if metric_key(prefix, spec.name, spec.metric) in metrics]
    rows.append(("overall", "mean of [0,1] scores", metrics[overall_key(prefix)]))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'task'.ljust(width)}  {'metric'.ljust(20)}  value")
    for name, metric, value in rows:
        print(f"{name.ljust(width)}  {metric.ljust(20)}  {value:.4f}")


def train(argv: list[str]) -> dict:
    model_args, data_args, training_args = parse_train_args(argv)
    set_seed(training_args.seed)
    specs = build_task_specs(model_args)
    model = build_model(model_args, specs)
    tokenizer = build_tokenizer(model_args, model)
    train_data = load_tokenized(specs, tokenizer, data_args.data_dir, data_args.train_split,
                                data_args.max_train_samples)
    eval_data = load_tokenized(specs, tokenizer, data_args.data_dir, data_args.eval_split,
                               data_args.max_eval_samples) if data_args.evaluates else None
    if data_args.predictions_file:  # found before training, not after it
        for spec in specs:
            if not spec.task_kind.implements("prediction_records"):
                raise MissingKindMethod(spec.task_kind, "prediction_records", "train --predictions_file")
    trainer = MultitaskTrainer(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_data,
                               processing_class=tokenizer)
    if trainer.is_world_process_zero():
        _print_summary(model, specs, train_data, training_args)
    resume = training_args.resume_from_checkpoint
    # `--resume_from_checkpoint true` (or `last`): the last complete checkpoint of output_dir; `false`: none
    resume = True if str(resume).lower() in ("true", "last") else None if str(resume).lower() == "false" else resume
    if resume is None:
        warn_about_earlier_checkpoints(training_args.output_dir)
    done = finished_at(training_args, resume)
    if done is not None:  # Trainer would run one more step past max_steps (and save it)
        print(f"hf-multitask train: the run in {training_args.output_dir} is complete (step {done}, max_steps "
              f"{training_args.max_steps}): nothing to train", file=sys.stderr)
        return {}
    trainer.train(resume_from_checkpoint=resume)
    if eval_data is None:  # eval_split: none
        trainer.save_model(training_args.output_dir)
        trainer.save_state()
        print(f"hf-multitask train: no evaluation (eval_split none); the model is saved in {training_args.output_dir}")
        return {}
    try:
        metrics = _evaluate_after_training(trainer, specs, eval_data, data_args.predictions_file)
    except Exception:  # the trained model is saved (its card without metrics) before the error goes on
        trainer.save_model(training_args.output_dir)
        trainer.save_state()
        print(f"hf-multitask: evaluation after training failed; the trained model is saved in "
              f"{training_args.output_dir}", file=sys.stderr)
        raise
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.is_world_process_zero():
        print_metrics_table(metrics, specs)
        _write_json(Path(training_args.output_dir) / "eval_results.json", metrics)
    return metrics


def _evaluate_after_training(trainer, specs, eval_data, predictions_file: str | None) -> dict:
    """`trainer.evaluate()`, or with `predictions_file`, `trainer.predict` on the same data: the same metrics
    (logged as evaluate logs them) and every example's prediction written from that pass."""
    if not predictions_file:
        return trainer.evaluate()
    output = trainer.predict(eval_data, metric_key_prefix="eval")
    trainer.log(output.metrics)
    records = []
    for spec in specs:
        logits = output.predictions[spec.name]
        if spec.task_kind.token_level:  # per-token logits; the per-word outputs come from the kind's own pass
            logits = task_logits(trainer.model, spec.name, eval_data[spec.name], trainer.processing_class,
                                 trainer.args.per_device_eval_batch_size)
        records += example_records(spec, eval_data[spec.name], logits)
    if trainer.is_world_process_zero():
        _write_records(Path(predictions_file), records)
        print(f"{len(records)} predictions written to {predictions_file}")
    return output.metrics


def _print_summary(model, specs, train_data, args) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    per_task = model.num_parameters_per_task()
    print(f"hf-multitask: {len(specs)} tasks, sampling={args.task_sampling}, "
          f"trainable parameters {trainable:,} of {total:,}")
    width, kind_width = (max(len(getattr(s, field)) for s in specs) for field in ("name", "kind"))
    for spec in specs:
        print(f"  {spec.name:<{width}} {spec.kind:<{kind_width}} {len(train_data[spec.name]):>7,} train examples, "
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
    parser.add_argument("--predictions", metavar="PATH",
                        help="Also write every example's prediction and gold label as JSON lines (gzipped when PATH "
                             "ends in .gz): task, id, labels and the fields `predict` gives.")
    args = parser.parse_args(argv)
    if args.errors < 0:
        raise SystemExit(f"--errors must be >= 0, got {args.errors}")
    check_model_dir(args.model_dir)
    model = MultitaskModel.from_pretrained(args.model_dir)
    tokenizer = load_tokenizer(args.model_dir)
    unknown = sorted(set(args.tasks or []) - set(model.specs))
    if unknown:
        raise SystemExit(f"{args.model_dir} has no head for task(s) {unknown}; it has {list(model.specs)}")
    specs = [model.specs[name] for name in (args.tasks or model.specs)]
    raw = {spec.name: load_task_data(spec, args.data, splits=(args.split,))[args.split] for spec in specs}
    eval_data = {spec.name: tokenize_task(raw[spec.name], spec, tokenizer) for spec in specs}
    with tempfile.TemporaryDirectory() as scratch:  # the Trainer's output_dir: evaluation writes nothing there
        training_args = MultitaskTrainingArguments(output_dir=scratch, report_to=[],
                                                   per_device_eval_batch_size=args.batch_size)
        trainer = MultitaskTrainer(model=model, args=training_args, processing_class=tokenizer)
        metrics = trainer.evaluate(eval_data, metric_key_prefix=args.split)
    print_metrics_table(metrics, specs, prefix=args.split)
    _write_json(Path(args.output or Path(args.model_dir) / f"{args.split}_results.json"), metrics)
    if args.errors or args.predictions:  # one more prediction pass, per example in file order
        logits = {spec.name: task_logits(model, spec.name, eval_data[spec.name], tokenizer, args.batch_size)
                  for spec in specs}
    if args.errors:
        records = [record for spec in specs
                   for record in worst_examples(spec, raw[spec.name], logits[spec.name], args.errors)]
        path = Path(args.errors_output or Path(args.model_dir) / f"{args.split}_errors.jsonl")
        _write_records(path, records)
        print(f"the {args.errors} worst examples of each task written to {path}")
    if args.predictions:
        records = [record for spec in specs for record in example_records(spec, raw[spec.name], logits[spec.name])]
        _write_records(Path(args.predictions), records)
        print(f"{len(records)} predictions written to {args.predictions}")
    return metrics


def example_records(spec, dataset, logits) -> list[dict]:
    """Per example of `dataset` (in order): `task`, `id` (the row's id, else its index), the gold `labels` and the
    kind's prediction fields (`label`/`label_id`/`probability`, `score`, ...)."""
    ids = dataset["id"] if "id" in dataset.column_names else range(len(dataset))
    outputs = spec.task_kind.prediction_records(spec, logits)
    return [{"task": spec.name, "id": example_id, "labels": gold, **fields}
            for example_id, gold, fields in zip(ids, dataset["labels"], outputs, strict=True)]


def _write_records(path: Path, records: list[dict]) -> None:
    """JSON lines (gzipped when `path` ends in .gz), or a TSV (standard quoting, empty cells for fields a record
    lacks) when `path` ends in .tsv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_text(path) as handle:
        if path.suffix != ".tsv":
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            return
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in records for k in r)), delimiter="\t",
                                restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


def _open_text(path: Path):
    """`path` for writing text; gzipped when it ends in .gz, with no timestamp in the header (same bytes each run)."""
    if path.suffix != ".gz":
        return open(path, "w", encoding="utf-8", newline="")
    return io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8", newline="")


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
    check_model_dir(args.model_dir)
    model = MultitaskModel.from_pretrained(args.model_dir)
    tokenizer = load_tokenizer(args.model_dir)
    if args.task not in model.specs:
        raise SystemExit(f"{args.model_dir} has no head for task {args.task!r}; it has {list(model.specs)}")
    spec = model.specs[args.task]
    dataset = _prediction_inputs(spec, args)
    if torch.cuda.is_available():
        model.to("cuda")
    logits = predict_logits(model, spec.name, _texts_of(spec, dataset), tokenizer, batch_size=args.batch_size,
                            normalize=args.normalize)
    outputs = spec.task_kind.prediction_records(spec, logits)
    columns = (["id"] if "id" in dataset.column_names else []) + list(spec.text_columns)  # ids join rows back
    records = [{**{c: dataset[i][c] for c in columns}, **output} for i, output in enumerate(outputs)]
    lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n"
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)
    return records


def _texts_of(spec, dataset) -> list:
    """A dataset's text columns as `predict`'s inputs: strings, or `(a, b)` pairs."""
    columns = [dataset[c] for c in spec.text_columns]
    return list(columns[0]) if len(columns) == 1 else list(zip(*columns))


def export(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hf-multitask export",
                                     description="Write one task as a plain transformers model (AutoModelFor"
                                                 "SequenceClassification, MultipleChoice or TokenClassification).")
    parser.add_argument("model_dir")
    parser.add_argument("--task", required=True)
    parser.add_argument("--output", required=True, help="Directory for the exported model and tokenizer.")
    parser.add_argument("--check_data", help="A data directory: print the largest logit difference between the "
                                             "export and the model on the first 256 examples of --split.")
    parser.add_argument("--split", default="dev")
    args = parser.parse_args(argv)
    check_model_dir(args.model_dir)
    model = MultitaskModel.from_pretrained(args.model_dir).eval()
    if args.task not in model.specs:
        raise SystemExit(f"{args.model_dir} has no head for task {args.task!r}; it has {list(model.specs)}")
    tokenizer = load_tokenizer(args.model_dir)
    try:
        exported = export_task(model, args.task, args.output, tokenizer=tokenizer)
    except ValueError as err:
        raise SystemExit(f"hf-multitask export: {err}") from None
    print(f"task {args.task!r} exported to {args.output}: {model.specs[args.task].task_kind.export_class}"
          f".from_pretrained({str(args.output)!r})")
    if args.check_data:
        spec = model.specs[args.task]
        data = load_task_data(spec, args.check_data, splits=(args.split,))[args.split]
        inputs = _texts_of(spec, data.select(range(min(256, len(data)))))
        difference = max_logit_difference(model, args.task, exported, inputs, tokenizer)
        print(f"largest |logit difference| on {len(inputs)} {args.split} examples: {difference:.2e}")


def check_model_dir(path: str) -> None:
    """A model argument that is a local path (absolute, relative or home) must exist: transformers would read it as a
    Hub id and say so misleadingly."""
    if path.startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir():
        raise SystemExit(f"{path}: no such model directory")


def _prediction_inputs(spec, args):
    from datasets import Dataset

    if args.file and args.texts:
        raise SystemExit(f"hf-multitask predict: give texts or --file, not both (texts {args.texts[:2]}...)")
    if args.file:
        if not Path(args.file).is_file():
            raise SystemExit(f"{args.file}: no such file")
        try:
            return load_task_split(spec, args.file, labels=False)
        except DataValidationError as err:
            raise SystemExit(str(err)) from None
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


def report(argv: list[str]) -> list[Path]:
    """`hf-multitask report RUN_DIR [--data DIR] [--split dev] [--output DIR]`: writes and lists the PNGs."""
    parser = argparse.ArgumentParser(prog="hf-multitask report", description="Plot a training run.")
    parser.add_argument("run_dir", help="A run's output directory (saved model + trainer_state.json, or checkpoints).")
    parser.add_argument("--data", help="Data directory for the confusion matrices and scatters (default: skip them).")
    parser.add_argument("--split", default="dev", help="Split of --data to predict on.")
    parser.add_argument("--output", help="Directory for the PNGs (default: RUN_DIR/report).")
    parser.add_argument("--smoothing", type=float, default=0.0, help="EMA weight in [0, 1) for training curves.")
    parser.add_argument("--max_samples", type=int, help="Predict on the first N rows of each task.")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)
    if not 0.0 <= args.smoothing < 1.0:
        parser.error(f"--smoothing must be in [0, 1), got {args.smoothing}")
    try:
        paths = write_report(args.run_dir, args.output, args.data, args.split, args.smoothing, args.max_samples,
                             args.batch_size)
    except FileNotFoundError as err:  # no run, no trainer_state.json, no data file: a message, not a traceback
        raise SystemExit(f"hf-multitask report: {err}") from None
    print(f"report: wrote {len(paths)} file(s)")
    for path in paths:
        print(f"  {path}")
    return paths


COMMANDS = {
    "train": (train, "train CONFIG.yaml [--key value ...]", "fine-tune one encoder on several tasks, then evaluate"),
    "evaluate": (evaluate, "evaluate MODEL_DIR --data DIR", "per-task metrics and the overall score of a saved model"),
    "predict": (predict, "predict MODEL_DIR --task TASK TEXT...", "predictions for texts or a file, as JSON lines"),
    "export": (export, "export MODEL_DIR --task TASK --output DIR",
               "one task as a plain AutoModelForSequenceClassification"),
    "report": (report, "report RUN_DIR [--data DIR] [--output DIR]", "PNG plots of a training run"),
}


def usage() -> str:
    lines = ["usage: hf-multitask [--import MODULE ...] COMMAND [ARGS ...]   (hf-multitask COMMAND --help for a "
             "command's arguments)", "", "commands:"]
    lines += [f"  {line:<46} {what}" for _, line, what in COMMANDS.values()]
    lines += ["", "--import MODULE: import MODULE first (from the working directory or the installed packages): a "
              "task kind,", "aggregator, loss weighting or regulariser of your own registers itself when imported."]
    return "\n".join(lines)


def import_extensions(argv: list[str]) -> list[str]:
    """Import the modules of the leading `--import MODULE` options (the working directory on the path, as with
    `python -m`), so that the extensions they register can be named; returns the arguments after them."""
    argv = list(argv)
    while argv and argv[0].split("=")[0] == "--import":
        option = argv.pop(0)
        name = option.partition("=")[2] or (argv.pop(0) if argv else "")
        if not name or name.startswith("-"):
            raise SystemExit(f"hf-multitask: --import needs a module name, got {name!r}")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise SystemExit(f"hf-multitask: --import {name}: {error}") from error
    return argv


def main(argv: list[str] | None = None) -> None:
    argv = import_extensions(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return
    if not argv or argv[0] not in COMMANDS:
        unknown = f"hf-multitask: unknown command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)}\n" if argv else ""
        print(unknown + usage(), file=sys.stderr)
        raise SystemExit(2)
    COMMANDS[argv[0]][0](argv[1:])


def run() -> None:
    """The `hf-multitask` console script: [`main`], with the library's errors about the user's input (bad
    arguments, data, files, checkpoints) printed as one line on stderr and exit status 1, not as a traceback
    (`HF_MULTITASK_TRACEBACK=1` shows it). Other exceptions keep their traceback."""
    try:
        main()
    except (ValueError, OSError) as error:  # DataValidationError and CheckpointError are ValueErrors
        if os.environ.get("HF_MULTITASK_TRACEBACK"):
            raise
        command = next((a for a in sys.argv[1:] if a in COMMANDS), "")
        print(f"hf-multitask {command}: {type(error).__name__}: {error}".replace("  ", " "), file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    run()
