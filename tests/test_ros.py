"""neon-ros with real rclpy: topics in, JointTrajectory out, the watchdog, remote mode, launch-file checks."""

import ast
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

# DDS stays on this machine: localhost discovery and a random domain, set before rclpy loads.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(10, 200)))

rclpy = pytest.importorskip("rclpy", reason="ROS 2 wheels (ros-kilted-*) are installed by scripts/setup.sh")
from conftest import tiny_config  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from neon.model import NeonVLA  # noqa: E402
from neon_runtime.ros.convert import array_to_image, cloud_to_array, array_to_cloud, image_to_array  # noqa: E402
from neon_runtime.ros.node import PARAMETERS, make_node  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    cfg = tiny_config("neon-tiny/qwen2.5-vl")
    cfg.backbone.load_in_4bit = False
    model = NeonVLA(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.save_pretrained(tmp_path_factory.mktemp("ros") / "ckpt")


class G1Sim:
    """A second node that plays the G1: camera, joint states and an instruction, and records what Neon sends."""

    def __init__(self, node, names):
        self.node, self.names = node, names
        self.cam = node.create_publisher(type(array_to_image(np.zeros((2, 2, 3), np.uint8))), "/camera/color/image_raw",
                                         qos_profile_sensor_data)
        self.joints = node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.instr = node.create_publisher(String, "/neon/instruction", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.trajs, self.diags = [], []
        node.create_subscription(JointTrajectory, "/neon/joint_trajectory", self.trajs.append, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 10)
        self.camera_on = True
        self.img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        node.create_timer(1 / 30, self.tick)
        self.instr.publish(String(data="pick up the red block"))

    def tick(self):
        if self.camera_on:
            self.cam.publish(array_to_image(self.img))
        js = JointState()
        js.name = [f"{n}_joint" for n in self.names]
        js.position = [0.0] * len(self.names)
        self.joints.publish(js)


@pytest.fixture
def graph():
    rclpy.init()
    executor = SingleThreadedExecutor()
    nodes = []
    thread = threading.Thread(target=executor.spin, daemon=True)
    started = []

    def add(node):
        nodes.append(node)
        executor.add_node(node)
        if not started:
            thread.start()
            started.append(1)
        return node

    yield add
    for n in nodes:
        executor.remove_node(n)
    executor.shutdown(timeout_sec=5)
    thread.join(timeout=5)
    for n in nodes:
        n.destroy_node()
    rclpy.try_shutdown()


def wait_for(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_trajectory_from_synthetic_g1_topics_and_watchdog(graph, checkpoint):
    neon = graph(make_node("neon_test", model=str(checkpoint), dry_run=False, rate_hz=5.0))
    sim = G1Sim(graph(rclpy.create_node("g1_sim")), [n for n in neon.space.names])
    assert wait_for(lambda: len(sim.trajs) >= 2), [d.status[0].message for d in sim.diags[-3:]]
    msg = sim.trajs[-1]
    space = neon.space
    assert list(msg.joint_names) == space.names and len(msg.points) == 16
    pos = np.array([p.positions for p in msg.points])
    assert (pos >= space.lower - 1e-5).all() and (pos <= space.upper + 1e-5).all()
    t = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
    assert t == pytest.approx([(i + 1) / 30 for i in range(16)], abs=1e-6)
    ok = [d for d in sim.diags if d.status[0].level == b"\x00"]
    assert ok and any(v.key == "latency_ms" for v in ok[-1].status[0].values)
    # Camera goes silent: no trajectories, diagnostics say why.
    sim.camera_on = False
    assert wait_for(lambda: any(d.status[0].level == b"\x02" and "camera: stale" in d.status[0].message
                                for d in sim.diags[-5:]))
    time.sleep(0.3)
    count = len(sim.trajs)
    time.sleep(1.0)
    assert len(sim.trajs) == count  # nothing that moves the robot while the input is stale
    sim.camera_on = True
    assert wait_for(lambda: len(sim.trajs) > count)  # resumes by itself


def test_whole_body_publishes_locomotion_twist_and_hears_audio(graph, tmp_path):
    from geometry_msgs.msg import Twist
    from std_msgs.msg import Int16MultiArray

    cfg = tiny_config("neon-tiny/qwen2.5-omni", "whole_body", use_audio=True)
    cfg.backbone.load_in_4bit = False
    ckpt = NeonVLA(cfg).save_pretrained(tmp_path / "wb")
    neon = graph(make_node("neon_wb", model=str(ckpt), dry_run=False, rate_hz=5.0))
    sim = G1Sim(graph(rclpy.create_node("g1_sim_wb")), [n for n in neon.space.names if n not in ("vx", "vy", "yaw_rate")])
    twists = []
    sim.node.create_subscription(Twist, "/neon/cmd_vel", twists.append, 10)
    mic = sim.node.create_publisher(Int16MultiArray, "/neon/audio", qos_profile_sensor_data)
    sim.node.create_timer(0.1, lambda: mic.publish(Int16MultiArray(data=[100, -100] * 800)))
    assert wait_for(lambda: len(sim.trajs) >= 1 and len(twists) >= 1 and neon.latest["audio"].value is not None)
    assert len(sim.trajs[-1].joint_names) == 43 and "vx" not in sim.trajs[-1].joint_names
    assert abs(twists[-1].linear.x) <= 0.5 and abs(twists[-1].angular.z) <= 0.6
    assert len(neon.latest["audio"].value) > 0 and np.abs(neon.latest["audio"].value).max() > 0


def test_onnx_heads_in_the_node(graph, checkpoint, tmp_path):
    import shutil

    from neon_runtime.onnx_heads import ONNX_DIR, export_heads

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    export_heads(NeonVLA.from_pretrained(ckpt), ckpt / ONNX_DIR)
    neon = graph(make_node("neon_onnx", model=str(ckpt), heads="onnx", dry_run=False, rate_hz=5.0))
    sim = G1Sim(graph(rclpy.create_node("g1_sim_onnx")), neon.space.names)
    assert wait_for(lambda: len(sim.trajs) >= 1) and "ONNX heads" in neon.source


def test_dry_run_publishes_preview_only(graph, checkpoint):
    neon = graph(make_node("neon_dry", model=str(checkpoint), rate_hz=5.0))  # dry_run defaults to true
    sim = G1Sim(graph(rclpy.create_node("g1_sim_dry")), neon.space.names)
    previews = []
    sim.node.create_subscription(JointTrajectory, "/neon/joint_trajectory_preview", previews.append, 10)
    assert wait_for(lambda: len(previews) >= 1)
    assert sim.trajs == []


def test_remote_mode_against_live_server(graph, checkpoint, backbones):
    from serving import runner_for, serve

    from neon_runtime.server import ServerSettings, create_app

    model = NeonVLA.from_pretrained(checkpoint)
    model.backbone = backbones("neon-tiny/qwen2.5-vl")
    runner = runner_for(model, max_batch=4, max_wait_ms=2)
    with serve(create_app(runner, ServerSettings())) as addr:
        neon = graph(make_node("neon_remote", server_url=f"ws://{addr}/ws", dry_run=False, rate_hz=5.0))
        sim = G1Sim(graph(rclpy.create_node("g1_sim_remote")), neon.space.names)
        assert wait_for(lambda: len(sim.trajs) >= 2), [d.status[0].message for d in sim.diags[-3:]]
        assert len(sim.trajs[-1].points) == 16 and neon.source.startswith("remote")
    runner.close()


def test_message_conversions():
    img = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(image_to_array(array_to_image(img)), img)
    bgr = array_to_image(img[..., ::-1].copy())
    bgr.encoding = "bgr8"
    assert np.array_equal(image_to_array(bgr), img)
    pts = np.random.default_rng(2).normal(size=(100, 4)).astype(np.float32)
    assert np.allclose(cloud_to_array(array_to_cloud(pts)), pts)


def test_launch_file_and_params_match_the_node():
    pkg = ROOT / "ros2_ws" / "src" / "neon_bringup"
    tree = ast.parse((pkg / "launch" / "g1.launch.py").read_text())
    arguments = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGUMENTS")
    declared = {name: default for name, default, _ in ast.literal_eval(arguments)}
    for arg in ("model", "backbone", "mode", "rate_hz", "server_url", "dry_run", "camera_topic", "joint_states_topic",
                "instruction_topic", "lidar_topic", "audio_topic"):
        assert arg in declared, arg
    assert declared["dry_run"] == "true"
    # Every launch argument that becomes a node parameter is one the node declares.
    params_used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            params_used |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    assert params_used <= set(PARAMETERS), params_used - set(PARAMETERS)
    cfg = yaml.safe_load((pkg / "config" / "g1.yaml").read_text())
    params = cfg["neon"]["ros__parameters"]
    assert set(params) <= set(PARAMETERS), set(params) - set(PARAMETERS)
    for k, v in params.items():
        assert type(v) is type(PARAMETERS[k]), (k, v, PARAMETERS[k])
    xml = (pkg / "package.xml").read_text()
    assert "<name>neon_bringup</name>" in xml and "ament_python" in xml
    assert (pkg / "resource" / "neon_bringup").is_file() and (pkg / "setup.py").is_file()


def test_remote_mode_takes_the_servers_safety_and_dry_run(graph, checkpoint, backbones):
    """A dry-run server is never executed by the node, and its chunks are not rate-limited a second time."""
    from serving import runner_for, serve

    from neon_runtime.safety import SafetyConfig
    from neon_runtime.server import ServerSettings, create_app

    model = NeonVLA.from_pretrained(checkpoint)
    model.backbone = backbones("neon-tiny/qwen2.5-vl")
    runner = runner_for(model, SafetyConfig(max_joint_velocity=2.0, dry_run=True), max_batch=1, max_wait_ms=0)
    with serve(create_app(runner, ServerSettings())) as addr:
        # The node asks for executed trajectories and a far lower speed limit; neither applies to a remote policy.
        neon = graph(make_node("neon_remote_dry", server_url=f"ws://{addr}/ws", dry_run=False, rate_hz=5.0,
                               max_joint_velocity=0.05))
        sim = G1Sim(graph(rclpy.create_node("g1_sim_remote_dry")), neon.space.names)
        previews = []
        sim.node.create_subscription(JointTrajectory, "/neon/joint_trajectory_preview", previews.append, 10)
        assert wait_for(lambda: len(previews) >= 2), [d.status[0].message for d in sim.diags[-3:]]
        assert sim.trajs == [] and neon.policy.metadata()["dry_run"] is True
        assert "dry run" in sim.diags[-1].status[0].message
    runner.close()
    arms = [i for i, n in enumerate(previews[-1].joint_names) if "_hand_" not in n]
    step = np.abs(np.array(previews[-1].points[0].positions)[arms]).max()  # first step from the all-zero joint state
    assert 0.05 / 30 * 2 < step <= 2.0 / 30 + 1e-6  # the server's 2 rad/s, not the node's 0.05
