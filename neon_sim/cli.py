"""`neon-sim`: the simulated G1 tabletop.

    neon-sim collect --out data/sim --episodes 200 --seed 0      # expert episodes as a LeRobot v3.0 dataset
    neon-sim eval --policy oracle|hold|ws://127.0.0.1:8000/ws --episodes 50 --seed 10000 --out eval_sim/

The G1 model is Unitree's MJCF: ../shared/robots/unitree_g1/scene_29dof.xml beside the checkout,
or --mjcf PATH / $NEON_G1_MJCF. Rendering is offscreen: MUJOCO_GL=egl (set here when unset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    ap = argparse.ArgumentParser(prog="neon-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("collect", help="write the scripted expert's episodes as a LeRobot v3.0 dataset")
    p.add_argument("--out", required=True, help="dataset folder (written atomically)")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="episode k uses seed + k")
    p.add_argument("--image-size", type=int, default=64, help="head camera frames, pixels (AV1 needs >= 64)")
    p.add_argument("--mjcf", help="Unitree's G1 scene MJCF (default: $NEON_G1_MJCF or ../shared's copy)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_collect)
    p = sub.add_parser("eval", help="closed-loop success rate of a policy over fixed seeds")
    p.add_argument("--policy", required=True, help="oracle | hold | ws://host:port/ws of a running neon-serve")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=10_000, help="episode k uses seed + k (collect's seeds start at 0)")
    p.add_argument("--execute-steps", type=int, default=8, help="chunk steps executed before the next request")
    p.add_argument("--token", default=os.environ.get("NEON_TOKEN"))
    p.add_argument("--out", help="folder for sim_report.json/.md and episodes.mp4 (head | third-person view)")
    p.add_argument("--ablation", default="none", choices=["none", "blank-image", "other-block"],
                   help="send a grey frame, or an instruction naming another block (served policies only)")
    p.set_defaults(func=_eval)
    args = ap.parse_args(argv)
    from neon.data.lerobot import DatasetError
    from neon_sim.scene import SimError

    try:
        return args.func(args)
    except (SimError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _eval(args) -> int:
    from neon_sim.evaluate import evaluate

    report = evaluate(args.policy, args.episodes, args.seed, args.out, args.execute_steps, args.token, progress=True,
                      ablation=args.ablation)
    lo, hi = report["success_ci95"]
    print(f"{args.policy}: success {report['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}) over {args.episodes} "
          f"episodes; {report['seconds_per_episode']} s per episode")
    return 0


def _collect(args) -> int:
    from neon_sim.collect import collect

    if args.episodes < 1 or args.image_size < 64:
        print("error: --episodes must be >= 1 and --image-size >= 64", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    summary = collect(args.out, args.episodes, args.seed, args.image_size, args.mjcf, progress=True,
                      overwrite=args.overwrite)
    summary["seconds_per_episode"] = round((time.perf_counter() - t0) / args.episodes, 2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
