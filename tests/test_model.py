"""NeonVLA end to end on the tiny backbones: predict, checkpoints, bad inputs, parameter counts."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import attach, random_weights, scene, tiny_config

from neon.action_space import G1ActionSpace
from neon.checkpoint import WEIGHTS_FILE, CheckpointError
from neon.model import NeonVLA, count_parameters
from neon.observation import InputError, collate
from neon.policy import NeonPolicy
from neon.normalization import NormStats
from neon.presets import TARGET_PARAMS, get_model_config

TINY = ["neon-tiny/qwen2.5-vl", "neon-tiny/qwen2.5-omni"]


def randomize(model: NeonVLA, seed: int = 0) -> NeonVLA:
    """Give every parameter non-trivial values, as training would (zero-init outputs included)."""
    return random_weights(model, seed)


def full_obs(model, seed=0):
    rng = np.random.default_rng(seed)
    space = model.action_space
    return dict(
        image=scene(seed),
        instruction="pick up the red cup",
        state=rng.uniform(space.lower, space.upper).astype(np.float32),
        audio=(0.2 * rng.standard_normal(16000)).astype(np.float32),
        lidar=np.c_[rng.uniform(-5, 5, (500, 3)), rng.uniform(0, 255, 500)],
        eef={"left": [*rng.uniform(-0.5, 0.5, 3), 1, 0, 0, 0], "right": [*rng.uniform(-0.5, 0.5, 3), 0, 0, 0, 1]},
    )


@pytest.mark.parametrize("backbone", TINY)
@pytest.mark.parametrize("mode", ["arms_only", "whole_body"])
@pytest.mark.parametrize("sensors", [False, True])
def test_predict_returns_chunk_inside_limits(backbones, backbone, mode, sensors):
    cfg = tiny_config(backbone, mode, use_audio=sensors, use_lidar=sensors, use_eef=sensors)
    model = attach(randomize(NeonVLA(cfg)), backbones)
    space = model.action_space
    obs = full_obs(model)
    if not sensors:
        obs = {k: obs[k] for k in ("image", "instruction", "state")}
    out = model.predict(**obs)
    assert out.actions.shape == (16, space.dim) == (16, {"arms_only": 28, "whole_body": 46}[mode])
    assert out.actions.dtype == np.float32 and np.isfinite(out.actions).all()
    assert (out.actions >= space.lower).all() and (out.actions <= space.upper).all()
    assert out.joint_names == space.names and out.fps == 30.0
    assert {"validate", "backbone", "heads", "postprocess", "total"} <= set(out.timings_ms)
    assert ("audio" in out.timings_ms) == sensors
    assert isinstance(out.speech, str) and 0 <= out.speech_confidence <= 1
    # Sensors that a model uses can also be missing: the learned "absent" embeddings stand in.
    partial = model.predict(image=obs["image"], instruction=obs["instruction"], state=obs["state"])
    assert partial.actions.shape == out.actions.shape


@pytest.mark.parametrize("backbone", TINY)
def test_sensor_inputs_change_the_prediction(backbones, backbone):
    model = attach(randomize(NeonVLA(tiny_config(backbone, use_audio=True, use_lidar=True, use_eef=True))), backbones)
    obs = full_obs(model)
    base = model.predict(**obs).actions
    for key in ("audio", "lidar", "eef", "state"):
        other = dict(obs, **{key: full_obs(model, seed=7)[key]})
        assert not np.allclose(model.predict(**other).actions, base), f"{key} does not reach the heads"
    assert not np.allclose(model.predict(**dict(obs, instruction="walk away")).actions, base)
    assert not np.allclose(model.predict(**dict(obs, image=scene(9))).actions, base)


def test_untrained_model_holds_still_or_predicts_the_mean_action(backbones):
    space = G1ActionSpace("arms_only")
    state = ((space.lower + space.upper) / 2 + 0.1).astype(np.float32)
    model = attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl")), backbones)  # the default: relative to the state
    out = model.predict(image=scene(), instruction="wave", state=state)
    assert np.allclose(out.actions, np.broadcast_to(space.clip(state), out.actions.shape), atol=1e-5)  # holds still
    assert out.speech == ""  # zero-initialised speech head: uniform, so it says nothing
    absolute = attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", default_representation="absolute")), backbones)
    out = absolute.predict(image=scene(), instruction="wave")
    mean = np.broadcast_to(absolute.norm_stats.action_mean, out.actions.shape)
    assert np.allclose(out.actions, absolute.action_space.clip(mean), atol=1e-6)


def test_relative_representation_needs_state_and_is_anchored_on_it(backbones):
    cfg = tiny_config("neon-tiny/qwen2.5-vl", representation={"arms": "relative"})
    model = attach(NeonVLA(cfg), backbones)
    with pytest.raises(InputError, match="state is required.*arms"):
        model.predict(image=scene(), instruction="wave")
    state = (model.action_space.lower + model.action_space.upper) / 2 + 0.1
    out = model.predict(image=scene(), instruction="wave", state=state)
    arms = model.action_space.group_slice("arms")
    assert np.allclose(out.actions[:, arms], state[arms], atol=1e-5)  # fresh heads hold the current pose


def test_batched_forward_trains_heads_only(backbones):
    cfg = tiny_config("neon-tiny/qwen2.5-omni", "whole_body", use_lidar=True, default_representation="absolute")
    model = attach(NeonVLA(cfg), backbones)  # absolute targets: a sample may lack its state
    model.train()
    policy = NeonPolicy(model)
    obs = [policy.observation(image=scene(i), instruction=t, state=s, lidar=np.random.default_rng(i).normal(size=(50, 3)))
           for i, (t, s) in enumerate(zip("abc", [np.zeros(46), None, np.zeros(46)], strict=True))]
    x = model.inputs(collate(obs, 46))
    actions, speech = model(x)
    assert actions.shape == (3, 16, 46) and speech.shape == (3, len(model.config.speech_responses))
    (actions.square().mean() + speech.logsumexp(-1).mean()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("heads."))
    assert all(p.grad is None for p in model.backbone.model.parameters())
    assert not any(k.startswith("backbone") for k in model.state_dict())


@pytest.mark.parametrize("backbone", TINY)
def test_save_load_gives_identical_outputs(backbones, backbone, tmp_path):
    cfg = tiny_config(backbone, "whole_body", use_audio=True, use_lidar=True, use_eef=True,
                      representation={"arms": "relative"})
    space = cfg.action_space()
    stats = NormStats(space.names, np.zeros(space.dim), np.ones(space.dim), np.full(space.dim, 0.05),
                      np.full(space.dim, 0.2), source="test")
    model = attach(randomize(NeonVLA(cfg, stats), seed=3), backbones)
    model.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == sorted(["action_space.json", "config.json", "manifest.json", "norm_stats.json", WEIGHTS_FILE])
    assert list(tmp_path.iterdir()) == [tmp_path / "ckpt"]  # no temporary leftovers
    loaded = attach(NeonVLA.from_pretrained(tmp_path / "ckpt"), backbones)
    obs = full_obs(model)
    a, b = model.predict(**obs), loaded.predict(**obs)
    assert np.array_equal(a.actions, b.actions) and a.speech_confidence == b.speech_confidence
    assert loaded.norm_stats.source == "test" and loaded.config.to_dict() == model.config.to_dict()


class Payload:
    """An arbitrary picklable object: loading must refuse to unpickle it."""


@pytest.fixture
def checkpoint(tmp_path):
    model = randomize(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl")))
    return model, model.save_pretrained(tmp_path / "ckpt")


def test_truncated_weights_give_clear_error(checkpoint):
    _, ckpt = checkpoint
    weights = ckpt / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    (ckpt / "manifest.json").unlink()  # without the checksum, safetensors itself must notice
    with pytest.raises(CheckpointError, match="has no manifest.json, so its files cannot be verified"):
        NeonVLA.from_pretrained(ckpt)  # a checkpoint without its manifest is refused ...
    with pytest.raises(CheckpointError, match=r"neon_weights.safetensors is truncated or corrupted"):
        NeonVLA.from_pretrained(ckpt, allow_unverified=True)  # ... unless asked for


def test_corrupted_weights_fail_the_checksum(checkpoint):
    _, ckpt = checkpoint
    weights = ckpt / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or was modified"):
        NeonVLA.from_pretrained(ckpt)


def test_mismatched_weights_name_the_keys(checkpoint):
    from safetensors.torch import load_file, save_file

    _, ckpt = checkpoint
    state = load_file(str(ckpt / WEIGHTS_FILE))
    state.pop("speech.mlp.proj.bias")
    state["proprio.mlp.fc.weight"] = torch.zeros(3, 3)
    save_file(state, str(ckpt / WEIGHTS_FILE))
    (ckpt / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing speech.mlp.proj.bias.*wrong shapes proprio.mlp.fc.weight"):
        NeonVLA.from_pretrained(ckpt, allow_unverified=True)


def test_legacy_pt_loads_without_unpickling_objects(checkpoint):
    model, ckpt = checkpoint
    (ckpt / WEIGHTS_FILE).unlink()
    (ckpt / "manifest.json").unlink()
    torch.save(model.state_dict(), ckpt / "neon_weights.pt")
    loaded = NeonVLA.from_pretrained(ckpt, allow_unverified=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    torch.save({"x": Payload()}, ckpt / "neon_weights.pt")
    with pytest.raises(CheckpointError, match="could not be read safely"):
        NeonVLA.from_pretrained(ckpt, allow_unverified=True)


def test_bad_checkpoint_paths(tmp_path):
    with pytest.raises(CheckpointError, match="neither a checkpoint folder nor a Hub repo id"):
        NeonVLA.from_pretrained(str(tmp_path / "missing" / "deep"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty has no manifest.json"):
        NeonVLA.from_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="config.json not found"):
        NeonVLA.from_pretrained(tmp_path / "empty", allow_unverified=True)


def test_failed_save_keeps_previous_checkpoint(checkpoint, monkeypatch):
    model, ckpt = checkpoint
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    import safetensors.torch

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        randomize(model, seed=9).save_pretrained(ckpt)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("bad,match", [
    (dict(image=np.zeros((3, 224, 224), np.uint8)), r"image must be HxWx3 uint8, got \(3, 224, 224\) uint8"),
    (dict(image=np.zeros((224, 224, 3), np.float32)), r"image must be HxWx3 uint8, got \(224, 224, 3\) float32"),
    (dict(image=None), "image is required"),
    (dict(image="cup.jpg"), "image must be an HxWx3 uint8 array, got str"),
    (dict(instruction="  "), "instruction is empty"),
    (dict(instruction=42), "instruction must be a string"),
    (dict(state=np.full(28, np.nan)), "state has NaN or Inf at: left_shoulder_pitch"),
    (dict(state=np.zeros(29)), r"state must have 28 values"),
    (dict(state={"left_elbow": 0.1, "left_pinky": 0.2}), "unknown joint name.*left_pinky"),
    (dict(audio=np.zeros((2, 16000))), "audio must be 1-D mono"),
    (dict(audio=np.full(100, np.inf, np.float32)), "audio holds NaN or Inf"),
    (dict(lidar=np.zeros((10, 5))), r"lidar must be Nx3 .* or Nx4"),
    (dict(eef=np.zeros(14)), "eef left quaternion has norm 0.000"),
    (dict(eef={"left": [0, 0, 0, 1, 0, 0, 0]}), "missing right"),
])
def test_bad_inputs_name_the_problem(backbones, bad, match):
    model = attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", use_audio=True, use_lidar=True, use_eef=True)),
                   backbones)
    obs = {"image": scene(), "instruction": "wave", **bad}
    with pytest.raises(InputError, match=match):
        model.predict(**obs)


def test_state_as_joint_name_map(backbones):
    model = attach(randomize(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl"))), backbones)
    space = model.action_space
    vec = np.linspace(-0.3, 0.3, space.dim).astype(np.float32)
    by_name = {f"{n}_joint": float(v) for n, v in zip(space.names, vec, strict=True)}
    a = model.predict(image=scene(), instruction="wave", state=vec).actions
    b = model.predict(image=scene(), instruction="wave", state=dict(reversed(list(by_name.items())))).actions
    assert np.allclose(a, b)


def test_predict_without_backbone_says_so():
    model = NeonVLA(tiny_config("neon-tiny/qwen2.5-vl"))
    with pytest.raises(RuntimeError, match="load_backbone"):
        model.predict(image=scene(), instruction="wave", state=np.zeros(28))


@pytest.mark.parametrize("name", sorted(TARGET_PARAMS))
def test_trainable_parameter_counts_match_the_design(name):
    total = count_parameters(get_model_config(name))["total"]
    target = TARGET_PARAMS[name]
    assert abs(total / target - 1) <= 0.15, f"{name}: {total / 1e6:.2f}M vs design {target / 1e6:.1f}M"


def test_counting_matches_a_real_instantiation():
    cfg = get_model_config("edge_3b")
    model = NeonVLA(cfg)
    assert count_parameters(cfg)["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_config_json_round_trip_and_validation(tmp_path):
    from neon.config import ConfigError, NeonConfig

    cfg = get_model_config("g1_omnimodal")
    assert NeonConfig.from_dict(json.loads(cfg.to_json())).to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="fusion_heads: must divide fusion_dim=512"):
        NeonConfig(fusion_heads=7).validate()
    with pytest.raises(ConfigError, match="control_mode"):
        NeonConfig(control_mode="legs").validate()
    with pytest.raises(ConfigError, match="unknown config field.*mlp_hiden"):
        NeonConfig.from_dict({**cfg.to_dict(), "mlp_hiden": 3})
    with pytest.raises(ConfigError, match="action_softcap"):
        NeonConfig(action_softcap=1.0).validate()


def test_replacing_a_checkpoint_swaps_it_in_one_step(checkpoint, monkeypatch):
    """The new checkpoint takes the old one's place in one atomic exchange: there is no moment without either."""
    import neon.files as ck  # where atomic_directory lives

    model, ckpt = checkpoint
    old_weights = (ckpt / WEIGHTS_FILE).read_bytes()
    real_replace = ck.os.replace

    def replace(src, dst):  # moving the old checkpoint aside first would leave `ckpt` missing for a moment
        assert Path(dst) != ckpt, "the old checkpoint was moved aside"
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", replace)
    randomize(model, seed=5).save_pretrained(ckpt)
    assert (ckpt / WEIGHTS_FILE).read_bytes() != old_weights
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"]  # the old version is gone
    NeonVLA.from_pretrained(ckpt)
    monkeypatch.setattr(ck, "_exchange", lambda a, b: False)  # a kernel without renameat2: the fallback still works
    monkeypatch.setattr(ck.os, "replace", real_replace)
    randomize(model, seed=6).save_pretrained(ckpt)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"] and NeonVLA.from_pretrained(ckpt)


# ---------------------------------------------------------------------------------------------- backbone features

def test_grid_features_get_learned_positions_and_other_poolings_none():
    """Grid pooling adds a row and a column embedding (grid_size x d each) and one per text bin, nothing else."""
    cfg = tiny_config("neon-tiny/qwen2.5-vl")
    assert (cfg.backbone.pooling, cfg.backbone.hidden_layer, cfg.backbone.num_tokens) == ("grid", 1, 68)
    grid = NeonVLA(cfg)
    cfg.backbone.pooling = "tokens"
    tokens = NeonVLA(cfg)
    extra = {k: tuple(v.shape) for k, v in grid.state_dict().items() if k not in tokens.state_dict()}
    assert extra == {"fusion.row_embed": (8, 64), "fusion.col_embed": (8, 64), "fusion.text_embed": (4, 64)}
    x = grid.inputs(collate([NeonPolicy(grid).observation(image=scene(), instruction="wave", state=np.zeros(28))], 28),
                    lambda batch, keys: (torch.zeros(1, 16, 64), torch.zeros(1, 64), torch.zeros(1, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"vl_tokens: 68 grid and text tokens expected \(8x8 \+ 4\), got 16"):
        grid(x)


def test_checkpoint_from_before_grid_features_loads_and_predicts_identically(backbones, tmp_path):
    """A config.json as every checkpoint before grid pooling wrote it (hidden_layer -1, pooling "tokens", no
    grid_size/text_tokens) loads with the same parameters and reads the backbone as it did: identical chunks."""
    from neon.checkpoint import write_manifest

    cfg = tiny_config("neon-tiny/qwen2.5-omni")
    cfg.backbone.hidden_layer, cfg.backbone.pooling = -1, "tokens"
    model = attach(randomize(NeonVLA(cfg)), backbones)
    ckpt = model.save_pretrained(tmp_path / "old")
    config = json.loads((ckpt / "config.json").read_text())
    for name in ("grid_size", "text_tokens"):
        del config["backbone"][name]
    (ckpt / "config.json").write_text(json.dumps(config))
    write_manifest(ckpt, trained_steps=0)
    loaded = attach(NeonVLA.from_pretrained(ckpt), backbones)
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert not any("row_embed" in k or "text_embed" in k for k in loaded.state_dict())
    assert (loaded.backbone.cfg.hidden_layer, loaded.backbone.cfg.num_tokens, loaded.backbone.info.layers_kept) == (
        -1, 16, 2)
    obs = {k: v for k, v in full_obs(model).items() if k in ("image", "instruction", "state")}
    assert np.array_equal(loaded.predict(**obs).actions, model.predict(**obs).actions)


# ---------------------------------------------------------------------------------------------- prefix conditioning

def test_prefix_options_validate_and_default_off():
    from neon.config import ConfigError, NeonConfig

    assert NeonConfig().prefix_max_steps == 0 and "prefix" not in count_parameters(NeonConfig())
    with pytest.raises(ConfigError, match=r"prefix_max_steps: must be in 0..num_action_steps-1=15"):
        NeonConfig(prefix_max_steps=16).validate()
    with pytest.raises(ConfigError, match="prefix_probability"):
        NeonConfig(prefix_max_steps=4, prefix_probability=1.5).validate()
    old = {k: v for k, v in NeonConfig().to_dict().items() if not k.startswith("prefix_")}
    assert NeonConfig.from_dict(old).prefix_max_steps == 0  # a config.json from before the option: off
    assert get_model_config("edge_3b").prefix_max_steps == 8 and get_model_config("large_arms").prefix_max_steps == 0


def test_checkpoint_from_before_prefixes_loads_and_predicts_identically(backbones, tmp_path):
    """A config.json without the prefix fields (as every checkpoint before them) loads with the same modules and
    gives bit-identical chunks, with no prefix and with an empty one."""
    from neon.checkpoint import write_manifest

    model = attach(randomize(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", use_lidar=True))), backbones)
    ckpt = model.save_pretrained(tmp_path / "old")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({k: v for k, v in config.items() if not k.startswith("prefix_")}))
    write_manifest(ckpt, trained_steps=0)
    loaded = attach(NeonVLA.from_pretrained(ckpt), backbones)
    assert loaded.prefix is None and list(loaded.state_dict()) == list(model.state_dict())
    obs = full_obs(model)
    obs = {k: obs[k] for k in ("image", "instruction", "state", "lidar")}
    want = model.predict(**obs).actions
    assert np.array_equal(loaded.predict(**obs).actions, want)
    assert np.array_equal(loaded.predict(**obs, prefix=np.zeros((0, 28))).actions, want)
    assert np.array_equal(loaded.predict(**obs, prefix=[]).actions, want)


def committed(space, state, d, seed=0):
    """d joint targets near `state`, inside the limits: steps a robot could have committed to."""
    rng = np.random.default_rng(seed)
    return np.clip(state + np.cumsum(rng.normal(0, 0.02, (d, space.dim)), axis=0), space.lower, space.upper).astype(
        np.float32)


def test_predict_with_a_prefix_returns_the_committed_steps_then_continues(backbones):
    model = attach(randomize(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", prefix_max_steps=6))), backbones)
    space, policy = model.action_space, NeonPolicy(model)
    obs = {k: full_obs(model)[k] for k in ("image", "instruction", "state")}
    seen = []
    run_heads = policy.run_heads
    policy.run_heads = lambda x: (seen.append(x), run_heads(x))[1]
    prefix = committed(space, obs["state"], 3)
    out = policy.predict(**obs, prefix=prefix)
    assert out.actions.shape == (16, space.dim) and out.committed_steps == 3
    assert np.array_equal(out.actions[:3], prefix)  # the committed steps, exactly as given
    # The heads got them in their own target representation: relative to the same state, z-scored, zeros after d.
    x = seen[-1]
    want = model.transform.encode(torch.from_numpy(prefix)[None], torch.from_numpy(obs["state"])[None])
    assert x.prefix.shape == (1, 6, space.dim) and x.prefix_len.tolist() == [3]
    assert torch.allclose(x.prefix[0, :3], want[0], atol=1e-6) and not x.prefix[0, 3:].any()
    other = policy.predict(**obs, prefix=committed(space, obs["state"], 3, seed=1))
    assert not np.allclose(other.actions[3:], out.actions[3:])  # the continuation depends on the prefix
    plain = policy.predict(**obs)
    assert plain.committed_steps == 0 and np.array_equal(policy.predict(**obs, prefix=[]).actions, plain.actions)
    # A batch with different d (and none) gives each sample what it gets alone.
    prefixes = [committed(space, obs["state"], 2), None, committed(space, obs["state"], 6, seed=2)]
    batch = policy.predict_batch([policy.observation(**obs, prefix=p) for p in prefixes])
    for p, got in zip(prefixes, batch, strict=True):
        assert np.allclose(got.actions, policy.predict(**obs, prefix=p).actions, atol=1e-5)
    for bad, match in ((committed(space, obs["state"], 7), "prefix has 7 steps.*prefix_max_steps=6"),
                       (np.zeros((3, 27)), r"prefix must be d x 28 .*got shape \(3, 27\)"),
                       (np.zeros(28), r"got shape \(28,\)"),
                       (np.full((2, 28), np.nan), r"prefix holds NaN or Inf at step\(s\) \[0, 1\]")):
        with pytest.raises(InputError, match=match):
            policy.predict(**obs, prefix=bad)
    plain_model = attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl")), backbones)
    with pytest.raises(InputError, match=r"not trained with committed steps \(prefix_max_steps=0\)"):
        plain_model.predict(**obs, prefix=prefix)


def test_untrained_prefix_heads_hold_the_last_committed_step(backbones):
    """Fresh heads predict no change: with a prefix, from where the committed steps leave the robot."""
    model = attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", prefix_max_steps=4)), backbones)
    state = ((model.action_space.lower + model.action_space.upper) / 2).astype(np.float32)
    prefix = committed(model.action_space, state, 4)
    out = model.predict(image=scene(), instruction="wave", state=state, prefix=prefix)
    assert np.array_equal(out.actions[:4], prefix)
    assert np.allclose(out.actions[4:], np.broadcast_to(prefix[-1], (12, len(state))), atol=1e-5)
    assert np.allclose(model.predict(image=scene(), instruction="wave", state=state).actions, state, atol=1e-5)


def test_heads_refuse_a_tiny_backbone_build_they_were_not_trained_on(tmp_path):
    """A re-pretrained scenes backbone (or a rebuilt tiny one) gives other features: a checkpoint records the build
    its heads were trained on, and loading it onto another build is refused, naming both."""
    from neon.backbones.tiny import tiny_build

    model = randomize(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl"))).load_backbone()
    assert model.backbone_build == tiny_build("neon-tiny/qwen2.5-vl")
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["backbone_build"] == model.backbone_build
    NeonVLA.from_pretrained(ckpt).load_backbone()  # the same build: loads
    manifest["backbone_build"] = "0" * 16  # trained on another build of the same id
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    other = NeonVLA.from_pretrained(ckpt)
    with pytest.raises(CheckpointError, match=f"trained on build 0{{16}} of neon-tiny/qwen2.5-vl, but this machine "
                                              f"has build {model.backbone_build}"):
        other.load_backbone()
    del manifest["backbone_build"]  # a checkpoint from before builds were recorded: loads as before
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    assert NeonVLA.from_pretrained(ckpt).load_backbone().backbone_build == model.backbone_build
