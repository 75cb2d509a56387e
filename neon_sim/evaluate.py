"""Closed-loop evaluation in the simulated G1 tabletop: success rate over fixed seeds.

Policies:
    oracle   the scripted expert
    hold     never moves
    URL      a running neon-serve (ws://host:port/ws), driven through `RemotePolicy`, the client interface
             the ROS node uses

Chunks are executed as a robot would: send the current observation, execute the reply's first
`execute_steps` steps (each one frame, 1 / fps, its joint targets interpolated at CONTROL_HZ), then ask
again. A server whose replies are not executable (dry run, untrained heads), or whose action space lacks
the arm joints, is refused before anything moves.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from neon_sim.collect import CONTROL_HZ, FPS, step
from neon_sim.expert import Expert
from neon_sim.scene import EPISODE_S, G1Tabletop, SimError, sample_task


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
        from neon.action_space import G1ActionSpace
        from neon_runtime.client import RemotePolicy

        self.policy = RemotePolicy(url, token)
        meta = self.policy.metadata()
        space = G1ActionSpace.from_dict(meta["action_space"])
        missing = [f"{s}_{j}" for s in ("left", "right") for j in ("shoulder_pitch", "elbow") if f"{s}_{j}" not in space.names]
        if missing:
            self.policy.close()
            raise SimError(f"{url} serves an action space without the arm joints ({', '.join(missing)} missing)")
        if meta["dry_run"]:
            self.policy.close()
            raise SimError(f"{url} is dry-run only (a --dry-run server or untrained heads): nothing would be executed")
        self.names, self.round_trips, self.interventions, self.ablation = space.names, [], 0, ablation

    def chunk(self, sim: G1Tabletop) -> tuple[np.ndarray, float]:
        """(Float[(T, D)] joint targets in the sim's action-space order, the chunk's fps)."""
        image, instruction, state = sim.render("head"), sim.task.instruction, sim.state()
        if self.ablation == "blank-image":  # does vision matter? the same grey frame every step
            image = np.full_like(image, 128)
        elif self.ablation == "other-block":  # does language matter? the instruction names another block
            task = sim.task
            instruction = instruction.replace(task.colors[task.target], task.colors[(task.target + 1) % len(task.colors)])
        t0 = time.perf_counter()
        reply = self.policy.infer({"image": image, "instruction": instruction,
                                   "state": self._to_server(state, sim), "timestamp": time.time()})
        self.round_trips.append((time.perf_counter() - t0) * 1e3)
        if reply["dry_run"]:
            raise SimError(f"the server marked a chunk not executable: {reply['safety']['notes']}")
        self.interventions += int(reply["safety"]["rate_limited"]) + int(reply["safety"]["clamped_to_limits"])
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


def run_episode(seed: int, policy: str, remote: _Remote | None = None, execute_steps: int = 8,
                frames: list | None = None) -> dict:
    """One episode; `frames` collects head | third-person views for a video when given."""
    sim = G1Tabletop(sample_task(np.random.default_rng(seed)))
    expert = Expert(sim) if policy == "oracle" else None
    hold = sim.state()
    executed, boundaries = [sim.state()], []
    while sim.time < EPISODE_S - 1e-9 and not sim.success():
        if remote is not None:
            chunk, fps = remote.chunk(sim)
            chunk = chunk[:execute_steps]
        else:
            fps = FPS
            chunk = np.stack([expert.targets(sim.time + (k + 1) / FPS) if expert else hold for k in range(execute_steps)])
        boundaries.append(len(executed))
        for goal in chunk:
            step(sim, executed[-1], goal, fps)
            executed.append(goal)
            if frames is not None:
                frames.append(np.concatenate([sim.render("head"), sim.render("third_person")], axis=1))
            if sim.success() or sim.time >= EPISODE_S - 1e-9:
                break
    q = np.asarray(executed)
    jerk = np.abs(np.diff(q, n=3, axis=0)) * FPS**3 if len(q) > 3 else np.zeros((0, q.shape[1]))
    at_boundary = np.isin(np.arange(len(jerk)) + 2, boundaries[1:])  # the jerk around a chunk hand-over
    result = {"seed": seed, "instruction": sim.task.instruction, "success": sim.success(),
              "time_to_success_s": round(sim.time, 3) if sim.success() else None,
              "joint_limit_violation": sim.limit_violation > 1e-3, "table_contact": sim.table_contact,
              "final_distance_m": round(sim.distance(), 4), "jerk_within": float(jerk[~at_boundary].max(initial=0.0)),
              "jerk_boundary": float(jerk[at_boundary].max(initial=0.0))}
    sim.close()
    return result


ABLATIONS = ("none", "blank-image", "other-block")


def evaluate(policy: str, episodes: int = 50, seed: int = 10_000, out: str | Path | None = None,
             execute_steps: int = 8, token: str | None = None, video_episodes: int = 1,
             progress: bool | None = None, ablation: str = "none") -> dict:
    """Success rate of `policy` (oracle | hold | ws://... URL) over seeds seed .. seed + episodes - 1.

    `ablation` (a served policy only): "blank-image" sends a grey frame, "other-block" an instruction naming
    another block, while success is still judged on the named block: vision and language must both matter.
    """
    if ablation not in ABLATIONS:
        raise SimError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")
    from tqdm import tqdm

    if execute_steps < 1 or episodes < 1:
        raise SimError(f"episodes and execute_steps must be >= 1, got {episodes}, {execute_steps}")
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
            results.append(run_episode(seed + k, policy, remote, execute_steps, frames if k < video_episodes else None))
    finally:
        if remote is not None:
            remote.close()
    wins = sum(r["success"] for r in results)
    times = [r["time_to_success_s"] for r in results if r["success"]]
    report = {
        "policy": policy, "ablation": ablation, "episodes": episodes, "seeds": [seed, seed + episodes - 1],
        "execute_steps": execute_steps,
        "fps": FPS, "control_hz": CONTROL_HZ, "success_rate": wins / episodes, "success_ci95": wilson(wins, episodes),
        "time_to_success_s": float(np.median(times)) if times else None,
        "joint_limit_violations": sum(r["joint_limit_violation"] for r in results),
        "table_contacts": sum(r["table_contact"] for r in results),
        "safety_interventions": remote.interventions if remote else 0,
        "round_trip_ms": ({"p50": float(np.percentile(remote.round_trips, 50)),
                           "p99": float(np.percentile(remote.round_trips, 99))} if remote and remote.round_trips else None),
        "jerk_within_max": max(r["jerk_within"] for r in results), "jerk_boundary_max": max(r["jerk_boundary"] for r in results),
        "seconds_per_episode": round((time.perf_counter() - t0) / episodes, 2),
        "results": results,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if frames:
            from neon.data.video import encode_video

            encode_video(out / "episodes.mp4", np.stack(frames), FPS)
            report["video"] = str(out / "episodes.mp4")
        (out / "sim_report.json").write_text(json.dumps(report, indent=2) + "\n")
        lo, hi = report["success_ci95"]
        (out / "sim_report.md").write_text(
            f"# neon-sim eval: {policy}\n\n- success rate {report['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}) over "
            f"{episodes} seeds from {seed}\n- median time to success {report['time_to_success_s']} s\n"
            f"- joint-limit violations {report['joint_limit_violations']}, table contacts {report['table_contacts']}, "
            f"safety interventions {report['safety_interventions']}\n- round trip {report['round_trip_ms']}\n")
    return report
