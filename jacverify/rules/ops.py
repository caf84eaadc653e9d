"""``jacverify ops``: torch's own operators, from its OpInfo database, cross-checked per sample:
vmap against the loop, forward and reverse AD against float64 finite differences, vmap of jvp and
vjp against loops, and the four forward/reverse compositions of second derivatives against finite
differences of the verified first derivative.

NOTE [ops on a device]
With ``device`` (``jacverify ops --device cuda``) the samples are still drawn on the CPU in float64
(the same values as a CPU run: NOTE [shards]), then copied to the device; every route -- vmap, the
first derivatives, vmap of jvp and vjp, the four compositions -- runs on the device copy, while its
reference stays on the CPU in float64, as everywhere (NOTE [references on the CPU]): the loops of
per-sample calls, the finite differences of the op, and for second order the finite differences
(taken on the CPU) of the device's first derivative that agreed. A kernel or formula wrong only on
the device is then a mismatch. The database's declarations are read for that device's type.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.func import jvp, vjp, vmap

from jacverify.case import Flat, resolve_device
from jacverify.compare import Reference, compare
from jacverify.errors import InvalidArgument
from jacverify.oracles.finite_differences import directional_differences, fd_step
from jacverify.validation import shown
from jacverify.judge import Status, raised
from jacverify.rules.checks import differ, stack_outputs

__all__ = ["OpCheck", "OpResult", "check_op", "op_database", "select_ops", "judge_route",
           "declared", "full_name", "incomparable", "line_reference", "adjoint_reference", "DEFAULT_OPS", "OP_CHECKS"]

DEFAULT_OPS = ("sin", "tanh", "exp", "mul", "div", "matmul", "sum", "mean", "cumsum",
               "softmax", "nn.functional.relu", "nn.functional.layer_norm", "where",
               "index_select", "linalg.vector_norm", "max.reduction_with_dim")
OP_CHECKS = ("vmap", "forward_ad", "reverse_ad", "vmap_jvp", "vmap_vjp", "fwd_over_fwd",
             "fwd_over_rev", "rev_over_fwd", "rev_over_rev")
BATCH = 3  # samples per vmap, each with its own values
# A finite-difference reference whose own error bound exceeds this fraction of its size plus the
# derivative scale of the case (a kink within the step: the norm's subgradient at zero) cannot tell
# a right derivative from a wrong one.
UNCERTAIN = 0.1
# Operators whose batched meaning a loop over per-sample views does not give: the reason.
INCOMPARABLE = {
    "as_strided": "as_strided addresses the underlying storage (its storage_offset is absolute), "
                  "so it differs on a per-sample view by design",
    "as_strided_copy": "as as_strided",
    "as_strided_scatter": "as as_strided",
}


@dataclass(frozen=True)
class OpCheck:
    """One check of one sample: "agree", "mismatch" (with what differs), "known" (a mismatch torch
    declares, NOTE [what the database declares]), "unsupported" (the transform raised: missing
    support, not a wrong value) or "skipped" (the check cannot apply here, with why)."""

    check: str
    sample: str
    status: Status
    detail: str = ""


@dataclass(frozen=True)
class OpResult:
    """Every check of one operator; ``status`` is the worst of them, mismatch first. ``fuzz`` is
    the operator fuzzer's campaign (:func:`jacverify.rules.op_fuzzer.fuzz_op`), whose shrunk
    failure's wrong routes are among ``checks`` (sample "fuzzed")."""

    name: str
    checks: tuple[OpCheck, ...]
    seconds: float
    reason: str = ""
    fuzz: object | None = None

    @property
    def status(self) -> Status:
        seen = {c.status for c in self.checks}
        for status in (Status.MISMATCH, Status.KNOWN, Status.AGREE, Status.UNSUPPORTED):
            if status in seen:
                return status
        return Status.SKIPPED

    @property
    def mismatches(self) -> tuple[OpCheck, ...]:
        return tuple(c for c in self.checks if c.status == "mismatch")


def op_database() -> list:
    """torch's OpInfo list (``common_methods_invocations.op_db``).

    Raises:
        InvalidArgument: the database cannot be imported (it needs ``expecttest``).
    """
    import torch.backends

    flags_were_free = not torch.backends.flags_frozen()
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except ImportError as e:
        raise InvalidArgument(f"torch's OpInfo database did not import ({e}); it needs "
                              "expecttest: pip install expecttest (or jacverify[ops])") from None
    if flags_were_free and torch.backends.flags_frozen():
        # Importing torch's test internals freezes the cudnn flags for the whole process
        # (common_utils calls torch.backends.disable_global_flags()); anything later that sets
        # them -- Opacus does -- would raise. Undo that side effect of the import.
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    return op_db


def full_name(op) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def select_ops(names: Iterable[str] | None) -> list:
    """The OpInfos named (``name`` or ``name.variant``), or all of them for None."""
    db = [op for op in op_database() if torch.float64 in op.supported_dtypes("cpu")]
    if names is None:
        return db
    chosen = []
    for name in names:
        found = [op for op in db if full_name(op) == name or op.name == name]
        if not found:
            import difflib

            close = difflib.get_close_matches(name, [full_name(o) for o in db], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidArgument(f"op {name!r} is not in torch's OpInfo database with float64 "
                                  f"support{hint}")
        chosen += [op for op in found if op not in chosen]
    return chosen


class _Sample:
    """One sample as a function of its floating tensors, flattened into one vector z."""

    def __init__(self, op, sample) -> None:
        self.op, self.sample = op, sample
        slots = [sample.input, *sample.args]
        self.slots = slots
        self.where = [i for i, s in enumerate(slots)
                      if isinstance(s, torch.Tensor) and s.is_floating_point() and s.numel()
                      and s.layout == torch.strided]
        self.tensors = [slots[i].detach() for i in self.where]
        self.device = self.tensors[0].device if self.tensors else torch.device("cpu")
        self.differentiable: list[bool] | None = None

    def to(self, device: torch.device) -> _Sample:
        """This sample with every tensor (arguments and keywords) on ``device``."""
        if device == self.device:
            return self
        return _Sample(self.op, self.sample.transform(
            lambda t: t.to(device) if isinstance(t, torch.Tensor) else t))

    def _differentiable(self) -> list[bool]:
        """Which outputs autograd differentiates (gradcheck's rule): an output marked
        non-differentiable (native_layer_norm's mean and rstd) is left out of the checks."""
        if self.differentiable is None:
            try:
                with torch.enable_grad():
                    out = self.sample.output_process_fn_grad(
                        self.call(*[t.clone().requires_grad_() for t in self.tensors]))
                outs = out if isinstance(out, (tuple, list)) else (out,)
                self.differentiable = [isinstance(o, torch.Tensor) and o.requires_grad
                                       for o in outs]
            except Exception:  # noqa: BLE001 - autograd refuses: the derivative checks will say
                self.differentiable = [True] * 64
        return self.differentiable

    def call(self, *tensors: torch.Tensor):
        """The op on these tensors, through the OpInfo's gradcheck_wrapper (which, e.g., makes a
        Hermitian input for ops that read one triangle, as torch's own gradient tests do)."""
        slots = list(self.slots)
        for i, t in zip(self.where, tensors):
            slots[i] = t
        return self.op.gradcheck_wrapper(self.op, slots[0], *slots[1:], **self.sample.kwargs)

    def outputs(self, *tensors: torch.Tensor) -> torch.Tensor:
        """The differentiable outputs (the sample's output_process_fn_grad), flattened; float64
        only: a lower-precision output (a cast) has no derivative FD in float64 can resolve."""
        out = self.sample.output_process_fn_grad(self.call(*tensors))
        outs = [o for o, keep in zip(out if isinstance(out, (tuple, list)) else (out,),
                                     self._differentiable())
                if keep and isinstance(o, torch.Tensor) and o.is_floating_point()]
        if not outs:
            raise _Skip("no differentiable floating output")
        if any(o.dtype != torch.float64 for o in outs):
            raise _Skip(f"output in {outs[0].dtype}, not float64")
        return torch.cat([o.reshape(-1) for o in outs])

    def flat(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Flat:
        """A canonical form (1, N) -> (1, M) over the concatenated floating inputs."""
        z = torch.cat([t.reshape(-1) for t in self.tensors])[None]
        m = fn(z[0]).numel()
        return Flat(lambda zb: fn(zb[0])[None], z, ((z.shape[1],),), ((m,),))

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        sizes = [t.numel() for t in self.tensors]
        return [p.reshape(t.shape) for p, t in zip(z.split(sizes), self.tensors)]

    def of_z(self, z: torch.Tensor) -> torch.Tensor:
        return self.outputs(*self.split(z))


class _Skip(Exception):
    pass


def _batched(tensors: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """BATCH copies of each tensor with distinct values: entries scaled by factors in [0.9, 1.1]
    (signs, zeros and most domains kept; repeated copies would hide a rule that mixes samples)."""
    out = []
    for t in tensors:
        scale = 1 + 0.1 * (2 * torch.rand((BATCH, *t.shape), generator=gen, dtype=t.dtype) - 1)
        out.append(t[None] * scale)
    return out


def _vmap_checks(s: _Sample, d: _Sample, name: str, gen) -> list[OpCheck]:
    """vmap of ``d`` (the sample on the device) against the loop of ``s`` (on the CPU)."""
    batched = _batched(s.tensors, gen)
    variants = [("in_dims=0", [0] * len(batched))]
    if all(t.ndim >= 2 for t in batched):
        variants.append(("in_dims=-1", [-1] * len(batched)))
    if len(batched) > 1:
        variants.append(("in_dims=(0, None, ...)", [0] + [None] * (len(batched) - 1)))
    out = []
    for label, dims in variants:
        args = [b.movedim(0, d) if d is not None else t
                for b, t, d in zip(batched, s.tensors, dims)]
        try:
            want = [s.call(*[a.select(d, i) if d is not None else a for a, d in zip(args, dims)])
                    for i in range(BATCH)]
        except Exception:  # noqa: BLE001 - the op rejects the scaled values: not a rule's fault
            out.append(OpCheck("vmap", f"{name} {label}", "skipped", "the loop raised"))
            continue
        want = stack_outputs(want)
        try:
            got = vmap(d.call, in_dims=tuple(dims), randomness="error")(
                *[a.to(d.device) for a in args])
        except Exception as e:  # noqa: BLE001
            out.append(OpCheck("vmap", f"{name} {label}", "unsupported", raised(e)))
            continue
        bad = differ(got, want)
        out.append(OpCheck("vmap", f"{name} {label}", "mismatch" if bad else "agree", bad or ""))
    return out


# NOTE [confirmed mismatch]
# A route that differs from central differences at the default step (NOTE [finite-difference error
# estimate]) is judged again against central differences at steps CONFIRM_STEPS times that step,
# each with its own error bound. The mismatch stands only where the route differs from all three and
# the three agree with one another: a wrong derivative does not depend on the step, while a step
# that crosses a kink or a jump, or an error bound that misjudges the function there, changes with
# it. Where they do not agree the route is `skipped` ("finite differences depend on the step
# here"), never a mismatch; the detail of a mismatch names the three values, so every mismatch the
# sweep reports carries its own check by finite differences at several steps.
CONFIRM_STEPS = (8.0, 0.125)


def line_reference(flat: Flat, direction: torch.Tensor, step: float | None = None) -> Reference:
    """Float64 central differences of ``t -> f(z + t·direction)`` at the one point of ``flat``:
    the jvp ``J v``, shape (M,), with the error bound of NOTE [finite-difference error estimate];
    ``step`` replaces the largest step in t."""
    fd = directional_differences(flat, direction[None], per_sample=True, independent=True,
                                 step=step)
    return Reference("finite_differences", fd.value[0], fd.error[0])


def adjoint_reference(ref: Reference, cotangent: torch.Tensor) -> Reference:
    """``uᵀ (J v)`` from the reference of ``J v`` (:func:`line_reference`), shape (1,), with its
    error bound: what ``(Jᵀ u) · v`` by reverse mode must give."""
    return Reference("finite_differences", (cotangent * ref.value).sum()[None],
                     (cotangent.abs() * ref.error).sum()[None])


def judge_route(check: str, sample: str, run: Callable[[], torch.Tensor], ref: Reference,
                scale: float = 0.0,
                reference_at: Callable[[float], Reference] | None = None) -> OpCheck:
    """One AD route against its finite-difference reference: ``skipped`` where FD cannot decide
    (empty, not finite, too uncertain: a kink within the step), ``unsupported`` where the route
    raised, else ``agree`` or ``mismatch`` under NOTE [tolerances] with ``scale`` as the
    derivative scale. ``reference_at(step)`` rebuilds the reference at another step: a mismatch
    stands only if it holds at every step of NOTE [confirmed mismatch]."""
    if not ref.value.numel():
        return OpCheck(check, sample, "skipped", "empty output")
    if not (torch.isfinite(ref.value).all() and torch.isfinite(ref.error).all()):
        return OpCheck(check, sample, "skipped", "finite differences are not finite here (a step "
                       "leaves the domain, or the point is singular)")
    if float(ref.error.max()) > UNCERTAIN * (float(ref.value.abs().max()) + scale):
        return OpCheck(check, sample, "skipped", "finite differences too uncertain here (error "
                       f"bound {float(ref.error.max()):.2g}: a kink within the step)")
    try:
        value = run()
    except _Skip as e:
        return OpCheck(check, sample, "skipped", str(e))
    except Exception as e:  # noqa: BLE001 - missing formula / support
        return OpCheck(check, sample, "unsupported", raised(e))
    value = value.detach().cpu().reshape(ref.value.shape)
    c = compare(value, ref, torch.float64, derivative_scale=scale)
    if c.passed:
        return OpCheck(check, sample, "agree")
    detail = (f"at {c.worst_index}: {c.value_at_worst:.6g}, finite differences "
              f"{c.reference_at_worst:.6g} (allowed {c.allowed_at_worst:.2g})")
    if reference_at is None:
        return OpCheck(check, sample, "mismatch", detail)
    base = float(fd_step(torch.zeros((), dtype=torch.float64)))
    at = []
    for factor in CONFIRM_STEPS:  # NOTE [confirmed mismatch]
        try:
            other = reference_at(base * factor)
        except Exception as e:  # noqa: BLE001 - a larger step leaves the op's domain
            return OpCheck(check, sample, "skipped", "finite differences depend on the step here "
                           f"(at {factor:g}x the step the op raised: {raised(e)})")
        consistent = (torch.isfinite(other.value).all() and torch.isfinite(other.error).all()
                      and not compare(value, other, torch.float64, derivative_scale=scale).passed
                      and (compare(other.value, ref, torch.float64, derivative_scale=scale).passed
                           or compare(ref.value, other, torch.float64,
                                      derivative_scale=scale).passed))
        if not consistent:
            return OpCheck(check, sample, "skipped", "finite differences depend on the step here "
                           f"({detail}; at {factor:g}x the step they give "
                           f"{float(other.value[c.worst_index]):.6g})")
        at.append(f"{float(other.value[c.worst_index]):.6g} at {factor:g}x")
    return OpCheck(check, sample, "mismatch",
                   f"{detail}; confirmed at other steps: {', '.join(at)}")


def _derivative_checks(s: _Sample, d: _Sample, name: str, gen) -> list[OpCheck]:
    """The routes on ``d`` (the sample on the device) against finite differences of ``s``."""
    z = s.flat(s.of_z).x[0]
    n = z.numel()
    v = torch.randn(n, generator=gen, dtype=torch.float64)
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    center = s.of_z(z)
    if not torch.isfinite(center).all():
        raise _Skip("the output is not finite at this sample")
    m = center.numel()
    u = torch.randn(m, generator=gen, dtype=torch.float64)
    flat = s.flat(s.of_z)
    fd = line_reference(flat, v)
    scale = float(s.of_z(z).abs().max()) / max(1.0, float(z.abs().max())) * float(v.abs().max())
    z, v, w, u = (t.to(d.device) for t in (z, v, w, u))  # the routes' copies (the device's)
    checks = [judge_route("forward_ad", name, lambda: jvp(d.of_z, (z,), (v,))[1], fd, scale,
                          lambda h: line_reference(flat, v, h))]
    checks.append(judge_route("reverse_ad", name,
                              lambda: (vjp(d.of_z, z)[1](u)[0] * v).sum(),
                              adjoint_reference(fd, u.cpu()), scale * float(u.abs().sum()),
                              lambda h: adjoint_reference(line_reference(flat, v.cpu(), h),
                                                          u.cpu())))
    checks += _vmapped_derivatives(s, d, name, gen)
    # Second order, against FD (along w) of the first derivative that agreed with FD above.
    first = next((c for c in checks[:2] if c.status == "agree"), None)
    if first is None:
        reason = "no first derivative agreed with finite differences"
        return checks + [OpCheck(c, name, "skipped", reason) for c in OP_CHECKS[5:]]
    if first.check == "reverse_ad":
        def verified(x):
            return (vjp(d.of_z, x.to(d.device))[1](u)[0] * v).sum()[None].cpu()
    else:
        def verified(x):
            return (u * jvp(d.of_z, (x.to(d.device),), (v,))[1]).sum()[None].cpu()
    try:
        ref = line_reference(s.flat(verified), w.cpu())
    except Exception as e:  # noqa: BLE001 - the first derivative itself fails off the sample
        return checks + [OpCheck(c, name, "skipped", raised(e)) for c in OP_CHECKS[5:]]

    def fwd(x):  # u · J(x) v by forward mode
        return (u * jvp(d.of_z, (x,), (v,))[1]).sum()

    def rev(x):  # (Jᵀ(x) u) · v by reverse mode
        return (vjp(d.of_z, x)[1](u)[0] * v).sum()

    one = torch.ones((), dtype=z.dtype, device=z.device)
    for label, inner in (("fwd_over_fwd", fwd), ("rev_over_fwd", fwd),
                         ("fwd_over_rev", rev), ("rev_over_rev", rev)):
        if label.startswith("fwd"):
            run = (lambda g: lambda: jvp(g, (z,), (w,))[1])(inner)
        else:
            run = (lambda g: lambda: (vjp(g, z)[1](one)[0] * w).sum())(inner)
        checks.append(judge_route(label, name, run, ref, scale * float(u.abs().sum() * w.abs().max()),
                                  lambda h: line_reference(s.flat(verified), w.cpu(), h)))
    return checks


def _vmapped_derivatives(s: _Sample, d: _Sample, name: str, gen) -> list[OpCheck]:
    """vmap over jvp and vjp (distinct points per sample) on ``d``'s device against loops of them
    on ``s``'s."""
    zs = torch.stack([torch.cat([t.reshape(-1) for t in b])
                      for b in zip(*[list(x) for x in _batched(s.tensors, gen)])])
    tangents = torch.randn(zs.shape, generator=gen, dtype=zs.dtype)
    cotangents = torch.randn((BATCH, s.of_z(zs[0]).numel()), generator=gen, dtype=zs.dtype)
    out = []

    def jvp_of(x: _Sample):
        return lambda z, t: jvp(x.of_z, (z,), (t,))[1]

    def vjp_of(x: _Sample):
        return lambda z, c: vjp(x.of_z, z)[1](c)[0]

    for label, per, second in (("vmap_jvp", jvp_of, tangents), ("vmap_vjp", vjp_of, cotangents)):
        try:
            want = torch.stack([per(s)(zs[i], second[i]) for i in range(BATCH)])
        except Exception as e:  # noqa: BLE001
            out.append(OpCheck(label, name, "skipped", f"the loop raised: {raised(e)}"))
            continue
        try:
            got = vmap(per(d), randomness="error")(zs.to(d.device), second.to(d.device))
        except Exception as e:  # noqa: BLE001
            out.append(OpCheck(label, name, "unsupported", raised(e)))
            continue
        bad = differ(got, want, summed=True)  # each entry sums over the sample's (co)tangent
        out.append(OpCheck(label, name, "mismatch" if bad else "agree", bad or ""))
    return out


def _drawn(sample, gen):
    """A sample beyond the database's: its floating entries scaled by factors in [0.75, 1.25]."""
    import copy

    drawn = copy.copy(sample)

    def scaled(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            return t * (1 + 0.25 * (2 * torch.rand(t.shape, generator=gen, dtype=t.dtype) - 1))
        return t

    drawn.input = scaled(sample.input)
    drawn.args = tuple(scaled(a) for a in sample.args)
    return drawn


# NOTE [what the database declares]
# torch's OpInfo says which derivatives an op supports and which of torch's own gradient tests are
# expected to fail or are skipped (DecorateInfo entries). A check the op does not support is
# "skipped" with that reason, never run; a mismatch on a check torch itself marks as failing or
# skipped is "known" (counted apart from new wrong values). Forward-over-forward and
# reverse-over-forward have no test in torch, so nothing is declared for them.
_NEEDS = {
    "forward_ad": ("supports_forward_ad",), "vmap_jvp": ("supports_forward_ad",),
    "reverse_ad": ("supports_autograd",), "vmap_vjp": ("supports_autograd",),
    "fwd_over_fwd": ("supports_forward_ad",), "rev_over_fwd": ("supports_forward_ad",),
    "fwd_over_rev": ("supports_autograd", "supports_fwgrad_bwgrad"),
    "rev_over_rev": ("supports_autograd", "supports_gradgrad"),
}
_TORCH_TEST = {"forward_ad": "test_forward_mode_AD", "reverse_ad": "test_fn_grad",
               "rev_over_rev": "test_fn_gradgrad", "fwd_over_rev": "test_fn_fwgrad_bwgrad"}


def declared(op, check: str, device_type: str = "cpu") -> str | None:
    """Why torch's own test for this check is skipped or expected to fail in float64 on
    ``device_type``, in PyTorch's own words where its DecorateInfo carries them
    (``unittest.skip("...")``), or the support flag it sets to False (a route through forward
    mode of an op with ``supports_forward_ad=False`` that returns a wrong value instead of
    raising)."""
    missing = [flag for flag in _NEEDS.get(check, ()) if not getattr(op, flag, True)]
    if missing:
        return f"torch's OpInfo declares no {missing[0].removeprefix('supports_')} support " \
               f"({missing[0]}=False)"
    test = _TORCH_TEST.get(check)
    for info in (*getattr(op, "skips", ()), *getattr(op, "decorators", ())):
        if test is None or getattr(info, "test_name", None) != test:
            continue
        if getattr(info, "device_type", None) not in (None, device_type):
            continue
        dtypes = getattr(info, "dtypes", None)
        if dtypes is None or torch.float64 in dtypes:
            return f"torch's OpInfo marks {test} as {_torch_reason(info)}"
    return None


def _torch_reason(info) -> str:
    """"expected to fail" or "skipped: <PyTorch's reason>" for one DecorateInfo."""
    import unittest

    for d in getattr(info, "decorators", ()):
        if d is unittest.expectedFailure:
            return "expected to fail"
        words = [c.cell_contents for c in (getattr(d, "__closure__", None) or ())
                 if isinstance(getattr(c, "cell_contents", None), str)]
        if words:
            return f"skipped ({words[0]!r})"
    return "skipped or expected to fail"


def _declared_support(op, checks: list[OpCheck], device_type: str = "cpu") -> list[OpCheck]:
    out = []
    for c in checks:
        missing = [flag for flag in _NEEDS.get(c.check, ()) if not getattr(op, flag, True)]
        if missing:
            out.append(OpCheck(c.check, c.sample, "skipped", f"the database declares no "
                               f"{missing[0].removeprefix('supports_')} support"))
        elif c.status == "mismatch" and declared(op, c.check, device_type):
            out.append(OpCheck(c.check, c.sample, "known",
                               f"{c.detail}; {declared(op, c.check, device_type)}"))
        else:
            out.append(c)
    return out


def check_op(op, *, samples: int = 2, seed: int = 0, device=None) -> OpResult:
    """Every check on the first ``samples`` database samples of ``op`` and one drawn sample, the
    routes on ``device`` (default: the CPU; NOTE [ops on a device]).

    >>> from jacverify.rules.ops import select_ops
    >>> result = check_op(select_ops(["sin"])[0], samples=1)
    >>> str(result.status), sorted({c.check for c in result.checks}) == sorted(OP_CHECKS)
    ('agree', True)
    """
    start = time.perf_counter()
    device = resolve_device(device)
    if device.type != "cpu" and torch.float64 not in op.supported_dtypes(device.type):
        return OpResult(full_name(op), (), time.perf_counter() - start,
                        f"the database declares no float64 support on {device.type}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the database's samples draw from torch's generator: NOTE [shards]
    checks: list[OpCheck] = []
    taken = []
    try:
        for sample in op.sample_inputs("cpu", torch.float64, requires_grad=False):
            if len(taken) == samples:
                break
            if isinstance(sample.input, torch.Tensor):
                taken.append(sample)
    except Exception as e:  # noqa: BLE001 - the database's own sample generator failed
        return OpResult(full_name(op), (), time.perf_counter() - start, f"samples: {raised(e)}")
    if taken:
        taken.append(_drawn(taken[0], gen))
    for k, sample in enumerate(taken):
        name = f"sample {k}" if k < len(taken) - 1 else "drawn sample"
        name += f" (input {tuple(sample.input.shape)}" + (
            f", args {shown(tuple(sample.args))}" if sample.args else "") + (
            f", kwargs {shown(dict(sample.kwargs))}" if sample.kwargs else "") + ")"
        try:
            checks += _sample_checks(op, sample, name, gen, device)
        except Exception as e:  # noqa: BLE001 - an input this harness cannot batch (say so)
            checks.append(OpCheck("vmap", name, "skipped", f"jacverify could not run it: {raised(e)}"))
    reason = "" if checks else "no sample with a floating tensor input"
    return OpResult(full_name(op), tuple(checks), time.perf_counter() - start, reason)


def incomparable(op) -> str | None:
    """Why an operator's derivatives and batching cannot be compared with loops and finite
    differences (a nondeterministic or seeded random output, storage addressing), or None."""
    if op.has_nondeterministic_output:
        return "the database marks its output nondeterministic"
    if op.name in INCOMPARABLE:
        return INCOMPARABLE[op.name]
    if "wrapper_set_seed" in getattr(getattr(op.op, "__code__", None), "co_names", ()):
        return ("a random op made repeatable by a fixed seed (OpInfo's wrapper_set_seed): by "
                "convention its derivatives are not those of the seeded function")
    return None


def _sample_checks(op, sample, name: str, gen, device: torch.device) -> list[OpCheck]:
    s = _Sample(op, sample)
    if not s.tensors:
        return []
    if incomparable(op):
        return [OpCheck("vmap", name, "skipped", incomparable(op))]
    try:
        torch.manual_seed(0)
        first = s.call(*s.tensors)
        torch.manual_seed(1)
        again = s.call(*s.tensors)
    except Exception:  # noqa: BLE001 - the drawn values left the op's domain
        return [OpCheck("vmap", name, "skipped", "the op rejects these values")]
    if differ(first, again):
        return [OpCheck("vmap", name, "skipped", "random: two seeds give different outputs")]
    d = s.to(device)  # the routes' copy (NOTE [ops on a device])
    checks = _vmap_checks(s, d, name, gen)
    try:
        checks += _derivative_checks(s, d, name, gen)
    except _Skip as e:
        checks += [OpCheck(c, name, "skipped", str(e)) for c in OP_CHECKS[1:]]
    return _declared_support(op, checks, device.type)
