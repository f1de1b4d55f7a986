"""Choosing the tracked person in every camera of a frame set (contract 5: one person, consistently).

Pure functions over padded arrays; the track state is a small value passed in and out.
Letters: V cameras, P persons (padded to the most any camera saw), K keypoints.

- With a track: project the track's 3D keypoints into each camera (the caller does that with
  its rig, distortion included) and choose, per camera, the person whose keypoints lie nearest
  (median pixel distance over common keypoints) with the best box overlap, inside a gate that
  scales with the projected body size. List order never matters: ties are broken by cost.
- Without a track (start, or after the track was lost): bootstrap by epipolar consistency.
  Every (camera, person) hypothesis is scored by how many other cameras hold a person whose
  keypoints lie on its epipolar lines; the best seed grows greedily, adding the camera and
  person most consistent with everyone chosen so far. Of the people seen consistently by at
  least three cameras (or by all but one of the most cameras any person is seen by, when fewer),
  the one nearest the cameras' optical axes is chosen, not the one seen by the most cameras: the
  performer at the centre is easily occluded in one view by someone walking around them, or
  missed once by the detector. The choice is confident (`BootstrapChoice.confident`) only when
  the chosen person is seen by at least three cameras (all of a smaller rig's) and nobody else in
  the frame set, however few cameras agree on them, is nearly as near the optical axes
  (`bootstrap_margin`); the caller does not commit to a person on a poor frame set (`nodes.sync`:
  `bootstrap_wait_sets`).
- A triangulated body confirms the track only when seen by at least `min_views` consistent cameras
  and its median point stays within `max_jump_m` of the track (`consistent_with_track`). The
  track is lost after `lost_after_frames` consecutive unconfirmed frame sets, which sends the
  next frame set back to bootstrap.
- The track keeps a confirmed body's points except those that jumped farther than
  `max_point_jump_m` per frame set from the track (a point the track lacks, or any point of a new
  track, must lie within that plus `KEYPOINT_SPACING_M` of a point of the body): one keypoint
  triangulated onto another person (two views that both gave that person's keypoint) would
  otherwise stay in the track, stretch the box hints projected from it (`streamer.capture.hints`)
  over the other person, and a box-driven estimator would then report that person inside the
  tracked person's box. Points3D still carries every triangulated point.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamer.body import mhr70

__all__ = [
    "AssociationSettings",
    "BootstrapChoice",
    "Detections",
    "TrackState",
    "advance_track",
    "association_keypoints",
    "bootstrap_choice",
    "bootstrap_persons",
    "choose_by_track",
    "consistent_with_track",
    "epipolar_distances",
    "fundamental_matrices",
    "pack_detections",
    "select_persons",
]

NONE = -1


@dataclass(frozen=True, slots=True)
class AssociationSettings:
    min_confidence: float = 0.3  # keypoints below this detector confidence are ignored
    min_common_keypoints: int = 4  # fewer common keypoints: no evidence, never chosen
    gate_px: float = 25.0  # smallest reprojection gate, pixels (median keypoint distance)
    gate_body_fraction: float = 0.15  # gate grows to this fraction of the projected body's box diagonal
    box_weight: float = 0.5  # cost = median distance / gate + box_weight * (1 - IoU)
    epipolar_gate_px: float = 12.0  # bootstrap: median symmetric epipolar distance, pixels
    min_views: int = 2  # a frame set with fewer consistent cameras does not confirm the track
    lost_after_frames: int = 15  # consecutive unconfirmed frame sets before the track is dropped
    max_jump_m: float = 0.3  # a 3D body whose median point moved farther from the track is someone else
    coast_speed_m: float = 0.1  # ... plus this per unconfirmed frame set (about 3 m/s at 30 fps)
    max_point_jump_m: float = 0.5  # a track point that moved farther per frame set (15 m/s at 30 fps) is dropped
    bootstrap_margin: float = 0.05  # a confident bootstrap's person is this much nearer the optical axes (tan)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"AssociationSettings.min_confidence: expected in [0, 1], got {self.min_confidence}")
        for name in ("coast_speed_m", "bootstrap_margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"AssociationSettings.{name}: expected >= 0, got {getattr(self, name)}")
        for name in ("gate_px", "epipolar_gate_px", "max_jump_m", "max_point_jump_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"AssociationSettings.{name}: expected > 0, got {getattr(self, name)}")
        for name in ("min_common_keypoints", "min_views", "lost_after_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"AssociationSettings.{name}: expected >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Detections:
    """Every person of one frame set, padded to P per camera.

    keypoints: (V, P, K, 2) float32, pixels; NaN where missing, below min confidence, or padding.
    confidence: (V, P, K) float32 in [0, 1]; 0 wherever keypoints is NaN.
    boxes: (V, P, 4) float32, pixels x0 y0 x1 y1; NaN for padding.
    counts: (V,) int64, persons per camera (the rest is padding).
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    boxes: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True, slots=True)
class TrackState:
    """points: (K, 3) metres, world frame, NaN where missing; None when there is no track."""

    points: np.ndarray | None = None
    frames_lost: int = 0


def pack_detections(persons_per_camera: Sequence[Sequence], num_keypoints: int,
                    min_confidence: float) -> Detections:
    """Pad per-camera person lists (objects with .keypoints (K, 2), .confidence (K,), .box (4,))."""
    counts = np.array([len(p) for p in persons_per_camera], dtype=np.int64)
    n_persons = max(1, int(counts.max(initial=0)))
    pad_keypoints = np.full((num_keypoints, 2), np.nan, np.float32)
    pad_confidence = np.zeros(num_keypoints, np.float32)
    pad_box = np.full(4, np.nan, np.float32)
    try:
        keypoints = np.array([[p.keypoints for p in persons] + [pad_keypoints] * (n_persons - len(persons))
                              for persons in persons_per_camera], np.float32)
        confidence = np.array([[p.confidence for p in persons] + [pad_confidence] * (n_persons - len(persons))
                               for persons in persons_per_camera], np.float32)
        boxes = np.array([[p.box for p in persons] + [pad_box] * (n_persons - len(persons))
                          for persons in persons_per_camera], np.float32)
    except ValueError:  # ragged: some person's arrays have the wrong shape
        keypoints = confidence = boxes = None
    n_views = len(persons_per_camera)
    if (keypoints is None or keypoints.shape != (n_views, n_persons, num_keypoints, 2)
            or confidence.shape != (n_views, n_persons, num_keypoints) or boxes.shape != (n_views, n_persons, 4)):
        raise ValueError(f"pack_detections: expected keypoints ({num_keypoints}, 2), confidence ({num_keypoints},) "
                         "and box (4,) for every person, got " + ", ".join(
                             f"camera {v} person {i}: {np.shape(p.keypoints)}/{np.shape(p.confidence)}/{np.shape(p.box)}"
                             for v, persons in enumerate(persons_per_camera) for i, p in enumerate(persons)))
    weak = ~(confidence >= min_confidence) | np.isnan(keypoints[..., 0] + keypoints[..., 1])
    keypoints[weak] = np.nan
    confidence[weak] = 0.0
    return Detections(keypoints, confidence, boxes, counts)


def association_keypoints(num_keypoints: int) -> np.ndarray:
    """Keypoints used to tell people apart: for MHR-70 the body, wrists and arm/neck extras (28 of 70;
    fingers add cost, not evidence); for any other layout all of them."""
    if num_keypoints == mhr70.NUM_KEYPOINTS:
        return np.concatenate([mhr70.BODY, [41, 62], mhr70.EXTRA])
    return np.arange(num_keypoints)


def select_persons(detections: Detections, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chosen person of every camera: pixels (V, K, 2) NaN and confidence (V, K) 0 where none chosen."""
    n_views, _, n_kp, _ = detections.keypoints.shape
    views = np.arange(n_views)
    index = np.maximum(chosen, 0)
    pixels = detections.keypoints[views, index].copy()
    confidence = detections.confidence[views, index].copy()
    pixels[chosen < 0] = np.nan
    confidence[chosen < 0] = 0.0
    return pixels, confidence


def _lower_median(values: np.ndarray, min_count: int) -> np.ndarray:
    """Lower median over the last axis, ignoring NaN; inf with fewer than min_count finite samples."""
    ordered = np.sort(values, axis=-1)  # NaN sorts last
    count = np.count_nonzero(values == values, axis=-1)
    flat = ordered.reshape(-1, ordered.shape[-1])
    middle = np.maximum(count.ravel() - 1, 0) // 2
    median = flat[np.arange(len(flat)), middle].reshape(count.shape)
    return np.where(count >= min_count, median, np.inf)


def _box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of boxes (V, P, 4) with one box per view (V, 4), x0 y0 x1 y1; 0 where NaN or empty."""
    low = np.maximum(boxes[..., :2], box[:, None, :2])
    size = np.minimum(boxes[..., 2:], box[:, None, 2:]) - low
    size = np.maximum(size, 0.0)  # NaN stays NaN
    inter = size[..., 0] * size[..., 1]
    extent = boxes[..., 2:] - boxes[..., :2]
    track_extent = box[:, 2:] - box[:, :2]
    union = extent[..., 0] * extent[..., 1] + (track_extent[:, 0] * track_extent[:, 1])[:, None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def choose_by_track(track_px: np.ndarray, detections: Detections,
                    settings: AssociationSettings = AssociationSettings(),
                    keypoints: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per camera, the person nearest the projected track.

    track_px: (V, J, 2) float, the track's keypoints projected into each camera, pixels; NaN
    where missing or behind the camera. keypoints: (J,) indices into the detections' K axis of
    the projected keypoints (None: all, J = K; see `association_keypoints`). Returns chosen (V,)
    int64 person index or -1, and distance_px (V,) the chosen person's median keypoint distance
    (inf where none).
    """
    kp = detections.keypoints if keypoints is None else detections.keypoints[:, :, keypoints]
    if track_px.shape != (kp.shape[0], kp.shape[2], 2):
        raise ValueError(f"choose_by_track: track_px shape {track_px.shape}, expected {(kp.shape[0], kp.shape[2], 2)}")
    track_xy = np.ascontiguousarray(track_px.transpose(0, 2, 1), dtype=np.float32)  # (V, 2, J)
    dx = kp[..., 0] - track_xy[:, None, 0]
    dy = kp[..., 1] - track_xy[:, None, 1]
    median = np.sqrt(_lower_median(dx * dx + dy * dy, settings.min_common_keypoints))  # (V, P)

    low = np.fmin.reduce(track_xy, axis=2)  # (V, 2); NaN only where nothing projects
    high = np.fmax.reduce(track_xy, axis=2)
    extent = high - low
    gate = np.fmax(settings.gate_px, settings.gate_body_fraction * np.hypot(extent[:, 0], extent[:, 1]))  # (V,)
    iou = _box_iou(detections.boxes, np.concatenate([low, high], -1))  # (V, P)

    gated = median / gate[:, None]
    cost = np.where(gated <= 1.0, gated + settings.box_weight * (1.0 - iou), np.inf)
    chosen = np.argmin(cost, axis=1)
    views = np.arange(len(chosen))
    found = cost[views, chosen] < np.inf
    return np.where(found, chosen, NONE), np.where(found, median[views, chosen], np.inf)


def _cross_matrix(v: np.ndarray) -> np.ndarray:
    x, y, z = v
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def fundamental_matrices(K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """F[a, b] with x_b^T F[a, b] x_a = 0 for undistorted pixel points; (V, V, 3, 3).

    K: (V, 3, 3) pixels; R: (V, 3, 3) and t: (V, 3) world->camera (camera_from_world), metres.
    """
    n = len(K)
    F = np.zeros((n, n, 3, 3))
    K_inv = np.linalg.inv(K)
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            R_ba = R[b] @ R[a].T  # camera b from camera a
            t_ba = t[b] - R_ba @ t[a]
            essential = _cross_matrix(t_ba) @ R_ba
            F[a, b] = K_inv[b].T @ essential @ K_inv[a]
    return F


def epipolar_distances(keypoints: np.ndarray, fundamental: np.ndarray, min_common: int) -> np.ndarray:
    """Median symmetric epipolar distance between every pair of persons of every pair of cameras.

    keypoints: (V, P, K, 2) undistorted pixels, NaN where missing. fundamental: (V, V, 3, 3).
    Returns (V, P, V, P) pixels; inf on the diagonal cameras and with too few common keypoints.
    """
    n_views, n_persons, n_kp, _ = keypoints.shape
    homog = np.concatenate([keypoints, np.ones((n_views, n_persons, n_kp, 1), keypoints.dtype)], -1)
    homog = homog.astype(np.float64)
    # lines_in_b[a, b, p, k] = F[a, b] @ x_a[p, k]
    lines_in_b = np.einsum("abij,apkj->abpki", fundamental, homog)  # (V, V, P, K, 3)
    # residual[a, p, b, q, k] = x_b[q, k] . line_in_b[a, b, p, k]
    residual = np.einsum("bqki,abpki->apbqk", homog, lines_in_b)
    norm_b = np.linalg.norm(lines_in_b[..., :2], axis=-1)  # (V_a, V_b, P, K)
    # the line in a of x_b is F[a, b]^T x_b
    lines_in_a = np.einsum("abji,bqkj->abqki", fundamental, homog)  # (V_a, V_b, P_q, K, 3)
    norm_a = np.linalg.norm(lines_in_a[..., :2], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = 0.5 * np.abs(residual) * (
            1.0 / norm_b.transpose(0, 2, 1, 3)[:, :, :, None, :] + 1.0 / norm_a[:, None, :, :, :])
    median = _lower_median(np.where(np.isfinite(distance), distance, np.nan), min_common)
    same = np.eye(n_views, dtype=bool)[:, None, :, None]
    return np.where(same, np.inf, median)


@dataclass(frozen=True, slots=True)
class BootstrapChoice:
    """A bootstrap's choice (see `bootstrap_choice`). chosen: (V,) int64 person index per camera or -1.
    seen_enough: the chosen person is seen consistently by at least `RELIABLE_GROUP_VIEWS` cameras (all of the
    rig's when it has fewer). nearest: everyone else in the frame set is farther from the cameras' optical axes
    by at least `bootstrap_margin`. confident: both."""

    chosen: np.ndarray
    seen_enough: bool
    nearest: bool

    @property
    def confident(self) -> bool:
        return self.seen_enough and self.nearest


def bootstrap_persons(keypoints_undistorted: np.ndarray, counts: np.ndarray, fundamental: np.ndarray,
                      settings: AssociationSettings = AssociationSettings(),
                      off_axis: np.ndarray | None = None) -> np.ndarray:
    """`bootstrap_choice(...).chosen`: chosen (V,) int64 person index per camera or -1."""
    return bootstrap_choice(keypoints_undistorted, counts, fundamental, settings, off_axis).chosen


def bootstrap_choice(keypoints_undistorted: np.ndarray, counts: np.ndarray, fundamental: np.ndarray,
                     settings: AssociationSettings = AssociationSettings(),
                     off_axis: np.ndarray | None = None) -> BootstrapChoice:
    """Choose one person per camera by multi-view epipolar consistency, with no track.

    keypoints_undistorted: (V, P, K, 2) pixels, NaN where missing; V: every camera of the rig (a camera without
    a frame in this set has no persons); counts: (V,) persons per camera.
    off_axis: optional (V, P) how far each person is from the camera's optical axis (e.g. the median
    norm of its normalised image coordinates, i.e. tan of the angle; NaN when unknown).

    Candidate groups are grown from seeds ranked by the number of cameras holding an epipolar-consistent
    person (then the smallest summed distance). Among the groups of at least `RELIABLE_GROUP_VIEWS` cameras,
    or of one camera fewer than the largest group where that is less (never fewer than two), the one nearest
    the cameras' optical axes (the performer at the centre of the capture volume, where a stage's cameras
    point; the mean over the group's cameras) wins when `off_axis` is given; otherwise the first. A person
    seen by fewer cameras than another is not thereby someone else: the distractor walking between a camera
    and the performer hides the performer in that one view. Never list order.

    The choice is *confident* when the chosen group has at least min(`RELIABLE_GROUP_VIEWS`, V) cameras
    (`seen_enough`) and, with `off_axis`, everyone else is farther from the optical axes by at least
    `bootstrap_margin` (`nearest`; always true without `off_axis`): every other group, however small (its mean
    off-axis), and every person with at least `min_common_keypoints` keypoints that no other camera agrees with
    (its own). A group that shares a detection with the chosen one, or a person within `SAME_PERSON_GATES`
    epipolar gates of it (lower median over the chosen cameras), is the chosen person split by the gate (a
    calibration or detector bias, as on the real Pose2Sim trial with MediaPipe), not a rival. Otherwise the
    frame set is poor: the performer may be the one seen by too few cameras (hidden by the distractor, missed,
    its left and right swapped, or a camera's frame not there yet); the sync node then waits for a confident
    set before it commits to a person (`nodes.sync`, `bootstrap_wait_sets`).
    """
    n_views, n_persons = keypoints_undistorted.shape[:2]
    distance = epipolar_distances(keypoints_undistorted, fundamental, settings.min_common_keypoints)
    real = np.arange(n_persons)[None, :] < counts[:, None]  # (V, P)
    distance = np.where(real[:, :, None, None] & real[None, None, :, :], distance, np.inf)
    gate = settings.epipolar_gate_px
    best_per_camera = distance.min(axis=3)  # (V, P, V)
    support = (best_per_camera <= gate).sum(-1)  # (V, P)
    total = np.where(best_per_camera <= gate, best_per_camera, 0.0).sum(-1)
    if not (support > 0).any():
        return BootstrapChoice(np.full(n_views, NONE, np.int64), False, False)
    order = np.lexsort((total.ravel(), -support.ravel()))
    groups: list[np.ndarray] = []
    taken = np.zeros((n_views, n_persons), bool)
    for flat in order:
        seed_view, seed_person = np.unravel_index(flat, support.shape)
        if support[seed_view, seed_person] == 0 or taken[seed_view, seed_person]:
            continue
        group = _grow_group(distance, gate, seed_view, seed_person)
        members = np.flatnonzero(group != NONE)
        taken[members, group[members]] = True
        groups.append(group)
        if off_axis is None or len(groups) == MAX_BOOTSTRAP_GROUPS:
            break
    size = np.array([(g != NONE).sum() for g in groups])
    largest = int(size.max())
    enough = min(largest, max(2, min(RELIABLE_GROUP_VIEWS, largest - 1)))
    seen_enough = min(RELIABLE_GROUP_VIEWS, n_views)
    if off_axis is None:
        return BootstrapChoice(groups[0], bool(size[0] >= seen_enough), True)
    views = np.arange(n_views)
    centrality = np.array([np.nanmean(np.where(g != NONE, off_axis[views, np.maximum(g, 0)], np.nan))
                           for g in groups])  # mean off-axis of each group's members
    centrality = np.where(np.isfinite(centrality), centrality, np.inf)
    best = min(np.flatnonzero(size >= enough), key=lambda i: centrality[i])  # the first of equals
    # the rivals: other people, i.e. every other group and every person with enough keypoints in no group (seen
    # by one camera), unless one of theirs is the chosen person (within SAME_PERSON_GATES epipolar gates of the
    # chosen group: a person whose views straddle the gate, calibration or detector error, splits into groups)
    chosen = groups[best]
    members = np.flatnonzero(chosen != NONE)
    to_chosen = distance[:, :, members, chosen[members]]  # (V, P, M); inf within a camera
    to_chosen = _lower_median(np.where(np.isfinite(to_chosen), to_chosen, np.nan), 1)
    same = real & (to_chosen <= SAME_PERSON_GATES * gate)
    same[members, chosen[members]] = True
    rivals = [centrality[i] for i, g in enumerate(groups)
              if not same[np.flatnonzero(g != NONE), g[g != NONE]].any()]
    enough_keypoints = np.isfinite(keypoints_undistorted[..., 0]).sum(-1) >= settings.min_common_keypoints
    alone = real & ~taken & ~same & enough_keypoints
    rivals = np.concatenate([rivals, off_axis[alone]])
    rival = np.where(np.isfinite(rivals), rivals, np.inf).min(initial=np.inf)
    return BootstrapChoice(chosen, bool(size[best] >= seen_enough),
                           bool(rival >= centrality[best] + settings.bootstrap_margin))


MAX_BOOTSTRAP_GROUPS = 4  # distinct people compared at bootstrap
RELIABLE_GROUP_VIEWS = 3  # cameras agreeing on a person's keypoints: three views do not agree by chance
SAME_PERSON_GATES = 2.0  # within this many epipolar gates of the chosen group: the chosen person, not a rival
KEYPOINT_SPACING_M = 0.5  # a keypoint's nearest neighbour on a body is at most about this far (MHR-70: a knee)


def _grow_group(distance: np.ndarray, gate: float, seed_view: int, seed_person: int) -> np.ndarray:
    """Greedily add to the seed the (camera, person) nearest (mean epipolar distance) to everyone chosen,
    as long as its worst distance to them is within `gate`. distance: (V, P, V, P). Returns (V,)."""
    chosen = np.full(distance.shape[0], NONE, np.int64)
    chosen[seed_view] = seed_person
    while True:
        members = np.flatnonzero(chosen != NONE)
        to_members = distance[members, chosen[members]]  # (M, V, P)
        worst = to_members.max(axis=0)
        mean = to_members.mean(axis=0)
        mean = np.where((worst <= gate) & (chosen == NONE)[:, None], mean, np.inf)
        flat = int(np.argmin(mean))
        if not np.isfinite(mean.ravel()[flat]):
            return chosen
        view, person = np.unravel_index(flat, mean.shape)
        chosen[view] = person


def consistent_with_track(state: TrackState, points: np.ndarray,
                          settings: AssociationSettings = AssociationSettings()) -> bool:
    """Whether new 3D points continue the track: no track yet, or the median distance of the points
    valid in both is within `max_jump_m`, plus `coast_speed_m` per frame set since the track was last
    confirmed (a view
    that sees two people one behind the other cannot tell them apart; this check can).
    points: (K, 3) metres, world, NaN where missing."""
    if state.points is None:
        return True
    jump = np.linalg.norm(np.asarray(points, np.float64) - state.points, axis=-1)
    jump = jump[np.isfinite(jump)]
    allowed = settings.max_jump_m + settings.coast_speed_m * state.frames_lost
    return bool(len(jump) >= settings.min_common_keypoints and np.median(jump) <= allowed)


def _trusted_points(state: TrackState, points: np.ndarray, settings: AssociationSettings) -> np.ndarray:
    """points (K, 3) metres, world, with NaN where a point is not trusted: farther than `max_point_jump_m` per
    frame set since the track was confirmed from the track's own point; where the track lacks that point,
    farther than that plus `KEYPOINT_SPACING_M` from every point the track has; for a new track, that far from
    every other point of the body (a point must appear attached to the body). Returns a float64 copy."""
    points = np.array(points, np.float64)
    finite = np.isfinite(points).all(axis=1)
    distance = np.zeros(len(points))
    if state.points is None:
        known = np.zeros(len(points), bool)
        reference = points[finite]
    else:
        known = np.isfinite(state.points).all(axis=1)
        reference = state.points[known]
        distance[known] = np.linalg.norm(points[known] - reference, axis=-1)
    new = finite & ~known
    if new.any():
        gaps = np.linalg.norm(points[new, None] - reference[None], axis=-1)
        if state.points is None:  # a new track: every other point of the body, not the point itself
            np.fill_diagonal(gaps, np.inf)
        distance[new] = gaps.min(axis=1, initial=np.inf) - KEYPOINT_SPACING_M
    points[distance > settings.max_point_jump_m * (state.frames_lost + 1)] = np.nan
    return points


def advance_track(state: TrackState, points: np.ndarray | None, confirmed: bool,
                  settings: AssociationSettings = AssociationSettings()) -> TrackState:
    """The next track state: a confirmed frame set (enough consistent views, usable points) resets
    the loss count and replaces the points, NaN where a point jumped (see `_trusted_points`); otherwise
    the count grows and past `lost_after_frames` the track is dropped (points None), so the next set
    bootstraps."""
    if confirmed and points is not None:
        return TrackState(points=_trusted_points(state, points, settings), frames_lost=0)
    if state.points is None:
        return state
    lost = state.frames_lost + 1
    if lost > settings.lost_after_frames:
        return TrackState(points=None, frames_lost=0)
    return TrackState(points=state.points, frames_lost=lost)
