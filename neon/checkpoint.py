"""Checkpoints: safe tensor loading, and saving / loading a NeonVLA (atomic writes and JSON reads: `neon.files`).

A checkpoint directory is written into a temporary sibling and renamed into
place, so a crash never leaves a half-written checkpoint that loads as valid.
Nothing here unpickles: weights are safetensors; a legacy `.pt` file is read
with `torch.load(weights_only=True)`, which refuses arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from neon.files import CheckpointError, atomic_directory, atomic_write_bytes, atomic_write_text, read_json  # noqa: F401

log = logging.getLogger(__name__)


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"weights file {path} is truncated or corrupted ({path.stat().st_size} bytes): {e}"
        ) from None


def load_legacy_pt(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an old `neon_weights.pt` state dict without unpickling arbitrary objects."""
    path = Path(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        raise CheckpointError(f"legacy weights file {path} could not be read safely: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"legacy weights file {path} does not hold a flat tensor state dict")
    return state


# ---------------------------------------------------------------------------------------------- checkpoints
#
# A checkpoint folder holds config.json, action_space.json, norm_stats.json, neon_weights.safetensors and
# manifest.json (sha256 of each file), written atomically. The backbone is never part of it.

WEIGHTS_FILE = "neon_weights.safetensors"
LEGACY_WEIGHTS_FILE = "neon_weights.pt"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FORMAT = 1
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.pt", "*.onnx", "*.md"]


def resolve_checkpoint(path_or_repo: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder of a checkpoint folder or Hub repo id."""
    from neon.hub import resolve

    return resolve(str(path_or_repo), "checkpoint", revision, CHECKPOINT_FILES, error=CheckpointError)


def save_checkpoint(model, directory: str | os.PathLike, extra_files: dict[str, bytes | str] | None = None) -> Path:
    """Write a NeonVLA's config, action space, norm stats and weights into `directory`, atomically.

    `extra_files` (name -> content) land in the same atomic write, e.g. a trainer's split.json.
    """
    from safetensors.torch import save_file

    from neon import __version__
    from neon.config import CONFIG_FILE

    directory = Path(directory)
    model.record_backbone_precision()
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(model.config.to_json())
        model.action_space.save(tmp)
        model.norm_stats.save(tmp)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "neon", "neon_version": __version__})
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
        build = {"backbone_build": model.backbone_build} if model.backbone_build else {}
        write_manifest(tmp, trained_steps=model.trained_steps, **build)
    return directory


def write_manifest(directory: Path, **fields) -> None:
    """manifest.json: the sha256 of every file below `directory` (subfolders such as onnx/ included)."""
    from neon import __version__

    files = {str(p.relative_to(directory)): _sha256(p) for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != MANIFEST_FILE}
    manifest = {"format": "neon-checkpoint", "format_version": CHECKPOINT_FORMAT, "neon_version": __version__,
                **fields, "sha256": files}
    atomic_write_text(directory / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def verified_manifest(directory: Path, allow_unverified: bool = False) -> dict:
    """The checkpoint's manifest after checking every file it lists; a folder without one is refused unless
    `allow_unverified` (a checkpoint Neon did not write)."""
    if not (directory / MANIFEST_FILE).exists():
        if not allow_unverified:
            raise CheckpointError(f"{directory} has no {MANIFEST_FILE}, so its files cannot be verified; pass "
                                  "--allow-unverified to load a checkpoint that Neon did not write")
        log.warning("%s has no %s: loading it unverified (--allow-unverified)", directory, MANIFEST_FILE)
        return {}
    manifest = read_json(directory / MANIFEST_FILE)
    for name, digest in manifest.get("sha256", {}).items():
        f = directory / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {directory} lacks {name}, listed in {MANIFEST_FILE}")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f} is corrupted or was modified: its sha256 does not match {MANIFEST_FILE}")
    return manifest


@dataclass
class CheckpointContents:
    """What a checkpoint folder holds, every file checked; `NeonVLA.from_pretrained` builds the model from it."""

    directory: Path
    config: dict  # config.json as read (a NeonConfig's dict)
    state: dict[str, torch.Tensor]  # the trainable weights
    trained_steps: int  # from the manifest: 0 (untrained heads) when it records none
    backbone_build: str | None = None  # from the manifest: the tiny backbone build the heads were trained on


def read_checkpoint(path_or_repo: str | os.PathLike, revision: str | None = None,
                    allow_unverified: bool = False) -> CheckpointContents:
    """A checkpoint folder or Hub repo id, its manifest verified and its weights read (nothing unpickled)."""
    directory = resolve_checkpoint(path_or_repo, revision)
    manifest = verified_manifest(directory, allow_unverified)
    from neon.config import CONFIG_FILE

    config = read_json(directory / CONFIG_FILE)
    if (directory / WEIGHTS_FILE).exists():
        state = load_safetensors(directory / WEIGHTS_FILE)
    elif (directory / LEGACY_WEIGHTS_FILE).exists():
        state = load_legacy_pt(directory / LEGACY_WEIGHTS_FILE)
    else:
        raise CheckpointError(f"checkpoint {directory} has neither {WEIGHTS_FILE} nor {LEGACY_WEIGHTS_FILE}")
    return CheckpointContents(directory, config, state, int(manifest.get("trained_steps", 0)),
                              manifest.get("backbone_build"))


def check_weights(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: Path) -> None:
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    short = lambda xs, sep=", ": sep.join(xs[:5]) + (" ..." if len(xs) > 5 else "")
    parts = [f"{what} {short(xs, sep)}" for what, xs, sep in (("missing", missing, ", "), ("unexpected", unexpected, ", "),
                                                               ("wrong shapes", wrong, "; ")) if xs]
    if parts:
        raise CheckpointError(f"weights in {where} do not fit its config.json: {'; '.join(parts)}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"weights in {where} hold NaN or Inf in {', '.join(bad[:5])}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
