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
