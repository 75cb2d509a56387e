"""Atomic file writes and safe tensor loading for checkpoints.

A checkpoint directory is written into a temporary sibling and renamed into
place, so a crash never leaves a half-written checkpoint that loads as valid.
Nothing here unpickles: weights are safetensors; a legacy `.pt` file is read
with `torch.load(weights_only=True)`, which refuses arbitrary objects.
"""

from __future__ import annotations

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
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
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
