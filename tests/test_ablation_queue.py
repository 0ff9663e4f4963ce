"""benchmarks/ablation.py: row states, refusals, the queue loop and the results table, on fake result dirs."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
ablation = sys.modules["ablation"] = importlib.util.module_from_spec(_spec)  # dataclasses look the module up
_spec.loader.exec_module(ablation)

METRICS = {"eval_sst_accuracy": 0.5, "eval_quora_accuracy": 0.8, "eval_sts_pearson": 0.85, "eval_overall": 0.7083}


def write_predictions(path: Path, sst=(1, 0, 2, 2), sts=(0.5, 2.0, 4.0)) -> None:
    """A predictions file: SST predicted ids against gold (1, 0, 2, 3): 3 of 4 right; STS scores against (1, 2, 5)."""
    records = [{"task": "sst", "id": f"s{i}", "labels": g, "label_id": p} for i, (g, p) in enumerate(zip(
        (1, 0, 2, 3), sst))] + [{"task": "sts", "id": f"t{i}", "labels": g, "score": p}
                                for i, (g, p) in enumerate(zip((1.0, 2.0, 5.0), sts))]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)


def write_result(root: Path, row, status: str | None = "done", metrics: dict | None = METRICS, **record) -> Path:
    """A run's archive as the queue leaves it (and its model directory, for the rows that start from it)."""
    archive = row.archive(root)
    archive.mkdir(parents=True, exist_ok=True)
    (root / row.output_dir).mkdir(parents=True, exist_ok=True)
    (root / row.output_dir / "config.json").write_text("{}")
    if metrics is not None:
        (archive / "eval_results.json").write_text(json.dumps(metrics))
        write_predictions(archive / ablation.PREDICTIONS)
    if status is not None:
        record = {"status": status, "wall_seconds": 581.0, "log": f"{root / row.output_dir}.log",
                  "machine": {"nproc": 2, "cpu": "AMD EPYC"}, **record}
        (archive / "run.json").write_text(json.dumps(record))
    return archive


def fake_row(name: str, code: str = "", needs=(), seeds=(7,)) -> ablation.Row:
    return ablation.Row(name, f"changes of {name}", ("python", "-c", code), f"runs/ablation/{name}", needs,
                        seeds=seeds)


def test_row_state_not_run_without_results(tmp_path):
    assert ablation.row_state(fake_row("a"), tmp_path)[0] == "not run"


def test_row_state_done_needs_eval_results_predictions_and_run_json(tmp_path):
    row = fake_row("a")
    write_result(tmp_path, row, status=None)
    assert ablation.row_state(row, tmp_path)[0] == "not run"  # killed after eval, before the queue's record
    write_result(tmp_path, row, status="done")
    state, record, metrics = ablation.row_state(row, tmp_path)
    assert (state, record["wall_seconds"], metrics) == ("done", 581.0, METRICS)
    (row.archive(tmp_path) / ablation.PREDICTIONS).unlink()
    assert ablation.row_state(row, tmp_path)[0] == "not run"


def test_row_state_failed_record_is_failed_even_with_stale_results(tmp_path):
    row = fake_row("a")
    write_result(tmp_path, row, status="failed", exit_code=1)
    assert ablation.row_state(row, tmp_path)[0] == "failed"


def test_replace_between_markers_keeps_the_rest_of_the_page():
    start, end = ablation.MARKERS
    text = f"# Results\n\nintro\n{start}\nold table\n{end}\n\nafter\n"
    new = ablation.replace_between_markers(text, "| new |")
    assert new == f"# Results\n\nintro\n{start}\n| new |\n{end}\n\nafter\n"
    assert ablation.replace_between_markers(new, "| new |") == new


def test_replace_between_markers_without_markers_is_an_error():
    with pytest.raises(SystemExit, match="no <!-- ablation-table:start -->"):
        ablation.replace_between_markers("# Results\n", "| t |", "docs/results.md")


def test_transfer_is_refused_until_frozen_of_the_same_seed_is_done_here(tmp_path):
    rows = ablation.rows_by_name()
    transfer = rows["transfer"].at_seed(43)
    assert transfer.command[-2:] == ("--init_heads_from", "runs/ablation/r800_frozen/seed43")
    assert "run `python benchmarks/ablation.py run --seeds 43 frozen` first" in ablation.refusal(transfer, tmp_path)
    write_result(tmp_path, rows["frozen"].at_seed(42))
    assert "'frozen seed 43'" in ablation.refusal(transfer, tmp_path)
    write_result(tmp_path, rows["frozen"].at_seed(43))
    assert ablation.refusal(transfer, tmp_path) is None
    (tmp_path / "runs/ablation/r800_frozen/seed43/config.json").unlink()  # archived, but the model is elsewhere
    assert "model is not on this machine" in ablation.refusal(transfer, tmp_path)
    assert ablation.missing_models(transfer, tmp_path) == [rows["frozen"].at_seed(43)]


def fake_training(sst=(1, 0, 2, 2), code=0):
    """A `run_row` that 'trains' a run: its model's config.json, and an archive with these SST predictions."""
    ran = []

    def run_row(row, root, smoke=False, archive=None):
        ran.append((row.label, archive))
        if code:
            return {"status": "failed", "problem": f"exit code {code}", "log": "x.log", "wall_seconds": 1.0}
        (root / row.output_dir).mkdir(parents=True, exist_ok=True)
        (root / row.output_dir / "config.json").write_text("{}")
        archive = archive or row.archive(root)
        archive.mkdir(parents=True, exist_ok=True)
        (archive / "eval_results.json").write_text(json.dumps(METRICS))
        write_predictions(archive / ablation.PREDICTIONS, sst=sst)
        return {"status": "done", "end": "2026-12-02T00:10:00+00:00", "wall_seconds": 270.0, "log": "x.log",
                "machine": {"nproc": 2}, "git_commit": "abc"}

    return run_row, ran


@pytest.mark.parametrize("same", [True, False])
def test_a_needed_run_archived_without_its_model_is_rebuilt_and_checked_against_the_archive(tmp_path, monkeypatch,
                                                                                            same):
    rows = ablation.rows_by_name()
    frozen, transfer = rows["frozen"].at_seed(42), rows["transfer"].at_seed(42)
    write_result(tmp_path, frozen, start="2026-12-01T10:00:00+00:00", end="2026-12-01T10:05:00+00:00")
    (tmp_path / frozen.output_dir / "config.json").unlink()  # a new work tree: the archive, not the model
    run_row, ran = fake_training(sst=(1, 0, 2, 2) if same else (1, 0, 2, 3))
    monkeypatch.setattr(ablation, "run_row", run_row)
    assert ablation.run_queue([frozen, transfer], tmp_path) == 0
    scratch = tmp_path / "runs/ablation/rebuilt/frozen/seed42"
    assert ran == [("frozen seed 42", scratch), ("transfer seed 42", None)]  # frozen skipped as done, rebuilt
    record = json.loads((frozen.archive(tmp_path) / "run.json").read_text())
    if same:  # the archive stays, with the rebuild as evidence that the run reproduces
        assert record["start"] == "2026-12-01T10:00:00+00:00" and record["rebuilds"][0]["same_predictions"]
        assert not (frozen.archive(tmp_path) / "run.previous.json").exists()
    else:  # the rebuilt run (the heads transfer starts from) replaces the archive; the old record is kept
        assert record["replaced"]["because"] == "rebuilt with other predictions"
        assert (frozen.archive(tmp_path) / "run.previous.json").is_file()
        assert (frozen.archive(tmp_path) / ablation.PREDICTIONS).read_bytes() == \
            (scratch / ablation.PREDICTIONS).read_bytes()
    assert ablation.row_state(frozen, tmp_path)[0] == "done"


def test_predictions_are_compared_as_values_not_bytes(tmp_path):
    write_predictions(tmp_path / "a.jsonl.gz")
    records = [json.loads(line) for line in gzip.open(tmp_path / "a.jsonl.gz", "rt")]
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:  # other key order, an extra field: the same values
        handle.writelines(json.dumps({"extra": 1, **dict(reversed(list(r.items())))}) + "\n" for r in records)
    write_predictions(tmp_path / "c.jsonl.gz", sst=(1, 0, 2, 3))
    assert (tmp_path / "a.jsonl.gz").read_bytes() != (tmp_path / "b.jsonl.gz").read_bytes()
    assert ablation.same_predictions(tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz")
    assert not ablation.same_predictions(tmp_path / "a.jsonl.gz", tmp_path / "c.jsonl.gz")


def test_a_failed_rebuild_refuses_the_dependent_run(tmp_path, monkeypatch):
    rows = ablation.rows_by_name()
    frozen, transfer = rows["frozen"].at_seed(42), rows["transfer"].at_seed(42)
    write_result(tmp_path, frozen)
    (tmp_path / frozen.output_dir / "config.json").unlink()
    run_row, ran = fake_training(code=3)
    monkeypatch.setattr(ablation, "run_row", run_row)
    assert ablation.run_queue([transfer], tmp_path) == 1
    assert [label for label, _ in ran] == ["frozen seed 42"]  # transfer itself never ran
    assert "run.json" in {p.name for p in frozen.archive(tmp_path).iterdir()}  # the archive is untouched


def test_a_row_whose_log_is_being_written_is_refused(tmp_path):
    row = fake_row("a")
    row.log_path(tmp_path).parent.mkdir(parents=True)
    row.log_path(tmp_path).write_text("step 10\n")
    assert "seems to be going on" in ablation.refusal(row, tmp_path)
    old = time.time() - 2 * ablation.BUSY_SECONDS
    os.utime(row.log_path(tmp_path), (old, old))
    assert ablation.refusal(row, tmp_path) is None


def script_run(tmp_path, metrics: dict, sst=(1, 0, 2, 2)) -> ablation.Row:
    """A script row whose run writes `metrics` and the predictions `write_predictions` makes."""
    out = tmp_path / "runs/ablation/ok/seed7"
    code = (f"import json, sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from test_ablation_queue import "
            f"write_predictions; from pathlib import Path; open({str(out / 'eval_results.json')!r}, 'w')"
            f".write(json.dumps({metrics!r})); write_predictions(Path({str(out / ablation.PREDICTIONS)!r}), "
            f"sst={sst!r}); print('hi')")
    return fake_row("ok", code).at_seed(7)


# SST 3 of 4 right; STS r of (0.5, 2, 4) against (1, 2, 5); overall = (0.75 + (r + 1) / 2) / 2
R = float(np.corrcoef([1.0, 2.0, 5.0], [0.5, 2.0, 4.0])[0, 1])
TRUE = {"eval_sst_accuracy": 0.75, "eval_sts_pearson": R, "eval_overall": (0.75 + (R + 1) / 2) / 2}


def test_run_row_records_checks_and_archives_the_run(tmp_path):
    row = script_run(tmp_path, TRUE)
    record = ablation.run_row(row, tmp_path)
    assert record["status"] == "done" and record["exit_code"] == 0 and record["wall_seconds"] >= 0, record
    assert record["peak_rss_mb"] > 1 and record["machine"]["nproc"] >= 1 and "torch" in record
    assert record["seed"] == 7 and record["load_average"]["samples"] >= 1
    assert record["argv"][0] == sys.executable and record["command"].startswith("python -c ")
    archive = tmp_path / ablation.ARCHIVE / "ok" / "seed7"
    assert json.loads((archive / "run.json").read_text()) == record
    assert json.loads((archive / "eval_results.json").read_text()) == TRUE
    assert ablation.metrics_from_predictions(archive / ablation.PREDICTIONS) == pytest.approx(TRUE)
    assert (tmp_path / "runs/ablation/ok/seed7.log").read_text() == "hi\n"
    assert ablation.row_state(row, tmp_path)[0] == "done"


def test_run_row_fails_a_run_whose_predictions_do_not_give_its_metrics(tmp_path):
    row = script_run(tmp_path, TRUE, sst=(0, 0, 2, 1))  # 2 of 4 right, but 0.75 reported
    record = ablation.run_row(row, tmp_path)
    assert record["status"] == "failed" and "eval_sst_accuracy" in record["problem"]
    assert ablation.row_state(row, tmp_path)[0] == "failed"
    assert not (row.archive(tmp_path) / "eval_results.json").exists()


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
    assert (row.archive(tmp_path) / "run.previous.json").is_file()


def test_a_row_whose_heads_source_ran_again_is_stale_and_runs_again(tmp_path, monkeypatch):
    rows = ablation.rows_by_name()
    write_result(tmp_path, rows["frozen"], start="2026-11-27T10:00:00+00:00", end="2026-11-27T10:05:00+00:00")
    write_result(tmp_path, rows["transfer"], start="2026-11-27T10:06:00+00:00", end="2026-11-27T10:15:00+00:00")
    transfer_record = ablation.row_state(rows["transfer"], tmp_path)[1]
    assert ablation.stale_reason(rows["transfer"], transfer_record, tmp_path) is None
    write_result(tmp_path, rows["frozen"], start="2026-11-28T01:00:00+00:00", end="2026-11-28T01:05:00+00:00")
    reason = ablation.stale_reason(rows["transfer"], transfer_record, tmp_path)
    assert "'frozen' was run again after this run started" in reason
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
    argv = ablation.row_argv(rows["transfer"].at_seed(43), tmp_path, smoke=True)
    assert argv[:5] == [sys.executable, "-m", "hf_multitask.cli", "train", "examples/cs224n/ablation/transfer.yaml"]
    out = "runs/ablation/r800_transfer/seed43"
    assert argv[5:13] == ["--seed", "43", "--output_dir", out, "--predictions_file", f"{out}/{ablation.PREDICTIONS}",
                          "--init_heads_from", "runs/ablation/r800_frozen/seed43"]
    assert argv[13:] == ["--max_steps", "2", *ablation.SMOKE_FLAGS, "--output_dir", str(tmp_path / out),
                         "--predictions_file", str(tmp_path / out / ablation.PREDICTIONS), "--init_heads_from",
                         str(tmp_path / "runs/ablation/r800_frozen/seed43")]
    script = ablation.row_argv(rows["single_task_hf"].at_seed(42), tmp_path, smoke=True)
    assert script[1] == "examples/cs224n/single_task_hf.py" and "--max_steps_per_task" in script
    assert script[-2:] == ["--predictions", str(tmp_path / "runs/ablation/r800_single_task_hf/seed42" /
                                                ablation.PREDICTIONS)]


def test_runs_go_row_by_row_and_each_has_its_own_output_and_archive(tmp_path):
    rows = [ablation.rows_by_name()[name] for name in ("frozen", "aa", "transfer")]
    runs = ablation.expand_runs(rows)
    assert [r.label for r in runs] == ["frozen seed 42", "frozen seed 43", "frozen seed 44", "aa seed 45",
                                       "aa seed 46", "aa seed 47", "transfer seed 42", "transfer seed 43",
                                       "transfer seed 44"]
    assert [r.label for r in ablation.expand_runs(rows, seeds=(43, 46))] == ["frozen seed 43", "aa seed 46",
                                                                              "transfer seed 43"]
    assert runs[3].command[:3] == ("hf-multitask", "train", "examples/cs224n/ablation/cross_annealed.yaml")
    assert runs[3].output_dir == "runs/ablation/r800_aa/seed45"
    assert runs[3].archive(tmp_path) == tmp_path / "benchmarks/results/ablation/aa/seed45"


def test_the_queue_waits_while_the_pause_file_exists(tmp_path, monkeypatch):
    pause = tmp_path / ablation.PAUSE
    pause.parent.mkdir(parents=True)
    pause.touch()
    polls = []
    monkeypatch.setattr(ablation.time, "sleep", lambda seconds: polls.append(seconds) or (
        len(polls) == 3 and pause.unlink()))
    ablation.wait_while_paused(tmp_path, poll=5)
    assert polls == [5, 5, 5] and not pause.exists()


def test_argv_resumes_a_row_that_left_checkpoints(tmp_path):
    row = ablation.rows_by_name()["pal"]
    assert "--resume_from_checkpoint" not in ablation.row_argv(row, tmp_path, smoke=False)
    (tmp_path / row.output_dir / "checkpoint-200").mkdir(parents=True)
    assert ablation.row_argv(row, tmp_path, smoke=False)[-2:] == ["--resume_from_checkpoint", "true"]


def test_main_group_has_one_row_per_config_and_new_output_dirs():
    rows = ablation.main_rows()
    configs = {p.stem for p in (REPO / ablation.CONFIG_DIR).glob("*.yaml")}
    assert {r.name for r in rows if r.is_cli and r.name != "aa"} == configs
    old = {r.output_dir for r in ablation.short_rows()}
    assert all(r.output_dir.startswith("runs/ablation/r800_") and r.output_dir not in old for r in rows)
    assert len({r.output_dir for r in rows}) == len(rows)
    assert [r.name for r in rows][0] == "frozen"  # before the rows that start from its heads


def test_every_row_has_three_seeds_and_a_comparator_that_runs_with_the_same_seeds():
    rows = ablation.rows_by_name()
    assert all(len(row.seeds) >= 3 for row in rows.values())
    assert [name for name, row in rows.items() if row.comparator is None] == ["cross_annealed"]
    for row in rows.values():
        if row.comparator is not None and row.name != "aa":
            assert rows[row.comparator].seeds == row.seeds
    assert set(rows["aa"].seeds).isdisjoint(rows["cross_annealed"].seeds)
    assert {rows[name].comparator for name in ("pcgrad", "gradvac", "mgda", "uncertainty")} == {"grouped_none"}


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


def test_status_estimates_the_time_left_from_quiet_runs(tmp_path, capsys):
    a, b = fake_row("a", seeds=(1, 2, 3)), fake_row("b", seeds=(1, 2))
    write_result(tmp_path, a.at_seed(1), wall_seconds=600.0, load_average={"mean": 2.1})
    write_result(tmp_path, a.at_seed(2), wall_seconds=2400.0, load_average={"mean": 5.0})  # busy: not counted
    write_result(tmp_path, b.at_seed(1), wall_seconds=300.0, load_average={"mean": 2.0})
    ablation.print_status([*a.runs(), *b.runs()], tmp_path)
    # a seed 3 at a's quiet median (600 s), b seed 2 at b's (300 s)
    assert capsys.readouterr().out.rstrip().endswith("3 of 5 runs done; about 15 min 00 s left at the quiet runs' "
                                                     "median times (2 runs)")
    assert ablation.remaining_time([a.at_seed(3)], tmp_path / "empty") == ""


@pytest.mark.parametrize("seconds, text", [(41.2, "41 s"), (581, "9 min 41 s"), (3725, "1 h 02 min")])
def test_format_seconds(seconds, text):
    assert ablation.format_seconds(seconds) == text


def test_a_script_row_imports_the_library_of_the_queues_checkout(tmp_path, monkeypatch):
    """`python examples/x.py` puts the script's folder first on sys.path; the repo root leads PYTHONPATH so that
    `import hf_multitask` finds this checkout (whose commit run.json records), not an editable install elsewhere."""
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    script = tmp_path / "examples" / "where.py"
    script.parent.mkdir()
    script.write_text("import os, sys\nprint(os.environ['PYTHONPATH'])\nprint(sys.path[1])\n")
    code, _ = ablation.run_logged([sys.executable, str(script)], tmp_path / "log")
    paths, first = (tmp_path / "log").read_text().splitlines()
    assert code == 0 and paths == os.pathsep.join([str(ablation.REPO), "/elsewhere"])
    assert first == str(ablation.REPO)
