"""Tolerances as data, and ``compare(value, reference) -> Comparison``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from jacverify.errors import InvalidArgument

__all__ = ["Reference", "Comparison", "compare", "tolerances", "DEFAULT_RTOL", "FD_SAFETY",
           "ROUNDING_SAFETY"]

# NOTE [tolerances]
# An entry passes when |value - ref| <= FD_SAFETY * err_ref + rtol * (|ref| + max|ref| + d):
# - err_ref is the reference's own error bound (finite differences, NOTE [finite-difference
#   error estimate]; zero for the loop reference), doubled so that an estimate that is right only
#   to within a factor of two still never produces a false mismatch;
# - rtol is sqrt(eps) of the less precise of the two dtypes: rounding in a Jacobian grows like
#   (depth x sqrt(width)) eps, far below sqrt(eps) for any network we run (float32: 3.4e-4 against
#   about 1e-6 seen), while a wrong derivative formula (a dropped term, a wrong factor, another
#   sample's value) is off by O(1) relative to the entry it touches;
# - the max|ref| term makes the rule norm-wise: entries that cancel to ~0 are held to the rounding
#   of the large entries they were computed from, not to their own tiny size;
# - d = max|f(x)| / max(1, max|x|) is the derivative scale the function's own size implies: a
#   Jacobian that cancels to ~0 as a whole (LayerNorm of a near-constant vector: true J = 0, methods
#   return 1e-21) is held to the rounding of the values it was computed from, not to zero.
# - when the methods run in a less precise dtype than the references (float32 vs float64), the
#   case's own rounding is measured: `rounding` = max |loop in float32 - loop in float64| (the same
#   formulas, so the difference is rounding alone), and ROUNDING_SAFETY x that is allowed on top.
#   sqrt(eps) assumes a well-conditioned Jacobian; this covers one computed by cancellation (a
#   BatchNorm over two samples: float32 loses 1e-3 relative there). The cost: the float32 loop
#   itself cannot be flagged for a bug that appears only in float32 (float64 runs are unaffected).
# Users override rtol per dtype; the overrides are merged into these defaults, never replace them.
DEFAULT_RTOL: Mapping[torch.dtype, float] = {
    dt: torch.finfo(dt).eps ** 0.5
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
}
FD_SAFETY = 2.0
ROUNDING_SAFETY = 8.0


def tolerances(overrides: Mapping[torch.dtype, float] | None = None) -> dict[torch.dtype, float]:
    """The rtol per dtype: the defaults with ``overrides`` merged in.

    >>> tolerances({torch.float32: 1e-3})[torch.float32]
    0.001
    """
    merged = dict(DEFAULT_RTOL)
    for dt, rtol in (overrides or {}).items():
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            raise InvalidArgument(f"tolerances key {dt!r} must be a floating torch.dtype")
        if not isinstance(rtol, (int, float)) or not rtol > 0:
            raise InvalidArgument(f"tolerances[{dt}]={rtol!r} must be a positive number")
        merged[dt] = float(rtol)
    return merged


@dataclass(frozen=True)
class Reference:
    """A reference value (e.g. (B, M, N)) in float64 where possible, with its elementwise error bound."""

    name: str
    value: torch.Tensor
    error: torch.Tensor | None = None


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
    rule: str


def _lower(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    return a if torch.finfo(a).eps >= torch.finfo(b).eps else b


def compare(
    value: torch.Tensor,
    reference: Reference,
    dtype: torch.dtype,
    rtols: Mapping[torch.dtype, float] = DEFAULT_RTOL,
    rounding: float = 0.0,
    derivative_scale: float = 0.0,
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
    allowed = rtol * (r.abs() + scale + derivative_scale)
    if reference.error is not None:
        allowed = allowed + FD_SAFETY * reference.error.to(r)
    if rounding:
        allowed = allowed + ROUNDING_SAFETY * rounding
    diff = (v - r).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    ratio = diff / allowed.clamp(min=torch.finfo(r.dtype).tiny)
    worst = tuple(int(i) for i in torch.unravel_index(ratio.argmax(), r.shape))
    max_abs = float(diff.max())
    rule = "|value - ref| <= rtol * (|ref| + max|ref|"
    rule += f" + {derivative_scale:.2g})" if derivative_scale else ")"
    rule += f" + {FD_SAFETY:g} * fd_error" if reference.error is not None else ""
    rule += f" + {ROUNDING_SAFETY:g} * {rounding:.2g} (measured rounding)" if rounding else ""
    source = "sqrt(eps)" if rtol == DEFAULT_RTOL.get(dt) else "override"
    rule += f", rtol={rtol:.2g} ({source} of {str(dt).removeprefix('torch.')})"
    return Comparison(
        reference=reference.name,
        passed=bool((diff <= allowed).all()),
        max_abs_error=max_abs,
        max_rel_error=max_abs / scale if scale else max_abs,
        worst_index=worst,  # type: ignore[arg-type]
        value_at_worst=float(v[worst]),
        reference_at_worst=float(r[worst]),
        allowed_at_worst=float(allowed[worst]),
        rule=rule,
    )
