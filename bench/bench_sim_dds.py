"""Closed-loop success through the G1's own wire (DDS) against the direct path, on the same seeds (a benchmark: minutes).

    MUJOCO_GL=egl .venv/bin/python bench/bench_sim_dds.py [--episodes 20] [--seed 10000] [--model CKPT] [--out r.json]

Direct: `neon_sim.evaluate` steps the sim itself (a chunk's first 8 steps, each one frame; the sim stands still while a
request is under way). DDS: the simulated G1 (`neon_sim.dds_g1`) in real time on rt/lowstate and rt/arm_sdk (lo, a
random domain other than 0, multicast off), its head camera and instruction on ROS 2 (localhost, a random domain):

- oracle: an in-process commander plays the bridge, as tests/test_sim_dds.py does: at "ready" it ramps the arm_sdk
  weight in holding the start pose, streams the scripted expert's targets (planned on the same seed's scene, one frame
  ahead on the sim's clock, rt/lowstate's tick) with the sim's own gains until "finished", then ramps out;
- --model CKPT: neon-serve on loopback serves it; the direct path asks it through `evaluate("ws://...")`, and through
  DDS each episode gets a real `neon-g1 --server ws://... --engage` (its default gains, rates and limits; --no-hands:
  the sim has no Dex3), started at "ready" and stopped with SIGINT at "finished".

Success rates carry Wilson 95% intervals; "in direct CI" says whether the DDS rate lies inside the direct one's
interval; "t success": the median time to success (sim time; through DDS from the weight reaching 1).
Seconds per episode: the direct path's own; through DDS from "ready" to "released" (neon-g1's start-up, its weight
ramps and the 6 s episode in real time included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # before rclpy loads (the sim's ROS side)
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(10, 200)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from neon.action_space import BODY_JOINTS
from neon_runtime.unitree import dds
from neon_runtime.unitree.crc import fill_low_cmd_crc
from neon_runtime.unitree.idl import LowCmd_, LowState_
from neon_sim.collect import FPS
from neon_sim.dds_g1 import WEIGHT_SLOT, DdsG1, DdsG1Config
from neon_sim.evaluate import evaluate, wilson
from neon_sim.expert import Expert
from neon_sim.scene import KD, KP, G1Tabletop, sample_task

UPPER = [j for j in BODY_JOINTS if j.group in ("torso", "arms")]  # what rt/arm_sdk commands
ENGAGE_TIMEOUT_S = 30.0  # an episode whose bridge never engages ends after this (counted as a failure)
# neon-g1's own limits (rt/lowstate silent 0.1 s, no fresh chunk 0.5 s + 1 s holding) assume a robot computer that
# keeps its cores for the bridge; on a shared 2-core machine that also runs the sim and neon-serve, scheduling alone
# trips them. Appended to neon-g1's argv unless --bridge-args says otherwise ("" for neon-g1's defaults).
LOADED_MACHINE = "--state-stale-s 0.5 --max-chunk-age-s 1.0 --hold-s 2.0"


# ------------------------------------------------------------------------------------------- the oracle over DDS
class ExpertCommander:
    """Plays the bridge for the scripted expert: rt/lowstate in, LowCmd_ on rt/arm_sdk (CRC filled) out."""

    def __init__(self, domain: int, rate_hz: float = 100.0):
        participant = dds.loopback(domain)
        self.arm_sdk, self.lowstate = dds.writer(participant, "rt/arm_sdk"), dds.reader(participant, "rt/lowstate")
        self.period, self.state = 1.0 / rate_hz, None

    def poll(self, timeout: float = 10.0) -> LowState_:
        """The newest LowState_ (waiting for a first one)."""
        deadline = time.monotonic() + timeout
        while True:
            got = [s for s in self.lowstate.take(N=64) if isinstance(s, LowState_)]
            if got:
                self.state = got[-1]
            if self.state is not None:
                return self.state
            if time.monotonic() > deadline:
                raise TimeoutError(f"no rt/lowstate within {timeout:g} s")
            time.sleep(0.005)

    def send(self, weight: float, targets: dict[str, float]) -> None:
        cmd = LowCmd_(mode_machine=self.state.mode_machine)
        cmd.motor_cmd[WEIGHT_SLOT].q = weight
        for joint in UPPER:
            m = cmd.motor_cmd[joint.sdk_index]
            m.mode, m.q, m.kp, m.kd = 1, float(targets[joint.name]), KP, KD
        fill_low_cmd_crc(cmd)
        self.arm_sdk.write(cmd)

    def ramp(self, seconds: float, weight, targets: dict[str, float]) -> None:
        """Send for `seconds`, the weight a function of the time since the start, ending on weight(seconds)."""
        t0 = time.monotonic()
        while (t := time.monotonic() - t0) < seconds:
            self.poll()
            self.send(weight(t), targets)
            time.sleep(self.period)
        self.send(weight(seconds), targets)

    def episode(self, sim: DdsG1, seed: int) -> None:
        """Ramp in (0.4 s), the expert's targets at weight 1 until "finished", ramp out (0.3 s)."""
        scene = G1Tabletop(sample_task(np.random.default_rng(seed)))
        expert, space = Expert(scene), scene.space
        arms = [j.name for j in UPPER if j.group == "arms"]
        state = self.poll()
        start = {j.name: state.motor_state[j.sdk_index].q for j in UPPER}
        self.ramp(0.4, lambda t: min(1.0, t / 0.4), start)
        tick0, goal = self.poll().tick, start
        while True:
            t = (self.poll().tick - tick0) / 1e3  # the sim's clock since weight 1 (ms of simulated time)
            q = expert.targets(t + 1.0 / FPS)
            goal = {**start, **{name: float(q[space.index(name)]) for name in arms}}
            self.send(1.0, goal)
            try:
                if sim.next_event(("finished",), self.period).kind == "finished":
                    break
            except TimeoutError:
                pass
        self.ramp(0.3, lambda t: max(0.0, 1.0 - t / 0.3), goal)
        scene.close()


def oracle_over_dds(episodes: int, seed: int, domain: int) -> dict:
    sim = DdsG1(DdsG1Config(domain=domain, seed=seed, episodes=episodes, ros=False)).start()
    commander, walls = ExpertCommander(domain), []
    try:
        for _ in range(episodes):
            ready = sim.next_event(("ready",), 60)
            t0 = time.monotonic()
            commander.episode(sim, ready.seed)
            sim.next_event(("released",), 30)
            walls.append(time.monotonic() - t0)
    finally:
        sim.stop()
    report = sim.join(timeout=60)
    report["wall_s_per_episode"] = float(np.mean(walls)) if walls else None
    return report


# --------------------------------------------------------------------------------------- a served policy over DDS
class Bridge:
    """A real `neon-g1 --server ... --engage` process, its output collected line by line."""

    FLAGS = ("--engage", "--no-hands", "--ramp-in-s", "1.0")  # the sim has no Dex3; a short ramp saves wall time

    def __init__(self, url: str, domain: int, instruction: str, extra: list[str]):
        argv = [sys.executable, "-m", "neon_runtime.g1.cli", "--server", url, "--interface", "lo", "--domain",
                str(domain), "--instruction", instruction, *self.FLAGS, *extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.proc.kill()
            self._reader.join(timeout=10)

    def line(self, prefix: str) -> str:
        return next((ln.strip() for ln in reversed(self.lines) if ln.startswith(prefix)), "")


def policy_over_dds(url: str, episodes: int, seed: int, domain: int, extra: list[str]) -> dict:
    sim = DdsG1(DdsG1Config(domain=domain, seed=seed, episodes=episodes, engage_timeout_s=ENGAGE_TIMEOUT_S)).start()
    walls, bridges = [], []
    try:
        for _ in range(episodes):
            ready = sim.next_event(("ready",), 60)
            t0 = time.monotonic()
            bridge = Bridge(url, domain, ready.instruction, extra)
            sim.next_event(("finished",), ENGAGE_TIMEOUT_S + 60)
            rc = bridge.stop()
            sim.next_event(("released",), 30)
            walls.append(time.monotonic() - t0)
            bridges.append({"seed": ready.seed, "exit_code": rc, "tick_stats": bridge.line("neon-g1: tick period"),
                            "released": bridge.line("neon-g1: released"), "error": bridge.line("neon-g1: error")})
    finally:
        sim.stop()
    report = sim.join(timeout=60)
    report["wall_s_per_episode"] = float(np.mean(walls)) if walls else None
    report["bridges"] = bridges
    return report


def serve(model: str) -> tuple[subprocess.Popen, str]:
    """neon-serve on a free loopback port with `model`; -> (process, ws URL) once /ready answers."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "neon_runtime.cli", "--model", model, "--port", str(port),
                             "--log-level", "warning"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"neon-serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc, f"ws://127.0.0.1:{port}/ws"
        except httpx.TransportError:
            pass
        time.sleep(1)
    proc.terminate()
    raise RuntimeError("neon-serve was not ready within 300 s")


# ------------------------------------------------------------------------------------------------------ the table
def row(name: str, report: dict, seconds: float | None, direct: dict | None = None) -> dict:
    n = report["episodes"]
    wins = sum(r["success"] for r in report["results"])
    lo, hi = wilson(wins, n)
    out = {"path": name, "episodes": n, "successes": wins, "success_rate": wins / n if n else 0.0,
           "success_ci95": [lo, hi], "time_to_success_s": report["time_to_success_s"], "seconds_per_episode": seconds}
    if direct is not None:
        out["within_direct_ci"] = direct["success_ci95"][0] <= out["success_rate"] <= direct["success_ci95"][1]
    return out


def print_table(rows: list[dict]) -> None:
    print(f"{'path':28s} {'success':>11s} {'95% CI':>11s} {'in direct CI':>13s} {'t success':>10s} {'s / episode':>12s}")
    for r in rows:
        lo, hi = r["success_ci95"]
        within = "" if "within_direct_ci" not in r else ("yes" if r["within_direct_ci"] else "NO")
        t = "-" if r["time_to_success_s"] is None else f"{r['time_to_success_s']:.2f} s"
        print(f"{r['path']:28s} {r['successes']:3d}/{r['episodes']:<3d}{r['success_rate']:5.2f} {lo:5.2f}-{hi:4.2f} "
              f"{within:>13s} {t:>10s} {r['seconds_per_episode']:12.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=20, help="seeds seed .. seed + episodes - 1 (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=10_000, help="(default: %(default)s, neon-sim eval's held-out seeds)")
    ap.add_argument("--model", help="a checkpoint to serve with neon-serve and compare too (default: the oracle only)")
    ap.add_argument("--out", help="write the rows and both paths' reports here (JSON)")
    ap.add_argument("--bridge-args", default=LOADED_MACHINE, help="more neon-g1 flags (default: %(default)r)")
    args = ap.parse_args()
    domains = random.sample(list(dds.LOOPBACK_DOMAINS), 2)  # never 0; one per sim, so nothing carries over
    t0 = time.monotonic()
    reports, rows = {}, []
    reports["oracle_direct"] = evaluate("oracle", args.episodes, args.seed, video_episodes=0, progress=False)
    reports["oracle_dds"] = oracle_over_dds(args.episodes, args.seed, domains[0])
    rows.append(row("oracle, direct", reports["oracle_direct"], reports["oracle_direct"]["seconds_per_episode"]))
    rows.append(row("oracle, DDS (in-process)", reports["oracle_dds"], reports["oracle_dds"]["wall_s_per_episode"],
                    rows[0]))
    if args.model:
        server, url = serve(args.model)
        try:
            reports["policy_direct"] = evaluate(url, args.episodes, args.seed, video_episodes=0, progress=False)
            reports["policy_dds"] = policy_over_dds(url, args.episodes, args.seed, domains[1], args.bridge_args.split())
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
        rows.append(row("policy, direct (neon-serve)", reports["policy_direct"],
                        reports["policy_direct"]["seconds_per_episode"]))
        rows.append(row("policy, DDS (neon-g1)", reports["policy_dds"], reports["policy_dds"]["wall_s_per_episode"],
                        rows[-1]))
    print(f"# {args.episodes} seeds from {args.seed}; DDS on lo, domains {domains[0]}"
          f"{f' and {domains[1]}' if args.model else ''}; ROS domain {os.environ['ROS_DOMAIN_ID']} (localhost); "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {time.monotonic() - t0:.0f} s in all")
    if args.model:
        print(f"# policy: {args.model}; neon-g1 {' '.join(Bridge.FLAGS)} {args.bridge_args}".rstrip())
    print_table(rows)
    for name in ("oracle_dds", "policy_dds"):
        if name in reports:
            r = reports[name]
            print(f"# {name}: rt/lowstate {r['lowstate_hz']} Hz, real-time factor {r['real_time_factor']}, overruns "
                  f"{r['overruns']}, arm_sdk accepted {r['commands']['accepted']}, went stale {r['commands']['stale']} "
                  f"times, engaged {r['engaged_episodes']}/{r['episodes']}")
    if "policy_dds" in reports:
        bridges = reports["policy_dds"]["bridges"]
        print(f"# neon-g1 exit codes: {[b['exit_code'] for b in bridges]}")
        for b in bridges:
            if b["exit_code"] != 0 or b["error"]:
                print(f"#   seed {b['seed']}: {b['released'] or b['error']}")
        print(f"# neon-g1, seed {bridges[0]['seed']}: {bridges[0]['tick_stats']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "reports": reports}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
