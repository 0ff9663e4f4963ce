import pytest
import torch
from transformers import AutoModel, BertModel, DistilBertConfig, RobertaConfig

from hf_multitask import MultitaskConfig, MultitaskModel, cs224n_tasks, get_task

from .conftest import batch


def test_forward_shapes_and_losses(tiny_model, tokenizer):
    inputs = batch(tokenizer, "a good film", "bad")
    out = tiny_model(task_name="sst", labels=torch.tensor([3, 1]), **inputs)
    assert out.logits.shape == (2, 5) and out.loss.ndim == 0
    out = tiny_model(task_name="sts", labels=torch.tensor([1.0, 4.5]), **inputs)
    assert out.logits.shape == (2, 1)


def test_return_dict_false_gives_a_tuple_as_transformers_models_do(tiny_model, tokenizer):
    tiny_model.eval()
    inputs = batch(tokenizer, "a good movie", "a bad film")
    output = tiny_model(task_name="sst", **inputs, labels=torch.tensor([3, 1]))
    loss, logits = tiny_model(task_name="sst", **inputs, labels=torch.tensor([3, 1]), return_dict=False)
    assert torch.equal(loss, output.loss) and torch.equal(logits, output.logits)
    (alone,) = tiny_model(task_name="sst", **inputs, return_dict=False)
    assert torch.equal(alone, output.logits)


def test_unknown_task_is_named(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="Unknown task_name 'nli'.*'sst', 'quora', 'sts'"):
        tiny_model(task_name="nli", **batch(tokenizer, "a"))


def test_save_load_gives_identical_logits(tiny_model, tokenizer, tmp_path):
    tiny_model.eval()
    inputs = batch(tokenizer, "a great film", "how do i cook")
    expected = {t: tiny_model(task_name=t, **inputs).logits for t in ("sst", "quora", "sts")}
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loaded in (MultitaskModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, MultitaskModel)
        loaded.eval()
        for task, logits in expected.items():
            torch.testing.assert_close(loaded(task_name=task, **inputs).logits, logits, rtol=0, atol=1e-6)
        assert loaded.config.specs == tiny_model.config.specs


def test_pooling_cls_and_mean_differ(bert_config, tokenizer):
    inputs = batch(tokenizer, "a good film", "bad")
    outs = {}
    for pooling in ("cls", "mean"):
        torch.manual_seed(0)
        model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(), pooling=pooling)).eval()
        outs[pooling] = model.encode(inputs["input_ids"], inputs["attention_mask"])
    hidden = model.encoder(**inputs).last_hidden_state
    torch.testing.assert_close(outs["cls"], hidden[:, 0])
    mask = inputs["attention_mask"][1].bool()
    torch.testing.assert_close(outs["mean"][1], hidden[1][mask].mean(0))


def test_mean_pooling_ignores_padding(tiny_model, tokenizer):
    tiny_model.eval()
    alone = tiny_model(task_name="sst", **batch(tokenizer, "bad")).logits
    padded = tiny_model(task_name="sst", **batch(tokenizer, "bad", "a very very long good great film")).logits
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-5)


def test_bi_encoding_heads(bert_config, tokenizer):
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(pair_encoding="bi"))).eval()
    a, b = batch(tokenizer, "a cat", "a dog"), batch(tokenizer, "a cat", "the film")
    pair = {**a, **{f"{k}_b": v for k, v in b.items()}}
    scores = model(task_name="sts", **pair).logits
    assert scores.shape == (2, 1)
    assert scores[0].item() == pytest.approx(5.0, abs=1e-4)  # identical sentences: cosine 1 -> top of the range
    assert model(task_name="quora", **pair).logits.shape == (2, 2)
    assert model.heads["quora"].out_proj.in_features == 3 * bert_config.hidden_size
    with pytest.raises(ValueError, match="bi-encoded: the batch needs input_ids_b"):
        model(task_name="sts", **a)


def test_from_encoder_keeps_pretrained_weights(bert_config, tmp_path):
    encoder = BertModel(bert_config, add_pooling_layer=False)
    encoder.save_pretrained(tmp_path)
    model = MultitaskModel.from_encoder(tmp_path, cs224n_tasks())
    for (name, expected), actual in zip(encoder.state_dict().items(), model.encoder.state_dict().values()):
        torch.testing.assert_close(actual, expected, msg=name)


def test_freeze_encoder_leaves_heads_trainable(tiny_model):
    tiny_model.freeze_encoder()
    assert not any(p.requires_grad for p in tiny_model.encoder.parameters())
    assert all(p.requires_grad for p in tiny_model.heads.parameters())
    assert tiny_model.num_parameters_per_task() == {"sst": 32 * 5 + 5, "quora": 32 * 2 + 2, "sts": 32 + 1}


def test_load_heads_from_another_model(tiny_model, bert_config, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    other = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    other.load_heads_from(tmp_path)
    for name in ("sst", "quora", "sts"):
        for a, b in zip(other.heads[name].parameters(), tiny_model.heads[name].parameters()):
            torch.testing.assert_close(a, b)
    mismatch = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[get_task("sst").replace(name="nli")]))
    with pytest.raises(ValueError, match="'nli' has no head in the source"):
        mismatch.load_heads_from(tiny_model)


@pytest.mark.parametrize(
    "encoder_config",
    [
        DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=4, hidden_dim=37),
        RobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37, type_vocab_size=1),
    ],
    ids=["distilbert", "roberta"],
)
def test_other_encoder_families(encoder_config, tmp_path):
    model = MultitaskModel(MultitaskConfig(encoder=encoder_config, tasks=cs224n_tasks())).eval()
    ids = torch.randint(5, 100, (2, 7))
    logits = model(task_name="sst", input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(task_name="sst", input_ids=ids).logits, logits)


def test_config_rejects_duplicate_tasks_and_bad_pooling(bert_config):
    with pytest.raises(ValueError, match="duplicate task names"):
        MultitaskConfig(encoder=bert_config, tasks=[get_task("sst"), get_task("sst")])
    with pytest.raises(ValueError, match="pooling must be one of"):
        MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(), pooling="max")


def test_from_encoder_keeps_the_attention_implementation(bert_config, tmp_path):
    BertModel(bert_config, add_pooling_layer=False).save_pretrained(tmp_path)
    model = MultitaskModel.from_encoder(tmp_path, cs224n_tasks())
    assert model.encoder.config._attn_implementation == model.config._attn_implementation is not None


def test_max_sequence_length_counts_roberta_padding_offset(bert_config):
    assert MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks())).max_sequence_length == 64
    roberta = RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=66, pad_token_id=1)
    model = MultitaskModel(MultitaskConfig(encoder=roberta, tasks=cs224n_tasks()))
    assert model.max_sequence_length == 64  # positions start after padding_idx + 1
    assert model(task_name="sst", input_ids=torch.full((1, 64), 5)).logits.shape == (1, 5)
    with pytest.raises(ValueError, match=r"A batch of 65 tokens .* allow \(64, from max_position_embeddings\)"):
        model(task_name="sst", input_ids=torch.full((1, 65), 5))


def test_from_encoder_is_quiet_about_the_pooler_but_reports_other_weights(tmp_path, bert_config, capfd, caplog):
    from safetensors.torch import load_file, save_file
    from transformers import BertModel

    from hf_multitask import MultitaskModel, cs224n_tasks

    BertModel(bert_config).save_pretrained(tmp_path / "bert")  # a checkpoint with the pooler we drop
    MultitaskModel.from_encoder(tmp_path / "bert", cs224n_tasks())
    assert "LOAD REPORT" not in capfd.readouterr().err

    weights = load_file(tmp_path / "bert" / "model.safetensors")
    del weights["embeddings.LayerNorm.weight"]
    save_file(weights, tmp_path / "bert" / "model.safetensors", metadata={"format": "pt"})
    MultitaskModel.from_encoder(tmp_path / "bert", cs224n_tasks())
    assert "do not match its checkpoint: missing_keys: ['embeddings.LayerNorm.weight']" in caplog.text
    assert "pooler" not in caplog.text


def test_resized_token_embeddings_save_and_load(tiny_model, tokenizer, tmp_path):
    """Tokens added to the tokenizer, the embeddings resized: the model saves and loads (with hf-multitask and
    with AutoModel), the new rows included."""
    tokenizer.add_tokens(["zebraword", "grassword"])
    embeddings = tiny_model.resize_token_embeddings(len(tokenizer))
    assert embeddings.num_embeddings == len(tokenizer) == tiny_model.config.encoder.vocab_size
    tiny_model.save_pretrained(tmp_path)
    for loader in (MultitaskModel.from_pretrained, AutoModel.from_pretrained):
        reloaded = loader(tmp_path)
        torch.testing.assert_close(reloaded.get_input_embeddings().weight, embeddings.weight, rtol=0, atol=0)


def test_a_plain_encoder_checkpoint_is_not_loaded_as_a_multitask_model(bert_config, tmp_path):
    BertModel(bert_config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"plain encoder's config, not a multitask model's; .*from_encoder"):
        MultitaskModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("setting", [{"num_labels": 3}, {"id2label": {0: "a", 1: "b", 2: "c"}},
                                     {"label2id": {"a": 0, "b": 1, "c": 2}}, {"problem_type": "regression"}])
def test_model_level_label_settings_are_refused(tiny_model, tmp_path, setting):
    """`from_pretrained(path, num_labels=3)` (run_glue.py's habit) would be written into config.json and change no
    head: refused, naming where labels go. Loading with no such setting, and a dict round trip (which writes two
    default labels), still work."""
    tiny_model.save_pretrained(tmp_path)
    name = next(iter(setting))
    for loader in (MultitaskModel.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=rf"MultitaskConfig got {name}=.*labels belong to its tasks"):
            loader(tmp_path, **setting)
    reloaded = MultitaskModel.from_pretrained(tmp_path)
    assert {k: v.shape for k, v in reloaded.heads.state_dict().items()} == {
        k: v.shape for k, v in tiny_model.heads.state_dict().items()}
    assert MultitaskConfig.from_dict(tiny_model.config.to_dict()).tasks == tiny_model.config.tasks
