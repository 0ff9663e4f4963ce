"""Time to quality: dev overall against wall-clock seconds for the main job and the single-task reference, from
evaluations of their saved checkpoints after training (issue 16, part 4; docs/results.md, "Time to quality").

The runs are the `reference` group's `main_job_ttq` and `single_task_3ep` (benchmarks/reference_runs.py); they
save model-only checkpoints and never evaluate during training (an evaluation costs about a minute on the 2-core
machine and would distort the clock). Each checkpoint is evaluated here on the full dev sets: the multitask ones
with the library (`MultitaskModel.from_pretrained`, `MultitaskTrainer.evaluate`), the single-task ones with
`AutoModelForSequenceClassification` and single_task_hf.py's own data loading and metrics.

The clock: a checkpoint's time is the seconds from the start of the run's process (`run.json`'s `start_unix`, the
queue's `time.time()` just before it started the process; `start`, to the second, in records without it) to the
end of the checkpoint's save (the newest modification time of its files). It includes Python's start-up and
imports, loading the encoder, reading and tokenising the data, the training steps and the saves of the earlier
checkpoints (87 MB each); for the single-task reference also each later task's model and data loading.
It excludes every dev evaluation: the multitask job evaluates only after its last checkpoint, and the time the
single-task reference spends evaluating a finished task (`train_end` to `end` in its timeline.json) is taken off
the times of the later tasks' checkpoints. Times come from file modification times, so this runs on the machine
that trained, before runs/ is cleaned or copied; a checkpoint saved outside its run (or, single-task, outside its
task's span) is refused, naming it.

The single-task reference's overall at time t combines each task's latest checkpoint saved by t, and the untrained
checkpoint-0 for a task not started yet; there is a point at every checkpoint of every task.

    python benchmarks/time_to_quality.py              # evaluate the done runs not evaluated yet; draw the plot
    python benchmarks/time_to_quality.py --plot_only  # redraw docs/img/time_to_quality.png from the archive
    python benchmarks/time_to_quality.py --smoke      # the runs of `ablation.py run --group reference --smoke`
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_multitask import MultitaskModel, MultitaskTrainer, MultitaskTrainingArguments, load_tokenized

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402  (benchmarks/ is not a package)
import reference_runs  # noqa: E402

OUTPUT = "time_to_quality.json"
PLOT = "docs/img/time_to_quality.png"
TASK_KEYS = {"sst": "sst_accuracy", "quora": "quora_accuracy", "sts": "sts_pearson"}
LABELS = {"main_job_ttq": "main job (one multitask model, 1,400 batches)",
          "single_task_3ep": "single-task reference (3 models, 3 epochs each: 3,963 batches)"}
COLORS = {"main_job_ttq": "tab:blue", "single_task_3ep": "tab:orange"}
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def load_single_task_script():
    """examples/cs224n/single_task_hf.py as a module (examples/ is not a package): its data loading and metrics."""
    path = ablation.REPO / "examples/cs224n/single_task_hf.py"
    spec = importlib.util.spec_from_file_location("single_task_hf", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the clock ----


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """`(step, path)` of every `checkpoint-<step>` folder in `directory`, by step."""
    found = [(int(m.group(1)), p) for p in directory.glob("checkpoint-*") if (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def saved_at(checkpoint: Path) -> float:
    """When the checkpoint's save ended: the newest modification time (`time.time()` clock) of its files."""
    times = [p.stat().st_mtime for p in checkpoint.rglob("*") if p.is_file()]
    if not times:
        raise ValueError(f"{checkpoint}: an empty checkpoint folder")
    return max(times)


def process_start(record: dict) -> float:
    """The run's process start on the `time.time()` clock, from its `run.json` record."""
    if record.get("start_unix") is not None:
        return float(record["start_unix"])
    return datetime.fromisoformat(record["start"]).timestamp()


def evaluation_pause(timeline: dict, when: float) -> float:
    """Seconds the single-task reference spent on dev evaluations before `when`: `end - train_end` of every task that
    ended by then."""
    return sum(span["end"] - span["train_end"] for span in timeline["tasks"].values() if span["end"] <= when)


def place(checkpoint: Path, start: float, low: float, high: float, timeline: dict | None = None) -> float:
    """The checkpoint's seconds on the run's clock (see the module docstring), after checking that it was saved
    within [low, high] (its run, or its task's span, on the `time.time()` clock)."""
    when = saved_at(checkpoint)
    if not low - 1 <= when <= high + 1:  # 1 s: run.json's `start` is rounded to the second
        raise ValueError(f"{checkpoint} was saved at {when:.0f}, outside its run or task ({low:.0f} to {high:.0f}): "
                         "left over from another run, or copied (which resets the times it is placed by)")
    return when - start - (evaluation_pause(timeline, when) if timeline else 0.0)


def overall(scores: dict[str, float]) -> float:
    """The study's overall: the mean of the accuracies and (r + 1) / 2 of the Pearson r."""
    return sum((v + 1) / 2 if key.endswith("_pearson") else v for key, v in scores.items()) / len(scores)


def combine_single_task(evaluated: dict[str, list[dict]]) -> list[dict]:
    """The single-task reference's curve from each task's evaluated checkpoints (`{task: [{"step", "seconds",
    "value"}]}`, each with a step-0 checkpoint): a point at every checkpoint's time, where each task counts with its
    latest checkpoint by then, or its checkpoint-0 (untrained) before its first."""
    for task, points in evaluated.items():
        if not any(p["step"] == 0 for p in points):
            raise ValueError(f"task {task!r} has no checkpoint-0 (the untrained model its score starts from)")
    times = sorted({p["seconds"] for points in evaluated.values() for p in points})
    curve = []
    for t in times:
        scores = {}
        for task, points in evaluated.items():
            done = [p for p in points if p["seconds"] <= t and p["step"] > 0]
            latest = max(done, key=lambda p: p["seconds"]) if done else next(p for p in points if p["step"] == 0)
            scores[TASK_KEYS[task]] = latest["value"]
        curve.append({"seconds": round(t, 1), "overall": overall(scores), **scores})
    return curve


# ---- evaluating the checkpoints ----


def evaluate_multitask_run(run_dir: Path, record: dict, data_dir: str, limit: int | None) -> list[dict]:
    """Every checkpoint of a multitask run on the dev sets (the library's evaluation): one point each."""
    found = checkpoints(run_dir)
    if not found:
        raise ValueError(f"{run_dir}: no checkpoint-* folders (removed, or the run was made elsewhere)")
    start, end = process_start(record), process_start(record) + record["wall_seconds"]
    tokenizer = AutoTokenizer.from_pretrained(found[0][1])
    data, points = None, []
    for step, path in found:
        model = MultitaskModel.from_pretrained(path)
        specs = list(model.specs.values())
        if data is None:  # every checkpoint of the run has the same tasks and tokenizer
            data = load_tokenized(specs, tokenizer, data_dir, "dev", limit)
        with tempfile.TemporaryDirectory() as tmp:
            args = MultitaskTrainingArguments(output_dir=tmp, report_to=[], per_device_eval_batch_size=128)
            metrics = MultitaskTrainer(model=model, args=args, processing_class=tokenizer).evaluate(data)
        scores = {spec.metric_key: metrics[f"eval_{spec.metric_key}"] for spec in specs}
        seconds = place(path, start, start, end)
        points.append({"checkpoint": path.name, "step": step, "seconds": round(seconds, 1),
                       "overall": overall(scores), **scores})
        print(f"  {path.name}: {seconds:.0f} s, overall {points[-1]['overall']:.4f}", flush=True)
    return points


def evaluate_task_checkpoints(task: str, task_dir: Path, span: dict, start: float, timeline: dict, data_dir: str,
                              limit: int | None) -> list[dict]:
    """Every checkpoint of one single-task model on its task's dev set (single_task_hf.py's loading and metric)."""
    script = load_single_task_script()
    metric = script.TASKS[task][0]
    found = checkpoints(task_dir)
    if not found:
        raise ValueError(f"{task_dir}: no checkpoint-* folders (removed, or the run was made elsewhere)")
    tokenizer = AutoTokenizer.from_pretrained(found[0][1])
    dev, _ = script.load_split(task, data_dir, "dev", limit, tokenizer)
    points = []
    for step, path in found:
        model = AutoModelForSequenceClassification.from_pretrained(path)
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=128, report_to="none",
                                     dataloader_pin_memory=False)
            trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                              compute_metrics=script.metric_fn(metric))
            value = trainer.evaluate(dev)[f"eval_{metric}"]
        seconds = place(path, start, span["start"], span["train_end"], timeline)
        points.append({"checkpoint": f"{task}/{path.name}", "step": step, "seconds": seconds, "value": value})
        print(f"  {task}/{path.name}: {seconds:.0f} s, {metric} {value:.4f}", flush=True)
    return points


def evaluate_single_task_run(run_dir: Path, record: dict, data_dir: str, limit: int | None) -> tuple[dict, list]:
    """Each task's checkpoints, placed on the run's clock with its timeline.json; returns (per task, curve)."""
    timeline = ablation.read_json(run_dir / "timeline.json")
    if timeline is None:
        raise ValueError(f"{run_dir}: no timeline.json (single_task_hf.py writes it; run with --save_steps)")
    start = process_start(record)
    evaluated = {task: evaluate_task_checkpoints(task, run_dir / task, span, start, timeline, data_dir, limit)
                 for task, span in timeline["tasks"].items()}
    return evaluated, combine_single_task(evaluated)


def evaluate_run(run: ablation.Row, root: Path, data_dir: str, limit: int | None) -> Path:
    """Evaluate a done run's checkpoints and write `time_to_quality.json` into its archive."""
    _, record, _ = ablation.row_state(run, root)
    run_dir = root / run.output_dir
    result = {"row": run.name, "seed": run.seed, "clock": "seconds from the process start to the end of each "
              "checkpoint's save, dev evaluations excluded (benchmarks/time_to_quality.py)",
              "process_start_unix": process_start(record), "run_wall_seconds": record["wall_seconds"],
              "data_dir": os.path.relpath(data_dir, ablation.REPO), "max_eval_samples": limit}
    if run.is_cli:
        result["points"] = evaluate_multitask_run(run_dir, record, data_dir, limit)
    else:
        result["tasks"], result["points"] = evaluate_single_task_run(run_dir, record, data_dir, limit)
        result["timeline"] = ablation.read_json(run_dir / "timeline.json")
    path = run.archive(root) / OUTPUT
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


# ---- the plot ----


def curves(root: Path) -> list[tuple[str, int, list[dict]]]:
    """`(row, seed, points)` of every archived time_to_quality.json of the clock rows."""
    rows = [row for row in reference_runs.reference_rows() if row.name in reference_runs.CLOCK_ROWS]
    found = []
    for run in ablation.expand_runs(rows):
        data = ablation.read_json(run.archive(root) / OUTPUT)
        if data is not None:
            found.append((run.name, run.seed, data["points"]))
    return found


def plot(found: list[tuple[str, int, list[dict]]], path: Path) -> Path:
    """Dev overall against wall-clock seconds, one step curve per run (a model's score holds until the next
    checkpoint), one colour per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row, seed, points in found:
        ax.plot([p["seconds"] for p in points], [p["overall"] for p in points], drawstyle="steps-post", marker="o",
                markersize=3, color=COLORS.get(row), label=f"{LABELS.get(row, row)}, seed {seed}")
    ax.set_xlabel("wall-clock seconds since the run's process started (dev evaluations excluded)")
    ax.set_ylabel("dev overall")
    ax.set_title("Time to quality: evaluations of saved checkpoints")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=lambda text: tuple(int(v) for v in text.split(",")))
    parser.add_argument("--force", action="store_true", help="Evaluate runs again that already have the JSON.")
    parser.add_argument("--plot_only", action="store_true", help="Only redraw the plot from the archive.")
    parser.add_argument("--smoke", action="store_true", help="The smoke runs in --smoke_dir, 64 dev rows per task.")
    parser.add_argument("--smoke_dir", default=ablation.SMOKE_DIR)
    parser.add_argument("--data_dir", default=str(ablation.REPO / ablation.DATA_DIR))
    args = parser.parse_args(argv)
    root, limit = (Path(args.smoke_dir), 64) if args.smoke else (ablation.REPO, None)
    rows = [row for row in reference_runs.reference_rows() if row.name in reference_runs.CLOCK_ROWS]
    for run in [] if args.plot_only else ablation.expand_runs(rows, args.seeds):
        if ablation.row_state(run, root)[0] != "done":
            print(f"skip {run.label}: not done")
        elif (run.archive(root) / OUTPUT).is_file() and not args.force:
            print(f"skip {run.label}: evaluated ({run.archive(root) / OUTPUT})")
        else:
            print(f"=== {run.label}: evaluating the checkpoints in {root / run.output_dir}", flush=True)
            print(f"written {evaluate_run(run, root, args.data_dir, limit)}")
    found = curves(root)
    if not found:
        print("no evaluated run yet: no plot")
        return 0
    print(f"plot written to {plot(found, root / PLOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
