"""Encoders that turn non-visual inputs into one `fusion_dim` token each.

Inputs follow the observation spec (`neon.observation`); joint states arrive
as z-scores (`neon.normalization`).
"""

from __future__ import annotations

import torch
from torch import nn

from neon.layers import ReLU2MLP, relu2, rms_norm
from neon.observation import EEF_DIM, EEF_FIELDS, LIDAR_CHANNELS, LIDAR_INTENSITY_MAX, LIDAR_RANGE_M


class ProprioEncoder(nn.Module):
    """Float[(B, D)] normalised joint state -> Float[(B, d)]."""

    def __init__(self, state_dim: int, hidden: int, d: int):
        super().__init__()
        self.mlp = ReLU2MLP(state_dim, hidden, d)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.mlp(state)


class EEFEncoder(nn.Module):
    """Float[(B, 14)] left/right wrist poses -> Float[(B, d)]."""

    def __init__(self, hidden: int, d: int):
        super().__init__()
        self.mlp = ReLU2MLP(EEF_DIM, hidden, d)

    def forward(self, eef: torch.Tensor) -> torch.Tensor:
        pose = eef.view(-1, EEF_DIM // len(EEF_FIELDS), len(EEF_FIELDS))
        # q and -q are the same rotation: pick the one with w >= 0 so the encoder sees one of them.
        sign = torch.where(pose[..., 3:4] < 0, -1.0, 1.0)
        pose = torch.cat([pose[..., :3], pose[..., 3:] * sign], dim=-1)
        return self.mlp(pose.reshape(-1, EEF_DIM))


class PointNetEncoder(nn.Module):
    """PointNet-style encoder: a shared per-point MLP, then a masked max-pool.

    Float[(B, N, 4)] points (x, y, z in metres, intensity 0..255) with
    Bool[(B, N)] valid mask -> Float[(B, d)]. Works for any N, and the result
    does not depend on point order.
    """

    def __init__(self, hidden: int, d: int):
        super().__init__()
        self.point_mlp = nn.Sequential(nn.Linear(len(LIDAR_CHANNELS), hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, hidden))
        self.out = nn.Linear(hidden, d)

    def forward(self, points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scale = points.new_tensor([LIDAR_RANGE_M] * 3 + [LIDAR_INTENSITY_MAX])
        feats = relu2(self.point_mlp(points / scale))  # (B, N, hidden)
        feats = feats.masked_fill(~valid[..., None], float("-inf"))
        pooled = feats.max(dim=1).values
        pooled = torch.where(torch.isfinite(pooled), pooled, torch.zeros_like(pooled))  # clouds with no points
        return self.out(pooled)


class AudioProjection(nn.Module):
    """Float[(B, A)] pooled audio features from the (frozen) audio encoder -> Float[(B, d)]."""

    def __init__(self, audio_dim: int, d: int):
        super().__init__()
        self.proj = nn.Linear(audio_dim, d)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(rms_norm(feats))


class PrefixEncoder(nn.Module):
    """The committed steps of the chunk being executed -> (a token for the action heads, the last committed step).

    Float[(B, P, D)] normalised actions (the heads' own target representation) with Long[(B,)] d per sample
    (0 = no prefix; steps past d are ignored) -> (Float[(B, d_model)], Float[(B, D)]). The token is a linear map
    of the path into the last committed step (each step minus the last, zeros past d) and of the last step itself,
    plus a learned embedding of d; the model adds it to the fused features the action heads read. The last
    committed step (zeros where d = 0) is added to the heads' output, so the heads predict the continuation as a
    change from where the robot will be (and, untrained, hold it).
    """

    def __init__(self, max_steps: int, action_dim: int, d: int):
        super().__init__()
        self.max_steps = max_steps
        self.proj = nn.Linear((max_steps + 1) * action_dim, d)
        self.delay = nn.Parameter(torch.randn(max_steps + 1, d) * 0.02)

    def forward(self, prefix: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = length.clamp(0, self.max_steps)
        keep = (torch.arange(self.max_steps, device=prefix.device)[None, :] < length[:, None]).to(prefix.dtype)
        idx = (length - 1).clamp(min=0)[:, None, None].expand(-1, 1, prefix.shape[-1])
        last = prefix.gather(1, idx)[:, 0] * (length > 0)[:, None].to(prefix.dtype)  # (B, D)
        path = (prefix - last[:, None]) * keep[..., None]
        token = self.proj(torch.cat([path.flatten(1), last], dim=1)) + self.delay[length]
        return token, last
