"""`neon-train`: train Neon's heads from a preset, on datasets or a data soup file.

    neon-train --preset default_arms_only --dataset data/g1_synth --output you/neon-g1-v1
    neon-train --backbone Qwen/Qwen2.5-Omni-3B --mode arms_only --audio --dataset soup.yaml --output ./runs/edge --no-push
    neon-train --preset large_wholebody --dry-run          # resolved config + trainable parameters, no download
    neon-train --preset default_arms_only --prefix-steps 6 --dataset data/g1_synth --output ./runs/rtc --no-push
                                                           # heads that continue from up to 6 committed steps
    torchrun --nproc_per_node 2 -m neon_train.cli ...      # DDP (also under `accelerate launch`)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from neon.config import PRECISIONS
from neon.data.soup import DataSoupConfig, DataSourceConfig
from neon.threads import THREADS_HELP, set_threads

# Unitree's own G1 Dex3 teleoperation data in LeRobot form: the default when no --dataset is given (arms_only).
DEFAULT_DATASET = {"arms_only": "unitreerobotics/G1_Dex3_ToastedBread_Dataset"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neon-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="a named preset (default_arms_only, edge_3b, omni7b_whole_body_large, ...)")
    p.add_argument("--backbone", help="backbone id (overrides the preset's)")
    p.add_argument("--mode", choices=["arms_only", "whole_body"], help="control mode (overrides the preset's)")
    p.add_argument("--audio", action="store_true", help="train the audio path (Omni's audio tower or Whisper)")
    p.add_argument("--lidar", action="store_true", help="train the LiDAR encoder")
    p.add_argument("--eef", action="store_true", help="train the end-effector encoder")
    p.add_argument("--representation", choices=["relative", "absolute"],
                   help="joint groups predict offsets from the current state (relative, the default) or absolute targets")
    p.add_argument("--prefix-steps", type=int, metavar="N",
                   help="prefix conditioning (real-time chunking): train the heads to continue from up to N steps "
                        "already committed (N = ceil(request latency x fps)); 0 turns it off (default: the preset's)")
    p.add_argument("--prefix-prob", type=float, metavar="P",
                   help="chance that a training sample is given a prefix (default: the preset's, 0.5)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--dataset", action="append", default=[],
                   help="a LeRobot dataset folder or Hub id (repeatable), or a soup file (.yaml/.json)")
    p.add_argument("--fps", type=float, help="resample every dataset's action chunks to this rate (needed when the "
                   "datasets' frame rates differ; default: the data's own rate)")
    p.add_argument("--output", help="Hub repo id (owner/name: pushed, local copy under outputs/) or a local folder")
    p.add_argument("--no-push", action="store_true", help="keep checkpoints local")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last with the same steps and schedule")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and trainable parameters, then exit")
    p.add_argument("--config", help="a TrainConfig JSON file to start from instead of a preset")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--eval-steps", type=int)
    p.add_argument("--progress-steps", type=int, help="a progress line in the log (step, loss, samples/s, ETA) every "
                                                       "this many steps (default: 50)")
    p.add_argument("--save-steps", type=int)
    p.add_argument("--no-cache", action="store_true", help="do not use the backbone feature cache")
    p.add_argument("--augment", action="store_true", help="random crop + colour jitter on frames (turns the cache off)")
    p.add_argument("--cache-dir", help="backbone feature cache folder (default ~/.cache/neon/features)")
    p.add_argument("--optim", choices=["paged_adamw_8bit", "adamw"])
    p.add_argument("--device")
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="backbone weights: nf4 (memory-bound devices), dense (bf16 on a GPU), or auto: dense where the "
                        "GPU holds them in half its memory, else nf4 (presets: auto; edge_3b: nf4). The checkpoint "
                        "records what was used, and is served at it")
    return p


def resolve_config(args: argparse.Namespace):
    from neon.presets import SCALES, model_config
    from neon_train.config import SCALE_TRAINING, TrainConfig, get_preset

    if args.config:
        from neon.files import read_json
        from neon.config import ConfigError

        cfg = TrainConfig.from_dict(read_json(args.config, ConfigError))
    elif args.preset:
        cfg = get_preset(args.preset)
    else:
        cfg = get_preset("default_arms_only")
    if args.backbone or args.mode:
        scale = "large" if cfg.model.mlp_hidden >= SCALES["large"]["mlp_hidden"] else "standard"
        keep = {k: getattr(cfg.model, k) for k in ("use_audio", "use_lidar", "use_eef", "prefix_max_steps",
                                                     "prefix_probability")}
        model = model_config(args.backbone or cfg.model.backbone.model_id, args.mode or cfg.model.control_mode, scale,
                             **keep)
        if not args.preset and not args.config:
            cfg = TrainConfig(model=model, **SCALE_TRAINING[scale])
        cfg.model = model
    for flag in ("audio", "lidar", "eef"):
        if getattr(args, flag):
            setattr(cfg.model, f"use_{flag}", True)
    if args.representation:
        cfg.model.default_representation = args.representation
    if args.precision:
        cfg.model.backbone.load_in_4bit = PRECISIONS[args.precision]
    if args.prefix_steps is not None:
        cfg.model.prefix_max_steps = args.prefix_steps
    if args.prefix_prob is not None:
        cfg.model.prefix_probability = args.prefix_prob
    for arg, name in (("epochs", "epochs"), ("batch_size", "batch_size"), ("grad_accum", "gradient_accumulation"),
                      ("lr", "learning_rate"), ("max_steps", "max_steps"), ("seed", "seed"), ("workers", "num_workers"),
                      ("eval_steps", "eval_steps"), ("save_steps", "save_steps"), ("optim", "optim"),
                      ("progress_steps", "progress_steps"),
                      ("cache_dir", "feature_cache_dir")):
        if getattr(args, arg) is not None:
            setattr(cfg, name, getattr(args, arg))
    if args.no_cache:
        cfg.feature_cache = False
    if args.augment:
        cfg.image_augmentation = True
    sources = []
    for i, d in enumerate(args.dataset):
        if d.endswith((".yaml", ".yml", ".json")) and Path(d).is_file():
            soup = DataSoupConfig.from_file(d)
            sources += soup.sources
            cfg.data.balance_by_size, cfg.data.seed, cfg.data.fps = soup.balance_by_size, soup.seed, soup.fps
        else:
            name = Path(d.rstrip("/")).name or f"dataset{i}"
            sources.append(DataSourceConfig(name=name if name not in {s.name for s in sources} else f"{name}_{i}", path=d))
    if args.fps is not None:
        cfg.data.fps = args.fps
    if sources:
        cfg.data.sources = sources
    elif not cfg.data.sources and cfg.model.control_mode in DEFAULT_DATASET:
        cfg.data.sources = [DataSourceConfig("default", DEFAULT_DATASET[cfg.model.control_mode])]
    if args.output:
        from neon.hub import looks_like_repo_id

        if looks_like_repo_id(args.output) and not Path(args.output).exists():
            cfg.hub_model_id = args.output
            cfg.output_dir = str(Path("outputs") / args.output.split("/")[1])
        else:
            cfg.output_dir = args.output
            if not cfg.hub_model_id:
                cfg.push_to_hub = False
    elif not cfg.hub_model_id:
        cfg.push_to_hub = False
    if args.no_push:
        cfg.push_to_hub = False
    return cfg


def dry_run(cfg) -> int:
    from neon.model import count_parameters

    print(cfg.to_json(), end="")
    counts = count_parameters(cfg.model)
    print(f"\ntrainable parameters ({cfg.model.backbone.model_id} frozen, not counted):")
    for name, n in counts.items():
        print(f"  {name:18s} {n:>12,d}")
    eff = cfg.batch_size * cfg.gradient_accumulation
    print(f"effective batch {eff} ({cfg.batch_size} x {cfg.gradient_accumulation}), lr {cfg.learning_rate:g}, "
          f"optim {cfg.optim}, push_to_hub={cfg.push_to_hub}, output {cfg.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        set_threads(args.threads)
    except ValueError as e:
        print(f"error: --{e}", file=sys.stderr)
        return 2
    from neon.hub import HubUnavailableError
    from neon.checkpoint import CheckpointError
    from neon.config import ConfigError
    from neon.data.lerobot import DatasetError

    try:
        cfg = resolve_config(args)
        if args.dry_run:
            cfg.validate()
            return dry_run(cfg)
        if not cfg.data.sources:
            raise ConfigError(f"no dataset: pass --dataset (there is no default for {cfg.model.control_mode})")
        from neon_train.train import NeonTrainer

        stats = NeonTrainer(cfg, device=args.device, resume=args.resume).train()
    except (ConfigError, DatasetError, CheckpointError, HubUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if stats["world_size"] > 1 and not stats["replicas_in_sync"]:
        print("error: DDP replicas diverged", file=sys.stderr)
        return 1
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: stats[k] for k in ("best_loss", "best_step", "final_loss", "steps", "samples_per_s", "seconds",
                                          "best_checkpoint", "world_size", "feature_cache", "interrupted")}
        print(json.dumps(summary, indent=2))
        failed = [h for h in stats["hub"] if not h["ok"]]
        if failed:
            print(f"warning: {len(failed)} Hub push(es) to {failed[-1]['repo_id']} failed ({failed[-1]['error']}); "
                  f"the local checkpoint {stats['best_checkpoint']} is complete: push it with "
                  f"`hf upload {failed[-1]['repo_id']} {stats['best_checkpoint']}`", file=sys.stderr)
    return 130 if stats["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
