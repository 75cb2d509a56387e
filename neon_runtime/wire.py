"""msgpack with NumPy arrays, byte-compatible with openpi-client's `msgpack_numpy`.

An array travels as {"__ndarray__": True, "data": raw bytes, "dtype": "<f4", "shape": [..]};
object, void and complex dtypes are refused, so nothing is ever unpickled.
"""

from __future__ import annotations

import msgpack
import numpy as np


class WireError(ValueError):
    """A message that cannot be decoded; the message says what is wrong."""


def _pack(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in "VOc":
        raise WireError(f"unsupported dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _unpack(obj: dict):
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        g = lambda k: obj.get(k.encode(), obj.get(k))
        try:
            dtype = np.dtype(g("dtype"))
        except TypeError as e:
            raise WireError(f"bad array dtype {g('dtype')!r}: {e}") from None
        if dtype.kind in "VOc":
            raise WireError(f"unsupported array dtype {dtype}")
        shape = tuple(int(s) for s in g("shape"))
        data = g("data")
        if not isinstance(data, (bytes, bytearray)) or len(data) != int(np.prod(shape)) * dtype.itemsize:
            raise WireError(f"array data has {len(data) if isinstance(data, (bytes, bytearray)) else 'no'} bytes, "
                            f"shape {shape} of {dtype} needs {int(np.prod(shape)) * dtype.itemsize}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=_pack)


def unpackb(data: bytes, max_bytes: int | None = None):
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"message is {len(data)} bytes, the limit is {max_bytes}")
    try:
        return msgpack.unpackb(data, object_hook=_unpack, strict_map_key=False)
    except WireError:
        raise
    except Exception as e:
        raise WireError(f"not a valid msgpack message: {type(e).__name__}: {e}") from None
