"""Load a frozen backbone (and, for backbones without ears, a Whisper encoder) and read features from it.

Model ids become folders through `neon.hub.resolve` (tiny ids are built offline
once), then load through transformers' own `from_pretrained`. The language model
is loaded only up to the hidden layer Neon reads (`BackboneConfig.hidden_layer`):
the layers after it are never allocated and never run.
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

from neon.backbones.parts import model_parts
from neon.backbones.registry import BackboneSpec
from neon.config import BackboneConfig, ConfigError
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


def _image_token_id(config) -> int:
    """The id of the image placeholder token (Qwen2.5-VL, Qwen3-VL: image_token_id; the Omni thinker:
    image_token_index)."""
    token = getattr(config, "image_token_id", None)
    return token if token is not None else config.image_token_index


def _load_config(family: str, path: Path, cfg: BackboneConfig):
    """The checkpoint's config, its language model cut to the decoder layers up to `cfg.hidden_layer`.

    Returns (config, layers kept, layers in the checkpoint).
    """
    config = _model_class(family).config_class.from_pretrained(path)
    text = config.text_config
    total = text.num_hidden_layers
    if cfg.hidden_layer > total:
        raise ConfigError(f"backbone.hidden_layer: {cfg.hidden_layer} is past the last of the {total} decoder layers "
                          f"in {path}")
    keep = total if cfg.hidden_layer == -1 else cfg.hidden_layer
    text.num_hidden_layers = keep
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[:keep]
    return config, keep, total


# `load_in_4bit: "auto"` picks bf16 where a GPU holds the backbone's dense weights in at most this share of its
# memory (the rest is for activations, the heads, a training batch and the CUDA context), nf4 everywhere else: on
# smaller GPUs and on CPUs (as before "auto" existed).
DENSE_MEMORY_SHARE = 0.5
# A config that names dense weights (load_in_4bit false) is refused on a GPU they would fill beyond this share.
DENSE_MEMORY_LIMIT = 0.9


def dense_weight_bytes(family: str, config, dtype: torch.dtype) -> int:
    """Bytes of the backbone's weights unquantised in `dtype`, as `config` builds it (the language model already
    cut at the layer read), counted on the meta device: nothing allocated, nothing read."""
    with torch.device("meta"):
        model = _model_class(family)._from_config(config)
    drop_output_head(model)
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize


def drop_output_head(model) -> int:
    """Replace the language model's output head (vocabulary x hidden) by an identity: Neon reads hidden states and
    never decodes a token. Returns the weights freed: none where the head is tied to the input embeddings;
    0.6-1.2 G parameters' worth of bf16 otherwise (bitsandbytes leaves the head unquantised in nf4)."""
    head = model.lm_head.weight
    tied = head is model.get_input_embeddings().weight
    model.lm_head = torch.nn.Identity()
    return 0 if tied else head.numel() * head.element_size()


def choose_4bit(weight_bytes: int, gpu_memory_bytes: int | None) -> bool:
    """What `load_in_4bit: "auto"` becomes: nf4 (True) unless a GPU of `gpu_memory_bytes` (None: no GPU) holds the
    dense weights in DENSE_MEMORY_SHARE of its memory. nf4 is for memory-bound devices: on an H200 it made a
    Qwen2.5-VL-3B chunk 2.1x slower than bf16 (145.5 against 69.5 ms)."""
    return gpu_memory_bytes is None or weight_bytes > DENSE_MEMORY_SHARE * gpu_memory_bytes


def _resolve_precision(cfg: BackboneConfig, family: str, config, dtype: torch.dtype, device: torch.device) -> str:
    """Settle `cfg.load_in_4bit` for this device, in place, so that the config saved with the heads records the
    precision their features came from (a checkpoint is then served at that precision everywhere, never re-picked
    per machine). Refuses dense weights a GPU cannot hold. Returns a note for the log."""
    if cfg.load_in_4bit is True:
        return ""
    if device.type != "cuda":
        if cfg.load_in_4bit == "auto":
            cfg.load_in_4bit = True
            return "auto: nf4 (no GPU)"
        return ""
    gpu = torch.cuda.get_device_properties(device).total_memory
    dense = dense_weight_bytes(family, config, dtype)
    sizes = f"{dense / 2**30:.1f} GiB of {str(dtype).replace('torch.', '')} weights, a {gpu / 2**30:.0f} GiB GPU"
    if cfg.load_in_4bit == "auto":
        cfg.load_in_4bit = choose_4bit(dense, gpu)
        return f"auto: {'nf4' if cfg.load_in_4bit else 'dense'} ({sizes})"
    if not cfg.load_in_4bit and dense > DENSE_MEMORY_LIMIT * gpu:
        raise ConfigError(f"backbone.load_in_4bit: false loads {cfg.model_id} unquantised ({sizes}), more than this "
                          "GPU can hold: train with backbone.load_in_4bit true (or \"auto\") for this device (heads "
                          "trained on dense features would see other features in nf4, so they are not switched here)")
    return ""


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
    layers_kept: int  # decoder layers of the language model loaded and run (up to the layer read)
    layers_total: int  # decoder layers in the checkpoint
    output_head_freed: int = 0  # bytes of the token output head dropped at load (0 where tied to the embeddings)


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
        if self.device.type == "cuda":
            kwargs["device_map"] = {"": self.device.index or 0}
        from transformers.utils import logging as hf_logging

        # Qwen's published configs trip transformers' token-id range warnings (talker ids vs vocab), and the
        # checkpoint's weights for the dropped layers are skipped on purpose: mute both.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            config, keep, total = _load_config(self.spec.family, path, cfg)
            precision_note = _resolve_precision(cfg, self.spec.family, config, self.dtype, self.device)
            quant = _quantization_config(cfg, self.dtype)
            if quant is not None:
                kwargs["quantization_config"] = quant
            self.model = _freeze(_model_class(self.spec.family).from_pretrained(path, config=config, **kwargs))
            self.processor = PROCESSOR_CLASSES[self.spec.family].from_pretrained(path)
        finally:
            hf_logging.set_verbosity(level)
        self._multimodal, _, self._text_model = model_parts(self.model)
        freed = drop_output_head(self.model)
        if keep < total:  # the last hidden state is then hidden_states[keep], as the full model gives it: un-normed
            self._text_model.norm = torch.nn.Identity()
        if self.device.type != "cuda":
            self.model.to(self.device)
        self.image_token_id = _image_token_id(self.model.config)
        self.merge_size = self.model.config.vision_config.spatial_merge_size
        self.info = LoadInfo(cfg.model_id, str(path), str(self.dtype).replace("torch.", ""), attn,
                             quant is not None, str(self.device), keep, total, freed)
        self.whisper = None
        self.whisper_features = None
        if cfg.resolved_audio_encoder is not None:
            self._load_whisper(cfg.resolved_audio_encoder)
        self.static = None  # the static-shape encode path, when cfg.encode == "static"
        if cfg.encode == "static":
            from neon.backbones.static import StaticEncoder

            self.static = StaticEncoder(self, cfg.prompt_bucket, cfg.compile_mode)
        log.info("loaded backbone %s (%s, 4-bit=%s%s, attn=%s, %d of %d language-model layers, output head dropped: "
                 "%.2f GB freed) on %s", cfg.model_id, self.info.dtype, self.info.quantized_4bit,
                 f" [{precision_note}]" if precision_note else "", attn, keep, total, freed / 1e9, self.device)

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
        return prompt(self.processor, instruction)

    @torch.no_grad()
    def encode(self, images: list[np.ndarray], instructions: list[str]) -> torch.Tensor:
        """Float[(B, K, H)] feature tokens for B (uint8 HxWx3 image, instruction) pairs, K = `cfg.num_tokens`.

        The language model's last hidden state is hidden_states[`hidden_layer`] (the layers after it were never
        loaded), pooled as `cfg.pooling` says (see `pool_grid`, `pool_tokens`). With `cfg.encode == "static"` the
        same features come from `StaticEncoder` (neon/backbones/static.py).
        """
        if self.static is not None:
            return self.static.encode(images, instructions)
        return self.encode_eager(images, instructions)

    @torch.no_grad()
    def encode_eager(self, images: list[np.ndarray], instructions: list[str]) -> torch.Tensor:
        """`encode` through transformers' own forward: the processor, then the model as loaded."""
        c, size = self.cfg, self.cfg.image_size
        pil = [Image.fromarray(im).convert("RGB").resize((size, size), Image.BILINEAR) for im in images]
        inputs = self.processor(images=pil, text=[self._prompt(t) for t in instructions],
                                padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        hidden = self.language_hidden(inputs).float()  # (B, N, H)
        mask = inputs["attention_mask"].bool()
        if c.pooling != "grid":
            return pool_tokens(hidden, mask, c.pooling, c.token_budget)
        image = inputs["input_ids"] == self.image_token_id
        return pool_grid(hidden, mask, image, self._grids(inputs["image_grid_thw"]), c.grid_size, c.text_tokens)

    def language_hidden(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The text model's last hidden state (the layer read: the model is cut there) for the processor's inputs,
        images merged in. Taken from the text model itself: the Omni thinker of transformers before 5.25 merges the
        images in its own forward, whose output head is an identity here (`drop_output_head`)."""
        if self._multimodal is not self.model:
            return self._multimodal(**inputs, use_cache=False).last_hidden_state
        seen = {}

        def keep(_module, _args, out) -> None:  # returns None: the output goes on unchanged
            seen["hidden"] = out.last_hidden_state

        hook = self._text_model.register_forward_hook(keep)
        try:
            self.model(**inputs, use_cache=False)
        finally:
            hook.remove()
        return seen["hidden"]

    def _grids(self, image_grid_thw: torch.Tensor) -> list[tuple[int, int]]:
        """(rows, cols) of each sample's image tokens: its patch grid after the vision tower's spatial merge."""
        m = self.merge_size
        return [(h // m, w // m) for _, h, w in image_grid_thw.tolist()]

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
        tower = getattr(self.model.model, "audio_tower", None) or self.model.audio_tower  # (5.25 | before)
        _, lengths = tower._get_feat_extract_output_lengths(mask.sum(-1))
        chunks = torch.split(out.last_hidden_state, lengths.tolist())  # the tower packs clips end to end
        return torch.stack([c.float().mean(0) for c in chunks])

    def _whisper_audio(self, clips: list[np.ndarray]) -> torch.Tensor:
        batch = self.whisper_features(clips, sampling_rate=AUDIO_SAMPLE_RATE, return_attention_mask=True,
                                      return_tensors="pt")
        hidden = self.whisper(batch["input_features"].to(self.device, self.dtype)).last_hidden_state.float()
        mask = batch["attention_mask"][:, ::2].to(self.device)[:, : hidden.shape[1]].float()  # conv stride 2
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def prompt(processor, instruction: str) -> str:
    """The chat prompt Neon encodes: the instruction, then the image. In a causal language model each token sees
    only what comes before it, so with the instruction first the image tokens read it: the grid Neon keeps is the
    scene as seen for this instruction (where the named object is), not the instruction-blind scene."""
    messages = [{"role": "user", "content": [{"type": "text", "text": instruction}, {"type": "image"}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _bins(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """Float[(n, H)] -> Float[(k, H)]: averaged into k equal bins in order (repeats when n < k)."""
    return F.adaptive_avg_pool1d(tokens.T[None], k)[0].T


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str, budget: int) -> torch.Tensor:
    """Pool Float[(B, N, H)] hidden states over valid tokens into Float[(B, K, H)] ("mean": K = 1, "tokens": K = budget)."""
    out = []
    for h, m in zip(hidden, mask, strict=True):
        valid = h[m]  # (n, H)
        out.append(valid.mean(0, keepdim=True) if pooling == "mean" else _bins(valid, budget))
    return torch.stack(out)


def pool_grid(hidden: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, grids: list[tuple[int, int]],
              grid_size: int, text_tokens: int) -> torch.Tensor:
    """Float[(B, N, H)] hidden states -> Float[(B, grid_size**2 + text_tokens, H)], image tokens first.

    Each sample's image tokens (Bool[(B, N)] `image`: one image, its rows x cols tokens in row-major order, as the
    Qwen vision towers emit them) are laid on their grid and average-pooled to grid_size x grid_size (row-major);
    its other valid tokens (Bool[(B, N)] `mask`: text and special tokens) are averaged into `text_tokens` bins.
    """
    out = []
    for h, m, im, (rows, cols) in zip(hidden, mask, image & mask, grids, strict=True):
        patches = h[im]  # (rows * cols, H)
        if len(patches) != rows * cols:
            raise ValueError(f"{len(patches)} image tokens for a {rows}x{cols} grid: expected one image per sample")
        grid = F.adaptive_avg_pool2d(patches.T.reshape(1, -1, rows, cols), grid_size)[0]  # (H, g, g)
        out.append(torch.cat([grid.flatten(1).T, _bins(h[m & ~im], text_tokens)]))
    return torch.stack(out)
