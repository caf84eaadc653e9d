"""Per-sample gradients with respect to parameters (DP-SGD, influence functions, per-sample Fisher).

For a per-sample loss ``l_b = loss(model(x)_b, y_b)`` the quantity is d l_b / d theta for every
parameter, (B, *p.shape) each. NOTE [parameters as the input] says how the references are built.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jacverify import validation
from jacverify.case import Flat, unravel
from jacverify.errors import InvalidArgument, NotApplicable
from jacverify.judge import Status
from jacverify.methods import Method, get_methods
from jacverify.methods.param_grads import GradProblem
from jacverify.references import DEFAULT_MAX_MEMORY, DEFAULT_TIME_BUDGET
from jacverify.report import Report

__all__ = ["check_per_sample_grads", "check_user_per_sample_grads", "per_sample_loss",
           "PROJECTION_ABOVE"]

PROJECTION_ABOVE = 4096  # parameters above which verification="auto" projects (6 P forward passes)
_COUPLING_MODULES = (nn.modules.batchnorm._BatchNorm,)


# NOTE [parameters as the input]
# The per-sample gradients are the Jacobian of the vector of per-sample losses L(theta) =
# (l_1, ..., l_B), the whole batch through the model once, with respect to the parameters theta.
# So the check is the per-sample Jacobian check of one "sample" theta (1, P) with B outputs: the
# float64 references are finite differences per parameter entry (6 P forward passes of the batch;
# verification="projection" for large models, a few passes per probe) and the loop (one backward
# per sample's loss), trusted only when it agrees with finite differences. A method's (B, P) is
# judged as (1, B, P). Samples that interact (BatchNorm in training mode, or a loss on the whole
# batch differing from each sample alone) make a per-sample gradient a different thing from
# "each sample's own gradient": methods that run samples apart are not_applicable then, as Opacus
# itself refuses BatchNorm; the batched backward, which differentiates l_b through the batch, runs.
class LossOfParameters(nn.Module):
    """theta (1, P) -> the per-sample losses (1, B) of the whole batch: NOTE [parameters as the
    input]. A module, so ``.double()`` reaches the model and the inputs."""

    def __init__(self, problem: GradProblem) -> None:
        super().__init__()
        self.model = problem.model
        self.loss, self.names, self.shapes = problem.loss, problem.names, problem.shapes
        for i, x in enumerate(problem.inputs):
            self.register_buffer(f"input{i}", x)
        self.register_buffer("targets", problem.targets)
        self.n_inputs = len(problem.inputs)

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f"input{i}") for i in range(self.n_inputs))

    def problem(self) -> GradProblem:
        return GradProblem(self.model, self.inputs, self.targets, self.loss, self.names, self.shapes)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = math.prod(shape)
            params[name] = theta[0, start:start + n].reshape(shape)
            start += n
        out = torch.func.functional_call(self.model, params, self.inputs)
        return self.loss(out, self.targets).reshape(1, -1)

    @property
    def __name__(self) -> str:
        return f"per-sample losses of {type(self.model).__name__}"


def per_sample_loss(loss: str | Callable, targets: torch.Tensor) -> Callable:
    """The per-sample loss ``(outputs, targets) -> (B,)`` that ``loss`` names.

    Args:
        loss: ``"auto"`` (cross entropy for integer targets, else squared error), ``"cross_entropy"``,
            ``"mse"`` (squared error summed over each sample's entries), or a callable returning (B,).

    Raises:
        InvalidArgument: another string.

    >>> l = per_sample_loss("mse", torch.zeros(2, 3))
    >>> l(torch.ones(2, 3), torch.zeros(2, 3)).tolist()
    [3.0, 3.0]
    """
    if callable(loss):
        return loss
    validation.check_choice("loss", loss, ("auto", "cross_entropy", "mse"))
    if loss == "auto":
        loss = "mse" if targets.is_floating_point() else "cross_entropy"
    if loss == "cross_entropy":
        return _cross_entropy
    return _squared_error


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.ndim > 2:  # (B, T, C) sequence outputs: summed over positions
        return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="none").reshape(
            y.shape).flatten(1).sum(1)
    return F.cross_entropy(out, y, reduction="none")


def _squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y.to(out)) ** 2).reshape(out.shape[0], -1).sum(1)


def _problem(model: Any, x: Any, y: Any, loss: str | Callable, dtype, device) -> GradProblem:
    if not isinstance(model, nn.Module):
        raise validation.invalid("model", model, "an nn.Module",
                                 "per-sample gradients are taken with respect to its parameters")
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x) if isinstance(x, (tuple, list)) else x
    if not isinstance(xs, tuple) or not xs or not all(isinstance(t, torch.Tensor) for t in xs):
        raise validation.invalid("x", x, "a tensor or a tuple of tensors, batch first")
    if not isinstance(y, torch.Tensor):
        raise validation.invalid("y", y, "a tensor of targets, one per sample")
    sizes = {t.shape[0] for t in xs} | {y.shape[0]}
    if len(sizes) != 1 or 0 in sizes:
        raise InvalidArgument(f"x and y have batch sizes {sorted(sizes)}; every input and the "
                              "targets need one entry per sample, batch first")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise validation.invalid("dtype", dtype, "a floating torch.dtype")
    from jacverify.case import resolve_device

    device = resolve_device(device, next(model.parameters(), xs[0]).device)
    model = model if dtype is None and device == next(model.parameters(), xs[0]).device else \
        __import__("copy").deepcopy(model).to(device=device, **({"dtype": dtype} if dtype else {}))
    xs = tuple(t.detach().to(device=device, **({"dtype": dtype} if dtype and t.is_floating_point()
                                                 else {})) for t in xs)
    y = y.detach().to(device=device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise validation.invalid("model", model, "a module with parameters that require grad")
    return GradProblem(model, xs, y, per_sample_loss(loss, y), tuple(n for n, _ in named),
                       tuple(tuple(p.shape) for _, p in named))


def coupling(problem: GradProblem) -> str | None:
    """Why samples interact in ``problem`` (a BatchNorm in training mode; a sample's loss on the
    whole batch differing from its loss alone), or None."""
    for name, m in problem.model.named_modules():
        if isinstance(m, _COUPLING_MODULES) and m.training:
            return (f"{name or 'the model'} ({type(m).__name__}) is in training mode: it normalises "
                    "each sample with the batch's statistics (Opacus refuses it too; use eval mode "
                    "or GroupNorm)")
    if problem.batch_size > 64:
        return None
    with torch.no_grad():
        whole = problem.loss(problem.model(*problem.inputs), problem.targets)
        for b in range(problem.batch_size):
            alone = problem.loss(problem.model(*(x[b:b + 1] for x in problem.inputs)),
                                 problem.targets[b:b + 1])[0]
            tol = torch.finfo(whole.dtype).eps ** 0.5 * (1 + float(whole[b].abs()))
            if abs(float(alone - whole[b])) > tol:
                return (f"sample {b}'s loss is {float(whole[b]):.6g} in the batch but "
                        f"{float(alone):.6g} alone: the samples interact")
    return None


def _as_jacobian(method: Method, coupled: str | None, holder: list) -> Method:
    """A per_sample_grad method as a batch_jacobian method of LossOfParameters: (1, B, P)."""
    def compute(flat: Flat) -> torch.Tensor:
        if coupled and method.assumes_independent:
            raise NotApplicable(f"assumes samples do not interact, but {coupled}")
        problem = holder[0]
        value = method.compute(problem)  # type: ignore[arg-type]
        if isinstance(value, torch.Tensor) and tuple(value.shape) == (problem.batch_size,
                                                                      problem.n_params):
            return value.unsqueeze(0)
        return value

    return dataclasses.replace(method, compute=compute, quantity="batch_jacobian",
                               assumes_independent=False)


@dataclasses.dataclass(frozen=True)
class ParameterFlat(Flat):
    """The canonical form of a per-sample-gradient check, naming entries by parameter."""

    names: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()  # the type of the module that holds each parameter

    def describe_index(self, index, labels=("batch", "sample", "parameter")) -> str:
        *_, b, j = (int(i) for i in index)
        for k, (name, shape) in enumerate(zip(self.names, self.in_shapes)):
            n = math.prod(shape)
            if j < n:
                idx = unravel(j, shape)
                kind = f" ({self.kinds[k]})" if k < len(self.kinds) else ""
                return f"sample {b}, {name}[{', '.join(map(str, idx))}]{kind}"
            j -= n
        return f"sample {b}, parameter entry {index[-1]}"


def check_per_sample_grads(model: nn.Module, x: torch.Tensor | Sequence[torch.Tensor],
                           y: torch.Tensor, *, loss: str | Callable = "auto",
                           methods: Sequence[str] | None = None,
                           extra_methods: Sequence[Method] = (),
                           dtype: torch.dtype | None = None,
                           device: str | torch.device | None = None, seed: int = 0,
                           rtol: Mapping[torch.dtype, float] | None = None,
                           max_memory: int = DEFAULT_MAX_MEMORY,
                           time_budget: float | None = DEFAULT_TIME_BUDGET,
                           warm_timing: bool = True, verification: str = "auto",
                           probes: int = 8) -> Report:
    """Check every way to compute per-sample gradients with respect to the parameters.

    Methods: ``loop`` (each sample alone), ``vmap_grad`` (vmap(grad(functional_call))),
    ``batched_grad`` (``autograd.grad(is_grads_batched=True)``), and with the extras installed
    ``opacus`` (GradSampleModule) and ``backpack`` (BatchGrad). References: NOTE [parameters as
    the input].

    Args:
        model: the module; every parameter that requires grad is differentiated.
        x: its input(s), batch first; y: the targets, (B, ...).
        loss: ``"auto"``, ``"cross_entropy"``, ``"mse"`` or ``loss(outputs, targets) -> (B,)``.
        extra_methods: per_sample_grad methods besides the registered ones.
        verification: ``"full"``, ``"projection"`` (``probes`` random projections) or ``"auto"``
            (projection above :data:`PROJECTION_ABOVE` parameters).
        methods, dtype, device, seed, rtol, max_memory, time_budget, warm_timing: as for
            :func:`~jacverify.check`.

    Returns:
        A :class:`~jacverify.Report` of quantity ``per_sample_grad``: its reference is (1, B, P),
        an entry is named ``sample b, <parameter>[index]``.

    Raises:
        InvalidArgument: a bad argument. JacobianTooLarge: the references would not fit.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> report = check_per_sample_grads(net, torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1]),
    ...                                 methods=["loop", "vmap_grad", "batched_grad"])
    >>> report.passed, [str(r.status) for r in report.results]
    (True, ['agree', 'agree', 'agree'])
    """
    from jacverify.engine import check

    validation.check_choice("verification", verification, ("auto", "full", "projection"))
    problem = _problem(model, x, y, loss, dtype, device)
    chosen = get_methods(methods, "per_sample_grad") + tuple(extra_methods)
    validation.check_methods_selected(methods, chosen)
    coupled = coupling(problem)
    if verification == "auto":
        verification = "projection" if problem.n_params > PROJECTION_ABOVE else "full"
    fn = LossOfParameters(problem)
    holder = [problem]
    theta = torch.cat([p.detach().reshape(1, -1) for p in problem.params()], 1)
    report = check(fn, theta, methods=[], extra_methods=[_as_jacobian(m, coupled, holder)
                                                          for m in chosen],
                   seed=seed, rtol=rtol, max_memory=max_memory, time_budget=time_budget,
                   warm_timing=warm_timing, verification=verification, probes=probes)
    notes = report.notes + ((f"samples interact: {coupled}",) if coupled else ())
    flat = report.flat
    modules = dict(problem.model.named_modules())
    kinds = tuple(type(modules[n.rpartition(".")[0]]).__name__ for n in problem.names)
    named = ParameterFlat(flat.fn, flat.x, problem.shapes, flat.out_shapes, names=problem.names,
                          kinds=kinds) \
        if flat is not None and verification == "full" else flat
    labels = ("batch", "sample", "parameter") if verification == "full" else report.index_labels
    return dataclasses.replace(report, quantity="per_sample_grad", notes=notes, flat=named,
                               index_labels=labels,
                               results=tuple(dataclasses.replace(r, quantity="per_sample_grad")
                                             for r in report.results))


# --- a user's own per-sample-gradient code ---

def _layouts(problem: GradProblem):
    """Layouts of per-sample gradients: a dict by parameter name, a tuple in parameter order,
    or one flattened (B, P)."""
    from jacverify.user_methods import Layout

    b = problem.batch_size
    shapes = tuple((b, *s) for s in problem.shapes)
    cat = (lambda parts: torch.cat([p.reshape(b, -1) for p in parts], 1))
    return (Layout("per_parameter", "a tuple per parameter, each (B, *p.shape)", shapes, True, cat),
            Layout("flattened", f"flattened (B, P) = ({b}, {problem.n_params})",
                   ((b, problem.n_params),), False, lambda parts: parts[0]))


def check_user_per_sample_grads(impl: Callable, model: nn.Module, inputs: Any, *,
                                layout: str | None = None, calls: str | None = None,
                                methods: Sequence[str] | None = (), loss: str | Callable = "auto",
                                **options) -> Report:
    """``check_method(impl, model, (x, y), quantity="per_sample_grad")``: the user's code called
    as ``impl(model, x, y)`` (or ``impl(x, y)``), returning ``{name: (B, *p.shape)}`` (a dict by
    parameter name, as ``named_parameters()``), a tuple in parameter order, or one (B, P).

    Raises:
        InvalidArgument: ``inputs`` is not ``(x, y)``; a result whose layout is ambiguous.

    >>> net = torch.nn.Linear(3, 2)
    >>> def mine(model, x, y):
    ...     return {"weight": torch.einsum("bo,bi->boi", 2 * (model(x) - y), x),
    ...             "bias": 2 * (model(x) - y)}
    >>> check_user_per_sample_grads(mine, net, (torch.randn(4, 3), torch.randn(4, 2))).passed
    True
    """
    from jacverify.user_methods import Seen, calling_convention, detect_layout

    if not isinstance(inputs, (tuple, list)) or len(inputs) < 2:
        raise validation.invalid("inputs", inputs, "a tuple (x, y) (or (x1, ..., y)) for "
                                 "quantity='per_sample_grad'")
    *xs, y = inputs
    convention = calling_convention(impl, len(xs) + 1, calls)
    name = getattr(impl, "__name__", None) or type(impl).__name__
    seen = Seen(convention)

    def compute(problem: GradProblem) -> Any:
        args = (*problem.inputs, problem.targets)
        value = impl(problem.model, *args) if convention == "with_fn" else impl(*args)
        if isinstance(value, Mapping):
            missing = [n for n in problem.names if n not in value]
            if missing:
                raise InvalidArgument(f"{name} returned no gradient for {', '.join(missing)}")
            value = tuple(value[n] for n in problem.names)
            seen.shape = "dict"
        found = detect_layout(value, _layouts(problem), layout if layout != "dict" else
                              "per_parameter")
        seen.layout, seen.accepted = found, _layouts(problem)
        return value if found is None else found.read(value)

    user = Method(name, compute, "user", vectorized=False, assumes_independent=False,  # type: ignore[arg-type]
                  quantity="per_sample_grad")
    options.setdefault("verification", "auto")
    report = check_per_sample_grads(model, xs[0] if len(xs) == 1 else tuple(xs), y, loss=loss,
                                    methods=methods, extra_methods=(user,), **options)
    results = []
    for r in report.results:
        if r.method == name and r.status == Status.MISMATCH and r.worst is not None \
                and seen.layout is not None and report.flat is not None:
            where = report.flat.describe_index(r.worst.worst_index, report.index_labels)
            r = dataclasses.replace(r, reason=(f"{r.reason + '; ' if r.reason else ''}worst entry: "
                                               f"{where}: you returned {r.worst.value_at_worst:.6g},"
                                               f" the reference is {r.worst.reference_at_worst:.6g}"))
        results.append(r)
    notes = report.notes
    if seen.layout is not None:
        notes += (f"{name}: called as {name}({'model, ' if convention == 'with_fn' else ''}x, y); "
                  "its result read as " + ("a dict by parameter name, each (B, *p.shape)"
                                           if seen.shape == "dict" else seen.layout.description),)
    return dataclasses.replace(report, results=tuple(results), notes=notes, required=(name,))
