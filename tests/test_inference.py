import csv
from logging import Logger
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import pipeline

from hf_multitask import (
    MultitaskConfig,
    MultitaskModel,
    cs224n_tasks,
    normalize_ptb,
    predict,
    sst_task,
    sts_task,
    tokenize_task,
)
from hf_multitask.inference import check_input, encode_rows, predict_logits, task_logits, worst_examples

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# (raw text, the sentence as ../shared/data/sst-*.tsv stores it)
PTB_PAIRS = [
    ('The Rock is destined to be the 21st Century\'s new "Conan" and that he\'s going to make a splash even greater '
     "than Arnold Schwarzenegger, Jean-Claud Van Damme or Steven Segal.",
     "The Rock is destined to be the 21st Century 's new `` Conan '' and that he 's going to make a splash even "
     "greater than Arnold Schwarzenegger , Jean-Claud Van Damme or Steven Segal ."),
    ("The gorgeously elaborate continuation of \u201cThe Lord of the Rings\u201d trilogy is so huge that a column of "
     "words cannot adequately describe co-writer/director Peter Jackson\u2019s expanded vision of J.R.R. Tolkien's "
     "Middle-earth.",
     "The gorgeously elaborate continuation of `` The Lord of the Rings '' trilogy is so huge that a column of words "
     "can not adequately describe co-writer\\/director Peter Jackson 's expanded vision of J.R.R. Tolkien 's "
     "Middle-earth ."),
    ("Singer/composer Bryan Adams contributes a slew of songs--a few potential hits, a few more simply intrusive to "
     "the story--but the whole package certainly captures the intended, er, spirit of the piece.",
     "Singer\\/composer Bryan Adams contributes a slew of songs -- a few potential hits , a few more simply intrusive "
     "to the story -- but the whole package certainly captures the intended , er , spirit of the piece ."),
    ("You'd think by now America would have had enough of plucky British eccentrics with hearts of gold.",
     "You 'd think by now America would have had enough of plucky British eccentrics with hearts of gold ."),
    ("the shameless self-caricature of 'Analyze This' (1999) and 'Analyze That,' promised (or threatened) for later "
     "this year.",
     "the shameless self-caricature of ` Analyze This ' -LRB- 1999 -RRB- and ` Analyze That , ' promised -LRB- or "
     "threatened -RRB- for later this year ."),
    ("Maybe Thomas Wolfe was right: You can't go home again.",
     "Maybe Thomas Wolfe was right : You ca n't go home again ."),
    ("The filmmakers' eye for $20 million R&B... isn't 100% there!?",
     "The filmmakers ' eye for $ 20 million R&B ... is n't 100 % there !?"),
]
SST_SENTENCES = [  # three sentences of sst-train, and one made of its rarer tokens: PTB text comes back unchanged
    "A keep - 'em - guessing plot and an affectionate take on its screwed-up characters .",
    "If The Tuxedo actually were a suit , it would fit Chan like a $ 99 bargain-basement special .",
    "Clint Eastwood 's Blood Work is a lot like a well-made PB & J sandwich : familiar , fairly uneventful and "
    "boasting no real surprises -- but still quite tasty and inviting all the same .",
    "The wintry ol' Mr. Wolfe rocks 'n' roll at 2,500 feet in the U.S. vs. H.G. Wells , \\*\\*\\* etc. ?!?",
]


@pytest.mark.parametrize("raw, stored", PTB_PAIRS)
def test_normalize_ptb_maps_raw_text_to_the_sst_form(raw, stored):
    assert normalize_ptb(raw) == stored


@pytest.mark.parametrize("sentence", [stored for _, stored in PTB_PAIRS] + SST_SENTENCES)
def test_normalize_ptb_leaves_ptb_text_unchanged(sentence):
    assert normalize_ptb(sentence) == sentence


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")
def test_normalize_ptb_leaves_every_sst_sentence_unchanged():
    for split in ("train", "dev"):
        with open(SHARED_DATA / f"sst-{split}.tsv", encoding="utf-8", newline="") as handle:
            sentences = [row["sentence"] for row in csv.DictReader(handle, delimiter="\t")]
        changed = [s for s in sentences if normalize_ptb(s) != " ".join(s.split())]
        assert not changed, f"sst-{split}: {len(changed)} sentences changed, e.g. {changed[:3]}"


@pytest.fixture
def model(tiny_model):
    return tiny_model.eval()


def forward(model, tokenizer, task, *texts):
    with torch.no_grad():
        return model(task_name=task, **tokenizer(*texts, padding=True, return_tensors="pt")).logits


def test_predict_classification_labels_and_probabilities(model, tokenizer):
    texts = ["a great film", "bad", "it is a very very good movie"]
    labels, probabilities = predict(model, "sst", texts, tokenizer, return_probabilities=True)
    expected = torch.softmax(forward(model, tokenizer, "sst", texts), -1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert labels == [model.specs["sst"].label_names[i] for i in expected.argmax(-1)]
    assert predict(model, "sst", texts, tokenizer) == labels


def test_predict_cross_encoded_pairs_give_scores(model, tokenizer):
    pairs = [("a man is playing", "a man plays"), ("the cat", "a dog on grass")]
    scores = predict(model, "sts", pairs, tokenizer)
    expected = forward(model, tokenizer, "sts", [a for a, _ in pairs], [b for _, b in pairs])[:, 0]
    assert all(isinstance(s, float) for s in scores)
    np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5)


def test_predict_bi_encoded_pairs(bert_config, tokenizer):
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(pair_encoding="bi"))).eval()
    pairs = [("how do i cook", "how can i cook"), ("what is a cat", "the film")]
    a = tokenizer([p[0] for p in pairs], padding=True, return_tensors="pt")
    b = tokenizer([p[1] for p in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(task_name="quora", **a, **{f"{k}_b": v for k, v in b.items()}).logits
    np.testing.assert_allclose(predict_logits(model, "quora", pairs, tokenizer), expected.numpy(), atol=1e-5)


def test_predict_batch_size_does_not_change_results(model, tokenizer):
    texts = ["a great film", "bad", "it is a very very good movie", "awful", "how is it"]
    one = predict_logits(model, "sst", texts, tokenizer, batch_size=1)
    np.testing.assert_allclose(predict_logits(model, "sst", texts, tokenizer, batch_size=2), one, atol=1e-5)


LONG = " ".join(["a very good film about a dog on grass"] * 3)  # truncated at max_length=12 below
KIND_INPUTS = {
    "sst": ["a great film", "bad", LONG],
    "quora": [("how do i cook", "how can i cook"), ("what is a cat", LONG)],
    "sts": [("a man is playing", "a man plays"), (LONG, "the film")],
    "mc": [("what is good ?", "a good film", "bad film", "the cat", "awful movie"), (LONG, "good", "x", "y", "z")],
    "ner": ["a man is playing on grass", ["the", "zebra", "is", "fuzzy"], LONG],
}


@pytest.mark.parametrize("pair_encoding", ["cross", "bi"])
def test_predict_tokenises_as_tokenize_task_without_dataset_map(bert_config, tokenizer, monkeypatch, caplog,
                                                                pair_encoding):
    """predict() cost about 0.5 s a call, whatever its inputs: datasets fingerprinted each Dataset.map by hashing the
    tokenizer. Its features, logits (bit for bit) and truncation warnings stay those of tokenize_task."""
    from .test_multiple_choice import mc_task
    from .test_token_classification import ner_task

    torch.manual_seed(0)
    tasks = [*cs224n_tasks(pair_encoding=pair_encoding, max_length=12), mc_task(max_length=12),
             ner_task(max_length=12)]
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=tasks)).eval()
    expected = {}
    for name, inputs in KIND_INPUTS.items():
        spec = model.specs[name]
        rows = [check_input(spec, item, f"input {i}") for i, item in enumerate(inputs)]
        with caplog.at_level("WARNING"):
            columns = {column: [spec.task_kind.parse_text(spec, row[j], "") for row in rows]  # words: one form
                       for j, column in enumerate(spec.text_columns)}
            features = tokenize_task(Dataset.from_dict(columns), spec, tokenizer)
        expected[name] = (features.to_list(), task_logits(model, name, features, tokenizer, batch_size=2),
                          [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()])
        caplog.clear()
        assert expected[name][2], name  # LONG is truncated
    monkeypatch.setattr(Dataset, "map", lambda *args, **kwargs: pytest.fail("predict used Dataset.map"))
    for name, inputs in KIND_INPUTS.items():
        spec = model.specs[name]
        with caplog.at_level("WARNING"):
            features = encode_rows(spec, tokenizer, [check_input(spec, item, "") for item in inputs])
            logits = predict_logits(model, name, inputs, tokenizer, batch_size=2)
        assert features == expected[name][0], name
        np.testing.assert_array_equal(logits, expected[name][1])  # bit for bit (NaN beyond a sentence's words)
        assert [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()] == expected[name][2] * 2
        caplog.clear()


def test_predict_runs_in_eval_mode_and_restores_training(bert_config, tokenizer):
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(), classifier_dropout=0.5))
    model.train()
    first = predict_logits(model, "sst", ["a good film"] * 4, tokenizer)
    assert model.training
    np.testing.assert_allclose(first, first[:1].repeat(4, 0), atol=1e-6)  # no dropout
    assert all(p.grad is None for p in model.parameters())


def test_predict_normalize_ptb(model, tokenizer):
    raw = ["It isn't (really) good.", 'a "great" film']
    normalized = [normalize_ptb(t) for t in raw]
    assert normalized == ["It is n't -LRB- really -RRB- good .", "a `` great '' film"]
    np.testing.assert_allclose(predict_logits(model, "sst", raw, tokenizer, normalize="ptb"),
                               predict_logits(model, "sst", normalized, tokenizer), atol=1e-6)
    assert not np.allclose(predict_logits(model, "sst", raw, tokenizer),
                           predict_logits(model, "sst", normalized, tokenizer))


@pytest.mark.parametrize("task, inputs, kwargs, message", [
    ("sst", [("a", "b")], {}, r"input 0: task 'sst' takes single sentences \(str\), got \('a', 'b'\)"),
    ("sts", ["a man", ("a", "b")], {}, r"input 0: task 'sts' takes sentence pairs \(a, b\), got 'a man'"),
    ("sts", [("a", "b"), ("a", "b", "c")], {}, r"input 1: task 'sts' takes sentence pairs"),
    ("sst", ["good", "  "], {}, r"input 1: 'sentence' is empty"),
    ("quora", [("a", "b"), ("a", "")], {}, r"input 1: 'sentence2' is empty"),
    ("nli", ["a"], {}, r"Unknown task_name 'nli'; this model has heads for \['sst', 'quora', 'sts'\]"),
    ("sst", "a good film", {}, r"inputs must be a list of strings; wrap a single input in a list"),
    ("sst", ["a"], {"normalize": "moses"}, r"Unknown normalize='moses'; choose one of \['ptb'\]"),
    ("sts", [("a", "b")], {"return_probabilities": True}, r"task 'sts' is a regression task"),
])
def test_predict_rejects_bad_inputs(model, tokenizer, task, inputs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predict(model, task, inputs, tokenizer, **kwargs)


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.0])
def test_predict_rejects_a_batch_size_that_is_not_a_positive_int(model, tokenizer, batch_size):
    """batch_size=-1 returned no predictions and no error (range(0, n, -1) is empty); 0 a bare range() error."""
    with pytest.raises(ValueError, match=rf"batch_size must be a positive int .*got {batch_size!r}"):
        predict(model, "sst", ["a great film", "bad", "it was fine"], tokenizer, batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        predict(model, "sst", [], tokenizer, batch_size=batch_size)


def test_predict_takes_any_iterable_of_inputs(model, tokenizer):
    """A numpy array, a pandas Series, a generator or zip(...) was refused with "wrap a single input in a list"."""
    import pandas as pd

    texts = ["a great film", "bad", "it was fine"]
    pairs = [("a man is playing", "a man plays"), ("the cat", "a dog on grass")]
    labels, scores = predict(model, "sst", texts, tokenizer), predict(model, "sts", pairs, tokenizer)
    for inputs in (np.array(texts), pd.Series(texts), (t for t in texts), tuple(texts), Dataset.from_dict(
            {"sentence": texts})["sentence"]):
        assert predict(model, "sst", inputs, tokenizer) == labels, type(inputs)
    for inputs in (zip(*zip(*pairs)), np.array(pairs), iter(pairs)):
        assert predict(model, "sts", inputs, tokenizer) == scores, type(inputs)
    for table in (pd.DataFrame({"sentence": texts}), {"sentence": texts}, 3):
        with pytest.raises(ValueError, match=r"inputs must be a list of strings, or another iterable of them \(tuple, "
                                             rf"numpy array, pandas Series, generator.*got {type(table).__name__}"):
            predict(model, "sst", table, tokenizer)


@pytest.fixture
def model_dir(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_model_predict_loads_the_saved_tokenizer(model_dir, model, tokenizer):
    loaded = MultitaskModel.from_pretrained(model_dir).eval()
    texts = ["a great film", "bad"]
    assert loaded.predict("sst", texts) == predict(model, "sst", texts, tokenizer)
    with pytest.raises(ValueError, match="no name_or_path to load a tokenizer from.*pass tokenizer="):
        model.predict("sst", texts)


def test_model_predict_says_when_the_models_folder_holds_no_tokenizer(tmp_path, model):
    """A folder of model.save_pretrained alone gave transformers' "Couldn't instantiate the backend tokenizer ...
    sentencepiece or tiktoken", which is not the cause."""
    model.save_pretrained(tmp_path / "model")
    loaded = MultitaskModel.from_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"The model's folder '.*model' holds no tokenizer \(no tokenizer_config.json"
                                         r".*tokenizer.save_pretrained\('.*model'\).*or pass tokenizer=") as error:
        loaded.predict("sst", ["a great film"])
    assert "sentencepiece" not in str(error.value)


def test_pipeline_from_a_directory_matches_predict(model_dir, model, tokenizer):
    classifier = pipeline("multitask-text-classification", model=str(model_dir), task_name="sst", device="cpu")
    assert isinstance(classifier.model, MultitaskModel)
    texts = ["a great film", "bad", "it was fine"]
    labels, probabilities = predict(model, "sst", texts, tokenizer, return_probabilities=True)
    expected = [{"label": label, "score": p.max()} for label, p in zip(labels, probabilities)]
    (single,) = classifier(texts[0])
    assert single["label"] == expected[0]["label"] and single["score"] == pytest.approx(expected[0]["score"])
    for got, want in zip(classifier(texts, batch_size=2), expected):
        assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=1e-5)


def test_pipeline_runs_a_model_left_in_training_mode_without_dropout(model, tokenizer):
    model.train()  # e.g. right after trainer.train()
    classifier = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, task_name="sst",
                          device="cpu")
    scores = [classifier("a great film")[0]["score"] for _ in range(3)]
    model.eval()
    (expected,) = predict(model, "sst", ["a great film"], tokenizer, return_probabilities=True)[1]
    assert scores == [pytest.approx(expected.max(), abs=1e-6)] * 3
    model.train()
    classifier("a great film")
    assert model.training  # put back as it was, as predict() does


def test_cls_pooling_reads_each_rows_first_token_on_either_padding_side(bert_config, tokenizer, caplog):
    """Left padding put [PAD] at position 0 of the shorter rows; pooling='cls' read it."""
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[sst_task()], pooling="cls")).eval()
    texts = ["a great film about a good dog", "bad"]
    right = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    hidden = model.encode(**right, pool=False)
    torch.testing.assert_close(model.encode(**right), hidden[:, 0], rtol=0, atol=0)  # as before for right padding
    tokenizer.padding_side = "left"
    left = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    start = int((left["attention_mask"][1] == 0).sum())  # the short row's [CLS]
    assert start > 0
    torch.testing.assert_close(model.encode(**left)[1], model.encode(**left, pool=False)[1, start])
    with caplog.at_level("WARNING"):
        predict(model, "sst", texts, tokenizer)
    assert any("pads on the left" in r.getMessage() for r in caplog.records)


def test_pipeline_warns_about_a_left_padding_tokenizer_as_predict_does(model, tokenizer, caplog):
    """Left padding changed the pipeline's scores with batch_size, and only predict() warned."""
    tokenizer.padding_side = "left"
    classifier = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, task_name="sst",
                          device="cpu")
    Logger.warning_once.cache_clear()  # the warning is given once per process: forget an earlier test's
    try:
        with caplog.at_level("WARNING"):
            classifier(["a great film", "the movie was bad and long"], batch_size=2)
    finally:
        Logger.warning_once.cache_clear()
    assert any("The tokenizer pads on the left" in r.getMessage() for r in caplog.records)


def test_pipeline_pairs_and_regression(model, tokenizer):
    scorer = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, device="cpu")
    pairs = [("a man is playing", "a man plays"), ("the cat", "a question")]
    got = scorer([{"text": a, "text_pair": b} for a, b in pairs], task_name="sts")
    assert [set(g) for g in got] == [{"score"}] * 2
    np.testing.assert_allclose([g["score"] for g in got], predict(model, "sts", pairs, tokenizer), atol=1e-5)
    quora = scorer({"text": "how is it", "text_pair": "how is it"}, task_name="quora")  # a dict: its answer
    assert quora["label"] == predict(model, "quora", [("how is it", "how is it")], tokenizer)[0]


def test_pipeline_bi_encoded_batches_match_predict(bert_config, tokenizer):
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[sts_task(pair_encoding="bi")])).eval()
    pairs = [("a man is playing", "a man plays"), ("the cat", "a question about a very good dog on grass")]
    scorer = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, device="cpu")
    got = scorer([{"text": a, "text_pair": b} for a, b in pairs], batch_size=2)  # one task: no task_name needed
    np.testing.assert_allclose([g["score"] for g in got], predict(model, "sts", pairs, tokenizer), atol=1e-5)


def test_pipeline_normalize_ptb(model, tokenizer):
    classifier = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, task_name="sst",
                          normalize="ptb", device="cpu")
    (got,) = classifier("It isn't (really) good.")
    labels, probabilities = predict(model, "sst", ["It is n't -LRB- really -RRB- good ."], tokenizer,
                                    return_probabilities=True)
    assert got["label"] == labels[0] and got["score"] == pytest.approx(probabilities[0].max(), abs=1e-5)


def test_pipeline_top_k_ranks_labels_as_text_classification_does(model, tokenizer):
    """`top_k=k` gives the k most probable labels, `top_k=None` all of them, most probable first, a list per
    input (a single input gives its list, unwrapped), per call or set when the pipeline is built."""
    classifier = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, task_name="sst",
                          device="cpu")
    texts = ["a great film", "bad"]
    _, probabilities = predict(model, "sst", texts, tokenizer, return_probabilities=True)
    names = model.specs["sst"].label_names
    ranked = classifier(texts, top_k=None)
    for got, p in zip(ranked, probabilities):
        order = np.argsort(-p, kind="stable")
        assert [g["label"] for g in got] == [names[i] for i in order]
        np.testing.assert_allclose([g["score"] for g in got], p[order], atol=1e-5)
    top2 = classifier(texts[0], top_k=2)
    assert [g["label"] for g in top2] == [g["label"] for g in ranked[0][:2]]
    assert classifier(texts[0], top_k=1) == top2[:1] and classifier(texts[0]) == top2[:1]
    built = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, task_name="sst",
                     device="cpu", top_k=None)
    (listed,) = built(texts[1])  # top_k set when built: a list of lists, as text-classification
    assert [g["label"] for g in listed] == [g["label"] for g in ranked[1]]
    with pytest.raises(ValueError, match="top_k: task 'sts' is a regression task; it has no labels to rank"):
        classifier({"text": "a", "text_pair": "b"}, task_name="sts", top_k=2)
    with pytest.raises(ValueError, match="top_k must be a positive int, or None"):
        classifier(texts[0], top_k=0)


def test_pipeline_takes_text_classifications_softmax_and_truncation_and_refuses_the_rest(model, tokenizer):
    """function_to_apply= and truncation= were a TypeError from _sanitize_parameters."""
    from transformers.pipelines.text_classification import ClassificationFunction

    classifier = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, task_name="sst",
                          device="cpu")
    expected = classifier("a great film")
    for kwargs in ({"function_to_apply": "softmax"}, {"function_to_apply": ClassificationFunction.SOFTMAX},
                   {"truncation": True}):
        assert classifier("a great film", **kwargs) == expected, kwargs
    for value in ("sigmoid", "none", ClassificationFunction.SIGMOID):
        with pytest.raises(ValueError, match=r"function_to_apply=.*scores a classification task's labels with their "
                                             r"softmax probabilities.*predict_logits gives the raw head outputs"):
            classifier("a great film", function_to_apply=value)
    with pytest.raises(ValueError, match="function_to_apply: task 'sts' is a regression task; its score is not a"):
        classifier({"text": "a", "text_pair": "b"}, task_name="sts", function_to_apply="softmax")
    with pytest.raises(ValueError, match="truncation=False: multitask-text-classification always truncates to the "
                                         "task's max_length"):
        classifier("a great film", truncation=False)


def test_pipeline_errors(model, tokenizer):
    classifier = pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, device="cpu")
    with pytest.raises(ValueError, match=r"Pass task_name=, one of \['sst', 'quora', 'sts'\]"):
        classifier("a good film")
    with pytest.raises(ValueError, match=r"pipeline input: task 'sst' takes single sentences"):
        classifier({"text": "a", "text_pair": "b"}, task_name="sst")
    with pytest.raises(ValueError, match=r'A dict input is \{"text": a, "text_pair": b\} or \{"text": a\}'):
        classifier({"text": "a", "pair": "b"}, task_name="quora")
    # {"text": a} alone is one sentence, as text-classification reads it
    assert classifier({"text": "a good film"}, task_name="sst") == classifier("a good film", task_name="sst")[0]
    with pytest.raises(ValueError, match="Unknown task_name 'nli'"):
        pipeline("multitask-text-classification", model=model, tokenizer=tokenizer, task_name="nli", device="cpu")


def test_worst_examples_classification_ranks_by_gold_probability():
    spec = sst_task()
    dataset = Dataset.from_dict({"sentence": ["a", "b", "c", "d"], "labels": [0, 1, 4, 2], "id": list("wxyz")})
    logits = np.zeros((4, 5))
    logits[0, 0] = 3.0  # right and sure
    logits[1, 4] = 5.0  # wrong and sure: worst
    logits[3, 3] = 1.0  # wrong, unsure; row 2 is uniform: 0.2 on its gold label
    records = worst_examples(spec, dataset, logits, 3)
    assert [r["id"] for r in records] == ["x", "z", "y"]
    assert records[0] == {"task": "sst", "id": "x", "sentence": "b", "gold": "negative",
                          "prediction": "very positive", "gold_probability": pytest.approx(1 / (4 + np.e ** 5))}
    assert records[2]["gold_probability"] == pytest.approx(0.2)


def test_worst_examples_regression_ranks_by_absolute_error_keeping_ties_in_order():
    spec = sts_task()
    dataset = Dataset.from_dict({"sentence1": list("abcd"), "sentence2": list("efgh"), "labels": [1.0, 2.0, 3.0, 4.0]})
    records = worst_examples(spec, dataset, np.array([[1.5], [4.0], [1.0], [4.0]]), 10)
    assert [(r["sentence1"], r["abs_error"]) for r in records] == [("b", 2.0), ("c", 2.0), ("a", 0.5), ("d", 0.0)]
    assert "id" not in records[0] and records[0]["prediction"] == 4.0 and records[0]["gold"] == 2.0
    with pytest.raises(ValueError, match="Task 'sts': 3 predictions for 4 examples"):
        worst_examples(spec, dataset, np.zeros((3, 1)), 2)
