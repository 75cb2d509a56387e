"""unitree_hg DDS message types (G1 body and Dex3 hands), laid out exactly as the robot's.

Field names, order, types and array lengths follow Unitree's IDL for `unitree_hg`, as generated in unitree_sdk2
(`include/unitree/idl/hg/*.hpp`, the C++ side the robot runs) and unitree_sdk2_python
(`unitree_sdk2py/idl/unitree_hg/msg/dds_/*.py`): final extensibility, sequential member ids, Python typenames
"unitree_hg.msg.dds_.<Name>" (on the wire "unitree_hg::msg::dds_::<Name>"). tests/test_unitree_dds.py checks each
topic type's XTypes type hashes against the ones unitree_sdk2 ships, so a field out of place fails there.

Every field has a zero default, so `LowCmd_()` is an all-zero command (crc not yet filled: see crc.py).
"""

from dataclasses import dataclass, field

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.annotations import autoid, final
from cyclonedds.idl.types import array, float32, int16, sequence, uint8, uint32

MOTOR_SLOTS = 35  # motor_cmd / motor_state length in LowCmd_ / LowState_, whatever the build's joint count


def _zeros(n: int):
    return field(default_factory=lambda: [0] * n)


def _floats(n: int):
    return field(default_factory=lambda: [0.0] * n)


@dataclass
@final
@autoid("sequential")
class MotorCmd_(IdlStruct, typename="unitree_hg.msg.dds_.MotorCmd_"):
    mode: uint8 = 0  # 1 = enabled (FOC), 0 = off
    q: float32 = 0.0  # rad
    dq: float32 = 0.0  # rad/s
    tau: float32 = 0.0  # N·m, feed-forward
    kp: float32 = 0.0
    kd: float32 = 0.0
    reserve: uint32 = 0


@dataclass
@final
@autoid("sequential")
class LowCmd_(IdlStruct, typename="unitree_hg.msg.dds_.LowCmd_"):
    mode_pr: uint8 = 0  # 0 = pitch/roll ankle control (PR), 1 = A/B
    mode_machine: uint8 = 0  # echo LowState_.mode_machine (the build)
    motor_cmd: array[MotorCmd_, MOTOR_SLOTS] = field(default_factory=lambda: [MotorCmd_() for _ in range(MOTOR_SLOTS)])
    reserve: array[uint32, 4] = _zeros(4)
    crc: uint32 = 0


@dataclass
@final
@autoid("sequential")
class MotorState_(IdlStruct, typename="unitree_hg.msg.dds_.MotorState_"):
    mode: uint8 = 0
    q: float32 = 0.0  # rad
    dq: float32 = 0.0  # rad/s
    ddq: float32 = 0.0  # rad/s²
    tau_est: float32 = 0.0  # N·m
    temperature: array[int16, 2] = _zeros(2)  # °C
    vol: float32 = 0.0  # V
    sensor: array[uint32, 2] = _zeros(2)
    motorstate: uint32 = 0
    reserve: array[uint32, 4] = _zeros(4)


@dataclass
@final
@autoid("sequential")
class IMUState_(IdlStruct, typename="unitree_hg.msg.dds_.IMUState_"):
    quaternion: array[float32, 4] = _floats(4)  # w, x, y, z
    gyroscope: array[float32, 3] = _floats(3)  # rad/s
    accelerometer: array[float32, 3] = _floats(3)  # m/s²
    rpy: array[float32, 3] = _floats(3)  # rad
    temperature: int16 = 0


@dataclass
@final
@autoid("sequential")
class LowState_(IdlStruct, typename="unitree_hg.msg.dds_.LowState_"):
    version: array[uint32, 2] = _zeros(2)
    mode_pr: uint8 = 0
    mode_machine: uint8 = 0  # the build: 4 = 23-DOF, 5 = 29-DOF, 6 = 29-DOF locked waist, 9 = dual-arm
    tick: uint32 = 0
    imu_state: IMUState_ = field(default_factory=IMUState_)
    motor_state: array[MotorState_, MOTOR_SLOTS] = field(default_factory=lambda: [MotorState_() for _ in range(MOTOR_SLOTS)])
    wireless_remote: array[uint8, 40] = _zeros(40)
    reserve: array[uint32, 4] = _zeros(4)
    crc: uint32 = 0


@dataclass
@final
@autoid("sequential")
class PressSensorState_(IdlStruct, typename="unitree_hg.msg.dds_.PressSensorState_"):
    pressure: array[float32, 12] = _floats(12)
    temperature: array[float32, 12] = _floats(12)
    lost: uint32 = 0
    reserve: uint32 = 0


@dataclass
@final
@autoid("sequential")
class HandCmd_(IdlStruct, typename="unitree_hg.msg.dds_.HandCmd_"):
    """Dex3-1 command: one MotorCmd_ per hand joint (7), an unbounded sequence on the wire."""

    motor_cmd: sequence[MotorCmd_] = field(default_factory=list)
    reserve: array[uint32, 4] = _zeros(4)


@dataclass
@final
@autoid("sequential")
class HandState_(IdlStruct, typename="unitree_hg.msg.dds_.HandState_"):
    motor_state: sequence[MotorState_] = field(default_factory=list)
    press_sensor_state: sequence[PressSensorState_] = field(default_factory=list)
    imu_state: IMUState_ = field(default_factory=IMUState_)
    power_v: float32 = 0.0
    power_a: float32 = 0.0
    system_v: float32 = 0.0
    device_v: float32 = 0.0
    error: array[uint32, 2] = _zeros(2)
    reserve: array[uint32, 2] = _zeros(2)


# The G1's topics and the type each carries (Unitree's SDKs; docs in shared/g1_reference.md).
TOPIC_TYPES: dict[str, type[IdlStruct]] = {
    "rt/lowcmd": LowCmd_,  # full-body command (motion switcher released)
    "rt/arm_sdk": LowCmd_,  # arms and waist while the robot balances; weight in motor_cmd[29].q
    "rt/lowstate": LowState_,
    "rt/dex3/left/cmd": HandCmd_,
    "rt/dex3/right/cmd": HandCmd_,
    "rt/dex3/left/state": HandState_,
    "rt/dex3/right/state": HandState_,
}
