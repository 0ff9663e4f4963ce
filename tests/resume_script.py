"""Train a tiny model in one of several modes; optionally SIGKILL itself right after a checkpoint, or resume.

Usage: resume_script.py DATA_DIR TOKENIZER_DIR OUT_DIR ACTION MODE [MODE ...]
    ACTION: `full` (train uninterrupted), `kill` (SIGKILL this process right after the checkpoint of step
            $KILL_AT is saved; one MODE), `kill_saving` (SIGKILL it while that checkpoint is being written: after
            the Trainer's files, before ours; keeps one checkpoint), `resume` (continue from the last complete
            checkpoint).
    MODE:   `plain` (annealed sampling), `smart`, `pal`, `rdrop`, a gradient aggregator (`pcgrad`, `gradvac`,
            `upgrad`, ...), or a loss weighting (`uncertainty`, `dwa`: DWA's window is one optimizer step, so its
            state matters at the kill).
Each MODE trains in OUT_DIR/<mode> (dropout on, so the RNG state matters too) and, on rank 0, writes its final
weights to OUT_DIR/<mode>.safetensors. Runs alone or under `torchrun`; $BATCH is the per-process batch size.
"""

import os
import signal
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertTokenizerFast, TrainerCallback

import hf_multitask.trainer_checkpoints
from hf_multitask import (
    MultitaskConfig,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    PalConfig,
    cs224n_tasks,
    load_task_data,
    tokenize_task,
)
from hf_multitask.aggregators import aggregator_names

MODES = {
    "plain": {},
    "pcgrad": {"task_sampling_grouped": True, "gradient_surgery": "pcgrad"},
    "gradvac": {"task_sampling_grouped": True, "gradient_surgery": "gradvac"},
    "smart": {"smart_tasks": ["sst", "sts"]},
    "pal": {},
    "rdrop": {"regularizers": {"rdrop": {"tasks": ["sst", "quora", "sts"]}}},
    "uncertainty": {"task_sampling_grouped": True, "loss_weighting": "uncertainty"},
    "dwa": {"task_sampling_grouped": True, "loss_weighting": "dwa", "dwa_period": 1},
}
MODES.update({name: {"task_sampling_grouped": True, "gradient_surgery": name}  # every other registered aggregator
              for name in aggregator_names() if name not in MODES and name != "none"})


class KillAfterSave(TrainerCallback):
    """SIGKILL the process (no cleanup, no atexit) right after the checkpoint of step `step` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step and os.environ.get("KILL_RANK", os.environ.get("RANK", "0")) == \
                os.environ.get("RANK", "0"):  # $KILL_RANK: kill that rank only (one node of two)
            os.kill(os.getpid(), signal.SIGKILL)


def kill_while_saving(step: int, trainer: MultitaskTrainer) -> None:
    """SIGKILL the process when the checkpoint of `step` has the Trainer's files but not yet our state."""
    save = hf_multitask.trainer_checkpoints.save_training_state

    def save_or_die(folder, states):
        if trainer.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        save(folder, states)

    hf_multitask.trainer_checkpoints.save_training_state = save_or_die


def build_trainer(mode: str, data_dir: str, tokenizer, out_dir: str) -> MultitaskTrainer:
    tasks = cs224n_tasks()
    train = {t.name: tokenize_task(load_task_data(t, data_dir, splits=("train",))["train"], t, tokenizer)
             for t in tasks}
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)  # dropout 0.1: the RNG state matters
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskConfig(encoder=config, tasks=tasks))
    if mode == "pal":
        model.add_pal(PalConfig(rank=8))
    grouped = MODES[mode].get("task_sampling_grouped", False)
    args = MultitaskTrainingArguments(
        output_dir=f"{out_dir}/{mode}", per_device_train_batch_size=int(os.environ.get("BATCH", 4)),
        max_steps=int(os.environ.get("STEPS", 10 if not grouped else 5)), learning_rate=1e-2, warmup_steps=2,
        save_strategy="steps", save_steps=int(os.environ.get("SAVE_STEPS", 4 if not grouped else 2)),
        logging_steps=1, report_to=[], use_cpu=True, seed=0, ddp_find_unused_parameters=True,
        save_total_limit=int(os.environ["LIMIT"]) if "LIMIT" in os.environ else None,
        task_sampling="annealed", ddp_timeout=int(os.environ.get("DDP_TIMEOUT", 1800)), **MODES[mode],
    )
    return MultitaskTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)


def main(data_dir: str, tokenizer_dir: str, out_dir: str, action: str, *modes: str) -> None:
    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir)
    for mode in modes:
        trainer = build_trainer(mode, data_dir, tokenizer, out_dir)
        if action == "kill":
            trainer.add_callback(KillAfterSave(int(os.environ["KILL_AT"])))
        if action == "kill_saving":
            kill_while_saving(int(os.environ["KILL_AT"]), trainer)
        trainer.train(resume_from_checkpoint=True if action == "resume" else None)
        if trainer.is_world_process_zero():
            weights = trainer.accelerator.unwrap_model(trainer.model).state_dict()
            save_file({k: v.detach().contiguous() for k, v in weights.items()}, f"{out_dir}/{mode}.safetensors")


if __name__ == "__main__":
    main(*sys.argv[1:])
    from dist_exit import finish

    finish()
