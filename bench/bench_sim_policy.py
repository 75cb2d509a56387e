"""A Neon policy in the simulated G1 tabletop, trained on the expert's episodes (a benchmark: tens of minutes).

    MUJOCO_GL=egl .venv/bin/python bench/bench_sim_policy.py [--episodes 300] [--max-steps 3000] [--eval 50]
    MUJOCO_GL=egl .venv/bin/python bench/bench_sim_policy.py --model CKPT      # evaluate a trained checkpoint only

collect (neon-sim collect, 224 px head camera) -> pretrained backbone (neon-sim pretrain-backbone, when the
scenes backbone is not cached yet) -> train (neon-train, heads on the frozen backbone, CPU) -> serve
(neon-serve on loopback) -> closed-loop success over held-out seeds, in one run: the full policy, then with the
image blanked and with the instruction naming another block (vision and language must both matter). Target:
>= 0.80 for the full policy, each ablation at least 0.40 below it; collection, pretraining and training within
90 minutes on 2 cores (each part's time is printed).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import httpx

from neon.backbones.tiny import SCENES_ID, scenes_model_dir
from neon_sim.evaluate import evaluate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=300, help="expert episodes to train on (seeds 0..N-1)")
    ap.add_argument("--backbone", default="neon-tiny/qwen2.5-vl-scenes",
                    help="frozen backbone (the scenes backbone is pretrained first when it is not cached)")
    ap.add_argument("--data", action="append", help="already collected dataset(s) instead (repeatable)")
    ap.add_argument("--model", help="a trained checkpoint: skip collecting and training")
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval", type=int, default=50, help="held-out episodes (seeds from 10000)")
    ap.add_argument("--keep", help="work in this folder")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each process this starts (1: safe when "
                                                            "other jobs run; 2 on an otherwise idle 2-core machine)")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        data = [Path(d) for d in args.data] if args.data else [work / "sim"]
        t0 = time.perf_counter()
        if not (args.data or args.model):
            subprocess.run([sys.executable, "-m", "neon_sim.cli", "collect", "--out", str(data[0]), "--episodes",
                            str(args.episodes), "--overwrite"], check=True, env=env, stdout=subprocess.DEVNULL)
        t_collect = time.perf_counter() - t0
        t0 = time.perf_counter()
        if not args.model and args.backbone == SCENES_ID and not (scenes_model_dir() / "neon_tiny.json").is_file():
            subprocess.run([sys.executable, "-m", "neon_sim.cli", "pretrain-backbone", "--threads", str(args.threads)],
                           check=True, env=env, stdout=subprocess.DEVNULL)
        t_pretrain = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = Path(args.model) if args.model else work / "ck" / "best"
        if not args.model:
            datasets = [a for d in data for a in ("--dataset", str(d))]
            subprocess.run([sys.executable, "-m", "neon_train.cli", "--backbone", args.backbone, "--mode",
                            "arms_only", *datasets, "--max-steps", str(args.max_steps), "--batch-size",
                            str(args.batch_size), "--grad-accum", "1", "--lr", str(args.lr), "--optim", "adamw",
                            "--no-push", "--output", str(work / "ck"), "--threads", str(args.threads)], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        t_train = time.perf_counter() - t0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "neon_runtime.cli", "--model", str(model),
                                   "--port", str(port), "--log-level", "warning", "--threads", str(args.threads)],
                                  env=env)
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(1)
            rows = {}
            for ablation in ("none", "blank-image", "other-block"):
                rows[ablation] = evaluate(f"ws://127.0.0.1:{port}/ws", args.eval, 10_000, work / f"eval_{ablation}",
                                          ablation=ablation, progress=False)
        finally:
            server.terminate()
            server.wait(timeout=30)
    trained = (f"{args.model}" if args.model else f"{args.backbone}; {args.episodes} expert episodes ({t_collect:.0f} s "
               f"to collect), backbone pretraining {t_pretrain:.0f} s (0: cached), {args.max_steps} steps of "
               f"{args.batch_size} ({t_train:.0f} s, feature caching included)")
    print(f"# {trained}; {args.eval} held-out seeds from 10000, through neon-serve")
    print(f"{'policy':22s} {'success':>8s} {'95% CI':>13s} {'s / episode':>12s}")
    for ablation, r in rows.items():
        lo, hi = r["success_ci95"]
        name = "full" if ablation == "none" else ablation
        print(f"{name:22s} {r['success_rate']:8.2f} {lo:6.2f}-{hi:5.2f} {r['seconds_per_episode']:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
