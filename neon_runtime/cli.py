"""`neon-serve`: serve a Neon checkpoint over HTTP and WebSocket.

    neon-serve                                   # the embedded default: tiny offline backbone, trained locally once
    neon-serve --model you/neon-g1-v1 --host 0.0.0.0 --token "$NEON_TOKEN"
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("neon.serve")

DEFAULT_VERSION = 1
DEFAULT_BACKBONE = "neon-tiny/qwen2.5-omni"
DEFAULT_TRAIN_STEPS = 150


def default_checkpoint(progress: bool = True) -> tuple[Path, str]:
    """The embedded default checkpoint: built on first use, then cached. Returns (folder, what it is)."""
    from neon.backbones.tiny import cache_root

    root = cache_root() / "default"
    target = root / f"tiny-omni-arms-v{DEFAULT_VERSION}"
    note_file = target / "NEON_DEFAULT.txt"
    if note_file.is_file():
        return target, note_file.read_text().strip()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
        from neon.data.synthetic import SynthConfig, generate

        data = generate(tmp / "synth", SynthConfig(episodes=64, length=40, image_size=64), progress=False)
        out = tmp / "run"
        note = None
        if importlib.util.find_spec("neon_train") is not None:
            log.info("embedded default: training heads on the synthetic G1 dataset (%d steps, once)", DEFAULT_TRAIN_STEPS)
            # A separate process: the runtime never imports the trainer.
            cmd = [sys.executable, "-m", "neon_train.cli", "--backbone", DEFAULT_BACKBONE, "--mode", "arms_only",
                   "--dataset", str(data), "--max-steps", str(DEFAULT_TRAIN_STEPS), "--batch-size", "16",
                   "--grad-accum", "1", "--lr", "3e-3", "--workers", "0", "--eval-steps", "50", "--no-push",
                   "--output", str(out), "--cache-dir", str(tmp / "features")]
            r = subprocess.run(cmd, capture_output=not progress, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if r.returncode == 0 and (out / "best" / "config.json").is_file():
                note = (f"embedded default: offline tiny Qwen2.5-Omni backbone, heads trained for {DEFAULT_TRAIN_STEPS} "
                        "steps on Neon's synthetic G1 dataset (arms_only, seed 0); a plumbing demo, not a robot policy")
                src = out / "best"
            else:
                log.warning("embedded default: training failed (exit %s); serving freshly initialised heads", r.returncode)
        if note is None:
            from neon.action_space import G1ActionSpace
            from neon.data.sources import LeRobotSource
            from neon.data.stats import norm_stats_for
            from neon.model import NeonVLA
            from neon.presets import model_config

            space = G1ActionSpace("arms_only")
            stats, _ = norm_stats_for([LeRobotSource(str(data), space, 16)], space, cache_dir=tmp / "stats")
            src = tmp / "fresh"
            NeonVLA(model_config(DEFAULT_BACKBONE, "arms_only"), stats).save_pretrained(src)
            note = ("embedded default: offline tiny Qwen2.5-Omni backbone with freshly initialised heads (the trainer "
                    "is not installed): every chunk is the synthetic data's mean action")
        (src / "NEON_DEFAULT.txt").write_text(note + "\n")
        staged = root / f".{target.name}.staged"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(src, staged)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staged, target)
    return target, note


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
                   "(default: $NEON_TOKEN)")
    p.add_argument("--heads", choices=["torch", "onnx"], default=None, help="default torch (onnx with --profile edge_3b)")
    p.add_argument("--max-batch", type=int, default=None, help="default 8")
    p.add_argument("--max-wait-ms", type=float, default=None, help="default 5")
    p.add_argument("--profile", choices=["edge_3b"], help="a deployment profile (see neon_runtime/profiles.py)")
    p.add_argument("--max-memory-gb", type=float, help="refuse to serve when peak memory after warm-up is above this")
    p.add_argument("--mic", choices=["none", "sounddevice", "udp"], default="none",
                   help="fill requests that carry no audio from a local microphone (PortAudio) or the G1's PCM stream")
    p.add_argument("--mic-device", help="PortAudio input device name or index")
    p.add_argument("--mic-group", default="239.168.123.161", help="multicast group of the PCM stream ('' = unicast)")
    p.add_argument("--mic-port", type=int, default=5555)
    p.add_argument("--max-obs-age", type=float, default=0.5, help="refuse observations older than this (s)")
    p.add_argument("--max-joint-velocity", type=float, default=2.0, help="rad/s limit applied to every chunk")
    p.add_argument("--dry-run", action="store_true", help="mark every chunk as not executable")
    p.add_argument("--device")
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
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

    from neon.backbones.loader import HubUnavailableError
    from neon.checkpoint import CheckpointError
    from neon.model import NeonVLA
    from neon_runtime.policy import PolicyRunner
    from neon_runtime.safety import SafetyConfig
    from neon_runtime.server import Metrics, ServerSettings, create_app, warm_up

    note = ""
    try:
        if args.model:
            path = args.model
            model = NeonVLA.from_pretrained(path)
        else:
            folder, note = default_checkpoint()
            path = str(folder)
            model = NeonVLA.from_pretrained(folder)
            log.info("%s (%s)", note, folder)
        model.load_backbone(args.device)
        if profile and model.config.backbone.model_id != profile["expected_backbone"]:
            log.warning("profile %s expects %s, the model uses %s", args.profile, profile["expected_backbone"],
                        model.config.backbone.model_id)
        if heads == "onnx":
            from neon.model import resolve_checkpoint
            from neon_runtime.onnx_heads import use_onnx_heads

            use_onnx_heads(model, resolve_checkpoint(path, None))
    except (CheckpointError, HubUnavailableError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    safety = SafetyConfig(max_joint_velocity=args.max_joint_velocity, max_observation_age_s=args.max_obs_age,
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
    runner = PolicyRunner(model, safety, max_batch, max_wait, metrics, source=path)
    settings = ServerSettings(token=args.token, default_model_note=note, audio_source=mic.ring if mic else None,
                              profile=args.profile or "")
    app = create_app(runner, settings, metrics)
    warm_up(runner)
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


if __name__ == "__main__":
    sys.exit(main())
