"""Backbone feature cache: hits, misses, and invalidation whenever what shapes the features changes."""

import os
import time

import numpy as np
import pytest
import torch
from conftest import heads_inputs, tiny_config

from neon.data.soup import DataSoup, DataSoupConfig, DataSourceConfig, collate
from neon.data.synthetic import SynthConfig, generate
from neon.model import NeonVLA
from neon_train.feature_cache import FeatureCache


@pytest.fixture
def setup(tmp_path, backbones):
    root = generate(tmp_path / "synth", SynthConfig(episodes=3, length=10, image_size=64), progress=False)
    cfg = tiny_config("neon-tiny/qwen2.5-vl", use_audio=True)
    cfg.backbone.load_in_4bit = False
    model = NeonVLA(cfg)
    model.backbone = backbones("neon-tiny/qwen2.5-vl")
    soup = DataSoup(DataSoupConfig([DataSourceConfig("s", str(root))]), model.action_space, 16)
    return root, model, soup


def batch_of(soup, idx):
    return collate([soup[i] for i in idx])


def test_hits_after_first_pass_and_identical_features(setup, tmp_path):
    _, model, soup = setup
    cache = FeatureCache(tmp_path / "cache", model.config.backbone, with_audio=True)
    batch = batch_of(soup, [0, 5, 12])
    fresh = heads_inputs(model, batch, soup.sources, cache)
    assert (cache.stats.hits, cache.stats.misses) == (0, 3)
    cached = heads_inputs(model, batch, soup.sources, cache)
    assert (cache.stats.hits, cache.stats.misses) == (3, 3)
    assert torch.allclose(cached.vl_tokens, fresh.vl_tokens, atol=2e-3, rtol=2e-3)  # stored as float16
    assert cached.vl_tokens.shape == (3, 8 * 8 + 4, 64)  # grid tokens, then text bins
    assert torch.equal(cached.audio_present, fresh.audio_present)
    # A new FeatureCache object (a new run) reuses what is on disk.
    again = FeatureCache(tmp_path / "cache", model.config.backbone, with_audio=True)
    heads_inputs(model, batch_of(soup, [0, 5, 7]), soup.sources, again)
    assert (again.stats.hits, again.stats.misses) == (2, 1)


def test_changed_instruction_is_a_miss(setup, tmp_path):
    _, model, soup = setup
    cache = FeatureCache(tmp_path / "cache", model.config.backbone, with_audio=True)
    batch = batch_of(soup, [1, 2])
    heads_inputs(model, batch, soup.sources, cache)
    batch["obs"].instructions = ["wave", batch["obs"].instructions[1]]
    heads_inputs(model, batch, soup.sources, cache)
    assert (cache.stats.hits, cache.stats.misses) == (1, 3)


@pytest.mark.parametrize("field,value", [("hidden_layer", -1), ("load_in_4bit", True), ("token_budget", 8),
                                         ("pooling", "mean"), ("pooling", "tokens"), ("grid_size", 4),
                                         ("text_tokens", 2), ("image_size", 160)])
def test_backbone_settings_key_the_cache(setup, tmp_path, field, value):
    _, model, _ = setup
    assert getattr(model.config.backbone, field) != value
    a = FeatureCache(tmp_path / "cache", model.config.backbone, with_audio=True)
    changed = model.config.backbone.__class__(**{**model.config.backbone.__dict__, field: value})
    b = FeatureCache(tmp_path / "cache", changed, with_audio=True)
    assert a.root != b.root
    assert FeatureCache(tmp_path / "cache", model.config.backbone, with_audio=False).root != a.root


def test_modified_dataset_invalidates(setup, tmp_path):
    root, model, soup = setup
    cache = FeatureCache(tmp_path / "cache", model.config.backbone, with_audio=True)
    heads_inputs(model, batch_of(soup, [0]), soup.sources, cache)
    video = next((root / "videos").rglob("*.mp4"))
    time.sleep(0.01)
    os.utime(video)  # the dataset changed on disk
    soup2 = DataSoup(DataSoupConfig([DataSourceConfig("s", str(root))]), model.action_space, 16)
    cache2 = FeatureCache(tmp_path / "cache", model.config.backbone, with_audio=True)
    heads_inputs(model, batch_of(soup2, [0]), soup2.sources, cache2)
    assert (cache2.stats.hits, cache2.stats.misses) == (0, 1)


def test_half_written_rows_are_not_trusted(setup, tmp_path, monkeypatch):
    _, model, soup = setup
    cache = FeatureCache(tmp_path / "cache", model.config.backbone, with_audio=True)
    sc = cache.source(soup.sources[0])

    def crash(self):
        raise OSError("power cut")

    with monkeypatch.context() as m:  # the data flush fails: the row must not be marked filled
        m.setattr(np.memmap, "flush", crash)
        with pytest.raises(OSError, match="power cut"):
            heads_inputs(model, batch_of(soup, [3]), soup.sources, cache)
    assert not sc.filled[3]
    heads_inputs(model, batch_of(soup, [3]), soup.sources, cache)
    assert sc.filled[3] and cache.stats.misses == 2
