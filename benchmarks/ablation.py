"""The CS224N-shaped ablation study as a resumable queue: one training run per row and seed, one at a time.

Every row of the `main` group is a config file under `examples/cs224n/ablation/` (plus the plain-HF single-task
reference, `examples/cs224n/single_task_hf.py`) with the same budget of 25,600 training examples, run with each of
its seeds (`SEEDS`; the seed moves head init, data order and dropout). A run trains into
`runs/ablation/r800_<row>/seed<S>/` and writes every dev example's prediction from its evaluation pass
(`--predictions_file`), which the queue checks against the metrics the run reported. Its results are archived in the
repository, `benchmarks/results/ablation/<row>/seed<S>/` (`eval_results.json`, `dev_predictions.jsonl.gz` and the
`run.json` this queue writes: command, start and end, wall seconds, peak RSS, the machine's load during the run,
versions, git commit): the archive is what says a run is done, so the queue resumes on a fresh clone. A crashed run
is recorded as failed and runs again on the next `run`; a stopped queue leaves its run not done. A row that starts
from another row's heads (`transfer`, `best` from `frozen`) pairs seed with seed, and is stale once that row's run
of the same seed was run again after it; when that run is archived but its model is not on this machine, the
queue trains it again first and checks its predictions against the archive (`rebuild`). While
`runs/ablation/.pause` exists the queue waits before starting the next run (to time a benchmark on a quiet
machine). `benchmarks/ablation_stats.py` turns the archive into docs/results.md's table.

Sharing the machine: where the kernel schedules by autogroup (`/proc/sys/kernel/sched_autogroup_enabled` is 1),
`nice` orders processes only within one session, so a niced test run in another terminal still takes half the
cores from the queue (started with `setsid`, it is a session of its own). Give the queue's session priority instead,
`echo -10 > /proc/$(cat runs/ablation/.queue.lock)/autogroup` (as root), or pause it.

    python benchmarks/ablation.py run [ROW ...]            # runs not done yet, row by row (all rows when none named)
    python benchmarks/ablation.py run --seeds 42,43 frozen # only these seeds
    python benchmarks/ablation.py run --rerun frozen       # run a done row again (its dependents become stale)
    python benchmarks/ablation.py run --smoke frozen       # 2 steps on 64 examples in /tmp; never in the docs
    python benchmarks/ablation.py run --group short        # the earlier short-budget rows (one seed)
    python benchmarks/ablation.py run --group reference    # at the single-task reference's budget, and for the
                                                           # time-to-quality plot (benchmarks/reference_runs.py)
    python benchmarks/ablation.py status [--group short]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

# Run as a script, this module is `__main__`; registered as `ablation` too, `reference_runs`' `import ablation`
# gets this module instead of a second copy with its own classes.
sys.modules.setdefault("ablation", sys.modules[__name__])
REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = "examples/cs224n/ablation"
DOCS = "docs/results.md"
MARKERS = ("<!-- ablation-table:start -->", "<!-- ablation-table:end -->")
ARCHIVE = "benchmarks/results/ablation"
PAUSE = "runs/ablation/.pause"
DATA_DIR = "../shared/data"
PREDICTIONS = "dev_predictions.jsonl.gz"
SEEDS = (42, 43, 44)
SMOKE_DIR = "/tmp/hf-multitask-ablation-smoke"
SMOKE_FLAGS = ("--max_train_samples", "64", "--max_eval_samples", "64")
METRICS = ("eval_sst_accuracy", "eval_quora_accuracy", "eval_sts_pearson", "eval_overall")
BUSY_SECONDS = 60  # a log written to this recently belongs to a run still going


@dataclass(frozen=True)
class Row:
    """One configuration of the study, or one run of it (`at_seed`).

    Args:
        name: The row's name on the command line and in the table.
        changes: What the row changes against the main settings (the table's second column).
        command: The command as a user types it (`hf-multitask ...` or `python SCRIPT ...`), run from the repo root.
        output_dir: Where the run writes `eval_results.json`; the log goes to `<output_dir>.log`.
        needs: Rows whose output this row starts from (`init_heads_from`); it is refused until they are done.
        comparator: The row its effect is measured against (fixed before any result is seen); None for the
            reference rows themselves.
        seeds: The seeds the row runs with.
        seed: Set on one run of the row (`at_seed`): its output and archive are per seed.
        smoke_flags: The flags that cut a `--smoke` run to about 2 steps; empty: `--max_steps 2` (CLI rows) or
            `--max_steps_per_task 2` (scripts).
        resumable: False for a row that must never resume from its checkpoints (the rows whose checkpoints are
            placed on the wall clock: a resumed run's clock would miss the time before the interruption).

    Example:

    ```python
    >>> row = Row("frozen", "heads only", ("hf-multitask", "train", "frozen.yaml"), "runs/ablation/r800_frozen")
    >>> row.at_seed(43).display
    'hf-multitask train frozen.yaml --seed 43 --output_dir runs/ablation/r800_frozen/seed43'
    ```
    """

    name: str
    changes: str
    command: tuple[str, ...]
    output_dir: str
    needs: tuple[str, ...] = ()
    comparator: str | None = None
    seeds: tuple[int, ...] = SEEDS
    seed: int | None = None
    smoke_flags: tuple[str, ...] = ()
    resumable: bool = True

    @property
    def display(self) -> str:
        return shlex.join(self.command)

    @property
    def is_cli(self) -> bool:
        return self.command[0] == "hf-multitask"

    @property
    def label(self) -> str:
        return self.name if self.seed is None else f"{self.name} seed {self.seed}"

    def log_path(self, root: Path) -> Path:
        return root / f"{self.output_dir}.log"

    def archive(self, root: Path) -> Path:
        """Where the run's results are kept: `benchmarks/results/ablation/<row>[/seed<S>]`."""
        return root / ARCHIVE / self.name / ("" if self.seed is None else f"seed{self.seed}")

    def at_seed(self, seed: int) -> Row:
        """The run of this row with `seed`: its own output directory, and the heads of the needed rows' run with
        the same seed."""
        output_dir = f"{self.output_dir}/seed{seed}"
        extra = ("--seed", str(seed), "--output_dir", output_dir,
                 "--predictions_file" if self.is_cli else "--predictions", f"{output_dir}/{PREDICTIONS}")
        for name in self.needs:
            extra += ("--init_heads_from", f"{rows_by_name()[name].output_dir}/seed{seed}")
        return replace(self, command=self.command + extra, output_dir=output_dir, seed=seed)

    def runs(self, seeds: tuple[int, ...] | None = None) -> list[Row]:
        return [self.at_seed(seed) for seed in self.seeds if seeds is None or seed in seeds]


def config_row(name: str, changes: str, comparator: str | None = "cross_annealed", **fields) -> Row:
    """A row whose config is `examples/cs224n/ablation/<name>.yaml`; its output_dir is read from the file."""
    path = f"{CONFIG_DIR}/{name}.yaml"
    output_dir = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))["output_dir"]
    return Row(name, changes, ("hf-multitask", "train", path), output_dir, comparator=comparator, **fields)


def main_rows() -> list[Row]:
    """The study at 25,600 training examples per row, in the table's (and the queue's) order. Comparators: the
    main job's settings (`cross_annealed`) for every row but the gradient methods and the loss weighting, which are
    measured against grouped batches without surgery (`grouped_none`); `aa` is the main settings with three other
    seeds, against themselves: what "no effect" looks like."""
    grouped = {"comparator": "grouped_none"}
    return [
        config_row("frozen", "encoder frozen, heads only (lr 1e-2, round-robin)"),
        config_row("cross_annealed", "none: the main job's settings (cross-encoding, annealed sampling)", None),
        Row("aa", "none: the main job's settings with seeds 45-47 (A/A: no effect by construction)",
            ("hf-multitask", "train", f"{CONFIG_DIR}/cross_annealed.yaml"), "runs/ablation/r800_aa",
            comparator="cross_annealed", seeds=(45, 46, 47)),
        config_row("bi_annealed", "bi-encoded pairs"),
        config_row("round_robin", "round-robin task sampling"),
        config_row("proportional", "proportional task sampling"),
        config_row("pal", "+ PALs (rank 102)"),
        config_row("sts_bias_center", "STS head's bias starts at 2.5, the middle of the score range"),
        config_row("grouped_none", "grouped batches (one per task per step), no surgery"),
        config_row("pcgrad", "grouped batches + PCGrad", **grouped),
        config_row("gradvac", "grouped batches + GradVac", **grouped),
        config_row("mgda", "grouped batches + MGDA", **grouped),
        config_row("upgrad", "grouped batches + UPGrad", **grouped),
        config_row("dualproj", "grouped batches + DualProj", **grouped),
        config_row("imtl_g", "grouped batches + IMTL-G", **grouped),
        config_row("aligned_mtl", "grouped batches + Aligned-MTL", **grouped),
        config_row("uncertainty", "grouped batches + uncertainty loss weighting", **grouped),
        config_row("smart", "+ SMART on SST and STS"),
        config_row("rdrop", "+ R-Drop on all three tasks (α = 1)"),
        config_row("ordinal", "+ ordinal log loss on SST"),
        config_row("transfer", "full fine-tuning from the frozen row's heads", needs=("frozen",)),
        config_row("best", "round-robin + the frozen row's heads", needs=("frozen",)),
        Row("single_task_hf", "3 separate single-task fine-tunes, plain HF Trainer, 267 batches of 32 each",
            ("python", "examples/cs224n/single_task_hf.py"), "runs/ablation/r800_single_task_hf",
            comparator="cross_annealed"),
    ]


def short_rows() -> list[Row]:
    """The earlier short-budget rows (12,800 examples; `pal` and `main_grouped_*` at the main job's 44,800)."""
    main = ("hf-multitask", "train", "examples/cs224n/main.yaml")
    grouped = ("--task_sampling_grouped", "true", "--gradient_surgery")
    flags = {
        "baseline": ("--max_steps", "400"),
        "smart": ("--max_steps", "400", "--smart_tasks", "sst", "sts"),
        "ordinal": ("--max_steps", "400", "--task_overrides", '{"sst":{"loss":"ordinal"}}'),
        "grouped_none": ("--max_steps", "133", *grouped, "none"),
        "grouped_pcgrad": ("--max_steps", "133", *grouped, "pcgrad"),
        "grouped_gradvac": ("--max_steps", "133", *grouped, "gradvac"),
        "pal": ("--pal_rank", "102"),
        "main_grouped_none": ("--max_steps", "466", *grouped, "none"),
        "main_grouped_pcgrad": ("--max_steps", "466", *grouped, "pcgrad"),
        "main_grouped_gradvac": ("--max_steps", "466", *grouped, "gradvac"),
    }
    return [Row(name, " ".join(extra), (*main, *extra, "--output_dir", f"runs/ablation/{name}"),
                f"runs/ablation/{name}", seeds=(42,)) for name, extra in flags.items()]


def reference_rows() -> list[Row]:
    """The runs at the single-task reference's budget and for the time-to-quality plot: in
    `benchmarks/reference_runs.py`, imported when asked for."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import reference_runs

    return reference_runs.reference_rows()


GROUPS = {"main": main_rows, "short": short_rows, "reference": reference_rows}


# ---- state of a row ----


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def row_state(row: Row, root: Path) -> tuple[str, dict | None, dict | None]:
    """`(state, record, metrics)` of a run, from its archive: state is `done`, `failed` or `not run`.

    Done: `eval_results.json`, the predictions and a `run.json` saying done.
    """
    archive = row.archive(root)
    record, metrics = read_json(archive / "run.json"), read_json(archive / "eval_results.json")
    if record is not None:
        if record.get("status") == "done" and metrics is not None and (archive / PREDICTIONS).is_file():
            return "done", record, metrics
        if record.get("status") == "failed":
            return "failed", record, None
    return "not run", record, None


def needed_runs(row: Row) -> list[Row]:
    """The runs `row` starts from: the needed rows' run with the same seed."""
    needed = [rows_by_name()[name] for name in row.needs]
    return [r if row.seed is None else r.at_seed(row.seed) for r in needed]


def stale_reason(row: Row, record: dict | None, root: Path) -> str | None:
    """Why a done run's results (`record`, its `run.json`) are out of date: a run it starts from finished again
    after it started."""
    for needed in needed_runs(row):
        state, needed_record, _ = row_state(needed, root)
        if record is not None and state == "done" and needed_record.get("end", "") > record.get("start", ""):
            return (f"{needed.label!r} was run again after this run started ({needed_record['end']} > "
                    f"{record['start']}): its heads changed")
    return None


# ---- running a row ----


def machine_info() -> dict:
    """Platform, CPU model, usable cores and memory of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else ""
    memory = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpu": cpu, "nproc": cores,
            "memory_gib": round(int(memory.group(1)) / 2**20, 1) if memory else None}


def software_info() -> dict:
    """Python, torch and transformers versions and the git commit (`dirty`: tracked files differ from it)."""
    info = {"python": platform.python_version()}
    for package in ("torch", "transformers"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    git = ["git", "-C", str(REPO)]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["git_commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                            check=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                                capture_output=True, text=True, check=True).stdout.strip())
    return info


def row_argv(row: Row, root: Path, smoke: bool) -> list[str]:
    """The subprocess's argv: this venv's python for `hf-multitask` and `python`, plus the smoke overrides."""
    head = [sys.executable, "-m", "hf_multitask.cli"] if row.is_cli else [sys.executable]
    argv = [*head, *row.command[1:]]
    if smoke:  # later flags win: the budget, output and heads source move under `root`
        steps = row.smoke_flags or (("--max_steps", "2") if row.is_cli else ("--max_steps_per_task", "2"))
        argv += [*steps, *SMOKE_FLAGS, "--output_dir", str(root / row.output_dir)]
        if row.seed is not None:
            argv += ["--predictions_file" if row.is_cli else "--predictions", str(root / row.output_dir / PREDICTIONS)]
        for needed in needed_runs(row):
            argv += ["--init_heads_from", str(root / needed.output_dir)]
    elif row.is_cli and row.resumable and any((root / row.output_dir).glob("checkpoint-*")):
        argv += ["--resume_from_checkpoint", "true"]  # only rows that save checkpoints (none of the configs do)
    return argv


def rows_by_name(group: str = "main") -> dict[str, Row]:
    return {row.name: row for row in GROUPS[group]()}


def group_flag(run: Row) -> str:
    """` --group G` for the first group other than `main` that schedules `run` (its row at its seed), else ''."""
    for group, rows in GROUPS.items():
        if any(row.name == run.name and run.seed in row.seeds for row in rows()):
            return "" if group == "main" else f" --group {group}"
    return ""


def refusal(row: Row, root: Path) -> str | None:
    """Why `row` cannot run now (a run it needs is not done or its model is not on this machine, or its log is
    being written), or None."""
    for needed in needed_runs(row):
        source = root / needed.output_dir
        if row_state(needed, root)[0] != "done":
            seeds = "" if needed.seed is None else f" --seeds {needed.seed}"
            return (f"{row.label!r} starts from the heads of {needed.label!r} ({source}), which is not done: run "
                    f"`python benchmarks/ablation.py run{group_flag(needed)}{seeds} {needed.name}` first")
        if not (source / "config.json").is_file():
            return (f"{row.label!r} starts from the heads of {needed.label!r}, whose results are archived but whose "
                    f"model is not on this machine ({source}): `run` trains it again first and checks it against "
                    "the archive")
    log = row.log_path(root)
    if log.is_file() and time.time() - log.stat().st_mtime < BUSY_SECONDS:
        return (f"{row.label!r}: {log} was written less than {BUSY_SECONDS} s ago, so another run of it seems to be "
                "going on; wait for it (or for a minute after a crash) and run again")
    return None


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every `interval` seconds while a run goes on: how busy the machine was."""

    def __init__(self, interval: float = 30.0):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stopped = interval, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        self.stopped.set()
        return {"mean": round(sum(self.samples) / len(self.samples), 2), "max": round(max(self.samples), 2),
                "samples": len(self.samples)}


def run_logged(argv: list[str], log: Path) -> tuple[int, float]:
    """Run `argv` from the repo root with HF_HUB_OFFLINE=1, output to `log`. Returns (exit code, peak RSS in MB of
    the child alone, from `wait4`); interrupting stops the child.

    The repo root leads PYTHONPATH, so that a script row (`python examples/...`, whose own folder would lead
    `sys.path`) imports `hf_multitask` from this checkout, whose commit `run.json` records, and not from wherever
    the package is installed in editable mode."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.terminate()
            process.wait()
            raise
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024


def run_row(row: Row, root: Path, smoke: bool = False, archive: Path | None = None) -> dict:
    """Run one row (or one seed of it) as a subprocess (it writes its dev predictions from its evaluation pass),
    check the predictions against the metrics it reported, archive the results with `run.json` (in
    `row.archive(root)`, or `archive`), and return the record.

    Wall time (training and evaluation) and peak RSS are measured around the process, the load average sampled
    during it. Interrupting the queue stops the child and archives nothing: the
    run stays not done.
    """
    out, log, archive = root / row.output_dir, row.log_path(root), archive or row.archive(root)
    out.mkdir(parents=True, exist_ok=True)
    argv = row_argv(row, root, smoke)
    software = software_info()  # the checkout as the run starts (it could change while the run goes on)
    start, start_unix, began, load = datetime.now(timezone.utc), time.time(), time.monotonic(), LoadSampler()
    load.start()
    code, rss = run_logged(argv, log)
    wall, load_summary = time.monotonic() - began, load.summary()
    problem = None if code == 0 and (out / "eval_results.json").is_file() else f"exit code {code}"
    if problem is None and row.seed is not None:
        problem = check_predictions(out / PREDICTIONS, read_json(out / "eval_results.json"))
    record = {"row": row.name, "seed": row.seed, "status": "failed" if problem else "done", "problem": problem,
              "command": row.display, "argv": argv, "exit_code": code, "log": str(log),
              "smoke": smoke, "start": start.isoformat(timespec="seconds"), "start_unix": round(start_unix, 3),
              "end": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_seconds": round(wall, 1),
              "peak_rss_mb": round(rss, 1), "load_average": load_summary, "machine": machine_info(),
              **software}
    archive.mkdir(parents=True, exist_ok=True)
    for name in ("eval_results.json", PREDICTIONS):
        if problem is None and (out / name).is_file():
            shutil.copyfile(out / name, archive / name)
    (archive / "run.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def rebuild(run: Row, root: Path, smoke: bool = False) -> str | None:
    """Train a done run again when its results are archived but its model is not on this machine (a fresh clone,
    or a new work tree): the rows that start from its heads need the weights. Returns None when it is ready, else
    why not.

    The rebuilt run is archived apart (`runs/ablation/rebuilt/...`) and compared with the archive. Same
    predictions, example by example (and so the same metrics): the archive stays and its `run.json` lists the rebuild
    under `rebuilds`, evidence that the run reproduces. Different: the rebuilt run replaces the archive (the old
    record kept as `run.previous.json`), since its heads are the ones the dependent runs will start from, and the
    difference is printed.
    """
    archive = run.archive(root)
    scratch = root / "runs/ablation/rebuilt" / archive.relative_to(root / ARCHIVE)
    print(f"=== rebuild {run.label}: archived, but its model is not in {root / run.output_dir}; training it again",
          flush=True)
    record = run_row(run, root, smoke, archive=scratch)
    if record["status"] != "done":
        return f"rebuilding {run.label!r} failed: {record.get('problem')}; see {record['log']}"
    old, new = read_json(archive / "eval_results.json"), read_json(scratch / "eval_results.json")
    same = same_predictions(archive / PREDICTIONS, scratch / PREDICTIONS)
    changes = {key: (old.get(key), new.get(key)) for key in METRICS if old.get(key) != new.get(key)}
    entry = {"end": record["end"], "wall_seconds": record["wall_seconds"], "git_commit": record.get("git_commit"),
             "machine": record["machine"], "same_predictions": same, "metric_changes": changes}
    archived = read_json(archive / "run.json")
    if same:
        archived["rebuilds"] = [*archived.get("rebuilds", []), entry]
        (archive / "run.json").write_text(json.dumps(archived, indent=2) + "\n", encoding="utf-8")
        print(f"rebuilt {run.label} in {format_seconds(record['wall_seconds'])}: the same predictions as the "
              "archive, example by example", flush=True)
        return None
    (archive / "run.json").replace(archive / "run.previous.json")
    for name in ("eval_results.json", PREDICTIONS):
        shutil.copyfile(scratch / name, archive / name)
    record["replaced"] = {"because": "rebuilt with other predictions", "metric_changes": changes}
    (archive / "run.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"rebuilt {run.label}: its predictions differ from the archive's (metrics {changes or 'equal'}); the "
          "rebuilt run replaces it (old record: run.previous.json)", flush=True)
    return None


def same_predictions(a: Path, b: Path) -> bool:
    """Whether two predictions files hold the same tasks, example ids, gold labels and predictions (compared as
    values: a file written by other code may format its records differently)."""
    first, second = read_predictions(a), read_predictions(b)
    return first.keys() == second.keys() and all(
        np.array_equal(first[task][key], second[task][key]) for task in first for key in first[task])


def missing_models(row: Row, root: Path) -> list[Row]:
    """The runs `row` starts from that are done in the archive but whose model is not on this machine."""
    return [needed for needed in needed_runs(row) if row_state(needed, root)[0] == "done"
            and not (root / needed.output_dir / "config.json").is_file()]


def read_prediction_records(path: Path) -> list[dict]:
    """The records of a gzipped JSON-lines predictions file, in file order."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def read_predictions(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """`{task: {"id", "gold", "predicted"}}` from a predictions file: the predicted class id (`label_id`) of a
    classification task, the score of a regression one, in file order."""
    tasks: dict[str, dict[str, list]] = {}
    for record in read_prediction_records(path):
        task = tasks.setdefault(record["task"], {"id": [], "gold": [], "predicted": []})
        task["id"].append(record["id"])
        task["gold"].append(record["labels"])
        task["predicted"].append(record["score"] if "score" in record else record["label_id"])
    return {name: {key: np.asarray(values) for key, values in task.items()} for name, task in tasks.items()}


def task_score(gold: np.ndarray, predicted: np.ndarray) -> tuple[str, float]:
    """(metric, value): accuracy for integer predictions (class ids), Pearson r for float ones (scores)."""
    if np.issubdtype(predicted.dtype, np.integer):
        return "accuracy", float((gold == predicted).mean())
    return "pearson", float(np.corrcoef(gold.astype(float), predicted.astype(float))[0, 1])


def metrics_from_predictions(path: Path) -> dict[str, float]:
    """`eval_<task>_<metric>` and `eval_overall` (mean of accuracies and (r + 1) / 2) recomputed from a file."""
    metrics, unit = {}, []
    for task, data in read_predictions(path).items():
        metric, value = task_score(data["gold"], data["predicted"])
        metrics[f"eval_{task}_{metric}"] = value
        unit.append((value + 1) / 2 if metric == "pearson" else value)
    metrics["eval_overall"] = float(np.mean(unit))
    return metrics


def check_predictions(path: Path, metrics: dict) -> str | None:
    """None when the metrics recomputed from the predictions file equal those training reported (1e-4), else why."""
    if not path.is_file():
        return f"no predictions file {path}"
    again = metrics_from_predictions(path)
    wrong = {k: (v, metrics.get(k)) for k, v in again.items() if metrics.get(k) is None or abs(v - metrics[k]) > 1e-4}
    return f"{path}: metrics from the predictions differ from eval_results.json: {wrong}" if wrong else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def queue_lock(root: Path):
    """One queue per results directory: a second `run` is refused while the first one's process lives."""
    path = root / "runs/ablation/.queue.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = read_json(path)
    if isinstance(pid, int) and pid != os.getpid() and process_alive(pid):
        raise SystemExit(f"another ablation queue (pid {pid}) is running on {path.parent}; {path} names it")
    path.write_text(str(os.getpid()))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def select_rows(group: str, names: list[str]) -> list[Row]:
    """The group's rows named (in the group's order), or all of them; an unknown name is an error listing them."""
    rows = GROUPS[group]()
    known = [row.name for row in rows]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown} in group {group!r}; its rows: {', '.join(known)}")
    return [row for row in rows if not names or row.name in names]


def expand_runs(rows: list[Row], seeds: tuple[int, ...] | None = None) -> list[Row]:
    """Every row's runs, row by row (all seeds of the first row, then of the second, ...: a row and its comparator
    complete early, so verdicts arrive while the queue goes on); `seeds`: only those."""
    return [run for row in rows for run in row.runs(seeds)]


def wait_while_paused(root: Path, poll: float = 30.0) -> None:
    """Wait while `runs/ablation/.pause` exists (someone is timing a benchmark)."""
    pause = root / PAUSE
    if pause.exists():
        print(f"paused: {pause} exists; the next run starts when it is removed", flush=True)
    while pause.exists():
        time.sleep(poll)


def run_queue(runs: list[Row], root: Path, smoke: bool = False, rerun: tuple[str, ...] = ()) -> int:
    """Run the runs not done yet, the stale ones and those of the rows in `rerun` (smoke: every run), one at a time.

    Returns the number failed or refused."""
    problems = 0
    for row in runs:
        state, record, _ = row_state(row, root)
        if not smoke and row.name not in rerun and state == "done":
            stale = stale_reason(row, record, root)
            if stale is None:
                print(f"skip {row.label}: done")
                continue
            print(f"{row.label} is stale, running it again: {stale}")
        wait_while_paused(root)
        reason = next(filter(None, (rebuild(needed, root, smoke) for needed in missing_models(row, root))), None)
        reason = reason or refusal(row, root)
        if reason:
            print(f"refused: {reason}")
            problems += 1
            continue
        previous = row.archive(root) / "run.json"
        if previous.is_file():  # an interrupted rerun leaves the run not done, not with the old record
            previous.replace(previous.with_name("run.previous.json"))
        print(f"=== {row.label}: {row.display}  (log: {row.log_path(root)})", flush=True)
        record = run_row(row, root, smoke)
        print(f"{record['status']} {row.label} in {format_seconds(record['wall_seconds'])}"
              + ("" if record["status"] == "done" else f"; {record.get('problem')}; see {record['log']}"), flush=True)
        problems += record["status"] != "done"
    return problems


# ---- table and status ----


def format_seconds(seconds: float) -> str:
    """`9 min 41 s`, `41 s` or `1 h 02 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def replace_between_markers(text: str, table: str, source: str = DOCS,
                            markers: tuple[str, str] = MARKERS) -> str:
    """`text` with everything between the two markers (the `ablation-table` ones by default) replaced by `table`."""
    start, end = text.find(markers[0]), text.find(markers[1])
    if start < 0 or end < start:
        raise SystemExit(f"{source}: no {markers[0]} ... {markers[1]} markers (in that order) to put the table in")
    return text[: start + len(markers[0])] + "\n" + table + "\n" + text[end:]


def print_status(runs: list[Row], root: Path) -> None:
    """One line per run: done (overall, wall time, mean load), stale, failed (why) or not run (or why refused)."""
    for row in runs:
        state, record, metrics = row_state(row, root)
        detail = ""
        if state == "done":
            load = record.get("load_average") or {}
            detail = (f"overall {metrics.get('eval_overall', float('nan')):.4f}, "
                      f"{format_seconds(record['wall_seconds'])}, load {load.get('mean', '?')}")
            stale = stale_reason(row, record, root)
            if stale:
                state, detail = "stale", f"{detail}; runs again on the next `run`: {stale}"
        elif state == "failed":
            detail = f"{record.get('problem') or record.get('exit_code')}, log {record.get('log')}; runs again"
        else:
            detail = refusal(row, root) or ""
        print(f"{row.label:<26} {state:<8} {detail}")
    done = sum(row_state(row, root)[0] == "done" for row in runs)
    print(f"{done} of {len(runs)} runs done" + remaining_time(runs, root))


def remaining_time(runs: list[Row], root: Path, quiet_load: float = 2.5) -> str:
    """`; about T left` for the runs not done: each at its row's median wall time over its done runs that had the
    machine to themselves (mean load <= `quiet_load`; the 2 cores busy with the run alone), else at the median of
    all such runs; '' when there is nothing to go on."""
    quiet: dict[str, list[float]] = {}
    left = []
    for row in runs:
        state, record, _ = row_state(row, root)
        if state != "done":
            left.append(row)
        elif (record.get("load_average") or {}).get("mean", quiet_load + 1) <= quiet_load:
            quiet.setdefault(row.name, []).append(record["wall_seconds"])
    if not left or not quiet:
        return ""
    overall = float(np.median([t for times in quiet.values() for t in times]))
    total = sum(float(np.median(quiet[row.name])) if row.name in quiet else overall for row in left)
    return f"; about {format_seconds(total)} left at the quiet runs' median times ({len(left)} runs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("run", "status"))
    parser.add_argument("rows", nargs="*", help="Rows to run (default: every row of the group).")
    parser.add_argument("--group", choices=sorted(GROUPS), default="main")
    parser.add_argument("--seeds", type=lambda text: tuple(int(v) for v in text.split(",")),
                        help="Only the runs with these seeds, comma-separated: --seeds 42,43.")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 64 examples per task, in --smoke_dir.")
    parser.add_argument("--smoke_dir", default=SMOKE_DIR)
    parser.add_argument("--rerun", action="store_true",
                        help="run: run the named rows again even when done (rows that start from them then "
                             "count as stale and run again too).")
    args = parser.parse_intermixed_args(argv)  # rows and flags in any order
    root = Path(args.smoke_dir) if args.smoke else REPO
    runs = expand_runs(select_rows(args.group, args.rows), args.seeds)
    if args.action == "status":
        print_status(runs, root)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `kill` also stops the running row
    with queue_lock(root):
        if args.rerun and not args.rows:
            raise SystemExit("--rerun needs the rows to run again, by name")
        return min(run_queue(runs, root, args.smoke, tuple(args.rows) if args.rerun else ()), 1)


if __name__ == "__main__":
    sys.exit(main())
