"""The ablation study's config files: each parses with the CLI's parser, has the study's budget and its own output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_multitask.build import build_task_specs
from hf_multitask.cli import parse_train_args

CONFIG_DIR = Path(__file__).resolve().parent.parent / "examples" / "cs224n" / "ablation"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
BUDGET = 25_600  # training examples per row


def test_ablation_configs_exist():
    names = {path.stem for path in CONFIGS}
    assert {"frozen", "cross_annealed", "bi_annealed", "round_robin", "proportional", "pal", "grouped_none",
            "pcgrad", "gradvac", "smart", "rdrop", "ordinal", "transfer", "best", "mgda", "upgrad", "dualproj",
            "imtl_g", "aligned_mtl", "uncertainty"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_ablation_config_parses_and_has_the_budget(path):
    model_args, _, training_args = parse_train_args([str(path)])
    build_task_specs(model_args)  # task_overrides are valid
    batch = training_args.per_device_train_batch_size
    tasks_per_step = len(model_args.tasks) if training_args.task_sampling_grouped else 1
    examples = training_args.max_steps * batch * tasks_per_step
    assert abs(examples - BUDGET) < batch * tasks_per_step, f"{path.name}: {examples} training examples"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_ablation_config_output_dir_matches_the_file_name(path):
    _, _, training_args = parse_train_args([str(path)])
    assert training_args.output_dir == f"runs/ablation/r800_{path.stem}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_ablation_config_states_its_budget_in_the_header(path):
    header = path.read_text(encoding="utf-8").split("\nmodel_name_or_path")[0]
    assert header.startswith(f"# Ablation row `{path.stem}`") and "25,600 training examples" in header


def test_ablation_rows_that_reuse_heads_start_from_the_frozen_row():
    for name in ("transfer", "best"):
        model_args, _, training_args = parse_train_args([str(CONFIG_DIR / f"{name}.yaml")])
        assert model_args.init_heads_from == "runs/ablation/r800_frozen" and not model_args.freeze_encoder
    model_args, _, training_args = parse_train_args([str(CONFIG_DIR / "frozen.yaml")])
    assert model_args.freeze_encoder and training_args.learning_rate == 1e-2


def _load(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


# What each row changes against `cross_annealed` (the main job's settings), besides output_dir and max_steps.
CHANGES = {
    "frozen": {"freeze_encoder": True, "learning_rate": 1e-2, "task_sampling": "round_robin"},
    "bi_annealed": {"pair_encoding": "bi"},
    "round_robin": {"task_sampling": "round_robin"},
    "proportional": {"task_sampling": "proportional"},
    "pal": {"pal_rank": 102},
    "grouped_none": {"task_sampling_grouped": True, "gradient_surgery": "none"},
    "pcgrad": {"task_sampling_grouped": True, "gradient_surgery": "pcgrad"},
    "gradvac": {"task_sampling_grouped": True, "gradient_surgery": "gradvac"},
    "mgda": {"task_sampling_grouped": True, "gradient_surgery": "mgda"},
    "upgrad": {"task_sampling_grouped": True, "gradient_surgery": "upgrad"},
    "dualproj": {"task_sampling_grouped": True, "gradient_surgery": "dualproj"},
    "imtl_g": {"task_sampling_grouped": True, "gradient_surgery": "imtl_g"},
    "aligned_mtl": {"task_sampling_grouped": True, "gradient_surgery": "aligned_mtl"},
    "uncertainty": {"task_sampling_grouped": True, "gradient_surgery": "none", "loss_weighting": "uncertainty"},
    "smart": {"smart_tasks": ["sst", "sts"]},
    "sts_bias_center": {"task_overrides": {"sts": {"extra": {"initial_bias": "center"}}}},
    "rdrop": {"regularizers": {"rdrop": {"tasks": ["sst", "quora", "sts"], "alpha": 1.0}}},
    "ordinal": {"task_overrides": {"sst": {"loss": "ordinal"}}},
    "transfer": {"init_heads_from": "runs/ablation/r800_frozen"},
    "best": {"task_sampling": "round_robin", "init_heads_from": "runs/ablation/r800_frozen"},
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_ablation_config_changes_only_what_the_row_tests(name):
    base, config = _load("cross_annealed"), _load(name)
    differ = {key: config.get(key) for key in set(base) | set(config)
              if key not in ("output_dir", "max_steps") and config.get(key) != base.get(key)}
    assert differ == CHANGES[name]


def test_cross_annealed_has_the_main_jobs_settings():
    main = yaml.safe_load((CONFIG_DIR.parent / "main.yaml").read_text(encoding="utf-8"))
    config = _load("cross_annealed")
    assert {k: v for k, v in config.items() if k not in ("output_dir", "max_steps")} == {
        k: v for k, v in main.items() if k not in ("output_dir", "max_steps")}
