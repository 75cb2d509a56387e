"""neon-ros with real rclpy: topics in, JointTrajectory out, the watchdog, remote mode, launch-file checks."""

import os
import random
import signal
import subprocess
import sys
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
from conftest import as_trained, random_weights, tiny_config, wait_for  # noqa: E402
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

    cfg = tiny_config("neon-tiny/qwen2.5-vl")
    cfg.backbone.load_in_4bit = False
    model = NeonVLA(cfg)
    random_weights(model, 0)
    return as_trained(model).save_pretrained(tmp_path_factory.mktemp("ros") / "ckpt")


class G1Sim:
    """A second node that plays the G1: camera, joint states and an instruction, and records what Neon sends."""

    def __init__(self, node, names):
        self.node, self.names = node, names
        self.cam = node.create_publisher(type(array_to_image(np.zeros((2, 2, 3), np.uint8))), "/camera/color/image_raw",
                                         qos_profile_sensor_data)
        self.joints = node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.instr = node.create_publisher(String, "/neon/instruction", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.trajs, self.diags, self.commands, self.command_previews = [], [], [], []
        node.create_subscription(JointTrajectory, "/neon/joint_trajectory", self.trajs.append, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 10)
        node.create_subscription(JointState, "/neon/joint_command", self.commands.append, 100)
        node.create_subscription(JointState, "/neon/joint_command_preview", self.command_previews.append, 100)
        self.camera_on = self.joints_on = True
        self.img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        node.create_timer(1 / 30, self.tick)
        self.instr.publish(String(data="pick up the red block"))

    def tick(self):
        if self.camera_on:
            self.cam.publish(array_to_image(self.img))
        if not self.joints_on:
            return
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
    if started:
        thread.join(timeout=5)
    for n in nodes:
        n.destroy_node()
    rclpy.try_shutdown()


def test_trajectory_from_synthetic_g1_topics_and_watchdog(graph, checkpoint):
    neon = graph(make_node("neon_test", model=str(checkpoint), dry_run=False, rate_hz=5.0))
    sim = G1Sim(graph(rclpy.create_node("g1_sim")), [n for n in neon.space.names])
    assert wait_for(lambda: len(sim.trajs) >= 2), [d.status[0].message for d in sim.diags[-3:]]
    msg = sim.trajs[-1]
    space = neon.space
    assert list(msg.joint_names) == space.names and 1 <= len(msg.points) <= 16  # steps already past are dropped
    pos = np.array([p.positions for p in msg.points])
    assert (pos >= space.lower - 1e-5).all() and (pos <= space.upper + 1e-5).all()
    t = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])
    assert 0 < t[0] <= 1 / 30 and np.allclose(np.diff(t), 1 / 30, atol=1e-6)  # from now: past steps are dropped
    ok = [d for d in sim.diags if d.status[0].level == b"\x00"]
    assert ok and any(v.key == "observation_age_ms" for v in ok[-1].status[0].values)
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
    ckpt = as_trained(NeonVLA(cfg)).save_pretrained(tmp_path / "wb")
    neon = graph(make_node("neon_wb", model=str(ckpt), dry_run=False, rate_hz=5.0))
    sim = G1Sim(graph(rclpy.create_node("g1_sim_wb")), [n for n in neon.space.names if n not in ("vx", "vy", "yaw_rate")])
    twists = []
    sim.node.create_subscription(Twist, "/neon/cmd_vel", twists.append, 10)
    mic = sim.node.create_publisher(Int16MultiArray, "/neon/audio", qos_profile_sensor_data)
    sim.node.create_timer(0.1, lambda: mic.publish(Int16MultiArray(data=[100, -100] * 800)))
    assert wait_for(lambda: len(sim.trajs) >= 1 and len(twists) >= 1 and neon.latest["audio"].value is not None)
    assert len(sim.trajs[-1].joint_names) == 43 and "vx" not in sim.trajs[-1].joint_names
    # The first command is acceleration-limited from the command in force (zero): 1 (m/s)/s over at most 1/30 s.
    first = twists[0]
    assert max(abs(first.linear.x), abs(first.linear.y), abs(first.angular.z)) <= 1.0 / 30 + 1e-6
    assert neon.command[0] == pytest.approx(twists[-1].linear.x)  # the command in force, fed back as the state
    sim.camera_on = False  # the watchdog trips: a zero Twist stops the walking
    assert wait_for(lambda: len(twists) > 1 and twists[-1].linear.x == twists[-1].angular.z == 0.0
                    and not neon.command.any())
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
    assert neon.pub_twist is None  # arms_only: no /neon/cmd_vel at all
    assert "/neon/cmd_vel" not in dict(neon.get_publisher_names_and_types_by_node("neon_dry", "/"))


def test_untrained_heads_never_move_the_robot(graph):
    """Fresh heads on a backbone (no checkpoint): dry run whatever the dry_run parameter, and diagnostics say why."""
    neon = graph(make_node("neon_fresh", backbone="neon-tiny/qwen2.5-vl", dry_run=False, rate_hz=5.0))
    sim = G1Sim(graph(rclpy.create_node("g1_sim_fresh")), neon.space.names)
    previews = []
    sim.node.create_subscription(JointTrajectory, "/neon/joint_trajectory_preview", previews.append, 10)
    assert wait_for(lambda: len(previews) >= 2)
    assert sim.trajs == [] and neon.policy.metadata()["dry_run"] is True
    assert any("untrained" in d.status[0].message for d in sim.diags)


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
        assert 1 <= len(sim.trajs[-1].points) <= 16 and neon.source.startswith("remote")  # past steps dropped
    runner.close()


def test_message_conversions():
    img = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(image_to_array(array_to_image(img)), img)
    bgr = array_to_image(img[..., ::-1].copy())
    bgr.encoding = "bgr8"
    assert np.array_equal(image_to_array(bgr), img)
    pts = np.random.default_rng(2).normal(size=(100, 4)).astype(np.float32)
    assert np.allclose(cloud_to_array(array_to_cloud(pts)), pts)


def load_launch_file():
    """The launch file as a module: its `commands()` is the description `ros2 launch` wraps."""
    import importlib.util

    path = ROOT / "ros2_ws" / "src" / "neon_bringup" / "launch" / "g1.launch.py"
    spec = importlib.util.spec_from_file_location("g1_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_file_and_params_match_the_node():
    from neon_runtime.g1.cli import build_parser

    pkg = ROOT / "ros2_ws" / "src" / "neon_bringup"
    launch = load_launch_file()
    params_file = str(pkg / "config" / "g1.yaml")
    declared = {name: (default, kind) for name, default, kind, _ in launch.ARGUMENTS}
    for arg in ("model", "backbone", "mode", "rate_hz", "server_url", "token_file", "dry_run", "camera_topic",
                "joint_states_topic", "instruction_topic", "lidar_topic", "audio_topic"):
        assert arg in declared, arg
    assert declared["dry_run"][0] == "true"
    # Every node argument is a node parameter of the node's own type (`model:=2024` stays a string).
    for name, (_, kind) in declared.items():
        assert kind == type(PARAMETERS[name]).__name__, (name, kind, PARAMETERS[name])
    argv = launch.commands({"model": "2024", "rate_hz": "5"}, params_file)
    node = argv["neon"]
    assert node[:6] == ["neon-ros", "--ros-args", "-r", "__node:=neon", "--params-file", params_file]
    given = dict(node[i + 1].split(":=", 1) for i in range(6, len(node), 2))
    assert given["model"] == '"2024"' and given["rate_hz"] == "5.0" and given["dry_run"] == "true"
    assert set(given) == set(declared)
    # The bridge: every flag the launch file and g1.yaml give is one neon-g1 accepts, with the value it means.
    bridge = build_parser().parse_args(argv["neon_g1"][1:])
    assert bridge.ros and not bridge.engage and bridge.interface == "eth0" and bridge.domain == 0
    assert bridge.rate_hz == 250.0 and bridge.max_vel == 2.0 and bridge.ramp_in_s >= 1 and bridge.ramp_out_s >= 2
    assert bridge.trajectory_topic == "/neon/joint_trajectory" and bridge.joint_states_topic == "/joint_states"
    # Moving the robot takes both dry_run:=false and engage:=true.
    for dry_run, engage, moves in (("true", "true", False), ("false", "false", False), ("false", "true", True)):
        bridge_argv = launch.commands({"dry_run": dry_run, "engage": engage}, params_file)["neon_g1"]
        assert ("--engage" in bridge_argv) == moves, (dry_run, engage)
    for bad in ({"dry_run": "yes"}, {"dds_domain": "zero"}, {"rate_hz": "fast"}, {"no_such_argument": "1"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            launch.commands(bad, params_file)
    source = (pkg / "launch" / "g1.launch.py").read_text()
    # Either process's death ends the launch; both are found on PATH by absolute path, or the launch says why.
    assert "on_exit=Shutdown(" in source and "shutil.which(name)" in source and "not on PATH" in source
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


def test_chunks_are_anchored_on_the_freshest_state_at_publish_time(graph, checkpoint):
    """A chunk that comes back late loses its past steps, starts from where the robot is now, and is not
    published at all once its observation is older than the policy's limit."""
    neon = graph(make_node("neon_anchor", model=str(checkpoint), dry_run=False, rate_hz=0.001))
    sim = G1Sim(graph(rclpy.create_node("g1_sim_anchor")), neon.space.names)
    assert wait_for(lambda: neon.latest["joints"].value is not None and neon.latest["image"].value is not None)
    time.sleep(0.2)
    before = len(sim.trajs)
    elbow = neon.space.index("left_elbow")
    actions = np.zeros((16, neon.space.dim), np.float32)
    actions[:, elbow] = 1.0  # where the model wanted the elbow, from a state it saw 0.2 s ago
    reply = {"actions": actions, "dry_run": False, "safety": {"rate_limited": 0, "notes": []}, "speech": ""}
    neon._publish(reply, time.time() - 0.2)
    assert wait_for(lambda: len(sim.trajs) > before)
    msg = sim.trajs[-1]
    t = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])
    assert len(msg.points) in (9, 10) and 0 < t[0] <= 1 / 30 + 1e-3  # steps 1..6 (0.2 s, a 7th if slow) are past
    first = msg.points[0].positions[list(msg.joint_names).index("left_elbow")]
    assert 0 < first <= 2.0 * t[0] + 1e-4  # 2 rad/s from the current joint state (0), over the first step's time
    diags = len(sim.diags)
    neon._publish(reply, time.time() - 0.6)  # older than the policy's 0.5 s
    assert wait_for(lambda: any("not published" in d.status[0].message and "old at publish time" in d.status[0].message
                                for d in sim.diags[diags:]))
    assert len(sim.trajs) == before + 1


def neon_ros(**params) -> subprocess.Popen:
    """A real `neon-ros` process (python -m, so the test does not depend on PATH), on this test's DDS domain."""
    args = [sys.executable, "-m", "neon_runtime.ros.node", "--ros-args"]
    for k, v in params.items():
        args += ["-p", f"{k}:={v}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_neon_ros_stops_cleanly_on_sigterm_and_sigint(graph, tmp_path, sig):
    from geometry_msgs.msg import Twist

    cfg = tiny_config("neon-tiny/qwen2.5-vl", "whole_body")
    cfg.backbone.load_in_4bit = False
    ckpt = as_trained(NeonVLA(cfg)).save_pretrained(tmp_path / "wb")
    listener = graph(rclpy.create_node(f"listener_{sig}"))
    twists, diags = [], []
    listener.create_subscription(Twist, "/neon/cmd_vel", twists.append, 10)
    listener.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    proc = neon_ros(model=ckpt, rate_hz=5.0)
    try:
        assert wait_for(lambda: any("no message yet" in d.status[0].message for d in diags), 90), proc.poll()
        proc.send_signal(sig)  # how systemd (SIGTERM) and ros2 launch (SIGINT, then SIGTERM) stop it
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "ExternalShutdownException" not in out, out
    assert wait_for(lambda: any(d.status[0].message.startswith("stopped") for d in diags), 10)
    assert twists and (twists[-1].linear.x, twists[-1].linear.y, twists[-1].angular.z) == (0.0, 0.0, 0.0)


def test_neon_ros_that_cannot_start_exits_with_the_reason(checkpoint):
    r = neon_ros(model=checkpoint, mode="whole_body")  # an arms_only model
    out, _ = r.communicate(timeout=120)
    assert r.returncode == 2 and "cannot start" in out and "mode parameter is 'whole_body'" in out, out


def test_the_token_is_never_a_parameter_any_node_could_read(monkeypatch, tmp_path):
    """neon-ros takes the server's token from token_file or $NEON_TOKEN only (a `token` parameter was readable by
    every node through /neon/get_parameters)."""
    import neon_runtime.client as client
    from neon_runtime.ros.node import make_policy

    assert "token" not in PARAMETERS
    seen = []
    monkeypatch.setattr(client, "RemotePolicy", lambda url, token, **kw: seen.append(token) or object())
    p = {**PARAMETERS, "server_url": "ws://127.0.0.1:1/ws"}
    monkeypatch.setenv("NEON_TOKEN", "from-env")
    make_policy(p, None)
    (tmp_path / "token.env").write_text("NEON_TOKEN=from-file\n")
    make_policy({**p, "token_file": str(tmp_path / "token.env")}, None)
    monkeypatch.delenv("NEON_TOKEN")
    make_policy(p, None)
    assert seen == ["from-env", "from-file", None]


def test_token_file_connects_node_and_server_processes(graph, checkpoint, tmp_path):
    """neon-serve and neon-ros started as the systemd units start them, sharing one token file, on loopback."""
    import socket

    import httpx

    token = tmp_path / "token.env"
    token.write_text("NEON_TOKEN=s3cret-fleet-token\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "neon_runtime.cli", "--model", str(checkpoint), "--port", str(port),
                               "--token-file", str(token), "--dry-run", "--log-level", "warning"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = None
    try:
        assert wait_for(lambda: _ready(httpx, port), 120), server.poll()
        assert httpx.get(f"http://127.0.0.1:{port}/metadata").status_code == 401
        wrong = tmp_path / "wrong.env"
        wrong.write_text("not-the-token\n")
        refused = neon_ros(server_url=f"ws://127.0.0.1:{port}/ws", token_file=wrong)
        out, _ = refused.communicate(timeout=120)
        assert refused.returncode == 2 and "needs a token" in out, out
        # The node asks to execute; the server is in --dry-run: previews only, across processes.
        node = neon_ros(server_url=f"ws://127.0.0.1:{port}/ws", token_file=token, rate_hz=5.0, dry_run="false")
        sim = G1Sim(graph(rclpy.create_node("g1_sim_token")), [j.name for j in NeonVLA.from_pretrained(checkpoint)
                                                                .action_space.joints])
        previews = []
        sim.node.create_subscription(JointTrajectory, "/neon/joint_trajectory_preview", previews.append, 10)
        assert wait_for(lambda: len(previews) >= 2, 120), [d.status[0].message for d in sim.diags[-3:]]
        assert sim.trajs == [] and any("dry-run mode" in d.status[0].message for d in sim.diags)
    finally:
        for p in (node, server):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)
    units = {name: (ROOT / "launch" / name).read_text() for name in ("neon-serve.service", "neon-ros.service")}
    assert "EnvironmentFile=-/etc/neon/token.env" in units["neon-serve.service"]
    assert "token_file:=/etc/neon/token.env" in units["neon-ros.service"]


def _ready(httpx, port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _reply(space, joint: str, value: float) -> dict:
    """An executable 16-step chunk that puts one joint at `value` (all the others at 0), as a policy replies."""
    actions = np.zeros((16, space.dim), np.float32)
    actions[:, space.index(joint)] = value
    return {"actions": actions, "dry_run": False, "safety": {"rate_limited": 0, "notes": []}, "speech": ""}


def _velocities(msgs, joint: str, since: float) -> np.ndarray:
    """rad/s between consecutive JointState commands stamped after `since` (ROS time, s)."""
    stamp = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in msgs])
    q = np.array([m.position[list(m.name).index(joint)] for m in msgs])
    keep = stamp >= since
    return np.diff(q[keep]) / np.diff(stamp[keep])


@pytest.mark.parametrize("blend_s", [0.0, 0.3])
def test_command_stream_hands_over_through_the_executor(graph, checkpoint, blend_s):
    """control_hz streams the executor's target: a new chunk takes over from the one in force over blend_s (a
    min-jerk blend: here under 1 rad/s), or at once at blend_s 0 (the speed limit, 2 rad/s, is all that smooths it);
    every command within the speed limit of the one before."""
    neon = graph(make_node(f"neon_cmd_{int(blend_s * 10)}", model=str(checkpoint), dry_run=False, rate_hz=0.001,
                           control_hz=50.0, blend_s=blend_s))
    neon.scheduler.last_s = time.monotonic()  # rate_hz 0.001: its first request is 1000 s away
    sim = G1Sim(graph(rclpy.create_node(f"g1_sim_cmd_{int(blend_s * 10)}")), neon.space.names)
    assert wait_for(lambda: neon.latest["joints"].value is not None and neon.latest["image"].value is not None)
    with neon._busy:  # and no request-ahead either: the test hands the node its chunks
        neon._publish(_reply(neon.space, "left_elbow", 0.3), time.time())
        time.sleep(0.7)  # 0.3 rad at <= 2 rad/s, then held (the chunk lasts 0.53 s; max_chunk_age_s is 1)
        elbow = [m.position[list(m.name).index("left_elbow")] for m in sim.commands]
        assert elbow[-1] == pytest.approx(0.3, abs=1e-4)
        handover = neon.get_clock().now().nanoseconds * 1e-9
        neon._publish(_reply(neon.space, "left_elbow", 0.2), time.time())
        n = len(sim.commands)
        assert wait_for(lambda: len(sim.commands) >= n + 30)
    v = np.abs(_velocities(sim.commands, "left_elbow", handover - 0.1))
    assert v.max() <= 2.0 * 1.05  # the speed limit, from the last command, at the control rate
    if blend_s:
        assert v.max() < 1.0  # 0.1 rad over 0.3 s of min-jerk: 0.63 rad/s at most
    else:
        assert v.max() > 1.5  # a 0.1 rad jump, taken at the speed limit
    assert neon.chunk_executor.accepted == 2 and sim.command_previews == []


def test_a_hung_policy_trips_the_watchdog_while_its_request_is_in_flight(graph, checkpoint):
    """The policy stops answering mid-request: diagnostics turn ERROR naming the wait, the command stream stops and
    nothing more is published, though the worker is still busy (before, the watchdog ran only while it was idle);
    when replies come again the node resumes by itself."""
    neon = graph(make_node("neon_hang", model=str(checkpoint), dry_run=False, rate_hz=5.0, control_hz=50.0,
                           max_chunk_age_s=0.5))
    sim = G1Sim(graph(rclpy.create_node("g1_sim_hang")), neon.space.names)
    assert wait_for(lambda: len(sim.trajs) >= 2 and len(sim.commands) > 10)
    gate, infer = threading.Event(), neon.policy.infer

    def hung(*args, **kwargs):
        gate.wait(30)
        return infer(*args, **kwargs)

    neon.policy.infer = hung
    assert wait_for(lambda: any(d.status[0].level == b"\x02" and "no reply from the policy" in d.status[0].message
                                for d in sim.diags[-5:]), 10)
    assert neon._busy.locked()  # still waiting on the hung request
    time.sleep(0.2)
    trajs, commands = len(sim.trajs), len(sim.commands)
    time.sleep(0.6)
    assert len(sim.trajs) == trajs and len(sim.commands) == commands  # nothing moves the robot meanwhile
    neon.policy.infer = infer
    gate.set()
    assert wait_for(lambda: len(sim.trajs) > trajs + 1, 10)  # the late reply is too old to publish; the next ones are


def test_command_stream_stops_on_stale_state_and_restarts_from_the_measured_pose(graph, checkpoint):
    """No commands while joint_states is stale or the newest chunk is older than max_chunk_age_s; after a watchdog
    trip the next chunk starts from the measured pose (not from the chunk of before). Dry run: preview topic only."""
    neon = graph(make_node("neon_cmd_stale", model=str(checkpoint), dry_run=False, rate_hz=0.001, control_hz=50.0,
                           max_chunk_age_s=0.6))
    neon.scheduler.last_s = time.monotonic()  # rate_hz 0.001: its first request is 1000 s away
    sim = G1Sim(graph(rclpy.create_node("g1_sim_cmd_stale")), neon.space.names)
    assert wait_for(lambda: neon.latest["joints"].value is not None and neon.latest["image"].value is not None)
    with neon._busy:
        time.sleep(0.3)
        assert sim.commands == [] and neon.published == 0  # nothing streamed before the first executable chunk
        neon._publish(_reply(neon.space, "left_elbow", 0.3), time.time())
        assert wait_for(lambda: len(sim.commands) >= 5)
        first = sim.commands[0].position[list(sim.commands[0].name).index("left_elbow")]
        assert 0 < first <= 2.0 * 0.04 + 1e-6  # from the measured 0, at the speed limit over at most 2 control periods
        assert wait_for(lambda: neon.chunk_executor.age(time.monotonic()) > 0.7, timeout=5)
        time.sleep(0.1)
        n = len(sim.commands)
        time.sleep(0.3)
        assert len(sim.commands) == n  # the chunk is too old: the robot holds its own last command
        neon._publish(_reply(neon.space, "left_elbow", 0.3), time.time())
        assert wait_for(lambda: len(sim.commands) > n + 5)
        sim.joints_on = False  # joint_states goes silent
        assert wait_for(lambda: neon._problems() != [], timeout=5)
        time.sleep(0.1)
        n = len(sim.commands)
        time.sleep(0.4)
        assert len(sim.commands) == n and neon._restart
        sim.joints_on = True
        assert wait_for(lambda: neon._problems() == [])
        neon._publish(_reply(neon.space, "left_elbow", 0.3), time.time())
        assert wait_for(lambda: len(sim.commands) > n + 3)
    first = sim.commands[n].position[list(sim.commands[n].name).index("left_elbow")]
    assert 0 < first <= 2.0 * 0.04 + 1e-6  # from the measured 0 again (not from the held 0.3), one bounded step


def test_dry_run_streams_previews_and_untrained_heads_stream_nothing(graph, checkpoint):
    neon = graph(make_node("neon_cmd_dry", model=str(checkpoint), rate_hz=5.0, control_hz=30.0))  # dry_run default
    sim = G1Sim(graph(rclpy.create_node("g1_sim_cmd_dry")), neon.space.names)
    assert wait_for(lambda: len(sim.command_previews) >= 5)
    assert sim.commands == [] and sim.trajs == []
    fresh = graph(make_node("neon_cmd_fresh", backbone="neon-tiny/qwen2.5-vl", dry_run=False, rate_hz=5.0,
                            control_hz=30.0, joint_states_topic="/joint_states"))
    assert wait_for(lambda: fresh.published >= 2)  # previews of chunks that must not run
    time.sleep(0.3)
    assert fresh.chunk_executor.accepted == 0 and fresh.chunk_executor.refused >= 2 and fresh.commanded == 0
    assert sim.commands == []


def test_two_rate_control_in_the_node(graph, checkpoint):
    """heads_hz: the heads re-run on fresh joint state many times per backbone pass; the chunks say the features
    were reused, and request-ahead plans on the measured latency."""
    neon = graph(make_node("neon_two_rate", model=str(checkpoint), dry_run=False, rate_hz=2.0, heads_hz=20.0,
                           control_hz=30.0))
    sim = G1Sim(graph(rclpy.create_node("g1_sim_two_rate")), neon.space.names)
    assert wait_for(lambda: neon.published >= 12), [d.status[0].message for d in sim.diags[-3:]]
    # Before the first backbone pass lands the heads have nothing to run on: a warning that says so, not an error.
    assert not any("FeaturesUnavailable" in d.status[0].message for d in sim.diags)
    assert all(d.status[0].level == b"\x01" for d in sim.diags if "first backbone features" in d.status[0].message)
    refreshes = neon.runner.refreshes
    assert 1 <= refreshes <= neon.published / 3  # backbone passes: a few; heads passes: many
    ok = [d.status[0] for d in sim.diags if d.status[0].level == b"\x00"]
    assert any(dict((v.key, v.value) for v in st.values)["features"] == "reused" for st in ok)
    assert len(sim.commands) > 10 and neon.latency.estimate() > 0


@pytest.mark.parametrize("bad, match", [({"heads_hz": 5.0}, "heads_hz must be 0 .off. or 10..1000"),
                                        ({"heads_hz": 30.0, "rate_hz": 0.0}, "rate_hz must be > 0"),
                                        ({"control_hz": 2.0}, "control_hz must be 0"),
                                        ({"blend_s": -0.1}, "blend_s must be a finite number"),
                                        ({"rate_hz": -1.0}, "rate_hz must be a finite number >= 0"),
                                        ({"request_ahead_steps": -1}, "request_ahead_steps must be >= 0")])
def test_bad_scheduling_parameters_are_refused(graph, bad, match):
    with pytest.raises(ValueError, match=match):
        make_node("neon_bad", backbone="neon-tiny/qwen2.5-vl", **bad)


def test_prefix_conditioned_model_in_the_node(graph, tmp_path):
    """A model trained with committed steps is sent the ones that run while its request is under way, end to end:
    the replies' committed_steps follow the measured latency."""
    cfg = tiny_config("neon-tiny/qwen2.5-vl", prefix_max_steps=6)
    cfg.backbone.load_in_4bit = False
    ckpt = as_trained(random_weights(NeonVLA(cfg), 1)).save_pretrained(tmp_path / "prefix")
    neon = graph(make_node("neon_prefix", model=str(ckpt), dry_run=False, rate_hz=10.0))
    # Round trips as a GPU server across a network might take (200 ms): here a tiny model's can be under one 33 ms
    # step, and then nothing is committed. 20 of them keep the p90 estimate at 0.2 s over the replies below.
    for _ in range(20):
        neon.latency.add(0.2)
    sim = G1Sim(graph(rclpy.create_node("g1_sim_prefix")), neon.space.names)
    assert wait_for(lambda: neon.published >= 6), [d.status[0].message for d in sim.diags[-3:]]
    ok = [dict((v.key, v.value) for v in d.status[0].values) for d in sim.diags if d.status[0].level == b"\x00"]
    committed = [int(v["committed_steps"]) for v in ok]
    assert committed[0] == 0 and max(committed) >= 1  # none before a chunk is in force; then the latency's steps
    latency_steps = int(neon.latency.estimate() * neon.fps)
    assert max(committed) <= min(6, latency_steps + 1)
