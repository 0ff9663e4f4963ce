"""The queue's `reference` group: the recipe at the single-task reference's budget, and the runs behind the
time-to-quality plot (issue 16, parts 3 and 4; docs/results.md).

Three single-task fine-tunes of 3 epochs each, what a user runs instead of the multitask job, take 3,963 batches
of 32 on the shared data (801 SST + 2,595 Quora + 567 STS). The rows, in the queue's order:

- `single_task_3ep`: those three plain-HF fine-tunes (`examples/cs224n/single_task_hf.py
  --num_train_epochs_per_task 3`), saving model-only checkpoints every 200 steps of each task, the untrained
  `checkpoint-0` and `timeline.json`, for the time-to-quality plot.
- the ablation rows the recipe starts from (`init_heads_from` in the recipe's config; `frozen` for now), at this
  group's seeds: the recipe's run with seed S starts from their run with seed S, as `best` does in the ablation.
- `recipe_3963`: the recipe, `examples/cs224n/reference/recipe.yaml` (written by `choose_recipe.py --write` from
  the ablation's means), at the same 3,963 batches; measured against `single_task_3ep`, seed with seed.
- `main_job_ttq`: the README's main job (`examples/cs224n/main.yaml`, 1,400 batches) saving model-only checkpoints
  every 100 steps, for the time-to-quality plot. The rows with checkpoints never resume from them: a resumed run's
  clock would miss the time before the interruption.

Seeds 142, 143 and 144 are new, so no run here shares a seed with an ablation run (42-47). `single_task_3ep` and
`recipe_3963` get all three: their paired difference is part 3's result, and its interval needs seed pairs like
the ablation's. `main_job_ttq` gets one (142): it gives the shape of the main job's curve on the clock, whose time
axis moves with the machine's load at least as much as with the seed; the seed spread of the main settings is
what the ablation's `cross_annealed` and `aa` rows measure, and each seed here costs a run of under 20 minutes plus
14 checkpoint evaluations (about a minute each). More seeds: extend `MAIN_JOB_SEEDS`.
Cost on the 2-core machine, unloaded: about 40 minutes per run of `single_task_3ep` and `recipe_3963`, 5 per
`frozen`, under 20 for `main_job_ttq`: about 4.5 hours for the group.

    python benchmarks/ablation.py run --group reference            # every run not done yet
    python benchmarks/ablation.py run --group reference --smoke --seeds 142
    python benchmarks/time_to_quality.py                           # then: evaluate the checkpoints, draw the plot
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402  (benchmarks/ is not a package)

SEEDS = (142, 143, 144)
MAIN_JOB_SEEDS = (142,)
RECIPE = "examples/cs224n/reference/recipe.yaml"
REFERENCE_BATCHES = 3963  # 3 epochs of SST (267 batches), Quora (865) and STS (189)
CLOCK_ROWS = ("main_job_ttq", "single_task_3ep")  # the rows whose checkpoints time_to_quality.py evaluates


def recipe_row() -> ablation.Row:
    """`recipe_3963` from the recipe's config: its output_dir, and the ablation row whose heads it starts from (read
    from `init_heads_from`, which must be an ablation row's output_dir so the queue can pair the seeds)."""
    config = yaml.safe_load((ablation.REPO / RECIPE).read_text(encoding="utf-8"))
    source, by_dir = config.get("init_heads_from"), {row.output_dir: row.name for row in ablation.main_rows()}
    if source is not None and source not in by_dir:
        raise ValueError(f"{RECIPE}: init_heads_from {source!r} is not the output_dir of an ablation row, so the "
                         f"queue cannot run it with the recipe's seeds; one of: {', '.join(sorted(by_dir))}")
    return ablation.Row("recipe_3963", f"the recipe ({RECIPE}) at the reference's {REFERENCE_BATCHES:,} batches of 32",
                        ("hf-multitask", "train", RECIPE), config["output_dir"],
                        needs=() if source is None else (by_dir[source],), comparator="single_task_3ep", seeds=SEEDS)


def needed_rows(row: ablation.Row) -> list[ablation.Row]:
    """The ablation rows `row` starts from, those they start from first, at this group's seeds."""
    main, out = ablation.rows_by_name(), []
    for name in row.needs:
        out += [*needed_rows(main[name]), replace(main[name], seeds=SEEDS, comparator=None)]  # heads only
    return out


def reference_rows() -> list[ablation.Row]:
    """The group's rows in the queue's order (a row's comparator and the rows it starts from come before it)."""
    single = ablation.Row(
        "single_task_3ep", "3 separate single-task fine-tunes of 3 epochs each (3,963 batches of 32), plain HF "
        "Trainer, checkpoints every 200 steps", ("python", "examples/cs224n/single_task_hf.py",
                                                 "--num_train_epochs_per_task", "3", "--save_steps", "200"),
        "runs/ablation/ref_single_task_3ep", seeds=SEEDS, resumable=False,
        smoke_flags=("--num_train_epochs_per_task", "1", "--save_steps", "1"))  # 64 rows: 2 steps per task
    main_job = ablation.Row(
        "main_job_ttq", "the main job (1,400 batches of 32), checkpoints every 100 steps",
        ("hf-multitask", "train", "examples/cs224n/main.yaml", "--save_strategy", "steps", "--save_steps", "100",
         "--save_only_model", "true"), "runs/ablation/ref_main_job_ttq", comparator="single_task_3ep",
        seeds=MAIN_JOB_SEEDS, resumable=False, smoke_flags=("--max_steps", "2", "--save_steps", "1"))
    recipe = recipe_row()
    return [single, *needed_rows(recipe), recipe, main_job]
