"""Correct networks of the shapes people use, for tests, the README and ``jacverify check``."""

from __future__ import annotations

import torch
from torch import nn


class ReadmeNet(nn.Sequential):
    """The README's network: Linear(5, 16) -> Tanh -> Linear(16, 3)."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(8, 5, generator=torch.Generator().manual_seed(0))


class ConvNet(nn.Module):
    """Conv1d -> GELU -> Conv1d on (B, 2, 7) -> (B, 3, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(2, 4, 3), nn.GELU(), nn.Conv1d(4, 3, 1, padding=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[..., :5]


class Conv2dNet(nn.Sequential):
    """Conv2d -> Softplus -> flatten -> Linear on (B, 1, 4, 4)."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(1, 2, 3), nn.Softplus(), nn.Flatten(), nn.Linear(8, 3))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))


class LayerNormResidual(nn.Module):
    """x + Linear(tanh(LayerNorm(x))): per-sample statistics, so samples stay independent."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(torch.tanh(self.norm(x)))


class Attention(nn.Module):
    """Self-attention over a (B, T, E) sequence, through the math path (no fused kernel)."""

    def __init__(self, embed: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(embed, 3 * embed)
        self.out = nn.Linear(embed, embed)
        self.heads = heads

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(4, 3, 4, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, e // self.heads).unbind(2)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / (e // self.heads) ** 0.5
        mixed = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(b, t, e)
        return self.out(mixed)


class TorchAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch_first) applied to a (B, T, E) sequence."""

    def __init__(self, embed: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class BatchCoupled(nn.Sequential):
    """Linear -> BatchNorm1d (training mode: batch statistics couple samples) -> Tanh -> Linear."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
