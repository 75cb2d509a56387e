"""Validation of one observation for `predict()`: every bad input gets an error that names it.

Shared by the model, the server and the ROS node, so all of them reject the
same things with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neon.action_space import G1ActionSpace
from neon.encoders import EEF_DIM

MAX_IMAGE_SIDE = 4096
MAX_AUDIO_SECONDS = 30.0
MAX_LIDAR_POINTS = 200_000
AUDIO_SAMPLE_RATE = 16000


class InputError(ValueError):
    """An observation field is missing, malformed or out of range."""


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.shape} {x.dtype}"
    return type(x).__name__


@dataclass
class Observation:
    """One validated observation, in the units the model expects."""

    image: np.ndarray  # UInt8[(H, W, 3)]
    instruction: str
    state: np.ndarray | None = None  # Float[(D,)] in action-space order, physical units
    audio: np.ndarray | None = None  # Float[(S,)] 16 kHz mono in [-1, 1]
    lidar: np.ndarray | None = None  # Float[(N, 4)] x, y, z (m), intensity
    eef: np.ndarray | None = None  # Float[(14,)] left then right: x, y, z, qw, qx, qy, qz


def check_image(image) -> np.ndarray:
    if image is None:
        raise InputError("image is required (HxWx3 uint8)")
    if not isinstance(image, np.ndarray):
        try:
            from PIL import Image

            if isinstance(image, Image.Image):
                image = np.asarray(image.convert("RGB"))
        except ImportError:  # pragma: no cover - pillow is a core dependency
            pass
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be an HxWx3 uint8 array, got {_describe(image)}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be HxWx3 uint8, got {_describe(image)}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be HxWx3 uint8, got {_describe(image)}")
    h, w = image.shape[:2]
    if min(h, w) < 16 or max(h, w) > MAX_IMAGE_SIDE:
        raise InputError(f"image sides must be 16..{MAX_IMAGE_SIDE} pixels, got {h}x{w}")
    return image


def check_instruction(instruction, max_chars: int) -> str:
    if not isinstance(instruction, str):
        raise InputError(f"instruction must be a string, got {type(instruction).__name__}")
    text = instruction.strip()
    if not text:
        raise InputError("instruction is empty")
    if len(text) > max_chars:
        raise InputError(f"instruction has {len(text)} characters, at most {max_chars} allowed")
    return text


def check_state(state, space: G1ActionSpace) -> np.ndarray | None:
    if state is None:
        return None
    if isinstance(state, dict):
        try:
            vec = space.vector_from_names({str(k): float(v) for k, v in state.items()})
        except (TypeError, ValueError) as e:
            raise InputError(f"state: {e}") from None
    else:
        vec = np.asarray(state, dtype=np.float32) if not isinstance(state, np.ndarray) else state
        if vec.dtype.kind not in "fiu":
            raise InputError(f"state must be numeric, got dtype {vec.dtype}")
        vec = vec.astype(np.float32).reshape(-1) if vec.ndim <= 1 else vec
        if vec.shape != (space.dim,):
            raise InputError(
                f"state must have {space.dim} values in action-space order ({space.names[0]}, ..., "
                f"{space.names[-1]}), got shape {np.shape(state)}"
            )
    bad = [space.names[i] for i in np.flatnonzero(~np.isfinite(vec))]
    if bad:
        raise InputError(f"state has NaN or Inf at: {', '.join(bad)}")
    return vec


def check_audio(audio) -> np.ndarray | None:
    if audio is None:
        return None
    arr = np.asarray(audio)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InputError(f"audio must be 1-D mono samples at {AUDIO_SAMPLE_RATE} Hz, got shape {arr.shape}")
    if arr.dtype == np.int16:
        arr = arr.astype(np.float32) / 32768.0
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    else:
        raise InputError(f"audio must be float32 in [-1, 1] or int16 PCM, got dtype {arr.dtype}")
    if len(arr) == 0:
        return None
    if len(arr) > MAX_AUDIO_SECONDS * AUDIO_SAMPLE_RATE:
        raise InputError(f"audio is {len(arr) / AUDIO_SAMPLE_RATE:.1f} s long, at most {MAX_AUDIO_SECONDS:.0f} s allowed")
    if not np.isfinite(arr).all():
        raise InputError("audio holds NaN or Inf samples")
    return arr


def check_lidar(points) -> np.ndarray | None:
    if points is None:
        return None
    arr = np.asarray(points)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"lidar must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] not in (3, 4):
        raise InputError(f"lidar must be Nx3 (x, y, z) or Nx4 (x, y, z, intensity), got shape {arr.shape}")
    if len(arr) > MAX_LIDAR_POINTS:
        raise InputError(f"lidar has {len(arr)} points, at most {MAX_LIDAR_POINTS} allowed")
    arr = arr.astype(np.float32)
    if arr.shape[1] == 3:
        arr = np.concatenate([arr, np.zeros((len(arr), 1), np.float32)], axis=1)
    if not np.isfinite(arr).all():
        raise InputError("lidar holds NaN or Inf coordinates (drop invalid returns before sending)")
    return arr


def check_eef(eef) -> np.ndarray | None:
    if eef is None:
        return None
    if isinstance(eef, dict):
        missing = {"left", "right"} - set(eef)
        if missing:
            raise InputError(f"eef needs 'left' and 'right' poses, missing {', '.join(sorted(missing))}")
        eef = [np.asarray(eef["left"], np.float32).reshape(-1), np.asarray(eef["right"], np.float32).reshape(-1)]
        if any(p.shape != (7,) for p in eef):
            raise InputError("eef poses must be 7 values each: x, y, z, qw, qx, qy, qz")
        eef = np.concatenate(eef)
    arr = np.asarray(eef, dtype=np.float32).reshape(-1) if np.size(eef) == EEF_DIM else None
    if arr is None:
        raise InputError(f"eef must be 14 values (left then right: x, y, z, qw, qx, qy, qz), got shape {np.shape(eef)}")
    if not np.isfinite(arr).all():
        raise InputError("eef holds NaN or Inf")
    for side, q in (("left", arr[3:7]), ("right", arr[10:14])):
        n = float(np.linalg.norm(q))
        if not 0.5 < n < 1.5:
            raise InputError(f"eef {side} quaternion has norm {n:.3f}; expected a unit quaternion (qw, qx, qy, qz)")
        q /= n
    return arr


def make_observation(space: G1ActionSpace, max_instruction_chars: int, *, image, instruction, state=None,
                     audio=None, lidar=None, eef=None) -> Observation:
    return Observation(
        image=check_image(image),
        instruction=check_instruction(instruction, max_instruction_chars),
        state=check_state(state, space),
        audio=check_audio(audio),
        lidar=check_lidar(lidar),
        eef=check_eef(eef),
    )
