"""The CRC32 the G1 checks on unitree_hg LowCmd_ (and fills in on LowState_).

The firmware reads the message as the C struct it was generated from (little-endian, 4-byte aligned, padding zeroed),
takes every 32-bit word but the last (the crc itself) and runs CRC-32 with polynomial 0x04C11DB7 over them, each word
most significant bit first, register starting at 0xFFFFFFFF, no reflection, no final XOR (Unitree's `crc32_core` in
unitree_sdk2 `include/unitree/dds_wrapper/common/crc.h`; the struct layout as in unitree_sdk2py `utils/crc.py`).

Word by word, MSB first, that is CRC-32/MPEG-2 over each word's bytes in big-endian order; and CRC-32/MPEG-2 is
zlib's CRC-32 seen in a mirror (every byte and the result bit-reversed, the final XOR undone), so the work runs in C:
a few microseconds for a LowCmd_ where a bit loop in Python takes milliseconds.

Messages are read field by field in declaration order, so any object with LowCmd_'s (or LowState_'s) fields works:
this module needs neither cyclonedds nor the IDL types.
"""

import dataclasses
import struct
import zlib

import numpy as np

# C struct images, little-endian with the compiler's padding (x): 35 motor slots each.
_MOTOR_CMD = "B3x5fI"  # mode, q dq tau kp kd, reserve: 28 bytes
LOW_CMD_FORMAT = "<2B2x" + _MOTOR_CMD * 35 + "4I" + "I"  # mode_pr mode_machine, motor_cmd, reserve, crc
_IMU_STATE = "13fh2x"  # quaternion gyroscope accelerometer rpy, temperature
_MOTOR_STATE = "B3x4f2hf2II4I"  # mode, q dq ddq tau_est, temperature[2], vol, sensor[2], motorstate, reserve[4]
LOW_STATE_FORMAT = "<2I2B2xI" + _IMU_STATE + _MOTOR_STATE * 35 + "40B" + "4I" + "I"

LOW_CMD_SIZE = struct.calcsize(LOW_CMD_FORMAT)  # 1004 bytes
LOW_STATE_SIZE = struct.calcsize(LOW_STATE_FORMAT)  # 2092 bytes

_REVERSED_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _flatten(message) -> list:
    """Every scalar of a (nested) message dataclass, in declaration order (uint8 arrays arrive from DDS as bytes)."""
    values = []
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        for item in value if isinstance(value, (list, tuple, bytes, bytearray)) else (value,):
            values.extend(_flatten(item) if dataclasses.is_dataclass(item) else (item,))
    return values


def _pack(message, layout: str, what: str) -> bytes:
    try:
        return struct.pack(layout, *_flatten(message))
    except struct.error as e:
        raise ValueError(f"{what} does not fit the robot's struct layout ({e}); is it a unitree_hg {what}?") from None


def pack_low_cmd(cmd) -> bytes:
    """LowCmd_ as the robot's C struct (1004 bytes, crc last)."""
    return _pack(cmd, LOW_CMD_FORMAT, "LowCmd_")


def pack_low_state(state) -> bytes:
    """LowState_ as the robot's C struct (2092 bytes, crc last)."""
    return _pack(state, LOW_STATE_FORMAT, "LowState_")


def crc32_words(image: bytes) -> int:
    """Unitree's CRC32 over `image` read as little-endian 32-bit words, each MSB first (len(image) % 4 == 0)."""
    if len(image) % 4:
        raise ValueError(f"CRC runs over whole 32-bit words, got {len(image)} bytes")
    big_endian_words = np.frombuffer(image, "<u4").astype(">u4").tobytes()
    mirrored = zlib.crc32(big_endian_words.translate(_REVERSED_BITS)) ^ 0xFFFFFFFF
    return int(f"{mirrored:032b}"[::-1], 2)


def low_cmd_crc(cmd) -> int:
    """The crc a LowCmd_ must carry: every word of its struct image but the crc word itself."""
    return crc32_words(pack_low_cmd(cmd)[:-4])


def low_state_crc(state) -> int:
    """The crc a LowState_ from the robot carries, when it arrived intact."""
    return crc32_words(pack_low_state(state)[:-4])


class LowCmdImage:
    """A LowCmd_'s struct image packed once, then kept in step with the fields a control loop changes each period
    (mode_machine and the motors' q, the arm_sdk weight included), so each send costs a few array writes and the CRC
    instead of re-flattening ~250 fields (1.6-2.3 ms of a 4 ms period on a loaded machine).

        image = LowCmdImage(cmd)            # after kp, kd, mode, ... are set: those are packed once
        cmd.motor_cmd[15].q = 0.3
        cmd.crc = image.crc(cmd.mode_machine, slots, q)   # slots Int[(K,)], q Float[(K,)]: what changed
    """

    _Q_WORD, _MOTOR_WORDS, _FIRST_MOTOR_WORD = 1, 7, 1  # q is word 1 of a 7-word motor; motors start at word 1

    def __init__(self, cmd):
        self._image = bytearray(pack_low_cmd(cmd))
        self._floats = np.frombuffer(self._image, "<f4")  # a view: writes land in the image

    def crc(self, mode_machine: int, slots: np.ndarray, q: np.ndarray) -> int:
        """Write mode_machine and q into the motor `slots` (as float32, the wire's precision), -> the crc."""
        self._image[1] = int(mode_machine) & 0xFF
        self._floats[self._FIRST_MOTOR_WORD + self._MOTOR_WORDS * np.asarray(slots) + self._Q_WORD] = q
        return crc32_words(self._image[:-4])


def fill_low_cmd_crc(cmd):
    """Set `cmd.crc` for its current contents and return `cmd`: the last step before every write."""
    cmd.crc = low_cmd_crc(cmd)
    return cmd
