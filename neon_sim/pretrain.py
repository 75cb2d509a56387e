"""`neon-sim pretrain-backbone`: teach a tiny Qwen2.5-VL to see the tabletop, as Qwen2.5-VL is taught to ground objects.

The model is `neon-tiny/qwen2.5-vl-scenes`: the real `Qwen2_5_VLForConditionalGeneration` with a tiny config
(`neon.backbones.tiny.SCENES_TEXT`, `SCENES_VISION`), pretrained on perception of rendered scenes and nothing
else: never actions, joint states or task success (the backbone learns to see, the heads learn to act).

Scenes (`SceneRandomizer`): the sim's table, three blocks of the task's colours (shades jittered) anywhere in a
wider area than the task's, the arms in random poses (the start pose jittered, or reaching over the table: hands in
view, sometimes hiding blocks), lighting and the head camera's pose jittered. Seeds from PRETRAIN_SEED up, disjoint
from `neon-sim collect` (0..) and every evaluation seed (10 000..). Each is also used mirrored left-right (the
robot and camera are symmetric): the image flipped, the labels and the instruction's hand mirrored.

Objective: a linear perception head on the image tokens of the layer Neon reads (the registry's `feature_layer`),
discarded afterwards. Neon's prompt puts the instruction before the image (`neon.backbones.loader.prompt`), so the
image tokens have read it. Per token of the 2-D grid:
- per colour, and for the block the instruction names: which token holds the block's top centre (cross-entropy
  over the grid) and where in that token (offset, L1): where each visible block is in the image, and which one is
  meant (grounding the named object);
- the named block's place on the table (x, y, robot frame; L1 at its token), and the same from the mean of all image
  tokens (a second linear map): the position must also be linearly readable from the grid as a whole, as the
  probe and the heads read it;
- simple relations between the three blocks, from the mean of all image tokens (a third linear map): for each pair
  of colours, is the first left of the second (robot frame, larger y) and is it nearer the robot (smaller x): a
  logistic loss per pair where both are visible and they differ by at least RELATION_MIN_M on that axis.
A block less than VISIBLE_MIN visible is not a target (it cannot be seen). The layers after the one read are not
trained here; Neon drops them at load. (Tried first: grounding through the instruction's tokens after the image,
which must find the named colour and then its image tokens, two hops: no better than chance after two epochs.)

The result is saved with `save_pretrained` (model and processor) into Neon's cache
(`neon.backbones.tiny.scenes_model_dir()`), atomically, and loads through the same loader as a Hub backbone.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neon_sim.scene import COLORS, IMAGE_SIZE, G1Tabletop, SimError, Task, start_pose

log = logging.getLogger(__name__)

PRETRAIN_SEED = 1_000_000  # scene k uses PRETRAIN_SEED + k: far from collect's (0..) and eval's (10 000..) seeds
VISIBLE_MIN = 0.3  # visible fraction under which a block is not a target
SCENE_AREA = ((0.17, 0.42), (0.0, 0.27))  # x and |y| ranges of block centres (m): wider than the task's BLOCK_AREA
MIN_APART_M = 0.08
RELATION_MIN_M = 0.02  # pairs closer than this on an axis have no "left of" / "nearer" label on it
PAIRS = ((0, 1), (0, 2), (1, 2))  # colour pairs of the relation labels, COLOR_NAMES order
RELATIONS = ("left_of", "nearer")
TABLE_XY = np.array([0.29, 0.0]), np.array([0.10, 0.20])  # centre and scale that bring table positions near +-1
TEMPLATES = ("touch the {c} block", "reach for the {c} block with your {h} hand", "where is the {c} block?",
             "point at the {c} block")
COLOR_NAMES = tuple(COLORS)


@dataclass
class Scenes:
    """Rendered perception samples (N of them) and their labels, per colour in COLOR_NAMES order."""

    images: np.ndarray  # UInt8[(N, S, S, 3)]
    pixel: np.ndarray  # Float32[(N, 3, 2)] the block top centre's image position (u right, v down), 0..1
    table: np.ndarray  # Float32[(N, 3, 2)] the block's centre on the table (x, y; m, robot frame)
    visible: np.ndarray  # Float32[(N, 3)] visible fraction from the head camera

    def mirrored(self) -> Scenes:
        """The same scenes mirrored left-right (the robot and its head camera are symmetric)."""
        pixel, table = self.pixel.copy(), self.table.copy()
        pixel[..., 0], table[..., 1] = 1.0 - pixel[..., 0], -table[..., 1]
        return Scenes(self.images[:, :, ::-1].copy(), pixel, table, self.visible.copy())

    @staticmethod
    def concat(parts: list[Scenes]) -> Scenes:
        return Scenes(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "pixel", "table", "visible")))


class SceneRandomizer:
    """One sim whose blocks, colours, arm pose, lights and head camera are re-drawn per seed (no recompiling)."""

    def __init__(self, image_size: int = IMAGE_SIZE, mjcf=None):
        task = Task(COLOR_NAMES, np.array([[0.25, 0.1], [0.3, -0.1], [0.35, 0.15]]), 0, "left", "touch the red block")
        self.sim = sim = G1Tabletop(task, mjcf, image_size)
        m = sim.model
        self.cam = m.camera("head").id
        self.cam_pos, self.cam_quat = m.cam_pos[self.cam].copy(), m.cam_quat[self.cam].copy()
        self.light_diffuse, self.headlight = m.light_diffuse.copy(), m.vis.headlight.diffuse.copy()
        self.blocks = [m.body(f"block{i}").id for i in range(3)]
        self.block_geoms = [m.geom(f"block{i}").id for i in range(3)]
        self.table_geom, self.table_rgba = m.geom("table").id, m.geom_rgba[m.geom("table").id].copy()
        self.arm_qpos = {name: m.jnt_qposadr[m.joint(f"{name}_joint").id] for name in start_pose()}

    def sample(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Seed's scene -> (image, pixel Float[(3, 2)], table Float[(3, 2)], visible Float[(3,)]), colour order."""
        from neon_sim.expert import solve_ik

        rng = np.random.default_rng(seed)
        sim, m, d = self.sim, self.sim.model, self.sim.data
        (x0, x1), (y0, y1) = SCENE_AREA
        while True:
            pos = np.c_[rng.uniform(x0, x1, 3), rng.choice([-1.0, 1.0], 3) * rng.uniform(y0, y1, 3)]
            if min(np.linalg.norm(pos[i] - pos[j]) for i in range(3) for j in range(i)) >= MIN_APART_M:
                break
        top = m.body_pos[self.blocks[0], 2]
        for i, name in enumerate(COLOR_NAMES):  # block i has colour i here
            m.body_pos[self.blocks[i]] = [pos[i, 0], pos[i, 1], top]
            rgba = np.clip(np.array(COLORS[name]) + np.r_[rng.uniform(-0.08, 0.08, 3), 0.0], 0, 1)
            m.geom_rgba[self.block_geoms[i]] = rgba
        m.geom_rgba[self.table_geom] = np.clip(self.table_rgba + np.r_[rng.uniform(-0.06, 0.06, 3), 0.0], 0, 1)
        m.light_diffuse[:] = self.light_diffuse * rng.uniform(0.6, 1.3)
        m.vis.headlight.diffuse[:] = self.headlight * rng.uniform(0.6, 1.3)
        m.cam_pos[self.cam] = self.cam_pos + rng.normal(0, 0.005, 3)
        m.cam_quat[self.cam] = _jitter_quat(self.cam_quat, rng, math.radians(2.0))
        d.qpos[sim.qadr] = 0.0  # every arm joint from the start pose, not from the previous scene: a seed is a scene
        for name, q in start_pose().items():
            d.qpos[self.arm_qpos[name]] = q
        sim.mj.mj_forward(m, d)
        for side in ("left", "right"):
            if rng.random() < 0.6:  # reaching over the table: the hand in view
                sign = 1.0 if side == "left" else -1.0
                goal = np.array([rng.uniform(0.15, 0.42), sign * rng.uniform(-0.05, 0.3), rng.uniform(0.80, 1.0)])
                q = solve_ik(sim, side, goal, sim.state(), iters=60)
                d.qpos[sim.qadr] = q[sim.dims]
            arm = [a for a in self.arm_qpos if a.startswith(side)]
            for name in arm:
                d.qpos[self.arm_qpos[name]] += rng.normal(0, 0.08)
            lo_hi = [m.jnt_range[m.joint(f"{a}_joint").id] for a in arm]
            for name, (lo, hi) in zip(arm, lo_hi, strict=True):
                d.qpos[self.arm_qpos[name]] = np.clip(d.qpos[self.arm_qpos[name]], lo, hi)
        sim.mj.mj_forward(m, d)
        image = sim.render("head")
        visible = sim.visibility("head")
        tops = np.c_[pos, np.full(3, top + m.geom_size[self.block_geoms[0], 2])]
        return image, self.project(tops), pos.astype(np.float32), visible.astype(np.float32)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Float[(n, 3)] world points -> Float32[(n, 2)] head-camera image positions (u right, v down), 0..1."""
        m, d = self.sim.model, self.sim.data
        rot = d.cam_xmat[self.cam].reshape(3, 3)  # columns: camera x (right), y (up), z (backwards)
        p = (points - d.cam_xpos[self.cam]) @ rot
        f = 0.5 / math.tan(math.radians(m.cam_fovy[self.cam]) / 2)  # square image: the same in u and v
        return np.c_[0.5 + f * p[:, 0] / -p[:, 2], 0.5 - f * p[:, 1] / -p[:, 2]].astype(np.float32)

    def close(self) -> None:
        self.sim.close()


def _jitter_quat(quat: np.ndarray, rng: np.random.Generator, max_rad: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    half = rng.uniform(-max_rad, max_rad) / 2
    w, v = quat[0], quat[1:]
    dw, dv = math.cos(half), math.sin(half) * axis
    out = np.r_[dw * w - dv @ v, dw * v + w * dv + np.cross(dv, v)]
    return out / np.linalg.norm(out)


def _render_chunk(args: tuple[list[int], int, str | None]) -> Scenes:
    seeds, image_size, mjcf = args
    os.environ.setdefault("MUJOCO_GL", "egl")
    gen = SceneRandomizer(image_size, mjcf)
    try:
        rows = [gen.sample(s) for s in seeds]
    finally:
        gen.close()
    return Scenes(*(np.stack(col) for col in zip(*rows, strict=True)))


def render_scenes(seeds: list[int], image_size: int = IMAGE_SIZE, mjcf=None, workers: int = 2,
                  progress: bool | None = None, desc: str = "rendering scenes") -> Scenes:
    """Render `seeds`' scenes in `workers` processes (each its own sim and renderer), in seed order."""
    from tqdm import tqdm

    chunks = [seeds[i:i + 25] for i in range(0, len(seeds), 25)]
    bar = tqdm(total=len(seeds), desc=desc, unit="scene", disable=None if progress is None else not progress)
    parts = []
    if workers <= 1:
        for c in chunks:
            parts.append(_render_chunk((c, image_size, mjcf)))
            bar.update(len(c))
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for part in pool.imap(_render_chunk, [(c, image_size, mjcf) for c in chunks]):
                parts.append(part)
                bar.update(len(part.images))
    bar.close()
    return Scenes.concat(parts)


SCENE_RECIPE = 2  # bump when SceneRandomizer or the labels change: cached renders are then not reused


def cached_scenes(first: int, n: int, image_size: int = IMAGE_SIZE, mjcf=None, workers: int = 2,
                  progress: bool | None = None, desc: str = "rendering scenes") -> Scenes:
    """Seeds first..first+n-1 rendered, from Neon's cache (cache_root()/scenes) when rendered before with the same
    recipe and the default G1 model; a new render is written there atomically."""
    from neon.paths import cache_root

    path = cache_root() / "scenes" / f"r{SCENE_RECIPE}-{first}-{n}-{image_size}px.npz"
    if mjcf is None and path.is_file():
        with np.load(path) as z:
            return Scenes(z["images"], z["pixel"], z["table"], z["visible"])
    scenes = render_scenes(list(range(first, first + n)), image_size, mjcf, workers, progress, desc)
    if mjcf is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
        np.savez(tmp, images=scenes.images, pixel=scenes.pixel, table=scenes.table, visible=scenes.visible)
        os.replace(tmp, path)
    return scenes


def instructions(rng: np.random.Generator, scenes: Scenes, mirrored: np.ndarray) -> tuple[list[str], np.ndarray]:
    """An instruction per scene naming one colour (a visible block when there is one) -> (texts, Long[(N,)] colour)."""
    texts, named = [], []
    for i in range(len(scenes.images)):
        seen = np.flatnonzero(scenes.visible[i] >= VISIBLE_MIN)
        c = int(rng.choice(seen)) if len(seen) else int(rng.integers(3))
        y = scenes.table[i, c, 1] * (-1 if mirrored[i] else 1)
        hand = "left" if y >= 0 else "right"
        texts.append(TEMPLATES[rng.integers(len(TEMPLATES))].format(c=COLOR_NAMES[c], h=hand))
        named.append(c)
    return texts, np.array(named)


def relation_labels(table, visible) -> tuple:
    """Float[(B, 3, 2)] table positions (m) and Float[(B, 3)] visible fractions (arrays or tensors) -> (labels,
    mask), each a float tensor [(B, len(PAIRS), len(RELATIONS))]: is block i left of j (larger y), is it nearer the
    robot (smaller x); the mask is 0 where either block is less than VISIBLE_MIN visible or the two are within
    RELATION_MIN_M on that axis."""
    import torch

    table, visible = torch.as_tensor(table), torch.as_tensor(visible)
    i, j = (list(k) for k in zip(*PAIRS, strict=True))
    dy, dx = table[:, i, 1] - table[:, j, 1], table[:, j, 0] - table[:, i, 0]  # > 0: i left of j, i nearer than j
    both = (visible[:, i] >= VISIBLE_MIN) & (visible[:, j] >= VISIBLE_MIN)
    labels = torch.stack([dy > 0, dx > 0], -1).float()
    return labels, (both[..., None] & (torch.stack([dy, dx], -1).abs() >= RELATION_MIN_M)).float()


def probe_targets(table: np.ndarray) -> np.ndarray:
    """Float[(..., 2)] table positions (m) -> the normalised targets the grounding head regresses."""
    return (table - TABLE_XY[0]) / TABLE_XY[1]


class PerceptionHead:
    """The discarded head, linear on each image token: per colour and for the named block (heat logit, du, dv), and
    for the named block its table position (x, y, normalised); linear on the image tokens' mean: the named block's
    table position again, and the relation logits (left of, nearer) per colour pair. Linear on purpose: what it
    reads, a linear probe on Neon's grid features can read too."""

    def __init__(self, hidden: int):
        import torch

        self.linear = torch.nn.Linear(hidden, 3 * (len(COLOR_NAMES) + 1) + 2)
        self.pooled = torch.nn.Linear(hidden, 2)  # the named block's table x, y from the image tokens' mean
        self.relations = torch.nn.Linear(hidden, len(PAIRS) * len(RELATIONS))  # from the image tokens' mean

    def parameters(self):
        return [p for m in (self.linear, self.pooled, self.relations) for p in m.parameters()]

    def loss(self, hidden, image_mask, grid_hw, batch: dict) -> tuple:
        """-> (loss, metrics) for Float[(B, N, H)] hidden states of the layer read."""
        import torch
        import torch.nn.functional as F

        b, (rows, cols), k = hidden.shape[0], grid_hw, len(COLOR_NAMES) + 1
        tokens = hidden[image_mask].view(b, rows * cols, -1)  # row-major merged-patch grid
        out = self.linear(tokens)
        heat = out[..., : 3 * k].reshape(b, rows * cols, k, 3)  # (B, cells, colours + named, 3)
        idx = torch.arange(b)
        pix = torch.cat([batch["pixel"], batch["pixel"][idx, batch["named"]][:, None]], 1)  # (B, k, 2)
        vis = torch.cat([batch["visible"], batch["visible"][idx, batch["named"]][:, None]], 1) >= VISIBLE_MIN
        inside = vis & (pix >= 0).all(-1) & (pix < 1).all(-1)  # (B, k)
        col, row = (pix[..., 0] * cols).clamp(0, cols - 1e-4), (pix[..., 1] * rows).clamp(0, rows - 1e-4)
        cell = row.long() * cols + col.long()  # (B, k)
        logits = heat[..., 0].permute(0, 2, 1)  # (B, k, cells)
        zero = hidden.sum() * 0
        ce = F.cross_entropy(logits[inside], cell[inside]) if inside.any() else zero
        at = heat.gather(1, cell[:, None, :, None].expand(b, 1, k, 3))[:, 0, :, 1:]  # (B, k, 2) at the true cell
        frac = torch.stack([col - col.floor(), row - row.floor()], -1) - 0.5
        offset = (at - frac).abs().sum(-1)[inside].mean() if inside.any() else zero
        xy = out[..., 3 * k:]  # (B, cells, 2)
        named_in = inside[:, -1]
        goal = batch["table_n"][idx, batch["named"]]
        table = (xy[idx, cell[:, -1]] - goal).abs().sum(-1)[named_in].mean() if named_in.any() else zero
        pooled_err = (self.pooled(tokens.mean(1)) - goal).abs()  # (B, 2)
        pooled = pooled_err.sum(-1)[named_in].mean() if named_in.any() else zero
        rel_logits = self.relations(tokens.mean(1)).view(b, len(PAIRS), len(RELATIONS))
        rel_labels, rel_mask = relation_labels(batch["table"], batch["visible"])
        rel_n = rel_mask.sum()
        relation = ((F.binary_cross_entropy_with_logits(rel_logits, rel_labels, reduction="none") * rel_mask).sum()
                    / rel_n) if rel_n > 0 else zero
        rel_right = (((rel_logits > 0).float() == rel_labels).float() * rel_mask).sum(0)  # (pairs, relations)
        rel_count = rel_mask.sum(0)
        # held-out figures: read at the named heat's arg-max, as a user of the features would
        best = logits[:, -1].argmax(-1)
        scale = torch.as_tensor(TABLE_XY[1], dtype=xy.dtype)
        cm = ((xy[idx, best] - goal).abs() * scale * 100)[named_in]
        uv = torch.stack([(best % cols).float(), (best // cols).float()], -1)
        uv = (uv + 0.5 + heat[idx, best, -1, 1:]) / torch.tensor([cols, rows], dtype=xy.dtype)
        px = (uv - pix[:, -1]).abs()[named_in]
        nan2 = [float("nan")] * 2
        pooled_cm = (pooled_err.detach() * scale * 100)[named_in]
        return ce + offset + table + pooled + relation, {
            "heat": float(ce.detach()), "offset": float(offset.detach()), "table": float(table.detach()),
            "pooled": float(pooled.detach()), "relation": float(relation.detach()),
            "relation_right": rel_right.sum(0).tolist(), "relation_count": rel_count.sum(0).tolist(),
                                              "named_cm": cm.mean(0).tolist() if named_in.any() else nan2,
                                              "pooled_cm": pooled_cm.mean(0).tolist() if named_in.any() else nan2,
            "named_uv": px.mean(0).tolist() if named_in.any() else nan2}


class _LayerTap:
    """Keeps the output of the language model's decoder layer `layer` (1-based: hidden_states[layer]); the layers
    after it are not run (the model is cut to `layer` layers while pretraining)."""

    def __init__(self, model, layer: int):
        self.lm = model.model.language_model
        self.all_layers, self.layer = self.lm.layers, layer
        self.lm.layers = self.all_layers[:layer]
        self.hidden = None
        self.handle = self.lm.layers[layer - 1].register_forward_hook(self._keep)

    def _keep(self, module, args, output):
        self.hidden = output[0] if isinstance(output, tuple) else output

    def remove(self) -> None:
        self.handle.remove()
        self.lm.layers = self.all_layers


def pretrain(out: str | Path | None = None, scenes: int = 3000, val_scenes: int = 200, epochs: int = 6,
             batch_size: int = 32, lr: float = 2e-3, seed: int = PRETRAIN_SEED, workers: int = 2, threads: int = 1,
             mjcf=None, progress: bool | None = None) -> dict:
    """Render, pretrain and save the scenes backbone; -> a summary (times, held-out perception errors)."""
    import torch
    from tqdm import tqdm
    from transformers import Qwen2_5_VLForConditionalGeneration

    from neon.backbones.processors import QwenVLImageProcessor
    from neon.backbones.registry import get_spec
    from neon.backbones.tiny import SCENES_ID, SCENES_VERSION, build_untrained_scenes, scenes_model_dir
    _set_threads(threads)
    torch.manual_seed(seed)
    target = Path(out) if out is not None else scenes_model_dir()
    layer = get_spec(SCENES_ID).feature_layer
    t0 = time.perf_counter()
    data = cached_scenes(seed, scenes, mjcf=mjcf, workers=workers, progress=progress)
    val = cached_scenes(seed + scenes, val_scenes, mjcf=mjcf, workers=workers, progress=progress,
                        desc="rendering held-out scenes")
    render_s = time.perf_counter() - t0
    data = Scenes.concat([data, data.mirrored()])
    mirrored = np.r_[np.zeros(scenes, bool), np.ones(scenes, bool)]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        build_untrained_scenes(tmp)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp, dtype=torch.float32)
        processor = QwenVLImageProcessor.from_pretrained(tmp)
        model.train()
        head = PerceptionHead(model.config.text_config.hidden_size)
        tap = _LayerTap(model, layer)
        params = [p for p in model.parameters() if p.requires_grad] + head.parameters()
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        rng = np.random.default_rng(seed)
        steps = epochs * (len(data.images) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
        t1 = time.perf_counter()
        bar = tqdm(total=steps, desc="pretraining the scenes backbone", unit="step",
                   disable=None if progress is None else not progress)
        history = []
        for epoch in range(epochs):
            texts, named = instructions(rng, data, mirrored)
            order = rng.permutation(len(data.images))
            for k in range(len(data.images) // batch_size):
                idx = order[k * batch_size:(k + 1) * batch_size]
                loss, metrics = _step(model, processor, head, tap, data, idx, texts, named)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", heat=f"{metrics['heat']:.2f}",
                                named_cm="/".join(f"{v:.1f}" for v in metrics["named_cm"]))
            val_metrics = evaluate_head(model, processor, head, tap, val, seed)
            history.append({"epoch": epoch + 1, **val_metrics})
            log.info("epoch %d: held-out %s", epoch + 1, val_metrics)
            bar.write(_epoch_line(epoch + 1, epochs, val_metrics))
        bar.close()
        train_s = time.perf_counter() - t1
        tap.remove()
        model.eval()
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        summary = {"model_id": SCENES_ID, "version": SCENES_VERSION, "feature_layer": layer, "scenes": scenes,
                   "mirrored": True, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                   "render_s": round(render_s, 1), "train_s": round(train_s, 1), "held_out": history[-1],
                   "history": history}
        (tmp / "neon_tiny.json").write_text(json.dumps(summary, indent=2) + "\n")
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**summary, "path": str(target)}


def _set_threads(threads: int) -> None:
    from neon.threads import set_threads

    try:
        set_threads(threads)
    except ValueError as e:
        raise SimError(str(e)) from None


def _epoch_line(epoch: int, epochs: int, m: dict) -> str:
    """The progress line after an epoch: the held-out named block's errors, in the table and in the image."""
    return (f"epoch {epoch}/{epochs}: held-out named block {m['named_cm'][0]:.2f} / {m['named_cm'][1]:.2f} cm (x / y), "
            f"in the image {m['named_px'][0]:.1f} / {m['named_px'][1]:.1f} px (u / v); from the image tokens' mean "
            f"{m['pooled_cm'][0]:.2f} / {m['pooled_cm'][1]:.2f} cm; relations right: left of "
            f"{m['relation_accuracy']['left_of']:.1%}, nearer {m['relation_accuracy']['nearer']:.1%}")


def _batch(processor, data: Scenes, idx: np.ndarray, texts: list[str], named: np.ndarray) -> tuple[dict, dict]:
    import torch
    from PIL import Image

    from neon.backbones.loader import prompt

    prompts = [prompt(processor, texts[i]) for i in idx]
    inputs = processor(images=[Image.fromarray(data.images[i]) for i in idx], text=prompts, padding=True,
                       return_tensors="pt")
    labels = {"pixel": torch.as_tensor(data.pixel[idx]), "visible": torch.as_tensor(data.visible[idx]),
              "table_n": torch.as_tensor(probe_targets(data.table[idx]), dtype=torch.float32),
              "table": torch.as_tensor(data.table[idx], dtype=torch.float32),
              "named": torch.as_tensor(named[idx])}
    return dict(inputs), labels


def _forward(model, processor, head, tap, inputs: dict, labels: dict):
    model.model(**inputs, use_cache=False)
    image_mask = inputs["input_ids"] == model.config.image_token_id
    merge = model.config.vision_config.spatial_merge_size
    _, h, w = inputs["image_grid_thw"][0].tolist()
    return head.loss(tap.hidden, image_mask, (h // merge, w // merge), labels)


def _step(model, processor, head, tap, data: Scenes, idx, texts, named):
    inputs, labels = _batch(processor, data, idx, texts, named)
    return _forward(model, processor, head, tap, inputs, labels)


def evaluate_head(model, processor, head, tap, val: Scenes, seed: int) -> dict:
    """The perception head's held-out errors: the named block on the table (cm, x / y) and in the image (px), and the
    relations' accuracy (left of, nearer; over the labelled pairs)."""
    import torch

    texts, named = instructions(np.random.default_rng(seed + 1), val, np.zeros(len(val.images), bool))
    cms, uvs, pooled = [], [], []
    right, count = np.zeros(len(RELATIONS)), np.zeros(len(RELATIONS))
    model.eval()
    with torch.no_grad():
        for k in range(0, len(val.images), 50):
            idx = np.arange(k, min(k + 50, len(val.images)))
            _, metrics = _forward(model, processor, head, tap, *_batch(processor, val, idx, texts, named))
            cms.append(metrics["named_cm"])
            pooled.append(metrics["pooled_cm"])
            uvs.append(metrics["named_uv"])
            right += metrics["relation_right"]
            count += metrics["relation_count"]
    model.train()
    cm, px = np.nanmean(np.array(cms), axis=0), np.nanmean(np.array(uvs), axis=0) * val.images.shape[1]
    pooled_cm = np.nanmean(np.array(pooled), axis=0)
    return {"named_cm": [round(float(v), 2) for v in cm], "named_px": [round(float(v), 1) for v in px],
            "pooled_cm": [round(float(v), 2) for v in pooled_cm],
            "relation_accuracy": {r: round(float(right[k] / max(count[k], 1)), 3) for k, r in enumerate(RELATIONS)}}


def _replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder in place (a rename): the old one, if any, is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
