"""Per-task scalars reach TensorBoard through the Trainer's own TensorBoardCallback (report_to=["tensorboard"])."""

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hf_multitask import MultitaskConfig, MultitaskModel, MultitaskTrainer, MultitaskTrainingArguments, cs224n_tasks


def read_scalars(log_dir) -> dict[str, dict[int, float]]:
    """`{tag: {step: value}}` from every event file under `log_dir` (evaluation after training opens a new one)."""
    scalars = {}
    files = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {log_dir}"
    for path in files:
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return scalars


def test_per_task_scalars_reach_tensorboard(bert_config, tokenized, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(), classifier_dropout=0.0))
    args = MultitaskTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=3,
                                      logging_steps=1, learning_rate=1e-2, report_to=["tensorboard"],
                                      save_strategy="no", use_cpu=True, seed=0, gradient_surgery="pcgrad")
    trainer = MultitaskTrainer(model=model, args=args, train_dataset=tokenized["train"],
                               eval_dataset=tokenized["dev"], processing_class=tokenizer)
    trainer.train()
    metrics = trainer.evaluate()
    scalars = read_scalars(tmp_path / "runs")

    tasks = ["sst", "quora", "sts"]
    expected = {f"train/loss_{t}" for t in tasks} | {f"eval/{t}_loss" for t in tasks} | {
        "train/grad_cos_sst_quora", "train/grad_cos_sst_sts", "train/grad_cos_quora_sts",
        "train/surgery_adjustments_per_step", "eval/sst_accuracy", "eval/quora_accuracy", "eval/sts_pearson",
        "eval/overall"}
    assert expected <= set(scalars), sorted(expected - set(scalars))
    logged = [entry for entry in trainer.state.log_history if "loss_sst" in entry]
    assert sorted(scalars["train/loss_sst"]) == [entry["step"] for entry in logged] == [1, 2, 3]
    for entry in logged:
        assert scalars["train/loss_sst"][entry["step"]] == torch.tensor(entry["loss_sst"]).item()  # float32 copy
        assert scalars["train/grad_cos_sst_sts"][entry["step"]] == torch.tensor(entry["grad_cos_sst_sts"]).item()
    assert scalars["eval/overall"][3] == torch.tensor(metrics["eval_overall"]).item()
