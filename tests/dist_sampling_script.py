"""Run under `torchrun --nproc_per_node 2`: records which examples each rank's train dataloader yields."""

import json
import sys
from pathlib import Path

from transformers import BertConfig, BertTokenizerFast

from hf_multitask import (
    MultitaskConfig,
    MultitaskDataset,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    cs224n_tasks,
    load_task_data,
    tokenize_task,
)


class RecordingDataset(MultitaskDataset):
    seen: list[list[int]] = []

    def __getitems__(self, indices):
        self.seen.append(list(indices))
        return super().__getitems__(indices)


def main(data_dir: str, tokenizer_dir: str, out_dir: str) -> None:
    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir)
    tasks = cs224n_tasks()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=37)
    model = MultitaskModel(MultitaskConfig(encoder=config, tasks=tasks))
    splits = {t.name: load_task_data(t, data_dir, splits=("train",))["train"] for t in tasks}
    train = RecordingDataset({t.name: tokenize_task(splits[t.name], t, tokenizer) for t in tasks})
    args = MultitaskTrainingArguments(output_dir=out_dir, per_device_train_batch_size=2, report_to=[],
                                      task_sampling="annealed", use_cpu=True, seed=1)
    trainer = MultitaskTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    loader = trainer.get_train_dataloader()
    tasks_seen = [batch["task_name"] for batch in loader]
    rank = trainer.args.process_index
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"tasks": tasks_seen, "indices": train.seen,
                                                            "world": trainer.args.world_size}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
    from dist_exit import finish

    finish()
