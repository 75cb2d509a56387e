"""neon-sim g1: the simulated G1 on real CycloneDDS (lo, a random domain other than 0, multicast off) and real rclpy.

An in-test commander plays the bridge: LowCmd_ on rt/arm_sdk with the weight in motor_cmd[29].q, LowState_ read back.
"""

import os
import random
import time

import numpy as np
import pytest

# DDS stays on this machine: ROS 2 discovers on localhost only, in a random domain, set before rclpy loads.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(10, 200)))
os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("mujoco", reason="MuJoCo comes with the sim extra")
pytest.importorskip("cyclonedds", reason="CycloneDDS 0.10 comes with the g1 extra")
rclpy = pytest.importorskip("rclpy", reason="ROS 2 wheels (ros-kilted-*) are installed by scripts/setup.sh")
from conftest import wait_for  # noqa: E402

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from neon.action_space import BODY_JOINTS  # noqa: E402
from neon_runtime.ros.convert import image_to_array  # noqa: E402
from neon_runtime.unitree import dds  # noqa: E402
from neon_runtime.unitree.crc import fill_low_cmd_crc, low_state_crc  # noqa: E402
from neon_runtime.unitree.idl import MOTOR_SLOTS, LowCmd_  # noqa: E402
from neon_sim.cli import main  # noqa: E402
from neon_sim.collect import FPS  # noqa: E402
from neon_sim.dds_g1 import DdsG1, DdsG1Config, write_report  # noqa: E402
from neon_sim.expert import Expert  # noqa: E402
from neon_sim.scene import EPISODE_S, IMAGE_SIZE, KD, KP, G1Tabletop, sample_task, start_pose  # noqa: E402

SDK = {j.name: j.sdk_index for j in BODY_JOINTS}
UPPER = [j for j in BODY_JOINTS if j.group in ("torso", "arms")]  # what rt/arm_sdk commands
# Targets that differ joint by joint, so a joint landing in another's slot shows.
POSE = {"left_shoulder_pitch": -0.4, "left_shoulder_roll": 0.5, "left_elbow": 0.9, "right_shoulder_roll": -0.5,
        "right_elbow": 0.6, "right_wrist_roll": 0.3, "waist_yaw": 0.2}
_domains = random.sample(list(dds.LOOPBACK_DOMAINS), len(dds.LOOPBACK_DOMAINS))


def fresh_domain() -> int:
    """A loopback domain no other test here has used: a sim that went away leaves nothing behind in it."""
    return _domains.pop()


class Commander:
    """Plays the bridge: writes rt/arm_sdk, reads rt/lowstate, in the sim's domain."""

    def __init__(self, domain: int):
        participant = dds.loopback(domain)
        self.arm_sdk, self.lowstate = dds.writer(participant, "rt/arm_sdk"), dds.reader(participant, "rt/lowstate")
        self.sent = 0

    def send(self, weight: float, targets: dict[str, float] | None = None, kp: float = KP, kd: float = KD,
             good_crc: bool = True) -> None:
        """Waist and arms to `targets` (rad, by joint name; others 0) with gains kp, kd and the arm_sdk weight."""
        cmd = LowCmd_(mode_machine=5)
        cmd.motor_cmd[29].q = weight
        for joint in UPPER:
            m = cmd.motor_cmd[joint.sdk_index]
            m.mode, m.q, m.kp, m.kd = 1, float((targets or {}).get(joint.name, 0.0)), kp, kd
        fill_low_cmd_crc(cmd)
        if not good_crc:
            cmd.crc ^= 1
        self.arm_sdk.write(cmd)
        self.sent += 1

    def hold(self, seconds: float, weight, targets=None, hz: float = 100.0, **kw) -> None:
        """Send for `seconds` at `hz`; `weight` a number or a function of the time since the start (s)."""
        t0 = time.monotonic()
        while (t := time.monotonic() - t0) < seconds:
            self.send(weight(t) if callable(weight) else weight, targets, **kw)
            time.sleep(1.0 / hz)

    def hold_until(self, cond, weight, targets=None, timeout: float = 10.0, hz: float = 100.0) -> bool:
        """Keep sending until cond() (True) or `timeout` (False): a busy machine may slow the sim down."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            self.send(weight, targets)
            time.sleep(1.0 / hz)
        return False

    def state(self, timeout: float = 10.0):
        """The newest LowState_ (waiting for one, discovery takes a moment)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.lowstate.take(N=64)
            if got:
                return got[-1]
            time.sleep(0.01)
        raise AssertionError(f"no rt/lowstate within {timeout} s")


START = start_pose()  # MuJoCo joint name -> rad; every other joint starts at 0


def at_hold(sim: DdsG1, tol: float = 0.02) -> bool:
    return max(abs(q - START.get(name, 0.0)) for name, q in sim.joint_positions().items()) < tol


@pytest.fixture(scope="module")
def idle():
    """A sim that never engages here (weights stay below 1) and its commander; tests leave it holding."""
    sim = DdsG1(DdsG1Config(domain=fresh_domain(), seed=4242, episodes=1, camera_hz=10.0)).start()
    commander = Commander(sim.config.domain)
    assert sim.next_event("ready").seed == 4242
    commander.state()
    yield sim, commander
    sim.stop()
    sim.join(timeout=30)


@pytest.fixture
def settled(idle):
    sim, commander = idle
    assert wait_for(lambda: at_hold(sim), timeout=10), sim.joint_positions()  # the last test's commands went stale
    return sim, commander


@pytest.fixture(scope="module")
def ros_node():
    from conftest import spinning_node

    with spinning_node("sim_dds_listener") as node:
        yield node


# --- rt/lowstate --------------------------------------------------------------------------------------------------


def test_lowstate_carries_each_joint_at_its_sdk_slot_with_a_valid_crc(settled):
    sim, commander = settled
    first = commander.state()
    time.sleep(0.2)
    state = commander.state()
    assert state.crc == low_state_crc(state) and first.crc == low_state_crc(first)
    assert state.mode_machine == 5 and state.tick > first.tick  # ms of simulated time
    joints = sim.joint_positions()
    assert set(joints) == set(SDK)  # all 29 of Unitree's model, by name
    for name, q in joints.items():
        assert state.motor_state[SDK[name]].q == pytest.approx(q, abs=2e-3), name
        assert state.motor_state[SDK[name]].mode == 1
    assert all(m.q == 0 and m.mode == 0 for m in state.motor_state[29:MOTOR_SLOTS])  # no motor there


# --- rt/arm_sdk ---------------------------------------------------------------------------------------------------


def test_a_command_with_a_wrong_crc_is_ignored_and_counted(settled):
    sim, commander = settled
    before = dict(sim.counts)
    commander.hold(1.0, 1.0, POSE, good_crc=False)
    assert wait_for(lambda: sim.counts["rejected_crc"] - before["rejected_crc"] >= 10, timeout=10), sim.counts
    assert at_hold(sim) and sim.counts["accepted"] == before["accepted"], sim.joint_positions()
    assert sim.events.empty()  # weight 1 never arrived intact: not engaged


def test_half_weight_lands_halfway_between_hold_and_command(settled):
    sim, commander = settled
    def halfway() -> bool:  # the same gains as the sim's own: the blended target is the midpoint
        joints = sim.joint_positions()
        return all(abs(joints[name] - (target + START.get(name, 0.0)) / 2) < 0.03 for name, target in POSE.items())

    assert commander.hold_until(halfway, 0.5, POSE), sim.joint_positions()
    commander.hold(0.3, 0.5, POSE)
    state = commander.state()
    for name, target in POSE.items():
        assert state.motor_state[SDK[name]].q == pytest.approx((target + START.get(name, 0.0)) / 2, abs=0.03), name
    assert abs(state.motor_state[SDK["left_elbow"]].tau_est) > 0.05  # a bent elbow is held up against gravity
    assert sim.events.empty()  # weight 0.5: still holding, the episode clock has not started


def test_weight_ramped_to_one_moves_the_arm_weight_zero_does_not_and_a_silent_bridge_goes_stale():
    sim = DdsG1(DdsG1Config(domain=fresh_domain(), seed=5, episodes=1, ros=False)).start()
    try:
        commander = Commander(sim.config.domain)
        assert sim.next_event("ready").seed == 5
        commander.state()
        commander.hold(0.6, 0.0, POSE)  # weight 0: the robot's own controller keeps the start pose
        assert at_hold(sim), sim.joint_positions()
        assert sim.events.empty()
        commander.hold(0.6, lambda t: min(1.0, t / 0.5), POSE)  # ramp in over 0.5 s

        def there() -> bool:
            joints = sim.joint_positions()
            return all(abs(joints[name] - target) < 0.03 for name, target in POSE.items())

        assert commander.hold_until(there, 1.0, POSE), sim.joint_positions()
        assert sim.next_event("engaged", timeout=1).seed == 5
        commander.hold(0.3, 1.0, POSE)
        state = commander.state()
        for name, target in POSE.items():
            assert state.motor_state[SDK[name]].q == pytest.approx(target, abs=0.03), name
        stale = sim.counts["stale"]
        assert wait_for(lambda: at_hold(sim), timeout=10)  # nothing more sent: after 0.2 s the own hold takes over
        assert sim.counts["stale"] == stale + 1
    finally:
        sim.stop()
        sim.join(timeout=30)


def test_in_keep_last_mode_a_bridge_that_dies_at_weight_one_leaves_the_arm_where_it_was_sent():
    """stale_after_s=0: the last command stays in force, as the robot reportedly keeps applying the last arm_sdk
    command, so a bridge that dies at weight 1 is visible (the arm stays at its target instead of going home)."""
    sim = DdsG1(DdsG1Config(domain=fresh_domain(), seed=5, episodes=1, ros=False, stale_after_s=0.0)).start()
    try:
        commander = Commander(sim.config.domain)
        assert sim.next_event("ready").seed == 5
        commander.state()
        commander.hold(0.6, lambda t: min(1.0, t / 0.5), POSE)
        there = lambda: all(abs(sim.joint_positions()[n] - q) < 0.03 for n, q in POSE.items())
        assert commander.hold_until(there, 1.0, POSE), sim.joint_positions()
        stale = sim.counts["stale"]
        time.sleep(1.5)  # the bridge "died" at weight 1: nothing more is sent
        assert there() and not at_hold(sim) and sim.counts["stale"] == stale
    finally:
        sim.stop()
        sim.join(timeout=30)


# --- ROS 2: camera and instruction --------------------------------------------------------------------------------


def test_head_camera_and_instruction_reach_ros(idle, ros_node):
    sim, _ = idle
    images, instructions = [], []
    ros_node.create_subscription(Image, "/camera/color/image_raw", images.append, qos_profile_sensor_data)  # as neon-ros
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    ros_node.create_subscription(String, "/neon/instruction", instructions.append, latched)  # joins after it was sent
    assert wait_for(lambda: images and instructions, timeout=20), (len(images), instructions)
    assert instructions[0].data == sample_task(np.random.default_rng(4242)).instruction
    msg = images[-1]
    assert (msg.height, msg.width, msg.encoding) == (IMAGE_SIZE, IMAGE_SIZE, "rgb8")
    frame = image_to_array(msg)
    assert frame.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and frame.std() > 10  # the table and blocks, not a blank frame
    assert wait_for(lambda: len(images) >= 5, timeout=5)  # a stream at camera_hz, not one frame


# --- whole episodes -----------------------------------------------------------------------------------------------


def replay_expert(sim: DdsG1, commander: Commander, episodes: int, hz: float = 100.0) -> None:
    """The bridge a harness would start per episode: at "ready" ramp the weight in from the measured pose, replay
    the scripted expert's targets (planned on the same seed's scene) at weight 1 until "finished", ramp out."""
    arm = [j.name for j in UPPER if j.group == "arms"]
    for _ in range(episodes):
        ready = sim.next_event("ready")
        scene = G1Tabletop(sample_task(np.random.default_rng(ready.seed)))
        expert, space = Expert(scene), scene.space
        state = commander.state()
        start = {j.name: state.motor_state[j.sdk_index].q for j in UPPER}
        commander.hold(0.5, lambda t: min(1.0, t / 0.4), start, hz=hz)
        t0, finished = time.monotonic(), None
        while finished is None:
            goal = expert.targets(time.monotonic() - t0 + 1.0 / FPS)  # one frame ahead, as the direct path steps
            commander.send(1.0, {**start, **{name: float(goal[space.index(name)]) for name in arm}})
            time.sleep(1.0 / hz)
            if not sim.events.empty():
                event = sim.events.get()
                assert event is not None and event.kind in ("engaged", "finished"), event
                finished = event if event.kind == "finished" else None
        last = {name: float(expert.targets(time.monotonic() - t0)[space.index(name)]) for name in arm}
        commander.hold(0.4, lambda t: max(0.0, 1.0 - t / 0.3), {**start, **last}, hz=hz)
        assert sim.next_event("released", timeout=5).result is finished.result


def test_the_scripted_expert_succeeds_through_dds_and_the_report_says_so(tmp_path):
    seen = []
    sim = DdsG1(DdsG1Config(domain=fresh_domain(), seed=10_000, episodes=2, ros=False), on_event=seen.append).start()
    commander = Commander(sim.config.domain)
    replay_expert(sim, commander, episodes=2)
    report = sim.join(timeout=30)
    assert [e.kind for e in seen] == ["ready", "engaged", "finished", "released"] * 2
    assert [r["seed"] for r in report["results"]] == [10_000, 10_001]
    for r in report["results"]:
        assert r["engaged"] and r["success"] and r["released"], r
        assert 0 < r["time_to_success_s"] < EPISODE_S and not r["table_contact"] and not r["joint_limit_violation"]
    assert report["success_rate"] == 1.0 and report["success_ci95"][0] > 0.15
    assert report["commands"]["accepted"] > 0.9 * commander.sent and report["commands"]["rejected_crc"] == 0, commander.sent
    path = write_report(report, tmp_path)
    assert path.name == "sim_report.json" and "success rate 1.00" in (tmp_path / "sim_report.md").read_text()


# --- the command line ---------------------------------------------------------------------------------------------


def test_cli_refuses_an_unknown_interface_domain_zero_and_bad_rates(capsys):
    assert main(["g1", "--interface", "g1-eth9", "--no-ros"]) == 2
    assert "'g1-eth9'" in capsys.readouterr().err
    assert main(["g1", "--domain", "0", "--no-ros"]) == 2
    assert "real G1's" in (err := capsys.readouterr().err) and "--allow-domain-0" in err
    assert main(["g1", "--episodes", "0"]) == 2
    assert "episodes" in capsys.readouterr().err
    assert main(["g1", "--domain", str(fresh_domain()), "--state-hz", "300", "--no-ros"]) == 2
    assert "state_hz must divide the physics rate 500 Hz" in capsys.readouterr().err
