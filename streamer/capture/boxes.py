"""Person boxes for the estimator: from the 3D track (hints) while tracked, from a detector to (re-)acquire.

Flow (proposed wire message `hint/<cam>`, see `BoxHint`): the sync node re-projects each tracked
person's current 3D points into every camera (`boxes_from_track`) and publishes the boxes per
camera; the capture node uses a fresh hint instead of running a detector (`boxes_for_frame`).
Without a fresh hint (start, track lost, hint too old) the detector runs: that is acquisition and
re-acquisition. Every `redetect_interval_s` the detector also runs while tracked, and detections
that overlap no hinted box are added as new, untracked persons (`merge_detections`), so people
entering the stage are found. No person is ever dropped by list order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.calibration import Camera

__all__ = ["BoxHint", "BoxPolicy", "boxes_for_frame", "boxes_from_track", "box_iou", "merge_detections"]


@dataclass(frozen=True, slots=True)
class BoxHint:
    """Boxes of the tracked persons in one camera, from the 3D track (proposed topic `hint/<cam>`).

    camera: camera id. t_ns: stage-clock time of the 3D track state the boxes were projected from.
    track_ids: (P,) int64. boxes: (P, 4) float32 pixels x0 y0 x1 y1 (NaN rows: person not visible).
    scores: (P,) float32 in [0, 1], the track's confidence.
    """

    camera: str
    t_ns: int
    track_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray


def boxes_from_track(camera: Camera, points_world: np.ndarray, *, margin: float = 0.15,
                     min_points: int = 4) -> np.ndarray:
    """Project tracked persons' 3D points into a camera and box them.

    points_world: (P, K, 3) metres, world frame, NaN where missing. camera: posed `Camera`.
    margin: share of the box size added on every side (limbs move between frames; the 3D
    keypoints lie inside the body surface). Returns (P, 4) float32 x0 y0 x1 y1 pixels, clipped
    to the image; a NaN row where fewer than min_points project in front of the camera or the
    box does not overlap the image.
    """
    points_world = np.asarray(points_world, np.float64)
    if points_world.ndim != 3 or points_world.shape[2] != 3:
        raise ValueError(f"points_world must be (P, K, 3), got {points_world.shape}")
    width, height = camera.image_size
    boxes = np.full((len(points_world), 4), np.nan, np.float32)
    for p, points in enumerate(points_world):
        finite = np.isfinite(points).all(axis=1)
        in_front = np.zeros(len(points), bool)
        in_front[finite] = (points[finite] @ camera.R.T + camera.t)[:, 2] > 1e-3
        if in_front.sum() < min_points:
            continue
        pixels = camera.project(points[in_front])
        pixels = pixels[np.isfinite(pixels).all(axis=1)]
        if len(pixels) < min_points:
            continue
        lo, hi = pixels.min(axis=0), pixels.max(axis=0)
        pad = margin * (hi - lo)
        x0, y0 = np.maximum(lo - pad, 0.0)
        x1, y1 = np.minimum(hi + pad, (width, height))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            boxes[p] = (x0, y0, x1, y1)
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a: (N, 4), b: (M, 4) x0 y0 x1 y1 -> (N, M) intersection over union (0 for empty boxes)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def boxes_for_frame(hint: BoxHint | None, t_capture_ns: int, *, max_age_ns: int,
                    image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The hinted boxes to use for a frame, or None when the detector must run.

    A hint is usable when it is at most max_age_ns older than the frame (or newer) and has at least
    one finite box of at least 2 px inside the image. Returns (boxes (N, 4) float32 clipped to the
    image, scores (N,) float32, track_ids (N,) int64) of the usable rows.
    """
    if hint is None or t_capture_ns - hint.t_ns > max_age_ns:
        return None
    boxes = np.asarray(hint.boxes, np.float32).reshape(-1, 4)
    width, height = image_size
    clipped = np.clip(boxes, 0.0, [width, height, width, height]).astype(np.float32)
    usable = (np.isfinite(boxes).all(axis=1) & (clipped[:, 2] - clipped[:, 0] >= 2)
              & (clipped[:, 3] - clipped[:, 1] >= 2))
    if not usable.any():
        return None
    return (clipped[usable], np.asarray(hint.scores, np.float32)[usable],
            np.asarray(hint.track_ids, np.int64)[usable])


def merge_detections(boxes: np.ndarray, scores: np.ndarray, track_ids: np.ndarray, det_boxes: np.ndarray,
                     det_scores: np.ndarray, *, iou_threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add detector boxes that overlap no hinted box (IoU < iou_threshold) as untracked persons (track id -1).

    boxes (N, 4), scores (N,), track_ids (N,): hinted; det_boxes (M, 4), det_scores (M,): detector.
    Returns the hinted rows first, then the new ones.
    """
    det_boxes = np.asarray(det_boxes, np.float32).reshape(-1, 4)
    if len(det_boxes) == 0:
        return boxes, scores, track_ids
    new = (box_iou(det_boxes, boxes) < iou_threshold).all(axis=1) if len(boxes) else np.ones(len(det_boxes), bool)
    return (np.concatenate([boxes, det_boxes[new]]).astype(np.float32),
            np.concatenate([scores, np.asarray(det_scores, np.float32)[new]]),
            np.concatenate([track_ids, np.full(int(new.sum()), -1, np.int64)]))


class BoxPolicy:
    """Per-camera choice between hint boxes and the detector (state: last detector time per camera).

    use_hints: when False the detector (or the estimator's own search) runs on every frame.
    max_hint_age_s: an older hint counts as a lost track. redetect_interval_s: while tracked, run
    the detector this often to find new persons (0: never while tracked).
    """

    def __init__(self, *, use_hints: bool = True, max_hint_age_s: float = 0.2, redetect_interval_s: float = 2.0):
        self.use_hints = use_hints
        self.max_hint_age_ns = int(max_hint_age_s * 1e9)
        self.redetect_interval_ns = int(redetect_interval_s * 1e9)
        self._last_detect_ns: dict[str, int] = {}
        self.hinted_frames = 0
        self.detector_frames = 0

    def plan(self, camera: str, t_capture_ns: int, hint: BoxHint | None,
             image_size: tuple[int, int]) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, bool]:
        """(hinted boxes or None, whether to run the detector) for one frame of one camera."""
        hinted = boxes_for_frame(hint, t_capture_ns, max_age_ns=self.max_hint_age_ns,
                                 image_size=image_size) if self.use_hints else None
        last = self._last_detect_ns.get(camera)
        run_detector = hinted is None or (
            self.redetect_interval_ns > 0 and (last is None or t_capture_ns - last >= self.redetect_interval_ns))
        if run_detector:
            self._last_detect_ns[camera] = t_capture_ns
            self.detector_frames += 1
        if hinted is not None:
            self.hinted_frames += 1
        return hinted, run_detector
