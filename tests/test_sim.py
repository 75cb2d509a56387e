"""The MuJoCo G1 tabletop scene and its scripted expert, on Unitree's G1 model from ../shared (offline)."""

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering through Mesa on a machine without a GPU
pytest.importorskip("mujoco", reason="MuJoCo comes with the sim extra (scripts/setup.sh installs it)")

from neon_sim.expert import Expert, solve_ik
from neon_sim.scene import COLORS, EPISODE_S, G1Tabletop, SimError, sample_task

SEEDS = [101, 102, 103, 104]


def run(sim: G1Tabletop, policy) -> bool:
    """Joint targets every 20 ms until success or the episode's end."""
    while sim.time < EPISODE_S and not sim.success():
        sim.run(policy(sim.time + 0.02), 0.02)
    return sim.success()


def test_the_g1_is_matched_by_name_and_fixed_at_the_pelvis():
    sim = G1Tabletop(sample_task(np.random.default_rng(0)))
    mapped = {sim.space.names[i] for i in sim.dims}
    assert {f"{s}_{j}" for s in ("left", "right") for j in ("shoulder_pitch", "elbow", "wrist_yaw")} <= mapped
    assert not any("hand" in n for n in mapped)  # Unitree's 29-DOF model has no Dex3: those dims stay 0
    pelvis = sim.data.body("pelvis").xpos.copy()
    sim.run(sim.state(), 0.5)
    assert np.allclose(sim.data.body("pelvis").xpos, pelvis)  # fixed: no free joint, it does not fall
    assert np.abs(sim.state() - sim.state()).max() == 0 and sim.limit_violation <= 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_the_expert_touches_the_named_block_and_holding_still_does_not(seed):
    task = sample_task(np.random.default_rng(seed))
    assert task.colors[task.target] in task.instruction and set(task.colors) == set(COLORS)
    sim = G1Tabletop(task)
    assert run(sim, Expert(sim).targets), (task.instruction, sim.distance())
    assert sim.time < EPISODE_S and not sim.table_contact and sim.limit_violation <= 1e-3
    held = G1Tabletop(task)
    start = held.state()
    assert not run(held, lambda t: start) and held.distance() > 0.05


def test_pushing_into_the_table_is_no_success():
    sim = G1Tabletop(sample_task(np.random.default_rng(7)))
    through = solve_ik(sim, sim.task.arm, sim.block_top() + np.array([0.0, 0.0, -0.08]), sim.state())  # 4 cm into it
    for _ in range(100):
        sim.run(through, 0.02)
    assert sim.table_contact and not sim.success()


def test_cameras_see_the_scene():
    sim = G1Tabletop(sample_task(np.random.default_rng(3)))
    head, outside = sim.render("head"), sim.render("third_person")
    assert head.shape == outside.shape == (64, 64, 3) and head.dtype == np.uint8
    assert head.std() > 10 and np.abs(head.astype(int) - outside.astype(int)).mean() > 10  # two different views
    sim.close()


def test_a_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NEON_G1_MJCF", str(tmp_path / "nowhere.xml"))
    with pytest.raises(SimError, match="NEON_G1_MJCF"):
        G1Tabletop(sample_task(np.random.default_rng(0)))


def test_collect_writes_a_dataset_that_neon_reads(tmp_path):
    """Expert episodes as LeRobot v3.0: G1 joint names, the real fps, video, palm poses; read back for training."""
    from neon.action_space import G1ActionSpace
    from neon.data.sources import LeRobotSource
    from neon_sim.cli import main as sim_main
    from neon_sim.collect import FPS

    assert sim_main(["collect", "--out", str(tmp_path / "sim"), "--episodes", "2", "--seed", "101"]) == 0
    space = G1ActionSpace("arms_only")
    src = LeRobotSource(str(tmp_path / "sim"), space, 16)
    assert src.fps == FPS and len(src.episodes) == 2 and src.action_map.unmapped_source == []
    assert set(src.action_map.missing_target) == {n for n in space.names if "_hand_" in n}  # the model has no Dex3
    sample = src.sample(0)
    task = sample_task(np.random.default_rng(101))
    assert sample["obs"].instruction == task.instruction and sample["obs"].image.shape == (64, 64, 3)
    assert sample["obs"].eef.shape == (14,) and sample["action_mask"][:, :14].all()
    last = src.sample(src.episodes[0].length - 1)  # the episode ends with the palm on the block
    sim = G1Tabletop(task)
    side = slice(0, 3) if task.arm == "left" else slice(7, 10)
    assert np.linalg.norm(last["obs"].eef[side] - sim.block_top()) <= 0.035
    assert sim_main(["collect", "--out", str(tmp_path / "bad"), "--episodes", "0"]) == 2
