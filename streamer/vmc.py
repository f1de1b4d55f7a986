"""VMC protocol (OSC) frames for a game-engine avatar: handedness conversion and bundle building.

Frames (the conversion, documented once):
1. stage world: right-handed, Z up, metres (fitter output, `Pose.keypoints`).
2. Y-up avatar frame (glTF): right-handed, +Y up; `streamer.humanoid.stage_to_yup`: (x, y, z) -> (x, z, -y).
3. Unity: left-handed, +Y up, +Z forward: mirror X. Positions (x, y, z) -> (-x, y, z); rotations
   R -> M R M with M = diag(-1, 1, 1), i.e. quaternion XYZW (x, y, z, w) -> (x, -y, -z, w).
Composed, stage -> Unity positions are (x, y, z) -> (-x, z, -y).

Rotations are local `HumanBodyBones` rotations relative to the T-pose of `streamer.humanoid`
(Unity humanoid T-pose: arms along +-X, facing +Z), quaternions XYZW with sign continuity
(each bone's quaternion is flipped into the hemisphere of its previous one). Positions are the
local offsets to the parent bone; `/VMC/Ext/Root/Pos` is the stage origin (identity), so the Hips
bone carries the body's world placement.

One bundle per frame: `/VMC/Ext/Root/Pos`, one `/VMC/Ext/Bone/Pos` per bone (all 55 HumanBodyBones),
`/VMC/Ext/OK 1`, `/VMC/Ext/T time_s`. About 3 KB (IP-fragmented off-host; fine on a LAN).
"""
from __future__ import annotations

from dataclasses import dataclass

import struct

import numpy as np
from scipy.spatial.transform import Rotation

from streamer.humanoid import BONES, Skeleton, retarget

__all__ = [
    "VmcFrame",
    "continuous_quaternions",
    "matrices_to_quaternions_xyzw",
    "quaternions_xyzw_to_matrices",
    "unity_to_yup_positions",
    "unity_to_yup_rotations",
    "vmc_bundle",
    "vmc_frame_from_keypoints",
    "vmc_frames_from_skeleton",
    "yup_to_unity_positions",
    "yup_to_unity_rotations",
]

_MIRROR_X = np.diag([-1.0, 1.0, 1.0])


def yup_to_unity_positions(points: np.ndarray) -> np.ndarray:
    """(..., 3) right-handed Y-up -> Unity left-handed Y-up: (-x, y, z)."""
    return np.asarray(points, float) * np.array([-1.0, 1.0, 1.0])


unity_to_yup_positions = yup_to_unity_positions  # the mirror is its own inverse


def yup_to_unity_rotations(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices, right-handed Y-up -> Unity: M R M, M = diag(-1, 1, 1)."""
    return _MIRROR_X @ np.asarray(rotations, float) @ _MIRROR_X


unity_to_yup_rotations = yup_to_unity_rotations


def matrices_to_quaternions_xyzw(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions, XYZW."""
    r = np.asarray(rotations, float)
    return Rotation.from_matrix(r.reshape(-1, 3, 3)).as_quat().reshape(r.shape[:-2] + (4,))


def quaternions_xyzw_to_matrices(quaternions: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions XYZW -> (..., 3, 3) rotation matrices."""
    q = np.asarray(quaternions, float)
    return Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(q.shape[:-1] + (3, 3))


def continuous_quaternions(quaternions: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """(..., 4) quaternions flipped where needed so each lies in the hemisphere of `previous` (same shape)."""
    q = np.asarray(quaternions, float)
    if previous is None:
        return q.copy()
    flip = np.sum(q * previous, -1, keepdims=True) < 0
    return np.where(flip, -q, q)


@dataclass(frozen=True)
class VmcFrame:
    """One avatar frame in Unity coordinates.

    bone_names: HumanBodyBones names (B,). local_positions: (B, 3) metres, offset to the parent bone.
    local_rotations: (B, 4) XYZW, relative to the T-pose. root_position (3,), root_rotation (4,) XYZW.
    """

    bone_names: tuple[str, ...]
    local_positions: np.ndarray
    local_rotations: np.ndarray
    root_position: np.ndarray
    root_rotation: np.ndarray


def vmc_frames_from_skeleton(skeleton: Skeleton, previous: np.ndarray | None = None) -> list[VmcFrame]:
    """Convert a retargeted `Skeleton` (T frames, Y-up) to Unity VMC frames with quaternion sign continuity.

    previous: (B, 4) quaternions of the frame before the first (None at the start of a stream).
    """
    pos_u = yup_to_unity_positions(skeleton.local_positions)
    quat_u = matrices_to_quaternions_xyzw(yup_to_unity_rotations(skeleton.local_rotations))
    frames = []
    for t in range(pos_u.shape[0]):
        q = continuous_quaternions(quat_u[t], previous)
        previous = q
        frames.append(VmcFrame(BONES, pos_u[t], q, np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0])))
    return frames


def vmc_frame_from_keypoints(keypoints_stage: np.ndarray, previous: np.ndarray | None = None) -> VmcFrame:
    """One VMC frame from fitted keypoints (70, 3), metres, stage world (Z up)."""
    return vmc_frames_from_skeleton(retarget(np.asarray(keypoints_stage)[None]), previous)[0]


def _osc_string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def _osc_message(address: str, *args) -> bytes:
    """One OSC 1.0 message: address, type tags (s, i, f), big-endian arguments."""
    tags, body = ",", []
    for value in args:
        if isinstance(value, str):
            tags += "s"
            body.append(_osc_string(value))
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            tags += "i"
            body.append(struct.pack(">i", int(value)))
        else:
            tags += "f"
            body.append(struct.pack(">f", float(value)))
    return _osc_string(address) + _osc_string(tags) + b"".join(body)


_BUNDLE_HEAD = _osc_string("#bundle") + struct.pack(">Q", 1)  # time tag 1 = immediately


def vmc_bundle(frame: VmcFrame, time_s: float) -> bytes:
    """The OSC bundle (bytes, one UDP datagram) of one frame: Root/Pos, all Bone/Pos, OK 1, T time_s."""
    messages = [_osc_message("/VMC/Ext/Root/Pos", "root", *frame.root_position, *frame.root_rotation)]
    values = np.concatenate([frame.local_positions, frame.local_rotations], axis=1).astype(">f4")
    for name, row in zip(frame.bone_names, values):
        messages.append(_osc_string("/VMC/Ext/Bone/Pos") + _osc_string(",s" + "f" * 7) + _osc_string(name)
                        + row.tobytes())
    messages.append(_osc_message("/VMC/Ext/OK", 1))
    messages.append(_osc_message("/VMC/Ext/T", float(time_s)))
    return _BUNDLE_HEAD + b"".join(struct.pack(">i", len(m)) + m for m in messages)
