"""The static-shape encode path (neon/backbones/static.py): the eager path's features, with every shape fixed ahead."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import scene
from PIL import Image

from neon.backbones.static import BATCH_BUCKETS
from neon.config import BackboneConfig, ConfigError

TINY = ["neon-tiny/qwen2.5-vl", "neon-tiny/qwen2.5-omni"]
# Different lengths: the prompts land in different buckets and pad differently within a batch.
INSTRUCTIONS = ["touch the red block", "with the left hand, touch the blue block that is nearest to the robot", "go"]


def _pair(backbones, model_id, **overrides):
    eager = backbones(BackboneConfig(model_id=model_id, load_in_4bit=False, **overrides))
    static = backbones(BackboneConfig(model_id=model_id, load_in_4bit=False, encode="static", **overrides))
    return eager, static


def _images(n, seed=0):
    return [scene(seed + i, 224, 224) for i in range(n)]


@pytest.mark.parametrize("model_id", TINY)
def test_static_features_equal_eager_for_a_mixed_batch_and_one_sample(backbones, model_id):
    eager, static = _pair(backbones, model_id)
    assert static.static is not None and eager.static is None
    images = _images(3)
    want, got = eager.encode(images, INSTRUCTIONS), static.encode(images, INSTRUCTIONS)
    assert got.shape == want.shape == (3, static.cfg.num_tokens, static.hidden_size)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    one = static.encode(images[1:2], INSTRUCTIONS[1:2])  # batch 1: its own plan, no padding sample
    assert torch.allclose(one, want[1:2], atol=1e-5)
    other = static.encode(_images(1, seed=7), INSTRUCTIONS[1:2])  # the features still follow the image
    assert (other - one).abs().max() > 1e-2


def test_static_follows_the_old_poolings_and_a_non_square_camera(backbones):
    for pooling in ("tokens", "mean"):
        eager, static = _pair(backbones, "neon-tiny/qwen2.5-vl", pooling=pooling, hidden_layer=-1)
        images = [scene(3, 120, 160), scene(4, 224, 224)]  # a 160x120 frame is resized as the eager path does
        want, got = eager.encode(images, INSTRUCTIONS[:2]), static.encode(images, INSTRUCTIONS[:2])
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), pooling


def test_patchify_lays_pixels_out_as_qwens_image_processor(backbones):
    static = backbones(BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=False, encode="static"))
    images = _images(2, seed=11)
    want = static.processor.image_processor(images=[Image.fromarray(im) for im in images],
                                            return_tensors="pt")["pixel_values"]
    got = static.static.patchify(torch.from_numpy(np.stack(images)))
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_batches_pad_to_a_bucket_and_plans_are_cached(backbones):
    static = backbones(BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=False, encode="static")).static
    out = static.encode(_images(3), INSTRUCTIONS)
    assert out.shape[0] == 3
    assert 4 in BATCH_BUCKETS and (*INSTRUCTIONS, INSTRUCTIONS[-1]) in static._plans  # one plan for the bucket of 4
    prompt = static._prompt(INSTRUCTIONS[1])
    assert prompt.embeds.shape[1] % static.prompt_bucket == 0 and prompt.length <= prompt.embeds.shape[1]
    plans = len(static._plans)
    static.encode(_images(3, seed=5), INSTRUCTIONS)  # new pixels, same instructions: no new plan
    assert len(static._plans) == plans


def test_one_sdpa_per_layer_equals_the_masked_block_diagonal_form(backbones):
    """At 224 px every window has the same length: the batched form is used; it equals the general masked form."""
    static = backbones(BackboneConfig(model_id="neon-tiny/qwen2.5-omni", load_in_4bit=False, encode="static"))
    attns = [blk.attn for blk in static.static.visual.blocks]
    assert all(a.equal_segments for a in attns)
    images = _images(2, seed=3)
    batched = static.encode(images, INSTRUCTIONS[:2])
    try:
        for a in attns:
            a.equal_segments = False
        masked = static.encode(images, INSTRUCTIONS[:2])
    finally:
        for a in attns:
            a.equal_segments = True
    assert torch.allclose(batched, masked, atol=1e-5)


def test_static_encode_dispatches_fewer_operators(backbones):
    """The figure that stands in for GPU launches (bench/bench_encode_ops.py prints it): it must fall."""
    from torch.profiler import ProfilerActivity, profile

    eager, static = _pair(backbones, "neon-tiny/qwen2.5-vl")
    image = _images(1)
    counts = {}
    for name, bb in (("eager", eager), ("static", static)):
        bb.encode(image, INSTRUCTIONS[:1])  # plans made
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            bb.encode(image, INSTRUCTIONS[:1])
        counts[name] = sum(e.name.startswith("aten::") for e in prof.events())
    assert counts["static"] < 0.85 * counts["eager"], counts


def test_the_static_encode_traces_as_one_graph_without_breaks(backbones):
    """What CUDA-graph capture needs: dynamo sees the whole per-call function as one graph (no host syncs)."""
    static = backbones(BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=False, encode="static")).static
    plan = static._plan((INSTRUCTIONS[0],))
    pixels = static.patchify(torch.from_numpy(np.stack(_images(1))))
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(static._features)(pixels, plan.embeds, plan.attention_mask,
                                                           plan.position_ids, plan.image_at, plan.pool,
                                                           static._vision_kwargs(1))
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_static_settings_are_checked():
    with pytest.raises(ConfigError, match="backbone.encode"):
        BackboneConfig(model_id="neon-tiny/qwen2.5-vl", encode="fast").validate()
    with pytest.raises(ConfigError, match="qwen3_vl"):  # Cosmos-Reason2 keeps the eager path
        BackboneConfig(model_id="nvidia/Cosmos-Reason2-2B", encode="static").validate()
    with pytest.raises(ConfigError, match="backbone.compile_mode"):
        BackboneConfig(model_id="neon-tiny/qwen2.5-vl", compile_mode="reduce-overhead").validate()
    with pytest.raises(ConfigError, match="backbone.prompt_bucket"):
        BackboneConfig(model_id="neon-tiny/qwen2.5-vl", encode="static", prompt_bucket=0).validate()
    cfg = BackboneConfig(model_id="neon-tiny/qwen2.5-vl", encode="static", compile_mode="reduce-overhead")
    cfg.validate()
    assert dataclasses.asdict(cfg)["encode"] == "static"


def test_old_configs_load_with_the_eager_path():
    from neon.config import NeonConfig

    data = NeonConfig().to_dict()
    for key in ("encode", "prompt_bucket", "compile_mode"):
        data["backbone"].pop(key)
    cfg = NeonConfig.from_dict(data)
    assert (cfg.backbone.encode, cfg.backbone.compile_mode) == ("eager", "none")


def test_the_heads_trace_as_one_graph_and_compiled_give_the_same_chunk(backbones):
    """The chunk's heads pass and the two-rate tick: one graph (what CUDA-graph capture needs), same actions."""
    from conftest import attach, random_weights, tiny_config

    from neon.model import NeonVLA
    from neon.observation import collate
    from neon.policy import NeonPolicy
    from neon.predictor import compiled_heads

    model = attach(random_weights(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl"))), backbones)
    policy = NeonPolicy(model)
    inputs = model.inputs(collate([policy.observation(**policy.example())], model.action_space.dim), model.features())
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(inputs)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        torch._dynamo.reset()
        want = model(inputs)[0]
        got = NeonPolicy(model, heads=compiled_heads(model, "default")).run_heads(inputs)[0]
    torch._dynamo.reset()
    assert want.abs().max() > 1e-3 and torch.allclose(got, want, atol=1e-5)


def test_neon_serve_serves_the_static_path_and_keeps_it_across_a_reload(tmp_path, capsys):
    from conftest import as_trained, random_weights, tiny_config

    from neon.model import NeonVLA
    from neon.policy import NeonPolicy
    from neon_runtime.cli import _load_policy, build_parser
    from neon_runtime.cli import main as serve_main
    from neon_runtime.policy import LocalPolicy
    from neon_runtime.safety import SafetyConfig

    for seed, name in ((1, "v1"), (2, "v2")):
        as_trained(random_weights(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl")), seed)).save_pretrained(tmp_path / name)
    args = build_parser().parse_args(["--model", str(tmp_path / "v1"), "--encode", "static", "--device", "cpu"])
    policy, _, _ = _load_policy(args, {}, "torch")
    assert policy.model.backbone.static is not None
    eager = NeonPolicy(NeonVLA.from_pretrained(tmp_path / "v1").load_backbone("cpu"))
    example = policy.example()
    assert eager.model.backbone.static is None
    assert np.allclose(policy.predict(**example).actions, eager.predict(**example).actions, atol=1e-4)
    reloaded = LocalPolicy(policy, SafetyConfig()).reloaded(tmp_path / "v2", device="cpu")
    assert reloaded.policy.model.config.backbone.encode == "static"  # the deployment's choice, not the checkpoint's
    assert reloaded.policy.model.backbone is policy.model.backbone  # same backbone settings: reused
    # Refused with a reason: compiling without the static path, and compiled heads with ONNX heads.
    assert serve_main(["--model", str(tmp_path / "v1"), "--compile-mode", "default"]) == 2
    assert "backbone.compile_mode" in capsys.readouterr().err
    assert serve_main(["--model", str(tmp_path / "v1"), "--encode", "static", "--compile-mode", "default",
                       "--heads", "onnx"]) == 2
    assert "--heads onnx" in capsys.readouterr().err


def test_the_prompt_and_plan_caches_stay_bounded(backbones, monkeypatch):
    """A client sending a new instruction each time must not grow the server's memory without bound."""
    from neon.backbones import static as static_module

    monkeypatch.setattr(static_module, "_MAX_PROMPTS", 3)
    monkeypatch.setattr(static_module, "_MAX_PLANS", 2)
    static = backbones(BackboneConfig(model_id="neon-tiny/qwen2.5-vl", load_in_4bit=False, encode="static")).static
    image = _images(1)
    for i in range(5):
        static.encode(image, [f"touch block {i}"])
    assert len(static._prompts) <= 3 and len(static._plans) <= 2
    assert "touch block 4" in static._prompts and "touch block 0" not in static._prompts
