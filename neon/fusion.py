"""Fusion: one learned query attends over backbone tokens and modality tokens.

Every optional modality (proprioception, EEF, LiDAR, audio) contributes one
token. A sample that lacks one gets that modality's learned "absent"
embedding instead, so the same model serves robots and datasets with
different sensors. Grid backbone features (`BackboneConfig.pooling="grid"`)
carry learned positions: a 2-D one (row + column) on the image tokens and one
per text bin; other poolings add no parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from neon.layers import ReLU2MLP, rms_norm


class Fusion(nn.Module):
    def __init__(self, backbone_dim: int, d: int, heads: int, mlp_hidden: int, modalities: list[str],
                 grid_size: int = 0, text_tokens: int = 0):
        """`grid_size` > 0: the backbone tokens are grid_size**2 image tokens (row-major) then `text_tokens` bins."""
        super().__init__()
        self.modalities = list(modalities)
        self.vl_proj = nn.Linear(backbone_dim, d)
        self.type_embed = nn.Parameter(torch.randn(1 + len(modalities), d) * 0.02)  # vl first
        self.absent = nn.Parameter(torch.randn(len(modalities), d) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = ReLU2MLP(d, mlp_hidden, d)
        # Only for grid features: a model reading "tokens" or "mean" has exactly the parameters it always had.
        self.grid_size = grid_size
        if grid_size:
            self.row_embed = nn.Parameter(torch.randn(grid_size, d) * 0.02)
            self.col_embed = nn.Parameter(torch.randn(grid_size, d) * 0.02)
            self.text_embed = nn.Parameter(torch.randn(text_tokens, d) * 0.02)

    def positions(self) -> torch.Tensor:
        """Float[(K, d)]: row + column embedding per image token (row-major), then one per text bin."""
        grid = self.row_embed[:, None, :] + self.col_embed[None, :, :]  # (g, g, d)
        return torch.cat([grid.flatten(0, 1), self.text_embed])

    def forward(
        self,
        vl_tokens: torch.Tensor,  # Float[(B, K, H)]
        tokens: dict[str, torch.Tensor],  # name -> Float[(B, d)]
        present: dict[str, torch.Tensor],  # name -> Bool[(B,)]
    ) -> torch.Tensor:  # Float[(B, d)]
        vl = self.vl_proj(rms_norm(vl_tokens)) + self.type_embed[0]
        if self.grid_size:
            pos = self.positions()
            if vl.shape[1] != pos.shape[0]:
                raise ValueError(f"vl_tokens: {pos.shape[0]} grid and text tokens expected "
                                 f"({self.grid_size}x{self.grid_size} + {len(self.text_embed)}), got {vl.shape[1]}")
            vl = vl + pos
        extra = []
        for i, name in enumerate(self.modalities):
            tok = torch.where(present[name][:, None], tokens[name], self.absent[i])
            extra.append(tok + self.type_embed[1 + i])
        seq = rms_norm(torch.cat([vl, torch.stack(extra, dim=1)], dim=1))
        q = self.query.expand(vl.shape[0], -1, -1)
        x = q + self.attn(rms_norm(q), seq, seq, need_weights=False)[0]
        x = x + self.mlp(rms_norm(x))
        return x[:, 0]
