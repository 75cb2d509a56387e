"""ROS 2 messages <-> NumPy, for the G1's topics. Pure functions, testable without a graph."""

from __future__ import annotations

import io
from array import array

import numpy as np

_DTYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.uint16, 5: np.int32, 6: np.uint32, 7: np.float32, 8: np.float64}


class MessageError(ValueError):
    """A message that cannot be turned into an observation field; the text says why."""


def image_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> UInt8[(H, W, 3)] RGB."""
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(msg.encoding)
    if channels is None:
        raise MessageError(f"image encoding {msg.encoding!r} is not supported (rgb8, bgr8, rgba8, bgra8, mono8)")
    row = msg.width * channels
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if msg.step < row or len(data) < msg.step * msg.height:
        raise MessageError(f"image data is {len(data)} bytes, {msg.height} rows of step {msg.step} expected")
    img = data[: msg.step * msg.height].reshape(msg.height, msg.step)[:, :row].reshape(msg.height, msg.width, channels)
    if msg.encoding.startswith("bgr"):
        img = img[..., [2, 1, 0]]
    elif channels == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def compressed_to_array(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG) -> UInt8[(H, W, 3)] RGB."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(msg.data))) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise MessageError(f"compressed image ({msg.format!r}) cannot be decoded: {type(e).__name__}") from None


def array_to_image(img: np.ndarray, stamp=None, frame_id: str = "camera_color_optical_frame"):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.height, msg.width = img.shape[:2]
    msg.encoding, msg.step, msg.is_bigendian = "rgb8", img.shape[1] * 3, 0
    # array.array takes the message setter's fast path; bytes would be checked element by element.
    msg.data = array("B", np.ascontiguousarray(img, np.uint8).tobytes())
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def cloud_to_array(msg) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> Float[(N, 4)] x, y, z, intensity (0 when the cloud has none)."""
    fields = {f.name: f for f in msg.fields}
    missing = [n for n in ("x", "y", "z") if n not in fields]
    if missing:
        raise MessageError(f"point cloud lacks field(s) {', '.join(missing)}")
    n = msg.width * msg.height
    raw = np.frombuffer(bytes(msg.data), np.uint8)
    if len(raw) < n * msg.point_step:
        raise MessageError(f"point cloud data is {len(raw)} bytes, {n} points of {msg.point_step} expected")
    rows = raw[: n * msg.point_step].reshape(n, msg.point_step)
    out = np.zeros((n, 4), np.float32)
    for k, name in enumerate(("x", "y", "z", "intensity")):
        f = fields.get(name)
        if f is None:
            continue
        dt = np.dtype(_DTYPES[f.datatype]).newbyteorder(">" if msg.is_bigendian else "<")
        out[:, k] = rows[:, f.offset:f.offset + dt.itemsize].copy().view(dt).reshape(-1)
    return out[np.isfinite(out).all(axis=1)]


def array_to_cloud(points: np.ndarray, frame_id: str = "livox_frame"):
    from sensor_msgs.msg import PointCloud2, PointField

    msg = PointCloud2()
    msg.header.frame_id = frame_id
    msg.height, msg.width = 1, len(points)
    msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, n in enumerate(("x", "y", "z", "intensity"))]
    msg.is_bigendian, msg.point_step, msg.is_dense = False, 16, True
    msg.row_step = 16 * len(points)
    msg.data = array("B", np.ascontiguousarray(points, np.float32).tobytes())
    return msg


def pose_to_array(msg) -> np.ndarray:
    """geometry_msgs/PoseStamped -> Float[(7,)] x, y, z, qw, qx, qy, qz."""
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z], np.float32)
