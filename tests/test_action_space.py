"""The G1 action space: joints, limits, groups, modes, name mapping, JSON."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import SHARED

from neon.action_space import BODY_JOINTS, ActionSpaceError, G1ActionSpace, canonical_joint_name


def test_body_joints_follow_sdk_order_with_reference_limits():
    assert len(BODY_JOINTS) == 29
    assert [j.sdk_index for j in BODY_JOINTS] == list(range(29))
    knee = BODY_JOINTS[3]
    assert (knee.name, knee.lower, knee.upper, knee.group) == ("left_knee", -0.087267, 2.8798, "legs")
    assert BODY_JOINTS[12].name == "waist_yaw" and BODY_JOINTS[15].name == "left_shoulder_pitch"
    assert BODY_JOINTS[28].name == "right_wrist_yaw"


@pytest.mark.skipif(not (SHARED / "robots/unitree_g1/g1_29dof.xml").exists(), reason="needs ../shared")
def test_body_limits_match_unitree_mujoco_model():
    root = ET.parse(SHARED / "robots/unitree_g1/g1_29dof.xml").getroot()
    ranges = {j.get("name").removesuffix("_joint"): tuple(map(float, j.get("range").split()))
              for j in root.iter("joint") if j.get("name") and j.get("range")}
    checked = 0
    for j in BODY_JOINTS:
        if j.name in ranges:
            assert ranges[j.name] == pytest.approx((j.lower, j.upper), abs=1e-4), j.name
            checked += 1
    assert checked == 29


def test_arms_only_dex3_is_unitree_lerobot_layout():
    space = G1ActionSpace("arms_only", "dex3")
    assert space.dim == 28
    assert space.names[:7] == ["left_shoulder_pitch", "left_shoulder_roll", "left_shoulder_yaw", "left_elbow",
                               "left_wrist_roll", "left_wrist_pitch", "left_wrist_yaw"]
    assert space.names[14:21] == [f"left_hand_{n}" for n in
                                  ("thumb_0", "thumb_1", "thumb_2", "index_0", "index_1", "middle_0", "middle_1")]
    assert space.groups == ["arms", "hands"]


@pytest.mark.parametrize("hand,dim", [("dex3", 28), ("dex1", 16), ("inspire", 26), ("none", 14)])
def test_hand_variants(hand, dim):
    assert G1ActionSpace("arms_only", hand).dim == dim


def test_whole_body_groups_and_locomotion():
    space = G1ActionSpace("whole_body")
    assert space.groups == ["legs", "torso", "arms", "hands", "locomotion"]
    assert space.dim == 12 + 3 + 14 + 14 + 3
    loco = space.group_slice("locomotion")
    assert space.names[loco] == ["vx", "vy", "yaw_rate"]
    assert space.upper[loco].tolist() == pytest.approx([0.5, 0.5, 0.6])


def test_neck_variant_adds_head_group():
    space = G1ActionSpace("arms_only", neck=True)
    assert space.dim == 30 and "head" in space.groups
    assert space.names[space.group_slice("head")] == ["neck_pitch", "neck_yaw"]
    assert G1ActionSpace("whole_body", neck=True).dim == 48


def test_right_hand_mirrors_left():
    space = G1ActionSpace()
    for finger in ("thumb_1", "thumb_2", "index_0", "middle_1"):
        li, ri = space.index(f"left_hand_{finger}"), space.index(f"right_hand_{finger}")
        assert (space.lower[ri], space.upper[ri]) == pytest.approx((-space.upper[li], -space.lower[li]))


def test_representation_per_group():
    space = G1ActionSpace("whole_body", representation={"arms": "relative", "legs": "relative"})
    mask = space.relative_mask()
    assert mask[space.group_slice("arms")].all() and mask[space.group_slice("legs")].all()
    assert not mask[space.group_slice("hands")].any()
    with pytest.raises(ActionSpaceError, match="locomotion"):
        G1ActionSpace("whole_body", representation={"locomotion": "relative"})
    with pytest.raises(ActionSpaceError, match="'legs'.*not in this action space"):
        G1ActionSpace("arms_only", representation={"legs": "relative"})
    with pytest.raises(ActionSpaceError, match="representation"):
        G1ActionSpace(representation={"arms": "delta"})


@pytest.mark.parametrize("raw,canonical", [
    ("left_hip_pitch_joint", "left_hip_pitch"),
    ("kLeftShoulderPitch", "left_shoulder_pitch"),
    ("L_LEG_HIP_PITCH", "left_hip_pitch"),
    ("R_SHOULDER_ROLL", "right_shoulder_roll"),
    ("observation.state.left_elbow", "left_elbow"),
    ("right_hand_thumb_0_joint", "right_hand_thumb_0"),
    ("WAIST_YAW", "waist_yaw"),
    ("kLeftHandThumb0", "left_hand_thumb_0"),
])
def test_canonical_names(raw, canonical):
    assert canonical_joint_name(raw) == canonical


def test_map_names_by_name_reports_unmapped_and_missing():
    space = G1ActionSpace("arms_only")
    rng = np.random.default_rng(0)
    source = [f"{n}_joint" for n in space.names[:20]] + ["gripper_camera_tilt"]
    order = rng.permutation(len(source))
    shuffled = [source[i] for i in order]
    m = space.map_names(shuffled)
    values = np.arange(len(shuffled), dtype=np.float32)
    vec = np.full(space.dim, np.nan, np.float32)
    vec[m.target_index] = values[m.source_index]
    for i, name in enumerate(shuffled):
        if name != "gripper_camera_tilt":
            assert vec[space.index(name[:-6])] == i
    assert m.unmapped_source == ["gripper_camera_tilt"]
    assert m.missing_target == space.names[20:]
    assert "gripper_camera_tilt" in m.report() and "right_hand_index_1" in m.report()
    with pytest.raises(ActionSpaceError, match="both map to 'left_elbow'"):
        space.map_names(["left_elbow", "kLeftElbow"])


def test_vector_from_names_errors_name_the_joint():
    space = G1ActionSpace("arms_only")
    with pytest.raises(ActionSpaceError, match="left_ebow"):
        space.vector_from_names({"left_ebow": 0.1})
    with pytest.raises(ActionSpaceError, match="missing joint"):
        space.vector_from_names({"left_elbow": 0.1})
    vec = space.vector_from_names({"left_elbow_joint": 0.1}, fill=np.zeros(space.dim))
    assert vec[space.index("left_elbow")] == pytest.approx(0.1) and vec.sum() == pytest.approx(0.1)


def test_json_round_trip(tmp_path):
    space = G1ActionSpace("whole_body", "inspire", neck=True, representation={"arms": "relative"}, fps=50)
    space.save(tmp_path)
    back = G1ActionSpace.load(tmp_path)
    assert back.to_dict() == space.to_dict()
    data = space.to_dict()
    data["joints"] = data["joints"][:-1]
    with pytest.raises(ActionSpaceError, match="incompatible"):
        G1ActionSpace.from_dict(data)
    with pytest.raises(ActionSpaceError, match="control_mode"):
        G1ActionSpace("legs_only")


def test_clip_keeps_values_inside_limits():
    space = G1ActionSpace()
    big = np.full((16, space.dim), 100.0)
    assert (space.clip(big) == space.upper).all()
