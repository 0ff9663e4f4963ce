"""The `token_classification` kind: a tag per word (BIO), first sub-token alignment, seqeval's entity F1. A learnable
synthetic task (tags are a function of the words and their left neighbour, with words the tokenizer splits), a
four-kind run with SST-5, STS-B and multiple choice (also grouped with PCGrad), SMART, inference paths and hostile
input."""

import json
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
from hf_multitask.inference import predict_logits, worst_examples
from hf_multitask.kinds import DataValidationError
from hf_multitask.kinds.token_classification import first_subtokens

from .conftest import write_tsv
from .test_multiple_choice import CHOICES, mc_rows, mc_task

TAGS = ["O", "B-PER", "I-PER", "B-ANI", "B-ADJ", "I-ADJ"]
FILLERS = ("the", "is", "on", "in", "it", "was", "playing", "grass")
ANIMALS = ("cat", "dog", "zebra", "otter")  # zebra, otter: split by the tiny tokenizer (z ##e ##b ##r ##a)
ADJECTIVES = ("good", "bad", "great", "awful", "fuzzy")


def ner_task(**overrides) -> TaskSpec:
    return TaskSpec(**{"name": "ner", "kind": "token_classification", "text_columns": ("tokens",),
                       "label_column": "tags", "label_names": TAGS, "max_length": 48, **overrides})


def ner_rows(count: int, seed: int) -> list[tuple[str, str]]:
    """(words, tags): `a man` / `the woman` are PER spans, animals ANI, `very <adjective>` an ADJ span (a lone
    adjective is B-ADJ: its tag depends on its left neighbour)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words, tags = [], []
        for _ in range(rng.randint(3, 6)):
            pick = rng.random()
            if pick < 0.2:
                span, span_tags = [rng.choice(("a", "the")), rng.choice(("man", "woman"))], ["B-PER", "I-PER"]
            elif pick < 0.4:
                span, span_tags = [rng.choice(ANIMALS)], ["B-ANI"]
            elif pick < 0.55:
                span, span_tags = ["very", rng.choice(ADJECTIVES)], ["B-ADJ", "I-ADJ"]
            elif pick < 0.7:
                span, span_tags = [rng.choice(ADJECTIVES)], ["B-ADJ"]
            else:
                span, span_tags = [rng.choice(FILLERS)], ["O"]
            words += span
            tags += span_tags
        rows.append((" ".join(words), " ".join(tags)))
    return rows


@pytest.fixture
def ner_data(data_dir):
    write_tsv(data_dir / "ner-train.tsv", ["id", "tokens", "tags"], ner_rows(320, 0))
    write_tsv(data_dir / "ner-dev.tsv", ["id", "tokens", "tags"], ner_rows(64, 1))
    return data_dir


def args_for(tmp_path, **changes):
    return MultitaskTrainingArguments(**{"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 16,
                                         "learning_rate": 1e-3, "report_to": [], "save_strategy": "no",
                                         "use_cpu": True, "seed": 0, "max_steps": 300, **changes})


def test_spec_defaults_and_rejections():
    spec = ner_task()
    assert (spec.num_labels, spec.metric, spec.loss) == (6, "f1", "cross_entropy")
    assert ner_task(metric="accuracy").metric == "accuracy" and ner_task(extra={"scheme": "IOB2"})
    with pytest.raises(ValueError, match="reads one column of words"):
        ner_task(text_columns=("tokens", "more"))
    with pytest.raises(ValueError, match="loss 'ordinal' not valid for token_classification"):
        ner_task(loss="ordinal")
    with pytest.raises(ValueError, match="scheme 'BIO' is not one of seqeval's"):
        ner_task(extra={"scheme": "BIO"})
    with pytest.raises(ValueError, match="extra has option"):
        ner_task(extra={"mode": "strict"})
    with pytest.raises(ValueError, match="label_names has duplicates"):
        ner_task(label_names=["O", "O"])


def test_tags_go_to_first_subtokens_on_the_padding_side(ner_data, tokenizer):
    spec = ner_task()
    dataset = tokenize_task(load_task_data(spec, ner_data, splits=("dev",))["dev"], spec, tokenizer)
    assert "word_ids" in dataset.column_names and "tokens" not in dataset.column_names
    rows = [dict(dataset[i], task_name="ner") for i in range(4)]
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = MultitaskCollator(tokenizer, specs={"ner": spec})(rows)
        assert "word_ids" not in batch and batch["labels"].shape == batch["input_ids"].shape
        for i, row in enumerate(rows):
            mask = batch["attention_mask"][i].bool()
            labels = batch["labels"][i][mask].tolist()
            starts = first_subtokens(row["word_ids"])
            assert [labels[j] for j in starts] == row["labels"]  # each word's tag on its first sub-token
            assert all(labels[j] == -100 for j in range(len(labels)) if j not in starts)
            assert (batch["labels"][i][~mask] == -100).all()
            if side == "left" and not mask.all():
                assert not mask[0]  # padding on the left, labels with it
    zebra = tokenize_task(load_task_data(spec, ner_data, splits=("dev",))["dev"].select(range(64)), spec, tokenizer)
    split = [r for r in zebra if len(r["input_ids"]) > len(r["labels"]) + 2]
    assert split, "no example has a word split into sub-tokens: the alignment is not tested"


def test_learns_the_synthetic_task(ner_data, bert_config, tokenizer, tmp_path):
    spec = ner_task()
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    data = load_task_data(spec, ner_data)
    train, dev = ({"ner": tokenize_task(data[s], spec, tokenizer)} for s in ("train", "dev"))
    trainer = MultitaskTrainer(model=model, args=args_for(tmp_path, max_steps=200, learning_rate=2e-3),
                               train_dataset=train, eval_dataset=dev, processing_class=tokenizer)
    before = trainer.evaluate()
    assert before["eval_ner_f1"] < 0.3
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_ner_f1"] >= 0.9 and after["eval_ner_accuracy"] >= 0.9, after
    assert after["eval_overall"] == after["eval_ner_f1"]
    assert {"eval_ner_precision", "eval_ner_recall"} <= set(after)
    dev_rows = ner_rows(64, 1)
    predicted = model.predict("ner", [words for words, _ in dev_rows], tokenizer)  # from raw text, word by word
    pairs = [(p, g) for row, (_, tags) in zip(predicted, dev_rows) for p, g in zip(row, tags.split(), strict=True)]
    assert np.mean([p == g for p, g in pairs]) == pytest.approx(after["eval_ner_accuracy"])


def _four_task_data(data_dir, ner_data):
    header = ["id", "context", *CHOICES, "answer"]
    write_tsv(data_dir / "mc-train.tsv", header, mc_rows(64, 0))
    write_tsv(data_dir / "mc-dev.tsv", header, mc_rows(16, 1))
    specs = [get_task("sst"), get_task("sts"), mc_task(), ner_task()]
    return specs, {spec.name: load_task_data(spec, data_dir) for spec in specs}


@pytest.mark.parametrize("surgery", ["none", "pcgrad"])
def test_four_kinds_in_one_run(data_dir, ner_data, bert_config, tokenizer, tmp_path, surgery):
    specs, data = _four_task_data(data_dir, ner_data)
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=specs))
    train = {s.name: tokenize_task(data[s.name]["train"], s, tokenizer) for s in specs}
    dev = {s.name: tokenize_task(data[s.name]["dev"], s, tokenizer) for s in specs}
    before = model.heads["ner"].out_proj.weight.detach().clone()
    grouped = {"gradient_surgery": surgery, "per_device_train_batch_size": 4} if surgery != "none" else {}
    trainer = MultitaskTrainer(model=model, args=args_for(tmp_path, max_steps=8, logging_steps=4,
                                                          task_sampling_group_by_length=True, **grouped),
                               train_dataset=train, eval_dataset=dev, processing_class=tokenizer)
    trainer.train()
    assert not torch.equal(before, model.heads["ner"].out_proj.weight)
    if surgery != "none":
        cosines = {k for entry in trainer.state.log_history for k in entry if k.startswith("grad_cos_")}
        assert {"grad_cos_sst_ner", "grad_cos_mc_ner", "grad_cos_sts_ner"} <= cosines
    metrics = trainer.evaluate()
    units = [metrics["eval_sst_accuracy"], (metrics["eval_sts_pearson"] + 1) / 2, metrics["eval_mc_accuracy"],
             metrics["eval_ner_f1"]]
    assert metrics["eval_overall"] == pytest.approx(np.mean(units))
    trainer.save_model(str(tmp_path / "saved"))
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = MultitaskModel.from_pretrained(tmp_path / "saved")
    sentences = ["a man with a zebra", "very good cat on the grass", "it"]
    np.testing.assert_array_equal(predict_logits(reloaded, "ner", sentences, tokenizer),
                                  predict_logits(model, "ner", sentences, tokenizer))
    tags = reloaded.predict("ner", sentences, tokenizer)
    assert [len(t) for t in tags] == [5, 6, 1] and {t for row in tags for t in row} <= set(TAGS)
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "- token-classification" in card and "- multiple-choice" in card and "a tag per word" in card
    if surgery == "none":
        _command_line_on_four_kinds(trainer, tmp_path, data_dir)


def _command_line_on_four_kinds(trainer, tmp_path, data_dir):
    """`hf-multitask evaluate --errors`, `predict` and `report` on the saved four-kind run."""
    from hf_multitask.cli import main

    run = tmp_path / "run"
    trainer.save_model(str(run))
    trainer.save_state()
    trainer.processing_class.save_pretrained(run)
    main(["evaluate", str(run), "--data", str(data_dir), "--errors", "2"])
    results = json.loads((run / "dev_results.json").read_text())
    assert {"dev_ner_f1", "dev_mc_accuracy", "dev_overall"} <= set(results)
    errors = [json.loads(line) for line in (run / "dev_errors.jsonl").read_text().splitlines()]
    ner = [r for r in errors if r["task"] == "ner"]
    assert len(ner) == 2 and len(ner[0]["gold"]) == len(ner[0]["tokens"]) and "word_error_rate" in ner[0]
    main(["predict", str(run), "--task", "ner", "a man with a zebra", "--output", str(tmp_path / "p")])
    (record,) = [json.loads(line) for line in (tmp_path / "p").read_text().splitlines()]
    assert record["tokens"] == "a man with a zebra" and len(record["tags"]) == len(record["probabilities"]) == 5
    main(["predict", str(run), "--task", "mc", "what is good ? ||| bad ||| good ||| a cat ||| it", "--output",
          str(tmp_path / "p")])
    (choice,) = [json.loads(line) for line in (tmp_path / "p").read_text().splitlines()]
    assert choice["label"] in CHOICES
    main(["report", str(run), "--data", str(data_dir), "--output", str(tmp_path / "report")])
    expected = {"confusion_ner.png", "confusion_mc.png", "confusion_sst.png", "scatter_sts.png"}
    assert expected <= {path.name for path in (tmp_path / "report").iterdir()}


def test_predictions_outputs_and_worst_examples(ner_data, bert_config, tokenizer):
    spec = ner_task()
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    sentences = ["a man with a zebra", "it"]
    logits = predict_logits(model, "ner", sentences, tokenizer, batch_size=1)
    assert logits.shape == (2, 5, 6) and np.isnan(logits[1, 1:]).all() and not np.isnan(logits[0]).any()
    labels, probabilities = model.predict("ner", sentences, tokenizer, return_probabilities=True)
    assert [len(row) for row in labels] == [5, 1] and probabilities.shape == (2, 5, 6)
    np.testing.assert_allclose(probabilities[0].sum(-1), 1.0, rtol=1e-5)
    from transformers import pipeline

    tagger = pipeline("multitask-text-classification", model=model.eval(), tokenizer=tokenizer, task_name="ner")
    (answer,) = tagger("a man with a zebra")
    assert answer["labels"] == labels[0] and len(answer["scores"]) == 5
    texts = ["a man with a zebra", "it", "the cat is on the grass with a dog"]  # padded when batched
    expected = model.predict("ner", texts, tokenizer)
    for batch_size in (1, 3):
        assert [answer["labels"] for answer in tagger(texts, batch_size=batch_size)] == expected
    dev = load_task_data(spec, ner_data, splits=("dev",))["dev"]
    dev_logits = predict_logits(model, "ner", list(dev["tokens"][:8]) and [" ".join(w) for w in dev["tokens"][:8]],
                                tokenizer)
    worst = worst_examples(spec, dev.select(range(8)), dev_logits, 3)
    assert len(worst) == 3 and worst[0]["word_error_rate"] >= worst[-1]["word_error_rate"]
    assert len(worst[0]["gold"]) == len(worst[0]["tokens"]) == len(worst[0]["prediction"])


def test_smart_runs_on_token_classification(ner_data, bert_config, tokenizer, tmp_path):
    spec = ner_task()
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    train = {"ner": tokenize_task(load_task_data(spec, ner_data, splits=("train",))["train"], spec, tokenizer)}
    trainer = MultitaskTrainer(model=model, args=args_for(tmp_path, max_steps=3, smart_tasks=["ner"],
                                                          logging_steps=1),
                               train_dataset=train, processing_class=tokenizer)
    assert np.isfinite(trainer.train().training_loss)
    smart = [v for entry in trainer.state.log_history for k, v in entry.items()
             if k.startswith("smart") and k.endswith("_ner")]
    assert smart and all(np.isfinite(smart)) and max(smart) > 0


def test_json_lines_with_lists_and_tag_ids(data_dir, tokenizer):
    rows = [{"tokens": ["a", "man"], "tags": [1, 2]}, {"tokens": ["the", "zebra"], "tags": ["O", "B-ANI"]}]
    (data_dir / "ner-train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_task_data(ner_task(), data_dir, splits=("train",))["train"]
    assert data["tokens"] == [["a", "man"], ["the", "zebra"]] and data["labels"] == [[1, 2], [0, 3]]


HOSTILE = [
    ("a man\tB-PER I-PER O", r"row 1: column 'tokens' has 2 words but column 'tags' has 3 tags"),
    ("a man\tB-PER B-LOC", r"row 1, column 'tags': tag 2: label 'B-LOC' is neither a class id nor one of"),
    ("a man\tB-PER 6", r"row 1, column 'tags': tag 2: label '6' is not a class id in 0..5"),
    ("a man\t ", r"row 1, column 'tags': empty label"),
    (" \tO", r"row 1, column 'tokens': expected words"),
]


@pytest.mark.parametrize("line, message", HOSTILE, ids=["lengths", "unknown-tag", "tag-id", "no-tags", "no-words"])
def test_hostile_rows_name_file_row_and_column(data_dir, line, message):
    (data_dir / "ner-train.tsv").write_text("tokens\ttags\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"ner-train.tsv: " + message):
        load_task_data(ner_task(), data_dir, splits=("train",))


def test_hostile_tokenised_labels_and_a_slow_tokenizer(ner_data, bert_config, tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import BertTokenizerLegacy  # a Python tokenizer: no word_ids

    spec = ner_task()
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    bad = Dataset.from_dict({"input_ids": [[2, 5, 3], [2, 6, 3]], "labels": [[-100, 1, -100], [-100, 9, -100]]})
    with pytest.raises(DataValidationError, match=r"train_dataset\['ner'\]: row 1, column 'labels': tag 9 is not a "
                                                  r"tag id in 0..5"):
        MultitaskTrainer(model=model, args=args_for(tmp_path), train_dataset={"ner": bad}, processing_class=tokenizer)
    with pytest.raises(ValueError, match="needs a fast tokenizer"):
        vocab = tmp_path / "vocab.txt"
        vocab.write_text("\n".join(sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)) + "\n")
        tokenize_task(load_task_data(spec, ner_data, splits=("dev",))["dev"], spec, BertTokenizerLegacy(str(vocab)))


def test_token_aligned_datasets_work_as_in_run_ner(bert_config, tokenizer, tmp_path):
    """An HF script's dataset: labels already per token (-100 on special tokens), no word_ids."""
    from datasets import Dataset

    spec = ner_task()
    encoded = tokenizer(["a man", "the cat is good"])
    labels = [[-100, 1, 2, -100], [-100, 0, 3, 0, 4, -100]]
    dataset = Dataset.from_dict({**encoded, "labels": labels})
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    trainer = MultitaskTrainer(model=model, args=args_for(tmp_path, max_steps=2), train_dataset=dataset,
                               eval_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    assert 0 <= trainer.evaluate()["eval_ner_f1"] <= 1


def test_the_example_config_defines_both_kinds_on_the_command_line():
    """examples/kinds/sst_quiz_ner.yaml: tasks that are no presets are defined by their task_overrides entry."""
    from pathlib import Path

    from hf_multitask.build import ModelArguments, build_task_specs
    from hf_multitask.cli import parse_train_args

    config = Path(__file__).resolve().parent.parent / "examples" / "kinds" / "sst_quiz_ner.yaml"
    model_args, data_args, _ = parse_train_args([str(config)])
    specs = {spec.name: spec for spec in build_task_specs(model_args)}
    assert {name: spec.kind for name, spec in specs.items()} == {
        "sst": "classification", "quiz": "multiple_choice", "ner": "token_classification"}
    assert specs["quiz"].num_labels == 4 and specs["ner"].label_names[1] == "B-PER" and specs["ner"].max_length == 64
    with pytest.raises(ValueError, match=r"Unknown task 'ner'.*define the task in task_overrides with its kind"):
        build_task_specs(ModelArguments(tasks=["ner"]))
    with pytest.raises(ValueError, match=r"task_overrides\['ner'\]: unknown TaskSpec field\(s\) \['tag_names'\]"):
        build_task_specs(ModelArguments(tasks=["ner"], task_overrides='{"ner": {"kind": "token_classification", '
                                                                      '"tag_names": ["O"]}}'))


def test_the_hf_token_and_choice_collators_become_ours(bert_config, tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorForMultipleChoice, DataCollatorForTokenClassification

    spec = ner_task()
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    dataset = Dataset.from_dict({**tokenizer(["a man", "the cat is good"]),
                                 "labels": [[-100, 1, 2, -100], [-100, 0, 3, 0, 4, -100]]})
    for collator in (DataCollatorForTokenClassification(tokenizer), DataCollatorForMultipleChoice(tokenizer)):
        trainer = MultitaskTrainer(model=model, args=args_for(tmp_path), train_dataset=dataset,
                                   data_collator=collator)
        assert isinstance(trainer.data_collator, MultitaskCollator)
    with pytest.raises(ValueError, match=r"DataCollatorForTokenClassification\(padding='max_length'"):
        MultitaskTrainer(model=model, args=args_for(tmp_path), train_dataset=dataset,
                         data_collator=DataCollatorForTokenClassification(tokenizer, padding="max_length"))


def test_words_cut_off_by_max_length_are_not_scored(tokenizer):
    spec = ner_task(max_length=8)  # [CLS] a man w ##i ##t ##h [SEP]: the last two words are cut off
    kind = spec.task_kind
    logits = np.full((1, 3, len(TAGS)), np.nan, dtype=np.float32)
    logits[0, :, :] = -1.0
    logits[0, 0, TAGS.index("B-PER")] = logits[0, 1, TAGS.index("I-PER")] = logits[0, 2, TAGS.index("O")] = 1.0
    gold = [[TAGS.index(t) for t in ("B-PER", "I-PER", "O", "O", "B-ANI")]]  # 5 words, 3 predicted
    assert kind.compute_metrics(spec, logits, gold) == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0}
    from datasets import Dataset

    words = Dataset.from_dict({"tokens": [["a", "man", "with", "a", "cat"]], "labels": gold})
    features = tokenize_task(words, spec, tokenizer)
    assert first_subtokens(features[0]["word_ids"]) == [1, 2, 3] and len(features[0]["input_ids"]) == 8  # 3 words


def test_a_word_with_no_tokens_is_named_not_skipped(bert_config, tokenizer):
    """A replacement character gives no tokens (BERT's tokenizer drops it): skipping it shifted every later word's
    tag by one. A zero-width space is refused before, as invisible text."""
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[ner_task()]))
    with pytest.raises(DataValidationError, match=r"example 0: word 1 \('\ufffd'\) gives no tokens"):
        model.predict("ner", [["the", "\ufffd", "man", "cat"]], tokenizer)
    with pytest.raises(DataValidationError, match=r"input 0: 'tokens': word 2 is empty or not a string \('\\u200b'\)"):
        model.predict("ner", [["the", "\u200b", "man", "cat"]], tokenizer)


def test_tags_that_disagree_with_the_words_are_named_before_training(bert_config, tokenizer, tmp_path):
    """More tags than words trained each word on its neighbour's tag; fewer failed at the first collate."""
    from datasets import Dataset

    spec = ner_task()
    words = [["a", "man", "is", "good"], ["the", "cat", "is", "bad"]]
    with pytest.raises(DataValidationError, match=r"Task 'ner': row 0: column 'tokens' has 4 words but column "
                                                  r"'tags' has 5 tags"):
        tokenize_task(Dataset.from_dict({"tokens": words, "labels": [[0, 1, 0, 0, 4], [0, 3, 0, 4]]}), spec,
                      tokenizer)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    short = tokenize_task(Dataset.from_dict({"tokens": words, "labels": [[0, 1, 0, 0], [0, 3, 0, 4]]}), spec,
                          tokenizer).map(lambda row, i: {"labels": row["labels"][:2] if i == 1 else row["labels"]},
                                         with_indices=True)
    with pytest.raises(DataValidationError, match=r"eval_dataset\['ner'\]: row 1, column 'labels': 2 tags for the 4 "
                                                  r"words kept"):
        MultitaskTrainer(model=model, args=args_for(tmp_path), eval_dataset={"ner": short}, processing_class=tokenizer)
    aligned = Dataset.from_dict({**tokenizer(["a man", "the cat"]), "labels": [[-100, 1, 2, -100], [-100, 0, 3]]})
    with pytest.raises(DataValidationError, match=r"row 1, column 'labels': 3 labels for 4 tokens of 'input_ids'"):
        MultitaskTrainer(model=model, args=args_for(tmp_path), eval_dataset={"ner": aligned},
                         processing_class=tokenizer)


def test_conll_class_label_tags_in_another_order_are_remapped(bert_config, tokenizer, tmp_path):
    from datasets import ClassLabel, Dataset, Features, List, Value

    spec = ner_task()
    other = [TAGS[i] for i in (0, 3, 4, 5, 1, 2)]  # the task's names, in another order
    features = Features({"tokens": List(Value("string")), "labels": List(ClassLabel(names=other))})
    raw = Dataset.from_dict({"tokens": [["a", "man", "is", "good"]], "labels": [[0, 4, 0, 2]]}, features=features)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    trainer = MultitaskTrainer(model=model, args=args_for(tmp_path), train_dataset={"ner": tokenize_task(raw, spec,
                               tokenizer)}, processing_class=tokenizer)
    remapped = trainer.train_dataset.datasets["ner"]
    assert remapped["labels"] == [[TAGS.index(other[t]) for t in (0, 4, 0, 2)]]
    assert remapped.features["labels"].feature.names == TAGS


def test_string_words_count_truncation_per_example_and_a_tokenless_last_word_is_named(bert_config, tokenizer):
    from datasets import Dataset

    from hf_multitask.data import count_truncated

    spec = ner_task()
    strings = Dataset.from_dict({"tokens": ["a man is good"] * 4, "labels": [[0, 1, 0, 4]] * 4})
    assert count_truncated(strings, spec, tokenizer, 32) == 0 and count_truncated(strings, spec, tokenizer, 4) == 4
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    with pytest.raises(DataValidationError, match=r"example 0: word 2 \('\ufffd'\) gives no tokens"):
        model.predict("ner", [["a", "man", "\ufffd"]], tokenizer)


def test_word_error_rate_leaves_out_truncated_words():
    spec = ner_task()
    logits = np.full((2, 4, len(TAGS)), np.nan, dtype=np.float32)
    logits[0, :2] = np.eye(len(TAGS))[[1, 0]] * 5  # row 0: 2 of 4 words kept, both right
    logits[1, :4] = np.eye(len(TAGS))[[0, 0, 0, 1]] * 5  # row 1: one word of 4 wrong
    gold = np.array([[1, 0, 0, 3], [0, 0, 0, 0]])
    np.testing.assert_allclose(spec.task_kind.error_scores(spec, logits, gold), [0.0, 0.25])


def test_evaluate_predictions_keep_the_gold_tags_beside_the_predicted(bert_config, tokenizer, ner_data, tmp_path):
    from hf_multitask.cli import example_records
    from hf_multitask.inference import task_logits

    spec = ner_task()
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[spec]))
    dev = tokenize_task(load_task_data(spec, ner_data, splits=("dev",))["dev"], spec, tokenizer)
    records = example_records(spec, dev, task_logits(model, "ner", dev, tokenizer))
    assert records[0]["labels"] == dev[0]["labels"] and len(records[0]["tags"]) == len(dev[0]["labels"])


def test_predict_takes_strings_and_word_lists_in_one_call(bert_config, tokenizer):
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[ner_task()]))
    mixed = model.predict("ner", ["a man is good", ["the", "cat"]], tokenizer)
    assert mixed == model.predict("ner", [["a", "man", "is", "good"], ["the", "cat"]], tokenizer)
    assert [len(tags) for tags in mixed] == [4, 2]
