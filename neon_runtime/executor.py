"""ChunkExecutor: action chunks on a clock -> the joint target for any instant.

    executor = ChunkExecutor(dim=28)
    executor.accept(Chunk.at_fps(actions, fps=30.0, start_s=obs_time + 1 / 30, received_s=now))
    q = executor.target(now)          # Float[(D,)], linear in time between the chunk's steps
    executor.age(now)                 # seconds since the chunk in force arrived: what a watchdog reads

Every time here is on the caller's one clock (the G1 bridge uses time.monotonic(); tests inject their own).
A chunk's steps are absolute times on that clock: step 0 is due at `start_s`, step k at `start_s + k / fps`
(a served chunk's step 0 is one frame after its observation, as neon-ros times it). Before step 0 the target is
step 0; after the last step it holds the last step. NaN in a chunk means "no target for this joint": the
interpolated target is NaN there and the caller keeps its previous command.

One executor for every caller that runs chunks (G1 bridge now; sim client and ROS node later): request-ahead
(`remaining`), dropping steps already past and blending into the next chunk all change `accept`/`target` here,
nowhere else. Not executable chunks (dry run, untrained heads, no state) are refused on arrival.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


class ChunkRefused(ValueError):
    """A chunk that must not be executed; the message says why."""


@dataclass(frozen=True)
class Chunk:
    """Joint targets with the time each one is due.

    targets: Float[(T, D)] in the caller's joint order; times: Float[(T,)] strictly increasing, on the caller's clock.
    """

    targets: np.ndarray
    times: np.ndarray
    received_s: float  # when it arrived (the watchdog's clock)
    executable: bool = True
    why_not: str = ""  # why it is not executable
    source: str = ""  # where it came from, for logs

    @classmethod
    def at_fps(cls, targets, fps: float, start_s: float, received_s: float, **kw) -> Chunk:
        """Steps 1 / fps apart, step 0 due at `start_s`."""
        if not (np.isfinite(fps) and fps > 0):
            raise ChunkRefused(f"fps must be positive and finite, got {fps}")
        targets = np.asarray(targets, np.float32)
        return cls(targets, start_s + np.arange(len(targets), dtype=np.float64) / float(fps), received_s, **kw)


class ChunkExecutor:
    """Holds the chunk in force and answers `target(now)`. Thread-safe: one thread accepts, another reads."""

    def __init__(self, dim: int):
        self.dim = dim
        self._chunk: Chunk | None = None
        self._lock = threading.Lock()
        self.accepted = 0
        self.refused = 0
        self.last_refusal = ""

    def accept(self, chunk: Chunk) -> None:
        """Make `chunk` the one in force, or raise ChunkRefused (the chunk in force stays)."""
        try:
            self._check(chunk)
        except ChunkRefused as e:
            with self._lock:
                self.refused += 1
                self.last_refusal = str(e)
            raise
        with self._lock:
            self._chunk = chunk
            self.accepted += 1

    def _check(self, chunk: Chunk) -> None:
        if not chunk.executable:
            raise ChunkRefused(f"chunk{f' from {chunk.source}' if chunk.source else ''} is marked not executable"
                               f"{': ' + chunk.why_not if chunk.why_not else ''}")
        t, x = np.asarray(chunk.times), np.asarray(chunk.targets)
        if x.ndim != 2 or x.shape[1] != self.dim or len(x) == 0:
            raise ChunkRefused(f"chunk targets must be (T >= 1, {self.dim}), got {x.shape}")
        if t.shape != (len(x),) or not np.isfinite(t).all() or (np.diff(t) <= 0).any():
            raise ChunkRefused(f"chunk times must be {len(x)} finite, strictly increasing values, got {t}")
        if np.isinf(x).any():
            raise ChunkRefused("chunk has infinite targets")

    @property
    def chunk(self) -> Chunk | None:
        return self._chunk

    def target(self, now: float) -> np.ndarray | None:
        """Float[(D,)]: the chunk's targets interpolated linearly in time at `now` (None before any chunk)."""
        c = self._chunk
        if c is None:
            return None
        t = c.times
        k = int(np.searchsorted(t, now, side="right"))
        if k == 0:
            return c.targets[0].copy()
        if k >= len(t):
            return c.targets[-1].copy()
        a = (now - t[k - 1]) / (t[k] - t[k - 1])
        return ((1.0 - a) * c.targets[k - 1] + a * c.targets[k]).astype(np.float32)

    def age(self, now: float) -> float | None:
        """Seconds since the chunk in force arrived (None before any chunk)."""
        c = self._chunk
        return None if c is None else now - c.received_s

    def remaining(self, now: float) -> float | None:
        """Seconds until the chunk in force runs out (<= 0: it holds its last step)."""
        c = self._chunk
        return None if c is None else float(c.times[-1] - now)
