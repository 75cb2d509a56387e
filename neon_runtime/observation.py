"""Decode a request (JSON or msgpack dict) into a validated observation.

Neon's own keys and openpi's are both accepted:

    image        observation/image           UInt8[(H, W, 3)], or base64 / raw JPEG or PNG bytes
    instruction  prompt                      text
    state        observation/state           Float[(D,)] in action-space order, or {joint name: value}
    audio                                    16 kHz mono (float or int16)
    lidar                                    Float[(N, 3|4)]
    eef                                      Float[(14,)] or {"left": 7 values, "right": 7 values}
    prefix                                   Float[(d, D)] committed joint targets for chunk steps 0..d-1
                                             (models trained with prefix_max_steps >= d; [] or absent: none)
    timestamp                                observation time, Unix seconds (without it: not executable)
    client_id                                newest-wins key (a newer request replaces this client's queued one);
                                             a full request's backbone features are kept under it
    reuse_features                           true: a light request (no image, no audio): only the heads run, on
                                             the newest features kept for its client_id, with its own state
                                             (eef, lidar, prefix)
    token                                    the server's token, as a first WebSocket message

openpi's other cameras (wrist, exterior) are accepted and ignored; any other key is an error.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from neon.observation import MAX_LIDAR_POINTS, InputError

# At most 2048 x 2048 pixels (4.2 MP) a request: above what a robot camera sends (the G1's RealSense D435 at most
# 1920 x 1080 colour, 2.1 MP; a ZED 2i 2208 x 1242, 2.7 MP; 2560 x 1440, 3.7 MP), far below a 4096 x 4096 image
# (16.8 MP, 50 MB decoded, 0.8 s here). Checked before decoding, so a decompression bomb is never expanded.
MAX_IMAGE_PIXELS = 2048 * 2048

NEON_KEYS = {"image", "instruction", "state", "audio", "lidar", "eef", "prefix", "timestamp", "client_id", "token",
             "reuse_features", "features_key"}
OPENPI_ALIASES = {"observation/image": "image", "prompt": "instruction", "observation/state": "state"}
OPENPI_IGNORED = {"observation/wrist_image", "observation/wrist_image_left", "observation/exterior_image_1_left",
                  "observation/exterior_image_2_left", "observation/joint_position", "observation/gripper_position"}


def _too_many_pixels(width: int, height: int) -> str:
    return (f"image is {width}x{height} = {width * height} pixels, more than the limit of {MAX_IMAGE_PIXELS} "
            "(2048 x 2048): send the camera's frame, at most that size")


def decode_image(value) -> np.ndarray:
    """An image from an array, nested lists, base64 text, or encoded bytes."""
    from PIL import Image

    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except ValueError:
            raise InputError("image: a string must be base64-encoded JPEG or PNG") from None
    if isinstance(value, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(value)) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise InputError(_too_many_pixels(im.width, im.height))
                return np.asarray(im.convert("RGB"))
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"image bytes are not a readable JPEG or PNG ({type(e).__name__})") from None
    if isinstance(value, list):
        try:
            value = np.asarray(value, dtype=np.uint8)
        except (ValueError, OverflowError, TypeError):
            raise InputError("image: a nested list must hold 0..255 integers shaped HxWx3") from None
    if isinstance(value, np.ndarray) and value.ndim >= 2 and value.shape[0] * value.shape[1] > MAX_IMAGE_PIXELS:
        raise InputError(_too_many_pixels(value.shape[1], value.shape[0]))
    return value


def parse_request(data) -> tuple[dict, list[str]]:
    """-> (a request for `LocalPolicy.prepare`: observation fields, `timestamp`, `client_id` and
    `reuse_features` (always there), the openpi keys ignored)."""
    if not isinstance(data, dict):
        raise InputError(f"the request must be a map of observation fields, got {type(data).__name__}")
    data = {k.decode() if isinstance(k, bytes) else str(k): v for k, v in data.items()}
    unknown = sorted(set(data) - NEON_KEYS - set(OPENPI_ALIASES) - OPENPI_IGNORED)
    if unknown:
        raise InputError(f"unknown key(s): {', '.join(unknown)}; expected some of "
                         f"{', '.join(sorted(NEON_KEYS - {'token'}))} (or openpi's {', '.join(OPENPI_ALIASES)})")
    out, ignored = {}, sorted(set(data) & OPENPI_IGNORED)
    for key, value in data.items():
        name = OPENPI_ALIASES.get(key, key)
        if name in out:
            raise InputError(f"{key!r} and its alias both given")
        if key in OPENPI_IGNORED or name == "token":
            continue
        out[name] = value
    reuse = out.get("reuse_features", False)
    if not isinstance(reuse, bool):
        raise InputError(f"reuse_features must be true or false, got {type(reuse).__name__}")
    if reuse:
        given = [k for k in ("image", "audio") if out.get(k) is not None]
        if given:
            raise InputError(f"a light request (reuse_features: true) carries no {' or '.join(given)}: the server "
                             "reuses the backbone features of this client's last full observation")
        out.pop("image", None), out.pop("audio", None)
    elif "image" not in out:
        raise InputError("image is required (key 'image' or 'observation/image'), unless reuse_features is true")
    else:
        out["image"] = decode_image(out["image"])
    if out.get("lidar") is not None:
        n = len(out["lidar"]) if hasattr(out["lidar"], "__len__") else 0
        if n > MAX_LIDAR_POINTS:
            raise InputError(f"lidar has {n} points, at most {MAX_LIDAR_POINTS} allowed")
    for key in ("state", "audio", "lidar", "eef", "prefix"):
        if isinstance(out.get(key), list):
            try:
                out[key] = np.asarray(out[key], dtype=np.float32)
            except (ValueError, TypeError):
                raise InputError(f"{key}: expected numbers") from None
    if out.get("features_key") is not None and not isinstance(out["features_key"], str):
        raise InputError(f"features_key must be a string (the features.key of a full request's reply), got "
                         f"{type(out['features_key']).__name__}")
    if out.get("client_id") is not None and not isinstance(out["client_id"], str):
        raise InputError(f"client_id must be a string, got {type(out['client_id']).__name__}")
    ts = out.get("timestamp")
    if ts is not None and not isinstance(ts, (int, float)):
        raise InputError(f"timestamp must be Unix seconds (a number), got {type(ts).__name__}")
    out.setdefault("instruction", "")
    out["reuse_features"] = reuse
    return out, ignored
