"""benchmarks/choose_recipe.py: the rule that picks the reference-budget recipe from the ablation's means."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import ablation  # noqa: E402
import choose_recipe  # noqa: E402

from hf_multitask.cli import parse_train_args  # noqa: E402


def option(row: str, mean: float, verdict: str = "no effect detectable at this budget") -> choose_recipe.Option:
    return choose_recipe.Option(row, row, mean, 3, 3, verdict)


def test_every_row_that_changes_one_setting_is_on_exactly_one_axis():
    on_axes = [name for _, _, names in choose_recipe.AXES for name in names]
    assert len(on_axes) == len(set(on_axes))
    not_options = {"frozen", "cross_annealed", "aa", "best", "single_task_hf"}  # baselines and a combination
    assert set(on_axes) == set(ablation.rows_by_name()) - not_options


def test_options_on_different_axes_change_different_settings():
    for (_, _, names_a), (_, _, names_b) in itertools.combinations(choose_recipe.AXES, 2):
        for a, b in itertools.product(names_a, names_b):
            choose_recipe.merge(choose_recipe.changes(a), choose_recipe.changes(b))  # raises on a shared setting


def test_a_rows_changes_are_what_its_config_sets_apart_from_the_run_itself():
    assert choose_recipe.changes("pcgrad") == {"task_sampling_grouped": True, "gradient_surgery": "pcgrad"}
    assert choose_recipe.changes("transfer") == {"init_heads_from": "runs/ablation/r800_frozen"}
    assert choose_recipe.changes("ordinal") == {"task_overrides": {"sst": {"loss": "ordinal"}}}


def test_the_highest_mean_wins_unless_it_hurts_and_the_main_settings_win_ties():
    main = option("cross_annealed", 0.73)
    assert choose_recipe.choose([main, option("a", 0.74), option("b", 0.75)]).row == "b"
    assert choose_recipe.choose([main, option("a", 0.74), option("b", 0.75, "hurts")]).row == "a"
    assert choose_recipe.choose([main, option("a", 0.73)]).row == "cross_annealed"
    assert choose_recipe.choose([main, option("a", 0.72)]).row == "cross_annealed"


def test_the_recipe_joins_the_winners_at_the_reference_budget_and_parses(tmp_path):
    winners = [option("round_robin", 0.740), option("pcgrad", 0.741), option("transfer", 0.739),
               option("ordinal", 0.736), option("sts_bias_center", 0.737), option("cross_annealed", 0.734)]
    config, left_out = choose_recipe.recipe(winners, 0.734)
    assert left_out == []
    assert config["task_sampling"] == "round_robin" and config["gradient_surgery"] == "pcgrad"
    assert config["max_steps"] == 1321  # 3,963 batches in grouped steps of one batch per task
    assert config["task_overrides"] == {"sst": {"loss": "ordinal"}, "sts": {"extra": {"initial_bias": "center"}}}
    assert config["init_heads_from"] == "runs/ablation/r800_frozen"
    assert (config["output_dir"], config["seed"]) == ("runs/ablation/ref_recipe_3963", 142)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    model_args, _, training = parse_train_args([str(path)])
    assert training.max_steps * training.per_device_train_batch_size * len(model_args.tasks) == 3963 * 32


def test_a_winner_that_cannot_join_the_larger_gains_keeps_the_main_settings_on_its_axis():
    # bi-encoded pairs have no linear STS head to centre: the smaller gain (bi-encoding here) is left out
    config, left_out = choose_recipe.recipe([option("sts_bias_center", 0.745), option("bi_annealed", 0.740)], 0.734)
    assert config["pair_encoding"] == "cross" and config["task_overrides"]["sts"]["extra"]["initial_bias"] == "center"
    assert len(left_out) == 1 and left_out[0].startswith("bi_annealed: ") and "initial_bias" in left_out[0]
    assert config["max_steps"] == 3963


def test_write_is_refused_while_an_option_has_seeds_to_run(monkeypatch, capsys):
    by_axis = {axis: [option("cross_annealed", 0.734)] for axis, _, _ in choose_recipe.AXES}
    by_axis["SMART"].append(choose_recipe.Option("+ SMART", "smart", 0.75, 2, 3, "—"))
    monkeypatch.setattr(choose_recipe, "options", lambda root, n: by_axis)
    with pytest.raises(SystemExit, match="provisional"):
        choose_recipe.main(["--write"])
    out = capsys.readouterr().out
    assert "provisional: not every option's seeds are done: smart (2/3)" in out
    assert "smart_tasks" in out  # the choice is still shown: SMART's mean is the highest so far
