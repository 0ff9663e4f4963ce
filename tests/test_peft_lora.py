"""peft's own LoRA on a MultitaskModel, trained by the MultitaskTrainer (no patching of peft's registries)."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from hf_multitask import MultitaskModel

from .conftest import make_trainer, snapshot

TASKS = ("sst", "quora", "sts")


def lora_config(**overrides):
    # target_modules: LoRA's defaults don't know model_type "hf_multitask"; modules_to_save: each head by its
    # full name (peft cannot wrap the heads' nn.ModuleDict)
    return LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"],
                         "modules_to_save": [f"heads.{t}" for t in TASKS], **overrides})


# What these tests always ran with, beside make_trainer's defaults (logging_steps=500: the Trainer's own)
TRAINER_ARGS = dict(learning_rate=1e-2, logging_steps=500, task_sampling="round_robin")


def logits(model, tokenizer):
    inputs = dict(tokenizer(["a great film", "how do i cook the dog ?"], padding=True, return_tensors="pt"))
    return {t: model(task_name=t, **inputs).logits.detach() for t in TASKS}


def test_peft_needs_explicit_targets_and_per_head_modules_to_save(tiny_model):
    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(tiny_model, LoraConfig(r=4))
    with pytest.raises(TypeError, match="ModuleDict"):
        get_peft_model(tiny_model, lora_config(modules_to_save=["heads"]))


def test_trainer_finds_specs_through_a_peft_model(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(get_peft_model(tiny_model, lora_config()), tokenized, tokenizer, tmp_path / "out",
                           **TRAINER_ARGS)
    assert list(trainer.specs) == list(TASKS)


def test_lora_trains_saves_and_reloads(tiny_model, tokenized, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    model = get_peft_model(tiny_model, lora_config())
    before = snapshot(model)
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS)
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n or ".modules_to_save." in n for n in changed)
    assert any(".lora_B." in n for n in changed) and all(any(f"heads.{t}." in n for n in changed) for t in TASKS)
    assert "eval_overall" in trainer.evaluate()

    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    model.eval()
    expected = logits(model, tokenizer)
    reloaded = PeftModel.from_pretrained(MultitaskModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    actual = logits(reloaded.eval(), tokenizer)
    for task in TASKS:
        torch.testing.assert_close(actual[task], expected[task], rtol=0, atol=1e-6, msg=task)
    merged = reloaded.merge_and_unload()  # a plain MultitaskModel again: saves and loads as one
    assert isinstance(merged, MultitaskModel)
    merged.save_pretrained(tmp_path / "merged")
    again = logits(MultitaskModel.from_pretrained(tmp_path / "merged").eval(), tokenizer)
    for task in TASKS:
        torch.testing.assert_close(again[task], expected[task], rtol=0, atol=1e-5, msg=task)


def test_a_lora_wrapped_save_writes_our_card_with_peft_metadata(tiny_model, tokenized, tokenizer, tmp_path):
    import yaml

    from hf_multitask.model_card import MARKER

    model = get_peft_model(tiny_model, lora_config())
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS, max_steps=1)
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "adapter"))
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert MARKER in card and "[More Information Needed]" not in card
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "peft" and {"lora", "hf-multitask"} <= set(front["tags"])
    assert f"| `sst` | accuracy | {metrics['eval_sst_accuracy']:.4f} |" in card
    assert "### Framework versions\n\n- PEFT " in card
    usage = card[card.index("## How to use"):]  # an adapter's usage, not a whole model's
    assert 'PeftModel.from_pretrained(base, "path/to/this/adapter")' in usage and "trust_remote_code" not in usage
    assert "does not name its base" in usage  # the wrapped model was built in memory


def test_an_adapter_of_a_saved_base_names_it_and_loads_as_its_card_says(tiny_model, tokenized, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    model = get_peft_model(MultitaskModel.from_pretrained(tmp_path / "base"), lora_config())
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS, max_steps=1)
    trainer.save_model(str(tmp_path / "adapter"))
    usage = (tmp_path / "adapter" / "README.md").read_text().split("## How to use")[1]
    assert f'MultitaskModel.from_pretrained("{tmp_path / "base"}")' in usage and "does not name" not in usage
    reloaded = PeftModel.from_pretrained(MultitaskModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    expected, actual = logits(model.eval(), tokenizer), logits(reloaded.eval(), tokenizer)
    for task in TASKS:
        torch.testing.assert_close(actual[task], expected[task], rtol=0, atol=1e-6, msg=task)


def test_exporting_a_task_of_an_unmerged_lora_model_says_merge_first(bert_config, tmp_path):
    from hf_multitask import MultitaskConfig, cs224n_tasks, export_task

    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(), pooling="cls"))
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"]))
    with pytest.raises(ValueError, match=r"LoRA layers \(peft\); merge them into it first"):
        export_task(wrapped, "sst", tmp_path / "sst")


def test_freeze_encoder_leaves_lora_as_it_is_and_will_not_unfreeze_the_base(tiny_model):
    model = get_peft_model(tiny_model, lora_config())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".lora_A." in n for n in trainable)
    model.freeze_encoder()  # peft forwards it to the MultitaskModel
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # peft froze the base already
    with pytest.raises(ValueError, match=r"freeze_encoder\(False\): the encoder carries peft adapters"):
        model.freeze_encoder(False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_a_pal_adapter_saved_through_peft_holds_the_trained_copies_under_plain_names(tiny_model, bert_config,
                                                                                    tmp_path):
    from safetensors.torch import load_file

    from hf_multitask import MultitaskConfig, cs224n_tasks
    from hf_multitask.pal import PalConfig

    tiny_model.add_pal(PalConfig(rank=4))
    model = get_peft_model(tiny_model, lora_config(modules_to_save=[*(f"pal.{t}" for t in TASKS),
                                                                      *(f"heads.{t}" for t in TASKS)]))
    copies = {}
    with torch.no_grad():  # "training": only peft's copies change
        for name, param in model.get_base_model().named_parameters():
            if ".modules_to_save.default." in name:
                param.add_(0.1)
                copies[name.replace(".modules_to_save.default.", ".")] = param.detach().clone()
    model.save_pal_adapter(tmp_path / "pal")
    saved = load_file(tmp_path / "pal" / "adapter_model.safetensors")
    assert saved.keys() == copies.keys() and all(torch.equal(saved[k], copies[k]) for k in saved)
    plain = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    plain.load_pal_adapter(tmp_path / "pal")
    assert all(torch.equal(plain.state_dict()[k], copies[k]) for k in copies)


def test_a_pal_adapter_under_lora_is_refused_until_merged(tiny_model, tmp_path):
    from hf_multitask.pal import PalConfig

    tiny_model.add_pal(PalConfig(rank=4))
    model = get_peft_model(tiny_model, lora_config(target_modules=["query", "value", "V_E", "V_D"]))
    with pytest.raises(ValueError, match=r"save_pal_adapter: pal\.sst\..* is wrapped by a peft adapter.*"
                                         r"merge_and_unload\(\) first"):
        model.save_pal_adapter(tmp_path / "pal")
    model.merge_and_unload().save_pal_adapter(tmp_path / "pal")


def test_the_report_of_a_lora_run_reads_the_tasks_from_its_base(tiny_model, tokenized, tokenizer, data_dir, tmp_path):
    from hf_multitask.report import write_report

    tiny_model.save_pretrained(tmp_path / "base")
    model = get_peft_model(MultitaskModel.from_pretrained(tmp_path / "base"), lora_config())
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "run", **{**TRAINER_ARGS, "logging_steps": 1},
                           max_steps=2)
    trainer.train()
    trainer.evaluate()
    trainer.save_model(str(tmp_path / "run"))
    trainer.save_state()
    paths = write_report(tmp_path / "run", data_dir=str(data_dir))
    assert {"task_losses.png", "confusion_sst.png", "scatter_sts.png"} <= {p.name for p in paths}
