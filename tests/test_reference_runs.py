"""The reference-budget runs (issue 16, parts 3 and 4): single_task_hf.py's epochs, checkpoints and timeline, the
queue's `reference` group, and benchmarks/time_to_quality.py's clock, combination rule, evaluations and plot."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertModel

from hf_multitask.build import build_task_specs
from hf_multitask.cli import parse_train_args

from .test_ablation_stats import archive_run

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import ablation  # noqa: E402
import ablation_stats  # noqa: E402
import reference_runs  # noqa: E402
import time_to_quality as ttq  # noqa: E402

_spec = importlib.util.spec_from_file_location("single_task_hf", REPO / "examples/cs224n/single_task_hf.py")
single = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(single)
REAL_DATA = REPO.parent / "shared" / "data"


# ---- single_task_hf.py: the budget flags ----


def test_single_task_budget_flags_are_alternatives(capsys):
    with pytest.raises(SystemExit):
        single.parse_args(["--max_steps_per_task", "10", "--num_train_epochs_per_task", "3"])
    assert "--max_steps_per_task and --num_train_epochs_per_task are alternatives" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--num_train_epochs_per_task", "--max_steps_per_task", "--save_steps"])
def test_single_task_budget_below_one_is_refused_naming_the_flag(flag, capsys):
    with pytest.raises(SystemExit):
        single.parse_args([flag, "0"])
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


def test_single_task_default_budget_is_the_ablations_and_epochs_replace_it():
    assert (single.parse_args([]).max_steps_per_task, single.parse_args([]).num_train_epochs_per_task) == (267, None)
    args = single.parse_args(["--num_train_epochs_per_task", "3", "--save_steps", "200"])
    assert (args.max_steps_per_task, args.num_train_epochs_per_task) == (None, 3)
    training = single.training_arguments("sst", args)
    assert (training.max_steps, training.num_train_epochs, training.save_steps) == (-1, 3, 200)
    assert training.save_strategy == "steps" and training.save_only_model
    assert single.training_arguments("sst", single.parse_args([])).save_strategy == "no"


def test_three_epochs_per_task_are_3963_batches_on_the_shared_data_row_counts():
    args = single.parse_args(["--num_train_epochs_per_task", "3"])
    batches = {task: single.planned_batches(rows, args) for task, rows in (("sst", 8544), ("quora", 27655),
                                                                           ("sts", 6040))}
    assert batches == {"sst": 801, "quora": 2595, "sts": 567} and sum(batches.values()) == 3963
    assert single.planned_batches(8544, single.parse_args(["--max_steps_per_task", "5"])) == 5


@pytest.mark.skipif(not (REAL_DATA / "quora-train.tsv").is_file(), reason="needs ../shared/data")
def test_the_shared_training_files_have_the_row_counts_behind_3963():
    from hf_multitask import get_task, load_task_data

    rows = {task: len(load_task_data(get_task(task), REAL_DATA, splits=("train",))["train"])
            for task in ("sst", "quora", "sts")}
    assert rows == {"sst": 8544, "quora": 27655, "sts": 6040}


@pytest.fixture
def encoder_dir(tmp_path, bert_config, tokenizer):
    """A tiny random BERT encoder and its tokenizer, as a directory single_task_hf.py can start from."""
    torch.manual_seed(0)
    path = tmp_path / "encoder"
    BertModel(bert_config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_single_task_run_saves_checkpoints_and_a_timeline(tmp_path, encoder_dir, data_dir):
    out = tmp_path / "run"
    results = single.main(["--model_name_or_path", str(encoder_dir), "--data_dir", str(data_dir), "--output_dir",
                           str(out), "--num_train_epochs_per_task", "2", "--save_steps", "1"])
    assert results["train_batches"] == 6 and results["num_train_epochs_per_task"] == 2  # 1 batch of <= 12 rows
    for task in ("sst", "quora", "sts"):
        assert [step for step, _ in ttq.checkpoints(out / task)] == [0, 1, 2]
        assert not any((out / task / "checkpoint-1").glob("optimizer*"))  # model only
    spans = json.loads((out / "timeline.json").read_text())["tasks"]
    ends = [(s["start"], s["train_end"], s["end"]) for s in spans.values()]
    assert list(spans) == ["sst", "quora", "sts"] and all(a <= b <= c for a, b, c in ends)
    assert ends[0][2] <= ends[1][0] <= ends[1][2] <= ends[2][0]
    record = {"start_unix": spans["sst"]["start"] - 1, "wall_seconds": ends[2][2] - spans["sst"]["start"] + 2}
    evaluated, curve = ttq.evaluate_single_task_run(out, record, str(data_dir), None)
    assert [p["step"] for p in evaluated["quora"]] == [0, 1, 2]
    assert len(curve) == len({p["seconds"] for points in evaluated.values() for p in points}) > 3
    assert curve[-1]["sst_accuracy"] == pytest.approx(results["eval_sst_accuracy"])  # the final model, same metric
    assert curve[-1]["sts_pearson"] == pytest.approx(results["eval_sts_pearson"], abs=1e-5)
    # in time order; two checkpoints of a run this small can share a clock reading
    assert all(a["seconds"] <= b["seconds"] for a, b in zip(curve, curve[1:]))


def test_single_task_predictions_carry_their_own_rows_ids(tmp_path, encoder_dir, data_dir):
    """Under group_by_length the Trainer also orders the evaluation set by length (seeded shuffle), and the ids were
    zipped in the file's order: each id got another row's gold label and prediction (the metrics were right)."""
    from hf_multitask import get_task, load_task_data

    out = tmp_path / "run"
    single.main(["--model_name_or_path", str(encoder_dir), "--data_dir", str(data_dir), "--output_dir", str(out),
                 "--max_steps_per_task", "1", "--predictions", str(tmp_path / "dev.jsonl")])
    records = [json.loads(line) for line in (tmp_path / "dev.jsonl").read_text().splitlines()]
    for task in ("sst", "quora", "sts"):
        dev = load_task_data(get_task(task), str(data_dir), splits=("dev",))["dev"]
        gold = dict(zip(dev["id"], dev["labels"]))
        ours = [r for r in records if r["task"] == task]
        assert [r["id"] for r in ours] == list(dev["id"])  # file order
        assert all(r["labels"] == pytest.approx(gold[r["id"]]) for r in ours)


# ---- the queue's reference group ----


def reference():
    return ablation.rows_by_name("reference")


def test_reference_rows_use_fresh_seeds_and_keep_the_main_group():
    rows = reference()
    needs = rows["recipe_3963"].needs  # the heads sources run before the recipe, with its seeds
    assert list(rows) == ["single_task_3ep", *needs, "recipe_3963", "main_job_ttq"]
    ablation_seeds = {seed for row in ablation.main_rows() for seed in row.seeds}
    assert all(set(row.seeds).isdisjoint(ablation_seeds) for row in rows.values())
    assert all(rows[name].seeds == (142, 143, 144) for name in ("single_task_3ep", *needs, "recipe_3963"))
    assert ablation.rows_by_name()["frozen"].seeds == (42, 43, 44)


def test_single_task_3ep_argv_and_its_smoke_argv_parse(tmp_path):
    run = reference()["single_task_3ep"].at_seed(143)
    out = "runs/ablation/ref_single_task_3ep/seed143"
    assert run.display == ("python examples/cs224n/single_task_hf.py --num_train_epochs_per_task 3 --save_steps 200 "
                           f"--seed 143 --output_dir {out} --predictions {out}/{ablation.PREDICTIONS}")
    args = single.parse_args(ablation.row_argv(run, tmp_path, smoke=False)[2:])
    assert (args.num_train_epochs_per_task, args.save_steps, args.seed) == (3, 200, 143)
    smoke = single.parse_args(ablation.row_argv(run, tmp_path, smoke=True)[2:])
    assert (smoke.num_train_epochs_per_task, smoke.max_steps_per_task, smoke.save_steps) == (1, None, 1)
    assert (smoke.max_train_samples, smoke.output_dir) == (64, str(tmp_path / out))


def test_main_job_ttq_saves_model_only_checkpoints_and_never_resumes(tmp_path):
    run = reference()["main_job_ttq"].at_seed(142)
    (tmp_path / run.output_dir / "checkpoint-100").mkdir(parents=True)
    argv = ablation.row_argv(run, tmp_path, smoke=False)
    assert "--resume_from_checkpoint" not in argv
    _, data_args, training = parse_train_args(argv[4:])
    assert (training.save_strategy, training.save_steps, training.save_only_model) == ("steps", 100, True)
    assert (training.max_steps, training.seed, training.output_dir) == (1400, 142, run.output_dir)
    assert data_args.predictions_file == f"{run.output_dir}/{ablation.PREDICTIONS}"
    _, _, smoke = parse_train_args(ablation.row_argv(run, tmp_path, smoke=True)[4:])
    assert (smoke.max_steps, smoke.save_steps, smoke.output_dir) == (2, 1, str(tmp_path / run.output_dir))


def test_the_recipe_config_parses_at_the_reference_budget():
    model_args, _, training = parse_train_args([str(REPO / reference_runs.RECIPE)])
    build_task_specs(model_args)
    tasks_per_step = len(model_args.tasks) if training.task_sampling_grouped else 1
    assert training.max_steps * training.per_device_train_batch_size * tasks_per_step == 3963 * 32
    assert training.output_dir == reference()["recipe_3963"].output_dir == "runs/ablation/ref_recipe_3963"


def test_a_recipe_from_the_frozen_heads_starts_from_the_frozen_run_of_its_seed(tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("init_heads_from: runs/ablation/r800_frozen\noutput_dir: runs/ablation/ref_recipe_3963\n")
    monkeypatch.setattr(reference_runs, "RECIPE", str(recipe))
    assert [row.name for row in reference_runs.reference_rows()] == ["single_task_3ep", "frozen", "recipe_3963",
                                                                     "main_job_ttq"]
    run = reference()["recipe_3963"].at_seed(144)
    assert run.command[-2:] == ("--init_heads_from", "runs/ablation/r800_frozen/seed144")
    assert run.comparator == "single_task_3ep"
    hint = "run `python benchmarks/ablation.py run --group reference --seeds 144 frozen` first"
    assert hint in ablation.refusal(run, tmp_path)
    smoke = ablation.row_argv(run, tmp_path, smoke=True)
    assert smoke[-2:] == ["--init_heads_from", str(tmp_path / "runs/ablation/r800_frozen/seed144")]


def test_recipe_whose_heads_come_from_no_ablation_row_is_refused(tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("init_heads_from: runs/elsewhere\noutput_dir: runs/ablation/ref_recipe_3963\n")
    monkeypatch.setattr(reference_runs, "RECIPE", str(recipe))
    with pytest.raises(ValueError, match="init_heads_from 'runs/elsewhere' is not the output_dir of an ablation"):
        reference_runs.recipe_row()
    recipe.write_text("output_dir: runs/ablation/ref_recipe_3963\n")
    assert [row.name for row in reference_runs.reference_rows()] == ["single_task_3ep", "recipe_3963", "main_job_ttq"]


def test_the_recipe_is_measured_against_the_reference_seed_with_seed_in_its_own_table(tmp_path):
    rows, rng = reference(), np.random.default_rng(0)
    for seed in (142, 143, 144):
        archive_run(tmp_path, rows["single_task_3ep"], seed, 0.5, 0.5, rng)
        archive_run(tmp_path, rows["recipe_3963"], seed, 0.65, 0.5, rng)
    assert [row.name for row in ablation_stats.table_rows("reference")] == ["single_task_3ep", "recipe_3963",
                                                                            "main_job_ttq"]  # not the heads source
    text, results = ablation_stats.render(tmp_path, n_resamples=200, group="reference")
    point, low, high = results[1].difference["sst"]
    assert low < point < high and 0.1 < point < 0.2 and "| recipe_3963 | the recipe" in text and "| 3/3 |" in text
    assert results[2].difference == {}  # main_job_ttq: no run yet
    page = f"intro\n{ablation_stats.MARKERS['reference'][0]}\nold\n{ablation_stats.MARKERS['reference'][1]}\n"
    assert "old" not in ablation.replace_between_markers(page, text, markers=ablation_stats.MARKERS["reference"])


def test_run_json_records_the_process_start_on_the_time_clock(tmp_path):
    row = ablation.Row("clock", "x", ("python", "-c", "pass"), "runs/ablation/clock")
    before = time.time()
    record = ablation.run_row(row, tmp_path)
    assert before - 0.001 <= record["start_unix"] <= before + 5  # rounded to the millisecond


# ---- time_to_quality.py: the clock and the combination rule ----


def fake_checkpoint(directory: Path, step: int, when: float) -> Path:
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (path / name).write_text("{}")
        os.utime(path / name, (when - 5, when - 5))
    os.utime(path / "model.safetensors", (when, when))  # the file written last
    return path


def test_a_checkpoint_is_placed_at_the_end_of_its_save_since_the_process_start(tmp_path):
    record = {"start": "2026-12-01T10:00:00+00:00", "start_unix": 1_000.25, "wall_seconds": 900}
    start = ttq.process_start(record)
    path = fake_checkpoint(tmp_path, 100, 1_300.0)
    assert ttq.place(path, start, start, start + 900) == pytest.approx(299.75)
    assert ttq.process_start({"start": "2026-12-01T10:00:00+00:00"}) == 1_796_119_200.0  # 2026-12-01 10:00 UTC
    with pytest.raises(ValueError, match="checkpoint-100 was saved at 1300, outside its run"):
        ttq.place(path, start, 1_400.0, 2_000.0)
    assert [step for step, _ in ttq.checkpoints(tmp_path)] == [100]


def test_the_single_task_clock_leaves_out_the_earlier_tasks_dev_evaluations(tmp_path):
    timeline = {"tasks": {"sst": {"start": 1_010.0, "train_end": 1_100.0, "end": 1_160.0},
                          "quora": {"start": 1_165.0, "train_end": 1_300.0, "end": 1_400.0}}}
    sst = fake_checkpoint(tmp_path / "sst", 5, 1_100.0)
    quora = fake_checkpoint(tmp_path / "quora", 5, 1_250.0)
    assert ttq.place(sst, 1_000.0, 1_010.0, 1_100.0, timeline) == pytest.approx(100.0)
    assert ttq.place(quora, 1_000.0, 1_165.0, 1_300.0, timeline) == pytest.approx(190.0)  # 250 - 60 of evaluation


def test_the_single_task_curve_combines_each_tasks_latest_checkpoint_or_its_untrained_one():
    evaluated = {"sst": [{"step": 0, "seconds": 10.0, "value": 0.2}, {"step": 5, "seconds": 50.0, "value": 0.4}],
                 "quora": [{"step": 0, "seconds": 60.0, "value": 0.5}, {"step": 5, "seconds": 90.0, "value": 0.8}],
                 "sts": [{"step": 0, "seconds": 95.0, "value": 0.0}, {"step": 5, "seconds": 120.0, "value": 0.6}]}
    curve = ttq.combine_single_task(evaluated)
    assert [p["seconds"] for p in curve] == [10.0, 50.0, 60.0, 90.0, 95.0, 120.0]
    assert [(p["sst_accuracy"], p["quora_accuracy"], p["sts_pearson"]) for p in curve] == [
        (0.2, 0.5, 0.0), (0.4, 0.5, 0.0), (0.4, 0.5, 0.0), (0.4, 0.8, 0.0), (0.4, 0.8, 0.0), (0.4, 0.8, 0.6)]
    assert curve[-1]["overall"] == pytest.approx((0.4 + 0.8 + 0.8) / 3)
    del evaluated["sts"][0]
    with pytest.raises(ValueError, match="task 'sts' has no checkpoint-0"):
        ttq.combine_single_task(evaluated)


# ---- time_to_quality.py: the multitask evaluation, the archive and the plot ----


def test_multitask_checkpoints_are_evaluated_with_the_library_and_placed(tmp_path, tiny_model, tokenizer, data_dir):
    run_dir = tmp_path / "run"
    for step, when in ((1, 1_100.0), (2, 1_200.0)):
        path = run_dir / f"checkpoint-{step}"
        tiny_model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        for file in path.iterdir():
            os.utime(file, (when, when))
    points = ttq.evaluate_multitask_run(run_dir, {"start_unix": 1_000.0, "wall_seconds": 300.0}, str(data_dir), 4)
    assert [(p["checkpoint"], p["seconds"]) for p in points] == [("checkpoint-1", 100.0), ("checkpoint-2", 200.0)]
    assert set(points[0]) >= {"sst_accuracy", "quora_accuracy", "sts_pearson", "overall"}
    assert points[0]["overall"] == pytest.approx(points[1]["overall"])  # the same weights in both
    assert points[0]["overall"] == pytest.approx(ttq.overall({k: points[0][k] for k in ttq.TASK_KEYS.values()}))
    with pytest.raises(ValueError, match="no checkpoint-\\* folders"):
        ttq.evaluate_multitask_run(tmp_path / "empty", {"start_unix": 0.0, "wall_seconds": 1.0}, str(data_dir), 4)


def test_archived_curves_are_drawn_into_one_png(tmp_path):
    rows = reference()
    for name, seed in (("main_job_ttq", 142), ("single_task_3ep", 143)):
        archive = rows[name].at_seed(seed).archive(tmp_path)
        archive.mkdir(parents=True)
        points = [{"seconds": 30.0, "overall": 0.5}, {"seconds": 600.0, "overall": 0.7}]
        (archive / ttq.OUTPUT).write_text(json.dumps({"points": points}))
    found = ttq.curves(tmp_path)
    assert [(row, seed) for row, seed, _ in found] == [("single_task_3ep", 143), ("main_job_ttq", 142)]
    path = ttq.plot(found, tmp_path / ttq.PLOT)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    path.unlink()
    assert ttq.main(["--plot_only", "--smoke", "--smoke_dir", str(tmp_path)]) == 0 and path.is_file()


def test_the_repair_puts_predictions_written_in_evaluation_order_back_on_their_rows():
    spec = importlib.util.spec_from_file_location("repair", REPO / "benchmarks/repair_single_task_ids.py")
    repair = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repair)
    ids, gold, lengths = [f"r{i}" for i in range(300)], [float(i % 7) / 2 for i in range(300)], [
        (i * 37) % 50 + 3 for i in range(300)]
    order = repair.evaluation_order(lengths, seed=5)
    assert sorted(order) == list(range(300)) and order != list(range(300))
    # what single_task_hf.py wrote before aecff88: the evaluation order's labels and scores, the file order's ids
    written = [{"task": "sts", "id": i, "labels": gold[row], "score": gold[row] + 0.1} for i, row in zip(ids, order)]
    fixed = repair.repaired(written, 5, {"sts": (ids, gold, lengths)})
    assert [r["id"] for r in fixed] == ids and [r["labels"] for r in fixed] == gold
    assert all(r["score"] == pytest.approx(r["labels"] + 0.1) for r in fixed)  # each prediction with its own row
    assert repair.repaired(fixed, 5, {"sts": (ids, gold, lengths)}) is None  # in order: nothing to do
    with pytest.raises(ValueError, match="not the order the run predicted in"):
        repair.repaired(written, 6, {"sts": (ids, gold, lengths)})  # another seed's order
