"""The regulariser protocol and registry (hf_multitask/regularizers/base.py), with the worked example of
docs/regularizers.md run as printed there."""

import json
import re
from pathlib import Path

import pytest
import torch

from hf_multitask import MultitaskTrainingArguments, Regularizer, get_regularizer, register_regularizer
from hf_multitask.cli import parse_train_args
from hf_multitask.regularizers import REGULARIZERS, RDropRegularizer, SmartRegularizer, build_regularizers

from .conftest import make_model, make_trainer
from .test_reliability import make_nan_trainer

DOCS = Path(__file__).resolve().parents[1] / "docs" / "regularizers.md"


def docs_example() -> type[Regularizer]:
    """Run the worked example of docs/regularizers.md (the Python block that registers a regulariser)."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    code = next(block for block in blocks if "register_regularizer(" in block)
    namespace = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace["LogitPenalty"]


def args(tmp_path, **kwargs):
    return MultitaskTrainingArguments(str(tmp_path), report_to=[], **kwargs)


def test_registry_has_the_built_in_regularizers_in_order():
    assert list(REGULARIZERS)[:2] == ["rdrop", "smart"]  # the import order of regularizers/__init__.py
    assert get_regularizer("rdrop") is RDropRegularizer and get_regularizer("smart") is SmartRegularizer


def test_unknown_regularizer_names_the_closest(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown regulariser 'rdorp' \(did you mean 'rdrop'\?\)"):
        args(tmp_path, regularizers={"rdorp": {"tasks": ["sst"]}})


def test_unknown_option_names_the_closest(tmp_path):
    with pytest.raises(ValueError, match=r"no option 'alpah' \(did you mean 'alpha'\?\)"):
        args(tmp_path, regularizers={"rdrop": {"tasks": ["sst"], "alpah": 1.0}})


def test_smart_cannot_be_configured_twice(tmp_path):
    with pytest.raises(ValueError, match="'smart' is configured twice"):
        args(tmp_path, smart_tasks=["sst"], regularizers={"smart": {"tasks": ["sst"]}})


def test_smart_through_regularizers_equals_smart_fields(tmp_path):
    by_fields = build_regularizers(args(tmp_path, smart_tasks=["sts"], smart_lambda=3.0))["smart"]
    by_dict = build_regularizers(args(tmp_path, regularizers={"smart": {"tasks": ["sts"], "lambda_s": 3.0}}))["smart"]
    assert vars(by_fields).keys() == vars(by_dict).keys()
    assert all(vars(by_fields)[k] == vars(by_dict)[k] for k in vars(by_fields) if k != "teacher")


def test_a_name_taken_by_another_class_is_rejected():
    class Other(Regularizer):
        name = "rdrop"

    with pytest.raises(ValueError, match="'rdrop' is registered already"):
        register_regularizer(Other)
    with pytest.raises(ValueError, match="name is empty"):
        register_regularizer(type("Nameless", (Regularizer,), {}))


def test_a_task_without_a_head_is_rejected_by_the_trainer(bert_config, tokenized, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"regularizers\['rdrop'\]\['tasks'\] has task\(s\) \['nli'\] with no head"):
        make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path,
                     regularizers={"rdrop": {"tasks": ["sst", "nli"]}})


def test_command_line_and_config_files_take_regularizers(tmp_path):
    flag = '{"rdrop": {"tasks": ["sst", "sts"], "alpha": 0.5}}'
    _, _, training = parse_train_args(["--output_dir", str(tmp_path), "--regularizers", flag])
    assert training.regularizers == {"rdrop": {"tasks": ["sst", "sts"], "alpha": 0.5}}
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path), "regularizers": {"rdrop": {"tasks": ["sst"]}}}))
    _, _, training = parse_train_args([str(config)])
    assert training.regularizers == {"rdrop": {"tasks": ["sst"]}}
    with pytest.raises(ValueError, match="regularizers must be a JSON object"):
        args(tmp_path, regularizers="{rdrop")


def test_docs_example_trains_logs_and_hears_about_skipped_steps(bert_config, tokenized, tokenizer, tmp_path):
    docs_example()
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, tmp_path, nan_steps={2}, max_steps=4,
                                  regularizers={"logit_penalty": {"tasks": ["sst", "sts"], "warmup_steps": 10}},
                                  task_sampling="round_robin")
    trainer.train()
    penalty = trainer.regularizers["logit_penalty"]
    assert penalty.steps == 3  # 4 optimizer steps, the second skipped for its NaN loss: applied=False
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged[0]["logit_penalty_sst"] > 0 and "logit_penalty_quora" not in logged[0]


def test_docs_example_state_is_checkpointed_and_restored(bert_config, tokenized, tokenizer, tmp_path):
    docs_example()
    options = dict(eval=None, max_steps=4, save_strategy="steps", save_steps=2,
                   regularizers={"logit_penalty": {"tasks": ["sst"], "warmup_steps": 10}})
    full = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "full", **options)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert json.loads((checkpoint / "multitask_state.json").read_text())["scalars"]["logit_penalty"] == {"steps": 2}
    resumed = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "resumed", **options)
    resumed.regularizers["logit_penalty"].steps = 100  # overwritten by the checkpoint's state
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.regularizers["logit_penalty"].steps == 4
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_the_trainer_names_no_regularizer():
    root = Path(__file__).resolve().parents[1] / "hf_multitask"
    for module in ("trainer.py", "callbacks.py", "checkpointing.py"):
        code = re.sub(r'"""(.*?)"""|#.*', "", (root / module).read_text(), flags=re.S)  # docstrings, comments out
        assert not re.search(r"smart|rdrop", code, re.I), module
