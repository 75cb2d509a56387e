"""Offline tiny backbones: real transformers classes with a tiny config.

`neon-tiny/qwen2.5-vl` is a `Qwen2_5_VLForConditionalGeneration`,
`neon-tiny/qwen2.5-omni` a `Qwen2_5OmniForConditionalGeneration` holding only
its thinker (like the real repo minus the talker), and `neon-tiny/whisper` a
`WhisperModel` for the audio path of backbones without an audio tower. Each is
built once with a seeded init and an offline-trained byte-level BPE tokenizer,
written with `save_pretrained` into Neon's cache, and from then on loaded back
through `from_pretrained` exactly like a Hub checkout. Their outputs are
meaningless; their code paths are the real ones.

Widths are multiples of 64 so bitsandbytes' CPU 4-bit kernels (block size 64)
accept every quantised layer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from neon.observation import AUDIO_SAMPLE_RATE, AUDIO_WINDOW_S
from neon.paths import tiny_models_dir

TINY_VERSION = 2  # bump when the recipe changes; old cache folders are then rebuilt

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    "<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>",
    "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>",
]

# A small corpus of robot instructions and chat words for the tokenizer's merges.
_CORPUS = """
you are a helpful robot assistant. user assistant system
pick up the red cup and place it on the table. put the blue block in the box.
wave your left hand. wave your right hand. raise both arms. lower your arms.
open the gripper. close the gripper. grasp the bottle. hand me the apple.
walk forward. walk backward. turn left. turn right. stop. stand still.
look at the person. point at the green ball. push the drawer closed. pull the door open.
okay. on it. done. sorry, i can't do that. could you repeat that? stopping now. hello!
move the yellow cube to the left side of the shelf, then return to the start pose.
""".strip()

# Jinja chat templates producing the same special-token layout as the real models.
_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_OMNI_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TEXT = dict(bos_token_id=None, eos_token_id=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
_VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=64, patch_size=14,
               spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1])

TINY_IDS = ("neon-tiny/qwen2.5-vl", "neon-tiny/qwen2.5-omni", "neon-tiny/whisper")

# The tiny Qwen2.5-VL that was taught to see the sim's tabletop: wider and deeper than neon-tiny/qwen2.5-vl, built
# (pretrained on rendered scenes) by `neon-sim pretrain-backbone`, not here: neon never imports the simulator.
SCENES_ID = "neon-tiny/qwen2.5-vl-scenes"
# Bump SCENES_VERSION when neon_sim.pretrain's recipe changes: an older build is then not found (not rebuilt), and
# heads trained on it are refused (checkpoints record the build). 2: relation labels (left of, nearer).
SCENES_VERSION = 2
SCENES_TEXT = dict(_TEXT, hidden_size=128, intermediate_size=256, num_hidden_layers=4,  # Neon reads layer 2
                   rope_parameters=dict(_TEXT["rope_parameters"], mrope_section=[4, 6, 6]))  # head_dim 32
SCENES_VISION = dict(_VISION, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=128)


def _build_tokenizer(extra_special: dict[str, str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens=extra_special)


def _ids(tokenizer, **names: str) -> dict[str, int]:
    return {k: tokenizer.convert_tokens_to_ids(v) for k, v in names.items()}


def _build_vl(out: Path, text: dict = _TEXT, vision: dict = _VISION) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from neon.backbones.processors import QwenVLImageProcessor

    tok = _build_tokenizer({"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    config = Qwen2_5_VLConfig(
        text_config=dict(text, vocab_size=len(tok)),
        vision_config=vision,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **_ids(tok, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>"),
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=448 * 448)
    QwenVLImageProcessor(image_processor, tok, chat_template=_VL_TEMPLATE).save_pretrained(out)


def _build_omni(out: Path) -> None:
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        WhisperFeatureExtractor,
    )

    from neon.backbones.processors import QwenOmniImageAudioProcessor

    tok = _build_tokenizer({"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
                            "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                            "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"})
    thinker = dict(
        text_config=dict(_TEXT, vocab_size=len(tok)),
        vision_config=_VISION,
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128,
                          d_model=64, output_dim=64, n_window=50, max_source_positions=1500),
        pad_token_id=tok.pad_token_id,
        **_ids(tok, audio_token_index="<|AUDIO|>", image_token_index="<|IMAGE|>", video_token_index="<|VIDEO|>",
               vision_start_token_id="<|vision_bos|>", vision_end_token_id="<|vision_eos|>",
               audio_start_token_id="<|audio_bos|>", audio_end_token_id="<|audio_eos|>"),
    )
    config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    torch.manual_seed(0)
    Qwen2_5OmniForConditionalGeneration(config).save_pretrained(out)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=448 * 448)
    feature_extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=AUDIO_SAMPLE_RATE)
    QwenOmniImageAudioProcessor(image_processor, feature_extractor, tok, chat_template=_OMNI_TEMPLATE).save_pretrained(out)


def _build_whisper(out: Path) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    # Neon's audio window (4 s) instead of Whisper's 30 s keeps the tiny encoder cheap.
    config = WhisperConfig(vocab_size=512, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, max_source_positions=200, max_target_positions=64,
                           pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=1,
                           begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(0)
    WhisperModel(config).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, sampling_rate=AUDIO_SAMPLE_RATE,
                            chunk_length=int(AUDIO_WINDOW_S)).save_pretrained(out)


_BUILDERS = {
    "neon-tiny/qwen2.5-vl": _build_vl,
    "neon-tiny/qwen2.5-omni": _build_omni,
    "neon-tiny/whisper": _build_whisper,
}


def build_untrained_scenes(out: Path) -> None:
    """The scenes backbone before its pretraining (random weights, its processor): neon_sim.pretrain's start."""
    _build_vl(out, SCENES_TEXT, SCENES_VISION)


def scenes_model_dir() -> Path:
    """Where `neon-sim pretrain-backbone` caches the scenes backbone (built or not)."""
    return tiny_models_dir() / f"{SCENES_ID.split('/')[-1]}-v{SCENES_VERSION}"


def tiny_build(model_id: str) -> str:
    """A tiny backbone's build record: the digest of its neon_tiny.json (recipe version; for the scenes backbone its
    pretraining run too). Features cached and heads trained on one build are not valid on another."""
    import hashlib

    return hashlib.sha256((tiny_model_dir(model_id) / "neon_tiny.json").read_bytes()).hexdigest()[:16]


def tiny_model_dir(model_id: str) -> Path:
    """Return the folder of a tiny model, building it on first use (atomically)."""
    if model_id == SCENES_ID:
        target = scenes_model_dir()
        if not (target / "neon_tiny.json").is_file():
            raise FileNotFoundError(f"{SCENES_ID} is not built yet: run `neon-sim pretrain-backbone` once (it renders "
                                    f"scenes and pretrains it on this machine, then caches it in {target})")
        return target
    if model_id not in _BUILDERS:
        raise KeyError(f"{model_id!r} is not a tiny model; tiny models: {', '.join(TINY_IDS + (SCENES_ID,))}")
    target = tiny_models_dir() / f"{model_id.split('/')[-1]}-v{TINY_VERSION}"
    if (target / "neon_tiny.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the tiny configs trip warnings about unused talker/decoder ids
        try:
            _BUILDERS[model_id](tmp)
        finally:
            hf_logging.set_verbosity(level)
        (tmp / "neon_tiny.json").write_text(json.dumps({"model_id": model_id, "version": TINY_VERSION}) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "neon_tiny.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
