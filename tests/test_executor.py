"""ChunkExecutor on an injected clock: blended hand-overs, stale steps skipped by time, request-ahead, the committed
prefix, the safety hook at the control rate, and the latency estimate (no sim, no robot)."""

import numpy as np
import pytest

from neon.action_space import G1ActionSpace
from neon_runtime.executor import (Chunk, ChunkExecutor, ChunkRefused, LatencyEstimator, min_jerk_ramp, request_due,
                                   safety_hook)
from neon_runtime.safety import SafetyConfig, SafetyLayer

FPS = 10.0


def ramp_chunk(start_s: float, received_s: float, slope: float, offset: float = 0.0, steps: int = 16) -> Chunk:
    """A 2-joint chunk on the line q(t) = offset + slope * t (joint 1 at twice that), step 0 due at start_s."""
    t = start_s + np.arange(steps) / FPS
    q = offset + slope * t
    return Chunk.at_fps(np.stack([q, 2 * q], axis=1), FPS, start_s, received_s)


def line(t: float, slope: float, offset: float = 0.0) -> np.ndarray:
    q = offset + slope * t
    return np.array([q, 2 * q], np.float32)


# --------------------------------------------------------------------------------------------------- blending
def test_a_blended_hand_over_starts_where_the_old_chunk_is_and_ends_on_the_new_one():
    ex = ChunkExecutor(2, blend_s=0.2)
    ex.accept(ramp_chunk(0.1, 0.0, slope=1.0))
    r = 0.53  # arrives between two steps
    ex.accept(ramp_chunk(0.4, r, slope=1.0, offset=0.5))  # the new plan is 0.5 rad away from the old one
    assert np.allclose(ex.target(r), line(r, 1.0), atol=1e-6)  # no jump at arrival
    assert np.allclose(ex.target(r + 1e-4), line(r + 1e-4, 1.0), atol=1e-5)
    mid = r + 0.1  # halfway: the min-jerk ramp is at 0.5
    assert min_jerk_ramp(0.5) == pytest.approx(0.5)
    assert np.allclose(ex.target(mid), 0.5 * line(mid, 1.0) + 0.5 * line(mid, 1.0, 0.5), atol=1e-5)
    for t in (r + 0.2, r + 0.25, 1.0, 1.9):  # blend over: the new chunk alone (holding its last step at the end)
        assert np.allclose(ex.target(t), line(min(t, 1.9), 1.0, 0.5), atol=1e-5)
    # velocity does not jump at the arrival either: the ramp starts flat
    h = 1e-4
    before, after = (ex.target(r) - ex.target(r - h)) / h, (ex.target(r + h) - ex.target(r)) / h
    assert np.allclose(before, after, atol=0.05) and np.allclose(before, [1.0, 2.0], atol=1e-2)


def test_the_ramp_is_min_jerk():
    s = np.linspace(0, 1, 101)
    a = np.array([min_jerk_ramp(x) for x in s])
    assert a[0] == 0 and a[-1] == 1 and (np.diff(a) >= 0).all()
    assert min_jerk_ramp(-1.0) == 0 and min_jerk_ramp(2.0) == 1
    assert abs(min_jerk_ramp(1e-3)) < 1e-8 and abs(1 - min_jerk_ramp(1 - 1e-3)) < 1e-8  # flat at both ends


def test_without_blending_the_new_chunk_is_in_force_at_once():
    ex = ChunkExecutor(2)
    ex.accept(ramp_chunk(0.1, 0.0, slope=1.0))
    ex.accept(ramp_chunk(0.4, 0.53, slope=1.0, offset=0.5))
    assert np.allclose(ex.target(0.53), line(0.53, 1.0, 0.5), atol=1e-5)


def test_a_hand_over_during_a_blend_is_continuous_and_finished_blends_are_dropped():
    ex = ChunkExecutor(2, blend_s=0.3)
    ex.accept(ramp_chunk(0.1, 0.0, slope=1.0))
    ex.accept(ramp_chunk(0.2, 0.2, slope=1.0, offset=0.3))
    during = ex.target(0.3)
    ex.accept(ramp_chunk(0.3, 0.3, slope=1.0, offset=-0.3))  # arrives while the previous one still blends in
    assert np.allclose(ex.target(0.3), during, atol=1e-6)
    assert np.allclose(ex.target(0.6), line(0.6, 1.0, -0.3), atol=1e-5)
    ex.accept(ramp_chunk(0.9, 0.9, slope=1.0))
    assert len(ex._layers) == 2  # the two before the newest finished blending by 0.9: only the newest is kept under it


# ------------------------------------------------------------------------------------------- stale steps
def test_steps_already_past_on_arrival_are_skipped_by_time():
    ex = ChunkExecutor(2)
    ex.accept(ramp_chunk(0.1, 0.0, slope=0.0))
    steps = np.arange(16, dtype=np.float32)[:, None] * [1.0, 1.0]  # step k is k rad
    ex.accept(Chunk.at_fps(steps, FPS, start_s=1.0, received_s=1.25))  # observed at 0.9, the reply 350 ms later
    assert ex.last_skipped == 3 and ex.skipped == 3  # steps 0, 1, 2 were due at 1.0, 1.1, 1.2
    assert np.allclose(ex.target(1.25), [2.5, 2.5])  # halfway from step 2 to step 3: steps 0 and 1 never run
    assert np.allclose(ex.target(1.3), [3.0, 3.0])


def test_a_step_0_still_ahead_is_approached_from_where_the_executor_was_or_blended_in_on_its_line():
    ex = ChunkExecutor(2)
    ex.accept(ramp_chunk(0.1, 0.0, slope=1.0))
    r = 0.52
    ex.accept(Chunk.at_fps(np.ones((16, 2), np.float32), FPS, start_s=0.6, received_s=r))
    assert ex.last_skipped == 0
    assert np.allclose(ex.target(r), line(r, 1.0), atol=1e-6)  # from the old target at arrival ...
    assert np.allclose(ex.target(0.56), 0.5 * line(r, 1.0) + 0.5 * np.ones(2), atol=1e-5)  # ... linearly ...
    assert np.allclose(ex.target(0.6), [1.0, 1.0])  # ... to step 0 when it is due
    blended = ChunkExecutor(2, blend_s=0.2)  # blending: the first segment extended back, blended in from the old
    blended.accept(ramp_chunk(0.1, 0.0, slope=1.0))
    blended.accept(ramp_chunk(0.6, r, slope=2.0, offset=-0.5))  # on q = 2t - 0.5 from step 0 (0.6) on
    assert np.allclose(blended.target(r), line(r, 1.0), atol=1e-6)  # no jump
    assert np.allclose(blended._layers[-1].at(0.55), line(0.55, 2.0, -0.5), atol=1e-5)  # the line, before step 0
    assert np.allclose(blended.target(r + 0.2), line(r + 0.2, 2.0, -0.5), atol=1e-5)
    first = ChunkExecutor(2)  # nothing in force before: step 0 is the target until it is due
    first.accept(Chunk.at_fps(np.ones((16, 2), np.float32), FPS, start_s=0.6, received_s=r))
    assert np.allclose(first.target(r), [1.0, 1.0])


def test_hold_is_what_the_first_chunk_takes_over_from():
    ex = ChunkExecutor(2, blend_s=0.2)
    ex.hold(np.zeros(2), 0.0)
    assert np.allclose(ex.target(0.1), 0.0) and ex.chunk is None and ex.age(0.1) is None and ex.should_request(0.1, 0.3)
    ex.accept(Chunk.at_fps(np.ones((16, 2), np.float32), FPS, start_s=0.1, received_s=0.3))  # steps 0, 1 stale
    assert np.allclose(ex.target(0.3), 0.0, atol=1e-6) and np.allclose(ex.target(0.5), 1.0)
    assert ex.age(0.5) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"\(2,\) pose"):
        ex.hold(np.zeros(3), 0.0)


# ------------------------------------------------------------------------------------------ request-ahead
def test_should_request_once_the_chunk_no_longer_covers_the_latency_and_a_step():
    ex = ChunkExecutor(2)
    assert ex.should_request(0.0, 0.3)  # nothing in force
    ex.accept(ramp_chunk(0.1, 0.0, slope=1.0))  # steps due 0.1 .. 1.6
    # the last step is due at 1.6: a request sent at t arrives at t + 0.3 and must find one step still ahead
    assert not ex.should_request(1.19, 0.3) and ex.should_request(1.2, 0.3) and ex.should_request(1.5, 0.3)
    assert not ex.should_request(1.49, 0.0) and ex.should_request(1.5, 0.0)
    assert not ex.should_request(1.09, 0.3, margin_s=0.1) and ex.should_request(1.1, 0.3, margin_s=0.1)
    # each chunk meant to be in force for 8 steps from its arrival (0.0): the reply should arrive at 0.8
    assert not ex.should_request(0.49, 0.3, execute_steps=8) and ex.should_request(0.5, 0.3, execute_steps=8)
    ex.accept(ramp_chunk(0.6, 0.8, slope=1.0))  # observed at 0.5, arrived at 0.8 (steps 0, 1 past): the next at 1.6
    assert not ex.should_request(1.29, 0.3, execute_steps=8) and ex.should_request(1.3, 0.3, execute_steps=8)
    assert ex.should_request(2.0, 0.3, execute_steps=30)  # never beyond the chunk: one step before its end


def test_committed_is_what_runs_while_a_request_is_under_way():
    ex = ChunkExecutor(2)
    assert ex.committed(0.0, 0.3, FPS).shape == (0, 2)  # nothing in force: nothing committed
    ex.accept(ramp_chunk(0.1, 0.0, slope=1.0))
    now = 0.43
    prefix = ex.committed(now, 0.25, FPS)  # a reply asked for now has step k due at now + (k + 1) / fps
    assert prefix.shape == (2, 2)  # steps 0 and 1 (due now + 0.1, now + 0.2) run before it arrives at now + 0.25
    assert np.allclose(prefix, [line(now + 0.1, 1.0), line(now + 0.2, 1.0)], atol=1e-5)
    assert ex.committed(now, 0.3, FPS).shape == (3, 2) and ex.committed(now, 0.05, FPS).shape == (0, 2)
    assert ex.committed(now, 2.0, FPS, max_steps=16).shape == (16, 2)
    assert np.allclose(ex.committed(now, 2.0, FPS)[-1], line(1.6, 1.0))  # beyond the chunk: its last step held


def test_the_latency_estimate_is_a_quantile_of_recent_round_trips():
    est = LatencyEstimator(window=10, quantile=0.9, initial_s=0.1)
    assert est.estimate() == 0.1 and len(est) == 0
    for x in [0.2] * 9 + [0.5]:
        est.add(x)
    assert 0.2 < est.estimate() < 0.5  # one slow reply in ten moves it part of the way
    for x in [0.3] * 10:  # the window slides
        est.add(x)
    assert est.estimate() == pytest.approx(0.3)
    est.add(float("nan"))
    est.add(-1.0)
    assert len(est) == 10 and est.estimate() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="quantile"):
        LatencyEstimator(quantile=1.5)


# ------------------------------------------------------------------------------------------- the safety hook
def test_every_executed_target_passes_the_safety_layer_at_the_control_rate():
    space = G1ActionSpace("arms_only", "dex3")
    layer = SafetyLayer(space, SafetyConfig(max_joint_velocity=2.0))
    elbow, hand = space.index("left_elbow"), space.index("left_hand_thumb_0")
    ex = ChunkExecutor(space.dim, safety=safety_hook(layer))
    ex.hold(np.zeros(space.dim), 0.0)
    jump = np.zeros((16, space.dim), np.float32)
    jump[:, elbow], jump[:, hand] = 1.0, 1.0
    ex.accept(Chunk.at_fps(jump, FPS, start_s=0.0, received_s=0.0))  # 1 rad at once
    qs = [ex.command(k * 0.02) for k in range(1, 20)]
    moves = np.diff(np.stack([np.zeros(space.dim), *qs]), axis=0)
    assert np.abs(moves[:, elbow]).max() == pytest.approx(2.0 * 0.02, abs=1e-6)  # 2 rad/s at 50 Hz
    assert np.abs(moves[:, hand]).max() == pytest.approx(layer.speed[hand] * 0.02, abs=1e-6)  # the hands' own speed
    assert qs[-1][elbow] == pytest.approx(19 * 0.04, abs=1e-5) and ex.safety_limited > 0
    beyond = np.full((16, space.dim), 50.0, np.float32)  # far outside every limit
    ex.accept(Chunk.at_fps(beyond, FPS, start_s=1.0, received_s=1.0))
    for k in range(1, 400):
        q = ex.command(1.0 + k * 0.02)
    assert np.allclose(q, space.upper, atol=1e-5)  # clamped into the limits
    assert np.allclose(ex.target(2.0), 50.0)  # target() itself is the chunks' plan, unfiltered


def test_nan_means_no_target_and_execute_keeps_the_last_command():
    ex = ChunkExecutor(2, blend_s=0.2)
    ex.hold(np.array([0.5, 0.5]), 0.0)
    ex.accept(Chunk.at_fps([[np.nan, 1.0]] * 4, FPS, 0.0, 0.0))
    assert np.isnan(ex.target(0.1)[0]) and ex.target(0.3)[1] == pytest.approx(1.0)
    q = ex.command(0.3)
    assert q[0] == pytest.approx(0.5) and q[1] == pytest.approx(1.0)


def test_a_chunk_far_ahead_is_not_extrapolated_back_and_skewed_or_stale_chunks_are_refused():
    """The reproduction: blending, a +0.3 rad/s chunk whose step 0 is due 0.9 s after arrival used to be extended back
    along its slope (5 s ahead: -1.44 rad, the wrong way); now it is approached from where the executor is."""
    ex = ChunkExecutor(2, blend_s=0.2)
    ex.hold(np.zeros(2, np.float32), 0.0)
    ex.accept(ramp_chunk(0.9, 0.0, slope=0.3))  # step 0 (0.27 rad) due 0.9 s ahead
    q = np.array([ex.target(t)[0] for t in np.arange(0.0, 0.9, 0.01)])
    assert q.min() >= -1e-6 and (np.diff(q) >= -1e-6).all()  # never the wrong way
    near = ChunkExecutor(2, blend_s=0.2)
    near.hold(np.zeros(2, np.float32), 0.0)
    near.accept(ramp_chunk(0.05, 0.0, slope=1.0))  # half a step ahead: on its line, as before
    assert np.allclose(near.target(0.1), 0.5 * line(0.1, 1.0), atol=1e-5)  # min-jerk half-way: on its line, blended
    with pytest.raises(ChunkRefused, match="starts 5.000 s after it arrived .*clocks skewed"):
        ex.accept(ramp_chunk(5.0, 0.0, slope=0.3))
    with pytest.raises(ChunkRefused, match="stale chunk: its last step was due 8.500 s before it arrived"):
        ex.accept(ramp_chunk(0.0, 10.0, slope=0.3))
    assert ex.refused == 2 and ex.accepted == 1


# ------------------------------------------------------------------------------------------ temporal ensembling
def test_ensembling_averages_the_chunks_of_the_window_that_still_have_steps():
    ex = ChunkExecutor(2, ensemble_s=0.35)
    ex.accept(ramp_chunk(0.1, 0.0, slope=1.0, steps=4))  # steps at 0.1 .. 0.4
    ex.accept(ramp_chunk(0.2, 0.1, slope=1.0, offset=0.3))
    ex.accept(ramp_chunk(0.3, 0.2, slope=1.0, offset=0.6))
    t = 0.32  # past every chunk's step 0 (before it, a chunk runs from its anchor at arrival)
    assert np.allclose(ex.target(t), (line(t, 1.0) + line(t, 1.0, 0.3) + line(t, 1.0, 0.6)) / 3, atol=1e-5)
    t = 0.38  # the first chunk has left the window (arrived 0.38 s ago); the other two remain
    assert np.allclose(ex.target(t), (line(t, 1.0, 0.3) + line(t, 1.0, 0.6)) / 2, atol=1e-5)
    # a chunk whose last step is past no longer counts, even inside the window
    ex2 = ChunkExecutor(2, ensemble_s=1.0)
    ex2.accept(ramp_chunk(0.1, 0.0, slope=1.0, steps=2))  # last step at 0.2
    ex2.accept(ramp_chunk(0.1, 0.1, slope=1.0, offset=0.3))
    assert np.allclose(ex2.target(0.15), (line(0.15, 1.0) + line(0.15, 1.0, 0.3)) / 2, atol=1e-5)
    assert np.allclose(ex2.target(0.5), line(0.5, 1.0, 0.3), atol=1e-5)


def test_ensembling_cancels_the_per_chunk_errors_that_re_planning_every_tick_executes():
    """Heads re-run at 50 Hz, each chunk the true line plus its own random offset: the executed target's error is
    about the offsets' spread over sqrt(chunks in the window), not the spread itself."""
    rng = np.random.default_rng(0)
    errors = {}
    for ensemble_s in (0.0, 0.5):
        ex, err = ChunkExecutor(2, ensemble_s=ensemble_s), []
        for k in range(200):
            now = k * 0.02
            ex.accept(ramp_chunk(now, now, slope=0.5, offset=float(rng.normal(0, 0.05))))
            if k > 50:
                err.append(abs(ex.target(now + 0.02)[0] - line(now + 0.02, 0.5)[0]))
        errors[ensemble_s] = float(np.mean(err))
    assert errors[0.0] > 0.03 and errors[0.5] < errors[0.0] / 3


def test_ensembling_keeps_the_first_chunk_anchored_and_refuses_blending_too():
    ex = ChunkExecutor(2, ensemble_s=0.3)
    ex.hold(np.array([1.0, 2.0], np.float32), 0.0)
    ex.accept(ramp_chunk(0.3, 0.1, slope=0.0, offset=0.0))  # step 0 still ahead: approached from the held pose
    assert np.allclose(ex.target(0.1), [1.0, 2.0], atol=1e-6)
    assert np.allclose(ex.target(0.2), [0.5, 1.0], atol=1e-5)
    with pytest.raises(ValueError, match="two ways to hand over"):
        ChunkExecutor(2, blend_s=0.2, ensemble_s=0.3)
    with pytest.raises(ValueError, match="ensemble_s"):
        ChunkExecutor(2, ensemble_s=float("nan"))


def test_a_bad_blend_window_is_refused():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="blend_s"):
            ChunkExecutor(2, blend_s=bad)


def test_execute_bounds_the_step_after_a_stall():
    """A control loop that stalls for 0.5 s moves at most max_dt_s worth of the speed limit on its next tick."""
    ex = ChunkExecutor(1, safety=lambda q, last, dt: q if last is None else np.clip(q, last - 2.0 * dt, last + 2.0 * dt))
    ex.hold(np.zeros(1, np.float32), 0.0)
    ex.accept(Chunk.at_fps(np.ones((4, 1), np.float32), 10.0, start_s=0.0, received_s=0.0))
    assert ex.command(0.5, max_dt_s=0.04)[0] == pytest.approx(0.08)  # 2 rad/s x 0.04 s, not 2 x 0.5
    assert ex.command(0.52)[0] == pytest.approx(0.12)  # no bound given: the time since, 0.02 s


def test_request_due_is_one_rule_for_time_and_request_ahead():
    """neon-g1 and neon-ros ask by it: the period, or request-ahead on the chunk in force, or at once with neither."""
    assert request_due(1.0, 0.0, 0.5) and not request_due(0.2, 0.0, 0.5)  # by time
    assert request_due(0.2, 0.0, None)  # no period, nothing in force: now
    ex = ChunkExecutor(2)
    ex.accept(ramp_chunk(0.0, 0.0, slope=0.0, steps=16))  # steps to 1.5 s
    assert not request_due(0.2, 0.0, None, ex, latency_s=0.2)  # plenty left
    assert request_due(1.2, 0.0, None, ex, latency_s=0.2)  # 0.3 s left - one step < latency
    assert request_due(1.0, 0.0, 5.0, ex, latency_s=0.2, margin_s=0.2)  # the margin brings it forward
    assert not request_due(1.0, 0.0, 5.0, None, latency_s=0.2)  # two-rate ticks: by time alone
