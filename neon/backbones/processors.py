"""Qwen processors without their video processor.

transformers' video processors need torchvision, which has no CPU build here
and which Neon never needs (it reads single frames). These subclasses keep the
real image/audio preprocessing and token expansion of Qwen's processors and
only drop the `video_processor` attribute, so they load from the real Hub
repos and from the offline tiny ones alike.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor, Qwen2_5OmniProcessor, Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

# Special tokens the processors read off the tokenizer, with Qwen's spellings as defaults.
_VL_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
_OMNI_TOKENS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}


def _set_tokens(processor: ProcessorMixin, tokenizer, tokens: dict[str, str]) -> None:
    for attr, default in tokens.items():
        token = getattr(tokenizer, attr, None) or default
        setattr(processor, attr, token)
        setattr(processor, attr + "_id", tokenizer.convert_tokens_to_ids(token))


class QwenVLImageProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images and text only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _set_tokens(self, tokenizer, _VL_TOKENS)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class Qwen3VLImageProcessor(Qwen3VLProcessor):
    """Qwen3-VL (Cosmos-Reason2) processor for images and text only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _set_tokens(self, tokenizer, _VL_TOKENS)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class _NoVideo:
    """Where Qwen2.5-Omni's processor reads its video processor's merge size for every prompt (transformers 5.20
    does, with or without video; 5.25 does not): the image processor's, and no video processing."""

    def __init__(self, image_processor):
        self.merge_size = image_processor.merge_size
        self.temporal_patch_size = getattr(image_processor, "temporal_patch_size", 2)

    def __call__(self, *args, **kwargs):
        raise ValueError("Neon's Qwen2.5-Omni processor takes no video")


class QwenOmniImageAudioProcessor(Qwen2_5OmniProcessor):
    """Qwen2.5-Omni processor for images, audio and text (no video)."""

    def __init__(self, image_processor=None, feature_extractor=None, tokenizer=None, chat_template=None):
        ProcessorMixin.__init__(self, image_processor, feature_extractor, tokenizer, chat_template=chat_template)
        _set_tokens(self, tokenizer, _OMNI_TOKENS)
        if image_processor is not None:
            self.video_processor = _NoVideo(image_processor)


PROCESSOR_CLASSES = {
    "qwen2_5_vl": QwenVLImageProcessor,
    "qwen3_vl": Qwen3VLImageProcessor,
    "qwen2_5_omni": QwenOmniImageAudioProcessor,
}
