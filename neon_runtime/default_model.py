"""The embedded default checkpoint: what `neon-serve` and `neon-ros` run when no model is named.

An offline tiny Qwen2.5-Omni backbone with heads trained once, on first use,
on Neon's synthetic G1 dataset (about 75 s on 2 cores; the trainer's progress
is shown), then cached in `neon.paths.default_model_dir()` in a folder named by
`DEFAULT_VERSION` and a hash of the backbone settings the trainer uses (hidden
layer, pooling, ...): when those defaults change, it is rebuilt, never reused.
The training runs `neon_train` in a separate process: the runtime never
imports the trainer.
Only a trained result is cached: when the trainer is missing or fails, the
error says why and the next start tries again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from neon.config import BackboneConfig
from neon.data.synthetic import SynthConfig, generate
from neon.paths import default_model_dir

log = logging.getLogger(__name__)

# 2: the manifest records the training steps; 3: relative actions, held-out score in the note; 4: grid features from
# the middle layer (the folder name also carries the backbone settings, see `backbone_digest`)
DEFAULT_VERSION = 4
DEFAULT_BACKBONE = "neon-tiny/qwen2.5-omni"
DEFAULT_TRAIN_STEPS = 150


class DefaultModelError(RuntimeError):
    """The embedded default could not be built; the message says why and what to do."""


def backbone_digest() -> str:
    """A short hash of the backbone settings `neon-train --backbone DEFAULT_BACKBONE` uses (its defaults)."""
    cfg = BackboneConfig(model_id=DEFAULT_BACKBONE)
    cfg.validate()
    return hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]


def default_checkpoint() -> tuple[Path, str]:
    """The embedded default checkpoint: built on first use, then cached. Returns (folder, what it is)."""
    root = default_model_dir()
    target = root / f"tiny-omni-arms-v{DEFAULT_VERSION}-{backbone_digest()}"
    note_file = target / "NEON_DEFAULT.txt"
    if note_file.is_file():
        return target, note_file.read_text().strip()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "synth", SynthConfig(episodes=64, length=40, image_size=64), progress=False)
        out = tmp / "run"
        log.warning("embedded default: training heads on the synthetic G1 dataset (%d steps, once; about 75 s on "
                    "2 cores)", DEFAULT_TRAIN_STEPS)
        # A separate process (the runtime never imports the trainer); its progress bar and errors go to stderr.
        cmd = [sys.executable, "-m", "neon_train.cli", "--backbone", DEFAULT_BACKBONE, "--mode", "arms_only",
               "--dataset", str(data), "--max-steps", str(DEFAULT_TRAIN_STEPS), "--batch-size", "16",
               "--grad-accum", "1", "--lr", "3e-3", "--workers", "0", "--eval-steps", "50", "--no-push",
               "--output", str(out), "--cache-dir", str(tmp / "features")]
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if r.returncode != 0 or not (out / "best" / "config.json").is_file():
            raise DefaultModelError(
                f"building the embedded default failed (the trainer exited {r.returncode}; its output is above). "
                "It needs the trainer: `pip install -c constraints.txt -e .[train]` (scripts/setup.sh installs it); "
                "or pass a trained checkpoint (--model / model:=). Nothing was cached.")
        # How good is it? neon-eval on the episodes the trainer held out (its split.json), against holding still.
        r = subprocess.run([sys.executable, "-m", "neon_train.eval_cli", "--model", str(out / "best"), "--dataset",
                            str(data), "--baselines", "--no-cache", "--out", str(tmp / "eval")],
                           stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if r.returncode != 0:
            raise DefaultModelError(f"evaluating the embedded default failed (neon-eval exited {r.returncode}; its "
                                    "output is above). Nothing was cached.")
        hold = json.loads((tmp / "eval" / "eval_report.json").read_text())["improvement_pct"]["hold"]["total"]
        note = (f"embedded default: offline tiny Qwen2.5-Omni backbone, heads trained for {DEFAULT_TRAIN_STEPS} "
                f"steps on Neon's synthetic G1 dataset (arms_only, seed 0), held-out chunk MSE {hold:.0f}% below "
                "holding still; a plumbing demo, not a robot policy")
        (out / "best" / "NEON_DEFAULT.txt").write_text(note + "\n")
        staged = root / f".{target.name}.staged"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(out / "best", staged)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staged, target)
    return target, note
