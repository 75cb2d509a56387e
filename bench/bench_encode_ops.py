"""How many operators one backbone encode dispatches, counted with torch.profiler on CPU (a benchmark).

    .venv/bin/python bench/bench_encode_ops.py [--model neon-tiny/qwen2.5-vl] [--compile-mode default|none]

On a GPU most operators are kernel launches, and issue 24 measured the Qwen2.5-VL-3B encode as launch-bound (2,487
launches for 24 ms of GPU work in 81 ms). This counts, on CPU, the operators one encode of one 224x224 frame and an
instruction dispatches (top-level `aten::` calls, and all of them), step by step towards a captured encode:

  last layer            transformers' forward, the language model read at its last layer (Neon before issue 21)
  middle layer          the same, read at the middle layer (the layers after it dropped at load; today's default)
  static                `encode="static"` (neon/backbones/static.py): prompt, rope and window indices fixed once,
                        vision attention one SDPA call per layer, pooling by fixed indices
  static + compile      the static path through torch.compile (inductor on CPU; on a GPU, --compile-mode
                        reduce-overhead records it as CUDA graphs), with the compile time and dynamo's graph count

A falling count is the figure that stands in for fewer launches; CPU wall time is printed too. The GPU figures are
not measured here (bench/bench_gpu.py on a GPU machine).
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
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode of the last row ('none': skip it)")
    args = ap.parse_args()
    import torch

    from neon.backbones.loader import Backbone
    from neon.config import BackboneConfig

    torch.set_num_threads(1)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    text = "touch the red block"
    steps = [("last layer", {"hidden_layer": -1}), ("middle layer (default; later layers dropped)", {}),
             ("middle layer, static", {"encode": "static"})]
    if args.compile_mode != "none":
        steps.append((f"middle layer, static + torch.compile ({args.compile_mode})",
                      {"encode": "static", "compile_mode": args.compile_mode}))
    rows, reference = [], None
    for label, overrides in steps:
        bb = Backbone(BackboneConfig(model_id=args.model, load_in_4bit=False, **overrides), device="cpu")
        torch._dynamo.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            features = bb.encode([image], [text])  # the first call: plans, and the compile where there is one
        first_s = time.perf_counter() - t0
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] if "compile" in label else None
        if "middle" in label:
            reference = features if reference is None else reference
            gap = (features - reference).abs().max().item()
        else:
            gap = None
        rows.append((label, *count(bb, image, text), bb.info.layers_kept, bb.info.layers_total, first_s, graphs, gap))
    print(f"# {args.model}, one 224x224 frame + instruction, CPU, 1 thread (operator counts stand in for GPU launches)")
    print("| encode | LM layers run | top-level aten ops | all aten ops | CPU ms (profiled) | first call s | "
          "graphs | max abs diff vs eager middle |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, top, total, ms, kept, layers, first_s, graphs, gap in rows:
        print(f"| {label} | {kept} of {layers} | {top} | {total} | {ms:.1f} | {first_s:.1f} | "
              f"{'' if graphs is None else graphs} | {'' if gap is None else f'{gap:.1e}'} |")


if __name__ == "__main__":
    main()
