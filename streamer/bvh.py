"""BVH export of a take's poses (HumanBodyBones skeleton of `streamer.humanoid`).

Frame and units: the Y-up avatar frame (right-handed, +Y up, the performer's left at +X), scaled by
`scale` (default 100: centimetres, the usual BVH unit). Rest pose = the T-pose of `streamer.humanoid`
with bone offsets = the per-bone median of the take's local offsets, so a take of a rigid body
round-trips exactly; `roundtrip_error` measures what constant offsets cost for a real one.
Channels: root `Xposition Yposition Zposition Zrotation Xrotation Yrotation`, joints
`Zrotation Xrotation Yrotation`; Euler angles in degrees with R = Rz @ Rx @ Ry (column vectors).
Leaf bones end in an `End Site` 0.05 m (scaled) along their T-pose direction, or along the parent's.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from streamer.humanoid import BONES, PARENTS, Skeleton, forward_kinematics, tpose_direction

__all__ = ["bvh_text", "rest_offsets", "roundtrip_error", "write_bvh"]

_END_SITE_M = 0.05


def rest_offsets(skeleton: Skeleton) -> np.ndarray:
    """(B, 3) metres: per-bone median of the local offsets over the take (Hips: zero)."""
    offsets = np.median(skeleton.local_positions, axis=0)
    offsets[0] = 0.0
    return offsets


def roundtrip_error(skeleton: Skeleton) -> np.ndarray:
    """(T, B) metres: |FK(BVH rest offsets, local rotations) - skeleton positions| per frame and bone."""
    local_pos = np.broadcast_to(rest_offsets(skeleton), skeleton.local_positions.shape).copy()
    local_pos[:, 0] = skeleton.positions[:, 0]
    positions, _ = forward_kinematics(skeleton.local_rotations, local_pos)
    return np.linalg.norm(positions - skeleton.positions, axis=-1)


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {b: [] for b in range(len(BONES))}
    for b, p in enumerate(PARENTS):
        if p >= 0:
            out[p].append(b)
    return out


def bvh_text(skeleton: Skeleton, frame_time_s: float, *, scale: float = 100.0) -> str:
    """The whole BVH file for `skeleton` (T frames) as text."""
    if frame_time_s <= 0:
        raise ValueError(f"frame_time_s must be > 0, got {frame_time_s}")
    n_frames = skeleton.positions.shape[0]
    if n_frames == 0:
        raise ValueError("skeleton has no frames")
    offsets = rest_offsets(skeleton) * scale
    children = _children()
    out = io.StringIO()
    out.write("HIERARCHY\n")

    def joint(b: int, depth: int) -> None:
        pad = "  " * depth
        head = "ROOT" if PARENTS[b] < 0 else "JOINT"
        out.write(f"{pad}{head} {BONES[b]}\n{pad}{{\n")
        out.write(f"{pad}  OFFSET {offsets[b, 0]:.6f} {offsets[b, 1]:.6f} {offsets[b, 2]:.6f}\n")
        if PARENTS[b] < 0:
            out.write(f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation\n")
        else:
            out.write(f"{pad}  CHANNELS 3 Zrotation Xrotation Yrotation\n")
        if children[b]:
            for c in children[b]:
                joint(c, depth + 1)
        else:
            end = tpose_direction(BONES[b]) * _END_SITE_M * scale
            out.write(f"{pad}  End Site\n{pad}  {{\n{pad}    OFFSET {end[0]:.6f} {end[1]:.6f} {end[2]:.6f}\n{pad}  }}\n")
        out.write(f"{pad}}}\n")

    joint(0, 0)
    order = _depth_first()
    euler = Rotation.from_matrix(skeleton.local_rotations[:, order].reshape(-1, 3, 3)).as_euler("ZXY", degrees=True)
    euler = euler.reshape(n_frames, len(order), 3)
    root = skeleton.positions[:, 0] * scale
    out.write(f"MOTION\nFrames: {n_frames}\nFrame Time: {frame_time_s:.6f}\n")
    for t in range(n_frames):
        values = np.concatenate([root[t], euler[t].ravel()])
        out.write(" ".join(f"{v:.6f}" for v in values) + "\n")
    return out.getvalue()


def write_bvh(path: str | os.PathLike, skeleton: Skeleton, frame_time_s: float, *, scale: float = 100.0) -> None:
    """Write `bvh_text(...)` to `path`."""
    Path(path).write_text(bvh_text(skeleton, frame_time_s, scale=scale))


def _depth_first() -> list[int]:
    children = _children()
    order: list[int] = []

    def visit(b: int) -> None:
        order.append(b)
        for c in children[b]:
            visit(c)

    visit(0)
    return order
