"""The model card written into every checkpoint the trainer saves (pushing itself: `neon.hub.push_folder`)."""

from __future__ import annotations



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
  audio {m.use_audio}, LiDAR {m.use_lidar}, EEF {m.use_eef}; continues from up to {m.prefix_max_steps} committed
  steps (`predict(..., prefix=...)`; 0 = off)
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
