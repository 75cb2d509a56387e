"""GR00T's `meta/modality.json`: named slices of the flat state/action vectors.

    {"state": {"left_arm": {"start": 0, "end": 7}, ...}, "action": {...}, "video": {...}}

Used only when the dataset's features carry no per-dimension names (with names,
joints map by name). Then Neon names every element of a slice by position: a
slice whose group name and width match a G1 group gets the G1 joint names in SDK
order (e.g. `left_arm` with 7 dims -> left_shoulder_pitch ... left_wrist_yaw;
Dex3 hands in Unitree's order, which differs between the hands); any other
slice gets `<group>.<i>` names, which map onto nothing and are reported as
unmapped.
"""

from __future__ import annotations

from neon.action_space import DEX3_MOTOR_ORDER, G1ActionSpace
from neon.data.lerobot import DatasetError

def _names(group: str, side: str = "", hand: str = "dex3") -> list[str]:
    """A group's joint names in action-space (SDK) order, read from the action space, one side's when given."""
    joints = G1ActionSpace("whole_body", hand, neck=True).joints
    return [j.name for j in joints if j.group == group and j.name.startswith(side)]


# Unitree's own Dex3 order differs between the hands (DEX3_MOTOR_ORDER, shared/g1_reference.md): by position.
_DEX3_ORDER = DEX3_MOTOR_ORDER

_G1_SLICES: dict[str, list[str]] = {
    **{f"{s}_{part}": _names(group, s + "_") for s in ("left", "right") for part, group in (("arm", "arms"), ("leg", "legs"))},
    **{f"{s}_hand": [f"{s}_hand_{j}" for j in _DEX3_ORDER[s]] for s in ("left", "right")},
    **{f"{s}_gripper": _names("hands", s + "_", "dex1") for s in ("left", "right")},
    "waist": _names("torso"), "base_velocity": _names("locomotion"), "neck": _names("head"),
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
