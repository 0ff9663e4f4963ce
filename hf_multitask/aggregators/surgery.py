"""The `[T, P]` buffer of per-task gradients and the one `combine` path from it to `.grad`, for every aggregator.

`combine` reads the buffer twice: once for the `[K, T, T]` Gram matrices, once to write the weighted sum of the
rows into preallocated storage. Training (`GradientSurgery`), the benchmarks and the tests all go through it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import torch

from .base import Aggregator, aggregate, get_aggregator


def segment_runs(segments: torch.Tensor) -> list[tuple[int, int, int]]:
    """`(segment id, start, end)` of every run of equal ids in `segments` `(P,)`."""
    change = torch.nonzero(segments[1:] != segments[:-1]).flatten().add(1).tolist()
    starts, ends = [0, *change], [*change, segments.numel()]
    return [(int(segments[s]), s, e) for s, e in zip(starts, ends)]


def column_segments(numels: list[int], segment_ids: list) -> tuple[torch.Tensor, list[tuple[int, int, int]], int]:
    """Each column's segment `(sum(numels),)`, its `(segment, start, end)` runs and K, from each parameter's segment
    id and its number of columns.

    Ids are relabelled 0..K-1 in order of first appearance in `segment_ids`, which every rank has whole, so that
    segment k is the same layer on every rank even when a rank's shard holds no element of it (`numels` 0).
    """
    dense = {s: k for k, s in enumerate(dict.fromkeys(segment_ids))}
    segments = torch.repeat_interleave(torch.tensor([dense[s] for s in segment_ids], dtype=torch.long),
                                       torch.tensor(numels, dtype=torch.long))
    return segments, (segment_runs(segments) if segments.numel() else []), max(len(dense), 1)


GRAM_CHUNK = 16384  # columns per block of `block_gram`: [T, 16384] float32 is 192 KiB for T = 3, in L2


def block_gram(block: torch.Tensor) -> torch.Tensor:
    """`block @ block.T` `[T, T]` for a wide `block` `[T, L]`, as the sum of the Gram matrices of its column chunks.

    One `bmm` over the `[n, T, GRAM_CHUNK]` view (no copy) and one `mm` for the last `L mod GRAM_CHUNK` columns.
    A single `[T, L] @ [L, T]` product with T = 3 and L in the millions is a poor shape for BLAS: on [3, 22.6 M]
    (MiniLM's shared parameters) this takes 0.6x its CPU time, and its entries are far closer to the float64
    product, being sums of short partial sums (`benchmarks/bench_gram.py`, docs/results.md).
    """
    chunks = block.shape[1] // GRAM_CHUNK
    tail = block[:, chunks * GRAM_CHUNK:]
    gram = tail @ tail.T
    if chunks:
        blocks = block[:, :chunks * GRAM_CHUNK].unflatten(1, (chunks, GRAM_CHUNK)).transpose(0, 1)  # (n, T, C)
        gram += torch.bmm(blocks, blocks.transpose(1, 2)).sum(0)
    return gram


def segment_grams(grads: torch.Tensor, runs: list[tuple[int, int, int]], num_segments: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix of the task gradients restricted to each segment: `[K, T, T]` (into `out` when given)."""
    grams = grads.new_zeros(num_segments, grads.shape[0], grads.shape[0]) if out is None else out.zero_()
    for k, start, end in runs:
        grams[k] += block_gram(grads[:, start:end])
    return grams


def gram_matrices(grads: torch.Tensor, runs: list[tuple[int, int, int]], num_segments: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """The `[K, T, T]` Gram matrices as float64, finite whenever `grads` is.

    They are computed in `grads`' dtype (into `out` when given); if that overflows (float32 from |g| ~ 1.8e19),
    they are computed again on `grads` divided by its largest absolute entry m and multiplied by m^2 in float64.
    """
    grams = segment_grams(grads, runs, num_segments, out)
    if bool(torch.isfinite(grams).all()):
        return grams.double()
    largest = grads.abs().amax()
    if not bool(torch.isfinite(largest)) or largest == 0:
        return grams.double()  # the gradients themselves are not finite
    return segment_grams(grads / largest, runs, num_segments).double() * largest.double() ** 2


def cosines_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Pairwise cosines `[..., T, T]` from Gram matrices (0 where a gradient is zero)."""
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    products = norms[..., :, None] * norms[..., None, :]
    return torch.where(products > 0, gram / torch.where(products > 0, products, 1.0), 0.0)


def task_cosines(grads: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity `[T, T]` between task gradients (0 where a gradient is zero)."""
    return cosines_from_gram(gram_matrices(grads, [(0, 0, grads.shape[1])], 1)[0])


def combine(aggregator: Aggregator, grads: torch.Tensor, generator: torch.Generator,
            runs: list[tuple[int, int, int]] | None = None, out: torch.Tensor | None = None,
            grams_out: torch.Tensor | None = None, num_segments: int | None = None,
            reduce_grams: Callable[[torch.Tensor], torch.Tensor] | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The update `(P,)` of `aggregator` for the task gradients `grads` `[T, P]`: sum_i w[k, i] g_i on segment k.

    Args:
        aggregator: The method; a per-segment one gets one Gram matrix per segment of `runs`.
        grads: `[T, P]` per-task gradients (float32 in training).
        generator: The run's seeded generator (visiting orders), advanced identically on every rank.
        runs: `(segment, start, end)` ranges covering `grads`' columns (`segment_runs`); `None`: one segment.
        out: `(P,)` storage for the update (allocated when `None`); training passes the same one every step.
        grams_out: `[K, T, T]` storage for the Gram matrices in `grads`' dtype.
        num_segments: K; `None`: one more than the largest segment id in `runs`. A column shard (FSDP) gives it,
            since its columns may miss some segments.
        reduce_grams: Turns the float64 Gram matrices of `grads`' columns into those of the whole gradients before
            the method sees them; `None`: `grads` is whole. Under FSDP: the sum over ranks of every rank's shard
            (`aggregators/sharded.py`).

    Returns:
        The update (`out`), the float64 Gram matrices `[K, T, T]` and the method's adjustment count. Gradients
        that are not finite (NaN or inf in `grads`) get weights 1: the plain sum, as without surgery.
    """
    runs = [(0, 0, grads.shape[1])] if runs is None else runs
    if num_segments is None:
        num_segments = max(k for k, _, _ in runs) + 1 if runs else 1
    out = torch.empty(grads.shape[1], dtype=grads.dtype, device=grads.device) if out is None else out
    grams = gram_matrices(grads, runs, num_segments, grams_out)
    if reduce_grams is not None:
        grams = reduce_grams(grams)
    if bool(torch.isfinite(grams).all()):
        weights, count = aggregate(aggregator, grams, generator)
    else:
        weights, count = torch.ones(num_segments, grads.shape[0], dtype=torch.float64), 0
    weights = weights.to(dtype=grads.dtype, device=grads.device)
    if not aggregator.per_segment:  # (1, T) @ (T, P) written straight into `out`: no temporary
        torch.mm(weights[:1], grads, out=out.unsqueeze(0))
    else:
        for k, start, end in runs:
            torch.mm(weights[k:k + 1], grads[:, start:end], out=out[start:end].unsqueeze(0))
    return out, grams, count


class GradientSurgery:
    """Per-task gradients of the shared parameters in one flat `[T, P]` buffer, and the aggregator applied to them.

    The Trainer runs each task's backward inside [`capture`], which moves every shared gradient into the task's row
    as autograd produces it; it then averages the buffer across ranks, and [`combine`] writes the aggregated update
    into the shared parameters' `.grad` (the same on every rank: one seeded generator orders PCGrad's and GradVac's
    visits). The generator's state and the aggregator's own state (GradVac's targets) are in [`state_dict`] for
    checkpoints.

    Args:
        method: A registered aggregator (`aggregator_names()`): `none` (plain sum), `pcgrad`, `gradvac`, ...
        params: The shared trainable parameters, in a fixed order.
        num_tasks: T.
        seed: Seeds the generator of the visiting orders.
        gradvac_beta: EMA rate of GradVac's targets.
        gradvac_per_layer: A per-segment method (GradVac) gets one Gram matrix per parameter group (`segment_ids`)
            instead of one overall.
        segment_ids: Group id (`MultitaskModel.parameter_group(name)`) of every parameter, for `gradvac_per_layer`.
        aggregator_options: More keyword arguments of the aggregator's constructor (`gradient_surgery_kwargs`).
    """

    def __init__(self, method: str, params: list[torch.nn.Parameter], num_tasks: int, seed: int = 0,
                 gradvac_beta: float = 0.01, gradvac_per_layer: bool = True, segment_ids: list | None = None,
                 aggregator_options: dict | None = None):
        cls = get_aggregator(method)
        self.method, self.params, self.num_tasks = method, params, num_tasks
        local = [self.local_part(p) for p in params]
        self.shapes, self.numels = [t.shape for t in local], [t.numel() for t in local]
        device = self.device = local[0].device if local else torch.device("cpu")
        self._buffer = self.slots = self.total = None  # allocated at first use: `_allocate`
        self.unwritten: list[set[int]] = [set() for _ in range(num_tasks)]  # see `zero_`; none: the zeros are real
        self.capturing: int | None = None  # the row `capture` is filling
        self._hooked = False
        per_layer = cls.per_segment and gradvac_per_layer and segment_ids is not None
        segments, self.runs, self.num_segments = column_segments(self.numels,
                                                                 segment_ids if per_layer else [0] * len(params))
        self.segments = segments.to(device)
        self.grams = torch.empty(self.num_segments, num_tasks, num_tasks, dtype=torch.float32, device=device)
        self.aggregator = cls(num_tasks, self.num_segments, gradvac_beta=gradvac_beta, **(aggregator_options or {}))
        self.generator = torch.Generator().manual_seed(seed)
        self.cosine_sum = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
        self.steps = self.adjustments = 0

    @staticmethod
    def local_part(param: torch.Tensor) -> torch.Tensor:
        """The part of `param` this process holds (all of it; a shard in [`ShardedGradientSurgery`])."""
        return param

    def _allocate(self) -> None:
        """The `[T, P]` buffer, each parameter's slot in each row, and the update's `(P,)`, at first use: a surgery
        that is replaced before training (by its sharded twin, when accelerate's FSDP2 shards the model after the
        Trainer was built) never holds T × P floats."""
        if self._buffer is None:
            self._buffer = torch.zeros(self.num_tasks, sum(self.numels), dtype=torch.float32, device=self.device)
            self.slots = [[flat.view(shape) for flat, shape in zip(row.split(self.numels), self.shapes)]
                          for row in self._buffer]
            self.total = torch.empty(sum(self.numels), dtype=torch.float32, device=self.device)  # the update

    @property
    def buffer(self) -> torch.Tensor:
        """The `[T, P]` float32 per-task gradients: row t sums task t's gradients since [`zero_`] (0 where none)."""
        self._allocate()
        for row, (slots, unwritten) in enumerate(zip(self.slots, self.unwritten)):
            if len(unwritten) == len(slots):
                self._buffer[row].zero_()
            else:
                for index in unwritten:
                    slots[index].zero_()
            unwritten.clear()
        return self._buffer

    def zero_(self) -> None:
        """Empty every row, without writing it: each parameter's first gradient after this is copied into its slice
        (not added to zeros), and the slices that get none are zeroed when [`buffer`] is next read."""
        self.unwritten = [set(range(len(self.params))) for _ in range(self.num_tasks)]

    def store(self, task_index: int, index: int, grad: torch.Tensor) -> None:
        """Add `grad` (parameter `index`'s gradient, any float dtype) into its slice of row `task_index`; the first
        one since [`zero_`] is copied there instead, which gives the same bits as adding it to zeros."""
        self._allocate()
        unwritten, slot = self.unwritten[task_index], self.slots[task_index][index]
        with torch.no_grad():  # backward(create_graph=True) would otherwise record the copy into the graph
            if index not in unwritten:
                slot.add_(grad)
            elif grad.layout == torch.strided:
                slot.copy_(grad)
            else:  # a sparse gradient (nn.Embedding(sparse=True)) has no copy_ into a dense tensor
                slot.zero_().add_(grad)
        unwritten.discard(index)

    def accumulate(self, task_index: int) -> None:
        """Move the shared parameters' current `.grad` into row `task_index` (added to what it holds); clear them."""
        for index, p in enumerate(self.params):
            if p.grad is not None:
                self.store(task_index, index, p.grad)
            p.grad = None

    @contextlib.contextmanager
    def capture(self, task_index: int):
        """Within this context, every shared gradient the backward pass accumulates goes into row `task_index`.

        Autograd hands a parameter whose `.grad` is `None` its freshly computed gradient without a copy; a hook
        after that accumulation ([`store`]) adds it into the row, or copies it there when it is the first since
        [`zero_`], and sets `.grad` back to `None`, so the tensor is freed while the backward goes on. Per task and
        micro-batch that is one pass over P (the copy), where adding `.grad` into a zeroed buffer after the
        backward took three (zeroing, then reading both and writing), and no gradient outlives its storing (they
        all lived until the backward ended). Micro-batches add into the same row.

        Example (`surgery.buffer[t]` then holds task t's gradient, `.grad` stays `None`):

        ```python
        >>> import torch
        >>> layer = torch.nn.Linear(3, 2)
        >>> surgery = GradientSurgery("pcgrad", list(layer.parameters()), num_tasks=2)
        >>> for t in range(2):
        ...     with surgery.capture(t):
        ...         layer(torch.ones(1, 3)).sum().mul(t + 1).backward()
        >>> surgery.buffer[1].equal(2 * surgery.buffer[0]), layer.weight.grad is None
        (True, True)

        ```
        """
        if self.capturing is not None:
            raise RuntimeError(f"capture({task_index}) inside capture({self.capturing}): one task at a time")
        self.accumulate(task_index)  # a `.grad` already set (none in training) belongs to this row, as before
        self._install_hooks()
        self.capturing = task_index
        try:
            yield
        finally:
            self.capturing = None
        self.accumulate(task_index)  # what no hook took: a parameter frozen while the hooks were installed

    def _install_hooks(self) -> None:
        """One post-accumulate-grad hook per shared parameter, installed once, acting only inside [`capture`]. The
        hooks hold this object weakly and are removed when it is garbage-collected."""
        if self._hooked:
            return
        self._hooked = True
        surgery = weakref.ref(self)

        def hook_for(index: int):
            def hook(param: torch.Tensor) -> None:
                owner = surgery()
                if owner is not None and owner.capturing is not None and param.grad is not None:
                    owner.store(owner.capturing, index, param.grad)
                    param.grad = None
            return hook

        handles = [p.register_post_accumulate_grad_hook(hook_for(i)) for i, p in enumerate(self.params)
                   if p.requires_grad]
        weakref.finalize(self, _remove_hooks, handles)

    def combine(self) -> None:
        """Aggregate the buffer's rows and write the update into the shared parameters' `.grad`."""
        if not self.params:
            return
        total, grams, count = combine(self.aggregator, self.buffer, self.generator, self.runs, self.total, self.grams,
                                      num_segments=self.num_segments)
        self.cosine_sum += cosines_from_gram(grams.sum(0)).cpu()
        self.steps += 1
        self.adjustments += count
        for p, flat in zip(self.params, total.split(self.numels)):
            p.grad = flat.view_as(p).to(p.dtype)

    def pop_stats(self, task_names: list[str]) -> dict[str, float]:
        """Mean pairwise cosines and adjustments per step since the last call (for logging)."""
        if self.steps == 0:
            return {}
        mean = self.cosine_sum / self.steps
        stats = {f"grad_cos_{a}_{b}": round(float(mean[i, j]), 4)
                 for i, a in enumerate(task_names) for j, b in enumerate(task_names) if i < j}
        stats["surgery_adjustments_per_step"] = round(self.adjustments / self.steps, 4)
        self.cosine_sum.zero_()
        self.steps = self.adjustments = 0
        return stats

    def state_dict(self) -> dict:
        return {**self.aggregator.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.aggregator.load_state_dict({k: v for k, v in state.items() if k != "generator"})
        self.generator.set_state(state["generator"])


def _remove_hooks(handles: list) -> None:
    for handle in handles:
        handle.remove()
