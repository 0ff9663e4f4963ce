import pytest
import torch

from hf_multitask import (
    MultitaskConfig,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    PalConfig,
    cs224n_tasks,
    get_task,
    load_task_data,
    sst_task,
    tokenize_task,
)

from .conftest import snapshot

# A new task on the SST files: positive vs negative, a 2-class head next to the 5-class one.
POLARITY = sst_task(name="polarity", file_stem="sst", label_names=["negative", "positive"])


def polarity_data(data_dir, tokenizer):
    data = load_task_data(POLARITY.replace(label_names=[str(i) for i in range(5)]), data_dir)["train"]
    data = data.map(lambda row: {"labels": int(row["labels"] >= 3)})
    return tokenize_task(data, POLARITY, tokenizer)


def train(model, train_dataset, tokenizer, tmp_path, steps):
    args = MultitaskTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=steps,
                                      learning_rate=1e-2, weight_decay=0.1, report_to=[], save_strategy="no",
                                      use_cpu=True, seed=0)
    MultitaskTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer).train()


def inputs(tokenizer):
    return dict(tokenizer(["a great film", "how do i cook"], padding=True, return_tensors="pt"))


def test_add_task_builds_an_initialised_head_and_keeps_old_outputs(tiny_model, tokenizer):
    tiny_model.eval()
    batch = inputs(tokenizer)
    before = {t: tiny_model(task_name=t, **batch).logits for t in tiny_model.config.task_names}
    tiny_model.add_task(POLARITY)
    assert tiny_model.config.task_names == ["sst", "quora", "sts", "polarity"]
    assert tiny_model.specs["polarity"] == POLARITY and not tiny_model.heads["polarity"].training
    head = tiny_model.heads["polarity"].out_proj
    assert head.weight.shape == (2, 32) and torch.equal(head.bias, torch.zeros(2))
    assert 0.01 < head.weight.std().item() < 0.03  # normal(0, initializer_range=0.02), as post_init does
    assert tiny_model(task_name="polarity", **batch).logits.shape == (2, 2)
    for task, logits in before.items():
        torch.testing.assert_close(tiny_model(task_name=task, **batch).logits, logits, rtol=0, atol=0)


def test_add_task_rejects_a_duplicate_name(tiny_model):
    with pytest.raises(ValueError, match="Task 'sst' exists already"):
        tiny_model.add_task(get_task("sst", loss="ordinal"))
    assert tiny_model.config.task_names == ["sst", "quora", "sts"]


def test_add_task_gives_the_new_task_a_fresh_pal(tiny_model, tokenizer):
    tiny_model.add_pal(PalConfig(rank=8, g="attention", num_heads=2))
    tiny_model.add_task(POLARITY)
    assert list(tiny_model.pal) == ["sst", "quora", "sts", "polarity"]
    assert tiny_model.config.pal["tasks"] == ["sst", "quora", "sts", "polarity"]
    new = tiny_model.pal["polarity"]
    assert torch.count_nonzero(new.V_D.weight) == 0 and new.V_E.weight.std() > 0
    assert set(new.attention) == {"0", "1"}
    tiny_model.eval()
    batch = inputs(tokenizer)
    with tiny_model.pal_disabled():
        plain = tiny_model(task_name="polarity", **batch).logits
    torch.testing.assert_close(tiny_model(task_name="polarity", **batch).logits, plain)  # V_D = 0: no change


def test_add_task_without_a_pal_on_request(tiny_model):
    tiny_model.add_pal(PalConfig(rank=8))
    tiny_model.add_task(POLARITY, pal=False)
    assert "polarity" not in tiny_model.pal and tiny_model.config.pal["tasks"] == ["sst", "quora", "sts"]


def test_add_task_with_a_name_that_clashes_with_the_pals_changes_nothing(tiny_model):
    tiny_model.add_pal(PalConfig(rank=8))
    with pytest.raises(ValueError, match="'enabled' clashes with a PalModel attribute"):
        tiny_model.add_task(POLARITY.replace(name="enabled"))
    assert tiny_model.config.task_names == ["sst", "quora", "sts"] and "enabled" not in tiny_model.heads


def test_train_only_the_new_task_leaves_everything_else_bit_identical(tiny_model, tokenized, tokenizer, data_dir,
                                                                      tmp_path):
    tiny_model.add_pal(PalConfig(rank=8))
    train(tiny_model, tokenized["train"], tokenizer, tmp_path, steps=3)  # a trained model with PALs
    tiny_model.add_task(POLARITY)
    tiny_model.train_only(["polarity"])
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in tiny_model.named_parameters() if n.startswith(("heads.polarity.",
                                                                                         "pal.polarity."))}
    before = snapshot(tiny_model)
    train(tiny_model, {"polarity": polarity_data(data_dir, tokenizer)}, tokenizer, tmp_path, steps=4)
    after = snapshot(tiny_model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"heads.polarity.out_proj.weight", "heads.polarity.out_proj.bias", "pal.polarity.V_E.weight",
                       "pal.polarity.V_E.bias", "pal.polarity.V_D.weight", "pal.polarity.V_D.bias"}


def test_added_task_survives_save_and_load(tiny_model, tokenizer, tmp_path):
    tiny_model.add_pal(PalConfig(rank=8))
    tiny_model.add_task(POLARITY)
    with torch.no_grad():
        tiny_model.pal["polarity"].V_D.weight.normal_()  # as if trained: the PAL now matters
    tiny_model.eval()
    batch = inputs(tokenizer)
    expected = tiny_model(task_name="polarity", **batch).logits
    tiny_model.save_pretrained(tmp_path)
    loaded = MultitaskModel.from_pretrained(tmp_path).eval()
    assert loaded.config.task_names == ["sst", "quora", "sts", "polarity"]
    assert loaded.specs["polarity"] == POLARITY and list(loaded.pal) == ["sst", "quora", "sts", "polarity"]
    torch.testing.assert_close(loaded(task_name="polarity", **batch).logits, expected, rtol=0, atol=1e-6)


def test_train_only_rejects_unknown_tasks_and_tasks_with_nothing_to_train(bert_config):
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(pair_encoding="bi")))
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nli'\]"):
        model.train_only(["nli"])
    with pytest.raises(ValueError, match="have no parameters of their own"):
        model.train_only("sts")  # bi-encoded regression: a parameter-free cosine head
    assert all(p.requires_grad for p in model.parameters())
    model.train_only("sst")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"heads.sst.out_proj.weight",
                                                                          "heads.sst.out_proj.bias"}
