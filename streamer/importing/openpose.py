"""OpenPose / Pose2Sim JSON keypoint folders -> MHR-70 arrays.

One folder per camera (`camNN_json/`), one JSON file per frame: `{"people": [{"pose_keypoints_2d":
[x, y, c] * J, ...}, ...]}`, pixels. A person entry without `pose_keypoints_2d` (Pose2Sim writes `{}`)
is "no detection"; a keypoint with confidence 0 is missing (OpenPose writes 0, 0, 0).

Layouts: BODY_25B (OpenPose experimental, the Pose2Sim demo's; COCO-17 order first) and BODY_25.
Points without an MHR-70 counterpart (BODY_25B head top, BODY_25 mid-hip) are dropped; the MHR-70
points the layout lacks (hands, extra arm points) stay missing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.body.mhr70 import NUM_KEYPOINTS, OPENPOSE_BODY25_TO_MHR70, index_of
from streamer.calibration import Rig
from streamer.calibration_io import load_calibration

__all__ = [
    "BODY25B_NAMES",
    "BODY25B_TO_MHR70",
    "LAYOUTS",
    "OpenPoseError",
    "PersonKeypoints",
    "camera_folders",
    "default_pose2sim_calibration",
    "frame_files",
    "match_cameras",
    "pose2sim_cameras",
    "read_frame",
    "to_mhr70",
]

BODY25B_NAMES = (
    "Nose", "LEye", "REye", "LEar", "REar", "LShoulder", "RShoulder", "LElbow", "RElbow", "LWrist", "RWrist",
    "LHip", "RHip", "LKnee", "RKnee", "LAnkle", "RAnkle", "Neck", "Head", "LBigToe", "LSmallToe", "LHeel",
    "RBigToe", "RSmallToe", "RHeel",
)
# BODY_25B index -> MHR-70 index (18 "Head" = top of head has no MHR-70 point).
BODY25B_TO_MHR70: dict[int, int] = {
    0: index_of("nose"), 1: index_of("left-eye"), 2: index_of("right-eye"), 3: index_of("left-ear"),
    4: index_of("right-ear"), 5: index_of("left-shoulder"), 6: index_of("right-shoulder"),
    7: index_of("left-elbow"), 8: index_of("right-elbow"), 9: index_of("left-wrist"), 10: index_of("right-wrist"),
    11: index_of("left-hip"), 12: index_of("right-hip"), 13: index_of("left-knee"), 14: index_of("right-knee"),
    15: index_of("left-ankle"), 16: index_of("right-ankle"), 17: index_of("neck"),
    19: index_of("left-big-toe-tip"), 20: index_of("left-small-toe-tip"), 21: index_of("left-heel"),
    22: index_of("right-big-toe-tip"), 23: index_of("right-small-toe-tip"), 24: index_of("right-heel"),
}
LAYOUTS: dict[str, tuple[int, dict[int, int]]] = {
    "body25b": (25, BODY25B_TO_MHR70),
    "body25": (25, OPENPOSE_BODY25_TO_MHR70),
}

_CAMERA_FOLDER = re.compile(r"^(?P<name>.+)_json$")
_FRAME_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last run of digits in the file stem


class OpenPoseError(ValueError):
    """A JSON folder or file that cannot be read; names the path and what was expected."""


@dataclass(frozen=True, slots=True)
class PersonKeypoints:
    """One detected person: keypoints (J, 2) pixels NaN where missing; confidence (J,) 0 where missing."""

    keypoints: np.ndarray
    confidence: np.ndarray


def match_cameras(names: list[str], rig_names: list[str]) -> list[str]:
    """Rig camera name for each data camera name: the exact name, else the one rig name with the same number
    (Pose2Sim's `cam01` folder <-> `cam_01` calibration). Raises ValueError when none or several match."""
    out = []
    for name in names:
        if name in rig_names:
            out.append(name)
            continue
        digits = "".join(ch for ch in name if ch.isdigit())
        same = [n for n in rig_names if digits and _number(n) == _number(name)]
        if len(same) != 1:
            raise ValueError(f"camera {name!r}: no unique calibration camera with number {digits!r} in {rig_names}")
        out.append(same[0])
    return out


def _number(name: str) -> int | None:
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else None


def camera_folders(pose_dir) -> dict[str, Path]:
    """`pose_dir/<name>_json/` folders -> {name: folder}, sorted by name. Other entries are ignored."""
    pose_dir = Path(pose_dir)
    if not pose_dir.is_dir():
        raise OpenPoseError(f"{pose_dir}: not a folder (expected one <camera>_json/ folder per camera)")
    found = {}
    for entry in sorted(pose_dir.iterdir()):
        match = _CAMERA_FOLDER.match(entry.name)
        if entry.is_dir() and match:
            found[match.group("name")] = entry
    if not found:
        raise OpenPoseError(f"{pose_dir}: no <camera>_json/ folders")
    return found


def frame_files(folder) -> list[tuple[int, Path]]:
    """`*.json` files of one camera folder -> [(frame number, path)], by frame number (last digits of the stem)."""
    out = []
    for path in Path(folder).iterdir():
        if path.suffix != ".json":
            continue
        match = _FRAME_NUMBER.search(path.stem)
        if match is None:
            raise OpenPoseError(f"{path}: no frame number in the file name")
        out.append((int(match.group(1)), path))
    out.sort()
    numbers = [n for n, _ in out]
    if len(set(numbers)) != len(numbers):
        raise OpenPoseError(f"{folder}: two files share a frame number")
    return out


def read_frame(path, num_joints: int = 25) -> list[PersonKeypoints]:
    """One OpenPose JSON file -> the persons with a `pose_keypoints_2d` of `num_joints` * 3 numbers."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OpenPoseError(f"{path}: cannot read JSON: {exc}") from None
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise OpenPoseError(f"{path}: expected an object with a 'people' list")
    persons = []
    for i, person in enumerate(people):
        flat = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if not flat:  # Pose2Sim's empty {} entry: no detection
            continue
        try:
            array = np.asarray(flat, dtype=np.float64).reshape(num_joints, 3)
        except (TypeError, ValueError):
            raise OpenPoseError(
                f"{path}: people[{i}].pose_keypoints_2d: expected {num_joints * 3} numbers, got {len(flat)}"
            ) from None
        confidence = np.where(np.isfinite(array[:, 2]), np.clip(array[:, 2], 0.0, 1.0), 0.0)
        keypoints = np.where((confidence > 0)[:, None], array[:, :2], np.nan)
        persons.append(PersonKeypoints(keypoints, np.where(np.isfinite(keypoints[:, 0]), confidence, 0.0)))
    return persons


def to_mhr70(person: PersonKeypoints, mapping: dict[int, int]) -> PersonKeypoints:
    """Re-index a person into the MHR-70 layout; unmapped MHR-70 points are NaN with confidence 0."""
    keypoints = np.full((NUM_KEYPOINTS, 2), np.nan)
    confidence = np.zeros(NUM_KEYPOINTS)
    source = np.fromiter(mapping.keys(), dtype=int)
    target = np.fromiter(mapping.values(), dtype=int)
    keypoints[target] = person.keypoints[source]
    confidence[target] = person.confidence[source]
    return PersonKeypoints(keypoints, confidence)


def default_pose2sim_calibration(trial: Path) -> Path:
    """The one calibration `.toml` in `TRIAL/calibration/` or beside the trial (`TRIAL/../calibration/`)."""
    for folder in (trial / "calibration", trial.parent / "calibration"):
        if folder.is_dir():
            tomls = sorted(folder.glob("*.toml"))
            if len(tomls) == 1:
                return tomls[0]
            raise ValueError(
                f"{folder}: expected exactly one calibration .toml (found {len(tomls)}); pass --calibration")
    raise ValueError(f"{trial}: no calibration/ folder here or beside it; pass --calibration")


def pose2sim_cameras(trial, calibration=None, source: str = "pose-associated") -> tuple[Rig, list[str], dict[str, Path]]:
    """A Pose2Sim trial's posed rig (restricted to the cameras with JSON folders), the matched camera names
    in rig order, and the folders `TRIAL/<source>/camNN_json` (in the same order)."""
    trial = Path(trial)
    rig = load_calibration(calibration or default_pose2sim_calibration(trial)).posed()
    folders = camera_folders(trial / source)
    names = match_cameras(list(folders), rig.names)
    return rig.subset(names), names, folders
