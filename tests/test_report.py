import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_multitask import MultitaskConfig, MultitaskModel, MultitaskTrainer, MultitaskTrainingArguments, cs224n_tasks
from hf_multitask import report as report_module
from hf_multitask.cli import main
from hf_multitask.plots import confusion_matrix, ema_smooth
from hf_multitask.report import (
    collect_series,
    eval_metrics,
    find_run_files,
    gradient_cosines,
    smart_terms,
    surgery_adjustments,
    task_losses,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORY = [
    {"step": 1, "loss": 3.0, "loss_sst": 1.6, "loss_sts": 4.0, "grad_cos_sst_5_sts": -0.2,
     "surgery_adjustments_per_step": 1.0, "smart_adv_sts": 0.01},
    {"step": 2, "loss": 2.0, "loss_sst": 1.4, "loss_sts": 2.5, "grad_cos_sst_5_sts": 0.1,
     "surgery_adjustments_per_step": 0.0, "smart_adv_sts": 0.02},
    {"step": 2, "eval_sst_accuracy": 0.3, "eval_sts_pearson": 0.5, "eval_overall": 0.525},
    {"step": 4, "eval_sst_accuracy": 0.4, "eval_sts_pearson": 0.6, "eval_overall": 0.6},
    {"step": 4, "eval_sst_accuracy": 0.45, "eval_sts_pearson": 0.6, "eval_overall": 0.625},  # final evaluate()
    {"step": 4, "train_loss": 2.5, "train_runtime": 1.0},
]


def specs():
    return {spec.name: spec for spec in cs224n_tasks() if spec.name != "quora"}


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0, path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) > 100, (path, image.size)


# ---- data-reading functions on a synthetic log history ----


def test_task_losses_collect_steps_per_task():
    assert task_losses(HISTORY, ["sst", "sts", "quora"]) == {"sst": ([1, 2], [1.6, 1.4]), "sts": ([1, 2], [4.0, 2.5])}


def test_collect_series_keeps_the_last_value_of_a_repeated_step():
    metrics = eval_metrics(HISTORY, specs())
    assert metrics["sst accuracy"] == ([2, 4], [0.3, 0.45])
    assert metrics["overall"] == ([2, 4], [0.525, 0.625])
    assert set(metrics) == {"sst accuracy", "sts pearson", "overall"}


def test_gradient_cosines_find_pairs_of_task_names_with_underscores():
    cosines = gradient_cosines(HISTORY, ["sst_5", "sts"])
    assert cosines == {"sst_5 / sts": ([1, 2], [-0.2, 0.1])}
    assert gradient_cosines(HISTORY, ["sst", "sts"]) == {}
    assert surgery_adjustments(HISTORY) == {"adjustments per step": ([1, 2], [1.0, 0.0])}


def test_smart_terms_label_task_and_term():
    assert smart_terms(HISTORY, ["sst", "sts"]) == {"sts adv": ([1, 2], [0.01, 0.02])}


def test_collect_series_leaves_out_missing_keys():
    assert collect_series(HISTORY, {"x": "no_such_key"}) == {}


def test_ema_smooth():
    assert ema_smooth([1.0, 3.0, 3.0], 0.0) == [1.0, 3.0, 3.0]
    assert ema_smooth([1.0, 3.0, 3.0], 0.5) == [1.0, 2.0, 2.5]
    with pytest.raises(ValueError, match="smoothing must be in"):
        ema_smooth([1.0], 1.0)


def test_confusion_matrix_counts_gold_rows_and_predicted_columns():
    matrix = confusion_matrix("sst", [0, 0, 1, 2, 2], [0, 1, 1, 2, 0], num_labels=3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    with pytest.raises(ValueError, match="Task 'sst': prediction 3 is not a class id in 0..2"):
        confusion_matrix("sst", [0, 1], [0, 3], num_labels=3)


def test_find_run_files_errors_name_the_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no trainer_state.json"):
        find_run_files(tmp_path)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": []}))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no config.json"):
        find_run_files(tmp_path)
    with pytest.raises(SystemExit, match=f"hf-multitask report: {tmp_path / 'nope'}: no such run directory"):
        main(["report", str(tmp_path / "nope")])


# ---- the report on tiny trained runs ----


def train_run(bert_config, tokenized, tokenizer, out, save_model: bool, **overrides):
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(), classifier_dropout=0.0))
    defaults = dict(per_device_train_batch_size=2, max_steps=4, learning_rate=1e-2, logging_steps=1, report_to=[],
                    save_strategy="no", use_cpu=True, seed=0)
    args = MultitaskTrainingArguments(output_dir=str(out), **{**defaults, **overrides})
    trainer = MultitaskTrainer(model=model, args=args, train_dataset=tokenized["train"],
                               eval_dataset=tokenized["dev"], processing_class=tokenizer)
    trainer.train()
    trainer.evaluate()
    if save_model:
        trainer.save_model(str(out))
        trainer.save_state()
    return out


def test_report_of_a_surgery_run_writes_every_plot(bert_config, tokenized, tokenizer, data_dir, tmp_path, capsys):
    run = train_run(bert_config, tokenized, tokenizer, tmp_path / "run", save_model=True,
                    gradient_surgery="pcgrad", eval_strategy="steps", eval_steps=2)
    main(["report", str(run), "--data", str(data_dir), "--output", str(tmp_path / "report"), "--smoothing", "0.5"])
    expected = ["task_losses.png", "eval_metrics.png", "gradient_surgery.png", "confusion_sst.png",
                "confusion_quora.png", "scatter_sts.png"]
    for name in expected:
        assert_png(tmp_path / "report" / name)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(expected)
    printed = capsys.readouterr().out
    assert "wrote 6 file(s)" in printed and all(name in printed for name in expected)


def test_report_reads_the_last_checkpoint_and_skips_predictions_without_data(bert_config, tokenized, tokenizer,
                                                                            tmp_path, capsys):
    run = train_run(bert_config, tokenized, tokenizer, tmp_path / "run", save_model=False,
                    save_strategy="steps", save_steps=2)
    assert not (run / "config.json").exists() and (run / "checkpoint-4" / "config.json").is_file()
    paths = write_report(run)
    assert [p.name for p in paths] == ["task_losses.png"]  # the checkpoint's state predates the evaluation
    assert paths[0].parent == run / "report"
    assert_png(paths[0])
    assert "no --data given, skipping" in capsys.readouterr().out


def test_report_plots_a_single_evaluation_as_final_values(bert_config, tokenized, tokenizer, data_dir, tmp_path,
                                                          monkeypatch):
    bars = []
    original = report_module.plot_final_metrics
    monkeypatch.setattr(report_module, "plot_final_metrics", lambda values, *a: bars.append(values) or original(
        values, *a))
    run = train_run(bert_config, tokenized, tokenizer, tmp_path / "run", save_model=True, max_steps=2)
    paths = write_report(run, tmp_path / "out", data_dir=data_dir, max_samples=4)
    assert list(bars[0]) == ["sst accuracy", "quora accuracy", "sts pearson", "overall"]
    assert [p.name for p in paths] == ["task_losses.png", "eval_metrics.png", "confusion_sst.png",
                                       "confusion_quora.png", "scatter_sts.png"]
    for path in paths:
        assert_png(path)
