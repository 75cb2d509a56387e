"""Load a frozen backbone (and, for backbones without ears, a Whisper encoder) and read features from it.

Model ids become folders through `neon.hub.resolve` (tiny ids are built offline
once), then load through transformers' own `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from neon.backbones.registry import BackboneSpec
from neon.config import BackboneConfig
from neon.hub import MODEL_FILES, resolve
from neon.observation import AUDIO_SAMPLE_RATE

log = logging.getLogger(__name__)

def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def resolve_attn_implementation(name: str) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _model_class(family: str):
    import transformers

    return {
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
        # The thinker loads from a full Omni checkpoint (config and `thinker.` weights); the talker is skipped.
        "qwen2_5_omni": transformers.Qwen2_5OmniThinkerForConditionalGeneration,
    }[family]


def _quantization_config(cfg: BackboneConfig, dtype: torch.dtype):
    if not cfg.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


@dataclass
class LoadInfo:
    model_id: str
    path: str
    dtype: str
    attn_implementation: str
    quantized_4bit: bool
    device: str


class Backbone:
    """A frozen vision-language model that turns (image, instruction) into feature tokens.

    Not an `nn.Module` on purpose: its weights are never trained and never saved
    with Neon's checkpoints.
    """

    def __init__(self, cfg: BackboneConfig, device: str | torch.device | None = None, path: str | Path | None = None):
        """`path`: a folder holding this backbone's files, instead of resolving `cfg.model_id` (bench/bench_gpu.py
        loads random-weight builds of the published architectures this way)."""
        from neon.backbones.processors import PROCESSOR_CLASSES

        cfg.validate()
        self.cfg = cfg
        self.spec: BackboneSpec = cfg.spec
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(cfg.dtype)
        attn = resolve_attn_implementation(cfg.attn_implementation)
        path = Path(path) if path is not None else resolve(cfg.model_id, "backbone", cfg.revision, MODEL_FILES)
        kwargs = dict(dtype=self.dtype, attn_implementation=attn)
        quant = _quantization_config(cfg, self.dtype)
        if quant is not None:
            kwargs["quantization_config"] = quant
        if self.device.type == "cuda":
            kwargs["device_map"] = {"": self.device.index or 0}
        from transformers.utils import logging as hf_logging

        # Qwen's published configs trip transformers' token-id range warnings (talker ids vs vocab); mute them.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self.model = _freeze(_model_class(self.spec.family).from_pretrained(path, **kwargs))
            self.processor = PROCESSOR_CLASSES[self.spec.family].from_pretrained(path)
        finally:
            hf_logging.set_verbosity(level)
        if self.device.type != "cuda":
            self.model.to(self.device)
        self.info = LoadInfo(cfg.model_id, str(path), str(self.dtype).replace("torch.", ""), attn,
                             quant is not None, str(self.device))
        self.whisper = None
        self.whisper_features = None
        if cfg.resolved_audio_encoder is not None:
            self._load_whisper(cfg.resolved_audio_encoder)
        log.info("loaded backbone %s (%s, 4-bit=%s, attn=%s) on %s", cfg.model_id, self.info.dtype,
                 self.info.quantized_4bit, attn, self.device)

    def _load_whisper(self, model_id: str) -> None:
        from transformers import WhisperFeatureExtractor, WhisperModel

        path = resolve(model_id, "audio encoder", allow_patterns=MODEL_FILES)
        whisper = WhisperModel.from_pretrained(path, dtype=self.dtype)
        self.whisper = _freeze(whisper.get_encoder()).to(self.device)
        self.whisper_features = WhisperFeatureExtractor.from_pretrained(path)

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    # ------------------------------------------------------------------ vision-language
    def _prompt(self, instruction: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def encode(self, images: list[np.ndarray], instructions: list[str]) -> torch.Tensor:
        """Float[(B, K, H)] feature tokens for B (uint8 HxWx3 image, instruction) pairs.

        K is `token_budget` for pooling="tokens" (valid tokens averaged into K
        equal bins along the sequence) or 1 for pooling="mean".
        """
        size = self.cfg.image_size
        pil = [Image.fromarray(im).convert("RGB").resize((size, size), Image.BILINEAR) for im in images]
        inputs = self.processor(images=pil, text=[self._prompt(t) for t in instructions],
                                padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        out = self.model.model(**inputs, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[self.cfg.hidden_layer].float()  # (B, N, H)
        mask = inputs["attention_mask"].bool()
        return pool_tokens(hidden, mask, self.cfg.pooling, self.cfg.token_budget)

    # ------------------------------------------------------------------ audio
    @torch.no_grad()
    def encode_audio(self, clips: list[np.ndarray | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Float[(B, A)] pooled audio features, Bool[(B,)] present) for 16 kHz mono clips (None = no audio)."""
        present = torch.tensor([c is not None and len(c) > 0 for c in clips], dtype=torch.bool)
        feats = torch.zeros(len(clips), self.audio_dim)
        idx = [i for i, p in enumerate(present.tolist()) if p]
        if idx:
            chosen = [np.asarray(clips[i], dtype=np.float32) for i in idx]
            pooled = self._omni_audio(chosen) if self.spec.native_audio else self._whisper_audio(chosen)
            feats[idx] = pooled.float().cpu()
        return feats.to(self.device), present.to(self.device)

    @property
    def audio_dim(self) -> int:
        return self.cfg.audio_dim

    def _omni_audio(self, clips: list[np.ndarray]) -> torch.Tensor:
        fe = self.processor.feature_extractor
        batch = fe(clips, sampling_rate=AUDIO_SAMPLE_RATE, return_attention_mask=True, padding="longest",
                   return_tensors="pt")
        mask = batch["attention_mask"].to(self.device)
        out = self.model.get_audio_features(batch["input_features"].to(self.device, self.dtype),
                                            feature_attention_mask=mask)
        _, lengths = self.model.model.audio_tower._get_feat_extract_output_lengths(mask.sum(-1))
        chunks = torch.split(out.last_hidden_state, lengths.tolist())  # the tower packs clips end to end
        return torch.stack([c.float().mean(0) for c in chunks])

    def _whisper_audio(self, clips: list[np.ndarray]) -> torch.Tensor:
        batch = self.whisper_features(clips, sampling_rate=AUDIO_SAMPLE_RATE, return_attention_mask=True,
                                      return_tensors="pt")
        hidden = self.whisper(batch["input_features"].to(self.device, self.dtype)).last_hidden_state.float()
        mask = batch["attention_mask"][:, ::2].to(self.device)[:, : hidden.shape[1]].float()  # conv stride 2
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str, budget: int) -> torch.Tensor:
    """Pool Float[(B, N, H)] hidden states over valid tokens into Float[(B, K, H)]."""
    out = []
    for h, m in zip(hidden, mask, strict=True):
        valid = h[m]  # (n, H)
        if pooling == "mean":
            out.append(valid.mean(0, keepdim=True))
        else:
            out.append(F.adaptive_avg_pool1d(valid.T[None], budget)[0].T)  # (K, H); repeats when n < K
    return torch.stack(out)
