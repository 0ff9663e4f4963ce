import pytest

from hf_multitask import TaskSpec, cs224n_tasks, get_task


def test_presets_match_the_cs224n_files():
    sst, quora, sts = cs224n_tasks()
    assert (sst.num_labels, sst.metric, sst.text_columns) == (5, "accuracy", ("sentence",))
    assert (quora.num_labels, quora.label_column, quora.is_pair) == (2, "is_duplicate", True)
    assert (sts.kind, sts.score_range, sts.metric, sts.num_labels) == ("regression", (0.0, 5.0), "pearson", 1)


def test_metric_to_unit_maps_correlation_to_zero_one():
    assert get_task("sts").metric_to_unit(-1.0) == 0.0
    assert get_task("sts").metric_to_unit(0.6) == pytest.approx(0.8)
    assert get_task("sst").metric_to_unit(0.5) == 0.5


def test_spec_round_trips_through_dict():
    spec = get_task("sts", pair_encoding="bi", loss_weight=2.0)
    assert TaskSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"kind": "ranking"}, "kind must be one of"),
        ({"label_names": ["only"]}, "label_names"),
        ({"loss": "mse"}, "not valid for classification"),
        ({"metric": "pearson"}, "not valid for classification"),
        ({"pair_encoding": "siamese"}, "pair_encoding"),
        ({"text_columns": ("a", "b", "c")}, "1 or 2 columns"),
        ({"name": "bad name"}, "non-empty identifier"),
    ],
)
def test_spec_rejects_inconsistent_fields(changes, match):
    with pytest.raises(ValueError, match=match):
        TaskSpec.from_dict({**get_task("sst").to_dict(), **changes})


def test_regression_needs_a_valid_range():
    with pytest.raises(ValueError, match="score_range"):
        get_task("sts", score_range=(5, 0))


def test_unknown_preset_and_unknown_field_are_named():
    with pytest.raises(ValueError, match="Unknown task 'nli'"):
        get_task("nli")
    with pytest.raises(ValueError, match="colour"):
        TaskSpec.from_dict({**get_task("sst").to_dict(), "colour": "red"})
