"""The drop-in proof: examples/dropin/run_single_task.py is a plain HF fine-tuning script; run_multitask.py trains
several tasks with hf-multitask and differs from it only in a few lines, each marked `# multitask`."""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import BertModel

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "dropin"
SINGLE, MULTI = EXAMPLES / "run_single_task.py", EXAMPLES / "run_multitask.py"


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_encoder_dir(tmp_path, bert_config, tokenizer):
    torch.manual_seed(0)
    path = tmp_path / "encoder"
    BertModel(bert_config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def script_args(encoder, data_dir, output_dir):
    return ["--model_name_or_path", str(encoder), "--data_dir", str(data_dir), "--output_dir", str(output_dir),
            "--max_steps", "2"]


def test_the_multitask_script_differs_in_at_most_ten_marked_lines():
    diff = list(difflib.unified_diff(SINGLE.read_text().splitlines(), MULTI.read_text().splitlines(), n=0,
                                     lineterm=""))
    added = [line for line in diff if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in diff if line.startswith("-") and not line.startswith("---")]
    assert 0 < len(added) <= 10 and len(removed) <= 10
    assert [line for line in added if not line.rstrip().endswith("# multitask")] == []


def test_the_single_task_script_runs_with_the_plain_trainer(tiny_encoder_dir, data_dir, tmp_path):
    metrics = load_script(SINGLE).main(script_args(tiny_encoder_dir, data_dir, tmp_path / "out"))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (tmp_path / "out" / "predict_results_sst.txt").read_text().startswith("index\tprediction\n0\t")


def test_the_multitask_script_runs_with_the_hf_habits_kept(tiny_encoder_dir, data_dir, tmp_path):
    metrics = load_script(MULTI).main(script_args(tiny_encoder_dir, data_dir, tmp_path / "out"))
    assert {"eval_sst_accuracy", "eval_sts_pearson", "eval_overall", "eval_sst_user_accuracy", "eval_sts_mse"} \
        <= set(metrics)
    assert metrics["eval_sst_user_accuracy"] == pytest.approx(metrics["eval_sst_accuracy"])
    assert "eval_overall" in json.loads((tmp_path / "out" / "eval_results.json").read_text())
    lines = (tmp_path / "out" / "predict_results_sts.txt").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 1 + 8
    assert (tmp_path / "out" / "predict_results_sst.txt").is_file()
