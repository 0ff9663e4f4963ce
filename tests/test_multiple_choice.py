"""The `multiple_choice` kind: a context and N choices, one score per choice, accuracy. A learnable synthetic task
(the right choice is the one that holds "good"), a mixed run with SST, SMART, the spec's rejections and hostile
input."""

import random

import numpy as np
import pytest
import torch

from hf_multitask import (
    MultitaskConfig,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    TaskSpec,
    get_task,
    load_task_data,
    tokenize_task,
)
from hf_multitask.data import MultitaskCollator
from hf_multitask.inference import predict_logits
from hf_multitask.kinds import DataValidationError
from hf_multitask.remote_code import TRAVELLING_MODULES

from .conftest import write_tsv

CHOICES = ("choice_0", "choice_1", "choice_2", "choice_3")
FILLERS = ("bad film", "the cat", "a dog on grass", "awful movie", "a man playing", "not great", "the woman",
           "a question", "it was bad", "very awful")


def mc_task(**overrides) -> TaskSpec:
    return TaskSpec(**{"name": "mc", "kind": "multiple_choice", "text_columns": ("context", *CHOICES),
                       "label_column": "answer", **overrides})


def mc_rows(count: int, seed: int) -> list[tuple]:
    """Rows (context, 4 choices, gold index): exactly one choice holds the word "good"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        choices = rng.sample(FILLERS, 4)
        gold = rng.randrange(4)
        choices[gold] = rng.choice(("a good film", "good", "the dog is good", "very good movie", "good cat"))
        rows.append(("what is good ?", *choices, gold))
    return rows


@pytest.fixture
def mc_data(data_dir):
    header = ["id", "context", *CHOICES, "answer"]
    write_tsv(data_dir / "mc-train.tsv", header, mc_rows(256, 0))
    write_tsv(data_dir / "mc-dev.tsv", header, mc_rows(64, 1))
    return data_dir


def args_for(tmp_path, **changes):
    return MultitaskTrainingArguments(**{"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 16,
                                         "learning_rate": 1e-3, "report_to": [], "save_strategy": "no",
                                         "use_cpu": True, "seed": 0, "max_steps": 200, **changes})


def test_spec_defaults_and_rejections():
    spec = mc_task()
    assert spec.num_labels == 4 and spec.label_names == list(CHOICES) and spec.metric == "accuracy"
    with pytest.raises(ValueError, match="pair_encoding 'bi' is not valid for multiple_choice"):
        mc_task(pair_encoding="bi")
    with pytest.raises(ValueError, match="loss 'ordinal' not valid for multiple_choice"):
        mc_task(loss="ordinal")
    with pytest.raises(ValueError, match="metric 'f1' not valid"):
        mc_task(metric="f1")
    with pytest.raises(ValueError, match=">= 2 choice columns"):
        mc_task(text_columns=("context", "choice_0"))
    with pytest.raises(ValueError, match="must name the 4 choices"):
        mc_task(label_names=["a", "b"])
    with pytest.raises(ValueError, match="1 or 2 columns"):  # the other kinds keep their check
        get_task("sst", text_columns=("a", "b", "c"))


def test_tokenisation_collation_and_lengths(mc_data, tokenizer):
    spec = mc_task()
    dataset = tokenize_task(load_task_data(spec, mc_data, splits=("dev",))["dev"], spec, tokenizer)
    first = dataset[0]
    assert len(first["input_ids"]) == 4
    context, *choices, gold = mc_rows(64, 1)[0]
    assert first["input_ids"][gold] == tokenizer(context, choices[gold])["input_ids"]
    assert spec.task_kind.example_lengths(dataset)[0] == max(len(ids) for ids in first["input_ids"])
    batch = MultitaskCollator(tokenizer, specs={"mc": spec})([{**dataset[i], "task_name": "mc"} for i in range(3)])
    longest = max(max(len(ids) for ids in dataset[i]["input_ids"]) for i in range(3))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 4, longest)
    assert batch["labels"].tolist() == [dataset[i]["labels"] for i in range(3)]
    model = MultitaskModel(MultitaskConfig(encoder=_tiny(tokenizer), tasks=[spec]))
    assert model(**batch).logits.shape == (3, 4)


def _tiny(tokenizer):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37, max_position_embeddings=64)


def test_learns_the_synthetic_task(mc_data, bert_config, tokenizer, tmp_path):
    spec = mc_task()
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    data = load_task_data(spec, mc_data)
    train, dev = ({"mc": tokenize_task(data[s], spec, tokenizer)} for s in ("train", "dev"))
    trainer = MultitaskTrainer(model=model, args=args_for(tmp_path), train_dataset=train, eval_dataset=dev,
                               processing_class=tokenizer)
    assert trainer.evaluate()["eval_mc_accuracy"] < 0.5  # chance is 0.25
    trainer.train()
    assert trainer.evaluate()["eval_mc_accuracy"] >= 0.9


def test_mixed_run_with_sst_saves_reloads_and_predicts(mc_data, bert_config, tokenizer, tmp_path):
    specs = [get_task("sst"), mc_task()]
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=specs))
    data = {spec.name: load_task_data(spec, mc_data) for spec in specs}
    train = {s.name: tokenize_task(data[s.name]["train"], s, tokenizer) for s in specs}
    dev = {s.name: tokenize_task(data[s.name]["dev"], s, tokenizer) for s in specs}
    trainer = MultitaskTrainer(model=model, args=args_for(tmp_path, max_steps=16, task_sampling_group_by_length=True),
                               train_dataset=train, eval_dataset=dev, processing_class=tokenizer)
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_overall"] == pytest.approx((metrics["eval_sst_accuracy"] + metrics["eval_mc_accuracy"]) / 2)
    trainer.save_model(str(tmp_path / "saved"))
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = MultitaskModel.from_pretrained(tmp_path / "saved")
    inputs = [("what is good ?", "bad film", "a good film", "the cat", "awful movie"),
              ("what is good ?", "good", "the dog", "not great", "a question")]
    np.testing.assert_array_equal(predict_logits(reloaded, "mc", inputs, tokenizer),
                                  predict_logits(model, "mc", inputs, tokenizer))
    assert set(reloaded.predict("mc", inputs, tokenizer)) <= set(CHOICES)
    assert "- multiple-choice" in (tmp_path / "saved" / "README.md").read_text()


def test_smart_runs_on_multiple_choice(mc_data, bert_config, tokenizer, tmp_path):
    spec = mc_task()
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    train = {"mc": tokenize_task(load_task_data(spec, mc_data, splits=("train",))["train"], spec, tokenizer)}
    trainer = MultitaskTrainer(model=model, args=args_for(tmp_path, max_steps=3, smart_tasks=["mc"]),
                               train_dataset=train, processing_class=tokenizer)
    assert np.isfinite(trainer.train().training_loss)


HEADER = ["id", "context", *CHOICES, "answer"]


def test_gold_index_out_of_range_names_file_row_and_column(mc_data):
    write_tsv(mc_data / "mc-train.tsv", HEADER, [("what is good ?", "good", "bad", "the cat", "a dog", 4)])
    with pytest.raises(DataValidationError, match=r"mc-train.tsv: row 1, column 'answer': label '4' is not a class "
                                                  r"id in 0..3"):
        load_task_data(mc_task(), mc_data, splits=("train",))


def test_a_file_with_too_few_choices_names_the_missing_column(mc_data):
    write_tsv(mc_data / "mc-train.tsv", HEADER[:-2] + ["answer"], [("what is good ?", "good", "bad", "the cat", 0)])
    with pytest.raises(DataValidationError, match=r"needs column\(s\) \['choice_3'\]"):
        load_task_data(mc_task(), mc_data, splits=("train",))


def test_predict_input_with_the_wrong_number_of_choices(tokenizer):
    model = MultitaskModel(MultitaskConfig(encoder=_tiny(tokenizer), tasks=[mc_task()]))
    with pytest.raises(ValueError, match=r"input 0: task 'mc' takes tuples of 5 texts"):
        predict_logits(model, "mc", [("what is good ?", "good", "bad")], tokenizer)


def test_a_batch_mixing_numbers_of_choices_is_refused(tokenizer):
    features = [{"input_ids": [[2, 3]] * 4, "labels": 0, "task_name": "mc"},
                {"input_ids": [[2, 3]] * 3, "labels": 0, "task_name": "mc"}]
    with pytest.raises(ValueError, match=r"mixes examples with \[3, 4\] choices"):
        MultitaskCollator(tokenizer, specs={"mc": mc_task()})(features)


def test_the_kind_travels_with_saved_models():
    assert ("kinds.multiple_choice", None) in [m for modules in TRAVELLING_MODULES.values() for m in modules]


def test_grouped_batches_with_pcgrad_mix_multiple_choice_and_sentence_tasks(mc_data, bert_config, tokenizer,
                                                                            tmp_path):
    specs = [get_task("sst"), get_task("sts"), mc_task()]
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=specs))
    data = {spec.name: load_task_data(spec, mc_data) for spec in specs}
    train = {s.name: tokenize_task(data[s.name]["train"], s, tokenizer) for s in specs}
    dev = {s.name: tokenize_task(data[s.name]["dev"], s, tokenizer) for s in specs}
    before = model.heads["mc"].out_proj.weight.detach().clone()
    trainer = MultitaskTrainer(model=model, args=args_for(tmp_path, max_steps=4, per_device_train_batch_size=4,
                                                          gradient_surgery="pcgrad", logging_steps=2),
                               train_dataset=train, eval_dataset=dev, processing_class=tokenizer)
    trainer.train()
    assert not torch.equal(before, model.heads["mc"].out_proj.weight)
    cosines = [k for entry in trainer.state.log_history for k in entry if k.startswith("grad_cos_")]
    assert "grad_cos_sst_mc" in cosines and "grad_cos_sts_mc" in cosines  # one surgery over the three tasks
    assert {"eval_sst_accuracy", "eval_sts_pearson", "eval_mc_accuracy", "eval_overall"} <= set(trainer.evaluate())


def test_the_pipeline_batches_choices_and_matches_predict(bert_config, tokenizer):
    """The pipeline pads dimension 1 of a batch only (the choices): each example's choices go to max_length."""
    from transformers import pipeline

    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[mc_task(max_length=32)])).eval()
    inputs = [("what is good ?", "bad film", "a good film", "the cat", "awful movie"),
              ("what ?", "good", "the dog is on the grass today", "not great", "a question")]
    expected = model.predict("mc", inputs, tokenizer)
    chooser = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, device="cpu")
    for batch_size in (1, 2):
        assert [answer["label"] for answer in chooser(inputs, batch_size=batch_size)] == expected
    assert chooser(inputs[1])["label"] == expected[1]  # one tuple: its answer, as a dict


def test_tokenised_rows_with_another_number_of_choices_are_named(bert_config, tokenizer, tmp_path):
    """run_swag-style data with 3 choices for a 4-choice task crashed at the first step with a reshape error."""
    from datasets import Dataset

    spec = mc_task()
    rows = [dict(tokenizer(["a man sits"] * 3, ["he reads", "he runs", "he eats"])) for _ in range(4)]
    dataset = Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]} | {"label": [0, 1, 2, 0]})
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    args = MultitaskTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    with pytest.raises(DataValidationError, match=r"train_dataset\['mc'\]: row 0, column 'input_ids': 3 choices, "
                                                  r"but task 'mc' has 4 .*4 rows in all"):
        MultitaskTrainer(model=model, args=args, train_dataset={"mc": dataset}, processing_class=tokenizer)
