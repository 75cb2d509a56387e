"""The G1 side of neon-g1: which joints it writes, the per-tick safety logic, and the DDS link to the robot.

- `Layout`: the joints written on rt/arm_sdk (arms, the waist) and rt/dex3/*/cmd (Dex3 hands), each with its
  limits, speed limit, gains, DDS slot and the action dimension that drives it (or none: held where it was).
- `Controller`: one `tick(now, measured, measured_at)` per control period, clock injected, no I/O:
  waiting -> engaging (weight 0 -> 1 over ramp_in_s, commanding the pose measured at engage) -> running
  (chunk targets interpolated in time, velocity-clamped, inside the limits) <-> holding (no fresh chunk for
  max_chunk_age_s: the last command held) -> releasing (weight -> 0 over ramp_out_s, the last command held) -> released.
  Both weight ramps advance by the time since the last tick capped at two periods, as the joint steps do: a loop
  that stalls moves the weight by at most two periods' share of the ramp on its next tick, never all the way.
- `run_loop`: the control loop. Every way out of it (release done, an exception in any part, KeyboardInterrupt,
  SystemExit) first ramps the weight out from where it is; logging goes through `QueuedLog`, so a slow, blocked
  or closed stdout never stalls or ends the loop.
- `RobotLink`: rt/lowstate and the Dex3 states in; LowCmd_ / HandCmd_ out with the CRC filled, or nothing
  at all in dry run (no writer is ever created).

Gains and mode fields follow Unitree's own code: unitree_sdk2_python example/g1/high_level/g1_arm7_sdk_dds_example.py
(rt/arm_sdk, kp 60, kd 1.5 on arms and waist, weight in motor_cmd[29].q, CRC on every message) and xr_teleoperate
teleop/robot_control/robot_arm.py (mode_pr 0, mode_machine echoed from rt/lowstate, motor mode 1) and
robot_hand_unitree.py (Dex3 motor order, kp 1.5, kd 0.2, RIS mode byte).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from neon.action_space import (
    ARM_JOINTS,
    ARM_SDK_WEIGHT_SLOT,
    BODY_JOINTS,
    DEX3_MOTOR_ORDER,
    G1ActionSpace,
    missing_arm_joints,
)
from neon_runtime.executor import ChunkExecutor, limit_step
from neon_runtime.safety import SafetyConfig

SAFE = SafetyConfig()  # the speed limits every chunk already met on the server: neon-g1's defaults too
WEIGHT_SLOT = ARM_SDK_WEIGHT_SLOT  # LowCmd_.motor_cmd[29].q on rt/arm_sdk
WAIST_JOINTS = tuple(j.name for j in BODY_JOINTS if j.group == "torso")
DEX3_MOTORS = DEX3_MOTOR_ORDER  # rt/dex3/{side}/cmd and /state, by motor index
# RIS mode byte of a Dex3 motor: id in bits 0-3, status 1 (FOC) in bits 4-6, timeout bit 7 set: the hand's firmware
# stops a motor that hears nothing for 1 s (Unitree's Dex3 example sets it; xr_teleoperate leaves it clear).
DEX3_STATUS_FOC, DEX3_TIMEOUT = 0x01, 0x01


def dex3_mode(motor: int) -> int:
    return (motor & 0x0F) | (DEX3_STATUS_FOC & 0x07) << 4 | (DEX3_TIMEOUT & 0x01) << 7


class BridgeError(ValueError):
    """Input neon-g1 refuses to act on (exit code 2); the message says what is wrong."""


def require_arms(names, what: str) -> None:
    """Refuse a joint list (a server's action space, a trajectory) without every arm joint."""
    missing = missing_arm_joints(names)
    if missing:
        raise BridgeError(f"{what} lacks arm joint(s) {', '.join(missing)}: neon-g1 drives the arms through "
                          f"rt/arm_sdk and needs all {len(ARM_JOINTS)} ({', '.join(ARM_JOINTS[:2])}, ...)")


# ----------------------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Gains:
    """Position gains per group: Unitree's arm example uses kp 60 / kd 1.5 on every arm and waist joint."""

    kp: float = 60.0
    kd: float = 1.5
    wrist_kp: float = 60.0
    wrist_kd: float = 1.5
    waist_kp: float = 60.0
    waist_kd: float = 1.5
    hand_kp: float = 1.5  # xr_teleoperate's Dex3 gains
    hand_kd: float = 0.2

    def validate(self) -> Gains:
        for name, value in self.__dict__.items():  # kp 0 at weight 1 would leave a joint limp: a kp must be > 0
            stiff = name.endswith("kp")
            if not (np.isfinite(value) and (value > 0 if stiff else value >= 0) and value <= 500):
                raise BridgeError(f"--{name.replace('_', '-')} must be a finite number {'> 0' if stiff else '>= 0'} "
                                  f"and <= 500, got {value}")
        return self


@dataclass(frozen=True)
class Layout:
    """The joints neon-g1 writes, in one order: arms and waist (rt/arm_sdk), then Dex3 hands (left, right)."""

    names: tuple[str, ...]
    lower: np.ndarray  # Float[(N,)] rad
    upper: np.ndarray
    max_vel_rad_s: np.ndarray
    kp: np.ndarray
    kd: np.ndarray
    body_slot: np.ndarray  # Int[(N,)] LowCmd_ motor slot, -1 for hand joints
    hand: tuple[tuple[str, int] | None, ...]  # (side, Dex3 motor) for hand joints
    policy_index: np.ndarray  # Int[(N,)] action dimension that drives the joint, -1: held at the engage pose

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def has_hands(self) -> bool:
        return any(h is not None for h in self.hand)


def make_layout(space: G1ActionSpace, gains: Gains, *, hands: bool, max_vel_rad_s: float = SAFE.max_joint_velocity,
                max_hand_vel_rad_s: float = SAFE.max_hand_velocity) -> Layout:
    """What neon-g1 writes for `space`: its arms; the waist (driven when the space has it, else held where it was at
    engage, so arm_sdk never leaves it without stiffness); Dex3 hands when `hands` and the space has them."""
    require_arms(space.names, f"the action space ({space.describe()})")
    index = {n: i for i, n in enumerate(space.names)}
    by_name = {j.name: j for j in BODY_JOINTS}
    rows = []  # name, lower, upper, vel, kp, kd, slot, hand, policy index
    for name in ARM_JOINTS + WAIST_JOINTS:
        j = by_name[name]
        kp, kd = ((gains.waist_kp, gains.waist_kd) if j.group == "torso" else
                  (gains.wrist_kp, gains.wrist_kd) if "wrist" in name else (gains.kp, gains.kd))
        rows.append((name, j.lower, j.upper, max_vel_rad_s, kp, kd, j.sdk_index, None, index.get(name, -1)))
    if hands and space.hand_type == "dex3":
        for side, motors in DEX3_MOTORS.items():
            for motor, finger in enumerate(motors):
                j = space.joints[index[f"{side}_hand_{finger}"]]
                rows.append((j.name, j.lower, j.upper, max_hand_vel_rad_s, gains.hand_kp, gains.hand_kd, -1,
                             (side, motor), index[j.name]))
    cols = list(zip(*rows, strict=True))
    f32 = lambda c: np.array(c, np.float32)
    return Layout(tuple(cols[0]), f32(cols[1]), f32(cols[2]), f32(cols[3]), f32(cols[4]), f32(cols[5]),
                  np.array(cols[6], np.int64), tuple(cols[7]), np.array(cols[8], np.int64))


# ------------------------------------------------------------------------------------------------------- controller
@dataclass
class ControlConfig:
    rate_hz: float = 250.0  # rt/arm_sdk publishing rate (Unitree: 50 Hz example, 250 Hz teleoperation)
    ramp_in_s: float = 3.0  # weight 0 -> 1 on engage (Unitree's example: 3 s)
    ramp_out_s: float = 2.0  # weight 1 -> 0 on release (xr_teleoperate: 0.01 every 20 ms)
    max_chunk_age_s: float = 0.5  # no fresh executable chunk for this long: hold the last command
    hold_s: float = 1.0  # ... and after holding this long, release
    state_stale_s: float = 0.1  # no rt/lowstate for this long while engaged: release

    def validate(self) -> ControlConfig:
        checks = [("rate_hz", 50 <= self.rate_hz <= 500, "in [50, 500] Hz (the robot's arm_sdk expects 50-500 Hz)"),
                  ("ramp_in_s", 1.0 <= self.ramp_in_s <= 30.0, "in [1, 30] s"),
                  ("ramp_out_s", 2.0 <= self.ramp_out_s <= 10.0, "in [2, 10] s"),
                  ("max_chunk_age_s", 0 < self.max_chunk_age_s <= 2.0, "in (0, 2] s"),
                  ("hold_s", 0 <= self.hold_s <= 5.0, "in [0, 5] s"),
                  ("state_stale_s", 0 < self.state_stale_s <= 2.0, "in (0, 2] s")]
        for name, ok, need in checks:
            value = getattr(self, name)
            if not (np.isfinite(value) and ok):
                raise BridgeError(f"--{name.replace('_', '-')} must be {need}, got {value}")
        return self


@dataclass
class Command:
    q: np.ndarray  # Float[(N,)] in layout order, rad
    weight: float  # rt/arm_sdk weight, 0..1
    phase: str


class Controller:
    """The per-tick safety logic. Not thread-safe: one control thread calls tick() and release()."""

    def __init__(self, layout: Layout, config: ControlConfig, executor: ChunkExecutor):
        self.layout, self.cfg, self.executor = layout, config.validate(), executor
        self.phase = "waiting"
        self.q: np.ndarray | None = None  # the last command
        self.weight = 0.0
        self.reason = ""  # why it released
        self.fault = False  # released because something went wrong (not a stop request)
        self.engaged_once = False
        self._pose: np.ndarray | None = None  # measured at engage: the ramp's pose and the held joints' target
        self._since = 0.0  # when the phase began
        self._from_weight = 0.0  # the weight the release started from
        self._ramped_at = 0.0  # when the weight was last advanced
        self._last_now: float | None = None
        self._driven = layout.policy_index >= 0

    def release(self, now: float, reason: str, fault: bool = False) -> None:
        """Start the release ramp (from any weight), holding the last command; idempotent."""
        if self.phase in ("releasing", "released"):
            return
        self.reason, self.fault = reason, fault
        if self.phase == "waiting":  # nothing was ever sent
            self.phase = "released"
            return
        self.phase, self._since, self._from_weight, self._ramped_at = "releasing", now, self.weight, now

    def _ramp_dt(self, now: float) -> float:
        """Seconds to advance a weight ramp by: since it last advanced, at most two control periods."""
        dt = min(max(now - self._ramped_at, 0.0), 2.0 / self.cfg.rate_hz)
        self._ramped_at = max(self._ramped_at, now)
        return dt

    def tick(self, now: float, measured: np.ndarray | None, measured_at: float | None) -> Command | None:
        """The command for this control period, or None: nothing to send (not engaged yet, or released)."""
        cfg, period = self.cfg, 1.0 / self.cfg.rate_hz
        dt = period if self._last_now is None else min(max(now - self._last_now, 0.0), 2 * period)
        self._last_now = now
        if self.phase == "released":
            return None
        if self.phase == "releasing":  # first, touching neither the state nor the executor: nothing can stop it
            return self._releasing(now)
        state_ok = (measured is not None and measured_at is not None and now - measured_at <= cfg.state_stale_s
                    and bool(np.isfinite(measured).all()))
        age = self.executor.age(now)
        fresh = age is not None and age <= cfg.max_chunk_age_s
        if self.phase in ("engaging", "running", "holding") and not state_ok:
            if measured is not None and measured_at is not None and now - measured_at <= cfg.state_stale_s:
                bad = [n for n, v in zip(self.layout.names, measured, strict=True) if not np.isfinite(v)]
                why = (f"no fresh state for {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} (a Dex3 state "
                       f"silent for more than {cfg.state_stale_s} s, or not finite)")
            else:
                why = (f"rt/lowstate {'never arrived' if measured_at is None else f'silent for {now - measured_at:.3f} s'}"
                       f" (limit {cfg.state_stale_s} s)")
            self.release(now, why, fault=True)
        if self.phase == "waiting":
            if not (state_ok and fresh):
                return None
            self._pose = np.clip(measured, self.layout.lower, self.layout.upper).astype(np.float32)
            self.q, self.phase, self._since, self.engaged_once = self._pose.copy(), "engaging", now, True
            self._ramped_at = now
        if self.phase == "engaging":
            if age is None or age > cfg.max_chunk_age_s + cfg.hold_s:
                self.release(now, f"watchdog: no fresh executable chunk for {cfg.max_chunk_age_s + cfg.hold_s:.2f} s "
                             "while engaging", fault=True)
            else:
                self.weight = min(1.0, self.weight + self._ramp_dt(now) / cfg.ramp_in_s)
                if self.weight >= 1.0:
                    self.phase, self._since = "running", now
                return Command(self.q.copy(), self.weight, "engaging")
        if self.phase == "running" and not fresh:
            self.phase, self._since = "holding", now
        if self.phase == "holding":
            if fresh:
                self.phase, self._since = "running", now
            elif now - self._since >= cfg.hold_s:
                self.release(now, f"watchdog: no fresh executable chunk for {cfg.max_chunk_age_s + cfg.hold_s:.2f} s "
                             f"(last {'never' if age is None else f'{age:.2f} s ago'})", fault=True)
            else:
                return Command(self.q.copy(), self.weight, "holding")
        if self.phase == "running":
            self.q = self._step_toward(self._goal(now), dt)
            return Command(self.q.copy(), self.weight, "running")
        if self.phase == "releasing":
            return self._releasing(now)
        return None

    def _releasing(self, now: float) -> Command | None:
        """One tick of the release ramp: from the weight it started at to 0 over ramp_out_s of ticks."""
        self.weight = max(0.0, self.weight - self._from_weight * self._ramp_dt(now) / self.cfg.ramp_out_s)
        if self.weight <= 1e-9:
            self.weight, self.phase = 0.0, "released"
        return Command(self.q.copy(), self.weight, "releasing")

    def _goal(self, now: float) -> np.ndarray:
        """Where the chunk wants each joint now; held joints (and NaN targets) keep their pose / last command."""
        goal = self._pose.copy()
        target = self.executor.target(now)
        if target is not None:
            goal[self._driven] = target[self.layout.policy_index[self._driven]]
        return np.where(np.isfinite(goal), goal, self.q)

    def _step_toward(self, goal: np.ndarray, dt: float) -> np.ndarray:
        """Inside the limits first, then at most max_vel_rad_s * dt from the last command (`limit_step`)."""
        lay = self.layout
        return limit_step(goal, self.q, lay.lower, lay.upper, lay.max_vel_rad_s, dt)


# ---------------------------------------------------------------------------------------------------------- the wire
class RobotLink:
    """rt/lowstate (and rt/dex3/*/state) in; rt/arm_sdk (and rt/dex3/*/cmd) out, only with `prepare(writers=True)`."""

    def __init__(self, interface: str, domain: int):
        from neon_runtime.unitree import dds

        if interface == "lo":  # a simulator or test on this machine: multicast off, discovery by unicast
            self.participant = dds.loopback(domain)
        else:  # the robot: domain 0 is its own, and only the real-robot path opens it
            self.participant = dds.open_participant(domain, interface, robot=domain == dds.ROBOT_DOMAIN)
        self.where = f"{interface}, domain {domain}"
        self._dds = dds
        self._lowstate = dds.reader(self.participant, "rt/lowstate")
        self._hand_readers = {side: dds.reader(self.participant, f"rt/dex3/{side}/state") for side in DEX3_MOTORS}
        self.state = None  # the newest LowState_
        self.state_at: float | None = None  # when it arrived (monotonic s)
        self.hand_q: dict[str, np.ndarray | None] = dict.fromkeys(DEX3_MOTORS)
        self.hand_at: dict[str, float | None] = dict.fromkeys(DEX3_MOTORS)  # when each arrived (monotonic s)
        self._arm_sdk = None
        self._hand_writers = {}
        self._cmd = None
        self._hand_cmds = {}
        self.sent = 0

    def poll(self, now: float) -> None:
        """Take whatever arrived since the last poll (readers keep the newest sample only)."""
        from neon_runtime.unitree.idl import HandState_, LowState_

        got = [s for s in self._lowstate.take(N=1) if isinstance(s, LowState_)]  # not a writer's disposal notice
        if got:
            self.state, self.state_at = got[-1], now
        for side, reader in self._hand_readers.items():
            hs = [s for s in reader.take(N=1) if isinstance(s, HandState_) and len(s.motor_state) >= 7]
            if hs:
                self.hand_q[side] = np.array([m.q for m in hs[-1].motor_state[:7]], np.float32)
                self.hand_at[side] = now

    def wait_for_state(self, timeout_s: float, want_hands: bool, cancelled=lambda: False) -> bool:
        """Poll until rt/lowstate (and, with want_hands, both Dex3 states) arrive; False if lowstate never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not cancelled():
            self.poll(time.monotonic())
            if self.state is not None and (not want_hands or all(q is not None for q in self.hand_q.values())):
                return True
            time.sleep(0.01)
        return self.state is not None

    def measured(self, layout: Layout, now: float | None = None, stale_s: float | None = None) -> np.ndarray | None:
        """Float[(N,)]: the robot's joint positions in layout order (None before the first rt/lowstate); a Dex3
        joint is NaN while its hand's state never came or (given `now` and `stale_s`) is older than `stale_s`."""
        if self.state is None:
            return None
        motors = self.state.motor_state
        out = np.empty(layout.n, np.float32)
        for i, (slot, hand) in enumerate(zip(layout.body_slot, layout.hand, strict=True)):
            if hand is None:
                out[i] = motors[slot].q
            else:
                q, at = self.hand_q[hand[0]], self.hand_at[hand[0]]
                stale = q is None or (stale_s is not None and now is not None and (at is None or now - at > stale_s))
                out[i] = np.nan if stale else q[hand[1]]
        return out

    def prepare(self, layout: Layout, *, writers: bool) -> None:
        """Fill the messages as Unitree's code does; create the command writers only with `writers` (never in dry
        run: then nothing can reach rt/arm_sdk)."""
        from neon_runtime.unitree.crc import LowCmdImage
        from neon_runtime.unitree.idl import HandCmd_, LowCmd_, MotorCmd_

        self._cmd = LowCmd_(mode_pr=0)
        for slot, hand, kp, kd in zip(layout.body_slot, layout.hand, layout.kp, layout.kd, strict=True):
            if hand is None:
                m = self._cmd.motor_cmd[slot]
                m.mode, m.kp, m.kd, m.dq, m.tau = 1, float(kp), float(kd), 0.0, 0.0
        self._image = LowCmdImage(self._cmd)  # packed once: each send writes q and the weight, then the crc
        body = layout.body_slot >= 0
        self._body_rows, self._body_slots = np.flatnonzero(body), np.append(layout.body_slot[body], WEIGHT_SLOT)
        self._hand_cmds = {s: HandCmd_(motor_cmd=[MotorCmd_(mode=dex3_mode(k)) for k in range(7)]) for s in DEX3_MOTORS}
        for hand, kp, kd in zip(layout.hand, layout.kp, layout.kd, strict=True):
            if hand is not None:
                m = self._hand_cmds[hand[0]].motor_cmd[hand[1]]
                m.kp, m.kd = float(kp), float(kd)
        if writers:
            self._arm_sdk = self._dds.writer(self.participant, "rt/arm_sdk")
            if layout.has_hands:
                self._hand_writers = {s: self._dds.writer(self.participant, f"rt/dex3/{s}/cmd") for s in DEX3_MOTORS}

    def send(self, layout: Layout, command: Command, write: bool = True) -> None:
        """Fill one LowCmd_ (CRC last) and the Dex3 commands; write them on rt/arm_sdk and rt/dex3/*/cmd when
        `write` and the writers exist."""
        cmd = self._cmd
        cmd.mode_machine = self.state.mode_machine if self.state is not None else 0  # echo the build, as Unitree does
        for i, (slot, hand) in enumerate(zip(layout.body_slot, layout.hand, strict=True)):
            if hand is None:
                cmd.motor_cmd[slot].q = float(command.q[i])
            else:
                self._hand_cmds[hand[0]].motor_cmd[hand[1]].q = float(command.q[i])
        cmd.motor_cmd[WEIGHT_SLOT].q = float(command.weight)
        q = np.append(np.asarray(command.q, np.float64)[self._body_rows], float(command.weight))
        cmd.crc = self._image.crc(cmd.mode_machine, self._body_slots, q)
        if not (write and self._arm_sdk is not None):
            return
        self._arm_sdk.write(cmd)
        for side, writer in self._hand_writers.items():
            writer.write(self._hand_cmds[side])
        self.sent += 1


# ------------------------------------------------------------------------------------------------------ tick timing
class TickStats:
    """Intervals between control ticks (p50, p99, how many exceeded twice the period) and the work in each tick."""

    keep = 60_000  # the newest intervals and work times kept (4 minutes at 250 Hz: memory stays flat for days)

    def __init__(self, rate_hz: float):
        self.period = 1.0 / rate_hz
        self._last: float | None = None
        self.intervals: collections.deque[float] = collections.deque(maxlen=self.keep)
        self.work: collections.deque[float] = collections.deque(maxlen=self.keep)
        self.ticks, self.late, self.longest = 0, 0, 0.0  # over the whole run

    def mark(self, now: float) -> None:
        if self._last is not None:
            interval = now - self._last
            self.intervals.append(interval)
            self.ticks += 1
            self.late += interval > 2.0 * self.period
            self.longest = max(self.longest, interval)
        self._last = now

    def worked(self, seconds: float) -> None:
        self.work.append(seconds)

    def summary(self) -> str:
        if not self.intervals:
            return "tick period: no ticks measured"
        ms, work = np.array(self.intervals) * 1e3, np.array(self.work or [0.0]) * 1e3
        recent = "" if len(ms) == self.ticks else f" (percentiles over the last {len(ms)})"
        return (f"tick period over {self.ticks} ticks at {1 / self.period:g} Hz{recent}: p50 {np.percentile(ms, 50):.2f} "
                f"ms, p99 {np.percentile(ms, 99):.2f} ms, max {self.longest * 1e3:.2f} ms, {self.late} later than "
                f"{2e3 * self.period:g} ms; "
                f"work per tick p50 {np.percentile(work, 50):.2f} ms, p99 {np.percentile(work, 99):.2f} ms")


# -------------------------------------------------------------------------------------------------------- the loop
class QueuedLog:
    """log(message) for a control loop: the message goes on a bounded queue and a thread writes it with `sink`, so a
    slow or blocked stdout never stalls the loop and a closed one (BrokenPipeError) never ends it. When the queue is
    full, messages are dropped and counted; a sink that fails is counted and nothing more is written to it."""

    def __init__(self, sink, maxsize: int = 1000):
        self._sink, self._queue = sink, queue.Queue(maxsize)
        self.dropped, self.failed = 0, None  # messages not written; the sink's first error
        self._thread = threading.Thread(target=self._write, name="neon-g1-log", daemon=True)
        self._thread.start()

    def __call__(self, message: str) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        while (message := self._queue.get()) is not None:
            if self.failed is None:
                try:
                    self._sink(message)
                except Exception as e:
                    self.failed = e
            if self.failed is not None:
                self.dropped += 1

    def close(self, timeout_s: float = 1.0) -> None:
        """Write what is queued (waiting at most `timeout_s` for a blocked sink), then stop."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)


def run_loop(controller: Controller, link: RobotLink, *, stop_reason, status, log, dry_run: bool,
             run_seconds: float | None = None, log_every_s: float = 1.0) -> TickStats:
    """Tick at cfg.rate_hz until released: poll the robot, tick the controller, send (unless dry run), log once per
    `log_every_s`. `stop_reason()` -> a reason to release, or "" to go on; `status()` -> the inputs' state, for logs;
    `log` must not block (`QueuedLog`).

    An exception in any of it releases (a fault) and the loop goes on ramping the weight out; only when ticks keep
    failing for longer than the release ramp takes does it re-raise. Anything that still leaves the loop early
    (KeyboardInterrupt, SystemExit, a re-raised error) ramps out first (`ramp_out`)."""
    cfg = controller.cfg
    period, stats = 1.0 / cfg.rate_hz, TickStats(cfg.rate_hz)
    start = next_tick = time.monotonic()
    state = {"next_log": start + log_every_s, "phase": controller.phase}
    failing_since = None
    try:
        while controller.phase != "released":
            now = time.monotonic()
            stats.mark(now)
            try:
                _one_tick(controller, link, now, start, state, stop_reason, status, log, dry_run, run_seconds,
                          log_every_s)
                failing_since = None
            except Exception as e:  # release, holding the last command; give up only if that keeps failing
                failing_since = now if failing_since is None else failing_since
                controller.release(now, f"error: {type(e).__name__}: {e}", fault=True)
                _send_release_tick(controller, link, now, dry_run)  # this tick's share of the ramp all the same
                if now - failing_since > cfg.ramp_out_s + 1.0:
                    raise
            stats.worked(time.monotonic() - now)
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:  # fell behind by more than a tick: start afresh rather than burst
                next_tick = time.monotonic()
    except BaseException as e:
        ramp_out(controller, link, dry_run, f"left the control loop: {type(e).__name__}: {e}")
        raise
    return stats


def _one_tick(controller, link, now, start, state, stop_reason, status, log, dry_run, run_seconds, log_every_s):
    """One pass of `run_loop`'s body: poll, maybe release, tick, send, log."""
    link.poll(now)
    why = stop_reason() or (f"--run-seconds {run_seconds:g} reached"
                            if run_seconds is not None and now - start >= run_seconds else "")
    if why:
        controller.release(now, why)
    command = controller.tick(now, link.measured(controller.layout, now, controller.cfg.state_stale_s), link.state_at)
    if command is not None:
        link.send(controller.layout, command, write=not dry_run)
    if controller.phase != state["phase"]:
        state["phase"] = controller.phase
        log(f"-> {controller.phase}" + (f" ({controller.reason})" if controller.phase in ("releasing", "released")
                                        else "") + f", weight {controller.weight:.2f}")
    if now >= state["next_log"]:
        state["next_log"] += log_every_s
        log(describe(controller, link, now, dry_run, status()))


def _send_release_tick(controller: Controller, link: RobotLink, now: float, dry_run: bool) -> None:
    """Tick the (released) controller and send its command, ignoring a failing send: the release ramp's tick when
    the rest of the loop's tick failed."""
    command = controller.tick(now, None, None)
    if command is not None:
        try:
            link.send(controller.layout, command, write=not dry_run)
        except Exception:
            pass


def ramp_out(controller: Controller, link: RobotLink, dry_run: bool, reason: str) -> None:
    """Release (a fault) and tick the release ramp to weight 0 at the control rate, sending each command; send errors
    are ignored (each tick tries again) and it gives up after the ramp's time plus 1 s."""
    cfg = controller.cfg
    deadline = time.monotonic() + cfg.ramp_out_s + 1.0
    controller.release(time.monotonic(), reason, fault=True)
    while controller.phase != "released" and time.monotonic() < deadline:
        _send_release_tick(controller, link, time.monotonic(), dry_run)
        time.sleep(1.0 / cfg.rate_hz)


def describe(controller: Controller, link: RobotLink, now: float, dry_run: bool, status: str) -> str:
    """One summary line: phase, weight, chunks, state age, the arm command."""
    ex, q = controller.executor, controller.q
    age = ex.age(now)
    state_age = "none" if link.state_at is None else f"{(now - link.state_at) * 1e3:.0f} ms"
    arms = ""
    if q is not None:
        arms = (" | cmd L[" + " ".join(f"{v:+.2f}" for v in q[:7]) + "] R[" + " ".join(f"{v:+.2f}" for v in q[7:14])
                + "]")
    return (f"{'DRY RUN, nothing sent: ' if dry_run else ''}{controller.phase} weight {controller.weight:.2f}"
            f" | chunks {ex.accepted} accepted, {ex.refused} refused, age {'none' if age is None else f'{age:.2f} s'}"
            f" | lowstate {state_age}{arms}" + (f" | {status}" if status else ""))
