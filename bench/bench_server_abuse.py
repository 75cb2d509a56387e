"""neon-serve under abuse: robots' light-request latency with and without one misbehaving client (a benchmark).

    .venv/bin/python bench/bench_server_abuse.py [--robots 16] [--seconds 20] [--threads 1]

One run, uvicorn on loopback, the tiny VL backbone with standard heads. Each simulated robot is two WebSocket
connections under one client_id (as `TwoRateRunner` runs them): a full request (224x224 image, instruction, state)
at 5 Hz and a light request (state only, on its stored features, naming their key) at 30 Hz. Twice over the same
robots: alone, then beside one abusive client sending, as fast as the server answers it, 4096 x 4096 PNGs (refused
before decoding), 2048 x 2048 PNGs (the largest allowed: decoded, then encoded) and garbage bytes. Printed: the
robots' light-request round trip p50/p99 in both runs and their ratio (target <= 1.5), robot errors (target 0),
what the abuser was answered, and whether the server is ready after.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx
import numpy as np
import websockets.sync.client as ws_client
from serving import runner_for, serve

from neon.model import NeonVLA
from neon.presets import model_config
from neon_runtime import wire
from neon_runtime.client import RemoteError, RemotePolicy
from neon_runtime.safety import SafetyConfig
from neon_runtime.server import ServerSettings, create_app


def png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
                    if side <= 2048 else np.zeros((side, side, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def robot(k: str, url: str, stop: threading.Event, light_rt: list, errors: list) -> None:
    """Full requests at 5 Hz on one connection, light ones at 30 Hz on a sibling, until `stop`."""
    img = np.random.default_rng(abs(hash(k)) % 2**32).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    policy = RemotePolicy(url, client_id=f"robot-{k}")
    refresher = policy.sibling()

    def refresh():
        while not stop.wait(0.2):
            try:
                refresher.infer({"image": img, "instruction": "wave", "state": np.zeros(28, np.float32),
                                 "timestamp": time.time()})
            except RemoteError as e:
                errors.append(f"full: {e}")

    t = threading.Thread(target=refresh, daemon=True)
    t.start()
    while not stop.is_set() and policy._keys.get("features") is None:
        time.sleep(0.01)
    next_at = time.monotonic()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            policy.heads(np.zeros(28, np.float32), timestamp=time.time())
            light_rt.append(time.perf_counter() - t0)
        except RemoteError as e:
            errors.append(f"light: {e}")
        next_at = max(next_at + 1 / 30, time.monotonic())
        stop.wait(next_at - time.monotonic())
    t.join()
    policy.close()
    refresher.close()


def abuser(url: str, stop: threading.Event, answers: dict) -> None:
    payloads = [wire.packb({"image": png(4096), "instruction": "x", "state": np.zeros(28, np.float32)}),
                wire.packb({"image": png(2048), "instruction": "x", "state": np.zeros(28, np.float32)}),
                os.urandom(50_000)]
    with ws_client.connect(url, compression=None, max_size=None) as c:
        c.recv()
        k = 0
        while not stop.is_set():
            c.send(payloads[k % 3])
            reply = wire.unpackb(c.recv())
            key = reply.get("error", "ok")
            answers[key] = answers.get(key, 0) + 1
            k += 1


def run(addr: str, robots: int, seconds: float, abuse: bool) -> dict:
    url, stop, light_rt, errors, answers = f"ws://{addr}/ws", threading.Event(), [], [], {}
    run_name = "abused" if abuse else "alone"  # client_ids of their own: the first run's may still be in use
    threads = [threading.Thread(target=robot, args=(f"{run_name}-{k}", url, stop, light_rt, errors))
               for k in range(robots)]
    if abuse:
        threads.append(threading.Thread(target=abuser, args=(url, stop, answers)))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    ms = np.array(light_rt or [np.nan]) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "light": len(ms),
            "errors": errors, "abuser": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--robots", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cfg = model_config("neon-tiny/qwen2.5-vl", "arms_only")
    cfg.backbone.load_in_4bit = False
    model = NeonVLA(cfg).load_backbone()
    runner = runner_for(model, SafetyConfig(max_observation_age_s=2.0, max_feature_age_s=5.0), max_batch=16,
                        max_wait_ms=5, max_feature_clients=64)
    with serve(create_app(runner, ServerSettings())) as addr:
        rows = {name: run(addr, args.robots, args.seconds, abuse) for name, abuse in (("alone", False),
                                                                                      ("with abuser", True))}
        ready = httpx.get(f"http://{addr}/ready", timeout=10).status_code == 200
    runner.close()
    print(f"# {args.robots} robots (full 5 Hz + light 30 Hz each), {args.seconds:g} s per run, tiny VL backbone, "
          f"{args.threads} torch thread(s), loopback")
    print("| run | light requests | light p50 ms | light p99 ms | robot errors | abuser answered |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['light']} | {r['p50']:.1f} | {r['p99']:.1f} | {len(r['errors'])} | "
              f"{', '.join(f'{k} {v}' for k, v in sorted(r['abuser'].items())) or '-'} |")
    a, b = rows["alone"], rows["with abuser"]
    print(f"\nwith / without the abuser: p50 {b['p50'] / a['p50']:.2f}x, p99 {b['p99'] / a['p99']:.2f}x "
          f"(target <= 1.5); server ready after: {ready}")
    for r in rows.values():
        for e in r["errors"][:3]:
            print(f"robot error: {e}")


if __name__ == "__main__":
    main()
