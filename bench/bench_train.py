"""Training epoch time with and without the backbone feature cache (a benchmark, not a test).

    .venv/bin/python bench/bench_train.py [--backbone neon-tiny/qwen2.5-omni] [--episodes 24]

One epoch over the default synthetic dataset (24 episodes x 60 frames), batch
16, standard heads, in three runs side by side: no cache, cache cold (first
epoch fills it) and cache warm (every feature read back from disk; the frames
and audio of cached rows are never decoded). Target: warm >= 10x faster than
no cache.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from neon.data.soup import DataSoupConfig, DataSourceConfig
from neon.data.synthetic import SynthConfig, generate
from neon.presets import model_config
from neon_train.config import TrainConfig
from neon_train.train import NeonTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="neon-tiny/qwen2.5-vl")
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--optim", default="paged_adamw_8bit", choices=["paged_adamw_8bit", "adamw"],
                    help="bitsandbytes' 8-bit AdamW runs a slow CPU path here; adamw shows what the cache saves")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "synth", SynthConfig(episodes=args.episodes), progress=False)
        backbone = None
        print(f"# one epoch, {args.backbone}, standard heads, batch {args.batch_size}, 0 workers, {args.optim}")
        print(f"{'run':14s} {'epoch s':>8s} {'samples/s':>10s} {'cache hits':>11s} {'misses':>7s} {'final loss':>11s} "
              f"{'vs no cache':>12s}")
        base = None
        for name, cache in (("no cache", False), ("cache cold", True), ("cache warm", True)):
            model = model_config(args.backbone, "arms_only")
            model.backbone.load_in_4bit = False
            cfg = TrainConfig(model=model, data=DataSoupConfig([DataSourceConfig("synth", str(data))]), epochs=1,
                              batch_size=args.batch_size, gradient_accumulation=1, learning_rate=1e-3,
                              warmup_steps=5, push_to_hub=False, output_dir=str(tmp / name.replace(" ", "_")),
                              num_workers=0, feature_cache=cache, feature_cache_dir=str(tmp / "features"),
                              eval_steps=10_000, save_steps=10_000, optim=args.optim)
            trainer = NeonTrainer(cfg, backbone=backbone)
            stats = trainer.train()
            if backbone is None:  # load once, share across runs: only the training loop is timed
                from neon.backbones.loader import Backbone

                backbone = Backbone(model.backbone)
            fc = stats["feature_cache"] or {"hits": 0, "misses": 0}
            base = base or stats["seconds"]
            print(f"{name:14s} {stats['seconds']:8.2f} {stats['samples_per_s']:10.1f} {fc['hits']:11d} "
                  f"{fc['misses']:7d} {stats['final_loss']:11.4f} {base / stats['seconds']:11.2f}x")


if __name__ == "__main__":
    main()
