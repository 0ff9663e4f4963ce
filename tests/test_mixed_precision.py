"""Mixed precision below the Trainer: the grouped step under fp16 autocast with a `GradScaler("cpu")`, and under bf16.

On a CPU, accelerate 1.15 turns `fp16=True` off without a word (no scaler), so a Trainer-level fp16 run would test
fp32. These tests put a real `torch.amp.GradScaler("cpu")` where accelerate keeps its GPU scaler
(`trainer.accelerator.scaler`, which `accelerator.backward` uses), run the Trainer's `training_step` under
`torch.autocast("cpu", ...)`, then do the optimizer step as accelerate's `AcceleratedOptimizer` does
(`unscale_`, `step`, `update`). Every test asserts the dtypes it claims to test.
"""

import contextlib
import copy

import pytest
import torch

from hf_multitask.aggregators import AGGREGATORS, Aggregator, combine, register_aggregator
from hf_multitask.mixed_precision import active_scaler, all_finite, drop_gradients

from .conftest import make_model, make_trainer, snapshot

STEP_ARGS = dict(eval=None, per_device_train_batch_size=2, max_steps=1)


class UnitSum(Aggregator):
    """Degree 0: the sum of the unit task gradients, an update whose size does not depend on the gradients' scale."""

    name = "unit_sum_for_tests"
    degree = 0

    def weights(self, grams, generator):
        return grams.diagonal(dim1=1, dim2=2).clamp_min(1e-30).rsqrt(), 0


@pytest.fixture
def unit_sum():
    register_aggregator(UnitSum)
    yield UnitSum.name
    del AGGREGATORS[UnitSum.name]


def grouped_trainer(bert_config, tokenized, tokenizer, tmp_path, method, **overrides):
    """A CPU trainer with grouped batches and `method`'s surgery, its first grouped batch and a plain AdamW."""
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **STEP_ARGS,
                           gradient_surgery=method, **overrides)
    inputs = next(iter(trainer.get_train_dataloader()))
    assert set(inputs) == {"sst", "quora", "sts"}
    return trainer, inputs, torch.optim.AdamW(trainer.model.parameters(), lr=1e-2)


def scaled_step(trainer, inputs, optimizer, scaler, dtype=torch.float16):
    """The Trainer's grouped step under `dtype` autocast with `scaler` as the accelerator's, then accelerate's
    optimizer step; returns the loss and the unscaled gradients the optimizer saw `{name: grad}`.

    The autocast covers the whole step, where accelerate autocasts only the model's forward: a harsher setting, in
    which the surgery must still compute in float32 (`combine_unscaled` turns autocast off).
    """
    trainer.accelerator.scaler = scaler
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's training loop
    assert active_scaler(trainer.accelerator) is scaler and scaler.is_enabled()
    with torch.autocast("cpu", dtype=dtype):
        loss = trainer.training_step(trainer.model, inputs)
    scaler.unscale_(optimizer)  # what the Trainer's gradient clipping does through accelerate
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    scaler.step(optimizer)
    scaler.update()
    trainer.model.zero_grad()  # as the Trainer does after every optimizer step
    return loss, grads


def spy_buffer(surgery) -> list[torch.Tensor]:
    """Copies of the buffer `[T, P]` just before the surgery combines it (the scaled per-task gradients)."""
    seen, capture = [], surgery.capture

    @contextlib.contextmanager
    def spy(task_index):
        with capture(task_index):
            yield
        if task_index == surgery.num_tasks - 1:
            seen.append(surgery.buffer.clone())

    surgery.capture = spy
    return seen


def test_active_scaler_is_none_without_loss_scaling(bert_config, tokenized, tokenizer, tmp_path):
    """bf16 runs have no scaler, and neither has `fp16=True` on a CPU: accelerate 1.15 keeps the flag but neither
    scales nor autocasts (a Trainer-level fp16 test on a CPU trains in fp32). A disabled scaler counts as none."""
    trainer, _, _ = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path / "bf16", "pcgrad", bf16=True)
    assert trainer.accelerator.mixed_precision == "bf16" and active_scaler(trainer.accelerator) is None
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", enabled=False)
    assert active_scaler(trainer.accelerator) is None
    trainer, _, _ = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path / "fp16", "pcgrad", fp16=True)
    accelerator = trainer.accelerator
    assert accelerator.mixed_precision == "fp16" and accelerator.scaler is None and not accelerator.native_amp


@pytest.mark.parametrize("method", ["pcgrad", "gradvac", "unit_sum"])
def test_surgery_on_scaled_gradients_equals_surgery_on_the_unscaled_ones(method, unit_sum, bert_config, tokenized,
                                                                         tokenizer, tmp_path):
    """The shared gradients the optimizer gets equal the aggregator's update of buffer / S, computed apart; a
    degree-0 method (update independent of the gradients' scale) is where combining S g would be off by S."""
    method = unit_sum if method == "unit_sum" else method
    trainer, inputs, optimizer = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path, method)
    surgery, scale = trainer.surgery, 2.0 ** 10
    aggregator, generator = copy.deepcopy(surgery.aggregator), copy.deepcopy(surgery.generator)
    scaled = spy_buffer(surgery)
    with torch.autocast("cpu", dtype=torch.float16):
        assert trainer.model(**inputs["sst"]).logits.dtype == torch.float16
    loss, grads = scaled_step(trainer, inputs, optimizer, torch.amp.GradScaler("cpu", init_scale=scale))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert scaled[0].dtype == torch.float32 and all_finite(scaled) and scaled[0].abs().amax() > 100
    expected, _, _ = combine(aggregator, scaled[0] / scale, generator, surgery.runs)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    got = torch.cat([grads[names[id(p)]].reshape(-1) for p in surgery.params])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    if method == "gradvac":  # the state the unscaled gradients leave
        torch.testing.assert_close(surgery.aggregator.targets, aggregator.targets, rtol=1e-12, atol=0)


def test_the_loss_scale_cancels_out_of_the_update(bert_config, tokenized, tokenizer, tmp_path):
    """The same grouped GradVac step at S = 2**4 and S = 2**10 gives the optimizer the same gradients and leaves the
    same EMA targets, up to fp16's underflow in the backward (which differs between the two scales: compared as one
    vector, not per tensor, where a tiny tensor's few underflowed entries dominate)."""
    runs = []
    for scale in (2.0 ** 4, 2.0 ** 10):
        trainer, inputs, optimizer = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path / str(scale),
                                                     "gradvac")
        _, grads = scaled_step(trainer, inputs, optimizer, torch.amp.GradScaler("cpu", init_scale=scale))
        runs.append((grads, trainer.surgery.aggregator.targets.clone()))
    (low, low_targets), (high, high_targets) = runs
    assert low.keys() == high.keys()
    low, high = torch.cat([g.reshape(-1) for g in low.values()]), torch.cat([g.reshape(-1) for g in high.values()])
    assert (high - low).norm() <= 1e-5 * low.norm()
    torch.testing.assert_close(high_targets, low_targets, rtol=0, atol=1e-6)
    assert high_targets.abs().amax() > 1e-4


@pytest.mark.parametrize("where", ["everywhere", "head_only"])
def test_an_overflow_skips_the_step_and_leaves_the_aggregator_alone(where, bert_config, tokenized, tokenizer,
                                                                    tmp_path):
    """A huge scale (every gradient inf) or an inf in one head's gradient alone: weights, optimizer, GradVac's
    targets and the visiting orders' generator unchanged, the scale halved, and the loss guard counts nothing."""
    trainer, inputs, optimizer = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path, "gradvac")
    surgery, model = trainer.surgery, trainer.model
    scale = 2.0 ** 40 if where == "everywhere" else 2.0 ** 4
    if where == "head_only":
        head = next(p for n, p in model.named_parameters() if n.startswith("heads.sst."))
        head.register_hook(lambda grad: grad * float("inf"))
    before, targets, generator = snapshot(model), surgery.aggregator.targets.clone(), surgery.generator.get_state()
    scaled = spy_buffer(surgery)
    loss, grads = scaled_step(trainer, inputs, optimizer, torch.amp.GradScaler("cpu", init_scale=scale))
    assert torch.isfinite(loss) and all_finite(scaled) == (where == "head_only")
    assert not all_finite(list(grads.values()))
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert optimizer.state == {}  # AdamW never ran
    assert torch.equal(surgery.aggregator.targets, targets) and torch.equal(surgery.generator.get_state(), generator)
    assert trainer.accelerator.scaler.get_scale() == scale / 2
    guard = trainer._nonfinite
    assert guard.skipped == guard.in_a_row == 0 and not guard.skipping


def test_the_step_after_an_overflow_trains(bert_config, tokenized, tokenizer, tmp_path):
    """The scale comes down (here by 16 per overflow) until the gradients fit: the overflowed steps change nothing,
    the first finite one trains the encoder and the heads, and AdamW counts one step."""
    trainer, inputs, optimizer = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path, "pcgrad")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, backoff_factor=2.0 ** -4)
    before, scales, finite = snapshot(trainer.model), [], False
    while not finite and len(scales) < 6:
        scales.append(scaler.get_scale())
        _, grads = scaled_step(trainer, inputs, optimizer, scaler)
        finite = all_finite(list(grads.values()))
        if not finite:
            assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert finite and len(scales) > 1 and scales == [2.0 ** (24 - 4 * i) for i in range(len(scales))]
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert any(n.startswith("encoder.") for n in moved) and any(n.startswith("heads.") for n in moved)
    assert optimizer.state and all(state["step"] == 1 for state in optimizer.state.values())


@pytest.mark.parametrize("step", ["surgery", "summed", "ungrouped"])
def test_a_nan_loss_under_the_scaler_skips_the_step(step, bert_config, tokenized, tokenizer, tmp_path):
    """The loss guard drops the gradients; under the scaler it leaves one NaN gradient, since `scaler.step` refuses
    an optimizer whose `unscale_` saw none ("No inf checks were recorded"), and the step is skipped: in the grouped
    step with surgery, the grouped summed-loss step (`gradient_surgery="none"`) and a one-task batch."""
    method, options = ("none", dict(task_sampling_grouped=True)) if step == "summed" else ("pcgrad", {})
    trainer, inputs, optimizer = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path, method, **options)
    assert (trainer.surgery is None) == (step == "summed")
    compute_loss = trainer.compute_loss

    def nan_for_sts(model, batch, *args, **kwargs):
        loss = compute_loss(model, batch, *args, **kwargs)
        return loss * float("nan") if batch["task_name"] == "sts" else loss

    trainer.compute_loss = nan_for_sts
    inputs = inputs["sts"] if step == "ungrouped" else inputs
    before = snapshot(trainer.model)
    loss, _ = scaled_step(trainer, inputs, optimizer, torch.amp.GradScaler("cpu", init_scale=2.0 ** 4))
    assert not torch.isfinite(loss)
    guard = trainer._nonfinite
    assert guard.skipping and guard.skipped == 1
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters()) and optimizer.state == {}
    assert trainer.accelerator.scaler.get_scale() == 2.0 ** 3  # the scaler counted the skip as an overflow


def test_drop_gradients_without_a_scaler_leaves_no_gradient(bert_config):
    model = make_model(bert_config)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    drop_gradients(model, None)
    assert all(p.grad is None for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    drop_gradients(model, torch.amp.GradScaler("cpu"))
    kept = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(kept) == 1 and torch.isnan(kept[0]).all()


def test_grouped_step_under_bf16_autocast(bert_config, tokenized, tokenizer, tmp_path):
    """No scaler: the surgery combines float32 gradients (bf16 activations, float32 weights) and the step trains."""
    trainer, inputs, optimizer = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path, "gradvac")
    assert active_scaler(trainer.accelerator) is None
    before, scaled = snapshot(trainer.model), spy_buffer(trainer.surgery)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert trainer.model(**inputs["sts"]).logits.dtype == torch.bfloat16
        loss = trainer.training_step(trainer.model, inputs)
    assert loss.dtype == torch.float32 and scaled[0].dtype == torch.float32 and all_finite(scaled)
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads) and all_finite(grads)
    assert trainer.surgery.aggregator.targets.abs().amax() > 0
    optimizer.step()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n.startswith("encoder."))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_smart_noise_stays_float32_under_autocast(dtype, bert_config, tokenized, tokenizer, tmp_path):
    """SMART in the grouped step: its starting noise and the perturbation after the ascent step are float32 while
    the model computes in `dtype` (fp16 with the scaler), and the step's gradients are finite."""
    trainer, inputs, optimizer = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path, "pcgrad",
                                                 smart_tasks=["sst", "sts"])
    smart, seen = trainer.regularizers["smart"], []
    adversarial_noise = smart.adversarial_noise

    def spy(forward, embeds, clean_logits, kind, noises=None):
        found = adversarial_noise(forward, embeds, clean_logits, kind, noises)
        seen.append((clean_logits.dtype, [n.dtype for n in noises], [n.dtype for n in found]))
        return found

    smart.adversarial_noise = spy
    if dtype == torch.float16:
        _, grads = scaled_step(trainer, inputs, optimizer, torch.amp.GradScaler("cpu", init_scale=2.0 ** 4))
        assert all_finite(list(grads.values()))
    else:
        with torch.autocast("cpu", dtype=dtype):
            trainer.training_step(trainer.model, inputs)
    assert len(seen) == 2  # sst and sts, not quora
    for logits_dtype, start, found in seen:  # the clean reference is float32 too (computed without autocast)
        assert logits_dtype == torch.float32 and set(start) == set(found) == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_smart_adversarial_term_under_autocast_is_the_float32_one(dtype, bert_config, tokenized, tokenizer, tmp_path):
    """R_s under autocast equals R_s without it (dropout off, the same noise draw): its passes and their clean
    reference run in float32, so σ = 1e-5 is not rounded away and l_s does not measure bf16/fp16 rounding. The
    clean logits given to it are the autocast ones, as in training."""
    trainer, inputs, _ = grouped_trainer(bert_config, tokenized, tokenizer, tmp_path, "pcgrad", smart_tasks=["sst"])
    smart, model, batch = trainer.regularizers["smart"], trainer.model.eval(), inputs["sst"]
    spec = model.specs["sst"]
    with torch.autocast("cpu", dtype=dtype):
        outputs = model(**batch)
        assert outputs.logits.dtype == dtype
        mixed = smart.adversarial_loss(model, batch, outputs.logits, spec.task_kind)
    smart.draws = 0  # the same noise draw again
    plain = smart.adversarial_loss(model, batch, model(**batch).logits, spec.task_kind)
    assert mixed.dtype == plain.dtype == torch.float32
    assert plain > 0 and torch.allclose(mixed, plain, rtol=1e-4, atol=0)



def test_a_step_the_scaler_skips_is_not_observed_by_the_loss_weighting(bert_config, tokenized, tokenizer, tmp_path):
    """DWA averages the losses of the steps that were applied: an overflow step (scale 2^40), which accelerate's
    optimizer skips, is not counted; the next one (scale 2^4) is. The optimizer is accelerate's own
    `AcceleratedOptimizer`, so `optimizer_step_was_skipped` is what the Trainer would read."""
    from accelerate.optimizer import AcceleratedOptimizer

    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **STEP_ARGS, loss_weighting="dwa")
    inputs = next(iter(trainer.get_train_dataloader()))
    weighting, model = trainer.loss_weighting, trainer.model
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's training loop
    for scale, observed in ((2.0 ** 40, 0), (2.0 ** 4, 1)):
        scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        optimizer = AcceleratedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), device_placement=False,
                                         scaler=scaler)
        trainer.accelerator.scaler, trainer.accelerator._optimizers = scaler, [optimizer]
        with torch.autocast("cpu", dtype=torch.float16):
            trainer.training_step(model, inputs)
        assert weighting.step_losses is not None and weighting.step_losses.dtype == torch.float32
        optimizer.step()  # unscale_, step or skip, update
        assert trainer.accelerator.optimizer_step_was_skipped == (observed == 0)
        trainer.callback_handler.on_optimizer_step(trainer.args, trainer.state, trainer.control)
        model.zero_grad()
        assert weighting.count == observed and weighting.step_losses is None
