"""Gradient surgery on a `[T, P]` matrix of per-task gradients of the shared parameters: PCGrad and GradVac.

Pure functions on tensors: no model, no Python loop over parameters. The Trainer flattens the shared parameters'
gradients of each task into one preallocated row, calls one of these, and writes the sum back into `.grad`.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def visiting_orders(num_tasks: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """For each task i, the other tasks j in a random order (the order PCGrad and GradVac visit them in)."""
    orders = []
    for i in range(num_tasks):
        others = torch.randperm(num_tasks - 1, generator=generator).tolist()
        orders.append([j if j < i else j + 1 for j in others])
    return orders


def task_cosines(grads: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity `[T, T]` between task gradients (0 where a gradient is zero)."""
    return cosines_from_gram(grads @ grads.T)


def cosines_from_gram(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().clamp_min(EPS)
    return gram / (norms[..., :, None] * norms[..., None, :])


# Both methods only ever add multiples of the *original* task gradients to a task's gradient, so the edited
# gradients are A @ G for a small [T, T] coefficient matrix A, and every dot product they need is a combination of
# the Gram matrix G G^T. The loops below run on [T, T] (or [K, T, T]) matrices; the [T, P] data is read twice:
# once for the Gram matrix, once to form the result.


def pcgrad_coefficients(gram: torch.Tensor, orders: list[list[int]]) -> tuple[torch.Tensor, int]:
    """PCGrad on the Gram matrix `[T, T]` of the task gradients: returns A (projected = A @ grads) and the count."""
    coeffs = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    count = 0
    for i, order in enumerate(orders):
        for j in order:
            if gram[j, j] <= EPS:
                continue
            dot = coeffs[i] @ gram[:, j]  # (running g_i) . g_j
            if dot < 0:
                coeffs[i, j] -= dot / gram[j, j]
                count += 1
    return coeffs, count


def pcgrad(grads: torch.Tensor, orders: list[list[int]]) -> tuple[torch.Tensor, int]:
    """Projecting Conflicting Gradients (Yu et al. 2020, https://arxiv.org/abs/2001.06782).

    For each task i, for the other tasks j in `orders[i]`: if g_i . g_j < 0, g_i <- g_i - (g_i . g_j / |g_j|^2) g_j,
    with g_j the *original* gradient of task j and g_i the running, already-projected one.

    Args:
        grads: `[T, P]` per-task gradients of the shared parameters (float32).
        orders: `orders[i]` lists the tasks j != i in visiting order (see [`visiting_orders`]).

    Returns:
        The projected `[T, P]` gradients (the update is their sum) and the number of projections made.
    """
    coeffs, count = pcgrad_coefficients(grads @ grads.T, orders)
    return coeffs @ grads, count


def gradvac_coefficients(
    grams: torch.Tensor, targets: torch.Tensor, orders: list[list[int]], beta: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """GradVac on per-segment Gram matrices `[K, T, T]`: returns A `[K, T, T]`, the new targets and the count."""
    num_segments, num_tasks, _ = grams.shape
    coeffs = torch.eye(num_tasks, dtype=grams.dtype, device=grams.device).repeat(num_segments, 1, 1)
    targets = targets.clone().to(grams.dtype)
    norms = grams.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # (K, T) original norms
    count = 0
    for i, order in enumerate(orders):
        for j in order:
            a = coeffs[:, i, :]  # (K, T): running g_i = sum_m a[m] g_m, per segment
            dot = (a * grams[:, :, j]).sum(-1)  # (K,)
            norm_i = torch.einsum("km,kmn,kn->k", a, grams, a).clamp_min(0).sqrt()
            norm_j = norms[:, j]
            valid = (norm_i > EPS) & (norm_j > EPS)
            phi = (dot / (norm_i * norm_j).clamp_min(EPS)).clamp(-1.0, 1.0)
            target = targets[:, i, j]
            adjust = valid & (phi < target)
            sin_target = (1 - target**2).clamp_min(EPS).sqrt()
            coef = norm_i * (target * (1 - phi**2).clamp_min(0).sqrt() - phi * sin_target) / (
                norm_j.clamp_min(EPS) * sin_target
            )
            coeffs[:, i, j] += torch.where(adjust, coef, torch.zeros_like(coef))
            targets[:, i, j] = torch.where(valid, (1 - beta) * target + beta * phi, target)
            count += int(adjust.sum())
    return coeffs, targets, count


def segment_runs(segments: torch.Tensor) -> list[tuple[int, int, int]]:
    """`(segment id, start, end)` of every run of equal ids in `segments` `(P,)`."""
    change = torch.nonzero(segments[1:] != segments[:-1]).flatten().add(1).tolist()
    starts, ends = [0, *change], [*change, segments.numel()]
    return [(int(segments[s]), s, e) for s, e in zip(starts, ends)]


def segment_grams(grads: torch.Tensor, runs: list[tuple[int, int, int]], num_segments: int) -> torch.Tensor:
    """Gram matrix of the task gradients restricted to each segment: `[K, T, T]`."""
    grams = grads.new_zeros(num_segments, grads.shape[0], grads.shape[0])
    for k, start, end in runs:
        block = grads[:, start:end]
        grams[k] += block @ block.T
    return grams


def gradvac(
    grads: torch.Tensor,
    targets: torch.Tensor,
    orders: list[list[int]],
    beta: float = 0.01,
    segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gradient Vaccine (Wang et al. 2020, https://arxiv.org/abs/2010.05874).

    For each task i, for the other tasks j in `orders[i]`, in each segment (the whole vector, or each layer):
    phi = cos(g_i, g_j); if phi < target phî_ij,
    g_i <- g_i + |g_i| (phî sqrt(1 - phi^2) - phi sqrt(1 - phî^2)) / (|g_j| sqrt(1 - phî^2)) g_j,
    which sets cos(g_i, g_j) to exactly phî_ij; then phî_ij <- (1 - beta) phî_ij + beta phi.

    Args:
        grads: `[T, P]` per-task gradients of the shared parameters (float32).
        targets: `[K, T, T]` EMA targets phî for K segments (zeros at the start of training).
        orders: Visiting orders, as for [`pcgrad`].
        beta: EMA rate of the targets (the paper: 0.01).
        segments: `(P,)` segment id in [0, K) of every coordinate (e.g. its layer); `None` = one segment.

    Returns:
        The adjusted `[T, P]` gradients, the updated targets, and the number of (segment, pair) adjustments.
    """
    runs = segment_runs(segments) if segments is not None else [(0, 0, grads.shape[1])]
    coeffs, targets, count = gradvac_coefficients(segment_grams(grads, runs, targets.shape[0]), targets, orders, beta)
    adjusted = torch.empty_like(grads)
    for k, start, end in runs:
        adjusted[:, start:end] = coeffs[k] @ grads[:, start:end]
    return adjusted, targets.to(grads.dtype), count


SURGERY_METHODS = ("none", "pcgrad", "gradvac")


class GradientSurgery:
    """Per-task gradients of the shared parameters in one flat `[T, P]` buffer, and the surgery applied to them.

    The Trainer adds each task's shared gradients into its row ([`accumulate`]), averages the buffer across ranks,
    then [`combine`] projects the rows (same visiting order on every rank: one seeded generator) and returns their
    sum for `.grad`. GradVac's EMA targets and the generator's state are in [`state_dict`] for checkpoints.

    Args:
        method: `none` (plain sum), `pcgrad` or `gradvac`.
        params: The shared trainable parameters, in a fixed order.
        num_tasks: T.
        seed: Seeds the generator of the visiting orders.
        gradvac_beta: EMA rate of GradVac's targets.
        gradvac_per_layer: One GradVac target per parameter tensor group (`segment_ids`) instead of one overall.
        segment_ids: Group id (`MultitaskModel.parameter_group(name)`) of every parameter, for `gradvac_per_layer`.
    """

    def __init__(self, method: str, params: list[torch.nn.Parameter], num_tasks: int, seed: int = 0,
                 gradvac_beta: float = 0.01, gradvac_per_layer: bool = True, segment_ids: list | None = None):
        if method not in SURGERY_METHODS:
            raise ValueError(f"gradient_surgery must be one of {SURGERY_METHODS}, got {method!r}")
        self.method, self.params, self.num_tasks, self.beta = method, params, num_tasks, gradvac_beta
        self.numels = [p.numel() for p in params]
        size = sum(self.numels)
        device = params[0].device if params else torch.device("cpu")
        self.buffer = torch.zeros(num_tasks, size, dtype=torch.float32, device=device)
        ids = segment_ids if (gradvac_per_layer and segment_ids is not None) else [0] * len(params)
        dense = {s: k for k, s in enumerate(dict.fromkeys(ids))}  # relabel to 0..K-1
        self.segments = torch.repeat_interleave(torch.tensor([dense[s] for s in ids], dtype=torch.long),
                                                torch.tensor(self.numels, dtype=torch.long)).to(device)
        self.targets = torch.zeros(max(len(dense), 1), num_tasks, num_tasks, dtype=torch.float32, device=device)
        self.runs = segment_runs(self.segments) if size else []
        self.generator = torch.Generator().manual_seed(seed)
        self.cosine_sum = torch.zeros(num_tasks, num_tasks)
        self.steps = self.adjustments = 0

    def zero_(self) -> None:
        self.buffer.zero_()

    def accumulate(self, task_index: int) -> None:
        """Add the shared parameters' current `.grad` to row `task_index`, then clear those `.grad`s."""
        if not self.params:
            return
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(n, device=self.buffer.device)
                 for p, n in zip(self.params, self.numels)]
        self.buffer[task_index].add_(torch.cat(grads))
        for p in self.params:
            p.grad = None

    def combine(self) -> None:
        """Apply the surgery to the buffer's rows and write their sum into the shared parameters' `.grad`."""
        if not self.params:
            return
        grads = self.buffer
        grams = segment_grams(grads, self.runs, self.targets.shape[0])  # (K, T, T), one pass over the buffer
        gram = grams.sum(0)
        self.cosine_sum += cosines_from_gram(gram).cpu()
        self.steps += 1
        num_tasks = self.num_tasks
        weights = torch.ones(self.targets.shape[0], num_tasks, dtype=grads.dtype, device=grads.device)  # (K, T)
        if self.method != "none":
            orders = visiting_orders(num_tasks, self.generator)
            if self.method == "pcgrad":
                coeffs, count = pcgrad_coefficients(gram, orders)
                weights = coeffs.sum(0).expand_as(weights)
            else:
                coeffs, self.targets, count = gradvac_coefficients(grams, self.targets, orders, self.beta)
                weights = coeffs.sum(1)  # the update: sum over tasks i of A_k[i] @ grads
            self.adjustments += count
        total = torch.empty(grads.shape[1], dtype=grads.dtype, device=grads.device)
        for k, start, end in self.runs:
            total[start:end] = weights[k] @ grads[:, start:end]
        for p, flat in zip(self.params, total.split(self.numels)):
            p.grad = flat.view_as(p).to(p.dtype)

    def pop_stats(self, task_names: list[str]) -> dict[str, float]:
        """Mean pairwise cosines and projections per step since the last call (for logging)."""
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
        return {"targets": self.targets.cpu(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.targets = state["targets"].to(self.targets.device)
        self.generator.set_state(state["generator"])
