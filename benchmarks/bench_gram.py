"""The Gram matrix of the `[T, P]` buffer: `block_gram` (chunked `bmm`) against the single `[T, P] @ [P, T]` product.

Both run interleaved in one process on the same float32 matrix (default [3, 22.6M], MiniLM's shared parameter
count), with a row copy of the same matrix (one read and one write of P) as a yardstick of the memory bandwidth.
Each call is timed in CPU time of the calling thread (`time.thread_time`, which other jobs on a shared machine
disturb less than wall time; with --threads 1 it is all the work) and in wall time. Reported: medians, the median of
the per-repeat ratios block_gram / single product and its distribution-free 95% interval, and the largest difference
of each result from the float64 product.

    python benchmarks/bench_gram.py --threads 1 --repeats 25
    python benchmarks/bench_gram.py --smoke      # [3, 100k], 3 repeats: checks the script
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from bench_stats import median_interval

from hf_multitask.aggregators.surgery import block_gram

SHARED_PARAMETERS = 22_600_000  # all-MiniLM-L6-v2's encoder, the parameters surgery acts on


def timed(fn) -> tuple[float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--size", type=int, default=SHARED_PARAMETERS)
    parser.add_argument("--smoke", action="store_true", help="[3, 100k], 3 repeats.")
    parser.add_argument("--output", help="Write the results as JSON here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size, repeats = (100_000, 3) if args.smoke else (args.size, args.repeats)
    matrix = torch.randn(args.tasks, size, generator=torch.Generator().manual_seed(0))
    spare = torch.empty(size)
    variants = {"single_product": lambda: matrix @ matrix.T, "block_gram": lambda: block_gram(matrix),
                "row_copy": lambda: spare.copy_(matrix[0])}
    for run in variants.values():
        run()  # warm-up
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(timed(run))
    exact = matrix.double() @ matrix.double().T
    rows = {name: {"cpu_median_s": statistics.median(t[0] for t in spent),
                   "wall_median_s": statistics.median(t[1] for t in spent)} for name, spent in times.items()}
    for name in ("single_product", "block_gram"):
        rows[name]["max_abs_error_vs_float64"] = float((variants[name]().double() - exact).abs().max())
    for clock, index in (("cpu", 0), ("wall", 1)):
        ratios = [a[index] / b[index] for a, b in zip(times["block_gram"], times["single_product"])]
        rows["block_gram"][f"{clock}_ratio_median"] = statistics.median(ratios)
        rows["block_gram"][f"{clock}_ratio_95"] = list(median_interval(ratios))
    for name, row in rows.items():
        print(name, {k: [round(x, 4) for x in v] if isinstance(v, list) else round(v, 4) for k, v in row.items()})
    summary = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s)",
               "torch": torch.__version__, "matrix": [args.tasks, size], "repeats": repeats, "variants": rows}
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
