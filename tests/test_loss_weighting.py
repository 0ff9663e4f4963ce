"""Loss weighting (uncertainty, DWA) and the summed-loss grouped step: math by hand, ownership, decay, state."""

import math

import pytest
import torch
from safetensors.torch import load_file

from hf_multitask import MultitaskTrainingArguments
from hf_multitask.gradients import GradientSurgery
from hf_multitask.loss_weighting import (
    DynamicWeightAverage,
    LossWeighting,
    dwa_weights,
    get_loss_weighting,
    register_loss_weighting,
    uncertainty_loss,
)

from .conftest import make_model, make_trainer, snapshot

TASKS = ["sst", "quora", "sts"]
# sst 12, quora 8, sts 8 rows at batch 4: 3 + 2 + 2 batches, so a grouped epoch is ceil(7 / 3) = 3 steps
ARGS = dict(eval=None, per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1, task_sampling="uniform")


def test_uncertainty_loss_matches_a_hand_computation():
    losses, log_vars = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, math.log(2.0), -1.0])
    expected = (1.0 + 0.0) + (2.0 / 2.0 + math.log(2.0)) + (0.5 * math.e - 1.0)
    assert uncertainty_loss(losses, log_vars).item() == pytest.approx(expected, rel=1e-6)


def test_uncertainty_loss_is_minimal_where_the_weight_is_one_over_the_loss():
    log_vars = torch.zeros(2, requires_grad=True)
    uncertainty_loss(torch.tensor([4.0, 0.25]), log_vars).backward()
    torch.testing.assert_close(log_vars.grad, torch.tensor([1 - 4.0, 1 - 0.25]))  # d/ds = 1 - exp(-s) L
    grad = torch.func.grad(lambda s: uncertainty_loss(torch.tensor([4.0, 0.25]), s))(torch.log(torch.tensor([4.0,
                                                                                                              0.25])))
    torch.testing.assert_close(grad, torch.zeros(2))


def test_dwa_weights_match_a_hand_computation():
    previous, before = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 1.5])
    ratios = [0.5, 1.0, 2.0]
    exps = [math.exp(r / 2.0) for r in ratios]
    expected = [3 * e / sum(exps) for e in exps]
    torch.testing.assert_close(dwa_weights(previous, before, 2.0), torch.tensor(expected))
    assert dwa_weights(previous, before).sum().item() == pytest.approx(3.0)
    torch.testing.assert_close(dwa_weights(before, before, 2.0), torch.ones(3))  # equal progress: equal weights


def test_dwa_windows_average_the_observed_losses():
    dwa = DynamicWeightAverage(["a", "b"], temperature=2.0, period=2)
    observed = [torch.tensor([4.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])]
    for step, losses in enumerate(observed):
        dwa.advance(step, epoch_steps=100)
        torch.testing.assert_close(dwa.weights(torch.device("cpu")), torch.ones(2))  # fewer than two windows
        dwa.observe(losses)
    dwa.advance(4, epoch_steps=100)
    expected = dwa_weights(torch.tensor([1.0, 1.0]), torch.tensor([3.0, 1.0]), 2.0)
    torch.testing.assert_close(dwa.weights(torch.device("cpu")), expected)
    assert dwa.weights(torch.device("cpu"))[0] < 1 < dwa.weights(torch.device("cpu"))[1]  # a fell faster


def test_unknown_and_duplicate_weightings_are_errors(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'uncertainty'"):
        get_loss_weighting("uncertanty")
    with pytest.raises(ValueError, match="did you mean 'uncertainty'"):
        MultitaskTrainingArguments(str(tmp_path), loss_weighting="uncertanty", report_to=[])

    class Other(LossWeighting):
        name = "dwa"

    with pytest.raises(ValueError, match="registered already"):
        register_loss_weighting(Other)


def test_loss_weighting_kwargs_reach_the_constructor_and_fields_keep_theirs(tmp_path):
    from transformers import HfArgumentParser

    from hf_multitask.loss_weighting import LOSS_WEIGHTINGS

    @register_loss_weighting
    class Floored(LossWeighting):
        name = "floored"

        def __init__(self, task_names, floor: float = 0.0):
            super().__init__(task_names)
            self.floor = floor

    try:
        (args,) = HfArgumentParser(MultitaskTrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--loss_weighting", "floored", "--loss_weighting_kwargs",
             '{"floor": 0.25}', "--report_to", "none"])
        assert Floored.from_args(["sst", "sts"], args).floor == 0.25
        dwa = MultitaskTrainingArguments(str(tmp_path), loss_weighting="dwa", dwa_temperature=3.0, report_to=[])
        built = DynamicWeightAverage.from_args(["sst", "sts"], dwa)
        assert (built.temperature, built.period) == (3.0, 0)
        with pytest.raises(ValueError, match=r"loss_weighting_kwargs: \['temperature'\] not among the options of "
                                             r"the 'dwa' loss weighting's __init__ \(it takes none\)"):
            MultitaskTrainingArguments(str(tmp_path), loss_weighting="dwa", loss_weighting_kwargs={"temperature": 3})
        with pytest.raises(ValueError, match="needs a loss_weighting other than 'none'"):
            MultitaskTrainingArguments(str(tmp_path), loss_weighting_kwargs={"floor": 0.25})
    finally:
        LOSS_WEIGHTINGS.pop("floored", None)


def test_loss_weighting_implies_grouped_batches_and_refuses_surgery(tmp_path):
    args = MultitaskTrainingArguments(str(tmp_path), loss_weighting="dwa", report_to=[])
    assert args.task_sampling_grouped
    with pytest.raises(ValueError, match="cannot be combined with gradient_surgery='pcgrad'"):
        MultitaskTrainingArguments(str(tmp_path), loss_weighting="uncertainty", gradient_surgery="pcgrad")
    with pytest.raises(ValueError, match="dwa_temperature must be > 0"):
        MultitaskTrainingArguments(str(tmp_path), loss_weighting="dwa", dwa_temperature=0.0)


def test_uncertainty_weights_are_owned_trained_undecayed_and_saved(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path, **ARGS, max_steps=4, loss_weighting="uncertainty",
                           weight_decay=0.1, save_strategy="steps", save_steps=4)
    assert trainer.surgery is None and list(model.loss_weights) == TASKS
    owners = model.task_parameter_owners()
    assert {owners[id(m.log_var)] for m in model.loss_weights.values()} == {(t, "loss_weights") for t in TASKS}
    assert not any(n.startswith("loss_weights.") for n, _ in model.named_shared_parameters())
    assert not any(n.startswith("loss_weights.") for n in trainer.get_decay_parameter_names(model))
    trainer.train()
    groups = trainer.optimizer.param_groups
    for module in model.loss_weights.values():
        group = next(g for g in groups if any(p is module.log_var for p in g["params"]))
        assert group["weight_decay"] == 0.0
        assert module.log_var.item() != 0.0  # got gradients and moved
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    for task in TASKS:
        assert logged[f"task_weight_{task}"] == pytest.approx(math.exp(-model.loss_weights[task].log_var.item()),
                                                              rel=0.05)
    saved = load_file(tmp_path / "checkpoint-4" / "model.safetensors")
    assert saved["loss_weights.sts.log_var"].item() == model.loss_weights["sts"].log_var.item()


def test_dwa_weights_after_two_epochs(bert_config, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **ARGS, max_steps=7,
                           loss_weighting="dwa")
    weighting = trainer.loss_weighting
    observed, applied = [], []
    observe, combine = weighting.observe, weighting.combine
    weighting.observe = lambda losses: (observed.append(losses.clone()), observe(losses))
    weighting.combine = lambda losses: (lambda out: (applied.append(out[1].clone()), out)[1])(combine(losses))
    trainer.train()
    assert len(observed) == len(applied) == 7  # 3 steps an epoch: epochs 0, 1 and the first step of epoch 2
    for weights in applied[:6]:
        torch.testing.assert_close(weights, torch.ones(3))
    first, second = torch.stack(observed[:3]).mean(0), torch.stack(observed[3:6]).mean(0)
    torch.testing.assert_close(applied[6], dwa_weights(second, first, 2.0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(applied[6], torch.ones(3))


def test_dwa_observes_the_task_losses(bert_config, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **ARGS, max_steps=1,
                           loss_weighting="dwa")
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][0]
    sums = trainer.loss_weighting.sums
    for i, task in enumerate(TASKS):
        assert sums[i].item() == pytest.approx(logged[f"loss_{task}"], rel=1e-3)  # logs keep 4 digits


@pytest.mark.parametrize("accumulation", [1, 2])
def test_summed_step_equals_the_per_task_buffer_step(accumulation, bert_config, tokenized, tokenizer, tmp_path):
    """Grouped `none` as one backward of the sum vs the [T, P] buffer path: the same update to fp32 rounding."""
    results = []
    for buffered in (False, True):
        model = make_model(bert_config)
        trainer = make_trainer(model, tokenized, tokenizer, tmp_path / str(buffered), eval=None,
                               per_device_train_batch_size=2, learning_rate=1e-2, max_steps=4, logging_steps=2,
                               task_sampling_grouped=True, gradient_accumulation_steps=accumulation)
        assert trainer.surgery is None
        if buffered:
            shared = model.named_shared_parameters()
            trainer.surgery = GradientSurgery("none", [p for _, p in shared], num_tasks=3, seed=0,
                                              segment_ids=[model.parameter_group(n) for n, _ in shared])
        trainer.train()
        results.append((snapshot(model), trainer.state.log_history))
    (summed, summed_log), (buffer, buffer_log) = results
    for name in summed:
        if name.endswith("attention.self.key.bias"):
            # softmax ignores the key bias (q·(k + b) shifts every score of a query alike): its gradient is 0 but for
            # rounding, and AdamW scales that noise up to ±lr steps, in whichever direction each path's rounding
            # falls (it differs between CPUs: the Intel Xeon box of 2026-12-02 fails here, the AMD EPYC one passed)
            continue
        torch.testing.assert_close(summed[name], buffer[name], atol=1e-6, rtol=1e-5, msg=name)
    assert [e["loss"] for e in summed_log if "loss" in e] == pytest.approx(
        [e["loss"] for e in buffer_log if "loss" in e], rel=1e-5)


def test_dwa_resume_continues_the_window_state(bert_config, tokenized, tokenizer, tmp_path):
    full = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **ARGS, max_steps=4,
                        loss_weighting="dwa", dwa_period=1, save_strategy="steps", save_steps=2)
    full.train()
    resumed = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **ARGS, max_steps=4,
                           loss_weighting="dwa", dwa_period=1)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    torch.testing.assert_close(resumed.loss_weighting.history, full.loss_weighting.history)
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b, a, msg=name)


def test_a_saved_model_loads_without_its_loss_weights(bert_config, tokenized, tokenizer, tmp_path):
    from hf_multitask import MultitaskModel

    model = make_model(bert_config)
    make_trainer(model, tokenized, tokenizer, tmp_path, **ARGS, max_steps=1, loss_weighting="uncertainty").train()
    model.save_pretrained(tmp_path / "saved")
    assert "loss_weights.sst.log_var" in load_file(tmp_path / "saved" / "model.safetensors")
    loaded = MultitaskModel.from_pretrained(tmp_path / "saved")
    assert loaded.loss_weights is None
    batch = {k: torch.tensor(v[:2]) for k, v in tokenized["dev"]["sst"][:2].items() if k in ("input_ids",
                                                                                             "attention_mask")}
    model.eval()
    torch.testing.assert_close(loaded(task_name="sst", **batch).logits, model(task_name="sst", **batch).logits)
