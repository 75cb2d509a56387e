"""Small building blocks shared by encoders, fusion and heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Weightless RMSNorm over the last dimension (Parameter Golf style)."""
    return F.rms_norm(x, (x.size(-1),))


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap): the identity near zero, smoothly bounded by +-cap."""
    return cap * torch.tanh(x / cap)


class ReLU2MLP(nn.Module):
    """Linear -> ReLU^2 -> Linear."""

    def __init__(self, d_in: int, hidden: int, d_out: int, zero_init_out: bool = False):
        super().__init__()
        self.fc = nn.Linear(d_in, hidden)
        self.proj = nn.Linear(hidden, d_out)
        if zero_init_out:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(relu2(self.fc(x)))
