"""Expert episodes in the simulated G1 tabletop, written as a LeRobot v3.0 dataset by Neon's own writer.

Each episode: a new seeded task, the expert's reach, recorded at FPS frames per second (head camera
frame, arm joint state, the joint targets commanded for the next frame, both palm poses, the
instruction) until the block has been touched for SETTLE_S, or EPISODE_S. Between frames the joint
targets are interpolated at CONTROL_HZ and tracked at the physics timestep. The layout is the real G1
data path's: G1 joint names, the real fps, so `neon-train --dataset DIR` needs nothing special.

With `moving_block` the task is the moving-block variant (`scene.episode_task`): the named block jumps once
mid-episode and the expert, seeing the block every frame, re-plans from its current motion to the new spot, so the
data shows a reach that turns when the scene changes (a policy trained on static reaches only goes where the block
was).

With `noise_rad` > 0 the demonstrations are noise-injected (DART, Laskey et al. 2017): each frame the arm is
driven to the expert's target plus Gaussian noise (that standard deviation per joint, its own random stream), but
the recorded action is the clean target. The data then shows states off the expert's path and the way back to it,
which a policy that re-plans every tick visits (its own errors compound; see bench/bench_position_policy.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from neon.data.lerobot import EpisodeData, write_dataset
from neon.observation import EEF_FIELDS, EEF_SIDES
from neon_sim.expert import Expert
from neon_sim.scene import EPISODE_S, IMAGE_SIZE, G1Tabletop, episode_task

FPS = 10.0  # frames (and policy steps) per second
CONTROL_HZ = 50.0  # joint targets between two frames are interpolated at this rate
SETTLE_S = 0.5  # keep recording this long after success: the data shows staying on the block
CAMERA = "observation.images.head_camera"
NOISE_STREAM = 2  # an episode's injected noise is drawn from default_rng((seed, NOISE_STREAM))


def step(sim: G1Tabletop, start: np.ndarray, goal: np.ndarray, fps: float = FPS) -> None:
    """One step's worth of motion (1 / fps): targets interpolated from `start` to `goal` at CONTROL_HZ or faster."""
    n = max(1, int(math.ceil(CONTROL_HZ / fps)))
    for k in range(1, n + 1):
        sim.run(start + (goal - start) * k / n, 1.0 / (fps * n))


def palm_poses(sim: G1Tabletop) -> np.ndarray:
    """Float32[(14,)] both palms: x, y, z (m, pelvis frame) and the wrist's orientation (qw, qx, qy, qz)."""
    out = []
    for side in EEF_SIDES:
        body = sim.data.body(f"{side}_wrist_yaw_link")
        out += [*sim.palm(side), *body.xquat]
    return np.asarray(out, np.float32)


def expert_episode(seed: int, image_size: int = IMAGE_SIZE, mjcf=None, moving_block: bool = False,
                   noise_rad: float = 0.0, render: bool = True) -> tuple[EpisodeData, bool]:
    """(the recorded episode, whether the expert succeeded); `render` False leaves the camera out (no videos)."""
    if not (math.isfinite(noise_rad) and noise_rad >= 0):
        raise ValueError(f"noise_rad must be finite and >= 0, got {noise_rad}")
    sim = G1Tabletop(episode_task(seed, moving_block), mjcf, image_size)
    expert = Expert(sim)
    noise = np.random.default_rng((seed, NOISE_STREAM))
    arm = [i for i, j in enumerate(sim.space.joints) if j.group == "arms"]
    frames: dict[str, list] = {"observation.state": [], "action": [], "observation.eef": []}
    images, done_at = [], None
    while sim.time < EPISODE_S - 1e-9 and (done_at is None or sim.time < done_at + SETTLE_S - 1e-9):
        state = sim.state()
        if moving_block:
            expert.see(sim.block_top(), sim.time)  # the block where this frame shows it
        goal = expert.targets(sim.time + 1.0 / FPS)
        if render:
            images.append(sim.render("head"))
        frames["observation.state"].append(state[arm])
        frames["action"].append(goal[arm].astype(np.float32))  # the clean target, noise or not
        frames["observation.eef"].append(palm_poses(sim))
        driven = goal.copy()
        if noise_rad > 0:
            driven[arm] += noise.normal(0.0, noise_rad, len(arm))
            driven = np.clip(driven, sim.space.lower, sim.space.upper)
        step(sim, state, driven)
        if done_at is None and sim.success():
            done_at = sim.time
    sim.close()
    arrays = {k: np.stack(v).astype(np.float32) for k, v in frames.items()}
    videos = {CAMERA: np.stack(images)} if render else {}
    return EpisodeData(sim.task.instruction, arrays, videos), done_at is not None


def collect(out: str | Path, episodes: int, seed: int = 0, image_size: int = IMAGE_SIZE, mjcf=None,
            progress: bool | None = None, overwrite: bool = False, moving_block: bool = False,
            noise_rad: float = 0.0) -> dict:
    """Write `episodes` expert episodes (seeds seed, seed+1, ...; the moving-block variant when `moving_block`,
    noise-injected when `noise_rad` > 0) to `out`; -> a summary."""
    from tqdm import tqdm

    from neon.action_space import G1ActionSpace

    names = [j.name for j in G1ActionSpace("arms_only", "dex3").joints if j.group == "arms"]
    eef_names = [f"{s}_{f}" for s in EEF_SIDES for f in EEF_FIELDS]
    features = {
        CAMERA: {"dtype": "video", "shape": [image_size, image_size, 3]},
        "observation.state": {"dtype": "float32", "shape": [len(names)], "names": names},
        "action": {"dtype": "float32", "shape": [len(names)], "names": names},
        "observation.eef": {"dtype": "float32", "shape": [len(eef_names)], "names": eef_names},
    }
    successes = []

    def episodes_iter():
        for s in tqdm(range(seed, seed + episodes), desc="collecting expert episodes", unit="ep",
                      disable=None if progress is None else not progress):
            episode, ok = expert_episode(s, image_size, mjcf, moving_block, noise_rad)
            successes.append(ok)
            yield episode

    meta = {"neon_sim.json": {"generator": "neon_sim.collect", "seed": seed, "episodes": episodes, "fps": FPS,
                              "image_size": image_size, "moving_block": moving_block,
                              "noise_rad": noise_rad}}
    root = write_dataset(out, episodes_iter(), fps=FPS, features=features, robot_type="unitree_g1",
                         extra_meta=meta, overwrite=overwrite)
    return {"root": str(root), "episodes": episodes, "moving_block": moving_block, "noise_rad": noise_rad,
            "expert_success_rate": float(np.mean(successes))}
