"""Normalisation statistics and the paired action transform.

`ActionTransform.encode` is what the trainer applies to targets (absolute ->
relative where configured -> z-score); `ActionTransform.decode` is what the
runtime applies to predictions (inverse, in reverse order). Both live on one
object saved in the checkpoint, so training and inference cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neon.action_space import G1ActionSpace

NORM_STATS_FILE = "norm_stats.json"
STD_FLOOR = 1e-2  # joints that never move in the data would otherwise blow up their z-scores


class NormStatsError(ValueError):
    pass


@dataclass
class NormStats:
    """Per-dimension mean and std of the state and of the action *as predicted* (relative dims as deltas)."""

    names: list[str]
    state_mean: np.ndarray
    state_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    source: str = "joint limits"  # where the numbers came from (a dataset, a soup, or the limits)

    def __post_init__(self) -> None:
        d = len(self.names)
        for field in ("state_mean", "state_std", "action_mean", "action_std"):
            arr = np.asarray(getattr(self, field), dtype=np.float32)
            if arr.shape != (d,):
                raise NormStatsError(f"norm stats {field} has shape {arr.shape}, expected ({d},)")
            if not np.isfinite(arr).all():
                raise NormStatsError(f"norm stats {field} holds NaN or Inf")
            if field.endswith("std"):
                arr = np.maximum(arr, STD_FLOOR)
            setattr(self, field, arr)

    @classmethod
    def from_limits(cls, space: G1ActionSpace, action_scaler: float = 1.0) -> NormStats:
        """Stats for a model that has seen no data: centre and quarter-range of each joint's limits."""
        mid, half = (space.upper + space.lower) / 2, (space.upper - space.lower) / 2
        rel = space.relative_mask()
        return cls(space.names, mid, half / 2, np.where(rel, 0.0, mid),
                   np.where(rel, action_scaler * half / 8, half / 2))

    def to_dict(self) -> dict:
        return {
            "names": self.names,
            "source": self.source,
            **{k: getattr(self, k).tolist() for k in ("state_mean", "state_std", "action_mean", "action_std")},
        }

    @classmethod
    def from_dict(cls, data: dict) -> NormStats:
        try:
            return cls(data["names"], *(np.asarray(data[k], np.float32) for k in
                                        ("state_mean", "state_std", "action_mean", "action_std")),
                       source=data.get("source", "unknown"))
        except KeyError as e:
            raise NormStatsError(f"norm stats lack field {e.args[0]!r}") from None

    def save(self, directory: str | Path) -> None:
        from neon.files import atomic_write_text

        atomic_write_text(Path(directory) / NORM_STATS_FILE, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> NormStats:
        from neon.files import read_json

        return cls.from_dict(read_json(Path(directory) / NORM_STATS_FILE, NormStatsError))


class ActionTransform:
    """Paired transform between physical absolute actions and the normalised targets the heads predict.

    encode: a -> (a - state on relative dims) * action_scaler on relative dims -> z-score.
    decode: the exact inverse. `action_scaler` follows GR00T DreamGen's relative actions.
    """

    def __init__(self, space: G1ActionSpace, stats: NormStats, action_scaler: float = 1.0):
        if stats.names != space.names:
            raise NormStatsError(
                f"norm stats are for {len(stats.names)} dims ({', '.join(stats.names[:3])}, ...), "
                f"the action space has {space.dim} ({', '.join(space.names[:3])}, ...)"
            )
        self.space, self.stats = space, stats
        t = lambda a: torch.as_tensor(a, dtype=torch.float32)
        if not action_scaler > 0:
            raise NormStatsError(f"action_scaler must be positive, got {action_scaler}")
        rel = space.relative_mask()
        self._rel = t(rel.astype(np.float32))
        self._scale = t(np.where(rel, action_scaler, 1.0).astype(np.float32))
        self._s_mean, self._s_std = t(stats.state_mean), t(stats.state_std)
        self._a_mean, self._a_std = t(stats.action_mean), t(stats.action_std)

    def _on(self, x: torch.Tensor):
        return [v.to(x.device) for v in (self._rel, self._scale, self._s_mean, self._s_std, self._a_mean, self._a_std)]

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        _, _, s_mean, s_std, _, _ = self._on(state)
        return (state - s_mean) / s_std

    def to_representation(self, actions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Physical absolute actions -> what the heads predict before z-scoring (deltas where relative, scaled)."""
        rel, scale, *_ = self._on(actions)
        return (actions - rel * state[..., None, :]) * scale

    def encode(self, actions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Float[(B, T, D)] physical absolute actions, Float[(B, D)] state -> normalised targets."""
        *_, a_mean, a_std = self._on(actions)
        return (self.to_representation(actions, state) - a_mean) / a_std

    def decode(self, pred: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Float[(B, T, D)] normalised predictions, Float[(B, D)] state -> physical absolute actions."""
        rel, scale, _, _, a_mean, a_std = self._on(pred)
        return (pred * a_std + a_mean) / scale + rel * state[..., None, :]
