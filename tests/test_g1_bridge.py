"""neon-g1: chunks -> rt/arm_sdk. The tick logic on an injected clock; then real `neon-g1` processes against a fake
robot (a CycloneDDS participant on loopback, a random domain other than 0, multicast off), a real neon-serve on
loopback and real rclpy.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

# ROS 2 stays on this machine: localhost discovery and a random domain, set before rclpy loads (as test_ros.py).
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(10, 200)))

pytest.importorskip("cyclonedds", reason="the g1 extra (cyclonedds 0.10.x) is installed by scripts/setup.sh")
from conftest import wait_for
from neon.action_space import G1ActionSpace
from neon_runtime.executor import Chunk, ChunkExecutor, ChunkRefused
from neon_runtime.g1.bridge import (
    ARM_JOINTS,
    DEX3_MOTORS,
    WEIGHT_SLOT,
    BridgeError,
    ControlConfig,
    Controller,
    Gains,
    dex3_mode,
    make_layout,
    require_arms,
)
from neon_runtime.unitree import dds
from neon_runtime.unitree.crc import low_cmd_crc
from neon_runtime.unitree.idl import HandCmd_, HandState_, LowCmd_, LowState_, MotorState_

SPACE = G1ActionSpace("arms_only", "dex3")
ELBOW = SPACE.index("left_elbow")


# --- the executor and the tick logic, on an injected clock ----------------------------------------------------------


def test_executor_interpolates_in_time_and_holds_the_last_point():
    ex = ChunkExecutor(2)
    assert ex.target(0.0) is None and ex.age(0.0) is None
    ex.accept(Chunk.at_fps([[0.0, 1.0], [1.0, 3.0], [2.0, 5.0]], fps=10.0, start_s=100.0, received_s=99.9))
    assert np.allclose(ex.target(99.0), [0.0, 1.0])  # before step 0: step 0
    assert np.allclose(ex.target(100.05), [0.5, 2.0]) and np.allclose(ex.target(100.15), [1.5, 4.0])
    assert np.allclose(ex.target(105.0), [2.0, 5.0])  # ran out: holds the last point
    assert ex.age(100.4) == pytest.approx(0.5) and ex.remaining(100.0) == pytest.approx(0.2)


def test_executor_refuses_what_must_not_run_and_keeps_the_chunk_in_force():
    ex = ChunkExecutor(2)
    ex.accept(Chunk.at_fps([[0.0, 0.0]], 30.0, 0.0, 0.0))
    refusals = [
        (Chunk.at_fps([[1.0, 1.0]], 30.0, 0.0, 1.0, executable=False, why_not="dry run"), "not executable: dry run"),
        (Chunk.at_fps([[1.0, 1.0, 1.0]], 30.0, 0.0, 1.0), r"\(T >= 1, 2\)"),
        (Chunk(np.zeros((2, 2), np.float32), np.array([1.0, 1.0]), 1.0), "strictly increasing"),
        (Chunk.at_fps([[np.inf, 0.0]], 30.0, 0.0, 1.0), "infinite"),
    ]
    for chunk, why in refusals:
        with pytest.raises(ChunkRefused, match=why):
            ex.accept(chunk)
    assert ex.refused == 4 and ex.accepted == 1 and np.allclose(ex.target(5.0), 0.0)


def controller(**cfg):
    layout = make_layout(SPACE, Gains(), hands=True)
    config = ControlConfig(**{"rate_hz": 100.0, "ramp_in_s": 1.0, "ramp_out_s": 2.0, **cfg})
    return Controller(layout, config, ChunkExecutor(SPACE.dim)), layout


def pose(layout, elbow=0.3):
    q = np.zeros(layout.n, np.float32)
    q[layout.names.index("left_elbow")] = elbow
    return q


def drive(ctl, t0, t1, measured, feed=None, rate=100.0):
    """Tick from t0 to t1; `feed(t)` may hand the executor a chunk first. -> [(t, command or None)]."""
    out = []
    for t in np.arange(t0, t1, 1.0 / rate):
        if feed:
            feed(t)
        out.append((t, ctl.tick(t, measured, t)))
    return out


def fresh_chunks(ctl, value):
    """A feed that hands over a fresh 16-step chunk every tick, every step at `value` (action-space vector)."""
    return lambda t: ctl.executor.accept(Chunk.at_fps(np.tile(value, (16, 1)), 30.0, t, t))


def test_engage_ramps_weight_up_over_the_ramp_commanding_the_measured_pose_then_runs_chunks():
    ctl, layout = controller()
    measured = pose(layout)
    assert ctl.tick(0.0, measured, 0.0) is None  # no chunk yet: nothing to send
    goal = np.zeros(SPACE.dim, np.float32)
    goal[ELBOW] = 0.5
    ticks = drive(ctl, 0.01, 1.5, measured, fresh_chunks(ctl, goal))
    engaging = [(t, c) for t, c in ticks if c.phase == "engaging"]
    weights = [c.weight for _, c in engaging]
    assert weights[0] == 0.0 and weights[-1] == 1.0 and (np.diff(weights) >= 0).all()
    assert engaging[-1][0] - engaging[0][0] >= 1.0 - 1e-9  # 0 -> 1 takes the whole ramp_in_s
    assert all(np.array_equal(c.q, measured) for _, c in engaging)  # the measured pose throughout the ramp
    running = [c for _, c in ticks if c.phase == "running"]
    assert running and running[-1].weight == 1.0 and running[-1].q[layout.names.index("left_elbow")] == pytest.approx(0.5)


def test_release_ramps_weight_down_over_at_least_two_seconds_holding_the_last_command():
    ctl, layout = controller()
    measured = pose(layout)
    goal = np.zeros(SPACE.dim, np.float32)
    ticks = drive(ctl, 0.0, 1.5, measured, fresh_chunks(ctl, goal))
    held = ticks[-1][1].q
    ctl.release(1.5, "SIGTERM")
    ticks = drive(ctl, 1.5, 4.0, measured, fresh_chunks(ctl, goal))  # chunks keep coming: still released
    releasing = [(t, c) for t, c in ticks if c is not None]
    weights = [c.weight for _, c in releasing]
    assert weights[0] == 1.0 and weights[-1] == 0.0 and (np.diff(weights) <= 0).all()
    assert releasing[-1][0] - releasing[0][0] >= 2.0 - 1e-9
    assert all(np.array_equal(c.q, held) for _, c in releasing)
    assert ctl.phase == "released" and not ctl.fault and ctl.tick(5.0, measured, 5.0) is None


def test_commands_stay_inside_the_limits_and_the_velocity_limit():
    ctl, layout = controller()
    measured = pose(layout)
    goal = np.zeros(SPACE.dim, np.float32)
    goal[ELBOW] = 10.0  # far beyond the elbow's upper limit
    goal[SPACE.index("right_shoulder_pitch")] = -10.0
    ticks = [c for _, c in drive(ctl, 0.0, 4.0, measured, fresh_chunks(ctl, goal)) if c is not None]
    q = np.array([c.q for c in ticks])
    assert (q >= layout.lower - 1e-6).all() and (q <= layout.upper + 1e-6).all()
    step = np.abs(np.diff(q, axis=0)).max(axis=0)
    assert (step <= layout.max_vel_rad_s / 100.0 + 1e-6).all()  # 2 rad/s arms, 6 rad/s fingers, per 10 ms tick
    elbow = layout.names.index("left_elbow")
    assert q[-1, elbow] == pytest.approx(layout.upper[elbow])  # got there, at the limit
    waist = layout.names.index("waist_yaw")
    assert layout.policy_index[waist] == -1 and (q[:, waist] == measured[waist]).all()  # not in the space: held


def test_watchdog_holds_the_last_command_then_releases():
    ctl, layout = controller(max_chunk_age_s=0.5, hold_s=1.0)
    measured = pose(layout)
    goal = np.zeros(SPACE.dim, np.float32)
    drive(ctl, 0.0, 1.5, measured, fresh_chunks(ctl, goal))  # engaged, last chunk at t = 1.49
    last = ctl.q.copy()
    ticks = [(t, c) for t, c in drive(ctl, 1.5, 5.0, measured) if c is not None]
    phases = {c.phase: t for t, c in reversed(ticks)}  # first tick of each phase
    assert phases["holding"] == pytest.approx(1.49 + 0.5, abs=0.02)
    assert phases["releasing"] == pytest.approx(1.49 + 0.5 + 1.0, abs=0.02)
    assert all(np.array_equal(c.q, last) for _, c in ticks)
    assert ctl.phase == "released" and ctl.fault and "watchdog" in ctl.reason


def test_a_fresh_chunk_ends_the_hold():
    ctl, layout = controller(max_chunk_age_s=0.5, hold_s=1.0)
    measured = pose(layout)
    goal = np.zeros(SPACE.dim, np.float32)
    drive(ctl, 0.0, 1.5, measured, fresh_chunks(ctl, goal))
    drive(ctl, 1.5, 2.2, measured)
    assert ctl.phase == "holding"
    drive(ctl, 2.2, 2.3, measured, fresh_chunks(ctl, goal))
    assert ctl.phase == "running" and ctl.weight == 1.0


def test_stale_lowstate_releases_and_not_executable_chunks_never_engage():
    ctl, layout = controller()
    measured = pose(layout)
    goal = np.zeros(SPACE.dim, np.float32)
    drive(ctl, 0.0, 1.5, measured, fresh_chunks(ctl, goal))
    ctl.executor.accept(Chunk.at_fps(np.tile(goal, (16, 1)), 30.0, 1.5, 1.5))
    assert ctl.tick(1.6, measured, 1.45).phase == "releasing"  # rt/lowstate silent for 0.15 s > 0.1 s
    assert ctl.fault and "rt/lowstate" in ctl.reason
    ctl, layout = controller()
    with pytest.raises(ChunkRefused):
        ctl.executor.accept(Chunk.at_fps(np.tile(goal, (16, 1)), 30.0, 0.0, 0.0, executable=False))
    assert all(c is None for _, c in drive(ctl, 0.0, 2.0, measured)) and ctl.phase == "waiting"


def test_a_stalled_loop_moves_the_weight_by_at_most_two_periods_share_of_a_ramp():
    """The weight follows ticks, not wall time: after a 0.5 s stall while engaging (or 1 s while releasing) the next
    tick moves it by at most two 10 ms periods' share of the ramp (it jumped 0.165 -> 0.967 before)."""
    ctl, layout = controller()  # 100 Hz, ramp in 1 s, out 2 s
    measured, goal = pose(layout), np.zeros(SPACE.dim, np.float32)
    feed = fresh_chunks(ctl, goal)
    drive(ctl, 0.0, 0.2, measured, feed)
    w = ctl.weight
    assert ctl.phase == "engaging" and 0.1 < w < 0.3
    feed(0.7)
    c = ctl.tick(0.7, measured, 0.7)  # a 0.5 s stall
    assert c.phase == "engaging" and c.weight - w <= 2 * 0.01 / 1.0 + 1e-9
    drive(ctl, 0.71, 2.0, measured, feed)
    assert ctl.phase == "running" and ctl.weight == 1.0
    ctl.release(2.0, "SIGTERM")
    ctl.tick(2.0, measured, 2.0)
    c = ctl.tick(3.0, measured, 3.0)  # a 1 s stall while releasing
    assert c.phase == "releasing" and 1.0 - c.weight <= 2 * 0.01 / 2.0 + 1e-9
    ticks = [c for _, c in drive(ctl, 3.01, 6.0, measured) if c is not None]
    w = np.array([1.0 - 0.01] + [c.weight for c in ticks])
    assert w[-1] == 0.0 and (np.diff(w) <= 0).all() and (-np.diff(w) <= 0.01 / 2.0 + 1e-6).all()


def test_a_released_controller_needs_neither_state_nor_executor():
    """Once releasing, tick() reads nothing that can fail: the ramp goes on with no rt/lowstate and a broken
    executor."""
    ctl, layout = controller()
    measured = pose(layout)
    drive(ctl, 0.0, 1.5, measured, fresh_chunks(ctl, np.zeros(SPACE.dim, np.float32)))
    ctl.release(1.5, "error", fault=True)

    def broken(*_):
        raise RuntimeError("executor broken")

    ctl.executor.age = ctl.executor.target = broken
    commands = [ctl.tick(t, None, None) for t in np.arange(1.5, 3.6, 0.01)]
    weights = [c.weight for c in commands if c is not None]
    assert weights[-1] == 0.0 and ctl.phase == "released" and commands[-1] is None and len(weights) >= 199


def test_settings_outside_the_safe_range_are_refused():
    for field, value in (("rate_hz", 49.0), ("rate_hz", 1000.0), ("ramp_in_s", 0.9), ("ramp_out_s", 1.9),
                         ("ramp_out_s", 60.0), ("max_chunk_age_s", 0.0), ("max_chunk_age_s", 30.0), ("hold_s", 60.0),
                         ("state_stale_s", 5.0), ("state_stale_s", float("nan"))):
        with pytest.raises(BridgeError, match=f"--{field.replace('_', '-')} must be"):
            ControlConfig(**{field: value}).validate()
    for field in ("kp", "wrist_kp", "waist_kp", "hand_kp"):  # a kp of 0 at weight 1: a limp joint
        with pytest.raises(BridgeError, match=f"--{field.replace('_', '-')} must be a finite number > 0"):
            Gains(**{field: 0.0}).validate()
    assert Gains(kd=0.0).validate().kd == 0.0


def test_a_silent_dex3_state_releases_like_a_silent_lowstate():
    """Dex3 states carry their arrival time: a commanded hand whose state stops is stale like rt/lowstate (before,
    its last value counted for ever)."""
    from neon_runtime.g1.bridge import RobotLink

    ctl, layout = controller()
    link = RobotLink.__new__(RobotLink)  # its bookkeeping only, no DDS
    link.state = LowState_(motor_state=[MotorState_(q=0.0) for _ in range(35)])
    link.hand_q = {side: np.zeros(7, np.float32) for side in DEX3_MOTORS}
    link.hand_at = {"left": 1.0, "right": 1.0}
    assert np.isfinite(link.measured(layout, now=1.05, stale_s=0.1)).all()
    stale = link.measured(layout, now=1.2, stale_s=0.1)
    assert np.isnan(stale[[i for i, h in enumerate(layout.hand) if h]]).all()
    measured = pose(layout)
    drive(ctl, 0.0, 1.5, measured, fresh_chunks(ctl, np.zeros(SPACE.dim, np.float32)))
    command = ctl.tick(1.5, stale, 1.5)  # rt/lowstate fresh, the hands not
    assert command.phase == "releasing" and ctl.fault and "left_hand_thumb_0" in ctl.reason and "Dex3" in ctl.reason


def test_layout_follows_the_action_space_and_unitrees_motor_order():
    layout = make_layout(SPACE, Gains(), hands=True)
    for name in ARM_JOINTS:
        i = layout.names.index(name)
        assert layout.body_slot[i] == next(j.sdk_index for j in SPACE.joints if j.name == name)
        assert (layout.kp[i], layout.kd[i]) == (60.0, 1.5)
    assert layout.hand[layout.names.index("left_hand_middle_0")] == ("left", 3)  # left: middle before index
    assert layout.hand[layout.names.index("right_hand_index_0")] == ("right", 3)
    assert [dex3_mode(k) for k in (0, 6)] == [0x90, 0x96]  # id | FOC << 4 | timeout << 7
    assert not make_layout(SPACE, Gains(), hands=False).has_hands
    with pytest.raises(BridgeError, match="lacks arm joint.*left_shoulder_pitch"):
        require_arms(["left_hand_thumb_0", "waist_yaw"], "the action space of the server")


# --- a fake robot and real neon-g1 processes -------------------------------------------------------------------------

BASE_POSE = {15: 0.2, 18: 0.3, 22: -0.2, 25: 0.4}  # LowState_ slot -> q: arms where the fake robot stands


class FakeG1:
    """A stand-in G1 on a loopback domain: rt/lowstate at 200 Hz whose arms follow the arm_sdk command blended by its
    weight, Dex3 states, and a record of every LowCmd_ (time, message) and HandCmd_ it hears."""

    def __init__(self, publish_state: bool = True, rate_hz: float = 200.0):
        from cyclonedds.core import Policy, Qos
        from cyclonedds.sub import DataReader
        from cyclonedds.util import duration

        self.participant = dds.loopback()
        self.domain = self.participant.get_domain_id()
        every = Qos(Policy.Reliability.Reliable(duration(seconds=1)), Policy.History.KeepAll)
        record = lambda name: DataReader(self.participant, dds.topic(self.participant, name), qos=every)
        self.arm_sdk = record("rt/arm_sdk")
        self.hand_cmd = {s: record(f"rt/dex3/{s}/cmd") for s in DEX3_MOTORS}
        self.state_writer = dds.writer(self.participant, "rt/lowstate")
        self.hand_writers = {s: dds.writer(self.participant, f"rt/dex3/{s}/state") for s in DEX3_MOTORS}
        self.q = np.zeros(35, np.float32)
        for slot, q in BASE_POSE.items():
            self.q[slot] = q
        self.base = self.q.copy()
        self.commands, self.hand_commands = [], {s: [] for s in DEX3_MOTORS}
        self.publish_state, self.period = publish_state, 1.0 / rate_hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            now = time.monotonic()
            for cmd in self.arm_sdk.take(N=1000):
                if not isinstance(cmd, LowCmd_):  # the writer went away
                    continue
                self.commands.append((now, cmd))
                w = cmd.motor_cmd[WEIGHT_SLOT].q
                for slot in range(29):
                    if cmd.motor_cmd[slot].kp > 0:
                        self.q[slot] = self.base[slot] + w * (cmd.motor_cmd[slot].q - self.base[slot])
            for side, reader in self.hand_cmd.items():
                self.hand_commands[side] += [c for c in reader.take(N=1000) if isinstance(c, HandCmd_)]
            if self.publish_state:
                state = LowState_(mode_machine=5)
                for m, q in zip(state.motor_state, self.q, strict=True):
                    m.q = float(q)
                self.state_writer.write(state)
                for writer in self.hand_writers.values():
                    writer.write(HandState_(motor_state=[MotorState_(q=0.0) for _ in range(7)]))
            self._stop.wait(self.period)

    def weights(self):
        return np.array([c.motor_cmd[WEIGHT_SLOT].q for _, c in self.commands])

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def robot():
    r = FakeG1()
    yield r
    r.close()


# How late the fake robot's 200 Hz state and the chunks arrive is up to this (shared, loaded, 2-core) machine's
# scheduler, not the bridge: the processes here allow rt/lowstate 2 s of silence and chunks 1 s (+ 2 s holding).
# The defaults (0.1 s; 0.5 s + 1 s) are tested on the injected clock above.
LOADED_MACHINE = ("--state-stale-s", 2.0, "--max-chunk-age-s", 1.0, "--hold-s", 2.0)


def neon_g1(*args, domain: int) -> subprocess.Popen:
    """A real neon-g1 process (python -m, so the test does not depend on PATH) on the fake robot's loopback domain."""
    cmd = [sys.executable, "-m", "neon_runtime.g1.cli", "--interface", "lo", "--domain", str(domain),
           *map(str, LOADED_MACHINE + args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


def finish(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def ros():
    """rclpy in this process: a node for the test's camera, trajectories and /joint_states listener."""
    pytest.importorskip("rclpy", reason="ROS 2 wheels (ros-kilted-*) are installed by scripts/setup.sh")
    from conftest import spinning_node

    with spinning_node("g1_bridge_test") as node:
        yield node


@pytest.fixture(scope="module")
def camera(ros):
    """The head camera, as neon-ros reads it: sensor_msgs/Image on /camera/color/image_raw at 30 Hz."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from neon_runtime.ros.convert import array_to_image

    pub = ros.create_publisher(Image, "/camera/color/image_raw", qos_profile_sensor_data)
    frame = array_to_image(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    timer = ros.create_timer(1 / 30, lambda: pub.publish(frame))
    yield
    ros.destroy_timer(timer)


@pytest.fixture(scope="module")
def model(backbones):
    """Tiny trained heads (random weights standing in), on one torch thread: this 2-core machine also runs the
    fake robot and neon-g1, and torch's worker threads spinning on both cores starve them."""
    import torch
    from conftest import as_trained, attach, random_weights, tiny_config

    from neon.model import NeonVLA

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    m = as_trained(attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl")), backbones))
    random_weights(m, 0)
    yield m
    torch.set_num_threads(threads)


def served(model, dry_run: bool):
    """A real neon-serve (uvicorn on 127.0.0.1) for `model`; trained heads, so executable unless `dry_run`."""
    from serving import runner_for, serve

    from neon_runtime.safety import SafetyConfig
    from neon_runtime.server import ServerSettings, create_app

    runner = runner_for(model, SafetyConfig(max_observation_age_s=2.0, dry_run=dry_run), max_batch=1, max_wait_ms=0)
    return runner, serve(create_app(runner, ServerSettings()))


@pytest.fixture(scope="module")
def server(model):
    runner, ctx = served(model, dry_run=False)
    with ctx as addr:
        yield f"ws://{addr}/ws"
    runner.close()


def engage_then_sigterm(robot, server: str, *flags, full_weight_ticks: int = 250) -> tuple[subprocess.Popen, str]:
    """neon-g1 engaged on `server` (instruction "wave", a 1 s ramp, then `flags`), until `full_weight_ticks` commands at
    weight 1 have reached the robot, then SIGTERM: (the process, its output)."""
    proc = neon_g1("--server", server, "--instruction", "wave", "--engage", "--ramp-in-s", 1, *flags, domain=robot.domain)
    try:
        assert wait_for(lambda: (robot.weights() == 1.0).sum() > full_weight_ticks or proc.poll() is not None, 40)
        assert proc.poll() is None, finish(proc)
        proc.send_signal(signal.SIGTERM)
        return proc, finish(proc)
    finally:
        proc.kill()


def test_engaged_against_a_live_server_ramps_moves_and_releases_on_sigterm(robot, server, camera):
    proc, out = engage_then_sigterm(robot, server)  # engaged ~1 s
    assert proc.returncode == 0 and "released (SIGTERM)" in out and "tick period over" in out, out
    times = np.array([t for t, _ in robot.commands])
    cmds = [c for _, c in robot.commands]
    w = robot.weights()
    assert all(low_cmd_crc(c) == c.crc for c in cmds)  # every message carries its CRC
    assert all(c.mode_machine == 5 and c.mode_pr == 0 for c in cmds)  # the build echoed, as Unitree's code does
    elbow = cmds[0].motor_cmd[18]
    assert (elbow.mode, elbow.kp, elbow.kd) == (1, 60.0, 1.5)
    up = np.flatnonzero(w == 1.0)[0]
    assert (np.diff(w[: up + 1]) >= 0).all() and times[up] - times[0] >= 0.8  # 0 -> 1 over the 1 s ramp (as received)
    assert all(c.motor_cmd[18].q == pytest.approx(0.3) for c in cmds[:up])  # the measured pose while ramping
    top = np.flatnonzero(w == 1.0)[-1]
    assert (np.diff(w[top:]) <= 0).all() and w[-1] == 0.0 and times[-1] - times[top] >= 1.8  # 1 -> 0 over 2 s
    arm_slots = [15 + k for k in range(14)]
    running = np.array([[c.motor_cmd[s].q for s in arm_slots] for c in cmds[up:top]])
    assert np.abs(running - running[0]).max() > 1e-3  # the chunks move the arms
    assert np.abs(np.diff(running, axis=0)).max() <= 2.0 * 2 / 250 + 1e-5  # 2 rad/s at most, a late tick counted
    released = np.array([[c.motor_cmd[s].q for s in arm_slots] for c in cmds[top:]])
    assert (released == released[0]).all()  # the last command held while the weight goes to 0
    hands = robot.hand_commands["left"]
    assert hands and [m.mode for m in hands[-1].motor_cmd] == [dex3_mode(k) for k in range(7)]
    lower = np.array([SPACE.joints[SPACE.index(f"left_hand_{f}")].lower for f in DEX3_MOTORS["left"]])
    upper = np.array([SPACE.joints[SPACE.index(f"left_hand_{f}")].upper for f in DEX3_MOTORS["left"]])
    q = np.array([[m.q for m in h.motor_cmd] for h in hands])
    assert (q >= lower - 1e-5).all() and (q <= upper + 1e-5).all()


def test_sighup_releases_with_the_ramp_like_sigterm(robot, server, camera):
    """A dropped SSH session sends SIGHUP: before, it killed neon-g1 at weight 1 (the robot keeps the last command)."""
    proc = neon_g1("--server", server, "--instruction", "wave", "--engage", "--ramp-in-s", 1, domain=robot.domain)
    try:
        assert wait_for(lambda: (robot.weights() == 1.0).sum() > 100 or proc.poll() is not None, 40)
        proc.send_signal(signal.SIGHUP)
        out = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "released (SIGHUP)" in out, out
    w = robot.weights()
    top = np.flatnonzero(w == 1.0)[-1]
    assert w[-1] == 0.0 and (np.diff(w[top:]) <= 0).all() and len(w) - top > 300  # ~2 s at 250 Hz


def test_a_closed_stdout_neither_stops_the_loop_nor_skips_the_release(robot, server, camera):
    """The reader of neon-g1's stdout goes away while engaged: the loop runs on, SIGTERM still ramps out, and the exit
    code is still 0 (before, the first log line after it raised BrokenPipeError out of the loop at weight 1)."""
    proc = neon_g1("--server", server, "--instruction", "wave", "--engage", "--ramp-in-s", 1, "--log-every-s", 0.05,
                   domain=robot.domain)
    try:
        assert wait_for(lambda: (robot.weights() == 1.0).sum() > 100 or proc.poll() is not None, 40)
        proc.stdout.close()
        n = len(robot.weights())
        assert wait_for(lambda: len(robot.weights()) > n + 250, 20) and proc.poll() is None  # still ticking
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    w = robot.weights()
    top = np.flatnonzero(w == 1.0)[-1]
    assert w[-1] == 0.0 and (np.diff(w[top:]) <= 0).all() and len(w) - top > 300


ARM_SLOTS = [15 + k for k in range(14)]


def arm_steps(robot, since: int = 0) -> np.ndarray:
    """|rad| between consecutive arm commands the robot heard, from command `since` on."""
    q = np.array([[c.motor_cmd[s].q for s in ARM_SLOTS] for _, c in robot.commands[since:]])
    return np.abs(np.diff(q, axis=0))


def phases(out: str) -> list[str]:
    """The phase changes neon-g1 logged ("-> holding, weight 1.00" ...), in order."""
    return [line.split("-> ", 1)[1].split(",")[0].split(" (")[0] for line in out.splitlines() if "-> " in line]


def test_a_server_restarted_within_the_hold_is_held_through_then_followed_again(robot, model, camera):
    """neon-serve stops while neon-g1 is engaged (its port closed, the connection dropped) and a new one comes up on the
    same address: neon-g1 holds the last command at weight 1 (nothing jumps, nothing ramps), reconnects, runs the
    new server's chunks, and SIGTERM still ramps out."""
    import contextlib

    from serving import serve

    runner, ctx = served(model, dry_run=False)
    first = contextlib.ExitStack()
    addr = first.enter_context(ctx)
    proc = neon_g1("--server", f"ws://{addr}/ws", "--instruction", "wave", "--engage", "--ramp-in-s", 1,
                   "--hold-s", 5, domain=robot.domain)
    second = contextlib.ExitStack()
    try:
        assert wait_for(lambda: (robot.weights() == 1.0).sum() > 100 or proc.poll() is not None, 40)
        first.close()  # the server goes away
        down = len(robot.commands)
        time.sleep(1.6)  # past --max-chunk-age-s 1: holding
        held = arm_steps(robot, down)
        second.enter_context(serve(create_app_for(runner), port=int(addr.rsplit(":", 1)[1])))  # back, same port
        up = len(robot.commands)
        assert wait_for(lambda: len(robot.commands) > up + 500 or proc.poll() is not None, 40)
        assert proc.poll() is None, finish(proc)
        proc.send_signal(signal.SIGTERM)
        out = finish(proc)
    finally:
        proc.kill()
        second.close()
        first.close()
        runner.close()
    assert proc.returncode == 0 and "released (SIGTERM)" in out, out
    seen = phases(out)
    assert seen[:2] == ["engaging", "running"] and "holding" in seen, out
    assert seen[seen.index("holding") + 1] == "running" and seen[-2:] == ["releasing", "released"], out
    w = robot.weights()
    engaged, top = np.flatnonzero(w == 1.0)[[0, -1]]
    assert (w[engaged:top + 1] == 1.0).all()  # held at full weight through the outage, never ramped
    assert held[len(held) // 2:].max() == 0.0  # the last command held still while the server was gone
    assert arm_steps(robot).max() <= 2.0 * 2 / 250 + 1e-5  # 2 rad/s at most through hold and resume


def create_app_for(runner):
    from neon_runtime.server import ServerSettings, create_app

    return create_app(runner, ServerSettings())


def test_a_hung_server_is_held_through_a_short_hang_and_released_from_a_long_one(robot, model, tmp_path, camera):
    """A real neon-serve process stopped with SIGSTOP (it accepts nothing, answers nothing: a hung server). Stopped
    1.6 s: neon-g1 holds the last command at weight 1, then follows the resumed server's chunks. Stopped longer than
    --max-chunk-age-s + --hold-s: it releases with the ramp and exits 1 (a fault), as documented."""
    import httpx

    ckpt = model.save_pretrained(tmp_path / "ckpt")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "neon_runtime.cli", "--model", str(ckpt), "--port", str(port),
                               "--max-obs-age", "2", "--log-level", "warning", "--threads", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = None
    try:
        ready = lambda: server.poll() is not None or _responds(httpx, f"http://127.0.0.1:{port}/ready")
        assert wait_for(ready, 120) and server.poll() is None, server.communicate()[0]
        proc = neon_g1("--server", f"ws://127.0.0.1:{port}/ws", "--instruction", "wave", "--engage", "--ramp-in-s", 1,
                       "--hold-s", 2, domain=robot.domain)
        assert wait_for(lambda: (robot.weights() == 1.0).sum() > 100 or proc.poll() is not None, 60)
        server.send_signal(signal.SIGSTOP)
        time.sleep(1.6)  # past --max-chunk-age-s 1, inside the hold
        server.send_signal(signal.SIGCONT)
        resumed = len(robot.commands)
        assert wait_for(lambda: len(robot.commands) > resumed + 500 or proc.poll() is not None, 40)
        assert proc.poll() is None, finish(proc)
        short = len(robot.commands)
        server.send_signal(signal.SIGSTOP)  # now for good: 1 s watchdog + 2 s hold, then the release
        out = finish(proc, timeout=40)
    finally:
        if proc is not None:
            proc.kill()
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait(timeout=30)
    assert proc.returncode == 1 and "released after a fault: watchdog" in out, out
    seen = phases(out)
    first_hold = seen.index("holding")
    assert seen[first_hold + 1] == "running" and seen[-3:] == ["holding", "releasing", "released"], out
    w = robot.weights()
    engaged, top = np.flatnonzero(w == 1.0)[[0, -1]]
    assert (w[engaged:top + 1] == 1.0).all() and top > short  # the short hang never touched the weight
    assert w[-1] == 0.0 and (np.diff(w[top:]) <= 0).all() and len(w) - top > 300  # ramped out over ~2 s
    assert arm_steps(robot).max() <= 2.0 * 2 / 250 + 1e-5


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _responds(httpx, url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def passes(server: str) -> dict[str, float]:
    """How many backbone and heads passes the server has made so far (its /metrics): a full request makes one of
    each, a light request (reuse_features) only a heads pass."""
    import re

    import httpx

    text = httpx.get(server.replace("ws://", "http://").removesuffix("/ws") + "/metrics").text
    count = lambda stage: re.search(rf'neon_stage_seconds_count{{stage="{stage}"}} (\S+)', text)
    return {stage: float(m.group(1)) if (m := count(stage)) else 0.0 for stage in ("backbone", "heads")}


def test_two_rate_runs_the_heads_on_fresh_state_between_feature_refreshes(robot, server, camera):
    before = passes(server)
    proc, out = engage_then_sigterm(robot, server, "--heads-hz", 20, "--request-hz", 2)  # engaged ~1 s
    after = passes(server)
    assert proc.returncode == 0 and "released (SIGTERM)" in out, out
    assert "two-rate control: features refreshed at 2 Hz, heads at 20 Hz" in out, out
    full = after["backbone"] - before["backbone"]
    light = after["heads"] - before["heads"] - full
    assert full >= 1 and light > 2 * full, (full, light)  # ticks between refreshes reuse the features
    cmds, w = [c for _, c in robot.commands], robot.weights()
    assert all(low_cmd_crc(c) == c.crc for c in cmds)
    up, top = np.flatnonzero(w == 1.0)[[0, -1]]
    arm_slots = [15 + k for k in range(14)]
    running = np.array([[c.motor_cmd[s].q for s in arm_slots] for c in cmds[up:top]])
    assert np.abs(running - running[0]).max() > 1e-3  # the ticks' chunks move the arms
    assert np.abs(np.diff(running, axis=0)).max() <= 2.0 * 2 / 250 + 1e-5  # 2 rad/s at most across hand-overs
    assert w[-1] == 0.0


def test_request_ahead_keeps_chunks_coming_below_the_request_rate(robot, server, camera):
    """--request-hz 0.5 would leave the arms without a chunk for 1.5 s of every 2 (a chunk lasts 0.53 s; the watchdog
    holds after 0.5 s and releases 1 s later, exit 1): request-ahead asks again as each chunk runs low, so the arms
    run on until SIGTERM."""
    before = passes(server)
    proc, out = engage_then_sigterm(robot, server, "--request-hz", 0.5, full_weight_ticks=500)  # ~2 s engaged
    assert proc.returncode == 0 and "released (SIGTERM)" in out and "watchdog" not in out, out
    requests = passes(server)["backbone"] - before["backbone"]
    assert requests >= 6, requests  # over >= 3 s (ramp + 2 s engaged): 2 at 0.5 Hz


def test_the_request_scheduler_paces_requests_by_rate_request_ahead_or_the_heads_rate():
    """RequestScheduler (neon-g1, neon-ros and neon-sim ask through it), on an injected clock: before a chunk only the
    rate; then once the chunk in force covers only the latency estimate plus 2 steps; one request in flight; in
    two-rate mode the heads' own rate alone; with execute_steps K, every K steps of the chunk in force."""
    from neon_runtime.executor import Chunk, ChunkExecutor, RequestScheduler

    ex = ChunkExecutor(SPACE.dim)
    sched = RequestScheduler(ex, 10.0, margin_steps=2)
    now = 1000.0
    assert sched.due(now)  # nothing sent yet
    sched.sent(now - 5)
    assert not sched.due(now) and not sched.due(now + 4.9)  # in flight
    sched.replied(now - 5, now - 4.9, 30.0)
    assert not sched.due(now) and sched.due(now + 5)  # the 10 s period; no chunk in force yet
    ex.accept(Chunk.at_fps(np.zeros((16, SPACE.dim)), 30.0, start_s=now + 0.5, received_s=now))  # ends in 1 s
    assert not sched.due(now)  # 1 s left - 1 step - 2 steps of margin > 0.1 s
    sched.latency.add(0.95)
    sched.latency.add(0.95)
    assert sched.latency.estimate() > 0.9 and sched.due(now)  # the reply would come after the chunk ran out
    assert not sched.due(now, in_force=False)  # a chunk not to plan ahead from: the period alone
    sched.sent(now)
    sched.replied(now, None)  # a failed request measures nothing
    assert len(sched.latency) == 3 and not sched.in_flight

    heads = RequestScheduler(ex, 0.1, two_rate=True)
    heads.replied(now, now + 0.01, 30.0)
    heads.latency.add(0.95)
    heads.sent(now)
    heads.replied(now, now + 0.01)
    assert not heads.due(now + 0.05) and heads.due(now + 0.1)  # the heads' own rate only, chunk or not
    heads.sent(now + 0.13)  # late (the caller polls): the next still on the grid, not 0.1 s after this one
    heads.replied(now + 0.13, None)
    assert not heads.due(now + 0.19) and heads.due(now + 0.2)
    heads.sent(now + 0.35)  # a grid point passed in flight is dropped: the next is the one after now
    heads.replied(now + 0.35, None)
    assert not heads.due(now + 0.39) and heads.due(now + 0.4)

    fixed = RequestScheduler(ex, None, execute_steps=8)
    fixed.replied(now, now, 30.0)
    assert not fixed.due(now + 7 / 30) and fixed.due(now + 8 / 30)  # in force 8 steps from its arrival
    with pytest.raises(ValueError, match="period"):
        RequestScheduler(ex, None, two_rate=True)


def test_the_scheduler_gives_a_prefix_model_the_steps_that_run_meanwhile():
    from neon_runtime.executor import Chunk, ChunkExecutor, RequestScheduler

    ex = ChunkExecutor(2)
    ex.accept(Chunk.at_fps(np.arange(32, dtype=np.float32).reshape(16, 2), 10.0, start_s=0.1, received_s=0.0))
    assert RequestScheduler(ex, 1.0).prefix(0.0, fps=10.0, latency_s=0.35) is None  # not a prefix model
    sched = RequestScheduler(ex, 1.0, prefix_max_steps=2)
    assert sched.prefix(0.0) is None  # no fps known yet
    np.testing.assert_allclose(sched.prefix(0.0, fps=10.0, latency_s=0.35), [[0, 1], [2, 3]])  # 3 run, 2 sent
    assert sched.prefix(0.0, fps=10.0, latency_s=0.05) is None  # nothing runs meanwhile


def test_heads_hz_below_the_control_rate_is_refused_before_anything_opens(capsys):
    from neon_runtime.g1.cli import main

    assert main(["--server", "ws://127.0.0.1:9/ws", "--interface", "lo", "--domain", "7", "--heads-hz", "5"]) == 2
    err = capsys.readouterr().err
    assert "--heads-hz must be >= 10" in err and "got 5" in err, err  # not "cannot connect": nothing was opened


def test_dry_run_is_the_default_and_sends_nothing(robot, server, camera):
    proc = neon_g1("--server", server, "--instruction", "wave", "--ramp-in-s", 1, domain=robot.domain)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # the log, line by line
    reader.start()
    try:
        assert wait_for(lambda: any("DRY RUN, nothing sent: running weight 1.00" in ln for ln in lines), 40), lines
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0 and "released (SIGTERM); dry run, nothing was sent" in out, out
    running = next(ln for ln in lines if "DRY RUN, nothing sent: running" in ln)
    assert "cmd L[" in running and "R[" in running  # the commands were computed and logged
    time.sleep(0.2)
    assert robot.commands == [] and all(not h for h in robot.hand_commands.values())


class StubLink:
    """RobotLink's surface without DDS: a robot standing still, and a record of what would have been written."""

    def __init__(self, layout):
        self.layout, self.state_at, self.sent = layout, None, []

    def poll(self, now):
        self.state_at = now

    def measured(self, layout, now=None, stale_s=None):
        return pose(layout)

    def send(self, layout, command, write=True):
        self.sent.append((command.weight, write))


def test_the_loop_ticks_at_its_rate_and_run_seconds_releases():
    ctl, layout = controller(rate_hz=100.0)
    link, logs = StubLink(layout), []
    goal = np.zeros(SPACE.dim, np.float32)
    feeder = threading.Timer(0.0, lambda: ctl.executor.accept(Chunk.at_fps(np.tile(goal, (16, 1)), 30.0,
                                                                           time.monotonic(), time.monotonic())))
    feeder.start()
    from neon_runtime.g1.bridge import run_loop

    stats = run_loop(ctl, link, stop_reason=lambda: "", status=lambda: "", log=logs.append, dry_run=True,
                     run_seconds=0.5, log_every_s=0.25)
    assert ctl.phase == "released" and ctl.reason == "--run-seconds 0.5 reached" and not ctl.fault
    assert link.sent and not any(write for _, write in link.sent) and link.sent[-1][0] == 0.0  # dry run: not written
    assert 200 <= len(stats.intervals) <= 300 and np.median(stats.intervals) == pytest.approx(0.01, abs=2e-3)
    assert "p50" in stats.summary() and "p99" in stats.summary() and any("-> releasing" in m for m in logs)


def engaged_loop(log=None, status=None, stop_reason=None, rate_hz=100.0):
    """run_loop on a StubLink with fresh chunks fed from a thread; `status` and `stop_reason` are given the controller.
    -> (controller, link, the exception run_loop raised or None)."""
    from neon_runtime.g1.bridge import run_loop

    ctl, layout = controller(rate_hz=rate_hz, ramp_in_s=1.0, ramp_out_s=2.0)
    link, goal, stop = StubLink(layout), np.zeros(SPACE.dim, np.float32), threading.Event()

    def feed():
        while not stop.wait(0.02):
            now = time.monotonic()
            ctl.executor.accept(Chunk.at_fps(np.tile(goal, (16, 1)), 30.0, now, now))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    error = None
    try:
        run_loop(ctl, link, stop_reason=lambda: stop_reason(ctl) if stop_reason else "",
                 status=lambda: status(ctl) if status else "", log=log or (lambda m: None), dry_run=True,
                 run_seconds=8.0, log_every_s=0.05)
    except BaseException as e:
        error = e
    finally:
        stop.set()
        feeder.join()
    return ctl, link, error


def assert_ramped_out(ctl, link, rate_hz=100.0, ramp_out_s=2.0):
    """Weight ends at 0, never steps by more than two periods' share of a ramp, and the last 1 -> 0 took the ramp."""
    w = np.array([weight for weight, _ in link.sent])
    assert w[-1] == 0.0 and ctl.phase == "released", w[-5:]
    assert np.abs(np.diff(w)).max() <= 2.0 / rate_hz / min(1.0, ramp_out_s) + 1e-6
    top = np.flatnonzero(w == w.max())[-1]
    assert len(w) - 1 - top >= 0.8 * ramp_out_s * rate_hz * w.max()  # ticks from the top to 0


def test_exceptions_from_logging_and_status_release_with_a_ramp_and_the_loop_goes_on():
    """A closed stdout (BrokenPipeError from the log) and a status() that raises: released as a fault, ramped out
    from full weight over the ramp, and run_loop returns (before, the first error in log() ended the loop with the
    last weight sent 1.00)."""

    def log(message):
        if "running weight 1.00" in message:
            raise BrokenPipeError(32, "Broken pipe")

    ctl, link, error = engaged_loop(log=log)
    assert error is None and ctl.fault and "BrokenPipeError" in ctl.reason
    assert max(w for w, _ in link.sent) == 1.0
    assert_ramped_out(ctl, link)
    ctl, link, error = engaged_loop(status=lambda c: 1 / 0 if c.phase == "running" else "ok")
    assert error is None and ctl.fault and "ZeroDivisionError" in ctl.reason
    assert max(w for w, _ in link.sent) == 1.0
    assert_ramped_out(ctl, link)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_in_the_loop_ramp_out_before_they_leave(exc):
    def stop_reason(c):
        if c.phase == "running":
            raise exc()
        return ""

    ctl, link, error = engaged_loop(stop_reason=stop_reason)
    assert isinstance(error, exc) and ctl.fault and "left the control loop" in ctl.reason
    assert max(w for w, _ in link.sent) == 1.0
    assert_ramped_out(ctl, link)


def test_a_send_that_keeps_failing_releases_and_every_tick_still_tries_the_next_ramp_step():
    from neon_runtime.g1.bridge import run_loop

    ctl, layout = controller()
    link, goal = StubLink(layout), np.zeros(SPACE.dim, np.float32)
    now = time.monotonic()
    ctl.executor.accept(Chunk.at_fps(np.tile(goal, (16, 1)), 0.07, now, now + 100.0))  # fresh for the whole test
    failing, tries = {"on": False}, []

    def send(layout, command, write=True):
        tries.append(command.weight)
        if failing["on"]:
            raise OSError("network unreachable")
        link.sent.append((command.weight, write))
        failing["on"] = command.weight >= 1.0

    link.send = send
    run_loop(ctl, link, stop_reason=lambda: "", status=lambda: "", log=lambda m: None, dry_run=True)
    after = np.array(tries[len(link.sent):])  # every command tried once sending failed
    assert after[0] == 1.0 and after[-1] == 0.0 and (np.diff(after) <= 0).all()
    assert np.abs(np.diff(after)).max() <= 2 * 0.01 / 2.0 + 1e-6 and len(after) >= 150  # the ramp, tick by tick
    assert ctl.fault and "network unreachable" in ctl.reason and ctl.phase == "released"


def test_the_queued_log_never_blocks_and_counts_what_it_could_not_write():
    from neon_runtime.g1.bridge import QueuedLog

    gate, written = threading.Event(), []
    blocked = QueuedLog(lambda m: (gate.wait(), written.append(m)), maxsize=10)
    t0 = time.perf_counter()
    for k in range(100):
        blocked(f"line {k}")
    assert time.perf_counter() - t0 < 0.5 and blocked.dropped >= 89  # a blocked sink: the caller goes on
    gate.set()
    blocked.close()
    assert written[0] == "line 0" and 1 <= len(written) <= 11

    def closed(message):
        raise BrokenPipeError(32, "Broken pipe")

    dead = QueuedLog(closed)
    for k in range(5):
        dead(f"line {k}")
    dead.close()
    assert isinstance(dead.failed, BrokenPipeError) and dead.dropped == 5


def test_no_lowstate_is_refused_and_nothing_is_sent(server):
    silent = FakeG1(publish_state=False)
    try:
        proc = neon_g1("--server", server, "--engage", "--state-timeout", 1, domain=silent.domain)
        out = finish(proc)
        assert proc.returncode == 2 and "no rt/lowstate on lo, domain" in out and "Nothing was sent" in out, out
        assert silent.commands == []
    finally:
        silent.close()


def test_a_dry_run_server_is_refused_and_nothing_is_sent(robot, model):
    runner, ctx = served(model, dry_run=True)
    with ctx as addr:
        proc = neon_g1("--server", f"ws://{addr}/ws", "--engage", domain=robot.domain)
        out = finish(proc)
    runner.close()
    assert proc.returncode == 2 and "dry-run only" in out, out
    assert robot.commands == []


def test_unknown_interface_is_refused_by_name():
    proc = subprocess.run([sys.executable, "-m", "neon_runtime.g1.cli", "--ros", "--interface", "g1-eth9", "--domain",
                           "7", "--engage"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "'g1-eth9'" in proc.stderr and "it has:" in proc.stderr, proc.stderr


def test_a_negative_blend_window_is_refused_before_anything_opens(capsys):
    from neon_runtime.g1.cli import main

    assert main(["--ros", "--interface", "lo", "--domain", "7", "--blend-s", "-0.1"]) == 2
    assert "--blend-s must be a finite number of seconds >= 0, got -0.1" in capsys.readouterr().err


def test_a_server_without_arm_joints_is_refused(robot):
    """A server whose action space has no arms (a stand-in: neon-serve cannot serve one) is refused on its greeting."""
    from websockets.sync.server import serve

    from neon_runtime import wire

    hands_only = {"action_space": {"control_mode": "hands_only", "joints": [{"name": "left_hand_thumb_0"}]},
                  "dry_run": False}
    with serve(lambda ws: (ws.send(wire.packb(hands_only)), ws.recv()), "127.0.0.1", 0) as ws_server:
        threading.Thread(target=ws_server.serve_forever, daemon=True).start()
        port = ws_server.socket.getsockname()[1]
        proc = neon_g1("--server", f"ws://127.0.0.1:{port}", "--engage", domain=robot.domain)
        out = finish(proc)
        ws_server.shutdown()
    assert proc.returncode == 2 and "lacks arm joint(s) left_shoulder_pitch" in out, out
    assert robot.commands == []


def trajectory_publisher(ros, names, elbow: float):
    """neon-ros's /neon/joint_trajectory at 10 Hz: 16 points at 30 fps from now, left_elbow at `elbow`."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    pub = ros.create_publisher(JointTrajectory, "/neon/joint_trajectory",
                               QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def publish():
        msg = JointTrajectory(joint_names=list(names))
        msg.header.stamp = ros.get_clock().now().to_msg()
        for k in range(16):
            p = JointTrajectoryPoint(positions=[elbow if n == "left_elbow_joint" else 0.0 for n in names])
            p.time_from_start.nanosec = int((k + 1) / 30 * 1e9)
            msg.points.append(p)
        pub.publish(msg)

    return pub, ros.create_timer(0.1, publish)


def test_ros_mode_runs_trajectories_and_republishes_joint_states(robot, ros):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    states = []
    sub = ros.create_subscription(JointState, "/joint_states", states.append, qos_profile_sensor_data)
    pub, timer = trajectory_publisher(ros, [f"{n}_joint" for n in ARM_JOINTS], elbow=0.8)  # URDF spelling
    proc = neon_g1("--ros", "--engage", "--ramp-in-s", 1, domain=robot.domain)
    try:
        elbow = lambda: robot.commands[-1][1].motor_cmd[18].q if robot.commands else 0.0
        assert wait_for(lambda: elbow() == pytest.approx(0.8, abs=1e-4), 40), finish(proc, 5)
        joint_states = lambda: dict(zip(states[-1].name, states[-1].position, strict=True)) if states else {}
        assert wait_for(lambda: joint_states().get("left_elbow", 0.0) > 0.79, 10)  # rt/lowstate, back out on ROS
        proc.send_signal(signal.SIGINT)
        out = finish(proc)
    finally:
        proc.kill()
        ros.destroy_timer(timer)
        ros.destroy_publisher(pub)
        ros.destroy_subscription(sub)
    assert proc.returncode == 0 and "released (SIGINT)" in out, out
    assert set(ARM_JOINTS) <= set(states[-1].name) and "left_hand_thumb_0" in states[-1].name
    assert robot.weights()[-1] == 0.0


def test_a_trajectory_stamped_long_ago_or_in_the_future_is_refused():
    """Age counts from the header stamp, not from arrival: a 10 s old trajectory used to count as fresh, one stamped
    30 s ahead was accepted."""
    pytest.importorskip("trajectory_msgs", reason="ROS 2 wheels (ros-kilted-*) are installed by scripts/setup.sh")
    from builtin_interfaces.msg import Duration, Time
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from neon_runtime.g1.inputs import trajectory_to_chunk

    def msg(stamp: float) -> JointTrajectory:
        m = JointTrajectory(joint_names=list(ARM_JOINTS))
        m.header.stamp = Time(sec=int(stamp), nanosec=int((stamp % 1) * 1e9))
        m.points = [JointTrajectoryPoint(positions=[0.0] * len(ARM_JOINTS), time_from_start=Duration(nanosec=k * 10**8))
                    for k in range(1, 4)]
        return m

    now = 1_800_000_000.0
    assert trajectory_to_chunk(msg(now - 0.2), SPACE, now_wall=now).targets.shape == (3, SPACE.dim)
    with pytest.raises(ChunkRefused, match="10.000 s old"):
        trajectory_to_chunk(msg(now - 10.0), SPACE, now_wall=now)
    with pytest.raises(ChunkRefused, match="30.000 s in the future"):
        trajectory_to_chunk(msg(now + 30.0), SPACE, now_wall=now)


def test_ros_mode_refuses_a_trajectory_without_arm_joints(robot, ros):
    names = [f"left_hand_{f}" for f in DEX3_MOTORS["left"]]
    pub, timer = trajectory_publisher(ros, names, elbow=0.0)
    try:
        proc = neon_g1("--ros", "--engage", domain=robot.domain)
        out = finish(proc)
    finally:
        ros.destroy_timer(timer)
        ros.destroy_publisher(pub)
    assert proc.returncode == 2 and "the trajectory on the ROS topic lacks arm joint(s)" in out, out
    assert robot.commands == []


def test_neon_g1_is_a_console_script():
    from importlib.metadata import entry_points

    assert any(e.name == "neon-g1" and e.value == "neon_runtime.g1.cli:main"
               for e in entry_points(group="console_scripts"))


def test_a_request_thread_that_dies_is_reported_and_releases_as_a_fault():
    """ServerSource's thread used to die silently (the watchdog found out a second and a half later, with no reason);
    now it records why, and neon-g1's stop check turns that into a fault release."""
    from neon_runtime.g1.cli import _input_failure
    from neon_runtime.g1.inputs import ServerSource

    source = ServerSource.__new__(ServerSource)
    source.status, source.failed = "starting", None

    def serve():
        raise KeyError("image")

    source._serve = serve
    source._run()
    assert isinstance(source.failed, KeyError) and "request thread failed: KeyError" in source.status
    with pytest.raises(RuntimeError, match="the request thread failed: KeyError"):
        _input_failure({"error": ""}, source, None)
    assert _input_failure({"error": "no arms"}, None, None) == "bad input: no arms"
    assert _input_failure({"error": ""}, None, None) == ""


def test_a_served_chunk_is_timed_from_the_monotonic_observation_time_not_the_wall_clock():
    """An NTP step between request and reply used to shift the chunk by the step (wall -> monotonic on arrival)."""
    from neon_runtime.g1.inputs import reply_to_chunk

    now = time.monotonic()
    reply = {"actions": np.zeros((16, SPACE.dim), np.float32), "fps": 30.0, "dry_run": False,
             "observation_timestamp": time.time() - 1000.0, "joint_names": SPACE.names}  # the wall clock stepped
    chunk = reply_to_chunk(reply, SPACE, observed_mono=now - 0.05)
    assert chunk.times[0] == pytest.approx(now - 0.05 + 1 / 30, abs=1e-9)
    assert reply_to_chunk(reply, SPACE).times[0] < now - 900  # without it: where the wall clock puts it


def test_the_watchdog_is_max_chunk_age_s_as_in_neon_ros_and_the_old_flag_still_works():
    from neon_runtime.g1.cli import build_parser

    base = ["--server", "ws://127.0.0.1:1/ws", "--interface", "lo", "--domain", "7"]
    assert build_parser().parse_args(base).max_chunk_age_s == ControlConfig().max_chunk_age_s == 0.5
    assert build_parser().parse_args(base + ["--max-chunk-age-s", "1.5"]).max_chunk_age_s == 1.5
    assert build_parser().parse_args(base + ["--watchdog-s", "1.25"]).max_chunk_age_s == 1.25
