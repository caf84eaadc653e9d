"""The one registry of quantities: what each is, its shape, its references, how it is checked.

The CLI's ``--quantity`` choices, the strategies' ``cases(quantity=...)``, the method registry's
keys and :func:`jacverify.quantities.check_quantity` all read this table. Importing it does not
import torch (``jacverify --help`` lists the quantities).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from jacverify.errors import InvalidArgument

__all__ = ["Quantity", "QUANTITIES", "QUANTITY_NAMES", "STANDALONE", "get_quantity",
           "get_standalone"]


@dataclass(frozen=True)
class Quantity:
    """One quantity.

    Attributes:
        name: the key (``--quantity``, ``Method.quantity``, ``Report.quantity``).
        summary: what it is, in the field's terms.
        shape: the shape a method returns, in the canonical form (B samples, M outputs, N
            inputs, K vectors).
        references: what it is judged against.
        check: the public check function (a name in ``jacverify``).
        vectors: what vectors it needs: ``"tangent"`` (K, *in) at a point, ``"cotangent"``
            (K, *out) at a point, ``"per_sample_tangent"`` (one per sample, like x), or None.
        second_order: a second derivative (networks must be twice differentiable).
        standalone: checked for any function and inputs (``jacverify check --quantity``, the
            network fuzzer); False for quantities that need more (parameters and targets) or
            exist only to check a user's own code.
    """

    name: str
    summary: str
    shape: str
    references: str
    check: str
    vectors: str | None = None
    second_order: bool = False
    standalone: bool = True

    @property
    def at_point(self) -> bool:
        """Evaluated at one point (the first sample of a batch), not per sample."""
        return self.vectors in ("tangent", "cotangent")


QUANTITIES: dict[str, Quantity] = {q.name: q for q in (
    Quantity("batch_jacobian", "per-sample Jacobians J[b] = d f(x)[b] / d x[b]", "(B, M, N)",
             "float64 finite differences and the float64 loop", "check"),
    Quantity("jvp_set", "J v_i at one point for K tangents", "(K, M)",
             "the verified Jacobian times each vector, and directional finite differences",
             "check_jvps", vectors="tangent"),
    Quantity("vjp_set", "vᵀ_i J at one point for K cotangents", "(K, N)",
             "the adjoint identity through the verified Jacobian", "check_vjps",
             vectors="cotangent"),
    Quantity("per_sample_jvp", "J_b v_b, one tangent per sample", "(B, M)",
             "the verified Jacobian per sample, and per-sample directional finite differences",
             "check_per_sample_jvps", vectors="per_sample_tangent"),
    Quantity("hessian", "per-sample Hessians of each output", "(B, M, N, N)",
             "finite differences of the verified first derivative; symmetry", "check_hessians",
             second_order=True),
    Quantity("hessian_diagonal", "d²y_m / dx_k² per sample (the u_xx of physics-informed code)",
             "(B, M, N)", "the diagonal of the finite-difference Hessian",
             "check_hessian_diagonals", second_order=True),
    Quantity("jacobian_and_hessian_diagonal",
             "(u_x, u_xx) returned together, as physics-informed code does",
             "((B, M, N), (B, M, N))", "the verified Jacobian and the Hessian's diagonal",
             "check_method", second_order=True, standalone=False),
    Quantity("per_sample_grad",
             "per-sample gradients of a per-sample loss with respect to every parameter",
             "(B, *p.shape) per parameter",
             "float64 finite differences per sample and parameter entry, and the loop",
             "check_per_sample_grads", standalone=False),
)}
QUANTITY_NAMES: tuple[str, ...] = tuple(QUANTITIES)
STANDALONE: tuple[str, ...] = tuple(q.name for q in QUANTITIES.values() if q.standalone)


def get_quantity(name: object) -> Quantity:
    """The registered quantity ``name``.

    Raises:
        InvalidArgument: no such quantity; the message gives the closest name.

    >>> get_quantity("hessian").shape
    '(B, M, N, N)'
    """
    if name not in QUANTITIES:
        close = difflib.get_close_matches(str(name), QUANTITY_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InvalidArgument(f"quantity={name!r} (type={type(name).__name__}) is not one of "
                              f"{', '.join(QUANTITY_NAMES)}{hint}")
    return QUANTITIES[name]  # type: ignore[index]


def get_standalone(name: object) -> Quantity:
    """:func:`get_quantity`, refusing a quantity that cannot be checked from a function and inputs.

    Raises:
        InvalidArgument: unknown, or not standalone (the message says where it is checked).
    """
    q = get_quantity(name)
    if not q.standalone:
        raise InvalidArgument(f"quantity={name!r} is checked through jacverify.{q.check}, not from "
                              f"a function and inputs alone; use one of {', '.join(STANDALONE)}")
    return q
