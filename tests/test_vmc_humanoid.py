"""Keypoint -> HumanBodyBones retargeting (streamer/humanoid.py): T-pose identity, FK round trip, directions."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from streamer.body import mhr70
from streamer.humanoid import BONES, PARENTS, forward_kinematics, retarget, stage_to_yup, yup_to_stage
from tests.humanoid_poses import posed_keypoints_stage, tpose_keypoints_yup

I = mhr70.index_of


def test_frame_conversion_is_a_proper_rotation_and_round_trips():
    p = np.random.default_rng(0).normal(size=(10, 3))
    assert np.allclose(yup_to_stage(stage_to_yup(p)), p)
    assert np.allclose(stage_to_yup(np.array([0, 0, 1.0])), [0, 1, 0])  # stage up -> Y up
    assert np.isclose(np.linalg.det(stage_to_yup(np.eye(3))), 1.0)


def test_tpose_gives_identity_local_rotations_everywhere():
    sk = retarget(yup_to_stage(tpose_keypoints_yup()))
    assert sk.valid.all()
    err = np.linalg.norm(sk.local_rotations - np.eye(3), axis=(-1, -2))
    assert err.max() < 1e-9, BONES[int(err[0].argmax())]


def test_whole_body_rotation_lands_on_hips_only():
    rot = Rotation.from_rotvec([0.3, -1.1, 0.4])
    kp = rot.apply(tpose_keypoints_yup())
    sk = retarget(yup_to_stage(kp))
    assert np.allclose(sk.world_rotations[0, 0], rot.as_matrix(), atol=1e-9)
    assert np.allclose(sk.local_rotations[0, 1:], np.eye(3), atol=1e-9)


def test_fk_of_local_pose_reproduces_joint_positions_and_bone_directions():
    kp = posed_keypoints_stage(np.random.default_rng(3), n=8)
    sk = retarget(kp)
    pos, rot = forward_kinematics(sk.local_rotations, sk.local_positions)
    assert np.abs(pos - sk.positions).max() < 1e-9
    assert np.abs(rot - sk.world_rotations).max() < 1e-9
    kp_yup = stage_to_yup(kp)
    # measured joints are the keypoints themselves
    for bone, name in (("LeftLowerArm", "left-elbow"), ("RightHand", "right-wrist"), ("LeftFoot", "left-ankle")):
        assert np.abs(pos[:, BONES.index(bone)] - kp_yup[:, I(name)]).max() < 1e-9
    # rotations alone carry the bone directions: R_world(upper arm) @ T-pose dir points at the elbow
    for bone, child, d0 in (("LeftUpperArm", "left-elbow", (1, 0, 0)), ("RightUpperLeg", "right-knee", (0, -1, 0))):
        b = BONES.index(bone)
        d = kp_yup[:, I(child)] - pos[:, b]
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        got = sk.world_rotations[:, b] @ np.asarray(d0, float)
        assert np.degrees(np.arccos(np.clip(np.sum(got * d, -1), -1, 1))).max() < 1e-5


def test_missing_keypoints_hold_the_parent_pose_without_nan():
    kp = posed_keypoints_stage(np.random.default_rng(4), n=2)
    kp[:, I("left-elbow")] = np.nan
    sk = retarget(kp)
    assert np.isfinite(sk.local_rotations).all() and np.isfinite(sk.positions).all()
    b = BONES.index("LeftUpperArm")
    assert not sk.valid[:, b].any()
    assert np.allclose(sk.local_rotations[:, b], np.eye(3))


def test_bad_shape_is_rejected_with_the_shape():
    with pytest.raises(ValueError, match=r"\(T, 70, 3\)"):
        retarget(np.zeros((3, 17, 3)))


def test_bone_table_is_topologically_ordered_and_complete():
    assert len(BONES) == 55 and len(set(BONES)) == 55
    assert all(p < b for b, p in enumerate(PARENTS))
    for required in ("Hips", "UpperChest", "LeftLittleDistal", "RightThumbProximal", "Jaw", "LeftEye", "RightToes"):
        assert required in BONES
