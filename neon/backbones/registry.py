"""The backbones Neon knows: six real ones from the Hub and the offline tiny ones.

Hidden sizes and language-model depths live here so that parameter counts,
`--dry-run` and config validation never need to download a model.

Which layer Neon reads: frozen-VLM VLAs read the middle of the language model,
not its last layer (trained to predict the next word). GR00T N1.5 reads layer 12
of its 28-layer LM, GR00T N1.6 layer 16; Neon's default, `feature_layer`, is the
middle (num_layers // 2: 14 of 28, 18 of 36), and the loader drops every layer
after it (see neon.backbones.loader).
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("qwen2_5_omni", "qwen2_5_vl", "qwen3_vl")


@dataclass(frozen=True)
class BackboneSpec:
    model_id: str
    family: str  # which transformers classes load it (see neon.backbones.loader)
    hidden_size: int  # width of the language model's hidden states that Neon reads
    native_audio: bool  # has its own audio tower (Qwen2.5-Omni); others use a Whisper encoder
    audio_dim: int  # width of the audio features the audio projection reads
    params_b: float  # total parameters, billions (documentation)
    vram_4bit_gb: float  # approximate weights footprint in nf4 (documentation)
    num_layers: int  # depth of the language model (decoder layers)
    feature_layer: int | None = None  # hidden layer read by default (1..num_layers); None = num_layers // 2
    tiny: bool = False  # built offline by neon.backbones.tiny

    def __post_init__(self):
        if self.feature_layer is None:
            object.__setattr__(self, "feature_layer", self.num_layers // 2)


# Whisper encoder used for audio by backbones without an audio tower.
DEFAULT_WHISPER = "openai/whisper-base"
# Families whose encode can run on the static-shape path (neon/backbones/static.py), and its torch.compile modes.
STATIC_FAMILIES = ("qwen2_5_vl", "qwen2_5_omni")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
WHISPER_DIMS = {"openai/whisper-base": 512, "openai/whisper-small": 768, "neon-tiny/whisper": 64}

BACKBONES: dict[str, BackboneSpec] = {
    s.model_id: s
    for s in [
        # Qwen2.5-Omni: the thinker's text hidden size; its audio tower projects to the same width.
        BackboneSpec("Qwen/Qwen2.5-Omni-7B", "qwen2_5_omni", 3584, True, 3584, 10.7, 8.0, num_layers=28),
        BackboneSpec("Qwen/Qwen2.5-Omni-3B", "qwen2_5_omni", 2048, True, 2048, 5.5, 4.0, num_layers=36),
        # Cosmos-Reason2 is post-trained from Qwen3-VL (8B: 36 layers x 4096; 2B: 28 layers x 2048).
        BackboneSpec("nvidia/Cosmos-Reason2-8B", "qwen3_vl", 4096, False, WHISPER_DIMS[DEFAULT_WHISPER], 8.8, 10.0,
                     num_layers=36),
        BackboneSpec("nvidia/Cosmos-Reason2-2B", "qwen3_vl", 2048, False, WHISPER_DIMS[DEFAULT_WHISPER], 2.4, 3.0,
                     num_layers=28),
        BackboneSpec("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", 3584, False, WHISPER_DIMS[DEFAULT_WHISPER], 8.3, 8.0,
                     num_layers=28),
        BackboneSpec("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", 2048, False, WHISPER_DIMS[DEFAULT_WHISPER], 3.8, 4.0,
                     num_layers=36),
        # Offline tiny backbones: the same transformers classes with a tiny config (see tiny.py).
        BackboneSpec("neon-tiny/qwen2.5-vl", "qwen2_5_vl", 64, False, WHISPER_DIMS["neon-tiny/whisper"], 0.0004, 0.0,
                     num_layers=2, feature_layer=1, tiny=True),
        BackboneSpec("neon-tiny/qwen2.5-omni", "qwen2_5_omni", 64, True, 64, 0.0005, 0.0, num_layers=2,
                     feature_layer=1, tiny=True),
        # A tiny Qwen2.5-VL pretrained on rendered scenes (built by neon.backbones.tiny); params_b approximate.
        BackboneSpec("neon-tiny/qwen2.5-vl-scenes", "qwen2_5_vl", 128, False, WHISPER_DIMS["neon-tiny/whisper"],
                     0.002, 0.0, num_layers=4, feature_layer=2, tiny=True),
    ]
}

# Short names, for the command line and the preset grid ("omni7b" or "omni-7b").
ALIASES = {"omni7b": "Qwen/Qwen2.5-Omni-7B", "omni3b": "Qwen/Qwen2.5-Omni-3B", "cosmos8b": "nvidia/Cosmos-Reason2-8B",
           "cosmos2b": "nvidia/Cosmos-Reason2-2B", "vl7b": "Qwen/Qwen2.5-VL-7B-Instruct",
           "vl3b": "Qwen/Qwen2.5-VL-3B-Instruct", "tinyvl": "neon-tiny/qwen2.5-vl", "tinyomni": "neon-tiny/qwen2.5-omni",
           "tinyscenes": "neon-tiny/qwen2.5-vl-scenes"}


def canonical_id(model_id: str) -> str:
    """The full id for a short name; any other id unchanged."""
    return ALIASES.get(model_id.replace("-", "").lower(), model_id)


class UnknownBackboneError(ValueError):
    pass


def get_spec(model_id: str) -> BackboneSpec:
    model_id = canonical_id(model_id)
    try:
        return BACKBONES[model_id]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {model_id!r}; known: {', '.join(BACKBONES)} (or aliases {', '.join(ALIASES)})"
        ) from None
