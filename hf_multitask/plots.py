"""Plots for `hf-multitask report` and the task kinds (matplotlib, imported when a plot is drawn)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

Series = dict[str, tuple[list[int], list[float]]]  # {line label: (steps, values)}


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
