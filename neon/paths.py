"""Where Neon keeps what it builds or downloads itself: `$NEON_CACHE_DIR`, else `~/.cache/neon`.

Everything below it can be deleted at any time; it is rebuilt on demand.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("NEON_CACHE_DIR", Path.home() / ".cache" / "neon"))


def tiny_models_dir() -> Path:  # offline tiny backbones (neon.backbones.tiny)
    return cache_root() / "tiny"


def features_dir() -> Path:  # backbone feature cache (neon_train.feature_cache)
    return cache_root() / "features"


def norm_stats_dir() -> Path:  # per-source normalisation moments (neon.data.stats)
    return cache_root() / "norm_stats"


def default_model_dir() -> Path:  # the embedded default checkpoint (neon_runtime.default_model)
    return cache_root() / "default"
