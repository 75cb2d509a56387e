"""neon-sim pretrain-backbone: the scene generator's labels, the perception head, and a built scenes backbone that
loads offline through Neon's loader like a Hub backbone (a tiny build here; the full one is a benchmark)."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from neon_sim.pretrain import (COLOR_NAMES, PAIRS, PRETRAIN_SEED, RELATIONS, PerceptionHead, SceneRandomizer, Scenes,
                               instructions, relation_labels, render_scenes)


@pytest.fixture(scope="module")
def gen():
    g = SceneRandomizer(image_size=96)
    yield g
    g.close()


def _block_pixels(gen, i):
    """Boolean[(S, S)]: where block i is visible in the head camera (segmentation)."""
    seg = gen.sim._segmenter  # made by the sample's visibility() call
    seg.update_scene(gen.sim.data, camera="head")
    return seg.render()[..., 0] == gen.block_geoms[i]


def test_scene_labels_match_what_the_camera_sees(gen):
    checked = 0
    for seed in range(PRETRAIN_SEED, PRETRAIN_SEED + 6):
        image, pixel, table, visible = gen.sample(seed)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert pixel.shape == (3, 2) and table.shape == (3, 2) and visible.shape == (3,)
        assert ((visible >= 0) & (visible <= 1)).all()
        for i in range(3):
            np.testing.assert_allclose(gen.sim.data.xpos[gen.blocks[i], :2], table[i], atol=1e-6)
            mask = _block_pixels(gen, i)
            v, u = np.nonzero(mask)
            if visible[i] < 0.9 or not mask.any() or min(u.min(), v.min()) == 0 or max(u.max(), v.max()) == 95:
                continue  # hidden, or cut by the image's edge
            # the projected top centre lies on the block's visible pixels (a few px slack)
            d = np.hypot(u + 0.5 - pixel[i, 0] * 96, v + 0.5 - pixel[i, 1] * 96).min()
            assert d <= 3.0, (seed, COLOR_NAMES[i], d)
            checked += 1
    assert checked >= 6


def test_scenes_differ_by_seed_and_repeat_with_it(gen):
    a, b, a2 = gen.sample(PRETRAIN_SEED + 1), gen.sample(PRETRAIN_SEED + 2), gen.sample(PRETRAIN_SEED + 1)
    assert not np.array_equal(a[2], b[2])
    for x, y in zip(a, a2, strict=True):
        np.testing.assert_array_equal(x, y)


def test_mirrored_scenes_flip_the_image_and_the_labels(gen):
    rows = [gen.sample(PRETRAIN_SEED + k) for k in range(3)]
    scenes = Scenes(*(np.stack(col) for col in zip(*rows, strict=True)))
    m = scenes.mirrored()
    np.testing.assert_array_equal(m.images, scenes.images[:, :, ::-1])
    np.testing.assert_allclose(m.pixel[..., 0], 1 - scenes.pixel[..., 0])
    np.testing.assert_array_equal(m.pixel[..., 1], scenes.pixel[..., 1])
    np.testing.assert_array_equal(m.table[..., 0], scenes.table[..., 0])
    np.testing.assert_array_equal(m.table[..., 1], -scenes.table[..., 1])
    np.testing.assert_array_equal(m.visible, scenes.visible)
    assert not np.shares_memory(m.images, scenes.images)
    # a block's colour is where the mirrored label says it is
    n, i = next((n, i) for n in range(3) for i in range(3) if scenes.visible[n, i] > 0.9)
    u, v = (np.clip(m.pixel[n, i] * 96, 0, 95)).astype(int)
    patch = m.images[n, max(v - 1, 0):v + 4, max(u - 3, 0):u + 4].reshape(-1, 3).astype(float)
    want = np.array(gen.sim.model.geom_rgba[gen.block_geoms[i]][:3]) * 255
    assert (np.abs(patch - patch.mean(0)).max() < 255) and np.argmax(patch.mean(0)) == np.argmax(want)


def test_instructions_name_a_visible_block_and_mirror_the_hand():
    rng = np.random.default_rng(0)
    n = 40
    table = np.zeros((n, 3, 2), np.float32)
    table[:, :, 1] = rng.choice([-0.2, 0.2], (n, 3))
    visible = np.ones((n, 3), np.float32)
    visible[:, 0] = 0.0  # red never visible: never named while another is
    scenes = Scenes(np.zeros((n, 8, 8, 3), np.uint8), np.zeros((n, 3, 2), np.float32), table, visible)
    for mirrored in (np.zeros(n, bool), np.ones(n, bool)):
        texts, named = instructions(np.random.default_rng(1), scenes, mirrored)
        assert len(texts) == n and (named != 0).all()
        for t, c, y in zip(texts, named, table[np.arange(n), named, 1], strict=True):
            assert COLOR_NAMES[c] in t
            if "hand" in t:
                assert (("left" in t) == ((y >= 0) != mirrored[0]))


def test_the_perception_head_targets_the_true_cell_and_ignores_hidden_blocks():
    import torch

    b, rows, cols, hidden = 2, 4, 4, 16
    head = PerceptionHead(hidden)
    h = torch.randn(b, rows * cols + 3, hidden, requires_grad=True)
    mask = torch.zeros(b, rows * cols + 3, dtype=torch.bool)
    mask[:, 3:] = True
    batch = {"pixel": torch.tensor([[[0.1, 0.1], [0.6, 0.3], [0.9, 0.9]]] * b),
             "visible": torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]),
             "table_n": torch.zeros(b, 3, 2), "table": torch.zeros(b, 3, 2), "named": torch.tensor([1, 1])}
    loss, metrics = head.loss(h, mask, (rows, cols), batch)
    loss.backward()
    assert torch.isfinite(loss) and set(metrics) >= {"heat", "offset", "table", "named_cm", "named_uv"}
    assert h.grad[0].abs().sum() > 0 and h.grad[1].abs().sum() == 0  # nothing visible in scene 1: no target
    # a head that puts all weight on the true cells has (near) zero heat loss
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.zero_()
    onehot = torch.zeros(b, rows * cols + 3, hidden)
    cells = [0 * cols + 0, 1 * cols + 2, 3 * cols + 3, 1 * cols + 2]  # red, green, blue, named (= green)
    for k, cell in enumerate(cells):
        onehot[:, 3 + cell, k] = 1.0
        with torch.no_grad():
            head.linear.weight[3 * k, k] = 50.0
    _, good = head.loss(onehot, mask, (rows, cols), batch)
    assert good["heat"] < 1e-3 and metrics["heat"] > 1.0


def test_render_scenes_in_seed_order_across_workers():
    seeds = [PRETRAIN_SEED + 5, PRETRAIN_SEED + 3]
    one = render_scenes(seeds, image_size=48, workers=1, progress=False)
    assert one.images.shape == (2, 48, 48, 3) and one.table.shape == (2, 3, 2)
    g = SceneRandomizer(image_size=48)
    try:
        np.testing.assert_array_equal(one.table[1], g.sample(seeds[1])[2])
    finally:
        g.close()


def test_a_built_scenes_backbone_loads_offline_through_the_loader(tmp_path, monkeypatch):
    """A one-step build (the recipe end to end, not its quality), saved with save_pretrained, then loaded by id."""
    import dataclasses

    import torch

    from neon.backbones.loader import Backbone
    from neon.backbones.tiny import SCENES_ID, scenes_model_dir, tiny_model_dir
    from neon.config import BackboneConfig
    from neon_sim import pretrain as pt

    monkeypatch.setenv("NEON_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="neon-sim pretrain-backbone"):
        tiny_model_dir(SCENES_ID)
    monkeypatch.setattr(pt, "cached_scenes", lambda first, n, **kw: pt.render_scenes(
        list(range(first, first + n)), 64, workers=1, progress=False))
    summary = pt.pretrain(scenes=4, val_scenes=2, epochs=1, batch_size=8, workers=1, threads=1, progress=False)
    assert summary["path"] == str(scenes_model_dir()) and tiny_model_dir(SCENES_ID) == scenes_model_dir()
    meta = json.loads((scenes_model_dir() / "neon_tiny.json").read_text())
    assert meta["model_id"] == SCENES_ID and meta["scenes"] == 4 and len(meta["history"]) == 1
    assert not [p for p in scenes_model_dir().parent.iterdir() if p.name.startswith(".")]  # no temporary left
    cfg = BackboneConfig(model_id=SCENES_ID)
    cfg.validate()
    bb = Backbone(dataclasses.replace(cfg))
    assert not any(p.requires_grad for p in bb.model.parameters())  # frozen like every backbone
    assert len(bb.model.model.language_model.layers) == cfg.hidden_layer  # cut at the layer read
    image = np.zeros((64, 64, 3), np.uint8)
    with torch.no_grad():
        feats = bb.encode([image], ["touch the red block"])
    assert torch.isfinite(feats).all() and feats.shape[-2] == cfg.num_tokens


def test_the_robots_group_0_meshes_hide_blocks_too(gen):
    """Scene PRETRAIN_SEED + 4: the right wrist (the G1's visual meshes are in geom group 0, like the table) covers
    the red block; visibility once counted it whole."""
    image, pixel, table, visible = gen.sample(PRETRAIN_SEED + 4)
    assert visible[0] < 0.05 and visible[1] > 0.95


def test_relation_labels_left_of_and_nearer_and_what_has_none():
    """Block i left of j: larger y (the robot's left); nearer: smaller x. No label where either block is hidden or
    the two are within RELATION_MIN_M on that axis; mirroring flips "left of" and keeps "nearer"."""
    table = np.array([[[0.20, 0.10], [0.30, -0.10], [0.21, 0.105]]], np.float32)  # red, green, blue
    visible = np.ones((1, 3), np.float32)
    labels, mask = relation_labels(table, visible)
    assert labels.shape == mask.shape == (1, len(PAIRS), len(RELATIONS)) and PAIRS[0] == (0, 1)
    left, near = RELATIONS.index("left_of"), RELATIONS.index("nearer")
    assert labels[0, 0, left] == 1 and labels[0, 0, near] == 1  # red is left of green and nearer
    assert labels[0, 2, left] == 0 and labels[0, 2, near] == 0  # green is right of blue and farther
    assert mask[0, 1].tolist() == [0.0, 0.0]  # red and blue 0.5 / 1 cm apart: no label either way
    assert mask[0, 0].tolist() == [1.0, 1.0]
    flipped, _ = relation_labels(table * np.array([1, -1], np.float32), visible)
    assert flipped[0, 0, left] == 0 and flipped[0, 0, near] == 1
    visible[0, 1] = 0.1  # green hidden: no relation involving it
    _, mask = relation_labels(table, visible)
    assert mask[0, 0].sum() == 0 and mask[0, 2].sum() == 0


def test_the_perception_head_learns_relations_only_from_labelled_pairs():
    import torch

    b, cells, hidden = 4, 16, 8
    head = PerceptionHead(hidden)
    mask = torch.ones(b, cells, dtype=torch.bool)
    table = torch.tensor([[[0.20, 0.10], [0.30, -0.10], [0.35, 0.20]]] * b)
    batch = {"pixel": torch.full((b, 3, 2), 0.5), "visible": torch.ones(b, 3), "table_n": torch.zeros(b, 3, 2),
             "table": table, "named": torch.zeros(b, dtype=torch.long)}
    h = torch.randn(b, cells, hidden)
    _, before = head.loss(h, mask, (4, 4), batch)
    assert before["relation_count"] == [b * 3.0, b * 3.0] and before["relation"] > 0
    opt = torch.optim.Adam(head.relations.parameters(), lr=0.1)
    for _ in range(100):
        loss, m = head.loss(h, mask, (4, 4), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m["relation"] < 0.05 and m["relation_right"] == m["relation_count"]
    batch["visible"] = torch.zeros(b, 3)  # nothing visible: no relation loss, nothing counted
    _, hidden_all = head.loss(h, mask, (4, 4), batch)
    assert hidden_all["relation"] == 0 and hidden_all["relation_count"] == [0.0, 0.0]
