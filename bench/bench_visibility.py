"""Can the head camera see the named block at t = 0? Visible fraction over seeds, start pose against the zero pose.

    MUJOCO_GL=egl .venv/bin/python bench/bench_visibility.py --seeds 500 --seed 10000

For each seed's task (the evaluation seeds by default), the named block's visible fraction from the head camera
(`G1Tabletop.visibility`: MuJoCo segmentation rendering, with and without the robot) with the arms in the sim's
START_POSE and, beside it, in the G1 model's zero pose (the start pose before it). Also the cost of one head-camera
frame at 64 and 224 pixels, same process, alternating. Target: at least half visible in >= 98% of seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def zero_arms(sim) -> None:
    """The arms in the G1 model's zero pose (the sim's start pose before START_POSE)."""
    from neon_sim.scene import start_pose

    m = sim.model
    for name in start_pose():
        sim.data.qpos[m.jnt_qposadr[m.joint(f"{name}_joint").id]] = 0.0
    sim.mj.mj_forward(m, sim.data)


def render_cost(sizes=(64, 224), frames: int = 20) -> dict[int, float]:
    """ms per head-camera frame at each size (interleaved, after a warm-up frame each)."""
    from neon_sim.scene import G1Tabletop, episode_task

    sims = {s: G1Tabletop(episode_task(0), image_size=s) for s in sizes}
    times = {s: [] for s in sizes}
    for s in sizes:
        sims[s].render("head")
    for _ in range(frames):
        for s in sizes:
            t0 = time.perf_counter()
            sims[s].render("head")
            times[s].append((time.perf_counter() - t0) * 1e3)
    for sim in sims.values():
        sim.close()
    return {s: float(np.median(v)) for s, v in times.items()}


def main(argv=None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=500)
    ap.add_argument("--seed", type=int, default=10_000, help="first seed (neon-sim eval's)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from neon_sim.scene import START_POSE, G1Tabletop, episode_task

    vis = {"start pose": [], "zero pose": []}
    for seed in tqdm(range(args.seed, args.seed + args.seeds), desc="seeds", unit="seed"):
        sim = G1Tabletop(episode_task(seed))
        vis["start pose"].append(sim.visibility()[sim.task.target])
        zero_arms(sim)
        vis["zero pose"].append(sim.visibility()[sim.task.target])
        sim.close()
    cost = render_cost()
    rows = {}
    print(f"\nnamed block's visible fraction from the head camera at t = 0, seeds {args.seed}..{args.seed + args.seeds - 1}")
    print(f"start pose (left arm; the right mirrors): {START_POSE} rad\n")
    print("| arms at t = 0 | >= 50% visible | < 50% | < 10% | hidden | p5 | median |")
    print("|---|---|---|---|---|---|---|")
    for name, v in vis.items():
        v = np.array(v)
        rows[name] = {"at_least_half": float((v >= 0.5).mean()), "below_half": float((v < 0.5).mean()),
                      "below_10pct": float((v < 0.1).mean()), "hidden": float((v == 0).mean()),
                      "p5": float(np.percentile(v, 5)), "median": float(np.median(v))}
        r = rows[name]
        print(f"| {name} | {r['at_least_half']:.1%} | {r['below_half']:.1%} | {r['below_10pct']:.1%} | "
              f"{r['hidden']:.1%} | {r['p5']:.2f} | {r['median']:.2f} |")
    print(f"\nhead-camera frame: {cost[64]:.1f} ms at 64 px, {cost[224]:.1f} ms at 224 px "
          f"({cost[224] / cost[64]:.2f}x), median of 20, interleaved")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": [args.seed, args.seeds], "visibility": rows, "render_ms": cost}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
