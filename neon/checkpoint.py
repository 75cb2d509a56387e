"""Checkpoints: atomic writes, JSON reads, safe tensor loading, and saving / loading a NeonVLA.

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
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

import torch


log = logging.getLogger(__name__)


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

    Files and folders are fsynced, then the new folder and an existing old one swap places in one atomic
    step (Linux `renameat2(RENAME_EXCHANGE)`), so at every instant `path` holds the old or the new version,
    whole. Where the kernel cannot swap, the old one is moved aside first and removed after.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in sorted(tmp.rglob("*"), reverse=True) + [tmp]:  # contents before the rename makes them visible
            _fsync(f)
        if path.exists() and _exchange(tmp, path):
            _fsync(path.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the old version
            return
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


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
        write_manifest(tmp, trained_steps=model.trained_steps)
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


def load_checkpoint(path_or_repo: str | os.PathLike, revision: str | None = None, allow_unverified: bool = False):
    """A NeonVLA from a checkpoint folder or Hub repo id, every file checked (the backbone is loaded separately).

    `model.trained_steps` comes from the manifest: 0 (untrained heads) when it records none.
    """
    from neon.action_space import ACTION_SPACE_FILE, G1ActionSpace
    from neon.config import CONFIG_FILE, ConfigError, NeonConfig
    from neon.model import NeonVLA
    from neon.normalization import NORM_STATS_FILE, NormStats

    directory = resolve_checkpoint(path_or_repo, revision)
    manifest = verified_manifest(directory, allow_unverified)
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
    model.trained_steps = int(manifest.get("trained_steps", 0))
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
