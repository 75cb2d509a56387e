"""The Unitree G1 action space: joints, limits, groups, hands, control modes.

This module is the one source of truth for joint names, joint limits and body
groups. Everything else (model heads, normalisation, safety layer, ROS node)
reads them from a `G1ActionSpace`; nothing repeats them.

Facts come from `shared/g1_reference.md` (Unitree SDK order, URDF limits).
Joints are always matched **by name**: simulators and datasets use other orders.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence

import numpy as np

ACTION_SPACE_FILE = "action_space.json"

GROUPS = ("legs", "torso", "arms", "hands", "head", "locomotion")
CONTROL_MODES = ("arms_only", "whole_body")
HAND_TYPES = ("dex3", "dex1", "inspire", "none")
REPRESENTATIONS = ("absolute", "relative")


@dataclass(frozen=True)
class Joint:
    """One action dimension: a joint (rad) or a locomotion command component."""

    name: str
    lower: float
    upper: float
    group: str
    sdk_index: int | None = None  # slot in LowCmd_/LowState_ motor arrays, body joints only


# The 29 body joints in SDK (DDS) order, 29-DOF build; limits in rad.
_BODY = [
    ("left_hip_pitch", -2.5307, 2.8798, "legs"),
    ("left_hip_roll", -0.5236, 2.9671, "legs"),
    ("left_hip_yaw", -2.7576, 2.7576, "legs"),
    ("left_knee", -0.087267, 2.8798, "legs"),
    ("left_ankle_pitch", -0.87267, 0.5236, "legs"),
    ("left_ankle_roll", -0.2618, 0.2618, "legs"),
    ("right_hip_pitch", -2.5307, 2.8798, "legs"),
    ("right_hip_roll", -2.9671, 0.5236, "legs"),
    ("right_hip_yaw", -2.7576, 2.7576, "legs"),
    ("right_knee", -0.087267, 2.8798, "legs"),
    ("right_ankle_pitch", -0.87267, 0.5236, "legs"),
    ("right_ankle_roll", -0.2618, 0.2618, "legs"),
    ("waist_yaw", -2.618, 2.618, "torso"),
    ("waist_roll", -0.52, 0.52, "torso"),
    ("waist_pitch", -0.52, 0.52, "torso"),
    ("left_shoulder_pitch", -3.0892, 2.6704, "arms"),
    ("left_shoulder_roll", -1.5882, 2.2515, "arms"),
    ("left_shoulder_yaw", -2.618, 2.618, "arms"),
    ("left_elbow", -1.0472, 2.0944, "arms"),
    ("left_wrist_roll", -1.972222054, 1.972222054, "arms"),
    ("left_wrist_pitch", -1.614429558, 1.614429558, "arms"),
    ("left_wrist_yaw", -1.614429558, 1.614429558, "arms"),
    ("right_shoulder_pitch", -3.0892, 2.6704, "arms"),
    ("right_shoulder_roll", -2.2515, 1.5882, "arms"),
    ("right_shoulder_yaw", -2.618, 2.618, "arms"),
    ("right_elbow", -1.0472, 2.0944, "arms"),
    ("right_wrist_roll", -1.972222054, 1.972222054, "arms"),
    ("right_wrist_pitch", -1.614429558, 1.614429558, "arms"),
    ("right_wrist_yaw", -1.614429558, 1.614429558, "arms"),
]
BODY_JOINTS: tuple[Joint, ...] = tuple(
    Joint(name, lo, hi, group, sdk_index=i) for i, (name, lo, hi, group) in enumerate(_BODY)
)

# Optional 2-DOF neck from a variant URDF (its DDS slots are unknown).
NECK_JOINTS: tuple[Joint, ...] = (
    Joint("neck_pitch", -0.43633, 0.62832, "head"),
    Joint("neck_yaw", -2.0071, 2.0071, "head"),
)

# Left-hand limits; the right hand mirrors them (lower, upper) -> (-upper, -lower),
# except thumb_0, which is symmetric already.
_DEX3_LEFT = [
    ("thumb_0", -1.0472, 1.0472),
    ("thumb_1", -0.7243, 1.0472),
    ("thumb_2", 0.0, 1.7453),
    ("index_0", -1.5708, 0.0),
    ("index_1", -1.7453, 0.0),
    ("middle_0", -1.5708, 0.0),
    ("middle_1", -1.7453, 0.0),
]
_INSPIRE = ["pinky", "ring", "middle", "index", "thumb_bend", "thumb_rotation"]  # 0..1000 each
ARM_JOINTS = tuple(j.name for j in BODY_JOINTS if j.group == "arms")  # the 14 arm joints, left then right


# Dex3-1 motor order on rt/dex3/{side}/cmd and /state (xr_teleoperate Dex3_1_{Left,Right}_JointIndex; Unitree's
# LeRobot G1 datasets list the hands the same way): the left hand has middle before index, the right index first.
DEX3_MOTOR_ORDER = {
    "left": ("thumb_0", "thumb_1", "thumb_2", "middle_0", "middle_1", "index_0", "index_1"),
    "right": ("thumb_0", "thumb_1", "thumb_2", "index_0", "index_1", "middle_0", "middle_1"),
}
ARM_SDK_WEIGHT_SLOT = 29  # LowCmd_.motor_cmd[29].q on rt/arm_sdk: 1 = the SDK has the arms, 0 = the robot's own


def missing_arm_joints(names) -> list[str]:
    """The arm joints (ARM_JOINTS order) not among `names`: a policy that cannot drive the arms (neon-g1 and the
    simulation refuse it)."""
    have = set(names)
    return [n for n in ARM_JOINTS if n not in have]


def _hand_joints(hand: str) -> tuple[Joint, ...]:
    joints: list[Joint] = []
    for side in ("left", "right"):
        if hand == "dex3":
            for name, lo, hi in _DEX3_LEFT:
                if side == "right":
                    lo, hi = -hi, -lo
                joints.append(Joint(f"{side}_hand_{name}", lo, hi, "hands"))
        elif hand == "dex1":
            joints.append(Joint(f"{side}_gripper", 0.0, 5.4, "hands"))
        elif hand == "inspire":
            joints.extend(Joint(f"{side}_hand_{name}", 0.0, 1000.0, "hands") for name in _INSPIRE)
    return tuple(joints)


# High-level velocity command sent through the `loco` service (SetVelocity).
# Conservative limits from a G1 agent stack: |v| <= 0.5 m/s, |yaw rate| <= 0.6 rad/s.
LOCOMOTION: tuple[Joint, ...] = (
    Joint("vx", -0.5, 0.5, "locomotion"),
    Joint("vy", -0.5, 0.5, "locomotion"),
    Joint("yaw_rate", -0.6, 0.6, "locomotion"),
)

# Which groups each control mode acts on, in action-vector order.
MODE_GROUPS: dict[str, tuple[str, ...]] = {
    "arms_only": ("arms", "hands", "head"),
    "whole_body": ("legs", "torso", "arms", "hands", "head", "locomotion"),
}


class ActionSpaceError(ValueError):
    """An action space was built or used with values that make no sense."""


@dataclass
class JointMapping:
    """How a dataset's (or a message's) name list maps onto an action space.

    `source_index[i]` is the position in the source list that feeds action
    dimension `target_index[i]`.
    """

    source_index: np.ndarray
    target_index: np.ndarray
    unmapped_source: list[str]  # source names with no matching action dimension
    missing_target: list[str]  # action dimensions no source name fills

    @property
    def complete(self) -> bool:
        return not self.missing_target

    def report(self) -> str:
        lines = [f"mapped {len(self.target_index)} dimension(s) by name"]
        if self.unmapped_source:
            lines.append(f"ignored (no such joint in the action space): {', '.join(self.unmapped_source)}")
        if self.missing_target:
            lines.append(f"not provided by the source: {', '.join(self.missing_target)}")
        return "; ".join(lines)


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SIDE_PREFIX = {"l": "left", "r": "right"}


def canonical_joint_name(name: str) -> str:
    """Normalise the many spellings of a G1 joint name to the action space's.

    Handles `left_hip_pitch_joint` (URDF/MuJoCo), `kLeftHipPitch` (SDK enum),
    `L_LEG_HIP_PITCH` (DDS docs), `observation.state.left_elbow` and similar.
    """
    n = name.strip().split(".")[-1].split("/")[-1]
    if re.fullmatch(r"k[A-Z]\w*", n):
        n = n[1:]
    n = _CAMEL.sub("_", n).lower().replace("-", "_").replace(" ", "_")
    n = re.sub(r"(?<=[a-z])(?=\d)", "_", n)  # thumb0 -> thumb_0
    n = re.sub(r"_+", "_", n).strip("_")
    for suffix in ("_joint", "_pos", "_q"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    parts = n.split("_")
    if parts and parts[0] in _SIDE_PREFIX:
        parts[0] = _SIDE_PREFIX[parts[0]]
    if len(parts) > 2 and parts[0] in ("left", "right") and parts[1] in ("leg", "arm"):
        del parts[1]
    return "_".join(parts)


@dataclass
class G1ActionSpace:
    """The ordered action dimensions for one G1 build, hand and control mode.

    The action vector is the concatenation of the mode's groups in
    `MODE_GROUPS` order; within a group, SDK order (hands: left then right).
    `representation` says per group whether the policy predicts absolute
    targets or offsets from the current state (locomotion is always absolute:
    it is a command, not a position).
    """

    control_mode: str = "arms_only"
    hand_type: str = "dex3"
    neck: bool = False
    representation: dict[str, str] = field(default_factory=dict)
    fps: float = 30.0

    def __post_init__(self) -> None:
        if self.control_mode not in CONTROL_MODES:
            raise ActionSpaceError(f"control_mode must be one of {CONTROL_MODES}, got {self.control_mode!r}")
        if self.hand_type not in HAND_TYPES:
            raise ActionSpaceError(f"hand_type must be one of {HAND_TYPES}, got {self.hand_type!r}")
        if not self.fps > 0:
            raise ActionSpaceError(f"fps must be positive, got {self.fps}")
        joints: list[Joint] = []
        for group in MODE_GROUPS[self.control_mode]:
            if group == "head":
                joints.extend(NECK_JOINTS if self.neck else ())
            elif group == "hands":
                joints.extend(_hand_joints(self.hand_type))
            elif group == "locomotion":
                joints.extend(LOCOMOTION)
            else:
                joints.extend(j for j in BODY_JOINTS if j.group == group)
        self.joints: tuple[Joint, ...] = tuple(joints)
        self._index = {j.name: i for i, j in enumerate(self.joints)}
        rep = {g: "absolute" for g in self.groups}
        for group, value in self.representation.items():
            if group not in rep:
                raise ActionSpaceError(
                    f"representation names group {group!r}, which is not in this action space "
                    f"(groups: {', '.join(self.groups)})"
                )
            if value not in REPRESENTATIONS:
                raise ActionSpaceError(f"representation[{group!r}] must be one of {REPRESENTATIONS}, got {value!r}")
            if group == "locomotion" and value == "relative":
                raise ActionSpaceError("locomotion is a velocity command and cannot be relative to the state")
            rep[group] = value
        self.representation = rep

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        return len(self.joints)

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def lower(self) -> np.ndarray:
        return np.array([j.lower for j in self.joints], dtype=np.float32)

    @property
    def upper(self) -> np.ndarray:
        return np.array([j.upper for j in self.joints], dtype=np.float32)

    @property
    def groups(self) -> list[str]:
        """Groups present, in action-vector order (empty groups left out)."""
        return [g for g in MODE_GROUPS[self.control_mode] if any(j.group == g for j in self.joints)]

    def group_slice(self, group: str) -> slice:
        idx = [i for i, j in enumerate(self.joints) if j.group == group]
        if not idx:
            raise ActionSpaceError(f"group {group!r} is not in this action space (groups: {', '.join(self.groups)})")
        return slice(idx[0], idx[-1] + 1)

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise ActionSpaceError(f"unknown joint {name!r}; this action space has: {', '.join(self.names)}") from None

    def relative_mask(self) -> np.ndarray:
        """Bool[(D,)]: True where the policy predicts offsets from the current state."""
        return np.array([self.representation[j.group] == "relative" for j in self.joints])

    def clip(self, actions: np.ndarray) -> np.ndarray:
        """Clamp Float[(..., D)] actions into the limits."""
        return np.clip(actions, self.lower, self.upper)

    # ------------------------------------------------------------ name mapping
    def map_names(self, source_names: Sequence[str]) -> JointMapping:
        """Map a list of joint names (any common spelling) onto this space by name."""
        src, dst, unmapped = [], [], []
        seen: dict[int, str] = {}
        for i, raw in enumerate(source_names):
            target = self._index.get(canonical_joint_name(raw))
            if target is None:
                unmapped.append(raw)
            elif target in seen:
                raise ActionSpaceError(
                    f"joint names {seen[target]!r} and {raw!r} both map to {self.joints[target].name!r}"
                )
            else:
                seen[target] = raw
                src.append(i)
                dst.append(target)
        missing = [j.name for k, j in enumerate(self.joints) if k not in seen]
        return JointMapping(np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), unmapped, missing)

    def vector_from_names(self, values: dict[str, float], fill: np.ndarray | None = None) -> np.ndarray:
        """Build a Float[(D,)] vector from a {joint name: value} map.

        Unknown names raise; joints left out take `fill` (or raise when no fill is given).
        """
        out = np.full(self.dim, np.nan, dtype=np.float32) if fill is None else np.array(fill, np.float32).copy()
        mapping = self.map_names(list(values))
        if mapping.unmapped_source:
            raise ActionSpaceError(
                f"unknown joint name(s): {', '.join(mapping.unmapped_source)}; expected names like "
                f"{', '.join(self.names[:3])}, ... ({self.dim} in all)"
            )
        vals = np.array(list(values.values()), dtype=np.float32)
        out[mapping.target_index] = vals[mapping.source_index]
        if fill is None and mapping.missing_target:
            raise ActionSpaceError(f"missing joint(s): {', '.join(mapping.missing_target)}")
        return out

    # -------------------------------------------------------------- JSON I/O
    def to_dict(self) -> dict:
        joints = [{"name": j.name, "group": j.group, "lower": j.lower, "upper": j.upper, "sdk_index": j.sdk_index}
                  for j in self.joints]
        return {"robot": "unitree_g1", "control_mode": self.control_mode, "hand_type": self.hand_type,
                "neck": self.neck, "fps": self.fps, "representation": dict(self.representation), "joints": joints}

    @classmethod
    def from_dict(cls, data: dict) -> G1ActionSpace:
        space = cls(data["control_mode"], data.get("hand_type", "dex3"), bool(data.get("neck", False)),
                    dict(data.get("representation", {})), float(data.get("fps", 30.0)))
        stored = data.get("joints")
        if stored is not None and [j["name"] for j in stored] != space.names:
            raise ActionSpaceError(
                "action_space.json lists joints that differ from this version of Neon's G1 action space "
                f"({len(stored)} stored vs {space.dim} expected); it was written by an incompatible version"
            )
        return space

    def save(self, directory: str | os.PathLike) -> Path:
        from neon.files import atomic_write_text

        atomic_write_text(path := Path(directory) / ACTION_SPACE_FILE, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory_or_file: str | os.PathLike) -> G1ActionSpace:
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / ACTION_SPACE_FILE
        from neon.files import read_json

        return cls.from_dict(read_json(path, ActionSpaceError))

    def describe(self) -> str:
        parts = [f"{g}={self.group_slice(g).stop - self.group_slice(g).start}" for g in self.groups]
        return f"G1 {self.control_mode} ({self.hand_type} hands): {self.dim} dims [{', '.join(parts)}]"

