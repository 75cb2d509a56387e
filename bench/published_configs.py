"""The six backbones' architectures as published, so bench/bench_gpu.py can build them with random weights.

Each entry holds the values of the model's Hub `config.json` in its own layout
(Qwen2.5-VL's flat text keys, Qwen3-VL's `text_config`, Qwen2.5-Omni's
`thinker_config`), read through a copy of that file found in a public GitHub
repository, since this project cannot reach the Hub. Where no copy was found,
the comment says what the value rests on instead. Special-token ids are left
out: the bench builds an offline tokenizer and points the config at its ids.
Only the shapes matter here; the weights are random.

`PUBLISHED_PARAMS` holds total parameter counts that a source states, so a test
can check that these dicts build models of exactly the published size.
"""

from __future__ import annotations

# Qwen/Qwen2.5-VL-3B-Instruct config.json: every value below, verbatim from a copy of the file
# (a GitHub markdown dump headed "# Qwen/Qwen2.5-VL-3B-Instruct / model config").
QWEN2_5_VL_3B = {
    "hidden_act": "silu",
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "sliding_window": 32768,
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
        "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
}

# Qwen/Qwen2.5-VL-7B-Instruct config.json: verbatim from several copies that agree (transformers-era dumps with
# nested text_config, and the flat original); the same vision tower as 3B with out_hidden_size 3584.
QWEN2_5_VL_7B = {
    **QWEN2_5_VL_3B,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
    "vocab_size": 152064,
    "vision_config": {**QWEN2_5_VL_3B["vision_config"], "out_hidden_size": 3584},
}

# The Omni thinker's vision tower is Qwen2.5-VL's (depth 32, 1280 wide, window attention with full attention at
# blocks 7/15/23/31), projecting to the text width.
_OMNI_VISION = {
    "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
# Whisper-large-v3-sized audio tower: d_model 1280, 32 layers, 20 heads, ffn 5120, 128 mel bins (copies of the
# 7B config); n_window 100 is transformers' default for this class, whose docstring says the defaults are 7B's.
_OMNI_AUDIO = {
    "num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
    "d_model": 1280, "max_source_positions": 1500, "n_window": 100,
}
# Text rope: rope_theta 1e6 is in the copies; mrope_section [16, 24, 24] (Qwen2.5-VL's; head_dim 128) was not in
# any copy found, so it rests on the thinker reusing Qwen2.5-VL's text model (transformers builds it from
# Qwen2_5_VLTextModel). It changes no shape.
_OMNI_ROPE = {"rope_theta": 1000000.0, "rope_scaling": {"rope_type": "default", "mrope_section": [16, 24, 24]}}

# Qwen/Qwen2.5-Omni-7B config.json, thinker_config only (the talker and token2wav are never loaded by Neon):
# text values from copies of the file in two repositories (rtp-llm tests, a config validator), which agree.
QWEN2_5_OMNI_7B = {
    "text_config": {
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False, "sliding_window": 32768, "use_sliding_window": False,
        "max_window_layers": 28, **_OMNI_ROPE,
    },
    "vision_config": {**_OMNI_VISION, "out_hidden_size": 3584},
    "audio_config": {**_OMNI_AUDIO, "output_dim": 3584},
}

# Qwen/Qwen2.5-Omni-3B config.json, thinker_config: text values from a port that states them "from HF config.json"
# (2048 wide, ffn 11008, 36 layers, 16 heads, 2 kv heads, head_dim 128, vocab 151936, max positions 32768).
# The vision and audio towers are taken to be 7B's with the output width 2048: the projections must match the
# text width, and no copy of the 3B file was found to confirm the rest. tie_word_embeddings is UNVERIFIED for 3B:
# the thinker class default (False, as for 7B) is used; tying would only save one 151936 x 2048 matrix.
QWEN2_5_OMNI_3B = {
    "text_config": {
        **QWEN2_5_OMNI_7B["text_config"],
        "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
        "num_key_value_heads": 2, "vocab_size": 151936, "max_window_layers": 36,
    },
    "vision_config": {**_OMNI_VISION, "out_hidden_size": 2048},
    "audio_config": {**_OMNI_AUDIO, "output_dim": 2048},
}

# nvidia/Cosmos-Reason2-8B config.json (Qwen3VLForConditionalGeneration; transformers has the class): verbatim
# from a port that cites https://huggingface.co/nvidia/Cosmos-Reason2-8B/raw/main/config.json; vocab_size 151936
# from copies of Qwen3-VL-8B's config (Cosmos-Reason2 is post-trained from it, same tokenizer).
COSMOS_REASON2_8B = {
    "text_config": {
        "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-06, "rope_theta": 5000000,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "attention_bias": False, "vocab_size": 151936,
    },
    "tie_word_embeddings": False,
    "vision_config": {
        "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "in_channels": 3,
        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
        "out_hidden_size": 4096, "hidden_act": "gelu_pytorch_tanh", "deepstack_visual_indexes": [8, 16, 24],
    },
}

# nvidia/Cosmos-Reason2-2B: post-trained Qwen3-VL-2B-Instruct (its model card). No copy of its own config.json was
# found; the values are Qwen3-VL-2B-Instruct's as two analyses quote them against that config.json (28 layers,
# 16 heads, 8 kv heads x 128, ffn 6144; vision 24 blocks x 1024, 16 heads, ffn 4096, 16 px patches, 2x2 merge, 2
# frames, merger out 2048), with deepstack [5, 11, 17] and rope as in copies of the same family's configs.
# tie_word_embeddings False is inferred, not read: Cosmos-Reason2-2B has 2,438,696,960 parameters and
# Qwen3-VL-2B-Instruct (tied) 2,127,532,032; the difference is exactly one 151936 x 2048 output head.
COSMOS_REASON2_2B = {
    "text_config": {
        **COSMOS_REASON2_8B["text_config"],
        "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
        "num_key_value_heads": 8,
    },
    "tie_word_embeddings": False,
    "vision_config": {
        **COSMOS_REASON2_8B["vision_config"],
        "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "out_hidden_size": 2048,
        "deepstack_visual_indexes": [5, 11, 17],
    },
}

PUBLISHED = {
    "Qwen/Qwen2.5-VL-3B-Instruct": QWEN2_5_VL_3B,
    "Qwen/Qwen2.5-VL-7B-Instruct": QWEN2_5_VL_7B,
    "Qwen/Qwen2.5-Omni-3B": QWEN2_5_OMNI_3B,
    "Qwen/Qwen2.5-Omni-7B": QWEN2_5_OMNI_7B,
    "nvidia/Cosmos-Reason2-2B": COSMOS_REASON2_2B,
    "nvidia/Cosmos-Reason2-8B": COSMOS_REASON2_8B,
}

# Total parameters of the published checkpoints, as sources state them (the Hub API's safetensors counts, or a
# checkpoint's index metadata), for a test that builds each dict above and counts.
PUBLISHED_PARAMS = {
    "Qwen/Qwen2.5-VL-3B-Instruct": 3_754_622_976,  # the count several repositories assert for its checkpoints
    "Qwen/Qwen2.5-VL-7B-Instruct": 8_292_166_656,  # the Hub API's numParameters, and counts after loading
    # A thinker-only fine-tune of Qwen2.5-Omni-7B (same architecture): model.safetensors.index.json metadata.
    "Qwen/Qwen2.5-Omni-7B": 8_931_813_888,
    "nvidia/Cosmos-Reason2-2B": 2_438_696_960,  # the Hub API's count, as quoted by the analysis above
    # Qwen3-VL-8B-Instruct's Hub API count; Cosmos-Reason2-8B's own count was not found (same architecture).
    "nvidia/Cosmos-Reason2-8B": 8_767_123_696,
}

# Image preprocessing (preprocessor_config.json): Qwen2.5-VL (a copy of 7B's file) and the Omni thinker (a copy of
# a 7B fine-tune's file) resize to multiples of 28 px between 3136 and 12845056 pixels; Qwen3-VL (a trimmed copy
# of Qwen3-VL-8B-Instruct's) to multiples of 32 px between 65536 (256 x 256) and 16777216 pixels. Cosmos-Reason2's
# own file was not found. Either way a 224 x 224 camera frame becomes 64 image tokens.
PIXELS = {
    "qwen2_5_vl": dict(patch_size=14, merge_size=2, min_pixels=3136, max_pixels=12845056),
    "qwen2_5_omni": dict(patch_size=14, merge_size=2, min_pixels=3136, max_pixels=12845056),
    "qwen3_vl": dict(patch_size=16, merge_size=2, min_pixels=65536, max_pixels=16777216),
}
