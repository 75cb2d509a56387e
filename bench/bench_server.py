"""neon-serve round trips, server overhead and throughput on loopback (a benchmark, not a test).

    .venv/bin/python bench/bench_server.py [--requests 60]

All in one run, on the tiny VL backbone with standard heads and a 224x224x3 image:
  1. HTTP (msgpack) and WebSocket round-trip p50/p99;
  2. server overhead (round trip minus the model's own time) next to a bare
     `websockets` echo server answering the same payload;
  3. throughput with 1, 4 and 16 concurrent WebSocket clients, with
     micro-batching (max 16 per forward, 5 ms window) and without (max 1).
"""

from __future__ import annotations

import argparse
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
import websockets.sync.server as ws_server
from serving import runner_for, serve

from neon.model import NeonVLA
from neon.presets import model_config
from neon_runtime import wire
from neon_runtime.safety import SafetyConfig
from neon_runtime.server import ServerSettings, create_app


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def observation(i: int) -> dict:
    img = np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return {"observation/image": img, "prompt": "pick up the red block", "observation/state": np.zeros(28, np.float32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=60)
    args = ap.parse_args()
    cfg = model_config("neon-tiny/qwen2.5-vl", "arms_only")
    cfg.backbone.load_in_4bit = False
    model = NeonVLA(cfg).load_backbone()
    payload = wire.packb(observation(0))
    print(f"# tiny VL backbone, standard heads, 224x224x3 uint8 image ({len(payload) / 1024:.0f} KiB msgpack), "
          f"{args.requests} sequential requests per row")

    def run_server(max_batch: int):
        runner = runner_for(model, SafetyConfig(), max_batch=max_batch, max_wait_ms=5 if max_batch > 1 else 0)
        return runner, serve(create_app(runner, ServerSettings()))

    runner, ctx = run_server(16)
    with ctx as addr:
        http_rt, http_model, ws_rt, ws_model = [], [], [], []
        with httpx.Client() as c:
            for _ in range(args.requests):
                t0 = time.perf_counter()
                r = c.post(f"http://{addr}/predict", content=payload,
                           headers={"content-type": "application/msgpack", "accept": "application/msgpack"})
                http_rt.append(time.perf_counter() - t0)
                http_model.append(wire.unpackb(r.content)["server_timing"]["model_batch"] / 1e3)
        with ws_client.connect(f"ws://{addr}/ws", compression=None, max_size=None) as c:
            c.recv()
            for _ in range(args.requests):
                t0 = time.perf_counter()
                c.send(payload)
                out = wire.unpackb(c.recv())
                ws_rt.append(time.perf_counter() - t0)
                ws_model.append(out["server_timing"]["model_batch"] / 1e3)
    runner.close()

    def echo(conn):
        for msg in conn:
            conn.send(msg)

    echo_rt = []
    with ws_server.serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        port = srv.socket.getsockname()[1]
        with ws_client.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as c:
            for _ in range(args.requests):
                t0 = time.perf_counter()
                c.send(payload)
                c.recv()
                echo_rt.append(time.perf_counter() - t0)
        srv.shutdown()

    print(f"\n{'transport':28s} {'p50 ms':>8s} {'p99 ms':>8s}")
    print(f"{'HTTP /predict (msgpack)':28s} {pct(http_rt, 50):8.2f} {pct(http_rt, 99):8.2f}")
    print(f"{'WebSocket /ws':28s} {pct(ws_rt, 50):8.2f} {pct(ws_rt, 99):8.2f}")
    ho = np.array(http_rt) - np.array(http_model)
    wo = np.array(ws_rt) - np.array(ws_model)
    print(f"{'HTTP overhead (rt - model)':28s} {pct(ho, 50):8.2f} {pct(ho, 99):8.2f}")
    print(f"{'WS overhead (rt - model)':28s} {pct(wo, 50):8.2f} {pct(wo, 99):8.2f}   (a lone client skips the batching window)")
    print(f"{'bare websockets echo':28s} {pct(echo_rt, 50):8.2f} {pct(echo_rt, 99):8.2f}")

    print(f"\n{'clients':>8s} {'batching obs/s':>15s} {'no batching obs/s':>18s} {'ratio':>6s}")
    rates = {}
    for max_batch in (16, 1):
        runner, ctx = run_server(max_batch)
        with ctx as addr:
            for clients in (1, 4, 16):
                per = max(4, args.requests // clients)
                done = []

                def client(k, per=per, addr=addr, done=done):
                    msg = wire.packb(observation(k))
                    with ws_client.connect(f"ws://{addr}/ws", compression=None, max_size=None) as c:
                        c.recv()
                        for _ in range(per):
                            c.send(msg)
                            wire.unpackb(c.recv())
                            done.append(1)

                threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                rates[(max_batch, clients)] = len(done) / (time.perf_counter() - t0)
        runner.close()
    for clients in (1, 4, 16):
        a, b = rates[(16, clients)], rates[(1, clients)]
        print(f"{clients:8d} {a:15.1f} {b:18.1f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
