"""Test support: keypoints of the humanoid T-pose and of randomly bent, turned poses (stage frame)."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from streamer.body import mhr70
from streamer.humanoid import yup_to_stage

__all__ = ["posed_keypoints_stage", "tpose_keypoints_yup"]

I = mhr70.index_of


def tpose_keypoints_yup() -> np.ndarray:
    """(70, 3) keypoints of the defined T-pose in the Y-up avatar frame (left at +X, facing +Z)."""
    kp = np.full((70, 3), np.nan)
    kp[I("nose")] = (0, 1.65, 0.1)
    for s, x in (("left", 1.0), ("right", -1.0)):
        kp[I(f"{s}-ear")] = (x * 0.08, 1.65, 0)
        kp[I(f"{s}-eye")] = (x * 0.03, 1.7, 0.08)
        kp[I(f"{s}-hip")] = (x * 0.1, 0.9, 0)
        kp[I(f"{s}-knee")] = (x * 0.1, 0.5, 0)
        kp[I(f"{s}-ankle")] = (x * 0.1, 0.1, 0)
        kp[I(f"{s}-heel")] = (x * 0.1, 0.05, -0.05)
        kp[I(f"{s}-big-toe-tip")] = (x * 0.07, 0.1, 0.15)
        kp[I(f"{s}-small-toe-tip")] = (x * 0.13, 0.1, 0.15)
        kp[I(f"{s}-shoulder")] = (x * 0.2, 1.5, 0)
        kp[I(f"{s}-elbow")] = (x * 0.5, 1.5, 0)
        kp[I(f"{s}-wrist")] = (x * 0.75, 1.5, 0)
        for finger, z in (("index", 0.03), ("middle", 0.0), ("ring", -0.02), ("pinky", -0.04)):
            base = np.array((x * 0.85, 1.5, z))
            for joint, dx in (("third-joint", 0), ("second-joint", 0.04), ("first-joint", 0.07), ("tip", 0.09)):
                kp[I(f"{s}-{finger}-{joint}")] = base + (x * dx, 0, 0)
        thumb_dir = np.array((x, 0, 1)) / np.sqrt(2)
        for joint, d in (("third-joint", 0.03), ("second-joint", 0.06), ("first-joint", 0.09), ("tip", 0.11)):
            kp[I(f"{s}-thumb-{joint}")] = np.array((x * 0.75, 1.5, 0)) + d * thumb_dir
        kp[I(f"{s}-olecranon")] = (x * 0.5, 1.5, -0.03)
        kp[I(f"{s}-cubital-fossa")] = (x * 0.5, 1.5, 0.03)
        kp[I(f"{s}-acromion")] = (x * 0.21, 1.52, 0)
    kp[I("neck")] = (0, 1.5, 0)
    assert np.isfinite(kp).all()
    return kp


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
