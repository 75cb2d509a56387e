"""Backbones: the real transformers classes on the offline tiny models, 4-bit, offline failures."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import scene

from neon.backbones.loader import Backbone, pool_grid, pool_tokens, resolve_attn_implementation
from neon.hub import HubUnavailableError
from neon.backbones.registry import BACKBONES, UnknownBackboneError, canonical_id, get_spec
from neon.config import BackboneConfig, ConfigError

TINY = ["neon-tiny/qwen2.5-vl", "neon-tiny/qwen2.5-omni"]


def test_registry_holds_the_six_backbones():
    real = {k: v for k, v in BACKBONES.items() if not v.tiny}
    assert set(real) == {"Qwen/Qwen2.5-Omni-7B", "Qwen/Qwen2.5-Omni-3B", "nvidia/Cosmos-Reason2-8B",
                         "nvidia/Cosmos-Reason2-2B", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"}
    assert get_spec("Qwen/Qwen2.5-Omni-7B").hidden_size == 3584 and get_spec("omni-3b").hidden_size == 2048
    assert [s.native_audio for s in real.values()] == [True, True, False, False, False, False]
    with pytest.raises(UnknownBackboneError, match="known:"):
        get_spec("Qwen/Qwen9-Giant")


def test_registry_reads_the_middle_layer_by_default():
    """Language-model depths as published; the default layer read is the middle (GR00T N1.5: 12 of 28)."""
    depth = {"Qwen/Qwen2.5-Omni-7B": 28, "Qwen/Qwen2.5-Omni-3B": 36, "nvidia/Cosmos-Reason2-8B": 36,
             "nvidia/Cosmos-Reason2-2B": 28, "Qwen/Qwen2.5-VL-7B-Instruct": 28, "Qwen/Qwen2.5-VL-3B-Instruct": 36}
    for model_id, n in depth.items():
        assert (get_spec(model_id).num_layers, get_spec(model_id).feature_layer) == (n, n // 2), model_id
    assert [(get_spec(t).num_layers, get_spec(t).feature_layer) for t in TINY] == [(2, 1), (2, 1)]
    scenes = get_spec("tinyscenes")  # registered only: the model itself is built elsewhere
    assert canonical_id("tiny-scenes") == scenes.model_id == "neon-tiny/qwen2.5-vl-scenes"
    assert (scenes.family, scenes.hidden_size, scenes.num_layers, scenes.feature_layer, scenes.tiny) == (
        "qwen2_5_vl", 128, 4, 2, True)
    cfg = BackboneConfig(model_id="omni7b")
    cfg.validate()
    assert (cfg.hidden_layer, cfg.pooling, cfg.num_tokens, cfg.layers_run) == (14, "grid", 68, 14)


@pytest.mark.parametrize("model_id", TINY)
def test_tiny_backbones_load_through_from_pretrained(backbones, model_id):
    bb = backbones(model_id)
    expected = {"neon-tiny/qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
                "neon-tiny/qwen2.5-omni": "Qwen2_5OmniThinkerForConditionalGeneration"}[model_id]
    assert type(bb.model).__name__ == expected and type(bb.model).__module__.startswith("transformers.")
    from neon.backbones.processors import _NoVideo

    # images and audio only: no torchvision needed (Omni's gets a stand-in that refuses video, for transformers 5.20)
    assert isinstance(getattr(bb.processor, "video_processor", None), (type(None), _NoVideo))
    assert all(not p.requires_grad for p in bb.model.parameters())
    feats = bb.encode([scene(0), scene(1, 480, 640)], ["pick up the red cup", "wave"])
    assert feats.shape == (2, 8 * 8 + 4, bb.hidden_size) and feats.dtype == torch.float32  # grid + text bins
    assert torch.isfinite(feats).all()
    assert not torch.allclose(feats[:, :64], feats[[1, 0], :64])  # the image reaches the grid tokens
    assert not torch.allclose(feats[:, 64:], feats[[1, 0], 64:])  # the text reaches the text bins
    assert (bb.cfg.hidden_layer, bb.info.layers_kept, bb.info.layers_total) == (1, 1, 2)
    assert len(bb.model.model.language_model.layers) == 1  # the layer after the one read is not even loaded


@pytest.mark.parametrize("model_id", TINY)
def test_truncated_model_reads_the_full_models_hidden_state(backbones, model_id):
    """Loading only layers 1..L gives exactly the full model's hidden_states[L] (un-normed), pooled alike."""
    from PIL import Image

    full = backbones(BackboneConfig(model_id=model_id, load_in_4bit=False, hidden_layer=-1))
    cut = backbones(BackboneConfig(model_id=model_id, load_in_4bit=False, hidden_layer=1))
    assert (full.info.layers_kept, cut.info.layers_kept) == (2, 1)
    images, texts = [scene(0), scene(1, 480, 640)], ["pick up the red cup", "wave"]
    pil = [Image.fromarray(im).resize((224, 224), Image.BILINEAR) for im in images]
    inputs = full.processor(images=pil, text=[full._prompt(t) for t in texts], padding=True, return_tensors="pt")
    hidden = full.model.model(**inputs, output_hidden_states=True, use_cache=False).hidden_states[1]
    image = inputs["input_ids"] == cut.image_token_id
    want = pool_grid(hidden, inputs["attention_mask"].bool(), image, [(8, 8)] * 2, 8, 4)
    assert torch.allclose(cut.encode(images, texts), want, atol=1e-5)


def test_old_settings_read_the_last_layer_in_16_tokens(backbones):
    """hidden_layer -1 with pooling "tokens" (what every checkpoint before grid pooling recorded) is read as before:
    the whole model, the last hidden state after the final norm, 16 bins over every valid token."""
    from PIL import Image

    bb = backbones(BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=False, hidden_layer=-1,
                                  pooling="tokens"))
    inputs = bb.processor(images=[Image.fromarray(scene(0)).resize((224, 224), Image.BILINEAR)],
                          text=[bb._prompt("wave")], return_tensors="pt")
    hidden = bb.model.model(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]
    want = pool_tokens(hidden, inputs["attention_mask"].bool(), "tokens", 16)
    assert torch.equal(bb.encode([scene(0)], ["wave"]), want) and want.shape == (1, 16, 64)


@pytest.mark.parametrize("model_id", TINY)
def test_4bit_loading_on_cpu(backbones, model_id):
    import bitsandbytes as bnb

    bb4 = backbones(model_id, True)
    assert bb4.info.quantized_4bit
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in bb4.model.modules())
    assert n4 >= 8
    quant = [m for m in bb4.model.modules() if isinstance(m, bnb.nn.Linear4bit)][0]
    assert quant.weight.quant_type == "nf4"
    # Double quantisation as loaded (bitsandbytes' CPU kernels unpack the nested state on first use).
    qc = bb4.model.config.quantization_config
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    assert qc["bnb_4bit_use_double_quant"] and qc["bnb_4bit_quant_type"] == "nf4" and qc["load_in_4bit"]
    img, text = [scene(3)], ["open the gripper"]
    f32, f4 = backbones(model_id).encode(img, text), bb4.encode(img, text)
    cos = torch.nn.functional.cosine_similarity(f32.flatten(), f4.flatten(), dim=0)
    assert cos > 0.8, f"4-bit features drifted too far from full precision (cos={cos:.3f})"


def test_mean_pooling_and_hidden_layer():
    bb = Backbone(BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=False, pooling="mean", hidden_layer=1))
    feats = bb.encode([scene(0)], ["stop"])
    assert feats.shape == (1, 1, 64)


def test_pool_tokens_ignores_padding():
    hidden = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    mean = pool_tokens(hidden, mask, "mean", 4)
    assert torch.allclose(mean[0, 0], hidden[0, :4].mean(0))
    bins = pool_tokens(hidden, mask, "tokens", 2)
    assert torch.allclose(bins[0], torch.stack([hidden[0, :2].mean(0), hidden[0, 2:4].mean(0)]))


def test_pool_grid_keeps_image_tokens_on_their_grid():
    """A 4x4 grid of image tokens pooled to 2x2 gives each quadrant's mean, row-major; the other valid tokens (text
    before and after the image, padding excluded) fill the text bins in order."""
    rows, cols, h = 4, 4, 3
    grid = torch.arange(rows * cols * h, dtype=torch.float32).view(rows * cols, h)  # token r*cols+c at (r, c)
    text = -torch.arange(1, 5, dtype=torch.float32)[:, None].expand(4, h)  # 4 text tokens: -1, -2, -3, -4
    hidden = torch.cat([text[:2], grid, text[2:], torch.full((2, h), 99.0)])[None]  # text, image, text, padding
    image = torch.zeros(1, 22, dtype=torch.bool)
    image[0, 2:18] = True
    mask = torch.ones(1, 22, dtype=torch.bool)
    mask[0, -2:] = False
    out = pool_grid(hidden, mask, image, [(rows, cols)], grid_size=2, text_tokens=2)
    assert out.shape == (1, 2 * 2 + 2, h)
    cells = grid.view(rows, cols, h)
    quadrants = [cells[:2, :2], cells[:2, 2:], cells[2:, :2], cells[2:, 2:]]  # top-left, top-right, ...
    for k, q in enumerate(quadrants):
        assert torch.allclose(out[0, k], q.reshape(-1, h).mean(0)), k
    assert torch.allclose(out[0, 4:, 0], torch.tensor([-1.5, -3.5]))  # padding (99) never counted
    with pytest.raises(ValueError, match="15 image tokens for a 4x4 grid"):
        pool_grid(hidden, mask, image & (torch.arange(22) != 5), [(rows, cols)], 2, 2)


@pytest.mark.parametrize("model_id", TINY)
def test_audio_features(backbones, model_id):
    bb = backbones(model_id)
    t = np.arange(16000) / 16000
    clips = [np.sin(2 * np.pi * 440 * t).astype(np.float32) * 0.3, None, np.sin(2 * np.pi * 880 * t[:8000]) * 0.3]
    feats, present = bb.encode_audio(clips)
    assert feats.shape == (3, bb.audio_dim) and present.tolist() == [True, False, True]
    assert feats[1].abs().sum() == 0 and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[2])
    assert (bb.whisper is None) == (model_id == "neon-tiny/qwen2.5-omni")  # Omni hears with its own tower


def test_attention_implementation_detection():
    assert resolve_attn_implementation("auto") == "sdpa"  # no CUDA / flash-attn here
    assert resolve_attn_implementation("eager") == "eager"


def test_backbone_config_validation_names_fields():
    with pytest.raises(ConfigError, match="backbone.pooling"):
        BackboneConfig(model_id="neon-tiny/qwen2.5-vl", pooling="max").validate()
    with pytest.raises(ConfigError, match=r"backbone.hidden_layer: must be a decoder layer 1..36 .* got 37"):
        BackboneConfig(model_id="vl3b", hidden_layer=37).validate()
    with pytest.raises(ConfigError, match="backbone.hidden_layer"):
        BackboneConfig(model_id="vl3b", hidden_layer=0).validate()
    with pytest.raises(ConfigError, match="backbone.grid_size"):
        BackboneConfig(grid_size=0).validate()
    with pytest.raises(ConfigError, match="backbone.text_tokens"):
        BackboneConfig(text_tokens=0).validate()
    with pytest.raises(ConfigError, match="backbone.freeze_backbone"):
        BackboneConfig(freeze_backbone=False).validate()
    with pytest.raises(UnknownBackboneError):
        BackboneConfig(model_id="someone/else").validate()


def test_real_model_offline_fails_at_once(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    code = ("from neon.config import BackboneConfig\nfrom neon.backbones.loader import Backbone\n"
            "Backbone(BackboneConfig(model_id='Qwen/Qwen2.5-VL-3B-Instruct'))")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "HubUnavailableError" in r.stderr and "HF_HUB_OFFLINE is set" in r.stderr
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in r.stderr
    assert time.monotonic() - t0 < 60  # includes the Python + transformers import


def test_unreachable_hub_without_offline_flag_fails_fast(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    from neon.backbones import loader

    t0 = time.monotonic()
    with pytest.raises(HubUnavailableError, match="unreachable"):
        loader.resolve("nvidia/Cosmos-Reason2-2B")
    assert time.monotonic() - t0 < 5


def test_cosmos_reason2_loads_through_the_qwen3_vl_path(tmp_path, monkeypatch):
    """Cosmos-Reason2 is a Qwen3-VL: a tiny Qwen3-VL stands in for the Hub checkout (the Hub is the mocked edge)."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from neon.backbones import loader
    from neon.backbones.processors import Qwen3VLImageProcessor
    from neon.backbones.tiny import _VL_TEMPLATE, _build_tokenizer, _ids

    tok = _build_tokenizer({"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                           deepstack_visual_indexes=[1]),
        **_ids(tok, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>"))
    torch.manual_seed(0)
    Qwen3VLForConditionalGeneration(cfg).save_pretrained(tmp_path / "cosmos")
    Qwen3VLImageProcessor(Qwen2VLImageProcessorPil(patch_size=16, min_pixels=64 * 64, max_pixels=512 * 512), tok,
                          chat_template=_VL_TEMPLATE).save_pretrained(tmp_path / "cosmos")
    real = loader.resolve
    monkeypatch.setattr(loader, "resolve", lambda mid, *a, **k: tmp_path / "cosmos"
                        if mid == "nvidia/Cosmos-Reason2-2B" else real(mid, *a, **k))
    # The registry's middle layer (14 of 28) is past this 2-layer stand-in: refused, naming the field.
    with pytest.raises(ConfigError, match="backbone.hidden_layer: 14 is past the last of the 2 decoder layers"):
        Backbone(BackboneConfig(model_id="nvidia/Cosmos-Reason2-2B", load_in_4bit=False,
                                audio_encoder_id="neon-tiny/whisper"))
    bb = Backbone(BackboneConfig(model_id="nvidia/Cosmos-Reason2-2B", load_in_4bit=False, hidden_layer=1,
                                 audio_encoder_id="neon-tiny/whisper"))
    assert type(bb.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert (bb.info.layers_kept, bb.info.layers_total) == (1, 2)
    feats = bb.encode([scene(0, 96, 128), scene(1)], ["pick up the cup", "wave"])
    assert feats.shape == (2, 68, 64) and torch.isfinite(feats).all()  # 16 px patches: 7x7 image tokens, pooled to 8x8
    audio, present = bb.encode_audio([np.zeros(16000, np.float32)])
    assert audio.shape == (1, 64) and present.all()  # Cosmos hears through the (tiny) Whisper encoder


@pytest.mark.parametrize("model_id", ["neon-tiny/qwen2.5-vl", "neon-tiny/qwen2.5-omni"])
def test_the_output_head_is_dropped_at_load(backbones, model_id):
    """Neon never decodes a token: the vocabulary x hidden output head goes at load (0.6-1.2 GB of bf16 on the
    full-size backbones where it is not tied to the input embeddings; bench/bench_truncation.py)."""
    from neon.backbones.loader import _model_class

    bb = backbones(model_id, False)
    assert isinstance(bb.model.lm_head, torch.nn.Identity)
    full = _model_class(bb.spec.family).from_pretrained(bb.info.path, dtype=torch.float32)
    head = full.lm_head.weight
    tied = head is full.get_input_embeddings().weight
    assert bb.info.output_head_freed == (0 if tied else head.numel() * 4)


def test_the_declared_minimum_transformers_gives_the_same_features(tmp_path):
    """pyproject declares transformers>=5.20: install exactly 5.20.0 from PyPI into a throw-away folder, put it
    first on the path, and encode an image (eager and static) and a clip with every tiny Qwen backbone: the
    features must be the ones the installed transformers gives. Two failures here once: Qwen2.5-Omni's processor
    ('QwenOmniImageAudioProcessor' object has no attribute 'video_processor'), and, worse, an Omni encode that ran
    without error but never saw the image (5.20's thinker merges images in its own forward, not in `.model`)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    minimum = re.search(r'"transformers>=([0-9.]+)', (root / "pyproject.toml").read_text()).group(1)
    target = tmp_path / "tf"
    got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          f"transformers=={minimum}"], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    code = ("import sys, numpy as np, transformers\n"
            "from tests.test_backbones import features_for_comparison\n"
            f"assert transformers.__version__.startswith({minimum!r}), transformers.__version__\n"
            "np.savez(sys.argv[1], **features_for_comparison())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (target, root, root / "tests"))), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "old.npz")], capture_output=True, text=True,
                         timeout=600, env=env, cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    old, new = np.load(tmp_path / "old.npz"), features_for_comparison()
    assert sorted(old.files) == sorted(new)
    for name in new:
        assert old[name].shape == new[name].shape, name
        np.testing.assert_allclose(old[name], new[name], atol=1e-4, rtol=1e-4, err_msg=name)
    for mid in ("omni", "vl"):  # and the image is seen: another image, other features
        assert np.abs(new[f"{mid}_eager"] - new[f"{mid}_eager_inverted"]).max() > 1e-2


def features_for_comparison() -> dict[str, np.ndarray]:
    """Features of the tiny Qwen backbones for one fixed image (and its inverse), instruction and clip."""
    from neon.backbones.loader import Backbone

    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    clip = np.sin(np.linspace(0, 800, 16000)).astype(np.float32)
    out = {}
    for short in ("omni", "vl"):
        for encode in ("eager", "static"):
            cfg = BackboneConfig(model_id=f"neon-tiny/qwen2.5-{short}", load_in_4bit=False, encode=encode)
            bb = Backbone(cfg, device="cpu")
            out[f"{short}_{encode}"] = bb.encode([image], ["wave"]).numpy()
        out[f"{short}_eager_inverted"] = bb.encode_eager([255 - image], ["wave"]).numpy()
        out[f"{short}_audio"] = bb.encode_audio([clip])[0].numpy()
    return out
