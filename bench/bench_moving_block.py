"""Chunk-rate against two-rate control on the moving-block task in neon-sim, same seeds, one run (a benchmark).

    MUJOCO_GL=egl .venv/bin/python bench/bench_moving_block.py [--policy oracle | ws://127.0.0.1:8000/ws]
        [--episodes 50] [--seed 10000] [--latencies 0,200] [--execute-steps 8,16] [--blend-s 0.2]
        [--feature-hz 5] [--heads-hz 30] [--heads-latency-ms 23] [--ensemble-s 0.3[,0.5]] [--json out.json]

The named block jumps once, 1-2 s into each episode, >= 10 cm on the same side (`neon-sim eval --moving-block`).
Both ways run chunks through the ChunkExecutor (request-ahead, steps already past skipped, blended over --blend-s):

  chunk-rate K   a full request (image, instruction, state) per chunk, executed open loop for K steps (K / 10 s at
                 the sim's 10 fps), as neon-ros and openpi/LeRobot clients run chunks: the policy sees the scene
                 once a chunk; the reply is usable --latencies ms after its observation
  two-rate       features refreshed every 1 / --feature-hz s from a full observation, usable --latencies ms later;
                 the heads at --heads-hz on the fresh joint state and the newest usable features, each reply usable
                 --heads-latency-ms later (default 23: bench_two_rate's p50 from a state step to the first
                 command reflecting it, 2-core CPU, neon-tiny) and blended in

One table per run: success with its Wilson 95% interval, the median time to success and how many successes came
after the move (the others touched the block before it moved) on the moving-block task, the
same on the static task (the same seeds without the move) for reference, two-rate minus each chunk-rate row in
percentage points, and (the oracle) the median seconds from the move to the first plan made from the new position.
With --policy oracle the policy is the scripted expert re-planning from perfect snapshots of the block's position
(at each request, or each feature refresh): it measures the control architecture, not a learned policy.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

from neon_sim.cli import latencies
from neon_sim.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="oracle", help="oracle | hold | ws://host:port/ws of a running neon-serve")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--latencies", type=latencies, default=[0.0, 200.0], metavar="L[,L...]",
                    help="ms from a full observation to its reply (chunk-rate) or its features (two-rate) being usable")
    ap.add_argument("--execute-steps", type=lambda text: [int(x) for x in text.split(",")], default=[8, 16],
                    metavar="K[,K...]", help="chunk-rate rows: steps a chunk runs before the next full request")
    ap.add_argument("--blend-s", type=float, default=0.2)
    ap.add_argument("--feature-hz", type=float, default=5.0)
    ap.add_argument("--heads-hz", type=float, default=30.0)
    ap.add_argument("--heads-latency-ms", type=float, default=23.0)
    ap.add_argument("--ensemble-s", type=lambda text: [float(x) for x in text.split(",")], default=[],
                    metavar="W[,W...]", help="add 'two-rate, ensembled W s' rows: the heads' replies averaged over the "
                                             "last W s (ACT's temporal ensembling) instead of blended")
    ap.add_argument("--no-static", action="store_true", help="skip the static-task reference columns")
    ap.add_argument("--token", default=os.environ.get("NEON_TOKEN"))
    ap.add_argument("--json", help="write every report here")
    args = ap.parse_args()
    two_rate = {"control": "two-rate", "feature_hz": args.feature_hz, "heads_hz": args.heads_hz,
                "heads_latency_ms": args.heads_latency_ms}
    modes = {**{f"chunk-rate {k}": {"control": "chunk", "execute_steps": k, "blend_s": args.blend_s}
                for k in args.execute_steps}, "two-rate": {**two_rate, "blend_s": args.blend_s},
             **{f"two-rate, ensembled {w:g} s": {**two_rate, "blend_s": 0.0, "ensemble_s": w} for w in args.ensemble_s}}
    tasks = (True,) if args.no_static else (True, False)
    t0, reports, runs = time.perf_counter(), {}, len(args.latencies) * len(modes) * len(tasks)
    for latency in sorted(args.latencies):
        for name, mode in modes.items():
            for moving in tasks:
                t1 = time.perf_counter()
                reports[(latency, name, moving)] = evaluate(
                    args.policy, args.episodes, args.seed, token=args.token, video_episodes=0, progress=False,
                    latency_ms=latency, executor="executor", moving_block=moving, **mode)
                r = reports[(latency, name, moving)]
                print(f"[{len(reports)}/{runs}] {latency:g} ms, {name}, {'moving' if moving else 'static'}: "
                      f"success {r['success_rate']:.2f} ({time.perf_counter() - t1:.0f} s)", flush=True)
                if args.json:  # as it goes: a run that fails later loses nothing
                    _write(args.json, reports)
    who = ("ORACLE: the scripted expert re-planning from perfect snapshots of the block (measures the control "
           "architecture, not a learned policy)" if args.policy == "oracle" else args.policy)
    print(f"\n# {who}\n# {args.episodes} seeds from {args.seed}; ChunkExecutor blending over {args.blend_s:g} s; "
          f"two-rate: features at {args.feature_hz:g} Hz, heads at {args.heads_hz:g} Hz usable "
          f"{args.heads_latency_ms:g} ms later; {time.perf_counter() - t0:.0f} s in all")
    print("| latency ms | control | moving: success | 95% CI | median s to success | of them after the move "
          "| s from move to re-plan | static: success | 95% CI | median s to success "
          "| two-rate minus this, moving (points) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (latency, name, moving), r in reports.items():
        if not moving:
            continue
        s = None if args.no_static else reports[(latency, name, False)]
        two = reports[(latency, "two-rate", True)]["success_rate"]
        after = sum(e["success"] and e["time_to_success_s"] > e["move_at_s"] for e in r["results"])
        cells = [f"{latency:g}", name, *_cells(r), f"{after}/{sum(e['success'] for e in r['results'])}", _reaction(r),
                 *(_cells(s) if s else ["-"] * 3),
                 "-" if name.startswith("two-rate") else f"{100 * (two - r['success_rate']):+.0f}"]
        print("| " + " | ".join(cells) + " |")
    print("chunk-rate K: a full request per chunk, run open loop for K steps of 0.1 s; two-rate: heads replies at the "
          "heads rate on the fresh state, blended in (or averaged over the last W s: ensembled)")
    if args.json:
        _write(args.json, reports)


def _write(path: str, reports: dict) -> None:
    with open(path, "w") as f:
        json.dump([{"latency_ms": k[0], "mode": k[1], "moving_block": k[2],
                    **{a: b for a, b in r.items() if a != "results"},
                    "episodes_summary": [{a: e[a] for a in EPISODE_KEYS} for e in r["results"]]}
                   for k, r in reports.items()], f, indent=2)


EPISODE_KEYS = ("seed", "success", "time_to_success_s", "move_at_s", "final_distance_m", "table_contact")


def _reaction(r: dict) -> str:
    """Median over episodes of the oracle's first re-plan after the move, less the move's time ("-": no oracle)."""
    late = [min(t for t in e["replans"] if t >= e["move_at_s"]) - e["move_at_s"] for e in r["results"]
            if e["replans"] and any(t >= e["move_at_s"] for t in e["replans"])]
    return f"{np.median(late):.2f}" if late else "-"


def _cells(r: dict) -> list[str]:
    lo, hi = r["success_ci95"]
    t = r["time_to_success_s"]
    return [f"{r['success_rate']:.2f}", f"{lo:.2f}-{hi:.2f}", "-" if t is None else f"{t:.2f}"]


if __name__ == "__main__":
    main()
