"""Fault handling in-process: non-finite losses, incomplete or damaged checkpoints, no pickle in our code."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from hf_multitask import MultitaskConfig, MultitaskModel, MultitaskTrainer, cs224n_tasks
from hf_multitask.checkpointing import (
    MANIFEST_NAME,
    CheckpointError,
    last_complete_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from hf_multitask.trainer import NonFiniteLossError

from .conftest import make_trainer


class NanTrainer(MultitaskTrainer):
    """Makes the loss of every batch NaN during the optimizer steps in `nan_steps` (1-based)."""

    nan_steps: set[int] = set()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss * float("nan") if self.state.global_step + 1 in self.nan_steps else loss


class Snapshots(TrainerCallback):
    """Parameters and AdamW's first moments after every optimizer step."""

    def __init__(self):
        self.params, self.moments, self.lrs = {}, {}, {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.params[state.global_step] = [p.detach().clone() for p in model.parameters()]
        self.moments[state.global_step] = [s["exp_avg"].clone() for s in optimizer.state.values() if "exp_avg" in s]
        self.lrs[state.global_step] = lr_scheduler.get_last_lr()[0]


def make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps, **overrides):
    """A `NanTrainer` on a fresh model (seed 0) with a `Snapshots` callback: `(trainer, snapshots)`."""
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=bert_config, tasks=cs224n_tasks()))
    settings = dict(eval=None, max_steps=4, learning_rate=1e-2, logging_steps=1)  # beside make_trainer's defaults
    trainer = make_trainer(model, tokenized, tokenizer, out, trainer_class=NanTrainer, **{**settings, **overrides})
    trainer.nan_steps = set(nan_steps)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    return trainer, snapshots


@pytest.mark.parametrize("surgery", ["none-ungrouped", "gradvac"])
def test_a_nan_loss_skips_the_whole_optimizer_update(surgery, bert_config, tokenized, tokenizer, tmp_path):
    overrides = {} if surgery == "none-ungrouped" else {"gradient_surgery": surgery}
    trainer, snap = make_nan_trainer(bert_config, tokenized, tokenizer, tmp_path, nan_steps={2}, **overrides)
    targets = []
    if trainer.surgery is not None:
        trainer.add_callback(type("T", (TrainerCallback,), {"on_step_end": lambda *a, **k: targets.append(
            trainer.surgery.state_dict()["targets"].clone())})())
    trainer.train()
    for before, after in zip(snap.params[1], snap.params[2]):
        assert torch.equal(before, after)  # weights untouched by the skipped step
    for before, after in zip(snap.moments[1], snap.moments[2]):
        assert torch.equal(before, after)  # no AdamW update of the moments either
    assert any(not torch.equal(a, b) for a, b in zip(snap.params[2], snap.params[3]))  # training goes on
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert snap.lrs[2] != snap.lrs[1]  # the step counter and the schedule advance (docs/reliability.md)
    assert [log.get("nonfinite_skipped_steps") for log in trainer.state.log_history if "loss" in log][:3] == [
        None, 1, None]
    assert trainer._nonfinite.skipped == 1
    if targets:
        assert torch.equal(targets[0], targets[1])  # GradVac's targets not fed with NaN cosines
        assert torch.isfinite(targets[-1]).all()


def test_too_many_nan_steps_in_a_row_stop_with_the_task_and_step(bert_config, tokenized, tokenizer, tmp_path,
                                                                   caplog):
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, tmp_path, nan_steps={2, 3, 4, 5, 6}, max_steps=8,
                                  nonfinite_loss_limit=2, save_strategy="steps", save_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"Step 4: non-finite loss in task\(s\) \['(sst|quora|sts)'\] for 3 "
                                                 r"optimizer steps in a row \(nonfinite_loss_limit=2\)"):
        trainer.train()
    last = last_complete_checkpoint(str(tmp_path))
    assert Path(last).name == "checkpoint-3"  # the checkpoints before the error are complete and finite
    weights = MultitaskModel.from_pretrained(last).state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_a_good_step_resets_the_count_in_a_row(bert_config, tokenized, tokenizer, tmp_path):
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, tmp_path, nan_steps={1, 3},
                                  nonfinite_loss_limit=0, max_steps=1)
    with pytest.raises(NonFiniteLossError, match="Step 1"):
        trainer.train()  # limit 0: the first NaN step stops
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, tmp_path, nan_steps={1, 3},
                                  nonfinite_loss_limit=1)
    trainer.train()
    assert trainer._nonfinite.skipped == 2 and trainer._nonfinite.in_a_row == 0


@pytest.fixture
def checkpoints(bert_config, tokenized, tokenizer, tmp_path):
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, tmp_path, nan_steps=(), save_strategy="steps",
                                  save_steps=2)
    trainer.train()
    return tmp_path, trainer


def test_every_checkpoint_has_a_manifest_of_its_files(checkpoints):
    out, _ = checkpoints
    manifest = verify_checkpoint(str(out / "checkpoint-4"))
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json",
            "multitask_state.safetensors"} <= set(manifest["files"])
    assert "nonfinite" in manifest["components"]


def test_resume_skips_a_checkpoint_cut_short_while_saving(checkpoints, bert_config, tokenized, tokenizer, caplog):
    out, _ = checkpoints
    (out / "checkpoint-4" / MANIFEST_NAME).unlink()  # what a kill between the Trainer's files and ours leaves
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")
    trainer, snap = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=(), save_strategy="no")
    trainer.train(resume_from_checkpoint=True)
    assert sorted(snap.params) == [3, 4]  # resumed after step 2
    with pytest.raises(CheckpointError, match=r"checkpoint-4 is incomplete: it has no multitask_state.json"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))


def test_resuming_a_complete_run_trains_nothing_and_loads_its_last_checkpoint(checkpoints, bert_config, tokenized,
                                                                             tokenizer, caplog):
    out, first = checkpoints  # max_steps 4, checkpoints at 2 and 4; the Trainer alone trains step 5 (mid-epoch)
    trained = [p.detach().clone() for p in first.model.parameters()]
    trainer, snap = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=(), save_strategy="steps",
                                     save_steps=2)
    with caplog.at_level("WARNING"):
        result = trainer.train(resume_from_checkpoint=True)
    assert snap.params == {} and result.global_step == trainer.state.global_step == 4
    assert not (out / "checkpoint-5").exists() and "the run is complete, nothing to train" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(trained, trainer.model.parameters()))
    assert math.isnan(result.training_loss)  # no step ran


def test_resuming_a_complete_run_with_load_best_model_at_end_loads_the_best(checkpoints, bert_config, tokenized,
                                                                           tokenizer):
    """It loaded the last checkpoint's weights, not the best one's that the run ended with."""
    from safetensors.torch import load_file

    out, _ = checkpoints
    state_file = out / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state.update(best_model_checkpoint=str(out / "checkpoint-2"), best_global_step=2, best_metric=0.5)
    state_file.write_text(json.dumps(state))  # as if the evaluation at step 2 had been the best
    manifest = out / "checkpoint-4" / "multitask_state.json"
    record = json.loads(manifest.read_text())
    record["files"].pop("trainer_state.json", None)  # the manifest's size and hash of the file edited above
    manifest.write_text(json.dumps(record))
    trainer, snap = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=(), save_strategy="steps",
                                     save_steps=2, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                                     eval=tokenized["dev"])
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    best = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    params = dict(trainer.model.named_parameters())
    assert snap.params == {} and all(torch.equal(params[name], best[name]) for name in best if name in params)
    assert any(not torch.equal(params[name], load_file(str(out / "checkpoint-4" / "model.safetensors"))[name])
               for name in best if name in params)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_a_truncated_checkpoint_file_is_named(name, checkpoints, bert_config, tokenized, tokenizer):
    out, _ = checkpoints
    path = out / "checkpoint-4" / name
    path.write_bytes(path.read_bytes()[:100])
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=())
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + " has 100 bytes"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")


@pytest.mark.parametrize("where", ["header", "tensor data"])
def test_a_damaged_file_of_the_right_size_is_named(where, checkpoints, bert_config, tokenized, tokenizer):
    out, _ = checkpoints
    path = out / "checkpoint-4" / "model.safetensors"
    data = bytearray(path.read_bytes())
    if where == "header":
        data[8:40] = b"\xff" * 32  # garble the safetensors header, same length
    else:
        data[-5] ^= 0x01  # one flipped bit in the last tensor: safetensors loads it without complaint
    path.write_bytes(bytes(data))
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=())
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + " has the recorded size but not the recorded "
                                              "SHA-256"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")


def test_weights_damaged_before_the_manifest_was_written_are_named(checkpoints, bert_config, tokenized, tokenizer):
    out, _ = checkpoints
    folder = out / "checkpoint-4"
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    write_manifest(str(folder), {key: value for key, value in manifest.items() if key != "files"})
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=())
    with pytest.raises(CheckpointError, match="checkpoint-4: cannot load the model weights"):
        trainer.train(resume_from_checkpoint=str(folder))


def test_a_manifest_of_sizes_only_is_still_checked(checkpoints):
    """Manifests written before the digests were added record `{file: size}`: still verified by size."""
    out, _ = checkpoints
    folder = out / "checkpoint-4"
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"] = {name: entry["size"] for name, entry in manifest["files"].items()}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert verify_checkpoint(str(folder))["files"] == manifest["files"]
    (folder / "optimizer.pt").write_bytes(b"0" * 10)
    with pytest.raises(CheckpointError, match="optimizer.pt has 10 bytes"):
        verify_checkpoint(str(folder))


@pytest.mark.parametrize("cut", [100, -100])  # the header cut off; the last tensor's bytes cut off
@pytest.mark.parametrize("load", ["MultitaskModel", "AutoModel", "from_encoder"])
def test_a_cut_off_weights_file_is_named_when_loading(cut, load, tiny_model, bert_config, tmp_path):
    from transformers import AutoModel, BertModel

    import hf_multitask  # noqa: F401 (registers the Auto classes)

    folder = tmp_path / "model"
    if load == "from_encoder":
        BertModel(bert_config).save_pretrained(folder)
    else:
        tiny_model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:cut])
    loaders = {"MultitaskModel": MultitaskModel.from_pretrained,
               "AutoModel": lambda path: AutoModel.from_pretrained(path, trust_remote_code=True),
               "from_encoder": lambda path: MultitaskModel.from_encoder(path, cs224n_tasks())}
    with pytest.raises(OSError, match=re.escape(str(weights)) + ": cannot read the weights .*save or download it"):
        loaders[load](str(folder))


def test_resume_without_any_complete_checkpoint_says_so(bert_config, tokenized, tokenizer, tmp_path):
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, tmp_path, nan_steps=())
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(CheckpointError, match="No complete checkpoint to resume from"):
        trainer.train(resume_from_checkpoint=True)


def test_the_package_never_unpickles():
    """Our own state is safetensors or JSON; any torch.load passes weights_only=True; YAML uses safe_load."""
    root = Path(__file__).parents[1] / "hf_multitask"
    for path in root.rglob("*.py"):
        source = path.read_text()
        assert "import pickle" not in source and "yaml.load(" not in source, path
        for call in re.findall(r"torch\.load\([^)]*\)", source):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_the_api_page_documents_every_public_name():
    page = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    import hf_multitask

    missing = [name for name in hf_multitask.__all__ if f"::: hf_multitask.{name}\n" not in page + "\n"]
    assert not missing, f"docs/api.md lacks {missing}"


@pytest.mark.parametrize(("change", "named"), [
    ({"per_device_train_batch_size": 2}, r"global_batch_size 4 \(this run: 2\)"),
    ({"gradient_accumulation_steps": 2}, r"gradient_accumulation_steps 1 \(this run: 2\)"),
    ({"data_seed": 7}, r"seed 0 \(this run: 7\)"),
    ({"task_sampling": "round_robin"}, r"strategy 'annealed' \(this run: 'round_robin'\)"),
])
def test_resuming_with_another_batch_plan_is_refused(change, named, checkpoints, bert_config, tokenized, tokenizer):
    """The Trainer skips `global_step` steps' worth of batches of the new plan: with another global batch (the
    per-device batch alone is all transformers compares), accumulation, seed or sampling, some examples would be
    trained twice and others never, silently."""
    out, _ = checkpoints
    assert verify_checkpoint(str(out / "checkpoint-2"))["scalars"]["sampler_plan"]["global_batch_size"] == 4
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=(), save_strategy="no", **change)
    with pytest.raises(ValueError, match=rf"The checkpoint being resumed was trained with .*{named}.*same global "
                                         "batch"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))


def test_resuming_annealed_sampling_with_another_budget_is_refused(checkpoints, bert_config, tokenized, tokenizer):
    """A larger budget only warned: the annealed schedule then drew another task sequence for the steps already
    trained, and the resumed run retrained some rows and skipped others."""
    out, _ = checkpoints
    trainer, snap = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=(), save_strategy="no",
                                     max_steps=6)
    assert trainer.args.task_sampling == "annealed"
    with pytest.raises(ValueError, match=r"total_batches 4 \(this run: 6\) \(annealed sampling draws every step's "):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert snap.params == {}


def test_round_robin_resumes_with_a_larger_budget(bert_config, tokenized, tokenizer, tmp_path):
    first, _ = make_nan_trainer(bert_config, tokenized, tokenizer, tmp_path, nan_steps=(), save_strategy="steps",
                                save_steps=2, task_sampling="round_robin")
    first.train()
    trainer, snap = make_nan_trainer(bert_config, tokenized, tokenizer, tmp_path, nan_steps=(), save_strategy="no",
                                     max_steps=6, task_sampling="round_robin")
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert sorted(snap.params) == [5, 6]


def test_deepspeed_resume_loads_our_state_and_checks_the_plan(checkpoints, bert_config, tokenized, tokenizer,
                                                            monkeypatch):
    """Under DeepSpeed, Trainer.train loads the weights with deepspeed_load_checkpoint and never calls
    `_load_from_checkpoint`, where our state loaded: the non-finite counters started afresh and a resume with
    another batch plan went unchecked. What the Trainer calls there is `_load_optimizer_and_scheduler`."""
    import transformers

    out, _ = checkpoints
    monkeypatch.setattr(transformers.Trainer, "_load_optimizer_and_scheduler", lambda self, checkpoint: None)
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=(), save_strategy="no")
    trainer.is_deepspeed_enabled = True
    trainer._nonfinite.skipped = 5
    trainer._load_optimizer_and_scheduler(str(out / "checkpoint-4"))
    assert trainer._nonfinite.skipped == 0  # the checkpoint's count
    other, _ = make_nan_trainer(bert_config, tokenized, tokenizer, out, nan_steps=(), save_strategy="no",
                                data_seed=7)
    other.is_deepspeed_enabled = True
    other.get_train_dataloader()  # the sampler, built before the Trainer loads the checkpoint
    with pytest.raises(ValueError, match=r"seed 0 \(this run: 7\)"):
        other._load_optimizer_and_scheduler(str(out / "checkpoint-4"))


def test_a_second_train_call_checks_the_resumed_plan_against_its_own_sampler(checkpoints, bert_config, tokenized,
                                                                            tokenizer):
    """The plan loaded with the checkpoint was checked against the sampler left by the first `train()` (the same
    plan) and then dropped, so the second call's sampler, built with other settings, went unchecked."""
    out, _ = checkpoints
    trainer, _ = make_nan_trainer(bert_config, tokenized, tokenizer, out / "again", nan_steps=(), max_steps=2)
    trainer.train()
    trainer.args.data_seed, trainer.args.max_steps = 7, 6
    with pytest.raises(ValueError, match=r"seed 0 \(this run: 7\)"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
