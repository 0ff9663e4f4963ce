"""The CS224N-shaped ablation study as a resumable queue: one training run per row, one at a time.

Every row of the `main` group is a config file under `examples/cs224n/ablation/` (plus the plain-HF single-task
reference, `examples/cs224n/single_task_hf.py`) with the same budget of 25,600 training examples. A row is done
when its output directory holds `eval_results.json` and the `row.json` this queue writes after the run (command,
start and end, wall seconds and peak RSS measured around the subprocess, machine, versions, git commit). A crashed
row is recorded as failed and runs again on the next `run`; a stopped queue leaves its row not done, so running
`run` again continues where it stopped. A row that starts from another row's heads is stale once that row has
been run again after it (`run --rerun`), and runs again too. `table` rewrites the table between the
`ablation-table` markers of docs/results.md from the results; rows not run yet say so.

    python benchmarks/ablation.py run [ROW ...]            # rows not done yet, in order (all when none named)
    python benchmarks/ablation.py run --rerun frozen       # run a done row again (its dependents become stale)
    python benchmarks/ablation.py run --smoke frozen       # 2 steps on 64 examples in /tmp; never in the docs
    python benchmarks/ablation.py run --group short        # the earlier short-budget rows (docs/results.md)
    python benchmarks/ablation.py status [--group short]
    python benchmarks/ablation.py table                    # the main group into docs/results.md
    python benchmarks/ablation.py table --group short --stdout
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = "examples/cs224n/ablation"
DOCS = "docs/results.md"
MARKERS = ("<!-- ablation-table:start -->", "<!-- ablation-table:end -->")
SMOKE_DIR = "/tmp/hf-multitask-ablation-smoke"
SMOKE_FLAGS = ("--max_train_samples", "64", "--max_eval_samples", "64")
METRICS = ("eval_sst_accuracy", "eval_quora_accuracy", "eval_sts_pearson", "eval_overall")
BUSY_SECONDS = 60  # a log written to this recently belongs to a run still going


@dataclass(frozen=True)
class Row:
    """One configuration of the study.

    Args:
        name: The row's name on the command line and in the table.
        changes: What the row changes against the main settings (the table's second column).
        command: The command as a user types it (`hf-multitask ...` or `python SCRIPT ...`), run from the repo root.
        output_dir: Where the run writes `eval_results.json`; the queue adds `row.json`, the log goes to
            `<output_dir>.log`.
        needs: Rows whose output this row starts from (`init_heads_from`); it is refused until they are done.

    Example:

    ```python
    >>> row = Row("frozen", "heads only", ("hf-multitask", "train", "frozen.yaml"), "runs/ablation/r800_frozen")
    >>> row.display
    'hf-multitask train frozen.yaml'
    ```
    """

    name: str
    changes: str
    command: tuple[str, ...]
    output_dir: str
    needs: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        return shlex.join(self.command)

    @property
    def is_cli(self) -> bool:
        return self.command[0] == "hf-multitask"

    def log_path(self, root: Path) -> Path:
        return root / f"{self.output_dir}.log"


def config_row(name: str, changes: str, needs: tuple[str, ...] = ()) -> Row:
    """A row whose config is `examples/cs224n/ablation/<name>.yaml`; its output_dir is read from the file."""
    path = f"{CONFIG_DIR}/{name}.yaml"
    output_dir = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))["output_dir"]
    return Row(name, changes, ("hf-multitask", "train", path), output_dir, needs)


def main_rows() -> list[Row]:
    """The study at 25,600 training examples per row, in the table's (and the queue's) order."""
    return [
        config_row("frozen", "encoder frozen, heads only (lr 1e-2, round-robin)"),
        config_row("cross_annealed", "none: the main job's settings (cross-encoding, annealed sampling)"),
        config_row("bi_annealed", "bi-encoded pairs"),
        config_row("round_robin", "round-robin task sampling"),
        config_row("proportional", "proportional task sampling"),
        config_row("pal", "+ PALs (rank 102)"),
        config_row("grouped_none", "grouped batches (one per task per step), no surgery"),
        config_row("pcgrad", "grouped batches + PCGrad"),
        config_row("gradvac", "grouped batches + GradVac"),
        config_row("mgda", "grouped batches + MGDA"),
        config_row("upgrad", "grouped batches + UPGrad"),
        config_row("dualproj", "grouped batches + DualProj"),
        config_row("imtl_g", "grouped batches + IMTL-G"),
        config_row("aligned_mtl", "grouped batches + Aligned-MTL"),
        config_row("uncertainty", "grouped batches + uncertainty loss weighting"),
        config_row("smart", "+ SMART on SST and STS"),
        config_row("rdrop", "+ R-Drop on all three tasks (α = 1)"),
        config_row("ordinal", "+ ordinal log loss on SST"),
        config_row("transfer", "full fine-tuning from the frozen row's heads", needs=("frozen",)),
        config_row("best", "round-robin + the frozen row's heads", needs=("frozen",)),
        Row("single_task_hf", "3 separate single-task fine-tunes, plain HF Trainer, 267 batches of 32 each",
            ("python", "examples/cs224n/single_task_hf.py", "--output_dir", "runs/ablation/r800_single_task_hf"),
            "runs/ablation/r800_single_task_hf"),
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
                f"runs/ablation/{name}") for name, extra in flags.items()]


GROUPS = {"main": main_rows, "short": short_rows}


# ---- state of a row ----


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def row_state(row: Row, root: Path) -> tuple[str, dict | None, dict | None]:
    """`(state, record, metrics)`: state is `done`, `failed` or `not run`.

    Done: `eval_results.json` and a `row.json` saying done.
    """
    out = root / row.output_dir
    record, metrics = read_json(out / "row.json"), read_json(out / "eval_results.json")
    if record is not None:
        if record.get("status") == "done" and metrics is not None:
            return "done", record, metrics
        if record.get("status") == "failed":
            return "failed", record, None
    return "not run", record, None


def stale_reason(row: Row, record: dict | None, root: Path) -> str | None:
    """Why a done row's results (`record`, its `row.json`) are out of date: a row it starts from finished again
    after it started."""
    for name in row.needs:
        needed = rows_by_name().get(name)
        if needed is None or record is None:
            continue
        state, needed_record, _ = row_state(needed, root)
        if state == "done" and needed_record.get("end", "") > record.get("start", ""):
            return (f"row {name!r} was run again after this row started ({needed_record['end']} > "
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
    if smoke:
        steps = ("--max_steps", "2") if row.is_cli else ("--max_steps_per_task", "2")
        argv += [*steps, *SMOKE_FLAGS, "--output_dir", str(root / row.output_dir)]
        if row.needs:  # start from the smoke run of the row it depends on
            argv += ["--init_heads_from", str(root / rows_by_name()[row.needs[0]].output_dir)]
    elif row.is_cli and any((root / row.output_dir).glob("checkpoint-*")):
        argv += ["--resume_from_checkpoint", "true"]  # only rows that save checkpoints (none of the configs do)
    return argv


def rows_by_name(group: str = "main") -> dict[str, Row]:
    return {row.name: row for row in GROUPS[group]()}


def refusal(row: Row, root: Path) -> str | None:
    """Why `row` cannot run now (a row it needs is not done, or its log is being written), or None."""
    for name in row.needs:
        if row_state(rows_by_name()[name], root)[0] != "done":
            source = root / rows_by_name()[name].output_dir
            return (f"row {row.name!r} starts from the heads of row {name!r} ({source}), which is not done: "
                    f"run `python benchmarks/ablation.py run {name}` first")
    log = row.log_path(root)
    if log.is_file() and time.time() - log.stat().st_mtime < BUSY_SECONDS:
        return (f"row {row.name!r}: {log} was written less than {BUSY_SECONDS} s ago, so another run of this row "
                "seems to be going on; wait for it (or for a minute after a crash) and run again")
    return None


def run_row(row: Row, root: Path, smoke: bool = False) -> dict:
    """Run one row as a subprocess (HF_HUB_OFFLINE=1, output to its log), then write and return its `row.json`.

    Wall time and peak RSS (`ru_maxrss` of this child alone, from `wait4`) are measured here, around the process.
    Interrupting the queue stops the child and writes nothing: the row stays not done.
    """
    out, log = root / row.output_dir, row.log_path(root)
    out.mkdir(parents=True, exist_ok=True)
    argv = row_argv(row, root, smoke)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start, began = datetime.now(timezone.utc), time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.terminate()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    ok = process.returncode == 0 and (out / "eval_results.json").is_file()
    record = {"row": row.name, "status": "done" if ok else "failed", "command": row.display, "argv": argv,
              "exit_code": process.returncode, "log": str(log), "smoke": smoke,
              "start": start.isoformat(timespec="seconds"),
              "end": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "wall_seconds": round(time.monotonic() - began, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
              "machine": machine_info(), **software_info()}
    (out / "row.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


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


def run_queue(rows: list[Row], root: Path, smoke: bool = False, rerun: tuple[str, ...] = ()) -> int:
    """Run the rows not done yet, the stale ones and those in `rerun` (smoke: every row), one at a time.

    Returns the number failed or refused."""
    problems = 0
    for row in rows:
        state, record, _ = row_state(row, root)
        if not smoke and row.name not in rerun and state == "done":
            stale = stale_reason(row, record, root)
            if stale is None:
                print(f"skip {row.name}: done")
                continue
            print(f"{row.name} is stale, running it again: {stale}")
        reason = refusal(row, root)
        if reason:
            print(f"refused: {reason}")
            problems += 1
            continue
        previous = root / row.output_dir / "row.json"
        if previous.is_file():  # an interrupted rerun leaves the row not done, not with the old record
            previous.replace(previous.with_name("row.previous.json"))
        print(f"=== {row.name}: {row.display}  (log: {row.log_path(root)})", flush=True)
        record = run_row(row, root, smoke)
        print(f"{record['status']} {row.name} in {format_seconds(record['wall_seconds'])}"
              + ("" if record["status"] == "done" else f"; see {record['log']}"), flush=True)
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


def short_machine(record: dict) -> str:
    machine = record.get("machine")
    return f"{machine['nproc']} cores, {machine['cpu']}" if machine else "dev machine (see above)"


def table_line(row: Row, root: Path) -> str:
    state, record, metrics = row_state(row, root)
    if state == "done" and stale_reason(row, record, root) is not None:
        cells = ["stale: to run again"] * len(METRICS) + ["—", "—"]
    elif state == "done":
        cells = [f"{metrics[key]:.4f}" if key in metrics else "—" for key in METRICS]
        cells += [format_seconds(record["wall_seconds"]), short_machine(record)]
    else:
        cells = [state if state == "failed" else "not run yet"] * len(METRICS) + ["—", "—"]
    command = row.display.replace("|", "\\|")
    return "| " + " | ".join([row.name, row.changes, f"`{command}`", *cells]) + " |"


def render_table(rows: list[Row], root: Path) -> str:
    """The markdown table of `rows`, in their order, from the results under `root`."""
    header = "| row | what changes | command | SST acc | Quora acc | STS r | overall | wall time | machine |"
    return "\n".join([header, "|---|---|---|---:|---:|---:|---:|---:|---|", *(table_line(r, root) for r in rows)])


def replace_between_markers(text: str, table: str, source: str = DOCS) -> str:
    """`text` with everything between the two `ablation-table` markers replaced by `table`."""
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        raise SystemExit(f"{source}: no {MARKERS[0]} ... {MARKERS[1]} markers (in that order) to put the table in")
    return text[: start + len(MARKERS[0])] + "\n" + table + "\n" + text[end:]


def print_status(rows: list[Row], root: Path) -> None:
    for row in rows:
        state, record, metrics = row_state(row, root)
        detail = ""
        if state == "done":
            overall = metrics.get("eval_overall", float("nan"))
            detail = f"overall {overall:.4f}, {format_seconds(record['wall_seconds'])}"
            stale = stale_reason(row, record, root)
            if stale:
                state, detail = "stale", f"{detail}; runs again on the next `run`: {stale}"
        elif state == "failed":
            detail = f"exit code {record.get('exit_code')}, log {record.get('log')}; runs again on the next `run`"
        else:
            detail = refusal(row, root) or ""
        print(f"{row.name:<22} {state:<8} {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("run", "table", "status"))
    parser.add_argument("rows", nargs="*", help="Rows to run (default: every row of the group).")
    parser.add_argument("--group", choices=sorted(GROUPS), default="main")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 64 examples per task, in --smoke_dir.")
    parser.add_argument("--smoke_dir", default=SMOKE_DIR)
    parser.add_argument("--stdout", action="store_true", help="table: print it instead of writing docs/results.md.")
    parser.add_argument("--rerun", action="store_true",
                        help="run: run the named rows again even when done (rows that start from them then "
                             "count as stale and run again too).")
    args = parser.parse_intermixed_args(argv)  # rows and flags in any order
    rows, root = select_rows(args.group, args.rows), Path(args.smoke_dir) if args.smoke else REPO
    if args.action == "status":
        print_status(rows, root)
    elif args.action == "table":
        table = render_table(rows, REPO)  # never the smoke results
        if args.stdout or args.group != "main":
            print(table)
        else:
            docs = REPO / DOCS
            docs.write_text(replace_between_markers(docs.read_text(encoding="utf-8"), table), encoding="utf-8")
            print(f"table of {len(rows)} rows written to {docs}")
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `kill` also stops the running row
        with queue_lock(root):
            if args.rerun and not args.rows:
                raise SystemExit("--rerun needs the rows to run again, by name")
            return min(run_queue(rows, root, args.smoke, tuple(args.rows) if args.rerun else ()), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
