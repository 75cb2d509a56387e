"""Checkpoints: atomic writes, JSON reads, safe tensor loading, and saving / loading a NeonVLA.

A checkpoint directory is written into a temporary sibling and renamed into
place, so a crash never leaves a half-written checkpoint that loads as valid.
Nothing here unpickles: weights are safetensors; a legacy `.pt` file is read
with `torch.load(weights_only=True)`, which refuses arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or incompatible."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds.

    An existing `path` is moved aside first and removed only after the new one
    is in place, so at every instant either the old or the new checkpoint is whole.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):  # flush file contents before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(model.config.to_json())
        model.action_space.save(tmp)
        model.norm_stats.save(tmp)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "neon", "neon_version": __version__})
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"format": "neon-checkpoint", "format_version": CHECKPOINT_FORMAT, "neon_version": __version__,
                    "sha256": files}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def load_checkpoint(path_or_repo: str | os.PathLike, revision: str | None = None):
    """A NeonVLA from a checkpoint folder or Hub repo id, every file checked (the backbone is loaded separately)."""
    from neon.action_space import ACTION_SPACE_FILE, G1ActionSpace
    from neon.config import CONFIG_FILE, ConfigError, NeonConfig
    from neon.model import NeonVLA
    from neon.normalization import NORM_STATS_FILE, NormStats

    directory = resolve_checkpoint(path_or_repo, revision)
    if (directory / MANIFEST_FILE).exists():
        for name, digest in read_json(directory / MANIFEST_FILE).get("sha256", {}).items():
            f = directory / name
            if not f.is_file():
                raise CheckpointError(f"checkpoint {directory} lacks {name}, listed in {MANIFEST_FILE}")
            if _sha256(f) != digest:
                raise CheckpointError(f"{f} is corrupted or was modified: its sha256 does not match {MANIFEST_FILE}")
    try:
        config = NeonConfig.from_dict(read_json(directory / CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {e}") from None
    model = NeonVLA(config, NormStats.load(directory) if (directory / NORM_STATS_FILE).exists() else None)
    if (directory / ACTION_SPACE_FILE).exists() and G1ActionSpace.load(directory).names != model.action_space.names:
        raise CheckpointError(f"{directory / ACTION_SPACE_FILE} does not match config.json's action space")
    if (directory / WEIGHTS_FILE).exists():
        state = load_safetensors(directory / WEIGHTS_FILE)
    elif (directory / LEGACY_WEIGHTS_FILE).exists():
        state = load_legacy_pt(directory / LEGACY_WEIGHTS_FILE)
    else:
        raise CheckpointError(f"checkpoint {directory} has neither {WEIGHTS_FILE} nor {LEGACY_WEIGHTS_FILE}")
    _check_weights(model.state_dict(), state, directory)
    model.load_state_dict(state)
    return model.eval()


def _check_weights(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: Path) -> None:
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


def read_json(path: str | os.PathLike, error: type[Exception] = CheckpointError, missing: str = "not found") -> dict:
    """A JSON file's content; a missing or malformed file raises `error` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path} {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON: {e}") from None
