"""Model configurations behind the named presets of the original design.

The trainer (`neon_train`) adds batch size, learning rate and the rest on top
of these; here is only what decides the architecture and so the trainable
parameter count. `TARGET_PARAMS` are the design's published counts, checked
(within 15%) by the tests.

The backbone's precision is "auto" (dense, bf16, where the training GPU holds it, else nf4; recorded in the
checkpoint) except for `edge_3b`, which is nf4: nf4 is for memory-bound devices such as the G1's Jetson.
"""

from __future__ import annotations

from collections.abc import Callable

from neon.backbones.registry import ALIASES, canonical_id
from neon.config import BackboneConfig, NeonConfig

BACKBONE_SHORT = {k: v for k, v in ALIASES.items() if not k.startswith("tiny")}  # the preset grid's backbones

# Head sizes per scale; everything else keeps NeonConfig's defaults.
SCALES = {
    "standard": dict(mlp_hidden=512, action_head_layers=3, proprioception_hidden=256),
    "large": dict(mlp_hidden=2048, action_head_layers=8, proprioception_hidden=512),
}


def model_config(backbone: str, mode: str, scale: str = "standard", **overrides) -> NeonConfig:
    """NeonConfig for a backbone (id or short name), control mode and scale."""
    model_id = canonical_id(backbone)
    cfg = NeonConfig(backbone=BackboneConfig(model_id=model_id), control_mode=mode, **{**SCALES[scale], **overrides})
    return cfg.validate()


# Prefix conditioning (training-time real-time chunking) for a preset served where a request takes several chunk
# steps: the heads learn to continue from the steps the robot committed to while the request was in flight.
# 8 steps cover 267 ms of latency at 30 fps. Any preset takes it with `neon-train --prefix-steps N`.
REALTIME_CHUNKING = dict(prefix_max_steps=8, prefix_probability=0.5)


def _edge_3b() -> NeonConfig:
    # Jetson-sized: half-width fusion and heads on Omni-3B (about 2M trainable parameters). On the robot's own
    # computer a request spans several chunk steps, so its heads continue from the committed ones. The backbone is
    # nf4 wherever it is trained: the Jetson's 16 GB are shared with the CPU, the ROS node and the drivers, and the
    # heads must be trained on the features the robot will compute.
    cfg = model_config("omni3b", "arms_only", fusion_dim=256, mlp_hidden=256, proprioception_hidden=256,
                       **REALTIME_CHUNKING)
    cfg.backbone.load_in_4bit = True
    return cfg


def _g1_omnimodal() -> NeonConfig:
    return model_config("omni7b", "whole_body", use_audio=True, use_lidar=True, use_eef=True)


NAMED_MODEL_CONFIGS: dict[str, Callable[[], NeonConfig]] = {
    "default_arms_only": lambda: model_config("omni7b", "arms_only"),
    "default_wholebody": lambda: model_config("omni7b", "whole_body"),
    "cosmos_physics": lambda: model_config("cosmos8b", "arms_only"),
    "edge_3b": _edge_3b,
    "large_arms": lambda: model_config("omni7b", "arms_only", "large"),
    "large_cosmos": lambda: model_config("cosmos8b", "arms_only", "large"),
    "large_wholebody": lambda: model_config("omni7b", "whole_body", "large"),
    "g1_omnimodal": _g1_omnimodal,
}

# Trainable parameter counts published by the original design (the backbone excluded).
TARGET_PARAMS = {
    "default_arms_only": 7.3e6,
    "default_wholebody": 10e6,
    "cosmos_physics": 8e6,
    "edge_3b": 2e6,
    "large_arms": 44e6,
    "large_cosmos": 44e6,
    "large_wholebody": 55e6,
}


def grid_model_configs() -> dict[str, Callable[[], NeonConfig]]:
    """The 24 backbone x mode x scale configs, named like `omni7b_arms_only_standard`."""
    out = {}
    for short in BACKBONE_SHORT:
        for mode in ("arms_only", "whole_body"):
            for scale in SCALES:
                out[f"{short}_{mode}_{scale}"] = (lambda s=short, m=mode, sc=scale: model_config(s, m, sc))
    return out


def get_model_config(name: str) -> NeonConfig:
    table = {**NAMED_MODEL_CONFIGS, **grid_model_configs()}
    if name not in table:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(table))}")
    return table[name]()
