"""Backbone precision: `load_in_4bit: "auto"` is dense where the GPU has the memory, nf4 elsewhere, settled once
and recorded with the heads. The GPU is the system edge here: its memory is injected; everything else is real
(the tiny backbones, transformers' classes on the meta device, checkpoints, the feature cache)."""

from __future__ import annotations

import json
import types

import pytest
import torch

from conftest import tiny_config
from neon.backbones import loader
from neon.backbones.loader import DENSE_MEMORY_SHARE, choose_4bit, dense_weight_bytes
from neon.config import BackboneConfig, ConfigError, NeonConfig, precision_name
from neon.model import NeonVLA

GiB = 2**30


def test_auto_is_nf4_without_a_gpu_and_dense_where_the_gpu_holds_the_weights():
    assert choose_4bit(7 * GiB, None) is True  # a CPU: nf4, as before "auto"
    assert choose_4bit(7 * GiB, 80 * GiB) is False  # Qwen2.5-VL-3B's bf16 weights on an H100
    assert choose_4bit(9 * GiB, 16 * GiB) is True  # a 7B cut at its middle on a 16 GB Jetson or small GPU
    assert choose_4bit(int(DENSE_MEMORY_SHARE * 24 * GiB), 24 * GiB) is False  # exactly the share: dense
    assert choose_4bit(int(DENSE_MEMORY_SHARE * 24 * GiB) + 1, 24 * GiB) is True


def test_dense_weight_bytes_are_what_the_loaded_backbone_holds(backbones):
    bb = backbones("neon-tiny/qwen2.5-vl", False)  # cut at its default layer, float32 on CPU
    config, _, _ = loader._load_config("qwen2_5_vl", bb.info.path, bb.cfg)
    held = sum(p.numel() * p.element_size() for p in bb.model.parameters())
    norm = config.text_config.hidden_size * 4  # the final norm, which the loaded cut model replaces by an identity
    assert dense_weight_bytes("qwen2_5_vl", config, torch.float32) == held + norm
    assert dense_weight_bytes("qwen2_5_vl", config, torch.bfloat16) == (held + norm) // 2


def _on_gpu(monkeypatch, gib: float):
    """A CUDA device of `gib` GiB, as torch would report it (the real GPU is the system edge)."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=int(gib * GiB)))
    return torch.device("cuda")


@pytest.fixture
def cut_config(backbones):
    bb = backbones("neon-tiny/qwen2.5-vl", False)
    config, _, _ = loader._load_config("qwen2_5_vl", bb.info.path, bb.cfg)
    return config, dense_weight_bytes("qwen2_5_vl", config, torch.bfloat16)


def test_auto_settles_in_the_config_per_device(monkeypatch, cut_config):
    config, dense = cut_config
    big = BackboneConfig(model_id="neon-tiny/qwen2.5-vl")
    assert big.load_in_4bit == "auto"
    note = loader._resolve_precision(big, "qwen2_5_vl", config, torch.bfloat16, _on_gpu(monkeypatch, 4 * dense / GiB))
    assert big.load_in_4bit is False and note.startswith("auto: dense") and "GiB GPU" in note
    small = BackboneConfig(model_id="neon-tiny/qwen2.5-vl")
    loader._resolve_precision(small, "qwen2_5_vl", config, torch.bfloat16, _on_gpu(monkeypatch, 1.5 * dense / GiB))
    assert small.load_in_4bit is True
    cpu = BackboneConfig(model_id="neon-tiny/qwen2.5-vl")
    assert loader._resolve_precision(cpu, "qwen2_5_vl", config, torch.float32, torch.device("cpu")) == "auto: nf4 (no GPU)"
    assert cpu.load_in_4bit is True


def test_a_setting_already_made_is_kept_and_dense_weights_a_gpu_cannot_hold_are_refused(monkeypatch, cut_config):
    config, dense = cut_config
    for value in (True, False):
        cfg = BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=value)
        loader._resolve_precision(cfg, "qwen2_5_vl", config, torch.bfloat16, _on_gpu(monkeypatch, 1.5 * dense / GiB))
        assert cfg.load_in_4bit is value  # a checkpoint's recorded precision is never re-picked
    with pytest.raises(ConfigError, match=r"backbone.load_in_4bit: false loads neon-tiny/qwen2.5-vl unquantised .* "
                                          r"more than this GPU can hold"):
        loader._resolve_precision(BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=False), "qwen2_5_vl",
                                  config, torch.bfloat16, _on_gpu(monkeypatch, 0.5 * dense / GiB))


def test_auto_loads_nf4_on_a_cpu_and_says_so(caplog):
    import logging

    cfg = BackboneConfig(model_id="neon-tiny/qwen2.5-vl")
    with caplog.at_level(logging.INFO, logger="neon.backbones.loader"):
        bb = loader.Backbone(cfg, device="cpu")
    assert cfg.load_in_4bit is True and bb.info.quantized_4bit
    assert "4-bit=True [auto: nf4 (no GPU)]" in caplog.text


def test_the_checkpoint_records_the_precision_its_heads_saw(backbones, tmp_path):
    from conftest import attach

    model = NeonVLA(tiny_config("neon-tiny/qwen2.5-vl"))
    assert model.config.backbone.load_in_4bit == "auto"
    model.save_pretrained(tmp_path / "unloaded")  # no backbone, no features seen: left to the serving machine
    assert json.loads((tmp_path / "unloaded" / "config.json").read_text())["backbone"]["load_in_4bit"] == "auto"
    attach(model, backbones, load_in_4bit=False)
    model.save_pretrained(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["backbone"]["load_in_4bit"] is False
    assert NeonVLA.from_pretrained(tmp_path / "ck").config.backbone.load_in_4bit is False


def test_the_feature_cache_is_keyed_on_a_settled_precision(tmp_path):
    from neon_train.feature_cache import FeatureCache

    cfg = BackboneConfig(model_id="neon-tiny/qwen2.5-vl")
    cfg.validate()
    with pytest.raises(ValueError, match='load_in_4bit is still "auto": load the backbone first'):
        FeatureCache(tmp_path, cfg, with_audio=False)


def test_precision_settings_validate_and_round_trip():
    with pytest.raises(ConfigError, match=r'backbone.load_in_4bit: must be true, false or "auto", got \'yes\''):
        BackboneConfig(load_in_4bit="yes").validate()
    with pytest.raises(ConfigError, match="backbone.load_in_4bit"):
        BackboneConfig(load_in_4bit=1).validate()
    for value, name in (("auto", "auto"), (True, "nf4"), (False, "dense")):
        cfg = NeonConfig(backbone=BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=value)).validate()
        assert NeonConfig.from_dict(json.loads(cfg.to_json())).backbone.load_in_4bit == value
        assert precision_name(value) == name


def test_presets_are_auto_except_the_edge_one_which_is_nf4():
    from neon.presets import NAMED_MODEL_CONFIGS

    for name, make in NAMED_MODEL_CONFIGS.items():
        assert make().backbone.load_in_4bit == (True if name == "edge_3b" else "auto"), name


def test_neon_train_precision_flag():
    from neon_train.cli import build_parser, resolve_config

    for flag, value in (("dense", False), ("nf4", True), ("auto", "auto")):
        cfg = resolve_config(build_parser().parse_args(["--preset", "edge_3b", "--precision", flag, "--no-push"]))
        assert cfg.model.backbone.load_in_4bit == value
    assert resolve_config(build_parser().parse_args(["--preset", "edge_3b", "--no-push"])).model.backbone.load_in_4bit
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--precision", "fp8"])
