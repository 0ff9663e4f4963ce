"""Exact resume: a run SIGKILLed right after a checkpoint and resumed ends with the uninterrupted run's weights.

Real subprocesses, tiny model, dropout on. Ungrouped runs: 7 batches an epoch, killed after the checkpoint of
step 8 (one batch into the second epoch), 10 steps in all. Grouped runs: 3 steps an epoch, killed at step 4 of 5.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_multitask.aggregators import aggregator_names

SCRIPT = str(Path(__file__).with_name("resume_script.py"))
MODES = ("plain", "pcgrad", "gradvac", "smart", "pal", "rdrop", "upgrad", "uncertainty", "dwa")
MORE_AGGREGATORS = tuple(name for name in aggregator_names() if name not in MODES and name != "none")
KILL_AT = {"plain": 8, "smart": 8, "pal": 8, "rdrop": 8, "uncertainty": 4, "dwa": 4,
           **{name: 4 for name in aggregator_names()}}


def run(prefix, data_dir, tokenizer_dir, out, action, modes, **env):
    command = [*prefix, SCRIPT, str(data_dir), str(tokenizer_dir), str(out), action, *modes]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def finish(process, expect_killed=False):
    _, stderr = process.communicate(timeout=300)
    if expect_killed:
        assert process.returncode != 0, "the run was not killed"
    else:
        assert process.returncode == 0, stderr[-3000:]
    return stderr


def assert_same_weights(full: Path, resumed: Path, label: str) -> None:
    a, b = load_file(full), load_file(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=f"{label}: {key}")


def test_killed_runs_resume_to_the_uninterrupted_weights(data_dir, tokenizer_dir, tmp_path):
    python = [sys.executable]
    full = run(python, data_dir, tokenizer_dir, tmp_path / "full", "full", MODES)
    killed = {mode: run(python, data_dir, tokenizer_dir, tmp_path / "killed", "kill", [mode], KILL_AT=KILL_AT[mode])
              for mode in MODES[:2]}
    finish(full)
    for process in killed.values():
        finish(process, expect_killed=True)
    killed = {mode: run(python, data_dir, tokenizer_dir, tmp_path / "killed", "kill", [mode], KILL_AT=KILL_AT[mode])
              for mode in MODES[2:]}
    killed["saving"] = run(python, data_dir, tokenizer_dir, tmp_path / "saving", "kill_saving", ["plain"], KILL_AT=8,
                           LIMIT=1)
    for process in killed.values():
        finish(process, expect_killed=True)
    for mode in MODES:
        assert not (tmp_path / "killed" / f"{mode}.safetensors").exists()
        assert (tmp_path / "killed" / mode / f"checkpoint-{KILL_AT[mode]}").is_dir()
    # killed while writing checkpoint-8 with save_total_limit=1: checkpoint-4 was kept until 8 was complete
    assert sorted(p.name for p in (tmp_path / "saving" / "plain").glob("checkpoint-*")) == ["checkpoint-4",
                                                                                          "checkpoint-8"]
    assert not (tmp_path / "saving" / "plain" / "checkpoint-8" / "multitask_state.json").exists()
    resumed = run(python, data_dir, tokenizer_dir, tmp_path / "saving", "resume", ["plain"], LIMIT=1)
    finish(run(python, data_dir, tokenizer_dir, tmp_path / "killed", "resume", MODES))
    log = finish(resumed)
    assert "Not resuming from" in log and "checkpoint-8 is incomplete" in log
    for mode in MODES:
        assert_same_weights(tmp_path / "full" / f"{mode}.safetensors", tmp_path / "killed" / f"{mode}.safetensors",
                            mode)
    assert_same_weights(tmp_path / "full" / "plain.safetensors", tmp_path / "saving" / "plain.safetensors",
                        "killed while saving")


@pytest.mark.slow
def test_killed_runs_of_every_other_aggregator_resume_to_the_uninterrupted_weights(data_dir, tokenizer_dir, tmp_path):
    python = [sys.executable]
    full = run(python, data_dir, tokenizer_dir, tmp_path / "full", "full", MORE_AGGREGATORS)
    for pair in (MORE_AGGREGATORS[i:i + 2] for i in range(0, len(MORE_AGGREGATORS), 2)):
        for process in [run(python, data_dir, tokenizer_dir, tmp_path / "killed", "kill", [mode],
                            KILL_AT=KILL_AT[mode]) for mode in pair]:
            finish(process, expect_killed=True)
    finish(full)
    finish(run(python, data_dir, tokenizer_dir, tmp_path / "killed", "resume", MORE_AGGREGATORS))
    for mode in MORE_AGGREGATORS:
        assert (tmp_path / "killed" / mode / f"checkpoint-{KILL_AT[mode]}").is_dir()
        assert_same_weights(tmp_path / "full" / f"{mode}.safetensors", tmp_path / "killed" / f"{mode}.safetensors",
                            mode)


@pytest.mark.parametrize("modes", [pytest.param(["plain", "gradvac"], id="plain-gradvac"),
                                   pytest.param(list(MORE_AGGREGATORS) + ["upgrad"], id="more-aggregators",
                                                marks=pytest.mark.slow),
                                   pytest.param(["uncertainty", "dwa"], id="loss_weighting", marks=pytest.mark.slow)])
def test_two_process_runs_resume_mid_epoch_after_the_first(modes, data_dir, tokenizer_dir, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    finish(run(torchrun, data_dir, tokenizer_dir, tmp_path / "full", "full", modes, BATCH=2))
    for mode in modes:
        finish(run(torchrun, data_dir, tokenizer_dir, tmp_path / "killed", "kill", [mode], BATCH=2,
                   KILL_AT=KILL_AT[mode]), expect_killed=True)
        assert not (tmp_path / "killed" / f"{mode}.safetensors").exists()
    finish(run(torchrun, data_dir, tokenizer_dir, tmp_path / "killed", "resume", modes, BATCH=2))
    for mode in modes:
        assert_same_weights(tmp_path / "full" / f"{mode}.safetensors", tmp_path / "killed" / f"{mode}.safetensors",
                            mode)
