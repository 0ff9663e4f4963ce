import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_multitask import (
    EmaTeacher,
    MultitaskConfig,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    SmartRegularizer,
    cs224n_tasks,
    get_task,
)
from hf_multitask.checkpointing import load_training_state, save_training_state
from hf_multitask.regularizers.smart import ascent_step, ema_update_, embedding_forward, init_noise, smart_divergence

from .conftest import make_model, make_trainer, snapshot

ROOT = Path(__file__).resolve().parents[1]


# What these tests always ran with, beside make_trainer's defaults
TRAINER_ARGS = dict(eval=None, max_steps=3, task_sampling="round_robin", smart_tasks=["sst", "sts"])


def batch_of(trainer, task, size=4):
    dataset = trainer.train_dataset
    start = dataset.task_names.index(task)
    offset = sum(dataset.task_sizes[name] for name in dataset.task_names[:start])
    return trainer.data_collator(dataset.__getitems__(list(range(offset, offset + size))))


# ---- pure functions ----


def test_smart_divergence_is_the_squared_error_for_regression():
    a, b = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]])
    assert smart_divergence("regression", a, b).item() == pytest.approx((1 + 4) / 2)
    assert smart_divergence("regression", a, b, "sum").item() == pytest.approx(5.0)


def test_init_noise_is_float32_with_the_requested_standard_deviation():
    torch.manual_seed(0)
    noise = init_noise(torch.zeros(64, 32, 16, dtype=torch.bfloat16), noise_std=1e-2)
    assert noise.dtype == torch.float32
    assert noise.std().item() == pytest.approx(1e-2, rel=0.02)


def test_ascent_step_moves_each_token_by_the_step_size_in_the_infinity_norm():
    grad = torch.randn(2, 5, 8)
    moved = ascent_step(torch.zeros(2, 5, 8), grad, step_size=1e-3, epsilon=0.0)
    torch.testing.assert_close(moved.abs().amax(-1), torch.full((2, 5), 1e-3))
    assert torch.equal(moved.sign(), grad.sign())


def test_ascent_step_respects_the_radius():
    noise = init_noise(torch.zeros(2, 5, 8), noise_std=1.0, radius=0.5)
    assert noise.abs().max() <= 0.5
    moved = ascent_step(noise, torch.randn(2, 5, 8), step_size=1.0, epsilon=1e-6, radius=0.5)
    assert moved.abs().max() <= 0.5
    assert moved.abs().max() == 0.5  # the projection was active


def test_ascent_step_ignores_non_finite_gradients():
    grad = torch.tensor([[[float("nan"), float("inf"), 1.0]]])
    moved = ascent_step(torch.zeros(1, 1, 3), grad, step_size=1e-3, epsilon=0.0)
    torch.testing.assert_close(moved, torch.tensor([[[0.0, 0.0, 1e-3]]]))


def test_ema_update_follows_the_momentum_formula():
    teacher, first, second = torch.randn(4), torch.randn(4), torch.randn(4)
    shadow = [teacher.clone()]
    ema_update_(shadow, [first], momentum=0.9)
    ema_update_(shadow, [second], momentum=0.9)
    expected = 0.9 * (0.9 * teacher + 0.1 * first) + 0.1 * second
    torch.testing.assert_close(shadow[0], expected)


# ---- on a tiny model ----


def test_adversarial_loss_is_zero_without_noise_or_steps(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS)
    smart = SmartRegularizer(["sst"], noise_std=0.0, steps=0)
    for task in ("sst", "sts"):
        batch = batch_of(trainer, task)
        clean = model(**batch).logits
        assert smart.adversarial_loss(model, batch, clean, model.specs[task].kind).item() == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("task", ["sst", "sts"])
def test_adversarial_loss_is_positive_with_the_defaults(bert_config, tokenized, tokenizer, tmp_path, task):
    model = make_model(bert_config)
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS), task)
    clean = model(**batch).logits
    assert SmartRegularizer([task]).adversarial_loss(model, batch, clean, model.specs[task].kind).item() > 0


def test_adversarial_ascent_beats_random_noise(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS), "sst")
    clean = model(**batch).logits
    embeds, forward = embedding_forward(model, batch)
    start = [init_noise(x, 1e-5) for x in embeds]
    losses = []
    for steps in (0, 1):
        noises = SmartRegularizer(["sst"], steps=steps).adversarial_noise(forward, embeds, clean, "classification",
                                                                           [n.clone() for n in start])
        losses.append(smart_divergence("classification", forward(noises, True), clean).item())
    assert losses[1] > losses[0]


def test_perturbation_step_stays_float32_under_bf16_autocast(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS), "sst")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clean = model(**batch).logits
        embeds, forward = embedding_forward(model, batch)
        start = [init_noise(x, 1e-5) for x in embeds]
        noises = SmartRegularizer(["sst"], epsilon=1e-12).adversarial_noise(forward, embeds, clean, "classification",
                                                                             [n.clone() for n in start])
    assert noises[0].dtype == torch.float32
    step = (noises[0] - start[0]).abs().amax(-1)  # (batch, seq): exactly η where the gradient is not zero
    moved = step[step > 0]
    assert moved.numel() > 0
    torch.testing.assert_close(moved, torch.full_like(moved, 1e-3), rtol=1e-5, atol=0)


def test_radius_bounds_the_adversarial_noise_on_a_model(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS), "sst")
    clean = model(**batch).logits
    embeds, forward = embedding_forward(model, batch)
    smart = SmartRegularizer(["sst"], noise_std=1.0, step_size=0.1, steps=2, radius=1e-3)
    noises = smart.adversarial_noise(forward, embeds, clean, "classification")
    assert noises[0].abs().max() <= torch.tensor(1e-3)  # the float32 radius


def test_bi_encoded_pairs_perturb_both_sentences(bert_config):
    model = make_model(bert_config, cs224n_tasks(pair_encoding="bi"))
    vocab = bert_config.vocab_size
    batch = {"task_name": "sts", "input_ids": torch.randint(vocab, (3, 6)), "attention_mask": torch.ones(3, 6),
             "input_ids_b": torch.randint(vocab, (3, 4)), "attention_mask_b": torch.ones(3, 4),
             "labels": torch.tensor([1.0, 2.0, 3.0])}
    clean = model(**batch).logits
    embeds, forward = embedding_forward(model, batch)
    assert [x.shape[1] for x in embeds] == [6, 4]
    noises = SmartRegularizer(["sts"]).adversarial_noise(forward, embeds, clean, "regression")
    assert all(n.abs().max() > 0 for n in noises)


def test_teacher_starts_equal_to_the_model_and_leaves_it_untouched(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS), "sst")
    teacher = EmaTeacher(momentum=0.9)
    teacher.initialize(model)
    before = snapshot(model)
    torch.testing.assert_close(teacher.logits(model, batch), model(**batch).logits)
    teacher.shadow["heads.sst.out_proj.bias"] += 1.0
    torch.testing.assert_close(teacher.logits(model, batch), model(**batch).logits + 1.0)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_teacher_runs_without_dropout_and_restores_training_mode(bert_config, tokenized, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(), classifier_dropout=0.5)).train()
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS), "sst")
    teacher = EmaTeacher()
    teacher.initialize(model)
    first, second = teacher.logits(model, batch), teacher.logits(model, batch)
    assert model.training
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, model.eval()(**batch).logits)


def test_ascent_reaches_the_noise_with_a_frozen_encoder(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    model.freeze_encoder()
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS), "sst")
    embeds, forward = embedding_forward(model, batch)
    assert not embeds[0].requires_grad  # the embedding table gets no gradient
    start = [init_noise(x, 1e-5) for x in embeds]
    noises = SmartRegularizer(["sst"], epsilon=1e-12).adversarial_noise(forward, embeds, model(**batch).logits,
                                                                         "classification", [n.clone() for n in start])
    step = (noises[0] - start[0]).abs().amax(-1)
    torch.testing.assert_close(step[step > 0], torch.full_like(step[step > 0], 1e-3), rtol=1e-5, atol=0)
    assert (step > 0).float().mean() > 0.5


def test_teacher_copies_only_trainable_parameters(bert_config):
    model = make_model(bert_config)
    model.freeze_encoder()
    teacher = EmaTeacher()
    teacher.initialize(model)
    assert set(teacher.shadow) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("heads.") for n in teacher.shadow)
    assert all(t.dtype == torch.float32 for t in teacher.shadow.values())


def test_bregman_term_is_zero_at_the_start(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS), "sst")
    smart = SmartRegularizer(["sst"])
    assert smart.bregman_loss(model, batch, model(**batch).logits, "classification").item() == pytest.approx(0.0)


def test_training_state_round_trips_tensors_and_scalars(tmp_path):
    states = {"smart": {"heads.w": torch.randn(3, 2), "num_updates": 7},
              "surgery": {"generator": torch.Generator().get_state(), "method": "pcgrad"}}
    save_training_state(str(tmp_path), states)
    loaded = load_training_state(str(tmp_path))
    assert loaded["smart"]["num_updates"] == 7 and loaded["surgery"]["method"] == "pcgrad"
    assert torch.equal(loaded["smart"]["heads.w"], states["smart"]["heads.w"])
    assert torch.equal(loaded["surgery"]["generator"], states["surgery"]["generator"])


def test_training_state_rejects_values_that_are_not_tensors_or_json(tmp_path):
    with pytest.raises(ValueError, match=r"smart.teacher: object is neither a tensor nor a JSON value"):
        save_training_state(str(tmp_path), {"smart": {"teacher": object()}})


# ---- arguments and Trainer ----


@pytest.mark.parametrize("field, value", [("smart_steps", -1), ("smart_momentum", 1.0), ("smart_radius", 0.0),
                                          ("smart_noise_std", -1e-5), ("smart_noise_var", -1e-5),
                                          ("smart_lambda", -1.0), ("smart_tasks", [])])
def test_invalid_smart_arguments_are_rejected(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        MultitaskTrainingArguments(str(tmp_path), report_to=[], **{field: value})


def test_the_default_noise_is_the_papers_standard_deviation(tmp_path):
    args = MultitaskTrainingArguments(str(tmp_path), report_to=[], smart_tasks=["sst"])
    assert args.smart_noise_std == 1e-5
    smart = SmartRegularizer(**{**SmartRegularizer.options_from_args(args), "steps": 0})  # ν = ν_0
    torch.manual_seed(0)
    noise = smart.adversarial_noise(None, [torch.zeros(64, 32, 16)], torch.zeros(64, 2), "classification")[0]
    assert noise.std().item() == pytest.approx(1e-5, rel=0.02)


def test_deprecated_noise_var_converts_to_its_square_root_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match=r"smart_noise_var is deprecated.*sqrt\(smart_noise_var\) = 0.003162"):
        args = MultitaskTrainingArguments(str(tmp_path), report_to=[], smart_tasks=["sst"], smart_noise_var=1e-5)
    assert args.smart_noise_std == pytest.approx(1e-5**0.5) and args.smart_noise_var is None
    with pytest.raises(ValueError, match="smart_noise_var .* and smart_noise_std are both set"):
        MultitaskTrainingArguments(str(tmp_path), report_to=[], smart_noise_var=1e-5, smart_noise_std=1e-3)


def test_unknown_smart_tasks_are_rejected(bert_config, tokenized, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"smart_tasks has task\(s\) \['nli'\] with no head"):
        make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "out",
                     **(TRAINER_ARGS | dict(smart_tasks=["sst", "nli"])))


def test_smart_terms_are_logged_per_task(bert_config, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS)
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert {"smart_adv_sst", "smart_breg_sst", "smart_adv_sts", "smart_breg_sts", "loss_quora"} <= set(logged)
    assert "smart_adv_quora" not in logged
    assert logged["smart_adv_sst"] > 0


def test_teacher_follows_the_momentum_formula_after_a_step(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    before = snapshot(model)
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", **(TRAINER_ARGS | dict(max_steps=1)),
                           smart_momentum=0.9)
    trainer.train()
    teacher = trainer.regularizers["smart"].teacher
    assert teacher.num_updates == 1
    for name, param in model.named_parameters():
        torch.testing.assert_close(teacher.shadow[name], 0.9 * before[name] + 0.1 * param.detach())
    assert not torch.equal(teacher.shadow["heads.sst.out_proj.weight"], model.heads.sst.out_proj.weight)


OPTIONS = {
    "adversarial_only": dict(smart_mu=0.0),
    "bregman_only": dict(smart_lambda=0.0),
    "two_steps_with_radius": dict(smart_steps=2, smart_radius=1e-3),
    "bf16_autocast": dict(bf16=True),
    "gradient_accumulation": dict(gradient_accumulation_steps=2),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_smart_option_trains_a_tiny_model(bert_config, tokenized, tokenizer, tmp_path, option):
    model = make_model(bert_config)
    before = snapshot(model)
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS, **OPTIONS[option])
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))
    assert not torch.equal(before["encoder.encoder.layer.0.attention.self.query.weight"],
                           model.encoder.encoder.layer[0].attention.self.query.weight)
    assert (trainer.regularizers["smart"].teacher is None) == (option == "adversarial_only")


@pytest.mark.parametrize("loss", ["ordinal", "cross_entropy+ordinal"])
def test_ordinal_losses_train_a_tiny_model(bert_config, tokenized, tokenizer, tmp_path, loss):
    tasks = [get_task("sst", loss=loss, ordinal_alpha=1.5), *cs224n_tasks()[1:]]
    model = make_model(bert_config, tasks)
    before = snapshot(model)
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS)
    trainer.train()
    assert "loss_sst" in trainer.state.log_history[0]
    assert not torch.equal(before["heads.sst.out_proj.weight"], model.heads.sst.out_proj.weight)


def test_smart_with_a_frozen_encoder_trains_the_heads_only(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    model.freeze_encoder()
    before = snapshot(model)
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS)
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert logged["smart_adv_sst"] > 0  # ν got a gradient although the embedding table has none
    for name, param in model.named_parameters():
        assert torch.equal(before[name], param) == name.startswith("encoder."), name


def test_bi_encoded_tasks_train_with_smart(bert_config, data_dir, tokenizer, tmp_path):
    from hf_multitask import load_task_data, tokenize_task

    tasks = cs224n_tasks(pair_encoding="bi")
    train = {t.name: tokenize_task(load_task_data(t, data_dir, splits=("train",))["train"], t, tokenizer)
             for t in tasks}
    model = make_model(bert_config, tasks)
    trainer = make_trainer(model, None, tokenizer, tmp_path / "out", train=train,
                           **(TRAINER_ARGS | dict(smart_tasks=["quora", "sts"])))
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert logged["smart_adv_quora"] > 0 and logged["smart_adv_sts"] > 0


def test_teacher_is_not_saved_with_the_model(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    expected = set(model.state_dict())
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    assert set(load_file(tmp_path / "saved" / "model.safetensors")) == expected
    assert not any("teacher" in name or "shadow" in name for name in model.state_dict())


def test_resumed_run_continues_the_teacher(bert_config, tokenized, tokenizer, tmp_path):
    options = dict(max_steps=4, save_strategy="steps", save_steps=2, logging_steps=2)
    full = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "out", **(TRAINER_ARGS | options))
    full.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert json.loads((checkpoint / "multitask_state.json").read_text())["scalars"]["smart"]["num_updates"] == 2
    assert "smart/heads.sst.out_proj.weight" in load_file(checkpoint / "multitask_state.safetensors")

    resumed = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "again" / "out",
                           **(TRAINER_ARGS | options))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.regularizers["smart"].teacher.num_updates == 4
    for name, tensor in full.regularizers["smart"].teacher.shadow.items():
        torch.testing.assert_close(resumed.regularizers["smart"].teacher.shadow[name], tensor, rtol=1e-5, atol=1e-6)


# ---- several processes ----


def _distributed_main(data_dir: str, tokenizer_dir: str, out_dir: str) -> None:
    """Run under torchrun: 3 SMART steps, then each rank writes its teacher to out_dir/teacher<rank>.safetensors."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertTokenizerFast

    from hf_multitask import load_task_data, tokenize_task

    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    train = {t.name: tokenize_task(load_task_data(t, data_dir, splits=("train",))["train"], t, tokenizer)
             for t in cs224n_tasks()}
    torch.manual_seed(int(os.environ.get("RANK", 0)))  # different initial heads per rank: DDP syncs them
    model = MultitaskModel(MultitaskConfig(encoder=config, tasks=cs224n_tasks(), classifier_dropout=0.0))
    args = MultitaskTrainingArguments(output_dir=out_dir, per_device_train_batch_size=2, max_steps=3,
                                      learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                                      ddp_find_unused_parameters=True, logging_steps=3, task_sampling="round_robin",
                                      smart_tasks=["sst", "sts"])
    trainer = MultitaskTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    teacher = trainer.regularizers["smart"].teacher
    save_file(dict(teacher.shadow), f"{out_dir}/teacher{trainer.args.process_index}.safetensors")


@pytest.mark.slow
def test_two_processes_hold_the_same_teacher(data_dir, tokenizer_dir, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               "-m", "tests.test_smart", str(data_dir), str(tokenizer_dir), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    teachers = [load_file(tmp_path / f"teacher{rank}.safetensors") for rank in range(2)]
    assert set(teachers[0]) == set(teachers[1]) and teachers[0]
    for name in teachers[0]:
        assert torch.equal(teachers[0][name], teachers[1][name]), name


if __name__ == "__main__":
    _distributed_main(*sys.argv[1:])


def test_smart_trains_a_model_with_pals(bert_config, tokenized, tokenizer, tmp_path):
    from hf_multitask import PalConfig

    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    model.add_pal(PalConfig(rank=8))
    args = MultitaskTrainingArguments(str(tmp_path), per_device_train_batch_size=4, max_steps=3, report_to=[],
                                      save_strategy="no", use_cpu=True, logging_steps=1, smart_tasks=["sst", "sts"])
    trainer = MultitaskTrainer(model=model, args=args, train_dataset=tokenized["train"], processing_class=tokenizer)
    before = {n: p.clone() for n, p in model.named_parameters() if "pal" in n}
    trainer.train()
    teacher = trainer.regularizers["smart"].teacher
    assert any(n.startswith("pal") or ".pal" in n for n in teacher.shadow)  # the teacher has PALs too
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if "pal" in n)
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert logged & {"smart_adv_sst", "smart_adv_sts"}
