"""Batching rules to fuzz: correct ones, and a broken twin for each way a rule goes wrong.

Every rule here batches ``f(x) = x * x.sum(-1, keepdim=True)`` (a per-sample reduction over the last
axis, so a rule that reduces over the wrong axis, or over the batch, changes the values) or a
two-argument variant; ``jacverify fuzz-rules jacverify/examples/rules.py`` fuzzes them all.
"""

from __future__ import annotations

import torch


def _f(x: torch.Tensor) -> torch.Tensor:
    return x * x.sum(-1, keepdim=True)


class _RowScaled(torch.autograd.Function):
    """f with its derivatives; subclasses differ only in the vmap rule."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _f(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.sum(-1, keepdim=True) + (g * x).sum(-1, keepdim=True)

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * x.sum(-1, keepdim=True) + x * t.sum(-1, keepdim=True)


def _batch_first(x: torch.Tensor, d: int | None) -> torch.Tensor:
    return x if d is None else x.movedim(d, 0)


class RowScaled(_RowScaled):
    """Correct: moves the batch to the front (the per-sample axes keep their negative indices)."""

    @staticmethod
    def vmap(info, in_dims, x):
        return _f(_batch_first(x, in_dims[0])), 0


class RowScaledOutLast(_RowScaled):
    """Correct: computes with the batch in front, and says so after moving it last."""

    @staticmethod
    def vmap(info, in_dims, x):
        return _f(_batch_first(x, in_dims[0])).movedim(0, -1), -1


class RowScaledGenerated(_RowScaled):
    """Correct: torch writes the rule from the forward (generate_vmap_rule=True)."""

    generate_vmap_rule = True


class IgnoresInDim(_RowScaled):
    """Broken: assumes the batch is at axis 0 whatever in_dims says."""

    @staticmethod
    def vmap(info, in_dims, x):
        return _f(x), 0


class WrongOutDim(_RowScaled):
    """Broken: computes with the batch in front but reports it at the input's batch axis."""

    @staticmethod
    def vmap(info, in_dims, x):
        return _f(_batch_first(x, in_dims[0])), in_dims[0]


class MixesSamples(_RowScaled):
    """Broken: the reduction also runs over the batch (x * sum over every sample's row)."""

    @staticmethod
    def vmap(info, in_dims, x):
        x = _batch_first(x, in_dims[0])
        return x * x.sum((0, -1), keepdim=True), 0


class ContiguousOnly(_RowScaled):
    """Broken: walks the raw memory as if the input were contiguous (right only when it is)."""

    @staticmethod
    def vmap(info, in_dims, x):
        x = _batch_first(x, in_dims[0])
        strides = torch.empty(x.shape).stride()  # the strides a contiguous x would have
        return _f(torch.as_strided(x, x.shape, strides)), 0


@torch.library.custom_op("jacverify_examples::row_scaled", mutates_args=())
def row_scaled(x: torch.Tensor) -> torch.Tensor:
    """A torch.library custom op for f, with a correct vmap rule (below)."""
    return _f(x)


@row_scaled.register_vmap
def _row_scaled_vmap(info, in_dims, x):
    return row_scaled(_batch_first(x, in_dims[0])), 0


@torch.library.custom_op("jacverify_examples::scaled_by", mutates_args=())
def scaled_by(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """x * alpha * y.sum(-1, keepdim=True): two tensors and a scalar, with a correct rule."""
    return x * alpha * y.sum(-1, keepdim=True)


@scaled_by.register_vmap
def _scaled_by_vmap(info, in_dims, x, y, alpha):
    # Batch first on both, then pad the per-sample shapes to one rank so that they broadcast as
    # the per-sample ones do (from the right) without the batch axis joining in.
    xd, yd = in_dims[:2]  # (alpha's in_dim is None: scalars are never batched)
    rank = max(x.ndim - (xd is not None), y.ndim - (yd is not None))
    x, y = (t.movedim(d, 0) if d is not None else t.expand(info.batch_size, *t.shape)
            for t, d in ((x, xd), (y, yd)))
    x, y = (t.reshape(t.shape[0], *[1] * (rank + 1 - t.ndim), *t.shape[1:]) for t in (x, y))
    return scaled_by(x, y, alpha), 0


@torch.library.custom_op("jacverify_examples::row_scaled_mixing", mutates_args=())
def row_scaled_mixing(x: torch.Tensor) -> torch.Tensor:
    """f again, as a custom op whose rule is broken: it normalises by the batch's total."""
    return _f(x)


@row_scaled_mixing.register_vmap
def _row_scaled_mixing_vmap(info, in_dims, x):
    x = _batch_first(x, in_dims[0])
    return x * x.sum(-1, keepdim=True).mean(0, keepdim=True), 0


CORRECT_FUNCTIONS = (RowScaled, RowScaledOutLast, RowScaledGenerated)
BROKEN_FUNCTIONS = (IgnoresInDim, WrongOutDim, MixesSamples, ContiguousOnly)
CORRECT_OPS = ("jacverify_examples::row_scaled", "jacverify_examples::scaled_by")
BROKEN_OPS = ("jacverify_examples::row_scaled_mixing",)
