"""benchmarks/ablation_stats.py: per-row means over seeds, paired bootstrap intervals against the comparator, the
verdicts, the tables and the plot, on fake archives whose answers are known."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import ablation  # noqa: E402
import ablation_stats  # noqa: E402

N = 400  # dev examples per task in the fake archives


def archive_run(root: Path, row: ablation.Row, seed: int, sst_right: float, sts_noise: float, rng) -> None:
    """A done run whose SST predictions are right on a `sst_right` share of N examples and whose STS scores are
    gold + noise of sd `sts_noise`."""
    run = row.at_seed(seed)
    fixed = np.random.default_rng(123)  # the same dev set for every run
    gold_sst, gold_sts = fixed.integers(0, 5, N), fixed.uniform(0, 5, N)
    right = rng.random(N) < sst_right
    predicted = np.where(right, gold_sst, (gold_sst + 1) % 5)
    scores = gold_sts + rng.normal(0, sts_noise, N)
    records = [{"task": "sst", "id": f"s{i}", "labels": int(g), "label_id": int(p)}
               for i, (g, p) in enumerate(zip(gold_sst, predicted))]
    records += [{"task": "sts", "id": f"t{i}", "labels": float(g), "score": float(p)}
                for i, (g, p) in enumerate(zip(gold_sts, scores))]
    archive = run.archive(root)
    archive.mkdir(parents=True)
    with gzip.open(archive / ablation.PREDICTIONS, "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    (archive / "eval_results.json").write_text(json.dumps(ablation.metrics_from_predictions(
        archive / ablation.PREDICTIONS)))
    (archive / "run.json").write_text(json.dumps({"status": "done", "wall_seconds": 100.0 + seed,
                                                  "load_average": {"mean": 2.0}}))


@pytest.fixture
def study(tmp_path, monkeypatch):
    """base (reference), better (+0.15 SST accuracy), same (base's quality, other seeds), noisy-sts (worse STS)."""
    rows = [ablation.Row("base", "reference", ("python", "x.py"), "runs/ablation/base", seeds=(1, 2, 3)),
            ablation.Row("better", "+ a", ("python", "x.py"), "runs/ablation/better", comparator="base",
                         seeds=(1, 2, 3)),
            ablation.Row("same", "A/A", ("python", "x.py"), "runs/ablation/same", comparator="base",
                         seeds=(4, 5, 6)),
            ablation.Row("worse_sts", "+ b", ("python", "x.py"), "runs/ablation/worse", comparator="base",
                         seeds=(1, 2, 3))]
    monkeypatch.setitem(ablation.GROUPS, "main", lambda: rows)
    rng = np.random.default_rng(0)
    for seed in (1, 2, 3):
        archive_run(tmp_path, rows[0], seed, 0.5, 0.5, rng)
        archive_run(tmp_path, rows[1], seed, 0.65, 0.5, rng)
        archive_run(tmp_path, rows[3], seed, 0.5, 5.0, rng)
    for seed in (4, 5, 6):
        archive_run(tmp_path, rows[2], seed, 0.5, 0.5, rng)
    return tmp_path, {row.name: row for row in rows}


def test_means_and_paired_differences_are_what_the_predictions_give(study):
    root, rows = study
    better, base = (ablation_stats.summarize(rows[name], root, n_resamples=200) for name in ("better", "base"))
    sst = [ablation_stats.scores(run)["sst"] for run in better.runs]
    assert better.mean["sst"] == pytest.approx(np.mean(sst)) and better.sd["sst"] == pytest.approx(np.std(sst, ddof=1))
    point, low, high = better.difference["sst"]
    assert point == pytest.approx(better.mean["sst"] - base.mean["sst"])
    assert low < point < high and 0 < low < 0.15 < high < 0.35  # +0.15 by construction
    assert base.difference == {}  # the reference has no comparator


def test_verdicts_follow_the_interval(study):
    root, rows = study
    results = {name: ablation_stats.summarize(rows[name], root, n_resamples=200) for name in rows}
    assert ablation_stats.verdict(*results["better"].difference["overall"][1:]) == "helps"
    assert ablation_stats.verdict(*results["worse_sts"].difference["overall"][1:]) == "hurts"
    low, high = results["same"].difference["overall"][1:]
    assert low < 0 < high and ablation_stats.verdict(low, high) == "no effect detectable at this budget"


def test_an_interval_needs_two_paired_seeds(study):
    root, rows = study
    for seed in (2, 3):
        (rows["better"].at_seed(seed).archive(root) / "run.json").unlink()
    result = ablation_stats.summarize(rows["better"], root, n_resamples=50)
    assert len(result.runs) == 1 and result.difference == {} and np.isnan(result.sd["sst"])
    line = ablation_stats.main_table([result]).splitlines()[2]
    assert "| 1/3 |" in line and line.count("—") >= 2


def test_tables_and_plot(study, tmp_path):
    root, rows = study
    results = [ablation_stats.summarize(row, root, n_resamples=100) for row in rows.values()]
    table = ablation_stats.main_table(results).splitlines()
    assert table[2].startswith("| base | reference | — | 3/3 |") and "| helps |" in table[3]
    assert "| hurts |" in table[5] and "101 s" not in table[2]  # mean wall time of 101, 102, 103 s: 1 min 42 s
    assert "1 min 42 s" in table[2]
    assert table[2].endswith("| unknown ×3 |")  # the fakes record no machine
    runs = [ablation_stats.Run(seed, {}, {"machine": {"cpu": cpu}}, {}) for seed, cpu in
            enumerate(["AMD EPYC", "Intel(R) Xeon(R) Processor", "Intel(R) Xeon(R) Processor"])]
    assert ablation_stats.machines_cell(runs) == "AMD EPYC ×1, Intel Xeon ×2"
    per_task = ablation_stats.task_difference_table(results).splitlines()
    assert [line.split(" | ")[0] for line in per_task[2:]] == ["| better", "| same", "| worse_sts"]
    versions = ablation_stats.versions_table(results).splitlines()
    assert versions[2].startswith("| unknown | base 1, base 2, base 3, better 1,")  # the fakes record no commit
    path = ablation_stats.plot_differences(results, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_interval_adds_the_seed_and_the_dev_set_variance(study):
    """Never narrower than a t-interval on the per-pair differences alone (a percentile bootstrap over 3 seed pairs
    is their range); with no seed variance, the dev-set bootstrap's standard error times the same t(0.975, n - 1):
    per-pair differences that tie by chance (accuracies move in steps of one dev example) are an estimate of the
    seed variance with n - 1 degrees of freedom like any other (the normal 1.96 made such intervals 2.2 times too
    narrow with 3 pairs)."""
    from scipy.stats import t

    root, rows = study
    better, base = (ablation_stats.done_runs(rows[name], root) for name in ("better", "base"))
    per_pair = np.array([ablation_stats.scores(a)["sst"] - ablation_stats.scores(b)["sst"]
                         for a, b in zip(better, base)])
    point, low, high = ablation_stats.paired_intervals(better, base, ["sst"], n_resamples=300)["sst"]
    seeds_only = t.ppf(0.975, 2) * per_pair.std(ddof=1) / np.sqrt(3)
    assert point == pytest.approx(per_pair.mean()) and high - point == pytest.approx(point - low)
    assert high - point > seeds_only
    same = [better[0]] * 3, [base[0]] * 3  # one pair three times: no seed variance
    point, low, high = ablation_stats.paired_intervals(*same, ["sst"], n_resamples=300)["sst"]
    a, b = better[0].predictions["sst"], base[0].predictions["sst"]
    right = (a["predicted"] == a["gold"]).astype(float) - (b["predicted"] == b["gold"]).astype(float)
    assert (high - low) / 2 == pytest.approx(t.ppf(0.975, 2) * right.std() / np.sqrt(len(right)), rel=0.15)


def test_a_row_with_more_seeds_than_its_comparator_pairs_those_it_can(study):
    root, rows = study
    longer = ablation.Row("better", "+ a", ("python", "x.py"), "runs/ablation/better", comparator="base",
                          seeds=(1, 2, 3, 7))
    result = ablation_stats.summarize(longer, root, n_resamples=50)
    assert len(result.runs) == 3 and "overall" in result.difference


def test_pairs_on_different_examples_are_refused(study):
    root, rows = study
    base, better = (ablation_stats.done_runs(rows[name], root) for name in ("base", "better"))
    better[0].predictions["sst"]["id"] = better[0].predictions["sst"]["id"][::-1]
    with pytest.raises(SystemExit, match="not on the same dev examples"):
        ablation_stats.paired_intervals(better, base, ["overall"], n_resamples=10)


def test_pairs_whose_ids_carry_other_gold_labels_are_refused(study):
    """The ids alone passed single_task_hf.py's predictions, whose ids named other rows (gold and prediction came
    in the Trainer's length-grouped evaluation order, the ids in file order)."""
    root, rows = study
    base, better = (ablation_stats.done_runs(rows[name], root) for name in ("base", "better"))
    data = better[0].predictions["sst"]
    data["gold"], data["predicted"] = data["gold"][::-1].copy(), data["predicted"][::-1].copy()
    assert not np.array_equal(data["gold"], base[0].predictions["sst"]["gold"])
    with pytest.raises(SystemExit, match=r"of the sst predictions' ids carry another gold label"):
        ablation_stats.paired_intervals(better, base, ["overall"], n_resamples=10)


def test_pairs_on_different_tasks_are_refused(study):
    root, rows = study
    base, better = (ablation_stats.done_runs(rows[name], root) for name in ("base", "better"))
    del better[0].predictions["sts"]
    with pytest.raises(SystemExit, match=r"predictions for tasks"):
        ablation_stats.paired_intervals(better, base, ["overall"], n_resamples=10)
