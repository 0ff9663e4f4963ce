"""Shared fixtures: a tiny word-piece tokenizer, tiny random BERT-family configs and small task data."""

from __future__ import annotations

import copy
import os
import string

import pytest
import torch
from transformers import BertConfig, BertTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

WORDS = ("the a is was it film movie good bad great awful very not how what why do does i you can cat dog "
         "man woman playing on in grass question same ?").split()
SST_ROWS = [
    ("a great film", 4), ("a good movie", 3), ("it is a film", 2), ("a bad movie", 1), ("an awful film", 0),
    ("very good", 3), ("not good", 1), ("great great film", 4), ("the movie was bad", 1), ("awful awful", 0),
    ("it was fine", 2), ("very very good", 4),
]
PAIR_ROWS = [
    ("how do i cook", "how can i cook", 1.0), ("what is a cat", "why is the dog", 0.0),
    ("a man is playing", "a man plays", 1.0), ("the cat", "a question", 0.0), ("how is it", "how is it", 1.0),
    ("what do you do", "what can you do", 1.0), ("a dog on grass", "the film", 0.0), ("why", "what", 0.0),
]
STS_ROWS = [
    ("a man is playing", "a man plays", 4.6), ("a cat", "the dog", 1.0), ("a dog on grass", "a dog in grass", 4.2),
    ("the film", "a movie", 3.8), ("a woman", "a question", 0.2), ("how do i", "what can you", 0.8),
    ("the cat is good", "the cat is bad", 2.5), ("a man", "a woman", 1.7),
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, "?", ".", ",", "'",
             *(f"##{c}" for c in string.ascii_lowercase), *WORDS]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(dict.fromkeys(vocab))})
    assert tokenizer.convert_ids_to_tokens(tokenizer("a great film")["input_ids"]) == ["[CLS]", "a", "great", "film",
                                                                                       "[SEP]"]
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def _tokenizer(tokenizer_dir):
    return BertTokenizerFast.from_pretrained(tokenizer_dir)


@pytest.fixture
def tokenizer(_tokenizer):
    return copy.deepcopy(_tokenizer)


@pytest.fixture
def bert_config(_tokenizer):
    return BertConfig(vocab_size=len(_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def write_tsv(path, header, rows):
    lines = ["\t".join(header)] + ["\t".join(str(c) for c in (f"id{i:04d}", *row)) for i, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path):
    """A directory laid out like ../shared/data with tiny train and dev files."""
    for split in ("train", "dev"):
        write_tsv(tmp_path / f"sst-{split}.tsv", ["id", "sentence", "sentiment"], SST_ROWS)
        write_tsv(tmp_path / f"quora-{split}.tsv", ["id", "sentence1", "sentence2", "is_duplicate"], PAIR_ROWS)
        write_tsv(tmp_path / f"sts-{split}.tsv", ["id", "sentence1", "sentence2", "similarity"], STS_ROWS)
    return tmp_path


@pytest.fixture
def tiny_model(bert_config):
    from hf_multitask import MultitaskConfig, MultitaskModel, cs224n_tasks

    torch.manual_seed(0)
    return MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))


@pytest.fixture
def tokenized(data_dir, tokenizer):
    """`{split: {task: tokenized Dataset}}` for the three CS224N tasks (cross-encoded)."""
    from hf_multitask import cs224n_tasks, load_task_data, tokenize_task

    out = {"train": {}, "dev": {}}
    for spec in cs224n_tasks():
        data = load_task_data(spec, data_dir)
        for split in out:
            out[split][spec.name] = tokenize_task(data[split], spec, tokenizer)
    return out


# ---- helpers shared by the test files (import them: `from .conftest import make_trainer`) ----


def make_model(bert_config, tasks=None):
    """A fresh tiny model (seed 0) without classifier dropout, on the CS224N tasks unless `tasks` are given."""
    from hf_multitask import MultitaskConfig, MultitaskModel, cs224n_tasks

    torch.manual_seed(0)
    return MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=tasks or cs224n_tasks(), classifier_dropout=0.0))


_DEV = object()


def make_trainer(model, tokenized, tokenizer, output_dir, *, train=None, eval=_DEV, trainer_class=None, **overrides):
    """A small CPU `MultitaskTrainer` on `tokenized["train"]`, evaluating on `tokenized["dev"]`.

    `overrides` replace or add to the default `MultitaskTrainingArguments` below. `train=` replaces the training
    datasets, `eval=` the evaluation ones (`eval=None`: no eval_dataset); `trainer_class=` a MultitaskTrainer
    subclass to build instead.
    """
    from hf_multitask import MultitaskTrainer, MultitaskTrainingArguments

    defaults = dict(per_device_train_batch_size=4, max_steps=6, learning_rate=1e-3, logging_steps=3, report_to=[],
                    save_strategy="no", use_cpu=True, seed=0)
    args = MultitaskTrainingArguments(output_dir=str(output_dir), **{**defaults, **overrides})
    return (trainer_class or MultitaskTrainer)(
        model=model, args=args, train_dataset=tokenized["train"] if train is None else train,
        eval_dataset=tokenized["dev"] if eval is _DEV else eval, processing_class=tokenizer)


def snapshot(module):
    """`{name: a detached copy}` of every parameter of `module`."""
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def batch(tokenizer, *texts):
    """The padded tokenizer output for `texts`, as a plain dict of tensors."""
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))
