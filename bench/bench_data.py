"""Loader throughput on the synthetic G1 dataset (a benchmark, not a test).

    .venv/bin/python bench/bench_data.py [--samples 960] [--codec av1]

Generates the default synthetic dataset (24 episodes x 60 frames, 96x96 head
camera) into a temporary folder, then prints samples/s through a DataLoader
(batch 16, collate included) with 0, 1 and 2 workers, every sample decoding
its camera frame with PyAV. One run, side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from neon.action_space import G1ActionSpace
from neon.data.soup import DataSoup, DataSoupConfig, DataSourceConfig, collate
from neon.data.synthetic import SynthConfig, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=960)
    ap.add_argument("--codec", default="av1", choices=["av1", "h264", "mpeg4"])
    ap.add_argument("--mode", default="arms_only", choices=["arms_only", "whole_body"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = generate(Path(tmp) / "synth", SynthConfig(mode=args.mode, codec=args.codec), progress=False)
        print(f"# synthetic dataset: 24 episodes x 60 frames, {args.mode}, {args.codec}: generated in "
              f"{time.perf_counter() - t0:.2f} s")
        soup = DataSoup(DataSoupConfig([DataSourceConfig("synth", str(root))]), G1ActionSpace(args.mode), 16)
        print(f"{'workers':>8s} {'samples/s':>10s} {'ms/batch':>9s}   (batch 16, {args.samples} samples, video decoded)")
        for workers in (0, 1, 2):
            loader = DataLoader(soup, batch_size=16, sampler=soup.sampler(args.samples), num_workers=workers,
                                collate_fn=collate, persistent_workers=False)
            it = iter(loader)
            next(it)  # worker start-up and first file opens are not throughput
            t0 = time.perf_counter()
            n = 0
            for batch in it:
                n += len(batch["images"])
            dt = time.perf_counter() - t0
            print(f"{workers:8d} {n / dt:10.1f} {1e3 * dt / max(1, n // 16):9.2f}")


if __name__ == "__main__":
    main()
