"""The position-given policy: chunk-rate against two-rate control on the static task, without vision (a benchmark,
and a decomposition: it replaces the image with the named block's true position, so what it measures is the
control scheme with a behaviour-cloned policy, not perception).

    MUJOCO_GL=egl .venv/bin/python bench/bench_position_policy.py [--train-episodes 300] [--noise-rad 0,0.03]
        [--episodes 50] [--seed 10000] [--steps 4000] [--ensemble-s 0.3,0.5] [--slow-heads-hz 5,1.25] [--json F]

The policy: an MLP from the arm joint state, the named block's position on the table (x, y: from the episode's seed,
what a perfect camera would give) and the hand one-hot to a 16-step chunk of joint targets relative to the state
(normalised by the data's mean and std), trained by behaviour cloning on `neon-sim collect`'s expert episodes
(seeds 0..N-1, generated here without the camera), once on clean demonstrations and once per --noise-rad level on
noise-injected ones (DART: the arm driven to the expert's target plus noise, the clean target recorded). In the
sim each chunk goes through Neon's SafetyLayer, then through `neon_sim.evaluate.run_episode` like a served policy's:
the rows, same seeds, one run:

  chunk-rate K      a request per chunk, K steps of 0.1 s run open loop (plain synchronous chunking)
  two-rate          "features" (the block position) every 1 / --feature-hz s; the heads at --heads-hz on the fresh
                    joint state, each reply blended in over --blend-s (neon-sim's ChunkExecutor)
  two-rate, ens. W  the same, each tick's command the mean of every reply of the last W s for that instant (ACT's
                    temporal ensembling)
  two-rate @ H Hz  the heads at H Hz instead (--slow-heads-hz): each reply runs 10 / H steps before the next is
                    blended in, committing several steps per heads tick

Printed per row: success (Wilson 95% interval), median final distance, the share of chunks the safety layer cut,
and the median seconds to success.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from neon_sim.collect import expert_episode
from neon_sim.evaluate import run_episode, wilson
from neon_sim.scene import G1Tabletop, episode_task

HORIZON = 16


def episode_inputs(seed: int) -> np.ndarray:
    """Float[(4,)] the named block's x, y and the hand one-hot, from the episode's seed (the static task)."""
    task = episode_task(seed)
    return np.r_[task.positions[task.target], float(task.arm == "left"), float(task.arm == "right")].astype(np.float32)


def demonstrations(episodes: int, noise_rad: float, workers: int = 2) -> tuple[np.ndarray, np.ndarray, float]:
    """`neon-sim collect`'s expert episodes, seeds 0..episodes-1, without the camera (`noise_rad`: DART noise) ->
    (Float[(N, 14 + 4)] inputs, Float[(N, HORIZON * 14)] targets relative to the state, the expert's success)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        rows = pool.starmap(_episode_rows, [(s, noise_rad) for s in range(episodes)])
    xs, ys, ok = zip(*rows, strict=True)
    return np.concatenate(xs), np.concatenate(ys), float(np.mean(ok))


def _episode_rows(seed: int, noise_rad: float) -> tuple[np.ndarray, np.ndarray, bool]:
    os.environ.setdefault("MUJOCO_GL", "egl")
    torch.set_num_threads(1)
    episode, ok = expert_episode(seed, noise_rad=noise_rad, render=False)
    s, a, given = episode.frames["observation.state"], episode.frames["action"], episode_inputs(seed)
    future = a[np.minimum(np.arange(len(s))[:, None] + np.arange(HORIZON), len(s) - 1)]  # held at the end
    return np.c_[s, np.tile(given, (len(s), 1))], (future - s[:, None]).reshape(len(s), -1), ok


class PositionMLP(torch.nn.Module):
    def __init__(self, x: np.ndarray, y: np.ndarray, width: int = 256):
        super().__init__()
        self.register_buffer("x_mu", torch.tensor(x.mean(0)))
        self.register_buffer("x_sd", torch.tensor(x.std(0) + 1e-3))
        self.register_buffer("y_mu", torch.tensor(y.mean(0)))
        self.register_buffer("y_sd", torch.tensor(y.std(0) + 1e-3))
        self.net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], width), torch.nn.GELU(),
                                       torch.nn.Linear(width, width), torch.nn.GELU(),
                                       torch.nn.Linear(width, y.shape[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # normalised outputs
        return self.net((x - self.x_mu) / self.x_sd)

    def chunk(self, state: np.ndarray, given: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self(torch.tensor(np.r_[state, given][None], dtype=torch.float32))[0] * self.y_sd + self.y_mu
        return state + out.numpy().reshape(HORIZON, -1)


def train(x: np.ndarray, y: np.ndarray, steps: int, batch: int = 256, seed: int = 0) -> tuple[PositionMLP, float]:
    torch.manual_seed(seed)
    model = PositionMLP(x, y)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xt, yt = torch.tensor(x), (torch.tensor(y) - model.y_mu) / model.y_sd
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(0, len(x), batch))
        loss = torch.nn.functional.mse_loss(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), float(loss)


class PositionPolicy:
    """The MLP as a sim policy with the interface run_episode uses for a served one (chunk, observation, refresh,
    heads): chunks in the sim's joint order through a SafetyLayer; its "features" are the block's true position."""

    prefix_max_steps = 0

    def __init__(self, model: PositionMLP):
        self.model, self.safety, self.features = model, None, None
        self.limited = self.replies = 0

    def observation(self, sim: G1Tabletop) -> np.ndarray:
        t = sim.task
        return np.r_[sim.block_top()[:2], float(t.arm == "left"), float(t.arm == "right")].astype(np.float32)

    def refresh(self, features: np.ndarray) -> None:
        self.features = features

    def chunk(self, sim: G1Tabletop, prefix=None) -> tuple[np.ndarray, float]:
        return self._act(sim, self.observation(sim))

    def heads(self, sim: G1Tabletop, prefix=None) -> tuple[np.ndarray, float]:
        return self._act(sim, self.features)

    def _act(self, sim: G1Tabletop, given: np.ndarray) -> tuple[np.ndarray, float]:
        from neon_runtime.safety import SafetyLayer

        self.safety = self.safety or SafetyLayer(sim.space)
        state = sim.state()
        arm = [i for i, j in enumerate(sim.space.joints) if j.group == "arms"]  # the data's joints (collect's)
        chunk = np.tile(state, (HORIZON, 1))
        chunk[:, arm] = self.model.chunk(state[arm], given)
        actions, report = self.safety.apply(chunk, state, 10.0)
        self.replies += 1
        self.limited += bool(report.rate_limited or report.clamped_to_limits)
        return np.asarray(actions, np.float32), 10.0


def rows(args) -> list[tuple[str, dict]]:
    """(name, run_episode settings) per row."""
    two = {"executor": "executor", "control": "two-rate", "blend_s": args.blend_s, "feature_hz": args.feature_hz,
           "heads_latency_ms": args.heads_latency_ms}
    out = [(f"chunk-rate {k}", {"execute_steps": k}) for k in args.execute_steps]
    out.append((f"two-rate @ {args.heads_hz:g} Hz", {**two, "heads_hz": args.heads_hz}))
    out += [(f"two-rate, ensembled {w:g} s", {**two, "heads_hz": args.heads_hz, "blend_s": 0.0, "ensemble_s": w})
            for w in args.ensemble_s]
    out += [(f"two-rate @ {h:g} Hz", {**two, "heads_hz": h}) for h in args.slow_heads_hz]
    return out


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-episodes", type=int, default=300, help="expert episodes to learn from (seeds 0..N-1)")
    ap.add_argument("--noise-rad", type=floats, default=[0.0, 0.03], metavar="S[,S...]",
                    help="one policy per value: trained on demonstrations with this DART noise (0: clean)")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=4000, help="training steps (batch 256)")
    ap.add_argument("--execute-steps", type=lambda t: [int(x) for x in t.split(",")], default=[8, 1])
    ap.add_argument("--blend-s", type=float, default=0.2)
    ap.add_argument("--feature-hz", type=float, default=5.0)
    ap.add_argument("--heads-hz", type=float, default=30.0)
    ap.add_argument("--heads-latency-ms", type=float, default=23.0)
    ap.add_argument("--ensemble-s", type=floats, default=[0.3, 0.5])
    ap.add_argument("--slow-heads-hz", type=floats, default=[5.0, 1.25])
    ap.add_argument("--workers", type=int, default=2, help="processes generating demonstrations")
    ap.add_argument("--json", help="write every result here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    report, seeds, plan = {"policies": {}}, range(args.seed, args.seed + args.episodes), rows(args)
    for noise in args.noise_rad:
        t1 = time.perf_counter()
        x, y, expert_ok = demonstrations(args.train_episodes, noise, args.workers)
        model, loss = train(x, y, args.steps)
        print(f"noise {noise:g} rad: {len(x)} frames from {args.train_episodes} expert episodes (expert success "
              f"{expert_ok:.2f}), {args.steps} steps, final loss {loss:.4f} (normalised), "
              f"{time.perf_counter() - t1:.0f} s", flush=True)
        policy_rows = {}
        for k, (name, settings) in enumerate(plan):
            t2, policy = time.perf_counter(), PositionPolicy(model)
            results = [run_episode(s, "position", remote=policy, **settings) for s in seeds]
            policy_rows[name] = summarize(results, policy, settings)
            print(f"  [{k + 1}/{len(plan)}] {name}: success {policy_rows[name]['success']:.2f} "
                  f"({time.perf_counter() - t2:.0f} s)", flush=True)
        report["policies"][f"{noise:g}"] = {"expert_success": expert_ok, "frames": len(x), "final_loss": loss,
                                            "rows": policy_rows}
    print(f"\n# position-given policy (the named block's x, y and the hand instead of the image), one per DART noise "
          f"level; {args.episodes} static seeds from {args.seed}; {time.perf_counter() - t0:.0f} s in all")
    noises = list(report["policies"])
    print("| control | " + " | ".join(f"noise {n} rad: success | 95% CI | chunks cut | final cm" for n in noises) + " |")
    print("|---|" + "---:|---:|---:|---:|" * len(noises))
    for name, _ in plan:
        cells = []
        for n in noises:
            r = report["policies"][n]["rows"][name]
            cells.append(f"{r['success']:.2f} | {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} | {r['safety_cut_share']:.2f} | "
                         f"{r['median_final_distance_cm']:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("chunks cut: the share of chunks the safety layer changed (a step past a velocity or joint limit); final "
          "cm: median distance from the palm to the block at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))


def summarize(results: list[dict], policy: PositionPolicy, settings: dict) -> dict:
    ok = [r["success"] for r in results]
    lo, hi = wilson(sum(ok), len(ok))
    times = [r["time_to_success_s"] for r in results if r["success"]]
    return {"success": float(np.mean(ok)), "ci95": [lo, hi],
            "median_final_distance_cm": float(np.median([r["final_distance_m"] for r in results]) * 100),
            "safety_cut_share": policy.limited / max(policy.replies, 1),
            "median_s_to_success": float(np.median(times)) if times else None,
            "table_contacts": sum(r["table_contact"] for r in results),
            "limit_violations": sum(r["joint_limit_violation"] for r in results), "settings": settings,
            "results": results}


if __name__ == "__main__":
    main()
