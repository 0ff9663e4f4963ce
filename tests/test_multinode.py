"""Two nodes on localhost: `torchrun --nnodes 2 --nproc_per_node 1`, one process per node, a static rendezvous on
127.0.0.1, as on a cluster of two machines (each "node" has its own torchrun agent and LOCAL_RANK 0).

The two-node run trains like one process with the global batch (plain, grouped, PCGrad, GradVac, SMART); a node
killed right after a checkpoint stops the other (a short process-group timeout, `ddp_timeout`), and both nodes
resume to the weights of the uninterrupted run. docs/scaling.md has the launch recipes for real clusters.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TESTS = Path(__file__).parent
LAUNCH = TESTS.parent / "examples" / "launch"


def launch_nodes(script: str, args: list, port: int, **env) -> list[subprocess.Popen]:
    """Node 0 and node 1 of a two-node job running `script ARGS`, each under its own torchrun."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **{k: str(v) for k, v in env.items()}}
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                              "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                              str(TESTS / script), *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
            for rank in (0, 1)]


def wait(processes: list[subprocess.Popen], expect_failure: bool = False) -> None:
    for process in processes:
        _, stderr = process.communicate(timeout=400)
        assert (process.returncode != 0) == expect_failure, stderr[-3000:]


def assert_close(a: Path, b: Path, label: str) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], atol=2e-5, rtol=1e-4, msg=f"{label}: {key}")


@pytest.mark.slow
def test_two_nodes_train_like_one_process(data_dir, tokenizer_dir, tmp_path):
    modes = ["plain", "none", "pcgrad", "gradvac", "smart"]
    (tmp_path / "nodes").mkdir()
    (tmp_path / "single").mkdir()
    wait(launch_nodes("dist_train_script.py", [data_dir, tokenizer_dir, tmp_path / "nodes", 2, *modes], 29561))
    single = subprocess.run([sys.executable, str(TESTS / "dist_train_script.py"), str(data_dir), str(tokenizer_dir),
                             str(tmp_path / "single"), "4", *modes], capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    for mode in modes:
        assert_close(tmp_path / "single" / f"{mode}.safetensors", tmp_path / "nodes" / f"{mode}.safetensors", mode)


@pytest.mark.slow
def test_a_killed_node_stops_the_other_and_both_resume(data_dir, tokenizer_dir, tmp_path):
    """Node 1 is SIGKILLed right after the checkpoint of step 4 (of 5, grouped PCGrad): node 0 fails at its next
    collective instead of hanging (ddp_timeout=20 s bounds the wait); both resume from checkpoint-4."""
    args = [data_dir, tokenizer_dir]
    wait(launch_nodes("resume_script.py", [*args, tmp_path / "full", "full", "pcgrad"], 29562, BATCH=2))
    wait(launch_nodes("resume_script.py", [*args, tmp_path / "killed", "kill", "pcgrad"], 29563, BATCH=2, KILL_AT=4,
                      KILL_RANK=1, DDP_TIMEOUT=20), expect_failure=True)
    assert (tmp_path / "killed" / "pcgrad" / "checkpoint-4").is_dir()
    assert not (tmp_path / "killed" / "pcgrad.safetensors").exists()
    wait(launch_nodes("resume_script.py", [*args, tmp_path / "killed", "resume", "pcgrad"], 29564, BATCH=2))
    assert_close(tmp_path / "full" / "pcgrad.safetensors", tmp_path / "killed" / "pcgrad.safetensors", "resumed")


def test_the_launch_files_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(LAUNCH / "accelerate_two_nodes.yaml"))
    assert (config.num_machines, config.num_processes, config.distributed_type) == (2, 16, "MULTI_GPU")
    assert subprocess.run(["bash", "-n", str(LAUNCH / "two_nodes.sh")]).returncode == 0
    script = (LAUNCH / "two_nodes.sh").read_text()
    assert "--nnodes 2" in script and "-m hf_multitask.cli train" in script


NEEDS_WHOLE_GRADIENTS = {"pcgrad": {"gradient_surgery": "pcgrad"}, "summed": {"task_sampling_grouped": True},
                         "smart": {"smart_tasks": ["sst"]}, "rdrop": {"regularizers": {"rdrop": {"tasks": ["sst"]}}},
                         "uncertainty": {"loss_weighting": "uncertainty"}}
FSDP2_REFUSES = {"rdrop": "the regularisers \\['rdrop'\\] is not supported",
                 "uncertainty": "loss_weighting='uncertainty'"}


@pytest.mark.parametrize("name", NEEDS_WHOLE_GRADIENTS)
def test_fsdp2_runs_surgery_and_smart_and_refuses_the_rest_at_start(name, tmp_path):
    from hf_multitask import MultitaskTrainingArguments

    changes = NEEDS_WHOLE_GRADIENTS[name]
    with pytest.raises(ValueError, match="fsdp \\(FSDP1\\) with grouped batches .* is not supported.*FSDP2"):
        MultitaskTrainingArguments(str(tmp_path), use_cpu=True, report_to=[], fsdp=True, fsdp_config={"version": 1},
                                   **changes)
    if name in FSDP2_REFUSES:
        with pytest.raises(ValueError, match=f"fsdp with {FSDP2_REFUSES[name]}.*docs/scaling.md"):
            MultitaskTrainingArguments(str(tmp_path), use_cpu=True, report_to=[], fsdp=True, **changes)
    else:
        MultitaskTrainingArguments(str(tmp_path), use_cpu=True, report_to=[], fsdp=True, **changes)  # FSDP2
    MultitaskTrainingArguments(str(tmp_path), use_cpu=True, report_to=[], fsdp=True)  # plain training: accepted


@pytest.mark.parametrize("name", NEEDS_WHOLE_GRADIENTS)
def test_deepspeed_with_what_needs_whole_gradients_is_refused(name):
    """DeepSpeed is not installed here, so the rule is checked where the arguments and the Trainer both ask it."""
    from types import SimpleNamespace

    from hf_multitask.sharding import sharding_refusal

    args = SimpleNamespace(**NEEDS_WHOLE_GRADIENTS[name])
    assert "deepspeed with grouped batches" in sharding_refusal("deepspeed", 2, args)
    assert sharding_refusal("deepspeed", 2, SimpleNamespace()) is None
    assert sharding_refusal(None, 2, args) is None


def test_an_accelerate_fsdp_config_is_checked_by_the_trainer_with_the_plugins_version():
    """`accelerate launch --config_file` turns FSDP on without `fsdp` in the training arguments: the Trainer asks
    accelerate's plugin (its version too) and refuses what the arguments would have refused."""
    from types import SimpleNamespace

    from hf_multitask.sharding import check_sharded_trainer

    def trainer(version, **args):
        state = SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=version))
        return SimpleNamespace(accelerator=SimpleNamespace(state=state), is_fsdp_enabled=True,
                               is_deepspeed_enabled=False, args=SimpleNamespace(**args))

    with pytest.raises(ValueError, match=r"fsdp \(FSDP1\) with grouped batches"):
        check_sharded_trainer(trainer(1, gradient_surgery="pcgrad"))
    with pytest.raises(ValueError, match="fsdp with the regularisers"):
        check_sharded_trainer(trainer(2, regularizers={"rdrop": {}}))
    check_sharded_trainer(trainer(2, gradient_surgery="pcgrad", smart_tasks=["sst"]))
    check_sharded_trainer(trainer(1))  # plain training under FSDP1


def test_the_fsdp2_launch_config_wraps_what_smart_needs():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(LAUNCH / "accelerate_fsdp2.yaml"))
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",") == ["BertLayer", "Embedding"]


def test_the_fsdp2_command_line_of_the_docs_parses_into_fsdp2_with_surgery_and_smart():
    from hf_multitask.cli import parse_train_args

    _, _, args = parse_train_args(["examples/cs224n/main.yaml", "--fsdp", "full_shard", "--fsdp_config",
                                   str(LAUNCH / "fsdp2_config.json"), "--gradient_surgery", "pcgrad",
                                   "--smart_tasks", "sst"])
    assert args.fsdp and args.fsdp_config["version"] == 2
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["BertLayer", "Embedding"]
    assert "--fsdp full_shard --fsdp_config examples/launch/fsdp2_config.json" in (
        LAUNCH.parents[1] / "docs" / "scaling.md").read_text()


def test_accelerates_default_fsdp2_wrap_gives_smart_its_embedding_unit():
    """accelerate's FSDP2 plugin without a class list wraps the model's `_no_split_modules`: the encoder's layers and
    embeddings, and "Embedding", so the word embedding SMART calls on its own is a unit by default."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from .fsdp_surgery_script import make_model

    model = make_model()
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    plugin.set_auto_wrap_policy(model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    assert policy(model.get_input_embeddings()) and policy(model.encoder.encoder.layer[0])
    assert not policy(model) and not policy(model.heads)
