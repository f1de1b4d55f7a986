"""BVH export (streamer/bvh.py, `streamer export bvh`): parsed by an independent parser (bvhio), joints round-trip."""
from __future__ import annotations

import numpy as np
import pytest

from protocol import Verdict
from streamer.body import mhr70
from streamer.humanoid import BONES, retarget, yup_to_stage
from streamer.recording import TakeWriter
from tests.humanoid_poses import posed_keypoints_stage
from tests.test_avatar import make_pose
from tools.export import main as export_main

bvhio = pytest.importorskip("bvhio", reason="bvhio (test extra) is the independent BVH parser")
I = mhr70.index_of
T0 = 1_000_000_000_000
TOL_M = 1e-4  # BVH text keeps 6 decimals of centimetres; the synthetic body is rigid


def write_pose_take(path, keypoints, verdicts=None):
    with TakeWriter(path) as take:
        for i, kp in enumerate(keypoints):
            pose = make_pose(kp, i)
            pose.t_ns = T0 + i * 33_333_333
            if verdicts is not None:
                pose.verdict = verdicts[i]
            take.write(pose, log_time_ns=pose.t_ns + 1_000_000)


def bvh_world_positions(path, frames: int) -> tuple[dict[str, np.ndarray], object]:
    """Joint name -> (T, 3) stage-frame metres, by bvhio's own forward kinematics."""
    root = bvhio.readAsHierarchy(str(path))
    layout = root.layout()
    out = {j.Name: np.zeros((frames, 3)) for j, _, _ in layout}
    for f in range(frames):
        root.loadPose(f, recursive=True)
        for j, _, _ in layout:
            out[j.Name][f] = yup_to_stage(np.array(j.PositionWorld) / 100.0)
    return out, bvhio.readAsBvh(str(path))


def test_export_parses_and_joint_positions_round_trip(tmp_path, capsys):
    keypoints = posed_keypoints_stage(np.random.default_rng(11), n=12).astype(np.float32).astype(float)
    take = tmp_path / "take.mcap"
    write_pose_take(take, keypoints)
    out = tmp_path / "take.bvh"
    assert export_main(["bvh", str(take), str(out)]) == 0
    assert "12 frames at 30.00 fps" in capsys.readouterr().out
    joints, container = bvh_world_positions(out, 12)
    assert container.FrameCount == 12 and container.FrameTime == pytest.approx(1 / 30, abs=1e-6)
    assert set(joints) == set(BONES)
    for bone, kp in (("LeftUpperArm", "left-shoulder"), ("LeftLowerArm", "left-elbow"), ("LeftHand", "left-wrist"),
                     ("RightLowerLeg", "right-knee"), ("RightFoot", "right-ankle"), ("Neck", "neck"),
                     ("LeftIndexIntermediate", "left-index-second-joint")):
        err = np.linalg.norm(joints[bone] - keypoints[:, I(kp)], axis=-1)
        assert err.max() < TOL_M, (bone, err.max())
    # every joint, synthetic spine included, matches the retargeted skeleton
    skeleton = retarget(keypoints)
    for b, bone in enumerate(BONES):
        assert np.abs(joints[bone] - yup_to_stage(skeleton.positions[:, b])).max() < TOL_M, bone


def test_unusable_poses_hold_the_previous_frame(tmp_path):
    keypoints = posed_keypoints_stage(np.random.default_rng(12), n=4)
    verdicts = [Verdict.GOOD, Verdict.UNUSABLE, Verdict.GOOD, Verdict.GOOD]
    take = tmp_path / "take.mcap"
    write_pose_take(take, keypoints, verdicts)
    out = tmp_path / "take.bvh"
    assert export_main(["bvh", str(take), str(out)]) == 0
    joints, _ = bvh_world_positions(out, 4)
    wrist = joints["RightHand"]
    assert np.abs(wrist[1] - wrist[0]).max() < TOL_M
    assert np.abs(wrist[2] - keypoints[2, I("right-wrist")]).max() < TOL_M


def test_take_without_poses_is_an_error_naming_the_file(tmp_path, capsys):
    take = tmp_path / "empty.mcap"
    with TakeWriter(take):
        pass
    assert export_main(["bvh", str(take), str(tmp_path / "x.bvh")]) == 1
    assert "empty.mcap" in capsys.readouterr().out
