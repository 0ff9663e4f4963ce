"""Habits of an HF fine-tuning script that once went wrong in MultitaskTrainer, each checked as the script does it:
persistent workers and length grouping in evaluation, ClassLabel names, numpy metrics, datasets assigned or named
after construction, torch datasets with a `label` key, streaming eval sets, a bare MultitaskCollator."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Value
from transformers import DataCollatorWithPadding

from hf_multitask import MultitaskCollator, MultitaskDataset, MultitaskTrainer, MultitaskTrainingArguments, TaskSpec
from hf_multitask.kinds import DataValidationError

from .conftest import make_model

SST2 = TaskSpec(name="sst2", kind="classification", text_columns=("sentence",), label_column="label",
                label_names=["negative", "positive"])
ROWS = [("a great film", "positive"), ("a bad movie", "negative"), ("very good", "positive"),
        ("awful awful", "negative"), ("good", "positive")]


def args(tmp_path, **overrides):
    return MultitaskTrainingArguments(str(tmp_path), report_to=[], use_cpu=True, max_steps=1, save_strategy="no",
                                      per_device_eval_batch_size=2, **overrides)


def sst2_dataset(tokenizer, names=("negative", "positive")):
    data = Dataset.from_dict({"sentence": [r[0] for r in ROWS], "label": [r[1] for r in ROWS]})
    data = data.cast_column("label", ClassLabel(names=list(names)))
    return data.map(lambda b: tokenizer(b["sentence"]), batched=True, remove_columns=["sentence"])


@pytest.mark.parametrize("option", [{}, {"dataloader_persistent_workers": True, "dataloader_num_workers": 1},
                                    {"train_sampling_strategy": "group_by_length"}])
def test_each_task_is_evaluated_and_predicted_on_its_own_rows_in_order(option, tiny_model, tokenized, tokenizer,
                                                                       tmp_path):
    """Trainer.get_eval_dataloader keeps one loader for every evaluation under persistent workers (each task got the
    first task's rows), and its eval sampler orders rows by length under group_by_length (predictions came back
    shuffled)."""
    dev = tokenized["dev"]
    trainer = MultitaskTrainer(model=tiny_model, args=args(tmp_path, **option), eval_dataset=dev,
                               processing_class=tokenizer)
    for _ in range(2):  # the second evaluation reuses the kept loaders
        trainer.evaluate()
    output = trainer.predict(dev)
    for name, dataset in dev.items():  # in dataset order (STS scores are float32 in the outputs)
        np.testing.assert_allclose(output.label_ids[name], np.asarray(dataset["labels"]), rtol=1e-6)
    test = {"sst": dev["sst"].select([2, 0])}
    assert trainer.predict(test).label_ids["sst"].tolist() == test["sst"]["labels"]


def test_get_eval_and_test_dataloader_give_one_tasks_rows_in_order(tiny_model, tokenized, tokenizer, tmp_path):
    dev = tokenized["dev"]
    trainer = MultitaskTrainer(model=tiny_model, args=args(tmp_path), eval_dataset=dev, processing_class=tokenizer)
    for loader in (trainer.get_eval_dataloader("sts"), trainer.get_eval_dataloader({"sts": dev["sts"]}),
                   trainer.get_test_dataloader({"sts": dev["sts"].remove_columns("labels")})):
        batches = list(loader)
        assert {b["task_name"] for b in batches} == {"sts"}
        assert torch.cat([b["input_ids"][:, :4] for b in batches]).tolist() == [r[:4] for r in dev["sts"]["input_ids"]]
    with pytest.raises(ValueError, match=r"get_eval_dataloader: each task is evaluated on its own DataLoader.*"
                                         r"get_eval_dataloader\(\{'sst': dataset\}\)"):
        trainer.get_eval_dataloader()  # (was a bare KeyError: 0)
    with pytest.raises(ValueError, match=r"get_test_dataloader: each task"):
        trainer.get_test_dataloader(dev)
    with pytest.raises(KeyError, match=r"get_eval_dataloader\(eval_dataset='stsb'\)"):
        trainer.get_eval_dataloader("stsb")


def test_classlabel_names_in_another_order_are_remapped(tokenizer, bert_config, tmp_path, caplog):
    model = make_model(bert_config, [SST2])
    data = sst2_dataset(tokenizer, names=("positive", "negative"))  # ids 0 = positive: the task's 1
    trainer = MultitaskTrainer(model=model, args=args(tmp_path), eval_dataset=data, processing_class=tokenizer)
    gold = [SST2.label_names.index(r[1]) for r in ROWS]
    assert trainer.predict(data).label_ids.tolist() == gold
    assert trainer.eval_dataset["sst2"]["labels"] == gold


@pytest.mark.parametrize("form", ["torch", "numpy", "transform"])
def test_classlabel_names_in_another_order_are_remapped_in_the_users_format(form, tokenizer, bert_config, tmp_path):
    """The remap ran datasets' map on torch or numpy batches (a TypeError / ValueError when the trainer was built)."""
    model = make_model(bert_config, [SST2])
    data = sst2_dataset(tokenizer, names=("positive", "negative"))
    data = data.with_transform(lambda batch: batch) if form == "transform" else data.with_format(form)
    trainer = MultitaskTrainer(model=model, args=args(tmp_path), eval_dataset=data, processing_class=tokenizer)
    gold = [SST2.label_names.index(r[1]) for r in ROWS]
    assert trainer.eval_dataset["sst2"].with_format(None)["labels"] == gold
    assert trainer.eval_dataset["sst2"].format["type"] == data.format["type"]
    assert trainer.predict(data).label_ids.tolist() == gold


def test_classlabel_names_are_matched_without_regard_to_case(tokenizer, bert_config, tmp_path, caplog):
    """As Dataset.align_labels_with_mapping matches them: ['Positive', 'Negative'] was taken for names none of which
    are the task's, and its ids were read as they are (inverted)."""
    model = make_model(bert_config, [SST2])
    gold = [SST2.label_names.index(r[1]) for r in ROWS]
    other_order = sst2_dataset(tokenizer, names=("positive", "negative")).cast_column(
        "label", ClassLabel(names=["Positive", "Negative"]))  # 0 = positive: the task's 1
    with caplog.at_level(logging.WARNING, logger="hf_multitask"):
        trainer = MultitaskTrainer(model=model, args=args(tmp_path), eval_dataset=other_order,
                                   processing_class=tokenizer)
    assert trainer.eval_dataset["sst2"]["labels"] == gold
    assert trainer.eval_dataset["sst2"].features["labels"].names == SST2.label_names
    assert any("names matched without regard to case" in r.getMessage() for r in caplog.records)
    same_order = sst2_dataset(tokenizer).cast_column("label", ClassLabel(names=["NEGATIVE", "POSITIVE"]))
    trainer = MultitaskTrainer(model=model, args=args(tmp_path), eval_dataset=same_order, processing_class=tokenizer)
    assert trainer.eval_dataset["sst2"]["labels"] == gold


def test_classlabel_names_that_are_one_when_lower_cased_are_refused(tokenizer, bert_config, tmp_path):
    model = make_model(bert_config, [SST2])
    data = sst2_dataset(tokenizer).cast_column("label", ClassLabel(names=["Positive", "positive"]))
    with pytest.raises(DataValidationError, match=r"eval_dataset\['sst2'\]: the dataset's ClassLabel names "
                                                  r"\['Positive', 'positive'\] hold 'Positive' and 'positive', one "
                                                  r"name when lower-cased"):
        MultitaskTrainer(model=model, args=args(tmp_path), eval_dataset=data, processing_class=tokenizer)


def test_classlabel_names_that_differ_are_refused_or_warned(tokenizer, bert_config, tmp_path):
    model = make_model(bert_config, [SST2])
    partly = sst2_dataset(tokenizer).cast_column("label", ClassLabel(names=["negative", "neutral"]))
    with pytest.raises(DataValidationError, match=r"eval_dataset\['sst2'\]: column 'labels' is a ClassLabel with "
                                                  r"names \['negative', 'neutral'\], but task 'sst2' has label_names"):
        MultitaskTrainer(model=model, args=args(tmp_path), eval_dataset=partly, processing_class=tokenizer)
    unnamed = sst2_dataset(tokenizer).cast_column("label", ClassLabel(names=["LABEL_0", "LABEL_1"]))
    trainer = MultitaskTrainer(model=model, args=args(tmp_path), eval_dataset=unnamed, processing_class=tokenizer)
    assert trainer.eval_dataset["sst2"]["labels"] == unnamed["label"]  # ids as they are (with a warning)


def test_numpy_and_torch_metric_values_are_saved_as_numbers(tiny_model, tokenized, tokenizer, tmp_path):
    def measure(eval_pred):
        predicted = eval_pred.predictions.argmax(-1)
        return {"acc32": (predicted == eval_pred.label_ids).astype(np.float32).mean(),
                "n_correct": torch.tensor(int((predicted == eval_pred.label_ids).sum()))}

    trainer = MultitaskTrainer(model=tiny_model, args=args(tmp_path), train_dataset=tokenized["train"],
                               eval_dataset=tokenized["dev"], processing_class=tokenizer,
                               compute_metrics={"sst": measure})
    metrics = trainer.evaluate()
    assert type(metrics["eval_sst_acc32"]) is float and type(metrics["eval_sst_n_correct"]) is int
    trainer.save_metrics("eval", metrics)
    assert json.loads((tmp_path / "eval_results.json").read_text())["eval_sst_n_correct"] == \
        metrics["eval_sst_n_correct"]


def test_eval_datasets_assigned_or_named_after_construction(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = MultitaskTrainer(model=tiny_model, args=args(tmp_path), eval_dataset=tokenized["dev"],
                               processing_class=tokenizer)
    expected = trainer.evaluate()
    trainer.eval_dataset = {name: ds.rename_column("labels", "label") for name, ds in tokenized["dev"].items()}
    again = trainer.evaluate()
    assert again["eval_overall"] == expected["eval_overall"] and again["eval_sst_loss"] == expected["eval_sst_loss"]
    one = trainer.evaluate(eval_dataset="sts")
    assert one["eval_sts_pearson"] == expected["eval_sts_pearson"] and "eval_sst_loss" not in one
    with pytest.raises(KeyError, match=r"eval_dataset='stsb'.*\['sst', 'quora', 'sts'\]"):
        trainer.evaluate(eval_dataset="stsb")


def test_train_datasets_assigned_after_construction_are_renamed_remapped_and_validated(tokenizer, bert_config,
                                                                                        tmp_path):
    model = make_model(bert_config, [SST2])
    trainer = MultitaskTrainer(model=model, args=args(tmp_path), train_dataset=sst2_dataset(tokenizer),
                               processing_class=tokenizer)
    reversed_names = sst2_dataset(tokenizer, names=("positive", "negative"))  # a 'label' column, ids 0 = positive
    trainer.train_dataset = MultitaskDataset({"sst2": reversed_names})  # (was trained on as it was: labels inverted)
    trainer.train()
    gold = [SST2.label_names.index(r[1]) for r in ROWS]
    assert trainer.train_dataset.datasets["sst2"]["labels"] == gold
    trainer.train_dataset = {"sst2": sst2_dataset(tokenizer)}  # (was a TypeError asking for exactly this)
    trainer.train()
    assert trainer.train_dataset.datasets["sst2"]["labels"] == gold
    trainer.train_dataset = {"sst2": sst2_dataset(tokenizer).cast_column("label", Value("int64")).map(
        lambda row: {"label": 7})}
    with pytest.raises(DataValidationError, match=r"train_dataset\['sst2'\]: row 0, column 'labels': label 7"):
        trainer.train()


def test_a_torch_dataset_with_a_label_key_trains_and_evaluates(tokenizer, bert_config, tmp_path):
    class Rows(torch.utils.data.Dataset):  # what a script builds by hand: tokenizer dicts with 'label'
        def __init__(self):
            self.rows = [dict(tokenizer(text), label=SST2.label_names.index(label)) for text, label in ROWS]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    model = make_model(bert_config, [SST2])
    trainer = MultitaskTrainer(model=model, args=args(tmp_path), train_dataset=Rows(), eval_dataset=Rows(),
                               processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    assert "eval_sst2_accuracy" in trainer.evaluate()


def test_a_batch_without_labels_is_named_in_training(tokenizer, bert_config, tmp_path):
    class Unlabelled(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return dict(tokenizer(ROWS[i][0]))

    trainer = MultitaskTrainer(model=make_model(bert_config, [SST2]), args=args(tmp_path), train_dataset=Unlabelled(),
                               processing_class=tokenizer)
    with pytest.raises(ValueError, match="A batch of task 'sst2' has no 'labels'"):
        trainer.train()


def test_a_bare_multitask_collator_gets_the_tasks_kinds(tokenizer, bert_config, tmp_path):
    """MultitaskCollator(tokenizer), as the error messages suggest, on a token-level task (tags per token, as
    run_ner.py aligns them): it used to collate the ragged tags as sentence labels."""
    ner = TaskSpec(name="ner", kind="token_classification", text_columns=("tokens",), label_column="tags",
                   label_names=["O", "B-PER", "I-PER"])
    words = [["a", "man", "is", "playing"], ["the", "cat"], ["a", "woman", "on", "grass", "good"]]
    tags = [[1, 0, 0, 0], [0, 1], [1, 2, 0, 0, 0]]

    def align(batch):
        encoded = tokenizer(batch["tokens"], is_split_into_words=True)
        encoded["labels"] = [[-100 if w is None else row[w] for w in encoded.word_ids(i)]
                             for i, row in enumerate(batch["tags"])]
        return encoded

    data = Dataset.from_dict({"tokens": words, "tags": tags}).map(align, batched=True,
                                                                  remove_columns=["tokens", "tags"])
    collator = MultitaskCollator(tokenizer)
    trainer = MultitaskTrainer(model=make_model(bert_config, [ner]), args=args(tmp_path), train_dataset=data,
                               eval_dataset=data, processing_class=tokenizer, data_collator=collator)
    trainer.train()
    assert "eval_ner_f1" in trainer.evaluate()
    assert collator.specs == {}  # the caller's collator is left as it was
