"""Does the backbone see where the named block is? A linear probe through Neon's unchanged encode path.

    MUJOCO_GL=egl .venv/bin/python bench/bench_probe.py              # after `neon-sim pretrain-backbone`

Frames: each seed's task in the sim, the scripted expert run for a random 0-3 s (so the arm is anywhere from the
start pose to the block), then the head camera at 224 px and the task's instruction. Probe-fit seeds from 20 000,
held-out seeds from 10 000 (neon-sim eval's). Features: `Backbone.encode` (the frozen backbone as Neon serves it)
flattened; a ridge regression (its strength chosen by 5-fold cross-validation on the fit seeds) to the named
block's centre x, y (m, robot frame). Rows, same frames: the random-weight tiny Qwen2.5-VL read as before (last
layer, 16 tokens averaged along the sequence) and read the new way (middle layer, image grid + text tokens), and
the scenes-pretrained backbone both ways. Target: <= 1.5 cm mean absolute error per axis, held out.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

ROWS = [  # (label, model id, BackboneConfig overrides)
    ("random tiny VL, last layer, 16 sequence bins", "neon-tiny/qwen2.5-vl", dict(hidden_layer=-1, pooling="tokens")),
    ("random tiny VL, middle layer, grid + text", "neon-tiny/qwen2.5-vl", {}),
    ("scenes VL, last layer, 16 sequence bins", "neon-tiny/qwen2.5-vl-scenes", dict(hidden_layer=-1, pooling="tokens")),
    ("scenes VL, middle layer, grid + text (default)", "neon-tiny/qwen2.5-vl-scenes", {}),
]


def frames(seeds: range, rng_seed: int) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    """(head frames, instructions, Float[(N, 2)] named block x, y) with the expert part-way through its reach."""
    from tqdm import tqdm

    from neon_sim.collect import FPS, step
    from neon_sim.expert import Expert
    from neon_sim.scene import G1Tabletop, episode_task

    rng = np.random.default_rng(rng_seed)
    images, texts, xy = [], [], []
    for seed in tqdm(seeds, desc=f"frames from seeds {seeds.start}..", unit="frame"):
        sim = G1Tabletop(episode_task(seed))
        expert, until = Expert(sim), rng.uniform(0.0, 3.0)
        while sim.time < until - 1e-9:
            step(sim, sim.state(), expert.targets(sim.time + 1.0 / FPS))
        images.append(sim.render("head"))
        texts.append(sim.task.instruction)
        xy.append(sim.task.positions[sim.task.target])
        sim.close()
    return images, texts, np.array(xy)


def encode(model_id: str, overrides: dict, images: list, texts: list[str], batch: int = 32) -> np.ndarray:
    import torch

    from neon.backbones.loader import Backbone
    from neon.config import BackboneConfig

    bb = Backbone(BackboneConfig(model_id=model_id, load_in_4bit=False, **overrides), device="cpu")
    with torch.no_grad():
        out = [bb.encode(images[i:i + batch], texts[i:i + batch]).flatten(1).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out)


def ridge_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, folds: int = 5) -> tuple[np.ndarray, float]:
    """Ridge predictions for x_test, its strength chosen by k-fold CV on the fit set (standardised features)."""
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    xf, xt = (x_fit - mu) / sd, (x_test - mu) / sd
    ym = y_fit.mean(0)

    def fit(x, y, alpha):  # dual form: features outnumber frames
        k = x @ x.T
        return x.T @ np.linalg.solve(k + alpha * np.eye(len(x)), y - ym)

    alphas = [x * xf.shape[1] for x in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)]
    parts = np.array_split(np.arange(len(xf)), folds)
    errors = []
    for a in alphas:
        err = 0.0
        for p in parts:
            keep = np.setdiff1d(np.arange(len(xf)), p)
            err += np.abs(xf[p] @ fit(xf[keep], y_fit[keep], a) + ym - y_fit[p]).mean()
        errors.append(err)
    best = alphas[int(np.argmin(errors))]
    return xt @ fit(xf, y_fit, best) + ym, best / xf.shape[1]


def main(argv=None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", type=int, default=600, help="probe-fit frames (seeds from 20 000)")
    ap.add_argument("--test", type=int, default=200, help="held-out frames (seeds from 10 000)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    fit_images, fit_texts, fit_xy = frames(range(20_000, 20_000 + args.fit), 1)
    test_images, test_texts, test_xy = frames(range(10_000, 10_000 + args.test), 2)
    mean_cm = np.abs(test_xy - fit_xy.mean(0)).mean(0) * 100
    results = {"mean predictor": {"mae_cm": mean_cm.round(2).tolist()}}
    print(f"\nnamed block x, y from {args.fit} fit frames, {args.test} held out; mean absolute error (cm)\n")
    print("| features | tokens x width | x | y | probe alpha | encode ms/frame |")
    print("|---|---|---|---|---|---|")
    print(f"| predict the fit mean | - | {mean_cm[0]:.2f} | {mean_cm[1]:.2f} | - | - |")
    for label, model_id, overrides in ROWS:
        try:
            t0 = time.perf_counter()
            x_fit = encode(model_id, overrides, fit_images, fit_texts)
            ms = (time.perf_counter() - t0) * 1e3 / args.fit
            x_test = encode(model_id, overrides, test_images, test_texts)
        except FileNotFoundError as e:  # the scenes backbone is not built on this machine
            print(f"| {label} | not run: {e} |")
            continue
        pred, alpha = ridge_probe(x_fit, fit_xy, x_test)
        mae = np.abs(pred - test_xy).mean(0) * 100
        results[label] = {"mae_cm": mae.round(2).tolist(), "alpha": alpha, "encode_ms": round(ms, 1),
                          "features": x_fit.shape[1]}
        print(f"| {label} | {x_fit.shape[1]} | {mae[0]:.2f} | {mae[1]:.2f} | {alpha:g} | {ms:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
