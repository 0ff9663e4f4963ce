"""`combine` (hf_multitask.aggregators) against torchjd 0.18 for the same method on the same `[T, P]` matrix.

For each method torchjd has without optional dependencies (pcgrad, gradvac, mgda, imtl_g, aligned_mtl; `none`
against torchjd's `Sum`), the two implementations run interleaved in one process: each repeat times ours then
torchjd's on the same float32 matrix (default [3, 22.6M], MiniLM's shared parameter count), in a fixed order per
repeat. Reported: the median time of each, the median of the per-repeat ratios ours / torchjd and its 95% interval
(distribution-free, from the order statistics of the ratios). Ours writes into preallocated storage, as training does.

    python benchmarks/bench_aggregators.py --threads 1 --repeats 25 --output benchmarks/results/aggregators.json
    python benchmarks/bench_aggregators.py --smoke      # [3, 100k], 3 repeats: checks the script
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import time
from functools import partial

import torch
from bench_stats import median_interval

from hf_multitask.aggregators import combine, get_aggregator

METHODS = {"none": "Sum", "pcgrad": "PCGrad", "gradvac": "GradVac", "mgda": "MGDA", "imtl_g": "IMTLG",
           "aligned_mtl": "AlignedMTL"}
SHARED_PARAMETERS = 22_600_000  # all-MiniLM-L6-v2's encoder, the parameters surgery acts on


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--size", type=int, default=SHARED_PARAMETERS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--smoke", action="store_true", help="[3, 100k], 3 repeats.")
    parser.add_argument("--output", help="Write the results as JSON here.")
    args = parser.parse_args()
    import torchjd.aggregation as jd

    torch.set_num_threads(args.threads)
    size, repeats = (100_000, 3) if args.smoke else (args.size, args.repeats)
    matrix = torch.randn(args.tasks, size, generator=torch.Generator().manual_seed(0)) - 0.02
    out = torch.empty(size)
    results = {}
    for method in args.methods:
        ours = get_aggregator(method)(args.tasks, 1)
        generator = torch.Generator().manual_seed(0)
        theirs = getattr(jd, METHODS[method])()
        run_ours, run_theirs = partial(combine, ours, matrix, generator, out=out), partial(theirs, matrix)
        run_ours(), run_theirs()  # warm-up
        times = {"ours": [], "torchjd": []}
        for _ in range(repeats):
            times["ours"].append(timed(run_ours))
            times["torchjd"].append(timed(run_theirs))
        ratios = [a / b for a, b in zip(times["ours"], times["torchjd"])]
        low, high = median_interval(ratios)
        results[method] = {"median_s": {k: statistics.median(v) for k, v in times.items()},
                           "ratio_median": statistics.median(ratios), "ratio_95": [low, high]}
        r = results[method]
        print(f"{method:<12} ours {r['median_s']['ours']:.4f} s  torchjd {r['median_s']['torchjd']:.4f} s  "
              f"ratio {r['ratio_median']:.3f} [{low:.3f}, {high:.3f}]", flush=True)
    summary = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s)",
               "torch": torch.__version__, "torchjd": importlib.metadata.version("torchjd"),
               "matrix": [args.tasks, size], "dtype": "float32", "repeats": repeats, "methods": results}
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
