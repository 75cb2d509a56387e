"""A static-shape encode path: the same features as `Backbone.encode`, with every shape and index fixed ahead.

A Qwen encode is launch-bound on a GPU (issue 24: 2,487 kernel launches for 24 ms of GPU work in an 81 ms
encode). Much of that is bookkeeping redone on every call from the same inputs: the chat template and the
tokeniser, the language model's 3-D rope positions, the vision tower's rope positions, window order and window
boundaries, a host sync per vision layer to split attention into windows, and the boolean indexing of the pooling.
None of it changes while the image size and the instruction stay the same. Here it is done once:

  per instruction   the prompt tokenised, padded on the right to a multiple of `prompt_bucket` tokens (a causal
                    model's real tokens never see right padding), its token embeddings, its rope positions (the
                    model's own, recorded from one eager pass), and the pooling as fixed index and averaging tensors
  per image shape   the vision tower's rope positions, window order and window boundaries (transformers'
                    `vision_utils` helpers, passed back in as the precomputed kwargs the towers accept)
  per model         the vision attention runs each layer as one SDPA call with a block-diagonal mask built on the
                    device from the window boundaries, instead of one call per window after a host sync

Each call then only moves the images to the device, normalises and patchifies them there (`patchify`), and runs
one tensor function (`_features`) whose shapes depend only on the batch bucket and the prompt bucket. That
function is what `torch.compile` captures: `compile_mode="reduce-overhead"` records it as CUDA graphs on a GPU
(bench/bench_gpu.py --compile reduce-overhead); on CPU any mode runs through inductor.

Qwen2.5-VL and the Qwen2.5-Omni thinker (the same vision tower) are supported; Qwen3-VL (Cosmos-Reason2) feeds
vision features into several decoder layers ("deepstack") and keeps the eager path.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from neon.backbones.parts import model_parts
from neon.backbones.registry import COMPILE_MODES, STATIC_FAMILIES

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8)  # a batch is padded up to one of these (repeating its last sample); larger: as is
# Kept, the least recently used dropped beyond: prompts (a 3B backbone's is ~0.5 MB) and batch plans. A server fed
# a new instruction per request stays bounded; each new instruction costs one eager pass.
_MAX_PROMPTS = 256
_MAX_PLANS = 64


class BlockDiagonalVisionAttention(nn.Module):
    """A Qwen vision tower's attention computed as one SDPA call over all its windows (or images).

    The towers' own non-flash path splits the packed patches at `cu_seqlens` (a host sync: `.tolist()`) and calls
    attention once per window; here a token attends to the tokens of its own segment through a block-diagonal
    mask built on the device from `cu_seqlens`. Same projections, same rotary embedding (the model's own function),
    same result up to float rounding. Wraps Qwen2.5-VL's fused `qkv` and Qwen2.5-Omni's separate `q`, `k`, `v`.

    With `equal_segments` (set by `StaticEncoder` when its image size tiles into whole windows, as 224 px does)
    every window and every image has the same length, known from the shapes alone: the segments become SDPA's
    batch dimension and no mask is needed, so no attention is computed only to be masked out.
    """

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.inner = attn
        self.apply_rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
        self.equal_segments = False

    def forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        a, n = self.inner, hidden_states.shape[0]
        if hasattr(a, "qkv"):
            q, k, v = a.qkv(hidden_states).reshape(n, 3, a.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        else:
            q, k, v = (proj(hidden_states).reshape(n, a.num_heads, -1) for proj in (a.q, a.k, a.v))
        cos, sin = position_embeddings
        q, k = self.apply_rotary(q, k, cos, sin)
        if self.equal_segments:
            segments = cu_seqlens.shape[0] - 1
            q, k, v = (x.reshape(segments, n // segments, a.num_heads, -1).transpose(1, 2) for x in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, scale=a.scaling)  # (segments, heads, length, d)
            return a.proj(out.transpose(1, 2).reshape(n, -1))
        segment = torch.searchsorted(cu_seqlens[1:].contiguous(), torch.arange(n, device=cu_seqlens.device),
                                     right=True)  # which window (or image) each token is in
        mask = segment[:, None] == segment[None, :]
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                             attn_mask=mask, scale=a.scaling)  # (heads, n, d)
        return a.proj(out.transpose(0, 1).reshape(n, -1))


def use_block_diagonal_attention(visual: nn.Module, equal_segments: bool = False) -> None:
    """Swap every vision block's attention for `BlockDiagonalVisionAttention` (idempotent)."""
    for blk in visual.blocks:
        if not isinstance(blk.attn, BlockDiagonalVisionAttention):
            blk.attn = BlockDiagonalVisionAttention(blk.attn)
        blk.attn.equal_segments = equal_segments


@dataclass
class _Prompt:
    """One instruction's prompt, fixed once: right-padded ids, embeddings, rope positions, where the image sits."""

    length: int  # real tokens
    embeds: torch.Tensor  # (1, L, H) token embeddings, L = the padded bucket
    position_ids: torch.Tensor  # (..., 1, L) the model's rope positions, continued over the padding
    image_at: torch.Tensor  # Long[(n_image,)] positions of the image tokens, row-major on the grid
    other_at: torch.Tensor  # Long[(n_other,)] positions of the real non-image tokens (text, special)


@dataclass
class _Plan:
    """A batch of instructions (padded to a batch bucket), fixed once: everything `_features` takes but the pixels."""

    embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # Long[(B, L)]
    position_ids: torch.Tensor  # (..., B, L)
    image_at: torch.Tensor  # Long[(B * n_image,)] flat positions in (B * L) of the image tokens
    pool: torch.Tensor  # (B, T, L) averaging weights of the pooled non-grid tokens


class StaticEncoder:
    """`Backbone.encode` with its shapes fixed: equal features (to float rounding), fewer operators per call."""

    def __init__(self, backbone, prompt_bucket: int = 32, compile_mode: str = "none"):
        family = backbone.spec.family
        if family not in STATIC_FAMILIES:
            raise ValueError(f"the static encode path supports {', '.join(STATIC_FAMILIES)}; {backbone.cfg.model_id} "
                             f"is {family} (its vision features feed several decoder layers): use encode='eager'")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
        if prompt_bucket < 1:
            raise ValueError(f"prompt_bucket must be at least 1 token, got {prompt_bucket}")
        self.bb, self.prompt_bucket, self.compile_mode = backbone, prompt_bucket, compile_mode
        _, self.visual, self.language_model = model_parts(backbone.model)
        self.device, self.dtype = backbone.device, backbone.dtype
        self.embed_tokens = backbone.model.get_input_embeddings()
        ip = backbone.processor.image_processor
        self.patch, self.merge, self.temporal = ip.patch_size, ip.merge_size, ip.temporal_patch_size
        self.scale = float(ip.rescale_factor)
        self.mean = torch.tensor(ip.image_mean, device=self.device).view(1, 3, 1, 1) / self.scale
        self.std = torch.tensor(ip.image_std, device=self.device).view(1, 3, 1, 1) / self.scale
        size = backbone.cfg.image_size
        if size % (self.patch * self.merge):
            raise ValueError(f"image_size {size} is not a multiple of {self.patch * self.merge} (patch {self.patch} x "
                             f"merge {self.merge}): the static path would not match the processor's resize")
        self.rows = self.cols = size // self.patch // self.merge  # image tokens per side, after the merge
        self._prompts: dict[str, _Prompt] = {}
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._vision: dict[int, dict[str, torch.Tensor]] = {}
        windows = torch.diff(self._vision_kwargs(1)["cu_window_seqlens"])
        use_block_diagonal_attention(self.visual, equal_segments=bool((windows == windows[0]).all()))
        log.info("static encode for %s: %dx%d image tokens, prompts padded to multiples of %d tokens, windows of "
                 "equal length: %s, compile: %s", backbone.cfg.model_id, self.rows, self.cols, prompt_bucket,
                 self.visual.blocks[0].attn.equal_segments, compile_mode)
        self._run = self._features if compile_mode == "none" else torch.compile(
            self._features, mode=None if compile_mode == "default" else compile_mode, dynamic=False)

    # ------------------------------------------------------------------ once per instruction / shape
    def _prompt(self, instruction: str) -> _Prompt:
        if instruction in self._prompts:
            self._prompts[instruction] = self._prompts.pop(instruction)  # most recently used last
            return self._prompts[instruction]
        bb, size = self.bb, self.bb.cfg.image_size
        blank = Image.new("RGB", (size, size))
        inputs = bb.processor(images=[blank], text=[bb._prompt(instruction)], return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        seen = {}

        def record(_module, _args, kwargs):
            seen["position_ids"] = kwargs["position_ids"]

        hook = self.language_model.register_forward_pre_hook(record, with_kwargs=True)
        try:  # one eager pass records the model's own rope positions for this prompt
            with torch.no_grad():
                bb.language_hidden(inputs)
        finally:
            hook.remove()
        ids = inputs["input_ids"][0]
        n = len(ids)
        padded = -(-n // self.prompt_bucket) * self.prompt_bucket
        pad_id = bb.processor.tokenizer.pad_token_id or 0
        ids = F.pad(ids, (0, padded - n), value=pad_id)
        pos = seen["position_ids"]
        tail = pos[..., -1:] + torch.arange(1, padded - n + 1, device=pos.device)  # the padding's own positions
        is_image = ids == bb.image_token_id
        is_image[n:] = False
        at = torch.arange(padded, device=self.device)
        if int(is_image.sum()) != self.rows * self.cols:
            raise ValueError(f"{int(is_image.sum())} image tokens in the prompt for a {self.rows}x{self.cols} grid")
        with torch.no_grad():
            embeds = self.embed_tokens(ids[None])
        prompt = _Prompt(n, embeds, torch.cat([pos, tail], -1), at[is_image], at[:n][~is_image[:n]])
        self._prompts[instruction] = prompt
        while len(self._prompts) > _MAX_PROMPTS:
            self._prompts.pop(next(iter(self._prompts)))
        return prompt

    def _plan(self, instructions: tuple[str, ...]) -> _Plan:
        if instructions in self._plans:
            self._plans[instructions] = self._plans.pop(instructions)  # most recently used last
            return self._plans[instructions]
        prompts = [self._prompt(t) for t in instructions]
        length = max(p.embeds.shape[1] for p in prompts)
        c = self.bb.cfg
        embeds, masks, positions, image_at, pools = [], [], [], [], []
        for b, p in enumerate(prompts):
            extra = length - p.embeds.shape[1]  # a longer prompt in the batch: pad this one further
            embeds.append(F.pad(p.embeds, (0, 0, 0, extra)))
            positions.append(torch.cat([p.position_ids, p.position_ids[..., -1:] + 1 + torch.arange(
                extra, device=self.device)], -1))
            masks.append((torch.arange(length, device=self.device) < p.length).long())
            image_at.append(p.image_at + b * length)
            if c.pooling == "grid":
                kept, bins = p.other_at, c.text_tokens
            else:
                kept, bins = torch.arange(p.length, device=self.device), (c.token_budget if c.pooling == "tokens" else 1)
            pool = torch.zeros(bins, length, device=self.device)
            eye = torch.eye(len(kept), device=self.device)
            pool[:, kept] = F.adaptive_avg_pool1d(eye[None], bins)[0].T if c.pooling != "mean" else 1 / len(kept)
            pools.append(pool)
        plan = _Plan(torch.cat(embeds), torch.stack(masks), torch.cat(positions, -2), torch.cat(image_at),
                     torch.stack(pools))
        self._plans[instructions] = plan
        while len(self._plans) > _MAX_PLANS:
            self._plans.pop(next(iter(self._plans)))
        return plan

    def _vision_kwargs(self, batch: int) -> dict[str, torch.Tensor]:
        """The vision tower's per-shape indices for `batch` images, precomputed (transformers' own helpers)."""
        if batch not in self._vision:
            from transformers.vision_utils import (get_vision_attention_seqlens, get_vision_position_ids,
                                                   get_vision_window_index)

            v = self.visual
            grid = torch.tensor([[1, self.rows * self.merge, self.cols * self.merge]] * batch, device=self.device)
            window_index, cu_window = get_vision_window_index(grid, v.spatial_merge_size, v.window_size,
                                                              v.patch_size)
            cu_seqlens, _ = get_vision_attention_seqlens(grid, v.config)
            self._vision[batch] = dict(
                grid_thw=grid, position_ids=get_vision_position_ids(grid, v.spatial_merge_size),
                cu_seqlens=cu_seqlens, window_index=window_index.to(self.device), cu_window_seqlens=cu_window)
        return self._vision[batch]

    # ------------------------------------------------------------------ every call
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Uint8[(B, S, S, 3)] on any device -> the vision tower's (B * S/p * S/p, 3 * t * p * p) patches in the
        model's dtype, as Qwen's image processor lays them out (rescaled, normalised, the frame repeated t times)."""
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = ((x - self.mean) / self.std).to(self.dtype)  # (x / 255 - mean) / std, the one cast of the call
        b, p, m, t = x.shape[0], self.patch, self.merge, self.temporal
        gh, gw = x.shape[2] // p // m, x.shape[3] // p // m
        x = x[:, None].expand(b, t, 3, x.shape[2], x.shape[3]).reshape(b, t, 3, gh, m, p, gw, m, p)
        return x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(b * gh * m * gw * m, 3 * t * p * p)

    def _features(self, pixels: torch.Tensor, embeds: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor, image_at: torch.Tensor, pool: torch.Tensor,
                  vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tensor function captured by torch.compile: patches and a plan in, pooled features (B, K, H) out."""
        image = self.visual(pixels, **vision).pooler_output  # (B * n_image, H), row-major per image
        b, length, h = embeds.shape
        embeds = embeds.reshape(b * length, h).index_copy(0, image_at, image.to(embeds.dtype)).view(b, length, h)
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                     use_cache=False).last_hidden_state.float()
        other = pool @ hidden  # (B, T, H): text bins, or every real token's bins / mean
        if self.bb.cfg.pooling != "grid":
            return other
        g = self.bb.cfg.grid_size
        grid = hidden.reshape(b * length, h)[image_at].view(b, self.rows, self.cols, h).permute(0, 3, 1, 2)
        grid = F.adaptive_avg_pool2d(grid, g).flatten(2).transpose(1, 2)  # (B, g*g, H) row-major
        return torch.cat([grid, other], 1)

    @torch.no_grad()
    def encode(self, images: list[np.ndarray] | torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """Float[(B, K, H)], as `Backbone.encode` gives for the same (uint8 HxWx3 image, instruction) pairs."""
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images for {len(instructions)} instructions")
        n, size = len(images), self.bb.cfg.image_size
        if not isinstance(images, torch.Tensor):
            images = torch.from_numpy(np.stack([_sized(im, size) for im in images]))
        elif tuple(images.shape[1:]) != (size, size, 3) or images.dtype != torch.uint8:
            raise ValueError(f"images as a tensor must be uint8 (B, {size}, {size}, 3), got {tuple(images.shape)} "
                             f"{images.dtype}")
        bucket = next((b for b in BATCH_BUCKETS if b >= n), n)
        if bucket > n:  # repeat the last sample: one captured graph per bucket, not per batch size
            images = torch.cat([images, images[-1:].expand(bucket - n, -1, -1, -1)])
            instructions = list(instructions) + [instructions[-1]] * (bucket - n)
        plan = self._plan(tuple(instructions))
        out = self._run(self.patchify(images), plan.embeds, plan.attention_mask, plan.position_ids, plan.image_at,
                        plan.pool, self._vision_kwargs(bucket))
        return out[:n]


def _sized(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 image at size x size, resized as `Backbone.encode` resizes it (PIL bilinear) when it is not."""
    image = np.asarray(image)
    if image.shape == (size, size, 3) and image.dtype == np.uint8:
        return image
    return np.asarray(Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR))
