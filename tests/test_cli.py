import gzip
import json

import numpy as np
import pytest
import yaml
from scipy.stats import pearsonr
from transformers import BertConfig, BertModel

from hf_multitask import get_task, load_task_data
from hf_multitask.cli import load_config_file, main, parse_train_args


@pytest.fixture
def encoder_dir(tmp_path, tokenizer_dir, tokenizer):
    path = tmp_path / "encoder"
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=37), add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def config_file(tmp_path, encoder_dir, data_dir):
    config = {"model_name_or_path": str(encoder_dir), "data_dir": str(data_dir), "output_dir": str(tmp_path / "run"),
              "max_steps": 4, "per_device_train_batch_size": 4, "report_to": [], "learning_rate": 1e-3,
              "task_sampling": "proportional", "task_overrides": {"sst": {"loss": "ordinal"}}, "use_cpu": True}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_evaluate_predict_end_to_end(config_file, tmp_path, data_dir, capsys):
    main(["train", str(config_file), "--max_steps", "3"])
    run = tmp_path / "run"
    results = json.loads((run / "eval_results.json").read_text())
    assert {"eval_sst_accuracy", "eval_quora_accuracy", "eval_sts_pearson", "eval_overall"} <= set(results)
    saved = json.loads((run / "config.json").read_text())
    assert saved["tasks"][0]["loss"] == "ordinal"
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 3  # the flag won over the file
    assert "overall" in capsys.readouterr().out

    main(["evaluate", str(run), "--data", str(data_dir), "--split", "dev", "--tasks", "sts"])
    assert set(json.loads((run / "dev_results.json").read_text())) >= {"dev_sts_pearson", "dev_overall"}

    capsys.readouterr()
    main(["predict", str(run), "--task", "sst", "a good film", "bad"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["sentence"] for line in lines] == ["a good film", "bad"]
    assert all(line["label"] in ("very negative", "negative", "neutral", "positive", "very positive")
               for line in lines)

    out = tmp_path / "pred.jsonl"
    main(["predict", str(run), "--task", "sts", "--file", str(data_dir / "sts-dev.tsv"), "--output", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8 and all(isinstance(r["score"], float) for r in records)


def test_train_writes_the_predictions_of_its_evaluation_pass(config_file, tmp_path, data_dir):
    """`--predictions_file`: the metrics come from the same pass as the predictions, so they can be recomputed from
    them exactly; `hf-multitask evaluate --predictions` on the saved model writes the same records."""
    path = tmp_path / "run" / "dev_predictions.jsonl.gz"
    main(["train", str(config_file), "--max_steps", "2", "--predictions_file", str(path)])
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    with gzip.open(path, "rt") as handle:
        records = [json.loads(line) for line in handle]
    sst = [r for r in records if r["task"] == "sst"]
    assert len(sst) == len(load_task_data(get_task("sst"), data_dir, splits=("dev",))["dev"])
    assert np.mean([r["label_id"] == r["labels"] for r in sst]) == pytest.approx(results["eval_sst_accuracy"])
    sts = [r for r in records if r["task"] == "sts"]
    r = pearsonr([x["score"] for x in sts], [x["labels"] for x in sts])[0]
    assert r == pytest.approx(results["eval_sts_pearson"], abs=1e-6)
    again = tmp_path / "again.jsonl.gz"
    main(["evaluate", str(tmp_path / "run"), "--data", str(data_dir), "--predictions", str(again)])
    with gzip.open(again, "rt") as handle:
        evaluated = [json.loads(line) for line in handle]
    assert [(x["task"], x["id"], x.get("label_id")) for x in evaluated] == [
        (x["task"], x["id"], x.get("label_id")) for x in records]
    assert [x.get("score") for x in evaluated] == pytest.approx([x.get("score") for x in records], abs=1e-5)


def test_config_file_rejects_unknown_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 1.0e-4\nlearnin_rate: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown key\(s\) \['learnin_rate'\]"):
        load_config_file(str(path))


def test_flags_override_the_config_file(config_file):
    model_args, data_args, training_args = parse_train_args([str(config_file), "--learning_rate", "5e-5",
                                                              "--pair_encoding", "bi"])
    assert training_args.learning_rate == 5e-5 and model_args.pair_encoding == "bi"
    assert training_args.task_sampling == "proportional" and training_args.max_steps == 4


def test_hf_do_switches_are_honoured_or_refused(config_file, tmp_path, data_dir):
    for dev in data_dir.glob("*-dev.tsv"):
        dev.unlink()
    main(["train", str(config_file), "--max_steps", "1", "--do_eval", "false"])  # as eval_split none: no dev files
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "eval_results.json").exists()
    config = yaml.safe_load(config_file.read_text()) | {"do_eval": False}
    config_file.write_text(yaml.safe_dump(config))
    assert parse_train_args([str(config_file)])[1].eval_split == "none"
    assert parse_train_args([str(config_file), "--do_eval"])[1].eval_split == "dev"  # the flag wins over the file
    assert parse_train_args([str(config_file), "--do_eval=true", "--do_train", "true"])[1].eval_split == "dev"
    refused = {("--do_train", "false"): "train always trains; to evaluate a saved model: hf-multitask evaluate",
               ("--do_predict",): "do_predict is not a train option",
               ("--eval_strategy", "steps"): "do_eval is false but eval_strategy is 'steps'",
               ("--predictions_file", "p.jsonl"): "do_eval is false, and predictions_file writes"}
    for flags, message in refused.items():
        with pytest.raises(ValueError, match=message):
            parse_train_args([str(config_file), *flags])


def test_continuing_from_a_model_with_other_tasks_is_an_error(config_file, tmp_path):
    main(["train", str(config_file)])
    with pytest.raises(ValueError, match=r"has heads for tasks \['sst', 'quora', 'sts'\].*asks for tasks \['sst'\]"):
        main(["train", str(config_file), "--model_name_or_path", str(tmp_path / "run"), "--tasks", "sst"])


def test_predict_rejects_unknown_task_and_bad_pairs(config_file, tmp_path):
    main(["train", str(config_file), "--max_steps", "1"])
    with pytest.raises(SystemExit, match="no head for task 'nli'"):
        main(["predict", str(tmp_path / "run"), "--task", "nli", "x"])
    with pytest.raises(SystemExit, match="needs 2 text"):
        main(["predict", str(tmp_path / "run"), "--task", "sts", "only one sentence"])


def test_help_lists_the_commands_and_exits_0(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "predict", "export", "report"):
        assert f"\n  {command} " in out


def test_an_unknown_command_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    assert "unknown command 'trian' (did you mean 'train'?)" in capsys.readouterr().err


def test_train_help_shows_our_arguments_before_the_training_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    ours = [out.index(flag) for flag in ("--model_name_or_path", "--data_dir", "--task_sampling ", "--smart_tasks")]
    assert ours == sorted(ours) and max(ours) < out.index("--per_device_train_batch_size")
    assert "model arguments:" in out and "multitask training arguments:" in out


def test_relaunching_a_finished_run_with_resume_trains_nothing(config_file, tmp_path, capsys):
    """transformers' Trainer would run one step past max_steps and save checkpoint-5 (README's re-launch command)."""
    main(["train", str(config_file), "--save_strategy", "steps", "--save_steps", "2"])
    run = tmp_path / "run"
    before = (run / "model.safetensors").read_bytes()
    assert main(["train", str(config_file), "--save_strategy", "steps", "--save_steps", "2",
                 "--resume_from_checkpoint", "true"]) is None
    assert "is complete (step 4, max_steps 4): nothing to train" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == before and not (run / "checkpoint-5").exists()


def test_a_fresh_run_into_a_directory_with_checkpoints_says_so(config_file, tmp_path, capsys):
    main(["train", str(config_file), "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "2"])
    capsys.readouterr()
    main(["train", str(config_file), "--max_steps", "1", "--resume_from_checkpoint", "false"])  # "false": no resume
    assert "holds checkpoints of an earlier run (checkpoint-2); this run starts afresh" in capsys.readouterr().err


def test_the_console_script_prints_input_errors_as_one_line(tmp_path, monkeypatch, capsys):
    from hf_multitask.cli import run

    bad = tmp_path / "bad.yaml"
    bad.write_text("learnin_rate: 1\n")
    monkeypatch.setattr("sys.argv", ["hf-multitask", "train", str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"hf-multitask train: ValueError: {bad}: unknown key(s) ['learnin_rate'] (did "
                                        "you mean 'learning_rate'?)"]
    monkeypatch.setenv("HF_MULTITASK_TRACEBACK", "1")
    with pytest.raises(ValueError, match="unknown key"):
        run()


def test_predict_and_evaluate_edges(config_file, tmp_path, data_dir, capsys):
    """Texts and --file together are refused; --file rows keep their ids; --output's folder is made; a missing model
    directory is named; evaluate leaves nothing in the model's folder but its results."""
    main(["train", str(config_file), "--max_steps", "1"])
    run = tmp_path / "run"
    with pytest.raises(SystemExit, match="give texts or --file, not both"):
        main(["predict", str(run), "--task", "sst", "good", "--file", str(data_dir / "sst-dev.tsv")])
    out = tmp_path / "new folder" / "pred.jsonl"
    main(["predict", str(run), "--task", "sst", "--file", str(data_dir / "sst-dev.tsv"), "--output", str(out)])
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == list(load_task_data(get_task("sst"), data_dir, splits=("dev",))["dev"]["id"])
    for command in (["evaluate", str(tmp_path / "nomodel"), "--data", str(data_dir)],
                    ["predict", str(tmp_path / "nomodel"), "--task", "sst", "good"]):
        with pytest.raises(SystemExit, match="nomodel: no such model directory"):
            main(command)
    before = set(run.iterdir())
    main(["evaluate", str(run), "--data", str(data_dir), "--tasks", "sst"])
    assert set(run.iterdir()) - before == {run / "dev_results.json"}


def test_eval_split_none_trains_without_evaluation_files(config_file, tmp_path, data_dir):
    for dev in data_dir.glob("*-dev.tsv"):
        dev.unlink()
    main(["train", str(config_file), "--max_steps", "1", "--eval_split", "none"])
    run = tmp_path / "run"
    assert (run / "model.safetensors").is_file() and not (run / "eval_results.json").exists()
    with pytest.raises(ValueError, match="predictions_file writes the evaluation's predictions, and eval_split is"):
        main(["train", str(config_file), "--eval_split", "none", "--predictions_file", str(tmp_path / "p.jsonl")])
