"""Give the archived single-task predictions their rows' ids back (a one-off repair, 2026-12-02).

Up to aecff88, `examples/cs224n/single_task_hf.py` zipped each task's dev ids, in the file's order, onto
`trainer.predict(dev)`'s outputs; but under `train_sampling_strategy="group_by_length"` transformers' Trainer also
orders the *evaluation* set by length (`Trainer._get_eval_sampler`: a `LengthGroupedSampler` over the eval batch
size, 128, with a generator seeded with the run's seed). The gold labels and predictions came back in that order
together, so every metric was right, but each id named another row, and the ablation's paired intervals, which
resample the same dev examples for a row and its comparator, paired different examples.

That order is a function of the dev rows' token lengths, the batch size and the seed, so it can be rebuilt: this
script rebuilds it for each archived run of the `single_task_hf` and `single_task_3ep` rows, checks that it puts
every archived gold label on its own row (a label mismatch anywhere, or in one task of three, stops the repair of
that run), and rewrites `dev_predictions.jsonl.gz` in the file's order with the right ids. The file as the run
wrote it is kept as `dev_predictions.as_written.jsonl.gz`; `run.json` gains `predictions_repaired`.

    python benchmarks/repair_single_task_ids.py            # repair the runs that need it (a run already repaired,
                                                           # or written in order by the fixed script, is skipped)
    python benchmarks/repair_single_task_ids.py --check    # only report which runs need it
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402  (benchmarks/ is not a package)

ROWS = ("single_task_hf", "single_task_3ep")
EVAL_BATCH_SIZE = 128  # single_task_hf.py's per_device_eval_batch_size
KEPT = "dev_predictions.as_written.jsonl.gz"

_spec = importlib.util.spec_from_file_location("single_task_hf", ablation.REPO / "examples/cs224n/single_task_hf.py")
single = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(single)


def dev_rows(task: str, data_dir: str, tokenizer) -> tuple[list, list, list[int]]:
    """A task's dev ids, gold labels and token lengths, as single_task_hf.py tokenises them."""
    dev, ids = single.load_split(task, data_dir, "dev", None, tokenizer)
    return ids, list(dev["labels"]), [len(row) for row in dev["input_ids"]]


def evaluation_order(lengths: list[int], seed: int) -> list[int]:
    """The dev row behind each prediction, as the Trainer's evaluation sampler drew them."""
    sampler = LengthGroupedSampler(EVAL_BATCH_SIZE, lengths=lengths, generator=torch.Generator().manual_seed(seed))
    return list(sampler)


def repaired(records: list[dict], seed: int, rows: dict[str, tuple]) -> list[dict] | None:
    """The records in each task's file order with their rows' ids; `None` when they already are in it."""
    out, moved = [], False
    for task, (ids, gold, lengths) in rows.items():
        written = [r for r in records if r["task"] == task]
        if [r["id"] for r in written] != list(ids):
            raise ValueError(f"{task}: the archived ids are not the dev file's in its order")
        if np.allclose([r["labels"] for r in written], gold, rtol=0, atol=1e-5):
            out += written  # gold labels on their rows already: predicted in order
            continue
        order = evaluation_order(lengths, seed)
        placed = [None] * len(written)
        for record, row in zip(written, order, strict=True):
            if abs(float(record["labels"]) - float(gold[row])) > 1e-5:
                raise ValueError(f"{task}: the rebuilt order puts gold {record['labels']} on row {ids[row]} "
                                 f"(gold {gold[row]}): not the order the run predicted in")
            placed[row] = {**record, "id": ids[row]}
        out += placed
        moved = True
    return out if moved else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Only report which runs need the repair.")
    parser.add_argument("--data_dir", default=str(ablation.REPO / ablation.DATA_DIR))
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(single.resolve_encoder_path("minilm"))
    rows = {task: dev_rows(task, args.data_dir, tokenizer) for task in single.TASKS}
    for group in ("main", "reference"):
        for row in ablation.rows_by_name(group).values():
            if row.name not in ROWS:
                continue
            for run in row.runs():
                if ablation.row_state(run, ablation.REPO)[0] != "done":
                    continue
                folder = run.archive(ablation.REPO)
                path = folder / ablation.PREDICTIONS
                fixed = repaired(ablation.read_prediction_records(path), run.seed, rows)
                if fixed is None:
                    print(f"{run.label}: in order, nothing to repair")
                    continue
                print(f"{run.label}: ids rebuilt, every gold label on its own row" + (" (--check)" if args.check
                                                                                     else ""))
                if args.check:
                    continue
                (folder / KEPT).write_bytes(path.read_bytes())
                with gzip.open(path, "wt", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(r) + "\n" for r in fixed)
                record_path = folder / "run.json"
                record = json.loads(record_path.read_text(encoding="utf-8"))
                record["predictions_repaired"] = ("ids rebuilt from the Trainer's length-grouped evaluation order "
                                                  "by benchmarks/repair_single_task_ids.py; as written: " + KEPT)
                record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
