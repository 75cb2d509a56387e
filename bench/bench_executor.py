"""Plain chunking against the ChunkExecutor in neon-sim, same seeds, one run (a benchmark, not a test).

    MUJOCO_GL=egl .venv/bin/python bench/bench_executor.py [--policy oracle | ws://127.0.0.1:8000/ws]
        [--episodes 20] [--seed 10000] [--latencies 0,200,300] [--blend-s 0.2[,0.3]] [--execute-steps 8] [--prefix]
        [--json out.json]

For each injected latency, three ways of running chunks over the same seeds: plain synchronous chunking, the
executor without blending (request-ahead, steps already past skipped, velocity limits per control tick), and the
executor blending over each --blend-s (never sending a prefix), and with --prefix (a served prefix-conditioned model)
the same blending with the committed steps sent along. One table: success with its Wilson 95% interval and relative
to the same mode at 0 ms; median time to success; jerk of the 50 Hz target stream within chunks and at hand-overs
(each episode's largest, median over episodes; a hand-over window is within one step of a chunk taking over and its
blend) and their ratio (median of the episodes' ratios; also the ratio of root mean squares); requests per episode;
the committed steps a reply carried on average.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

from neon_sim.cli import latencies
from neon_sim.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="oracle", help="oracle | hold | ws://host:port/ws of a running neon-serve")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--latencies", type=latencies, default=[0.0, 200.0, 300.0], metavar="L[,L...]", help="ms")
    ap.add_argument("--blend-s", type=lambda text: [float(x) for x in text.split(",")], default=[0.2], metavar="S[,S...]",
                    help="blend windows in seconds: one executor-with-blending mode each")
    ap.add_argument("--execute-steps", type=int, default=8)
    ap.add_argument("--prefix", action="store_true", help="add 'blend S s + prefix' modes: a prefix-conditioned served "
                                                          "model is sent the committed steps")
    ap.add_argument("--token", default=os.environ.get("NEON_TOKEN"))
    ap.add_argument("--json", help="write every report here")
    args = ap.parse_args()
    modes = {"plain": ("plain", 0.0, False), "executor": ("executor", 0.0, False),
             **{f"blend {b:g} s": ("executor", b, False) for b in args.blend_s if b > 0},
             **({f"blend {b:g} s + prefix": ("executor", b, True) for b in args.blend_s if b > 0} if args.prefix else {})}
    t0, reports = time.perf_counter(), {}
    for latency in sorted(args.latencies):
        for name, (executor, blend_s, prefix) in modes.items():
            reports[(latency, name)] = evaluate(args.policy, args.episodes, args.seed, execute_steps=args.execute_steps,
                                                token=args.token, video_episodes=0, progress=False,
                                                latency_ms=latency, executor=executor, blend_s=blend_s, prefix=prefix)
            pre = reports[(latency, name)]["prefix"]
            if prefix and not (pre and pre["model_takes"]):
                raise SystemExit(f"--prefix: {args.policy} does not serve a prefix-conditioned model "
                                 "(prefix_max_steps 0); train one with neon-train --prefix-steps N")
    print(f"# {args.policy}: {args.episodes} seeds from {args.seed}, {args.execute_steps} steps a chunk, "
          f"latencies {', '.join(f'{x:g}' for x in sorted(args.latencies))} ms ({time.perf_counter() - t0:.0f} s)")
    print("| latency ms | mode | success | 95% CI | vs 0 ms | s to success | jerk within | jerk boundary | ratio max "
          "| ratio rms | requests / ep | round trip p50 ms | committed steps / reply |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = min(args.latencies)
    for (latency, name), r in reports.items():
        lo, hi = r["success_ci95"]
        zero = reports[(base, name)]["success_rate"]
        rel = f"{r['success_rate'] / zero:.2f}" if zero > 0 else "-"
        cj, rt = r["control_jerk"], r["round_trip_ms"]
        cells = [f"{latency:g}", name, f"{r['success_rate']:.2f}", f"{lo:.2f}-{hi:.2f}", rel,
                 _f(r["time_to_success_s"]), f"{cj['within_max']:.0f}", f"{cj['boundary_max']:.0f}",
                 _f(cj["ratio_max"]), _f(cj["ratio_rms"]), f"{r['requests'] / r['episodes']:.1f}",
                 "-" if rt is None else f"{rt['p50']:.0f}",
                 "-" if not r["prefix"] else f"{r['prefix']['mean_committed_steps']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print("jerk: rad/s^3 on the commanded 50 Hz targets, the largest over joints; 'vs 0 ms': success relative to the "
          "same mode at the lowest latency")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"latency_ms": k[0], "mode": k[1], **{a: b for a, b in r.items() if a != "results"}}
                       for k, r in reports.items()], f, indent=2)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    main()
