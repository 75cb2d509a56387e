"""Pushing checkpoints to the Hugging Face Hub, with retries and a generated model card.

The local checkpoint is always written first; a push that fails (no network,
no token, Hub down) is retried with backoff, then reported -- it never touches
the local copy.
"""

from __future__ import annotations

from pathlib import Path

from neon.hub import push_folder


def push_checkpoint(folder: str | Path, repo_id: str, private: bool = False, message: str = "Neon checkpoint",
                    retries: int = 3, backoff_s: float = 2.0) -> dict:
    """Upload a checkpoint folder (see `neon.hub.push_folder`)."""
    return push_folder(folder, repo_id, private, message, retries, backoff_s)


def model_card(cfg, best_loss: float, best_step: int, step: int) -> str:
    m = cfg.model
    sources = "\n".join(f"- `{s.name}` ({s.type}, weight {s.weight}): `{s.path}`" for s in cfg.data.sources)
    return f"""---
library_name: neon
tags: [robotics, vla, unitree-g1, lerobot]
base_model: {m.backbone.model_id}
---

# Neon VLA for the Unitree G1 ({m.control_mode})

Trainable heads on a frozen `{m.backbone.model_id}` backbone (4-bit: {m.backbone.load_in_4bit}).
The backbone is not part of this repository; it loads from the Hub at inference time.

- action space: G1 `{m.control_mode}`, {m.hand_type} hands, {m.num_action_steps}-step chunks at {m.fps:g} fps
- heads: fusion_dim {m.fusion_dim}, mlp_hidden {m.mlp_hidden}, {m.action_head_layers} layers;
  audio {m.use_audio}, LiDAR {m.use_lidar}, EEF {m.use_eef}
- best held-out loss (normalised MSE): {best_loss:.5f} at step {best_step} of {step}

## Data

{sources}

## Use

```python
from neon.model import NeonVLA

model = NeonVLA.from_pretrained("{cfg.hub_model_id or cfg.output_dir}").load_backbone()
out = model.predict(image=frame, instruction="pick up the cup", state=joint_positions)
```
"""
