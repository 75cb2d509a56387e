"""The safety layer: limits, velocity, non-finite values, stale observations, dry run."""

import numpy as np
import pytest

from neon.action_space import G1ActionSpace
from neon_runtime.safety import SafetyConfig, SafetyError, SafetyLayer

ARMS = G1ActionSpace("arms_only")
FPS = 30.0


def test_clamps_to_joint_limits():
    layer = SafetyLayer(ARMS, SafetyConfig(max_joint_velocity=1e6, max_hand_velocity=1e6))
    chunk = np.full((16, ARMS.dim), 50.0, np.float32)
    safe, report = layer.apply(chunk, None, FPS)
    assert np.allclose(safe, ARMS.upper) and report.clamped_to_limits == chunk.size


def test_velocity_limits_from_state_and_between_steps():
    layer = SafetyLayer(ARMS, SafetyConfig(max_joint_velocity=1.5))
    state = np.zeros(ARMS.dim, np.float32)
    target = np.zeros((16, ARMS.dim), np.float32)
    elbow = ARMS.index("left_elbow")
    target[:, elbow] = 1.0  # a jump of 1 rad at once
    safe, report = layer.apply(target, state, FPS)
    step = 1.5 / FPS
    assert safe[0, elbow] == pytest.approx(step)
    assert np.allclose(np.diff(safe[:, elbow]), step, atol=1e-6)  # ramps at the limit
    assert np.all(np.abs(np.diff(np.vstack([state, safe]), axis=0)[:, :14]) <= step + 1e-6)
    assert report.rate_limited >= 16
    slow = np.linspace(0, 0.2, 16, dtype=np.float32)[:, None] * np.ones(ARMS.dim, np.float32) * 0
    safe2, r2 = layer.apply(slow, state, FPS)
    assert r2.rate_limited == 0 and np.array_equal(safe2, slow)


def test_non_finite_never_leaves():
    layer = SafetyLayer(ARMS)
    state = (ARMS.lower + ARMS.upper) / 2
    chunk = np.zeros((16, ARMS.dim), np.float32)
    chunk[3, 5] = np.nan
    chunk[7, 2] = np.inf
    safe, report = layer.apply(chunk, state, FPS)
    assert np.isfinite(safe).all() and report.non_finite == 2
    assert np.allclose(safe, np.clip(state, ARMS.lower, ARMS.upper))  # hold the current state
    with pytest.raises(SafetyError, match="non-finite"):
        layer.apply(chunk, None, FPS)


def test_locomotion_is_acceleration_limited_and_stops_on_nan():
    wb = G1ActionSpace("whole_body")
    layer = SafetyLayer(wb, SafetyConfig(max_locomotion_accel=0.6))
    loco = wb.group_slice("locomotion")
    chunk = np.zeros((16, wb.dim), np.float32)
    chunk[:, loco] = [0.5, 0.0, 0.0]
    safe, _ = layer.apply(chunk, np.zeros(wb.dim, np.float32), FPS)
    assert safe[0, loco.start] == pytest.approx(0.02) and safe[-1, loco.start] == pytest.approx(0.32)
    state = np.zeros(wb.dim, np.float32)
    state[loco] = [0.3, 0, 0]
    chunk[0, 0] = np.nan
    safe, _ = layer.apply(chunk, state, FPS)
    assert safe[-1, loco.start] < 0.3  # walking command decays towards zero


def test_stale_and_future_observations():
    layer = SafetyLayer(ARMS, SafetyConfig(max_observation_age_s=0.25))
    assert layer.check_age(100.0, now=100.1) == pytest.approx(0.1)
    with pytest.raises(SafetyError, match="0.400 s old"):
        layer.check_age(100.0, now=100.4)
    with pytest.raises(SafetyError, match="in the future"):
        layer.check_age(110.0, now=100.0)
    assert layer.check_age(None) is None


def test_dry_run_marks_chunks_not_executable():
    _, report = SafetyLayer(ARMS, SafetyConfig(dry_run=True)).apply(np.zeros((16, 28)), None, FPS)
    assert report.executable is False
    with pytest.raises(ValueError, match="max_joint_velocity"):
        SafetyConfig(max_joint_velocity=0).validate()
    with pytest.raises(SafetyError, match=r"chunk must be \(T, 28\)"):
        SafetyLayer(ARMS).apply(np.zeros((16, 27)), None, FPS)
