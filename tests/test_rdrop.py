"""R-Drop (hf_multitask/regularizers/rdrop.py): zero without dropout, positive with it, its gradient against a hand
computation on a one-layer model, training and exact resume with dropout on."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_multitask import MultitaskConfig, MultitaskModel, RDropRegularizer, cs224n_tasks, get_kind

from .conftest import make_model, make_trainer, snapshot
from .test_smart import batch_of

RDROP = {"rdrop": {"tasks": ["sst", "sts"], "alpha": 1.0}}


def dropout_model(bert_config, dropout=0.1):
    """A tiny model (seed 0) with dropout in the encoder and the heads."""
    config = bert_config.__class__(**{**bert_config.to_dict(), "hidden_dropout_prob": dropout,
                                      "attention_probs_dropout_prob": dropout})
    torch.manual_seed(0)
    return MultitaskModel(MultitaskConfig(encoder=config, tasks=cs224n_tasks(), classifier_dropout=dropout))


@pytest.mark.parametrize("task", ["sst", "sts"])
def test_rdrop_loss_is_zero_without_dropout(bert_config, tokenized, tokenizer, tmp_path, task):
    model = make_model(bert_config).train()  # every dropout probability is 0
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", eval=None), task)
    rdrop = RDropRegularizer([task])
    assert rdrop.loss(model, batch, model(**batch), model.specs[task]).item() == 0.0
    assert rdrop.logs["rdrop"].item() == 0.0


@pytest.mark.parametrize("task", ["sst", "sts"])
def test_rdrop_divergence_is_positive_with_dropout(bert_config, tokenized, tokenizer, tmp_path, task):
    model = dropout_model(bert_config).train()
    batch = batch_of(make_trainer(model, tokenized, tokenizer, tmp_path / "out", eval=None), task)
    rdrop = RDropRegularizer([task])
    loss = rdrop.loss(model, batch, model(**batch), model.specs[task])
    assert rdrop.logs["rdrop"].item() > 0 and torch.isfinite(loss)


class OneLayer(nn.Module):
    """logits = W (x ⊙ m) / (1 − p) + b; the dropout mask is `torch.rand(x.shape) >= p` (reproducible by hand)."""

    def __init__(self, p: float, num_outputs: int):
        super().__init__()
        self.p, self.linear = p, nn.Linear(5, num_outputs)

    def forward(self, task_name, x, labels):
        keep = (torch.rand(x.shape) >= self.p).float() / (1 - self.p)
        logits = self.linear(x * keep)
        loss = F.cross_entropy(logits, labels) if logits.shape[-1] > 1 else F.mse_loss(logits.view(-1), labels)
        return SimpleNamespace(logits=logits, loss=loss)


def hand_gradient(model, x, labels, alpha, masks, regression):
    """∂/∂(W, b) of ½ (L(P_1) + L(P_2)) + (α / 4) mean_n l_s(P_1, P_2), written out in float64."""
    weight, bias = (t.detach().double() for t in (model.linear.weight, model.linear.bias))
    hidden = [x.double() * m.double() / (1 - model.p) for m in masks]  # (N, 5) each
    z1, z2 = (h @ weight.T + bias for h in hidden)  # (N, K)
    n = x.shape[0]
    if regression:  # L = mean (z − y)², l_s = (z_1 − z_2)²
        y = labels.double().view(-1, 1)
        g1 = 0.5 * 2 * (z1 - y) / n + alpha / 4 * 2 * (z1 - z2) / n
        g2 = 0.5 * 2 * (z2 - y) / n + alpha / 4 * 2 * (z2 - z1) / n
    else:  # L = cross-entropy; ∂ symKL(p, q) / ∂z_p = p ⊙ log(p / q) + p − q − p KL(p ‖ q), and alike for z_q
        p, q = z1.softmax(-1), z2.softmax(-1)
        d = p.log() - q.log()
        onehot = F.one_hot(labels, p.shape[-1]).double()
        kl_pq, kl_qp = (p * d).sum(-1, keepdim=True), (-q * d).sum(-1, keepdim=True)
        g1 = 0.5 * (p - onehot) / n + alpha / 4 * (p * d + p - q - p * kl_pq) / n
        g2 = 0.5 * (q - onehot) / n + alpha / 4 * (-q * d + q - p - q * kl_qp) / n
    return g1.T @ hidden[0] + g2.T @ hidden[1], g1.sum(0) + g2.sum(0)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_rdrop_gradient_matches_a_hand_computation(kind):
    regression = kind == "regression"
    torch.manual_seed(0)
    model = OneLayer(p=0.3, num_outputs=1 if regression else 3)
    x = torch.randn(6, 5)
    labels = torch.randn(6) if regression else torch.tensor([0, 2, 1, 1, 0, 2])
    inputs = {"task_name": "t", "x": x, "labels": labels}
    rdrop, spec = RDropRegularizer(["t"], alpha=0.7), SimpleNamespace(task_kind=get_kind(kind))
    torch.manual_seed(1)
    outputs = model(**inputs)
    (outputs.loss + rdrop.loss(model, inputs, outputs, spec)).backward()
    torch.manual_seed(1)
    masks = [torch.rand(x.shape) >= model.p for _ in range(2)]  # the two passes' masks, in their order
    assert not torch.equal(masks[0], masks[1])
    weight, bias = hand_gradient(model, x, labels, 0.7, masks, regression)
    torch.testing.assert_close(model.linear.weight.grad.double(), weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.linear.bias.grad.double(), bias, rtol=1e-5, atol=1e-6)


def test_rdrop_trains_a_tiny_model_and_logs_per_task(bert_config, tokenized, tokenizer, tmp_path):
    model = dropout_model(bert_config)
    before = snapshot(model)
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", eval=None, max_steps=3, logging_steps=3,
                           task_sampling="round_robin", regularizers=RDROP)
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert logged["rdrop_sst"] > 0 and logged["rdrop_sts"] > 0 and "rdrop_quora" not in logged
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))
    assert not torch.equal(before["encoder.encoder.layer.0.attention.self.query.weight"],
                           model.encoder.encoder.layer[0].attention.self.query.weight)


def test_rdrop_run_resumed_from_a_checkpoint_ends_with_the_same_weights(bert_config, tokenized, tokenizer, tmp_path):
    options = dict(eval=None, max_steps=6, save_strategy="steps", save_steps=3, logging_steps=3,
                   task_sampling="round_robin", regularizers=RDROP)
    full = make_trainer(dropout_model(bert_config), tokenized, tokenizer, tmp_path / "full", **options)
    full.train()
    resumed = make_trainer(dropout_model(bert_config), tokenized, tokenizer, tmp_path / "resumed", **options)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    other = make_trainer(dropout_model(bert_config), tokenized, tokenizer, tmp_path / "plain",
                         **{**options, "regularizers": None})
    other.train()
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(full.model.parameters(), other.model.parameters()))


@pytest.mark.parametrize("options, match", [({"tasks": ["sst"], "alpha": -1.0}, "alpha must be >= 0"),
                                            ({"tasks": []}, "tasks must name at least one task"),
                                            ({"tasks": ["sst"], "beta": 1.0}, "has no option 'beta'")])
def test_invalid_rdrop_options_are_rejected(tmp_path, options, match):
    from hf_multitask import MultitaskTrainingArguments

    with pytest.raises(ValueError, match=match):
        MultitaskTrainingArguments(str(tmp_path), report_to=[], regularizers={"rdrop": options})


def test_the_model_card_names_rdrop_and_its_options(bert_config, tmp_path):
    from hf_multitask import MultitaskTrainingArguments, render_model_card

    from .test_model_card import front_matter

    args = MultitaskTrainingArguments(str(tmp_path), report_to=[], regularizers={"rdrop": {"tasks": ["sst"],
                                                                                          "alpha": 0.5}})
    card = render_model_card(make_model(bert_config), training_args=args)
    assert "Regulariser `rdrop` on sst: alpha = 0.5." in card and "| `regularizers` |" in card
    assert "rdrop" in front_matter(card)["tags"]
