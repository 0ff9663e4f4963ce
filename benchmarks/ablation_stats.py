"""The ablation's table from its archive: mean ± sd over seeds per row, and each row's paired difference to its
comparator with a 95% interval that covers both seed variance and dev-set sampling, and a verdict from it.

The interval is scipy's bootstrap (`scipy.stats.bootstrap`, percentile method) over independent samples: the seed
pairs (the row's k-th seed with its comparator's k-th seed, resampled with replacement) and, per task, the dev
examples (resampled with replacement, the same examples for both sides of a pair). One resample's statistic is the
mean over its seed pairs of (row's score - comparator's score), each score computed on the resampled examples. The
verdict reads the interval of the overall score's difference: "helps" when it lies above 0, "hurts" below, and "no
effect detectable at this budget" when it covers 0. With 3 seeds the seed part of the interval is narrow-biased
(a bootstrap of n values has (n - 1) / n of their variance, and 3 values have only 10 distinct resamples): the A/A
row (the main settings against themselves with other seeds) shows how wide "no effect" is.

    python benchmarks/ablation_stats.py                   # the tables and the plot into docs/ (from the archive)
    python benchmarks/ablation_stats.py --stdout          # print the tables only
    python benchmarks/ablation_stats.py --group reference # the reference-budget rows' tables (no plot)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402  (benchmarks/ is not a package)

TASKS = (("sst", "SST acc"), ("quora", "Quora acc"), ("sts", "STS r"))
PLOT = "docs/img/ablation_differences.png"
MARKERS = {"main": ablation.MARKERS, "reference": ("<!-- reference-table:start -->", "<!-- reference-table:end -->")}
RESAMPLES = 2000


@dataclass
class Run:
    """One done run: its seed, reported metrics, `run.json` record and per-task predictions (`read_predictions`)."""

    seed: int
    metrics: dict
    record: dict
    predictions: dict


def done_runs(row: ablation.Row, root: Path) -> list[Run]:
    """The row's done runs, in its seed order."""
    runs = []
    for run in row.runs():
        state, record, metrics = ablation.row_state(run, root)
        if state == "done":
            predictions = ablation.read_predictions(run.archive(root) / ablation.PREDICTIONS)
            runs.append(Run(run.seed, metrics, record, predictions))
    return runs


def scores(run: Run, examples: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Each task's metric on `examples` (indices per task; all when None), and `overall`: the mean of the
    accuracies and (r + 1) / 2."""
    out, units = {}, []
    for task, data in run.predictions.items():
        index = slice(None) if examples is None else examples[task]
        metric, out[task] = ablation.task_score(data["gold"][index], data["predicted"][index])
        units.append((out[task] + 1) / 2 if metric == "pearson" else out[task])
    out["overall"] = float(np.mean(units))
    return out


def check_same_examples(a: Run, b: Run) -> None:
    for task, data in a.predictions.items():
        other = b.predictions.get(task)
        if other is None or not np.array_equal(data["id"], other["id"]):
            raise SystemExit(f"seed {a.seed} and seed {b.seed}: the {task} predictions are not on the same dev "
                             "examples in the same order")


def paired_intervals(row_runs: list[Run], base_runs: list[Run], keys: list[str], seed: int = 0,
                     n_resamples: int = RESAMPLES) -> dict[str, tuple[float, float, float]]:
    """`{key: (difference, low, high)}` for each of `keys` (tasks and `overall`): the mean over seed pairs of row
    minus comparator, and its 95% percentile-bootstrap interval resampling seed pairs and each task's dev examples
    independently. One bootstrap with a vector-valued statistic: each resample scores every key once, and every key
    sees the same resamples (as separate bootstraps seeded alike would)."""
    pairs = list(zip(row_runs, base_runs))
    for a, b in pairs:
        check_same_examples(a, b)
    tasks = list(pairs[0][0].predictions)
    sizes = [len(pairs[0][0].predictions[task]["id"]) for task in tasks]

    def statistic(seed_index, *example_index):
        examples = {task: np.asarray(index, dtype=int) for task, index in zip(tasks, example_index)}
        differences = []
        for k in np.asarray(seed_index, dtype=int):
            row, base = scores(pairs[k][0], examples), scores(pairs[k][1], examples)
            differences.append([row[key] - base[key] for key in keys])
        return np.mean(differences, axis=0)

    data = (np.arange(len(pairs)), *(np.arange(size) for size in sizes))
    point = statistic(*data)
    result = bootstrap(data, statistic, n_resamples=n_resamples, paired=False, vectorized=False,
                       method="percentile", confidence_level=0.95, rng=np.random.default_rng(seed))
    low, high = np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high)
    return {key: (float(point[i]), float(low[i]), float(high[i])) for i, key in enumerate(keys)}


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "helps"
    if high < 0:
        return "hurts"
    return "no effect detectable at this budget"


@dataclass
class RowResult:
    """A row's seeds done, mean and sd per key (tasks and `overall`), and per key the paired difference to the
    comparator with its interval (when both have at least 2 paired seeds done)."""

    row: ablation.Row
    runs: list[Run]
    mean: dict[str, float]
    sd: dict[str, float]
    difference: dict[str, tuple[float, float, float]]


def summarize(row: ablation.Row, root: Path, n_resamples: int = RESAMPLES, group: str = "main") -> RowResult:
    runs = done_runs(row, root)
    keys = list(scores(runs[0])) if runs else []
    values = {key: [float(scores(run)[key]) for run in runs] for key in keys}
    mean = {key: float(np.mean(v)) if v else float("nan") for key, v in values.items()}
    sd = {key: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan") for key, v in values.items()}
    difference = {}
    if row.comparator is not None:
        comparator = ablation.rows_by_name(group)[row.comparator]
        base, base_seeds = {run.seed: run for run in done_runs(comparator, root)}, comparator.seeds
        pairs = [(run, base[base_seeds[row.seeds.index(run.seed)]]) for run in runs
                 if base_seeds[row.seeds.index(run.seed)] in base]
        if len(pairs) >= 2:
            mine, theirs = [a for a, _ in pairs], [b for _, b in pairs]
            difference = paired_intervals(mine, theirs, list(values), n_resamples=n_resamples)
    return RowResult(row, runs, mean, sd, difference)


def cell(result: RowResult, key: str, digits: int = 3) -> str:
    if key not in result.mean:
        return "—"
    sd = "" if np.isnan(result.sd[key]) else f" ± {result.sd[key]:.{digits}f}"
    return f"{result.mean[key]:.{digits}f}{sd}"


def difference_cell(result: RowResult, key: str) -> str:
    if key not in result.difference:
        return "—"
    point, low, high = result.difference[key]
    return f"{point:+.4f} [{low:+.4f}, {high:+.4f}]"


def main_table(results: list[RowResult]) -> str:
    """Per row: seeds done, mean ± sd per task and overall, the overall difference to the comparator with its 95%
    interval, the verdict, mean wall time and mean load."""
    header = ("| row | what changes | against | seeds | SST acc | Quora acc | STS r | overall | Δ overall [95% CI] "
              "| verdict | wall time (mean) | load (mean) |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in results:
        verdict_text = verdict(*r.difference["overall"][1:]) if "overall" in r.difference else "—"
        wall = [run.record["wall_seconds"] for run in r.runs]
        load = [run.record.get("load_average", {}).get("mean") for run in r.runs]
        load = [v for v in load if v is not None]
        lines.append("| " + " | ".join([
            r.row.name, r.row.changes, r.row.comparator or "—", f"{len(r.runs)}/{len(r.row.seeds)}",
            *(cell(r, task) for task, _ in TASKS), cell(r, "overall", 4), difference_cell(r, "overall"),
            verdict_text, ablation.format_seconds(np.mean(wall)) if wall else "—",
            f"{np.mean(load):.1f}" if load else "—"]) + " |")
    return "\n".join(lines)


def task_difference_table(results: list[RowResult]) -> str:
    """Per row: the paired difference to the comparator per task, with 95% intervals."""
    lines = ["| row | against | " + " | ".join(f"Δ {name} [95% CI]" for _, name in TASKS) + " |",
             "|---|---|" + "---:|" * len(TASKS)]
    for r in results:
        if r.row.comparator is not None:
            cells = [difference_cell(r, task) for task, _ in TASKS]
            lines.append(f"| {r.row.name} | {r.row.comparator} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def commands_table(rows: list[ablation.Row]) -> str:
    lines = ["| row | seeds | command (each seed adds `--seed S --output_dir <dir>/seed<S>`) |", "|---|---|---|"]
    for row in rows:
        command = row.display.replace("|", "\\|")
        lines.append(f"| {row.name} | {', '.join(map(str, row.seeds))} | `{command}` |")
    return "\n".join(lines)


def plot_differences(results: list[RowResult], path: Path) -> Path | None:
    """Each row's overall difference to its comparator as a point with its 95% interval, 0 marked."""
    shown = [r for r in results if "overall" in r.difference]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(shown) + 1.6))
    for y, r in enumerate(reversed(shown)):
        point, low, high = r.difference["overall"]
        color = {"helps": "tab:green", "hurts": "tab:red"}.get(verdict(low, high), "tab:gray")
        ax.errorbar(point, y, xerr=[[point - low], [high - point]], fmt="o", color=color, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(shown)), [f"{r.row.name} vs {r.row.comparator}" for r in reversed(shown)])
    ax.set_xlabel("Δ dev overall vs comparator, mean over seed pairs\n"
                  "(95% bootstrap interval over seeds and dev examples)")
    ax.set_title("Ablation: paired difference to each row's comparator")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table_rows(group: str) -> list[ablation.Row]:
    """The group's rows that are measured against another or that another is measured against (not the rows that
    only provide heads, such as the reference group's `frozen`)."""
    rows = ablation.GROUPS[group]()
    return [row for row in rows if row.comparator or any(other.comparator == row.name for other in rows)]


def render(root: Path, n_resamples: int = RESAMPLES, group: str = "main") -> tuple[str, list[RowResult]]:
    rows = table_rows(group)
    results = [summarize(row, root, n_resamples, group) for row in rows]
    text = "\n\n".join([main_table(results), "Paired differences per task:", task_difference_table(results),
                        "Commands:", commands_table(rows)])
    return text, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stdout", action="store_true", help="Print the tables instead of writing docs/.")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--group", choices=sorted(MARKERS), default="main")
    args = parser.parse_args(argv)
    text, results = render(ablation.REPO, args.resamples, args.group)
    if args.stdout:
        print(text)
        return 0
    docs = ablation.REPO / ablation.DOCS
    docs.write_text(ablation.replace_between_markers(docs.read_text(encoding="utf-8"), text,
                                                     markers=MARKERS[args.group]), encoding="utf-8")
    plot = plot_differences(results, ablation.REPO / PLOT) if args.group == "main" else None
    why = "no row has an interval yet" if args.group == "main" else f"none for the {args.group} group"
    print(f"tables written to {docs}" + (f", plot to {plot}" if plot else f" ({why}: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
