"""`ShardedGradientSurgery`: summed partial Gram matrices and per-shard combination equal surgery on the whole
gradients; under FSDP2 with 2 processes (gloo) it trains like `GradientSurgery` in one process."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_multitask.aggregators import ShardedGradientSurgery, combine, get_aggregator, gram_matrices, segment_runs
from hf_multitask.aggregators.surgery import column_segments

SIZES = [7, 12, 5, 9, 1]  # parameters' element counts; the last one's share of the second shard is empty,
LAYERS = ["embeddings", "layer.0", "layer.0", "layer.1", "pooler"]  # and so is the second shard's share of a layer


def split_columns(grads: torch.Tensor, rank: int, world: int = 2) -> tuple[torch.Tensor, list[int]]:
    """Rank `rank`'s columns of `grads` `[T, sum(SIZES)]` and its element count per parameter, each parameter cut
    as FSDP2 cuts rows: the first ceil(n / world) to rank 0, the rest to rank 1 (uneven, possibly empty)."""
    pieces, numels, start = [], [], 0
    for n in SIZES:
        chunk = -(-n // world)
        low, high = min(rank * chunk, n), min((rank + 1) * chunk, n)
        pieces.append(grads[:, start + low: start + high])
        numels.append(high - low)
        start += n
    return torch.cat(pieces, 1), numels


def join_columns(shards: list[torch.Tensor], numels: list[list[int]]) -> torch.Tensor:
    """The inverse of `split_columns` for updates `(local,)`: the whole `(sum(SIZES),)`."""
    parts = [shard.split(n) for shard, n in zip(shards, numels)]
    return torch.cat([piece for per_param in zip(*parts) for piece in per_param])


def conflicting_grads(seed: int) -> torch.Tensor:
    """`[3, P]` task gradients with a conflicting pair (negative cosine), so that the methods adjust."""
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(3, sum(SIZES), generator=generator)
    grads[1] = -0.6 * grads[0] + 0.8 * grads[1]
    return grads


def test_column_segments_keep_the_global_ids_when_a_shard_misses_a_segment():
    assert column_segments([3, 0, 2], ["a", "b", "c"])[1:] == ([(0, 0, 3), (2, 3, 5)], 3)
    assert column_segments([0, 0], ["a", "b"])[1:] == ([], 2)
    assert column_segments([2, 2], [0, 0])[1:] == ([(0, 0, 4)], 1)
    assert column_segments([2, 1], ["x", "y"])[0].tolist() == [0, 0, 1]


@pytest.mark.parametrize("method", ["pcgrad", "gradvac", "mgda", "upgrad"])
def test_summed_partial_grams_and_per_shard_combine_equal_the_whole(method):
    cls = get_aggregator(method)
    ids = LAYERS if cls.per_segment else [0] * len(SIZES)
    dense = {s: k for k, s in enumerate(dict.fromkeys(ids))}
    whole_runs = segment_runs(torch.repeat_interleave(torch.tensor([dense[s] for s in ids]), torch.tensor(SIZES)))
    num_segments = len(dense)
    whole_agg = cls(3, num_segments, gradvac_beta=0.5)
    shard_aggs = [cls(3, num_segments, gradvac_beta=0.5) for _ in range(2)]
    whole_gen, shard_gens = torch.Generator().manual_seed(3), [torch.Generator().manual_seed(3) for _ in range(2)]
    for step in range(3):  # GradVac's EMA targets carry over between steps
        grads = conflicting_grads(step)
        expected, _, whole_count = combine(whole_agg, grads, whole_gen, whole_runs)
        shards, numels = zip(*(split_columns(grads, rank) for rank in range(2)))
        runs = [column_segments(n, ids)[1] for n in numels]
        partials = [gram_matrices(shard, r, num_segments) for shard, r in zip(shards, runs)]
        updates = []
        for rank in range(2):
            def add_other(grams, other=partials[1 - rank]):  # what the all-reduce gives: own partial + the other's
                return grams + other

            update, grams, count = combine(shard_aggs[rank], shards[rank], shard_gens[rank], runs[rank],
                                           num_segments=num_segments, reduce_grams=add_other)
            torch.testing.assert_close(grams, gram_matrices(grads, whole_runs, num_segments), atol=1e-5, rtol=1e-5)
            assert count == whole_count
            updates.append(update.clone())
        torch.testing.assert_close(join_columns(updates, numels), expected, atol=1e-5, rtol=1e-5)
    assert whole_count > 0 or method == "mgda"  # the methods really adjusted (MGDA always reweights)
    for rank in range(2):
        assert torch.equal(shard_gens[rank].get_state(), whole_gen.get_state())
        for key, value in whole_agg.state_dict().items():
            torch.testing.assert_close(shard_aggs[rank].state_dict()[key], value, atol=1e-6, rtol=1e-6)


def test_a_non_finite_partial_gram_anywhere_gives_every_shard_the_plain_sum():
    grads = conflicting_grads(0)
    shard, _ = split_columns(grads, 0)
    update, _, count = combine(get_aggregator("pcgrad")(3), shard, torch.Generator(), num_segments=1,
                               reduce_grams=lambda grams: grams + float("inf"))  # another rank overflowed
    torch.testing.assert_close(update, shard.sum(0))
    assert count == 0


def test_parameters_not_sharded_by_fully_shard_are_refused_by_name():
    params = [torch.nn.Parameter(torch.zeros(4))]
    with pytest.raises(ValueError, match="parameter 'encoder.w' is not a DTensor.*fully_shard"):
        ShardedGradientSurgery("pcgrad", params, num_tasks=2, names=["encoder.w"])
    with pytest.raises(ValueError, match="names has 2 entries for 1 params"):
        ShardedGradientSurgery("pcgrad", params, num_tasks=2, names=["encoder.w", "encoder.b"])
    with pytest.raises(ValueError, match="gradient_surgery must be one of"):
        ShardedGradientSurgery("pcgard", params, num_tasks=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(script: str, *args, timeout: int = 300) -> None:
    """`tests/<script>` on 2 processes of one torchrun (gloo); a failure shows the end of its stderr."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(Path(__file__).with_name(script)), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_fsdp2_processes_train_like_whole_gradient_surgery_in_one(tmp_path):
    """2 processes, gloo, docs/scaling.md's block (`fully_shard` per encoder layer and on the model, AdamW): 3
    grouped steps of PCGrad and GradVac (per layer) end with the weights of `GradientSurgery` in one process on the
    global batches, to fp32 tolerance; every rank holds T x (its shard) of the buffer and computes the same
    coefficients."""
    from .fsdp_surgery_script import make_model

    methods = ["pcgrad", "gradvac"]
    run_two_processes("fsdp_surgery_script.py", tmp_path, *methods)
    initial = dict(make_model().named_parameters())
    for method in methods:
        sharded = load_file(tmp_path / f"{method}-sharded.safetensors")
        whole = load_file(tmp_path / f"{method}-whole.safetensors")
        assert sharded.keys() == whole.keys() == initial.keys()
        for key in whole:
            torch.testing.assert_close(sharded[key], whole[key], atol=1e-5, rtol=1e-5, msg=f"{method}: {key}")
        assert max((whole[k] - initial[k]).abs().max() for k in whole) > 1e-3  # moved by 3e-3: >> the tolerance
        ranks = [json.loads((tmp_path / f"{method}-rank{r}.json").read_text()) for r in range(2)]
        assert ranks[0]["stats"] == ranks[1]["stats"] and ranks[0]["state"] == ranks[1]["state"]  # same weights
        assert ranks[0]["stats"]["surgery_adjustments_per_step"] > 0
        shared = ranks[0]["shared"]
        assert sum(r["buffer"][1] for r in ranks) == shared  # the two shards cover the shared parameters once
        for report in ranks:
            assert report["buffer"][0] == 3 and report["buffer"][1] <= 1.02 * shared / 2  # T x P / world
            assert report["grads"] == ["DTensor True"]  # a DTensor with the parameter's local shard shape
            refused = report["refused"]
            assert "parameter 'replicated.weight0' has placements (Replicate()" in refused["replicated"]
            assert "parameter '2-D.weight0'" in refused["2-D"] and "2-D mesh" in refused["2-D"]
            assert "parameter 'other ranks.weight1' is sharded over ranks" in refused["other ranks"]
