"""Train a tiny model for a few steps and save its weights; run alone or under `torchrun --nproc_per_node 2`.

Usage: dist_train_script.py DATA_DIR TOKENIZER_DIR OUT_DIR PER_DEVICE_BATCH MODE [MODE ...]
Each MODE (`plain`, `smart`, a loss weighting `uncertainty` or `dwa`, or a registered aggregator: `none`, `pcgrad`,
`gradvac`, `upgrad`, ...) trains from the same initial weights with dropout off and writes OUT_DIR/<mode>.safetensors
on rank 0. `plain` is ungrouped single-task batches, `smart` the same with SMART on every task; the others are
grouped batches with that aggregator or loss weighting (DWA's window: one optimizer step, so its weights move).
After `plain`, rank 0 also writes OUT_DIR/plain_eval.json: the dev sets' metrics at an eval batch of 5 per process
(12/8/8 rows: under two processes a rank's last batch is filled with repeated rows).
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertTokenizerFast

from hf_multitask import (
    MultitaskConfig,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    cs224n_tasks,
    load_task_data,
    tokenize_task,
)


def main(data_dir: str, tokenizer_dir: str, out_dir: str, batch_size: str, *modes: str) -> None:
    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir)
    tasks = cs224n_tasks()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = {t.name: load_task_data(t, data_dir) for t in tasks}
    train = {t.name: tokenize_task(data[t.name]["train"], t, tokenizer) for t in tasks}
    dev = {t.name: tokenize_task(data[t.name]["dev"], t, tokenizer) for t in tasks}
    for mode in modes:
        torch.manual_seed(0)
        model = MultitaskModel(MultitaskConfig(encoder=config, tasks=tasks, classifier_dropout=0.0))
        surgery = {"plain": {}, "smart": {"smart_tasks": [t.name for t in tasks]},
                   "uncertainty": {"loss_weighting": "uncertainty"}, "dwa": {"loss_weighting": "dwa", "dwa_period": 1}
                   }.get(mode, {"gradient_surgery": mode, "task_sampling_grouped": True})
        args = MultitaskTrainingArguments(
            output_dir=f"{out_dir}/{mode}", per_device_train_batch_size=int(batch_size),
            max_steps=int(os.environ.get("STEPS", 4)),
            learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0, max_grad_norm=1.0,
            ddp_find_unused_parameters=True, logging_steps=2, per_device_eval_batch_size=5, **surgery,
        )
        trainer = MultitaskTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
        trainer.train()
        metrics = trainer.evaluate(dev) if mode == "plain" else None
        if metrics is not None and trainer.is_world_process_zero():
            with open(f"{out_dir}/plain_eval.json", "w") as f:
                json.dump(metrics, f)
        if trainer.is_world_process_zero():
            weights = trainer.accelerator.unwrap_model(model).state_dict()
            state = {k: v.detach().contiguous() for k, v in weights.items()}
            save_file(state, f"{out_dir}/{mode}.safetensors")


if __name__ == "__main__":
    main(*sys.argv[1:])
    from dist_exit import finish

    finish()
