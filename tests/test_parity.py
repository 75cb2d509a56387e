"""One raw observation down the training road and down the serving road: the heads see the same inputs.

Every sensor is on and each is given in the form most likely to expose a second
road: LiDAR as N x 3 (no intensity), wrist quaternions that are not unit length,
6 s of audio (longer than the model's window), a 15 fps dataset. The training
road writes it into a LeRobot dataset, reads it back and collates it; the
serving road posts it as msgpack to a real server on loopback. The frame both
roads see is the one decoded from the dataset's video (AV1 is lossy by design).
"""

import httpx
import numpy as np
import pytest
import torch
from conftest import attach, random_weights, tiny_config
from serving import runner_for, serve

from neon.data.lerobot import EpisodeData, write_dataset
from neon.data.soup import collate
from neon.data.sources import LeRobotSource
from neon.model import NeonInputs, NeonVLA
from neon.observation import AUDIO_SAMPLE_RATE, AUDIO_WINDOW_S
from neon.policy import NeonPolicy
from neon_runtime import wire
from neon_runtime.onnx_heads import ONNX_DIR, OnnxHeads, export_heads
from neon_runtime.safety import SafetyConfig
from neon_runtime.server import ServerSettings, create_app

FPS = 15.0
CAMERA = "observation.images.head_camera"


def raw_observation(space, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    eef = np.concatenate([[0.3, 0.2, 0.9], 1.2 * np.array([0.6, 0.0, 0.8, 0.0]),  # |q| = 1.2
                          [0.3, -0.2, 0.9], 0.8 * np.array([0.0, 0.6, 0.0, 0.8])]).astype(np.float32)  # |q| = 0.8
    return {
        "image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "instruction": "pick up the red block",
        "state": rng.uniform(space.lower, space.upper).astype(np.float32),
        "audio": (0.3 * np.sin(np.arange(int(6 * AUDIO_SAMPLE_RATE)) * 0.05) * np.linspace(0, 1, 6 * 16000)).astype(np.float32),
        "lidar": np.c_[rng.uniform(0.3, 5.0, (300, 2)), rng.uniform(-1, 1, 300)].astype(np.float32),
        "eef": eef,
    }


def write_episode(root, raw: dict, space):
    """A two-frame episode whose frame 0 holds `raw` (all 6 s of audio arrive with frame 0)."""
    n = 2
    frames = {
        "observation.state": np.stack([raw["state"]] * n),
        "action": np.stack([raw["state"]] * n),
        "observation.eef": np.stack([raw["eef"]] * n),
        "observation.lidar": np.stack([raw["lidar"]] * n),
        "observation.audio": [raw["audio"], np.zeros(100, np.float32)],
    }
    features = {
        CAMERA: {"dtype": "video", "shape": [64, 64, 3]},
        "observation.state": {"dtype": "float32", "shape": [space.dim], "names": space.names},
        "action": {"dtype": "float32", "shape": [space.dim], "names": space.names},
        "observation.eef": {"dtype": "float32", "shape": [14], "names": None},
        "observation.lidar": {"dtype": "float32", "shape": [300, 3], "names": ["x", "y", "z"]},
        "observation.audio": {"dtype": "float32", "shape": [-1], "names": None},
    }
    episode = EpisodeData(raw["instruction"], frames, {CAMERA: np.stack([raw["image"]] * n)})
    return write_dataset(root, [episode], fps=FPS, features=features)


@pytest.fixture(scope="module")
def setup(backbones, tmp_path_factory):
    cfg = tiny_config("neon-tiny/qwen2.5-omni", use_audio=True, use_lidar=True, use_eef=True, fps=FPS)
    cfg.backbone.load_in_4bit = False
    model = attach(NeonVLA(cfg), backbones)
    random_weights(model, 0)
    tmp = tmp_path_factory.mktemp("parity")
    ckpt = model.save_pretrained(tmp / "ckpt")
    export_heads(model, ckpt / ONNX_DIR)
    raw = raw_observation(model.action_space)
    source = LeRobotSource(str(write_episode(tmp / "ds", raw, model.action_space)), model.action_space, 16)
    return model, ckpt, raw, source


def training_road(model: NeonVLA, source: LeRobotSource) -> tuple[NeonInputs, np.ndarray, float]:
    """What the trainer and the evaluator do with frame 0: sample, collate, inputs, heads, decode."""
    sample = source.sample(0)
    batch = collate([sample])
    inputs = model.inputs(batch["obs"], model.features(), (batch["source"], batch["row"]))
    with torch.no_grad():
        pred, _ = model(inputs)
    chunk = model.action_space.clip(model.transform.decode(pred, inputs.state).numpy())[0]
    return inputs, chunk, sample["fps"]


@pytest.mark.parametrize("heads", ["torch", "onnx"])
def test_training_and_serving_roads_agree(setup, heads):
    model, ckpt, raw, source = setup
    train_inputs, train_chunk, train_fps = training_road(model, source)
    frame = source.sample(0)["obs"].image  # the decoded frame: both roads see these pixels

    fast = SafetyConfig(max_joint_velocity=1e3, max_hand_velocity=1e3)  # nothing to slow down: compare raw chunks
    runner = runner_for(model, fast, OnnxHeads.beside(ckpt) if heads == "onnx" else None, max_batch=1, max_wait_ms=0)
    policy, seen = runner.local.policy, []
    run_heads = policy.run_heads
    policy.run_heads = lambda x: (seen.append(x), run_heads(x))[1]  # record what the heads receive
    request = {**raw, "image": frame}
    before = {k: np.copy(v) for k, v in request.items() if isinstance(v, np.ndarray)}
    with serve(create_app(runner, ServerSettings())) as addr:
        r = httpx.post(f"http://{addr}/predict", content=wire.packb(request), timeout=60,
                       headers={"content-type": "application/msgpack", "accept": "application/msgpack"})
    runner.close()
    assert r.status_code == 200, r.text
    reply = wire.unpackb(r.content)
    served = seen[-1]
    for name in NeonInputs.names():
        a, b = getattr(train_inputs, name), getattr(served, name)
        assert a.shape == b.shape, name
        assert torch.allclose(a.float(), b.float(), atol=1e-5), f"{name} differs between training and serving"
    assert model.config.backbone.pooling == "grid" and served.vl_tokens.shape == (1, 8 * 8 + 4, 64)
    assert served.lidar.shape == (1, 300, 4) and float(served.lidar[0, :, 3].abs().max()) == 0.0  # x, y, z kept in place
    assert torch.allclose(served.lidar[0, :, :3], torch.from_numpy(raw["lidar"]))
    q = served.eef.view(2, 7)[:, 3:]
    assert torch.allclose(q.norm(dim=1), torch.ones(2), atol=1e-6)
    assert reply["safety"]["rate_limited"] == 0 and reply["safety"]["clamped_to_limits"] == 0
    assert np.abs(reply["actions"] - train_chunk).max() <= 1e-5
    assert reply["fps"] == train_fps == FPS
    assert all(np.array_equal(request[k], v) for k, v in before.items())


def test_policy_never_mutates_the_callers_arrays(setup):
    model, _, raw, _ = setup
    copies = {k: np.copy(v) for k, v in raw.items() if isinstance(v, np.ndarray)}
    obs = NeonPolicy(model).observation(**raw)
    assert all(np.array_equal(raw[k], v) for k, v in copies.items())
    assert obs.audio.shape == (int(AUDIO_WINDOW_S * AUDIO_SAMPLE_RATE),)  # the newest window of the 6 s
    assert np.array_equal(obs.audio, raw["audio"][-len(obs.audio):])
    assert not np.shares_memory(obs.eef, raw["eef"]) and not np.shares_memory(obs.state, raw["state"])
