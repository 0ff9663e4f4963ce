"""The benchmark scripts run (`--smoke`: tiny sizes, seconds), so that they cannot rot between measured runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script, interval_key", [("bench_smart.py", "ratio_interval_95"),
                                                  ("bench_aggregators.py", "ratio_95"),
                                                  ("gpu_check.py", "time_ratio_95"),
                                                  ("bench_gram.py", "cpu_ratio_95")])
def test_smoke_mode_runs_and_reports_ratios_with_intervals(script, interval_key, tmp_path):
    output = tmp_path / "out.json"
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke", "--output", str(output)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            cwd=BENCHMARKS.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    intervals = []

    def find(node):
        if isinstance(node, dict):
            intervals.extend(v for k, v in node.items() if k == interval_key)
            for value in node.values():
                find(value)

    find(json.loads(output.read_text()))
    assert intervals and all(len(pair) == 2 and pair[0] <= pair[1] for pair in intervals)


def test_median_interval_brackets_the_median():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_stats import median_interval
    finally:
        sys.path.remove(str(BENCHMARKS))
    low, high = median_interval(list(range(1, 26)))
    assert (low, high) == (7, 19)  # order statistics 7 and 19 of 25: k = floor(12.5 - 1.96 * 5 / 2)
    with pytest.raises(ValueError, match="95%"):
        median_interval([1.0, 2.0], level=0.9)
