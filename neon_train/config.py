"""Training configuration and the named presets.

24 grid presets ({Omni-7B, Omni-3B, Cosmos-8B, Cosmos-2B, VL-7B, VL-3B} x
{arms_only, whole_body} x {standard, large}) named like `omni7b_arms_only_standard`,
plus the original design's names (default_arms_only, default_wholebody,
cosmos_physics, edge_3b, large_arms, large_cosmos, large_wholebody,
g1_omnimodal). Each preset is a function returning a fresh `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from neon.config import ConfigError, NeonConfig
from neon.data.soup import DataSoupConfig, DataSourceConfig
from neon.presets import NAMED_MODEL_CONFIGS, grid_model_configs

# Optimisation per scale (the design's table): lr, batch, accumulation.
SCALE_TRAINING = {
    "standard": dict(learning_rate=2e-4, batch_size=4, gradient_accumulation=8),
    "large": dict(learning_rate=1e-4, batch_size=2, gradient_accumulation=16),
}
OPTIMIZERS = ("paged_adamw_8bit", "adamw")


@dataclass
class TrainConfig:
    model: NeonConfig = field(default_factory=NeonConfig)
    data: DataSoupConfig = field(default_factory=DataSoupConfig)
    epochs: int = 3
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 4
    gradient_accumulation: int = 8
    learning_rate: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    adam_beta1: float = 0.85
    adam_beta2: float = 0.95
    max_grad_norm: float = 0.3
    optim: str = "paged_adamw_8bit"
    bf16: bool = True  # bf16 autocast for the heads on GPUs that support it
    seed: int = 42
    output_dir: str = "outputs/neon"
    push_to_hub: bool = True  # Hugging Face Jobs have ephemeral disks
    hub_model_id: str | None = None
    hub_private: bool = False
    save_steps: int = 500
    eval_steps: int = 250
    logging_steps: int = 10
    progress_steps: int = 50  # a progress line in the log (step, loss, samples/s, ETA) every this many steps
    val_fraction: float = 0.1  # held-out episodes per source (seeded); recorded in split.json
    val_max_samples: int = 256  # held-out frames scored at each evaluation
    feature_cache: bool | None = None  # None: on unless image augmentation is on
    feature_cache_dir: str | None = None  # default ~/.cache/neon/features
    image_augmentation: bool = False
    num_workers: int = 2
    group_loss_weights: dict[str, float] = field(default_factory=dict)  # e.g. {"hands": 2.0}
    speech_loss_weight: float = 0.1

    @property
    def use_feature_cache(self) -> bool:
        return (not self.image_augmentation) if self.feature_cache is None else self.feature_cache

    def validate(self) -> TrainConfig:
        if isinstance(self.model, dict):
            self.model = NeonConfig.from_dict(self.model)
        if isinstance(self.data, dict):
            self.data = DataSoupConfig(**self.data)
        self.model.validate()
        checks = [
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", "must be at least 1 or None"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.gradient_accumulation >= 1, "gradient_accumulation", "must be at least 1"),
            (self.learning_rate > 0, "learning_rate", "must be positive"),
            (self.warmup_steps >= 0, "warmup_steps", "must be >= 0"),
            (self.progress_steps >= 1, "progress_steps", "must be at least 1"),
            (0 < self.adam_beta1 < 1 and 0 < self.adam_beta2 < 1, "adam_beta1/adam_beta2", "must be in (0, 1)"),
            (self.max_grad_norm > 0, "max_grad_norm", "must be positive"),
            (self.optim in OPTIMIZERS, "optim", f"must be one of {OPTIMIZERS}"),
            (0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)"),
            (not (self.push_to_hub and not self.hub_model_id), "hub_model_id",
             "is required when push_to_hub is true (or pass --no-push)"),
            (not (self.image_augmentation and self.feature_cache), "feature_cache",
             "cannot be on with image_augmentation: augmented frames are new every time"),
            (all(g in self.model.action_space().groups for g in self.group_loss_weights), "group_loss_weights",
             f"names a group outside {self.model.action_space().groups}"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ConfigError(f"{name}: {why}, got {getattr(self, name.split('/')[0], None)!r}")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s): {', '.join(unknown)}")
        model = NeonConfig.from_dict(data.pop("model", {}))
        soup = data.pop("data", {})
        soup = DataSoupConfig(**{**soup, "sources": [DataSourceConfig(**s) for s in soup.get("sources", [])]})
        return cls(model=model, data=soup, **data)


def _scale_of(cfg: NeonConfig) -> str:
    return "large" if cfg.mlp_hidden >= 2048 else "standard"


def _preset(model_factory: Callable[[], NeonConfig]) -> Callable[[], TrainConfig]:
    def make() -> TrainConfig:
        model = model_factory()
        return TrainConfig(model=model, **SCALE_TRAINING[_scale_of(model)])

    return make


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    **{name: _preset(f) for name, f in grid_model_configs().items()},
    **{name: _preset(f) for name, f in NAMED_MODEL_CONFIGS.items()},
}
assert len(PRESETS) == 24 + 8, "preset names must be unique"


def get_preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


# The guide's Python API: `from neon_train.config import large_arms_config`.
default_arms_only_config = partial(get_preset, "default_arms_only")
default_wholebody_config = partial(get_preset, "default_wholebody")
cosmos_physics_config = partial(get_preset, "cosmos_physics")
edge_3b_config = partial(get_preset, "edge_3b")
large_arms_config = partial(get_preset, "large_arms")
large_cosmos_config = partial(get_preset, "large_cosmos")
large_wholebody_config = partial(get_preset, "large_wholebody")
g1_omnimodal_config = partial(get_preset, "g1_omnimodal")
