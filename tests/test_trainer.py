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


def test_annealed_horizon_counts_the_batches_of_max_steps_with_accumulation(tiny_model, tokenized, tokenizer,
                                                                          tmp_path):
    """The horizon was max_steps x accumulation: with an epoch's batches not a multiple of the accumulation, more
    batches than the run draws, so the last steps stopped short of the final alpha (0.2)."""
    from hf_multitask.sampling import batches_in_steps

    assert batches_in_steps(8, batches_per_epoch=7, accumulation=2) == 14  # 4 steps per epoch, the last of 1 batch
    assert batches_in_steps(5, batches_per_epoch=7, accumulation=2) == 9
    assert batches_in_steps(10, batches_per_epoch=7, accumulation=1) == 10
    settings = dict(gradient_accumulation_steps=3, per_device_train_batch_size=3)
    batches = len(make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **settings).get_train_dataloader())
    assert batches % 3 != 0  # an epoch ends with a step of fewer batches
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **settings,
                           max_steps=2 * -(-batches // 3))
    trainer.train()
    sampler = trainer.train_sampler
    assert sampler.total_batches == 2 * batches == 2 * len(sampler)
    assert sampler.progress(len(sampler) - 1, epoch=1) == 1.0  # the last batch reaches the end of the schedule


def test_loss_weight_scales_the_task_loss(bert_config, tokenized, tokenizer, tmp_path):
    from hf_multitask import MultitaskConfig, MultitaskModel, cs224n_tasks

    tasks = [t.replace(loss_weight=0.0) if t.name == "sst" else t for t in cs224n_tasks()]
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=tasks))
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out")
    batch = trainer.data_collator(trainer.train_dataset.__getitems__([0, 1]))
    assert trainer.compute_loss(model, batch).item() == 0.0


def test_loss_weight_leaves_the_evaluation_and_logged_losses_unweighted(bert_config, tokenized, tokenizer, tmp_path):
    """The weight scales what is trained; `eval_<task>_loss`, `eval_loss` and `loss_<task>` stay the task's loss
    (with a weight of 0 they were 0, and `eval_loss`, what early stopping watches, moved with the weights)."""
    from hf_multitask import MultitaskConfig, MultitaskModel, cs224n_tasks

    results = {}
    for weight in (1.0, 0.0):
        tasks = [t.replace(loss_weight=weight) if t.name == "sst" else t for t in cs224n_tasks()]
        torch.manual_seed(0)
        model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=tasks))
        trainer = make_trainer(model, tokenized, tokenizer, tmp_path / str(weight), max_steps=1, logging_steps=1,
                               task_sampling="round_robin")
        before = trainer.evaluate()
        trainer.train()
        results[weight] = before, next(e for e in trainer.state.log_history if "loss_sst" in e)["loss_sst"]
    (evaluation, logged), (unweighted, logged_unweighted) = results[0.0], results[1.0]
    assert evaluation["eval_sst_loss"] == unweighted["eval_sst_loss"] > 0
    assert evaluation["eval_loss"] == unweighted["eval_loss"]
    assert logged == logged_unweighted > 0


def test_data_seed_zero_is_a_seed(tiny_model, tokenized, tokenizer, tmp_path):
    orders = {}
    for data_seed in (None, 0, 1):
        trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path, seed=1, data_seed=data_seed)
        trainer.get_train_dataloader()
        orders[data_seed] = list(trainer.train_sampler)
    assert orders[None] != orders[0] and orders[None] == orders[1]


def test_the_train_dataloader_takes_the_trainers_dataloader_settings(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path, dataloader_num_workers=1,
                           dataloader_persistent_workers=True, dataloader_prefetch_factor=3)
    loader = trainer.get_train_dataloader()
    base = getattr(loader, "base_dataloader", loader)
    assert base.persistent_workers and base.prefetch_factor == 3 and base.worker_init_fn is not None
    trainer.train()  # the worker fetches and collates


@pytest.mark.parametrize("accumulation, expected", [(1, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]), (2, [0, 2, 4, 0, 2, 4]),
                                                    (4, [0, 4, 0, 4])])
def test_batch_in_epoch_restarts_with_each_epoch(accumulation, expected, tiny_model, tokenized, tokenizer, tmp_path):
    """An epoch's last optimizer step takes the batches left over from the accumulation (as the Trainer counts)."""
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path, gradient_accumulation_steps=accumulation)
    trainer.train_sampler = type("Sampler", (), {"__len__": lambda self: 5})()
    seen = []
    for step in range(len(expected)):
        trainer.state.global_step = step
        seen.append(trainer._batch_in_epoch())
    assert seen == expected


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


def test_tokens_seen_are_counted_in_grouped_batches(tiny_model, tokenized, tokenizer, tmp_path):
    counts = {}
    for grouped in (False, True):
        trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / str(grouped), max_steps=2,
                               task_sampling_grouped=grouped, include_num_input_tokens_seen="all")
        trainer.train()
        counts[grouped] = trainer.state.num_input_tokens_seen
    assert counts[False] > 0 and counts[True] > counts[False]  # (grouped batches counted 0: {task: batch})
