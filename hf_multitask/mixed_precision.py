"""Gradient surgery and the non-finite-loss guard under a loss-scaling `GradScaler` (fp16 autocast on a GPU).

With `fp16=True` on a GPU, accelerate scales every loss by S before its backward (`accelerator.backward`:
`scaler.scale(loss).backward()`), so every `.grad`, and each row of the surgery's `[T, P]` buffer, holds S g. At the
optimizer step the Trainer's gradient clipping calls `scaler.unscale_(optimizer)`, which divides every optimizer
gradient by S once and records whether any is inf or NaN; `scaler.step` then skips `optimizer.step()` if one was,
and `scaler.update()` lowers S (halves it) after such a step, or raises it after `growth_interval` good ones.

Two things go wrong if the grouped step ignores the scaler, and [`combine_unscaled`] fixes both:

- The aggregator would see S g. The built-in methods are homogeneous of degree 1 (c g gives c times the update),
  so the update after `unscale_` is the same up to rounding; a registered method of degree 0 (an update whose size
  does not depend on the gradients') would come out S times too small. [`combine_unscaled`] divides the buffer by S
  first, combines the unscaled rows, and multiplies the update written into `.grad` by S again, so that the
  scaler's one `unscale_` of all the optimizer's gradients (heads' and PALs' `.grad` are still S g) leaves exactly
  the aggregator's update of the unscaled gradients: S is a power of two (2**16 at the start, halved or doubled
  since), so both multiplications are exact in float32. (The alternative, unscaling these gradients and keeping
  the scaler from doing it again, needs the scaler's private per-optimizer state.)
- An overflow (S g = inf in some gradient, a normal event that lowers S) would reach the aggregator and advance
  its state (GradVac's EMA targets, the visiting orders' generator) for a step that the scaler then skips. With an
  inf or NaN anywhere in the buffer or the other gradients, [`combine_unscaled`] leaves the aggregator alone and
  writes the plain sum of the rows into `.grad` (inf or NaN where a row is), as a step without surgery would: the
  scaler finds it, skips the step and lowers S.

The non-finite-loss guard looks at losses, which `accelerator.backward` scales internally: a scaler's overflow
(finite loss, inf gradient) is not a non-finite loss and is left to the scaler. When the guard does skip a step for
a NaN or inf loss it drops every gradient; under a scaler, [`drop_gradients`] leaves one NaN gradient instead,
because `scaler.step` refuses an optimizer whose `unscale_` saw no gradient at all.

bf16 autocast (and fp16 on a CPU, which accelerate 1.15 turns off without a word) has no scaler: every function
here then does what the step did without it. The buffer and the gradients of the float32 parameters are float32
under any autocast.
"""

from __future__ import annotations

import torch


def active_scaler(accelerator) -> torch.amp.GradScaler | None:
    """The accelerator's `GradScaler` when it scales the losses (fp16 on a GPU), else `None` (fp32, bf16, fp16 on a
    CPU: accelerate 1.15 creates no scaler there)."""
    scaler = getattr(accelerator, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite (one host sync for all of them)."""
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def combine_unscaled(surgery, scaler: torch.amp.GradScaler | None, model: torch.nn.Module) -> bool:
    """At an optimizer step of the grouped step: the surgery's update of the unscaled per-task gradients into the
    shared parameters' `.grad`, scaled as the scaler expects; returns whether the aggregator ran.

    Without a scaler this is `surgery.combine()`. With one (see the module docstring): when the buffer `[T, P]` and
    the other gradients (heads, PALs: `model`'s `.grad`s; the shared ones were moved into the buffer) are finite,
    the buffer is divided by S, combined, and the update `(P,)` multiplied by S; otherwise the aggregator is not run
    (its state stays as it was) and `.grad` gets the plain sum of the rows, whose inf or NaN makes the scaler skip
    the step. Call it after the cross-rank average, so that every rank takes the same branch. Autocast is off inside:
    accelerate autocasts only the model's forward, but a caller's autocast around the step would otherwise compute the
    Gram matrices in fp16 or bf16.

    Args:
        surgery: The [`GradientSurgery`] whose buffer holds the step's scaled per-task gradients.
        scaler: [`active_scaler`] of the accelerator.
        model: The model being trained (its `.grad`s other than the shared parameters').
    """
    if not surgery.params:
        return False
    # Gram matrices in float32 even within a caller's autocast (in fp16 they overflow at a gradient norm of 256)
    with torch.autocast(surgery.buffer.device.type, enabled=False):
        return _combine(surgery, scaler, model)


def _combine(surgery, scaler: torch.amp.GradScaler | None, model: torch.nn.Module) -> bool:
    if scaler is None:
        surgery.combine()
        return True
    others = [p.grad for p in model.parameters() if p.grad is not None]
    if not all_finite([surgery.buffer, *others]):
        torch.sum(surgery.buffer, dim=0, out=surgery.total)  # (P,): inf or NaN where a row is
        for p, flat in zip(surgery.params, surgery.total.split(surgery.numels)):
            p.grad = flat.view_as(p).to(p.dtype)
        return False
    scale = scaler.get_scale()  # a power of two: dividing and multiplying by it is exact
    surgery.buffer.div_(scale)
    surgery.combine()
    torch._foreach_mul_([p.grad for p in surgery.params], scale)
    return True


def drop_gradients(model: torch.nn.Module, scaler: torch.amp.GradScaler | None) -> None:
    """Set every gradient of `model` to `None`, so that the optimizer leaves its weights and moments alone (AdamW
    skips parameters without `.grad`; zeroed gradients would still move them).

    Under a scaler, `scaler.step` asserts that `unscale_` checked at least one gradient ("No inf checks were
    recorded for this optimizer"), so the first parameter that had a gradient gets a NaN one: the scaler skips
    `optimizer.step()` as for an overflow, and also halves its scale once.
    """
    first = next((p for p in model.parameters() if p.grad is not None), None)
    model.zero_grad(set_to_none=True)
    if scaler is not None and first is not None:
        first.grad = torch.full_like(first, float("nan"))
