"""Closed-loop evaluation in the simulated G1 tabletop: success rate over fixed seeds.

Policies:
    oracle   the scripted expert
    hold     never moves
    URL      a running neon-serve (ws://host:port/ws), driven through `RemotePolicy`, the client interface
             the ROS node uses

A server whose replies are not executable (dry run, untrained heads), or whose action space lacks the arm
joints, is refused before anything moves. Latency (`latency_ms`, sim time; the sim stands still during a real
round trip): the observation is taken at t, the reply is usable at t + latency. Two ways to run chunks:

plain (default): synchronous chunking. Send the current observation, execute the reply's first
`execute_steps` steps (each one frame, 1 / fps, its joint targets interpolated at CONTROL_HZ), then ask
again. While a reply is under way the robot goes on with the previous chunk's steps beyond those executed,
and holds the last target once they run out (before the first reply: holds its start). A latency that is
not a whole number of steps ends part-way through a step: the targets of that step's first control ticks
are tracked, to the physics timestep (2 ms). The new chunk then runs from its first step.

executor: `neon_runtime.executor.ChunkExecutor` at CONTROL_HZ, as the G1 bridge runs chunks: the next
request leaves early enough for its reply to arrive when the chunk in force has run `execute_steps` steps,
steps already past on arrival are skipped, the hand-over is blended over `blend_s`, and every target passes
the safety layer's limits at the control rate (`_run_executor`).

Both report jerk within chunks and at hand-overs on the commanded target stream (`tick_jerk`).

Control (`control`): "chunk" (default) is the above: a full request (image, instruction, state) per chunk,
executed open loop for `execute_steps` steps. "two-rate" is `neon_runtime.two_rate`'s split on the sim clock
(`_run_two_rate`, executor only): backbone features refreshed every 1 / `feature_hz` s from a full observation
taken then and usable `latency_ms` later, the heads every 1 / `heads_hz` s on the fresh joint state and the newest
usable features, each reply usable `heads_latency_ms` later and blended in as a new chunk. Against a neon-serve
a refresh is a full `RemotePolicy.infer` request (its features stay on the server under the client's id; its
chunk is not used, as in `TwoRateRunner`), sent when it would land, with the observation taken `latency_ms`
earlier; a heads tick is a light request (`reuse_features`: state and timestamp only). The oracle's "features"
are the block's position at the refresh's tick: it re-plans from the block as seen (`Expert.see`), at each
request with chunk-rate control, at each heads tick from the newest usable refresh with two-rate control.

`moving_block`: the task variant in which the named block jumps once mid-episode (`scene.sample_move`).
"""

from __future__ import annotations

import json
import math
import numbers
import time
from pathlib import Path

import numpy as np

from neon_sim.collect import CONTROL_HZ, FPS, step
from neon_sim.expert import Expert
from neon_sim.scene import EPISODE_S, G1Tabletop, SimError, episode_task


def _oracle_chunk_steps() -> int:
    """Oracle and hold chunks are as long as Neon's (the config states it once), or execute_steps if
    longer: the steps beyond execute_steps are what the robot goes on with while a reply is under way."""
    from neon.config import NeonConfig

    return NeonConfig().num_action_steps


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class _Remote:
    """A neon-serve as a sim policy: chunks in physical units for the current observation."""

    def __init__(self, url: str, token: str | None = None, ablation: str = "none"):
        from neon_runtime.client import RemoteError, RemotePolicy, executable_action_space

        self.policy = RemotePolicy(url, token)
        meta = self.policy.metadata()
        try:
            space = executable_action_space(meta, url)
        except RemoteError as e:
            self.policy.close()
            raise SimError(str(e)) from None
        self.names, self.round_trips, self.interventions, self.ablation = space.names, [], 0, ablation
        self.heads_round_trips, self.light_requests, self.reused_replies = [], 0, 0  # two-rate's light requests
        self.prefix_max_steps = int(meta.get("prefix_max_steps") or 0)  # committed steps its model takes (0: none)
        self.committed_steps: list[int] = []  # per reply: how many of its steps were the prefix sent

    def observation(self, sim: G1Tabletop) -> dict:
        """This instant's full observation as sent: head frame, instruction, state (the server's joint order)."""
        image, instruction = sim.render("head"), sim.task.instruction
        if self.ablation == "blank-image":  # does vision matter? the same grey frame every step
            image = np.full_like(image, 128)
        elif self.ablation == "other-block":  # does language matter? the instruction names another block
            task = sim.task
            instruction = instruction.replace(task.colors[task.target], task.colors[(task.target + 1) % len(task.colors)])
        return {"image": image, "instruction": instruction, "state": self._to_server(sim.state(), sim)}

    def chunk(self, sim: G1Tabletop, prefix: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """A full request on this instant's observation -> (Float[(T, D)] joint targets in the sim's action-space
        order, the chunk's fps). `prefix`: Float[(d, D)] committed steps in the sim's order (a prefix-conditioned
        model's; d >= 1), sent along."""
        state, request = sim.state(), {**self.observation(sim), "timestamp": time.time()}
        if prefix is not None and len(prefix):
            request["prefix"] = np.stack([self._to_server(row, sim) for row in prefix])
        return self._actions(self._send(request, self.round_trips), state, sim)

    def refresh(self, observation: dict) -> None:
        """A full request on `observation` (taken earlier): the server keeps its backbone features under this
        client's id for the light requests; its chunk is not executed (as `TwoRateRunner` does)."""
        self._send({**observation, "timestamp": time.time()}, self.round_trips)

    def heads(self, sim: G1Tabletop, prefix: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """A light request (`reuse_features`: this instant's state and timestamp, no image): the heads on the
        features of this client's newest full request -> as `chunk` (`prefix` too)."""
        state = sim.state()
        request = {"state": self._to_server(state, sim), "timestamp": time.time()}
        if prefix is not None and len(prefix):
            request["prefix"] = np.stack([self._to_server(row, sim) for row in prefix])
        reply = self._send(request, self.heads_round_trips, reuse_features=True)
        self.light_requests += 1
        self.reused_replies += bool((reply.get("features") or {}).get("reused"))
        return self._actions(reply, state, sim)

    def _send(self, request: dict, round_trips: list, reuse_features: bool = False) -> dict:
        from neon_runtime.client import RemoteError

        t0 = time.perf_counter()
        try:
            reply = self.policy.infer(request, reuse_features=reuse_features)
        except RemoteError as e:
            raise SimError(f"neon-serve refused a {'light' if reuse_features else 'full'} request: {e}") from None
        round_trips.append((time.perf_counter() - t0) * 1e3)
        return reply

    def _actions(self, reply: dict, state: np.ndarray, sim: G1Tabletop) -> tuple[np.ndarray, float]:
        if reply["dry_run"]:
            raise SimError(f"the server marked a chunk not executable: {reply['safety']['notes']}")
        self.interventions += int(reply["safety"]["rate_limited"]) + int(reply["safety"]["clamped_to_limits"])
        self.committed_steps.append(int(reply.get("committed_steps") or 0))
        actions = np.asarray(reply["actions"], np.float32)
        out = np.tile(state, (len(actions), 1))
        for k, name in enumerate(self.names):
            if name in sim.space.names:
                out[:, sim.space.index(name)] = actions[:, k]
        return out, float(reply["fps"])

    def _to_server(self, state: np.ndarray, sim: G1Tabletop) -> np.ndarray:
        return np.array([state[sim.space.index(n)] if n in sim.space.names else 0.0 for n in self.names], np.float32)

    def close(self) -> None:
        self.policy.close()


def partial_step(sim: G1Tabletop, start: np.ndarray, goal: np.ndarray, fps: float, seconds: float) -> np.ndarray:
    """The first `seconds` (< 1 / fps) of `collect.step(sim, start, goal, fps)`: the same control ticks, the
    last one cut short, to the physics timestep; -> the target being tracked when it ends."""
    n = max(1, int(math.ceil(CONTROL_HZ / fps)))
    tick, target = 1.0 / (fps * n), start
    for k in range(1, n + 1):
        left = seconds - (k - 1) * tick
        if left < sim.model.opt.timestep / 2:
            break
        target = start + (goal - start) * k / n
        sim.run(target, min(tick, left))
    return target


class _Ticks:
    """The sim as `collect.step` and `partial_step` see it, logging every control tick: (its end time, its target)."""

    def __init__(self, sim: G1Tabletop, log: list):
        self._sim, self._log = sim, log

    def run(self, targets: np.ndarray, seconds: float) -> None:
        self._sim.run(targets, seconds)
        self._log.append((self._sim.time, np.asarray(targets, np.float32)))

    def __getattr__(self, name):
        return getattr(self._sim, name)


EXECUTORS = ("plain", "executor")
CONTROLS = ("chunk", "two-rate")
HEADS_LATENCY_MS = 5.0  # a small figure for the heads alone on a GPU. On the 2-core CPU with neon-tiny,
# bench_two_rate measured 23-24 ms p50 from a state step to the first command reflecting it (heads at 30 Hz,
# in-process and over loopback): bench_moving_block passes 23


def run_episode(seed: int, policy: str, remote: _Remote | None = None, execute_steps: int = 8,
                frames: list | None = None, latency_ms: float = 0.0, mjcf=None, executor: str = "plain",
                blend_s: float = 0.0, moving_block: bool = False, control: str = "chunk", feature_hz: float = 5.0,
                heads_hz: float = 30.0, heads_latency_ms: float = HEADS_LATENCY_MS, prefix: bool = True,
                ensemble_s: float = 0.0) -> dict:
    """One episode; `frames` collects head | third-person views for a video when given. `prefix`: with the
    executor, send a prefix-conditioned served model the committed steps (see `_run_executor`).

    executor "plain": synchronous chunking: each request waits out `latency_ms` on the previous chunk's leftover
    steps, then its reply runs from its first step, with neither skipping the steps that are already stale nor
    blending into the old chunk. "executor": `neon_runtime.executor.ChunkExecutor` at CONTROL_HZ on the sim clock
    (see `_run_executor`), blending over `blend_s` or averaging the chunks of the last `ensemble_s` (temporal
    ensembling). control "two-rate" (executor only): `_run_two_rate`.
    """
    _check_executor(executor, blend_s, ensemble_s)
    _check_control(control, executor, feature_hz, heads_hz, heads_latency_ms)
    sim = G1Tabletop(episode_task(seed, moving_block), mjcf)
    expert = Expert(sim) if policy == "oracle" else None
    start = sim.state()
    horizon = max(execute_steps, _oracle_chunk_steps())  # oracle and hold chunks

    def local_chunk(t: float, top: np.ndarray | None) -> tuple[np.ndarray, float]:
        """The oracle's chunk at t from the block as seen (`top`), or hold's: (Float[(T, D)] joint targets, fps)."""
        if expert is None:
            return np.tile(start, (horizon, 1)), FPS
        expert.see(top, t)  # planned from the observation's time, as a served policy's chunk is
        return np.stack([expert.targets(t + (k + 1) / FPS) for k in range(horizon)]), FPS

    def plan(t_request: float, committed: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """The policy's chunk for a full observation of this instant (`committed`: the steps that run while the
        request is under way, for a prefix-conditioned model)."""
        return remote.chunk(sim, committed) if remote is not None else local_chunk(t_request, sim.block_top())

    def observe() -> object:
        """A feature refresh's observation, taken now (the oracle's features: where the block is)."""
        return remote.observation(sim) if remote is not None else sim.block_top().copy()

    def land(features: object) -> None:
        """A refresh's features become usable: a served policy's full request goes now."""
        if remote is not None:
            remote.refresh(features)

    def heads(t: float, features: object, committed: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """The heads on the fresh state and the newest usable features (`committed`: as for `plan`)."""
        return remote.heads(sim, committed) if remote is not None else local_chunk(t, features)

    def over() -> bool:
        return sim.success() or sim.time >= EPISODE_S - 1e-9

    ticks = [(sim.time, start)]  # (time, the joint target commanded up to then) at every control tick
    if control == "two-rate":
        info = _run_two_rate(sim, observe, land, heads, over, ticks, frames, latency_ms / 1e3, blend_s, feature_hz,
                             heads_hz, heads_latency_ms / 1e3, remote.prefix_max_steps if remote and prefix else 0,
                             ensemble_s)
    else:
        extra = {} if executor == "plain" else {"prefix_max_steps": remote.prefix_max_steps if remote and prefix else 0,
                                                "ensemble_s": ensemble_s}
        run = _run_plain if executor == "plain" else _run_executor
        info = run(sim, plan, over, ticks, frames, latency_ms / 1e3, execute_steps, blend_s, **extra)
    within, boundary = frame_jerk(np.asarray(info["step_targets"]), info["step_boundaries"])
    move = sim.task.move
    result = {"seed": seed, "instruction": sim.task.instruction, "success": sim.success(),
              "time_to_success_s": round(sim.time, 3) if sim.success() else None,
              "joint_limit_violation": sim.limit_violation > 1e-3, "table_contact": sim.table_contact,
              "final_distance_m": round(sim.distance(), 4), "jerk_within": within, "jerk_boundary": boundary,
              "control_jerk": control_jerk(ticks, info["handovers"], info["fps"], blend_s),
              "requests": info["requests"], "skipped_steps": info.get("skipped_steps", 0),
              "safety_limited": info.get("safety_limited", 0),
              "move_at_s": None if move is None else round(move.at_s, 3), "moved": sim.moved_at_s is not None,
              "replans": None if expert is None else [round(p[0], 3) for p in expert.replans]}
    if control == "two-rate":
        result.update(feature_refreshes=info["feature_refreshes"], heads_ticks_s=info["heads_ticks_s"],
                      refreshes_s=info["refreshes_s"])
    sim.close()
    return result


def _run_plain(sim, plan, over, ticks, frames, latency_s, execute_steps, blend_s) -> dict:
    """Plain synchronous chunking (the module docstring); -> requests, hand-over times, the fps."""
    ticking = _Ticks(sim, ticks)
    target = ticks[0][1]  # the joint targets being tracked now
    executed, boundaries = [target], []  # targets at each step's end; where each chunk's first step is
    leftover, leftover_fps = np.zeros((0, len(target)), np.float32), FPS  # the previous chunk's steps not run yet
    half_tick, handovers, requests = sim.model.opt.timestep / 2, [], 0

    def run_step(goal: np.ndarray, fps: float) -> None:
        nonlocal target
        step(ticking, target, goal, fps)
        target = goal
        executed.append(goal)
        if frames is not None:
            frames.append(np.concatenate([sim.render("head"), sim.render("third_person")], axis=1))

    while not over():
        t_request = sim.time  # the observation is this instant's
        chunk, fps = plan(t_request)
        requests += 1
        while not over() and sim.time < t_request + latency_s - half_tick:  # the reply is on its way
            goal = leftover[0] if len(leftover) else target
            if sim.time + 1.0 / leftover_fps <= t_request + latency_s + half_tick:
                run_step(goal, leftover_fps)
                leftover = leftover[1:]
            else:  # it arrives part-way through this step (not in `executed`: that is the whole steps)
                target = partial_step(ticking, target, goal, leftover_fps, t_request + latency_s - sim.time)
        handovers.append(sim.time)
        boundaries.append(len(executed))
        ran = 0
        for goal in chunk[:execute_steps]:
            if over():
                break
            run_step(goal, fps)
            ran += 1
        leftover, leftover_fps = chunk[ran:], fps
    return {"requests": requests, "handovers": handovers, "fps": leftover_fps, "step_targets": executed,
            "step_boundaries": boundaries}


def _run_executor(sim, plan, over, ticks, frames, latency_s, execute_steps, blend_s, prefix_max_steps=0,
                  ensemble_s=0.0) -> dict:
    """The control loop a robot runs, at CONTROL_HZ on the sim clock: each tick commands `executor.execute` at the
    tick's end (as `collect.step` commands each tick's end), every target through the safety layer's limits
    (max_joint_velocity per tick) relative to the last one.

    Requests leave when the `RequestScheduler` (neon-g1's and neon-ros's) says so (request-ahead, one in flight):
    each chunk is in force for `execute_steps` steps from its arrival, so a request leaves every `execute_steps`
    steps at any latency (as plain chunking asks at zero latency). The observation is taken at the request's tick
    t; the reply is the chunk with step k due at t + (k + 1) / fps, accepted at t + latency (from the first tick
    starting then), so the steps already due are skipped by time (the chunk runs steps d .. d + execute_steps - 1,
    d = those skipped) and it blends over `blend_s`. The round trip fed to the latency estimator is the injected
    latency (sim time stands still during a real one). With `prefix_max_steps` > 0 (a prefix-conditioned model) each
    request carries the steps the executor will run while it is under way (`committed`, at most that many), which
    the reply's first steps repeat."""
    from neon_runtime.executor import Chunk, ChunkExecutor, RequestScheduler, safety_hook
    from neon_runtime.safety import SafetyLayer

    ex = ChunkExecutor(len(ticks[0][1]), blend_s, safety_hook(SafetyLayer(sim.space)), ensemble_s)
    ex.hold(ticks[0][1], sim.time)  # the first reply takes over from the start pose
    scheduler = RequestScheduler(ex, None, execute_steps=execute_steps, prefix_max_steps=prefix_max_steps, fps=FPS)
    dt, half_tick, per_frame = 1.0 / CONTROL_HZ, sim.model.opt.timestep / 2, max(1, round(CONTROL_HZ / FPS))
    pending, handovers, requests = None, [], 0
    executed, boundaries = [ticks[0][1]], []  # the target every 1 / FPS; where each chunk took over
    while not over():
        now = sim.time
        if scheduler.due(now):
            scheduler.sent(now)
            chunk, fps = plan(now, scheduler.prefix(now))
            pending = Chunk.at_fps(chunk, fps, start_s=now + 1.0 / fps, received_s=now + latency_s)
            requests += 1
        if pending is not None and pending.received_s <= now + half_tick:
            ex.accept(pending)
            scheduler.replied(pending.received_s - latency_s, pending.received_s, fps)
            handovers.append(pending.received_s)
            boundaries.append(len(executed))
            pending = None
        _control_tick(sim, ex, dt, ticks, executed, frames, per_frame)
    return {"requests": requests, "handovers": handovers, "fps": scheduler.fps, "skipped_steps": ex.skipped,
            "safety_limited": ex.safety_limited, "step_targets": executed, "step_boundaries": boundaries}


def _control_tick(sim, ex, dt: float, ticks: list, executed: list, frames: list | None, per_frame: int) -> None:
    """One control tick of `_run_executor` / `_run_two_rate`: command the executor's target for the tick's end, run
    the physics to it and log it; every `per_frame` ticks (one policy step) keep the target, and a video frame."""
    q = ex.command(sim.time + dt)
    sim.run(q, dt)
    ticks.append((sim.time, q))
    if (len(ticks) - 1) % per_frame == 0:
        executed.append(q)
        if frames is not None:
            frames.append(np.concatenate([sim.render("head"), sim.render("third_person")], axis=1))


def _run_two_rate(sim, observe, land, heads, over, ticks, frames, latency_s, blend_s, feature_hz, heads_hz,
                  heads_latency_s, prefix_max_steps=0, ensemble_s=0.0) -> dict:
    """Two-rate control at CONTROL_HZ on the sim clock, through the ChunkExecutor as `_run_executor` runs it.

    Feature refreshes on the 1 / feature_hz grid, one in flight: `observe()` at the refresh's tick t, usable (and
    `land`ed) at t + latency_s; one in flight still at a grid point delays the next to its landing (as
    `TwoRateRunner`'s thread, which refreshes back to back when a pass is slower than its period: this loop is that
    thread on the sim clock). Heads requests when the `RequestScheduler` (neon-g1's and neon-ros's, two-rate) says,
    once features are usable: on the 1 / heads_hz grid, at the first control tick at or after each grid point (grid
    points with no tick of their own are dropped): `heads(t, newest usable features)` with step k due at
    t + (k + 1) / fps, accepted at t + heads_latency_s, blended over `blend_s`; a prefix-conditioned model is sent the
    steps that run meanwhile (at most `prefix_max_steps`)."""
    from neon_runtime.executor import Chunk, ChunkExecutor, RequestScheduler, safety_hook
    from neon_runtime.safety import SafetyLayer

    ex = ChunkExecutor(len(ticks[0][1]), blend_s, safety_hook(SafetyLayer(sim.space)), ensemble_s)
    ex.hold(ticks[0][1], sim.time)  # the first reply takes over from the start pose
    dt, half_tick, per_frame = 1.0 / CONTROL_HZ, sim.model.opt.timestep / 2, max(1, round(CONTROL_HZ / FPS))
    scheduler = RequestScheduler(ex, 1.0 / heads_hz, two_rate=True, prefix_max_steps=prefix_max_steps, fps=FPS,
                                 slack_s=half_tick)  # the heads requests: neon-g1's and neon-ros's scheduler
    features, refreshing, pending = None, None, None  # newest usable features; (usable_s, obs) in flight; a reply
    next_refresh = sim.time
    refreshes_s, heads_s, handovers, fps = [], [], [], FPS
    executed, boundaries = [ticks[0][1]], []

    def next_on_grid(now: float, hz: float) -> float:
        return (math.floor((now + half_tick) * hz) + 1) / hz

    def accept_if_due(now: float) -> None:
        nonlocal pending
        if pending is not None and pending.received_s <= now + half_tick:
            ex.accept(pending)
            scheduler.replied(pending.received_s - heads_latency_s, pending.received_s, fps)
            handovers.append(pending.received_s)
            boundaries.append(len(executed))
            pending = None

    while not over():
        now = sim.time
        accept_if_due(now)  # the last tick's reply, before this tick's heads
        for _ in range(2):  # land what is due; a refresh leaves; with no latency it lands at once
            if refreshing is not None and refreshing[0] <= now + half_tick:
                features = refreshing[1]
                land(features)
                refreshing = None
            if refreshing is None and now >= next_refresh - half_tick:
                refreshing = (now + latency_s, observe())
                refreshes_s.append(now)
                next_refresh = next_on_grid(now, feature_hz)
        if features is not None and scheduler.due(now):
            scheduler.sent(now)
            chunk, fps = heads(now, features, scheduler.prefix(now, latency_s=heads_latency_s))
            pending = Chunk.at_fps(chunk, fps, start_s=now + 1.0 / fps, received_s=now + heads_latency_s)
            heads_s.append(now)
        accept_if_due(now)  # with no heads latency: at once
        _control_tick(sim, ex, dt, ticks, executed, frames, per_frame)
    return {"requests": len(heads_s), "feature_refreshes": len(refreshes_s), "handovers": handovers,
            "fps": scheduler.fps,
            "skipped_steps": ex.skipped, "safety_limited": ex.safety_limited, "step_targets": executed,
            "step_boundaries": boundaries, "heads_ticks_s": [round(t, 3) for t in heads_s],
            "refreshes_s": [round(t, 3) for t in refreshes_s]}


def frame_jerk(q: np.ndarray, boundaries: list[int]) -> tuple[float, float]:
    """Float[(N, D)] targets one frame (1 / FPS) apart -> the largest jerk (rad/s^3) within chunks and around
    hand-overs: every window q[i..i+3] that spans the step into a new chunk (`boundaries`: the index of its first
    step's target; with plain chunking and a latency that is not whole steps, the cut-short step before it is
    not in `q`)."""
    jerk = np.abs(np.diff(q, n=3, axis=0)) * FPS**3 if len(q) > 3 else np.zeros((0, q.shape[1]))
    window = np.arange(len(jerk))[:, None]
    at_boundary = ((window < np.asarray(boundaries)) & (np.asarray(boundaries) <= window + 3)).any(1)
    return float(jerk[~at_boundary].max(initial=0.0)), float(jerk[at_boundary].max(initial=0.0))


def control_jerk(ticks: list, handovers: list[float], fps: float, blend_s: float) -> dict:
    """Jerk (rad/s^3, the largest over joints) of the commanded target stream at CONTROL_HZ: each tick's target at
    its end time, resampled onto the CONTROL_HZ grid (only plain chunking's cut-short ticks move), |third
    difference| * CONTROL_HZ^3, one value per window of four samples.

    Boundary windows: those whose span meets [h - 1 / fps, h + blend_s + 1 / fps] for a hand-over at h (a chunk
    taking over, the first one included: plain chunking's start of a chunk's first step, the executor's arrival;
    blend_s 0 for plain); within: all others. -> for each, the largest and the root mean square, and the ratios
    boundary / within (None where there is nothing within)."""
    t = np.array([x[0] for x in ticks])
    q = np.stack([x[1] for x in ticks]).astype(np.float64)
    grid = np.arange(0.0, t[-1] + 1e-9, 1.0 / CONTROL_HZ)
    qg = np.stack([np.interp(grid, t, q[:, j]) for j in range(q.shape[1])], axis=1)
    jerk = np.abs(np.diff(qg, n=3, axis=0)).max(axis=1) * CONTROL_HZ**3 if len(grid) > 3 else np.zeros(0)
    lo, hi = grid[:len(jerk)], grid[3:]  # each window's span
    h = np.asarray(handovers, np.float64)[None, :]
    at = ((lo[:, None] <= h + blend_s + 1.0 / fps) & (hi[:, None] >= h - 1.0 / fps)).any(axis=1)
    out = {}
    for name, j in (("within", jerk[~at]), ("boundary", jerk[at])):
        out[f"{name}_max"] = float(j.max(initial=0.0))
        out[f"{name}_rms"] = float(np.sqrt(np.mean(j**2))) if len(j) else 0.0
    for stat in ("max", "rms"):
        w = out[f"within_{stat}"]
        out[f"ratio_{stat}"] = out[f"boundary_{stat}"] / w if w > 0 else None
    out["boundary_fraction"] = float(at.mean()) if len(at) else 0.0
    return out


ABLATIONS = ("none", "blank-image", "other-block")


def evaluate(policy: str, episodes: int = 50, seed: int = 10_000, out: str | Path | None = None,
             execute_steps: int = 8, token: str | None = None, video_episodes: int = 1,
             progress: bool | None = None, ablation: str = "none", latency_ms: float = 0.0, mjcf=None,
             executor: str = "plain", blend_s: float = 0.0, moving_block: bool = False, control: str = "chunk",
             feature_hz: float = 5.0, heads_hz: float = 30.0, heads_latency_ms: float = HEADS_LATENCY_MS,
             prefix: bool = True, ensemble_s: float = 0.0) -> dict:
    """Success rate of `policy` (oracle | hold | ws://... URL) over seeds seed .. seed + episodes - 1.

    `ablation` (a served policy only): "blank-image" sends a grey frame, "other-block" an instruction naming
    another block, while success is still judged on the named block: vision and language must both matter.
    `latency_ms`: sim time between an observation and its reply being usable (see the module docstring); with
    two-rate control, between a feature refresh's observation and its features being usable.
    `executor`: "plain" synchronous chunking, or "executor" (request-ahead, stale steps skipped, blending over
    `blend_s`, or temporal ensembling over `ensemble_s`; see `run_episode`). `moving_block`: the named block moves
    once mid-episode. `control`: "chunk" or
    "two-rate" (executor only; `feature_hz`, `heads_hz`, `heads_latency_ms`; see the module docstring).
    """
    if ablation not in ABLATIONS:
        raise SimError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")
    from tqdm import tqdm

    if execute_steps < 1 or episodes < 1:
        raise SimError(f"episodes and execute_steps must be >= 1, got {episodes}, {execute_steps}")
    _check_latency(latency_ms)
    _check_executor(executor, blend_s, ensemble_s)
    _check_control(control, executor, feature_hz, heads_hz, heads_latency_ms)
    remote = None
    if policy not in ("oracle", "hold"):
        if not policy.startswith(("ws://", "wss://")):
            raise SimError(f"--policy must be oracle, hold or a neon-serve WebSocket URL (ws://host:port/ws), got {policy!r}")
        from neon_runtime.client import RemoteError

        try:
            remote = _Remote(policy, token, ablation)
        except RemoteError as e:
            raise SimError(str(e)) from None
    t0, results, frames = time.perf_counter(), [], []
    try:
        for k in tqdm(range(episodes), desc=f"evaluating {policy}", unit="ep",
                      disable=None if progress is None else not progress):
            video = frames if out is not None and k < video_episodes else None  # no --out: no frames to render
            results.append(run_episode(seed + k, policy, remote, execute_steps, video, latency_ms, mjcf, executor,
                                       blend_s, moving_block, control, feature_hz, heads_hz, heads_latency_ms,
                                       prefix, ensemble_s))
    finally:
        if remote is not None:
            remote.close()
    wins = sum(r["success"] for r in results)
    times = [r["time_to_success_s"] for r in results if r["success"]]
    two_rate = control == "two-rate"
    report = {
        "policy": policy, "ablation": ablation, "episodes": episodes, "seeds": [seed, seed + episodes - 1],
        "execute_steps": execute_steps, "latency_ms": latency_ms, "executor": executor, "blend_s": blend_s,
        "ensemble_s": ensemble_s,
        "moving_block": moving_block, "control": control, "feature_hz": feature_hz if two_rate else None,
        "heads_hz": heads_hz if two_rate else None, "heads_latency_ms": heads_latency_ms if two_rate else None,
        "fps": FPS, "control_hz": CONTROL_HZ, "success_rate": wins / episodes, "success_ci95": wilson(wins, episodes),
        "time_to_success_s": float(np.median(times)) if times else None,
        "joint_limit_violations": sum(r["joint_limit_violation"] for r in results),
        "table_contacts": sum(r["table_contact"] for r in results),
        **_remote_figures(remote, prefix, executor),
        "feature_refreshes": sum(r.get("feature_refreshes", 0) for r in results),
        **jerk_summary(results), "requests": sum(r["requests"] for r in results),
        "skipped_steps": sum(r["skipped_steps"] for r in results),
        "executor_safety_limited": sum(r["safety_limited"] for r in results),
        "seconds_per_episode": round((time.perf_counter() - t0) / episodes, 2),
        "results": results,
    }
    if out is not None:
        _write_report(Path(out), report, frames)
    return report


def _remote_figures(remote: _Remote | None, prefix: bool, executor: str) -> dict:
    """What a served policy's report adds: interventions, the prefix sent, round trips, request counts."""
    return {
        "safety_interventions": remote.interventions if remote else 0,
        "prefix": {"model_takes": remote.prefix_max_steps, "sent": bool(prefix and remote.prefix_max_steps
                                                                           and executor != "plain"),
                   "mean_committed_steps": float(np.mean(remote.committed_steps)) if remote.committed_steps else 0.0}
        if remote else None,
        "round_trip_ms": ({"p50": float(np.percentile(remote.round_trips, 50)),
                           "p99": float(np.percentile(remote.round_trips, 99))} if remote and remote.round_trips else None),
        "heads_round_trip_ms": ({"p50": float(np.percentile(remote.heads_round_trips, 50)),
                                 "p99": float(np.percentile(remote.heads_round_trips, 99))}
                                if remote and remote.heads_round_trips else None),
        "full_requests": len(remote.round_trips) if remote else 0,
        "light_requests": remote.light_requests if remote else 0,
        "light_replies_on_reused_features": remote.reused_replies if remote else 0,
    }


def _write_report(out: Path, report: dict, frames: list) -> None:
    """sim_report.json and .md, and the episodes' video when frames were kept, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    if frames:
        from neon.data.video import encode_video

        encode_video(out / "episodes.mp4", np.stack(frames), FPS)
        report["video"] = str(out / "episodes.mp4")
    (out / "sim_report.json").write_text(json.dumps(report, indent=2) + "\n")
    lo, hi = report["success_ci95"]
    cj, r = report["control_jerk"], report
    (out / "sim_report.md").write_text(
        f"# neon-sim eval: {r['policy']}\n\n- success rate {r['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}) over "
        f"{r['episodes']} seeds from {r['seeds'][0]}, {r['execute_steps']} steps a chunk, {r['latency_ms']:g} ms "
        f"latency\n- {describe_task(r['moving_block'])}; {describe_control(report)}\n"
        f"- {describe_executor(r['executor'], r['blend_s'], r['ensemble_s'])}: {report['requests']} requests, "
        f"{report['skipped_steps']} stale "
        f"steps skipped, {report['executor_safety_limited']} values limited at the control rate\n"
        f"- jerk of the {CONTROL_HZ:g} Hz target stream, rad/s^3, medians over episodes (hand-over windows: "
        f"within one step of a hand-over and its blend): largest within chunks {cj['within_max']:.1f}, at "
        f"hand-overs {cj['boundary_max']:.1f}, ratio {_fmt(cj['ratio_max'])}; rms within {cj['within_rms']:.1f}, "
        f"at hand-overs {cj['boundary_rms']:.1f}, ratio {_fmt(cj['ratio_rms'])}\n"
        f"- median time to success {report['time_to_success_s']} s\n"
        f"- joint-limit violations {report['joint_limit_violations']}, table contacts {report['table_contacts']}, "
        f"safety interventions {report['safety_interventions']}\n- round trip {report['round_trip_ms']}\n")


def jerk_summary(results: list[dict]) -> dict:
    """Over episodes: the largest frame-rate jerk within chunks and at hand-overs (as before the executor), and the
    control-rate jerk (`control_jerk`): the median over episodes of each statistic and ratio."""
    out = {"jerk_within_max": max(r["jerk_within"] for r in results),
           "jerk_boundary_max": max(r["jerk_boundary"] for r in results), "control_jerk": {}}
    for key in results[0]["control_jerk"]:
        values = [r["control_jerk"][key] for r in results if r["control_jerk"][key] is not None]
        out["control_jerk"][key] = float(np.median(values)) if values else None
    return out


def describe_task(moving_block: bool) -> str:
    return "moving-block task (the named block moves once mid-episode)" if moving_block else "static task"


def describe_control(report: dict) -> str:
    if report["control"] == "chunk":
        return "chunk-rate control (a full request per chunk)"
    return (f"two-rate control (features every {1 / report['feature_hz']:g} s, usable the latency later; heads at "
            f"{report['heads_hz']:g} Hz, usable {report['heads_latency_ms']:g} ms later)")


def describe_executor(executor: str, blend_s: float, ensemble_s: float = 0.0) -> str:
    if executor == "plain":
        return "plain synchronous chunking"
    if ensemble_s:
        return f"ChunkExecutor, temporal ensembling over {ensemble_s:g} s"
    return f"ChunkExecutor, {'blending over ' + format(blend_s, 'g') + ' s' if blend_s else 'no blending'}"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _check_executor(executor: str, blend_s: float, ensemble_s: float = 0.0) -> None:
    if executor not in EXECUTORS:
        raise SimError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    from neon_runtime.executor import check_blend_s, check_handover

    try:
        check_handover(check_blend_s(blend_s), ensemble_s)
    except ValueError as e:
        raise SimError(str(e)) from None
    if executor == "plain" and blend_s:
        raise SimError(f"plain chunking does not blend: blend_s {blend_s:g} needs the executor")
    if executor == "plain" and ensemble_s:
        raise SimError(f"plain chunking does not ensemble: ensemble_s {ensemble_s:g} needs the executor")


def _check_control(control: str, executor: str, feature_hz: float, heads_hz: float, heads_latency_ms: float) -> None:
    if control not in CONTROLS:
        raise SimError(f"control must be one of {', '.join(CONTROLS)}, got {control!r}")
    if control == "two-rate" and executor != "executor":
        raise SimError(f"two-rate control blends every heads reply in through the ChunkExecutor: it needs executor "
                       f"'executor' (neon-sim eval --executor blend), got {executor!r}")
    for name, hz in (("feature_hz", feature_hz), ("heads_hz", heads_hz)):
        if not (isinstance(hz, numbers.Real) and math.isfinite(hz) and 0 < hz <= CONTROL_HZ):
            raise SimError(f"{name} (--{name.replace('_', '-')}) must be a rate in (0, {CONTROL_HZ:g}] Hz (at most the "
                           f"sim's control rate), got {hz!r}")
    if not (isinstance(heads_latency_ms, numbers.Real) and math.isfinite(heads_latency_ms) and heads_latency_ms >= 0):
        raise SimError(f"heads_latency_ms (--heads-latency-ms) must be a finite number of milliseconds >= 0, got "
                       f"{heads_latency_ms!r}")


def _check_latency(latency_ms: float) -> None:
    if not (isinstance(latency_ms, numbers.Real) and math.isfinite(latency_ms) and latency_ms >= 0):
        raise SimError(f"latency must be a finite number of milliseconds >= 0, got {latency_ms!r}")


def evaluate_latencies(policy: str, latencies_ms: list[float], out: str | Path, **kwargs) -> dict:
    """`evaluate` once per latency over the same seeds, each report in out/latency_<L>ms/; -> the combined
    report, also written as out/latency_report.json beside out/success_vs_latency.png."""
    if not latencies_ms:
        raise SimError("give at least one latency")
    for latency in latencies_ms:
        _check_latency(latency)
    if len(set(latencies_ms)) != len(latencies_ms):
        raise SimError(f"latencies must differ, got {', '.join(f'{x:g}' for x in latencies_ms)}")
    try:  # before any episode runs, not after all of them
        import matplotlib  # noqa: F401
    except ImportError:
        raise SimError("the success-vs-latency plot needs matplotlib: pip install matplotlib") from None
    out = Path(out)
    rows = []
    for latency in sorted(latencies_ms):
        folder = out / f"latency_{latency:g}ms"
        r = evaluate(policy, out=folder, latency_ms=latency, **kwargs)
        rows.append({"latency_ms": latency, "success_rate": r["success_rate"], "success_ci95": r["success_ci95"],
                     "time_to_success_s": r["time_to_success_s"], "control_jerk": r["control_jerk"],
                     "requests": r["requests"], "report": str(folder / "sim_report.json")})
    report = {"policy": policy, "episodes": r["episodes"], "seeds": r["seeds"], "execute_steps": r["execute_steps"],
              "ablation": r["ablation"], "executor": r["executor"], "blend_s": r["blend_s"], "ensemble_s": r["ensemble_s"],
              "moving_block": r["moving_block"], "control": r["control"], "feature_hz": r["feature_hz"],
              "heads_hz": r["heads_hz"], "heads_latency_ms": r["heads_latency_ms"], "fps": FPS, "rows": rows,
              "plot": str(out / "success_vs_latency.png")}
    plot_success_vs_latency(report, out / "success_vs_latency.png")
    (out / "latency_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def plot_success_vs_latency(report: dict, path: str | Path) -> None:
    """Success rate with Wilson 95% error bars against injected latency (PNG, no display needed)."""
    from matplotlib.figure import Figure  # the object API renders through Agg without touching pyplot's state

    rows = report["rows"]
    x = [r["latency_ms"] for r in rows]
    y = np.array([r["success_rate"] for r in rows])
    lo, hi = np.array([r["success_ci95"] for r in rows]).T
    fig = Figure(figsize=(5, 3.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=4)
    ax.set(xlabel="injected latency (ms)", ylabel="success rate (Wilson 95% CI)", ylim=(-0.02, 1.02),
           title=f"{report['policy']}: {report['episodes']} episodes, {report['execute_steps']} steps a chunk, "
                 f"{report.get('executor', 'plain')}")
    ax.grid(alpha=0.3)
    fig.savefig(path)
