"""`neon` command: inspect presets and run the model end to end.

    neon info --preset default_arms_only     trainable parameters per module (no download)
    neon info --all                          every preset against the design's counts
    neon demo                                one predict() on the offline tiny backbone
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _describe_features(bb) -> str:
    """What the heads read from the backbone: the layer, how many layers load, and the tokens."""
    n = bb.spec.num_layers
    layer = f"the last hidden layer (of {n})" if bb.hidden_layer in (-1, n) else f"hidden layer {bb.hidden_layer} of {n}"
    tokens = {"grid": f"{bb.grid_size}x{bb.grid_size} image grid + {bb.text_tokens} text bins",
              "tokens": f"{bb.token_budget} bins over all tokens", "mean": "the mean of all tokens"}[bb.pooling]
    return f"{bb.num_tokens} tokens ({tokens}) from {layer}; {bb.layers_run} language-model layers loaded"


PRECISION_WORDS = {"auto": "bf16 where the GPU holds it, else nf4", "nf4": "nf4", "dense": "dense: bf16 on a GPU"}


def cmd_info(args: argparse.Namespace) -> int:
    from neon.config import precision_name
    from neon.model import count_parameters
    from neon.presets import NAMED_MODEL_CONFIGS, TARGET_PARAMS, get_model_config, grid_model_configs

    if args.all:
        names = list(NAMED_MODEL_CONFIGS) + list(grid_model_configs())
        print(f"{'preset':34s} {'backbone':30s} {'mode':10s} {'trainable':>10s} {'design':>8s}")
        for name in names:
            cfg = get_model_config(name)
            total = count_parameters(cfg)["total"]
            target = TARGET_PARAMS.get(name)
            extra = f"{target / 1e6:7.1f}M ({100 * (total / target - 1):+.1f}%)" if target else ""
            print(f"{name:34s} {cfg.backbone.model_id:30s} {cfg.control_mode:10s} {_fmt_params(total):>10s} {extra}")
        return 0
    try:
        cfg = get_model_config(args.preset)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    counts = count_parameters(cfg)
    spec = cfg.backbone.spec
    space = cfg.action_space()
    precision = PRECISION_WORDS[precision_name(cfg.backbone.load_in_4bit)]
    print(f"preset {args.preset}: backbone {spec.model_id} (hidden {spec.hidden_size}, "
          f"{'native' if spec.native_audio else 'Whisper'} audio, frozen, {precision})")
    print(f"  {space.describe()}, {cfg.num_action_steps}-step chunks at {cfg.fps:g} fps")
    print(f"  features: {_describe_features(cfg.backbone)}")
    print(f"  fusion_dim={cfg.fusion_dim} mlp_hidden={cfg.mlp_hidden} action_head_layers={cfg.action_head_layers} "
          f"proprioception_hidden={cfg.proprioception_hidden} audio={cfg.use_audio} lidar={cfg.use_lidar} eef={cfg.use_eef}")
    print("  trainable parameters:")
    for name, n in counts.items():
        print(f"    {name:18s} {n:>12,d}  {_fmt_params(n):>8s}")
    target = TARGET_PARAMS.get(args.preset)
    if target:
        print(f"  design: {target / 1e6:.1f}M ({100 * (counts['total'] / target - 1):+.1f}%)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from neon.model import NeonVLA
    from neon.policy import NeonPolicy
    from neon.presets import model_config

    t0 = time.perf_counter()
    if args.checkpoint:
        model = NeonVLA.from_pretrained(args.checkpoint)
        source = f"checkpoint {args.checkpoint}"
    else:
        model = NeonVLA(model_config(args.backbone, args.mode, use_audio=args.audio, use_lidar=args.lidar,
                                     use_eef=args.eef))
        source = "freshly initialised heads (zero output layers: the chunk is the stats' mean action)"
    model.load_backbone()
    load_s = time.perf_counter() - t0
    cfg, space = model.config, model.action_space
    print(f"Neon demo: backbone {cfg.backbone.model_id} ({model.backbone.info.dtype}, "
          f"4-bit={model.backbone.info.quantized_4bit}, {model.backbone.info.device}), {source}")
    print(f"  {space.describe()}; trainable {_fmt_params(model.parameter_counts()['total'])}; loaded in {load_s:.1f} s")

    policy = NeonPolicy(model)
    obs = policy.example(args.instruction)  # a red block on a table; every sensor the model uses
    policy.predict(**obs)  # warm-up
    results = [policy.predict(**obs) for _ in range(args.runs)]
    r = results[-1]
    print(f"\ninstruction: {args.instruction!r}  ->  speech: {r.speech!r} (p={r.speech_confidence:.2f})")
    print(f"action chunk: {r.actions.shape[0]} steps x {r.actions.shape[1]} dims at {r.fps:g} fps (rad; first 8 joints)")
    shown = r.joint_names[:8]
    print("  step " + " ".join(f"{n[:11]:>11s}" for n in shown))
    for t, row in enumerate(r.actions):
        print(f"  {t:4d} " + " ".join(f"{v:11.4f}" for v in row[:8]))
    inside = bool(((r.actions >= space.lower - 1e-6) & (r.actions <= space.upper + 1e-6)).all())
    print(f"all {r.actions.size} values inside joint limits: {inside}")
    print(f"\ntimings over {args.runs} run(s), ms (median / max):")
    for stage in r.timings_ms:
        vals = [x.timings_ms[stage] for x in results]
        print(f"  {stage:12s} {np.median(vals):9.2f} {max(vals):9.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neon", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="trainable parameters per module for a preset (never downloads a backbone)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="e.g. default_arms_only, edge_3b, large_wholebody, omni7b_arms_only_standard")
    g.add_argument("--all", action="store_true", help="every preset, against the design's published counts")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="load a model and run predict() once per --runs, printing the chunk and timings")
    p.add_argument("--backbone", default="neon-tiny/qwen2.5-omni", help="backbone id (default: offline tiny Omni)")
    p.add_argument("--mode", default="arms_only", choices=["arms_only", "whole_body"])
    p.add_argument("--checkpoint", help="a Neon checkpoint folder or Hub repo id instead of fresh heads")
    p.add_argument("--instruction", default="pick up the red cup")
    p.add_argument("--audio", action="store_true", help="enable the audio path (a 1 s 440 Hz tone is sent)")
    p.add_argument("--lidar", action="store_true", help="enable the LiDAR encoder (2048 random points are sent)")
    p.add_argument("--eef", action="store_true", help="enable the end-effector encoder")
    p.add_argument("--runs", type=int, default=5)
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BrokenPipeError:  # `neon info --all | head`: the reader has gone, which is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except Exception as e:  # a clear one-line error for the expected failures
        from neon.checkpoint import CheckpointError
        from neon.config import ConfigError
        from neon.hub import HubUnavailableError

        if isinstance(e, (HubUnavailableError, CheckpointError, ConfigError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
