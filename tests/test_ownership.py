"""Parameter ownership: the model says which parameters are shared and which belong to one task, and surgery, the
head learning rate, freezing, adapter saving and per-task counts all ask it, whatever wraps the model."""

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from hf_multitask import MultitaskConfig, MultitaskModel, PalConfig, cs224n_tasks
from hf_multitask.pal.model import adapter_state_dict

from .conftest import make_trainer

TASKS = ("sst", "quora", "sts")


class ScaledModel(MultitaskModel):
    """A model with one more per-task module (a learned loss scale per task), registered in one place."""

    task_module_attributes = (*MultitaskModel.task_module_attributes, "scales")

    def __init__(self, config, encoder=None):
        super().__init__(config, encoder)
        self.scales = nn.ModuleDict({name: nn.Linear(1, 1, bias=False) for name in config.task_names})


def shared_names(model, root=None):
    return [name for name, _ in model.named_shared_parameters(root=root)]


def test_shared_parameters_are_the_encoders(bert_config):
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    model.add_pal(PalConfig(rank=4))
    assert shared_names(model) == [f"encoder.{name}" for name, _ in model.encoder.named_parameters()]
    owners = model.task_parameter_owners()
    for name, param in model.named_parameters():
        if not name.startswith("encoder."):
            task, attribute = owners[id(param)]
            assert name.startswith(f"{attribute}.{task}."), name


def test_a_registered_per_task_module_is_owned_everywhere(bert_config, tokenized, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = ScaledModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    scale_ids = {id(p) for p in model.scales.parameters()}
    assert not scale_ids & {id(p) for _, p in model.named_shared_parameters()}
    counts = model.num_parameters_per_task()
    assert counts["sts"] == sum(p.numel() for p in model.heads["sts"].parameters()) + 1
    model.freeze_encoder()
    assert all(p.requires_grad for p in model.scales.parameters())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.freeze_encoder(False)
    model.train_only("quora")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "heads.quora.out_proj.weight", "heads.quora.out_proj.bias", "scales.quora.weight"]
    model.requires_grad_(True)
    trainer = make_trainer(model, tokenized, tokenizer, tmp_path / "out", task_sampling_grouped=True,
                           gradient_surgery="pcgrad", head_learning_rate=1e-2)
    assert not scale_ids & {id(p) for p in trainer.surgery.params}  # projected: the shared parameters only
    assert len(trainer.surgery.params) == len(list(model.encoder.parameters()))
    groups = trainer.create_optimizer().param_groups
    head_groups = [g for g in groups if g.get("lr") == 1e-2]
    head_ids = {id(p) for g in head_groups for p in g["params"]}
    assert head_ids == {id(p) for p in model.heads.parameters()}  # the scales are not heads: the encoder's rate


def test_ownership_answers_through_a_peft_wrapper(bert_config):
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"],
                                               modules_to_save=[f"heads.{t}" for t in TASKS]))
    names = shared_names(model, root=wrapped)
    assert names and all(name.startswith("base_model.model.encoder.") for name in names)
    assert any("lora_A" in name for name in names)  # LoRA on the encoder is shared by all tasks
    assert not any(".heads." in name for name in names)  # heads and their trainable copies belong to tasks


def test_adapter_saving_asks_the_model(bert_config):
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    model.add_pal(PalConfig(rank=4, tasks=["sst", "sts"]))
    keys = set(adapter_state_dict(model))
    assert {k.split(".")[0] for k in keys} == {"pal", "heads"}
    assert {k.split(".")[1] for k in keys if k.startswith("heads.")} == {"sst", "sts"}
    assert not any(k.startswith("heads.") for k in adapter_state_dict(model, include_heads=False))
