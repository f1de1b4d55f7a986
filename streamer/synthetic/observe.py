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
    """(M, 3) start, (M, 3) end, (M,) radius: torso and head of each person; points (N, 70, 3)."""
    hips = 0.5 * (points[:, _LHIP] + points[:, _RHIP])
    neck = points[:, _NECK]
    head = 0.5 * (points[:, _LEAR] + points[:, _REAR])
    starts = np.concatenate([hips, head])
    ends = np.concatenate([neck, head])
    radii = np.concatenate([np.full(len(points), settings.torso_radius_m), np.full(len(points), settings.head_radius_m)])
    return starts, ends, radii


def occluded_points(camera_center: np.ndarray, points: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                    radii: np.ndarray) -> np.ndarray:
    """(N,) bool: the segment camera->point passes through a capsule (start, end, radius) at least one
    radius before reaching the point. points (N, 3); capsules (M, 3), (M, 3), (M,); metres, world."""
    # Broadcast products, not matmul: tiny BLAS calls contend for the cores with the rest of the stage.
    d1 = points - camera_center  # (N, 3) ray segments from the camera
    d2 = ends - starts  # (M, 3) capsule axes
    r = camera_center - starts  # (M, 3)
    a = (d1 * d1).sum(1)[:, None]
    e = (d2 * d2).sum(1)[None, :]
    b = (d1[:, None, :] * d2[None]).sum(2)
    c = (d1[:, None, :] * r[None]).sum(2)
    f = (d2 * r).sum(1)[None, :]
    denom = a * e - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.clip(np.where(denom > 1e-12, (b * f - c * e) / denom, 0.0), 0, 1)
        t = np.clip(np.where(e > 1e-12, (b * s + f) / e, 0.0), 0, 1)
        s = np.clip(np.where(a > 1e-12, (b * t - c) / a, 0.0), 0, 1)
    gap = (camera_center - starts)[None] + s[..., None] * d1[:, None, :] - t[..., None] * d2[None]
    distance2 = (gap * gap).sum(2)
    behind = (1 - s) ** 2 * a > radii[None, :] ** 2  # the point lies beyond the capsule along the ray
    return ((distance2 < radii[None, :] ** 2) & behind).any(axis=1)


def observe_persons(points: np.ndarray, pixels: np.ndarray, camera_center: np.ndarray,
                    image_size: tuple[int, int], settings: ObservationSettings,
                    rng: np.random.Generator) -> Observed:
    """Detections of N persons in one camera frame.

    points: (N, 70, 3) true points, metres, world, at the exposure time.
    pixels: (N, 70, 2) their noise-free distorted projections (NaN behind the camera).
    """
    n_persons = len(points)
    width, height = image_size
    # One draw order, fixed sizes: the stream of random numbers does not depend on the data.
    events = rng.random((n_persons, 3))  # miss, swap, score
    uniforms = rng.random((n_persons, 70, 5))  # keep occluded, outlier, low confidence, throw length, angle
    normals = rng.standard_normal((n_persons, 70, 3))  # noise x, y, confidence
    order = rng.permutation(n_persons)

    u, v = pixels[..., 0], pixels[..., 1]
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)  # False for NaN (behind the camera)
    starts, ends, radii = _capsules(points, settings)
    occluded = occluded_points(camera_center, points.reshape(-1, 3), starts, ends, radii).reshape(n_persons, 70)
    labels = np.where(occluded, OCCLUDED, CLEAN).astype(np.uint8)
    labels[occluded & (uniforms[..., 0] < settings.occluded_drop_prob)] = DROPPED
    labels[~inside] = DROPPED
    sigma = settings.noise_px * np.where(labels == OCCLUDED, settings.occluded_noise_scale, 1.0)
    sigma[:, _HANDS] *= settings.hand_noise_scale
    observed = pixels + normals[..., :2] * sigma[..., None]
    confidence = np.where(labels == OCCLUDED, 0.05 + 0.35 * uniforms[..., 2],
                          np.clip(settings.confidence_mean + settings.confidence_spread * normals[..., 2], 0.05, 1.0))
    # Gross outliers: the other person's same point when it is visible there, else a 20-80 px throw.
    is_outlier = (uniforms[..., 1] < settings.outlier_rate) & (labels != DROPPED)
    if is_outlier.any():
        angle = 2 * np.pi * uniforms[..., 4]
        length = 20 + 60 * uniforms[..., 3]
        thrown = observed + np.stack([length * np.cos(angle), length * np.sin(angle)], axis=-1)
        other = pixels[::-1] if n_persons == 2 else np.full_like(pixels, np.nan)  # the other person (two persons)
        use_other = inside[::-1] if n_persons == 2 else np.zeros_like(inside)
        replacement = np.where(use_other[..., None], other, thrown)
        observed = np.where(is_outlier[..., None], replacement, observed)
        labels[is_outlier] = OUTLIER

    persons, ids, kept_labels, swapped, cleans = [], [], [], [], []
    for p in order:
        if events[p, 0] < settings.miss_rate or inside[p].sum() < 3:
            continue  # missed, or not in view
        obs_p, conf_p, labels_p, clean_p = observed[p], confidence[p], labels[p], pixels[p]
        swap = bool(events[p, 1] < settings.lr_swap_rate)
        if swap:
            flip = mhr70.FLIP_PERMUTATION
            obs_p, conf_p, labels_p, clean_p = obs_p[flip], conf_p[flip], labels_p[flip], clean_p[flip]
        dropped = labels_p == DROPPED
        obs_p = np.where(dropped[:, None], np.nan, obs_p)
        conf_p = np.where(dropped, 0.0, conf_p)
        visible = pixels[p][inside[p]]
        lo, hi = visible.min(0), visible.max(0)
        margin = 0.1 * np.maximum(hi - lo, 1.0)
        box = np.clip(np.concatenate([lo - margin, hi + margin]), 0, [width, height, width, height])
        persons.append(Person2D(box=box.astype(np.float32), score=float(0.75 + 0.25 * events[p, 2]),
                                keypoints=obs_p.astype(np.float32), confidence=conf_p.astype(np.float32)))
        ids.append(int(p))
        kept_labels.append(labels_p)
        swapped.append(swap)
        cleans.append(clean_p)
    return Observed(persons, ids, np.array(kept_labels, dtype=np.uint8).reshape(-1, 70),
                    np.array(swapped, dtype=bool), np.array(cleans, dtype=np.float64).reshape(-1, 70, 2))
