"""GR00T's `meta/modality.json`: named slices of the flat state/action vectors.

    {"state": {"left_arm": {"start": 0, "end": 7}, ...}, "action": {...}, "video": {...}}

Neon names every element of a slice so the action space can map it: a slice
whose group name and width match a G1 group gets the G1 joint names in SDK
order (e.g. `left_arm` with 7 dims -> left_shoulder_pitch ... left_wrist_yaw);
any other slice gets `<group>.<i>` names, which map onto nothing and are
reported as unmapped.
"""

from __future__ import annotations

from neon.action_space import BODY_JOINTS, G1ActionSpace
from neon.data.lerobot import DatasetError

_G1_SLICES: dict[str, list[str]] = {
    "left_arm": [j.name for j in BODY_JOINTS[15:22]],
    "right_arm": [j.name for j in BODY_JOINTS[22:29]],
    "left_leg": [j.name for j in BODY_JOINTS[0:6]],
    "right_leg": [j.name for j in BODY_JOINTS[6:12]],
    "waist": [j.name for j in BODY_JOINTS[12:15]],
    "left_hand": [n for n in G1ActionSpace("arms_only", "dex3").names if n.startswith("left_hand_")],
    "right_hand": [n for n in G1ActionSpace("arms_only", "dex3").names if n.startswith("right_hand_")],
    "left_gripper": ["left_gripper"],
    "right_gripper": ["right_gripper"],
    "base_velocity": ["vx", "vy", "yaw_rate"],
    "neck": ["neck_pitch", "neck_yaw"],
}


def modality_names(groups: dict, width: int) -> list[str]:
    """Names for the `width` elements of a flat vector described by one modality.json section."""
    names = [f"unnamed.{i}" for i in range(width)]
    for group, spec in groups.items():
        try:
            start, end = int(spec["start"]), int(spec["end"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"modality.json: group {group!r} needs integer 'start' and 'end'") from None
        if not 0 <= start < end <= width:
            raise DatasetError(f"modality.json: group {group!r} spans {start}:{end}, outside the vector's {width} dims")
        g1 = _G1_SLICES.get(group)
        names[start:end] = g1 if g1 is not None and len(g1) == end - start else [f"{group}.{i}" for i in range(end - start)]
    return names
