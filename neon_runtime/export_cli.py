"""`neon-export`: write a checkpoint's trainable part (encoders, fusion, heads) as ONNX beside it.

    neon-export --model runs/tiny/best                  # -> runs/tiny/best/onnx/neon_heads.onnx + export.json
    neon-export --model you/neon-g1-v1 --out exports/g1 --push you/neon-g1-v1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neon-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder or Hub repo id")
    ap.add_argument("--out", help="output folder (default: <checkpoint>/onnx)")
    ap.add_argument("--push", metavar="REPO_ID", help="also upload the export into REPO_ID's onnx/ folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from neon.checkpoint import CheckpointError
    from neon.checkpoint import resolve_checkpoint
    from neon.model import NeonVLA
    from neon_runtime.onnx_heads import ONNX_DIR, export_heads

    try:
        directory = resolve_checkpoint(args.model)
        model = NeonVLA.from_pretrained(directory)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else directory / ONNX_DIR
    info = export_heads(model, out)
    k, h = info["vl_tokens"]
    print(f"exported {info['trainable_parameters']:,} parameters (vl_tokens: {k} backbone tokens x {h}) to {out} in "
          f"{info['seconds']} s; largest difference from PyTorch {max(info['max_abs_diff'].values()):.1e} "
          f"(tolerance {info['tolerance']:.0e})")
    print(json.dumps(info["max_abs_diff"]))
    if args.push:
        from neon.hub import push_folder

        result = push_folder(out, args.push, message="ONNX heads", path_in_repo=ONNX_DIR)
        if not result["ok"]:
            print(f"error: push to {args.push} failed: {result['error']}; the export in {out} is complete",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
