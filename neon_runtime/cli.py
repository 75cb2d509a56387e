"""`neon-serve`: serve a Neon checkpoint over HTTP and WebSocket.

    neon-serve                                   # the embedded default: tiny offline backbone, trained locally once
    neon-serve --model you/neon-g1-v1 --host 0.0.0.0 --token "$NEON_TOKEN"
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from neon.backbones.registry import COMPILE_MODES
from neon.threads import THREADS_HELP, set_threads
from neon_runtime.safety import SafetyConfig
from neon_runtime.sensors import G1_MIC_GROUP, G1_MIC_PORT

SAFE = SafetyConfig()  # the safety layer's defaults

log = logging.getLogger("neon.serve")

def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neon-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint folder or Hub repo id (default: the embedded tiny default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=os.environ.get("NEON_TOKEN"), help="required to bind beyond loopback "
                   "(default: $NEON_TOKEN); then every route but /health and /ready needs it")
    p.add_argument("--token-file", help="read the token from this file (a bare line or NEON_TOKEN=...)")
    p.add_argument("--model-root", help="POST /reload loads local checkpoints only below this folder")
    p.add_argument("--allow-hub", action="append", default=[], metavar="PATTERN",
                   help="POST /reload loads Hub ids matching this fnmatch pattern (repeatable), e.g. 'you/neon-*'")
    p.add_argument("--allow-unverified", action="store_true",
                   help="load a checkpoint without manifest.json (one Neon did not write), unverified")
    p.add_argument("--heads", choices=["torch", "onnx"], default=None, help="default torch (onnx with --profile edge_3b)")
    p.add_argument("--max-batch", type=int, default=None, help="default 8")
    p.add_argument("--max-wait-ms", type=float, default=None, help="default 5")
    p.add_argument("--profile", choices=["edge_3b"], help="a deployment profile (see neon_runtime/profiles.py)")
    p.add_argument("--max-memory-gb", type=float, help="refuse to serve when peak memory after warm-up is above this")
    p.add_argument("--mic", choices=["none", "sounddevice", "udp"], default="none",
                   help="fill requests that carry no audio from a local microphone (PortAudio) or the G1's PCM stream")
    p.add_argument("--mic-device", help="PortAudio input device name or index")
    p.add_argument("--mic-group", default=G1_MIC_GROUP, help="multicast group of the PCM stream ('' = unicast)")
    p.add_argument("--mic-port", type=int, default=G1_MIC_PORT)
    p.add_argument("--max-obs-age", type=float, default=SAFE.max_observation_age_s,
                   help="refuse observations older than this (s)")
    p.add_argument("--max-feature-age", type=float, default=SAFE.max_feature_age_s,
                   help="seconds: light requests (reuse_features) on a client's stored backbone features whose "
                   "image is older than this are refused (409); default %(default)s")
    p.add_argument("--max-feature-clients", type=int, default=64,
                   help="clients whose newest backbone features are kept for light requests (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests each lane (full; heads-only) may hold waiting; beyond it a request is answered 503 "
                        "with Retry-After (default %(default)s)")
    p.add_argument("--max-joint-velocity", type=float, default=SAFE.max_joint_velocity,
                   help="rad/s limit applied to every chunk")
    p.add_argument("--dry-run", action="store_true", help="mark every chunk as not executable")
    p.add_argument("--device")
    p.add_argument("--encode", choices=["eager", "static"], default=None,
                   help="the backbone's encode path (default: the checkpoint's, eager): static fixes prompts, rope "
                        "and window indices once (the same features, fewer operators; Qwen2.5-VL and -Omni)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="none",
                   help="torch.compile the static encode and the heads (reduce-overhead: CUDA graphs; the first "
                        "requests compile, the warm-up runs them); needs --encode static and --heads torch")
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        set_threads(args.threads)
    except ValueError as e:
        print(f"error: --{e}", file=sys.stderr)
        return 2
    if args.token_file:
        from neon_runtime.client import RemoteError, read_token

        try:
            args.token = read_token(args.token_file)
        except RemoteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if not _is_loopback(args.host) and not args.token:
        print(f"error: binding to {args.host} exposes the robot's policy to the network; pass --token "
              "(or set NEON_TOKEN)", file=sys.stderr)
        return 2
    import uvicorn

    from neon_runtime.profiles import PROFILES, memory_used_gb

    profile = PROFILES.get(args.profile, {}) if args.profile else {}
    heads = args.heads or profile.get("heads", "torch")
    max_batch = args.max_batch or profile.get("max_batch", 8)
    max_wait = args.max_wait_ms if args.max_wait_ms is not None else profile.get("max_wait_ms", 5.0)
    budget = args.max_memory_gb or profile.get("max_memory_gb")

    from neon.checkpoint import CheckpointError
    from neon.config import ConfigError
    from neon.hub import HubUnavailableError
    from neon_runtime.default_model import DefaultModelError
    from neon_runtime.policy import LocalPolicy, PolicyRunner
    from neon_runtime.server import Metrics, ServerSettings, create_app

    if args.compile_mode != "none" and heads != "torch":
        print(f"error: --compile-mode captures the torch heads; it cannot be used with --heads {heads}",
              file=sys.stderr)
        return 2
    try:
        policy, path, note = _load_policy(args, profile, heads)
    except (CheckpointError, ConfigError, HubUnavailableError, FileNotFoundError, DefaultModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    safety = SafetyConfig(max_joint_velocity=args.max_joint_velocity, max_observation_age_s=args.max_obs_age,
                          max_feature_age_s=args.max_feature_age,
                          dry_run=args.dry_run)
    metrics = Metrics()
    mic = None
    if args.mic != "none":
        from neon_runtime.sensors import SensorError, SoundDeviceMic, UdpPcmMic

        try:
            mic = (SoundDeviceMic(args.mic_device) if args.mic == "sounddevice"
                   else UdpPcmMic(args.mic_group or None, args.mic_port))
        except SensorError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.max_queue < 1:
        print(f"error: --max-queue must be >= 1, got {args.max_queue}", file=sys.stderr)
        return 2
    runner = PolicyRunner(LocalPolicy(policy, safety, source=path), max_batch, max_wait, metrics,
                          args.max_feature_clients, args.max_queue)
    settings = ServerSettings(token=args.token, default_model_note=note, audio_source=mic.ring if mic else None,
                              profile=args.profile or "", model_root=args.model_root, allow_hub=tuple(args.allow_hub),
                              device=args.device)
    app = create_app(runner, settings, metrics)
    runner.warm_up()
    used, how = memory_used_gb()
    log.info("memory after warm-up: %.2f GB (%s)%s", used, how, f", budget {budget} GB" if budget else "")
    if budget and used > budget:
        print(f"error: {used:.2f} GB ({how}) after warm-up is over the {budget} GB budget", file=sys.stderr)
        runner.close()
        return 2
    log.info("ready: http://%s:%d/predict, ws://%s:%d/ws (docs at /docs)", args.host, args.port, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, ws_per_message_deflate=False)
    runner.close()
    return 0


def _load_policy(args, profile: dict, heads: str):
    """The policy to serve: --model, or the embedded default (built and cached on first use). -> (NeonPolicy, its
    path, a note for /metadata)."""
    from neon.model import NeonVLA
    from neon.policy import NeonPolicy
    from neon.predictor import compiled_heads
    from neon_runtime.default_model import default_checkpoint
    from neon_runtime.policy import serve_backbone_as

    note = ""
    if args.model:
        path = args.model
    else:
        folder, note = default_checkpoint()
        path = str(folder)
        log.info("%s (%s)", note, folder)
    model = NeonVLA.from_pretrained(path, allow_unverified=args.allow_unverified)
    serve_backbone_as(model.config.backbone, args.encode, args.compile_mode)
    policy = NeonPolicy(model.load_backbone(args.device),
                        heads=compiled_heads(model, args.compile_mode) if args.compile_mode != "none" else None)
    if profile and policy.config.backbone.model_id != profile["expected_backbone"]:
        log.warning("profile %s expects %s, the model uses %s", args.profile, profile["expected_backbone"],
                    policy.config.backbone.model_id)
    if heads == "onnx":
        from neon_runtime.onnx_heads import OnnxHeads

        policy.heads = OnnxHeads.beside(path)
    return policy, path, note


if __name__ == "__main__":
    sys.exit(main())
