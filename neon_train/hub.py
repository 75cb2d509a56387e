"""Pushing checkpoints to the Hugging Face Hub, with retries and a generated model card.

The local checkpoint is always written first; a push that fails (no network,
no token, Hub down) is retried with backoff, then reported -- it never touches
the local copy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def push_checkpoint(folder: str | Path, repo_id: str, private: bool = False, message: str = "Neon checkpoint",
                    retries: int = 3, backoff_s: float = 2.0) -> dict:
    """Upload `folder` to the model repo `repo_id`; returns {"ok", "repo_id", "attempts", "error"}."""
    from huggingface_hub import HfApi

    api = HfApi()
    error = None
    for attempt in range(1, retries + 1):
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
            log.info("pushed %s to https://huggingface.co/%s", folder, repo_id)
            return {"ok": True, "repo_id": repo_id, "attempts": attempt, "error": None}
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            log.warning("push to %s failed (attempt %d/%d): %s", repo_id, attempt, retries, error)
            if attempt < retries:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    return {"ok": False, "repo_id": repo_id, "attempts": retries, "error": error}


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
