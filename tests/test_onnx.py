"""ONNX heads: export, agreement with PyTorch for both modes and all modalities, serving with --heads onnx."""

import json

import httpx
import numpy as np
import pytest
import websockets.sync.client as ws_client
from conftest import as_trained, attach, random_weights, scene, tiny_config
from serving import serve

from neon.model import NeonVLA
from neon.policy import NeonPolicy
from neon_runtime import wire
from neon_runtime.export_cli import main as export_main
from neon_runtime.onnx_heads import INPUTS, ONNX_DIR, ONNX_FILE, TOLERANCE, OnnxHeads, export_heads, graph_inputs
from neon_runtime.policy import LocalPolicy, PolicyRunner
from neon_runtime.server import ServerSettings, create_app


def randomized(cfg, seed=0):
    model = as_trained(NeonVLA(cfg))
    random_weights(model, seed)
    return model.eval()


def full_obs(model, seed=0):
    rng = np.random.default_rng(seed)
    space = model.action_space
    return dict(image=scene(seed), instruction="pick up the red block",
                state=rng.uniform(space.lower, space.upper).astype(np.float32),
                audio=(0.2 * rng.standard_normal(16000)).astype(np.float32),
                lidar=np.c_[rng.uniform(-5, 5, (700, 3)), rng.uniform(0, 255, 700)],
                eef={"left": [0.3, 0.2, 0.9, 1, 0, 0, 0], "right": [0.3, -0.2, 0.9, 0, 0, 0, 1]})


@pytest.mark.parametrize("backbone", ["neon-tiny/qwen2.5-vl", "neon-tiny/qwen2.5-omni"])
@pytest.mark.parametrize("mode", ["arms_only", "whole_body"])
def test_onnx_matches_pytorch(backbones, tmp_path, backbone, mode):
    # Absolute targets, so that the absent-state path (seed 2) is exported and compared too.
    cfg = tiny_config(backbone, mode, use_audio=True, use_lidar=True, use_eef=True, default_representation="absolute")
    cfg.backbone.load_in_4bit = False
    model = attach(randomized(cfg), backbones)
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    info = export_heads(model, ckpt / ONNX_DIR)
    assert max(info["max_abs_diff"].values()) <= TOLERANCE
    assert info["vl_tokens"] == [8 * 8 + 4, 64]  # grid tokens, then text bins
    onnx_model = NeonPolicy(attach(NeonVLA.from_pretrained(ckpt), backbones), OnnxHeads.beside(ckpt))
    assert onnx_model.heads.provider == "CPUExecutionProvider"
    for seed, drop in ((0, ()), (1, ("audio", "lidar", "eef")), (2, ("state",))):
        obs = {k: v for k, v in full_obs(model, seed).items() if k not in drop}
        a, b = model.predict(**obs), onnx_model.predict(**obs)
        assert np.abs(a.actions - b.actions).max() <= 1e-4, (seed, drop)
        assert a.speech_confidence == pytest.approx(b.speech_confidence, abs=1e-5)
    batch = [onnx_model.observation(**full_obs(model, s)) for s in range(5)]  # batch and point count vary
    assert [p.actions.shape for p in onnx_model.predict_batch(batch)] == [(16, model.action_space.dim)] * 5


def test_export_cli_and_missing_export(backbones, tmp_path, capsys):
    cfg = tiny_config("neon-tiny/qwen2.5-vl")
    ckpt = randomized(cfg).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="run `neon-export"):
        OnnxHeads.beside(ckpt)
    assert export_main(["--model", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "largest difference from PyTorch" in out and "vl_tokens: 68 backbone tokens x 64" in out
    assert (ckpt / ONNX_DIR / ONNX_FILE).is_file()
    info = json.loads((ckpt / ONNX_DIR / "export.json").read_text())
    assert info["inputs"][0] == "vl_tokens" and info["tolerance"] == TOLERANCE
    assert NeonVLA.from_pretrained(ckpt)  # the export beside it does not disturb loading
    assert export_main(["--model", str(tmp_path / "nope")]) == 2


def test_server_round_trips_with_onnx_heads(backbones, tmp_path):
    cfg = tiny_config("neon-tiny/qwen2.5-vl")
    cfg.backbone.load_in_4bit = False
    torch_model = attach(randomized(cfg), backbones)
    ckpt = torch_model.save_pretrained(tmp_path / "ckpt")
    export_heads(torch_model, ckpt / ONNX_DIR)
    model = attach(NeonVLA.from_pretrained(ckpt), backbones)
    runner = PolicyRunner(LocalPolicy(NeonPolicy(model, OnnxHeads.beside(ckpt)), source=str(ckpt)), max_batch=4,
                          max_wait_ms=2)
    runner.warm_up()
    img = scene(3, 224, 224)
    with serve(create_app(runner, ServerSettings())) as addr:
        meta = httpx.get(f"http://{addr}/metadata").json()
        assert meta["model"]["heads"] == "onnx" and meta["model"]["heads_provider"] == "CPUExecutionProvider"
        r = httpx.post(f"http://{addr}/predict", timeout=60, headers={"content-type": "application/msgpack",
                                                                        "accept": "application/msgpack"},
                       content=wire.packb({"image": img, "instruction": "wave", "state": np.zeros(28, np.float32)}))
        assert r.status_code == 200
        via_http = wire.unpackb(r.content)["actions"]
        with ws_client.connect(f"ws://{addr}/ws") as c:
            c.recv()
            c.send(wire.packb({"observation/image": img, "prompt": "wave", "observation/state": np.zeros(28)}))
            via_ws = wire.unpackb(c.recv())["actions"]
            c.send(b"\xc1")
            assert wire.unpackb(c.recv())["error"] == "bad_input"
    expected = torch_model.predict(image=img, instruction="wave", state=np.zeros(28))
    safe = runner.local.safety.apply(expected.actions, np.zeros(28, np.float32), expected.fps)[0]
    assert np.abs(via_http - safe).max() <= 1e-4 and np.abs(via_ws - safe).max() <= 1e-4
    runner.close()


def test_edge_profile_uses_onnx_heads_and_enforces_the_memory_budget(tmp_path, capsys):
    from neon_runtime.cli import main as serve_main
    from neon_runtime.profiles import PROFILES

    cfg = tiny_config("neon-tiny/qwen2.5-omni")
    cfg.backbone.load_in_4bit = False
    ckpt = randomized(cfg).save_pretrained(tmp_path / "ckpt")
    assert serve_main(["--profile", "edge_3b", "--model", str(ckpt)]) == 2  # no ONNX export yet
    assert "neon-export" in capsys.readouterr().err
    export_heads(NeonVLA.from_pretrained(ckpt), ckpt / ONNX_DIR)
    assert serve_main(["--profile", "edge_3b", "--model", str(ckpt), "--max-memory-gb", "0.01"]) == 2
    assert "over the 0.01 GB budget" in capsys.readouterr().err
    assert PROFILES["edge_3b"]["heads"] == "onnx" and PROFILES["edge_3b"]["max_batch"] == 1


def test_the_manifest_covers_the_onnx_export(backbones, tmp_path):
    import shutil

    from neon.checkpoint import CheckpointError

    ckpt = randomized(tiny_config("neon-tiny/qwen2.5-vl")).save_pretrained(tmp_path / "ckpt")
    before = (ckpt / "manifest.json").read_text()
    export_heads(NeonVLA.from_pretrained(ckpt), ckpt / ONNX_DIR)
    listed = json.loads((ckpt / "manifest.json").read_text())["sha256"]
    assert {f"{ONNX_DIR}/{ONNX_FILE}", f"{ONNX_DIR}/export.json"} <= set(listed)
    assert json.loads((ckpt / "manifest.json").read_text())["trained_steps"] == 1  # the rest of the manifest kept
    assert OnnxHeads.beside(ckpt).provider == "CPUExecutionProvider"
    tampered = tmp_path / "tampered"
    shutil.copytree(ckpt, tampered)
    graph = tampered / ONNX_DIR / ONNX_FILE
    graph.write_bytes(graph.read_bytes()[:-16] + bytes(16))
    with pytest.raises(CheckpointError, match="onnx/neon_heads.onnx is corrupted or was modified"):
        OnnxHeads.beside(tampered)
    with pytest.raises(CheckpointError, match="corrupted or was modified"):
        NeonVLA.from_pretrained(tampered)
    stale = tmp_path / "stale"  # an export the manifest does not know about
    shutil.copytree(ckpt, stale)
    (stale / "manifest.json").write_text(before)
    with pytest.raises(CheckpointError, match="not covered by .*manifest.json"):
        OnnxHeads.beside(stale)


def test_onnx_takes_the_prefix_and_matches_pytorch(backbones, tmp_path):
    """A prefix-conditioned model's graph takes `prefix` and `prefix_len`; torch and ONNX agree for no prefix,
    short and longest prefixes, alone and batched. Without the option the graph keeps its nine inputs."""
    cfg = tiny_config("neon-tiny/qwen2.5-vl", prefix_max_steps=5)
    cfg.backbone.load_in_4bit = False
    model = attach(randomized(cfg), backbones)
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    info = export_heads(model, ckpt / ONNX_DIR)
    assert info["inputs"][-2:] == ["prefix", "prefix_len"] and info["prefix_max_steps"] == 5
    assert max(info["max_abs_diff"].values()) <= TOLERANCE
    onnx_model = NeonPolicy(attach(NeonVLA.from_pretrained(ckpt), backbones), OnnxHeads.beside(ckpt))
    space, obs = model.action_space, full_obs(model)
    obs = {k: obs[k] for k in ("image", "instruction", "state")}
    rng = np.random.default_rng(0)
    prefixes = [None] + [np.clip(obs["state"] + rng.normal(0, 0.05, (d, space.dim)), space.lower,
                                 space.upper).astype(np.float32) for d in (1, 3, 5)]
    for p in prefixes:
        a, b = model.predict(**obs, prefix=p), onnx_model.predict(**obs, prefix=p)
        assert np.abs(a.actions - b.actions).max() <= 1e-4 and a.committed_steps == b.committed_steps
    batch = onnx_model.predict_batch([onnx_model.observation(**obs, prefix=p) for p in prefixes])
    for p, got in zip(prefixes, batch, strict=True):
        assert np.abs(got.actions - model.predict(**obs, prefix=p).actions).max() <= 1e-4
    assert graph_inputs(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl"))) == INPUTS[:9] == info["inputs"][:9]
