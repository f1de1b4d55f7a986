"""Per-camera observation model of the synthetic stage: what a 2D keypoint detector would report.

From the true MHR-70 points of every person at the camera's exposure time, `observe_persons`
produces `Person2D`s with: Gaussian pixel noise (hands noisier), a confidence per point,
self-occlusion (torso and head capsules of every person, checked along the camera ray) and
out-of-frame dropouts, gross outliers (a point replaced by the other person's same point, else
thrown 20-80 px off), whole-body left/right swaps, and missed detections. Frame drops, clock offset
and jitter are timing effects handled by `streamer.synthetic.stage`.

Every draw comes from the generator passed in, so a (seed, camera, frame) triple gives the same
observation whatever the call order. `labels` report what was done to each point (for tests and
for scoring): CLEAN, OCCLUDED (kept, low confidence, noisier), OUTLIER, DROPPED.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.messages import Person2D
from streamer.body import mhr70

__all__ = ["CLEAN", "DROPPED", "OCCLUDED", "OUTLIER", "ObservationSettings", "Observed", "observe_persons",
           "occluded_points"]

CLEAN, OCCLUDED, OUTLIER, DROPPED = 0, 1, 2, 3
_HANDS = np.r_[21:63]
_I = mhr70.index_of
_NECK, _LHIP, _RHIP, _LEAR, _REAR = _I("neck"), _I("left-hip"), _I("right-hip"), _I("left-ear"), _I("right-ear")


@dataclass(frozen=True)
class ObservationSettings:
    """Rates are probabilities per event: per point (outlier), per person and camera frame
    (left/right swap, missed detection), per camera frame (dropped frame)."""

    noise_px: float = 2.0
    hand_noise_scale: float = 1.5
    confidence_mean: float = 0.85
    confidence_spread: float = 0.1
    occluded_drop_prob: float = 0.7  # occluded points dropped; the others kept at low confidence
    occluded_noise_scale: float = 3.0
    outlier_rate: float = 0.02
    lr_swap_rate: float = 0.01
    miss_rate: float = 0.01
    drop_rate: float = 0.005
    clock_offset_ms: float = 2.0  # std of each camera's constant error of reported capture times
    jitter_ms: float = 0.5  # std of per-frame exposure-time jitter
    trigger_phase: bool = True  # cameras not genlocked: each has a random phase within one frame
    torso_radius_m: float = 0.13
    head_radius_m: float = 0.11

    def __post_init__(self) -> None:
        for name in ("occluded_drop_prob", "outlier_rate", "lr_swap_rate", "miss_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"observation: {name} must be a probability in [0, 1], got {value}")
        for name in ("noise_px", "clock_offset_ms", "jitter_ms", "torso_radius_m", "head_radius_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"observation: {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Observed:
    """One camera frame's detections plus what the model did (for tests and scoring).

    persons: the `Person2D`s in detection order (shuffled). person_ids: the true person of each.
    labels: (len(persons), 70) uint8 CLEAN/OCCLUDED/OUTLIER/DROPPED. swapped: (len(persons),) bool.
    clean_pixels: (len(persons), 70, 2) noise-free projections in the reported (possibly swapped) order.
    """

    persons: list[Person2D]
    person_ids: list[int]
    labels: np.ndarray
    swapped: np.ndarray
    clean_pixels: np.ndarray


def _capsules(points: np.ndarray, settings: ObservationSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., M, 3) start, (..., M, 3) end, (..., M) radius: torso and head of each person; points (..., N, 70, 3)."""
    hips = 0.5 * (points[..., _LHIP, :] + points[..., _RHIP, :])
    head = 0.5 * (points[..., _LEAR, :] + points[..., _REAR, :])
    starts = np.concatenate([hips, head], axis=-2)
    ends = np.concatenate([points[..., _NECK, :], head], axis=-2)
    n = points.shape[-3]
    radii = np.broadcast_to(np.repeat([settings.torso_radius_m, settings.head_radius_m], n), starts.shape[:-1])
    return starts, ends, radii


def occluded_points(camera_center: np.ndarray, points: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                    radii: np.ndarray) -> np.ndarray:
    """(..., P) bool: the segment camera->point passes through a capsule (start, end, radius) at least one
    radius before reaching the point. camera_center (..., 3); points (..., P, 3); capsules (..., M, 3),
    (..., M, 3), (..., M); metres, world. Leading dims (e.g. cameras) broadcast."""
    # Broadcast products, not matmul: tiny BLAS calls contend for the cores with the rest of the stage.
    center = camera_center[..., None, :]
    d1 = (points - center)[..., :, None, :]  # (..., P, 1, 3) ray segments from the camera
    d2 = (ends - starts)[..., None, :, :]  # (..., 1, M, 3) capsule axes
    r = (center - starts)[..., None, :, :]  # (..., 1, M, 3)
    a = (d1 * d1).sum(-1)
    e = (d2 * d2).sum(-1)
    b = (d1 * d2).sum(-1)
    c = (d1 * r).sum(-1)
    f = (d2 * r).sum(-1)
    denom = a * e - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.clip(np.where(denom > 1e-12, (b * f - c * e) / denom, 0.0), 0, 1)
        t = np.clip(np.where(e > 1e-12, (b * s + f) / e, 0.0), 0, 1)
        s = np.clip(np.where(a > 1e-12, (b * t - c) / a, 0.0), 0, 1)
    gap = r + s[..., None] * d1 - t[..., None] * d2
    radius2 = radii[..., None, :] ** 2
    behind = (1 - s) ** 2 * a > radius2  # the point lies beyond the capsule along the ray
    return (((gap * gap).sum(-1) < radius2) & behind).any(axis=-1)


def observe_persons(points: np.ndarray, pixels: np.ndarray, camera_centers: np.ndarray,
                    image_sizes: np.ndarray, settings: ObservationSettings,
                    rngs: list[np.random.Generator]) -> list[Observed]:
    """Detections of N persons in one frame of each of V cameras (vectorised over cameras).

    points: (V, N, 70, 3) true points, metres, world, at each camera's exposure time.
    pixels: (V, N, 70, 2) their noise-free distorted projections (NaN behind the camera).
    camera_centers: (V, 3) metres, world; image_sizes: (V, 2) width, height; rngs: one per camera.
    """
    n_cams, n_persons = points.shape[:2]
    # Per camera one draw order, fixed sizes: the random stream does not depend on the data.
    draws = [(rng.random((n_persons, 3)), rng.random((n_persons, 70, 5)), rng.standard_normal((n_persons, 70, 3)),
              rng.permutation(n_persons)) for rng in rngs]
    events = np.stack([d[0] for d in draws])  # miss, swap, score
    uniforms = np.stack([d[1] for d in draws])  # keep occluded, outlier, low confidence, throw length, angle
    normals = np.stack([d[2] for d in draws])  # noise x, y, confidence

    sizes = np.asarray(image_sizes, dtype=np.float64).reshape(n_cams, 1, 1, 2)
    u, v = pixels[..., 0], pixels[..., 1]
    inside = (u >= 0) & (u < sizes[..., 0]) & (v >= 0) & (v < sizes[..., 1])  # False for NaN
    starts, ends, radii = _capsules(points, settings)
    occluded = occluded_points(camera_centers, points.reshape(n_cams, -1, 3), starts, ends, radii)
    occluded = occluded.reshape(n_cams, n_persons, 70)
    labels = np.where(occluded, OCCLUDED, CLEAN).astype(np.uint8)
    labels[occluded & (uniforms[..., 0] < settings.occluded_drop_prob)] = DROPPED
    labels[~inside] = DROPPED
    sigma = settings.noise_px * np.where(labels == OCCLUDED, settings.occluded_noise_scale, 1.0)
    sigma[..., _HANDS] *= settings.hand_noise_scale
    observed = pixels + normals[..., :2] * sigma[..., None]
    confidence = np.where(labels == OCCLUDED, 0.05 + 0.35 * uniforms[..., 2],
                          np.clip(settings.confidence_mean + settings.confidence_spread * normals[..., 2], 0.05, 1.0))
    # Gross outliers: the other person's same point when it is visible there, else a 20-80 px throw.
    is_outlier = (uniforms[..., 1] < settings.outlier_rate) & (labels != DROPPED)
    if is_outlier.any():
        angle = 2 * np.pi * uniforms[..., 4]
        length = 20 + 60 * uniforms[..., 3]
        thrown = observed + np.stack([length * np.cos(angle), length * np.sin(angle)], axis=-1)
        if n_persons == 2:  # the other person
            replacement = np.where(inside[:, ::-1, :, None], pixels[:, ::-1], thrown)
        else:
            replacement = thrown
        observed = np.where(is_outlier[..., None], replacement, observed)
        labels[is_outlier] = OUTLIER
    observed = np.where((labels == DROPPED)[..., None], np.nan, observed)
    confidence = np.where(labels == DROPPED, 0.0, confidence)
    visible_counts = inside.sum(-1)
    return [_detections(draws[c][3], events[c], observed[c], confidence[c], labels[c], pixels[c], inside[c],
                        visible_counts[c], sizes[c, 0, 0], settings) for c in range(n_cams)]


def _detections(order: np.ndarray, events: np.ndarray, observed: np.ndarray, confidence: np.ndarray,
                labels: np.ndarray, pixels: np.ndarray, inside: np.ndarray, visible_counts: np.ndarray,
                size: np.ndarray, settings: ObservationSettings) -> Observed:
    """One camera's `Observed` from its (N, 70, ...) arrays: misses, swaps, boxes, detection order."""
    persons, ids, kept_labels, swapped, cleans = [], [], [], [], []
    flip = mhr70.FLIP_PERMUTATION
    for p in order:
        if events[p, 0] < settings.miss_rate or visible_counts[p] < 3:
            continue  # missed, or not in view
        obs_p, conf_p, labels_p, clean_p = observed[p], confidence[p], labels[p], pixels[p]
        swap = bool(events[p, 1] < settings.lr_swap_rate)
        if swap:
            obs_p, conf_p, labels_p, clean_p = obs_p[flip], conf_p[flip], labels_p[flip], clean_p[flip]
        visible = pixels[p][inside[p]]
        lo, hi = visible.min(0), visible.max(0)
        margin = 0.1 * np.maximum(hi - lo, 1.0)
        box = np.clip(np.concatenate([lo - margin, hi + margin]), 0, np.tile(size, 2))
        persons.append(Person2D(box=box.astype(np.float32), score=float(0.75 + 0.25 * events[p, 2]),
                                keypoints=obs_p.astype(np.float32), confidence=conf_p.astype(np.float32)))
        ids.append(int(p))
        kept_labels.append(labels_p)
        swapped.append(swap)
        cleans.append(clean_p)
    return Observed(persons, ids, np.array(kept_labels, dtype=np.uint8).reshape(-1, 70),
                    np.array(swapped, dtype=bool), np.array(cleans, dtype=np.float64).reshape(-1, 70, 2))
