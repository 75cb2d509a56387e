"""The safety layer: limits, velocity, non-finite values, stale observations, dry run."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    slow = np.zeros((16, ARMS.dim), np.float32)
    slow[:, ARMS.group_slice("arms")] = np.linspace(0.01, 0.2, 16, dtype=np.float32)[:, None]  # 0.38 rad/s
    safe2, r2 = layer.apply(slow, state, FPS)
    assert r2.rate_limited == 0 and np.array_equal(safe2, slow)  # a chunk inside every limit passes unchanged
    # The first step's real time: a step due 10 ms from now may move 1.5 x 0.01 rad, not 1.5 / 30.
    late, _ = layer.apply(target, state, FPS, first_dt=0.01)
    assert late[0, elbow] == pytest.approx(0.015) and late[1, elbow] == pytest.approx(0.015 + step)


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



def test_nan_stamps_are_refused_and_the_future_allowance_is_below_the_age_limit():
    layer = SafetyLayer(ARMS)  # defaults: 0.5 s old at most, 0.1 s ahead at most
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(SafetyError, match="finite Unix time"):
            layer.check_age(bad, now=100.0)
    assert layer.check_age(100.08, now=100.0) == pytest.approx(-0.08)
    with pytest.raises(SafetyError, match="0.300 s in the future .*0.1 s allowed"):
        layer.check_age(100.3, now=100.0)  # a second ahead was accepted before
    with pytest.raises(ValueError, match="max_clock_skew_s must be in"):
        SafetyConfig(max_observation_age_s=0.5, max_clock_skew_s=1.0).validate()


def test_dry_run_and_missing_state_mark_chunks_not_executable():
    state = np.zeros(28, np.float32)
    _, report = SafetyLayer(ARMS, SafetyConfig(dry_run=True)).apply(np.zeros((16, 28)), state, FPS)
    assert report.executable is False and any("dry-run" in n for n in report.notes)
    _, report = SafetyLayer(ARMS).apply(np.zeros((16, 28)), None, FPS)  # no state: the first step is unchecked
    assert report.executable is False and any("no joint state" in n for n in report.notes)
    _, report = SafetyLayer(ARMS).apply(np.zeros((16, 28)), state, FPS)
    assert report.executable is True and report.notes == []
    with pytest.raises(ValueError, match="max_joint_velocity"):
        SafetyConfig(max_joint_velocity=0).validate()
    with pytest.raises(SafetyError, match=r"chunk must be \(T, 28\)"):
        SafetyLayer(ARMS).apply(np.zeros((16, 27)), None, FPS)


SPACES = [G1ActionSpace("arms_only"), G1ActionSpace("whole_body", "inspire", neck=True)]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_property_nothing_outside_limits_nothing_too_fast(data):
    """Any chunk (NaN, +-inf, huge), any state inside the limits, any fps and first-step time: the output stays
    inside the joint limits and no step moves faster than the velocity limits, from the state or between steps."""
    space = data.draw(st.sampled_from(SPACES))
    cfg = SafetyConfig(max_joint_velocity=data.draw(st.floats(0.1, 5.0)), max_hand_velocity=data.draw(st.floats(0.1, 10.0)),
                       max_locomotion_accel=data.draw(st.floats(0.1, 3.0)))
    layer = SafetyLayer(space, cfg)
    steps, fps = data.draw(st.integers(1, 20)), data.draw(st.floats(1.0, 500.0))
    values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-1e6, 1e6, width=32))
    chunk = np.array(data.draw(st.lists(values, min_size=steps * space.dim, max_size=steps * space.dim)),
                     np.float32).reshape(steps, space.dim)
    u = np.array(data.draw(st.lists(st.floats(0, 1), min_size=space.dim, max_size=space.dim)), np.float32)
    state = (space.lower + u * (space.upper - space.lower)).astype(np.float32)
    first_dt = data.draw(st.one_of(st.none(), st.floats(0.0, 0.5)))
    safe, report = layer.apply(chunk, state, fps, first_dt)
    assert safe.shape == chunk.shape and np.isfinite(safe).all()
    assert (safe >= space.lower).all() and (safe <= space.upper).all()
    tol = 1e-4 * np.maximum(1.0, np.abs(space.upper - space.lower))  # float32 rounding on 0..1000 hand ranges
    first = layer.speed * (1 / fps if first_dt is None else first_dt)
    assert (np.abs(safe[0] - state) <= first + tol).all()
    assert (np.abs(np.diff(safe, axis=0)) <= layer.speed / fps + tol).all()
    assert report.non_finite == int((~np.isfinite(chunk)).sum())
