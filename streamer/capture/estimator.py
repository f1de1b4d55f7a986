"""The estimator interface of the capture node: images of N cameras in, persons per camera out.

An estimator receives a batch of `View`s (one per camera that has a new frame; one process can
serve several cameras on one GPU) and returns, per view, every person it found as a protocol
`Person2D` with MHR-70 keypoints in pixels of that view's (distorted) image. It never drops a
person by list order: whoever chooses the tracked subject does so downstream (sync node).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protocol.messages import Person2D

__all__ = ["Estimator", "Finished", "View", "missing_person_arrays"]


@dataclass(frozen=True, slots=True)
class View:
    """One camera's frame to estimate on.

    camera: camera id. image: (H, W, 3) uint8 RGB.
    K: (3, 3) float64 calibrated intrinsics of this camera, pixels.
    boxes: (N, 4) float32 person boxes x0 y0 x1 y1 in pixels (track hints or detector output),
        or None when the estimator must find the persons itself (acquire / re-acquire).
    box_scores: (N,) float32 detection or track scores in [0, 1], or None (then 1).
    track_ids: (N,) int64 track id per box (-1 for untracked), or None (then -1).
    """

    camera: str
    image: np.ndarray
    K: np.ndarray
    boxes: np.ndarray | None = None
    box_scores: np.ndarray | None = None
    track_ids: np.ndarray | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


def missing_person_arrays(num_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (K, 2) float32 all NaN, confidence (K,) float32 all 0): the 'missing' fill."""
    return np.full((num_keypoints, 2), np.nan, np.float32), np.zeros(num_keypoints, np.float32)


class Estimator(ABC):
    """Turns views into persons. Subclasses: SAM-3D Body (sam3d.py), MediaPipe (mediapipe_pose.py)."""

    name: str = "estimator"

    @abstractmethod
    def estimate(self, views: Sequence[View]) -> list[list[Person2D]]:
        """One list of persons per view, in view order."""

    def submit(self, views: Sequence[View]) -> "Finished":
        """Start estimating `views`; the returned object's `result()` gives `estimate(views)`. This default
        computes at once; a GPU estimator returns before its device is done (`FastSam3dEstimator`), so the caller
        can prepare and submit the next frame set first (the capture node's `pipeline_estimates`)."""
        return Finished(self.estimate(views))

    def close(self) -> None:
        """Release models and devices."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Finished:
    """An estimate already computed: `result()` returns it (what `Estimator.submit` gives by default)."""

    def __init__(self, persons: list[list[Person2D]]) -> None:
        self._persons = persons

    def result(self) -> list[list[Person2D]]:
        return self._persons
