"""The observation spec: each modality stated once, and the one set of functions that validate it.

| field       | shape, dtype           | units and conventions                                                   |
|-------------|------------------------|-------------------------------------------------------------------------|
| image       | UInt8[(H, W, 3)]       | RGB head-camera frame, sides 16..4096 px                                |
| instruction | str                    | what to do, at most the config's `max_instruction_chars`                |
| state       | Float32[(D,)]          | action-space order (or {joint name: value}): rad; Inspire hands 0..1000; |
|             |                        | locomotion m/s, rad/s (the command in force)                            |
| audio       | Float32[(S,)]          | mono, AUDIO_SAMPLE_RATE Hz, in [-1, 1] (int16 PCM accepted); clips up to |
|             |                        | MAX_AUDIO_S are accepted and cut to the newest AUDIO_WINDOW_S           |
| lidar       | Float32[(N, 4)]        | LIDAR_CHANNELS: x, y, z in metres, LiDAR frame (x forward, y left, z up),|
|             |                        | intensity 0..255; N x 3 clouds get intensity 0                          |
| eef         | Float32[(EEF_DIM,)]    | EEF_SIDES x EEF_FIELDS: position (m) and unit quaternion, scalar first;  |
|             |                        | quaternions are normalised                                              |
| prefix      | Float32[(d, D)]        | the steps already committed from the chunk being executed: physical     |
|             |                        | joint targets in action-space order for chunk steps 0..d-1 (the same    |
|             |                        | clock as the chunk asked for); d = 0 or absent: none. Only for models   |
|             |                        | trained with `prefix_max_steps` >= d (`neon.policy` checks)             |

The dataset sources and the runtime both build an `Observation` with
`make_observation`, and `collate` is the only place where absent fields become
masks and placeholders. Nothing here mutates the caller's arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from neon.action_space import G1ActionSpace

if TYPE_CHECKING:  # torch only where batches are built: numpy-only code reads the spec without it
    import torch

AUDIO_SAMPLE_RATE = 16000  # Hz, mono: the G1's microphone array and every backbone's audio path
AUDIO_WINDOW_S = 4.0  # the newest seconds of audio the model hears
MAX_AUDIO_S = 30.0  # longest clip accepted (then cut to the window)
LIDAR_CHANNELS = ("x", "y", "z", "intensity")
LIDAR_RANGE_M = 20.0  # Livox MID-360 useful range; the encoder divides x, y, z by it
LIDAR_INTENSITY_MAX = 255.0
MAX_LIDAR_POINTS = 200_000
EEF_SIDES = ("left", "right")
EEF_FIELDS = ("x", "y", "z", "qw", "qx", "qy", "qz")
EEF_DIM = len(EEF_SIDES) * len(EEF_FIELDS)
IMAGE_SIDES = (16, 4096)  # smallest and largest accepted side, pixels


class InputError(ValueError):
    """An observation field is missing, malformed or out of range."""


def _describe(x) -> str:
    return f"{x.shape} {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__


@dataclass(frozen=True)
class Observation:
    """One validated observation in the spec's units; absent optional fields are None."""

    image: np.ndarray | None  # UInt8[(H, W, 3)]; None only for a dataset frame whose features are cached
    instruction: str
    state: np.ndarray | None = None  # Float32[(D,)]
    audio: np.ndarray | None = None  # Float32[(S,)], S <= AUDIO_WINDOW_S * AUDIO_SAMPLE_RATE
    lidar: np.ndarray | None = None  # Float32[(N, 4)]
    eef: np.ndarray | None = None  # Float32[(14,)]
    prefix: np.ndarray | None = None  # Float32[(d, D)], d >= 1: committed joint targets for chunk steps 0..d-1


def check_image(image) -> np.ndarray:
    if image is None:
        raise InputError("image is required (HxWx3 uint8)")
    if type(image).__module__.startswith("PIL."):  # a PIL image (PIL is imported only when given one)
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be an HxWx3 uint8 array, got {_describe(image)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image must be HxWx3 uint8, got {_describe(image)}")
    h, w = image.shape[:2]
    if min(h, w) < IMAGE_SIDES[0] or max(h, w) > IMAGE_SIDES[1]:
        raise InputError(f"image sides must be {IMAGE_SIDES[0]}..{IMAGE_SIDES[1]} pixels, got {h}x{w}")
    return image


def check_instruction(instruction, max_chars: int | None) -> str:
    """Stripped text; `max_chars=None` (a dataset's own task text) accepts any string, empty included."""
    if not isinstance(instruction, str):
        raise InputError(f"instruction must be a string, got {type(instruction).__name__}")
    text = instruction.strip()
    if max_chars is None:
        return text
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
        vec = np.asarray(state)
        if vec.dtype.kind not in "fiu":
            raise InputError(f"state must be numeric, got dtype {vec.dtype}")
        if vec.shape not in ((space.dim,), (1, space.dim)):
            raise InputError(f"state must have {space.dim} values in action-space order ({space.names[0]}, ..., "
                             f"{space.names[-1]}), got shape {vec.shape}")
        vec = vec.astype(np.float32).reshape(-1)  # always a copy
    bad = [space.names[i] for i in np.flatnonzero(~np.isfinite(vec))]
    if bad:
        raise InputError(f"state has NaN or Inf at: {', '.join(bad)}")
    return vec


def check_audio(audio) -> np.ndarray | None:
    """Float32 mono samples cut to the newest AUDIO_WINDOW_S; None for no (or empty) audio."""
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
    if len(arr) > MAX_AUDIO_S * AUDIO_SAMPLE_RATE:
        raise InputError(f"audio is {len(arr) / AUDIO_SAMPLE_RATE:.1f} s long, at most {MAX_AUDIO_S:.0f} s allowed")
    if not np.isfinite(arr).all():
        raise InputError("audio holds NaN or Inf samples")
    return arr[-int(AUDIO_WINDOW_S * AUDIO_SAMPLE_RATE):]


def check_lidar(points) -> np.ndarray | None:
    """Float32[(N, 4)] (x, y, z, intensity) from an N x 3 or N x 4 cloud."""
    if points is None:
        return None
    arr = np.asarray(points)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"lidar must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] not in (3, 4):
        raise InputError(f"lidar must be Nx3 (x, y, z) or Nx4 (x, y, z, intensity), got shape {arr.shape}")
    if len(arr) > MAX_LIDAR_POINTS:
        raise InputError(f"lidar has {len(arr)} points, at most {MAX_LIDAR_POINTS} allowed")
    out = np.zeros((len(arr), len(LIDAR_CHANNELS)), np.float32)
    out[:, : arr.shape[1]] = arr
    if not np.isfinite(out).all():
        raise InputError("lidar holds NaN or Inf coordinates (drop invalid returns before sending)")
    return out


def check_eef(eef) -> np.ndarray | None:
    """Float32[(14,)] with unit quaternions, from 14 values or {"left": 7 values, "right": 7 values}."""
    if eef is None:
        return None
    n = len(EEF_FIELDS)
    if isinstance(eef, dict):
        if set(eef) != set(EEF_SIDES) or any(np.size(eef[side]) != n for side in EEF_SIDES):
            missing = ", ".join(sorted(set(EEF_SIDES) - set(eef))) or "none"
            raise InputError(f"eef as a map needs 'left' and 'right' poses of {n} values each ({', '.join(EEF_FIELDS)}); "
                             f"got {sorted(eef)}, missing {missing}")
        eef = np.concatenate([np.asarray(eef[side], np.float32).reshape(-1) for side in EEF_SIDES])
    if np.size(eef) != EEF_DIM:
        raise InputError(f"eef must be {EEF_DIM} values (left then right: {', '.join(EEF_FIELDS)}), "
                         f"got shape {np.shape(eef)}")
    pose = np.array(eef, dtype=np.float32).reshape(len(EEF_SIDES), n)  # a copy: the caller's array stays as it is
    if not np.isfinite(pose).all():
        raise InputError("eef holds NaN or Inf")
    norms = np.linalg.norm(pose[:, 3:], axis=1)
    for side, norm in zip(EEF_SIDES, norms, strict=True):
        if not 0.5 < norm < 1.5:
            raise InputError(f"eef {side} quaternion has norm {norm:.3f}; expected a unit quaternion (qw, qx, qy, qz)")
    pose[:, 3:] /= norms[:, None]
    return pose.reshape(-1)


def check_prefix(prefix, space: G1ActionSpace) -> np.ndarray | None:
    """Float32[(d, D)] committed joint targets; None for no (or an empty) prefix."""
    if prefix is None:
        return None
    arr = np.asarray(prefix)
    if arr.size == 0:
        return None
    if arr.dtype.kind not in "fiu":
        raise InputError(f"prefix must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != space.dim:
        raise InputError(f"prefix must be d x {space.dim} joint targets (the committed chunk steps, action-space "
                         f"order), got shape {arr.shape}")
    out = arr.astype(np.float32)  # always a copy
    if not np.isfinite(out).all():
        raise InputError(f"prefix holds NaN or Inf at step(s) {sorted(set(np.nonzero(~np.isfinite(out))[0].tolist()))}")
    return out


def make_observation(space: G1ActionSpace, max_instruction_chars: int | None, *, image, instruction, state=None,
                     audio=None, lidar=None, eef=None, prefix=None) -> Observation:
    """A validated Observation. `max_instruction_chars=None` marks a dataset's sample, which may also carry
    `image=None`: its backbone features come from the feature cache, so the frame was never decoded."""
    image = None if image is None and max_instruction_chars is None else check_image(image)
    return Observation(image, check_instruction(instruction, max_instruction_chars),
                       check_state(state, space), check_audio(audio), check_lidar(lidar), check_eef(eef),
                       check_prefix(prefix, space))


@dataclass
class ObservationBatch:
    """Observations stacked for the model: tensors with presence masks, lists where the backbone takes lists."""

    images: list[np.ndarray]
    instructions: list[str]
    audio: list[np.ndarray | None]
    state: torch.Tensor  # Float[(B, D)], zeros where absent
    state_present: torch.Tensor  # Bool[(B,)]
    eef: torch.Tensor  # Float[(B, 14)], origin and identity quaternions where absent
    eef_present: torch.Tensor  # Bool[(B,)]
    lidar: torch.Tensor  # Float[(B, N, 4)], padded with zeros to the largest cloud (N >= 1)
    lidar_valid: torch.Tensor  # Bool[(B, N)]
    prefix: torch.Tensor  # Float[(B, P, D)] physical committed steps, P = the longest in the batch (0 if none)
    prefix_len: torch.Tensor  # Long[(B,)] committed steps per sample (0 = none); zeros past it in `prefix`

    def __len__(self) -> int:
        return len(self.images)


def collate(observations: list[Observation], dim: int) -> ObservationBatch:
    """The one place where absent fields become placeholders and ragged clouds are padded."""
    import torch

    b = len(observations)
    state, eef = torch.zeros(b, dim), torch.zeros(b, len(EEF_SIDES), len(EEF_FIELDS))
    eef[:, :, 3] = 1.0  # identity rotation
    eef = eef.reshape(b, EEF_DIM)
    n = max([len(o.lidar) for o in observations if o.lidar is not None] + [1])
    lidar, valid = torch.zeros(b, n, len(LIDAR_CHANNELS)), torch.zeros(b, n, dtype=torch.bool)
    for i, o in enumerate(observations):
        if o.state is not None:
            state[i] = torch.from_numpy(o.state)
        if o.eef is not None:
            eef[i] = torch.from_numpy(o.eef)
        if o.lidar is not None:
            lidar[i, : len(o.lidar)] = torch.from_numpy(o.lidar)
            valid[i, : len(o.lidar)] = True
    steps = [0 if o.prefix is None else len(o.prefix) for o in observations]
    prefix = torch.zeros(b, max(steps, default=0), dim)
    for i, o in enumerate(observations):
        if o.prefix is not None:
            prefix[i, : len(o.prefix)] = torch.from_numpy(o.prefix)
    present = lambda field: torch.tensor([getattr(o, field) is not None for o in observations], dtype=torch.bool)
    return ObservationBatch([o.image for o in observations], [o.instruction for o in observations],
                            [o.audio for o in observations], state, present("state"), eef, present("eef"), lidar,
                            valid, prefix, torch.tensor(steps, dtype=torch.long))
