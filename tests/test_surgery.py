"""GradientSurgery's `[T, P]` buffer filled during the backward (`capture`): the same bits as the old path (backward,
then `accumulate` adds `.grad` into a zeroed row), with no `.grad` left alive, over micro-batches, for parameters
without a gradient, for bf16 and sparse gradients; and the hooks stay out of every other backward. The chunked Gram
matrix of a segment (`block_gram`)."""

import gc

import pytest
import torch

from hf_multitask import GradientSurgery
from hf_multitask.aggregators.surgery import GRAM_CHUNK, block_gram

from .conftest import batch, make_model

LABELS = {"sst": torch.tensor([3, 1]), "quora": torch.tensor([1.0, 0.0]), "sts": torch.tensor([1.0, 4.5])}


def old_rows(params, losses) -> torch.Tensor:
    """Row t: the gradient of `losses[t]()` as the buffer got it before `capture`: `.grad` added to a zeroed row."""
    rows = torch.zeros(len(losses), sum(p.numel() for p in params))
    for row, loss in zip(rows, losses):
        loss().backward()
        for flat, p in zip(row.split([p.numel() for p in params]), params):
            if p.grad is not None:
                flat.view_as(p).add_(p.grad)
            p.grad = None
    return rows


def captured_rows(surgery, losses) -> torch.Tensor:
    surgery.zero_()
    for t, loss in enumerate(losses):
        with surgery.capture(t):
            loss().backward()
    return surgery.buffer.clone()


def two_layers(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 4)).to(dtype)
    ids = torch.tensor([[1, 5, 5, 9], [2, 2, 7, 0]])
    return model, [lambda: model(ids).float().sum(), lambda: (model(ids).float() ** 2).mean()]


def test_capture_rows_equal_the_old_path_bit_for_bit_on_the_tiny_bert(bert_config, tokenizer):
    tiny_model = make_model(bert_config)  # no dropout: both paths see the same forward
    inputs = batch(tokenizer, "a good film", "the worst plot")
    losses = [lambda name=name: tiny_model(task_name=name, labels=LABELS[name], **inputs).loss for name in LABELS]
    params = [p for _, p in tiny_model.named_shared_parameters()]
    expected = old_rows(params, losses)
    found = captured_rows(GradientSurgery("pcgrad", params, num_tasks=3), losses)
    assert torch.equal(found, expected) and found.abs().sum(1).gt(0).all()
    assert all(p.grad is None for p in params)
    heads = [p for n, p in tiny_model.named_parameters() if n.startswith("heads.")]
    assert all(p.grad is not None for p in heads)  # the heads' gradients stay in `.grad`, as before


def test_the_buffer_is_allocated_at_first_use_not_at_construction():
    """A surgery the Trainer replaces before training (its sharded twin, under accelerate's FSDP2) costs no [T, P]."""
    model, losses = two_layers()
    surgery = GradientSurgery("pcgrad", list(model.parameters()), num_tasks=2)
    assert surgery._buffer is None and surgery.slots is None and surgery.total is None
    surgery.load_state_dict(surgery.state_dict())  # a checkpoint's state needs no buffer either
    assert surgery._buffer is None
    with surgery.capture(0):
        losses[0]().backward()
    assert surgery.buffer.shape == (2, sum(p.numel() for p in model.parameters()))
    assert torch.count_nonzero(surgery.buffer[1]) == 0 and torch.count_nonzero(surgery.buffer[0]) > 0


def test_capture_frees_each_gradient_while_the_backward_goes_on():
    model, losses = two_layers()
    surgery = GradientSurgery("none", list(model.parameters()), num_tasks=2)
    with surgery.capture(0):
        losses[0]().backward()  # installs the hooks; the next hook below runs after the surgery's
    alive = []
    model[0].weight.register_post_accumulate_grad_hook(  # the embedding: the last parameter the backward reaches
        lambda _: alive.append([p.grad is not None for p in model[1].parameters()]))
    with surgery.capture(1):
        losses[1]().backward()
    assert alive == [[False, False]]  # the old path kept every shared gradient in `.grad` until the backward ended


def test_capture_adds_the_micro_batches_of_a_task_into_its_row():
    model, micro_batches = two_layers()  # two different losses: one task's two micro-batches
    params = list(model.parameters())
    expected = torch.zeros(1, sum(p.numel() for p in params))
    for loss in micro_batches:
        loss().backward()  # the old path: `.grad` adds up over the micro-batches, then goes into a zeroed row
    for flat, p in zip(expected[0].split([p.numel() for p in params]), params):
        flat.view_as(p).add_(p.grad)
        p.grad = None
    surgery = GradientSurgery("none", params, num_tasks=1)
    surgery.zero_()
    for loss in micro_batches:
        with surgery.capture(0):
            loss().backward()
    assert torch.equal(surgery.buffer, expected)
    assert not torch.equal(expected, old_rows(params, micro_batches[:1]))  # the second one was added


def test_a_parameter_without_a_gradient_has_zeros_in_the_row_not_the_last_step():
    model, losses = two_layers()
    params = list(model.parameters())
    surgery = GradientSurgery("pcgrad", params, num_tasks=3)
    captured_rows(surgery, losses + losses[:1])  # step 1: every slice of every row written
    surgery.combine()
    model.zero_grad(set_to_none=True)  # as the Trainer does after the optimizer step
    embedding_only = [lambda: model[0](torch.tensor([1, 2])).sum()]  # the Linear gets no gradient
    rows = captured_rows(surgery, embedding_only)  # step 2: task 0 alone; tasks 1 and 2 get no batch
    size = model[0].weight.numel()
    assert torch.equal(rows[0, :size], old_rows(params, embedding_only)[0, :size]) and rows[0, :size].any()
    assert not rows[0, size:].any() and not rows[1:].any()


def test_capture_converts_bf16_gradients_exactly():
    model, losses = two_layers(torch.bfloat16)
    params = list(model.parameters())
    found = captured_rows(GradientSurgery("gradvac", params, num_tasks=2, segment_ids=[0, 1, 1]), losses)
    assert found.dtype == torch.float32 and torch.equal(found, old_rows(params, losses))


def test_capture_takes_sparse_gradients():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(7, 3, sparse=True)
    losses = [lambda: embedding(torch.tensor([1, 4, 4])).sum(), lambda: embedding(torch.tensor([0, 4])).pow(2).sum()]
    params = list(embedding.parameters())
    assert torch.equal(captured_rows(GradientSurgery("none", params, num_tasks=2), losses), old_rows(params, losses))


def test_a_parameter_unfrozen_after_the_hooks_lands_in_its_own_row():
    model, losses = two_layers()
    params = list(model.parameters())
    model[1].bias.requires_grad_(False)  # no hook can be registered on it
    surgery = GradientSurgery("none", params, num_tasks=2)
    with surgery.capture(0):
        losses[0]().backward()
    model[1].bias.requires_grad_(True)
    assert torch.equal(captured_rows(surgery, losses), old_rows(params, losses))


def test_backward_outside_capture_is_left_alone():
    model, losses = two_layers()
    params = list(model.parameters())
    surgery = GradientSurgery("none", params, num_tasks=2)
    rows = captured_rows(surgery, losses)
    losses[0]().backward()  # e.g. an ungrouped step: the hooks are installed but idle
    assert all(p.grad is not None for p in params) and torch.equal(surgery.buffer, rows)


def test_the_hooks_go_with_the_surgery():
    model, losses = two_layers()
    surgery = GradientSurgery("none", list(model.parameters()), num_tasks=1)
    with surgery.capture(0):
        losses[0]().backward()
    assert all(len(p._post_accumulate_grad_hooks) == 1 for p in model.parameters())
    del surgery
    gc.collect()
    assert all(len(p._post_accumulate_grad_hooks) == 0 for p in model.parameters())


def test_capture_inside_capture_is_an_error():
    model, _ = two_layers()
    surgery = GradientSurgery("none", list(model.parameters()), num_tasks=2)
    with surgery.capture(0), pytest.raises(RuntimeError, match=r"capture\(1\) inside capture\(0\)"):
        with surgery.capture(1):
            pass


@pytest.mark.parametrize("width", [5, GRAM_CHUNK, GRAM_CHUNK + 3, 3 * GRAM_CHUNK + 7])
def test_block_gram_equals_the_float64_product_on_a_segment(width):
    buffer = torch.randn(3, width + 10, generator=torch.Generator().manual_seed(width)) - 0.1
    segment = buffer[:, 4:4 + width]  # rows a whole buffer width apart, as a GradVac layer's columns are
    exact = segment.double() @ segment.double().T
    found = block_gram(segment)
    assert found.dtype == torch.float32 and found.shape == (3, 3)
    torch.testing.assert_close(found.double(), exact, rtol=0, atol=1e-6 * width)
