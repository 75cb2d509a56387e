"""Sensor-to-trajectory latency in the neon-ros node on the tiny backbone (a benchmark, not a test).

    .venv/bin/python bench/bench_ros.py [--seconds 15]

A second node plays the G1 (640x480 RGB camera and joint states at 30 Hz) on a
localhost-only DDS domain. For in-process inference and for the client of a
neon-serve on loopback, each chunk-rate (a full request at rate_hz 10, or
sooner by request-ahead) and two-rate (features at 5 Hz, heads at heads_hz 30
on the fresh joint state), it prints the node's own sensed-to-published
latency (from taking the observation to publishing the JointTrajectory; in
two-rate mode the observation is the joint state the heads ran on) and the age
of the camera frame it used, p50/p90, the trajectories per second, and the
JointState commands per second streamed at control_hz 50.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(10, 200)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from neon.model import NeonVLA
from neon.presets import model_config
from neon_runtime.ros.convert import array_to_image
from neon_runtime.ros.node import make_node


def run(params: dict, seconds: float, names: list[str]) -> dict:
    rclpy.init()
    ex = SingleThreadedExecutor()
    neon = make_node("neon_bench", **params)
    sim = rclpy.create_node("g1_bench")
    cam = sim.create_publisher(Image, "/camera/color/image_raw", qos_profile_sensor_data)
    js_pub = sim.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
    sim.create_publisher(String, "/neon/instruction", QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)).publish(
        String(data="pick up the red block"))
    latency, ages, trajs, commands = [], [], [], []
    sim.create_subscription(JointTrajectory, "/neon/joint_trajectory", trajs.append, 10)
    sim.create_subscription(JointState, "/neon/joint_command", commands.append, 100)

    def on_diag(msg):
        v = {kv.key: kv.value for kv in msg.status[0].values}
        if "observation_age_ms" in v:  # sensed (the older of camera and joints) -> published
            latency.append(float(v["observation_age_ms"]))
            ages.append(float(v["image_age_s"]) * 1e3)

    sim.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    frame = array_to_image(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    js = JointState(name=names, position=[0.0] * len(names))
    sim.create_timer(1 / 30, lambda: (cam.publish(frame), js_pub.publish(js)))
    ex.add_node(neon)
    ex.add_node(sim)
    t = threading.Thread(target=ex.spin, daemon=True)
    t.start()
    time.sleep(2.0)  # warm-up
    latency.clear(), ages.clear(), trajs.clear(), commands.clear()
    time.sleep(seconds)
    n, m = len(trajs), len(commands)
    for node in (neon, sim):
        ex.remove_node(node)
    ex.shutdown(timeout_sec=5)
    neon.destroy_node()
    sim.destroy_node()
    rclpy.try_shutdown()
    return {"latency": latency, "ages": ages, "rate": n / seconds, "commands": m / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    cfg = model_config("neon-tiny/qwen2.5-vl", "arms_only")
    cfg.backbone.load_in_4bit = False
    with tempfile.TemporaryDirectory() as tmp:
        model = NeonVLA(cfg)
        model.trained_steps = 1  # random heads standing in for trained ones (untrained heads are preview-only)
        ckpt = model.save_pretrained(Path(tmp) / "ckpt")
        names = NeonVLA(cfg).action_space.names
        chunk_rate = {"dry_run": False, "rate_hz": 10.0, "control_hz": 50.0}
        two_rate = {"dry_run": False, "rate_hz": 5.0, "heads_hz": 30.0, "control_hz": 50.0}
        rows = {"in-process": run({"model": str(ckpt), **chunk_rate}, args.seconds, names),
                "in-process two-rate": run({"model": str(ckpt), **two_rate}, args.seconds, names)}
        from serving import runner_for, serve

        from neon_runtime.server import ServerSettings, create_app

        runner = runner_for(NeonVLA.from_pretrained(ckpt).load_backbone(), max_batch=4, max_wait_ms=2)
        with serve(create_app(runner, ServerSettings())) as addr:
            url = f"ws://{addr}/ws"
            rows["neon-serve client"] = run({"server_url": url, **chunk_rate}, args.seconds, names)
            rows["client two-rate"] = run({"server_url": url, **two_rate}, args.seconds, names)
        runner.close()
    print(f"# neon-ros, tiny VL backbone, standard heads, 640x480 camera + joints at 30 Hz, {args.seconds:g} s per row;"
          " chunk-rate: rate_hz 10; two-rate: features 5 Hz, heads 30 Hz; control_hz 50")
    print(f"{'mode':20s} {'sensed->published p50/p90 ms':>30s} {'frame age p50/p90 ms':>22s} {'traj/s':>7s} "
          f"{'cmd/s':>6s}")
    for name, r in rows.items():
        lat, age = np.array(r["latency"]), np.array(r["ages"])
        print(f"{name:20s} {np.percentile(lat, 50):14.1f} / {np.percentile(lat, 90):6.1f}     "
              f"{np.percentile(age, 50):10.1f} / {np.percentile(age, 90):6.1f} {r['rate']:7.1f} {r['commands']:6.1f}")


if __name__ == "__main__":
    main()
