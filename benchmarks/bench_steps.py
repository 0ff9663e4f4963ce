"""Training-step cost against its floor, on the bundled all-MiniLM-L6-v2: grouped steps and the ungrouped step.

1. Grouped steps over the same T task batches (one batch of each task): the summed-loss step (grouped `none`: T
   forwards, one backward of the sum; the floor), the same update through the per-task `[T, P]` buffer (what
   grouped `none` cost before), PCGrad, GradVac, and the two loss weightings (uncertainty, DWA).
2. The ungrouped multitask step (`MultitaskTrainer`, one SST batch) against the plain HF `Trainer` with
   `AutoModelForSequenceClassification` on the same encoder and the same batch.

Every step is a full optimizer step (forward, backward, surgery or weighting, clipping, AdamW) through the
trainer's `training_step`. The variants run interleaved in one process (one step of each in turn, repeated); each
is reported as its median step time, the ratio of its median to the baseline's median in the same run, and the
median of the per-repeat ratios (each step over the baseline's step of the same round, which cancels load that
drifts between rounds on a shared machine), each with a 95% bootstrap interval (scipy.stats.bootstrap, percentile
method, paired by repeat).

    HF_HUB_OFFLINE=1 python benchmarks/bench_steps.py --threads 2 --repeats 20 --output benchmarks/results/steps.json
    HF_HUB_OFFLINE=1 python benchmarks/bench_steps.py --smoke     # tiny random model: checks the script
    HF_HUB_OFFLINE=1 python benchmarks/bench_steps.py --profile   # time inside the [T, P] buffer's own work
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np
import torch
from scipy.stats import bootstrap
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from hf_multitask import (
    MultitaskCollator,
    MultitaskConfig,
    MultitaskDataset,
    MultitaskModel,
    MultitaskTrainer,
    MultitaskTrainingArguments,
    cs224n_tasks,
    load_task_data,
    resolve_encoder_path,
    tokenize_task,
)
from hf_multitask.gradients import GradientSurgery

DATA_DIR = "../shared/data"
# name: (MultitaskTrainingArguments overrides, baseline it is compared with)
GROUPED = {
    "summed": ({"task_sampling_grouped": True}, "summed"),
    "none_buffer": ({"task_sampling_grouped": True}, "summed"),
    "pcgrad": ({"gradient_surgery": "pcgrad"}, "summed"),
    "gradvac": ({"gradient_surgery": "gradvac"}, "summed"),
    "uncertainty": ({"loss_weighting": "uncertainty"}, "summed"),
    "dwa": ({"loss_weighting": "dwa"}, "summed"),
}
UNGROUPED = {"hf_trainer": "hf_trainer", "multitask": "hf_trainer"}


def tiny_config(tokenizer) -> BertConfig:
    return BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37)


def task_data(args, tasks, tokenizer) -> dict:
    return {t.name: tokenize_task(load_task_data(t, args.data_dir, splits=("dev",))["dev"].select(
        range(args.batch_size)), t, tokenizer) for t in tasks}


def multitask_trainer(args, tasks, tokenizer, data, **overrides) -> MultitaskTrainer:
    torch.manual_seed(0)
    if args.smoke:
        model = MultitaskModel(MultitaskConfig(encoder=tiny_config(tokenizer), tasks=tasks))
    else:
        model = MultitaskModel.from_encoder("minilm", tasks)
    training_args = MultitaskTrainingArguments(
        output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, per_device_train_batch_size=args.batch_size,
        learning_rate=1e-5, disable_tqdm=True, **overrides)
    return ready(MultitaskTrainer(model=model, args=training_args, train_dataset=data, processing_class=tokenizer))


def force_buffer(trainer: MultitaskTrainer) -> None:
    """Grouped `none` through the per-task `[T, P]` buffer (the step before the summed-loss step existed)."""
    model = trainer.multitask_model
    shared = model.named_shared_parameters()
    trainer.surgery = GradientSurgery("none", [p for _, p in shared], num_tasks=len(model.specs), seed=0,
                                      segment_ids=[model.parameter_group(n) for n, _ in shared])


def hf_trainer(args, spec, tokenizer, data) -> Trainer:
    torch.manual_seed(0)
    if args.smoke:
        config = tiny_config(tokenizer)
        config.num_labels = spec.num_labels
        model = BertForSequenceClassification(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_encoder_path("minilm"),
                                                                   num_labels=spec.num_labels)
    training_args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, learning_rate=1e-5,
                                      per_device_train_batch_size=args.batch_size, disable_tqdm=True)
    return ready(Trainer(model=model, args=training_args, train_dataset=data, processing_class=tokenizer))


def ready(trainer):
    """What `Trainer.train` sets before its first step and `training_step` reads."""
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def build(args) -> dict[str, tuple]:
    """`{variant: (trainer, batch)}`: the grouped variants share one grouped batch, the ungrouped ones an SST batch."""
    tasks = cs224n_tasks()
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path("minilm"))
    data = task_data(args, tasks, tokenizer)
    dataset = MultitaskDataset(data)
    grouped_batch = MultitaskCollator(tokenizer)(dataset.__getitems__(list(range(len(dataset)))))
    setups = {}
    for name, (overrides, _) in GROUPED.items():
        trainer = multitask_trainer(args, tasks, tokenizer, data, **overrides)
        if name == "none_buffer":
            force_buffer(trainer)
        setups[name] = (trainer, grouped_batch)
    sst = tasks[0]
    sst_data = {sst.name: data[sst.name]}
    sst_batch = MultitaskCollator(tokenizer)(MultitaskDataset(sst_data).__getitems__(list(range(args.batch_size))))
    plain_batch = {k: v for k, v in sst_batch.items() if k != "task_name"}
    setups["multitask"] = (multitask_trainer(args, [sst], tokenizer, sst_data), sst_batch)
    setups["hf_trainer"] = (hf_trainer(args, sst, tokenizer, data[sst.name]), plain_batch)
    return setups


def step(trainer, batch) -> float:
    """One full optimizer step; returns its wall time in seconds."""
    start = time.perf_counter()
    trainer.training_step(trainer.model, batch)
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
    trainer.optimizer.step()
    trainer.model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def profile_buffer(setups: dict, steps: int = 8) -> dict[str, dict[str, float]]:
    """Milliseconds per step inside the per-task buffer's `zero_`, `store` (the copies into the rows, run by hooks
    during each task's backward) and `combine` (PCGrad, GradVac)."""
    results = {}
    for name in ("pcgrad", "gradvac"):
        trainer, batch = setups[name]
        spent = dict.fromkeys(("zero_", "store", "combine"), 0.0)
        for method in spent:
            original = getattr(trainer.surgery, method)

            def timed(*args, _original=original, _method=method, _spent=spent):
                start = time.perf_counter()
                out = _original(*args)
                _spent[_method] += time.perf_counter() - start
                return out

            setattr(trainer.surgery, method, timed)
        step(trainer, batch)  # warm-up
        spent.update(dict.fromkeys(spent, 0.0))
        total = sum(step(trainer, batch) for _ in range(steps))
        results[name] = {"step_ms": 1000 * total / steps, **{k: 1000 * v / steps for k, v in spent.items()}}
        print(name, {k: round(v, 1) for k, v in results[name].items()})
    return results


def interval(samples: tuple, statistic) -> list[float]:
    """95% percentile-bootstrap interval of `statistic` over repeats (paired when several samples)."""
    if len(samples[0]) < 3:
        return [float("nan"), float("nan")]
    result = bootstrap(samples, statistic, paired=True, vectorized=False, n_resamples=2000, method="percentile",
                       random_state=0)
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def summarise(times: dict[str, list[float]], baselines: dict[str, str]) -> dict:
    rows = {}
    for name, baseline in baselines.items():
        mine, theirs = np.array(times[name]), np.array(times[baseline])
        rows[name] = {
            "baseline": baseline,
            "median_s": float(np.median(mine)), "median_ci95": interval((mine,), np.median),
            "ratio": float(np.median(mine) / np.median(theirs)),
            "ratio_ci95": interval((mine, theirs), lambda a, b: np.median(a) / np.median(b)),
            "paired_ratio": float(np.median(mine / theirs)),
            "paired_ratio_ci95": interval((mine / theirs,), np.median),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--data_dir", default=DATA_DIR)
    parser.add_argument("--smoke", action="store_true", help="Tiny random model, 3 repeats.")
    parser.add_argument("--output", help="Write the results (and every timing) as JSON here.")
    parser.add_argument("--profile", action="store_true", help="Only time the buffer's own work in PCGrad, GradVac.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.smoke else args.repeats
    setups = build(args)
    if args.profile:
        profile_buffer(setups)
        return
    for name in setups:  # warm-up
        step(*setups[name])
    times = {name: [] for name in setups}
    for _ in range(repeats):
        for name in setups:
            times[name].append(step(*setups[name]))
    baselines = {name: baseline for name, (_, baseline) in GROUPED.items()} | UNGROUPED
    rows = summarise(times, baselines)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}",
        "model": "tiny random BERT (smoke)" if args.smoke else "all-MiniLM-L6-v2",
        "batch_per_task": args.batch_size, "repeats": repeats, "variants": rows, "times_s": times,
    }
    print(f"{'variant':<12} {'median (s)':>10} {'95% CI':>17} {'baseline':>11} {'ratio':>7} {'95% CI':>15} "
          f"{'paired':>7} {'95% CI':>15}")
    for name, row in rows.items():
        cells = [f"[{low:.3f}, {high:.3f}]" for low, high in (row["median_ci95"], row["ratio_ci95"],
                                                             row["paired_ratio_ci95"])]
        print(f"{name:<12} {row['median_s']:>10.3f} {cells[0]:>17} {row['baseline']:>11} {row['ratio']:>7.3f} "
              f"{cells[1]:>15} {row['paired_ratio']:>7.3f} {cells[2]:>15}")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
