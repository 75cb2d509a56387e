"""Action heads ("Parameter Golf v2") and the speech response head.

An action head is: input -> N x [RMSNorm -> ReLU^2 MLP, added back with a
learned scale] with U-Net skips (the first half's outputs are added into the
second half with learned weights) -> RMSNorm -> zero-initialised linear ->
SoftCap. The zero-initialised output makes every step-0 prediction exactly 0
in normalised units, i.e. the dataset's mean action.
"""

from __future__ import annotations

import torch
from torch import nn

from neon.layers import ReLU2MLP, rms_norm, softcap


class ParameterGolfHead(nn.Module):
    """Float[(B, d)] fused features -> Float[(B, T, out_dim)] normalised actions."""

    def __init__(self, d: int, mlp_hidden: int, layers: int, steps: int, out_dim: int, cap: float):
        super().__init__()
        self.steps, self.out_dim, self.cap = steps, out_dim, cap
        self.blocks = nn.ModuleList(ReLU2MLP(d, mlp_hidden, d) for _ in range(layers))
        self.block_scales = nn.Parameter(torch.ones(layers))
        self.num_skips = layers // 2
        self.skip_weights = nn.Parameter(torch.ones(self.num_skips))
        self.out = nn.Linear(d, steps * out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.blocks)
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= n - self.num_skips:  # decoder half: take the mirrored encoder output back in
                x = x + self.skip_weights[n - 1 - i] * skips.pop()
            x = x + self.block_scales[i] * block(rms_norm(x))
            if i < self.num_skips:
                skips.append(x)
        y = self.out(rms_norm(x))
        return softcap(y, self.cap).view(-1, self.steps, self.out_dim)


class SpeechHead(nn.Module):
    """Float[(B, d)] -> Float[(B, R)] logits over the configured spoken responses (index 0 = say nothing).

    Zero-initialised output: an untrained model gives a uniform distribution and says nothing.
    """

    def __init__(self, d: int, mlp_hidden: int, num_responses: int):
        super().__init__()
        self.mlp = ReLU2MLP(d, mlp_hidden, num_responses, zero_init_out=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(rms_norm(x))
