"""`hf-multitask report RUN_DIR`: PNG plots of a training run, from its logs and from its predictions on a split.

The logs are `trainer_state.json`'s `log_history` (per-task losses `loss_<task>`, SMART terms, gradient surgery
stats `grad_cos_<a>_<b>` and `surgery_adjustments_per_step`, evaluations `eval_<task>_<metric>`). The confusion
matrices and predicted-vs-gold scatters need the saved model and a data directory (`--data`).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .checkpointing import last_complete_checkpoint
from .configuration import MultitaskConfig
from .tasks import TaskSpec

Series = dict[str, tuple[list[int], list[float]]]  # {line label: (steps, values)}
STATE_FILE = "trainer_state.json"


# ---- finding and reading a run ----


def find_run_files(run_dir: str | Path) -> tuple[Path, Path]:
    """`(trainer_state.json, model directory)` of a run: RUN_DIR's own files, else its last complete checkpoint's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    checkpoint = last_complete_checkpoint(str(run_dir))
    candidates = [run_dir] + ([Path(checkpoint)] if checkpoint else [])
    states = [d / STATE_FILE for d in candidates if (d / STATE_FILE).is_file()]
    models = [d for d in candidates if (d / "config.json").is_file()]
    if not states:
        raise FileNotFoundError(f"{run_dir}: no {STATE_FILE} in it or in a checkpoint-* directory")
    if not models:
        raise FileNotFoundError(f"{run_dir}: no config.json (saved model) in it or in a checkpoint-* directory")
    return states[0], models[0]


def load_log_history(state_file: str | Path) -> list[dict]:
    """The `log_history` list of a `trainer_state.json`."""
    history = json.loads(Path(state_file).read_text(encoding="utf-8")).get("log_history")
    if not isinstance(history, list):
        raise ValueError(f"{state_file}: no log_history list")
    return history


def load_task_specs(model_dir: str | Path) -> dict[str, TaskSpec]:
    """`{task_name: TaskSpec}` from a saved model's `config.json`."""
    return MultitaskConfig.from_pretrained(str(model_dir)).task_specs


# ---- series from the log history ----


def collect_series(history: Sequence[Mapping], keys: Mapping[str, str]) -> Series:
    """`{label: (steps, values)}` of the entries holding `keys[label]`; the last value wins where a step repeats.

    Labels with no value in the history are left out.
    """
    out = {}
    for label, key in keys.items():
        points = {int(e["step"]): float(e[key]) for e in history if key in e and "step" in e}
        if points:
            steps = sorted(points)
            out[label] = (steps, [points[s] for s in steps])
    return out


def task_losses(history: Sequence[Mapping], tasks: Sequence[str]) -> Series:
    """Training loss of each task (`loss_<task>`) over steps."""
    return collect_series(history, {task: f"loss_{task}" for task in tasks})


def smart_terms(history: Sequence[Mapping], tasks: Sequence[str]) -> Series:
    """SMART's adversarial (`smart_adv_<task>`) and Bregman (`smart_breg_<task>`) terms over steps."""
    return collect_series(history, {f"{task} {term}": f"smart_{term}_{task}" for term in ("adv", "breg")
                                    for task in tasks})


def eval_metrics(history: Sequence[Mapping], specs: Mapping[str, TaskSpec], prefix: str = "eval") -> Series:
    """Each task's evaluation metric (`<prefix>_<task>_<metric>`) and `<prefix>_overall` over steps."""
    keys = {f"{name} {spec.metric}": f"{prefix}_{spec.metric_key}" for name, spec in specs.items()}
    return collect_series(history, {**keys, "overall": f"{prefix}_overall"})


def gradient_cosines(history: Sequence[Mapping], tasks: Sequence[str]) -> Series:
    """Cosine between the shared-parameter gradients of each task pair (`grad_cos_<a>_<b>`, a before b)."""
    return collect_series(history, {f"{a} / {b}": f"grad_cos_{a}_{b}" for i, a in enumerate(tasks)
                                    for b in tasks[i + 1:]})


def surgery_adjustments(history: Sequence[Mapping]) -> Series:
    """Projections (PCGrad) or per-layer adjustments (GradVac) per optimizer step."""
    return collect_series(history, {"adjustments per step": "surgery_adjustments_per_step"})


def ema_smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average `s <- weight * s + (1 - weight) * v`, started at the first value (0: unchanged)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {weight}")
    out, state = [], None
    for value in values:
        state = value if state is None else weight * state + (1.0 - weight) * value
        out.append(state)
    return out


def confusion_matrix(task_name: str, gold: Sequence[int], predicted: Sequence[int], num_labels: int) -> np.ndarray:
    """Counts `[num_labels, num_labels]`, rows = gold class, columns = predicted class."""
    gold, predicted = np.asarray(gold, dtype=int), np.asarray(predicted, dtype=int)
    if gold.shape != predicted.shape:
        raise ValueError(f"Task {task_name!r}: {len(gold)} gold labels but {len(predicted)} predictions")
    for name, ids in (("gold label", gold), ("prediction", predicted)):
        bad = ids[(ids < 0) | (ids >= num_labels)]
        if bad.size:
            raise ValueError(f"Task {task_name!r}: {name} {int(bad[0])} is not a class id in 0..{num_labels - 1}")
    matrix = np.zeros((num_labels, num_labels), dtype=int)
    np.add.at(matrix, (gold, predicted), 1)
    return matrix


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


# ---- predictions ----


def predict_split(model_dir: str | Path, data_dir: str | Path, split: str, max_samples: int | None = None,
                  batch_size: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{task_name: (gold, predicted)}` of a saved model on `<data_dir>/<task>-<split>.*` (class ids or scores)."""
    from transformers import AutoTokenizer

    from .cli import load_tokenized  # cli imports this module: import it late
    from .metrics import predictions_from_logits
    from .modeling import MultitaskModel
    from .trainer import MultitaskTrainer
    from .training_args import MultitaskTrainingArguments

    model = MultitaskModel.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data = load_tokenized(list(model.specs.values()), tokenizer, str(data_dir), split, max_samples)
    out = {}
    with tempfile.TemporaryDirectory() as scratch:
        args = MultitaskTrainingArguments(output_dir=scratch, report_to=[], per_device_eval_batch_size=batch_size,
                                          disable_tqdm=True)
        trainer = MultitaskTrainer(model=model, args=args, processing_class=tokenizer)
        for name, dataset in data.items():
            print(f"report: predicting {name} on {split} ({len(dataset)} rows)", flush=True)
            logits = trainer.predict_task(name, dataset)
            out[name] = np.asarray(dataset["labels"]), predictions_from_logits(model.specs[name], logits)
    return out


# ---- plots ----


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("hf-multitask report needs matplotlib: pip install 'hf-multitask[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_lines(ax, series: Series, smoothing: float, ylabel: str) -> None:
    for label, (steps, values) in series.items():
        if smoothing > 0 and len(values) > 1:
            (line,) = ax.plot(steps, values, alpha=0.25, linewidth=1)
            ax.plot(steps, ema_smooth(values, smoothing), color=line.get_color(), label=label, linewidth=1.6)
        else:
            ax.plot(steps, values, label=label, linewidth=1.6, marker="o" if len(values) < 20 else None,
                    markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_lines(series: Series, path: Path, title: str, ylabel: str, smoothing: float = 0.0,
               log_scale: bool = False) -> Path:
    """One line per entry of `series` over steps (faint raw values under the smoothed line when `smoothing`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _draw_lines(ax, series, smoothing, ylabel)
    if log_scale:
        _log_y(ax, ylabel)
    ax.set_title(title + (f" (EMA smoothing {smoothing})" if smoothing > 0 else ""))
    return _save(fig, path)


def _log_y(ax, ylabel: str) -> None:
    """Log-scale y axis with plain-number tick labels (0.3, 1, 2) instead of 10^x notation."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2, 3, 5)))
    ax.yaxis.set_minor_formatter(plain)
    ax.set_ylabel(f"{ylabel} (log scale)")


def plot_final_metrics(values: Mapping[str, float], path: Path, title: str) -> Path:
    """A bar per metric, with its value written on the bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(values) + 1), 4))
    bars = ax.bar(list(values), list(values.values()), color=[f"C{i}" for i in range(len(values))])
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylim(min(0.0, *values.values()), 1.05)
    ax.set_ylabel("value")
    ax.set_title(title)
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, label_names: Sequence[str], path: Path, title: str) -> Path:
    """Counts in each cell, coloured by the share of the gold class's row."""
    plt = _pyplot()
    size = max(4.5, 0.9 * len(label_names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the gold class", fraction=0.046, pad=0.04)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    ticks = range(len(label_names))
    ax.set_xticks(ticks, label_names, rotation=30, ha="right")
    ax.set_yticks(ticks, label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    return _save(fig, path)


def plot_scatter(gold: np.ndarray, predicted: np.ndarray, score_range: tuple[float, float] | None, path: Path,
                 title: str) -> Path:
    """Predicted against gold scores, with the diagonal y = x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(gold, predicted, s=8, alpha=0.4)
    low, high = score_range or (float(np.min(gold)), float(np.max(gold)))
    ax.plot([low, high], [low, high], color="black", linestyle="--", linewidth=1, label="y = x")
    ax.set_xlabel("gold score")
    ax.set_ylabel("predicted score")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title)
    return _save(fig, path)


def plot_surgery(cosines: Series, adjustments: Series, path: Path, smoothing: float = 0.0) -> Path:
    """Top: cosine of each task pair's gradients; bottom: surgery adjustments per step."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 2))
    _draw_lines(top, cosines, smoothing, "cosine")
    top.axhline(0.0, color="black", linewidth=0.8)
    top.set_xlabel("")
    top.set_title("Cosine between task gradients (shared parameters, before surgery)")
    if adjustments:
        _draw_lines(bottom, adjustments, smoothing, "adjustments / step")
        bottom.set_title("Gradient surgery: projections (PCGrad) or per-layer adjustments (GradVac) per step")
    else:
        bottom.set_axis_off()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # keeps long tick labels and axis labels inside
    fig.clf()
    _pyplot().close(fig)
    return path


# ---- the report ----


def write_report(run_dir: str | Path, output_dir: str | Path | None = None, data_dir: str | Path | None = None,
                 split: str = "dev", smoothing: float = 0.0, max_samples: int | None = None,
                 batch_size: int = 64) -> list[Path]:
    """Write the PNG plots of a run and return their paths.

    Args:
        run_dir: A training run's output directory (its saved model and `trainer_state.json`, or checkpoints).
        output_dir: Where the PNGs go (created); defaults to `RUN_DIR/report`.
        data_dir: A data directory laid out like `../shared/data`: adds a confusion matrix per classification task
            and a predicted-vs-gold scatter per regression task on `split`. `None`: those plots are skipped.
        split: The split of `data_dir` to predict on.
        smoothing: EMA weight in [0, 1) for the training curves (0: raw values).
        max_samples: Predict on the first N rows of each task only.
        batch_size: Prediction batch size.

    Example:

    ```python
    >>> from hf_multitask.report import write_report
    >>> paths = write_report("runs/main", output_dir="/tmp/report", data_dir="../shared/data")  # doctest: +SKIP
    >>> [p.name for p in paths]  # doctest: +SKIP
    ['task_losses.png', 'eval_metrics.png', 'confusion_sst.png', 'confusion_quora.png', 'scatter_sts.png']
    ```
    """
    state_file, model_dir = find_run_files(run_dir)
    output = Path(output_dir) if output_dir is not None else Path(run_dir) / "report"
    output.mkdir(parents=True, exist_ok=True)
    specs = load_task_specs(model_dir)
    paths = _log_plots(load_log_history(state_file), specs, output, smoothing, source=state_file)
    if data_dir is None:
        print("report: no --data given, skipping the confusion matrices and predicted-vs-gold scatters")
    else:
        paths += _prediction_plots(predict_split(model_dir, data_dir, split, max_samples, batch_size), specs,
                                   output, split)
    return paths


def _log_plots(history: list[dict], specs: dict[str, TaskSpec], output: Path, smoothing: float,
               source: Path) -> list[Path]:
    tasks, paths = list(specs), []
    losses = task_losses(history, tasks)
    if losses:
        values = [v for _, vs in losses.values() for v in vs]
        log_scale = min(values) > 0 and max(values) / min(values) > 20
        paths.append(plot_lines(losses, output / "task_losses.png", "Training loss per task", "loss", smoothing,
                                log_scale=log_scale))
    else:
        print(f"report: {source} has no per-task training losses (loss_<task>), skipping task_losses.png")
    smart = smart_terms(history, tasks)
    if smart:
        paths.append(plot_lines(smart, output / "smart_terms.png", "SMART regularisation terms", "value", smoothing))
    paths += _eval_plot(eval_metrics(history, specs), output, source)
    cosines = gradient_cosines(history, tasks)
    if cosines:
        paths.append(plot_surgery(cosines, surgery_adjustments(history), output / "gradient_surgery.png", smoothing))
    return paths


def _eval_plot(metrics: Series, output: Path, source: Path) -> list[Path]:
    if not metrics:
        print(f"report: {source} has no evaluation (eval_<task>_<metric>), skipping eval_metrics.png")
        return []
    path = output / "eval_metrics.png"
    if max(len(steps) for steps, _ in metrics.values()) > 1:
        return [plot_lines(metrics, path, "Evaluation metric per task", "metric")]
    final = {label: values[-1] for label, (_, values) in metrics.items()}
    step = next(iter(metrics.values()))[0][-1]
    return [plot_final_metrics(final, path, f"Evaluation metrics at step {step}")]


def _prediction_plots(predictions: dict[str, tuple[np.ndarray, np.ndarray]], specs: dict[str, TaskSpec],
                      output: Path, split: str) -> list[Path]:
    paths = []
    for name, (gold, predicted) in predictions.items():
        spec = specs[name]
        if spec.kind == "classification":
            matrix = confusion_matrix(name, gold, predicted, spec.num_labels)
            accuracy = np.trace(matrix) / max(matrix.sum(), 1)
            title = f"{name}: confusion matrix on {split} (n={matrix.sum()}, accuracy {accuracy:.3f})"
            paths.append(plot_confusion(matrix, spec.label_names, output / f"confusion_{name}.png", title))
        else:
            r = pearson_r(gold, predicted)
            title = f"{name}: predicted vs gold on {split} (n={len(gold)}, Pearson r = {r:.3f})"
            paths.append(plot_scatter(gold, predicted, spec.score_range, output / f"scatter_{name}.png", title))
    return paths


def report(argv: list[str]) -> list[Path]:
    """`hf-multitask report RUN_DIR [--data DIR] [--split dev] [--output DIR]`: writes and lists the PNGs."""
    parser = argparse.ArgumentParser(prog="hf-multitask report", description="Plot a training run.")
    parser.add_argument("run_dir", help="A run's output directory (saved model + trainer_state.json, or checkpoints).")
    parser.add_argument("--data", help="Data directory for the confusion matrices and scatters (default: skip them).")
    parser.add_argument("--split", default="dev", help="Split of --data to predict on.")
    parser.add_argument("--output", help="Directory for the PNGs (default: RUN_DIR/report).")
    parser.add_argument("--smoothing", type=float, default=0.0, help="EMA weight in [0, 1) for training curves.")
    parser.add_argument("--max_samples", type=int, help="Predict on the first N rows of each task.")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)
    if not 0.0 <= args.smoothing < 1.0:
        parser.error(f"--smoothing must be in [0, 1), got {args.smoothing}")
    try:
        paths = write_report(args.run_dir, args.output, args.data, args.split, args.smoothing, args.max_samples,
                             args.batch_size)
    except FileNotFoundError as err:  # no run, no trainer_state.json, no data file: a message, not a traceback
        raise SystemExit(f"hf-multitask report: {err}") from None
    print(f"report: wrote {len(paths)} file(s)")
    for path in paths:
        print(f"  {path}")
    return paths
