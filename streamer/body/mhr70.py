"""The MHR-70 keypoint layout used on every topic (SAM-3D Body's `mhr70`, the first 70 of 308 MHR keypoints).

Facts from `sam_3d_body/metadata/mhr70.py` (see ../shared/reference/mhr70_layout.json). Indices:
0-20 body (COCO-17 order, then 6 foot points), 21-41 right hand (41 = right wrist),
42-62 left hand (62 = left wrist), 63-69 extra arm/neck points (69 = neck).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "BODY", "COCO17", "FEET", "EXTRA", "FINGERTIPS", "FINGER_JOINTS", "FLIP_PERMUTATION", "GROUPS", "LEFT_HAND",
    "LINKS", "NAMES", "NUM_KEYPOINTS", "OPENPOSE_BODY25_TO_MHR70", "RIGHT_HAND", "WRISTS", "index_of",
]

NAMES: tuple[str, ...] = (
    'nose', 'left-eye', 'right-eye', 'left-ear',
    'right-ear', 'left-shoulder', 'right-shoulder', 'left-elbow',
    'right-elbow', 'left-hip', 'right-hip', 'left-knee',
    'right-knee', 'left-ankle', 'right-ankle', 'left-big-toe-tip',
    'left-small-toe-tip', 'left-heel', 'right-big-toe-tip', 'right-small-toe-tip',
    'right-heel', 'right-thumb-tip', 'right-thumb-first-joint', 'right-thumb-second-joint',
    'right-thumb-third-joint', 'right-index-tip', 'right-index-first-joint', 'right-index-second-joint',
    'right-index-third-joint', 'right-middle-tip', 'right-middle-first-joint', 'right-middle-second-joint',
    'right-middle-third-joint', 'right-ring-tip', 'right-ring-first-joint', 'right-ring-second-joint',
    'right-ring-third-joint', 'right-pinky-tip', 'right-pinky-first-joint', 'right-pinky-second-joint',
    'right-pinky-third-joint', 'right-wrist', 'left-thumb-tip', 'left-thumb-first-joint',
    'left-thumb-second-joint', 'left-thumb-third-joint', 'left-index-tip', 'left-index-first-joint',
    'left-index-second-joint', 'left-index-third-joint', 'left-middle-tip', 'left-middle-first-joint',
    'left-middle-second-joint', 'left-middle-third-joint', 'left-ring-tip', 'left-ring-first-joint',
    'left-ring-second-joint', 'left-ring-third-joint', 'left-pinky-tip', 'left-pinky-first-joint',
    'left-pinky-second-joint', 'left-pinky-third-joint', 'left-wrist', 'left-olecranon',
    'right-olecranon', 'left-cubital-fossa', 'right-cubital-fossa', 'left-acromion',
    'right-acromion', 'neck',
)
NUM_KEYPOINTS = len(NAMES)  # 70
_INDEX = {name: i for i, name in enumerate(NAMES)}

COCO17 = np.arange(0, 17)  # nose .. right-ankle, in COCO order
FEET = np.arange(15, 21)  # big toe, small toe, heel per foot (left first)
BODY = np.arange(0, 21)
RIGHT_HAND = np.arange(21, 42)  # fingertips to first joints, 41 = right-wrist
LEFT_HAND = np.arange(42, 63)  # 62 = left-wrist
EXTRA = np.arange(63, 70)  # olecranon, cubital fossa, acromion (left, right), neck
WRISTS = np.array([62, 41])  # left, right
FINGERTIPS = np.array([21, 25, 29, 33, 37, 42, 46, 50, 54, 58])  # right thumb..pinky, then left
FINGER_JOINTS = np.setdiff1d(np.r_[21:41, 42:62], FINGERTIPS)  # first, second, third joints of every finger

# Anatomical groups (name -> indices), e.g. for per-group errors and weights.
GROUPS: dict[str, np.ndarray] = {
    "face": np.arange(0, 5),
    "shoulders": np.array([5, 6]),
    "elbows": np.array([7, 8]),
    "wrists": WRISTS,
    "hips": np.array([9, 10]),
    "knees": np.array([11, 12]),
    "ankles": np.array([13, 14]),
    "feet": FEET,
    "finger_joints": FINGER_JOINTS,
    "fingertips": FINGERTIPS,
    "olecranon": np.array([63, 64]),
    "cubital_fossa": np.array([65, 66]),
    "acromion": np.array([67, 68]),
    "neck": np.array([69]),
}

# 65 bones as (parent-ish, child) index pairs, for drawing and bone-length checks.
LINKS: tuple[tuple[int, int], ...] = (
    (13, 11), (11, 9), (14, 12), (12, 10), (9, 10), (5, 9), (6, 10), (5, 6),
    (5, 7), (6, 8), (7, 62), (8, 41), (1, 2), (0, 1), (0, 2), (1, 3),
    (2, 4), (3, 5), (4, 6), (13, 15), (13, 16), (13, 17), (14, 18), (14, 19),
    (14, 20), (62, 45), (45, 44), (44, 43), (43, 42), (62, 49), (49, 48), (48, 47),
    (47, 46), (62, 53), (53, 52), (52, 51), (51, 50), (62, 57), (57, 56), (56, 55),
    (55, 54), (62, 61), (61, 60), (60, 59), (59, 58), (41, 24), (24, 23), (23, 22),
    (22, 21), (41, 28), (28, 27), (27, 26), (26, 25), (41, 32), (32, 31), (31, 30),
    (30, 29), (41, 36), (36, 35), (35, 34), (34, 33), (41, 40), (40, 39), (39, 38),
    (38, 37),
)

# FLIP_PERMUTATION[i] is the index of i's mirror image (left <-> right).
FLIP_PERMUTATION = np.array([
    0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14,
    13, 18, 19, 20, 15, 16, 17, 42, 43, 44, 45, 46, 47, 48,
    49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62,
    21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 64, 63, 66, 65, 68, 67, 69,
])

# OpenPose BODY_25 index -> MHR-70 index. BODY_25 8 (mid-hip) has no MHR-70 point.
OPENPOSE_BODY25_TO_MHR70: dict[int, int] = {0: 0, 1: 69, 2: 6, 3: 8, 4: 41, 5: 5, 6: 7, 7: 62, 9: 10, 10: 12, 11: 14, 12: 9, 13: 11, 14: 13, 15: 2, 16: 1, 17: 4, 18: 3, 19: 15, 20: 16, 21: 17, 22: 18, 23: 19, 24: 20}


def index_of(name: str) -> int:
    """Index of a keypoint name ("left-wrist"); raises KeyError listing the known names."""
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown MHR-70 keypoint {name!r}; known: {', '.join(NAMES)}") from None
