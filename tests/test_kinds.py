"""Task kinds: the registry, what each built-in kind rejects when a spec is built, and a kind defined only in
tests/ (tests/toy_kind.py) that trains, evaluates, saves, reloads, predicts and writes a card with no library edit."""

import dataclasses
import json
import sys

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
from hf_multitask.cli import main
from hf_multitask.inference import predict_logits
from hf_multitask.kinds import KINDS, ClassificationKind, get_kind, register_kind
from hf_multitask.model_card import render_model_card

from .conftest import make_model, write_tsv
from .toy_kind import LEVEL_KIND, LEVELS, MLPHead

LEVEL_ROWS = [("a bad film", "low"), ("an awful movie", "low"), ("it is a film", "mid"), ("it was fine", "mid"),
              ("a great film", "high"), ("very very good", "high"), ("not good", "low"), ("a good movie", "high")]


def level_task(**overrides) -> TaskSpec:
    return TaskSpec(**{"name": "level", "kind": "level", "text_columns": ("sentence",), "label_column": "level",
                       "label_names": list(LEVELS), **overrides})


def test_registry_knows_the_built_in_kinds_and_the_toy_kind():
    assert {"classification", "regression", "level"} <= set(KINDS)
    assert get_kind("level") is LEVEL_KIND
    with pytest.raises(ValueError, match=r"Unknown task kind 'regresion' \(did you mean 'regression'\?\)"):
        get_kind("regresion")


def test_a_kind_name_cannot_be_taken_by_another_class():
    class Other(ClassificationKind):
        name = "level"

    with pytest.raises(ValueError, match="'level' is registered already"):
        register_kind(Other())


@pytest.mark.parametrize(("task", "changes", "match"), [
    ("sst", {"score_range": (0, 5)}, "score_range is for regression tasks"),
    ("sts", {"label_names": ["a", "b"]}, "label_names are for classification tasks"),
    ("sst", {"extra": {"temperature": 2}}, r"extra has option\(s\) \['temperature'\]"),
    ("sts", {"loss": "ordinal"}, "loss 'ordinal' not valid for regression"),
])
def test_built_in_kinds_reject_what_makes_no_sense_for_them(task, changes, match):
    with pytest.raises(ValueError, match=match):
        get_task(task, **changes)


def test_toy_kind_checks_its_spec():
    with pytest.raises(ValueError, match="a level task has label_names"):
        level_task(label_names=["a", "b", "c"])
    assert level_task().num_labels == 3 and level_task().loss == "cross_entropy"


@pytest.fixture
def level_data(data_dir):
    for split in ("train", "dev"):
        write_tsv(data_dir / f"level-{split}.tsv", ["id", "sentence", "level"], LEVEL_ROWS)
    return data_dir


def test_toy_kind_validates_labels_naming_file_row_and_column(data_dir):
    write_tsv(data_dir / "level-train.tsv", ["id", "sentence", "level"], [("a film", "low"), ("a film", "huge")])
    with pytest.raises(ValueError, match=r"level-train.tsv: row 2, column 'level': level 'huge' is not one of"):
        load_task_data(level_task(), data_dir, splits=("train",))


def test_toy_kind_trains_evaluates_saves_reloads_predicts_and_writes_a_card(level_data, bert_config, tokenizer,
                                                                            tmp_path):
    specs = [get_task("sst"), level_task()]
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=specs))
    assert isinstance(model.heads["level"], MLPHead)
    data = {spec.name: load_task_data(spec, level_data) for spec in specs}
    train = {name: tokenize_task(d["train"], model.specs[name], tokenizer) for name, d in data.items()}
    dev = {name: tokenize_task(d["dev"], model.specs[name], tokenizer) for name, d in data.items()}
    args = MultitaskTrainingArguments(str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=12,
                                      learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                                      task_sampling_group_by_length=True)
    before = model.heads["level"].hidden.weight.detach().clone()
    trainer = MultitaskTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                               processing_class=tokenizer)
    trainer.train()
    assert not torch.equal(before, model.heads["level"].hidden.weight)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_level_accuracy"] <= 1.0
    expected = (metrics["eval_sst_accuracy"] + metrics["eval_level_accuracy"]) / 2
    assert metrics["eval_overall"] == pytest.approx(expected)

    trainer.save_model(str(tmp_path / "saved"))
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = MultitaskModel.from_pretrained(tmp_path / "saved")
    texts = ["a great film", "it was fine", "an awful movie"]
    np.testing.assert_array_equal(predict_logits(reloaded, "level", texts, tokenizer),
                                  predict_logits(model, "level", texts, tokenizer))
    assert set(reloaded.predict("level", texts, tokenizer)) <= set(LEVELS)
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "| `level` | level | a level: low < mid < high |" in card and "- levels" in card
    assert f"| `level` | accuracy | {metrics['eval_level_accuracy']:.4f} |" in card
    assert render_model_card(reloaded).count("`level`") >= 2


def test_toy_kind_through_the_command_line(level_data, bert_config, tokenizer, tmp_path, capsys):
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[level_task()]))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    main(["predict", str(tmp_path / "model"), "--task", "level", "a great film", "not good"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(r) for r in records] == [{"sentence", "level"}] * 2
    main(["evaluate", str(tmp_path / "model"), "--data", str(level_data), "--errors", "2"])
    errors = [json.loads(line) for line in (tmp_path / "model" / "dev_errors.jsonl").read_text().splitlines()]
    assert len(errors) == 2 and {"gold", "prediction"} <= set(errors[0])


def test_regression_initial_bias_starts_at_the_range_centre_and_is_saved(bert_config, tmp_path):
    """`extra={"initial_bias": "center"}` starts the head's bias at the middle of score_range (2.5 for STS's 0-5)
    instead of 0; a saved model loads the trained bias, not the starting one; bad values and bi-encoding refused."""
    centred = dataclasses.replace(get_task("sts"), extra={"initial_bias": "center"})
    model = make_model(bert_config, [get_task("sst"), centred])
    assert model.heads["sts"].out_proj.bias.item() == 2.5
    assert model.heads["sst"].out_proj.bias.abs().max().item() == 0.0
    with torch.no_grad():
        model.heads["sts"].out_proj.bias.fill_(1.25)
    model.save_pretrained(tmp_path)
    assert MultitaskModel.from_pretrained(tmp_path).heads["sts"].out_proj.bias.item() == 1.25
    negative = dataclasses.replace(centred, extra={"initial_bias": -1})
    assert make_model(bert_config, [negative]).heads["sts"].out_proj.bias.item() == -1.0
    with pytest.raises(ValueError, match="initial_bias must be 'center' or a finite number"):
        dataclasses.replace(centred, extra={"initial_bias": "middle"})
    with pytest.raises(ValueError, match="bi-encoded regression head is a scaled cosine"):
        dataclasses.replace(centred, pair_encoding="bi")


MINIMAL_KIND = '''
import numpy as np
import torch.nn.functional as F
from hf_multitask import TaskKind, register_kind
from hf_multitask.heads import SentenceHead
from hf_multitask.kinds import DataValidationError


class BinaryKind(TaskKind):  # docs/architecture.md's example: the five methods a kind needs and nothing else
    name = "binary"
    losses = ("bce",)
    metrics = ("accuracy",)

    def num_labels(self, spec):
        return 1

    def build_head(self, spec, hidden_size, dropout):
        return SentenceHead(hidden_size, 1, dropout)

    def loss(self, spec, logits, labels):
        return F.binary_cross_entropy_with_logits(logits.float().view(-1), labels.float().view(-1))

    def parse_value(self, spec, value, where):
        if str(value) not in ("0", "1"):
            raise DataValidationError(f"{where}: label {value!r} is not 0 or 1")
        return int(value)

    def predictions(self, spec, logits):
        return (np.asarray(logits).reshape(-1) > 0).astype(int)


register_kind(BinaryKind())
'''


@pytest.fixture
def binary_kind(tmp_path, monkeypatch):
    """The docs' minimal kind as a user's module `my_kinds.py` in the working directory, not imported yet."""
    (tmp_path / "my_kinds.py").write_text(MINIMAL_KIND, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_extensions puts the working directory on it
    yield
    KINDS.pop("binary", None)
    sys.modules.pop("my_kinds", None)


def test_the_minimal_kind_trains_saves_and_names_what_a_further_feature_needs(binary_kind, data_dir, bert_config,
                                                                              tokenizer, tmp_path, capsys):
    from hf_multitask.cli import import_extensions
    from hf_multitask.kinds import MissingKindMethod

    spam = dict(name="spam", kind="binary", text_columns=("sentence",), label_column="spam")
    with pytest.raises(ValueError, match=r"got 'binary'.*registered when its module is imported.*--import MODULE"):
        TaskSpec(**spam)
    assert import_extensions(["--import", "my_kinds", "evaluate", "x"]) == ["evaluate", "x"]
    write_tsv(data_dir / "spam-train.tsv", ["id", "sentence", "spam"], [("a bad film", 1), ("a good movie", 0)] * 4)
    write_tsv(data_dir / "spam-dev.tsv", ["id", "sentence", "spam"], [("a bad film", 1), ("a good movie", 0)])
    spec = TaskSpec(**spam)
    model = make_model(bert_config, [spec])
    data = load_task_data(spec, data_dir)
    tokenized = {split: {"spam": tokenize_task(data[split], spec, tokenizer)} for split in ("train", "dev")}
    args = MultitaskTrainingArguments(str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=2,
                                      report_to=[], save_strategy="steps", save_steps=1, use_cpu=True)
    trainer = MultitaskTrainer(model=model, args=args, train_dataset=tokenized["train"],
                               eval_dataset=tokenized["dev"], processing_class=tokenizer)
    trainer.train()  # saves a checkpoint (with its model card) at every step
    assert "eval_spam_accuracy" in trainer.evaluate()
    trainer.save_model(str(tmp_path / "saved"))
    tokenizer.save_pretrained(tmp_path / "saved")
    assert "| `spam` | binary | 1 output(s) per example (binary) |" in (tmp_path / "saved" / "README.md").read_text()
    reloaded = MultitaskModel.from_pretrained(tmp_path / "saved")
    with pytest.raises(MissingKindMethod, match=r"'binary' \(BinaryKind\) does not implement `decode`, which "
                                                r"model.predict needs"):
        reloaded.predict("spam", ["a film"])
    main(["report", str(tmp_path / "run"), "--data", str(data_dir), "--output", str(tmp_path / "plots")])
    assert "no prediction plot for task 'spam': Task kind 'binary' (BinaryKind) does not implement " \
           "`plot_predictions`" in capsys.readouterr().out


def test_import_option_needs_an_importable_module(tmp_path, monkeypatch):
    from hf_multitask.cli import import_extensions

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="--import no_such_module: No module named 'no_such_module'"):
        import_extensions(["--import", "no_such_module", "train"])
    with pytest.raises(SystemExit, match="--import needs a module name"):
        import_extensions(["--import", "--help"])


def test_label_array_keeps_float_targets_and_pads_ragged_rows():
    from hf_multitask.kinds.base import label_array

    multi_hot = label_array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])  # a multi-label kind's targets
    assert multi_hot.dtype == np.float64 and multi_hot[0, 2] == 0.5
    tags = label_array([[3, 1], [2]])  # tags per word
    assert tags.dtype == np.int64 and tags.tolist() == [[3, 1], [2, -100]]
    assert label_array([1, 0, 2]).tolist() == [1, 0, 2]
