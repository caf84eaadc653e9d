"""Typed results of a check and their renderings: a rich table, a failure message, JSON."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

import torch

from jacverify.case import Case, Flat
from jacverify.compare import Comparison
from jacverify.oracles import Coupling

__all__ = ["MethodResult", "Report", "Status"]

Status = Literal["agree", "mismatch", "not_applicable", "unsupported"]
_STYLE = {"agree": "green", "mismatch": "bold red", "not_applicable": "yellow", "unsupported": "magenta"}


@dataclass(frozen=True)
class MethodResult:
    """One method on one case: its status, its comparisons with the references, its time.

    ``comparisons`` are against the trusted references and decide the status; ``untrusted`` are
    against a reference shown for information only (the loop, when it disagreed with finite
    differences). ``reason`` says why a method is ``not_applicable`` or ``unsupported`` (the error
    it raised), or what was wrong with a result of the wrong shape.
    """

    method: str
    quantity: str
    mode: str
    vectorized: bool
    status: Status
    comparisons: tuple[Comparison, ...] = ()
    reason: str | None = None
    time_s: float | None = None
    untrusted: tuple[Comparison, ...] = ()

    @property
    def worst(self) -> Comparison | None:
        """The comparison that decided the status: the first failing one, else the closest call."""
        failing = [c for c in self.comparisons if not c.passed]
        if failing:
            return failing[0]
        return max(self.comparisons, key=lambda c: c.max_abs_error / max(c.allowed_at_worst, 1e-300),
                   default=None)

    @property
    def max_abs_error(self) -> float | None:
        return self.worst.max_abs_error if self.worst else None

    @property
    def max_rel_error(self) -> float | None:
        return self.worst.max_rel_error if self.worst else None

    @property
    def worst_index(self) -> tuple[int, ...] | None:
        return self.worst.worst_index if self.worst else None


@dataclass(frozen=True)
class Report:
    """Everything a check found. ``str(report)`` is a table; ``report.passed`` has no mismatch.

    Attributes:
        case: what was checked (its repr re-creates it).
        results: one per method, in registry order.
        trusted: the references methods were judged against, most trusted first.
        coupling: what the batch-coupling check found.
        reference: the trusted per-sample Jacobian, (B, M, N) in ``reference_dtype``.
        notes: what the reader must know to read the table (which reference, and why).
    """

    case: Case
    results: tuple[MethodResult, ...]
    trusted: tuple[str, ...]
    coupling: Coupling
    reference: torch.Tensor
    reference_dtype: torch.dtype
    notes: tuple[str, ...] = ()
    flat: Flat | None = field(default=None, repr=False, compare=False)
    quantity: str = "batch_jacobian"
    index_labels: tuple[str, ...] = ("sample", "output", "input")
    scaling: tuple[tuple[str, tuple[tuple[int, float], ...]], ...] = ()  # method -> (K, seconds)
    verification: str = "full"  # or "projection (K probes)": see check(verification=)

    @property
    def passed(self) -> bool:
        """True when no method disagrees with the trusted references."""
        return not self.mismatches

    @property
    def mismatches(self) -> tuple[MethodResult, ...]:
        return tuple(r for r in self.results if r.status == "mismatch")

    @property
    def fastest(self) -> str | None:
        """The fastest method that agrees, or None."""
        agreeing = [r for r in self.results if r.status == "agree" and r.time_s is not None]
        return min(agreeing, key=lambda r: r.time_s).method if agreeing else None  # type: ignore

    def __getitem__(self, method: str) -> MethodResult:
        for r in self.results:
            if r.method == method:
                return r
        raise KeyError(f"no result for method {method!r}; ran {[r.method for r in self.results]}")

    @property
    def hint(self) -> str | None:
        """A likely cause, from which families of methods disagree and which agree."""
        bad = self.mismatches
        good = [r for r in self.results if r.status == "agree"]
        if not bad or not good:
            return None
        if all(r.mode == "reverse" for r in bad) and any(r.mode == "forward" for r in good):
            return ("only reverse-mode methods disagree: a backward formula is wrong (a custom "
                    "autograd.Function's backward, or an op's derivative formula)")
        if all(r.mode == "forward" for r in bad) and any(r.mode == "reverse" for r in good):
            return ("only forward-mode methods disagree: a jvp formula is wrong (a custom "
                    "autograd.Function's jvp, or an op's forward-AD formula)")
        if all(r.vectorized for r in bad) and any(not r.vectorized for r in good):
            return ("only vmap-based methods disagree: a batching rule is wrong (an "
                    "autograd.Function's vmap staticmethod, or a register_vmap rule)")
        return None

    def describe(self, result: MethodResult) -> str:
        """A paragraph on one method's result, with the worst entry in the user's shapes."""
        head = f"{result.method} ({result.mode}{', vmap' if result.vectorized else ''}): {result.status}"
        if result.reason:
            head += f" -- {result.reason}"
        c = result.worst
        if c is None:
            return head
        where = (self.flat.describe_index(c.worst_index, self.index_labels) if self.flat
                 else str(c.worst_index))
        return (
            f"{head}\n  against {c.reference}: max abs error {c.max_abs_error:.3g}, max rel error "
            f"{c.max_rel_error:.3g}; worst entry {c.worst_index} ({where}): "
            f"value {c.value_at_worst:.10g}, reference {c.reference_at_worst:.10g}, "
            f"allowed error {c.allowed_at_worst:.3g}\n  tolerance: {c.rule}"
        )

    def failure_message(self) -> str:
        """What a failing test shows: each mismatch in full, the case, the seed, the hint."""
        lines = [f"jacverify: {len(self.mismatches)} method(s) disagree with the "
                 f"{' and '.join(self.trusted)} reference on {self.quantity}"]
        lines += [self.describe(r) for r in self.mismatches]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"case: {self.case!r}")
        lines.append(f"seed: {self.case.seed}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-ready summary (the schema is in the README)."""
        return {
            "quantity": self.quantity,
            "case": repr(self.case),
            "input_shapes": [list(t.shape) for t in self.case.inputs],
            "dtype": str(self.case.dtype).removeprefix("torch."),
            "device": str(self.case.device),
            "seed": self.case.seed,
            "coupled": self.coupling.coupled,
            "coupling": self.coupling.reason,
            "trusted": list(self.trusted),
            "verification": self.verification,
            "passed": self.passed,
            "fastest": self.fastest,
            "notes": list(self.notes),
            "scaling": {m: [[k, t] for k, t in points] for m, points in self.scaling},
            "results": [
                {
                    "method": r.method,
                    "quantity": r.quantity,
                    "mode": r.mode,
                    "vectorized": r.vectorized,
                    "status": r.status,
                    "max_abs_error": r.max_abs_error,
                    "max_rel_error": r.max_rel_error,
                    "worst_index": list(r.worst_index) if r.worst_index else None,
                    "reason": r.reason,
                    "time_s": r.time_s,
                }
                for r in self.results
            ],
        }

    def table(self):
        """The results as a ``rich.table.Table``."""
        from rich.table import Table

        loop = next((r.time_s for r in self.results if r.method == "loop" and r.time_s), None)
        t = Table(title=f"jacverify: {self.quantity} of {self._title()}")
        for col in ("method", "mode", "status", "max abs err", "max rel err", "worst entry",
                    "time", "vs loop"):
            t.add_column(col, justify="right" if col in ("time", "vs loop") else "left",
                         no_wrap=True)
        for r in self.results:
            mode = r.mode + (" vmap" if r.vectorized else "")
            status = f"[{_STYLE[r.status]}]{r.status}[/]"
            err = (lambda v: "" if v is None else f"{v:.2g}")
            worst = "" if r.worst_index is None else str(r.worst_index)
            time = "" if r.time_s is None else f"{r.time_s * 1e3:.2f} ms"
            speed = "" if not (loop and r.time_s) else f"{loop / r.time_s:.1f}x"
            t.add_row(r.method, mode, status, err(r.max_abs_error), err(r.max_rel_error), worst,
                      time, speed)
        return t

    def _title(self) -> str:
        fn = self.case.fn
        name = getattr(fn, "__name__", None) or type(fn).__name__
        shapes = ", ".join(str(tuple(t.shape)) for t in self.case.inputs)
        return f"{name} on {shapes} {str(self.case.dtype).removeprefix('torch.')}"

    def render(self, width: int = 120, color: bool = False) -> str:
        """The table, the notes and every mismatch in full, as text."""
        from rich.console import Console

        buf = io.StringIO()
        console = Console(file=buf, width=width, force_terminal=color, color_system="auto" if color else None)
        console.print(self.table())
        for line in self.footer_lines():
            console.print(line, highlight=False, markup=False)
        return buf.getvalue().rstrip()

    def footer_lines(self) -> list[str]:
        """The lines under the table: references, coupling, notes, non-agreeing methods, verdict."""
        lines = [f"reference: {' and '.join(self.trusted)} "
                 f"(computed in {str(self.reference_dtype).removeprefix('torch.')})"]
        if self.coupling.coupled:
            lines.append(f"batch coupling: {self.coupling.reason}")
        lines += [f"note: {n}" for n in self.notes]
        lines += [self.describe(r) for r in self.results if r.status != "agree"]
        if self.scaling:
            lines.append("time against the number of vectors K:")
            lines += [f"  {m}: " + ", ".join(f"K={k} {t * 1e3:.2f} ms" for k, t in points)
                      for m, points in self.scaling]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.mismatches)} mismatch)"
        lines.append(f"{verdict}; fastest agreeing method: {self.fastest}; seed={self.case.seed}")
        return lines

    def __str__(self) -> str:
        return self.render()
