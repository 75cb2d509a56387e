"""The safety layer every action chunk passes through before it leaves Neon (server and ROS node).

1. Non-finite values never leave: a chunk with NaN/Inf is replaced by "hold
   the current state" (or refused when there is no state).
2. Joint limits: every value clamped into the action space's limits.
3. Velocity: the first step may move at most `max_joint_velocity x first_dt`
   from the current state (`first_dt` = 1 / fps unless the caller knows the
   first step's real time), and each later step at most `max_joint_velocity /
   fps` from the one before; a faster chunk is rate-limited along its own path.
   Locomotion commands are acceleration-limited the same way from the command
   in force.
4. Stale observations (older than `max_observation_age_s`) are refused, and so
   are heads-only requests on backbone features whose image is older than
   `max_feature_age_s` (two-rate control: `neon_runtime.policy.LocalPolicy`).
5. Not executable (computed, returned, marked `executable: false` with the
   reason in `notes`): every chunk in `dry_run`, and a chunk computed without a
   joint state (its first step could be anywhere inside the limits).

Limits come from the action space; the speeds here are deliberately far below
what Unitree's teleoperation stack allows (20-30 rad/s).
"""

from __future__ import annotations

import math

import time
from dataclasses import dataclass, field

import numpy as np

from neon.action_space import G1ActionSpace


class SafetyError(RuntimeError):
    """An observation or chunk that must not be acted on; the message says why."""


@dataclass
class SafetyConfig:
    max_joint_velocity: float = 2.0  # rad/s, arms, legs, torso, head
    max_hand_velocity: float = 6.0  # rad/s (Inspire: units/s over its 0..1000 range are scaled by 1000/pi)
    max_locomotion_accel: float = 1.0  # (m/s)/s and (rad/s)/s between chunk steps
    max_observation_age_s: float = 0.5
    max_feature_age_s: float = 2.0  # reused backbone features (camera + instruction), from the image's timestamp
    max_clock_skew_s: float = 0.1  # an observation stamped further in the future is refused (at most the age allowed)
    dry_run: bool = False

    def validate(self) -> SafetyConfig:
        for name in ("max_joint_velocity", "max_hand_velocity", "max_locomotion_accel", "max_observation_age_s",
                     "max_feature_age_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"safety.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.max_clock_skew_s <= self.max_observation_age_s:
            raise ValueError(f"safety.max_clock_skew_s must be in [0, max_observation_age_s "
                             f"({self.max_observation_age_s})], got {self.max_clock_skew_s}")
        return self


DRY_RUN_REFUSAL = "the policy runs in dry-run mode"  # the note of a chunk refused only for the dry-run setting


@dataclass
class SafetyReport:
    clamped_to_limits: int = 0  # values moved into the joint limits
    rate_limited: int = 0  # values slowed down by the velocity limits
    non_finite: int = 0  # NaN/Inf values found (the chunk was replaced)
    executable: bool = True  # False: computed for inspection only (the notes say why)
    notes: list[str] = field(default_factory=list)

    def refuse(self, why: str) -> None:
        """Mark the chunk not executable, saying why."""
        self.executable = False
        self.notes.append(f"not executable: {why}")

    def to_dict(self) -> dict:
        return {**self.__dict__, "notes": list(self.notes)}


class SafetyLayer:
    def __init__(self, space: G1ActionSpace, config: SafetyConfig | None = None):
        self.space = space
        self.config = (config or SafetyConfig()).validate()
        lo, hi = space.lower, space.upper
        span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
        speed = np.full(space.dim, self.config.max_joint_velocity, np.float32)
        for i, j in enumerate(space.joints):
            if j.group == "hands":
                # Hands with a non-radian range (Inspire 0..1000) get the same fraction of range per second.
                speed[i] = self.config.max_hand_velocity * (span[i] / np.pi if span[i] > 10 else 1.0)
            elif j.group == "locomotion":
                speed[i] = self.config.max_locomotion_accel
        self.speed = speed
        self.is_command = np.array([j.group == "locomotion" for j in space.joints])

    def check_age(self, observation_time: float | None, now: float | None = None) -> float | None:
        """Age in seconds of an observation stamped `observation_time` (Unix seconds); refuse stale ones."""
        if observation_time is None:
            return None
        age = (now if now is not None else time.time()) - float(observation_time)
        if not math.isfinite(age):
            raise SafetyError(f"observation timestamp must be a finite Unix time in seconds, got {observation_time!r}")
        if age > self.config.max_observation_age_s:
            raise SafetyError(f"observation is {age:.3f} s old, older than the {self.config.max_observation_age_s} s "
                              "limit: not acting on it")
        if age < -self.config.max_clock_skew_s:
            raise SafetyError(f"observation timestamp is {-age:.3f} s in the future (more than the "
                              f"{self.config.max_clock_skew_s} s allowed): check the clocks")
        return age

    def apply(self, chunk: np.ndarray, state: np.ndarray | None, fps: float,
              first_dt: float | None = None) -> tuple[np.ndarray, SafetyReport]:
        """Float[(T, D)] chunk (physical units) -> a safe copy and what was changed.

        `first_dt`: seconds between `state` and the first step (default 1 / fps).
        """
        report = SafetyReport()
        if self.config.dry_run:
            report.refuse(DRY_RUN_REFUSAL)
        if state is None:
            report.refuse("no joint state was given, so the first step could be anywhere inside the limits")
        chunk = np.array(chunk, dtype=np.float32, copy=True)
        if chunk.ndim != 2 or chunk.shape[1] != self.space.dim:
            raise SafetyError(f"chunk must be (T, {self.space.dim}), got {chunk.shape}")
        bad = ~np.isfinite(chunk)
        if bad.any():
            report.non_finite = int(bad.sum())
            if state is None:
                raise SafetyError(f"the model produced {report.non_finite} non-finite value(s) and there is no state "
                                  "to hold: nothing is sent")
            chunk[:] = state
            chunk[:, self.is_command] = 0.0  # stop walking
            report.notes.append("non-finite values: replaced the chunk by holding the current state")
        clipped = self.space.clip(chunk)
        report.clamped_to_limits = int((clipped != chunk).sum())
        chunk = clipped
        step = self.speed / float(fps)
        first = self.speed * (1.0 / float(fps) if first_dt is None else max(0.0, float(first_dt)))
        prev = None
        if state is not None:
            prev = np.where(self.is_command, state, self.space.clip(np.asarray(state, np.float32)))
        limited = 0
        for t in range(len(chunk)):
            if prev is not None:
                lo, hi = prev - (first if t == 0 else step), prev + (first if t == 0 else step)
                new = np.clip(chunk[t], lo, hi)
                limited += int((np.abs(new - chunk[t]) > 1e-7).sum())
                chunk[t] = new
            prev = chunk[t]
        report.rate_limited = limited
        if limited:
            report.notes.append(f"rate-limited {limited} value(s) to {self.config.max_joint_velocity} rad/s")
        return self.space.clip(chunk), report
