"""`hf-multitask report RUN_DIR`: PNG plots of a training run, from its logs and from its predictions on a split.

The logs are `trainer_state.json`'s `log_history` (per-task losses `loss_<task>`, SMART terms, gradient surgery
stats `grad_cos_<a>_<b>` and `surgery_adjustments_per_step`, evaluations `eval_<task>_<metric>`). The confusion
matrices and predicted-vs-gold scatters need the saved model and a data directory (`--data`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .checkpointing import last_complete_checkpoint
from .configuration import MultitaskConfig
from .kinds import MissingKindMethod
from .metrics import metric_key, overall_key
from .plots import Series, plot_final_metrics, plot_lines, plot_surgery
from .tasks import TaskSpec

STATE_FILE = "trainer_state.json"
ADAPTER_CONFIG = "adapter_config.json"  # a peft adapter (a LoRA-wrapped run) saves this instead of config.json


# ---- finding and reading a run ----


def find_run_files(run_dir: str | Path) -> tuple[Path, Path]:
    """`(trainer_state.json, model directory)` of a run: RUN_DIR's own files, else its last complete checkpoint's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    checkpoint = last_complete_checkpoint(str(run_dir))
    candidates = [run_dir] + ([Path(checkpoint)] if checkpoint else [])
    states = [d / STATE_FILE for d in candidates if (d / STATE_FILE).is_file()]
    models = [d for d in candidates if (d / "config.json").is_file() or (d / ADAPTER_CONFIG).is_file()]
    if not states:
        raise FileNotFoundError(f"{run_dir}: no {STATE_FILE} in it or in a checkpoint-* directory")
    if not models:
        raise FileNotFoundError(f"{run_dir}: no config.json (saved model) or {ADAPTER_CONFIG} (peft adapter) in it "
                                "or in a checkpoint-* directory")
    return states[0], models[0]


def load_log_history(state_file: str | Path) -> list[dict]:
    """The `log_history` list of a `trainer_state.json`."""
    history = json.loads(Path(state_file).read_text(encoding="utf-8")).get("log_history")
    if not isinstance(history, list):
        raise ValueError(f"{state_file}: no log_history list")
    return history


def load_task_specs(model_dir: str | Path) -> dict[str, TaskSpec]:
    """`{task_name: TaskSpec}` from a saved model's `config.json`, or from the base model's for a peft adapter (a
    LoRA-wrapped run), which its `adapter_config.json` names."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() and (model_dir / ADAPTER_CONFIG).is_file():
        base = json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise FileNotFoundError(f"{model_dir}: a peft adapter whose {ADAPTER_CONFIG} names no base model "
                                    "(base_model_name_or_path); the tasks are in the base's config.json: wrap a "
                                    "model loaded from a directory, so that peft records it")
        return MultitaskConfig.from_pretrained(str(base)).specs
    return MultitaskConfig.from_pretrained(str(model_dir)).specs


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
    keys = {f"{name} {spec.metric}": metric_key(prefix, name, spec.metric) for name, spec in specs.items()}
    return collect_series(history, {**keys, "overall": overall_key(prefix)})


def gradient_cosines(history: Sequence[Mapping], tasks: Sequence[str]) -> Series:
    """Cosine between the shared-parameter gradients of each task pair (`grad_cos_<a>_<b>`, a before b)."""
    return collect_series(history, {f"{a} / {b}": f"grad_cos_{a}_{b}" for i, a in enumerate(tasks)
                                    for b in tasks[i + 1:]})


def surgery_adjustments(history: Sequence[Mapping]) -> Series:
    """Projections (PCGrad) or per-layer adjustments (GradVac) per optimizer step."""
    return collect_series(history, {"adjustments per step": "surgery_adjustments_per_step"})


# ---- predictions ----


def predict_split(model_dir: str | Path, data_dir: str | Path, split: str, max_samples: int | None = None,
                  batch_size: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{task_name: (gold, predicted)}` of a saved model on `<data_dir>/<task>-<split>.*` (class ids or scores)."""
    from transformers import AutoTokenizer

    from .data import load_tokenized
    from .inference import task_logits
    from .kinds.base import label_array
    from .modeling import MultitaskModel

    model = MultitaskModel.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data = load_tokenized(list(model.specs.values()), tokenizer, str(data_dir), split, max_samples)
    out = {}
    for name, dataset in data.items():
        print(f"report: predicting {name} on {split} ({len(dataset)} rows)", flush=True)
        logits = task_logits(model, name, dataset, tokenizer, batch_size)
        spec = model.specs[name]
        out[name] = label_array(dataset["labels"]), spec.task_kind.predictions(spec, logits)
    return out


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
    """One plot per task, as its kind draws it (a confusion matrix, a predicted-vs-gold scatter); a task whose kind
    draws none is skipped with a message."""
    paths = []
    for name, (gold, predicted) in predictions.items():
        try:
            paths.append(specs[name].task_kind.plot_predictions(specs[name], gold, predicted, output, split))
        except MissingKindMethod as missing:
            print(f"report: no prediction plot for task {name!r}: {missing}")
    return paths
