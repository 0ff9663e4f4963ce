import csv
import gzip
import json

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from transformers import AutoModelForSequenceClassification

from hf_multitask import MultitaskConfig, MultitaskModel, cs224n_tasks, load_task_data, predict
from hf_multitask.cli import main


def save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def model_dir(tmp_path, tiny_model, tokenizer):
    return save(tiny_model, tokenizer, tmp_path / "model")


def test_evaluate_writes_the_worst_examples_per_task(model_dir, data_dir, tiny_model, tokenizer):
    main(["evaluate", str(model_dir), "--data", str(data_dir), "--errors", "3"])
    records = [json.loads(line) for line in (model_dir / "dev_errors.jsonl").read_text().splitlines()]
    assert [r["task"] for r in records] == ["sst"] * 3 + ["quora"] * 3 + ["sts"] * 3
    sst = load_task_data(tiny_model.specs["sst"], data_dir, splits=("dev",))["dev"]
    _, probabilities = predict(tiny_model.eval(), "sst", sst["sentence"], tokenizer, return_probabilities=True)
    gold_probability = probabilities[np.arange(len(sst)), sst["labels"]]
    assert [r["gold_probability"] for r in records[:3]] == pytest.approx(np.sort(gold_probability)[:3], abs=1e-5)
    worst = int(gold_probability.argmin())
    assert records[0]["id"] == sst["id"][worst] and records[0]["sentence"] == sst["sentence"][worst]
    assert records[0]["gold"] == tiny_model.specs["sst"].label_names[sst["labels"][worst]]
    sts = [r for r in records if r["task"] == "sts"]
    assert [r["abs_error"] for r in sts] == sorted((r["abs_error"] for r in sts), reverse=True)
    assert all(r["abs_error"] == pytest.approx(abs(r["prediction"] - r["gold"])) for r in sts)
    assert {"sentence1", "sentence2"} <= set(sts[0])


def test_evaluate_errors_as_tsv(model_dir, data_dir):
    out = model_dir / "errors.tsv"
    main(["evaluate", str(model_dir), "--data", str(data_dir), "--tasks", "sts", "sst", "--errors", "2",
          "--errors_output", str(out)])
    with open(out, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        rows = list(reader)
    assert reader.fieldnames == ["task", "id", "sentence1", "sentence2", "gold", "prediction", "abs_error",
                                 "sentence", "gold_probability"]
    assert [r["task"] for r in rows] == ["sts", "sts", "sst", "sst"]
    assert rows[2]["sentence1"] == "" and float(rows[2]["gold_probability"]) < 1


def test_evaluate_writes_every_prediction_and_they_give_the_reported_metrics(model_dir, data_dir, tiny_model):
    """`--predictions x.jsonl.gz`: one record per dev example in file order (task, id, gold `labels`, the
    prediction); accuracy and Pearson r recomputed from the records equal the metrics `evaluate` reports, and the
    gzip has no timestamp (the same bytes on a second run)."""
    out = model_dir / "preds.jsonl.gz"
    main(["evaluate", str(model_dir), "--data", str(data_dir), "--predictions", str(out)])
    metrics = json.loads((model_dir / "dev_results.json").read_text())
    first = out.read_bytes()
    with gzip.open(out, "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    for task in ("sst", "quora", "sts"):
        gold = load_task_data(tiny_model.specs[task], data_dir, splits=("dev",))["dev"]
        rows = [r for r in records if r["task"] == task]
        assert [r["id"] for r in rows] == gold["id"] and [r["labels"] for r in rows] == pytest.approx(gold["labels"])
        if task == "sts":
            value = pearsonr([r["score"] for r in rows], [r["labels"] for r in rows])[0]
            assert value == pytest.approx(metrics["dev_sts_pearson"], abs=1e-5)
        else:
            accuracy = np.mean([r["label_id"] == r["labels"] for r in rows])
            assert accuracy == pytest.approx(metrics[f"dev_{task}_accuracy"], abs=1e-9)
    main(["evaluate", str(model_dir), "--data", str(data_dir), "--predictions", str(out)])
    assert out.read_bytes() == first


def test_evaluate_without_errors_writes_no_errors_file(model_dir, data_dir):
    main(["evaluate", str(model_dir), "--data", str(data_dir), "--tasks", "sst"])
    assert (model_dir / "dev_results.json").is_file() and not (model_dir / "dev_errors.jsonl").exists()
    with pytest.raises(SystemExit, match="--errors must be >= 0"):
        main(["evaluate", str(model_dir), "--data", str(data_dir), "--errors", "-1"])


def test_predict_normalize_ptb(model_dir, tiny_model, tokenizer, capsys):
    main(["predict", str(model_dir), "--task", "sst", "--normalize", "ptb", "It isn't (really) good.", "bad"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["sentence"] for line in lines] == ["It isn't (really) good.", "bad"]  # the input, as given
    labels, probabilities = predict(tiny_model.eval(), "sst", ["It is n't -LRB- really -RRB- good .", "bad"],
                                    tokenizer, return_probabilities=True)
    assert [line["label"] for line in lines] == labels
    assert [line["probability"] for line in lines] == pytest.approx(probabilities.max(-1), abs=1e-5)
    assert lines[0]["label_id"] == tiny_model.specs["sst"].label_names.index(labels[0])


def test_predict_pairs_from_a_file(model_dir, data_dir, tiny_model, tokenizer, tmp_path):
    out = tmp_path / "pred.jsonl"
    main(["predict", str(model_dir), "--task", "sts", "--file", str(data_dir / "sts-dev.tsv"), "--output", str(out),
          "--batch_size", "3"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = [(r["sentence1"], r["sentence2"]) for r in records]
    assert len(pairs) == 8
    np.testing.assert_allclose([r["score"] for r in records], predict(tiny_model.eval(), "sts", pairs, tokenizer),
                               atol=1e-5)


def test_predict_rejects_a_batch_size_that_is_not_positive(model_dir, data_dir, tmp_path):
    out = tmp_path / "pred.jsonl"
    for size in ("0", "-1"):  # -1 wrote a blank line and exited 0
        with pytest.raises(ValueError, match=f"batch_size must be a positive int .*got {size}"):
            main(["predict", str(model_dir), "--task", "sst", "--file", str(data_dir / "sst-dev.tsv"),
                  f"--batch_size={size}", "--output", str(out)])
    assert not out.exists()


def test_predict_on_a_folder_without_a_tokenizer_says_so(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "model")  # no tokenizer beside it
    for command in (["predict", str(tmp_path / "model"), "--task", "sst", "a great film"],
                    ["export", str(tmp_path / "model"), "--task", "sst", "--output", str(tmp_path / "out")]):
        with pytest.raises(ValueError, match=r"'.*model' holds no tokenizer \(no tokenizer_config.json.*"
                                             r"tokenizer.save_pretrained\('.*model'\)"):
            main(command)


def test_predict_keeps_the_json_type_of_the_ids_of_a_jsonl_file(model_dir, tmp_path):
    """`{"id": 7}` came back as `"id": "7"`."""
    rows = [{"id": 7, "sentence": "a great film"}, {"id": 8, "sentence": "bad"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "in.tsv").write_text("id\tsentence\n7\ta great film\n", encoding="utf-8")
    for name, ids in (("in.jsonl", [7, 8]), ("in.tsv", ["7"])):  # a TSV's ids are text
        main(["predict", str(model_dir), "--task", "sst", "--file", str(tmp_path / name), "--output",
              str(tmp_path / "out.jsonl")])
        written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert [r["id"] for r in written] == ids


def test_export_command(tmp_path, bert_config, tokenizer, data_dir, capsys):
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(), pooling="cls")).eval()
    path = save(model, tokenizer, tmp_path / "cls")
    main(["export", str(path), "--task", "quora", "--output", str(tmp_path / "quora"), "--check_data", str(data_dir)])
    out = capsys.readouterr().out
    assert "AutoModelForSequenceClassification.from_pretrained(" in out
    difference = float(out.split("largest |logit difference| on 8 dev examples: ")[1].split()[0])
    assert difference < 1e-5
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "quora")
    assert exported.config.id2label == {0: "not_duplicate", 1: "duplicate"}


def test_export_command_refusals(model_dir, tmp_path):
    with pytest.raises(SystemExit, match="hf-multitask export: Task 'sst': the model pools with 'mean'"):
        main(["export", str(model_dir), "--task", "sst", "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="no head for task 'nli'"):
        main(["export", str(model_dir), "--task", "nli", "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
