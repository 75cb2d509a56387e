"""Reaction latency, two-rate vs chunk-rate: from a joint-state step to the first command that reflects it
(a benchmark, not a test).

    .venv/bin/python bench/bench_two_rate.py [--trials 30] [--feature-hz 5] [--control-hz 30]

A simulated robot holds a mid-range pose and, at random moments (every 0.9-1.4 s), steps its arm joints by
--step-rad. A controller asks the policy for chunks; a reply "reflects" a step when its first command is
nearer the new pose than the old one on the stepped joints (the chunk is anchored to the state it was given,
and the safety layer keeps its first step within one step's velocity limit of that state). Latency: step time
to the arrival of the first reflecting reply, p50/p99 over --trials steps. Four rows, one run, on the tiny VL
backbone with standard heads (random weights: timing only) and a 224x224x3 frame from a 30 Hz camera:

  chunk-rate   a full request (image + instruction + state) at --chunk-hz, as neon-ros runs today
  two-rate     TwoRateRunner: features refreshed at --feature-hz from the newest frame; heads at --control-hz

each in-process (LocalPolicy) and over the wire (RemotePolicy against neon-serve on loopback: full requests,
then light `reuse_features` requests), printed side by side with the chunk-rate / two-rate ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
import torch
from serving import serve

from neon.model import NeonVLA
from neon.policy import NeonPolicy
from neon.presets import model_config
from neon_runtime.client import RemotePolicy
from neon_runtime.policy import LocalPolicy, PolicyRunner
from neon_runtime.safety import SafetyConfig
from neon_runtime.server import ServerSettings, create_app
from neon_runtime.two_rate import TwoRateRunner

INSTRUCTION = "pick up the red block"
FRAME = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)


class Robot:
    """A pose that steps between two values on the stepped joints; `steps` records (monotonic time, new pose)."""

    def __init__(self, space, step_rad: float):
        self.poses = [((space.lower + space.upper) / 2).astype(np.float32)]
        arms = np.array([j.group == "arms" for j in space.joints]) & (space.upper - self.poses[0] > 2 * step_rad)
        self.moved = np.flatnonzero(arms)
        self.poses.append(self.poses[0].copy())
        self.poses[1][self.moved] += step_rad
        self.pose, self.steps = 0, []

    def state(self) -> np.ndarray:
        return self.poses[self.pose]

    def step(self) -> None:
        self.pose = 1 - self.pose
        self.steps.append((time.monotonic(), self.pose))

    def reflects(self, first_command: np.ndarray, pose: int) -> bool:
        a = first_command[self.moved]
        return np.abs(a - self.poses[pose][self.moved]).mean() < np.abs(a - self.poses[1 - pose][self.moved]).mean()


def control(call, rate_hz: float, robot: Robot, stop: threading.Event, replies: list) -> None:
    """Ask `call(state, timestamp)` for a chunk at `rate_hz` (back to back when a call takes longer)."""
    next_at = time.monotonic()
    while not stop.is_set():
        reply = call(robot.state(), time.time())
        replies.append((time.monotonic(), np.asarray(reply["actions"])[0]))
        next_at = max(next_at + 1.0 / rate_hz, time.monotonic())
        stop.wait(next_at - time.monotonic())


def camera(observe, stop: threading.Event, rate_hz: float = 30.0) -> None:
    while not stop.wait(1.0 / rate_hz):
        observe(FRAME, INSTRUCTION, timestamp=time.time())


def measure(call, rate_hz: float, robot: Robot, trials: int, rng: random.Random) -> tuple[list[float], int]:
    """Latencies (s) from each step to the first reply reflecting it; and how many steps none reflected."""
    stop, replies = threading.Event(), []
    robot.steps.clear()
    thread = threading.Thread(target=control, args=(call, rate_hz, robot, stop, replies), daemon=True)
    thread.start()
    time.sleep(1.0)  # settle
    for _ in range(trials):
        robot.step()
        time.sleep(rng.uniform(0.9, 1.4))
    stop.set()
    thread.join()
    latencies, missed = [], 0
    ends = [t for t, _ in robot.steps[1:]] + [float("inf")]
    for (t_step, pose), t_next in zip(robot.steps, ends, strict=True):
        hit = next((t for t, a in replies if t_step < t < t_next and robot.reflects(a, pose)), None)
        if hit is None:
            missed += 1
        else:
            latencies.append(hit - t_step)
    return latencies, missed


def two_rate(policy, feature_hz: float, control_hz: float, robot: Robot, trials: int, rng: random.Random):
    stop = threading.Event()
    with TwoRateRunner(policy, feature_hz) as runner:
        runner.observe(FRAME, INSTRUCTION, timestamp=time.time(), state=robot.state())
        runner.wait_for_features(60)
        cam = threading.Thread(target=camera, args=(runner.observe, stop), daemon=True)
        cam.start()
        try:
            return measure(lambda s, t: runner.heads(s, timestamp=t), control_hz, robot, trials, rng)
        finally:
            stop.set()
            cam.join()


def chunk_rate(infer, chunk_hz: float, robot: Robot, trials: int, rng: random.Random):
    full = lambda s, t: infer({"image": FRAME, "instruction": INSTRUCTION, "state": s, "timestamp": t})
    return measure(full, chunk_hz, robot, trials, rng)


def row(name: str, result: tuple[list[float], int]) -> tuple[float, float]:
    lat, missed = result
    p50, p99 = (float(np.percentile(np.asarray(lat) * 1e3, q)) for q in (50, 99))
    print(f"  {name:<34} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   ({len(lat)} steps, {missed} missed)")
    return p50, p99


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--feature-hz", type=float, default=5.0)
    ap.add_argument("--control-hz", type=float, default=30.0)
    ap.add_argument("--chunk-hz", type=float, default=5.0, help="neon-ros's rate_hz")
    ap.add_argument("--step-rad", type=float, default=0.25)
    args = ap.parse_args()
    cfg = model_config("neon-tiny/qwen2.5-vl", "arms_only")
    cfg.backbone.load_in_4bit = False
    model = NeonVLA(cfg).load_backbone()
    model.trained_steps = 1  # random heads stand in for trained ones: timing only
    # Velocity limit as deployed (2 rad/s); observation age relaxed so a loaded machine times, not refuses.
    safety = SafetyConfig(max_observation_age_s=2.0)
    local = LocalPolicy(NeonPolicy(model), safety, "bench")
    local.warm_up()
    robot, rng = Robot(model.action_space, args.step_rad), random.Random(0)
    print(f"# tiny VL backbone, standard heads, 224x224x3 frame at 30 Hz, torch {torch.__version__} on "
          f"{model.device} ({torch.get_num_threads()} threads); {args.trials} steps of {args.step_rad} rad on "
          f"{len(robot.moved)} arm joints per row")
    print(f"# chunk-rate: full request at {args.chunk_hz:g} Hz; two-rate: features at {args.feature_hz:g} Hz, "
          f"heads at {args.control_hz:g} Hz")
    results = {}
    print("in-process (LocalPolicy)")
    results["local", "chunk"] = row(f"chunk-rate ({args.chunk_hz:g} Hz full)",
                                    chunk_rate(local.infer, args.chunk_hz, robot, args.trials, rng))
    results["local", "two"] = row(f"two-rate ({args.control_hz:g} Hz heads)",
                                  two_rate(local, args.feature_hz, args.control_hz, robot, args.trials, rng))
    runner = PolicyRunner(local, max_batch=8, max_wait_ms=5)
    runner.warm_up()
    with serve(create_app(runner, ServerSettings())) as addr:
        print(f"over the wire (RemotePolicy -> neon-serve on {addr}, WebSocket msgpack)")
        remote = RemotePolicy(f"ws://{addr}/ws")
        results["wire", "chunk"] = row(f"chunk-rate ({args.chunk_hz:g} Hz full)",
                                       chunk_rate(remote.infer, args.chunk_hz, robot, args.trials, rng))
        results["wire", "two"] = row(f"two-rate ({args.control_hz:g} Hz light requests)",
                                     two_rate(remote, args.feature_hz, args.control_hz, robot, args.trials, rng))
        remote.close()
    runner.close()
    print("ratio chunk-rate / two-rate (higher: two-rate reacts sooner)")
    for where in ("local", "wire"):
        c, t = results[where, "chunk"], results[where, "two"]
        print(f"  {'in-process' if where == 'local' else 'over the wire':<14} p50 x{c[0] / t[0]:.1f}   "
              f"p99 x{c[1] / t[1]:.1f}")


if __name__ == "__main__":
    main()
