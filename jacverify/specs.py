"""Network and case specs: plain, printable data, built into modules at the last moment.

``repr`` of a spec is the code that rebuilds it (``from jacverify.specs import *``), so a shrunk
failure prints as something a person can paste.

>>> net = Network((2,), (Dense(2, 1, (0.5, -1.0), (0.0,)), Activation("tanh")))
>>> net.out_shape, net.build()(torch.ones(3, 2, dtype=torch.float64)).shape
((1,), torch.Size([3, 1]))
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import ClassVar, Union

import torch
from torch import nn

__all__ = [
    "Dense", "Activation", "Elementwise", "Conv1d", "Conv2d", "Flatten", "LayerNorm", "Residual",
    "SelfAttention", "GRU", "BatchNorm", "Function", "Network", "CaseSpec",
    "SMOOTH_ACTIVATIONS", "KINKED_ACTIVATIONS", "ELEMENTWISE_OPS", "BOUNDED_OPS",
]


class _Abs(nn.Module):
    def forward(self, x):
        return x.abs()


_ACTIVATIONS = {
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "gelu": nn.GELU,
    "silu": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "abs": _Abs,
    "hardtanh": nn.Hardtanh,
}
SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "silu", "elu")
KINKED_ACTIVATIONS = ("relu", "leaky_relu", "abs", "hardtanh")  # piecewise linear: kinks
_ELEMENTWISE = {
    "sin": torch.sin, "cos": torch.cos, "square": torch.square, "cube": lambda x: x**3,
    "gauss": lambda x: torch.exp(-x * x), "log1p_square": lambda x: torch.log1p(x * x),
    "rsqrt1p_square": lambda x: torch.rsqrt(1 + x * x), "atan": torch.atan,
}
ELEMENTWISE_OPS = tuple(_ELEMENTWISE)
# Ops whose chains stay finite and O(1) on O(1) inputs (square and cube chains reach x^27).
BOUNDED_OPS = ("sin", "cos", "gauss", "log1p_square", "rsqrt1p_square", "atan")


def _param(values: tuple[float, ...], shape: tuple[int, ...]) -> nn.Parameter:
    if len(values) != math.prod(shape):
        raise ValueError(f"{len(values)} values given for a parameter of shape {shape}")
    return nn.Parameter(torch.tensor(values, dtype=torch.float64).reshape(shape))


@dataclass(frozen=True)
class Dense:
    in_features: int
    out_features: int
    weight: tuple[float, ...]
    bias: tuple[float, ...]

    def build(self) -> nn.Module:
        m = nn.Linear(self.in_features, self.out_features)
        m.weight = _param(self.weight, (self.out_features, self.in_features))
        m.bias = _param(self.bias, (self.out_features,))
        return m

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:-1], self.out_features)


@dataclass(frozen=True)
class Activation:
    name: str

    def build(self) -> nn.Module:
        return _ACTIVATIONS[self.name]()

    def out_shape(self, shape):
        return shape


class _Chain(nn.Module):
    def __init__(self, ops: tuple[str, ...]) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, x):
        for op in self.ops:
            x = _ELEMENTWISE[op](x)
        return x

    def extra_repr(self) -> str:
        return ", ".join(self.ops)


@dataclass(frozen=True)
class Elementwise:
    """A chain of elementwise torch ops, applied in order."""

    ops: tuple[str, ...]

    def build(self) -> nn.Module:
        return _Chain(self.ops)

    def out_shape(self, shape):
        return shape


@dataclass(frozen=True)
class _Conv:
    """A convolution over ``dims`` spatial axes: per-sample (C, *spatial) -> (out_channels,
    *(s - kernel_size + 1)); the subclasses below name the dimension."""

    in_channels: int
    out_channels: int
    kernel_size: int
    weight: tuple[float, ...]
    bias: tuple[float, ...]
    dims: ClassVar[int]

    def build(self) -> nn.Module:
        k = self.kernel_size
        m = getattr(nn, f"Conv{self.dims}d")(self.in_channels, self.out_channels, k)
        m.weight = _param(self.weight, (self.out_channels, self.in_channels) + (k,) * self.dims)
        m.bias = _param(self.bias, (self.out_channels,))
        return m

    def out_shape(self, shape):
        return (self.out_channels, *(s - self.kernel_size + 1 for s in shape[1:]))


@dataclass(frozen=True)
class Conv1d(_Conv):
    """On per-sample (C, L): (out_channels, L - kernel_size + 1)."""

    dims: ClassVar[int] = 1


@dataclass(frozen=True)
class Conv2d(_Conv):
    """On per-sample (C, H, W): (out_channels, H - k + 1, W - k + 1)."""

    dims: ClassVar[int] = 2


@dataclass(frozen=True)
class Flatten:
    def build(self) -> nn.Module:
        return nn.Flatten()

    def out_shape(self, shape):
        return (math.prod(shape),)


@dataclass(frozen=True)
class LayerNorm:
    features: int

    def build(self) -> nn.Module:
        return nn.LayerNorm(self.features)

    def out_shape(self, shape):
        return shape


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


@dataclass(frozen=True)
class Residual:
    """x + body(x); the body keeps the shape."""

    body: tuple[Layer, ...]

    def build(self) -> nn.Module:
        return _Residual(nn.Sequential(*(layer.build() for layer in self.body)))

    def out_shape(self, shape):
        return shape


class _Attention(nn.Module):
    def __init__(self, embed: int, heads: int, qkv: torch.Tensor, out: torch.Tensor) -> None:
        super().__init__()
        self.embed, self.heads = embed, heads
        self.qkv = nn.Parameter(qkv)
        self.out = nn.Parameter(out)

    def forward(self, x):  # (B, T, E)
        b, t, e = x.shape
        d = e // self.heads
        q, k, v = (x @ self.qkv.T).reshape(b, t, 3, self.heads, d).unbind(2)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / d**0.5
        mixed = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(b, t, e)
        return mixed @ self.out.T


@dataclass(frozen=True)
class SelfAttention:
    """Multi-head self-attention on per-sample (T, E), math path, no biases."""

    embed: int
    heads: int
    qkv: tuple[float, ...]
    out: tuple[float, ...]

    def build(self) -> nn.Module:
        e = self.embed
        return _Attention(e, self.heads, _param(self.qkv, (3 * e, e)).data, _param(self.out, (e, e)).data)

    def out_shape(self, shape):
        return shape


class _GRU(nn.Module):
    def __init__(self, cell: nn.GRUCell, steps: int) -> None:
        super().__init__()
        self.cell, self.steps = cell, steps

    def forward(self, x):
        h = self.cell(x)
        for _ in range(self.steps - 1):
            h = self.cell(x, h)
        return h


@dataclass(frozen=True)
class GRU:
    """A GRU cell run for ``steps`` steps on the same input, from h = 0; returns the last state."""

    input_size: int
    hidden_size: int
    weight_ih: tuple[float, ...]
    weight_hh: tuple[float, ...]
    steps: int = 2

    def build(self) -> nn.Module:
        cell = nn.GRUCell(self.input_size, self.hidden_size)
        cell.weight_ih = _param(self.weight_ih, (3 * self.hidden_size, self.input_size))
        cell.weight_hh = _param(self.weight_hh, (3 * self.hidden_size, self.hidden_size))
        return _GRU(cell, self.steps)

    def out_shape(self, shape):
        return (self.hidden_size,)


@dataclass(frozen=True)
class BatchNorm:
    """BatchNorm1d in training mode: samples interact through the batch statistics."""

    features: int

    def build(self) -> nn.Module:
        return nn.BatchNorm1d(self.features).train()

    def out_shape(self, shape):
        return shape


class _Apply(nn.Module):
    def __init__(self, function: type[torch.autograd.Function], path: str) -> None:
        super().__init__()
        self.function, self.path = function, path

    def forward(self, x):
        return self.function.apply(x)

    def extra_repr(self) -> str:
        return self.path


@dataclass(frozen=True)
class Function:
    """An elementwise custom ``autograd.Function``, named ``"package.module:Class"``."""

    path: str

    def build(self) -> nn.Module:
        module, _, name = self.path.partition(":")
        return _Apply(getattr(importlib.import_module(module), name), self.path)

    def out_shape(self, shape):
        return shape


Layer = Union[Dense, Activation, Elementwise, Conv1d, Conv2d, Flatten, LayerNorm, Residual, SelfAttention,
              GRU, BatchNorm, Function]


def _walk(layers: tuple[Layer, ...]):
    for layer in layers:
        yield layer
        if isinstance(layer, Residual):
            yield from _walk(layer.body)


@dataclass(frozen=True)
class Network:
    """A feed-forward network on per-sample inputs of ``in_shape``."""

    in_shape: tuple[int, ...]
    layers: tuple[Layer, ...]

    @property
    def out_shape(self) -> tuple[int, ...]:
        shape = self.in_shape
        for layer in self.layers:
            shape = layer.out_shape(shape)
        return shape

    @property
    def coupled(self) -> bool:
        """Whether a layer makes samples interact."""
        return any(isinstance(layer, BatchNorm) for layer in _walk(self.layers))

    @property
    def kinked(self) -> bool:
        return any(isinstance(layer, Activation) and layer.name in KINKED_ACTIVATIONS
                   for layer in _walk(self.layers))

    @property
    def size(self) -> tuple[int, int]:
        """(layers, parameters): how big a (shrunk) network is."""
        module = self.build()
        return len(list(_walk(self.layers))), sum(p.numel() for p in module.parameters())

    def build(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> nn.Module:
        return nn.Sequential(*(layer.build() for layer in self.layers)).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class CaseSpec:
    """A network, a batch of inputs (as plain floats) and the dtype/device the methods run in."""

    network: Network
    batch_size: int
    inputs: tuple[float, ...]
    dtype: str = "float64"
    device: str = "cpu"
    quantity: str = "batch_jacobian"
    vectors: tuple[float, ...] = ()  # flattened; reshaped for the quantity by ``check``

    def build(self) -> tuple[nn.Module, torch.Tensor]:
        dtype = getattr(torch, self.dtype)
        x = torch.tensor(self.inputs, dtype=dtype).reshape(self.batch_size, *self.network.in_shape)
        return self.network.build(dtype, self.device), x.to(self.device)

    def check(self, **options):
        """Build the case and run its quantity's check (``jacverify.check`` and friends)."""
        from jacverify.quantities import check_quantity

        from jacverify.quantity_table import get_quantity

        module, x = self.build()
        vectors = None
        kind = get_quantity(self.quantity).vectors
        if self.vectors:
            v = torch.tensor(self.vectors, dtype=x.dtype, device=x.device)
            if kind == "per_sample_tangent":
                vectors = v.reshape(x.shape)
            else:
                shape = self.network.in_shape if kind == "tangent" else self.network.out_shape
                vectors = v.reshape(len(self.vectors) // math.prod(shape), *shape)
        return check_quantity(self.quantity, module, x, vectors=vectors, **options)

    def snippet(self, methods: list[str] | None = None, seed: int = 0,
                campaign_seeded: bool = False) -> str:
        """Self-contained Python that rebuilds this case and re-runs its check with ``seed``."""
        methods_arg = f"methods={methods!r}, " if methods else ""
        rerun = f"; the campaign: jacverify fuzz --seed {seed}" if campaign_seeded else ""
        return (
            f"# jacverify fuzz repro (seed {seed}{rerun})\n"
            f"import torch\nimport jacverify\nfrom jacverify.specs import *\n\n"
            f"case = {self!r}\n"
            f"report = case.check({methods_arg}seed={seed})  # jacverify.check and friends\n"
            "print(report)\nassert report.passed\n"
        )
