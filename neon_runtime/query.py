"""Send one observation to a running neon-serve and print the chunk (a smoke test for a deployment).

    .venv/bin/python -m neon_runtime.query [--url http://127.0.0.1:8000] [--instruction "pick up the red block"]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--instruction", default="pick up the red block")
    ap.add_argument("--token")
    args = ap.parse_args(argv)
    meta = json.load(urllib.request.urlopen(f"{args.url}/metadata", timeout=10))
    names = [j["name"] for j in meta["action_space"]["joints"]]
    img = np.full((224, 224, 3), 128, np.uint8)
    img[112:] = (120, 90, 60)
    img[150:178, 50:78] = (210, 40, 40)  # a red block on the left of the table
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    body = {"image": base64.b64encode(buf.getvalue()).decode(), "instruction": args.instruction,
            "state": [0.0] * len(names), "timestamp": time.time()}
    req = urllib.request.Request(f"{args.url}/predict", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json",
                                          **({"authorization": f"Bearer {args.token}"} if args.token else {})})
    try:
        out = json.load(urllib.request.urlopen(req, timeout=60))
    except urllib.error.HTTPError as e:
        print(f"error {e.code}: {e.read().decode()}", file=sys.stderr)
        return 1
    a = np.array(out["actions"])
    print(f"model: {meta['model']['note'] or meta['model']['source']}")
    print(f"chunk {a.shape[0]} x {a.shape[1]} at {out['fps']:g} fps; speech {out['speech']!r}; dry_run={out['dry_run']}")
    for name, col in list(zip(names, a.T, strict=True))[:6]:
        print(f"  {name:22s} " + " ".join(f"{v:+.3f}" for v in col[:8]) + " ...")
    print("server timing (ms): " + ", ".join(f"{k} {v}" for k, v in out["server_timing"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
