"""The simulated G1 tabletop's reference policies and costs (a benchmark, not a test).

    MUJOCO_GL=egl .venv/bin/python bench/bench_sim.py [--episodes 50] [--seed 10000]

Prints, in one run: the scripted expert's (oracle) and holding still's success rates over the same fixed
held-out seeds, with Wilson 95% intervals, and the wall time per evaluated and per collected episode
(collection renders the 64x64 head camera at 10 fps).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

from neon_sim.collect import collect
from neon_sim.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--collect", type=int, default=5, help="episodes to collect for the timing")
    args = ap.parse_args()
    print(f"# {args.episodes} held-out seeds from {args.seed}; success = palm within 3 cm of the named block in 6 s")
    print(f"{'policy':8s} {'success':>8s} {'95% CI':>13s} {'median s':>9s} {'s / episode':>12s}")
    for policy in ("oracle", "hold"):
        r = evaluate(policy, args.episodes, args.seed, video_episodes=0, progress=False)
        lo, hi = r["success_ci95"]
        print(f"{policy:8s} {r['success_rate']:8.2f} {lo:6.2f}-{hi:5.2f} {r['time_to_success_s'] or float('nan'):9.2f} "
              f"{r['seconds_per_episode']:12.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = collect(f"{tmp}/sim", args.collect, progress=False)
        print(f"collect: {(time.perf_counter() - t0) / args.collect:.2f} s per episode "
              f"(expert success {summary['expert_success_rate']:.2f})")


if __name__ == "__main__":
    main()
