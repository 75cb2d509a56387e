"""predict() latency per stage on the offline tiny backbones (a benchmark, not a test).

    .venv/bin/python bench/bench_predict.py [--runs 30]

For each tiny backbone, full precision and nf4 4-bit, it runs predict() with
camera + instruction + state (and again with audio, LiDAR and EEF) and prints
the median and p90 of every stage, plus batch-8 throughput through
predict_batch() beside batch 1 in the same run. The tiny backbones are 64
wide, so the backbone figures measure Neon's plumbing around the real
transformers classes, not a real model's compute.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from neon.model import NeonVLA
from neon.policy import NeonPolicy
from neon.presets import model_config


def observation(model: NeonVLA, rng: np.random.Generator, sensors: bool) -> dict:
    space = model.action_space
    obs = dict(image=rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), instruction="pick up the red cup",
               state=rng.uniform(space.lower, space.upper).astype(np.float32))
    if sensors:
        obs.update(audio=(0.1 * rng.standard_normal(16000)).astype(np.float32),
                   lidar=np.c_[rng.uniform(-5, 5, (4096, 3)), rng.uniform(0, 255, 4096)],
                   eef=np.tile(np.array([0.3, 0.0, 0.9, 1, 0, 0, 0], np.float32), 2))
    return obs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    print(f"# predict() latency, ms — {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.runs} runs after 3 warm-up")
    stages = ["validate", "backbone", "audio", "heads", "postprocess", "total"]
    print(f"{'backbone':24s} {'4bit':5s} {'sensors':8s} " + " ".join(f"{s:>16s}" for s in stages))
    print(" " * 40 + " ".join(f"{'p50 / p90':>16s}" for _ in stages))
    for backbone in ("neon-tiny/qwen2.5-vl", "neon-tiny/qwen2.5-omni"):
        for four_bit in (False, True):
            cfg = model_config(backbone, "arms_only", use_audio=True, use_lidar=True, use_eef=True)
            cfg.backbone.load_in_4bit = four_bit
            model = NeonVLA(cfg).load_backbone()
            for sensors in (False, True):
                obs = observation(model, rng, sensors)
                for _ in range(3):
                    model.predict(**obs)
                runs = [model.predict(**obs).timings_ms for _ in range(args.runs)]
                cells = []
                for s in stages:
                    vals = [r[s] for r in runs if s in r]
                    cells.append(f"{np.percentile(vals, 50):7.2f} /{np.percentile(vals, 90):7.2f}" if vals else f"{'-':>16s}")
                print(f"{backbone:24s} {str(four_bit):5s} {str(sensors):8s} " + " ".join(f"{c:>16s}" for c in cells))
            # Batch 8 vs batch 1 through predict_batch, side by side.
            policy = NeonPolicy(model)
            batch = [policy.observation(**observation(model, rng, True)) for _ in range(8)]
            per = {}
            for b in (1, 8):
                policy.predict_batch(batch[:b])
                t0 = time.perf_counter()
                n = max(3, args.runs // 4)
                for _ in range(n):
                    policy.predict_batch(batch[:b])
                per[b] = (time.perf_counter() - t0) / n
            print(f"{'':40s} batch 1: {per[1] * 1e3:7.2f} ms/call ({1 / per[1]:6.1f} obs/s)   "
                  f"batch 8: {per[8] * 1e3:7.2f} ms/call ({8 / per[8]:6.1f} obs/s)  -> {per[1] * 8 / per[8]:.2f}x")


if __name__ == "__main__":
    main()
