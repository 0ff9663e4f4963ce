"""benchmarks/bench_steps.py runs end to end on a tiny random model (`--smoke`) and reports every variant's ratio."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_steps_smoke(data_dir, tmp_path):
    out = tmp_path / "steps.json"
    command = [sys.executable, str(REPO / "benchmarks" / "bench_steps.py"), "--smoke", "--batch_size", "4",
               "--data_dir", str(data_dir), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["variants"]
    assert set(rows) == {"summed", "none_buffer", "pcgrad", "gradvac", "uncertainty", "dwa", "hf_trainer", "multitask"}
    assert rows["pcgrad"]["baseline"] == "summed" and rows["multitask"]["baseline"] == "hf_trainer"
    assert all(row["ratio"] > 0 and len(row["ratio_ci95"]) == 2 for row in rows.values())
    assert rows["summed"]["paired_ratio"] == 1.0
