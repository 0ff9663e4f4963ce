import json

import pytest
import torch

from hf_multitask import MultitaskCollator, MultitaskDataset, get_task, load_task_data, load_task_split, tokenize_task
from hf_multitask.data import DataValidationError

from .conftest import PAIR_ROWS, SST_ROWS, STS_ROWS, write_tsv


def test_loads_a_cs224n_directory(data_dir):
    data = load_task_data(get_task("quora"), data_dir)
    assert set(data) == {"train", "dev"}
    assert data["train"].column_names == ["sentence1", "sentence2", "labels", "id"]
    assert set(data["train"]["labels"]) == {0, 1}  # "1.0" / "0.0" read as class ids


def test_missing_file_names_the_task_and_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Task 'sst', split 'train'.*sst-train.tsv"):
        load_task_data(get_task("sst"), tmp_path)


def test_a_data_directory_under_home_is_found(data_dir, monkeypatch):
    """'~/data' was reported as a directory that does not exist."""
    monkeypatch.setenv("HOME", str(data_dir.parent))
    data = load_task_data(get_task("sst"), f"~/{data_dir.name}", splits=("train",))
    assert data["train"]["labels"] == [label for _, label in SST_ROWS]
    assert load_task_split(get_task("sst"), f"~/{data_dir.name}/sst-train.tsv")["labels"] == data["train"]["labels"]


def test_missing_column_is_named(tmp_path):
    path = write_tsv(tmp_path / "sst-train.tsv", ["id", "text", "sentiment"], SST_ROWS)
    with pytest.raises(DataValidationError, match=r"sst-train.tsv: task 'sst' needs column\(s\) \['sentence'\]"):
        load_task_split(get_task("sst"), path)


@pytest.mark.parametrize(
    ("task", "row", "match"),
    [
        ("sst", ("good", 7), r"row 3, column 'sentiment': label '7' is not a class id in 0..4"),
        ("sst", ("good", 2.5), r"row 3, column 'sentiment': label '2.5' is not a class id"),
        ("sst", ("good", "great"), r"row 3, column 'sentiment': label 'great' is neither a class id"),
        ("sst", ("   ", 2), r"row 3, column 'sentence': empty or missing text"),
        ("sst", ("good", ""), r"row 3, column 'sentiment': empty label"),
        ("sts", ("a", "b", 5.5), r"row 3, column 'similarity': score '5.5' is outside the task's range"),
        ("sts", ("a", "b", "high"), r"row 3, column 'similarity': score 'high' is not a number"),
        ("sts", ("a", "b", "nan"), r"row 3, column 'similarity': score 'nan' is outside"),
        ("sts", ("a", "", 1.0), r"row 3, column 'sentence2': empty or missing text"),
    ],
)
def test_bad_rows_are_errors_naming_file_row_and_column(tmp_path, task, row, match):
    spec = get_task(task)
    good = SST_ROWS[:2] if task == "sst" else STS_ROWS[:2]
    path = write_tsv(tmp_path / f"{task}-train.tsv", ["id", *spec.text_columns, spec.label_column], [*good, row])
    with pytest.raises(DataValidationError, match=rf"{task}-train.tsv: {match}"):
        load_task_split(spec, path)


def test_label_names_are_accepted_as_labels(tmp_path):
    path = write_tsv(tmp_path / "sst-train.tsv", ["id", "sentence", "sentiment"], [("good", "positive")])
    assert load_task_split(get_task("sst"), path)["labels"] == [3]


def test_invalid_utf8_names_the_file(tmp_path):
    path = tmp_path / "sst-train.tsv"
    path.write_bytes(b"id\tsentence\tsentiment\nx\tcaf\xe9\t1\n")
    with pytest.raises(DataValidationError, match="sst-train.tsv: not valid UTF-8"):
        load_task_split(get_task("sst"), path)


def test_empty_file_and_extra_fields_are_errors(tmp_path):
    empty = tmp_path / "sst-train.tsv"
    empty.write_text("")
    with pytest.raises(DataValidationError, match="empty"):
        load_task_split(get_task("sst"), empty)
    extra = tmp_path / "sst-dev.tsv"
    extra.write_text("id\tsentence\tsentiment\na\tgood\t3\textra\n")
    with pytest.raises(DataValidationError, match="row 1 has more fields"):
        load_task_split(get_task("sst"), extra)


def test_header_only_file_is_an_error(tmp_path):
    path = write_tsv(tmp_path / "sst-train.tsv", ["id", "sentence", "sentiment"], [])
    with pytest.raises(DataValidationError, match="no rows"):
        load_task_split(get_task("sst"), path)


def test_jsonl_is_validated_the_same_way(tmp_path):
    path = tmp_path / "sts-train.jsonl"
    path.write_text("\n".join(json.dumps({"sentence1": "a", "sentence2": "b", "similarity": s}) for s in (1, 9)))
    with pytest.raises(DataValidationError, match="row 2, column 'similarity'"):
        load_task_split(get_task("sts"), path)


def write_class_label_parquet(path, names, ids):
    """Quora's PAIR_ROWS as parquet with label `ids`, the label column a ClassLabel with `names` (parquet keeps the
    feature, and load_dataset reads it back)."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"sentence1": Value("string"), "sentence2": Value("string"),
                         "is_duplicate": ClassLabel(names=names)})
    Dataset.from_dict({"sentence1": [a for a, _, _ in PAIR_ROWS], "sentence2": [b for _, b, _ in PAIR_ROWS],
                       "is_duplicate": ids}, features=features).to_parquet(str(path))
    return path


def test_a_class_label_column_in_a_file_follows_the_trainers_rule(tmp_path):
    """The loader read a ClassLabel column's ids as they are: ['duplicate', 'not_duplicate'] (the task's names in
    the other order) gave inverted labels, without a warning; the trainer remapped the same data."""
    spec = get_task("quora")  # label_names ['not_duplicate', 'duplicate']
    gold = [int(label) for _, _, label in PAIR_ROWS]
    path = write_class_label_parquet(tmp_path / "quora-train.parquet", ["duplicate", "not_duplicate"],
                                     [1 - label for label in gold])
    assert load_task_data(spec, tmp_path, splits=("train",))["train"]["labels"] == gold
    hub_like = load_task_data(spec, "parquet", splits=("train",), data_files={"train": str(path)})  # load_dataset
    assert hub_like["train"]["labels"] == gold
    write_class_label_parquet(path, ["duplicate", "other"], gold)
    with pytest.raises(DataValidationError, match=r"quora-train\.parquet: column 'is_duplicate' is a ClassLabel with "
                                                  r"names \['duplicate', 'other'\], but task 'quora' has label_names"):
        load_task_split(spec, path)


def test_cross_encoding_joins_the_pair(data_dir, tokenizer):
    spec = get_task("quora")
    features = tokenize_task(load_task_data(spec, data_dir)["train"], spec, tokenizer)
    assert "input_ids_b" not in features.column_names
    assert features[0]["input_ids"].count(tokenizer.sep_token_id) == 2
    assert set(features[0]["token_type_ids"]) == {0, 1}


def test_bi_encoding_keeps_the_sentences_apart(data_dir, tokenizer):
    spec = get_task("sts", pair_encoding="bi")
    features = tokenize_task(load_task_data(spec, data_dir)["train"], spec, tokenizer)
    assert {"input_ids", "input_ids_b", "attention_mask_b"} <= set(features.column_names)
    assert features[0]["input_ids"].count(tokenizer.sep_token_id) == 1


def test_collator_pads_one_task_and_groups_several(tokenized, tokenizer):
    dataset = MultitaskDataset(tokenized["train"])
    collator = MultitaskCollator(tokenizer)
    batch = collator(dataset.__getitems__([0, 1, 2]))
    assert batch["task_name"] == "sst"
    assert batch["input_ids"].shape[0] == 3 and batch["labels"].dtype == torch.long
    grouped = collator(dataset.__getitems__([0, dataset.offsets["sts"]]))
    assert list(grouped) == ["sst", "sts"]
    assert grouped["sts"]["labels"].dtype == torch.float32


def test_multitask_dataset_locates_examples(tokenized):
    dataset = MultitaskDataset(tokenized["train"])
    assert len(dataset) == sum(dataset.task_sizes.values())
    assert dataset.locate(dataset.offsets["quora"] + 1) == ("quora", 1)
    assert dataset[dataset.offsets["sts"]]["task_name"] == "sts"


def test_multitask_dataset_rejects_iterable_and_empty(tokenized):
    with pytest.raises(TypeError, match="'sst': IterableDataset has no length"):
        MultitaskDataset({"sst": tokenized["train"]["sst"].to_iterable_dataset()})
    with pytest.raises(ValueError, match="'sst': the dataset is empty"):
        MultitaskDataset({"sst": tokenized["train"]["sst"].select([])})


def test_long_sequences_are_counted_and_truncated(data_dir, tokenizer):
    from hf_multitask.data import count_truncated

    spec = get_task("quora", max_length=8)
    data = load_task_data(spec, data_dir)["train"]
    lengths = [len(tokenizer(a, b)["input_ids"]) for a, b in zip(data["sentence1"], data["sentence2"])]
    assert count_truncated(data, spec, tokenizer, 8) == sum(n > 8 for n in lengths) > 0
    features = tokenize_task(data, spec, tokenizer)
    assert max(len(ids) for ids in features["input_ids"]) == 8


def test_max_length_is_capped_at_the_tokenizer_limit(data_dir, tokenizer):
    tokenizer.model_max_length = 9
    spec = get_task("sst", max_length=64)
    features = tokenize_task(load_task_data(spec, data_dir)["train"], spec, tokenizer)
    assert max(len(ids) for ids in features["input_ids"]) <= 9
