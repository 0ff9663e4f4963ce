"""SMART under FSDP2: the EMA teacher evaluated by swapping shards in place gives the teacher's outputs and leaves the
model's weights as they were; with 2 processes (gloo) SMART on a `fully_shard_for_smart` model trains like SMART in
one process, whether the root unit stays gathered after its forward or not."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_multitask.regularizers import EmaTeacher
from hf_multitask.regularizers.smart_fsdp import is_sharded, local_tensor, swapped_shards

from .fsdp_surgery_script import make_batch, make_model
from .test_fsdp_surgery import run_two_processes


def moved_teacher(model) -> EmaTeacher:
    """A teacher whose every shadow differs from the model's parameter (θ̃ = θ + noise)."""
    teacher = EmaTeacher(momentum=0.5)
    teacher.initialize(model)
    generator = torch.Generator().manual_seed(0)
    for shadow in teacher.shadow.values():
        shadow.add_(torch.randn(shadow.shape, generator=generator) * 0.05)
    return teacher


def test_swapped_shards_hold_the_shadows_inside_and_restore_the_weights_bit_for_bit():
    model = make_model()
    teacher = moved_teacher(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [dict(model.named_parameters())[n] for n in teacher.shadow]
    with pytest.raises(RuntimeError, match="inside"), swapped_shards(model, params, list(teacher.shadow.values())):
        for name, param in model.named_parameters():
            assert torch.equal(param, teacher.shadow[name])
        raise RuntimeError("inside")  # an error in the teacher's forward must not leave the shadows in the model
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def test_teacher_logits_by_swapping_equal_functional_call():
    model = make_model()
    teacher = moved_teacher(model)
    batch = make_batch("sts", 0, 0)
    expected = teacher.logits(model, batch)  # unsharded model: functional_call
    params = [dict(model.named_parameters())[n] for n in teacher.shadow]
    model.eval()
    with torch.no_grad(), swapped_shards(model, params, list(teacher.shadow.values())):
        swapped = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(swapped, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(expected, model(**batch).logits, atol=1e-3)  # the teacher really differs


def test_plain_parameters_are_their_own_local_tensor():
    param = torch.nn.Parameter(torch.zeros(3))
    assert local_tensor(param) is param
    assert not is_sharded([param])


def test_teacher_refuses_shadows_of_another_shape_by_name():
    model = make_model()
    teacher = EmaTeacher()
    teacher.initialize(model)
    state = teacher.state_dict()
    state["encoder.embeddings.word_embeddings.weight"] = state["encoder.embeddings.word_embeddings.weight"][:50]
    teacher.load_state_dict(state)  # e.g. a truncated tensor in a damaged checkpoint
    with pytest.raises(ValueError, match=r"shapes differ.*'encoder.embeddings.word_embeddings.weight'"):
        teacher.update(model)
    with pytest.raises(ValueError, match="shapes differ"):
        teacher.logits(model, make_batch("sst", 0, 0))


@pytest.mark.slow
def test_two_fsdp2_processes_train_smart_like_one(tmp_path):
    """2 processes, gloo, docs/scaling.md's block (`fully_shard_for_smart`, R_s and D_Breg on, SGD), with FSDP2's
    default (the root unit stays gathered after its forward) and with `reshard_after_forward=True` (it does not):
    6 steps end with the weights and the teacher of the same steps in one process on the global batches, to fp32
    tolerance; the logged terms agree; each rank's teacher holds its shard only."""
    run_two_processes("fsdp_smart_script.py", tmp_path)
    initial = dict(make_model().named_parameters())
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["logs"][0]["smart_breg"] == 0 and min(s["smart_breg"] for s in whole["logs"][1:]) > 1e-6
    assert min(s["smart_adv"] for s in whole["logs"]) > 1e-4
    for sharding in ("default", "resharded"):  # fsdp_smart_script.SHARDINGS
        for part in ("", "-teacher"):  # the weights, then the teacher
            sharded, expected = (load_file(tmp_path / f"{run}{part}.safetensors") for run in (sharding, "whole"))
            assert sharded.keys() == expected.keys() == initial.keys()
            for key in expected:
                torch.testing.assert_close(sharded[key], expected[key], atol=1e-5, rtol=1e-5,
                                           msg=f"{sharding}{part}: {key}")
            assert max((expected[k] - initial[k]).abs().max() for k in expected) > 1e-2
        ranks = [json.loads((tmp_path / f"{sharding}-rank{r}.json").read_text()) for r in range(2)]
        for step, terms in enumerate(whole["logs"]):
            mean = {k: (ranks[0]["logs"][step][k] + ranks[1]["logs"][step][k]) / 2 for k in terms}
            assert mean == pytest.approx(terms, rel=1e-3, abs=1e-9), (sharding, step)
        assert sum(r["teacher_bytes"] for r in ranks) == whole["teacher_bytes"]  # the shards cover the model once
        for report in ranks:
            assert report["teacher_bytes"] <= 1.02 * whole["teacher_bytes"] / 2
            assert report["param_types"] == ["DTensor"] and report["units"] == 4  # embeddings, 2 layers, the rest
