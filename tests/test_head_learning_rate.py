import pytest
import torch

from hf_multitask import MultitaskTrainer, MultitaskTrainingArguments, PalConfig

from .conftest import make_trainer, snapshot

# What these tests always ran with, beside make_trainer's defaults (logging_steps=500: the Trainer's own)
TRAINER_ARGS = dict(eval=None, max_steps=3, learning_rate=1e-2, weight_decay=0.1, logging_steps=500)


def group_of(optimizer) -> dict[int, dict]:
    """`{id(param): its param group}`; fails if a parameter sits in two groups."""
    out = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            assert id(param) not in out, "a parameter is in two param groups"
            out[id(param)] = group
    return out


def test_head_parameters_get_their_own_groups(tiny_model, tokenized, tokenizer, tmp_path):
    tiny_model.add_pal(PalConfig(rank=8))
    tiny_model.encoder.embeddings.requires_grad_(False)
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS, head_learning_rate=3e-2)
    groups = group_of(trainer.create_optimizer())
    decay = set(trainer.get_decay_parameter_names(tiny_model))
    for name, param in tiny_model.named_parameters():
        if not param.requires_grad:
            assert id(param) not in groups, name
            continue
        group = groups[id(param)]
        assert group["lr"] == (3e-2 if name.startswith("heads.") else 1e-2), name
        assert group["weight_decay"] == (0.1 if name in decay else 0.0), name
    assert len(groups) == sum(p.requires_grad for p in tiny_model.parameters())
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-2  # the rate the Trainer logs is the encoder's


def test_without_head_learning_rate_the_parent_optimizer_is_used(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS)
    optimizer = trainer.create_optimizer()
    assert len(optimizer.param_groups) == 2 and {g["lr"] for g in optimizer.param_groups} == {1e-2}
    assert len(group_of(optimizer)) == sum(1 for _ in tiny_model.parameters())


def test_the_schedule_scales_both_rates_alike(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS, head_learning_rate=4e-2,
                           warmup_steps=2)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    for _ in range(5):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        rates = {g["lr"] for g in trainer.optimizer.param_groups}
        assert len(rates) == 2 and max(rates) == pytest.approx(4 * min(rates))


def test_head_learning_rate_zero_keeps_the_heads_fixed(tiny_model, tokenized, tokenizer, tmp_path):
    before = snapshot(tiny_model)
    make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS, head_learning_rate=0.0).train()
    for name, param in tiny_model.named_parameters():
        if name.startswith("heads."):
            assert torch.equal(param, before[name]), name
    assert not torch.equal(tiny_model.encoder.encoder.layer[0].attention.self.query.weight,
                           before["encoder.encoder.layer.0.attention.self.query.weight"])


def test_head_learning_rate_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="head_learning_rate must be >= 0"):
        MultitaskTrainingArguments(output_dir=str(tmp_path), head_learning_rate=-1e-3)


def test_an_optimizer_passed_to_the_trainer_keeps_its_rates_and_is_warned_about(tiny_model, tokenized, tokenizer,
                                                                               tmp_path, caplog):
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.5)
    args = MultitaskTrainingArguments(str(tmp_path), head_learning_rate=1e-2, max_steps=1, report_to=[],
                                      use_cpu=True, save_strategy="no", per_device_train_batch_size=4,
                                      lr_scheduler_type="constant")
    trainer = MultitaskTrainer(model=tiny_model, args=args, train_dataset=tokenized["train"],
                               processing_class=tokenizer, optimizers=(optimizer, None))
    with caplog.at_level("WARNING"):
        trainer.train()
    assert [group["lr"] for group in optimizer.param_groups] == [0.5]
    assert "head_learning_rate=0.01 does not apply to an optimizer passed to the trainer" in caplog.text
