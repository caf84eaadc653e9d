"""Typed results of a check and their renderings: a rich table, a failure message, JSON."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field

import torch

from jacverify.case import Case, Flat
from jacverify.compare import Reference, compare
from jacverify.oracles import GRAPH_CUT, TANGENT_DROPPED, Coupling

from jacverify.judge import WRONG, MethodResult, Status, Verdict, describe_worst, verdict
from jacverify.methods import is_builtin

__all__ = ["MethodResult", "Report", "Status", "Verdict"]


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
    findings: tuple[str, ...] = ()  # wrong derivatives the references found on their own
    required: tuple[str, ...] = ()  # methods that must themselves agree (check_method's own)
    unresolved: str | None = None  # why the references pinned down nothing (then UNVERIFIED)

    @property
    def verdict(self) -> Verdict:
        """passed, failed or unverified: NOTE [earned verdict] in :mod:`jacverify.judge`."""
        return verdict(self.results, required=self.required, findings=self.findings,
                       unresolved=self.unresolved)

    @property
    def passed(self) -> bool:
        """True only when at least one method was verified and nothing disagreed."""
        return self.verdict == Verdict.PASSED

    @property
    def verified(self) -> tuple[MethodResult, ...]:
        """The methods that agreed with the trusted references."""
        return tuple(r for r in self.results if r.verified)

    @property
    def mismatches(self) -> tuple[MethodResult, ...]:
        return tuple(r for r in self.results if r.status in WRONG)

    def raise_unless_passed(self) -> None:
        """Raise :class:`~jacverify.MismatchError` when failed, :class:`~jacverify.NotVerified`
        when unverified; return None when passed."""
        from jacverify.errors import MismatchError, NotVerified

        v = self.verdict
        if v == Verdict.FAILED:
            raise MismatchError(self.failure_message(), self)
        if v == Verdict.UNVERIFIED:
            raise NotVerified(self.failure_message(), self)

    @property
    def fastest(self) -> str | None:
        """The fastest method that agrees, or None (a route of NOTE [route probes] computes
        projections, not the quantity: never the fastest). None when the references pinned down
        nothing (``unresolved``): there, agreeing says nothing."""
        agreeing = [r for r in self.results if r.status == "agree" and r.time_s is not None
                    and r.quantity != "route" and not self.unresolved]
        return min(agreeing, key=lambda r: r.time_s).method if agreeing else None  # type: ignore

    def __getitem__(self, method: str) -> MethodResult:
        for r in self.results:
            if r.method == method:
                return r
        raise KeyError(f"no result for method {method!r}; ran {[r.method for r in self.results]}")

    @functools.cached_property
    def hint(self) -> str | None:
        """A likely culprit, named only where the evidence separates it (NOTE [hints])."""
        bad = self.mismatches
        good = self.verified
        loop_trusted = "loop" in self.trusted
        if not bad and not self.findings:
            return None
        if any(f.startswith(GRAPH_CUT) for f in self.findings):
            return ("autograd cannot see the function's computation (torch.no_grad(), .detach() "
                    "or a round trip outside torch inside it): what reverse mode answers is not "
                    "its derivative, and no backward formula is to blame")
        user = [r.method for r in bad if r.mode == "user"
                or (r.quantity != "route" and not is_builtin(r.method, r.quantity))]
        # a second-order reference is finite differences of the float64 loop, built only once the
        # loop agreed with finite differences: the references agree with each other there too
        second_order = "fd_of_jacobian" in self.trusted and not self.findings
        if user and len(user) == len(bad) and (good or loop_trusted or second_order):
            return (f"{', '.join(user)} (your own code) disagrees with the references, which agree "
                    f"with each other{' and with the float64 loop' if loop_trusted else ''}: the "
                    f"error is in {', '.join(user)}, not in torch or the function")
        if all(r.mode == "reverse" for r in bad) and any(r.mode == "forward" for r in good):
            if loop_trusted:
                return ("only reverse-mode methods disagree, while the float64 loop (the same "
                        "backward formulas) agrees with finite differences: the disagreeing methods "
                        "are wrong in what they add (a batching rule, the independent-samples "
                        "assumption, their dtype), not in the function's backward formulas")
            return ("only reverse-mode methods disagree: a backward formula is wrong (a custom "
                    "autograd.Function's backward, or an op's derivative formula)"
                    + ("; the float64 loop, which uses nothing but backward formulas, disagrees "
                       "with finite differences, which use none" if self.findings else ""))
        if self.findings:
            return ("a backward formula is wrong: the float64 loop, which uses nothing but backward "
                    "formulas, disagrees with finite differences, which use none")
        if all(r.mode == "forward" for r in bad) and any(r.mode == "reverse" for r in good):
            if any(n.startswith(TANGENT_DROPPED) for n in self.notes):
                return ("only forward-mode methods disagree, and forward mode drops the tangent "
                        "(see the notes): an op has no forward-AD formula and torch answers zeros "
                        "for it rather than raising; no jvp formula is wrong")
            return ("only forward-mode methods disagree: a jvp formula is wrong (a custom "
                    "autograd.Function's jvp, or an op's forward-AD formula)")
        if all(r.vectorized for r in bad) and any(not r.vectorized for r in good):
            return self._vmap_hint()
        return None

    @functools.cached_property
    def culprit(self) -> str | None:
        """Where the wrong formula lives, when a failed check's parts, checked on their own, say
        so (NOTE [culprit bisection] in :mod:`jacverify.culprit`); None otherwise."""
        if self.verdict != Verdict.FAILED:
            return None
        from jacverify.culprit import innermost_culprit

        return innermost_culprit(self)

    def _vmap_hint(self) -> str:
        """vmap-based methods disagree: run the same torch.func transform on each sample without
        vmap; if that agrees the batching rule is to blame, if not the transform itself."""
        unvmapped = _per_sample_transform(self.flat, self.quantity)
        if unvmapped is not None:
            agree = compare(unvmapped, Reference(self.trusted[0], self.reference),
                            self.case.dtype).passed
            if agree:
                return ("only vmap-based methods disagree, and the same torch.func transform run "
                        "on each sample without vmap agrees: a batching rule is wrong (an "
                        "autograd.Function's vmap staticmethod, or a register_vmap rule)")
            return ("only vmap-based methods disagree, and the same torch.func transform run on "
                    "each sample without vmap disagrees too: the transform's own derivative is "
                    "wrong here (a torch.func formula for an op, or an autograd.Function's "
                    "setup_context/jvp under torch.func), not a batching rule")
        return ("only vmap-based methods disagree: a batching rule (an autograd.Function's vmap "
                "staticmethod, a register_vmap rule) or a torch.func transform's own derivative "
                "formula is wrong; run the transform on one sample without vmap to tell which")

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
            f"{c.max_rel_error:.3g}; {describe_worst(c, where)}\n  tolerance: {c.tolerance}"
        )

    def describe_groups(self, results: tuple[MethodResult, ...] | list[MethodResult]) -> list[str]:
        """:meth:`describe` for each group of methods that ended the same way (same status, same
        reason, same worst entry and values): one paragraph per group, its methods named."""
        groups: dict[tuple, list[MethodResult]] = {}
        for r in results:
            c = r.worst
            key = (str(r.status), r.reason, None if c is None else (
                c.reference, c.worst_index, f"{c.value_at_worst:.6g}", f"{c.reference_at_worst:.6g}"))
            groups.setdefault(key, []).append(r)
        out = []
        for members in groups.values():
            text = self.describe(members[0])
            if len(members) > 1:
                first, _, rest = text.partition(": ")
                modes = sorted({m.mode for m in members})
                text = (f"{len(members)} methods ({', '.join(modes)}) ended the same way -- "
                        f"{', '.join(m.method for m in members)}: {rest}")
            out.append(text)
        return out

    def lead_lines(self) -> list[str]:
        """The diagnosis, before any table: the verdict, the likely culprit, the findings."""
        lines = [f"jacverify: {self.quantity}: {self.headline()}"]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        if self.culprit:
            lines.append(f"culprit: {self.culprit}")
        lines += [f"finding: {f}" for f in self.findings]
        return lines

    def failure_message(self) -> str:
        """What a failing test shows: the diagnosis first, then each group of methods that went
        wrong the same way in full, the notes, a runnable case and the seed."""
        lines = self.lead_lines()
        lines += self.describe_groups(self.mismatches)
        if self.verdict == Verdict.UNVERIFIED:
            lines += self.describe_groups([r for r in self.results if r.status not in WRONG])
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"case: {self.case!r}")
        defined = _defined_at(self.case.fn)
        if defined:
            lines.append(f"function: {defined}")
        lines.append(f"seed: {self.case.seed}")
        return "\n".join(lines)

    def save_replay(self, path: str) -> str | None:
        """Save what re-runs this check -- the function (a module, pickled with its weights) and
        the exact inputs -- to ``path`` with ``torch.save``, and return the code that replays it;
        None when the function cannot be saved (a lambda, a closure).

        Returns:
            Python that loads ``path`` and runs the same check, or None.

        Raises:
            Nothing: a function that cannot be pickled gives None.
        """
        import os

        case = self.case
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            torch.save({"fn": case.fn, "inputs": case.inputs}, path)
        except Exception:  # noqa: BLE001 - a lambda or closure cannot be pickled: no replay
            return None
        runs = {"batch_jacobian": "check", "hessian": "check_hessians",
                "hessian_diagonal": "check_hessian_diagonals"}.get(self.quantity)
        if runs is None:  # the vector quantities would need their vectors too
            return None
        names = [r.method for r in self.results if r.mode != "user"]
        methods = f", methods={names!r}" if names else ""
        return ("import torch, jacverify\n"
                f"saved = torch.load({path!r}, weights_only=False)  # the function and inputs\n"
                f"report = jacverify.{runs}(saved['fn'], saved['inputs']"
                f"{'' if runs == 'check' else '[0]'}, batch_axis={case.batch_axis}, "
                f"dtype={case.dtype}, seed={case.seed}{methods})\n"
                "print(report.failure_message())")

    def headline(self) -> str:
        """One sentence: the verdict and why."""
        v = self.verdict
        if v == Verdict.PASSED:
            return (f"PASSED: {len(self.verified)}/{len(self.results)} method(s) verified against "
                    f"{' and '.join(self.trusted)}")
        if v == Verdict.FAILED:
            parts = []
            if self.mismatches:
                parts.append(f"{len(self.mismatches)} method(s) disagree with the "
                             f"{' and '.join(self.trusted) or 'trusted'} reference")
            if any(f.startswith(GRAPH_CUT) for f in self.findings):
                parts.append(GRAPH_CUT)
            elif self.findings:
                parts.append("the references found a wrong derivative formula")
            return "FAILED: " + "; ".join(parts)
        if self.unresolved:
            return f"UNVERIFIED: {self.unresolved}"
        missing = [n for n in self.required if n not in {r.method for r in self.verified}]
        if missing:
            return (f"UNVERIFIED: {', '.join(missing)} could not be verified (it did not run to a "
                    "result that could be compared)")
        counts: dict[str, int] = {}
        for r in self.results:
            counts[str(r.status)] = counts.get(str(r.status), 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no method ran"
        return f"UNVERIFIED: no method was verified against a trusted reference ({detail})"

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
            "verdict": str(self.verdict),
            "passed": self.passed,
            "findings": list(self.findings),
            "unresolved": self.unresolved,
            "fastest": self.fastest,
            "notes": list(self.notes),
            "scaling": {m: [[k, t] for k, t in points] for m, points in self.scaling},
            "results": [
                {
                    "method": r.method,
                    "quantity": r.quantity,
                    "mode": r.mode,
                    "vectorized": r.vectorized,
                    "status": str(r.status),
                    "max_abs_error": r.max_abs_error,
                    "max_rel_error": r.max_rel_error,
                    "worst_index": list(r.worst_index) if r.worst_index else None,
                    "reason": r.reason,
                    "time_s": r.time_s,
                }
                for r in self.results
            ],
        }

    def table(self, width: int | None = None):
        """The results as a ``rich.table.Table`` (the columns of :mod:`jacverify.columns`); a
        ``width`` too narrow for every column drops the optional ones."""
        from jacverify.columns import RESULT_COLUMNS, rich_table

        return rich_table(RESULT_COLUMNS, self.results, self, width=width,
                          title=f"jacverify: {self.quantity} of {self._title()}")

    def _title(self) -> str:
        fn = self.case.fn
        name = getattr(fn, "__name__", None) or type(fn).__name__
        shapes = ", ".join(str(tuple(t.shape)) for t in self.case.inputs)
        return f"{name} on {shapes} {str(self.case.dtype).removeprefix('torch.')}"

    def render(self, width: int = 120, color: bool = False) -> str:
        """The diagnosis, the table, the notes and every group of mismatches in full, as text."""
        from rich.console import Console

        buf = io.StringIO()
        console = Console(file=buf, width=width, force_terminal=color, color_system="auto" if color else None)
        for line in self.lead_lines():
            console.print(line, highlight=False, markup=False)
        console.print(self.table(width=width))
        for line in self.footer_lines():
            console.print(line, highlight=False, markup=False)
        return buf.getvalue().rstrip()

    def footer_lines(self) -> list[str]:
        """The lines under the table: references, coupling, notes, the methods that did not agree
        (grouped), the verdict again with the fastest method and the seed."""
        lines = [f"reference: {' and '.join(self.trusted) or 'none'} "
                 f"(computed in {str(self.reference_dtype).removeprefix('torch.')})"]
        if self.coupling.coupled:
            lines.append(f"batch coupling: {self.coupling.reason}")
        lines += [f"note: {n}" for n in self.notes]
        lines += self.describe_groups([r for r in self.results if r.status != "agree"])
        if self.scaling:
            lines.append("time against the number of vectors K:")
            lines += [f"  {m}: " + ", ".join(f"K={k} {t * 1e3:.2f} ms" for k, t in points)
                      for m, points in self.scaling]
        fastest = f"; fastest agreeing method: {self.fastest}" if self.fastest else ""
        lines.append(f"{self.headline()}{fastest}; seed={self.case.seed}")
        return lines

    def __str__(self) -> str:
        return self.render()


# NOTE [hints]
# A hint names a culprit only when the evidence separates it: the float64 loop (backward formulas
# only) against finite differences (no formula) separates a wrong backward; reverse-mode methods
# wrong while forward-mode ones agree separates a wrong backward from a wrong jvp, unless the
# trusted loop itself agrees; a user's method that alone disagrees while the references agree
# with each other is the user's bug; a vmap-only disagreement is split by re-running the same
# torch.func transform per sample without vmap (det's Hessian at a repeated singular value is NaN
# with no vmap at all: not a batching rule).
def _per_sample_transform(flat: Flat | None, quantity: str) -> torch.Tensor | None:
    """jacrev (Jacobians) or hessian (Hessians) of each sample alone, without vmap; None when that
    cannot be run here."""
    if flat is None or quantity not in ("batch_jacobian", "hessian", "hessian_diagonal"):
        return None
    transform = torch.func.jacrev if quantity == "batch_jacobian" else torch.func.hessian
    try:
        rows = []
        for b in range(flat.batch_size):
            one = flat.x[b:b + 1]
            value = transform(lambda xi: flat.fn(xi[None])[0])(one[0])
            if quantity == "hessian_diagonal":
                value = value.diagonal(dim1=-2, dim2=-1)
            rows.append(value)
        return torch.stack(rows)
    except Exception:  # noqa: BLE001 - no evidence then; the hint says both candidates
        return None


def _defined_at(fn: object) -> str | None:
    """``Class (file:line)`` of the function or module checked, so a reader can rebuild it."""
    import inspect

    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
    if target.__module__ in ("torch.nn.modules.container",) or target.__module__.startswith("torch."):
        return None  # a torch container: the case's repr says what is in it
    try:
        where = f"{inspect.getsourcefile(target)}:{inspect.getsourcelines(target)[1]}"
    except (OSError, TypeError):
        where = target.__module__
    return f"{target.__module__}.{target.__qualname__} ({where})"
