"""Offline evaluation: per-group MSE of predicted action chunks on held-out episodes, against baselines.

    neon-eval --model CHECKPOINT_OR_HUB --dataset PATH_OR_HUB --trajs 10 --baselines --plot --out eval/

Every `stride`-th frame of each held-out episode gets a chunk prediction
through `NeonPolicy.predict_batch`, the very path the server and the ROS node
use (without their safety layer, which would change what is being scored);
errors are taken over the valid (unpadded, present) entries of the ground-truth
chunk, in physical units (rad, m/s) and in the model's normalised units.
Baselines, scored on the very same entries:
    zero    every action 0
    random  uniform inside the joint limits (seeded)
    hold    the current state held for the whole chunk
    mean    the training data's mean action (in the model's representation) -- exactly
            what a model with zero-initialised heads predicts
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neon.checkpoint import read_json, resolve_checkpoint
from neon.data.lerobot import DatasetError
from neon.data.soup import collate
from neon.data.sources import LeRobotSource
from neon.model import NeonVLA
from neon.policy import NeonPolicy
from neon_train.feature_cache import CachedFeatures, FeatureCache

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
BASELINES = ("zero", "random", "hold", "mean")
DEFAULT_VAL_FRACTION = 0.1


def seeded_split(num_episodes: int, seed: int = 0, fraction: float = DEFAULT_VAL_FRACTION) -> list[int]:
    """Held-out episode positions: a seeded permutation's first max(1, fraction x N) entries, sorted."""
    k = max(1, int(round(fraction * num_episodes)))
    return sorted(np.random.default_rng(seed).permutation(num_episodes)[:k].tolist())


def split_rule_text(seed: int, fraction: float = DEFAULT_VAL_FRACTION) -> str:
    return (f"seeded rule: numpy default_rng({seed}).permutation(num_episodes), first "
            f"max(1, round({fraction} x num_episodes)) episodes")


@dataclass
class _Acc:
    """Sums of squared errors per (step, dim), physical and normalised, with counts."""

    se: np.ndarray
    se_norm: np.ndarray
    n: np.ndarray

    @classmethod
    def zeros(cls, steps: int, dims: int) -> _Acc:
        return cls(np.zeros((steps, dims)), np.zeros((steps, dims)), np.zeros((steps, dims)))

    def add(self, pred, gt, pred_norm, gt_norm, mask) -> None:
        m = mask.astype(np.float64)
        self.se += (((pred - gt) ** 2) * m).sum(0)
        self.se_norm += (((pred_norm - gt_norm) ** 2) * m).sum(0)
        self.n += m.sum(0)

    def metrics(self, space) -> dict:
        def mse(se, sel):
            n = self.n[sel].sum()
            return float(se[sel].sum() / n) if n else float("nan")

        all_ = (slice(None), slice(None))
        out = {"mse": mse(self.se, all_), "mse_normalized": mse(self.se_norm, all_), "per_group": {},
               "per_group_normalized": {}, "per_step": [], "per_step_normalized": []}
        for g in space.groups:
            sl = (slice(None), space.group_slice(g))
            out["per_group"][g] = mse(self.se, sl)
            out["per_group_normalized"][g] = mse(self.se_norm, sl)
        for t in range(self.n.shape[0]):
            out["per_step"].append(mse(self.se, (t, slice(None))))
            out["per_step_normalized"].append(mse(self.se_norm, (t, slice(None))))
        return out


def _held_out(model_dir: Path, source: LeRobotSource, seed: int, allow_train_episodes: bool = False
              ) -> tuple[list[int], str]:
    """Positions (in source.episodes) of held-out episodes, and how they were chosen.

    The checkpoint's split.json names them. When it does not know this dataset (or there is none), nothing
    says which episodes were trained on: refused unless `allow_train_episodes`, and then the split's
    recorded seed (never a different default) picks them.
    """
    split = read_json(model_dir / SPLIT_FILE, DatasetError) if (model_dir / SPLIT_FILE).is_file() else None
    root = str(Path(source.root).resolve())
    for name, entry in (split or {}).get("sources", {}).items():
        if str(Path(entry.get("path", "")).resolve()) == root or entry.get("root") == root:
            wanted = set(entry["val_episodes"])
            pos = [k for k, e in enumerate(source.episodes) if e.index in wanted]
            if pos:
                return pos, f"recorded in the checkpoint's {SPLIT_FILE} (source {name!r})"
    why = f"its {SPLIT_FILE} does not list {root}" if split else f"it has no {SPLIT_FILE}"
    if not allow_train_episodes:
        raise DatasetError(f"cannot tell which episodes of {root} the checkpoint was trained on ({why}), so held-out "
                           "scores could be training scores; pass --allow-train-episodes to evaluate anyway")
    if split and "seed" in split:
        seed, fraction = int(split["seed"]), float(split.get("val_fraction", DEFAULT_VAL_FRACTION))
    else:
        fraction = DEFAULT_VAL_FRACTION
    return seeded_split(len(source.episodes), seed, fraction), f"{split_rule_text(seed, fraction)} ({why}; may " \
        "include training episodes: --allow-train-episodes)"


def evaluate(
    model: str | Path | NeonVLA,
    dataset: str,
    trajs: int = 10,
    baselines: bool = True,
    plot: bool = False,
    out: str | Path | None = None,
    batch_size: int = 16,
    stride: int = 1,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    plot_joints: list[str] | None = None,
    progress: bool | None = None,
    allow_train_episodes: bool = False,
) -> dict:
    """Evaluate a checkpoint on held-out episodes of a dataset; returns the report (also written to `out`)."""
    if trajs < 1 or stride < 1 or batch_size < 1:
        raise ValueError(f"trajs, stride and batch_size must be >= 1, got {trajs}, {stride}, {batch_size}")
    t_start = time.perf_counter()
    policy, model_dir, model_name = _load_policy(model, device)
    space, steps, fps = policy.space, policy.config.num_action_steps, policy.config.fps
    full = LeRobotSource(dataset, space, steps, chunk_fps=fps)
    if full.dim_available.sum() < 1:
        raise DatasetError(f"{dataset}: no action dimension matches the model's action space")
    held, rule = _held_out(model_dir, full, seed, allow_train_episodes)
    if len(held) < trajs:
        log.warning("only %d held-out episode(s) available, evaluating all of them (asked for %d)", len(held), trajs)
    source = LeRobotSource(dataset, space, steps, episodes=held[:trajs], chunk_fps=fps)
    frames = [i for i in range(len(source)) if source.index[i][1] % stride == 0]
    cache = FeatureCache(cache_dir, policy.config.backbone, policy.model.audio is not None) if cache_dir else None
    features = CachedFeatures(cache, [source], policy.model.features()) if cache else None
    acc, traj = _score(policy, source, frames, features, baselines, batch_size, seed, progress)

    results = {n: a.metrics(space) for n, a in acc.items()}
    report = {
        "model": model_name, "dataset": str(dataset), "control_mode": space.control_mode, "groups": space.groups,
        "num_action_steps": steps, "dataset_fps": source.fps, "chunk_fps": fps,
        "split": {"rule": rule, "held_out_episodes": [full.episodes[k].index for k in held],
                  "evaluated_episodes": [e.index for e in source.episodes]},
        "chunks": len(frames), "stride": stride, "seed": seed,
        "dims_evaluated": [n for n, ok in zip(space.names, full.dim_available, strict=True) if ok],
        "results": results, "improvement_pct": {},
        "feature_cache": ({"hits": cache.stats.hits, "misses": cache.stats.misses} if cache else None),
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    if baselines:
        m = results["model"]
        for b in BASELINES:
            r = results[b]
            report["improvement_pct"][b] = {
                "total": _improvement(m["mse"], r["mse"]),
                "total_normalized": _improvement(m["mse_normalized"], r["mse_normalized"]),
                "per_group": {g: _improvement(m["per_group"][g], r["per_group"][g]) for g in space.groups},
            }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if plot:
            report["plots"] = make_plots(report, traj, space, out, plot_joints)
        (out / "eval_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "eval_report.md").write_text(markdown_report(report))
    return report


def _load_policy(model: str | Path | NeonVLA, device: str | None) -> tuple[NeonPolicy, Path, str]:
    """(policy with its backbone loaded, the checkpoint folder (its split.json), a name for the report)."""
    if isinstance(model, NeonVLA):
        net, model_dir, name = model, Path("."), "<in-memory model>"
    else:
        model_dir = resolve_checkpoint(str(model))
        net, name = NeonVLA.from_pretrained(model_dir), str(model)
    if net.backbone is None:
        net.load_backbone(device)
    net.record_backbone_precision()
    return NeonPolicy(net.eval()), model_dir, name


def _score(policy: NeonPolicy, source: LeRobotSource, frames: list[int], features, baselines: bool,
           batch_size: int, seed: int, progress: bool | None) -> tuple[dict[str, _Acc], dict]:
    """Error sums for the model (predicted through the policy, as served) and each baseline, and one trajectory."""
    from tqdm import tqdm

    space, steps, tf = policy.space, policy.config.num_action_steps, policy.model.transform
    rng = np.random.default_rng(seed)
    acc = {n: _Acc.zeros(steps, space.dim) for n in ["model"] + (list(BASELINES) if baselines else [])}
    traj = {"t": [], "gt": [], "pred": [], "episode": source.episodes[0].index}
    bar = tqdm(total=len(frames), desc="evaluating", unit="chunk", disable=None if progress is None else not progress)
    for start in range(0, len(frames), batch_size):
        samples = [source.sample(i) for i in frames[start:start + batch_size]]
        batch = collate(samples)
        preds = policy.predict_batch([s["obs"] for s in samples], features, (batch["source"], batch["row"]))
        state, gt, mask = batch["obs"].state, batch["actions"].numpy(), batch["action_mask"].numpy()
        candidates = {"model": np.stack([p.actions for p in preds])}
        if baselines:
            candidates["zero"] = np.zeros_like(gt)
            candidates["random"] = rng.uniform(space.lower, space.upper, gt.shape).astype(np.float32)
            candidates["hold"] = np.repeat(state.numpy()[:, None, :], steps, axis=1)
            candidates["mean"] = space.clip(tf.decode(torch.zeros(len(samples), steps, space.dim), state).numpy())
        gt_norm = tf.encode(torch.from_numpy(gt), state).numpy()
        for name, p in candidates.items():
            p_norm = tf.encode(torch.from_numpy(np.asarray(p, np.float32)), state).numpy()
            acc[name].add(p, gt, p_norm, gt_norm, mask)
        for s, p in zip(samples, candidates["model"], strict=True):
            if s["episode"] == traj["episode"]:
                traj["t"].append(s["frame"])
                traj["gt"].append(s["actions"][0])
                traj["pred"].append(p[0])
        bar.update(len(samples))
    bar.close()
    return acc, traj


def _improvement(model: float, baseline: float) -> float:
    return float(100.0 * (baseline - model) / baseline) if baseline > 0 else float("nan")


def markdown_report(r: dict) -> str:
    res = r["results"]
    names = list(res)
    lines = [f"# Neon evaluation: {r['model']}", "",
             f"- dataset: `{r['dataset']}` ({r['control_mode']}, recorded at {r['dataset_fps']:g} fps; "
             f"{r['num_action_steps']}-step chunks at {r['chunk_fps']:g} fps)",
             f"- held-out episodes: {r['split']['rule']}; evaluated {r['split']['evaluated_episodes']}",
             f"- {r['chunks']} chunks (every {r['stride']}. frame)", "",
             "## MSE (physical units: rad, m/s)", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| **total** | " + " | ".join(f"{res[n]['mse']:.5f}" for n in names) + " |")
    for g in r["groups"]:
        lines.append(f"| {g} | " + " | ".join(f"{res[n]['per_group'][g]:.5f}" for n in names) + " |")
    lines += ["", "## MSE (normalised units)", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| **total** | " + " | ".join(f"{res[n]['mse_normalized']:.4f}" for n in names) + " |")
    for g in r["groups"]:
        lines.append(f"| {g} | " + " | ".join(f"{res[n]['per_group_normalized'][g]:.4f}" for n in names) + " |")
    if r["improvement_pct"]:
        lines += ["", "## Improvement of the model over each baseline (%, physical MSE)", "",
                  "| baseline | total | " + " | ".join(r["groups"]) + " |", "|---|---|" + "---|" * len(r["groups"])]
        for b, imp in r["improvement_pct"].items():
            cells = " | ".join(f"{imp['per_group'][g]:+.1f}" for g in r["groups"])
            lines.append(f"| {b} | {imp['total']:+.1f} | {cells} |")
    lines += ["", "## MSE per chunk step (physical)", "", "| step | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for t in range(r["num_action_steps"]):
        lines.append(f"| {t} | " + " | ".join(f"{res[n]['per_step'][t]:.5f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


PLOT_SIZE = (10, 6)  # inches
PLOT_DPI = 100  # -> 1000 x 600 pixels


def make_plots(report: dict, traj: dict, space, out: Path, joints: list[str] | None = None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    res = report["results"]
    names = list(res)
    order = np.argsort(traj["t"])
    t = np.asarray(traj["t"])[order]
    gt, pred = np.asarray(traj["gt"])[order], np.asarray(traj["pred"])[order]
    if joints is None:  # the joints that move most in this episode
        joints = [space.names[i] for i in np.argsort(-gt.std(axis=0))[:4]]
    fig, axes = plt.subplots(len(joints), 1, figsize=PLOT_SIZE, dpi=PLOT_DPI, sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], joints, strict=True):
        k = space.index(name)
        ax.plot(t, gt[:, k], label="ground truth", color="black")
        ax.plot(t, pred[:, k], label="predicted (chunk step 0)", color="tab:orange", linestyle="--")
        ax.set_ylabel(name, fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel(f"frame of episode {traj['episode']}")
    fig.suptitle("Predicted vs ground-truth trajectories")
    paths["trajectories"] = _save(fig, out / "trajectories.png")

    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    groups = report["groups"]
    width = 0.8 / len(names)
    for j, n in enumerate(names):
        ax.bar(np.arange(len(groups)) + j * width, [res[n]["per_group"][g] for g in groups], width, label=n)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.set(yscale="log", ylabel="MSE (physical units)", title="Per-group MSE: model vs baselines")
    ax.legend()
    paths["group_mse"] = _save(fig, out / "group_mse.png")

    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    for n in names:
        ax.plot(range(report["num_action_steps"]), res[n]["per_step"], marker="o", label=n)
    ax.set(yscale="log", xlabel="chunk step", ylabel="MSE (physical units)", title="Error vs chunk step")
    ax.legend()
    paths["step_error"] = _save(fig, out / "step_error.png")
    return paths


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return str(path)
