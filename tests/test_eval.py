"""neon-eval: metrics against an independent recomputation, baselines, plots, the feature cache, bad arguments."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import heads_inputs, tiny_config
from PIL import Image

from neon.action_space import G1ActionSpace
from neon.checkpoint import CheckpointError
from neon.data.lerobot import DatasetError, EpisodeData, LeRobotDataset, write_dataset
from neon.data.soup import collate
from neon.data.sources import LeRobotSource
from neon.data.stats import norm_stats_for
from neon.data.synthetic import SynthConfig, generate
from neon.model import NeonVLA
from neon_train.eval_cli import main as eval_main
from neon_train.evaluate import PLOT_DPI, PLOT_SIZE, evaluate, seeded_split


def train_briefly(model: NeonVLA, source: LeRobotSource, steps: int = 40, seed: int = 0) -> NeonVLA:
    """A plain masked-MSE loop on the heads (the trainer proper lives in neon_train.train)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        samples = [source.sample(int(i)) for i in rng.integers(0, len(source), 16)]
        for s in samples:
            s["source"] = 0
        batch = collate(samples)
        pred, _ = model(heads_inputs(model, batch, [source]))
        target = model.transform.encode(batch["actions"], batch["obs"].state)
        mask = batch["action_mask"].float()
        loss = ((pred - target) ** 2 * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("eval") / "synth", SynthConfig(episodes=10, length=30, image_size=64),
                    progress=False)


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory, backbones):
    cfg = tiny_config("neon-tiny/qwen2.5-vl")
    space = cfg.action_space()
    held = seeded_split(10, seed=0)
    train_src = LeRobotSource(str(synth), space, 16, episodes=[k for k in range(10) if k not in held])
    stats, _ = norm_stats_for([train_src], space, cache_dir=tmp_path_factory.mktemp("stats"))
    model = NeonVLA(cfg, stats)
    model.backbone = backbones("neon-tiny/qwen2.5-vl")
    train_briefly(model, train_src)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model.save_pretrained(path)
    return path


def recompute(model: NeonVLA, dataset, episodes: list[int], stride: int = 1) -> dict:
    """Independent recomputation through the public predict() API and the raw parquet columns."""
    ds = LeRobotDataset(dataset)
    space, steps = model.action_space, model.config.num_action_steps
    from neon.data.video import VideoReader

    reader = VideoReader()
    errs = {n: [] for n in ("model", "hold", "zero", "mean")}
    masks, groups = [], {g: space.group_slice(g) for g in space.groups}
    for ep in (ds.episodes[k] for k in episodes):
        cols = ds.columns(ep)
        acts, states = cols["action"], cols["observation.state"]
        path, start = ds.video_path(ep, "observation.images.head_camera")
        for t in range(0, ep.length, stride):
            frame = reader.frame(path, start + t / ds.fps, ds.fps)
            pred = model.predict(image=frame, instruction=ep.tasks[0], state=states[t]).actions
            gt = np.stack([acts[min(t + i, ep.length - 1)] for i in range(steps)])
            mask = (t + np.arange(steps) < ep.length)[:, None] & np.ones(space.dim, bool)
            mean = model.transform.decode(torch.zeros(1, steps, space.dim), torch.from_numpy(states[t][None].copy()))[0]
            for name, p in (("model", pred), ("hold", np.repeat(states[t][None], steps, 0)),
                            ("zero", np.zeros_like(gt)), ("mean", space.clip(mean.numpy()))):
                errs[name].append((p - gt) ** 2)
            masks.append(mask)
    m = np.stack(masks)
    out = {}
    for name, e in errs.items():
        e = np.stack(e)
        out[name] = {"mse": float((e * m).sum() / m.sum()),
                     "per_group": {g: float((e[..., sl] * m[..., sl]).sum() / m[..., sl].sum()) for g, sl in groups.items()},
                     "per_step": [float((e[:, i] * m[:, i]).sum() / m[:, i].sum()) for i in range(steps)]}
    return out


def test_report_matches_independent_recomputation(trained, synth, backbones, tmp_path):
    report = evaluate(trained, str(synth), trajs=5, baselines=True, out=tmp_path / "eval", progress=False,
                      allow_train_episodes=True)
    held = seeded_split(10, seed=0)
    assert report["split"]["evaluated_episodes"] == held and "seeded rule" in report["split"]["rule"]
    model = NeonVLA.from_pretrained(trained)
    model.backbone = backbones("neon-tiny/qwen2.5-vl", model.config.backbone.load_in_4bit)  # as evaluate() loads it
    ref = recompute(model, synth, held)
    for name in ("model", "hold", "zero", "mean"):
        got = report["results"][name]
        assert got["mse"] == pytest.approx(ref[name]["mse"], rel=1e-4, abs=1e-7), name
        for g in ("arms", "hands"):
            assert got["per_group"][g] == pytest.approx(ref[name]["per_group"][g], rel=1e-4, abs=1e-7)
        assert got["per_step"] == pytest.approx(ref[name]["per_step"], rel=1e-4, abs=1e-7)
    imp = report["improvement_pct"]["zero"]["total"]
    assert imp == pytest.approx(100 * (ref["zero"]["mse"] - ref["model"]["mse"]) / ref["zero"]["mse"], rel=1e-3)
    assert report["results"]["random"]["mse"] > report["results"]["zero"]["mse"]  # uniform over the limits is far off
    saved = json.loads((tmp_path / "eval" / "eval_report.json").read_text())
    assert saved["results"]["model"]["mse"] == report["results"]["model"]["mse"]
    md = (tmp_path / "eval" / "eval_report.md").read_text()
    assert "| **total** |" in md and "Improvement" in md


def test_untrained_model_scores_like_the_mean_baseline(synth, tmp_path):
    space = G1ActionSpace("arms_only")
    stats, _ = norm_stats_for([LeRobotSource(str(synth), space, 16)], space, cache_dir=tmp_path / "stats")
    NeonVLA(tiny_config("neon-tiny/qwen2.5-omni"), stats).save_pretrained(tmp_path / "fresh")
    report = evaluate(tmp_path / "fresh", str(synth), trajs=2, baselines=True, stride=3, progress=False,
                      allow_train_episodes=True)
    model, mean = report["results"]["model"], report["results"]["mean"]
    assert model["mse"] == pytest.approx(mean["mse"], rel=1e-9, abs=1e-12)
    assert model["per_step"] == pytest.approx(mean["per_step"], rel=1e-9, abs=1e-12)
    assert report["improvement_pct"]["mean"]["total"] == pytest.approx(0.0, abs=1e-6)


def test_plots_are_pngs_of_the_expected_size(trained, synth, tmp_path):
    report = evaluate(trained, str(synth), trajs=1, baselines=True, plot=True, out=tmp_path, stride=2,
                      plot_joints=["left_shoulder_pitch", "right_elbow"], progress=False, allow_train_episodes=True)
    assert set(report["plots"]) == {"trajectories", "group_mse", "step_error"}
    for path in report["plots"].values():
        raw = open(path, "rb").read()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            assert im.size == (PLOT_SIZE[0] * PLOT_DPI, PLOT_SIZE[1] * PLOT_DPI)


def test_split_recorded_in_checkpoint_wins(trained, synth, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    (ckpt / "split.json").write_text(json.dumps({"sources": {"synth": {"path": str(synth), "val_episodes": [2, 7]}}}))
    report = evaluate(ckpt, str(synth), trajs=5, baselines=False, stride=5, progress=False)
    assert report["split"]["evaluated_episodes"] == [2, 7] and "split.json" in report["split"]["rule"]
    assert set(report["results"]) == {"model"}


def test_feature_cache_hits_on_second_run(trained, synth, tmp_path):
    kw = dict(trajs=1, stride=2, cache_dir=tmp_path / "cache", progress=False, allow_train_episodes=True)
    first, second = evaluate(trained, str(synth), **kw), evaluate(trained, str(synth), **kw)
    assert first["feature_cache"] == {"hits": 0, "misses": first["chunks"]}
    assert second["feature_cache"] == {"hits": second["chunks"], "misses": 0}
    assert second["results"]["model"]["mse"] == pytest.approx(first["results"]["model"]["mse"], rel=1e-3)


def test_cli_and_bad_arguments(trained, synth, tmp_path, capsys):
    assert eval_main(["--model", str(trained), "--dataset", str(synth), "--trajs", "1", "--stride", "5",
                      "--baselines", "--out", str(tmp_path / "out")]) == 2  # no split.json: it may score training data
    assert "--allow-train-episodes" in capsys.readouterr().err
    assert eval_main(["--model", str(trained), "--dataset", str(synth), "--trajs", "1", "--stride", "5",
                      "--baselines", "--out", str(tmp_path / "out"), "--allow-train-episodes"]) == 0
    assert "## MSE (physical units" in capsys.readouterr().out
    assert eval_main(["--model", str(tmp_path / "no_such_model"), "--dataset", str(synth)]) == 2
    assert "neither a checkpoint folder nor a Hub repo id" in capsys.readouterr().err
    other = tmp_path / "other_robot"
    names = ["x", "y", "z", "gripper"]
    write_dataset(other, [EpisodeData("push", {"observation.state": np.zeros((5, 4)), "action": np.zeros((5, 4))},
                                      {"observation.images.front": np.zeros((5, 64, 64, 3), np.uint8)})],
                  fps=10, features={"observation.images.front": {"dtype": "video", "shape": [64, 64, 3]},
                                    "observation.state": {"dtype": "float32", "shape": [4], "names": names},
                                    "action": {"dtype": "float32", "shape": [4], "names": names}})
    assert eval_main(["--model", str(trained), "--dataset", str(other)]) == 2
    assert "none of the dataset's action names match the G1 arms_only action space" in capsys.readouterr().err
    with pytest.raises(ValueError, match="trajs"):
        evaluate(trained, str(synth), trajs=0)
    with pytest.raises(CheckpointError):
        evaluate(tmp_path, str(synth))
    with pytest.raises(DatasetError):
        evaluate(trained, str(tmp_path / "missing_dataset"))


@pytest.mark.parametrize("script", ["eval_neon.py", "train_neon.py"])
def test_pep723_script(tmp_path, script):
    import shutil
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    text = (scripts / script).read_text()
    block = "\n".join(line[2:] for line in text.split("# /// script\n")[1].split("# ///")[0].splitlines())
    meta = tomllib.loads(block)
    deps = {d.split(">")[0].split("<")[0].split("=")[0] for d in meta["dependencies"]}
    assert {"torch", "transformers", "bitsandbytes", "pyarrow", "av", "matplotlib"} <= deps
    r = subprocess.run([sys.executable, str(scripts / script), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--dataset" in r.stdout
    # Uploaded alone (as `hf jobs uv run` does) and without NEON_SOURCE: a clear error, not a traceback.
    for name in (script, "neon_bootstrap.py"):
        shutil.copy(scripts / name, tmp_path / name)
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-S", str(tmp_path / script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "set NEON_SOURCE" in r.stderr


def test_a_dataset_the_split_does_not_know_is_refused_or_scored_with_its_recorded_seed(trained, synth, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    split = {"seed": 42, "val_fraction": 0.3, "sources": {"other": {"path": str(tmp_path / "elsewhere"), "val_episodes": [1]}}}
    (ckpt / "split.json").write_text(json.dumps(split))
    with pytest.raises(DatasetError, match="does not list .*--allow-train-episodes"):
        evaluate(ckpt, str(synth), trajs=5, baselines=False, stride=5, progress=False)
    report = evaluate(ckpt, str(synth), trajs=5, baselines=False, stride=5, progress=False, seed=0,
                      allow_train_episodes=True)
    assert report["split"]["held_out_episodes"] == seeded_split(10, 42, 0.3)  # the split's seed, not --seed 0
    assert "default_rng(42)" in report["split"]["rule"] and "may include training episodes" in report["split"]["rule"]


def test_uv_runs_the_scripts_from_their_pep723_headers(tmp_path):
    """The seed's launch command: uv (from PyPI) resolves and installs each script's PEP 723 dependencies from the
    machine's configured package indexes (pip's configuration, handed to uv) and runs `--help`."""
    import json as _json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    assert Path(uv).exists(), "uv is installed by scripts/setup.sh (dev extra)"
    if shutil.disk_usage(Path.home()).free < 12 * 2**30:
        pytest.skip("uv's environment for the scripts (torch and its CUDA libraries from PyPI) needs ~6 GB of disk")
    pip = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    config = dict(line.split("=", 1) for line in pip.splitlines() if "=" in line)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    indexes = [u for k, v in config.items() if k.endswith(("index-url", "extra-index-url")) for u in _json.loads(
        "[" + ",".join(f'"{x}"' for x in v.strip("'").split()) + "]")]
    links = [v.strip("'") for k, v in config.items() if k.endswith("find-links")]
    if indexes:
        env["UV_EXTRA_INDEX_URL"] = " ".join(dict.fromkeys(indexes))
        env["UV_INDEX_STRATEGY"] = "unsafe-best-match"
    if links:
        env["UV_FIND_LINKS"] = links[0]
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    for script in ("eval_neon.py", "train_neon.py"):
        r = subprocess.run([uv, "run", "--script", "--python", sys.executable, str(scripts / script), "--help"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "--dataset" in r.stdout, r.stdout
