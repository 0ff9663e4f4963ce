"""HF conventions in MultitaskTrainer (docs/conventions.md): each habit of an HF fine-tuning script either works
(the same result as our own convention) or is refused when the trainer is built, saying what to change."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import (
    BertForSequenceClassification,
    DataCollatorWithPadding,
    TrainingArguments,
    default_data_collator,
)

from hf_multitask import MultitaskCollator, MultitaskTrainer, get_task, tokenize_task
from hf_multitask.kinds import DataValidationError

from .conftest import SST_ROWS, make_model, make_trainer, snapshot


def trained_weights(bert_config, tokenized, tokenizer, tmp_path, tasks=None, **kwargs):
    trainer = make_trainer(make_model(bert_config, tasks), tokenized, tokenizer, tmp_path, eval=None, max_steps=3,
                           **kwargs)
    trainer.train()
    return snapshot(trainer.model)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


def relabel(datasets, column):
    return {name: ds.rename_column("labels", column) for name, ds in datasets.items()}


def with_labels(dataset, labels):
    return dataset.remove_columns("labels").add_column("labels", labels)


def args(tmp_path, **overrides):
    from hf_multitask import MultitaskTrainingArguments

    return MultitaskTrainingArguments(str(tmp_path), report_to=[], use_cpu=True, max_steps=1, save_strategy="no",
                                      **overrides)


# ---- row 1: a `label` column ----


@pytest.mark.parametrize("column", ["label", "label_ids"])
def test_an_hf_label_column_trains_bit_identically_to_labels(column, bert_config, tokenized, tokenizer, tmp_path):
    ours = trained_weights(bert_config, tokenized, tokenizer, tmp_path / "a")
    hf = trained_weights(bert_config, tokenized, tokenizer, tmp_path / "b", train=relabel(tokenized["train"], column))
    assert_same_weights(ours, hf)


def test_a_label_column_in_eval_gives_the_same_metrics(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path)
    ours, hf = trainer.evaluate(), trainer.evaluate(relabel(tokenized["dev"], "label"))
    quality = [k for k in ours if not k.endswith(("runtime", "per_second"))]
    assert {k: ours[k] for k in quality} == {k: hf[k] for k in quality}


def test_both_label_and_labels_columns_are_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    sst = tokenized["train"]["sst"]
    both = {**tokenized["train"], "sst": sst.add_column("label", sst["labels"])}
    with pytest.raises(DataValidationError, match=r"train_dataset\['sst'\] has label columns \['labels', 'label'\]; "
                                                  r"keep one"):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train=both)


# ---- row 2: DataCollatorWithPadding ----


def test_data_collator_with_padding_becomes_a_multitask_collator(bert_config, tokenized, tokenizer, tmp_path):
    ours = trained_weights(bert_config, tokenized, tokenizer, tmp_path / "a")
    reference = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "b", eval=None, max_steps=3)
    wrapped = MultitaskTrainer(model=make_model(bert_config), args=reference.args, train_dataset=tokenized["train"],
                               data_collator=DataCollatorWithPadding(tokenizer))
    assert isinstance(wrapped.data_collator, MultitaskCollator) and wrapped.data_collator.tokenizer is tokenizer
    wrapped.train()
    assert_same_weights(ours, snapshot(wrapped.model))


def test_data_collator_with_max_length_padding_is_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    collator = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=32)
    with pytest.raises(ValueError, match=r"DataCollatorWithPadding\(padding='max_length', max_length=32.*pass "
                                         r"DataCollatorWithPadding\(tokenizer\) with its defaults"):
        MultitaskTrainer(model=tiny_model, args=args(tmp_path), train_dataset=tokenized["train"],
                         data_collator=collator, processing_class=tokenizer)


def test_default_data_collator_is_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"data_collator=default_data_collator cannot collate multitask batches: .*"
                                         r"pass data_collator=MultitaskCollator\(tokenizer\)"):
        MultitaskTrainer(model=tiny_model, args=args(tmp_path), train_dataset=tokenized["train"],
                         data_collator=default_data_collator, processing_class=tokenizer)


def test_a_collator_that_drops_the_task_name_is_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    def my_collator(features):
        return {"input_ids": torch.tensor([[1, 2]] * len(features))}

    with pytest.raises(ValueError, match=r"data_collator=my_collator returns a batch without 'task_name'"):
        MultitaskTrainer(model=tiny_model, args=args(tmp_path), train_dataset=tokenized["train"],
                         data_collator=my_collator, processing_class=tokenizer)


def test_a_collator_that_keeps_the_task_name_is_used(tiny_model, tokenized, tokenizer, tmp_path):
    collator = MultitaskCollator(tokenizer)

    def my_collator(features):
        return collator(features)

    trainer = MultitaskTrainer(model=tiny_model, args=args(tmp_path), train_dataset=tokenized["train"],
                               data_collator=my_collator)
    assert trainer.data_collator is my_collator


# ---- rows 3 and 4: no tokenizer, a model that is not multitask ----


def test_no_processing_class_is_rejected(tiny_model, tokenized, tmp_path):
    with pytest.raises(ValueError, match=r"MultitaskTrainer needs processing_class=tokenizer to pad each task's "
                                         r"batches .*processing_class=AutoTokenizer\.from_pretrained"):
        MultitaskTrainer(model=tiny_model, args=args(tmp_path), train_dataset=tokenized["train"])


def test_a_plain_sequence_classification_model_is_rejected(bert_config, tokenized, tokenizer, tmp_path):
    model = BertForSequenceClassification(bert_config)
    with pytest.raises(TypeError, match=r"MultitaskTrainer needs a MultitaskModel \(one head per task\), got "
                                        r"BertForSequenceClassification: build it with MultitaskModel\.from_encoder"):
        MultitaskTrainer(model=model, args=args(tmp_path), train_dataset=tokenized["train"],
                         processing_class=tokenizer)


# ---- row 5: predict ----


def test_predict_takes_a_dict_and_reports_per_task_results(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path)
    output = trainer.predict(tokenized["dev"])
    evaluated = trainer.evaluate(metric_key_prefix="test")
    assert set(output.predictions) == set(output.label_ids) == {"sst", "quora", "sts"}
    assert output.predictions["sst"].shape == (len(SST_ROWS), 5) and output.predictions["sts"].shape[-1] == 1
    np.testing.assert_array_equal(output.label_ids["sst"], tokenized["dev"]["sst"]["labels"])
    for key in ("test_sst_accuracy", "test_quora_accuracy", "test_sts_pearson", "test_overall", "test_sst_loss"):
        assert output.metrics[key] == evaluated[key]


def test_predict_takes_one_dataset_of_a_one_task_model(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config, [get_task("sst")])
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path, train=tokenized["train"]["sst"], eval=None)
    output = trainer.predict(tokenized["dev"]["sst"].rename_column("labels", "label"))
    assert output.predictions.shape == (len(SST_ROWS), 5)
    assert output.label_ids.tolist() == tokenized["dev"]["sst"]["labels"]
    assert {"test_sst_accuracy", "test_overall"} <= set(output.metrics)


def test_predict_without_labels_gives_predictions_only(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path)
    output = trainer.predict({"sts": tokenized["dev"]["sts"].remove_columns("labels")})
    assert output.predictions["sts"].shape == (len(tokenized["dev"]["sts"]), 1) and output.label_ids["sts"] is None
    assert "test_overall" not in output.metrics and "test_sts_pearson" not in output.metrics


def test_predict_one_dataset_of_a_multitask_model_is_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path)
    with pytest.raises(TypeError, match=r"MultitaskTrainer needs test_dataset as \{task_name: Dataset\} \(one Dataset "
                                        r"only for a model with one task; this one has \['sst', 'quora', 'sts'\]\)"):
        trainer.predict(tokenized["dev"]["sst"])


def test_predict_validates_its_data(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path)
    bad = with_labels(tokenized["dev"]["sst"], [7] + tokenized["dev"]["sst"]["labels"][1:])
    with pytest.raises(DataValidationError, match=r"test_dataset\['sst'\]: row 0, column 'labels': label 7 is not "
                                                  r"a class id in 0\.\.4"):
        trainer.predict({"sst": bad})


# ---- row 6: compute_metrics ----


def test_one_compute_metrics_callable_for_several_tasks_is_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    def accuracy(eval_pred):
        return {"acc": 1.0}

    with pytest.raises(ValueError, match=r"compute_metrics is one callable, and the model has tasks \['sst', 'quora', "
                                         r"'sts'\]: say which task\(s\) it measures with compute_metrics=\{'sst': fn"):
        make_metrics_trainer(tiny_model, tokenized, tokenizer, tmp_path, accuracy)


def make_metrics_trainer(model, tokenized, tokenizer, tmp_path, compute_metrics):
    from hf_multitask import MultitaskTrainingArguments

    return MultitaskTrainer(model=model, args=MultitaskTrainingArguments(str(tmp_path), report_to=[], use_cpu=True),
                            eval_dataset=tokenized["dev"], processing_class=tokenizer,
                            compute_metrics=compute_metrics)


def test_compute_metrics_scoped_by_task_runs_for_its_task_only(tiny_model, tokenized, tokenizer, tmp_path):
    calls = []

    def exact(eval_pred):
        calls.append(eval_pred.predictions.shape)
        return {"exact": float((eval_pred.predictions.argmax(-1) == eval_pred.label_ids).mean())}

    metrics = make_metrics_trainer(tiny_model, tokenized, tokenizer, tmp_path, {"sst": exact}).evaluate()
    assert calls == [(len(SST_ROWS), 5)]
    assert metrics["eval_sst_exact"] == metrics["eval_sst_accuracy"]
    assert not [k for k in metrics if k.endswith("_exact") and k != "eval_sst_exact"]


def test_a_user_metric_named_like_ours_is_kept_apart(tiny_model, tokenized, tokenizer, tmp_path):
    metrics = make_metrics_trainer(tiny_model, tokenized, tokenizer, tmp_path,
                                   {"sst": lambda eval_pred: {"accuracy": -1.0}}).evaluate()
    assert metrics["eval_sst_user_accuracy"] == -1.0
    assert 0.0 <= metrics["eval_sst_accuracy"] <= 1.0


def test_compute_metrics_with_a_task_name_parameter_is_told_the_task(tiny_model, tokenized, tokenizer, tmp_path):
    def per_task(eval_pred, task_name):
        return {"rows": len(eval_pred.label_ids)} if task_name != "quora" else {}

    metrics = make_metrics_trainer(tiny_model, tokenized, tokenizer, tmp_path, per_task).evaluate()
    assert metrics["eval_sst_rows"] == len(SST_ROWS) and metrics["eval_sts_rows"] == len(tokenized["dev"]["sts"])
    assert "eval_quora_rows" not in metrics


def test_compute_metrics_for_an_unknown_task_is_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"compute_metrics has task\(s\) \['stsb'\] with no head in the model"):
        make_metrics_trainer(tiny_model, tokenized, tokenizer, tmp_path, {"stsb": lambda p: {}})


def test_one_callable_serves_a_one_task_model(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config, [get_task("sts")])
    dev = {"sts": tokenized["dev"]["sts"]}
    metrics = make_metrics_trainer(model, {"dev": dev}, tokenizer, tmp_path, lambda p: {"n": len(p.label_ids)})
    assert metrics.evaluate()["eval_sts_n"] == len(dev["sts"])


# ---- row 7: tokenized data with bad labels or one segment for a pair task ----


def replace_labels(tokenized, task, labels):
    data = dict(tokenized["train"])
    data[task] = with_labels(data[task], labels)
    return data


@pytest.mark.parametrize(("task", "row", "value", "match"), [
    ("sst", 2, 2.7, r"train_dataset\['sst'\]: row 2, column 'labels': label 2\.7 is not a class id in 0\.\.4"),
    ("sst", 0, 5, r"train_dataset\['sst'\]: row 0, column 'labels': label 5\.0 is not a class id in 0\.\.4"),
    ("sst", 3, -1, r"row 3, column 'labels': label -1\.0 is not a class id"),
    ("quora", 1, float("nan"), r"train_dataset\['quora'\]: row 1, column 'labels': label nan is not a class id"),
    ("sts", 4, 92.0, r"train_dataset\['sts'\]: row 4, column 'labels': label 92\.0 is outside task 'sts''s "
                     r"score_range \[0\.0, 5\.0\]"),
    ("sts", 0, float("inf"), r"train_dataset\['sts'\]: row 0, column 'labels': label inf is outside"),
])
def test_bad_labels_are_rejected_when_the_trainer_is_built(task, row, value, match, tiny_model, tokenized,
                                                           tokenizer, tmp_path):
    labels = [float(v) for v in tokenized["train"][task]["labels"]]
    labels[row] = value
    with pytest.raises(DataValidationError, match=match):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train=replace_labels(tokenized, task, labels))


@pytest.mark.parametrize("task", ["sst", "sts", "pandas"])
def test_a_missing_label_is_named_as_missing(task, tiny_model, tokenized, tokenizer, tmp_path):
    """None (or pandas' NA) was reported as 'label nan is not a class id' / 'label nan is outside score_range'."""
    name = "sst" if task == "pandas" else task
    labels = list(tokenized["train"][name]["labels"])
    labels[2] = None
    train = replace_labels(tokenized, name, labels)
    if task == "pandas":
        frame = tokenized["train"]["sst"].to_pandas()
        frame["labels"] = frame["labels"].astype("Int64")
        frame.loc[2, "labels"] = pd.NA
        train["sst"] = Dataset.from_pandas(frame)
    with pytest.raises(DataValidationError, match=rf"train_dataset\['{name}'\]: row 2, column 'labels': the label is "
                                                  r"missing \(null\); task"):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train=train)


def test_a_bad_integer_label_is_shown_as_given(tiny_model, tokenized, tokenizer, tmp_path):
    labels = [int(v) for v in tokenized["train"]["sst"]["labels"]]
    labels[1] = 7
    with pytest.raises(DataValidationError, match=r"row 1, column 'labels': label 7 is not a class id in 0\.\.4"):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train=replace_labels(tokenized, "sst", labels))


def test_sts_scores_on_another_scale_are_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    labels = [20 * v for v in tokenized["train"]["sts"]["labels"]]
    with pytest.raises(DataValidationError, match=r"row 0, column 'labels': label 92\.0 is outside task 'sts''s "
                                                  r"score_range \[0\.0, 5\.0\] \(\d rows in all\)"):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train=replace_labels(tokenized, "sts", labels))


def test_string_labels_are_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    labels = ["positive"] * len(tokenized["train"]["sst"])
    with pytest.raises(DataValidationError, match=r"train_dataset\['sst'\]: row 0, column 'labels': label 'positive' "
                                                  r"is not a number \(a class id in 0\.\.4\) \(12 rows in all\)"):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train=replace_labels(tokenized, "sst", labels))


def test_bad_eval_labels_are_rejected_too(tiny_model, tokenized, tokenizer, tmp_path):
    dev = dict(tokenized["dev"])
    dev["sst"] = with_labels(dev["sst"], [9] * len(dev["sst"]))
    with pytest.raises(DataValidationError, match=r"eval_dataset\['sst'\]: row 0, column 'labels': label 9 "):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, eval=dev)


def test_a_pair_task_tokenized_as_one_sentence_is_rejected(tiny_model, tokenized, tokenizer, data_dir, tmp_path):
    from hf_multitask import load_task_data

    quora = load_task_data(get_task("quora"), data_dir, ("train",))
    one_sentence = quora["train"].map(lambda b: tokenizer(b["sentence1"], truncation=True), batched=True,
                                      remove_columns=["sentence1", "sentence2"])
    with pytest.raises(DataValidationError, match=r"train_dataset\['quora'\]: row 0, column 'input_ids': task "
                                                  r"'quora' is a sentence pair \('sentence1', 'sentence2'\), but the "
                                                  r"row holds one segment \(8 rows in all\); tokenize both columns"):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train={**tokenized["train"], "quora": one_sentence})


def padded(dataset, tokenizer, columns, length=16):
    """`dataset` tokenised to `length` tokens a row (`padding="max_length"`), its text `columns` removed."""
    return dataset.map(lambda b: tokenizer(*[b[c] for c in columns], padding="max_length", max_length=length,
                                           truncation=True), batched=True, remove_columns=list(columns))


def fixed_length(dataset, length=16):
    """`dataset` with its token columns as datasets' fixed-length lists (arrow's FixedSizeList)."""
    from datasets import List, Value

    for column in ("input_ids", "token_type_ids", "attention_mask"):
        dataset = dataset.cast_column(column, List(Value("int32"), length=length))
    return dataset


def test_fixed_length_token_columns_are_checked_and_train(tiny_model, tokenizer, data_dir, tmp_path):
    """The token checks failed on fixed-length lists ('The truth value of an array with more than one element is
    ambiguous') when the trainer was built."""
    from hf_multitask import load_task_data

    sst = padded(load_task_data(get_task("sst"), data_dir, ("train",))["train"], tokenizer, ["sentence"])
    quora_raw = load_task_data(get_task("quora"), data_dir, ("train",))["train"]
    quora = padded(quora_raw, tokenizer, ["sentence1", "sentence2"])
    train = {"sst": fixed_length(sst), "quora": fixed_length(quora)}
    assert train["sst"].with_format("arrow")["input_ids"].type.list_size == 16
    trainer = make_trainer(tiny_model, None, tokenizer, tmp_path, train=train, eval=None, max_steps=2)
    assert trainer.train().global_step == 2
    unknown = sst.map(lambda row, i: {"input_ids": [99999 if i == 3 and j == 1 else t
                                                    for j, t in enumerate(row["input_ids"])]}, with_indices=True)
    with pytest.raises(DataValidationError, match=r"train_dataset\['sst'\]: row 3, column 'input_ids': token id 99999 "
                                                  r"is outside the encoder's vocabulary"):
        make_trainer(tiny_model, None, tokenizer, tmp_path, train={"sst": fixed_length(unknown)}, eval=None)
    one_segment = fixed_length(padded(quora_raw, tokenizer, ["sentence1"]).remove_columns("sentence2"))
    with pytest.raises(DataValidationError, match=r"train_dataset\['quora'\]: row 0, column 'input_ids': task "
                                                  r"'quora' is a sentence pair"):
        make_trainer(tiny_model, None, tokenizer, tmp_path, train={"quora": one_segment}, eval=None)


def test_missing_labels_in_training_data_are_rejected(tiny_model, tokenized, tokenizer, tmp_path):
    train = {**tokenized["train"], "sst": tokenized["train"]["sst"].remove_columns("labels")}
    with pytest.raises(DataValidationError, match=r"train_dataset\['sst'\]: no 'labels' column \(columns: "):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train=train)


def test_validation_of_42k_rows_takes_well_under_a_second():
    from hf_multitask.conventions import validate_tokenized

    rng = np.random.default_rng(0)
    n = 42_000
    ids = [[2, *rng.integers(5, 90, 12).tolist(), 3, *rng.integers(5, 90, 10).tolist(), 3] for _ in range(n)]
    dataset = Dataset.from_dict({"input_ids": ids, "labels": rng.integers(0, 2, n)})
    tokenizer = type("Tok", (), {"sep_token_id": 3})()
    start = time.perf_counter()
    validate_tokenized(get_task("quora"), dataset, "train_dataset['quora']", tokenizer)
    assert time.perf_counter() - start < 0.5


# ---- row 8: train_sampling_strategy ----


def test_hf_group_by_length_is_our_length_grouping(bert_config, tokenized, tokenizer, tmp_path):
    ours = trained_weights(bert_config, tokenized, tokenizer, tmp_path / "a", task_sampling_group_by_length=True)
    hf = trained_weights(bert_config, tokenized, tokenizer, tmp_path / "b", train_sampling_strategy="group_by_length")
    assert_same_weights(ours, hf)


def test_hf_group_by_length_reaches_the_sampler(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train_sampling_strategy="group_by_length")
    trainer.get_train_dataloader()
    assert trainer.train_sampler.lengths is not None
    plain = make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train_sampling_strategy="random")
    plain.get_train_dataloader()
    assert plain.train_sampler.lengths is None


@pytest.mark.parametrize("strategy", ["sequential", "batch_rebalance"])
def test_other_hf_sampling_strategies_are_rejected(strategy, tiny_model, tokenized, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=rf"train_sampling_strategy='{strategy}' has no multitask equivalent: .*use "
                                         r"train_sampling_strategy='random' or 'group_by_length'"):
        make_trainer(tiny_model, tokenized, tokenizer, tmp_path, train_sampling_strategy=strategy)


def test_plain_training_arguments_work(bert_config, tokenized, tokenizer, tmp_path):
    plain = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, max_steps=2, save_strategy="no")
    trainer = MultitaskTrainer(model=make_model(bert_config), args=plain, train_dataset=tokenized["train"],
                               processing_class=tokenizer)
    assert trainer.train().global_step == 2


def test_bi_encoded_pairs_need_their_second_sentence(data_dir, tokenizer):
    from hf_multitask import load_task_data
    from hf_multitask.conventions import validate_tokenized

    spec = get_task("quora", pair_encoding="bi")
    data = tokenize_task(load_task_data(spec, data_dir, ("train",))["train"], spec, tokenizer)
    validate_tokenized(spec, data, "train_dataset['quora']", tokenizer)
    with pytest.raises(DataValidationError, match=r"needs tokenised column\(s\) \['input_ids_b'\]"):
        validate_tokenized(spec, data.remove_columns(["input_ids_b", "attention_mask_b"]), "x", tokenizer)


# ---- options each task's loss and metrics would ignore; the best-model metric ----


@pytest.mark.parametrize("option, value, named", [
    ("label_smoothing_factor", 0.1, "label_smoothing_factor=0.1"),
    ("include_for_metrics", ["inputs"], "include_for_metrics=['inputs']"),
    ("eval_do_concat_batches", False, "eval_do_concat_batches=False"),
    ("prediction_loss_only", True, "prediction_loss_only=True"),
    ("accelerator_config", {"split_batches": True}, "accelerator_config split_batches=True"),
    ("accelerator_config", {"dispatch_batches": True}, "accelerator_config dispatch_batches=True"),
    ("compute_loss_func", lambda outputs, labels, num_items_in_batch=None: outputs.loss, "compute_loss_func"),
    ("preprocess_logits_for_metrics", lambda logits, labels: logits.argmax(-1), "preprocess_logits_for_metrics"),
])
def test_options_the_task_losses_and_metrics_would_ignore_are_rejected(option, value, named, bert_config, tokenized,
                                                                       tokenizer, tmp_path):
    """They were silently ignored (label smoothing, compute_loss_func, inputs for metrics) or broke evaluation
    (argmax'd logits reach the tasks' metrics) or training (accelerate's split_batches, dispatch_batches): refused
    when the trainer is built, naming the option."""
    in_args = option in ("label_smoothing_factor", "include_for_metrics", "eval_do_concat_batches",
                         "accelerator_config", "prediction_loss_only")
    with pytest.raises(ValueError, match=f"does not apply {named.replace('[', '.').replace(']', '.')}"):
        MultitaskTrainer(model=make_model(bert_config), args=args(tmp_path, **({option: value} if in_args else {})),
                         train_dataset=tokenized["train"], processing_class=tokenizer,
                         **({} if in_args else {option: value}))


@pytest.mark.parametrize("metric", ["accuracy", "eval_f1", "sst_", "sts_pearsonr", "eval_sst_acc", "sst_f1"])
def test_a_best_model_metric_evaluation_never_reports_is_rejected(metric, bert_config, tokenized, tokenizer,
                                                                 tmp_path):
    with pytest.raises(ValueError, match=f"metric_for_best_model='{metric}' is not a metric"):
        MultitaskTrainer(model=make_model(bert_config), args=args(tmp_path, metric_for_best_model=metric),
                         train_dataset=tokenized["train"], processing_class=tokenizer)


def test_a_best_model_metric_from_compute_metrics_is_accepted(bert_config, tokenized, tokenizer, tmp_path):
    """A task with a compute_metrics may report any name; the others only their loss and metric."""
    measure = {"sst": lambda eval_pred: {"acc": 0.0}}
    MultitaskTrainer(model=make_model(bert_config), args=args(tmp_path, metric_for_best_model="eval_sst_acc"),
                     train_dataset=tokenized["train"], processing_class=tokenizer, compute_metrics=measure)
    with pytest.raises(ValueError, match=r"'sts_acc' is not a metric .*'sts_loss', 'sts_pearson'"):
        MultitaskTrainer(model=make_model(bert_config), args=args(tmp_path, metric_for_best_model="sts_acc"),
                         train_dataset=tokenized["train"], processing_class=tokenizer, compute_metrics=measure)


def test_a_best_model_metric_of_a_task_without_eval_data_is_rejected(bert_config, tokenized, tokenizer, tmp_path):
    dev = {name: tokenized["dev"][name] for name in ("sst", "sts")}  # (failed at the first evaluation, in training)
    with pytest.raises(ValueError, match=r"'quora_accuracy' is not a metric .*'sst_accuracy', 'sts_loss'"):
        MultitaskTrainer(model=make_model(bert_config), args=args(tmp_path, metric_for_best_model="quora_accuracy"),
                         train_dataset=tokenized["train"], eval_dataset=dev, processing_class=tokenizer)
    MultitaskTrainer(model=make_model(bert_config), args=args(tmp_path, metric_for_best_model="sts_pearson"),
                     train_dataset=tokenized["train"], eval_dataset=dev, processing_class=tokenizer)


def test_model_init_is_refused_with_the_search_it_rules_out(bert_config, tokenized, tokenizer, tmp_path):
    with pytest.raises(TypeError, match=r"needs model=MultitaskModel\(\.\.\.\): model_init is not supported.*"
                                        r"hyperparameter_search"):
        MultitaskTrainer(model_init=lambda: make_model(bert_config), args=args(tmp_path),
                         train_dataset=tokenized["train"], processing_class=tokenizer)


def test_a_one_task_model_is_told_its_metric_name(bert_config, tokenized, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="for this one-task model, 'sst_accuracy'"):
        MultitaskTrainer(model=make_model(bert_config, [get_task("sst")]),
                         args=args(tmp_path, metric_for_best_model="accuracy"),
                         train_dataset=tokenized["train"]["sst"], processing_class=tokenizer)


@pytest.mark.parametrize("metric", [None, "overall", "sts_pearson"])
def test_load_best_model_at_end_and_early_stopping_work(metric, bert_config, tokenized, tokenizer, tmp_path):
    """`eval_loss` (the mean of the tasks' losses) is what `load_best_model_at_end` and `EarlyStoppingCallback`
    use by default; `overall` and a task's metric work too."""
    from transformers import EarlyStoppingCallback

    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, max_steps=6, eval_strategy="steps",
                           eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True,
                           metric_for_best_model=metric)
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=1))
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if "eval_overall" in entry]
    tasks = ("sst", "quora", "sts")
    assert all(entry["eval_loss"] == pytest.approx(np.mean([entry[f"eval_{t}_loss"] for t in tasks]))
               for entry in evaluations)
    key = f"eval_{metric or 'loss'}"
    best = (max if metric else min)(evaluations, key=lambda entry: entry[key])
    assert trainer.state.best_metric == best[key]
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")


def test_reduce_lr_on_plateau_reads_eval_loss(bert_config, tokenized, tokenizer, tmp_path):
    """transformers steps ReduceLROnPlateau on the evaluation's `eval_loss` (its default metric): evaluation must
    report it, and the rate must fall when it stops improving (patience 0, learning rate large enough to stall)."""
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, max_steps=8, eval_strategy="steps",
                           eval_steps=2, learning_rate=0.5, lr_scheduler_type="reduce_lr_on_plateau",
                           lr_scheduler_kwargs={"patience": 0, "factor": 0.5})
    trainer.train()
    assert type(trainer.lr_scheduler).__name__ == "ReduceLROnPlateau"
    losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    worse = sum(later >= min(losses[:i + 1]) for i, later in enumerate(losses[1:]))
    assert len(losses) == 4 and trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 0.5 ** worse)


def test_a_second_eval_set_of_one_task_goes_under_its_own_prefix(tiny_model, tokenized, tokenizer, tmp_path):
    """run_glue's MNLI habit (matched and mismatched sets of one task): the second set, alone, under a prefix."""
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path)
    metrics = trainer.evaluate(eval_dataset={"sst": tokenized["dev"]["sst"]}, metric_key_prefix="eval_mismatched")
    assert {"eval_mismatched_sst_accuracy", "eval_mismatched_sst_loss", "eval_mismatched_loss",
            "eval_mismatched_overall"} <= set(metrics)
    assert not any(key.startswith(("eval_mismatched_quora", "eval_mismatched_sts")) for key in metrics)
    assert metrics["eval_mismatched_overall"] == metrics["eval_mismatched_sst_accuracy"]
