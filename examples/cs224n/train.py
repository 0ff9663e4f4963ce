"""The CS224N main job as a short training script written with hf-multitask's own loaders (`load_task_data`,
`tokenize_task`) and `MultitaskTrainer`; the lines marked `# hf-multitask` are hf-multitask's parts.

For the drop-in proof, starting from the script an HF user already has (a `label` column,
`DataCollatorWithPadding`, `compute_metrics`, `trainer.predict`), see examples/dropin/: run_single_task.py and
run_multitask.py differ only in their lines marked `# multitask` (tests/test_dropin.py checks the diff).

    python examples/cs224n/train.py --data_dir ../shared/data --output_dir runs/dropin --max_steps 200
"""

import argparse

from transformers import AutoTokenizer

import hf_multitask  # noqa: F401  (registers the model with AutoModel)
from hf_multitask import (  # hf-multitask
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    cs224n_tasks,
    load_task_data,
    resolve_encoder_path,
    tokenize_task,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name_or_path", default="minilm")
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--output_dir", default="runs/dropin")
    parser.add_argument("--max_steps", type=int, default=200)
    args = parser.parse_args()

    path = resolve_encoder_path(args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tasks = cs224n_tasks()  # hf-multitask: three TaskSpecs instead of num_labels
    model = MultitaskModel.from_encoder(path, tasks=tasks)  # hf-multitask: instead of AutoModelFor...

    data = {t.name: load_task_data(t, args.data_dir) for t in tasks}  # {task: DatasetDict(train, dev)}
    train = {t.name: tokenize_task(data[t.name]["train"], t, tokenizer) for t in tasks}
    dev = {t.name: tokenize_task(data[t.name]["dev"], t, tokenizer) for t in tasks}

    training_args = MultitaskTrainingArguments(  # hf-multitask: TrainingArguments + task_sampling
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=32,
        learning_rate=1e-4, warmup_steps=0.06, logging_steps=50, report_to=[],
        task_sampling="annealed", task_sampling_group_by_length=True,
    )
    trainer = MultitaskTrainer(  # hf-multitask: dicts of datasets; the collator comes by default
        model=model, args=training_args, train_dataset=train, eval_dataset=dev, processing_class=tokenizer,
    )
    trainer.train()
    print(trainer.evaluate())  # eval_sst_accuracy, eval_quora_accuracy, eval_sts_pearson, eval_overall
    trainer.save_model()


if __name__ == "__main__":
    main()
