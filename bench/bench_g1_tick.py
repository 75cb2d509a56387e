"""neon-g1's control loop at 250 Hz: work per tick and tick period, the send before and after packing LowCmd_ once.

    .venv/bin/python bench/bench_g1_tick.py [--seconds 10] [--rate-hz 250]

One run, same process, CycloneDDS on loopback (a random domain, multicast off; nothing leaves this machine): a
RobotLink writing rt/arm_sdk, fed rt/lowstate at 500 Hz by a second participant, a Controller running a fresh chunk
(weight 1 after a 1 s ramp), `run_loop` with its tick statistics. Two passes:

  before   each send re-flattens the whole LowCmd_ for its CRC (`fill_low_cmd_crc`, as neon-g1 did)
  after    the struct image packed once, each send writes q, the weight and mode_machine into it (`LowCmdImage`)

Also the CRC alone, both ways, over 5000 calls. Work per tick is the loop body (poll, tick, send); the tick period is
what the robot sees between commands.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="engaged time per pass")
    ap.add_argument("--rate-hz", type=float, default=250.0)
    args = ap.parse_args()
    from neon.action_space import G1ActionSpace
    from neon_runtime.executor import Chunk, ChunkExecutor
    from neon_runtime.g1 import bridge
    from neon_runtime.unitree import dds
    from neon_runtime.unitree.crc import LowCmdImage, fill_low_cmd_crc
    from neon_runtime.unitree.idl import LowCmd_, LowState_, MotorState_

    cmd = LowCmd_(mode_pr=0)
    image, slots, q = LowCmdImage(cmd), np.arange(15, 30), np.zeros(15)
    t0 = time.perf_counter()
    for _ in range(5000):
        fill_low_cmd_crc(cmd)
    full = (time.perf_counter() - t0) / 5000 * 1e3
    t0 = time.perf_counter()
    for _ in range(5000):
        image.crc(0, slots, q)
    once = (time.perf_counter() - t0) / 5000 * 1e3
    print(f"CRC of one LowCmd_: re-flattened {full:.3f} ms, image packed once {once:.4f} ms ({full / once:.0f}x)")

    space = G1ActionSpace("arms_only", "dex3")
    robot = dds.loopback()
    state_writer = dds.writer(robot, "rt/lowstate")
    stop = threading.Event()

    def publish_state():
        msg = LowState_(motor_state=[MotorState_(q=0.0) for _ in range(35)])
        while not stop.wait(0.002):
            state_writer.write(msg)

    threading.Thread(target=publish_state, daemon=True).start()
    link = bridge.RobotLink("lo", robot.get_domain_id())
    assert link.wait_for_state(5.0, want_hands=False), "no rt/lowstate on loopback"
    layout = bridge.make_layout(space, bridge.Gains(), hands=False)
    link.prepare(layout, writers=True)
    new_send = bridge.RobotLink.send

    def old_send(self, layout, command, write=True):  # the send before LowCmdImage: every field re-flattened
        cmd = self._cmd
        cmd.mode_machine = self.state.mode_machine if self.state is not None else 0
        for i, slot in enumerate(layout.body_slot):
            if slot >= 0:
                cmd.motor_cmd[slot].q = float(command.q[i])
        cmd.motor_cmd[bridge.WEIGHT_SLOT].q = float(command.weight)
        fill_low_cmd_crc(cmd)
        if write and self._arm_sdk is not None:
            self._arm_sdk.write(cmd)

    rows = []
    for name, send in (("before", old_send), ("after", new_send)):
        config = bridge.ControlConfig(rate_hz=args.rate_hz, ramp_in_s=1.0, ramp_out_s=2.0)
        ctl = bridge.Controller(layout, config, ChunkExecutor(space.dim))
        feeding = threading.Event()

        def feed(feeding=feeding, executor=ctl.executor):
            while not feeding.wait(0.05):
                now = time.monotonic()
                executor.accept(Chunk.at_fps(np.zeros((16, space.dim), np.float32), 30.0, now, now))

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        bridge.RobotLink.send = send
        try:
            stats = bridge.run_loop(ctl, link, stop_reason=lambda: "", status=lambda: "", log=lambda m: None,
                                    dry_run=False, run_seconds=1.0 + args.seconds)
        finally:
            bridge.RobotLink.send = new_send
            feeding.set()
            feeder.join()
        period, work = np.array(stats.intervals) * 1e3, np.array(stats.work) * 1e3
        rows.append((name, np.percentile(work, 50), np.percentile(work, 99), np.percentile(period, 50),
                     np.percentile(period, 99), period.max(), stats.late))
    stop.set()
    print(f"\n{args.rate_hz:g} Hz, {args.seconds:g} s engaged per pass (plus the 1 s ramp in and 2 s out), "
          "CycloneDDS on loopback\n")
    print("| send | work p50 ms | work p99 ms | period p50 ms | period p99 ms | period max ms | late ticks (> 2 periods) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, w50, w99, p50, p99, pmax, late in rows:
        print(f"| {name} | {w50:.3f} | {w99:.3f} | {p50:.2f} | {p99:.2f} | {pmax:.2f} | {late} |")
    print(f"\nwork p50 after / before: {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
