import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_multitask import MultitaskBatchSampler
from hf_multitask.aggregators import aggregator_names


def test_two_processes_get_the_same_task_and_disjoint_shards(data_dir, tokenizer_dir, tmp_path):
    script = Path(__file__).with_name("dist_sampling_script.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(script), str(data_dir), str(tokenizer_dir), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world"] == 2
    assert ranks[0]["tasks"] == ranks[1]["tasks"]  # same task at every step
    sizes = {"sst": 12, "quora": 8, "sts": 8}
    sampler = MultitaskBatchSampler(sizes, batch_size=4, strategy="annealed", seed=1)
    sampler.set_total_batches(3 * len(sampler))  # the Trainer's default of 3 epochs
    single = list(sampler)
    assert len(ranks[0]["indices"]) == len(single)  # not re-sharded by accelerate
    for step, (a, b) in enumerate(zip(ranks[0]["indices"], ranks[1]["indices"])):
        assert not set(a) & set(b)
        assert a + b == single[step]  # together: the single-process global batch


@pytest.mark.parametrize("modes", [
    pytest.param(["plain", "none", "pcgrad", "gradvac", "upgrad", "smart", "uncertainty", "dwa"], id="default"),
    pytest.param(["none", *(m for m in aggregator_names() if m not in ("none", "pcgrad", "gradvac", "upgrad"))],
                 id="more-aggregators", marks=pytest.mark.slow),
])
def test_two_processes_train_like_one_with_the_global_batch(modes, data_dir, tokenizer_dir, tmp_path):
    """Same final weights, 2 x batch 2 under torchrun vs 1 x batch 4, without and with gradient surgery, with
    SMART (its noise is drawn per example, whatever the process layout), and with a loss weighting (the learned
    log-variances and DWA's windows included); and the same evaluation losses and metrics, though a rank's last
    dev batch is filled with repeated rows."""
    from safetensors.torch import load_file

    script = Path(__file__).with_name("dist_train_script.py")
    runs = {"single": [sys.executable, str(script)],
            "double": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                       "29534", str(script)]}
    for name, prefix in runs.items():
        out = tmp_path / name
        out.mkdir()
        batch = "4" if name == "single" else "2"
        result = subprocess.run([*prefix, str(data_dir), str(tokenizer_dir), str(out), batch, *modes],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    for mode in modes:
        single, double = load_file(tmp_path / "single" / f"{mode}.safetensors"), load_file(
            tmp_path / "double" / f"{mode}.safetensors")
        for key in single:
            torch.testing.assert_close(double[key], single[key], atol=2e-5, rtol=1e-4, msg=f"{mode}: {key}")
    if "plain" in modes:  # evaluation counts every dev row once: the same losses and metrics as one process
        single, double = (json.loads((tmp_path / name / "plain_eval.json").read_text()) for name in runs)
        keys = [k for k in single if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))]
        assert "eval_sts_loss" in keys and "eval_overall" in keys
        for key in keys:
            assert double[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
    baseline = load_file(tmp_path / "single" / "none.safetensors")
    for mode in modes:
        if mode not in ("plain", "none", "smart"):  # each method really changes the training
            weights = load_file(tmp_path / "single" / f"{mode}.safetensors")
            assert any(not torch.equal(baseline[k], weights[k]) for k in baseline), mode
