import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, BertModel, DistilBertConfig, RobertaConfig, RobertaTokenizerFast

from hf_multitask import (
    MultitaskCollator,
    MultitaskConfig,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    TaskSpec,
    cs224n_tasks,
    load_task_data,
    tokenize_task,
)
from hf_multitask.build import ModelArguments, build_model
from hf_multitask.pal import PalConfig, ProjectedAttention

from .conftest import batch, snapshot

TASKS = ("sst", "quora", "sts")


def logits(model, inputs):
    return {t: model(task_name=t, **inputs).logits.detach() for t in TASKS}


def perturb(module, seed=1, std=0.2):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def assert_logits_equal(actual, expected, atol=1e-6):
    for task in expected:
        torch.testing.assert_close(actual[task], expected[task], rtol=0, atol=atol, msg=task)


def assert_logits_differ(actual, expected, tasks=TASKS):
    for task in tasks:
        assert not torch.allclose(actual[task], expected[task], atol=1e-4), task


@pytest.fixture
def inputs(tokenizer):
    return batch(tokenizer, "a great film", "how do i cook the dog ?")


# ---- config ----


@pytest.mark.parametrize("changes, field", [
    ({"rank": 0}, "rank"), ({"g": "mlp"}, "g"), ({"placement": "ffn"}, "placement"), ({"num_heads": 0}, "num_heads"),
    ({"g": "attention", "rank": 100, "num_heads": 6}, "num_heads"), ({"tasks": []}, "tasks"),
    ({"layers_to_transform": [-1]}, "layers_to_transform"), ({"layers_to_transform": [0, 0]}, "layers_to_transform"),
])
def test_config_rejects_bad_values_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=f"PalConfig.{field}"):
        PalConfig(**changes)


def test_config_round_trips_and_rejects_unknown_keys():
    config = PalConfig(rank=8, g="attention", num_heads=2, layers_to_transform=[1], tasks=["sst"])
    assert PalConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown PalConfig field"):
        PalConfig.from_dict({"rank": 8, "alpha": 2})


def test_default_rank_scales_with_minilm_width():
    config = PalConfig(g="attention")
    assert config.rank == round(204 * 384 / 768) and config.head_dim == 204 // 12  # the paper's 17 dims per head


@pytest.mark.parametrize("changes, match", [
    ({"tasks": ["nli"]}, "PalConfig.tasks has task"), ({"layers_to_transform": [2]}, "encoder has 2 layers"),
    ({"target_modules": "output.norm"}, "PalConfig.target_modules 'output.norm'"),
    ({"layers_pattern": "encoder.nope"}, "PalConfig.layers_pattern"),
])
def test_add_pal_rejects_what_does_not_fit_the_model(tiny_model, changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_model.add_pal(PalConfig(rank=8, **changes))
    assert tiny_model.pal is None and tiny_model.config.pal is None


# ---- the zero-init identity ----


@pytest.mark.parametrize("g", ["identity", "attention"])
@pytest.mark.parametrize("placement", ["layer", "attention"])
def test_fresh_pal_changes_no_output(tiny_model, inputs, g, placement):
    tiny_model.eval()
    expected = logits(tiny_model, inputs)
    tiny_model.add_pal(PalConfig(rank=8, g=g, num_heads=2, placement=placement))
    assert_logits_equal(logits(tiny_model, inputs), expected)
    perturb(tiny_model.pal)
    assert_logits_differ(logits(tiny_model, inputs), expected)


def test_v_d_stays_zero_through_construction_and_post_init(bert_config):
    config = MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks(), pal=PalConfig(rank=8, g="attention",
                                                                                        num_heads=2).to_dict())
    model = MultitaskModel(config)
    model.init_weights()  # transformers re-initialises every Linear here
    for task in TASKS:
        assert torch.count_nonzero(model.pal[task].V_D.weight) == 0
        assert torch.count_nonzero(model.pal[task].V_D.bias) == 0
        assert model.pal[task].V_E.weight.std() > 0
        assert model.pal[task].attention["0"].qkv.weight.std() > 0


def test_pal_added_by_from_pretrained_changes_no_output(tiny_model, inputs, tmp_path):
    tiny_model.eval()
    expected = logits(tiny_model, inputs)
    tiny_model.save_pretrained(tmp_path)
    loaded = MultitaskModel.from_pretrained(tmp_path, pal=PalConfig(rank=8).to_dict()).eval()  # PAL weights missing
    assert loaded.pal is not None and torch.count_nonzero(loaded.pal["sst"].V_D.weight) == 0
    assert_logits_equal(logits(loaded, inputs), expected)


# ---- where the term goes ----


def reference_bert_layer(layer, h, term, placement):
    """BertLayer by hand: LN(a + FFN(a) + TS(h)) or LN(h + SA(h) + TS(h)), dropout 0, no padding."""
    if placement == "attention":
        attn = layer.attention
        a = attn.output.LayerNorm(attn.output.dense(attn.self(h, None)[0]) + h + term)
        return layer.output(layer.intermediate(a), a)
    a = layer.attention(h, None)[0]
    return layer.output.LayerNorm(layer.output.dense(layer.intermediate(a)) + a + term)


@pytest.mark.parametrize("placement", ["layer", "attention"])
@pytest.mark.parametrize("shared", [True, False])
def test_term_enters_the_chosen_layer_norm(tiny_model, tokenizer, placement, shared):
    tiny_model.add_pal(PalConfig(rank=8, placement=placement, shared_across_layers=shared))
    perturb(tiny_model.pal)
    tiny_model.eval()
    ids = tokenizer(["a great film"], return_tensors="pt")["input_ids"]
    pal = tiny_model.pal["sst"]
    with torch.no_grad():
        h = tiny_model.encoder.embeddings(input_ids=ids)
        for i, layer in enumerate(tiny_model.encoder.encoder.layer):
            v_e, v_d = (pal.V_E, pal.V_D) if shared else (pal.V_E[str(i)], pal.V_D[str(i)])
            h = reference_bert_layer(layer, h, v_d(v_e(h)), placement)
        tiny_model.pal.set_task("sst")
        actual = tiny_model.encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(actual, h, rtol=1e-5, atol=1e-5)


def test_projected_attention_matches_softmax_attention():
    torch.manual_seed(0)
    attention = ProjectedAttention(rank=8, num_heads=2)
    x = torch.randn(2, 5, 8)
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    keep[1, :, :, 3:] = False  # the second example has 2 padding tokens
    q, k, v = (t.view(2, 5, 2, 4).transpose(1, 2) for t in attention.qkv(x).chunk(3, dim=-1))
    scores = (q @ k.transpose(-1, -2) / math.sqrt(4)).masked_fill(~keep, float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(attention(x, keep), expected)
    additive = torch.zeros(2, 1, 5, 5).masked_fill(~keep, torch.finfo(torch.float32).min)  # the eager encoders' mask
    torch.testing.assert_close(attention(x, additive), expected)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_pal_ignores_padding(bert_config, tokenizer, attn_implementation):
    bert_config._attn_implementation = attn_implementation
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    model.add_pal(PalConfig(rank=8, g="attention", num_heads=2))
    perturb(model.pal)
    model.eval()
    alone = model(task_name="sst", **batch(tokenizer, "bad")).logits
    padded = model(task_name="sst", **batch(tokenizer, "bad", "a very very long good great film")).logits
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-5)


def test_layers_to_transform_and_tasks_limit_the_pals(tiny_model, inputs):
    tiny_model.eval()
    expected = logits(tiny_model, inputs)
    tiny_model.add_pal(PalConfig(rank=8, tasks=["sst"], layers_to_transform=[1], shared_across_layers=False))
    perturb(tiny_model.pal)
    assert list(tiny_model.pal) == ["sst"] and list(tiny_model.pal["sst"].V_E) == ["1"]
    layers = tiny_model.encoder.encoder.layer
    assert not layers[0].output.LayerNorm._forward_pre_hooks and layers[1].output.LayerNorm._forward_pre_hooks
    actual = logits(tiny_model, inputs)
    assert_logits_differ(actual, expected, tasks=["sst"])
    assert_logits_equal({t: actual[t] for t in ("quora", "sts")}, {t: expected[t] for t in ("quora", "sts")})


def test_disable_enable_and_remove(tiny_model, inputs):
    tiny_model.eval()
    expected = logits(tiny_model, inputs)
    tiny_model.add_pal(PalConfig(rank=8))
    perturb(tiny_model.pal)
    with_pal = logits(tiny_model, inputs)
    with tiny_model.pal_disabled():
        assert_logits_equal(logits(tiny_model, inputs), expected)
    assert_logits_equal(logits(tiny_model, inputs), with_pal)
    tiny_model.disable_pal()
    assert_logits_equal(logits(tiny_model, inputs), expected)
    tiny_model.enable_pal()
    assert_logits_equal(logits(tiny_model, inputs), with_pal)
    with pytest.raises(ValueError, match="already has PALs"):
        tiny_model.add_pal(PalConfig(rank=8))
    tiny_model.remove_pal()
    assert tiny_model.pal is None and tiny_model.config.pal is None
    assert_logits_equal(logits(tiny_model, inputs), expected)
    with pytest.raises(ValueError, match="no PALs"):
        tiny_model.disable_pal()


def test_deepcopy_hooks_the_copy_to_its_own_pals(tiny_model, inputs):
    tiny_model.add_pal(PalConfig(rank=8))
    perturb(tiny_model.pal)
    tiny_model.eval()
    expected = logits(tiny_model, inputs)
    twin = copy.deepcopy(tiny_model)  # as an EMA teacher is made
    perturb(twin.pal, seed=2)
    assert_logits_equal(logits(tiny_model, inputs), expected)
    assert_logits_differ(logits(twin, inputs), expected)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, inputs, reentrant):
    """Two tasks' forwards, then one backward (the summed step): each layer's recomputation must use the PAL of
    its own forward, not the last task's."""
    tiny_model.add_pal(PalConfig(rank=8, g="attention", num_heads=2))
    perturb(tiny_model.pal)
    tiny_model.train()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            tiny_model.activation_checkpointing_enable({"use_reentrant": reentrant})
            assert tiny_model.encoder.encoder.layer[0].gradient_checkpointing
        tiny_model.zero_grad()
        torch.manual_seed(0)  # the same dropout
        sst = tiny_model(task_name="sst", labels=torch.tensor([4, 1]), **inputs).loss
        quora = tiny_model(task_name="quora", labels=torch.tensor([1, 0]), **inputs).loss
        (sst + quora).backward()
        grads.append({n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and {"pal.sst.V_E.weight", "pal.quora.V_D.weight"} <= grads[0].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


# ---- parameters, freezing, training ----


def test_num_parameters_per_task_counts_pal_and_head(tiny_model):
    tiny_model.add_pal(PalConfig(rank=8))
    tiny_model.freeze_encoder()
    d, r = tiny_model.config.hidden_size, 8
    pal = (d * r + r) + (r * d + d)  # V_E, V_D with biases, shared by the 2 layers
    counts = tiny_model.num_parameters_per_task()
    assert counts == {"sst": pal + d * 5 + 5, "quora": pal + d * 2 + 2, "sts": pal + d + 1}
    assert sum(p.numel() for p in tiny_model.parameters() if p.requires_grad) == sum(counts.values())


def test_frozen_encoder_training_changes_only_pals_and_heads(tiny_model, tokenized, tokenizer, tmp_path):
    tiny_model.add_pal(PalConfig(rank=8, g="attention", num_heads=2))
    tiny_model.freeze_encoder()
    before = snapshot(tiny_model)
    args = MultitaskTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6,
                                      learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                                      task_sampling="round_robin")
    MultitaskTrainer(model=tiny_model, args=args, train_dataset=tokenized["train"], processing_class=tokenizer).train()
    changed = {n for n, p in tiny_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("pal.", "heads.")) for n in changed)
    assert {f"pal.{t}.V_D.weight" for t in TASKS} <= changed  # V_D leaves zero: the PALs learn
    assert {f"pal.{t}.V_E.weight" for t in TASKS} <= changed


# ---- saving and loading ----


def test_save_load_with_pals_gives_identical_logits(tiny_model, inputs, tmp_path):
    tiny_model.add_pal(PalConfig(rank=8, g="attention", num_heads=2, placement="attention"))
    perturb(tiny_model.pal)
    tiny_model.eval()
    expected = logits(tiny_model, inputs)
    tiny_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["pal"]["tasks"] == list(TASKS)
    for loaded in (MultitaskModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert loaded.config.pal == tiny_model.config.pal
        assert_logits_equal(logits(loaded.eval(), inputs), expected)


def test_adapter_alone_saves_and_loads_onto_the_base_model(tiny_model, inputs, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    tiny_model.add_pal(PalConfig(rank=8, g="attention", num_heads=2, tasks=["sst", "sts"]))
    perturb(tiny_model.pal)
    perturb(tiny_model.heads, seed=3)
    tiny_model.eval()
    expected = logits(tiny_model, inputs)
    tiny_model.save_pal_adapter(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all(k.startswith(("pal.sst.", "pal.sts.", "heads.sst.", "heads.sts.")) for k in saved)
    base = MultitaskModel.from_pretrained(tmp_path / "base").eval()
    base.load_pal_adapter(tmp_path / "adapter")
    assert base.config.pal == tiny_model.config.pal
    actual = logits(base, inputs)
    assert_logits_equal({t: actual[t] for t in ("sst", "sts")}, {t: expected[t] for t in ("sst", "sts")})


def test_adapter_refuses_a_different_base(tiny_model, bert_config, tmp_path):
    tiny_model.add_pal(PalConfig(rank=8))
    tiny_model.save_pal_adapter(tmp_path)
    bert_config.hidden_size, bert_config.num_attention_heads = 48, 4
    other = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    with pytest.raises(ValueError, match="hidden_size=32, the model has 48"):
        other.load_pal_adapter(tmp_path)
    with pytest.raises(ValueError, match="not a saved PAL adapter"):
        other.load_pal_adapter(tmp_path / "missing")


def test_loading_a_pal_adapter_as_a_model_says_how_it_loads(tiny_model, tmp_path):
    tiny_model.add_pal(PalConfig(rank=4))
    tiny_model.save_pal_adapter(tmp_path)
    with pytest.raises(OSError, match=r"holds a PAL adapter, not a model: load its base model, then "
                                      r"model\.load_pal_adapter"):  # (AutoModel: transformers' own KeyError first)
        MultitaskModel.from_pretrained(tmp_path)


def test_an_adapter_that_does_not_fit_leaves_the_model_unchanged(tiny_model, bert_config, inputs, tmp_path):
    """A PAL rank the heads do not care about, but a head of another shape: refused before the model's own PALs
    are removed."""
    tiny_model.add_pal(PalConfig(rank=8))
    perturb(tiny_model.pal)
    tiny_model.eval()
    expected, config = logits(tiny_model, inputs), dict(tiny_model.config.pal)
    other = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=[
        TaskSpec(name="sst", kind="classification", text_columns=("sentence",), label_column="label",
                 label_names=["neg", "pos"])]))
    other.add_pal(PalConfig(rank=4))
    other.save_pal_adapter(tmp_path)
    with pytest.raises(ValueError, match=r"does not fit the model: .*shape mismatch \['heads\.sst\..*the model is "
                                         r"unchanged"):
        tiny_model.load_pal_adapter(tmp_path)
    assert tiny_model.config.pal == config and tiny_model.pal.pal_config.rank == 8
    assert_logits_equal(logits(tiny_model, inputs), expected)


# ---- encoder families ----


def tiny_distilbert(vocab_size):
    return DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                            max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)


@pytest.mark.parametrize("placement, norm", [("layer", "output_layer_norm"), ("attention", "sa_layer_norm")])
def test_distilbert_pals(tokenizer, inputs, placement, norm):
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=tiny_distilbert(len(tokenizer)), tasks=cs224n_tasks())).eval()
    inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    expected = logits(model, inputs)
    model.add_pal(PalConfig(rank=8, g="attention", num_heads=2, placement=placement))
    assert all(getattr(layer, norm)._forward_pre_hooks for layer in model.encoder.transformer.layer)
    assert_logits_equal(logits(model, inputs), expected)
    perturb(model.pal)
    assert_logits_differ(logits(model, inputs), expected)


@pytest.fixture
def roberta_tokenizer():
    letters = "abcdefghijklmnopqrstuvwxyz?"
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "Ġ", *letters, *(f"Ġ{c}" for c in letters)]
    return RobertaTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, merges=[("Ġ", c) for c in letters])


def test_roberta_pals_on_tokenized_pairs(roberta_tokenizer, data_dir):
    tok = roberta_tokenizer
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=160, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=config, tasks=cs224n_tasks())).eval()
    quora = cs224n_tasks()[1]
    dataset = tokenize_task(load_task_data(quora, data_dir)["dev"], quora, tok)
    pair = MultitaskCollator(tok)([dict(row) | {"task_name": "quora"} for row in dataset.select(range(2))])
    tokens = [t for t in tok.convert_ids_to_tokens(pair["input_ids"][0]) if t != "<pad>"]
    sep = tokens.index("</s>")
    assert tokens[0] == "<s>" and tokens[sep + 1] == "</s>" and tokens[-1] == "</s>" and tokens.count("</s>") == 3
    assert "token_type_ids" not in pair  # RoBERTa: one token type, the model runs without them
    features = {k: v for k, v in pair.items() if k not in ("task_name", "labels")}
    expected = model(task_name="quora", **features).logits
    model.add_pal(PalConfig(rank=8))
    torch.testing.assert_close(model(task_name="quora", **features).logits, expected, rtol=0, atol=1e-6)
    perturb(model.pal)
    assert not torch.allclose(model(task_name="quora", **features).logits, expected, atol=1e-4)


# ---- CLI ----


def test_cli_build_model_adds_pals(bert_config, tmp_path):
    BertModel(bert_config, add_pooling_layer=False).save_pretrained(tmp_path)
    args = ModelArguments(model_name_or_path=str(tmp_path), pal_rank=8, pal_g="attention", pal_placement="attention",
                          freeze_encoder=True)
    with pytest.raises(ValueError, match="PalConfig.num_heads"):
        build_model(args, cs224n_tasks())  # default 6 heads do not divide 8
    args.pal_rank = 12
    model = build_model(args, cs224n_tasks())
    assert model.config.pal["rank"] == 12 and model.config.pal["placement"] == "attention"
    assert all(n.startswith(("pal.", "heads.")) for n, p in model.named_parameters() if p.requires_grad)
