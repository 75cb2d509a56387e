"""The embedded default checkpoint: what `neon-serve` and `neon-ros` run when no model is named.

An offline tiny Qwen2.5-Omni backbone with heads trained once, on first use,
on Neon's synthetic G1 dataset (about 75 s on 2 cores), then cached in
`neon.paths.default_model_dir()`. The training runs `neon_train` in a separate
process: the runtime never imports the trainer. Without the trainer installed,
the heads stay freshly initialised (every chunk is the data's mean action).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from neon.action_space import G1ActionSpace
from neon.data.sources import LeRobotSource
from neon.data.stats import norm_stats_for
from neon.data.synthetic import SynthConfig, generate
from neon.model import NeonVLA
from neon.paths import default_model_dir
from neon.presets import model_config

log = logging.getLogger(__name__)

DEFAULT_VERSION = 1
DEFAULT_BACKBONE = "neon-tiny/qwen2.5-omni"
DEFAULT_TRAIN_STEPS = 150


def default_checkpoint(progress: bool = True) -> tuple[Path, str]:
    """The embedded default checkpoint: built on first use, then cached. Returns (folder, what it is)."""
    root = default_model_dir()
    target = root / f"tiny-omni-arms-v{DEFAULT_VERSION}"
    note_file = target / "NEON_DEFAULT.txt"
    if note_file.is_file():
        return target, note_file.read_text().strip()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
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
