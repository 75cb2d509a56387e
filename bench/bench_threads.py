"""Torch threads on a machine that runs other things: the tiny backbone's encode with 1 and 2 intra-op threads, idle
and loaded, side by side in one run (a benchmark; neon.threads' default comes from it).

    .venv/bin/python bench/bench_threads.py [--frames 8] [--repeats 5] [--load 2]

Loaded: --load processes spinning on the CPU meanwhile (a robot computer's other jobs). Each row: the median and
the worst of --repeats encodes of --frames 224x224 frames, then the ratio of 2 threads to 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np


def spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def encode_times(bb, frames, repeats: int, threads: int) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    out = []
    with torch.no_grad():
        bb.encode(frames[:1], ["wave"])  # warm
        for _ in range(repeats):
            t0 = time.perf_counter()
            bb.encode(frames, ["touch the red block"] * len(frames))
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--load", type=int, default=2, help="busy processes in the loaded rows")
    args = ap.parse_args()
    from neon.backbones.loader import Backbone
    from neon.config import BackboneConfig

    bb = Backbone(BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=False), device="cpu")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(args.frames)]
    rows = {}
    for loaded in (False, True):
        stop, procs = multiprocessing.Event(), []
        if loaded:
            procs = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.load)]
            for p in procs:
                p.start()
        try:
            for threads in (1, 2):
                rows[(loaded, threads)] = encode_times(bb, frames, args.repeats, threads)
        finally:
            stop.set()
            for p in procs:
                p.join()
    print(f"# tiny VL backbone, {args.frames} frames of 224x224 a pass, {args.repeats} passes; {os.cpu_count()} cores; "
          f"loaded = {args.load} busy processes")
    print("| machine | 1 thread median / worst s | 2 threads median / worst s | 2 threads / 1 (median) |")
    print("|---|---:|---:|---:|")
    for loaded in (False, True):
        one, two = rows[(loaded, 1)], rows[(loaded, 2)]
        print(f"| {'loaded' if loaded else 'idle'} | {np.median(one):.2f} / {max(one):.2f} | "
              f"{np.median(two):.2f} / {max(two):.2f} | {np.median(two) / np.median(one):.2f}x |")


if __name__ == "__main__":
    main()
