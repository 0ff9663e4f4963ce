"""The ablation's table from its archive: mean ± sd over seeds per row, and each row's paired difference to its
comparator with a 95% interval that covers both seed variance and dev-set sampling, and a verdict from it.

The difference is the mean over seed pairs (the row's k-th seed with its comparator's k-th seed) of row minus
comparator. Its interval adds the two sources of variance: the seeds' (the sample variance of the n per-pair
differences over n, with n - 1 degrees of freedom) and the dev set's (the variance of the mean difference when
each task's dev examples are resampled, the same examples for both sides of every pair: scipy's bootstrap,
`scipy.stats.bootstrap`), and reads `difference ± t(0.975, n - 1) × sqrt(seed variance + dev variance)`: the
degrees of freedom of the seeds' part, which is conservative (the dev part, estimated from thousands of examples,
would allow more; `t(0.975, 2)` = 4.30 against the normal 1.96). The seeds' part is not
bootstrapped: with 3 seed pairs a percentile bootstrap's interval is the range of the three differences (each
extreme pair is drawn three times in 1 resample of 27), which under no effect excludes 0 one time in four.
The verdict reads the interval of the overall score's difference: "helps" when it lies above 0, "hurts" below,
and "no effect detectable at this budget" when it covers 0.

    python benchmarks/ablation_stats.py                   # the tables and the plot into docs/ (from the archive)
    python benchmarks/ablation_stats.py --stdout          # print the tables only
    python benchmarks/ablation_stats.py --group reference # the reference-budget rows' tables (no plot)
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap
from scipy.stats import t as student_t

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
    """Both runs predict the same tasks' dev examples in the same order, each id with the same gold label (ids alone
    passed single_task_hf.py's predictions whose ids named other rows: the pairing of dev examples was wrong)."""
    if set(a.predictions) != set(b.predictions):
        raise SystemExit(f"seed {a.seed} and seed {b.seed}: predictions for tasks {sorted(a.predictions)} and "
                         f"{sorted(b.predictions)}")
    for task, data in a.predictions.items():
        other = b.predictions[task]
        if not np.array_equal(data["id"], other["id"]):
            raise SystemExit(f"seed {a.seed} and seed {b.seed}: the {task} predictions are not on the same dev "
                             "examples in the same order")
        differ = int((~np.isclose(data["gold"].astype(float), other["gold"].astype(float), rtol=0, atol=1e-5)).sum())
        if differ:
            raise SystemExit(f"seed {a.seed} and seed {b.seed}: {differ} of the {task} predictions' ids carry "
                             "another gold label in one run than in the other: their ids do not name their rows")


def paired_intervals(row_runs: list[Run], base_runs: list[Run], keys: list[str], seed: int = 0,
                     n_resamples: int = RESAMPLES) -> dict[str, tuple[float, float, float]]:
    """`{key: (difference, low, high)}` for each of `keys` (tasks and `overall`): the mean over seed pairs of row
    minus comparator, and its 95% interval from the seeds' and the dev set's variance (the module's docstring).
    One bootstrap with a vector-valued statistic: every key sees the same resampled dev examples."""
    pairs = list(zip(row_runs, base_runs))
    for a, b in pairs:
        check_same_examples(a, b)
    tasks = list(pairs[0][0].predictions)
    sizes = [len(pairs[0][0].predictions[task]["id"]) for task in tasks]

    def differences(examples: dict[str, np.ndarray] | None) -> np.ndarray:
        """`[pairs, keys]`: each pair's row-minus-comparator score on `examples` (all when None)."""
        return np.array([[row[key] - base[key] for key in keys]
                         for row, base in ((scores(a, examples), scores(b, examples)) for a, b in pairs)])

    def statistic(*example_index):
        return differences({task: np.asarray(index, dtype=int) for task, index in zip(tasks, example_index)}).mean(0)

    per_pair = differences(None)
    point, n = per_pair.mean(0), len(pairs)
    dev = bootstrap(tuple(np.arange(size) for size in sizes), statistic, n_resamples=n_resamples, paired=False,
                    vectorized=False, method="percentile", rng=np.random.default_rng(seed))
    seed_var, dev_var = per_pair.var(0, ddof=1) / n, np.atleast_1d(dev.standard_error) ** 2
    half = student_t.ppf(0.975, n - 1) * np.sqrt(seed_var + dev_var)  # n - 1 even when the pairs' differences tie
    return {key: (float(point[i]), float(point[i] - half[i]), float(point[i] + half[i])) for i, key in enumerate(keys)}


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
        partner = {own: other for own, other in zip(row.seeds, base_seeds)}  # k-th seed with k-th seed
        pairs = [(run, base[partner[run.seed]]) for run in runs if partner.get(run.seed) in base]
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
    interval, the verdict, median wall time (runs under other load are far slower: the load column), mean load and
    the CPUs the runs ran on (a median over two machines is only a rough guide)."""
    header = ("| row | what changes | against | seeds | SST acc | Quora acc | STS r | overall | Δ overall [95% CI] "
              "| verdict | wall time (median) | load (mean) | CPU (runs) |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in results:
        verdict_text = verdict(*r.difference["overall"][1:]) if "overall" in r.difference else "—"
        wall = [run.record["wall_seconds"] for run in r.runs]
        load = [run.record.get("load_average", {}).get("mean") for run in r.runs]
        load = [v for v in load if v is not None]
        lines.append("| " + " | ".join([
            r.row.name, r.row.changes, r.row.comparator or "—", f"{len(r.runs)}/{len(r.row.seeds)}",
            *(cell(r, task) for task, _ in TASKS), cell(r, "overall", 4), difference_cell(r, "overall"),
            verdict_text, ablation.format_seconds(np.median(wall)) if wall else "—",
            f"{np.mean(load):.1f}" if load else "—", machines_cell(r.runs)]) + " |")
    return "\n".join(lines)


def machines_cell(runs: list[Run]) -> str:
    """The CPU model of each run's machine (`run.json`'s `machine.cpu`, trademarks dropped), with its runs."""
    names = [(run.record.get("machine") or {}).get("cpu") or "unknown" for run in runs]
    counts = Counter(name.replace("(R)", "").replace(" Processor", "") for name in names)
    return ", ".join(f"{name} ×{count}" for name, count in sorted(counts.items())) if counts else "—"


def task_difference_table(results: list[RowResult]) -> str:
    """Per row: the paired difference to the comparator per task, with 95% intervals."""
    lines = ["| row | against | " + " | ".join(f"Δ {name} [95% CI]" for _, name in TASKS) + " |",
             "|---|---|" + "---:|" * len(TASKS)]
    for r in results:
        if r.row.comparator is not None:
            cells = [difference_cell(r, task) for task, _ in TASKS]
            lines.append(f"| {r.row.name} | {r.row.comparator} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions_table(results: list[RowResult]) -> str:
    """Which checkout each run trained from (`run.json`'s `git_commit` as the run started, `+ changes` when the
    checkout had uncommitted edits), so that runs of one comparison from different code are visible."""
    runs_by_version: dict[str, list[str]] = {}
    for r in results:
        for run in r.runs:
            commit = (run.record.get("git_commit") or "unknown")[:7]
            version = commit + (" + changes" if run.record.get("git_dirty") else "")
            runs_by_version.setdefault(version, []).append(f"{r.row.name} {run.seed}")
    lines = ["| code version | runs |", "|---|---|"]
    lines += [f"| {version} | {', '.join(runs)} |" for version, runs in runs_by_version.items()]
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
                  "(95% interval: seed variance (t) + dev-set variance (bootstrap))")
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
                        "Commands:", commands_table(rows), "Code versions of the runs done:", versions_table(results)])
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
