"""Tolerances as data, and ``compare(value, reference) -> Comparison``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from jacverify.case import unravel
from jacverify.errors import InvalidArgument

__all__ = ["Reference", "Comparison", "Scales", "Tolerances", "compare", "tolerances", "DEFAULT_RTOL",
           "FD_SAFETY", "ROUNDING_SAFETY", "row_size"]

# NOTE [tolerances]
# An entry (s, m, ...) of sample (or vector) s and output m passes when
#   |value - ref| <= FD_SAFETY * err_ref + rtol * (|ref| + row_s_m + d_s_m) + ROUNDING_SAFETY * r_s
# - err_ref is the reference's own error bound at that entry (finite differences, NOTE
#   [finite-difference error estimate]; zero for the loop reference), doubled so that an estimate
#   that is right only to within a factor of two still never produces a false mismatch. It is what
#   finite differences can resolve there: an entry of 4e-18 computed from values of 4e-18 has an
#   error bound of ~1e-30, so a method that returns 0 there is wrong, and is flagged.
# - rtol is sqrt(eps) of the less precise of the two dtypes: rounding in a Jacobian grows like
#   (depth x sqrt(width)) eps, far below sqrt(eps) for any network we run (float32: 3.4e-4 against
#   about 1e-6 seen), while a wrong derivative formula (a dropped term, a wrong factor, another
#   sample's value) is off by O(1) relative to the entry it touches;
# - row_s_m is the size of what that entry was computed from: for a Jacobian or Hessian the
#   smaller of the largest |ref| in the same sample's output row (one backward pass computes the
#   row) and in its input column (one forward pass computes the column): an entry is summed from
#   products of the sizes of both, so a small column beside a large row -- weight (300, 0.1), the
#   0.1 entry zeroed -- is held to its own size; for a quantity mapped linearly from a
#   Jacobian (J v, vᵀJ) the sum of |J||v| over the terms it adds up (`Reference.magnitude`). So
#   entries that cancel to ~0 are held to the rounding of what they were summed from -- but only of
#   their own sample and output: the first round took max|ref| over the whole batch and every
#   output, and a wrong entry beside a large one passed (logsigmoid's second derivative at 40, which
#   torch 2.13 returns as 0 against -4.25e-18, beside the sample at -40; an O(1) output block with a
#   3x wrong backward beside a block at 1e9);
# - d_s_m = min(|f_m(x_s)|, |f_m(x_s) - mean_b f_m(x_b)|) / max(1, max|x_s|) is the derivative
#   scale output m of sample s implies: a Jacobian computed by cancelling values of that size (a
#   BatchNorm over two samples: float32 lost 8e-8 on entries of 9e-5 there) or that cancels to ~0
#   as a whole (LayerNorm of a near-constant vector: true J = 0, methods return 1e-21) is held to
#   the rounding of the values it was computed from, not to zero (per sample and output, so a
#   block of outputs at 1e9 does not excuse a wrong entry of an O(1) output). The distance from
#   the batch's mean, where smaller: a constant offset is no value any derivative is computed
#   from, and an energy with its reference energy (-40000 in float32) allowed 14 on O(1) entries,
#   where a check_method 50% off PASSED (a fresh user). Not at batch 1, nor where every sample's
#   output is the mean (a constant function: its Jacobian cancels to ~0 as a whole). The smaller,
#   never the centred value alone: logsigmoid at 40 (4e-18) beside samples at -40 and 1 would be
#   held to the others' size;
# - when the methods run in a less precise dtype than the references (float32 vs float64), the
#   case's own rounding is measured per sample: r_s = max |loop in float32 - loop in float64| over
#   sample s (the same formulas, so the difference is rounding alone), and ROUNDING_SAFETY x that
#   is allowed on top. sqrt(eps) assumes a well-conditioned Jacobian; this covers one computed by
#   cancellation (a BatchNorm over two samples: float32 loses 1e-3 relative there), but only up to
#   what rounding can explain (NOTE [plausible rounding]: a formula wrong only in float32 is not
#   rounding). A wrong formula found by the float64 loop itself is a finding that fails the check
#   in every dtype (NOTE [reference stage]).
# Users override rtol per dtype; the overrides are merged into these defaults, never replace them.
DEFAULT_RTOL: Mapping[torch.dtype, float] = {
    dt: torch.finfo(dt).eps ** 0.5
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
}
FD_SAFETY = 2.0
ROUNDING_SAFETY = 8.0


class Tolerances(dict):
    """The rtol per dtype (a dict), with ``gradcheck``'s two other knobs: ``atol``, an absolute
    allowance added to every entry's, and ``eps``, a finite-difference step replacing the one NOTE
    [finite-difference error estimate] chooses (None: that one)."""

    atol: float = 0.0
    eps: float | None = None

    def floored(self, precision: torch.dtype | None) -> Tolerances:
        """These tolerances, each rtol at least sqrt(eps) of ``precision``: the dtype a function
        computes in inside when coarser than its inputs' (NOTE [effective precision]); None: as
        they are.

        >>> t = tolerances().floored(torch.float16)
        >>> t[torch.float64] == t[torch.float16] == DEFAULT_RTOL[torch.float16]
        True
        """
        if precision is None:
            return self
        floor = torch.finfo(precision).eps ** 0.5
        out = Tolerances({dt: max(rtol, floor) for dt, rtol in self.items()})
        out.atol, out.eps = self.atol, self.eps
        return out


def tolerances(overrides: Mapping[torch.dtype, float] | float | None = None, *,
               atol: float = 0.0, eps: float | None = None) -> Tolerances:
    """The rtol per dtype: the defaults with ``overrides`` merged in (a plain number, as
    ``gradcheck``'s ``rtol``, applies to every dtype); ``atol`` and ``eps`` as ``gradcheck``'s.

    Args:
        overrides: None, a positive number, or {floating torch.dtype: positive number}.
        atol: an absolute error allowed on top of NOTE [tolerances]'s, for every entry (>= 0).
        eps: the finite-difference step for every input entry (> 0), or None for NOTE
            [finite-difference error estimate]'s own.

    Returns:
        A :class:`Tolerances`: {dtype: rtol} for float64, float32, float16, bfloat16 and any
        dtype overridden, with ``.atol`` and ``.eps``.

    Raises:
        InvalidArgument: a key that is not a floating dtype, a value that is not positive, a
            negative ``atol`` or a non-positive ``eps``.

    >>> tolerances({torch.float32: 1e-3})[torch.float32]
    0.001
    >>> t = tolerances(1e-3, atol=1e-6, eps=1e-4)
    >>> t[torch.float64], t.atol, t.eps
    (0.001, 1e-06, 0.0001)
    """
    from jacverify import validation

    if isinstance(overrides, Tolerances):  # already built: keep its atol and eps unless given
        atol = atol or overrides.atol
        eps = eps if eps is not None else overrides.eps
    merged = Tolerances(DEFAULT_RTOL)
    merged.atol = validation.check_number("atol", atol, positive=False)
    if merged.atol < 0:
        raise validation.invalid("atol", atol, "a number >= 0")
    merged.eps = None if eps is None else validation.check_number(
        "eps", eps, fix="the finite-difference step, or None for jacverify's own")
    if isinstance(overrides, (int, float)) and not isinstance(overrides, bool):
        overrides = dict.fromkeys(DEFAULT_RTOL, overrides)
    if overrides is not None and not isinstance(overrides, Mapping):
        raise InvalidArgument(
            f"rtol={overrides!r} (type={type(overrides).__name__}) must be a positive number or a "
            "mapping {torch.dtype: number}, e.g. rtol=1e-3 or rtol={torch.float32: 1e-3}")
    for dt, rtol in (overrides or {}).items():
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            raise InvalidArgument(f"tolerances key {dt!r} must be a floating torch.dtype")
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol > 0:
            raise InvalidArgument(f"tolerances[{dt}]={rtol!r} must be a positive number")
        merged[dt] = float(rtol)
    return merged


@dataclass(frozen=True)
class Reference:
    """A reference value (e.g. (B, M, N)) in float64 where possible, with its elementwise error
    bound and, for a quantity summed from others, the size of what each entry sums
    (NOTE [tolerances]; None: the largest |value| in the entry's row)."""

    name: str
    value: torch.Tensor
    error: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None


@dataclass(frozen=True)
class Scales:
    """Absolute scales of one check (NOTE [tolerances]): floats, or per-sample tensors of shape
    (B,) that broadcast along the reference's first axis."""

    rounding: float | torch.Tensor = 0.0  # max |loop in the case's dtype - loop in float64|, (B,)
    derivative: float | torch.Tensor = 0.0  # |f_m(x_s)| / max(1, max|x_s|), (B, M)


def row_size(r: torch.Tensor) -> torch.Tensor:
    """The size of what each entry was computed from (NOTE [tolerances]): the smaller of the
    largest |r| in its (sample, output) row and in its (sample, input) column, broadcast to ``r``'s
    shape (an entry of a 1- or 2-axis reference is its own size).

    >>> row_size(torch.tensor([[[1.0, -3.0], [0.5, 0.0]]])).tolist()
    [[[1.0, 3.0], [0.5, 0.5]]]
    """
    a = r.abs()
    if r.ndim <= 2:
        return a
    row = a.amax(dim=tuple(range(2, r.ndim)), keepdim=True)
    column = a.amax(dim=1, keepdim=True)
    return torch.minimum(row, column)


def _per_sample(scale: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A scale per sample (B,) or per sample and output (B, M), shaped to broadcast over ``like``
    (reduced over outputs where ``like``'s second axis is not the outputs)."""
    if not isinstance(scale, torch.Tensor):
        return float(scale)
    scale = scale.to(like)
    if scale.ndim == 0 or like.ndim == 0 or not scale.numel():
        return float(scale.max()) if scale.numel() else 0.0
    if scale.ndim == 2 and (like.ndim < 2 or like.shape[1] != scale.shape[1]):
        scale = scale.amax(1)
    return scale.reshape(*scale.shape, *([1] * (like.ndim - scale.ndim)))


def _largest(scale: float | torch.Tensor) -> float:
    return float(scale.max()) if isinstance(scale, torch.Tensor) and scale.numel() else float(scale)


@dataclass(frozen=True)
class Comparison:
    """How a value compares with one reference.

    ``max_rel_error`` is norm-wise: max |value - ref| / max |ref|. ``worst_index`` is the
    (sample, output, input) entry furthest over its tolerance (or nearest to it when all pass),
    where ``value_at_worst``, ``reference_at_worst`` and ``allowed_at_worst`` are read.
    """

    reference: str
    passed: bool
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...]
    value_at_worst: float
    reference_at_worst: float
    allowed_at_worst: float
    tolerance: str  # the rule applied, with its numbers (NOTE [tolerances])


def _lower(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    return a if torch.finfo(a).eps >= torch.finfo(b).eps else b


def compare(
    value: torch.Tensor,
    reference: Reference,
    dtype: torch.dtype,
    rtols: Mapping[torch.dtype, float] = DEFAULT_RTOL,
    rounding: float | torch.Tensor = 0.0,
    derivative_scale: float | torch.Tensor = 0.0,
) -> Comparison:
    """Compare ``value`` (computed in ``dtype``) with ``reference`` under NOTE [tolerances].

    >>> ref = Reference("loop", torch.ones(1, 2, 2, dtype=torch.float64))
    >>> compare(torch.ones(1, 2, 2), ref, torch.float32).passed
    True
    >>> c = compare(torch.ones(1, 2, 2) * 1.01, ref, torch.float32)
    >>> c.passed, round(c.max_rel_error, 4)
    (False, 0.01)
    """
    r = reference.value
    v = value.detach().to(device=r.device, dtype=r.dtype)
    dt = _lower(dtype, r.dtype)
    rtol = rtols.get(dt, DEFAULT_RTOL.get(dt, torch.finfo(dt).eps ** 0.5))
    scale = float(r.abs().max()) if r.numel() else 0.0
    row = reference.magnitude.to(r) if reference.magnitude is not None else row_size(r)
    allowed = rtol * (r.abs() + row + _per_sample(derivative_scale, r))
    if reference.error is not None:
        allowed = allowed + FD_SAFETY * reference.error.to(r)
    if _largest(rounding):
        allowed = allowed + ROUNDING_SAFETY * _per_sample(rounding, r)
    atol = getattr(rtols, "atol", 0.0)
    if atol:
        allowed = allowed + atol
    diff = (v - r).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    ratio = diff / allowed.clamp(min=torch.finfo(r.dtype).tiny)
    worst = unravel(ratio.argmax(), r.shape)
    max_abs = float(diff.max())
    row_name = ("sum |J||v| of the entry" if reference.magnitude is not None
                else "max|ref| of its row or column, the smaller")
    d = derivative_scale
    per = isinstance(d, torch.Tensor) and d.numel() > 1
    d_term = (" + d of its sample and output" if d.ndim == 2 else " + d of its sample") if per \
        else f" + {_largest(d):.2g}" if _largest(d) else ""
    rule = f"|value - ref| <= rtol * (|ref| + {row_name}{d_term})"
    rule += f" + {FD_SAFETY:g} * fd_error" if reference.error is not None else ""
    rule += (f" + {ROUNDING_SAFETY:g} * measured rounding (up to {_largest(rounding):.2g})"
             if _largest(rounding) else "")
    rule += f" + atol {atol:.2g}" if atol else ""
    # a default of another dtype where the function computes in that one (Tolerances.floored)
    named = next((d for d in (dt, *DEFAULT_RTOL) if DEFAULT_RTOL.get(d) == rtol), None)
    source = f"sqrt(eps) of {named}" if named else f"override of {dt}"
    rule += f", rtol={rtol:.2g} ({source.replace('torch.', '')})"
    return Comparison(
        reference=reference.name,
        passed=bool((diff <= allowed).all()),
        max_abs_error=max_abs,
        max_rel_error=max_abs / scale if scale else max_abs,
        worst_index=worst,  # type: ignore[arg-type]
        value_at_worst=float(v[worst]),
        reference_at_worst=float(r[worst]),
        allowed_at_worst=float(allowed[worst]),
        tolerance=rule,
    )
