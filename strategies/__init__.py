"""Hypothesis strategies for jacverify, importable as ``jacverify.strategies``.

Every strategy draws plain specs (see :mod:`jacverify.specs`) whose repr rebuilds them; weights
and inputs are drawn through Hypothesis, so they shrink (towards 0 and small networks) and print.

>>> from hypothesis import given
>>> @given(cases(networks=networks(max_depth=1, max_width=2)))
... def test(case):
...     module, x = case.build()
...     assert module(x).shape[0] == case.batch_size
>>> test()
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from hypothesis import assume
from hypothesis import strategies as st

from jacverify.errors import InvalidArgument
from jacverify.quantity_table import STANDALONE, get_quantity
from jacverify.validation import check_int
from jacverify.specs import (
    BOUNDED_OPS,
    ELEMENTWISE_OPS,
    GRU,
    KINKED_ACTIVATIONS,
    SMOOTH_ACTIVATIONS,
    Activation,
    BatchNorm,
    CaseSpec,
    Conv1d,
    Conv2d,
    Dense,
    Elementwise,
    Flatten,
    Function,
    LayerNorm,
    Network,
    Residual,
    SelfAttention,
)

__all__ = ["FAMILIES", "batch_sizes", "cases", "devices", "dtypes", "in_dims", "inputs",
           "networks", "shapes", "vector_sets", "weights"]

FAMILIES = ("mlp", "residual", "layernorm", "conv1d", "conv2d", "attention", "rnn", "elementwise")
WEIGHT_BOUND = 1.5  # |w| <= 1.5 keeps tanh nets out of saturation for inputs in [-2, 2]
INPUT_BOUND = 2.0
GRID = 1024  # values are k / 1024: exact in every float dtype, never subnormal, short to print


def _grid(bound: float) -> st.SearchStrategy[float]:
    """Multiples of 1/1024 in [-bound, bound]; shrinks towards 0.0."""
    k = int(bound * GRID)
    return st.integers(-k, k).map(lambda i: i / GRID)


def _int(name: str, value: object, minimum: int = 0) -> int:
    return check_int(name, value, min_value=minimum)


def _bounds(lo_name: str, lo: object, hi_name: str, hi: object, minimum: int = 0) -> None:
    _int(lo_name, lo, minimum)
    _int(hi_name, hi, minimum)
    if lo > hi:  # type: ignore[operator]
        raise InvalidArgument(f"{lo_name}={lo!r} is greater than {hi_name}={hi!r}; "
                              f"pass {lo_name} <= {hi_name}")


def _choices(name: str, values: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    values = tuple(values)
    unknown = [v for v in values if v not in known]
    if not values or unknown:
        raise InvalidArgument(f"{name}={values!r} must be a non-empty selection of {known!r}"
                              + (f"; unknown: {unknown!r}" if unknown else ""))
    return values


def weights(n: int) -> st.SearchStrategy[tuple[float, ...]]:
    """``n`` multiples of 1/1024 in [-1.5, 1.5]: the same network in every dtype; shrinks to 0.0.

    A grid rather than all floats: Hypothesis's float shrinker reaches subnormals (1e-43), whose
    Jacobians sit at the rounding level of the outputs and test nothing but the arithmetic.
    """
    _int("n", n)
    return st.lists(_grid(WEIGHT_BOUND), min_size=n, max_size=n).map(tuple)


def batch_sizes(*, min_size: int = 1, max_size: int = 5) -> st.SearchStrategy[int]:
    """Batch sizes; shrinks towards ``min_size``."""
    _bounds("min_size", min_size, "max_size", max_size, minimum=1)
    return st.integers(min_size, max_size)


def shapes(*, min_dims: int = 1, max_dims: int = 3, min_side: int = 1,
           max_side: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    """Per-sample shapes; shrinks towards fewer and shorter dimensions."""
    _bounds("min_dims", min_dims, "max_dims", max_dims)
    _bounds("min_side", min_side, "max_side", max_side)
    return st.lists(st.integers(min_side, max_side), min_size=min_dims,
                    max_size=max_dims).map(tuple)


def dtypes(*, low_precision: bool = False) -> st.SearchStrategy[str]:
    """dtype names the methods run in: float64 first (shrinks to it), then float32."""
    return st.sampled_from(["float64", "float32"] + (["bfloat16", "float16"] if low_precision else []))


def devices() -> st.SearchStrategy[str]:
    """``"cpu"``, and ``"cuda"`` only when CUDA is available here."""
    return st.sampled_from(["cpu"] + (["cuda"] if torch.cuda.is_available() else []))


@st.composite
def vector_sets(draw, size: int, *, min_vectors: int = 1,
                max_vectors: int = 4) -> tuple[tuple[float, ...], ...]:
    """Sets of vectors of ``size`` entries (for J v_i and vᵀ_i J); shrinks to one zero vector."""
    _int("size", size, 1)
    _bounds("min_vectors", min_vectors, "max_vectors", max_vectors, minimum=1)
    vector = st.lists(_grid(INPUT_BOUND), min_size=size, max_size=size).map(tuple)
    return tuple(draw(st.lists(vector, min_size=min_vectors, max_size=max_vectors)))


def in_dims(ndim: int, *, allow_none: bool = True) -> st.SearchStrategy[int | None]:
    """A vmap in_dim for a tensor of ``ndim`` batched dims: 0 first, then others, negatives, None."""
    _int("ndim", ndim, 1)
    dims = st.integers(0, ndim - 1) | st.integers(-ndim, -1)
    return (dims | st.none()) if allow_none else dims


@st.composite
def networks(draw, *, min_depth: int = 1, max_depth: int = 3, min_width: int = 1,
             max_width: int = 5, families: Sequence[str] = FAMILIES,
             activations: Sequence[str] = SMOOTH_ACTIVATIONS + KINKED_ACTIVATIONS,
             elementwise_ops: Sequence[str] = BOUNDED_OPS, coupled: bool = False,
             functions: Sequence[str] = ()) -> Network:
    """Random network specs (MLPs, residual blocks, LayerNorm, conv1d and conv2d stacks,
    self-attention, GRU cells, elementwise chains); shrinks to a one-layer MLP of width
    ``min_width`` with zero weights.

    Args:
        min_depth, max_depth: hidden layers (or blocks) per network.
        min_width, max_width: hidden widths and input sizes.
        families: which shapes of network to draw (see ``FAMILIES``).
        activations: activation names; piecewise-linear ones have kinks, which ``inputs`` avoids.
        elementwise_ops: ops the "elementwise" family chains (``ELEMENTWISE_OPS`` adds square and
            cube, whose chains overflow).
        coupled: opt in to a BatchNorm (training mode) that makes samples interact.
        functions: custom ``autograd.Function`` paths ("module:Class") put after the first layer.
    """
    _bounds("min_depth", min_depth, "max_depth", max_depth, minimum=1)
    _bounds("min_width", min_width, "max_width", max_width, minimum=1)
    families = _choices("families", families, FAMILIES)
    activations = _choices("activations", activations, SMOOTH_ACTIVATIONS + KINKED_ACTIVATIONS)
    elementwise_ops = _choices("elementwise_ops", elementwise_ops, ELEMENTWISE_OPS)
    family = draw(st.sampled_from(families))
    depth = draw(st.integers(min_depth, max_depth))
    width = st.integers(min_width, max_width)
    act = st.sampled_from(activations).map(Activation)

    def dense(n_in: int, n_out: int) -> Dense:
        return Dense(n_in, n_out, draw(weights(n_in * n_out)), draw(weights(n_out)))

    n_in = draw(width)
    if family == "conv1d":
        channels, kernel = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        length = draw(st.integers(kernel + depth - 1, kernel + depth + 2))
        in_shape: tuple[int, ...] = (channels, length)
        layers: list = []
        for _ in range(depth):
            out = draw(st.integers(1, 3))
            layers += [Conv1d(channels, out, kernel, draw(weights(out * channels * kernel)),
                              draw(weights(out))), draw(act)]
            channels, length = out, length - kernel + 1
            kernel = min(kernel, length)
        layers.append(Flatten())
        n = channels * length
    elif family == "conv2d":
        channels, kernel = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        side = draw(st.integers(kernel + depth - 1, kernel + depth + 1))
        in_shape = (channels, side, side)
        layers = []
        for _ in range(depth):
            out = draw(st.integers(1, 2))
            layers += [Conv2d(channels, out, kernel, draw(weights(out * channels * kernel**2)),
                              draw(weights(out))), draw(act)]
            channels, side = out, side - kernel + 1
            kernel = min(kernel, side)
        layers.append(Flatten())
        n = channels * side * side
    elif family == "attention":
        heads = draw(st.integers(1, 2))
        embed = heads * draw(st.integers(1, 2))
        tokens = draw(st.integers(1, 3))
        in_shape = (tokens, embed)
        layers = [SelfAttention(embed, heads, draw(weights(3 * embed * embed)),
                                draw(weights(embed * embed))) for _ in range(depth)]
        layers.append(Flatten())
        n = tokens * embed
    elif family == "rnn":
        hidden = draw(width)
        in_shape = (n_in,)
        layers = [GRU(n_in, hidden, draw(weights(3 * hidden * n_in)),
                      draw(weights(3 * hidden * hidden)), steps=depth + 1)]
        n = hidden
    else:
        in_shape, layers, n = (n_in,), [], n_in
        for _ in range(depth):
            if family == "residual":
                hidden = draw(width)
                layers.append(Residual((dense(n, hidden), draw(act), dense(hidden, n))))
            elif family == "elementwise":
                out = draw(width)
                ops = tuple(draw(st.lists(st.sampled_from(elementwise_ops), min_size=1, max_size=3)))
                layers += [dense(n, out), Elementwise(ops)]
                n = out
            else:
                out = draw(width)
                layers += [dense(n, out)]
                if family == "layernorm":
                    layers.append(LayerNorm(out))
                layers.append(draw(act))
                n = out
    if coupled and draw(st.booleans()):
        layers.append(BatchNorm(n))  # before the output layer, where every family is a vector
    for path in reversed(tuple(functions)):
        # after the first layer, then tanh: the Jacobian depends on the function's forward values
        layers[1:1] = [Function(path), Activation("tanh")]
    layers.append(dense(n, draw(width)))
    return Network(in_shape, tuple(layers))


def kink_margin_ok(network: Network, x: torch.Tensor) -> bool:
    """Every kinked activation's input sits farther from 0 than the FD steps can move it (x4)."""
    from jacverify.oracles.finite_differences import fd_step

    module = network.build()
    kinks_of = {"ReLU": (0.0,), "LeakyReLU": (0.0,), "_Abs": (0.0,), "Hardtanh": (-1.0, 1.0)}
    captured: list[tuple[torch.Tensor, tuple[float, ...]]] = []
    hooks = [m.register_forward_hook(
                 lambda m, inp, out: captured.append((inp[0], kinks_of[type(m).__name__])))
             for m in module.modules() if type(m).__name__ in kinks_of]
    x = x.detach().requires_grad_()
    try:
        module(x)
    finally:
        for h in hooks:
            h.remove()
    step = fd_step(x.detach()).flatten(1)
    for z, kinks in captured:
        flat = z.flatten(1)
        for u in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, u].sum(), x, retain_graph=True)
            reach = (g.flatten(1).abs() * step).sum(1)
            distance = torch.stack([(flat[:, u].detach() - k).abs() for k in kinks]).amin(0)
            if bool((distance <= 4 * reach).any()):
                return False
    return True


@st.composite
def inputs(draw, network: Network, *, batch_size: int) -> tuple[float, ...]:
    """A batch of inputs for ``network``: multiples of 1/1024 in [-2, 2], flattened; shrinks to zeros.

    For networks with piecewise-linear activations, rejects inputs where a kink lies within 4x the
    reach of the finite-difference steps, so the references stay sharp there.
    """
    _int("batch_size", batch_size, 1)
    n = batch_size * math.prod(network.in_shape)
    values = tuple(draw(st.lists(_grid(INPUT_BOUND), min_size=n, max_size=n)))
    if network.kinked:
        x = torch.tensor(values, dtype=torch.float64).reshape(batch_size, *network.in_shape)
        assume(kink_margin_ok(network, x))
    return values


# Second derivatives need C2 activations: ELU's second derivative jumps at 0.
TWICE_DIFFERENTIABLE = tuple(a for a in SMOOTH_ACTIVATIONS if a != "elu")
QUANTITIES = STANDALONE  # the registry's (jacverify/quantity_table.py)


@st.composite
def cases(draw, *, quantity: str = "batch_jacobian",
          networks: st.SearchStrategy[Network] | None = None,
          batch_sizes: st.SearchStrategy[int] | None = None,
          dtypes: st.SearchStrategy[str] | None = None,
          devices: st.SearchStrategy[str] | None = None) -> CaseSpec:
    """Whole cases for ``quantity``: a network, a batch of inputs off its kinks, the vectors the
    quantity needs (tangents, cotangents), a dtype, a device. For second derivatives the default
    networks use twice-differentiable activations only.

    Shrinks towards a one-layer float64 MLP on one sample of zeros.
    """
    _choices("quantity", (quantity,), QUANTITIES)
    q = get_quantity(quantity)
    if networks is None:
        second = q.second_order
        networks = globals()["networks"](**({"activations": TWICE_DIFFERENTIABLE} if second else {}))
    net = draw(networks)
    # a set quantity evaluates one point, a batch of one: nothing to couple, and BatchNorm in
    # training mode cannot run on it
    assume(not (net.coupled and q.at_point))
    b = draw(batch_sizes if batch_sizes is not None else globals()["batch_sizes"]())
    b = max(b, 2) if net.coupled else b  # batch statistics need two samples
    dtype = draw(dtypes if dtypes is not None else globals()["dtypes"]())
    device = draw(devices if devices is not None else globals()["devices"]())
    x = draw(inputs(net, batch_size=b))
    vectors: tuple[float, ...] = ()
    if q.vectors == "per_sample_tangent":
        vectors = tuple(draw(st.lists(_grid(INPUT_BOUND), min_size=len(x), max_size=len(x))))
    elif q.at_point:
        shape = net.in_shape if q.vectors == "tangent" else net.out_shape
        vectors = tuple(v for vec in draw(vector_sets(math.prod(shape))) for v in vec)
    return CaseSpec(net, b, x, dtype, device, quantity, vectors)
