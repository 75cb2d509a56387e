"""Soak neon-g1's control loop with faults injected at random, against a robot on loopback DDS (a benchmark).

    .venv/bin/python bench/bench_g1_soak.py [--minutes 30] [--rate-hz 250] [--seed 0] [--json out.json]

A stand-in robot on a random loopback domain (multicast off; nothing leaves this machine) publishes rt/lowstate at
500 Hz and records every rt/arm_sdk command it hears. neon-g1's own pieces run against it in this process: RobotLink,
Controller, ChunkExecutor and `run_loop`, fed fresh chunks by a thread. Episodes follow each other for --minutes:
engage, run, and at a random moment one fault:

  stall          the loop stalls 50-500 ms once (inside poll)
  log-error      log() raises BrokenPipeError (a closed stdout)
  status-error   status() raises
  lowstate-gap   the robot stops publishing rt/lowstate for 0.2-1 s
  chunk-stale    chunks arrive whose steps are all past (refused), so the watchdog holds, then releases
  chunk-future   chunks arrive with step 0 seconds ahead (refused: a skewed clock), likewise
  chunk-nan      chunks arrive with NaN times (refused), likewise
  feeder-hang    no chunks at all for 3 s: hold, then release
  interrupt      KeyboardInterrupt inside the loop (ramps out before it leaves)
  none           a clean stop (--run-seconds)

Counted from what the robot heard: ramp violations (a weight step larger than two periods' share of the ramp),
velocity violations (a joint step beyond max velocity x two periods), unreleased exits (an episode whose last
command has weight > 0); and the tick period p50/p99/max, the process's memory at start and end.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

FAULTS = ("stall", "log-error", "status-error", "lowstate-gap", "chunk-stale", "chunk-future", "chunk-nan",
          "feeder-hang", "interrupt", "none")


class Robot:
    """rt/lowstate at 500 Hz (unless `silent`), every rt/arm_sdk command recorded as (weight, q of the arm slots)."""

    def __init__(self):
        from cyclonedds.core import Policy, Qos
        from cyclonedds.sub import DataReader
        from cyclonedds.util import duration

        from neon_runtime.unitree import dds
        from neon_runtime.unitree.idl import LowState_, MotorState_

        self.participant = dds.loopback()
        self.domain = self.participant.get_domain_id()
        every = Qos(Policy.Reliability.Reliable(duration(seconds=1)), Policy.History.KeepAll)
        self.arm_sdk = DataReader(self.participant, dds.topic(self.participant, "rt/arm_sdk"), qos=every)
        self.writer = dds.writer(self.participant, "rt/lowstate")
        self.msg = LowState_(motor_state=[MotorState_(q=0.0) for _ in range(35)])
        self.silent_until, self.heard = 0.0, []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop.wait(0.002):
            if time.monotonic() >= self.silent_until:
                self.writer.write(self.msg)
            for cmd in self.arm_sdk.take(N=1000):
                if hasattr(cmd, "motor_cmd"):
                    self.heard.append((cmd.motor_cmd[29].q, np.array([cmd.motor_cmd[s].q for s in range(15, 29)])))

    def take(self) -> list:
        time.sleep(0.1)  # the last commands in flight
        heard, self.heard = self.heard, []
        return heard

    def close(self):
        self._stop.set()


def rss_mb() -> float:
    """The process's resident memory now (MB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def episode(rng, robot, link, layout, space, cfg, fault: str) -> dict:
    """One engagement with `fault` injected at a random moment; -> what the robot heard and the loop's figures."""
    from neon_runtime.executor import Chunk, ChunkExecutor, ChunkRefused
    from neon_runtime.g1 import bridge

    ctl = bridge.Controller(layout, cfg, ChunkExecutor(space.dim, blend_s=0.2))
    at = time.monotonic() + cfg.ramp_in_s + rng.uniform(0.5, 3.0)  # the fault, after engaging
    state = {"fired": False}
    stop_feeding = threading.Event()
    target = rng.uniform(-0.3, 0.3, space.dim).astype(np.float32)

    def due() -> bool:
        if not state["fired"] and time.monotonic() >= at:
            state["fired"] = True
            return True
        return False

    def feed():
        while not stop_feeding.wait(0.05):
            now = time.monotonic()
            bad = state["fired"] and fault.startswith("chunk-")
            if state["fired"] and fault == "feeder-hang" and now < at + 3.0:
                continue
            times = now + np.arange(16) / 30.0
            if bad and fault == "chunk-stale":
                times = times - 5.0
            elif bad and fault == "chunk-future":
                times = times + 5.0
            elif bad and fault == "chunk-nan":
                times = times * np.nan
            try:
                ctl.executor.accept(Chunk(np.tile(target, (16, 1)), times, now))
            except ChunkRefused:
                pass

    poll = link.poll

    def faulty_poll(now):
        if fault == "stall" and due():
            time.sleep(rng.uniform(0.05, 0.5))
        if fault == "lowstate-gap" and due():
            robot.silent_until = time.monotonic() + rng.uniform(0.2, 1.0)
        if fault in ("chunk-stale", "chunk-future", "chunk-nan", "feeder-hang"):
            due()
        return poll(now)

    def log(message):
        if fault == "log-error" and due():
            raise BrokenPipeError(32, "Broken pipe")

    def status():
        if fault == "status-error" and due():
            raise RuntimeError("status failed")
        return ""

    def stop_reason():
        if fault == "interrupt" and due():
            raise KeyboardInterrupt
        return ""

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    link.poll = faulty_poll
    error = None
    try:
        stats = bridge.run_loop(ctl, link, stop_reason=stop_reason, status=status, log=log, dry_run=False,
                                run_seconds=cfg.ramp_in_s + 6.0, log_every_s=0.02)
    except KeyboardInterrupt as e:
        error, stats = e, None
    finally:
        link.poll = poll
        stop_feeding.set()
        feeder.join()
    return {"heard": robot.take(), "stats": stats, "error": error, "fault_fired": state["fired"],
            "released": ctl.phase == "released", "reason": ctl.reason}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate-hz", type=float, default=250.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    from neon.action_space import G1ActionSpace
    from neon_runtime.g1 import bridge

    rng = np.random.default_rng(args.seed)
    space = G1ActionSpace("arms_only", "dex3")
    robot = Robot()
    link = bridge.RobotLink("lo", robot.domain)
    assert link.wait_for_state(5.0, want_hands=False), "no rt/lowstate on loopback"
    layout = bridge.make_layout(space, bridge.Gains(), hands=False)
    link.prepare(layout, writers=True)
    cfg = bridge.ControlConfig(rate_hz=args.rate_hz, ramp_in_s=1.0, ramp_out_s=2.0, max_chunk_age_s=0.5, hold_s=1.0,
                               state_stale_s=0.1)
    period = 1.0 / args.rate_hz
    max_weight_step = 2 * period / min(cfg.ramp_in_s, cfg.ramp_out_s) + 1e-5
    max_joint_step = float(layout.max_vel_rad_s.max()) * 2 * period + 1e-5
    counts = dict.fromkeys(("episodes", "ramp_violations", "velocity_violations", "unreleased_exits"), 0)
    by_fault = {f: 0 for f in FAULTS}
    intervals, mem_start, t0 = [], rss_mb(), time.monotonic()
    engaged_s = 0.0
    while time.monotonic() - t0 < args.minutes * 60:
        fault = FAULTS[rng.integers(len(FAULTS))]
        r = episode(rng, robot, link, layout, space, cfg, fault)
        counts["episodes"] += 1
        by_fault[fault] += 1
        w = np.array([h[0] for h in r["heard"]])
        q = np.array([h[1] for h in r["heard"]])
        if len(w):
            counts["ramp_violations"] += int((np.abs(np.diff(w)) > max_weight_step).sum())
            counts["velocity_violations"] += int((np.abs(np.diff(q, axis=0)) > max_joint_step).any(axis=1).sum())
            counts["unreleased_exits"] += int(w[-1] > 0)
            engaged_s += float((w > 0).sum()) * period
        if r["stats"] is not None:  # float32 arrays: the record itself must not look like a leak
            intervals.append(np.asarray(r["stats"].intervals, np.float32))
        done = time.monotonic() - t0
        print(f"[{done / 60:5.1f} min] episode {counts['episodes']}: {fault} -> released ({r['reason']}), "
              f"{len(w)} commands heard, last weight "
              f"{w[-1] if len(w) else float('nan'):.2f}; violations so far: ramp {counts['ramp_violations']}, "
              f"velocity {counts['velocity_violations']}, unreleased {counts['unreleased_exits']}", flush=True)
    robot.close()
    ms = np.concatenate(intervals) * 1e3
    result = {**counts, "faults": by_fault, "minutes": round((time.monotonic() - t0) / 60, 1),
              "engaged_minutes": round(engaged_s / 60, 1), "rate_hz": args.rate_hz,
              "tick_period_ms": {"p50": round(float(np.percentile(ms, 50)), 2),
                                 "p99": round(float(np.percentile(ms, 99)), 2), "max": round(float(ms.max()), 2)},
              "rss_mb": {"start": round(mem_start, 1), "end": round(rss_mb(), 1)}}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
