"""``fuzz_op``: torch's operators (and custom ops) called as users call them, on arguments drawn
beyond any test database, every AD route judged against float64 finite differences of the raw op.
A thin variant over the one loop in :mod:`jacverify.campaign` (NOTE [one campaign]).

An :class:`OpFamily` says how to build one sample's arguments from a drawn *form* (the argument
structure: shapes, keyword variants, a value regime); :func:`fuzz_op` draws forms, batch sizes,
partial batching and seeds with Hypothesis, runs every route on each :class:`OpExample`
(NOTE [operator routes]) and shrinks the first wrong value to a minimal call printed as code.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from hypothesis.errors import Unsatisfiable
from torch.func import jvp, vjp, vmap

from jacverify.campaign import Campaign, Trial
from jacverify.case import Flat, resolve_device
from jacverify.errors import InvalidArgument
from jacverify.judge import Status, Verdict, WRONG, campaign_verdict, raised
from jacverify.rules.checks import differ, stack_outputs
from jacverify.rules.ops import OpCheck, adjoint_reference, judge_route, line_reference

__all__ = ["OpFamily", "OpExample", "Call", "OpFuzzReport", "fuzz_op", "check_example",
           "op_examples", "form", "ROUTES", "DEFAULT_BUDGET_S"]

# NOTE [operator routes]
# On each example (a form, a batch of B samples with distinct values, in_dims per tensor argument:
# 0, -1 or None, so one argument batched and another shared, a batched 0-dim value into an
# unbatched tensor), in this order:
#   errors   where a sample's own call raises, vmap must raise too (a rule that returns values for
#            an input the op rejects is wrong); agree when it does;
#   vmap     otherwise, vmap against the loop of per-sample calls (values, shapes, dtypes);
#   forward_ad, reverse_ad   at the first sample that ran, over every differentiable floating
#            (or complex, as real pairs) tensor argument at once, against central differences of
#            the raw op along a random direction (reverse through the adjoint <u, J v>);
#   fwd_over_fwd, rev_over_fwd, fwd_over_rev, rev_over_rev   the four compositions, against
#            finite differences of the first derivative that agreed;
#   vmap_jvp, vmap_vjp   vmap of jvp/vjp under the same partial batching against loops.
# With a device, the samples are built on the CPU, every route but errors runs on their copy on the
# device and every reference (loops, finite differences) stays on the CPU in float64 (NOTE [ops on
# a device]); errors runs on the CPU, as values an op rejects can stop a GPU with a device-side
# assert.
# Arguments a family freezes (batch_norm's running statistics) are never differentiated; a family
# may restrict an argument's directions to symmetric matrices (the gradient convention of ops
# documented for Hermitian input, e.g. linalg.cholesky), and say why a point is one where the
# derivative is not defined (ties, repeated eigenvalues): a mismatch there is not_applicable, with
# that reason; or name a documented convention of torch's derivative there (embedding's padding_idx
# row gets no gradient): a mismatch of a derivative route is then a classified divergence,
# not_applicable with the convention, never a mismatch.
ROUTES = ("errors", "vmap", "forward_ad", "reverse_ad", "fwd_over_fwd", "rev_over_fwd",
          "fwd_over_rev", "rev_over_rev", "vmap_jvp", "vmap_vjp")
SECOND = ROUTES[4:8]
MAX_BATCH = 3
DEFAULT_BUDGET_S = 0.5
# NOTE [operator budget]
# With a budget, the campaign runs with `seconds=budget` (Hypothesis runs of CHUNK examples until it
# is spent or one fails); an example drawn past the budget is passed unrun (as unverified, and not
# counted), so the last run ends within milliseconds: rejecting it instead made Hypothesis draw
# hundreds more (2-3 s per operator after a 0.25 s budget). Runs of 4 examples ended sooner but
# restarted Hypothesis at its simplest examples each time, and missed cholesky_solve's n = 2 bug.
LITERAL_LIMIT = 64  # tensors up to this many entries are printed as literals in a reproducer

Form = tuple  # ((key, value), ...): a plain, hashable, printable argument structure


def form(**kw: Any) -> Form:
    """A form from keywords, in a fixed order (``form(n=2, upper=True)``).

    >>> form(upper=True, n=2)
    (('n', 2), ('upper', True))
    """
    return tuple(sorted(kw.items()))


@dataclass(frozen=True)
class Call:
    """One sample's arguments.

    Attributes:
        args, kwargs: as the op takes them (tensors may sit inside lists and dicts).
        frozen: tensor positions (in ``pytree`` leaf order over ``(args, kwargs)``, tensors only)
            never differentiated (running statistics).
        symmetric: tensor positions whose directions are symmetric matrices (Hermitian-input ops).
        undefined: why the derivative is not defined at this point ("" when it is).
        convention: a documented convention of torch's derivative at this point that differs
            from the derivative of the function ("" when none): a mismatch of a derivative route
            is then a classified divergence, ``not_applicable`` with it.
    """

    args: tuple
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    frozen: frozenset[int] = frozenset()
    symmetric: frozenset[int] = frozenset()
    undefined: str = ""
    convention: str = ""


@dataclass(frozen=True, eq=False)
class OpFamily:
    """How to fuzz one operator.

    Attributes:
        name: what reports call it ("cholesky_solve").
        fn: the op, called as users call it.
        forms: a Hypothesis strategy of forms (see :func:`form`), shrinking to the simplest.
        build: ``build(form_as_dict, generator) -> Call``: one sample's arguments; called once
            per sample with its own generator, so values are distinct per sample.
        code: how the op reads in a reproducer ("torch.cholesky_solve").
        ref: an expression that gives this family back ("op_family('cholesky_solve')").
        imports: the import lines ``ref`` and ``code`` need.
        process: applied to the op's output before it is compared (a gauge-invariant view of
            eigenvectors); None: the output as is.
        declared: ``declared(route) -> reason | None``: a mismatch PyTorch itself declares.
        unclaimed: routes not run, each with why (a route torch itself cannot give for this
            kind of op); they are ``not_applicable`` with that reason.
    """

    name: str
    fn: Callable
    forms: Any
    build: Callable[[dict, torch.Generator], Call]
    code: str
    ref: str
    imports: str = "from jacverify.rules.op_fuzzer import fuzz_op"
    process: Callable | None = None
    declared: Callable[[str], str | None] | None = None
    unclaimed: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"OpFamily({self.name!r})"


@dataclass(frozen=True)
class OpExample:
    """One drawn example; its repr is part of the printed reproducer.

    Attributes:
        op: the family's name.
        form: the argument structure (shapes, keywords, value regime).
        batch_size: samples per vmap.
        in_dims: per tensor argument (pytree leaf order), its batch axis or None (shared).
        seed: the values; sample i draws from ``seed + 7919 * i``.
    """

    op: str
    form: Form
    batch_size: int
    in_dims: tuple[int | None, ...]
    seed: int


def _generator(seed: int, i: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed + 7919 * i)


def _tensor_positions(call: Call) -> tuple[list, Any, list[int]]:
    leaves, spec = pytree.tree_flatten((call.args, dict(call.kwargs)))
    return leaves, spec, [k for k, x in enumerate(leaves) if isinstance(x, torch.Tensor)]


def op_examples(family: OpFamily, *, max_batch_size: int = MAX_BATCH):
    """Examples for ``family``: a form, a batch size (1 to ``max_batch_size``, shrinking to 1),
    in_dims for every tensor argument (0, None or -1, shrinking to 0; never all None) and a seed
    of the values."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw) -> OpExample:
        f = draw(family.forms)
        _, _, tensors = _tensor_positions(family.build(dict(f), _generator(0, 0)))
        dims = [draw(st.sampled_from((0, None, -1))) for _ in tensors]
        if tensors and all(d is None for d in dims):
            dims[0] = 0
        return OpExample(family.name, f, draw(st.integers(1, max_batch_size)), tuple(dims),
                         draw(st.integers(0, 2**16)))

    return build()


class _Sampled:
    """The example's samples: per-sample leaves, the batched leaves, and the op of tensors."""

    def __init__(self, family: OpFamily, ex: OpExample) -> None:
        self.family, self.ex = family, ex
        self.calls = [family.build(dict(ex.form), _generator(ex.seed, i))
                      for i in range(ex.batch_size)]
        first = self.calls[0]
        self.leaves, self.spec, self.tensors = _tensor_positions(first)
        if len(self.tensors) != len(ex.in_dims):
            raise InvalidArgument(f"in_dims={ex.in_dims!r} has {len(ex.in_dims)} entries; the "
                                  f"form {ex.form!r} builds {len(self.tensors)} tensor arguments")
        per = [_tensor_positions(c)[0] for c in self.calls]
        # per sample: batched tensors from their own call, shared ones from sample 0's
        self.samples = [[per[i][k] if d is not None else per[0][k]
                         for k, d in zip(self.tensors, ex.in_dims)] for i in range(ex.batch_size)]
        self.batched = []
        for j, (k, d) in enumerate(zip(self.tensors, ex.in_dims)):
            if d is None:
                self.batched.append(per[0][k])
            else:
                stacked = torch.stack([per[i][k] for i in range(ex.batch_size)])
                self.batched.append(stacked.movedim(0, d % stacked.ndim))
        self.frozen, self.symmetric = first.frozen, first.symmetric
        self.undefined, self.convention = first.undefined, first.convention

    def call(self, *tensors: torch.Tensor):
        """The op on these tensor arguments (frozen ones cloned: an op may update them in
        place), its output through the family's ``process``."""
        leaves = list(self.leaves)
        for j, (k, t) in enumerate(zip(self.tensors, tensors)):
            leaves[k] = t.clone() if j in self.frozen else t
        args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        out = self.family.fn(*args, **kwargs)
        return self.family.process(out) if self.family.process else out


def _real_outputs(out) -> list[torch.Tensor]:
    """The floating and complex (as real pairs) tensors of an output, float64 only."""
    flat = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
    got = []
    for o in flat:
        if o.is_complex():
            o = torch.view_as_real(o)
        if o.is_floating_point():
            got.append(o)
    return got


class _Point:
    """One sample as a function of one real vector z: its differentiable tensors, flattened
    (complex ones as real pairs)."""

    def __init__(self, s: _Sampled, tensors: list[torch.Tensor]) -> None:
        self.s, self.tensors = s, tensors
        self.diff = [j for j, t in enumerate(tensors)
                     if (t.is_floating_point() or t.is_complex()) and t.numel()
                     and j not in s.frozen]
        self.parts = [torch.view_as_real(tensors[j]) if tensors[j].is_complex() else tensors[j]
                      for j in self.diff]
        self.z = (torch.cat([p.reshape(-1) for p in self.parts]) if self.parts
                  else torch.zeros(0, dtype=torch.float64))
        self.keep: list[bool] | None = None

    def assemble(self, z: torch.Tensor, tensors: list | None = None) -> list:
        out = list(self.tensors if tensors is None else tensors)
        pieces = z.split([p.numel() for p in self.parts]) if self.parts else []
        for j, piece, p in zip(self.diff, pieces, self.parts):
            t = piece.reshape(p.shape)
            out[j] = torch.view_as_complex(t) if self.tensors[j].is_complex() else t
        return out

    def outputs(self, z: torch.Tensor, tensors: list | None = None) -> torch.Tensor:
        outs = _real_outputs(self.s.call(*self.assemble(z, tensors)))
        keep = self.differentiable()
        outs = [o for o, k in zip(outs, keep) if k]
        if not outs:
            raise _Skip("no differentiable floating output")
        if any(o.dtype != torch.float64 for o in outs):
            raise _Skip(f"output in {outs[0].dtype}, not float64")
        return torch.cat([o.reshape(-1) for o in outs])

    def differentiable(self) -> list[bool]:
        """Which floating outputs autograd differentiates (an output marked non-differentiable,
        native_layer_norm's mean, is left out); all of them when autograd refuses."""
        if self.keep is None:
            try:
                with torch.enable_grad():
                    z = self.z.clone().requires_grad_()
                    outs = _real_outputs(self.s.call(*self.assemble(z)))
                self.keep = [o.requires_grad for o in outs]
            except Exception:  # noqa: BLE001 - reverse mode will say why
                self.keep = [True] * 256
        return self.keep

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` with the pieces of symmetric arguments made symmetric."""
        if not self.s.symmetric:
            return v
        pieces = list(v.split([p.numel() for p in self.parts]))
        for n, j in enumerate(self.diff):
            if j in self.s.symmetric:
                m = pieces[n].reshape(self.parts[n].shape)
                pieces[n] = ((m + m.mT) / 2).reshape(-1)
        return torch.cat(pieces)

    def flat(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Flat:
        z = self.z[None]
        m = fn(self.z).numel()
        return Flat(lambda zb: fn(zb[0])[None], z, ((z.shape[1],),), ((m,),))


class _Skip(Exception):
    pass


def _loop(s: _Sampled) -> tuple[list, list[tuple[int, str]]]:
    outs, errors = [], []
    for i, tensors in enumerate(s.samples):
        try:
            outs.append(s.call(*tensors))
        except Exception as e:  # noqa: BLE001 - the op rejects this sample's values
            outs.append(None)
            errors.append((i, raised(e)))
    return outs, errors


def _vmap_route(s: _Sampled, outs: list, errors: list, device: torch.device) -> OpCheck:
    dims = s.ex.in_dims
    if errors:  # the errors route stays where the samples raised: on a GPU, an input an op
        device = torch.device("cpu")  # rejects can be a device-side assert that ends the process
    try:
        got = vmap(s.call, in_dims=dims, randomness="error")(*[b.to(device) for b in s.batched])
    except Exception as e:  # noqa: BLE001
        if errors:
            return OpCheck("errors", "vmap", Status.AGREE, f"vmap raised, as sample "
                           f"{errors[0][0]} does alone ({raised(e)})")
        return OpCheck("vmap", "vmap", Status.UNSUPPORTED, raised(e))
    if errors:
        i, why = errors[0]
        return OpCheck("errors", "vmap", Status.MISMATCH, f"vmap returned values, but sample {i} "
                       f"raises when called alone: {why}")
    bad = differ(got, stack_outputs(outs))
    return OpCheck("vmap", "vmap", Status.MISMATCH if bad else Status.AGREE, bad or "")


# NOTE [reverse mode through torch.autograd]
# Reverse-mode routes use torch.autograd.grad (create_graph for second order), as users do:
# torch.func.vjp refuses a torch.library custom op's registered backward ("must override the
# setup_context staticmethod", torch 2.13), and would leave such ops' reverse mode untested. Forward
# mode uses torch.func.jvp, after a probe with torch.autograd.forward_ad: an op with no
# forward-mode formula gives no tangent there, which torch.func.jvp silently turns into zeros (a
# custom op with only register_autograd); for a custom op such routes are unsupported, with that
# reason, rather than a zero to be judged. torch's own ops raise where they have no formula, so a
# missing tangent there is a formula that dropped it: the zero is judged like any value.
NO_FORWARD = ("no forward-mode formula: forward AD gives no tangent for this op (torch.func.jvp "
              "would silently return zeros)")


def _autograd_vjp(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  cotangent: torch.Tensor) -> torch.Tensor:
    """``Jᵀ(x) cotangent`` by torch.autograd, differentiable again (create_graph)."""
    with torch.enable_grad():
        xx = x if x.requires_grad else x.detach().requires_grad_()
        y = fn(xx)
        (g,) = torch.autograd.grad(y, xx, cotangent, create_graph=True, allow_unused=True)
    return torch.zeros_like(xx) if g is None else g


def _is_custom_op(fn: object) -> bool:
    """A torch.library custom op (it has no way to register a forward-mode formula)."""
    from torch._library.custom_ops import CustomOpDef

    return isinstance(fn, CustomOpDef)


def _has_forward_formula(p: _Point, z: torch.Tensor, v: torch.Tensor) -> bool:
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        outs = _real_outputs(p.s.call(*p.assemble(fwad.make_dual(z, v))))
        keep = p.differentiable()
        return all(fwad.unpack_dual(o).tangent is not None
                   for o, k in zip(outs, keep) if k)


def _derivative_routes(p: _Point, gen: torch.Generator, q: _Point | None = None) -> list[OpCheck]:
    """The first and second derivatives of ``q`` (``p``'s copy on the device; ``p`` itself by
    default) against finite differences of ``p``."""
    q = p if q is None else q
    z = p.z
    if not z.numel():
        return [OpCheck(r, "", Status.SKIPPED, "no differentiable floating tensor argument")
                for r in ROUTES[2:8]]
    center = p.outputs(z)
    if not torch.isfinite(center).all():
        raise _Skip("the output is not finite at this sample")
    n, m = z.numel(), center.numel()
    v = p.project(torch.randn(n, generator=gen, dtype=torch.float64))
    w = p.project(torch.randn(n, generator=gen, dtype=torch.float64))
    u = torch.randn(m, generator=gen, dtype=torch.float64)
    flat = p.flat(p.outputs)
    fd = line_reference(flat, v)
    scale = float(center.abs().max()) / max(1.0, float(z.abs().max())) * float(v.abs().max())
    forward = (not _is_custom_op(p.s.family.fn) or _has_forward_formula(p, z, v)
               or not bool(fd.value.abs().gt(fd.error * 2).any()))
    z, v, w, u = q.z, *(t.to(q.z.device) for t in (v, w, u))  # the routes' copies
    if forward:
        checks = [judge_route("forward_ad", "", lambda: jvp(q.outputs, (z,), (v,))[1], fd, scale,
                              lambda h: line_reference(flat, v.cpu(), h))]
    else:
        checks = [OpCheck("forward_ad", "", Status.UNSUPPORTED, NO_FORWARD)]
    checks.append(judge_route("reverse_ad", "", lambda: (_autograd_vjp(q.outputs, z, u) * v).sum(),
                              adjoint_reference(fd, u.cpu()), scale * float(u.abs().sum()),
                              lambda h: adjoint_reference(line_reference(flat, v.cpu(), h),
                                                          u.cpu())))
    first = next((c for c in checks if c.status == Status.AGREE), None)
    if first is None:
        return checks + [OpCheck(c, "", Status.SKIPPED, "no first derivative agreed with finite "
                                 "differences") for c in SECOND]

    def fwd(x):  # u · J(x) v by forward mode
        return (u * jvp(q.outputs, (x,), (v,))[1]).sum()

    def rev(x):  # (Jᵀ(x) u) · v by reverse mode
        return (_autograd_vjp(q.outputs, x, u) * v).sum()

    verified = rev if first.check == "reverse_ad" else fwd
    line = p.flat(lambda x: verified(x.to(z.device)).detach().cpu()[None])
    try:
        ref = line_reference(line, w.cpu())
    except Exception as e:  # noqa: BLE001 - the first derivative fails off the sample
        return checks + [OpCheck(c, "", Status.SKIPPED, raised(e)) for c in SECOND]
    one = torch.ones((), dtype=z.dtype, device=z.device)

    def fwd_over_rev():
        import torch.autograd.forward_ad as fwad

        with fwad.dual_level(), torch.enable_grad():
            x = fwad.make_dual(z.detach().clone().requires_grad_(), w)
            return fwad.unpack_dual(rev(x)).tangent

    runs = {"fwd_over_fwd": lambda: jvp(fwd, (z,), (w,))[1],
            "rev_over_fwd": lambda: (_autograd_vjp(fwd, z, one) * w).sum(),
            "fwd_over_rev": fwd_over_rev,
            "rev_over_rev": lambda: (_autograd_vjp(rev, z, one) * w).sum()}
    for label, run in runs.items():
        if "over_fwd" in label and not forward:
            checks.append(OpCheck(label, "", Status.UNSUPPORTED, NO_FORWARD))
            continue
        checks.append(judge_route(label, "", _defined(run), ref,
                                  scale * float(u.abs().sum() * w.abs().max()),
                                  lambda h: line_reference(line, w.cpu(), h)))
    return checks


def _defined(run: Callable[[], torch.Tensor | None]) -> Callable[[], torch.Tensor]:
    """``run``, with "no tangent" (an output that does not depend on the input) as an error."""
    def go():
        value = run()
        if value is None:
            raise RuntimeError("no tangent: forward mode did not reach this derivative")
        return value
    return go


def _vmapped_derivatives(s: _Sampled, p: _Point, gen: torch.Generator,
                         forward: bool | None = None,
                         device: torch.device | None = None) -> list[OpCheck]:
    """vmap of jvp / vjp over every differentiable argument, under the example's partial
    batching, with a tangent (cotangent) per sample, on ``device`` against loops of them on the
    samples' own."""
    device = p.z.device if device is None else device
    if not p.z.numel():
        return []
    b = s.ex.batch_size
    tangents = torch.stack([p.project(torch.randn(p.z.numel(), generator=gen,
                                                  dtype=torch.float64)) for _ in range(b)])
    cotangents = torch.randn((b, p.outputs(p.z).numel()), generator=gen, dtype=torch.float64)

    def point(tensors):
        q = _Point(s, list(tensors))
        q.keep = p.keep
        return q

    def per_jvp(*args):
        q = point(args[:-1])
        return jvp(lambda z: q.outputs(z, list(args[:-1])), (q.z,), (args[-1],))[1]

    def per_vjp(*args):
        q = point(args[:-1])
        return vjp(lambda z: q.outputs(z, list(args[:-1])), q.z)[1](args[-1])[0]

    out = []
    dims = (*s.ex.in_dims, 0)
    for label, per, extra in (("vmap_jvp", per_jvp, tangents), ("vmap_vjp", per_vjp, cotangents)):
        if label == "vmap_jvp" and forward is False:
            out.append(OpCheck(label, "", Status.UNSUPPORTED, NO_FORWARD))
            continue
        try:
            want = torch.stack([per(*s.samples[i], extra[i]) for i in range(b)])
        except Exception as e:  # noqa: BLE001
            out.append(OpCheck(label, "", Status.SKIPPED, f"the loop raised: {raised(e)}"))
            continue
        try:
            got = vmap(per, in_dims=dims, randomness="error")(
                *[b.to(device) for b in s.batched], extra.to(device))
        except Exception as e:  # noqa: BLE001
            out.append(OpCheck(label, "", Status.UNSUPPORTED, raised(e)))
            continue
        bad = differ(got, want, summed=True)  # each entry sums over the sample's (co)tangent
        out.append(OpCheck(label, "", Status.MISMATCH if bad else Status.AGREE, bad or ""))
    return out


def check_example(family: OpFamily, ex: OpExample, *, device=None) -> tuple[OpCheck, ...]:
    """Every route (NOTE [operator routes]) on one example, on ``device`` (default: the CPU).

    Returns:
        One :class:`~jacverify.rules.ops.OpCheck` per route that ran; empty when every sample
        raised (the example is outside the op's domain).

    >>> from jacverify.rules.op_args import op_family
    >>> example = OpExample("linalg.solve_triangular",
    ...     form(k=1, n=2, upper=False, left=True, unitriangular=True), 2, (0, None), 0)
    >>> sorted({str(c.status) for c in check_example(op_family(example.op), example)})
    ['agree']
    """
    device = resolve_device(device)
    s = _Sampled(family, ex)
    outs, errors = _loop(s)
    valid = [i for i, o in enumerate(outs) if o is not None]
    if not valid:
        return ()
    if _random(s, s.samples[valid[0]]):
        return tuple(OpCheck(r, "", Status.SKIPPED, "random: two seeds give different outputs")
                     for r in ROUTES[1:])
    checks = [_vmap_route(s, outs, errors, device)]
    gen = torch.Generator().manual_seed(ex.seed + 1)
    p = _Point(s, s.samples[valid[0]])
    q = p if device == p.z.device else _Point(s, [t.to(device) for t in p.tensors])
    try:
        routes = _derivative_routes(p, gen, q)
        forward = not any(c.detail == NO_FORWARD for c in routes)
        checks += routes + ([] if errors else _vmapped_derivatives(s, p, gen, forward, device))
    except _Skip as e:
        checks += [OpCheck(r, "", Status.SKIPPED, str(e)) for r in ROUTES[2:]]
    return tuple(_classify(family, s, c) for c in checks)


def _random(s: _Sampled, tensors: list) -> bool:
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        first = s.call(*tensors)
        torch.manual_seed(1)
        return differ(first, s.call(*tensors)) is not None
    finally:
        torch.random.set_rng_state(state)


def _classify(family: OpFamily, s: _Sampled, c: OpCheck) -> OpCheck:
    if c.check in family.unclaimed:
        return OpCheck(c.check, c.sample, Status.NOT_APPLICABLE, family.unclaimed[c.check])
    if c.status == Status.SKIPPED and s.undefined and c.check in ROUTES[2:8]:
        return OpCheck(c.check, c.sample, c.status, f"{c.detail} (at this point: {s.undefined})")
    if c.status != Status.MISMATCH:
        return c
    if s.undefined and c.check in ROUTES[2:8]:
        return OpCheck(c.check, c.sample, Status.NOT_APPLICABLE,
                       f"the derivative is not defined at this point ({s.undefined}): {c.detail}")
    if s.convention and c.check in ROUTES[2:8]:
        return OpCheck(c.check, c.sample, Status.NOT_APPLICABLE,
                       f"classified divergence, torch's documented convention ({s.convention}): "
                       f"{c.detail}")
    why = family.declared(c.check) if family.declared else None
    return OpCheck(c.check, c.sample, Status.KNOWN, f"{c.detail}; {why}") if why else c


@dataclass(frozen=True)
class OpFuzzReport:
    """A campaign on one operator: counts per route and status, the shrunk failure if any."""

    op: str
    examples: int
    verified: int
    rejected: int
    seconds: float
    seed: int
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    failure: OpExample | None = None
    checks: tuple[OpCheck, ...] = ()  # the routes on the shrunk failure
    snippet: str | None = None
    error: str | None = None
    reason: str = ""  # why nothing could be fuzzed, when nothing could

    @property
    def verdict(self) -> Verdict:
        """NOTE [earned verdict]."""
        return campaign_verdict(self.failure is not None, self.verified)

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASSED

    @property
    def wrong(self) -> tuple[OpCheck, ...]:
        return tuple(c for c in self.checks if c.status in WRONG)

    def describe(self) -> str:
        lines = [f"{self.op}: {str(self.verdict).upper()} ({self.examples} examples, "
                 f"{self.verified} verified, {self.rejected} rejected, {self.seconds:.1f} s, "
                 f"seed {self.seed})"]
        if self.reason:
            lines.append(f"  {self.reason}")
        for c in self.wrong:
            lines.append(f"  {c.check} ({c.status}): {c.detail}")
        if self.error:
            lines.append(f"  the checks raised {self.error}")
        if self.failure is not None:
            lines.append(f"  shrunk to {self.failure!r}; replay with:")
            lines += ["    " + line for line in (self.snippet or "").splitlines()]
        return "\n".join(lines)


def fuzz_op(family: OpFamily, *, max_examples: int = 50, seconds: float | None = None,
            budget: float | None = None, seed: int | None = None, database: Any = None,
            shrink_seconds: float = 30.0, shrink_examples: int | None = None,
            max_batch_size: int = MAX_BATCH, device=None) -> OpFuzzReport:
    """Fuzz one operator's derivatives and batching rules; shrink the first wrong value.

    Args:
        family: the operator (:func:`jacverify.rules.op_args.op_family` gives torch's).
        max_examples: examples to draw (when neither ``seconds`` nor ``budget`` is given).
        seconds: fuzz in runs of ``CHUNK`` examples until this is spent (campaign's own).
        budget: a hard time budget: past it (before any failure) every new example is skipped
            unrun, so the campaign ends within about one example of it. Shrinking a failure is
            governed by ``shrink_seconds`` / ``shrink_examples`` instead.
        seed: replays a campaign exactly; None draws one (printed in the report).
        database: where Hypothesis saves failures (see :class:`~jacverify.campaign.Campaign`).
        shrink_seconds, shrink_examples: the shrink budget (NOTE [shrink budget]).
        max_batch_size: the largest batch drawn.
        device: where the routes run (default: the CPU); the references stay on the CPU in
            float64 (NOTE [ops on a device] in :mod:`jacverify.rules.ops`).

    Returns:
        An :class:`OpFuzzReport`; ``report.snippet`` replays a failure.

    >>> from jacverify.rules.op_args import op_family
    >>> fuzz_op(op_family("linalg.solve_triangular"), max_examples=3, seed=0).passed
    True
    >>> report = fuzz_op(op_family("cholesky_solve"), max_examples=20, seed=0)
    >>> report.failure.form, sorted(c.check for c in report.wrong)
    ((('k', 1), ('n', 2), ('upper', False)), ['forward_ad', 'reverse_ad'])
    """
    if budget is not None and not budget > 0:
        raise InvalidArgument(f"budget={budget!r} must be a positive number of seconds or None")
    device = resolve_device(device)
    campaign = Campaign(max_examples=max_examples, seconds=seconds if budget is None else budget,
                        seed=seed,
                        database=database, shrink_seconds=shrink_seconds,
                        shrink_examples=shrink_examples)
    start = time.perf_counter()
    state = {"failed": False, "unrun": 0}
    refusals: list[str] = []  # why jacverify could not run drawn examples (the first three)

    def check(ex: OpExample) -> Trial:
        if budget is not None and not state["failed"] and time.perf_counter() - start > budget:
            state["unrun"] += 1  # past the budget: not run, and not counted (NOTE [operator budget])
            return Trial(Verdict.UNVERIFIED)
        try:
            checks = check_example(family, ex, device=device)
        except Exception as e:  # noqa: BLE001 - jacverify cannot run this example: say why
            if len(refusals) < 3 and raised(e) not in refusals:
                refusals.append(raised(e))
            return Trial(Verdict.REJECTED)
        if not checks:
            return Trial(Verdict.REJECTED, checks)
        if any(c.status in WRONG for c in checks):
            state["failed"] = True
            return Trial(Verdict.FAILED, checks)
        agreed = any(c.status == Status.AGREE for c in checks)
        return Trial(Verdict.PASSED if agreed else Verdict.UNVERIFIED, checks)

    key = f"jacverify.fuzz_op {family.name} {family.ref}"
    examples = op_examples(family, max_batch_size=max_batch_size)
    try:
        result = campaign.run(examples, check, key=key,
                              replay=lambda t: snippet(family, t.example, t.outcome or (),
                                                       device=device),
                              tally=lambda checks: ((c.check, str(c.status)) for c in checks))
    except Unsatisfiable:
        why = f": jacverify could not run them ({'; '.join(refusals)})" if refusals else ""
        return OpFuzzReport(family.name, 0, 0, 0, time.perf_counter() - start, campaign.seed,
                            reason="every drawn example was rejected (each sample raised, or "
                            f"jacverify could not run it) or the budget was spent before one "
                            f"ran{why}")
    result = dataclasses.replace(result, examples=result.examples - state["unrun"],
                                 seconds=time.perf_counter() - start)
    if not result.examples and not result.failure:
        refusals.insert(0, "the budget was spent before any example ran")
    f = result.failure
    why = f"some examples could not be run: {'; '.join(refusals)}" if refusals else ""
    return OpFuzzReport(family.name, result.examples, result.verified, result.rejected,
                        result.seconds, result.seed, result.counts,
                        f.example if f else None, tuple(f.outcome or ()) if f else (),
                        result.snippet, f.error if f else None, why)


def _literal(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        data = x.tolist()
        return f"torch.tensor({data!r}, dtype={x.dtype})"
    if isinstance(x, (list, tuple)):
        inner = ", ".join(_literal(y) for y in x)
        return f"[{inner}]" if isinstance(x, list) else f"({inner}{',' if len(x) == 1 else ''})"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {_literal(y)}" for k, y in x.items()) + "}"
    return repr(x)


def snippet(family: OpFamily, ex: OpExample, checks=(), *, device=None) -> str:
    """Code that replays ``ex``: the op called on its first sample's values (when small enough
    to print), the vmap call when a batching route failed, and the routes re-run (on
    ``device``)."""
    lines = ["import torch", family.imports]
    try:
        s = _Sampled(family, ex)
        size = sum(t.numel() for t in s.batched)
    except Exception:  # noqa: BLE001 - no literal call, the replay lines still replay it
        size = LITERAL_LIMIT + 1
    bad = [c.check for c in checks if c.status in WRONG]
    if size <= LITERAL_LIMIT:
        c0 = s.calls[0]
        args = ", ".join([_literal(a) for a in c0.args]
                         + [f"{k}={_literal(v)}" for k, v in c0.kwargs.items()])
        lines.append(f"print({family.code}({args}))  # sample 0, as users call it")
        if bad and bad[0] in ("vmap", "errors", "vmap_jvp", "vmap_vjp"):
            lines.append("# what vmap receives, per tensor argument (in_dims="
                         f"{ex.in_dims}): " + ", ".join(_literal(t) for t in s.batched))
    lines.append("from jacverify.rules.op_fuzzer import OpExample, check_example")
    lines.append(f"family = {family.ref}")
    lines.append(f"example = {ex!r}")
    on = "" if device is None or torch.device(device).type == "cpu" else f", device={str(device)!r}"
    lines.append(f"print([c for c in check_example(family, example{on}) if c.status != 'agree'])")
    return "\n".join(lines)
