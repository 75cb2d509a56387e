"""A synthetic G1 dataset in LeRobot v3.0 form, for tests, benchmarks and the embedded default.

Each episode shows two coloured blocks on a table, one on the left and one on
the right of the head camera, in random colours and places. The instruction
names one of them ("pick up the red block"); the G1 reaches for it with the arm
on that block's side, the reach depending on where the block sits in the
image, and closes (pick up), opens (reach for) or points (point at) its hand.
In whole-body episodes the G1 also bends its knees for low blocks, turns its
waist towards the target, and "walk to" instructions add a locomotion command.

So the right chunk depends on what the camera shows *and* on what the
instruction says: neither holding still nor the mean action can match it.
Every episode also carries a 16 kHz audio track in which the instruction is
"spoken" as tones (one per colour and per verb), EEF poses from an approximate
arm model, and a LiDAR scan of the floor and the two blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neon.action_space import G1ActionSpace
from neon.data.lerobot import EpisodeData, write_dataset
from neon.observation import AUDIO_SAMPLE_RATE as AUDIO_RATE
from neon.observation import EEF_DIM, EEF_FIELDS, EEF_SIDES, LIDAR_CHANNELS

COLORS = {"red": (210, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 210), "yellow": (220, 200, 40)}
VERBS = ("pick up", "reach for", "point at")
WALK_VERB = "walk to"
COLOR_TONES = {"red": 440.0, "green": 554.4, "blue": 659.3, "yellow": 784.0}
VERB_TONES = {"pick up": 220.0, "reach for": 261.6, "point at": 329.6, "walk to": 392.0}
LIDAR_POINTS = 256
CAMERA_KEY = "observation.images.head_camera"


@dataclass
class SynthConfig:
    mode: str = "arms_only"
    episodes: int = 24
    length: int = 60  # frames per episode (2 s at 30 fps)
    fps: float = 30.0
    image_size: int = 96
    seed: int = 0
    codec: str = "av1"
    version: str = "v3.0"


def _min_jerk(n: int, reach_frac: float = 0.7) -> np.ndarray:
    """Float[(n,)] progress 0 -> 1 along a minimum-jerk profile, then holding at 1."""
    s = np.clip(np.arange(n) / max(1, int(n * reach_frac)), 0, 1)
    return 10 * s ** 3 - 15 * s ** 4 + 6 * s ** 5


def _rest_pose(space: G1ActionSpace) -> np.ndarray:
    pose = np.zeros(space.dim, np.float32)
    for name, value in (("left_shoulder_roll", 0.25), ("right_shoulder_roll", -0.25),
                        ("left_elbow", 0.9), ("right_elbow", 0.9)):
        pose[space.index(name)] = value
    return np.clip(pose, space.lower, space.upper)


def _episode(space: G1ActionSpace, cfg: SynthConfig, i: int) -> EpisodeData:
    rng = np.random.default_rng([cfg.seed, i])
    n, size = cfg.length, cfg.image_size
    colors = rng.choice(list(COLORS), size=2, replace=False)  # [left block, right block]
    xs = np.array([rng.uniform(0.15, 0.4), rng.uniform(0.6, 0.85)])  # image x in [0, 1]
    ys = rng.uniform(0.55, 0.9, size=2)  # image y (larger = nearer, lower in the image)
    target = int(rng.integers(2))
    verbs = VERBS + ((WALK_VERB,) if cfg.mode == "whole_body" else ())
    verb = verbs[int(rng.integers(len(verbs)))]
    instruction = f"{verb} the {colors[target]} block"
    side = ("left", "right")[target]
    sign = 1.0 if side == "left" else -1.0
    x, y = xs[target], ys[target]

    rest = _rest_pose(space) + rng.normal(0, 0.02, space.dim).astype(np.float32)
    goal = rest.copy()
    reach = 1.0 - y  # far blocks (small y) need a longer reach
    goal[space.index(f"{side}_shoulder_pitch")] = -0.5 - 1.2 * reach
    goal[space.index(f"{side}_shoulder_roll")] = sign * (0.15 + 0.9 * abs(x - 0.5))
    goal[space.index(f"{side}_shoulder_yaw")] = -0.8 * (x - 0.5)
    goal[space.index(f"{side}_elbow")] = 0.2 + 0.8 * y
    goal[space.index(f"{side}_wrist_roll")] = sign * 0.4 * (y - 0.7)
    hand = [j for j in space.names if j.startswith(f"{side}_hand_")]
    if hand:
        lo, hi = space.lower, space.upper
        for name in hand:
            k = space.index(name)
            closed = hi[k] if abs(hi[k]) > abs(lo[k]) else lo[k]
            if verb == "pick up" or (verb == "point at" and "index" not in name):
                goal[k] = 0.8 * closed
    if cfg.mode == "whole_body":
        squat = y - 0.55
        for s in ("left", "right"):
            goal[space.index(f"{s}_hip_pitch")] = -0.6 * squat
            goal[space.index(f"{s}_knee")] = 1.2 * squat
            goal[space.index(f"{s}_ankle_pitch")] = -0.6 * squat
        goal[space.index("waist_yaw")] = -0.6 * (x - 0.5)
    goal = np.clip(goal, space.lower, space.upper)

    progress = _min_jerk(n + 1)[:, None]
    poses = rest + progress * (goal - rest)  # (n + 1, D): pose at each frame, plus one past the end
    if cfg.mode == "whole_body":
        loco = space.group_slice("locomotion")
        cmd = np.zeros((n + 1, 3), np.float32)
        if verb == WALK_VERB:
            walking = np.arange(n + 1) < n // 2
            cmd[walking] = [0.3, 0.0, -0.8 * (x - 0.5)]
        poses[:, loco] = cmd
    states = poses[:-1] + rng.normal(0, 0.003, (n, space.dim))
    actions = poses[1:]  # the next frame's pose: what a teleoperator commanded
    if cfg.mode == "whole_body":
        states[:, loco] = poses[:-1, loco]  # measured base velocity = the command in force

    frames = _render(size, colors, xs, ys, target, progress[:-1, 0], rng)
    return EpisodeData(
        task=instruction,
        frames={
            "observation.state": states.astype(np.float32),
            "action": actions.astype(np.float32),
            "observation.eef": _eef(space, states).astype(np.float32),
            "observation.lidar": _lidar(rng, xs, ys, n),
            "observation.audio": _audio_chunks(rng, verb, colors[target], n, cfg.fps),
        },
        videos={CAMERA_KEY: frames},
    )


def _render(size: int, colors, xs, ys, target: int, progress: np.ndarray, rng) -> np.ndarray:
    n = len(progress)
    base = np.empty((size, size, 3), np.uint8)
    base[: size // 2] = np.array([150, 160, 170]) + rng.integers(-10, 10, 3)  # wall
    base[size // 2:] = np.array([120, 90, 60]) + rng.integers(-10, 10, 3)  # table
    half = max(2, size // 16)
    for c, x, y in zip(colors, xs, ys, strict=True):
        cx, cy = int(x * size), int(y * size)
        base[max(0, cy - half):cy + half, max(0, cx - half):cx + half] = COLORS[c]
    frames = np.repeat(base[None], n, axis=0)
    yy, xx = np.mgrid[:size, :size]
    hx0, hy0 = 0.5 * size, 1.05 * size  # the hand enters from the bottom of the view
    hx1, hy1 = xs[target] * size, (ys[target] - 0.06) * size
    for t in range(n):
        hx, hy = hx0 + progress[t] * (hx1 - hx0), hy0 + progress[t] * (hy1 - hy0)
        frames[t][(xx - hx) ** 2 + (yy - hy) ** 2 < (size * 0.05) ** 2] = (235, 235, 235)
    return frames


def _eef(space: G1ActionSpace, states: np.ndarray) -> np.ndarray:
    """Approximate wrist poses (x, y, z, qw, qx, qy, qz) from a two-link model of each arm."""
    out = []
    for side, dy in (("left", 0.15), ("right", -0.15)):
        pitch = states[:, space.index(f"{side}_shoulder_pitch")]
        roll = states[:, space.index(f"{side}_shoulder_roll")]
        elbow = states[:, space.index(f"{side}_elbow")]
        wrist = states[:, space.index(f"{side}_wrist_roll")]
        reach = 0.2 * np.cos(-pitch) + 0.2 * np.cos(-pitch - elbow)
        x = 0.05 + 0.2 * np.sin(-pitch) + 0.2 * np.sin(-pitch + elbow)
        y = dy + reach * np.sin(roll) * 0.5
        z = 1.0 - reach * np.cos(roll) * 0.5
        q = np.stack([np.cos(wrist / 2), np.sin(wrist / 2), np.zeros_like(wrist), np.zeros_like(wrist)], 1)
        out.append(np.concatenate([np.stack([x, y, z], 1), q], 1))
    return np.concatenate(out, 1)


def _lidar(rng, xs, ys, n: int) -> np.ndarray:
    """Float[(n, 256, 4)]: floor returns plus a cluster on each block (x forward, y left, in metres)."""
    floor = LIDAR_POINTS - 64
    scans = np.empty((n, LIDAR_POINTS, len(LIDAR_CHANNELS)), np.float32)
    for t in range(n):
        pts = [np.c_[rng.uniform(0.3, 3.0, floor), rng.uniform(-1.5, 1.5, floor), np.full(floor, -0.8),
                     rng.uniform(20, 60, floor)]]
        for x, y in zip(xs, ys, strict=True):
            cx, cy = 0.3 + 1.2 * (1.0 - y), (0.5 - x) * 1.2
            pts.append(np.c_[rng.normal(cx, 0.02, 32), rng.normal(cy, 0.02, 32), rng.normal(-0.55, 0.02, 32),
                             rng.uniform(150, 250, 32)])
        scans[t] = np.concatenate(pts)
    return scans


def _audio_chunks(rng, verb: str, color: str, n: int, fps: float) -> list[np.ndarray]:
    """The instruction as two tones (verb, then colour) in the first 0.8 s, cut into per-frame chunks."""
    total = int(round(n * AUDIO_RATE / fps))
    audio = rng.normal(0, 0.005, total)
    t = np.arange(int(0.3 * AUDIO_RATE)) / AUDIO_RATE
    for start, freq in ((0.1, VERB_TONES[verb]), (0.5, COLOR_TONES[color])):
        s = int(start * AUDIO_RATE)
        seg = audio[s:s + len(t)]
        seg += 0.3 * np.sin(2 * np.pi * freq * t[: len(seg)])
    bounds = np.round(np.arange(n + 1) * AUDIO_RATE / fps).astype(int)
    return [audio[bounds[k]:bounds[k + 1]].astype(np.float32) for k in range(n)]


def generate(root, cfg: SynthConfig | None = None, overwrite: bool = False, progress: bool | None = None,
             data_file_mb: float = 100.0, video_file_mb: float = 500.0):
    """Write a synthetic G1 dataset to `root` (atomically) and return its path (v3.0 files roll over at the sizes)."""
    from tqdm import tqdm

    cfg = cfg or SynthConfig()
    smallest = 64 if cfg.codec == "av1" else 32
    if cfg.image_size % 2 or cfg.image_size < smallest:
        raise ValueError(f"image_size must be even and at least {smallest} for {cfg.codec}, got {cfg.image_size}")
    if cfg.length < 2 or cfg.episodes < 1:
        raise ValueError(f"need at least 1 episode of 2 frames, got {cfg.episodes} x {cfg.length}")
    space = G1ActionSpace(cfg.mode, "dex3", fps=cfg.fps)
    names = space.names
    eef_names = [f"{s}_{c}" for s in EEF_SIDES for c in EEF_FIELDS]
    features = {
        CAMERA_KEY: {"dtype": "video", "shape": [cfg.image_size, cfg.image_size, 3]},
        "observation.state": {"dtype": "float32", "shape": [space.dim], "names": names},
        "action": {"dtype": "float32", "shape": [space.dim], "names": names},
        "observation.eef": {"dtype": "float32", "shape": [EEF_DIM], "names": eef_names},
        "observation.lidar": {"dtype": "float32", "shape": [LIDAR_POINTS, len(LIDAR_CHANNELS)], "names": list(LIDAR_CHANNELS)},
        "observation.audio": {"dtype": "float32", "shape": [-1], "names": None},
    }
    disable = None if progress is None else not progress  # None: a bar only on a terminal
    episodes = (_episode(space, cfg, i) for i in tqdm(range(cfg.episodes), desc="synthesising episodes",
                                                      unit="ep", disable=disable))
    meta = {"neon_synthetic.json": {"generator": "neon.data.synthetic", **cfg.__dict__}}
    return write_dataset(root, episodes, fps=cfg.fps, features=features, version=cfg.version, codec=cfg.codec,
                         extra_meta=meta, overwrite=overwrite, data_file_mb=data_file_mb, video_file_mb=video_file_mb)
