"""Test support: keypoints of the humanoid T-pose and of randomly bent, turned poses (stage frame)."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from streamer.body import mhr70
from streamer.humanoid import stage_to_yup, tpose_keypoints, yup_to_stage

__all__ = ["posed_keypoints_stage", "tpose_keypoints_yup"]

I = mhr70.index_of


def tpose_keypoints_yup() -> np.ndarray:
    """(70, 3) keypoints of the defined T-pose in the Y-up avatar frame (left at +X, facing +Z)."""
    return stage_to_yup(tpose_keypoints())


def posed_keypoints_stage(rng: np.random.Generator, n: int = 5) -> np.ndarray:
    """(n, 70, 3) stage-frame keypoints: the T-pose with random elbow/knee bends, turned and moved."""
    base = tpose_keypoints_yup()
    out = []
    for _ in range(n):
        kp = base.copy()
        for s in ("left", "right"):
            for joint, chain in (
                ("elbow", ["wrist", *[f"{f}-{j}" for f in ("thumb", "index", "middle", "ring", "pinky")
                                      for j in ("third-joint", "second-joint", "first-joint", "tip")]]),
                ("knee", ["ankle", "heel", "big-toe-tip", "small-toe-tip"]),
            ):
                rot = Rotation.from_rotvec(rng.normal(0, 0.6, 3))
                pivot = kp[I(f"{s}-{joint}")]
                idx = [I(f"{s}-{c}") for c in chain]
                kp[idx] = rot.apply(kp[idx] - pivot) + pivot
        body = Rotation.from_rotvec(rng.normal(0, 0.5, 3))
        kp = body.apply(kp) + rng.normal(0, 1, 3)
        out.append(yup_to_stage(kp))
    return np.stack(out)
