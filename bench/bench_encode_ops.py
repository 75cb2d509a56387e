"""How many operators one backbone encode dispatches, counted with torch.profiler on CPU (a benchmark).

    .venv/bin/python bench/bench_encode_ops.py [--model neon-tiny/qwen2.5-vl]

On a GPU most operators are kernel launches, and issue 24 measured the Qwen2.5-VL-3B encode as launch-bound (2,487
launches for 24 ms of GPU work in 81 ms). This counts, on CPU, the operators one encode of one 224x224 frame and an
instruction dispatches (top-level `aten::` calls, and all of them), for the language model read at its middle layer
(Neon's default: the layers after it are dropped at load) beside the same model read at its last layer, so each
step towards a captured, static-shape encode can show its effect as a falling count. CPU wall time is printed too,
but the GPU figures are not measured here.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np


def count(bb, image, text: str) -> tuple[int, int, float]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        bb.encode([image], [text])  # warm
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            bb.encode([image], [text])
        ms = (time.perf_counter() - t0) * 1e3
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return len(top), len(events), ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="neon-tiny/qwen2.5-vl")
    args = ap.parse_args()
    import torch

    from neon.backbones.loader import Backbone
    from neon.config import BackboneConfig

    torch.set_num_threads(1)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    rows = []
    for label, overrides in (("middle layer (default; later layers dropped)", {}), ("last layer", {"hidden_layer": -1})):
        bb = Backbone(BackboneConfig(model_id=args.model, load_in_4bit=False, **overrides), device="cpu")
        rows.append((label, *count(bb, image, "touch the red block"), bb.info.layers_kept, bb.info.layers_total))
    print(f"# {args.model}, one 224x224 frame + instruction, CPU, 1 thread (operator counts stand in for GPU launches)")
    print("| language model read at | LM layers run | top-level aten ops | all aten ops | CPU ms (profiled) |")
    print("|---|---:|---:|---:|---:|")
    for label, top, total, ms, kept, layers in rows:
        print(f"| {label} | {kept} of {layers} | {top} | {total} | {ms:.1f} |")


if __name__ == "__main__":
    main()
