"""`neon-data`: make and inspect datasets.

    neon-data synth --out data/g1_synth [--mode whole_body] [--episodes 24] [--length 60] [--seed 0]
    neon-data info PATH_OR_HUB [--mode arms_only]
    neon-data soup SOUP.yaml [--mode whole_body]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def cmd_synth(args: argparse.Namespace) -> int:
    from neon.data.synthetic import SynthConfig, generate

    cfg = SynthConfig(mode=args.mode, episodes=args.episodes, length=args.length, fps=args.fps,
                      image_size=args.image_size, seed=args.seed, codec=args.codec, version=args.format)
    t0 = time.perf_counter()
    root = generate(args.out, cfg, overwrite=args.overwrite, progress=True if args.episodes >= 50 else None)
    dt = time.perf_counter() - t0
    print(f"wrote {cfg.episodes} episodes x {cfg.length} frames ({cfg.mode}, LeRobot {cfg.version}, {cfg.codec}) "
          f"to {root} in {dt:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from neon.action_space import G1ActionSpace
    from neon.data.sources import LeRobotSource

    src = LeRobotSource(args.path, G1ActionSpace(args.mode), args.steps)
    ds = src.ds
    print(f"{src.root}: LeRobot {ds.version}, {len(ds.episodes)} episodes, {ds.num_frames} frames at {ds.fps:g} fps")
    print(f"  cameras: {', '.join(ds.video_keys)} (using {src.camera})")
    print(f"  action -> G1 {args.mode}: {src.action_map.report()}")
    if src.state_map is not None:
        print(f"  state  -> G1 {args.mode}: {src.state_map.report()}")
    extras = [k for k in (src.eef_key, src.lidar_key, src.audio_key) if k]
    print(f"  extra sensors: {', '.join(extras) or 'none'}; GR00T modality.json: {ds.modality is not None}")
    tasks = sorted({t for e in ds.episodes for t in e.tasks})
    print(f"  {len(tasks)} task(s), e.g. {tasks[:3]}")
    return 0


def cmd_soup(args: argparse.Namespace) -> int:
    from neon.action_space import G1ActionSpace
    from neon.data.soup import DataSoup, DataSoupConfig

    cfg = DataSoupConfig.from_file(args.file)
    soup = DataSoup(cfg, G1ActionSpace(args.mode), args.steps)
    relative, scaler = cfg.action_representation()
    print(f"{args.file}: {len(cfg.sources)} source(s), {len(soup)} samples, seed {cfg.seed}, "
          f"balance_by_size={cfg.balance_by_size}; actions {'relative x' + format(scaler, 'g') if relative else 'absolute'}")
    print(f"  {'source':20s} {'type':16s} {'samples':>8s} {'weight':>7s} {'p(draw)':>8s} {'fps':>5s}")
    for s, src, p in zip(cfg.sources, soup.sources, soup.source_probabilities(), strict=True):
        fps = f"{src.fps:g}" if src.fps else "-"
        print(f"  {s.name:20s} {s.type:16s} {len(src):8d} {s.weight:7.2f} {p:8.3f} {fps:>5s}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neon-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="write a synthetic G1 dataset (LeRobot v3.0 by default)")
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=["arms_only", "whole_body"], default="arms_only")
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--length", type=int, default=60, help="frames per episode")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codec", choices=["av1", "h264", "mpeg4"], default="av1")
    p.add_argument("--format", choices=["v3.0", "v2.1"], default="v3.0")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)
    p = sub.add_parser("info", help="summarise a LeRobot dataset and how it maps onto the G1 action space")
    p.add_argument("path")
    p.add_argument("--mode", choices=["arms_only", "whole_body"], default="arms_only")
    p.add_argument("--steps", type=int, default=16)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("soup", help="load a data soup file (YAML or JSON) and print its sources and mix")
    p.add_argument("file")
    p.add_argument("--mode", choices=["arms_only", "whole_body"], default="arms_only")
    p.add_argument("--steps", type=int, default=16)
    p.set_defaults(func=cmd_soup)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from neon.data.lerobot import DatasetError

    try:
        return args.func(args)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
