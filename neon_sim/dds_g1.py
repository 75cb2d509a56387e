"""The simulated G1 on the robot's own wire: `rt/lowstate` out and `rt/arm_sdk` in over CycloneDDS, head camera and
instruction on ROS 2, so the code that drives the real G1 (neon-g1, neon-ros) runs against it unchanged.

    sim = DdsG1(DdsG1Config(domain=7, seed=10_000, episodes=10)).start()   # simulates on a thread of its own
    for event in iter(sim.events.get, None):      # "ready" -> start a bridge, "finished" -> stop it
        ...
    report = sim.join()                           # success rate, Wilson CI, per-episode results

Unitree's own simulator (`unitree_mujoco`, simulate_python/unitree_sdk2py_bridge.py) maps each `rt/lowcmd` motor
command to a MuJoCo torque  tau + kp (q - q_meas) + kd (dq - dq_meas)  and publishes the joint sensors as LowState_.
This does the same for `rt/arm_sdk`, the channel a bridge uses while the robot balances, with three differences:
the PD law runs at every physics step (2 ms; the robot's motor drivers close it locally, Unitree's simulator holds
one torque until the next message), commands are blended with the robot's own controller by the arm_sdk weight,
and LowState_ carries its crc.

rt/lowstate (LowState_) at `state_hz` (default 250 Hz; the robot sends 500, see `STATE_HZ`): motor_state[sdk_index]
  q, dq and tau_est (the torque the motor applies, gravity compensation included) of every MuJoCo joint matched to
  the G1's joints by name, mode 1 on those slots; tick = milliseconds of simulated time since start; mode_machine 5
  (29-DOF; 4 for a model without wrist pitch and yaw); an upright, still IMU (the pelvis is fixed); crc filled.
rt/arm_sdk (LowCmd_): a command whose crc is wrong is ignored and counted, as the robot drops it; so is one with a
  non-finite value in a slot it would use. Weight w = motor_cmd[29].q clipped to [0, 1]. Each waist and arm joint's
  PD runs on   q* = w q_sdk + (1 - w) q_hold,  kp = w kp_sdk + (1 - w) KP,  kd = w kd_sdk + (1 - w) KD,
  dq* = w dq_sdk,  tau_ff = w tau_sdk   (q* clipped to the joint's range, gains to >= 0), where q_hold is the
  episode's start pose, held by the sim's own controller (scene.KP / KD). Legs always hold. Torque
  kp (q* - q) + kd (dq* - dq) + tau_ff + gravity compensation, clipped to the motor's range. Gravity compensation
  stays on at every weight: on the robot the balance controller carries the arms' weight. (An assumption: Unitree
  does not document it; if the robot adds none under arm_sdk, a real arm sags by about tau_gravity / kp.)
Staleness: a command received more than `stale_after_s` ago (0.2 s, wall clock) is no longer applied: w counts as 0
  and the own hold takes over (counted as "stale"). Unitree documents no timeout for arm_sdk, and integrators report
  that the robot goes on applying the last command when the stream stops; the timeout here makes a bridge that dies
  or stalls visible. `stale_after_s=0` keeps the last command in force for ever, as the robot reportedly does.

Episodes: episode k is seed + k's task (sample_task(default_rng(seed + k))), as in `neon-sim eval`. The sim resets
and holds its start pose ("ready"); the episode clock starts when the commanded weight first reaches 1 ("engaged":
the bridge is fully in); the episode ends at success (sim.success(), the direct path's check, here checked every
state period) or after EPISODE_S of simulated time ("finished", with the result); then the sim waits until the
weight is back at 0 (the bridge released it, or its commands went stale), at most `release_timeout_s` ("released"),
and goes on. Every event goes to `events` (a queue; None after the last episode) and to `on_event`.

Real time: the physics thread paces simulated time to the wall clock, one state period at a time; falling more than
MAX_LAG_S behind, it gives up catching up (counted as an overrun). The head camera renders on a thread of its own,
from a copy of the joint positions, at `camera_hz` of simulated time.

ROS 2 (neon-ros's default topics, ROS_DOMAIN_ID from the environment): `/camera/color/image_raw` (sensor_msgs/Image
rgb8, image_size x image_size, reliable, so best-effort subscribers match too) and `/neon/instruction`
(std_msgs/String, reliable and transient-local: a node that joins late still gets it), published at every "ready".
The node lives in an rclpy context of its own: a harness's rclpy is left alone.
"""

from __future__ import annotations

import copy
import json
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cyclonedds.core import Policy, Qos
from cyclonedds.sub import DataReader

from neon.action_space import ARM_SDK_WEIGHT_SLOT, G1ActionSpace
from neon_runtime.unitree import dds
from neon_runtime.unitree.crc import crc32_words, low_cmd_crc, pack_low_state
from neon_runtime.unitree.idl import LowCmd_, LowState_
from neon_sim.evaluate import wilson
from neon_sim.scene import EPISODE_S, IMAGE_SIZE, KD, KP, G1Tabletop, SimError, sample_task

LOWSTATE_TOPIC, ARM_SDK_TOPIC = "rt/lowstate", "rt/arm_sdk"
CAMERA_TOPIC, INSTRUCTION_TOPIC = "/camera/color/image_raw", "/neon/instruction"  # neon-ros's defaults
WEIGHT_SLOT = ARM_SDK_WEIGHT_SLOT  # motor_cmd[29].q carries the arm_sdk weight
ARM_SDK_GROUPS = ("torso", "arms")  # what arm_sdk moves while the robot balances: waist and arms
ENGAGED = 1.0 - 1e-6  # a weight this high counts as 1 (float32 on the wire)
STATE_HZ = 250.0  # rt/lowstate: the arm loops' rate (the robot sends 500, which 2 cores also keep when not shared)
MAX_LAG_S = 0.1  # further behind the wall clock than this, the sim stops catching up


@dataclass(frozen=True)
class DdsG1Config:
    interface: str = "lo"
    domain: int = 1  # Unitree's simulator's default; 0, the robot's, only with allow_robot_domain
    seed: int = 10_000  # episode k uses seed + k (neon-sim eval's seeds)
    episodes: int = 10
    mjcf: str | None = None  # the G1 model: scene.default_mjcf's sources when None
    state_hz: float = STATE_HZ  # must divide the physics rate (500 Hz: 500, 250, 166.67, 125, ...)
    camera_hz: float = 10.0  # 0: no camera
    image_size: int = IMAGE_SIZE
    stale_after_s: float = 0.2  # 0: a command stays in force until the next one
    engage_timeout_s: float = 0.0  # an episode whose bridge never engages ends after this (0: wait for ever)
    release_timeout_s: float = 10.0
    ros: bool = True  # camera and instruction on ROS 2
    allow_robot_domain: bool = False  # join domain 0, the G1's own

    def validate(self) -> None:
        """SimError naming the field that is wrong."""
        def positive(name, value, zero_ok=False):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
                raise SimError(f"{name} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {value!r}")

        if not isinstance(self.episodes, int) or self.episodes < 1:
            raise SimError(f"episodes must be >= 1, got {self.episodes!r}")
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise SimError(f"image_size must be >= 16 pixels, got {self.image_size!r}")
        positive("state_hz", self.state_hz)
        positive("release_timeout_s", self.release_timeout_s)
        for name in ("camera_hz", "stale_after_s", "engage_timeout_s"):
            positive(name, getattr(self, name), zero_ok=True)


@dataclass(frozen=True)
class EpisodeEvent:
    kind: str  # "ready" | "engaged" | "finished" | "released"
    episode: int  # 0-based
    seed: int
    instruction: str
    result: dict | None = None  # "finished" and "released": the episode's result


@dataclass(frozen=True)
class _Command:
    """One accepted rt/arm_sdk command, in the sim's actuator order."""

    weight: float
    q: np.ndarray  # Float[(J,)] rad
    dq: np.ndarray  # rad/s
    tau: np.ndarray  # N m
    kp: np.ndarray
    kd: np.ndarray
    received_s: float  # time.monotonic()

    @classmethod
    def parse(cls, msg, slots: np.ndarray, upper: np.ndarray, now: float) -> _Command | None:
        """None when the weight or an arm_sdk slot holds a non-finite value."""
        m = msg.motor_cmd
        rows = np.array([(m[s].q, m[s].dq, m[s].tau, m[s].kp, m[s].kd) for s in slots], np.float64)
        weight = float(m[WEIGHT_SLOT].q)
        if not (math.isfinite(weight) and np.isfinite(rows[upper]).all()):
            return None
        q, dq, tau, kp, kd = rows.T
        return cls(min(max(weight, 0.0), 1.0), q, dq, tau, np.maximum(kp, 0.0), np.maximum(kd, 0.0), now)


class _Motors:
    """The sim's actuated joints as the G1's motors: the SDK slot of each, the PD law, arm_sdk blending."""

    def __init__(self, sim: G1Tabletop):
        m = sim.model
        space = G1ActionSpace("whole_body", "none")
        names = [m.joint(j).name for j in sim.actuated]
        mapping = space.map_names(names)
        if mapping.unmapped_source:
            raise SimError(f"the model has joints the G1 does not: {', '.join(mapping.unmapped_source)}")
        joints = [None] * len(names)
        for src, dst in zip(mapping.source_index, mapping.target_index, strict=True):
            joints[src] = space.joints[dst]
        self.sim = sim
        self.names = [j.name for j in joints]
        self.slots = np.array([j.sdk_index for j in joints])
        self.upper = np.array([j.group in ARM_SDK_GROUPS for j in joints])
        self.mode_machine = 5 if len(joints) == 29 else 4  # 29-DOF, else the 23-DOF build
        self.q_lo, self.q_hi = sim.q_lo, sim.q_hi
        self.tau_lo, self.tau_hi = m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1]

    def targets(self, cmd: _Command | None) -> tuple[np.ndarray, ...]:
        """(q*, dq*, tau_ff, kp, kd), each Float[(J,)]: the command blended with the own hold by its weight."""
        hold = self.sim.hold
        if cmd is None:
            zero = np.zeros_like(hold)
            return hold, zero, zero, np.full_like(hold, KP), np.full_like(hold, KD)
        w = cmd.weight * self.upper  # legs: always the own controller
        q = np.clip(w * cmd.q + (1 - w) * hold, self.q_lo, self.q_hi)
        return q, w * cmd.dq, w * cmd.tau, w * cmd.kp + (1 - w) * KP, w * cmd.kd + (1 - w) * KD

    def track(self, q_t, dq_t, tau_ff, kp, kd, steps: int) -> None:
        """`steps` physics steps of each motor's PD plus gravity compensation, torques clipped to the motor's range."""
        sim = self.sim
        mj, m, d = sim.mj, sim.model, sim.data
        for _ in range(steps):
            torque = kp * (q_t - d.qpos[sim.act_q]) + kd * (dq_t - d.qvel[sim.act_d]) + tau_ff + d.qfrc_bias[sim.act_d]
            d.ctrl[:] = np.clip(torque, self.tau_lo, self.tau_hi)
            mj.mj_step(m, d)

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.sim.data
        return d.qpos[self.sim.act_q].copy(), d.qvel[self.sim.act_d].copy(), d.actuator_force.copy()


class _LowStateWire:
    """The LowState_ sent each period, and its C-struct image for the crc.

    Re-packing LowState_'s ~500 fields for each crc takes 0.3 ms in Python; here the image is packed once, and each
    period writes only q, dq, tau_est and tick into it (as float32, the wire's precision) before crc32_words."""

    def __init__(self, slots: np.ndarray, mode_machine: int):
        msg = LowState_(mode_machine=mode_machine)
        msg.imu_state.quaternion = [1.0, 0.0, 0.0, 0.0]  # upright and still: the pelvis is fixed
        msg.imu_state.accelerometer = [0.0, 0.0, 9.81]
        self.slots = [int(s) for s in slots]
        for s in self.slots:
            msg.motor_state[s].mode = 1
        # Where each field sits in the image: pack a copy holding a distinct marker in each, and look for it.
        probe, tick_mark = copy.deepcopy(msg), 0x7E57AB1E
        probe.tick = tick_mark
        for k, s in enumerate(self.slots):
            probe.motor_state[s].q, probe.motor_state[s].dq, probe.motor_state[s].tau_est = 1e3 + k, 2e3 + k, 3e3 + k
        marked = pack_low_state(probe)
        floats, words = np.frombuffer(marked, "<f4"), np.frombuffer(marked, "<u4")
        self._q, self._dq, self._tau = ([int(np.flatnonzero(floats == base + k)[0]) for k in range(len(self.slots))]
                                        for base in (1e3, 2e3, 3e3))
        self._tick = int(np.flatnonzero(words == tick_mark)[0])
        self._image = np.frombuffer(bytearray(pack_low_state(msg)), np.uint8)
        self.msg = msg

    def update(self, q: np.ndarray, dq: np.ndarray, tau: np.ndarray, tick: int):
        """The LowState_ for this period, crc filled."""
        q, dq, tau = (np.asarray(x, np.float32) for x in (q, dq, tau))
        floats = self._image.view("<f4")
        floats[self._q], floats[self._dq], floats[self._tau] = q, dq, tau
        self._image.view("<u4")[self._tick] = tick
        for s, a, b, c in zip(self.slots, q.tolist(), dq.tolist(), tau.tolist(), strict=True):
            motor = self.msg.motor_state[s]
            motor.q, motor.dq, motor.tau_est = a, b, c
        self.msg.tick = tick
        self.msg.crc = crc32_words(self._image[:-4].tobytes())
        return self.msg


class _Ros:
    """The sim's ROS 2 side: publishers only, on a node in an rclpy context of its own."""

    def __init__(self, camera: bool):
        try:
            import rclpy
            from rclpy.context import Context
            from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
            from rclpy.signals import SignalHandlerOptions
            from sensor_msgs.msg import Image
            from std_msgs.msg import String
        except ImportError:
            raise SimError("the camera and instruction go out on ROS 2, whose rclpy is not installed: install the ros "
                           "extra, or run without ROS (--no-ros)") from None
        from neon_runtime.ros.convert import array_to_image

        self.rclpy, self.String, self.array_to_image = rclpy, String, array_to_image
        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("neon_sim_g1", context=self.context, enable_rosout=False,
                                      start_parameter_services=False)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.instruction = self.node.create_publisher(String, INSTRUCTION_TOPIC, latched)
        frames = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.camera = self.node.create_publisher(Image, CAMERA_TOPIC, frames) if camera else None

    def say(self, instruction: str) -> None:
        self.instruction.publish(self.String(data=instruction))

    def show(self, image: np.ndarray) -> None:
        self.camera.publish(self.array_to_image(image, stamp=self.node.get_clock().now().to_msg()))

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


class DdsG1:
    """The simulated G1 on DDS and ROS 2, on threads of its own; see the module docstring."""

    def __init__(self, config: DdsG1Config | None = None, on_event=None):
        self.config = config or DdsG1Config()
        self.config.validate()
        self.on_event = on_event  # called with each EpisodeEvent, on the simulation thread
        self.events: queue.Queue[EpisodeEvent | None] = queue.Queue()
        self.results: list[dict] = []
        self.counts = {"accepted": 0, "rejected_crc": 0, "rejected_nonfinite": 0, "stale": 0, "lowstate": 0,
                       "frames": 0, "frames_dropped": 0, "overruns": 0}
        self.sim: G1Tabletop | None = None  # the episode's scene
        self.done = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._joints: tuple[list[str], np.ndarray] = ([], np.zeros(0))
        self._command: _Command | None = None
        self._stale = False
        self._sim_s = self._wall_s = self._clock_ms = self._next_frame_s = 0.0
        self._threads: list[threading.Thread] = []
        self._frames: queue.Queue = queue.Queue(maxsize=1)
        self._rendered = threading.Event()  # the camera thread has published the frame it was handed
        self._ros = None

    # ------------------------------------------------------------------ life cycle
    def next_event(self, kinds: str | tuple[str, ...], timeout: float = 30.0, seen: list | None = None) -> EpisodeEvent:
        """The next event of one of `kinds` from `events` (the kinds of the others skipped go to `seen`);
        TimeoutError after `timeout` s, RuntimeError when the sim ends first."""
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if event is None:
                raise RuntimeError(f"the sim ended while waiting for {'/'.join(kinds)}")
            if event.kind in kinds:
                return event
            if seen is not None:
                seen.append(event.kind)
        raise TimeoutError(f"no {'/'.join(kinds)} event within {timeout:g} s")

    def start(self) -> DdsG1:
        """Join the DDS domain (SimError for a bad interface or domain 0 not allowed) and ROS 2, then simulate."""
        c = self.config
        try:
            if c.interface == "lo":  # as dds.loopback(): multicast off, unicast discovery on 127.0.0.1
                participant = dds.open_participant(c.domain, "lo", robot=c.allow_robot_domain, multicast=False,
                                                   peers=("127.0.0.1",))
            else:
                participant = dds.open_participant(c.domain, c.interface, robot=c.allow_robot_domain)
        except (ValueError, RuntimeError) as e:
            if c.domain == dds.ROBOT_DOMAIN and not c.allow_robot_domain:  # the factory refuses it
                raise SimError(f"DDS domain {dds.ROBOT_DOMAIN} is the real G1's: a simulator there answers for the robot "
                               "on its network. Use another domain (Unitree's simulator uses 1), or allow it on an "
                               "isolated network (--allow-domain-0, allow_robot_domain=True)") from None
            raise SimError(str(e)) from None
        self._participant = participant
        self._lowstate = dds.writer(participant, LOWSTATE_TOPIC)
        # Keep every command that arrives between two periods: each one's crc is checked, as the robot does.
        self._arm_sdk = DataReader(participant, dds.topic(participant, ARM_SDK_TOPIC), qos=Qos(Policy.History.KeepLast(64)))
        LowCmd_.deserialize(LowCmd_().serialize())  # Cyclone builds (de)serialisers on first use: not in a period
        LowState_().serialize()
        if c.ros:
            self._ros = _Ros(camera=c.camera_hz > 0)
        self._threads = [threading.Thread(target=self._guard(self._simulate, last=True), name="neon-sim-g1", daemon=True)]
        if self._camera:
            self._threads.append(threading.Thread(target=self._guard(self._render), name="neon-sim-g1-camera", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """End after the current period (the episode under way is not recorded)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> dict:
        """Wait for the last episode (or stop()), release DDS and ROS, and return the report; re-raises a thread's error."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"the simulated G1 is still running after {timeout} s")
        for thread in self._threads:
            thread.join()
        if self._ros is not None:
            self._ros.close()
            self._ros = None
        self._arm_sdk = self._lowstate = self._participant = None  # Cyclone deletes entities with their last reference
        if self._error is not None:
            raise self._error
        return self.report()

    def run(self) -> dict:
        """start() (unless started) and join(); Ctrl-C stops it and reports the episodes finished so far."""
        if not self._threads:
            self.start()
        try:
            while not self.done.wait(0.2):
                pass
        except KeyboardInterrupt:
            self.stop()
        return self.join()

    def __enter__(self) -> DdsG1:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.join()

    @property
    def _camera(self) -> bool:
        return self._ros is not None and self._ros.camera is not None

    def joint_positions(self) -> dict[str, float]:
        """{joint name: rad} as of the last state period (G1 joint names, e.g. left_elbow)."""
        names, q = self._joints
        return dict(zip(names, q.tolist(), strict=True))

    def _guard(self, work, last: bool = False):
        """`work` on a thread: its error is kept for join() and stops the rest; `last` ends the camera and `events`."""
        def run():
            try:
                work()
            except BaseException as e:
                self._error = self._error or e
                self._stop.set()
            finally:
                if last:
                    self._hand_frame(None)
                    self.events.put(None)
                    self.done.set()
        return run

    # ------------------------------------------------------------------ the simulation thread
    def _simulate(self) -> None:
        c = self.config
        for k in range(c.episodes):
            if self._stop.is_set():
                return
            self._episode(k, c.seed + k)

    def _emit(self, kind: str, episode: int, seed: int, result: dict | None = None) -> None:
        event = EpisodeEvent(kind, episode, seed, self.sim.task.instruction, result)
        self.events.put(event)
        if self.on_event is not None:
            self.on_event(event)

    def _episode(self, k: int, seed: int) -> None:
        """Reset to seed's task, hold until the weight reaches 1, run the episode clock, wait for the release."""
        c = self.config
        sim = G1Tabletop(sample_task(np.random.default_rng(seed)), c.mjcf, c.image_size)
        motors, steps = _Motors(sim), self._steps_per_period(sim)
        wire = _LowStateWire(motors.slots, motors.mode_machine)
        self.sim, self._command, self._stale = sim, None, False  # no command carries over from the last episode
        self._next_frame_s = 0.0
        if self._camera:  # the first frame sets up the episode's renderer (0.1-0.6 s): before the real-time loop
            self._rendered.clear()
            self._hand_frame((sim, sim.data.qpos.copy()))
            while not (self._rendered.wait(0.1) or self._stop.is_set()):
                pass
            self._next_frame_s = 1.0 / c.camera_hz
        if self._ros is not None:
            self._ros.say(sim.task.instruction)
        self._emit("ready", k, seed)
        phase, result, engaged_at_s = "ready", None, 0.0
        start_wall = next_wall = since = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            weight = self._period(sim, motors, wire, steps, now)
            if phase == "ready":
                if weight >= ENGAGED:
                    phase, engaged_at_s = "engaged", sim.time
                    self._emit("engaged", k, seed)
                elif c.engage_timeout_s and now - since > c.engage_timeout_s:
                    result = self._result(seed, sim, None)
                    self._emit("finished", k, seed, result)
                    result["released"] = weight == 0
                    break
            elif phase == "engaged":
                if sim.success() or sim.time - engaged_at_s >= EPISODE_S - 1e-9:
                    phase, since, result = "finished", now, self._result(seed, sim, engaged_at_s)
                    self._emit("finished", k, seed, result)
            elif weight == 0 or now - since > c.release_timeout_s:
                result["released"] = weight == 0
                break
            next_wall += steps * sim.model.opt.timestep  # soft real time: sim time paced to the wall clock
            delay = next_wall - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -MAX_LAG_S:
                next_wall = time.monotonic()
                self.counts["overruns"] += 1
        self._sim_s += sim.time
        self._wall_s += time.monotonic() - start_wall
        self._clock_ms += sim.time * 1e3
        if result is not None:
            self.results.append(result)
            self._emit("released", k, seed, result)

    def _steps_per_period(self, sim: G1Tabletop) -> int:
        physics_hz, state_hz = 1.0 / sim.model.opt.timestep, self.config.state_hz
        steps = physics_hz / state_hz
        if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
            raise SimError(f"state_hz must divide the physics rate {physics_hz:g} Hz (e.g. {physics_hz:g}, "
                           f"{physics_hz / 2:g}, {physics_hz / 4:g}), got {state_hz:g}")
        return round(steps)

    def _period(self, sim: G1Tabletop, motors: _Motors, wire: _LowStateWire, steps: int, now: float) -> float:
        """One state period: apply the command in force, step the physics, publish rt/lowstate (and hand the camera
        a frame when one is due); -> the weight in force."""
        command = self._receive(motors, now)
        motors.track(*motors.targets(command), steps)
        sim._check()  # joint limits and table contact, as G1Tabletop.run checks them
        q, dq, tau = motors.state()
        self._joints = (motors.names, q)
        self._lowstate.write(wire.update(q, dq, tau, int(round(self._clock_ms + sim.time * 1e3)) & 0xFFFFFFFF))
        self.counts["lowstate"] += 1
        if self._camera and sim.time >= self._next_frame_s - 1e-9:
            self._hand_frame((sim, sim.data.qpos.copy()))
            self._next_frame_s += 1.0 / self.config.camera_hz
        return command.weight if command is not None else 0.0

    def _receive(self, motors: _Motors, now: float) -> _Command | None:
        """Take the commands that arrived, keep the newest good one; -> the command in force (None: none, or stale)."""
        for msg in self._arm_sdk.take(N=64):
            if not isinstance(msg, LowCmd_):  # an invalid sample (a writer went away)
                continue
            if msg.crc != low_cmd_crc(msg):
                self.counts["rejected_crc"] += 1
                continue
            cmd = _Command.parse(msg, motors.slots, motors.upper, now)
            if cmd is None:
                self.counts["rejected_nonfinite"] += 1
                continue
            self._command, self._stale = cmd, False
            self.counts["accepted"] += 1
        cmd, limit = self._command, self.config.stale_after_s
        if cmd is not None and limit and now - cmd.received_s > limit:
            if not self._stale:
                self.counts["stale"] += 1
                self._stale = True
            return None
        return cmd

    def _result(self, seed: int, sim: G1Tabletop, engaged_at_s: float | None) -> dict:
        success = engaged_at_s is not None and sim.success()
        return {"seed": seed, "instruction": sim.task.instruction, "engaged": engaged_at_s is not None,
                "success": success, "time_to_success_s": round(sim.time - engaged_at_s, 3) if success else None,
                "joint_limit_violation": sim.limit_violation > 1e-3, "table_contact": sim.table_contact,
                "final_distance_m": round(sim.distance(), 4)}

    # ------------------------------------------------------------------ the camera thread
    def _hand_frame(self, item) -> None:
        """Give the camera thread the newest frame to render (None: the end), dropping one it has not taken yet."""
        while True:
            try:
                self._frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._frames.get_nowait()
                    self.counts["frames_dropped"] += item is not None
                except queue.Empty:
                    pass

    def _render(self) -> None:
        import mujoco

        sim = data = None
        try:
            while (item := self._frames.get()) is not None:
                frame_sim, qpos = item
                if frame_sim is not sim:  # a new episode: its own model, renderer and render data
                    if sim is not None:
                        sim.close()
                    sim, data = frame_sim, mujoco.MjData(frame_sim.model)
                data.qpos[:] = qpos
                mujoco.mj_forward(sim.model, data)
                self._ros.show(sim.render("head", data=data))
                self.counts["frames"] += 1
                self._rendered.set()
        finally:
            if sim is not None:
                sim.close()

    # ------------------------------------------------------------------ report
    def report(self) -> dict:
        """Success rate and Wilson CI over the finished episodes (neon-sim eval's field names where they apply)."""
        c, results = self.config, self.results
        n, wins = len(results), sum(r["success"] for r in results)
        times = [r["time_to_success_s"] for r in results if r["success"]]
        wall = self._wall_s or float("nan")
        return {
            "policy": ARM_SDK_TOPIC, "interface": c.interface, "domain": c.domain, "episodes": n,
            "seeds": [c.seed, c.seed + n - 1] if n else [],
            "success_rate": wins / n if n else 0.0, "success_ci95": wilson(wins, n),
            "time_to_success_s": float(np.median(times)) if times else None,
            "joint_limit_violations": sum(r["joint_limit_violation"] for r in results),
            "table_contacts": sum(r["table_contact"] for r in results),
            "engaged_episodes": sum(r["engaged"] for r in results),
            "state_hz": c.state_hz, "lowstate_hz": round(self.counts["lowstate"] / wall, 1),
            "real_time_factor": round(self._sim_s / wall, 3), "camera_hz": c.camera_hz,
            "stale_after_s": c.stale_after_s, "commands": {k: self.counts[k] for k in
                                                           ("accepted", "rejected_crc", "rejected_nonfinite", "stale")},
            "camera_frames": self.counts["frames"], "overruns": self.counts["overruns"],
            "seconds_per_episode": round(self._wall_s / n, 2) if n else None,
            "results": results,
        }


def write_report(report: dict, out: str | Path) -> Path:
    """out/sim_report.json and out/sim_report.md; -> the JSON's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sim_report.json").write_text(json.dumps(report, indent=2) + "\n")
    lo, hi = report["success_ci95"]
    cmds = report["commands"]
    (out / "sim_report.md").write_text(
        f"# neon-sim g1: {report['policy']} on {report['interface']}, domain {report['domain']}\n\n"
        f"- success rate {report['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}) over {report['episodes']} seeds "
        f"from {report['seeds'][0] if report['seeds'] else '-'}; {report['engaged_episodes']} engaged\n"
        f"- median time to success {report['time_to_success_s']} s (from the weight reaching 1)\n"
        f"- joint-limit violations {report['joint_limit_violations']}, table contacts {report['table_contacts']}\n"
        f"- rt/lowstate {report['lowstate_hz']} Hz (asked {report['state_hz']:g}), real-time factor "
        f"{report['real_time_factor']}, overruns {report['overruns']}\n"
        f"- rt/arm_sdk commands accepted {cmds['accepted']}, rejected (crc) {cmds['rejected_crc']}, rejected "
        f"(non-finite) {cmds['rejected_nonfinite']}, went stale {cmds['stale']} times\n")
    return out / "sim_report.json"
