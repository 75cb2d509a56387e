"""Send one observation to a running neon-serve and print the chunk (a smoke test for a deployment).

    .venv/bin/python -m neon_runtime.query [--url http://127.0.0.1:8000] [--instruction "pick up the red block"]

It talks to the server the way every Neon client does: a `RemotePolicy` on its WebSocket.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from neon_runtime.client import RemoteError, RemotePolicy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--instruction", default="pick up the red block")
    ap.add_argument("--token")
    args = ap.parse_args(argv)
    img = np.full((224, 224, 3), 128, np.uint8)
    img[112:] = (120, 90, 60)
    img[150:178, 50:78] = (210, 40, 40)  # a red block on the left of the table
    try:
        policy = RemotePolicy("ws" + args.url.removeprefix("http").rstrip("/") + "/ws", args.token)  # http -> ws
        meta = policy.metadata()
        names = [j["name"] for j in meta["action_space"]["joints"]]
        out = policy.infer({"image": img, "instruction": args.instruction, "state": np.zeros(len(names), np.float32),
                            "timestamp": time.time()})
        policy.close()
    except RemoteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    a = np.asarray(out["actions"])
    print(f"model: {meta['model']['note'] or meta['model']['source']}")
    print(f"chunk {a.shape[0]} x {a.shape[1]} at {out['fps']:g} fps; speech {out['speech']!r}; dry_run={out['dry_run']}")
    for name, col in list(zip(names, a.T, strict=True))[:6]:
        print(f"  {name:22s} " + " ".join(f"{v:+.3f}" for v in col[:8]) + " ...")
    print("server timing (ms): " + ", ".join(f"{k} {v}" for k, v in out["server_timing"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
