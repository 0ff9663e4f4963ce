"""A model saved by hf-multitask before task kinds became modules (tests/fixtures/pre_kinds_model, written by
tests/fixtures/make_pre_kinds_model.py at commit 0592985) loads and predicts as it did then."""

import json
from pathlib import Path

import numpy as np
from transformers import AutoModel, AutoTokenizer

import hf_multitask  # noqa: F401  (registers the model type with AutoModel)
from hf_multitask import MultitaskModel
from hf_multitask.inference import predict_logits

FIXTURE = Path(__file__).parent / "fixtures" / "pre_kinds_model"


def test_pre_kinds_model_loads_and_predicts_identically():
    expected = json.loads((FIXTURE / "expected_logits.json").read_text())
    model = AutoModel.from_pretrained(FIXTURE)
    assert isinstance(model, MultitaskModel)
    assert model.specs["sst"].loss == "ordinal" and model.specs["quora"].is_bi_encoded
    assert model.pal is not None and sorted(model.pal.pal_config.tasks) == ["sst", "sts"]
    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    for task, inputs in expected["inputs"].items():
        inputs = [tuple(item) if isinstance(item, list) else item for item in inputs]
        logits = predict_logits(model, task, inputs, tokenizer)
        np.testing.assert_allclose(logits, np.asarray(expected["logits"][task]), rtol=0, atol=1e-6)
