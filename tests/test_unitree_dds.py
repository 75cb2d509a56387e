"""The G1's DDS wire with real CycloneDDS on loopback: message layout, the LowCmd_ CRC, participants that stay on `lo`.

Every participant here comes from loopback(): a random domain other than 0 (the robot's), multicast off.
"""

import copy
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from neon_runtime.unitree import dds
from neon_runtime.unitree.crc import (
    LOW_CMD_SIZE,
    LOW_STATE_SIZE,
    fill_low_cmd_crc,
    low_cmd_crc,
    low_state_crc,
    pack_low_cmd,
    pack_low_state,
)
from neon_runtime.unitree.idl import (
    MOTOR_SLOTS,
    TOPIC_TYPES,
    HandCmd_,
    HandState_,
    IMUState_,
    LowCmd_,
    LowState_,
    MotorCmd_,
    MotorState_,
)


def arm_command() -> LowCmd_:
    """A LowCmd_ with a different value in every motor slot (the pattern the known CRCs below were computed on)."""
    cmd = LowCmd_(mode_pr=0, mode_machine=5, reserve=[1, 2, 3, 4])
    for i, m in enumerate(cmd.motor_cmd):
        m.mode, m.q, m.dq, m.tau, m.kp, m.kd, m.reserve = 1, 0.01 * i - 0.1, -0.002 * i, 0.5 * (i % 3), 60.0, 1.5, i
    return cmd


def robot_state() -> LowState_:
    state = LowState_(version=[7, 9], mode_pr=1, mode_machine=5, tick=123456, wireless_remote=list(range(40)))
    state.imu_state = IMUState_([1.0, 0.0, 0.0, 0.0], [0.1, -0.2, 0.3], [0.0, 0.0, 9.81], [0.01, 0.02, 0.03], 41)
    for i, m in enumerate(state.motor_state):
        m.mode, m.q, m.dq, m.ddq, m.tau_est = 1, 0.02 * i, 0.001 * i, 0.0, -0.1 * i
        m.temperature, m.vol, m.sensor, m.motorstate, m.reserve = [30 + i, 31 + i], 48.5, [i, 2 * i], 0, [0, 0, 0, i]
    return state


def take_within(reader, seconds: float = 5.0, write=None):
    """First sample `reader` gets within `seconds`, calling `write()` every 10 ms meanwhile (discovery takes a moment)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if write:
            write()
        got = reader.take()
        if got:
            return got[0]
        time.sleep(0.01)
    raise AssertionError(f"nothing arrived within {seconds} s")


# --- the CRC ------------------------------------------------------------------------------------------------------


def reference_crc(units, bits: int) -> int:
    """Textbook CRC-32, polynomial 0x04C11DB7, register from all ones, each `bits`-wide unit MSB first, no reflection."""
    crc = 0xFFFFFFFF
    for unit in units:
        for k in reversed(range(bits)):
            feedback = (crc >> 31) ^ ((unit >> k) & 1)
            crc = (crc << 1) & 0xFFFFFFFF
            if feedback:
                crc ^= 0x04C11DB7
    return crc


def test_reference_crc_is_the_catalogued_crc32_mpeg2():
    assert reference_crc(b"123456789", 8) == 0x0376E6E7  # CRC-32/MPEG-2's check value (Greg Cook's CRC catalogue)


def test_low_cmd_crc_is_the_reference_crc_over_the_struct_words_but_the_last():
    for cmd in (LowCmd_(), arm_command(), fill_low_cmd_crc(arm_command())):
        image = pack_low_cmd(cmd)
        words = struct.unpack(f"<{len(image) // 4}I", image)
        assert low_cmd_crc(cmd) == reference_crc(words[:-1], 32)


def test_crcs_match_unitrees_sdk():
    # Computed with unitree_sdk2py's CRC().Crc (its shipped crc_amd64.so) on the same messages.
    assert low_cmd_crc(LowCmd_()) == 0xFE172F9F
    assert low_cmd_crc(arm_command()) == 0xB9E744B3
    assert low_state_crc(LowState_()) == 0xD64BB04A
    assert low_state_crc(robot_state()) == 0x41D17091


def test_struct_image_has_the_robots_size_and_offsets():
    assert (LOW_CMD_SIZE, LOW_STATE_SIZE) == (1004, 2092)  # sizeof(LowCmd_), sizeof(LowState_) in the C SDK
    cmd = fill_low_cmd_crc(arm_command())
    image = pack_low_cmd(cmd)
    assert len(image) == 1004 and image[:4] == bytes([0, 5, 0, 0])  # mode_pr, mode_machine, 2 bytes padding
    slot = 4 + 28 * 29  # motor_cmd[29]: mode, 3 bytes padding, q, dq, tau, kp, kd, reserve
    assert struct.unpack_from("<B3x5fI", image, slot) == pytest.approx((1, 0.19, -0.058, 1.0, 60.0, 1.5, 29), abs=1e-6)
    assert struct.unpack_from("<5I", image, 4 + 28 * MOTOR_SLOTS) == (1, 2, 3, 4, cmd.crc)
    assert len(pack_low_state(robot_state())) == 2092


def scalar_paths(message, prefix=()):
    """(path, value) of every scalar in a message, e.g. (("motor_cmd", 3, "kp"), 60.0)."""
    for name in type(message).__dataclass_fields__:
        value = getattr(message, name)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            path = prefix + ((name,) if index is None else (name, index))
            if hasattr(item, "__dataclass_fields__"):
                yield from scalar_paths(item, path)
            else:
                yield path, item


def with_value(message, path, value):
    changed = copy.deepcopy(message)
    target = changed
    for step in path[:-1]:
        target = target[step] if isinstance(step, int) else getattr(target, step)
    if isinstance(path[-1], int):
        target[path[-1]] = value
    else:
        setattr(target, path[-1], value)
    return changed


def test_every_field_but_crc_changes_the_crc():
    base = arm_command()
    paths = list(scalar_paths(base))
    assert len(paths) == 2 + MOTOR_SLOTS * 7 + 4 + 1  # a field the packer skipped would be missing here
    before = low_cmd_crc(base)
    for path, value in paths:
        changed = with_value(base, path, value + 1)
        assert (low_cmd_crc(changed) == before) == (path == ("crc",)), path


def test_the_image_packed_once_gives_the_crc_of_a_full_repack():
    """LowCmdImage (what neon-g1 sends with) against low_cmd_crc (every field re-flattened) over random updates of
    q, the arm_sdk weight and mode_machine."""
    import numpy as np

    from neon_runtime.unitree.crc import LowCmdImage
    from neon_runtime.unitree.idl import LowCmd_

    cmd = LowCmd_(mode_pr=0)
    for m in cmd.motor_cmd[12:29]:
        m.mode, m.kp, m.kd = 1, 60.0, 1.5
    image, rng, slots = LowCmdImage(cmd), np.random.default_rng(0), np.array([*range(12, 29), 29])
    for _ in range(50):
        q = rng.normal(size=len(slots))
        for slot, value in zip(slots, q, strict=True):
            cmd.motor_cmd[slot].q = float(value)
        cmd.mode_machine = int(rng.integers(0, 256))
        assert image.crc(cmd.mode_machine, slots, q) == low_cmd_crc(cmd)


def test_fill_sets_the_crc_and_bad_values_say_which_message():
    cmd = arm_command()
    assert fill_low_cmd_crc(cmd) is cmd and cmd.crc == 0xB9E744B3
    cmd.motor_cmd[0].mode = 256  # not a uint8
    with pytest.raises(ValueError, match="LowCmd_"):
        low_cmd_crc(cmd)


# --- the message types ---------------------------------------------------------------------------------------------

# XTypes type identifiers (minimal, complete) that unitree_sdk2 generates for the robot's side
# (include/unitree/idl/hg/<Type>.hpp, type_info_blob): equal hashes mean the same names, member order, types,
# array lengths and extensibility, down through the nested types.
UNITREE_TYPE_HASHES = {
    LowCmd_: ("6569fc15f0d47aa8600b9e91fbbc", "42b0283aa7e1bb592ec898a0dbed"),
    LowState_: ("2f38296b52aa0230b92d378b1e39", "2be9706c9587e8d8afd8bfc6de7b"),
    HandCmd_: ("a63e17e228e67d276dfe71d6f156", "5c45f9f8b1e1c279a659521332b0"),
    HandState_: ("699eb3270c7d7788ed03bebe16b9", "b9f2806966060fc0f913a47b8ab9"),
}


@pytest.mark.parametrize("idl_type", list(UNITREE_TYPE_HASHES), ids=lambda t: t.__name__)
def test_types_hash_like_unitrees(idl_type):
    info = idl_type.__idl__.get_type_info()
    minimal, complete = (section.typeid_with_size.type_id.value.hex() for section in (info.minimal, info.complete))
    assert (minimal, complete) == UNITREE_TYPE_HASHES[idl_type]
    assert idl_type.__idl_typename__ == f"unitree_hg.msg.dds_.{idl_type.__name__}"


def test_topics_carry_unitrees_types():
    assert TOPIC_TYPES["rt/arm_sdk"] is TOPIC_TYPES["rt/lowcmd"] is LowCmd_
    assert TOPIC_TYPES["rt/lowstate"] is LowState_
    for side in ("left", "right"):
        assert (TOPIC_TYPES[f"rt/dex3/{side}/cmd"], TOPIC_TYPES[f"rt/dex3/{side}/state"]) == (HandCmd_, HandState_)
    with pytest.raises(ValueError, match="unknown G1 topic 'rt/lowcmds'"):
        dds.topic(dds.loopback(), "rt/lowcmds")


# --- participants and the wire -------------------------------------------------------------------------------------


def test_arm_sdk_command_arrives_intact_with_a_valid_crc():
    sender = dds.loopback()
    receiver = dds.loopback(sender.get_domain_id())
    commands = dds.reader(receiver, "rt/arm_sdk")
    arm_sdk = dds.writer(sender, "rt/arm_sdk")
    cmd = arm_command()
    cmd.motor_cmd[29].q = 1.0  # the arm_sdk weight slot
    fill_low_cmd_crc(cmd)

    got = take_within(commands, write=lambda: arm_sdk.write(cmd))
    assert LowCmd_.serialize(got) == LowCmd_.serialize(cmd)  # equal to float32 precision, the wire's
    assert got.motor_cmd[29].q == 1.0 and got.crc == cmd.crc == low_cmd_crc(got)


def round_trip(name: str, sample):
    """`sample` written on topic `name` by one loopback participant, as another one reads it."""
    sender = dds.loopback()
    incoming = dds.reader(dds.loopback(sender.get_domain_id()), name)
    outgoing = dds.writer(sender, name)
    got = take_within(incoming, write=lambda: outgoing.write(sample))
    assert type(got).serialize(got) == type(sample).serialize(sample), name  # equal to float32 precision
    return got


def test_low_state_round_trips_with_its_crc():
    state = robot_state()
    state.crc = low_state_crc(state)
    got = round_trip("rt/lowstate", state)
    assert got.tick == 123456 and got.imu_state.temperature == 41 and got.motor_state[34].temperature == [64, 65]
    assert low_state_crc(got) == got.crc


def test_dex3_hand_messages_round_trip():
    hand_cmd = HandCmd_(motor_cmd=[MotorCmd_(mode=1, q=-0.5 * j, kp=1.5, kd=0.1) for j in range(7)])
    assert [m.q for m in round_trip("rt/dex3/left/cmd", hand_cmd).motor_cmd] == [-0.5 * j for j in range(7)]
    hand_state = HandState_(motor_state=[MotorState_(q=0.25 * j) for j in range(7)], power_v=24.5)
    got = round_trip("rt/dex3/right/state", hand_state)
    assert got.power_v == 24.5 and len(got.motor_state) == 7 and got.press_sensor_state == []


# A stand-in robot in its own process: answers every arm_sdk command whose CRC checks out with a LowState_ that
# echoes the commanded positions, and the command's crc as tick.
ECHO_ROBOT = textwrap.dedent(
    """
    import sys, time
    from neon_runtime.unitree import dds
    from neon_runtime.unitree.crc import low_cmd_crc, low_state_crc
    from neon_runtime.unitree.idl import LowState_

    participant = dds.loopback(int(sys.argv[1]))
    commands, states = dds.reader(participant, "rt/arm_sdk"), dds.writer(participant, "rt/lowstate")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for cmd in commands.take(N=16):
            if cmd.crc != low_cmd_crc(cmd):
                continue
            state = LowState_(mode_machine=cmd.mode_machine, tick=cmd.crc)
            for motor, command in zip(state.motor_state, cmd.motor_cmd):
                motor.q = command.q
            state.crc = low_state_crc(state)
            states.write(state)
        time.sleep(0.005)
    """
)


def test_a_second_process_receives_commands_and_answers_with_state():
    runtime = dds.loopback()
    robot = subprocess.Popen([sys.executable, "-c", ECHO_ROBOT, str(runtime.get_domain_id())])
    try:
        states, arm_sdk = dds.reader(runtime, "rt/lowstate"), dds.writer(runtime, "rt/arm_sdk")
        cmd = LowCmd_(mode_machine=5)
        for i, m in enumerate(cmd.motor_cmd):
            m.q = i / 64  # exact in float32
        fill_low_cmd_crc(cmd)

        state = take_within(states, seconds=10, write=lambda: arm_sdk.write(cmd))
        assert state.tick == cmd.crc and state.mode_machine == 5
        assert [m.q for m in state.motor_state] == [i / 64 for i in range(MOTOR_SLOTS)]
        assert low_state_crc(state) == state.crc
    finally:
        robot.kill()
        robot.wait(timeout=10)


# How unitree_sdk2py configures a named interface (ChannelFactoryInitialize(domain, "lo")), as Unitree's MuJoCo
# simulator runs on lo; Cyclone turns multicast off itself there, since lo is not multicast-capable.
UNITREE_SDK_LO_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from cyclonedds.domain import Domain, DomainParticipant
    from neon_runtime.unitree import dds
    from neon_runtime.unitree.idl import LowState_

    domain = int(sys.argv[1])
    config = (
        '<CycloneDDS><Domain Id="any"><General><Interfaces>'
        '<NetworkInterface name="lo" priority="default" multicast="default"/>'
        '</Interfaces></General></Domain></CycloneDDS>'
    )
    keep = Domain(domain, config)
    states = dds.writer(DomainParticipant(domain), "rt/lowstate")
    for tick in range(2000):
        states.write(LowState_(mode_machine=5, tick=tick))
        time.sleep(0.01)
    """
)


def test_loopback_meets_a_participant_configured_like_unitrees_sdk():
    runtime = dds.loopback()
    simulator = subprocess.Popen(
        [sys.executable, "-c", UNITREE_SDK_LO_PUBLISHER, str(runtime.get_domain_id())], stderr=subprocess.DEVNULL
    )
    try:
        state = take_within(dds.reader(runtime, "rt/lowstate"), seconds=10)
        assert state.mode_machine == 5
    finally:
        simulator.kill()
        simulator.wait(timeout=10)


def test_loopback_stays_on_lo_without_multicast_and_off_domain_zero():
    xml = dds.config_xml(17, "lo", multicast=False, peers=("127.0.0.1",))
    assert '<NetworkInterface name="lo" multicast="false"/>' in xml
    assert "<AllowMulticast>false</AllowMulticast>" in xml and '<Peer address="127.0.0.1"/>' in xml
    assert 0 not in dds.LOOPBACK_DOMAINS and min(dds.LOOPBACK_DOMAINS) >= 1
    assert dds.loopback().get_domain_id() in dds.LOOPBACK_DOMAINS


def test_domain_zero_needs_robot_true():
    for attempt in (lambda: dds.open_participant(0, "lo", multicast=False, peers=("127.0.0.1",)), lambda: dds.loopback(0)):
        with pytest.raises(ValueError, match="robot=True"):
            attempt()
    with pytest.raises(ValueError, match="0..232"):
        dds.loopback(233)


def test_unknown_interface_names_it_and_lists_the_machines():
    with pytest.raises(ValueError, match="'g1-eth9'") as error:
        dds.open_participant(3, "g1-eth9")
    assert "lo" in str(error.value).split("it has:")[1]


def test_one_process_binds_a_domain_once():
    domain = dds.loopback().get_domain_id()
    with pytest.raises(RuntimeError, match=f"domain {domain} is already open"):
        dds.open_participant(domain, "lo", multicast=True)


def test_discovery_without_multicast_needs_peers():
    with pytest.raises(ValueError, match="peers"):
        dds.open_participant(5, "lo", multicast=False)
