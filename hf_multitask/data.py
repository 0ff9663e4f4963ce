"""Loading, validation, tokenisation and collation of per-task data.

Every bad row is an error that names the file, the row and the column: nothing is dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset
from transformers.utils import logging

from .class_labels import class_label_ids
from .delimited import read_delimited, read_utf8
from .kinds import DataValidationError, TaskKind
from .tasks import TaskSpec
from .utils import did_you_mean

logger = logging.get_logger(__name__)

DATA_EXTENSIONS = ("tsv", "csv", "jsonl", "json", "parquet")
_SENTENCE_KIND = TaskKind()  # collation and lengths of batches whose task has no spec at hand


# ---- loading and validation ----


def validate_rows(spec: TaskSpec, columns: list[str], rows: Iterable[Mapping[str, Any]], source: str,
                  labels: bool = True) -> dict:
    """Check every row against `spec` and return the columns `{text columns..., "labels", ["id"]}`.

    Raises [`DataValidationError`] naming `source`, the 1-based row (header excluded) and the column. Labels are
    parsed and checked by the task's kind; `labels=False` reads the text columns alone (inputs to predict on).
    """
    needed = (*spec.text_columns, spec.label_column) if labels else spec.text_columns
    missing = [c for c in needed if c not in columns]
    if missing:
        unused = [c for c in columns if c not in (*spec.text_columns, spec.label_column, "id")]
        raise DataValidationError(
            f"{source}: task {spec.name!r} needs column(s) {missing}{did_you_mean(missing[0], unused)}, "
            f"but the data has {list(columns)}"
        )
    ignored = [c for c in columns if c not in (*needed, "id")]
    if ignored and labels:
        logger.warning(f"{source}: task {spec.name!r} ignores column(s) {ignored}")
    out = {c: [] for c in spec.text_columns}
    if labels:
        out["labels"] = []
    keep_id = "id" in columns
    if keep_id:
        out["id"] = []
    kind = spec.task_kind
    count = 0
    for count, row in enumerate(rows, start=1):
        texts = {column: kind.parse_text(spec, row[column], f"{source}: row {count}, column {column!r}")
                 for column in spec.text_columns}
        for column, text in texts.items():
            out[column].append(text)
        if labels:
            where = f"{source}: row {count}, column {spec.label_column!r}"
            out["labels"].append(kind.parse_label(spec, row[spec.label_column], where))
            kind.check_row(spec, texts, out["labels"][-1], f"{source}: row {count}")
        if keep_id:  # inputs to predict on keep the id's own type (a JSON number): written back as read
            out["id"].append(_parse_id(row["id"], f"{source}: row {count}, column 'id'", keep_type=not labels))
    if not count:
        raise DataValidationError(f"{source}: no rows for task {spec.name!r}")
    if keep_id:
        _check_unique_ids([str(value) for value in out["id"]], source)
    if labels:
        kind.check_labels(spec, out["labels"], source)
    return out


def _parse_id(value: Any, where: str, keep_type: bool = False) -> Any:
    """A row's `id` as a string (predictions are keyed by it), as it is with `keep_type`; missing or empty: error."""
    if value is None or isinstance(value, (bool, list, dict)) or not str(value).strip():
        raise DataValidationError(f"{where}: empty or missing id ({value!r}); every row needs its own id (or leave "
                                  "the 'id' column out)")
    return value if keep_type else str(value)


def _check_unique_ids(ids: list[str], source: str) -> None:
    first = {}
    for row, value in enumerate(ids, start=1):
        if value in first:
            raise DataValidationError(f"{source}: rows {first[value]} and {row} share the id {value!r}; predictions "
                                      "are keyed by id: give every row its own (or leave the 'id' column out)")
        first[value] = row


def find_data_file(spec: TaskSpec, data_dir: str | os.PathLike, split: str) -> Path:
    """`<data_dir>/<file_stem>-<split>.<ext>` for the one extension that exists (two are an error)."""
    stem = spec.file_stem or spec.name
    candidates = [Path(data_dir) / f"{stem}-{split}.{ext}" for ext in DATA_EXTENSIONS]
    found = [path for path in candidates if path.is_file()]
    if len(found) > 1:
        raise DataValidationError(f"Task {spec.name!r}, split {split!r}: {len(found)} data files "
                                  f"{[str(p) for p in found]}; keep one")
    if found:
        return found[0]
    saved = any((Path(data_dir) / name).is_file() for name in ("dataset_dict.json", "state.json"))
    hint = (f"; {data_dir} holds a dataset written by save_to_disk: read it with datasets.load_from_disk("
            f"{str(data_dir)!r}) and pass each split to tokenize_task(dataset, spec, tokenizer)" if saved else "")
    raise FileNotFoundError(
        f"Task {spec.name!r}, split {split!r}: no data file; looked for {[str(p) for p in candidates]}{hint}"
    )


def load_task_split(spec: TaskSpec, path: str | os.PathLike, labels: bool = True) -> Dataset:
    """Load and validate one file (TSV/CSV in the CS224N format, JSON lines, JSON or parquet).

    Args:
        spec: The task.
        path: The file.
        labels: `False` reads the text columns (and `id`) alone, e.g. inputs to predict on.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Task {spec.name!r}: data file {path} does not exist")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix.lstrip(".") not in DATA_EXTENSIONS:
        raise DataValidationError(f"{path}: unknown data file type {path.suffix!r}; the loader reads "
                                  f"{', '.join('.' + ext for ext in DATA_EXTENSIONS)}")
    if suffix in (".tsv", ".csv"):
        columns, rows = read_delimited(path)
    else:
        builder = "parquet" if suffix == ".parquet" else "json"
        if builder == "json":
            read_utf8(path)  # datasets' own decoding error gives an offset within one chunk, and no line
        try:
            loaded = load_dataset(builder, data_files=str(path), split="train")
        except Exception as err:  # datasets wraps the parsers' errors: name them, not only the wrapper
            causes, cause = [], err
            while cause is not None:
                causes.append(f"{type(cause).__name__}: {cause}")
                cause = cause.__cause__ or cause.__context__
            raise DataValidationError(f"{path}: could not be read as {builder}: {'; '.join(causes)}") from err
        if labels and spec.label_column in loaded.column_names:  # parquet keeps a ClassLabel: the trainer's rule
            loaded = class_label_ids(loaded, spec, str(path), column=spec.label_column)
        columns, rows = loaded.column_names, loaded
    return Dataset.from_dict(validate_rows(spec, columns, rows, str(path), labels=labels))


def load_task_data(
    spec: TaskSpec, source: str | os.PathLike, splits: Iterable[str] = ("train", "dev"), **load_kwargs
) -> DatasetDict:
    """One task's splits as a validated `DatasetDict`. A `ClassLabel` label column (parquet, a hub dataset) is put in
    the order of the task's `label_names` as the trainer does it ([`class_label_ids`]).

    Args:
        spec: The task.
        source: A directory laid out like CS224N's data (`<task>-<split>.tsv`, or .csv/.jsonl/.json/.parquet),
            or a `datasets` hub id (fetched where the hub is reachable).
        splits: Split names to load.
        load_kwargs: Passed to `datasets.load_dataset` for hub ids (e.g. `name=` for a config).
    """
    if not isinstance(source, (str, os.PathLike)):  # a Dataset in memory, say: os.path gave a bare "stat:" error
        raise TypeError(f"Task {spec.name!r}: load_task_data reads a directory of data files or a hub dataset id, got "
                        f"a {type(source).__name__}; a dataset in memory needs no loading: pass it, one split at a "
                        "time, to tokenize_task(dataset, spec, tokenizer), and the result to MultitaskTrainer, which "
                        "validates it")
    source = os.path.expanduser(source)
    if os.path.isdir(source):
        return DatasetDict({split: load_task_split(spec, find_data_file(spec, source, split)) for split in splits})
    if os.path.exists(source) or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"Task {spec.name!r}: data directory {source} does not exist (or is not a directory)")
    result = {}
    for split in splits:
        try:
            loaded = load_dataset(str(source), split=split, **load_kwargs)
        except (FileNotFoundError, ConnectionError) as err:
            raise FileNotFoundError(f"Task {spec.name!r}: {source} is no local directory, and loading it as a hub "
                                    f"dataset failed: {err}") from err
        if isinstance(loaded, IterableDataset):
            raise DataValidationError(f"{source} [{split}]: a streaming IterableDataset has no length; load it whole")
        if spec.label_column in loaded.column_names:  # a ClassLabel column: the trainer's rule
            loaded = class_label_ids(loaded, spec, f"{source} [{split}]", column=spec.label_column)
        result[split] = Dataset.from_dict(validate_rows(spec, loaded.column_names, loaded, f"{source} [{split}]"))
    return DatasetDict(result)


def load_tokenized(specs: Iterable[TaskSpec], tokenizer, data_dir: str | os.PathLike, split: str,
                   limit: int | None = None) -> dict[str, Dataset]:
    """`{task_name: tokenised Dataset}` of one split of every task in `data_dir`, each validated and cut to its first
    `limit` rows when given (what `hf-multitask train`, `evaluate` and `report` read)."""
    out = {}
    for spec in specs:
        dataset = load_task_data(spec, data_dir, splits=(split,))[split]
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        out[spec.name] = tokenize_task(dataset, spec, tokenizer)
    return out


# ---- tokenisation ----


def tokenize_task(dataset: Dataset, spec: TaskSpec, tokenizer, num_proc: int | None = None) -> Dataset:
    """Tokenise a validated task dataset.

    Cross-encoding gives `[CLS] a [SEP] b [SEP]` in `input_ids`; bi-encoding puts b in `input_ids_b` etc.
    Text columns are removed; `labels` (and `id`) stay. A missing text column, or an empty, missing or non-string
    text, is a [`DataValidationError`] naming the task (and the row and column); a `DatasetDict` (give one split) or
    a streaming `IterableDataset` is a `TypeError`.
    """
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):  # its column_names is a dict of the splits'
        raise TypeError(f"Task {spec.name!r}: tokenize_task takes one split (a Dataset), got a "
                        f"{type(dataset).__name__} with splits {list(dataset)}: call it once per split, "
                        f"tokenize_task(data[{next(iter(dataset), 'train')!r}], spec, tokenizer)")
    if isinstance(dataset, IterableDataset):
        check_sized(dataset, f"Task {spec.name!r}")  # the trainer's error: its rows are drawn by index
    missing = [column for column in spec.text_columns if column not in dataset.column_names]
    if missing:
        raise DataValidationError(f"Task {spec.name!r}: no text column(s) {missing} in the dataset (its columns: "
                                  f"{dataset.column_names}); TaskSpec.text_columns names the columns to tokenise")
    if len(dataset) == 0:
        raise DataValidationError(f"Task {spec.name!r}: the dataset is empty (no rows to tokenise)")
    kind = spec.task_kind
    texts = {column: [kind.parse_text(spec, value, f"Task {spec.name!r}: row {index}, column {column!r}")
                      for index, value in enumerate(dataset[column])]  # no loader validated them, maybe
             for column in spec.text_columns}  # (the tokenizer's errors name no row)
    if "labels" in dataset.column_names:  # texts and labels that must agree (a tag per word), before they part
        for index, label in enumerate(dataset["labels"]):
            if isinstance(label, (list, tuple)):
                kind.check_row(spec, {c: texts[c][index] for c in texts}, label, f"Task {spec.name!r}: row {index}")
    max_length = checked_max_length(spec, tokenizer, dataset)

    def encode(batch):
        return encode_texts(spec, tokenizer, [batch[column] for column in spec.text_columns], max_length)

    return dataset.map(encode, batched=True, remove_columns=list(spec.text_columns), num_proc=num_proc,
                       desc=f"Tokenizing {spec.name}")


def checked_max_length(spec: TaskSpec, tokenizer, texts) -> int:
    """[`effective_max_length`], with the warnings of [`tokenize_task`]: a `max_length` beyond the tokenizer's limit,
    and how many of `texts` (a `Dataset`, or a dict of text columns) are truncated."""
    max_length = effective_max_length(spec, tokenizer)
    if max_length < spec.max_length:
        logger.warning(f"Task {spec.name!r}: max_length {spec.max_length} exceeds the tokenizer's limit {max_length}")
    _log_truncation(texts, spec, tokenizer, max_length)
    return max_length


def effective_max_length(spec: TaskSpec, tokenizer) -> int:
    """`spec.max_length`, capped by the tokenizer's `model_max_length` where it has one."""
    limit = getattr(tokenizer, "model_max_length", None)
    return spec.max_length if limit is None else min(spec.max_length, limit)


def encode_texts(spec: TaskSpec, tokenizer, texts: Sequence, max_length: int, **tokenizer_kwargs) -> dict:
    """Tokenizer features for one column of texts per entry of `spec.text_columns` (lists for a batch, strings
    for one example), the way the model reads them: both sentences in one sequence for a cross-encoded pair
    (truncated longest first), each on its own with a `_b` suffix for the second of a bi-encoded pair; the task's
    kind decides ([`TaskKind.encode`]: a multiple-choice task gives one sequence per choice).
    `tokenizer_kwargs` go to the tokenizer (e.g. `return_tensors="pt"`)."""
    return spec.task_kind.encode(spec, tokenizer, texts, max_length, **tokenizer_kwargs)


def count_truncated(dataset: Dataset | Mapping[str, list], spec: TaskSpec, tokenizer, max_length: int) -> int:
    """Examples of `dataset` (or of a dict of text columns) whose tokenised length exceeds `max_length`: the pair
    together for cross-encoding, either sentence for bi-encoding, as the kind groups them (an example counts once
    however many groups are too long)."""
    kind = spec.task_kind
    too_long = [False] * len(dataset[spec.text_columns[0]])  # rows, of a Dataset or a dict
    for group in kind.truncation_groups(spec):  # each column as the kind reads it (words of a string, say)
        columns = [[kind.parse_text(spec, value, f"row {i}, column {c!r}") for i, value in enumerate(dataset[c])]
                   for c in group]
        lengths = tokenizer(*columns, truncation=False, return_length=True, **kind.tokenizer_kwargs(spec))["length"]
        too_long = [flag or length > max_length for flag, length in zip(too_long, lengths)]
    return sum(too_long)


def _log_truncation(dataset: Dataset | Mapping[str, list], spec: TaskSpec, tokenizer, max_length: int) -> None:
    truncated = count_truncated(dataset, spec, tokenizer, max_length)
    if truncated:
        logger.warning(f"Task {spec.name!r}: {truncated} of {len(dataset[spec.text_columns[0]])} examples are longer "
                       f"than {max_length} tokens and are truncated")


# ---- the joint dataset and the collator ----


def check_sized(dataset, where: str) -> None:
    """Refuse a dataset without a length (a streaming one) or an empty one; the message starts with `where`."""
    if isinstance(dataset, (IterableDataset, torch.utils.data.IterableDataset)) or not hasattr(dataset, "__len__"):
        raise TypeError(f"{where}: {type(dataset).__name__} has no length (a streaming dataset?); each task's rows "
                        "are drawn by index: load it whole (load_dataset(..., streaming=False)) or materialise it "
                        "(Dataset.from_list(list(dataset)))")
    if len(dataset) == 0:
        raise ValueError(f"{where}: the dataset is empty")


class MultitaskDataset(torch.utils.data.Dataset):
    """Several task datasets behind one index space; every example carries its `task_name`.

    Index `offsets[task] + i` is example `i` of `task`. [`MultitaskBatchSampler`] draws indices task by task.
    """

    def __init__(self, datasets: Mapping[str, Dataset]):
        for name, dataset in datasets.items():
            check_sized(dataset, f"Task {name!r}")
        self.datasets = dict(datasets)
        self.task_names = list(self.datasets)
        self.offsets, total = {}, 0
        for name in self.task_names:
            self.offsets[name] = total
            total += len(self.datasets[name])
        self._len = total

    @property
    def task_sizes(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in self.datasets.items()}

    def __len__(self) -> int:
        return self._len

    def locate(self, index: int) -> tuple[str, int]:
        for name in reversed(self.task_names):
            if index >= self.offsets[name]:
                return name, index - self.offsets[name]
        raise IndexError(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, local = self.locate(index)
        return {**self.datasets[name][local], "task_name": name}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def lengths(self, specs: Mapping[str, TaskSpec] | None = None) -> dict[str, list[int]]:
        """Token count of each example, per task, as the task's kind counts it (both sentences of a bi-encoded
        pair for the built-in kinds); `specs` maps task names to specs."""
        kinds = {name: specs[name].task_kind if specs and name in specs else _SENTENCE_KIND for name in self.datasets}
        return {name: kinds[name].example_lengths(ds) for name, ds in self.datasets.items()}


HF_LABEL_COLUMNS = ("label", "label_ids")  # what DataCollatorWithPadding renames to `labels`


def hf_label_key(feature: dict[str, Any]) -> dict[str, Any]:
    """`feature` with HF's `label` / `label_ids` key as `labels`, as `DataCollatorWithPadding` renames them (for
    datasets the trainer could not rename a column of: torch datasets, say)."""
    if "labels" in feature:
        return feature
    key = next((k for k in HF_LABEL_COLUMNS if k in feature), None)
    return feature if key is None else {**{k: v for k, v in feature.items() if k != key}, "labels": feature[key]}


def warn_left_padding(tokenizer) -> None:
    """Warn (once) when `tokenizer` pads on the left: batched outputs then depend on the batch (the collator's and the
    pipeline's padding both follow `tokenizer.padding_side`)."""
    if getattr(tokenizer, "padding_side", "right") == "left":
        logger.warning_once("The tokenizer pads on the left: a BERT-style encoder numbers positions from the first "
                            "column, so a padded example gets other position embeddings than alone, and its outputs "
                            "depend on the batch; set tokenizer.padding_side = 'right'")


class MultitaskCollator:
    """Pads a batch of one task's examples and adds `task_name`; a batch of several tasks (the sampler's
    grouped mode) becomes `{task_name: batch}`, one padded batch per task, in order of first appearance.

    Each task's batch is built by its kind ([`TaskKind.collate`]) when `specs` has the task.

    Args:
        tokenizer: Supplies the pad token and the padding side.
        pad_to_multiple_of: Optional padding multiple (8 helps tensor cores on GPUs).
        specs: `{task_name: TaskSpec}`; the Trainer passes its model's.
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None, specs: Mapping[str, TaskSpec] | None = None):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of
        self.specs = dict(specs or {})
        warn_left_padding(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        by_task: dict[str, list[dict[str, Any]]] = {}
        for feature in features:
            by_task.setdefault(feature["task_name"], []).append(hf_label_key(feature))
        if len(by_task) == 1:
            (name, group), = by_task.items()
            return self.collate_one(name, group)
        return {name: self.collate_one(name, group) for name, group in by_task.items()}

    def collate_one(self, task_name: str, features: list[dict[str, Any]]) -> dict[str, Any]:
        spec = self.specs.get(task_name)
        kind = spec.task_kind if spec is not None else _SENTENCE_KIND
        return {**kind.collate(features, self._pad), "task_name": task_name}

    def _pad(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer.pad(features, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
                                       return_tensors="pt"))
