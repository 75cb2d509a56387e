"""Normalisation statistics per source and merged, computed once and cached on disk.

Action statistics are taken over exactly what the loss sees: every valid step
of every chunk, in the model's representation (deltas from the state on
relative dims, times `action_scaler`). The merged statistics pool the sources'
sums per dimension, over the sources that have that dimension; a dimension no
source provides keeps the joint-limit defaults.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neon.action_space import G1ActionSpace
from neon.files import atomic_write_text
from neon.data.sources import LeRobotSource
from neon.normalization import ActionTransform, NormStats
from neon.paths import norm_stats_dir

STATS_VERSION = 3  # 2: chunks resampled to the source's chunk_fps; 3: keyed by the data files' sizes and mtimes


@dataclass
class Moments:
    """Per-dimension count, sum and sum of squares: enough to pool means and variances exactly."""

    n: np.ndarray
    s: np.ndarray
    ss: np.ndarray

    @classmethod
    def zeros(cls, d: int) -> Moments:
        return cls(np.zeros(d), np.zeros(d), np.zeros(d))

    def add(self, x: np.ndarray, mask: np.ndarray) -> None:
        x = np.where(mask, x, 0.0).astype(np.float64)
        self.n += mask.sum(0)
        self.s += x.sum(0)
        self.ss += (x * x).sum(0)

    def __iadd__(self, other: Moments) -> Moments:
        self.n, self.s, self.ss = self.n + other.n, self.s + other.s, self.ss + other.ss
        return self

    def mean_std(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = np.maximum(self.n, 1)
        mean = self.s / n
        std = np.sqrt(np.maximum(self.ss / n - mean ** 2, 0.0))
        return mean, std, self.n > 0

    def to_dict(self) -> dict:
        return {"n": self.n.tolist(), "s": self.s.tolist(), "ss": self.ss.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Moments:
        return cls(*(np.asarray(d[k], np.float64) for k in ("n", "s", "ss")))


def _cache_key(source: LeRobotSource, space: G1ActionSpace, action_scaler: float) -> str:
    info = (source.root / "meta" / "info.json").read_bytes()
    payload = json.dumps({
        "v": STATS_VERSION, "root": str(source.root.resolve()), "info": hashlib.sha256(info).hexdigest(),
        "episodes": [(e.index, e.length, e.data_file, e.from_index) for e in source.episodes],
        "names": space.names, "relative": space.relative_mask().tolist(), "scaler": action_scaler,
        "steps": source.num_steps, "chunk_fps": source.chunk_fps,
        "files": {f: [(st := (source.root / f).stat()).st_size, st.st_mtime_ns]
                  for f in sorted({e.data_file for e in source.episodes})},  # a regenerated dataset is a new key
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def source_moments(source: LeRobotSource, action_scaler: float = 1.0,
                   cache_dir: Path | None = None) -> tuple[Moments, Moments]:
    """(state moments, action moments) of one source, from the cache when its key matches."""
    space = source.space
    cache_dir = cache_dir or norm_stats_dir()
    path = cache_dir / f"{_cache_key(source, space, action_scaler)}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return Moments.from_dict(data["state"]), Moments.from_dict(data["action"])
    transform = ActionTransform(space, NormStats.from_limits(space), action_scaler)
    d = space.dim
    state_m, action_m = Moments.zeros(d), Moments.zeros(d)
    state_avail = np.zeros(d, bool)
    if source.state_map is not None:
        state_avail[source.state_map.target_index] = True
    for k in range(len(source.episodes)):
        actions, states, _ = source.episode_arrays(k)
        n = len(actions)
        base = states if states is not None else np.zeros_like(actions)
        if states is not None:
            state_m.add(states, np.broadcast_to(state_avail, states.shape))
        chunks, valid = source.chunk(actions, np.arange(n))  # (n, T, D), (n, T): every chunk the loss sees
        rep = transform.to_representation(torch.from_numpy(chunks), torch.from_numpy(base)).numpy()
        mask = valid[..., None] & source.dim_available[None, None, :]
        action_m.add(rep.reshape(-1, d), mask.reshape(-1, d))
    atomic_write_text(path, json.dumps({"source": source.name, "state": state_m.to_dict(),
                                        "action": action_m.to_dict()}) + "\n")
    return state_m, action_m


def norm_stats_for(sources: list, space: G1ActionSpace, action_scaler: float = 1.0,
                   cache_dir: Path | None = None) -> tuple[NormStats, dict[str, NormStats]]:
    """(merged stats, per-source stats) over the action-bearing sources of a soup."""
    default = NormStats.from_limits(space, action_scaler)
    merged_s, merged_a = Moments.zeros(space.dim), Moments.zeros(space.dim)
    per_source = {}
    for src in sources:
        if not isinstance(src, LeRobotSource):
            continue  # voice commands carry no actions
        sm, am = source_moments(src, action_scaler, cache_dir)
        per_source[src.name] = _to_stats(space, sm, am, default, src.name)
        merged_s += sm
        merged_a += am
    names = ", ".join(per_source) or "none"
    return _to_stats(space, merged_s, merged_a, default, f"merged: {names}"), per_source


def _to_stats(space, sm: Moments, am: Moments, default: NormStats, source: str) -> NormStats:
    s_mean, s_std, s_ok = sm.mean_std()
    a_mean, a_std, a_ok = am.mean_std()
    return NormStats(
        space.names,
        np.where(s_ok, s_mean, default.state_mean), np.where(s_ok, s_std, default.state_std),
        np.where(a_ok, a_mean, default.action_mean), np.where(a_ok, a_std, default.action_std),
        source=source,
    )
