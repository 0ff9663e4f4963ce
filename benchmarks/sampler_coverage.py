"""How many of each task's training rows a run's batches reach: the multitask sampler alone (no model), with the
CS224N train sizes (8,544 SST, 27,655 Quora, 6,040 STS rows), batches of 32 and seed 142, for the recipe at the
reference's budget (round-robin, 3,963 batches: three epochs of the sampler) and the main job (annealed, 1,400).

    python benchmarks/sampler_coverage.py
    # the sampler before its task streams ran on across epochs (docs/results.md, "The recipe at the reference's
    # budget"): the same script against that code
    git worktree add --detach /tmp/old 39da8ad && PYTHONPATH=/tmp/old python benchmarks/sampler_coverage.py
"""

from __future__ import annotations

import numpy as np

from hf_multitask.sampling import MultitaskBatchSampler

SIZES = {"sst": 8544, "quora": 27655, "sts": 6040}
RUNS = {"recipe_3963 (round_robin)": ("round_robin", 3963), "main job (annealed)": ("annealed", 1400)}


def coverage(strategy: str, steps: int, seed: int = 142) -> dict[str, tuple[int, int]]:
    """`{task: (rows drawn, distinct rows)}` over the first `steps` batches, epoch after epoch."""
    sampler = MultitaskBatchSampler(SIZES, batch_size=32, strategy=strategy, seed=seed)
    sampler.set_total_batches(steps)
    offsets, names = np.cumsum([0, *SIZES.values()])[:-1], list(SIZES)
    seen, done, epoch = {name: [] for name in SIZES}, 0, 0
    while done < steps:
        sampler.set_epoch(epoch)
        for batch in sampler:
            task = int(np.searchsorted(offsets, batch[0], side="right") - 1)
            seen[names[task]] += [i - int(offsets[task]) for i in batch]
            done += 1
            if done == steps:
                break
        epoch += 1
    return {name: (len(rows), len(set(rows))) for name, rows in seen.items()}


if __name__ == "__main__":
    for label, (strategy, steps) in RUNS.items():
        cells = [f"{name} {drawn:,} drawn, {distinct:,} distinct ({distinct / SIZES[name]:.1%})"
                 for name, (drawn, distinct) in coverage(strategy, steps).items()]
        print(f"{label}, {steps:,} batches: " + "; ".join(cells))
