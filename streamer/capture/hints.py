"""Box hints on the wire (`hint/<camera>`, protocol `BoxHints`): built from the 3D track, used by capture.

The sync node re-projects the tracked persons' current 3D points into every camera (`track_hints`,
boxes from `streamer.capture.boxes.boxes_from_track`) once per frame set while the track is confirmed;
a capture node keeps the newest hint per camera (`accept_hint`) and hands it to `BoxPolicy`, which
chooses between the hinted boxes and the person detector. `hint_calib_version` names the calibration
a hint was projected with, so a capture node never uses boxes from another calibration of its camera.

`persons_in_boxes` is what a box-driven estimator reports; the synthetic stage (whose observation
model stands in for camera and estimator) uses it so that hints change its output as they would
change a real estimator's: only the persons inside the given boxes, everyone when the detector ran.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from protocol.messages import BoxHints, Person2D
from streamer.calibration import Camera, Rig
from streamer.capture.boxes import box_iou, boxes_from_track

__all__ = ["accept_hint", "hint_calib_version", "persons_in_boxes", "track_hints"]


@lru_cache(maxsize=256)  # Camera objects are immutable and hashed by identity: one hash per calibration
def hint_calib_version(camera: Camera) -> str:
    """The `calib_version` of a hint for this camera: the version of a rig holding only this camera."""
    return Rig((camera,)).version


def track_hints(rig: Rig, points_world: np.ndarray, track_ids: Sequence[int], scores: Sequence[float], *,
                t_ns: int, margin: float = 0.15) -> list[BoxHints]:
    """One `BoxHints` per camera of the rig (in rig order) for the tracked persons.

    points_world: (P, K, 3) metres, world frame, NaN where missing. track_ids: (P,). scores: (P,) in [0, 1].
    t_ns: stage-clock time of the frame set the points come from. A person not visible in a camera
    gets a NaN row there (see `boxes_from_track`, which also explains margin).
    """
    points_world = np.asarray(points_world, np.float64)
    ids = np.asarray(track_ids, np.int64).reshape(-1)
    score = np.clip(np.asarray(scores, np.float32).reshape(-1), 0.0, 1.0)
    if not (len(points_world) == len(ids) == len(score)):
        raise ValueError(f"track_hints: {len(points_world)} persons, {len(ids)} track ids, {len(score)} scores")
    return [BoxHints(camera=camera.name, t_ns=int(t_ns), calib_version=hint_calib_version(camera), track_ids=ids,
                     boxes=boxes_from_track(camera, points_world, margin=margin), scores=score)
            for camera in rig.cameras]


def accept_hint(current: BoxHints | None, hint: BoxHints, expected_calib_version: str | None) -> str | None:
    """Why a received hint is not kept as its camera's newest (a counter name), or None to keep it.

    expected_calib_version: `hint_calib_version` of the receiver's calibration of hint.camera (None: the
    receiver has no calibration, so no hint can be checked and none is used).
    """
    if expected_calib_version is None:
        return "hint_no_calib"
    if hint.calib_version != expected_calib_version:
        return "hint_calib_mismatch"
    if current is not None and hint.t_ns <= current.t_ns:
        return "hint_stale"  # an older frame set's hint arriving late: the newer one stays
    return None


def persons_in_boxes(persons: Sequence[Person2D], boxes: np.ndarray, track_ids: np.ndarray, *,
                     keep_unmatched: bool, iou_threshold: float = 0.3) -> list[Person2D]:
    """The persons a box-driven estimator reports when given these boxes.

    persons: everyone visible (each with a finite `.box`). boxes: (N, 4) float32 pixels x0 y0 x1 y1;
    track_ids: (N,) int64. Each box gets at most one person, the best-overlapping one with IoU >=
    iou_threshold (greedy by IoU, one to one), reported with that box's track id, in box order. The
    other persons follow with track id -1 only when keep_unmatched (a detector searched the frame).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    track_ids = np.asarray(track_ids, np.int64).reshape(-1)
    found = np.array([p.box for p in persons], np.float32).reshape(-1, 4)
    iou = box_iou(boxes, found)
    owner = np.full(len(boxes), -1, np.int64)
    while iou.size and iou.max() >= iou_threshold:
        b, p = np.unravel_index(int(np.argmax(iou)), iou.shape)
        owner[b] = p
        iou[b, :] = -1.0
        iou[:, p] = -1.0
    out = [dataclasses.replace(persons[p], track_id=int(track_ids[b])) for b, p in enumerate(owner) if p >= 0]
    if keep_unmatched:
        taken = set(owner[owner >= 0].tolist())
        out += [dataclasses.replace(p, track_id=-1) for i, p in enumerate(persons) if i not in taken]
    return out
