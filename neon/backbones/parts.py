"""Where a loaded Qwen model keeps its parts, across transformers versions (a leaf: loader and static use it)."""

from __future__ import annotations

import torch


def model_parts(model) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(multimodal model, vision tower, text model) of a loaded Qwen model. The multimodal model takes the
    processor's inputs, puts the image features in place of the image tokens and runs the text model on them:
    `model.model` (Qwen2.5-VL, Qwen3-VL, and Qwen2.5-Omni's thinker from transformers 5.25 on) with its `.visual`
    and `.language_model`; for the Omni thinker before that, the thinker itself, its `.visual` and its `.model`."""
    inner = model.model
    if hasattr(inner, "visual"):
        return inner, inner.visual, getattr(inner, "language_model", inner)
    return model, model.visual, inner
