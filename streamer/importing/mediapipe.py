"""MediaPipe (Holistic) point ids -> MHR-70, and Caliscope `xy_<TRACKER>.csv` point tables.

Caliscope ids (its holistic tracker): 0-32 MediaPipe pose, 100-120 right hand, 200-220 left hand
(hand landmark order: 0 wrist, then per finger CMC/MCP, PIP/MCP, DIP/IP, tip), 500+ face (dropped).
MHR-70 hand points per finger are (tip, first, second, third joint) counting from the tip, so
tip <- landmark 4f+4, first <- 4f+3, second <- 4f+2, third <- 4f+1. Pose landmarks without an MHR-70
counterpart (inner/outer eyes, mouth, pose-model finger points) are dropped. The pose model's wrists
are kept only where the hand model has no wrist (the hand model's wrist wins).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.body.mhr70 import NUM_KEYPOINTS, index_of

__all__ = ["CALISCOPE_TO_MHR70", "CaliscopePoints", "CaliscopeCsvError", "read_caliscope_xy", "read_frame_times"]

RIGHT_HAND_OFFSET = 100
LEFT_HAND_OFFSET = 200
_FINGERS = ("thumb", "index", "middle", "ring", "pinky")
_JOINTS_FROM_TIP = ("tip", "first-joint", "second-joint", "third-joint")


def _hand(offset: int, side: str) -> dict[int, int]:
    mapping = {offset: index_of(f"{side}-wrist")}
    for f, finger in enumerate(_FINGERS):
        for j, joint in enumerate(_JOINTS_FROM_TIP):
            mapping[offset + 4 * f + 4 - j] = index_of(f"{side}-{finger}-{joint}")
    return mapping


_POSE: dict[int, int] = {
    0: index_of("nose"), 2: index_of("left-eye"), 5: index_of("right-eye"), 7: index_of("left-ear"),
    8: index_of("right-ear"), 11: index_of("left-shoulder"), 12: index_of("right-shoulder"),
    13: index_of("left-elbow"), 14: index_of("right-elbow"), 23: index_of("left-hip"), 24: index_of("right-hip"),
    25: index_of("left-knee"), 26: index_of("right-knee"), 27: index_of("left-ankle"), 28: index_of("right-ankle"),
    29: index_of("left-heel"), 30: index_of("right-heel"), 31: index_of("left-big-toe-tip"),
    32: index_of("right-big-toe-tip"),
}
_POSE_WRISTS: dict[int, int] = {15: index_of("left-wrist"), 16: index_of("right-wrist")}

# Caliscope point id -> MHR-70 index (pose wrists handled separately: fallback only).
CALISCOPE_TO_MHR70: dict[int, int] = {**_POSE, **_hand(RIGHT_HAND_OFFSET, "right"), **_hand(LEFT_HAND_OFFSET, "left")}


class CaliscopeCsvError(ValueError):
    """An xy/timestamps CSV that cannot be read; names the file, row and column."""


@dataclass(frozen=True, slots=True)
class CaliscopePoints:
    """Keypoints of one take: sync_indices (S,) int; cameras: ids as strings (numeric order);
    keypoints (S, V, 70, 2) pixels NaN where missing; confidence (S, V, 70) 1 where seen, else 0;
    frame_times (S, V) seconds from the file's frame_time column, NaN where absent."""

    sync_indices: np.ndarray
    cameras: list[str]
    keypoints: np.ndarray
    confidence: np.ndarray
    frame_times: np.ndarray


def _read_rows(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise CaliscopeCsvError(f"{path}: missing columns {missing} (have {reader.fieldnames})")
            return list(reader)
    except OSError as exc:
        raise CaliscopeCsvError(f"{path}: cannot read: {exc}") from None


def _number(path, row_number: int, row: dict, column: str, kind=float):
    try:
        return kind(row[column])
    except (TypeError, ValueError):
        raise CaliscopeCsvError(f"{path}: row {row_number}: column {column!r}: expected a number, got {row[column]!r}")


def _camera_column(header: list[str]) -> str:
    return "cam_id" if "cam_id" in header else "port"  # older Caliscope versions say "port"


def _read_header(path: Path) -> list[str]:
    """The CSV file's first row; CaliscopeCsvError naming the file when it cannot be read."""
    try:
        with path.open(newline="") as handle:
            return next(csv.reader(handle), [])
    except OSError as exc:
        raise CaliscopeCsvError(f"{path}: cannot read: {exc}") from None


def read_caliscope_xy(path) -> CaliscopePoints:
    """`xy_<TRACKER>.csv` -> MHR-70 arrays.

    Columns: sync_index, cam_id (or port), point_id (or keypoint_id), img_loc_x, img_loc_y; an optional
    frame_time column (seconds) gives per-camera frame times (`frame_times`, NaN where absent).
    """
    path = Path(path)
    header = _read_header(path)
    id_column = "point_id" if "point_id" in header else "keypoint_id"
    cam_column = _camera_column(header)
    rows = _read_rows(path, ("sync_index", cam_column, id_column, "img_loc_x", "img_loc_y"))
    has_time = "frame_time" in header
    parsed = [
        (
            _number(path, n, row, "sync_index", int),
            _number(path, n, row, cam_column, int),
            _number(path, n, row, id_column, int),
            _number(path, n, row, "img_loc_x"),
            _number(path, n, row, "img_loc_y"),
            _number(path, n, row, "frame_time") if has_time and row["frame_time"] not in ("", None) else np.nan,
        )
        for n, row in enumerate(rows, start=2)
    ]
    syncs = np.array(sorted({p[0] for p in parsed}), dtype=np.int64)
    cams = sorted({p[1] for p in parsed})
    sync_pos = {s: i for i, s in enumerate(syncs)}
    cam_pos = {c: i for i, c in enumerate(cams)}
    keypoints = np.full((len(syncs), len(cams), NUM_KEYPOINTS, 2), np.nan)
    fallback = np.full_like(keypoints, np.nan)
    frame_times = np.full((len(syncs), len(cams)), np.nan)
    for sync, cam, point, x, y, t in parsed:
        s, c = sync_pos[sync], cam_pos[cam]
        if point in CALISCOPE_TO_MHR70:
            keypoints[s, c, CALISCOPE_TO_MHR70[point]] = (x, y)
        elif point in _POSE_WRISTS:
            fallback[s, c, _POSE_WRISTS[point]] = (x, y)
        if np.isfinite(t):
            frame_times[s, c] = t
    keypoints = np.where(np.isnan(keypoints), fallback, keypoints)
    confidence = np.isfinite(keypoints[..., 0]).astype(np.float64)
    return CaliscopePoints(syncs, [str(c) for c in cams], keypoints, confidence, frame_times)


def read_frame_times(path) -> dict[tuple[int, str], float]:
    """Caliscope `timestamps.csv` / `frame_time_history.csv` (sync_index, cam_id or port, frame_time in s)
    -> {(sync_index, camera id string): frame_time_s}."""
    path = Path(path)
    header = _read_header(path)
    cam_column = _camera_column(header)
    rows = _read_rows(path, ("sync_index", cam_column, "frame_time"))
    times = {}
    for n, row in enumerate(rows, start=2):
        key = (_number(path, n, row, "sync_index", int), str(_number(path, n, row, cam_column, int)))
        times[key] = _number(path, n, row, "frame_time")
    return times
