import numpy as np
import pytest

from hf_multitask import compute_task_metrics, cs224n_tasks, get_task, overall_score


def test_accuracy_and_pearson_through_evaluate():
    logits = np.array([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    assert compute_task_metrics(get_task("quora"), logits, np.array([1, 0, 0])) == {"accuracy": pytest.approx(2 / 3)}
    scores = np.array([[1.0], [2.0], [3.0]])
    assert compute_task_metrics(get_task("sts"), scores, np.array([2.0, 4.0, 6.0]))["pearson"] == pytest.approx(1.0)


def test_f1_and_spearman():
    f1 = compute_task_metrics(get_task("quora", metric="f1"), np.array([[0, 1], [0, 1], [1, 0]]), np.array([1, 0, 0]))
    assert f1["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    rho = compute_task_metrics(get_task("sts", metric="spearman"), np.array([1.0, 5.0, 9.0]), np.array([0, 1, 4.0]))
    assert rho["spearman"] == pytest.approx(1.0)


def test_overall_score_is_the_cs224n_formula():
    specs = {t.name: t for t in cs224n_tasks()}
    metrics = {"eval_sst_accuracy": 0.5, "eval_quora_accuracy": 0.8, "eval_sts_pearson": 0.6}
    assert overall_score(specs, metrics, prefix="eval") == pytest.approx((0.5 + 0.8 + (0.6 + 1) / 2) / 3)


@pytest.mark.parametrize("metric", ["pearson", "spearman"])
def test_a_correlation_of_one_row_is_undefined_not_an_error(metric):
    """scipy refuses fewer than two rows; a one-row dev set is NaN, which evaluation warns about (reliability.md)."""
    spec = get_task("sts").replace(metric=metric)
    assert np.isnan(compute_task_metrics(spec, np.array([[3.0]]), np.array([4.0]))[metric])
