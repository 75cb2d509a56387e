"""Shared fixtures. Everything runs offline: real transformers classes on the tiny backbones."""

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

# Before anything imports huggingface_hub: never touch the network, keep tiny builds in one place per machine.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("NEON_CACHE_DIR", str(Path(tempfile.gettempdir()) / "neon-test-cache"))

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def backbones():
    """Loaded tiny backbones, keyed by their settings; loaded lazily and reused.

    `get(model_id, load_in_4bit)` for the defaults, or `get(backbone_config)` for given settings.
    """
    import dataclasses

    from neon.backbones.loader import Backbone
    from neon.config import BackboneConfig

    cache = {}

    def get(model_id, load_in_4bit: bool = False):
        cfg = model_id if isinstance(model_id, BackboneConfig) else BackboneConfig(model_id=model_id,
                                                                                   load_in_4bit=load_in_4bit)
        cfg = dataclasses.replace(cfg)
        cfg.validate()
        key = tuple(sorted(dataclasses.asdict(cfg).items()))
        if key not in cache:
            cache[key] = Backbone(cfg)
        return cache[key]

    return get


def tiny_config(backbone: str, mode: str = "arms_only", **kw):
    """A small NeonConfig on a tiny backbone (narrow heads keep the suite fast)."""
    from neon.presets import model_config

    kw = {"fusion_dim": 64, "fusion_heads": 4, "mlp_hidden": 64, "proprioception_hidden": 64, **kw}
    return model_config(backbone, mode, **kw)


def as_trained(model, steps: int = 1):
    """Random weights standing in for trained heads: for tests of the plumbing, which must see executable chunks.
    (A model whose checkpoint records no training steps is dry-run only.)"""
    model.trained_steps = steps
    return model


def random_weights(model, seed: int = 0):
    """Every parameter drawn from N(0, 0.05²), seeded: non-trivial values, as training would leave them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def attach(model, backbones, load_in_4bit: bool = False):
    """Give a model a (shared) tiny backbone with the model's feature settings instead of loading a new one."""
    import dataclasses

    model.backbone = backbones(dataclasses.replace(model.config.backbone, load_in_4bit=load_in_4bit))
    return model.eval()


def scene(seed: int = 0, h: int = 120, w: int = 160) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def heads_inputs(model, batch: dict, sources: list, cache=None):
    """NeonInputs for a soup batch, features from the live backbone or through a FeatureCache (as the trainer does)."""
    from neon_train.feature_cache import CachedFeatures

    features = model.features() if cache is None else CachedFeatures(cache, sources, model.features())
    return model.inputs(batch["obs"], features, (batch["source"], batch["row"]))


@contextlib.contextmanager
def spinning_node(name: str):
    """rclpy in this process: a node spun on a background thread, for tests that publish or listen."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node(name)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield node
    finally:
        executor.shutdown(timeout_sec=5)
        thread.join(timeout=5)
        node.destroy_node()
        rclpy.try_shutdown()


def wait_for(cond, timeout: float = 60.0, poll_s: float = 0.05) -> bool:
    """Poll `cond()` every `poll_s` until it is true (True) or `timeout` seconds have passed (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll_s)
    return False
