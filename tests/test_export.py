import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, DistilBertConfig, RobertaConfig

from hf_multitask import MultitaskConfig, MultitaskModel, PalConfig, cs224n_tasks, export_task
from hf_multitask.export import max_logit_difference

TEXTS = {"sst": ["a great film", "it is a very very good movie", "bad"],
         "quora": [("how do i cook", "how can i cook"), ("what is a cat", "why is the dog on grass")],
         "sts": [("a man is playing", "a man plays"), ("the cat", "a question")]}

# Runs in a fresh interpreter: loads each export with plain transformers and prints its logits and config.
LOAD_SCRIPT = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
out = {}
for path, texts in json.loads(sys.argv[1]).items():
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    columns = [list(c) for c in zip(*texts)] if isinstance(texts[0], list) else [texts]
    with torch.no_grad():
        logits = model(**tokenizer(*columns, padding=True, return_tensors="pt")).logits
    out[path] = {"logits": logits.tolist(), "class": type(model).__name__, "id2label": model.config.id2label,
                 "problem_type": model.config.problem_type}
assert not any(name.startswith("hf_multitask") for name in sys.modules), "hf_multitask was imported"
print(json.dumps(out))
"""


def cls_model(encoder_config, **kwargs):
    torch.manual_seed(0)
    return MultitaskModel(MultitaskConfig(encoder=encoder_config, tasks=cs224n_tasks(**kwargs), pooling="cls")).eval()


def logits_of(model, tokenizer, task, texts):
    columns = [list(c) for c in zip(*texts)] if isinstance(texts[0], tuple) else [texts]
    with torch.no_grad():
        return model(task_name=task, **tokenizer(*columns, padding=True, return_tensors="pt")).logits


def test_exports_load_without_hf_multitask_and_match(bert_config, tokenizer, tmp_path):
    model = cls_model(bert_config)
    for task in TEXTS:
        export_task(model, task, tmp_path / task, tokenizer=tokenizer)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argument = json.dumps({str(tmp_path / task): texts for task, texts in TEXTS.items()})
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, argument], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    for task, texts in TEXTS.items():
        got = loaded[str(tmp_path / task)]
        assert got["class"] == "BertForSequenceClassification"
        torch.testing.assert_close(torch.tensor(got["logits"]), logits_of(model, tokenizer, task, texts),
                                   rtol=0, atol=1e-5)
    assert loaded[str(tmp_path / "sst")]["id2label"]["4"] == "very positive"
    assert loaded[str(tmp_path / "quora")]["problem_type"] == "single_label_classification"
    assert loaded[str(tmp_path / "sts")]["problem_type"] == "regression"
    assert loaded[str(tmp_path / "sts")]["id2label"] == {"0": "similarity"}


def test_roberta_export_matches(tokenizer, tmp_path):
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)
    model = cls_model(config)
    export_task(model, "quora", tmp_path, tokenizer=tokenizer)
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(exported).__name__ == "RobertaForSequenceClassification"
    assert max_logit_difference(model, "quora", exported, TEXTS["quora"], tokenizer) < 1e-5


def test_max_logit_difference_sees_a_changed_head(bert_config, tokenizer, tmp_path):
    model = cls_model(bert_config)
    exported = export_task(model, "sst", tmp_path, tokenizer=tokenizer)
    assert max_logit_difference(model, "sst", exported, TEXTS["sst"], tokenizer) < 1e-5
    with torch.no_grad():
        exported.classifier.bias[2] += 0.5
    assert max_logit_difference(model, "sst", exported, TEXTS["sst"], tokenizer) == pytest.approx(0.5, abs=1e-4)


def test_export_saves_the_tokenizer_saved_beside_the_model(bert_config, tokenizer, tmp_path):
    model = cls_model(bert_config)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    export_task(MultitaskModel.from_pretrained(tmp_path / "model"), "sst", tmp_path / "export")
    assert (tmp_path / "export" / "tokenizer.json").is_file()


def test_export_refuses_what_has_no_plain_equivalent(bert_config, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="pools with 'mean'.*Train with pooling: cls.*trust_remote_code=True"):
        export_task(MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks())), "sst", tmp_path)
    with pytest.raises(ValueError, match="Task 'sts' is bi-encoded.*pair_encoding: cross"):
        export_task(cls_model(bert_config, pair_encoding="bi"), "sts", tmp_path)
    distilbert = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=4, hidden_dim=37)
    with pytest.raises(ValueError, match=r"supports \['bert', 'roberta'\] encoders.*'distilbert'"):
        export_task(cls_model(distilbert), "sst", tmp_path)
    model = cls_model(bert_config)
    model.add_pal(PalConfig(rank=4, tasks=["sst"]))
    with pytest.raises(ValueError, match="Task 'sst' has a PAL"):
        export_task(model, "sst", tmp_path)
    export_task(model, "quora", tmp_path / "quora", tokenizer=tokenizer)  # no PAL of its own: exportable
    with pytest.raises(ValueError, match="Unknown task_name 'nli'"):
        export_task(model, "nli", tmp_path)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_multiple_choice_and_token_classification_export_to_their_auto_classes(bert_config, tokenizer, tmp_path,
                                                                               pooling):
    from transformers import AutoModelForMultipleChoice, AutoModelForTokenClassification

    from .test_multiple_choice import mc_task
    from .test_token_classification import TAGS, ner_task

    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[mc_task(), ner_task()], pooling=pooling)).eval()
    export_task(model, "ner", tmp_path / "ner", tokenizer=tokenizer)  # per token: any pooling exports
    tagger = AutoModelForTokenClassification.from_pretrained(tmp_path / "ner").eval()
    assert type(tagger).__name__ == "BertForTokenClassification" and tagger.config.id2label[1] == TAGS[1]
    sentences = ["a man with a zebra", "very good cat on the grass", "it"]
    assert max_logit_difference(model, "ner", tagger, sentences, tokenizer) < 1e-5
    choices = [("what is good ?", "bad film", "a good film", "the cat", "awful movie"),
               ("what is good ?", "good", "the dog", "not great", "a question")]
    if pooling == "mean":
        with pytest.raises(ValueError, match="pools with 'mean'.*ForMultipleChoice head reads the first token"):
            export_task(model, "mc", tmp_path / "mc")
        return
    export_task(model, "mc", tmp_path / "mc", tokenizer=tokenizer)
    chooser = AutoModelForMultipleChoice.from_pretrained(tmp_path / "mc").eval()
    assert type(chooser).__name__ == "BertForMultipleChoice"
    assert max_logit_difference(model, "mc", chooser, choices, tokenizer) < 1e-5
