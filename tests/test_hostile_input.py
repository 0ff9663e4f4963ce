"""Hostile input, one case per row (issue #6, item 5; the table in docs/reliability.md lists the same ids).

`test_rejected` rows build one bad input in `tmp_path` and expect an error whose message names the file, the
row and the column (or the task, key or field). `test_logged` rows build an input the library accepts on purpose
and expect the warning that says what it decided and how often.
"""

from __future__ import annotations

import json
import logging
import re

import pandas as pd
import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict

from hf_multitask import (
    MultitaskConfig,
    MultitaskDataset,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    TaskSpec,
    get_task,
    load_task_data,
    load_task_split,
    tokenize_task,
)
from hf_multitask.build import ModelArguments, build_model, build_task_specs, fit_tokenizer_to_model
from hf_multitask.cli import load_config_file, main, parse_train_args
from hf_multitask.data import DataValidationError, load_tokenized

from .conftest import SST_ROWS, STS_ROWS, write_tsv

SST_HEADER = ["id", "sentence", "sentiment"]
STS_HEADER = ["id", "sentence1", "sentence2", "similarity"]
QUORA_HEADER = ["id", "sentence1", "sentence2", "is_duplicate"]


# ---- builders: each returns `(tmp_path, request) -> zero-argument callable that runs the hostile input` ----


def raw_file(name: str, content: str | bytes, task: str = "sst"):
    """Load a file written byte for byte."""

    def build(tmp_path, request):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return lambda: load_task_split(get_task(task), path)

    return build


def tsv(header: list[str], rows: list[tuple], task: str = "sst"):
    """Load a TSV with `header` and `rows` (an id column is prepended, as in the CS224N files)."""

    def build(tmp_path, request):
        path = write_tsv(tmp_path / f"{task}-train.tsv", header, rows)
        return lambda: load_task_split(get_task(task), path)

    return build


def bad_row(task: str, row: tuple):
    """Two good rows, then `row` as row 3."""
    good, header = (SST_ROWS[:2], SST_HEADER) if task == "sst" else (STS_ROWS[:2], STS_HEADER)
    return tsv(header, [*good, row], task)


def jsonl(task: str, records: list[str]):
    """A JSON-lines file from raw lines (so that NaN, true and missing keys can be written)."""
    return raw_file(f"{task}-train.jsonl", "\n".join(records) + "\n", task)


def parquet_with_missing_text(tmp_path, request):
    """A pandas frame whose text column holds a NaN (pandas' missing value), saved as parquet."""
    path = tmp_path / "sst-train.parquet"
    pd.DataFrame({"sentence": ["a good film", float("nan")], "sentiment": [3, 1]}).to_parquet(path)
    return lambda: load_task_split(get_task("sst"), path)


def missing_data_file(tmp_path, request):
    return lambda: load_task_data(get_task("sst"), tmp_path)


def missing_data_dir(tmp_path, request):
    return lambda: load_task_data(get_task("sst"), str(tmp_path / "no-such-dir"))


def save_to_disk_folder(tmp_path, request):
    """A DatasetDict written by `save_to_disk`: no <task>-<split> files, but datasets' own layout."""
    raw = Dataset.from_dict({"sentence": [s for s, _ in SST_ROWS], "sentiment": [label for _, label in SST_ROWS]})
    DatasetDict({"train": raw, "dev": raw}).save_to_disk(str(tmp_path / "saved"))
    return lambda: load_task_data(get_task("sst"), tmp_path / "saved")


def in_memory_dataset(tmp_path, request):
    return lambda: load_task_data(get_task("sst"), Dataset.from_dict({"sentence": ["good"], "sentiment": [3]}))


def missing_given_file(tmp_path, request):
    return lambda: load_task_split(get_task("sst"), tmp_path / "sst-train.tsv")


def task_without_data(tmp_path, request):
    """`hf-multitask train` whose config names sts, with no sts files in data_dir."""
    data_dir = request.getfixturevalue("data_dir")
    for split in ("train", "dev"):
        (data_dir / f"sts-{split}.tsv").unlink()
    encoder = tmp_path / "encoder"
    MultitaskModel(MultitaskConfig(encoder=request.getfixturevalue("bert_config"), tasks=[get_task("sst")])) \
        .encoder.save_pretrained(encoder)
    request.getfixturevalue("tokenizer").save_pretrained(encoder)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(encoder), "data_dir": str(data_dir),
                                      "output_dir": str(tmp_path / "run"), "report_to": [], "use_cpu": True}))
    return lambda: main(["train", str(config)])


def max_length_over_positions(tmp_path, request):
    """`hf-multitask train`'s tokenisation with max_length 100 on an encoder whose position embeddings stop at 64
    (the test tokenizer has no model_max_length of its own)."""
    encoder = tmp_path / "encoder"
    request.getfixturevalue("tiny_model").encoder.save_pretrained(encoder)
    tokenizer = request.getfixturevalue("tokenizer")
    args = ModelArguments(model_name_or_path=str(encoder), tasks=["sst"], max_length=100)
    specs = build_task_specs(args)
    model = build_model(args, specs)

    def run():
        fit_tokenizer_to_model(tokenizer, model)
        load_tokenized(specs, tokenizer, str(request.getfixturevalue("data_dir")), "train", None)

    return run


def sequence_longer_than_positions(tmp_path, request):
    model = request.getfixturevalue("tiny_model")
    return lambda: model(task_name="sst", input_ids=torch.ones(1, 65, dtype=torch.long))


def training_args(tmp_path, **overrides) -> MultitaskTrainingArguments:
    return MultitaskTrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, **overrides)


def tokenize_raw(columns: dict):
    """`tokenize_task` on an in-memory quora Dataset of `columns` that no loader has validated."""

    def build(tmp_path, request):
        tokenizer = request.getfixturevalue("tokenizer")
        return lambda: tokenize_task(Dataset.from_dict(columns), get_task("quora"), tokenizer)

    return build


def trainer_with(train_dataset_of, eval_dataset_of=None):
    """A MultitaskTrainer on the tiny model whose train_dataset is `train_dataset_of(tokenized sst train)` (and
    eval_dataset `eval_dataset_of(it)`)."""

    def build(tmp_path, request):
        sst = request.getfixturevalue("tokenized")["train"]["sst"]
        model, tokenizer = request.getfixturevalue("tiny_model"), request.getfixturevalue("tokenizer")
        args = training_args(tmp_path, max_steps=1)
        evaluation = eval_dataset_of(sst) if eval_dataset_of else None
        return lambda: MultitaskTrainer(model=model, args=args, train_dataset=train_dataset_of(sst),
                                        eval_dataset=evaluation, processing_class=tokenizer)

    return build


def saved_model(tmp_path, request):
    """The tiny cs224n model (sst, quora, sts; cross-encoded) and its tokenizer, saved."""
    path = tmp_path / "saved"
    request.getfixturevalue("tiny_model").save_pretrained(path)
    request.getfixturevalue("tokenizer").save_pretrained(path)
    return path


def continue_from_saved(**model_args):
    """`build_model` on a saved multitask model with a config that asks for `model_args`."""

    def build(tmp_path, request):
        args = ModelArguments(model_name_or_path=str(saved_model(tmp_path, request)), **model_args)
        return lambda: build_model(args, build_task_specs(args))

    return build


def evaluate_missing_head(tmp_path, request):
    path = saved_model(tmp_path, request)
    return lambda: main(["evaluate", str(path), "--data", str(tmp_path), "--tasks", "sts", "nli"])


def load_heads_into(*tasks: TaskSpec):
    """`load_heads_from(saved tiny model)` into a model with `tasks`."""

    def build(tmp_path, request):
        source = saved_model(tmp_path, request)
        target = MultitaskModel(MultitaskConfig(encoder=request.getfixturevalue("bert_config"), tasks=list(tasks)))
        return lambda: target.load_heads_from(source)

    return build


def config_file(name: str, text: str):
    def build(tmp_path, request):
        path = tmp_path / name
        path.write_text(text)
        return lambda: load_config_file(str(path))

    return build


def train_config(text: str):
    """`hf-multitask train`'s argument parsing of a config file holding `text`."""

    def build(tmp_path, request):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        return lambda: parse_train_args([str(path)])

    return build


def two_files_for_one_split(tmp_path, request):
    write_tsv(tmp_path / "sst-train.tsv", SST_HEADER, SST_ROWS)
    (tmp_path / "sst-train.csv").write_text("id,sentence,sentiment\na,good,3\n")
    return lambda: load_task_data(get_task("sst"), tmp_path, splits=("train",))


def tokenize_empty(tmp_path, request):
    tokenizer = request.getfixturevalue("tokenizer")
    return lambda: tokenize_task(Dataset.from_dict({"sentence": [], "labels": []}), get_task("sst"), tokenizer)


def tokenize_splits(wrap):
    """`tokenize_task` on `wrap(a one-row SST Dataset)`: a DatasetDict, a streaming IterableDataset."""

    def build(tmp_path, request):
        tokenizer = request.getfixturevalue("tokenizer")
        data = wrap(Dataset.from_dict({"sentence": ["a good film"], "labels": [3]}))
        return lambda: tokenize_task(data, get_task("sst"), tokenizer)

    return build


def yaml_python_tag(tmp_path, request):
    """A YAML tag that would run a shell command under an unsafe loader; the marker file must not appear."""
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(f"output_dir: !!python/object/apply:os.system [\"touch {marker}\"]\n")

    def run():
        try:
            load_config_file(str(path))
        finally:
            assert not marker.exists(), "the YAML tag was executed"

    return run


def task_specs(**model_args):
    return lambda tmp_path, request: lambda: build_task_specs(ModelArguments(**model_args))


def spec(**changes):
    return lambda tmp_path, request: lambda: TaskSpec.from_dict({**get_task("sst").to_dict(), **changes})


class TorchStream(torch.utils.data.IterableDataset):
    """A torch IterableDataset over a Dataset's rows."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        return iter(self.dataset)


class SizedTorchStream(TorchStream):
    """A torch IterableDataset that also has a length: still no indexing by position."""

    def __len__(self):
        return len(self.dataset)


def multitask_dataset(make):
    def build(tmp_path, request):
        sst = request.getfixturevalue("tokenized")["train"]["sst"]
        return lambda: MultitaskDataset({"sst": make(sst)})

    return build


# ---- the table: id, builder, exception, message ----

FILE = "sst-train.tsv"
REJECTED = [
    # missing, empty and header-only files
    ("missing_data_file", missing_data_file, FileNotFoundError,
     r"Task 'sst', split 'train': no data file; looked for \[.*sst-train\.tsv"),
    ("missing_data_dir", missing_data_dir, FileNotFoundError,
     r"Task 'sst': data directory .*no-such-dir does not exist"),
    ("save_to_disk_folder", save_to_disk_folder, FileNotFoundError,
     r"Task 'sst', split 'train': no data file; looked for \[.*\]; .*saved holds a dataset written by save_to_disk: "
     r"read it with datasets\.load_from_disk\("),
    ("in_memory_dataset_to_the_loader", in_memory_dataset, TypeError,
     r"Task 'sst': load_task_data reads a directory of data files or a hub dataset id, got a Dataset; a dataset in "
     r"memory needs no loading: pass it, one split at a time, to tokenize_task"),
    ("missing_given_file", missing_given_file, FileNotFoundError,
     r"Task 'sst': data file .*sst-train\.tsv does not exist"),
    ("empty_tsv", raw_file(FILE, ""), DataValidationError, r"sst-train\.tsv: the file is empty \(0 bytes\)"),
    ("empty_jsonl", raw_file("sst-train.jsonl", ""), DataValidationError,
     r"sst-train\.jsonl: the file is empty \(0 bytes\)"),
    ("blank_header_line", raw_file(FILE, "\n\n"), DataValidationError, r"sst-train\.tsv: no header line"),
    ("header_only", tsv(SST_HEADER, []), DataValidationError, r"sst-train\.tsv: no rows for task 'sst'"),
    # columns
    ("missing_column", tsv(["id", "text", "sentiment"], SST_ROWS), DataValidationError,
     r"sst-train\.tsv: task 'sst' needs column\(s\) \['sentence'\], but the data has \['id', 'text', 'sentiment'\]"),
    ("misspelled_text_column", tsv(["id", "sentense", "sentiment"], SST_ROWS), DataValidationError,
     r"sst-train\.tsv: task 'sst' needs column\(s\) \['sentence'\] \(did you mean 'sentense'\?\)"),
    ("missing_column_no_close_name", tsv(["id", "text", "label"], SST_ROWS), DataValidationError,
     r"sst-train\.tsv: task 'sst' needs column\(s\) \['sentence', 'sentiment'\], but the data has"),
    ("misspelled_label_column", tsv(["id", "sentence", "sentimnet"], SST_ROWS), DataValidationError,
     r"sst-train\.tsv: task 'sst' needs column\(s\) \['sentiment'\] \(did you mean 'sentimnet'\?\)"),
    ("repeated_column", tsv(["id", "sentence", "sentence", "sentiment"], [("a", "b", 1)]), DataValidationError,
     r"sst-train\.tsv: the header repeats column\(s\) \['sentence'\]"),
    ("row_with_more_fields", raw_file(FILE, "id\tsentence\tsentiment\na\tgood\t3\nb\tbad\t1\textra\n"),
     DataValidationError, r"sst-train\.tsv: row 2 has more fields \(4\) than the header's 3 columns"),
    ("row_with_fewer_fields", raw_file(FILE, "id\tsentence\tsentiment\na\tgood\t3\nb\tbad\n"),
     DataValidationError, r"sst-train\.tsv: row 2 has fewer fields \(2\) than the header's 3 columns"),
    ("unbalanced_quote", raw_file(FILE, 'id\tsentence\tsentiment\na\tgood\t3\nb\t"bad\t1\nc\tfine\t2\n'),
     DataValidationError, r"sst-train\.tsv: row 2 \(from line 3\): unexpected end of data \(a field that starts "),
    ("unbalanced_quote_swallowing_a_row",
     raw_file(FILE, 'id\tsentence\tsentiment\na\tgood\t3\nb\t"bad\t1\nc\tfine"\t2\n'),
     DataValidationError, r"sst-train\.tsv: row 2, column 'sentence': the field holds a tab.*unbalanced"),
    ("csv_quote_swallowing_rows", raw_file(FILE.replace(".tsv", ".csv"),
                                           'id,sentence,sentiment\nr1,"great film,4\nr2,awful,0\nr3,meh",2\n'),
     DataValidationError, r"sst-train\.csv: row 1, column 'sentence': the field holds a line break.*unbalanced"),
    ("text_after_a_closing_quote", raw_file(FILE, 'id\tsentence\tsentiment\na\t"Hello" world\t3\n'),
     DataValidationError, r"sst-train\.tsv: row 1 \(from line 2\): '<tab>' expected after '\"'"),
    ("duplicate_ids", raw_file(FILE, "id\tsentence\tsentiment\na\tgood\t3\na\tbad\t1\n"),
     DataValidationError, r"sst-train\.tsv: rows 1 and 2 share the id 'a'"),
    ("empty_id", raw_file(FILE, "id\tsentence\tsentiment\na\tgood\t3\n\tbad\t1\n"),
     DataValidationError, r"sst-train\.tsv: row 2, column 'id': empty or missing id"),
    ("invisible_text", raw_file(FILE, "id\tsentence\tsentiment\na\t\u200b\t3\n"),
     DataValidationError, r"sst-train\.tsv: row 1, column 'sentence': empty or missing text"),
    # labels out of range or of the wrong type
    ("sst_label_5", bad_row("sst", ("good", 5)), DataValidationError,
     r"sst-train\.tsv: row 3, column 'sentiment': label '5' is not a class id in 0\.\.4"),
    ("sst_label_negative", bad_row("sst", ("good", -1)), DataValidationError,
     r"sst-train\.tsv: row 3, column 'sentiment': label '-1' is not a class id in 0\.\.4"),
    ("sst_label_fractional", bad_row("sst", ("good", 2.5)), DataValidationError,
     r"sst-train\.tsv: row 3, column 'sentiment': label '2\.5' is not a class id"),
    ("sst_label_unknown_name", bad_row("sst", ("good", "great")), DataValidationError,
     r"sst-train\.tsv: row 3, column 'sentiment': label 'great' is neither a class id nor one of \['very negative'"),
    ("sst_label_boolean_json", jsonl("sst", ['{"sentence": "a", "sentiment": 1}',
                                             '{"sentence": "b", "sentiment": true}']),
     DataValidationError, r"sst-train\.jsonl: row 2, column 'sentiment': label True is a boolean"),
    ("sts_score_out_of_range", bad_row("sts", ("a", "b", 5.5)), DataValidationError,
     r"sts-train\.tsv: row 3, column 'similarity': score '5\.5' is outside the task's range \[0\.0, 5\.0\]"),
    ("sts_score_not_a_number", bad_row("sts", ("a", "b", "3.x")), DataValidationError,
     r"sts-train\.tsv: row 3, column 'similarity': score '3\.x' is not a number"),
    # NaN, missing and empty values
    ("sst_label_nan", bad_row("sst", ("good", "nan")), DataValidationError,
     r"sst-train\.tsv: row 3, column 'sentiment': label 'nan' is not a class id"),
    ("sts_score_nan", bad_row("sts", ("a", "b", "nan")), DataValidationError,
     r"sts-train\.tsv: row 3, column 'similarity': score 'nan' is outside the task's range"),
    ("sts_score_nan_json", jsonl("sts", ['{"sentence1": "a", "sentence2": "b", "similarity": NaN}']),
     DataValidationError, r"sts-train\.jsonl: row 1, column 'similarity': score nan is outside the task's range"),
    ("sts_score_inf", bad_row("sts", ("a", "b", "inf")), DataValidationError,
     r"sts-train\.tsv: row 3, column 'similarity': score 'inf' is outside the task's range"),
    ("sst_label_empty", bad_row("sst", ("good", "")), DataValidationError,
     r"sst-train\.tsv: row 3, column 'sentiment': empty label"),
    ("sst_label_null_json", jsonl("sst", ['{"sentence": "a", "sentiment": 1}',
                                          '{"sentence": "b", "sentiment": null}']),
     DataValidationError, r"sst-train\.jsonl: row 2, column 'sentiment': empty label"),
    ("text_empty", bad_row("sts", ("a", "", 1.0)), DataValidationError,
     r"sts-train\.tsv: row 3, column 'sentence2': empty or missing text \(''\)"),
    ("text_whitespace_only", bad_row("sst", ("  \u00a0 ", 2)), DataValidationError,
     r"sst-train\.tsv: row 3, column 'sentence': empty or missing text"),
    ("text_missing_key_json", jsonl("sst", ['{"sentence": "a", "sentiment": 1}', '{"sentiment": 2}']),
     DataValidationError, r"sst-train\.jsonl: row 2, column 'sentence': empty or missing text \(None\)"),
    ("text_nan_json", jsonl("sst", ['{"sentence": NaN, "sentiment": 1}']), DataValidationError,
     r"sst-train\.jsonl: row 1, column 'sentence': expected text, got float nan"),
    ("text_nan_parquet", parquet_with_missing_text, DataValidationError,
     r"sst-train\.parquet: row 2, column 'sentence': empty or missing text \(None\)"),
    ("text_number_json", jsonl("sst", ['{"sentence": 12, "sentiment": 1}']), DataValidationError,
     r"sst-train\.jsonl: row 1, column 'sentence': expected text, got int 12"),
    ("tokenize_missing_text_column", tokenize_raw({"sentence1": ["a"], "is_duplicate": [1]}), DataValidationError,
     r"Task 'quora': no text column\(s\) \['sentence2'\] in the dataset \(its columns: \['sentence1', "
     r"'is_duplicate'\]\)"),
    ("tokenize_none_text", tokenize_raw({"sentence1": ["a", "b"], "sentence2": ["c", None]}), DataValidationError,
     r"Task 'quora': row 1, column 'sentence2': empty or missing text \(None\)"),
    # encodings and formats
    ("invalid_utf8_tsv", raw_file(FILE, b"id\tsentence\tsentiment\nx\tcaf\xe9\t1\n"), DataValidationError,
     r"sst-train\.tsv: not valid UTF-8 at byte 27, line 2"),
    ("invalid_utf8_jsonl", raw_file("sst-train.jsonl", b'{"sentence": "caf\xe9", "sentiment": 1}\n'),
     DataValidationError, r"sst-train\.jsonl: not valid UTF-8 at byte 17, line 1"),
    ("malformed_jsonl", raw_file("sst-train.jsonl", '{"sentence": "a", "sentiment": 1\n'), DataValidationError,
     r"sst-train\.jsonl: could not be read as json"),
    # tasks and data that do not match
    ("task_without_data", task_without_data, FileNotFoundError,
     r"Task 'sts', split 'train': no data file; looked for \[.*sts-train\.tsv"),
    ("sequence_over_positions", sequence_longer_than_positions, ValueError,
     r"A batch of 65 tokens per sequence is longer than the encoder's position embeddings allow \(64, from "
     r"max_position_embeddings\): set max_length <= 64"),
    ("data_for_task_without_head", trainer_with(lambda sst: {"sst": sst, "nli": sst}), ValueError,
     r"train_dataset has task\(s\) \['nli'\] with no head in the model \(heads: \['quora', 'sst', 'sts'\]\)"),
    # a config that disagrees with a saved model
    ("saved_model_other_tasks", continue_from_saved(tasks=["sst"]), ValueError,
     r"saved has heads for tasks \['sst', 'quora', 'sts'\], but the config asks for tasks \['sst'\]"),
    ("saved_model_other_spec", continue_from_saved(task_overrides='{"sst": {"loss": "ordinal"}}'), ValueError,
     r"saved was saved with other settings than the config asks for: task 'sst': loss='ordinal' "
     r"\(saved: 'cross_entropy'\)\. Make the config"),
    ("saved_model_other_pair_encoding", continue_from_saved(pair_encoding="bi"), ValueError,
     r"other settings than the config asks for: task 'quora': pair_encoding='bi' \(saved: 'cross'\); "
     r"task 'sts': pair_encoding='bi' \(saved: 'cross'\)\. "),
    ("saved_model_other_pooling", continue_from_saved(pooling="cls", classifier_dropout=0.2), ValueError,
     r"saved was saved with other settings than the config asks for: pooling='cls' \(saved: 'mean'\); "
     r"classifier_dropout=0.2 \(saved: 0\.1\)\. Make the config \(pooling, classifier_dropout, "),
    ("evaluate_tasks_missing_head", evaluate_missing_head, SystemExit,
     r"saved has no head for task\(s\) \['nli'\]; it has \['sst', 'quora', 'sts'\]"),
    ("load_heads_other_tasks", load_heads_into(get_task("sst"), get_task("sst").replace(name="nli")), ValueError,
     r"Task 'nli' has no head in the source model \(it has \['sst', 'quora', 'sts'\]\)"),
    ("load_heads_other_label_count", load_heads_into(get_task("sst", label_names=["neg", "neu", "pos"])),
     ValueError, r"Task 'sst': source head has \d+ labels, this model's has \d+"),
    # config files and task settings
    ("config_unknown_key", config_file("bad.yaml", "learning_rate: 1.0e-4\nlearnin_rate: 3\n"), ValueError,
     r"bad\.yaml: unknown key\(s\) \['learnin_rate'\] \(did you mean 'learning_rate'\?\)"),
    ("config_python_tag", yaml_python_tag, ValueError,
     r"evil\.yaml: not a valid YAML config: could not determine a constructor for the tag "
     r"'tag:yaml\.org,2002:python/object/apply:os\.system'"),
    ("config_yaml_syntax", config_file("bad.yaml", "tasks: [sst, sts\nlearning_rate: 1\n"), ValueError,
     r"bad\.yaml: not a valid YAML config: (?s:.*)line 2, column 14"),
    ("config_json_syntax", config_file("bad.json", '{"learning_rate": 1e-4,}'), ValueError,
     r"bad\.json: not a valid JSON config: .*line 1"),
    ("config_tasks_not_a_list", config_file("bad.yaml", "tasks: sst\n"), ValueError,
     r"bad\.yaml: tasks must be a list of task names, e\.g\. \[sst, sts\], got 'sst'"),
    ("config_null_number", train_config("learning_rate:\n"), ValueError,
     r"bad\.yaml: learning_rate is empty \(null\); give a value or leave the key out \(default 5e-05\)"),
    ("config_fraction_for_an_integer", train_config("max_steps: 2.5\n"), ValueError,
     r"bad\.yaml: max_steps must be an integer, got 2\.5"),
    ("config_list_for_a_number", train_config("classifier_dropout: [0.1]\n"), ValueError,
     r"bad\.yaml: classifier_dropout must be a number, got \[0\.1\]"),
    ("config_nested_task_list", train_config("tasks: [[sst], quora]\n"), ValueError,
     r"bad\.yaml: tasks must be a list of plain values, got \[\['sst'\], 'quora'\]"),
    ("config_task_overrides_list", config_file("bad.yaml", "task_overrides: [sst]\n"), ValueError,
     r"bad\.yaml: task_overrides must map task names to \{field: value\}, got \['sst'\]"),
    ("config_no_rows", train_config("max_train_samples: 0\n"), ValueError,
     r"max_train_samples must be >= 1 \(rows kept per task\), got 0"),
    ("spec_label_names_a_string", spec(label_names="positive"), ValueError,
     r"TaskSpec 'sst': label_names must be a list of class names \(strings\), got 'positive'"),
    ("spec_label_names_yaml_booleans", spec(label_names=[False, True]), ValueError,
     r"TaskSpec 'sst': label_names must be a list of class names \(strings\), got \[False, True\]; YAML reads "
     r"unquoted yes/no"),
    ("two_files_for_one_split", two_files_for_one_split, DataValidationError,
     r"Task 'sst', split 'train': 2 data files \[.*sst-train\.tsv.*sst-train\.csv'\]; keep one"),
    ("unknown_file_type", raw_file("sst-train.txt", "id\tsentence\tsentiment\na\tgood\t3\n"), DataValidationError,
     r"sst-train\.txt: unknown data file type '\.txt'; the loader reads \.tsv, \.csv"),
    ("jsonl_with_a_trailing_comma", jsonl("sst", ['{"sentence": "a", "sentiment": 3},']), DataValidationError,
     r"sst-train\.jsonl: could not be read as json: DatasetGenerationError: .*; ArrowInvalid: JSON parse error"),
    ("jsonl_null_id", jsonl("sst", ['{"id": null, "sentence": "a", "sentiment": 3}']), DataValidationError,
     r"sst-train\.jsonl: row 1, column 'id': empty or missing id \(None\)"),
    ("tokenize_empty_dataset", tokenize_empty, DataValidationError, r"Task 'sst': the dataset is empty"),
    ("tokenize_dataset_dict", tokenize_splits(lambda ds: DatasetDict({"train": ds, "validation": ds})), TypeError,
     r"Task 'sst': tokenize_task takes one split \(a Dataset\), got a DatasetDict with splits \['train', "
     r"'validation'\]: call it once per split, tokenize_task\(data\['train'\], spec, tokenizer\)"),
    ("tokenize_iterable_dataset", tokenize_splits(lambda ds: ds.to_iterable_dataset()), TypeError,
     r"Task 'sst': IterableDataset has no length \(a streaming dataset\?\); each task's rows are drawn by index"),
    ("token_id_outside_the_vocabulary", trainer_with(lambda sst: {"sst": Dataset.from_dict(
        {"input_ids": [[2, 7, 3], [2, 99999, 3]], "label": [0, 1]})}), DataValidationError,
     r"train_dataset\['sst'\]: row 1, column 'input_ids': token id 99999 is outside the encoder's vocabulary "
     r"\(0\.\.\d+; 1 ids in all\): was task 'sst' tokenised with another tokenizer"),
    ("negative_token_id", trainer_with(lambda sst: {"sst": Dataset.from_dict(
        {"input_ids": [[2, -3, 3]], "label": [0]})}), DataValidationError,
     r"train_dataset\['sst'\]: row 0, column 'input_ids': token id -3 is outside"),
    ("row_without_tokens", trainer_with(lambda sst: {"sst": Dataset.from_dict(
        {"input_ids": [[2, 3], []], "label": [0, 1]})}), DataValidationError,
     r"train_dataset\['sst'\]: row 1, column 'input_ids': no tokens \(1 rows in all\)"),
    ("unknown_task_name", task_specs(tasks=["sst", "stss"]), ValueError,
     r"Unknown task 'stss' \(did you mean 'sts'\?\)"),
    ("task_override_unknown_field", task_specs(task_overrides='{"sst": {"los": "ordinal"}}'), ValueError,
     r"Task 'sst': unknown TaskSpec field\(s\) \['los'\] \(did you mean 'loss'\?\)"),
    ("task_overrides_not_json", task_specs(task_overrides="{sst: {loss: ordinal}}"), ValueError,
     r"task_overrides is not valid JSON"),
    ("task_overrides_unknown_task", task_specs(tasks=["sst"], task_overrides='{"sts": {"loss": "mse"}}'), ValueError,
     r"task_overrides names task\(s\) \['sts'\] that are not in tasks=\['sst'\]"),
    ("spec_duplicate_label_names", spec(label_names=["neg", "pos", "neg"]), ValueError,
     r"TaskSpec 'sst': label_names has duplicates"),
    ("spec_label_column_is_a_text_column", spec(label_column="sentence"), ValueError,
     r"TaskSpec 'sst': text_columns and label_column must be distinct"),
    # iterable datasets where a sized one is needed
    ("hf_iterable_in_multitask_dataset", multitask_dataset(lambda ds: ds.to_iterable_dataset()), TypeError,
     r"Task 'sst': IterableDataset has no length \(a streaming dataset\?\); each task's rows are drawn by index: "
     r"load it whole"),
    ("torch_iterable_in_multitask_dataset", multitask_dataset(TorchStream), TypeError,
     r"Task 'sst': TorchStream has no length"),
    ("sized_torch_iterable_in_multitask_dataset", multitask_dataset(SizedTorchStream), TypeError,
     r"Task 'sst': SizedTorchStream has no length"),
    ("iterable_task_in_trainer", trainer_with(lambda sst: {"sst": sst.to_iterable_dataset()}), TypeError,
     r"train_dataset\['sst'\]: IterableDataset has no length"),
    ("iterable_eval_task_in_trainer", trainer_with(lambda sst: {"sst": sst},
                                                   lambda sst: {"sst": sst.to_iterable_dataset()}), TypeError,
     r"eval_dataset\['sst'\]: IterableDataset has no length"),
]


@pytest.mark.parametrize(("build", "error", "match"), [pytest.param(*case[1:], id=case[0]) for case in REJECTED])
def test_rejected(build, error, match, tmp_path, request):
    run = build(tmp_path, request)
    with pytest.raises(error, match=match):
        run()


# ---- checks in trainer.py / modeling.py ----


def test_rejected_bare_iterable_train_dataset(tiny_model, tokenized, tokenizer, tmp_path):
    stream = tokenized["train"]["sst"].to_iterable_dataset()
    with pytest.raises(TypeError, match=r"MultitaskTrainer needs train_dataset as \{task_name: Dataset\}.*"
                                        r"got IterableDataset"):
        MultitaskTrainer(model=tiny_model, args=training_args(tmp_path, max_steps=1), train_dataset=stream,
                         processing_class=tokenizer)


def test_rejected_load_heads_other_pair_encoding(tmp_path, request):
    run = load_heads_into(get_task("quora", pair_encoding="bi"))(tmp_path, request)
    with pytest.raises(ValueError, match=r"Task 'quora': the source head is cross-encoded, this model's is "
                                         r"bi-encoded"):
        run()


# ---- accepted on purpose: the decision is logged with its count ----


def truncated_pairs(task: str, rows: list[tuple], max_length: int = 8):
    """Tokenise `rows` of a pair task with `max_length`; every result must fit."""
    header = QUORA_HEADER if task == "quora" else STS_HEADER

    def build(tmp_path, request):
        tokenizer = request.getfixturevalue("tokenizer")
        spec_ = get_task(task, max_length=max_length, pair_encoding="bi" if task == "sts" else "cross")
        data = load_task_split(spec_, write_tsv(tmp_path / f"{task}-train.tsv", header, rows))

        def run():
            features = tokenize_task(data, spec_, tokenizer)
            columns = [c for c in ("input_ids", "input_ids_b") if c in features.column_names]
            assert max(len(ids) for c in columns for ids in features[c]) <= max_length

        return run

    return build


def capped_max_length(tmp_path, request):
    tokenizer = request.getfixturevalue("tokenizer")
    tokenizer.model_max_length = 9
    spec_ = get_task("sst", max_length=64)
    data = load_task_split(spec_, write_tsv(tmp_path / "sst-train.tsv", SST_HEADER, SST_ROWS))
    return lambda: tokenize_task(data, spec_, tokenizer)


LOGGED = [
    ("extra_column", tsv([*SST_HEADER, "source"], [(*row, "web") for row in SST_ROWS]),
     r"sst-train\.tsv: task 'sst' ignores column\(s\) \['source'\]"),
    ("blank_lines", raw_file(FILE, "id\tsentence\tsentiment\na\tgood\t3\n\nb\tbad\t1\n\n\nc\tfine\t2\n"),
     r"sst-train\.tsv: skipped 3 blank line\(s\)"),
    ("classes_never_seen", tsv(SST_HEADER, [("bad", 0), ("meh", 1), ("ok", 2)]),
     r"sst-train\.tsv: task 'sst' has 5 classes, but class\(es\) \['positive', 'very positive'\] never occur in "
     r"its 3 rows"),
    ("classes_never_seen_in_a_tokenised_dataset", trainer_with(lambda sst: {"sst": Dataset.from_dict(
        {"input_ids": [[2, 5, 3]] * 3, "label": [0, 1, 2]})}),
     r"train_dataset\['sst'\]: task 'sst' has 5 classes, but class\(es\) \['positive', 'very positive'\] never "
     r"occur in its 3 rows"),
    # cross-encoded: [CLS] a [SEP] b [SEP] is 2 + 2 + 3 = 7, 4 + 4 + 3 = 11, 1 + 1 + 3 = 5 and 6 + 2 + 3 = 11 tokens
    ("truncated_cross_encoded", truncated_pairs("quora", [
        ("the film", "a movie", 1), ("the film is good", "a movie is bad", 0), ("good", "bad", 0),
        ("the cat is on the grass", "the dog", 1)]),
     r"Task 'quora': 2 of 4 examples are longer than 8 tokens and are truncated"),
    # bi-encoded: each sentence alone; the first example has two long sentences and counts once
    ("truncated_bi_encoded", truncated_pairs("sts", [
        ("the cat is on the grass very good", "the dog is on the grass very bad", 2.0),
        ("a cat", "the dog is on the grass very bad", 1.0), ("a cat", "a dog", 3.0)]),
     r"Task 'sts': 2 of 3 examples are longer than 8 tokens and are truncated"),
    ("max_length_over_tokenizer_limit", capped_max_length,
     r"Task 'sst': max_length 64 exceeds the tokenizer's limit 9"),
    ("max_length_over_positions", max_length_over_positions,
     r"Task 'sst': max_length 100 exceeds the tokenizer's limit 64"),
]


@pytest.mark.parametrize(("build", "message"), [pytest.param(*case[1:], id=case[0]) for case in LOGGED])
def test_logged(build, message, tmp_path, request, caplog):
    run = build(tmp_path, request)
    with caplog.at_level(logging.WARNING, logger="hf_multitask"):
        run()
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("hf_multitask")]
    assert any(re.search(message, w) for w in warnings), warnings


def test_extra_file_in_data_dir_is_ignored(data_dir, tokenizer):
    (data_dir / "nli-train.tsv").write_text("not\ta\tvalid file\n\"")  # would fail to load if it were read
    loaded = load_tokenized([get_task("sst")], tokenizer, str(data_dir), "train", None)
    assert list(loaded) == ["sst"] and len(loaded["sst"]) == len(SST_ROWS)


def test_label_names_and_float_ids_are_read_as_class_ids(tmp_path):
    path = write_tsv(tmp_path / "sst-train.tsv", SST_HEADER, [("good", "positive"), ("bad", "1.0"), ("ok", 2)])
    assert load_task_split(get_task("sst"), path)["labels"] == [3, 1, 2]


def test_byte_order_mark_is_not_part_of_a_column_name(tmp_path):
    path = tmp_path / "sst-train.tsv"
    path.write_bytes("\ufeffsentence\tsentiment\ngood\t3\n".encode("utf-8"))
    assert load_task_split(get_task("sst"), path)["sentence"] == ["good"]


def test_json_labels_and_texts_round_trip(tmp_path):
    """The JSON path accepts what the TSV path accepts (a control for the JSON rows above)."""
    path = tmp_path / "sts-train.jsonl"
    path.write_text("\n".join(json.dumps({"sentence1": a, "sentence2": b, "similarity": s}) for a, b, s in STS_ROWS))
    assert load_task_split(get_task("sts"), path)["labels"] == pytest.approx([s for _, _, s in STS_ROWS])
