"""ChunkExecutor: action chunks on a clock -> the joint target for any instant.

    executor = ChunkExecutor(dim=28, blend_s=0.2, safety=safety_hook(SafetyLayer(space)))
    if executor.should_request(now, latency.estimate()):               # request-ahead
        send(observation, prefix=executor.committed(now, latency.estimate(), fps))
    executor.accept(Chunk.at_fps(actions, fps=30.0, start_s=obs_time + 1 / 30, received_s=now))
    q = executor.target(now)          # Float[(D,)], pure: linear in time between steps, blended across a hand-over
    q = executor.command(now)         # the same, through the safety hook, relative to the last command: what to send
    executor.age(now)                 # seconds since the newest chunk arrived: what a watchdog reads

Every time here is on the caller's one clock (the G1 bridge uses time.monotonic(), the sim its sim time; tests
inject their own). A chunk's steps are absolute times on that clock: step 0 is due at `start_s`, step k at
`start_s + k / fps` (a served chunk's step 0 is one frame after its observation, as neon-ros times it). After the
last step the target holds the last step. NaN in a chunk means "no target for this joint": the target is NaN there
and the caller keeps its previous command.

Hand-over, when a chunk arrives (`received_s` = r) while another is in force:
- Steps already past are skipped by time: `target(t)` reads the new chunk at t, so steps due before r are never
  executed (their count is `last_skipped`); between two steps the target is on the line joining them.
- A step 0 still ahead at r: without blending it is approached linearly from where the executor was at r (the
  old target at r), as plain chunking steps from its current target to step 0; with blending the chunk's first
  segment (step 0 -> step 1) is extended back to r, so what is blended in already moves as the chunk will (no
  kink at step 0 inside the blend). With nothing in force before (no chunk, no `hold`), the targets before
  step 0 are step 0.
- Blending (`blend_s` = b > 0): for t in [r, r + b], target(t) = (1 - a) old(t) + a new(t), with the min-jerk ramp
  a = 10 s^3 - 15 s^4 + 6 s^5, s = (t - r) / b: a and its first two derivatives are continuous at both ends, so
  the target does not jump at r and its velocity and acceleration do not jump at r or at r + b. "old" is whatever
  was in force before r, itself possibly still blending, or the pose given to `hold` (the robot's, before the
  first chunk). b = 0: the new chunk is in force at once.
- Temporal ensembling (`ensemble_s` = w > 0, ACT's, with equal weights; not with blending): target(t) is the mean
  of what every chunk that arrived in (t - w, t] and still has a step at or after t puts there (the newest
  always counts). When heads re-plan every control tick, each chunk's first steps carry the policy's error and
  executing only those lets it compound (the arm runs away); averaging the overlapping predictions of the last w
  seconds cancels much of it. A new chunk moves the target by 1/n of its disagreement with the others.

Request-ahead: `RequestScheduler` decides when requests leave (every control loop's one scheduler);
`should_request(now, latency_s)` is True once what is left of the chunk in force no longer covers
the latency plus one step (or, with `execute_steps` K, once the reply would arrive after the chunk has been in
force for K steps); `LatencyEstimator` turns measured round trips into that latency. `committed` gives the
steps that will run while a request sent now is under way (what a prefix-conditioned model is given).

Refused on arrival (ChunkRefused, the chunk in force stays): not executable chunks (dry run, untrained heads, no
state); chunks whose every step is already past (stale); chunks whose step 0 is due more than `max_lead_s` after
arrival (a skewed clock: a served chunk's step 0 is one step after its observation, so it is never far ahead).
A step 0 still ahead on arrival is reached along the chunk's first segment extended back (blending) only when it
is at most one step ahead; further ahead, from where the executor is, so a chunk's slope is never extrapolated over
a long lead (a +0.3 rad/s chunk due 5 s ahead once put the target 1.4 rad the wrong way).
"""

from __future__ import annotations

import collections
import math
import numbers
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SafetyHook = Callable[[np.ndarray, "np.ndarray | None", float], np.ndarray]
"""(target Float[(D,)], last executed Float[(D,)] or None, dt_s since it) -> the target that may be executed."""


class ChunkRefused(ValueError):
    """A chunk that must not be executed; the message says why."""


@dataclass(frozen=True)
class Chunk:
    """Joint targets with the time each one is due.

    targets: Float[(T, D)] in the caller's joint order; times: Float[(T,)] strictly increasing, on the caller's clock.
    """

    targets: np.ndarray
    times: np.ndarray
    received_s: float  # when it arrived (the watchdog's clock; a blend starts here)
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

    @property
    def step_s(self) -> float:
        """Seconds between steps (the median spacing; 0 for a one-step chunk)."""
        return float(np.median(np.diff(self.times))) if len(self.times) > 1 else 0.0


def min_jerk_ramp(s: float) -> float:
    """0 -> 1 over s in [0, 1] with zero first and second derivatives at both ends."""
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10.0 - 15.0 * s + 6.0 * s * s)


@dataclass(frozen=True)
class _Layer:
    """A chunk as executed: its knots (step 0 perhaps preceded by the anchor at arrival) and when it took over
    (`start_s`, its arrival). chunk None: a pose held (`ChunkExecutor.hold`)."""

    chunk: Chunk | None
    start_s: float
    times: np.ndarray  # Float[(K,)]
    targets: np.ndarray  # Float[(K, D)]

    def at(self, now: float) -> np.ndarray:
        t, x = self.times, self.targets
        k = int(np.searchsorted(t, now, side="right"))
        if k == 0:
            return x[0].copy()
        if k >= len(t):
            return x[-1].copy()
        a = (now - t[k - 1]) / (t[k] - t[k - 1])
        return ((1.0 - a) * x[k - 1] + a * x[k]).astype(np.float32)


def wall_to_mono(t_wall: float) -> float:
    """A time.time() instant (an observation timestamp, a ROS header stamp) on the time.monotonic() clock, the one
    the G1 bridge and neon-ros run their executors on."""
    return time.monotonic() - (time.time() - t_wall)


def check_blend_s(blend_s: float, name: str = "blend_s") -> float:
    """A blend window in seconds (finite, >= 0), or ValueError naming it as `name` (a caller's flag)."""
    if not (isinstance(blend_s, numbers.Real) and math.isfinite(blend_s) and blend_s >= 0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {blend_s!r}")
    return float(blend_s)


def check_handover(blend_s: float, ensemble_s: float) -> float:
    """ensemble_s (finite, >= 0), or ValueError: also when both it and `blend_s` are given (two ways to hand over)."""
    ensemble_s = check_blend_s(ensemble_s, "ensemble_s")
    if ensemble_s and blend_s:
        raise ValueError(f"blend_s ({blend_s:g}) and ensemble_s ({ensemble_s:g}) are two ways to hand over: give one")
    return ensemble_s


class ChunkExecutor:
    """Holds the chunks in force and answers `target(now)`. Thread-safe: one thread accepts, another reads.

    blend_s: seconds over which a new chunk takes over from the one in force (0: at once).
    ensemble_s: average the chunks that arrived in the last `ensemble_s` seconds (temporal ensembling; 0: off).
    safety: applied by `command` to every command, relative to the last executed one (see `safety_hook`).
    """

    max_lead_s = 1.0  # a chunk whose step 0 is due later than this after its arrival is refused (clock skew)

    def __init__(self, dim: int, blend_s: float = 0.0, safety: SafetyHook | None = None, ensemble_s: float = 0.0):
        self.dim, self.blend_s, self.safety = dim, check_blend_s(blend_s), safety
        self.ensemble_s = check_handover(self.blend_s, ensemble_s)
        self._layers: tuple[_Layer, ...] = ()  # oldest first; the last is the newest chunk, the one in force
        self._lock = threading.Lock()
        self.accepted = 0
        self.refused = 0
        self.last_refusal = ""
        self.skipped = 0  # steps that were already past when their chunk arrived, over all chunks
        self.last_skipped = 0  # ... in the newest chunk
        self.safety_limited = 0  # values the safety hook changed in `command`
        self._last: np.ndarray | None = None  # the last executed target
        self._last_s: float | None = None

    def accept(self, chunk: Chunk) -> None:
        """Make `chunk` the one in force from `chunk.received_s` on, or raise ChunkRefused (the chunk in force stays)."""
        try:
            self._check(chunk)
        except ChunkRefused as e:
            with self._lock:
                self.refused += 1
                self.last_refusal = str(e)
            raise
        r = float(chunk.received_s)
        times, targets = np.asarray(chunk.times, np.float64), np.asarray(chunk.targets, np.float32)
        with self._lock:
            layers = self._layers
            if layers and r < times[0]:  # step 0 still ahead
                near = times[0] - r <= (times[1] - times[0] if len(times) > 1 else 0.0) + 1e-9
                if self.blend_s > 0 and len(times) > 1 and near:  # the first segment, extended back to arrival
                    slope = (targets[1] - targets[0]) / (times[1] - times[0])
                    anchor = targets[0] + (r - times[0]) * slope
                else:  # approached from where the executor is at arrival
                    anchor = self._mix(layers, r)
                anchor = np.where(np.isfinite(anchor), anchor, targets[0]).astype(np.float32)
                times, targets = np.concatenate([[r], times]), np.concatenate([anchor[None], targets])
            if self.blend_s > 0:  # keep what is still blending at r: the newest layer whose blend is over, and after
                done = [i for i, lay in enumerate(layers) if i == 0 or lay.start_s + self.blend_s <= r]
                layers = layers[done[-1]:] if layers else ()
            elif self.ensemble_s > 0:  # keep the chunks that may still count: arrived inside the window, steps left
                layers = tuple(lay for lay in layers if self._in_window(lay, r))
            else:
                layers = ()
            self._layers = (*layers, _Layer(chunk, r, times, targets))
            self.last_skipped = int(np.searchsorted(chunk.times, r, side="left"))
            self.skipped += self.last_skipped
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
        if not np.isfinite(chunk.received_s):
            raise ChunkRefused(f"chunk received_s must be finite, got {chunk.received_s}")
        where = f" from {chunk.source}" if chunk.source else ""
        if t[-1] < chunk.received_s:
            raise ChunkRefused(f"stale chunk{where}: its last step was due {chunk.received_s - t[-1]:.3f} s before it "
                               "arrived")
        if t[0] - chunk.received_s > self.max_lead_s:
            raise ChunkRefused(f"chunk{where} starts {t[0] - chunk.received_s:.3f} s after it arrived (more than "
                               f"{self.max_lead_s:g} s): are the clocks skewed?")

    @property
    def chunk(self) -> Chunk | None:
        """The newest chunk (the one in force, or taking over)."""
        layers = self._layers
        return layers[-1].chunk if layers else None

    def _mix(self, layers: tuple[_Layer, ...], now: float) -> np.ndarray:
        return self._ensemble(layers, now) if self.ensemble_s > 0 else self._blend(layers, now)

    def _in_window(self, lay: _Layer, now: float) -> bool:
        """A chunk (not a held pose) that arrived in the last ensemble_s and still has a step at or after `now`."""
        return lay.chunk is not None and lay.start_s > now - self.ensemble_s and lay.times[-1] >= now

    def _ensemble(self, layers: tuple[_Layer, ...], now: float) -> np.ndarray:
        """The mean over the newest layer and every older chunk arrived inside the window with a step left at now;
        NaN (no target) in one chunk leaves the others' mean for that joint."""
        newest = layers[-1]
        counted = [lay for lay in layers[:-1] if self._in_window(lay, now)]
        if not counted:
            return newest.at(now)
        x = np.stack([lay.at(now) for lay in (*counted, newest)])
        finite = np.isfinite(x)
        n = finite.sum(axis=0)
        mean = np.where(finite, x, 0.0).sum(axis=0) / np.maximum(n, 1)
        return np.where(n > 0, mean, np.nan).astype(np.float32)

    def _blend(self, layers: tuple[_Layer, ...], now: float) -> np.ndarray:
        x = layers[0].at(now)
        for lay in layers[1:]:
            a = min_jerk_ramp((now - lay.start_s) / self.blend_s)
            y = lay.at(now)
            if a >= 1.0:
                x = y
            elif a > 0.0:  # NaN in the new chunk: no target; NaN only in the old one: the new one's
                x = np.where(np.isfinite(x), (1.0 - a) * x + a * y, y).astype(np.float32)
        return x

    def target(self, now: float) -> np.ndarray | None:
        """Float[(D,)]: where the chunks in force put the joints at `now` (None before any chunk or `hold`). Pure."""
        layers = self._layers
        return None if not layers else self._mix(layers, now)

    def command(self, now: float, max_dt_s: float | None = None) -> np.ndarray | None:
        """The command to send now: `target(now)` with NaN joints keeping the last command, then the safety hook,
        relative to the last command and the time since it, counted as at most `max_dt_s` (a control loop's bound, e.g.
        two periods: after a stall the command still moves one bounded step, not all the way at once).
        -> Float[(D,)] (the last command, or None, before a chunk). (`execute` is the old name.)"""
        q = self.target(now)
        if q is None:
            return None if self._last is None else self._last.copy()
        last, dt = self._last, (None if self._last_s is None else max(0.0, now - self._last_s))
        if dt is not None and max_dt_s is not None:
            dt = min(dt, max_dt_s)
        if last is not None:
            q = np.where(np.isfinite(q), q, last).astype(np.float32)
        if self.safety is not None:
            safe = np.asarray(self.safety(q, last, dt if dt is not None else 0.0), np.float32)
            self.safety_limited += int((np.abs(safe - q) > 1e-6).sum())
            q = safe
        self._last, self._last_s = q.copy(), now
        return q

    execute = command  # the old name (it executes nothing: it gives the command to send)

    def hold(self, q: np.ndarray, now: float) -> None:
        """Forget the chunks and hold `q` (Float[(D,)], e.g. the robot's pose before the first chunk): the next chunk
        takes over from it as from any chunk (blended, a step 0 still ahead approached from it), and the next
        executed target is limited relative to it. `chunk`, `age` and `remaining` are None until then."""
        q = np.asarray(q, np.float32).copy()
        if q.shape != (self.dim,):
            raise ValueError(f"hold needs a ({self.dim},) pose, got {q.shape}")
        with self._lock:
            self._layers = (_Layer(None, float(now), np.array([float(now)]), q[None]),)
        self._last, self._last_s = q.copy(), float(now)

    def age(self, now: float) -> float | None:
        """Seconds since the newest chunk arrived (None before any chunk)."""
        c = self.chunk
        return None if c is None else now - c.received_s

    def remaining(self, now: float) -> float | None:
        """Seconds until the newest chunk runs out (<= 0: it holds its last step)."""
        c = self.chunk
        return None if c is None else float(c.times[-1] - now)

    def should_request(self, now: float, latency_s: float, execute_steps: int | None = None,
                       margin_s: float = 0.0) -> bool:
        """Request-ahead: True when a request sent now should leave, i.e. before any chunk, or once what is left of
        the newest chunk no longer covers the latency (and `margin_s`):

            t_end - now - margin_s <= latency_s,   t_end = min(t_last - step_s, r + execute_steps * step_s)

        t_last: its last step's time; r: its arrival. By default (execute_steps None) a reply arrives with one step
        of the old chunk still ahead to hand over from; with `execute_steps` K each chunk is meant to be in force
        for K steps from its arrival, so requests leave every K steps whatever the latency, and each chunk runs
        its steps from the first one not yet past on arrival. Keeping one request in flight is the caller's."""
        c = self.chunk
        if c is None:
            return True
        t_end = float(c.times[-1]) - c.step_s
        if execute_steps is not None:
            t_end = min(t_end, float(c.received_s) + int(execute_steps) * c.step_s)
        return t_end - now - margin_s <= latency_s + 1e-9  # a clock's rounding

    def committed(self, now: float, latency_s: float, fps: float, max_steps: int | None = None) -> np.ndarray:
        """Float[(d, D)]: the targets that will be executed while a request sent now is under way, on the grid of
        the chunk it asks for (step k due at now + (k + 1) / fps): d = floor(latency_s * fps) steps, the prefix a
        prefix-conditioned model is given. (0, D) before any chunk."""
        d = int(np.floor(max(latency_s, 0.0) * fps + 1e-9))
        if max_steps is not None:
            d = min(d, max_steps)
        layers = self._layers
        if not layers or d <= 0:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._mix(layers, now + (k + 1) / fps) for k in range(d)]).astype(np.float32)


def request_due(now: float, last_s: float, period_s: float | None, executor: ChunkExecutor | None = None,
                latency_s: float = 0.0, margin_s: float = 0.0) -> bool:
    """Due once `period_s` has passed since the last request (None: never by time alone), or, given the `executor`
    whose chunk is in force (None: nothing in force, or two-rate heads requests, which go by time only), once that
    chunk no longer covers the latency plus `margin_s` (request-ahead, `ChunkExecutor.should_request`). With neither
    a period nor a chunk in force, at once. `RequestScheduler.due` is the rule as the control loops use it."""
    if period_s is not None and now - last_s >= period_s:
        return True
    if executor is not None and executor.chunk is not None:
        return executor.should_request(now, latency_s, margin_s=margin_s)
    return period_s is None


class RequestScheduler:
    """The one request scheduler of neon-g1 (`ServerSource`), neon-ros (`NeonNode`) and neon-sim (`_run_executor`,
    `_run_two_rate`): when the next request leaves, the steps it commits, and the latency it plans with. Clock-free:
    every call takes `now` on the caller's clock (monotonic, or sim time). One request in flight at a time.

    Chunk-rate (full requests): due every `period_s` (None: by request-ahead alone), or sooner once the chunk in
    force no longer covers the measured latency plus `margin_steps` steps; with `execute_steps` K instead, once the
    reply would arrive after the chunk in force has run K steps (the sim's fixed-K rows). Two-rate (`two_rate`):
    heads requests by time alone, on the grid k * period_s of the caller's clock: due at the first `due` call at or
    after the next grid point (within `slack_s`; points passed while a request was in flight are dropped), so heads
    run at 1 / period_s on average whatever the caller's polling rate. `prefix` gives a prefix-conditioned model's
    committed steps; `replied` feeds the latency estimator (observation -> reply usable) and records the chunk's fps."""

    def __init__(self, executor: ChunkExecutor, period_s: float | None = None, *, two_rate: bool = False,
                 margin_steps: int = 0, execute_steps: int | None = None, prefix_max_steps: int = 0,
                 latency: LatencyEstimator | None = None, fps: float | None = None, slack_s: float = 1e-6):
        if period_s is not None and not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s must be positive and finite (or None), got {period_s}")
        if two_rate and period_s is None:
            raise ValueError("two-rate heads requests need a period")
        self.executor, self.period_s, self.two_rate = executor, period_s, two_rate
        self.margin_steps, self.execute_steps, self.prefix_max_steps = margin_steps, execute_steps, prefix_max_steps
        self.latency = latency or LatencyEstimator()
        self.fps: float | None = fps  # the chunks' (the newest reply's, or known beforehand)
        self.last_s = -math.inf  # when the last request left
        self.next_s = -math.inf  # two-rate: the grid point the next heads request waits for
        self.in_flight, self.slack_s = False, slack_s

    def due(self, now: float, in_force: bool = True) -> bool:
        """A request should leave now (none is in flight). `in_force` False: the chunk the executor holds must not
        be planned ahead from (e.g. after a halt), so only time counts, or at once without a period."""
        if self.in_flight:
            return False
        if self.two_rate:
            return now >= self.next_s - self.slack_s
        ahead = in_force and self.fps is not None and self.executor.chunk is not None
        if ahead and self.execute_steps is not None:
            return self.executor.should_request(now, self.latency.estimate(), self.execute_steps)
        return request_due(now, self.last_s, self.period_s, self.executor if ahead else None,
                           self.latency.estimate(), self.margin_steps / self.fps if ahead else 0.0)

    def sent(self, now: float) -> None:
        self.last_s, self.in_flight = now, True
        if self.two_rate:
            self.next_s = (math.floor((now + self.slack_s) / self.period_s) + 1) * self.period_s

    def prefix(self, observed: float, fps: float | None = None, latency_s: float | None = None) -> np.ndarray | None:
        """The executor's steps that run while a request observed at `observed` is under way (at most
        prefix_max_steps, on the grid of the chunk asked for), for a prefix-conditioned model; None otherwise."""
        fps = fps or self.fps
        if self.prefix_max_steps <= 0 or not fps:
            return None
        latency = self.latency.estimate() if latency_s is None else latency_s
        steps = self.executor.committed(observed, latency, fps, self.prefix_max_steps)
        return steps if len(steps) else None

    def replied(self, observed: float, usable: float | None, fps: float | None = None) -> None:
        """The request came back (`usable`: when its chunk could run, None: it failed): latency observed ->
        usable into the estimator, and the chunk's fps."""
        self.in_flight = False
        if usable is not None:
            self.latency.add(usable - observed)
        if fps:
            self.fps = float(fps)


def limit_step(target: np.ndarray, last: np.ndarray | None, lower: np.ndarray, upper: np.ndarray,
               speed: np.ndarray, dt_s: float) -> np.ndarray:
    """The per-tick limiter every control loop uses (neon-g1's Controller, neon-ros's and neon-sim's executors):
    inside [lower, upper] first, then at most speed * dt_s from `last` (None: no step limit). -> Float[(D,)]."""
    q = np.clip(target, lower, upper)
    if last is not None:
        q = np.clip(q, last - speed * dt_s, last + speed * dt_s)
    return q.astype(np.float32)


def safety_hook(layer) -> SafetyHook:
    """A `SafetyLayer`'s limits at the control rate (`limit_step`): inside the joint limits, then at most
    `layer.speed * dt_s` (max_joint_velocity for the body, max_hand_velocity for the hands) from the last executed
    target."""
    lo, hi, speed = layer.space.lower, layer.space.upper, layer.speed
    return lambda target, last, dt_s: limit_step(target, last, lo, hi, speed, dt_s)


class LatencyEstimator:
    """Measured round trips (seconds) -> the latency to plan for: the `quantile` of the last `window` of them
    (`initial_s` before any). A quantile rather than a mean: one slow reply in ten should still find the chunk
    covering it."""

    def __init__(self, window: int = 20, quantile: float = 0.9, initial_s: float = 0.0):
        if window < 1 or not 0.0 <= quantile <= 1.0 or not initial_s >= 0:
            raise ValueError(f"window must be >= 1, quantile in [0, 1], initial_s >= 0; got {window}, {quantile}, "
                             f"{initial_s}")
        self._samples: collections.deque[float] = collections.deque(maxlen=window)
        self.quantile, self.initial_s = quantile, initial_s

    def add(self, round_trip_s: float) -> None:
        if np.isfinite(round_trip_s) and round_trip_s >= 0:
            self._samples.append(float(round_trip_s))

    def estimate(self) -> float:
        samples = list(self._samples)
        return float(np.quantile(samples, self.quantile)) if samples else self.initial_s

    def __len__(self) -> int:
        return len(self._samples)
