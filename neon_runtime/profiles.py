"""Deployment profiles: one flag that sets how neon-serve runs on a given computer.

edge_3b -- the G1's Jetson Orin NX (16 GB shared by CPU and GPU): an edge_3b checkpoint
(Qwen2.5-Omni-3B in nf4 4-bit, ~2M trainable parameters), ONNX Runtime heads (TensorRT or CUDA
provider when present), one observation per forward, a warm-up before /ready, and a memory budget
that the server checks after warm-up (it refuses to serve above it).
"""

from __future__ import annotations

import resource

import torch

PROFILES: dict[str, dict] = {
    "edge_3b": {
        "heads": "onnx",
        "max_batch": 1,
        "max_wait_ms": 0.0,
        "max_memory_gb": 8.0,  # of 16 GB: leaves room for the ROS node, camera and LiDAR drivers
        "expected_backbone": "Qwen/Qwen2.5-Omni-3B",
    },
}


def memory_used_gb() -> tuple[float, str]:
    """Peak memory of this process: CUDA allocations when on a GPU, else resident set size."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**30, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"
