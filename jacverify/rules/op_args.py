"""Argument families for :func:`~jacverify.rules.op_fuzzer.fuzz_op`: torch's operators with
inputs valid by construction and every keyword variant drawn (:data:`FAMILIES`), and a generic
family for any OpInfo entry (:func:`opinfo_family`).

NOTE [drawing beyond OpInfo]
OpInfo's samples are built for its gradcheck wrappers, and so inherit their blind spots. Here:
- the op is called as users call it (no wrapper): a triangular solve gets a full matrix whose
  other triangle is random, so a derivative that leaks into the triangle the op never reads is
  seen (finite differences of the raw op there are exactly zero); unitriangular gets a random
  diagonal, which it must ignore;
- valid inputs are built, not patched: a Cholesky factor is a random lower-triangular matrix with
  a diagonal in [0.5, 2], a positive definite matrix is M Mᵀ + n I, eigen/singular values are
  spread (ratio of neighbours >= 1.3), clustered (two within 1e-2) or repeated (the derivative of
  the eigenvectors is then not defined, and the result says so);
- structure is drawn on purpose: duplicate indices (index_add, index_put with accumulate=True,
  scatter_add, scatter_reduce, gather), overlapping windows (pooling with stride < kernel),
  exact zeros (scatter_reduce's prod);
- every keyword the signature allows is drawn (upper, left, transpose, unitriangular, UPLO,
  reduction, label_smoothing, ceil_mode, count_include_pad, divisor_override, include_self, ...);
- batch_norm's running statistics are frozen: never differentiated, still batched or shared;
- ops documented for Hermitian input (cholesky, eigh, eigvalsh) are differentiated along
  symmetric directions only: torch's convention is the derivative on the space of Hermitian
  matrices, which a full direction would call a mismatch (a classified divergence, not a bug);
- complex: fft.rfft (real to complex) and fft.irfft, abs and polar, through real views.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from hypothesis import strategies as st

from jacverify.errors import InvalidArgument
from jacverify.rules.op_fuzzer import Call, OpFamily, form

__all__ = ["op_family", "opinfo_family", "FAMILIES", "family_names", "VALUE_MODES"]

F64 = torch.float64
VALUE_MODES = ("sample", "general", "zeros", "ties")


def _randn(gen, *shape):
    return torch.randn(shape, generator=gen, dtype=F64)


def _rand(gen, *shape):
    return torch.rand(shape, generator=gen, dtype=F64)


def _factor(gen, n: int) -> torch.Tensor:
    """A general lower-triangular Cholesky factor: random below the diagonal, diagonal in [0.5, 2]."""
    return torch.tril(_randn(gen, n, n), -1) + torch.diag(0.5 + 1.5 * _rand(gen, n))


def _triangle_matrix(gen, n: int, upper: bool) -> torch.Tensor:
    """A full random matrix whose ``upper`` (or lower) triangle is well conditioned: the diagonal
    has magnitude in [1, 2] with random signs, the other triangle is random too (not read)."""
    a = _randn(gen, n, n) * 0.5
    sign = torch.where(_rand(gen, n) < 0.5, -1.0, 1.0).to(F64)
    return a - torch.diag(torch.diagonal(a)) + torch.diag(sign * (1 + _rand(gen, n)))


def _orthogonal(gen, n: int) -> torch.Tensor:
    q, r = torch.linalg.qr(_randn(gen, n, n))
    return q * torch.sign(torch.diagonal(r))


def _spectrum(gen, n: int, kind: str, positive: bool = False) -> tuple[torch.Tensor, str]:
    base = torch.cumprod(torch.full((n,), 1.3, dtype=F64), 0) * (0.5 + _rand(gen, 1))
    if not positive:
        base = base - base.mean()
    if kind == "clustered" and n >= 2:
        base[1] = base[0] + 1e-2
        return base, ""
    if kind == "repeated" and n >= 2:
        base[1] = base[0]
        return base, "repeated eigen/singular values: their vectors' derivative is not defined"
    return base, ""


def _symmetric_pd(gen, n: int) -> torch.Tensor:
    m = _randn(gen, n, n)
    return m @ m.mT + n * torch.eye(n, dtype=F64)


def _indices(gen, size: int, count: int, duplicates: bool) -> torch.Tensor:
    if duplicates:
        idx = torch.randint(0, size, (count,), generator=gen)
        if count >= 2:
            idx[-1] = idx[0]
        return idx
    return torch.randperm(size, generator=gen)[:count]


def _flag(*names: str):
    return st.fixed_dictionaries({n: st.booleans() for n in names})


def _family(name, fn, forms, build, code, **kw) -> OpFamily:
    return OpFamily(name, fn, forms.map(lambda d: form(**d)), build, code,
                    f"op_family({name!r})", "from jacverify.rules.op_args import op_family", **kw)


def _n(lo=1, hi=4):
    return st.integers(lo, hi)


# -- linear algebra ----------------------------------------------------------------------------

def _cholesky_solve(f, gen):
    l_ = _factor(gen, f["n"])
    return Call((_randn(gen, f["n"], f["k"]), l_.mT if f["upper"] else l_),
                {"upper": f["upper"]})


def _cholesky_inverse(f, gen):
    l_ = _factor(gen, f["n"])
    return Call((l_.mT if f["upper"] else l_,), {"upper": f["upper"]})


def _triangular_solve(f, gen):
    n, k = f["n"], f["k"]
    return Call((_randn(gen, n, k), _triangle_matrix(gen, n, f["upper"])),
                {"upper": f["upper"], "transpose": f["transpose"],
                 "unitriangular": f["unitriangular"]})


def _solve_triangular(f, gen):
    n, k = f["n"], f["k"]
    b = _randn(gen, n, k) if f["left"] else _randn(gen, k, n)
    return Call((_triangle_matrix(gen, n, f["upper"]), b),
                {"upper": f["upper"], "left": f["left"], "unitriangular": f["unitriangular"]})


def _cholesky(f, gen):
    return Call((_symmetric_pd(gen, f["n"]),), {"upper": f["upper"]}, symmetric=frozenset({0}))


def _eigh_input(f, gen):
    lam, why = _spectrum(gen, f["n"], f["spectrum"])
    q = _orthogonal(gen, f["n"])
    return Call(((q * lam) @ q.mT,), {"UPLO": f["UPLO"]}, symmetric=frozenset({0}), undefined=why)


def _projectors(out):
    """Eigenvalues and the projectors v vᵀ (each eigenvector's sign is arbitrary; these are not)."""
    values, vectors = out
    return values, vectors[..., :, None, :] * vectors[..., None, :, :]


def _svd_input(f, gen):
    s, why = _spectrum(gen, min(f["m"], f["n"]), f["spectrum"], positive=True)
    u, v = _orthogonal(gen, f["m"]), _orthogonal(gen, f["n"])
    k = len(s)
    return Call(((u[:, :k] * s) @ v[:, :k].mT,), {"full_matrices": False}, undefined=why)


def _svd_outputs(out):
    """Singular values and u_j v_jᵀ (a joint sign flip of u_j and v_j leaves it unchanged)."""
    u, s, vh = out
    return s, u.mT[..., :, :, None] * vh[..., :, None, :]


def _solve(f, gen):
    n, k = f["n"], f["k"]
    a = _randn(gen, n, n) + 2 * n ** 0.5 * torch.eye(n, dtype=F64)
    b = _randn(gen, n, k) if f["left"] else _randn(gen, k, n)
    return Call((a, b), {"left": f["left"]})


# -- indexing with duplicates ------------------------------------------------------------------

def _index_add(f, gen):
    n, m, k, dim = f["n"], f["m"], f["k"], f["dim"]
    x = _randn(gen, n, m)
    size = x.shape[dim]
    src_shape = (k, m) if dim == 0 else (n, k)
    return Call((x, dim, _indices(gen, size, k, f["duplicates"]), _randn(gen, *src_shape)),
                {"alpha": f["alpha"]})


def index_put(x, index, values, accumulate):
    """``torch.index_put(x, (index,), values, accumulate=accumulate)`` (indices as one tensor)."""
    return torch.index_put(x, (index,), values, accumulate=accumulate)


def _index_put(f, gen):
    n, m, k = f["n"], f["m"], f["k"]
    dup = f["accumulate"] and f["duplicates"]  # without accumulate, which duplicate wins is unspecified
    return Call((_randn(gen, n, m), _indices(gen, n, min(k, n) if not dup else k, dup),
                 _randn(gen, min(k, n) if not dup else k, m), f["accumulate"]))


def _scatter_index(gen, n, m, k, dim, duplicates):
    """An index of shape (k, m) (dim 0) or (n, k) (dim 1) into an (n, m) tensor."""
    if dim == 0:
        cols = [_indices(gen, n, k, duplicates) if duplicates else
                torch.randperm(n, generator=gen)[:k] for _ in range(m)]
        return torch.stack(cols, 1)
    rows = [_indices(gen, m, k, duplicates) if duplicates else
            torch.randperm(m, generator=gen)[:k] for _ in range(n)]
    return torch.stack(rows, 0)


def _scatter_add(f, gen):
    n, m, dim = f["n"], f["m"], f["dim"]
    k = f["k"] if f["duplicates"] else min(f["k"], n if dim == 0 else m)
    index = _scatter_index(gen, n, m, k, dim, f["duplicates"])
    return Call((_randn(gen, n, m), dim, index, _randn(gen, *index.shape)))


def _scatter_reduce(f, gen):
    n, m, dim = f["n"], f["m"], f["dim"]
    k = f["k"] if f["duplicates"] else min(f["k"], n if dim == 0 else m)
    index = _scatter_index(gen, n, m, k, dim, f["duplicates"])
    src = _randn(gen, *index.shape)
    x = _randn(gen, n, m)
    if f["zeros"]:
        src.view(-1)[0] = 0.0
        x.view(-1)[-1] = 0.0
    return Call((x, dim, index, src, f["reduce"]), {"include_self": f["include_self"]})


def _gather(f, gen):
    n, m, k, dim = f["n"], f["m"], f["k"], f["dim"]
    index = _scatter_index(gen, n, m, k, dim, f["duplicates"])
    return Call((_randn(gen, n, m), dim, index))


# -- pooling: overlapping windows --------------------------------------------------------------

def _pool(f, gen):
    k, s = f["kernel"], f["stride"]
    pad = min(f["padding"], k // 2)
    d = f.get("dilation", 1)
    length = (k - 1) * d + 1 + f["extra"]
    shape = (f["channels"], length) if f["dims"] == 1 else (f["channels"], length, length + 1)
    kw = {"kernel_size": k, "stride": s, "padding": pad, "ceil_mode": f["ceil_mode"]}
    if f["kind"] == "max":
        kw["dilation"] = d
    else:
        kw["count_include_pad"] = f["count_include_pad"]
        if f["dims"] == 2 and f["divisor_override"]:
            kw["divisor_override"] = f["divisor_override"]
    return Call((_randn(gen, *shape),), kw)


def pool(x, *, kind: str, **kw):
    """``F.{max,avg}_pool{1,2}d(x, **kw)`` by the input's rank (C, L) or (C, H, W)."""
    fn = {("max", 2): F.max_pool1d, ("max", 3): F.max_pool2d,
          ("avg", 2): F.avg_pool1d, ("avg", 3): F.avg_pool2d}[kind, x.ndim]
    return fn(x, **kw)


def _pool_call(f, gen):
    c = _pool(f, gen)
    return Call(c.args, {"kind": f["kind"], **c.kwargs})


# -- normalisation and losses ------------------------------------------------------------------

def _batch_norm(f, gen):
    n, c = f["n"], f["channels"]
    x = _randn(gen, n, c, f["length"]) if f["length"] else _randn(gen, n, c)
    mean, var = _randn(gen, c) * 0.1, 0.5 + _rand(gen, c)
    w = _randn(gen, c) if f["affine"] else None
    b = _randn(gen, c) if f["affine"] else None
    return Call((x, mean, var, w, b, f["training"], 0.1, 1e-5), frozen=frozenset({1, 2}))


def _cross_entropy(f, gen):
    n, c = f["n"], f["classes"]
    x = _randn(gen, n, c)
    if f["probabilities"]:
        target = torch.softmax(_randn(gen, n, c), -1)
    else:
        target = torch.randint(0, c, (n,), generator=gen)
    weight = 0.5 + _rand(gen, c) if f["weighted"] else None
    kw = {"weight": weight, "reduction": f["reduction"], "label_smoothing": f["label_smoothing"]}
    if not f["probabilities"] and f["ignore"]:
        kw["ignore_index"] = int(target[0])
    return Call((x, target), kw, frozen=frozenset({2}) if weight is not None else frozenset())


def _smooth_l1(f, gen):
    shape = (f["n"], 2)
    return Call((_randn(gen, *shape), _randn(gen, *shape)),
                {"reduction": f["reduction"], "beta": f["beta"]})


# -- complex -------------------------------------------------------------------------------------

def _rfft(f, gen):
    return Call((_randn(gen, f["n"]),), {"n": f["size"], "norm": f["norm"]})


def _irfft(f, gen):
    x = torch.complex(_randn(gen, f["n"]), _randn(gen, f["n"]))
    return Call((x,), {"n": f["size"], "norm": f["norm"]})


def _abs_complex(f, gen):
    return Call((torch.complex(_randn(gen, f["n"]), _randn(gen, f["n"])),))


def _polar(f, gen):
    return Call((0.5 + _rand(gen, f["n"]), _randn(gen, f["n"])))


_NORMS = st.sampled_from((None, "forward", "backward", "ortho"))
_REDUCTIONS = st.sampled_from(("mean", "sum", "none"))
_SPECTRA = st.sampled_from(("spread", "clustered", "repeated"))

FAMILIES: dict[str, OpFamily] = {f.name: f for f in (
    _family("cholesky_solve", torch.cholesky_solve,
            st.fixed_dictionaries({"n": _n(), "k": _n(1, 3), "upper": st.booleans()}),
            _cholesky_solve, "torch.cholesky_solve"),
    _family("cholesky_inverse", torch.cholesky_inverse,
            st.fixed_dictionaries({"n": _n(), "upper": st.booleans()}),
            _cholesky_inverse, "torch.cholesky_inverse"),
    _family("triangular_solve", torch.triangular_solve,
            st.fixed_dictionaries({"n": _n(), "k": _n(1, 3), "upper": st.booleans(),
                                   "transpose": st.booleans(), "unitriangular": st.booleans()}),
            _triangular_solve, "torch.triangular_solve"),
    _family("linalg.solve_triangular", torch.linalg.solve_triangular,
            st.fixed_dictionaries({"n": _n(), "k": _n(1, 3), "upper": st.booleans(),
                                   "left": st.booleans(), "unitriangular": st.booleans()}),
            _solve_triangular, "torch.linalg.solve_triangular"),
    _family("linalg.cholesky", torch.linalg.cholesky,
            st.fixed_dictionaries({"n": _n(), "upper": st.booleans()}), _cholesky,
            "torch.linalg.cholesky"),
    _family("linalg.eigh", torch.linalg.eigh,
            st.fixed_dictionaries({"n": _n(), "UPLO": st.sampled_from("LU"),
                                   "spectrum": _SPECTRA}),
            _eigh_input, "torch.linalg.eigh", process=_projectors),
    _family("linalg.eigvalsh", torch.linalg.eigvalsh,
            st.fixed_dictionaries({"n": _n(), "UPLO": st.sampled_from("LU"),
                                   "spectrum": _SPECTRA}),
            _eigh_input, "torch.linalg.eigvalsh"),
    _family("linalg.svd", torch.linalg.svd,
            st.fixed_dictionaries({"m": _n(), "n": _n(), "spectrum": _SPECTRA}),
            _svd_input, "torch.linalg.svd", process=_svd_outputs),
    _family("linalg.solve", torch.linalg.solve,
            st.fixed_dictionaries({"n": _n(), "k": _n(1, 3), "left": st.booleans()}),
            _solve, "torch.linalg.solve"),
    _family("index_add", torch.index_add,
            st.fixed_dictionaries({"n": _n(), "m": _n(1, 3), "k": _n(1, 4), "dim": st.sampled_from((0, 1)),
                                   "duplicates": st.booleans(), "alpha": st.sampled_from((1.0, -0.5))}),
            _index_add, "torch.index_add"),
    _family("index_put", index_put,
            st.fixed_dictionaries({"n": _n(), "m": _n(1, 3), "k": _n(1, 4),
                                   "accumulate": st.booleans(), "duplicates": st.booleans()}),
            _index_put, "op_family('index_put').fn",
            ),
    _family("scatter_add", torch.scatter_add,
            st.fixed_dictionaries({"n": _n(), "m": _n(1, 3), "k": _n(1, 4), "dim": st.sampled_from((0, 1)),
                                   "duplicates": st.booleans()}),
            _scatter_add, "torch.scatter_add"),
    _family("scatter_reduce", torch.scatter_reduce,
            st.fixed_dictionaries({"n": _n(), "m": _n(1, 3), "k": _n(1, 4), "dim": st.sampled_from((0, 1)),
                                   "duplicates": st.booleans(), "zeros": st.booleans(),
                                   "reduce": st.sampled_from(("sum", "prod", "mean", "amax", "amin")),
                                   "include_self": st.booleans()}),
            _scatter_reduce, "torch.scatter_reduce"),
    _family("gather", torch.gather,
            st.fixed_dictionaries({"n": _n(), "m": _n(1, 3), "k": _n(1, 4), "dim": st.sampled_from((0, 1)),
                                   "duplicates": st.booleans()}),
            _gather, "torch.gather"),
    _family("pool", pool,
            st.fixed_dictionaries({"kind": st.sampled_from(("max", "avg")), "dims": st.sampled_from((1, 2)),
                                   "kernel": st.integers(2, 3), "stride": st.integers(1, 2),
                                   "padding": st.integers(0, 1), "dilation": st.integers(1, 2),
                                   "extra": st.integers(0, 2), "channels": st.integers(1, 2),
                                   "ceil_mode": st.booleans(), "count_include_pad": st.booleans(),
                                   "divisor_override": st.sampled_from((None, 2))}),
            _pool_call, "op_family('pool').fn"),
    _family("nn.functional.batch_norm", F.batch_norm,
            st.fixed_dictionaries({"n": st.integers(2, 4), "channels": _n(1, 3),
                                   "length": st.integers(0, 2), "affine": st.booleans(),
                                   "training": st.booleans()}),
            _batch_norm, "torch.nn.functional.batch_norm"),
    _family("nn.functional.cross_entropy", F.cross_entropy,
            st.fixed_dictionaries({"n": _n(1, 3), "classes": st.integers(2, 4),
                                   "probabilities": st.booleans(), "weighted": st.booleans(),
                                   "reduction": _REDUCTIONS, "ignore": st.booleans(),
                                   "label_smoothing": st.sampled_from((0.0, 0.2))}),
            _cross_entropy, "torch.nn.functional.cross_entropy"),
    _family("nn.functional.smooth_l1_loss", F.smooth_l1_loss,
            st.fixed_dictionaries({"n": _n(1, 3), "reduction": _REDUCTIONS,
                                   "beta": st.sampled_from((1.0, 0.5, 2.0))}),
            _smooth_l1, "torch.nn.functional.smooth_l1_loss"),
    _family("fft.rfft", torch.fft.rfft,
            st.fixed_dictionaries({"n": st.integers(1, 5), "size": st.sampled_from((None, 3, 6)),
                                   "norm": _NORMS}),
            _rfft, "torch.fft.rfft"),
    _family("fft.irfft", torch.fft.irfft,
            st.fixed_dictionaries({"n": st.integers(2, 4), "size": st.sampled_from((None, 3, 4, 6)),
                                   "norm": _NORMS}),
            _irfft, "torch.fft.irfft"),
    _family("abs.complex", torch.abs, st.fixed_dictionaries({"n": _n()}), _abs_complex,
            "torch.abs"),
    _family("polar", torch.polar, st.fixed_dictionaries({"n": _n()}), _polar, "torch.polar"),
)}


def family_names() -> tuple[str, ...]:
    """The operators with a family of their own (the others: :func:`opinfo_family`)."""
    return tuple(FAMILIES)


# -- any OpInfo entry ----------------------------------------------------------------------------

_FROZEN_NAMES = ("running_mean", "running_var")
_FROZEN_ARGS = {"nn.functional.batch_norm": (0, 1), "nn.functional.instance_norm": ()}
SAMPLES = 6  # OpInfo samples per operator a generic family draws from


def _revalued(t: torch.Tensor, mode: str, gen) -> torch.Tensor:
    if not t.is_floating_point() or not t.numel():
        return t
    if mode == "sample":
        return t * (1 + 0.25 * (2 * torch.rand(t.shape, generator=gen, dtype=t.dtype) - 1))
    if mode == "general":
        spread = float(t.abs().max()) or 1.0
        return t.sign() * spread * (0.1 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
    flat = t.clone().reshape(-1)
    pick = torch.rand(flat.shape, generator=gen) < 1 / 3
    if mode == "zeros":
        flat[pick] = 0.0
    else:  # ties: entries copied from the first
        flat[pick] = flat[0]
    return flat.reshape(t.shape)


# NOTE [generic family domains]
# The generic family revalues OpInfo's samples, which can leave an op's domain or land on a point
# where its derivative is not defined; there jacverify, not torch, would be wrong. Per operator:
# - linalg.cholesky_ex: the input is made positive definite (A Aᵀ + n I) after revaluing (a general
#   matrix makes it return info > 0 and an unfactored L, whose "derivative" means nothing);
# - linalg.eig: eigenvectors are compared as the projectors v vᴴ (torch normalises each to norm 1,
#   its phase is arbitrary: a gauge the derivative does not fix, as its documentation says);
# - nn.functional.ctc_loss: called on log_softmax of its input, as torch's own gradcheck wrapper
#   does: its gradient assumes normalised log-probabilities (it is the gradient through
#   log_softmax), a documented convention; on unnormalised ones it is not the op's derivative;
# - nn.functional.embedding with padding_idx: its documentation says that row gets no gradient
#   (reverse mode gives 0 there, forward mode the derivative): a classified divergence;
# - scatter_reduce.amin/amax under the zeros values (exact zeros tie) and nextafter where x == y
#   (it returns y there: a step at rounding scale): the derivative is not defined; said, not judged.
_TIES = ("scatter_reduce.amin", "scatter_reduce.amax")


def _eig_outputs(out):
    """Eigenvalues and the projectors v vᴴ (each eigenvector's phase is arbitrary; these are not)."""
    values, vectors = out
    return values, vectors[..., :, None, :] * vectors.conj()[..., None, :, :]


def _domain(name: str, values: str, args: tuple, kw: dict) -> tuple[tuple, str, str]:
    """``args`` moved into the op's domain, why the derivative is not defined here, and the
    documented convention that applies here (NOTE [generic family domains])."""
    undefined = ("ties: drawn values repeat, where a derivative may not be defined"
                 if values == "ties" else "")
    convention = ""
    if name == "linalg.cholesky_ex":
        a = args[0]
        args = (a @ a.mT + a.shape[-1] * torch.eye(a.shape[-1], dtype=a.dtype), *args[1:])
    elif name in _TIES and values == "zeros":
        undefined = "exact zeros tie, and amin/amax's derivative is not defined at ties"
    elif name == "nextafter" and bool((args[0] == args[1]).any()):
        undefined = "x == y: nextafter returns y there, a step at rounding scale"
    elif name == "nn.functional.embedding" and kw.get("padding_idx") is not None:
        convention = "embedding: the row at padding_idx gets no gradient"
    return args, undefined, convention


def opinfo_family(op) -> OpFamily:
    """A family for any OpInfo entry: its first ``SAMPLES`` samples give the structure (called
    through the raw op, not its gradcheck wrapper), with values drawn per :data:`VALUE_MODES`:
    the sample's own scaled per entry, general ones (new magnitudes, signs kept), exact zeros, or
    ties (some entries equal to the first: a point where the derivative may not be defined)."""
    from jacverify.rules.ops import declared, full_name, incomparable

    name = full_name(op)
    if incomparable(op):
        raise InvalidArgument(f"OpInfo {name!r} cannot be fuzzed: {incomparable(op)}")
    samples = _opinfo_samples(op)
    if not samples:
        raise InvalidArgument(f"OpInfo {name!r} has no sample with a floating tensor input")
    hermitian = "hermitian" in getattr(op.gradcheck_wrapper, "__name__", "")
    frozen_args = _FROZEN_ARGS.get(name, ())

    def build(f, gen):
        sample = samples[f["sample"]]
        args = (sample.input, *sample.args)
        frozen_ids = {id(sample.args[i]) for i in frozen_args if i < len(sample.args)}
        frozen_ids |= {id(sample.kwargs[k]) for k in _FROZEN_NAMES if k in sample.kwargs}
        leaves, spec = pytree.tree_flatten((args, dict(sample.kwargs)))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        frozen = frozenset(j for j, t in enumerate(tensors) if id(t) in frozen_ids)
        new = [_revalued(x, f["values"], gen) if isinstance(x, torch.Tensor) else x
               for x in leaves]
        if hermitian:
            new[0] = (new[0] + new[0].mT) / 2
        a, kw = pytree.tree_unflatten(new, spec)
        a, undefined, convention = _domain(name, f["values"], tuple(a), kw)
        return Call(a, kw, frozen=frozen, symmetric=frozenset({0}) if hermitian else frozenset(),
                    undefined=undefined, convention=convention)

    forms = st.fixed_dictionaries({"sample": st.integers(0, len(samples) - 1),
                                   "values": st.sampled_from(VALUE_MODES)})
    fn = op.op
    if getattr(op.gradcheck_wrapper, "__name__", "") == "gradcheck_wrapper_ctc_loss":
        fn = functools.partial(op.gradcheck_wrapper, op.op)  # log_softmax first, as torch's tests
    return OpFamily(name, fn, forms.map(lambda d: form(**d)), build,
                    f"op_family({name!r}, opinfo=True).fn", f"op_family({name!r}, opinfo=True)",
                    "from jacverify.rules.op_args import op_family",
                    process=_eig_outputs if name == "linalg.eig" else None,
                    declared=lambda route: declared(op, route))


def _opinfo_samples(op) -> list:
    taken = []
    try:
        for s in op.sample_inputs("cpu", F64, requires_grad=False):
            leaves = pytree.tree_leaves((s.input, s.args, dict(s.kwargs)))
            if isinstance(s.input, torch.Tensor) and all(
                    t.layout == torch.strided for t in leaves if isinstance(t, torch.Tensor)):
                taken.append(s)  # sparse layouts are left to the sweep
            if len(taken) == SAMPLES:
                break
    except Exception:  # noqa: BLE001 - the database's own generator failed: nothing to draw
        return []
    return taken


@functools.lru_cache(maxsize=None)
def op_family(name: str, opinfo: bool = False) -> OpFamily:
    """The family for ``name``: its own (:data:`FAMILIES`) unless ``opinfo``, else the generic
    family of the OpInfo entry of that name.

    Raises:
        InvalidArgument: no such family and no such OpInfo entry.

    >>> op_family("cholesky_solve").code
    'torch.cholesky_solve'
    """
    if name in FAMILIES and not opinfo:
        return FAMILIES[name]
    from jacverify.rules.ops import select_ops

    ops = select_ops([name])
    return opinfo_family(ops[0])


Builder = Callable[[dict, torch.Generator], Call]
