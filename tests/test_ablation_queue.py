"""benchmarks/ablation.py: row states, refusals, the queue loop and the results table, on fake result dirs."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
ablation = sys.modules["ablation"] = importlib.util.module_from_spec(_spec)  # dataclasses look the module up
_spec.loader.exec_module(ablation)

METRICS = {"eval_sst_accuracy": 0.5, "eval_quora_accuracy": 0.8, "eval_sts_pearson": 0.85, "eval_overall": 0.7083}
LEGACY_FOOTER = """\
	Command being timed: "hf-multitask train examples/cs224n/main.yaml --max_steps 400 --output_dir runs/ablation/x"
	Elapsed (wall clock) time (h:mm:ss or m:ss): 6:10.60
	Maximum resident set size (kbytes): 3350188
	Exit status: {status}
"""


def write_result(root: Path, row, status: str | None = "done", metrics: dict | None = METRICS, **record) -> Path:
    out = root / row.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        (out / "eval_results.json").write_text(json.dumps(metrics))
    if status is not None:
        record = {"status": status, "wall_seconds": 581.0, "log": f"{out}.log",
                  "machine": {"nproc": 2, "cpu": "AMD EPYC"}, **record}
        (out / "row.json").write_text(json.dumps(record))
    return out


def fake_row(name: str, code: str = "", needs=()) -> ablation.Row:
    return ablation.Row(name, f"changes of {name}", ("python", "-c", code), f"runs/ablation/{name}", needs)


def test_row_state_not_run_without_results(tmp_path):
    assert ablation.row_state(fake_row("a"), tmp_path)[0] == "not run"


def test_row_state_done_needs_eval_results_and_row_json(tmp_path):
    row = fake_row("a")
    write_result(tmp_path, row, status=None)
    assert ablation.row_state(row, tmp_path)[0] == "not run"  # killed after eval, before the queue's record
    write_result(tmp_path, row, status="done")
    state, record, metrics = ablation.row_state(row, tmp_path)
    assert (state, record["wall_seconds"], metrics) == ("done", 581.0, METRICS)


def test_row_state_failed_record_is_failed_even_with_stale_results(tmp_path):
    row = fake_row("a")
    write_result(tmp_path, row, status="failed", exit_code=1)
    assert ablation.row_state(row, tmp_path)[0] == "failed"


@pytest.mark.parametrize("exit_status", [0, 1])
def test_row_state_ignores_the_removed_shell_queues_log(tmp_path, exit_status):
    """benchmarks/ablation_queue.sh (removed) left results and a `/usr/bin/time -v` log but no row.json."""
    row = fake_row("a")
    write_result(tmp_path, row, status=None)
    row.log_path(tmp_path).write_text("training...\n" + LEGACY_FOOTER.format(status=exit_status))
    assert ablation.row_state(row, tmp_path) == ("not run", None, None)


def test_render_table_fills_done_rows_and_marks_the_others(tmp_path):
    done, failed, missing = fake_row("done_row"), fake_row("failed_row"), fake_row("missing_row")
    write_result(tmp_path, done)
    write_result(tmp_path, failed, status="failed", metrics=None)
    lines = ablation.render_table([done, failed, missing], tmp_path).splitlines()
    assert lines[0].startswith("| row | what changes | command | SST acc | Quora acc | STS r | overall | wall time")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| done_row", "| failed_row", "| missing_row"]
    assert "| 0.5000 | 0.8000 | 0.8500 | 0.7083 | 9 min 41 s | 2 cores, AMD EPYC |" in lines[2]
    assert lines[3].endswith("| failed | failed | failed | failed | — | — |")
    assert lines[4].count("not run yet") == 4 and lines[4].endswith("| — | — |")


def test_render_table_escapes_pipes_in_commands(tmp_path):
    row = ablation.Row("r", "c", ("python", "-c", "a | b"), "runs/ablation/r")
    assert "`python -c 'a \\| b'`" in ablation.render_table([row], tmp_path)


def test_replace_between_markers_keeps_the_rest_of_the_page():
    start, end = ablation.MARKERS
    text = f"# Results\n\nintro\n{start}\nold table\n{end}\n\nafter\n"
    new = ablation.replace_between_markers(text, "| new |")
    assert new == f"# Results\n\nintro\n{start}\n| new |\n{end}\n\nafter\n"
    assert ablation.replace_between_markers(new, "| new |") == new


def test_replace_between_markers_without_markers_is_an_error():
    with pytest.raises(SystemExit, match="no <!-- ablation-table:start -->"):
        ablation.replace_between_markers("# Results\n", "| t |", "docs/results.md")


def test_transfer_is_refused_until_frozen_is_done(tmp_path):
    rows = ablation.rows_by_name()
    assert "run `python benchmarks/ablation.py run frozen` first" in ablation.refusal(rows["transfer"], tmp_path)
    write_result(tmp_path, rows["frozen"])
    assert ablation.refusal(rows["transfer"], tmp_path) is None


def test_a_row_whose_log_is_being_written_is_refused(tmp_path):
    row = fake_row("a")
    row.log_path(tmp_path).parent.mkdir(parents=True)
    row.log_path(tmp_path).write_text("step 10\n")
    assert "seems to be going on" in ablation.refusal(row, tmp_path)
    old = time.time() - 2 * ablation.BUSY_SECONDS
    os.utime(row.log_path(tmp_path), (old, old))
    assert ablation.refusal(row, tmp_path) is None


def test_run_row_records_the_run(tmp_path):
    out = tmp_path / "runs/ablation/ok"
    code = f"import json; open({str(out / 'eval_results.json')!r}, 'w').write(json.dumps({METRICS!r})); print('hi')"
    record = ablation.run_row(fake_row("ok", code), tmp_path)
    assert record["status"] == "done" and record["exit_code"] == 0 and record["wall_seconds"] >= 0
    assert record["peak_rss_mb"] > 1 and record["machine"]["nproc"] >= 1 and "torch" in record
    assert record["argv"][0] == sys.executable and record["command"].startswith("python -c ")
    assert json.loads((out / "row.json").read_text()) == record
    assert (tmp_path / "runs/ablation/ok.log").read_text() == "hi\n"
    assert ablation.row_state(fake_row("ok", code), tmp_path)[0] == "done"


def test_run_row_records_a_crash_as_failed(tmp_path):
    record = ablation.run_row(fake_row("bad", "raise SystemExit(3)"), tmp_path)
    assert (record["status"], record["exit_code"]) == ("failed", 3)
    assert record["log"] == str(tmp_path / "runs/ablation/bad.log")
    assert ablation.row_state(fake_row("bad"), tmp_path)[0] == "failed"


def test_run_queue_skips_done_rows_reruns_failed_ones_and_counts_problems(tmp_path, monkeypatch):
    done, failed, new = fake_row("done_row"), fake_row("failed_row"), fake_row("new_row")
    write_result(tmp_path, done)
    write_result(tmp_path, failed, status="failed", metrics=None)
    ran = []

    def fake_run_row(row, root, smoke=False):
        ran.append(row.name)
        return {"status": "done" if row.name == "new_row" else "failed", "wall_seconds": 1.0, "log": "x.log"}

    monkeypatch.setattr(ablation, "run_row", fake_run_row)
    assert ablation.run_queue([done, failed, new], tmp_path) == 1
    assert ran == ["failed_row", "new_row"]


def test_rerun_runs_a_done_row_again_and_an_interrupted_rerun_leaves_it_not_done(tmp_path, monkeypatch):
    row = fake_row("done_row")
    write_result(tmp_path, row)

    def interrupted(row, root, smoke=False):
        assert ablation.row_state(row, root)[0] == "not run"  # the old record is set aside before the run
        raise KeyboardInterrupt

    monkeypatch.setattr(ablation, "run_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ablation.run_queue([row], tmp_path, rerun=("done_row",))
    assert ablation.row_state(row, tmp_path)[0] == "not run"
    assert (tmp_path / row.output_dir / "row.previous.json").is_file()


def test_a_row_whose_heads_source_ran_again_is_stale_and_runs_again(tmp_path, monkeypatch):
    rows = ablation.rows_by_name()
    write_result(tmp_path, rows["frozen"], start="2026-11-27T10:00:00+00:00", end="2026-11-27T10:05:00+00:00")
    write_result(tmp_path, rows["transfer"], start="2026-11-27T10:06:00+00:00", end="2026-11-27T10:15:00+00:00")
    transfer_record = ablation.row_state(rows["transfer"], tmp_path)[1]
    assert ablation.stale_reason(rows["transfer"], transfer_record, tmp_path) is None
    write_result(tmp_path, rows["frozen"], start="2026-11-28T01:00:00+00:00", end="2026-11-28T01:05:00+00:00")
    reason = ablation.stale_reason(rows["transfer"], transfer_record, tmp_path)
    assert "row 'frozen' was run again after this row started" in reason
    assert "stale: to run again" in ablation.table_line(rows["transfer"], tmp_path)
    ran = []
    monkeypatch.setattr(ablation, "run_row", lambda row, root, smoke=False: ran.append(row.name) or
                        {"status": "done", "wall_seconds": 1.0})
    assert ablation.run_queue([rows["frozen"], rows["transfer"]], tmp_path) == 0
    assert ran == ["transfer"]


def test_run_queue_continues_past_a_refused_row(tmp_path, monkeypatch):
    rows = ablation.rows_by_name()
    monkeypatch.setattr(ablation, "run_row", lambda row, root, smoke=False: {"status": "done", "wall_seconds": 1.0})
    assert ablation.run_queue([rows["transfer"], rows["pal"]], tmp_path) == 1  # transfer refused, pal ran


def test_smoke_argv_overrides_budget_output_and_heads_source(tmp_path):
    rows = ablation.rows_by_name()
    argv = ablation.row_argv(rows["transfer"], tmp_path, smoke=True)
    assert argv[:5] == [sys.executable, "-m", "hf_multitask.cli", "train", "examples/cs224n/ablation/transfer.yaml"]
    assert argv[5:] == ["--max_steps", "2", *ablation.SMOKE_FLAGS, "--output_dir",
                        str(tmp_path / "runs/ablation/r800_transfer"), "--init_heads_from",
                        str(tmp_path / "runs/ablation/r800_frozen")]
    script = ablation.row_argv(rows["single_task_hf"], tmp_path, smoke=True)
    assert script[1] == "examples/cs224n/single_task_hf.py" and "--max_steps_per_task" in script


def test_argv_resumes_a_row_that_left_checkpoints(tmp_path):
    row = ablation.rows_by_name()["pal"]
    assert "--resume_from_checkpoint" not in ablation.row_argv(row, tmp_path, smoke=False)
    (tmp_path / row.output_dir / "checkpoint-200").mkdir(parents=True)
    assert ablation.row_argv(row, tmp_path, smoke=False)[-2:] == ["--resume_from_checkpoint", "true"]


def test_main_group_has_one_row_per_config_and_new_output_dirs():
    rows = ablation.main_rows()
    configs = {p.stem for p in (REPO / ablation.CONFIG_DIR).glob("*.yaml")}
    assert {r.name for r in rows if r.is_cli} == configs
    old = {r.output_dir for r in ablation.short_rows()}
    assert all(r.output_dir.startswith("runs/ablation/r800_") and r.output_dir not in old for r in rows)
    assert [r.name for r in rows][0] == "frozen"  # before the rows that start from its heads


def test_select_rows_keeps_the_group_order_and_rejects_unknown_names():
    assert [r.name for r in ablation.select_rows("main", ["transfer", "frozen"])] == ["frozen", "transfer"]
    with pytest.raises(SystemExit, match=r"unknown row\(s\) \['frozn'\]"):
        ablation.select_rows("main", ["frozn"])


def test_queue_lock_refuses_while_another_queue_lives(tmp_path):
    lock = tmp_path / "runs/ablation/.queue.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(str(os.getppid()))  # a live process that is not this one
    with pytest.raises(SystemExit, match="another ablation queue"):
        with ablation.queue_lock(tmp_path):
            pass
    lock.write_text("999999999")  # stale: no such process
    with ablation.queue_lock(tmp_path):
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


@pytest.mark.parametrize("seconds, text", [(41.2, "41 s"), (581, "9 min 41 s"), (3725, "1 h 02 min")])
def test_format_seconds(seconds, text):
    assert ablation.format_seconds(seconds) == text
