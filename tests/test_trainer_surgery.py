import contextlib

import pytest
import torch

from hf_multitask import MultitaskTrainingArguments, cs224n_tasks

from .conftest import make_model, make_trainer

# What these tests always ran with, beside make_trainer's defaults; each test names its gradient_surgery
TRAINER_ARGS = dict(eval=None, per_device_train_batch_size=2, max_steps=4, learning_rate=1e-2, logging_steps=2)


def test_surgery_turns_on_grouped_batches(tmp_path):
    args = MultitaskTrainingArguments(str(tmp_path), gradient_surgery="gradvac", report_to=[])
    assert args.task_sampling_grouped
    with pytest.raises(ValueError, match="gradient_surgery must be one of"):
        MultitaskTrainingArguments(str(tmp_path), gradient_surgery="mgdaa")


@pytest.mark.parametrize("method", ["none", "pcgrad", "gradvac", "upgrad"])
def test_grouped_training_logs_task_cosines_with_surgery(method, bert_config, tokenized, tokenizer, tmp_path):
    """Surgery logs the cosines of the per-task gradients; grouped `none` computes none (summed-loss step)."""
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **TRAINER_ARGS,
                           gradient_surgery=method, task_sampling_grouped=True)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][0]
    assert {"loss_sst", "loss_quora", "loss_sts"} <= set(logged)
    cosines = {"grad_cos_sst_quora", "grad_cos_sst_sts", "grad_cos_quora_sts", "surgery_adjustments_per_step"}
    if method == "none":
        assert trainer.surgery is None and not cosines & set(logged)
    else:
        assert cosines <= set(logged)


def test_grouped_step_leaves_heads_out_of_the_surgery(bert_config, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **TRAINER_ARGS,
                           gradient_surgery="pcgrad")
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert all(names[id(p)].startswith("encoder.") for p in trainer.surgery.params)
    assert len(trainer.surgery.params) == sum(1 for n in names.values() if n.startswith("encoder."))


def test_frozen_encoder_has_nothing_to_project(bert_config, tokenized, tokenizer, tmp_path):
    model = make_model(bert_config)
    model.freeze_encoder()
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path, **TRAINER_ARGS, gradient_surgery="gradvac")
    assert trainer.surgery.method == "none" and trainer.surgery.params == []
    before = {n: p.clone() for n, p in model.named_parameters()}
    trainer.train()
    assert all(torch.equal(before[n], p) == n.startswith("encoder.") for n, p in model.named_parameters())


@pytest.mark.parametrize("method", ["pcgrad", "gradvac"])  # upgrad's exact resume: tests/test_resume.py
def test_resume_continues_the_surgery_state(method, bert_config, tokenized, tokenizer, tmp_path):
    full = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "full", **TRAINER_ARGS,
                        gradient_surgery=method, save_strategy="steps", save_steps=2)
    full.train()
    resumed = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path / "full", **TRAINER_ARGS,
                           gradient_surgery=method, save_strategy="no")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert (tmp_path / "full" / "checkpoint-2" / "multitask_state.safetensors").is_file()
    resumed_state, full_state = resumed.surgery.state_dict(), full.surgery.state_dict()
    expected_keys = {"targets", "generator"} if method == "gradvac" else {"generator"}
    assert resumed_state.keys() == full_state.keys() == expected_keys
    for key in full_state:
        torch.testing.assert_close(resumed_state[key], full_state[key], msg=key)
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b, a, msg=name)


def test_gradient_accumulation_sums_the_micro_batches_before_the_surgery(bert_config, tokenized, tokenizer,
                                                                        tmp_path):
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, gradient_surgery="pcgrad",
                           **(TRAINER_ARGS | dict(max_steps=2)), gradient_accumulation_steps=2)
    surgery, seen = trainer.surgery, []
    capture, combine = surgery.capture, surgery.combine

    @contextlib.contextmanager
    def spy_capture(task_index):
        with capture(task_index):
            yield
        seen.append(("capture", task_index, surgery.buffer.clone()))

    def spy_combine():
        seen.append(("combine", None, surgery.buffer.clone()))
        combine()

    surgery.capture, surgery.combine = spy_capture, spy_combine
    trainer.train()
    kinds = [kind for kind, _, _ in seen]
    assert kinds == (["capture"] * 6 + ["combine"]) * 2  # 2 micro-batches x 3 tasks, then one surgery
    first_micro, second_micro, at_combine = seen[2][2], seen[5][2], seen[6][2]
    assert torch.equal(second_micro, at_combine)
    assert first_micro.abs().sum() > 0 and not torch.equal(first_micro, second_micro)  # summed, not restarted
    assert torch.equal(seen[6 + 1][2][1:], torch.zeros_like(seen[6 + 1][2][1:]))  # the next step starts afresh


def test_gradients_are_clipped_after_the_projection(bert_config, tokenized, tokenizer, tmp_path):
    from transformers import TrainerCallback

    norms = []

    class Norms(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
            norms.append(float(torch.stack(grads).norm()))

    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **TRAINER_ARGS,
                           gradient_surgery="pcgrad", max_grad_norm=1e-3)
    trainer.add_callback(Norms())
    trainer.train()
    assert len(norms) == 4 and all(norm <= 1e-3 * (1 + 1e-4) for norm in norms)


def test_surgery_trains_under_bf16_autocast(bert_config, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, gradient_surgery="gradvac",
                           **(TRAINER_ARGS | dict(max_steps=2)), bf16=True)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.surgery.buffer.dtype == torch.float32
    assert torch.isfinite(trainer.surgery.aggregator.targets).all()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n.startswith("encoder."))


@pytest.mark.parametrize("method", ["pcgrad", "gradvac"])
def test_surgery_leaves_the_pals_out_and_trains_them(method, bert_config, tokenized, tokenizer, tmp_path):
    from hf_multitask import PalConfig

    model = make_model(bert_config)
    model.add_pal(PalConfig(rank=8))
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path, **TRAINER_ARGS, gradient_surgery=method)
    names = {id(p): n for n, p in model.named_parameters()}
    assert not any("pal" in names[id(p)] for p in trainer.surgery.params)
    before = {n: p.clone() for n, p in model.named_parameters()}
    trainer.train()
    pal = [n for n in before if "pal" in n]
    assert pal and any(not torch.equal(before[n], dict(model.named_parameters())[n]) for n in pal)


def test_smart_works_with_gradient_surgery(bert_config, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, **TRAINER_ARGS,
                           gradient_surgery="pcgrad", smart_tasks=["sst", "sts"])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][0]
    assert {"smart_adv_sst", "smart_breg_sts", "grad_cos_sst_sts"} <= set(logged)
    assert trainer.regularizers["smart"].teacher.num_updates == 4


@pytest.mark.parametrize("method", ["mgda", "pcgrad", "uncertainty"])
def test_only_the_tasks_with_training_data_are_rows(method, bert_config, tokenized, tokenizer, tmp_path):
    """A model task without training data is no row of the per-task gradients or loss weights: as a zero row it
    would make MGDA's update 0 (the min-norm point of {g_sst, g_sts, 0}) and shrink the others'. The three-task
    model trained on two tasks moves as the two-task model with the same weights does."""
    train = {name: tokenized["train"][name] for name in ("sst", "sts")}
    three = make_model(bert_config)
    two = make_model(bert_config, tasks=[spec for spec in cs224n_tasks() if spec.name != "quora"])
    two.load_state_dict({k: v for k, v in three.state_dict().items() if "quora" not in k})
    start = {n: p.detach().clone() for n, p in three.encoder.named_parameters()}
    step = dict(gradient_surgery="none", loss_weighting="uncertainty") if method == "uncertainty" else dict(
        gradient_surgery=method)
    trainers = [make_trainer(model, tokenized, tokenizer, tmp_path / str(i), train=train, optim="sgd",
                             **TRAINER_ARGS | dict(max_steps=2, logging_steps=1), task_sampling_grouped=True, **step)
                for i, model in enumerate((three, two))]
    for trainer in trainers:
        trainer.train()
    assert trainers[0].trained_tasks == ["sst", "sts"]
    assert max((p - start[n]).abs().max() for n, p in three.encoder.named_parameters()) > 1e-4
    for (name, a), b in zip(three.encoder.named_parameters(), two.encoder.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    logged = [entry for entry in trainers[0].state.log_history if "loss" in entry][0]
    if method != "uncertainty":
        assert {key for key in logged if key.startswith("grad_cos_")} == {"grad_cos_sst_sts"}
    else:
        assert {key for key in logged if key.startswith("task_weight_")} == {"task_weight_sst", "task_weight_sts"}


def test_gradient_surgery_kwargs_reach_the_aggregators_constructor(bert_config, tokenized, tokenizer, tmp_path):
    """As `lr_scheduler_kwargs` for the scheduler: a JSON object on the command line, checked against `__init__`."""
    from transformers import HfArgumentParser

    from hf_multitask.aggregators import AGGREGATORS, Aggregator, register_aggregator

    @register_aggregator
    class ScaledMean(Aggregator):
        name, degree = "scaled_mean", 1

        def __init__(self, num_tasks, num_segments=1, scale: float = 1.0, **options):
            super().__init__(num_tasks, num_segments, **options)
            self.scale = scale

        def weights(self, grams, generator):
            return torch.full(grams.shape[:2], self.scale / grams.shape[1], dtype=torch.float64), 0

    try:
        (args,) = HfArgumentParser(MultitaskTrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--gradient_surgery", "scaled_mean", "--gradient_surgery_kwargs",
             '{"scale": 0.5}', "--report_to", "none", "--use_cpu", "true", "--max_steps", "1",
             "--per_device_train_batch_size", "2", "--save_strategy", "no"])
        assert args.gradient_surgery_kwargs == {"scale": 0.5}
        trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, eval=None,
                               **{k: v for k, v in args.to_dict().items() if k in ("gradient_surgery",
                                  "gradient_surgery_kwargs", "max_steps", "per_device_train_batch_size")})
        trainer.train()
        assert trainer.surgery.aggregator.scale == 0.5 and trainer.surgery.steps == 1
        with pytest.raises(ValueError, match=r"gradient_surgery_kwargs: \['sclae'\] not among the options of the "
                                             r"'scaled_mean' aggregator's __init__ \(\['scale'\]\)"):
            MultitaskTrainingArguments(str(tmp_path), gradient_surgery="scaled_mean",
                                       gradient_surgery_kwargs={"sclae": 0.5})
    finally:
        AGGREGATORS.pop("scaled_mean", None)


class ModalAdamW(torch.optim.AdamW):
    """AdamW with a schedule-free optimizer's `train()` / `eval()` modes, recording each switch."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.modes = []

    def train(self):
        self.modes.append("train")

    def eval(self):
        self.modes.append("eval")


@pytest.mark.parametrize("step", ["pcgrad", "summed"])
def test_grouped_steps_put_the_optimizer_in_training_mode(step, bert_config, tokenized, tokenizer, tmp_path):
    """Trainer.training_step calls `optimizer.train()` at every step and evaluation `optimizer.eval()`; the grouped
    steps did not, so a schedule-free optimizer stayed in eval mode after the first evaluation."""
    model = make_model(bert_config, cs224n_tasks())
    optimizer = ModalAdamW(model.parameters(), lr=1e-3)
    settings = {"gradient_surgery": "pcgrad"} if step == "pcgrad" else {"task_sampling_grouped": True}
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2,
                           **settings)
    trainer.optimizer = optimizer  # as Trainer(optimizers=(optimizer, None)) sets it
    trainer.train()
    assert optimizer.modes[-1] == "eval"  # the final evaluation
    evaluated = optimizer.modes.index("eval")
    assert "train" in optimizer.modes[:evaluated] and "train" in optimizer.modes[evaluated:]


def test_grouped_steps_count_floating_point_operations(bert_config, tokenized, tokenizer, tmp_path):
    """`total_flos` stayed 0 with grouped batches: the parent counts only a batch with `input_ids` at its top."""
    flos = {}
    for grouped in (False, True):
        trainer = make_trainer(make_model(bert_config, cs224n_tasks()), tokenized, tokenizer, tmp_path / str(grouped),
                               task_sampling_grouped=grouped, max_steps=3)
        trainer.train()
        flos[grouped] = trainer.state.total_flos
    assert flos[False] > 0 and flos[True] > 2 * flos[False]  # every step holds a batch of each of the 3 tasks


def test_several_gpus_in_one_process_are_refused(tiny_model, tokenized, tokenizer, tmp_path):
    """transformers' Trainer wraps the model in DataParallel when one process sees several GPUs; its gathered
    per-GPU losses broke the per-task logging and the grouped steps."""
    args = MultitaskTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    args._n_gpu = 2  # what _setup_devices finds on a machine with 2 visible GPUs and no distributed launch
    from hf_multitask import MultitaskTrainer

    with pytest.raises(ValueError, match=r"2 GPUs visible to one process.*accelerate launch --num_processes 2"):
        MultitaskTrainer(model=tiny_model, args=args, train_dataset=tokenized["train"], processing_class=tokenizer)
