"""Heads latency: PyTorch eager vs ONNX Runtime, batch 1 and 8, side by side (a benchmark, not a test).

    .venv/bin/python bench/bench_heads.py [--presets edge_3b default_arms_only] [--runs 50] [--prefix-steps N]

Everything after the backbone (encoders, fusion, action and speech heads) at the
real presets' sizes, with random weights and random backbone features (no
backbone needed), camera + state + audio + LiDAR (2048 points) + EEF inputs.
`--prefix-steps N` sets every preset's prefix conditioning to N committed steps
(0: off; default: each preset's own); the inputs then carry prefixes of random
length (the work done does not depend on it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neon.model import NeonInputs, NeonVLA
from neon.presets import get_model_config
from neon_runtime.onnx_heads import INPUTS, OnnxHeads, example_inputs, export_heads


def timeit(fn, runs: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 90))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["edge_3b", "default_arms_only", "g1_omnimodal"])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--prefix-steps", type=int, help="prefix_max_steps for every preset (default: the preset's)")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"# heads only, CPU, {torch.get_num_threads()} threads; ms p50 / p90")
    print(f"{'preset':20s} {'params':>8s} {'batch':>5s} {'prefix':>6s} {'pytorch eager':>16s} {'onnxruntime':>16s} "
          f"{'speed-up':>9s}")
    for name in args.presets:
        cfg = get_model_config(name)
        cfg.use_audio = cfg.use_lidar = cfg.use_eef = True
        if args.prefix_steps is not None:
            cfg.prefix_max_steps = args.prefix_steps
        model = NeonVLA(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        with tempfile.TemporaryDirectory() as tmp:
            export_heads(model, Path(tmp) / "onnx")
            ort_heads = OnnxHeads(Path(tmp) / "onnx", providers=["CPUExecutionProvider"])
            for batch in (1, 8):
                x = example_inputs(model, batch, 2048, seed=batch)
                inp = NeonInputs(*(x[k] for k in INPUTS))
                with torch.no_grad():
                    eager = timeit(lambda inp=inp, m=model: m(inp), args.runs)
                onnx = timeit(lambda inp=inp, h=ort_heads: h(inp), args.runs)
                print(f"{name:20s} {model.parameter_counts()['total'] / 1e6:7.2f}M {batch:5d} {cfg.prefix_max_steps:6d} "
                      f"{eager[0]:7.2f} / {eager[1]:6.2f} {onnx[0]:7.2f} / {onnx[1]:6.2f} {eager[0] / onnx[0]:8.2f}x")


if __name__ == "__main__":
    main()
