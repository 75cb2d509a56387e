"""Image augmentation for training: a small random crop and colour jitter.

Applied to the camera frame before the frozen backbone, so it turns the
feature cache off (every view is new). Off by default.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance


def augment(image: np.ndarray, rng: np.random.Generator, min_scale: float = 0.85, jitter: float = 0.2) -> np.ndarray:
    """UInt8[(H, W, 3)] -> a randomly cropped (back to H x W) and colour-jittered copy."""
    h, w = image.shape[:2]
    s = rng.uniform(min_scale, 1.0)
    ch, cw = max(1, int(h * s)), max(1, int(w * s))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    im = Image.fromarray(image[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhance(im).enhance(rng.uniform(1 - jitter, 1 + jitter))
    return np.asarray(im)
