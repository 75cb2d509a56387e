"""`neon-sim`: the simulated G1 tabletop.

    neon-sim collect --out data/sim --episodes 200 --seed 0      # expert episodes as a LeRobot v3.0 dataset

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
    args = ap.parse_args(argv)
    from neon.data.lerobot import DatasetError
    from neon_sim.collect import collect
    from neon_sim.scene import SimError

    if args.episodes < 1 or args.image_size < 64:
        print("error: --episodes must be >= 1 and --image-size >= 64", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        summary = collect(args.out, args.episodes, args.seed, args.image_size, args.mjcf, progress=True,
                          overwrite=args.overwrite)
    except (SimError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary["seconds_per_episode"] = round((time.perf_counter() - t0) / args.episodes, 2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
