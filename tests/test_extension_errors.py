"""Mistakes a researcher makes when adding a kind, an aggregator, a regulariser or a loss weighting (docs/
architecture.md, docs/gradients.md, docs/regularizers.md, docs/loss_weighting.md): each is an error naming the
extension, not a silent wrong result or a bare torch error from deep inside training."""

import numpy as np
import pytest
import torch
from torch import nn

from hf_multitask import Regularizer, TaskSpec, cs224n_tasks, register_regularizer
from hf_multitask.aggregators import Aggregator, aggregate, register_aggregator
from hf_multitask.checkpointing import save_training_state
from hf_multitask.heads import SentenceHead
from hf_multitask.kinds import ClassificationKind, TaskKind, register_kind
from hf_multitask.kinds.base import KINDS
from hf_multitask.loss_weighting import LOSS_WEIGHTINGS, LossWeighting, register_loss_weighting
from hf_multitask.metrics import compute_task_metrics
from hf_multitask.regularizers import REGULARIZERS
from hf_multitask.utils import Registry

from .conftest import make_model, make_trainer


class NanWeights(Aggregator):
    name = "nan_weights_test"

    def weights(self, grams, generator):
        return torch.full(grams.shape[:2], float("nan"), dtype=torch.float64), 0


def test_an_aggregators_non_finite_weights_are_an_error_naming_it():
    """Applied unchecked, NaN weights wrote NaN into every gradient and the loss guard blamed the tasks."""
    grams = torch.eye(3, dtype=torch.float64)[None]
    with pytest.raises(FloatingPointError, match="'nan_weights_test'.weights returned non-finite weights"):
        aggregate(NanWeights(3), grams, torch.Generator())


def test_registering_an_instance_or_an_aggregator_without_options_is_an_error():
    with pytest.raises(TypeError, match="takes an Aggregator subclass"):
        register_aggregator(NanWeights(3))

    class Strict(Aggregator):
        name = "strict_test"

        def __init__(self, num_tasks, num_segments=1):
            super().__init__(num_tasks, num_segments)

    with pytest.raises(TypeError, match=r"Strict.__init__ must end with \*\*options"):
        register_aggregator(Strict)


def test_a_class_of_the_same_name_from_another_module_does_not_replace_a_registered_one():
    registry = Registry("thing", unknown="Unknown thing {name!r}{hint}; known: {known}")
    first = type("PCGrad", (), {"__module__": "hf_multitask.aggregators.surgery"})
    registry.add("pcgrad", first, first)
    registry.add("pcgrad", first, first)  # the same class again (its module reloaded): replaced
    second = type("PCGrad", (), {"__module__": "my_methods"})
    with pytest.raises(ValueError, match=r"'pcgrad' is registered already \(hf_multitask.aggregators.surgery.PCGrad\)"
                                         r"; my_methods.PCGrad needs another name"):
        registry.add("pcgrad", second, second)
    with pytest.raises(ValueError, match="task kind named 'classification' is registered already"):
        register_kind(type("ClassificationKind", (ClassificationKind,), {"__module__": "my_kinds"})())


def test_registering_a_kind_class_or_a_kind_without_losses_is_an_error():
    with pytest.raises(TypeError, match="takes an instance of a TaskKind subclass.*the class Empty"):
        register_kind(type("Empty", (TaskKind,), {"name": "empty_test"}))
    with pytest.raises(ValueError, match="'empty_test' .* needs at least one name in losses and in metrics"):
        register_kind(type("Empty", (TaskKind,), {"name": "empty_test", "metrics": ("accuracy",)})())


def test_a_sentence_head_refuses_a_bi_encoded_pair():
    """A kind that let pair_encoding='bi' through to a one-sentence head trained on the first sentence only."""
    head = SentenceHead(8, 2, 0.0)
    with pytest.raises(ValueError, match="SentenceHead reads one representation.*pair head.*refuse 'bi'"):
        head(torch.zeros(3, 8), torch.zeros(3, 8))


class FlatHead(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, pooled, pooled_b=None):
        return self.out(pooled).squeeze(-1)  # (batch,): the column dimension dropped


class FlatKind(ClassificationKind):
    name = "flat_head_test"

    def build_head(self, spec, hidden_size, dropout):
        return FlatHead(hidden_size)


@pytest.fixture
def flat_kind():
    kind = register_kind(FlatKind())
    yield kind
    del KINDS["flat_head_test"]


def test_a_heads_output_shape_is_checked_naming_the_task(flat_kind, bert_config, tokenizer):
    spec = TaskSpec(name="topic", kind="flat_head_test", text_columns=("sentence",), label_column="label",
                    label_names=["a", "b"])
    model = make_model(bert_config, tasks=[spec])
    batch = tokenizer(["one sentence", "another one"], padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match=r"Task 'topic': the head .* must give \(batch=2, ..., num_labels=2\) "
                                         r"outputs, got \(2,\)"):
        model(task_name="topic", **batch, labels=torch.tensor([0, 1]))


def test_compute_metrics_without_the_tasks_metric_names_task_and_keys():
    class OnlyF1(ClassificationKind):
        def compute_metrics(self, spec, logits, labels):
            return {"f1": 1.0}

    spec, kind = cs224n_tasks()[0], OnlyF1()
    with pytest.raises(ValueError, match=r"Task 'sst': OnlyF1.compute_metrics must return a dict holding the task's "
                                         r"metric 'accuracy'.*got \['f1'\]"):
        compute_task_metrics(_with_kind(spec, kind), np.zeros((2, 5)), np.zeros(2))


def _with_kind(spec, kind):
    """`spec` whose `task_kind` is `kind` (a stand-in: compute_task_metrics reads name, metric and task_kind)."""
    return type("Spec", (), {"name": spec.name, "metric": spec.metric, "task_kind": kind})()


def test_the_default_compute_metrics_names_the_task_for_multi_hot_labels():
    spec = cs224n_tasks()[0]
    with pytest.raises(ValueError, match=r"Task 'sst' \(classification\): the default compute_metrics .* labels have "
                                         r"shape \(4, 5\)"):
        compute_task_metrics(spec, np.zeros((4, 5)), np.zeros((4, 5)))


def test_a_regularizers_registration_and_terms_are_checked(bert_config, tokenized, tokenizer, tmp_path):
    with pytest.raises(TypeError, match="takes a Regularizer subclass"):
        register_regularizer(Regularizer(["sst"]))
    with pytest.raises(TypeError, match=r"log_names must be a tuple of strings, got 'penalty'.*\('name',\)"):
        register_regularizer(type("Stringy", (Regularizer,), {"name": "stringy_test", "log_names": ("penalty")}))

    class PerExample(Regularizer):
        name = "per_example_test"
        log_names = ("size",)

        def loss(self, model, inputs, outputs, spec):
            self.logs = {"size": outputs.logits.pow(2).mean().detach()}
            return outputs.logits.pow(2).sum(-1)  # (batch,): not reduced

    register_regularizer(PerExample)
    try:
        trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, eval=None, max_steps=1,
                               regularizers={"per_example_test": {"tasks": ["sst", "quora", "sts"]}})
        with pytest.raises(ValueError, match=r"'per_example_test'.loss must return a scalar tensor .* got \(4,\)"):
            trainer.train()
    finally:
        del REGULARIZERS["per_example_test"]


class ColumnWeights(LossWeighting):
    name = "column_test"

    def weights(self, device):
        return torch.tensor([[2.0], [0.0], [1.0]], device=device)  # (T, 1): a (T, T) product, summed


def test_a_loss_weighting_of_the_wrong_shape_is_an_error(bert_config, tokenized, tokenizer, tmp_path):
    """`(T, 1)` weights broadcast against the `(T,)` losses into sum(w) * sum(L): trained on, silently."""
    register_loss_weighting(ColumnWeights)
    try:
        trainer = make_trainer(make_model(bert_config), tokenized, tokenizer, tmp_path, eval=None, max_steps=1,
                               loss_weighting="column_test", task_sampling="uniform")
        with pytest.raises(ValueError, match=r"loss weighting 'column_test': combine must give a scalar objective "
                                             r"and weights of the losses' shape \(3,\).*weights of shape \(3, 1\)"):
            trainer.train()
    finally:
        del LOSS_WEIGHTINGS["column_test"]


def test_a_list_of_tensors_in_a_training_state_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"Training state method.history: a list of JSON values only"):
        save_training_state(str(tmp_path), {"method": {"history": [torch.ones(2)]}})
    assert list(tmp_path.iterdir()) == []
