"""Model configuration: `BackboneConfig` and `NeonConfig`, with validation and JSON round trip.

Defaults match the standard preset (see `neon.presets`). Validation names the
field that is wrong and why.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from neon.action_space import CONTROL_MODES, HAND_TYPES, G1ActionSpace
from neon.backbones.registry import (COMPILE_MODES, DEFAULT_WHISPER, STATIC_FAMILIES, WHISPER_DIMS, BackboneSpec,
                                     canonical_id, get_spec)

CONFIG_FILE = "config.json"

DEFAULT_RESPONSES = (
    "",  # index 0: say nothing
    "Okay.",
    "On it.",
    "Done.",
    "Sorry, I can't do that.",
    "Could you repeat that?",
    "Stopping now.",
    "Hello!",
)


class ConfigError(ValueError):
    """A configuration field holds a value Neon cannot use; the message names the field."""


def _check(cond: bool, field_name: str, why: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: {why}")


POOLINGS = ("grid", "tokens", "mean")
# Backbone weight precision by name (neon-train --precision, neon info) -> BackboneConfig.load_in_4bit.
PRECISIONS = {"auto": "auto", "nf4": True, "dense": False}


def precision_name(load_in_4bit: bool | str) -> str:
    return next(name for name, value in PRECISIONS.items() if value == load_in_4bit and type(value) is type(load_in_4bit))


@dataclass
class BackboneConfig:
    """Which frozen vision-language model sees, and how its features are read.

    `hidden_layer` L reads transformers' hidden_states[L]: for L < num_layers the output of the language model's
    decoder layer L (the loader drops the layers after it, so they never run); L = num_layers or -1: the last
    layer, after the final norm. None resolves to the registry's `feature_layer` (the middle) on `validate()`, so
    a saved config always records the layer read.
    `pooling` turns the read hidden states into K tokens (`num_tokens`):
      "grid"   the image tokens on their 2-D patch grid, average-pooled to grid_size x grid_size (row-major),
               then the other valid tokens (text, special) averaged into `text_tokens` bins: K = grid_size**2 + text_tokens
      "tokens" every valid token averaged into `token_budget` bins along the sequence: K = token_budget
      "mean"   one token: K = 1
    """

    model_id: str = "Qwen/Qwen2.5-Omni-7B"
    # True: bitsandbytes nf4 with double quantisation (memory-bound devices: a Jetson, a small GPU); False: dense
    # (bf16 on CUDA); "auto": dense where the GPU has the memory, else nf4 (see neon.backbones.loader.choose_4bit),
    # settled on the first load and recorded, so a checkpoint keeps the precision its heads were trained on.
    load_in_4bit: bool | str = "auto"
    freeze_backbone: bool = True
    hidden_layer: int | None = None  # decoder layer read (1..num_layers), -1 = last after the norm, None = the middle
    pooling: str = "grid"  # "grid", "tokens" or "mean" (see above)
    token_budget: int = 16  # K for pooling="tokens"
    grid_size: int = 8  # image tokens pooled to grid_size x grid_size for pooling="grid"
    text_tokens: int = 4  # bins for the non-image tokens for pooling="grid"
    image_size: int = 224  # square input, a multiple of 32 (valid for every registered family)
    dtype: str = "auto"  # "auto" = bfloat16 on CUDA, float32 on CPU
    attn_implementation: str = "auto"  # "auto" = flash_attention_2 if installed, else sdpa
    audio_encoder_id: str | None = None  # None = the backbone's own audio tower or the default Whisper
    revision: str | None = None
    # How `Backbone.encode` runs (see neon/backbones/static.py): "eager" (transformers' forward, as loaded) or
    # "static" (prompts, rope and window indices fixed once, the prompt padded to a multiple of `prompt_bucket`
    # tokens; the same features); `compile_mode` other than "none" captures the static path with torch.compile
    # ("reduce-overhead": CUDA graphs on a GPU).
    encode: str = "eager"
    prompt_bucket: int = 32
    compile_mode: str = "none"

    @property
    def spec(self) -> BackboneSpec:
        return get_spec(self.model_id)

    @property
    def resolved_audio_encoder(self) -> str | None:
        """Hub id (or tiny id) of the Whisper encoder, or None when the backbone hears natively."""
        if self.spec.native_audio:
            return None
        if self.audio_encoder_id:
            return self.audio_encoder_id
        return "neon-tiny/whisper" if self.spec.tiny else DEFAULT_WHISPER

    @property
    def audio_dim(self) -> int:
        enc = self.resolved_audio_encoder
        return self.spec.audio_dim if enc is None else WHISPER_DIMS.get(enc, self.spec.audio_dim)

    @property
    def num_tokens(self) -> int:
        """K, the feature tokens per sample that the backbone gives for this pooling."""
        return {"grid": self.grid_size**2 + self.text_tokens, "tokens": self.token_budget, "mean": 1}[self.pooling]

    @property
    def layers_run(self) -> int:
        """Decoder layers of the language model that are loaded and run: up to the layer read."""
        layer = self.spec.feature_layer if self.hidden_layer is None else self.hidden_layer
        return self.spec.num_layers if layer == -1 else layer

    def validate(self) -> None:
        get_spec(self.model_id)  # raises with the list of known ids
        self.model_id = canonical_id(self.model_id)
        _check(isinstance(self.load_in_4bit, bool) or self.load_in_4bit == "auto", "backbone.load_in_4bit",
               f"must be true, false or \"auto\", got {self.load_in_4bit!r}")
        _check(self.freeze_backbone, "backbone.freeze_backbone",
               "Neon trains only the heads; an unfrozen backbone is not supported")
        n = self.spec.num_layers
        if self.hidden_layer is None:
            self.hidden_layer = self.spec.feature_layer
        _check(isinstance(self.hidden_layer, int) and (self.hidden_layer == -1 or 1 <= self.hidden_layer <= n),
               "backbone.hidden_layer", f"must be a decoder layer 1..{n} of {self.model_id}'s language model, or -1 "
               f"(the last, after the final norm), got {self.hidden_layer!r}")
        _check(self.pooling in POOLINGS, "backbone.pooling", f"must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        _check(1 <= self.token_budget <= 1024, "backbone.token_budget", f"must be in 1..1024, got {self.token_budget}")
        _check(1 <= self.grid_size <= 32, "backbone.grid_size", f"must be in 1..32, got {self.grid_size}")
        _check(1 <= self.text_tokens <= 256, "backbone.text_tokens", f"must be in 1..256, got {self.text_tokens}")
        _check(self.image_size >= 64 and self.image_size % 32 == 0, "backbone.image_size",
               f"must be a multiple of 32 and at least 64, got {self.image_size}")
        _check(self.dtype in ("auto", "bfloat16", "float16", "float32"), "backbone.dtype",
               f"must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        _check(self.attn_implementation in ("auto", "flash_attention_2", "sdpa", "eager"),
               "backbone.attn_implementation",
               f"must be auto, flash_attention_2, sdpa or eager, got {self.attn_implementation!r}")
        _check(self.encode in ("eager", "static"), "backbone.encode", f"must be eager or static, got {self.encode!r}")
        _check(self.encode == "eager" or self.spec.family in STATIC_FAMILIES, "backbone.encode",
               f"static supports the {', '.join(STATIC_FAMILIES)} families; {self.model_id} is {self.spec.family}")
        _check(1 <= self.prompt_bucket <= 1024, "backbone.prompt_bucket", f"must be in 1..1024, got {self.prompt_bucket}")
        _check(self.compile_mode in COMPILE_MODES, "backbone.compile_mode",
               f"must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        _check(self.compile_mode == "none" or self.encode == "static", "backbone.compile_mode",
               "compiles the static encode path: set backbone.encode='static' too")
        enc = self.resolved_audio_encoder
        _check(enc is None or enc in WHISPER_DIMS, "backbone.audio_encoder_id",
               f"must be one of {', '.join(WHISPER_DIMS)}, got {enc!r}")


@dataclass
class NeonConfig:
    """The whole trainable model on top of a frozen backbone."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    control_mode: str = "arms_only"
    hand_type: str = "dex3"
    neck: bool = False
    # Joint groups predict offsets from the current state by default: untrained heads hold still, and training
    # starts from "hold". `representation` overrides per group; locomotion (a command) is always absolute.
    default_representation: str = "relative"
    representation: dict[str, str] = field(default_factory=dict)  # group -> absolute | relative
    action_scaler: float = 1.0  # relative deltas are multiplied by this before normalisation (GR00T DreamGen)
    num_action_steps: int = 16  # chunk length, the one place it is stated
    fps: float = 30.0  # rate at which chunk steps are executed
    fusion_dim: int = 512  # width of every token entering fusion and of the action heads' residual stream
    fusion_heads: int = 8
    mlp_hidden: int = 512  # hidden width of the ReLU^2 MLPs in fusion, heads and speech head
    action_head_layers: int = 3
    proprioception_hidden: int = 256
    eef_hidden: int = 128
    lidar_hidden: int = 128  # PointNet width
    use_audio: bool = False
    use_lidar: bool = False
    use_eef: bool = False
    action_softcap: float = 10.0  # cap on normalised (z-scored) actions; far above the usual +-3 range
    speech_responses: list[str] = field(default_factory=lambda: list(DEFAULT_RESPONSES))
    max_instruction_chars: int = 512
    # Prefix conditioning (training-time real-time chunking): while the next request is in flight the robot
    # commits to the first d steps of the chunk it executes; the heads are given those d steps (d <= this many)
    # and predict the continuation. 0 = off (no extra modules: checkpoints from before the option load as they were).
    prefix_max_steps: int = 0
    prefix_probability: float = 0.5  # per training sample: chance of drawing d uniform in 1..prefix_max_steps

    def action_space(self) -> G1ActionSpace:
        groups = G1ActionSpace(self.control_mode, self.hand_type, self.neck, fps=self.fps).groups
        rep = {g: self.default_representation for g in groups if g != "locomotion"} | self.representation
        return G1ActionSpace(self.control_mode, self.hand_type, self.neck, rep, self.fps)

    def validate(self) -> NeonConfig:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig(**self.backbone)
        self.backbone.validate()
        _check(self.control_mode in CONTROL_MODES, "control_mode", f"must be one of {CONTROL_MODES}, got {self.control_mode!r}")
        _check(self.hand_type in HAND_TYPES, "hand_type", f"must be one of {HAND_TYPES}, got {self.hand_type!r}")
        _check(1 <= self.num_action_steps <= 256, "num_action_steps", f"must be in 1..256, got {self.num_action_steps}")
        _check(self.fps > 0, "fps", f"must be positive, got {self.fps}")
        _check(self.action_scaler > 0, "action_scaler", f"must be positive, got {self.action_scaler}")
        _check(self.default_representation in ("absolute", "relative"), "default_representation",
               f"must be 'absolute' or 'relative', got {self.default_representation!r}")
        for name in ("fusion_dim", "mlp_hidden", "proprioception_hidden", "eef_hidden", "lidar_hidden"):
            _check(getattr(self, name) >= 8, name, f"must be at least 8, got {getattr(self, name)}")
        _check(self.fusion_heads >= 1 and self.fusion_dim % self.fusion_heads == 0, "fusion_heads",
               f"must divide fusion_dim={self.fusion_dim}, got {self.fusion_heads}")
        _check(self.action_head_layers >= 1, "action_head_layers", f"must be at least 1, got {self.action_head_layers}")
        _check(self.action_softcap >= 3.0, "action_softcap",
               f"must be well above the normalised action range (>= 3), got {self.action_softcap}")
        _check(len(self.speech_responses) >= 1 and self.speech_responses[0] == "", "speech_responses",
               "must be a list whose first entry is '' (the 'say nothing' class)")
        _check(len(set(self.speech_responses)) == len(self.speech_responses), "speech_responses", "entries must be unique")
        _check(isinstance(self.prefix_max_steps, int) and 0 <= self.prefix_max_steps < self.num_action_steps,
               "prefix_max_steps",
               f"must be in 0..num_action_steps-1={self.num_action_steps - 1} (0 = off; at least one step must be "
               f"left to predict), got {self.prefix_max_steps}")
        _check(0.0 <= self.prefix_probability <= 1.0, "prefix_probability",
               f"must be in [0, 1], got {self.prefix_probability}")
        try:
            self.action_space()
        except ValueError as e:
            raise ConfigError(f"representation: {e}") from None
        return self

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = "neon_vla"
        return d

    @classmethod
    def from_dict(cls, data: dict) -> NeonConfig:
        data = dict(data)
        data.pop("model_type", None)
        data.setdefault("default_representation", "absolute")  # checkpoints from before the field were absolute
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        bb = data.pop("backbone", {})
        bb_known = {f.name for f in dataclasses.fields(BackboneConfig)}
        bb_unknown = sorted(set(bb) - bb_known)
        if bb_unknown:
            raise ConfigError(f"unknown backbone config field(s): {', '.join(bb_unknown)}")
        return cls(backbone=BackboneConfig(**bb), **data).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"
