"""`neon-eval`: evaluate a Neon checkpoint on held-out episodes of a LeRobot dataset."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neon-eval", description=__doc__)
    p.add_argument("--model", required=True, help="checkpoint folder or Hub repo id")
    p.add_argument("--dataset", required=True, help="LeRobot dataset folder or Hub dataset id")
    p.add_argument("--trajs", type=int, default=10, help="number of held-out episodes to evaluate")
    p.add_argument("--baselines", action="store_true", help="also score zero, random, hold and mean baselines")
    p.add_argument("--plot", action="store_true", help="write trajectory, per-group and per-step PNG plots")
    p.add_argument("--out", default="eval", help="folder for eval_report.json/.md and plots (default: eval/)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stride", type=int, default=1, help="evaluate every N-th frame")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline (and of the held-out rule when "
                   "the checkpoint records none)")
    p.add_argument("--allow-train-episodes", action="store_true",
                   help="score a dataset the checkpoint's split.json does not know (its episodes may have been trained on)")
    p.add_argument("--cache-dir", default=None,
                   help="backbone feature cache folder (default: the trainer's, ~/.cache/neon/features)")
    p.add_argument("--no-cache", action="store_true", help="compute every backbone feature afresh")
    p.add_argument("--device", default=None)
    p.add_argument("--joints", nargs="*", default=None, help="joints to plot (default: the 4 that move most)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from neon.action_space import ActionSpaceError
    from neon.checkpoint import CheckpointError
    from neon.data.lerobot import DatasetError
    from neon.hub import HubUnavailableError
    from neon.paths import features_dir
    from neon_train.evaluate import evaluate, markdown_report

    cache_dir = None if args.no_cache else (args.cache_dir or str(features_dir()))

    try:
        report = evaluate(args.model, args.dataset, trajs=args.trajs, baselines=args.baselines, plot=args.plot,
                          out=args.out, batch_size=args.batch_size, stride=args.stride, seed=args.seed,
                          cache_dir=cache_dir, device=args.device, plot_joints=args.joints,
                          allow_train_episodes=args.allow_train_episodes)
    except (CheckpointError, DatasetError, HubUnavailableError, ActionSpaceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_report(report))
    print(f"report: {args.out}/eval_report.json, {args.out}/eval_report.md"
          + (f"; plots: {', '.join(report['plots'].values())}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
