import re

import pytest
import torch

from hf_multitask import MultitaskTrainer, MultitaskTrainingArguments

from .conftest import make_trainer, snapshot


def test_training_changes_encoder_and_heads(tiny_model, tokenized, tokenizer, tmp_path):
    before = snapshot(tiny_model)
    make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out").train()
    after = snapshot(tiny_model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(n.startswith("encoder.encoder.layer.0") for n in changed)
    assert {"heads.sst.out_proj.weight", "heads.quora.out_proj.weight", "heads.sts.out_proj.weight"} <= changed


def test_frozen_encoder_trains_heads_only(tiny_model, tokenized, tokenizer, tmp_path):
    tiny_model.freeze_encoder()
    before = snapshot(tiny_model)
    make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out").train()
    after = snapshot(tiny_model)
    for name in before:
        assert torch.equal(before[name], after[name]) == name.startswith("encoder."), name


def test_evaluate_reports_every_task_and_the_overall_score(tiny_model, tokenized, tokenizer, tmp_path):
    metrics = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out").evaluate()
    for key in ("eval_sst_accuracy", "eval_quora_accuracy", "eval_sts_pearson", "eval_sst_loss", "eval_overall"):
        assert key in metrics
    expected = (metrics["eval_sst_accuracy"] + metrics["eval_quora_accuracy"] + (metrics["eval_sts_pearson"] + 1) / 2)
    assert metrics["eval_overall"] == pytest.approx(expected / 3)


def test_per_task_training_losses_are_logged(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", task_sampling="round_robin")
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"loss_sst", "loss_quora", "loss_sts"} <= set(logged[0])


def test_overall_works_as_metric_for_best_model(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", eval_strategy="steps", eval_steps=3,
                           save_strategy="steps", save_steps=3, metric_for_best_model="overall",
                           load_best_model_at_end=True)
    trainer.train()
    assert trainer.state.best_metric is not None
    assert trainer.state.best_model_checkpoint is not None


def test_sampler_epoch_follows_the_trainer(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", max_steps=-1, num_train_epochs=2)
    trainer.train()
    assert trainer.train_sampler.epoch == 1
    assert trainer.train_sampler.total_batches == 2 * len(trainer.train_sampler)
    assert trainer.state.global_step == 2 * len(trainer.train_sampler)


def test_loss_weight_scales_the_task_loss(bert_config, tokenized, tokenizer, tmp_path):
    from hf_multitask import MultitaskConfig, MultitaskModel, cs224n_tasks

    tasks = [t.replace(loss_weight=0.0) if t.name == "sst" else t for t in cs224n_tasks()]
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=tasks))
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out")
    batch = trainer.data_collator(trainer.train_dataset.__getitems__([0, 1]))
    assert trainer.compute_loss(model, batch).item() == 0.0


def test_eval_dataset_must_match_the_heads(tiny_model, tokenized, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"eval_dataset has task\(s\) \['nli'\] with no head"):
        MultitaskTrainer(model=tiny_model, args=MultitaskTrainingArguments(str(tmp_path), report_to=[]),
                         eval_dataset={"nli": tokenized["dev"]["sst"]}, processing_class=tokenizer)


def test_unknown_sampling_strategy_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="task_sampling must be one of"):
        MultitaskTrainingArguments(str(tmp_path), task_sampling="random")


def test_pin_memory_is_off_without_an_accelerator(tmp_path):
    args = MultitaskTrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    assert args.dataloader_pin_memory is False  # torch warns at every dataloader when it pins without a device


def test_each_task_gets_its_own_evaluation_progress_bar_with_a_total(tiny_model, tokenized, tokenizer, tmp_path,
                                                                    capfd):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path, per_device_eval_batch_size=8,
                           disable_tqdm=False)
    capfd.readouterr()
    trainer.evaluate()
    bars = capfd.readouterr().err
    assert "2/2" in bars and "1/1" in bars  # sst: 12 rows = 2 batches; quora, sts: 8 rows = 1 batch each
    assert not re.search(r"(^|\s)\d+it \[", bars, re.MULTILINE)  # no bar without a total ("3it [00:01, ...]")


def test_an_undefined_task_metric_is_a_warning_not_a_silent_nan(tiny_model, tokenized, tokenizer, tmp_path, caplog):
    """Constant STS predictions have no Pearson r: the NaN reaches eval_overall, and the log says why."""
    with torch.no_grad():
        for p in tiny_model.heads["sts"].parameters():
            p.zero_()
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path)
    with caplog.at_level("WARNING", logger="hf_multitask"):
        metrics = trainer.evaluate()
    assert metrics["eval_sts_pearson"] != metrics["eval_sts_pearson"] and metrics["eval_overall"] != metrics[
        "eval_overall"]
    assert "eval task 'sts': ['pearson'] undefined (NaN; constant predictions or labels?), so eval_overall is NaN" \
        in caplog.text
