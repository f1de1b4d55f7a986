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

import numba
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


def occluded_points(camera_center: np.ndarray, points: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                    radii: np.ndarray) -> np.ndarray:
    """(..., P) bool: the segment camera->point passes through a capsule (start, end, radius) at least one
    radius before reaching the point. camera_center (..., 3); points (..., P, 3); capsules (..., M, 3),
    (..., M, 3), (..., M); metres, world. Leading dims (e.g. cameras) broadcast."""
    lead = np.broadcast_shapes(np.shape(camera_center)[:-1], np.shape(points)[:-2], np.shape(starts)[:-2],
                               np.shape(ends)[:-2], np.shape(radii)[:-1])
    n_points, n_capsules = np.shape(points)[-2], np.shape(starts)[-2]

    def flat(a, tail: tuple[int, ...]) -> np.ndarray:
        a = np.asarray(a, np.float64)
        if a.shape != lead + tail:
            a = np.broadcast_to(a, lead + tail)
        return np.ascontiguousarray(a).reshape((-1,) + tail)

    out = _occluded_kernel(flat(camera_center, (3,)), flat(points, (n_points, 3)), flat(starts, (n_capsules, 3)),
                           flat(ends, (n_capsules, 3)), flat(radii, (n_capsules,)))
    return out.reshape(lead + (n_points,))


# Compiled on first use, cached on disk beside this file (numba's cache); no fastmath: the same arithmetic,
# in the same order, as the numpy closest-points-of-two-segments formulation it replaced (one loop instead
# of ~30 array operations on (P, M, 3) temporaries: ~50x faster for one camera's 140 points and 4 capsules).
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _occluded_kernel(centers, points, starts, ends, radii):  # (L, 3), (L, P, 3), (L, M, 3), (L, M, 3), (L, M)
    n_lead, n_points, n_capsules = points.shape[0], points.shape[1], starts.shape[1]
    out = np.zeros((n_lead, n_points), np.bool_)
    for i in range(n_lead):
        cx, cy, cz = centers[i, 0], centers[i, 1], centers[i, 2]
        for m in range(n_capsules):
            d2x, d2y, d2z = (ends[i, m, 0] - starts[i, m, 0], ends[i, m, 1] - starts[i, m, 1],
                             ends[i, m, 2] - starts[i, m, 2])
            rx, ry, rz = cx - starts[i, m, 0], cy - starts[i, m, 1], cz - starts[i, m, 2]
            e = d2x * d2x + d2y * d2y + d2z * d2z
            f = d2x * rx + d2y * ry + d2z * rz
            radius2 = radii[i, m] ** 2
            for p in range(n_points):
                if out[i, p]:
                    continue
                d1x, d1y, d1z = points[i, p, 0] - cx, points[i, p, 1] - cy, points[i, p, 2] - cz
                a = d1x * d1x + d1y * d1y + d1z * d1z
                b = d1x * d2x + d1y * d2y + d1z * d2z
                c = d1x * rx + d1y * ry + d1z * rz
                denom = a * e - b * b
                s = _unit_clip((b * f - c * e) / denom if denom > 1e-12 else 0.0)
                t = _unit_clip((b * s + f) / e if e > 1e-12 else 0.0)
                s = _unit_clip((b * t - c) / a if a > 1e-12 else 0.0)
                gx, gy, gz = rx + s * d1x - t * d2x, ry + s * d1y - t * d2y, rz + s * d1z - t * d2z
                behind = (1 - s) ** 2 * a > radius2  # the point lies beyond the capsule along the ray
                out[i, p] = gx * gx + gy * gy + gz * gz < radius2 and behind
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _body_occlusion(centers, points, torso_radius, head_radius, lhip, rhip, lear, rear, neck):
    """(V, N * 70) bool: `occluded_points` of every person's points (V, N, 70, 3) seen from camera v (V, 3),
    against every person's torso (hip midpoint -> neck) and head (a ball at the ear midpoint) capsules."""
    n_cams, n_persons = points.shape[0], points.shape[1]
    starts = np.empty((n_cams, 2 * n_persons, 3))
    ends = np.empty((n_cams, 2 * n_persons, 3))
    radii = np.empty((n_cams, 2 * n_persons))
    for v in range(n_cams):
        for p in range(n_persons):
            for x in range(3):
                starts[v, p, x] = 0.5 * (points[v, p, lhip, x] + points[v, p, rhip, x])
                ends[v, p, x] = points[v, p, neck, x]
                head = 0.5 * (points[v, p, lear, x] + points[v, p, rear, x])
                starts[v, n_persons + p, x] = ends[v, n_persons + p, x] = head
            radii[v, p], radii[v, n_persons + p] = torso_radius, head_radius
    return _occluded_kernel(centers, points.reshape(n_cams, -1, 3), starts, ends, radii)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _unit_clip(x):
    """x clipped to [0, 1] (NaN stays NaN, as np.clip)."""
    if x < 0.0:
        return 0.0
    if x > 1.0:
        return 1.0
    return x


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

    sizes = np.asarray(image_sizes, dtype=np.float64).reshape(n_cams, 2)
    occluded = _body_occlusion(np.ascontiguousarray(camera_centers, np.float64), np.ascontiguousarray(points, np.float64),
                               settings.torso_radius_m, settings.head_radius_m, _LHIP, _RHIP, _LEAR, _REAR, _NECK)
    angle = 2 * np.pi * uniforms[..., 4]  # gross outliers: the other person's same point when it is visible
    length = 20 + 60 * uniforms[..., 3]  # there, else thrown 20-80 px (numpy's cos/sin: the same throws as ever)
    throws = np.stack([length * np.cos(angle), length * np.sin(angle)], axis=-1)
    labels, observed, confidence, inside, boxes, visible_counts = _observe_points(
        np.ascontiguousarray(pixels, np.float64), occluded.reshape(n_cams, n_persons, 70), sizes, uniforms, normals,
        throws, _IS_HAND, settings.noise_px, settings.hand_noise_scale, settings.occluded_noise_scale,
        settings.occluded_drop_prob, settings.confidence_mean, settings.confidence_spread, settings.outlier_rate)
    return [_detections(draws[c][3], events[c], observed[c], confidence[c], labels[c], pixels[c], boxes[c],
                        visible_counts[c], settings) for c in range(n_cams)]


_IS_HAND = np.zeros(70, np.bool_)
_IS_HAND[_HANDS] = True


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _observe_points(pixels, occluded, sizes, uniforms, normals, throws, is_hand, noise_px, hand_noise_scale,
                    occluded_noise_scale, occluded_drop_prob, confidence_mean, confidence_spread, outlier_rate):
    """The per-point observation model, per camera v, person p, keypoint k (one loop, no temporaries).

    pixels (V, N, 70, 2) noise-free projections; occluded (V, N, 70); sizes (V, 2) width, height;
    uniforms (V, N, 70, 5) and normals (V, N, 70, 3) the draws (see `observe_persons`); throws (V, N, 70, 2)
    outlier offsets, px. Returns labels (V, N, 70) uint8, observed (V, N, 70, 2) px (NaN where DROPPED),
    confidence (V, N, 70) (0 where DROPPED), inside (V, N, 70), boxes (V, N, 4) x0 y0 x1 y1 of the visible
    noise-free points with a 10 % margin, clipped to the image (NaN without any), visible counts (V, N).
    """
    n_cams, n_persons, n_points = occluded.shape
    inside = np.zeros((n_cams, n_persons, n_points), np.bool_)
    for v in range(n_cams):
        for p in range(n_persons):
            for k in range(n_points):
                x, y = pixels[v, p, k, 0], pixels[v, p, k, 1]
                inside[v, p, k] = x >= 0 and x < sizes[v, 0] and y >= 0 and y < sizes[v, 1]  # False for NaN
    labels = np.empty((n_cams, n_persons, n_points), np.uint8)
    observed = np.empty((n_cams, n_persons, n_points, 2))
    confidence = np.empty((n_cams, n_persons, n_points))
    boxes = np.full((n_cams, n_persons, 4), np.nan)
    counts = np.zeros((n_cams, n_persons), np.int64)
    for v in range(n_cams):
        for p in range(n_persons):
            lo_x = lo_y = np.inf
            hi_x = hi_y = -np.inf
            for k in range(n_points):
                px, py = pixels[v, p, k, 0], pixels[v, p, k, 1]
                label = OCCLUDED if occluded[v, p, k] else CLEAN
                if occluded[v, p, k] and uniforms[v, p, k, 0] < occluded_drop_prob:
                    label = DROPPED
                if not inside[v, p, k]:
                    label = DROPPED
                else:
                    counts[v, p] += 1
                    lo_x, lo_y, hi_x, hi_y = min(lo_x, px), min(lo_y, py), max(hi_x, px), max(hi_y, py)
                sigma = noise_px * (occluded_noise_scale if label == OCCLUDED else 1.0)
                if is_hand[k]:
                    sigma *= hand_noise_scale
                ox, oy = px + normals[v, p, k, 0] * sigma, py + normals[v, p, k, 1] * sigma
                if label == OCCLUDED:
                    conf = 0.05 + 0.35 * uniforms[v, p, k, 2]
                else:
                    conf = min(max(confidence_mean + confidence_spread * normals[v, p, k, 2], 0.05), 1.0)
                if uniforms[v, p, k, 1] < outlier_rate and label != DROPPED:
                    other = n_persons - 1 - p
                    if n_persons == 2 and inside[v, other, k]:
                        ox, oy = pixels[v, other, k, 0], pixels[v, other, k, 1]
                    else:
                        ox, oy = ox + throws[v, p, k, 0], oy + throws[v, p, k, 1]
                    label = OUTLIER
                if label == DROPPED:
                    ox = oy = np.nan
                    conf = 0.0
                labels[v, p, k] = label
                observed[v, p, k, 0], observed[v, p, k, 1] = ox, oy
                confidence[v, p, k] = conf
            if counts[v, p] > 0:
                margin_x, margin_y = 0.1 * max(hi_x - lo_x, 1.0), 0.1 * max(hi_y - lo_y, 1.0)
                boxes[v, p, 0] = min(max(lo_x - margin_x, 0.0), sizes[v, 0])
                boxes[v, p, 1] = min(max(lo_y - margin_y, 0.0), sizes[v, 1])
                boxes[v, p, 2] = min(max(hi_x + margin_x, 0.0), sizes[v, 0])
                boxes[v, p, 3] = min(max(hi_y + margin_y, 0.0), sizes[v, 1])
    return labels, observed, confidence, inside, boxes, counts


def _detections(order: np.ndarray, events: np.ndarray, observed: np.ndarray, confidence: np.ndarray,
                labels: np.ndarray, pixels: np.ndarray, boxes: np.ndarray, visible_counts: np.ndarray,
                settings: ObservationSettings) -> Observed:
    """One camera's `Observed` from its (N, 70, ...) arrays and (N, 4) boxes: misses, swaps, detection order."""
    persons, ids, kept_labels, swapped, cleans = [], [], [], [], []
    flip = mhr70.FLIP_PERMUTATION
    observed32, confidence32 = observed.astype(np.float32), confidence.astype(np.float32)
    boxes32 = boxes.astype(np.float32)
    for p in order:
        if events[p, 0] < settings.miss_rate or visible_counts[p] < 3:
            continue  # missed, or not in view
        obs_p, conf_p, labels_p, clean_p = observed32[p], confidence32[p], labels[p], pixels[p]
        swap = bool(events[p, 1] < settings.lr_swap_rate)
        if swap:
            obs_p, conf_p, labels_p, clean_p = obs_p[flip], conf_p[flip], labels_p[flip], clean_p[flip]
        persons.append(Person2D(box=boxes32[p], score=float(0.75 + 0.25 * events[p, 2]), keypoints=obs_p,
                                confidence=conf_p))
        ids.append(int(p))
        kept_labels.append(labels_p)
        swapped.append(swap)
        cleans.append(clean_p)
    return Observed(persons, ids, np.array(kept_labels, dtype=np.uint8).reshape(-1, 70),
                    np.array(swapped, dtype=bool), np.array(cleans, dtype=np.float64).reshape(-1, 70, 2))
