"""Robust multi-view triangulation of keypoints, vectorised over points (no Python loop per point).

Letters: V views (the rig's cameras, in order), K keypoints, P view pairs.

`triangulate_robust` per keypoint, all keypoints at once:
1. undistort the observed pixels to normalised camera coordinates (OpenCV);
2. candidates: linear (DLT-style, inhomogeneous) triangulation from every pair of observing views,
   rows weighted by detector confidence, solved as batched 3x3 normal equations (closed form);
3. robust score of every candidate across all observing views: confidence-weighted truncated quadratic
   (MSAC) of the reprojection error in undistorted pixels (normalised error x focal length),
   plus, when a previous 3D point is given, a capped distance term (causal temporal prior: it
   breaks ties between candidates and pulls away from outlier-born ones);
4. inliers of the best candidate: views within `threshold_px`; fewer than 2 -> missing;
5. reseed: linear triangulation from all inliers;
6. Levenberg-Marquardt on the distorted-pixel reprojection error of the inlier views, with
   confidence x Huber weights (IRLS), batched 3x3 normal equations per point, per-point damping;
7. final per-view reprojection error of every observed view; inliers re-gated; points with fewer than
   2 inlier views are NaN with `n_views < 2` (ARCHITECTURE.md §4 rule 1).

`triangulate_dlt` is the plain baseline: homogeneous DLT (SVD) from every observing view, weighted by
confidence, no outlier handling. Both return a `Triangulation` whose fields match protocol `Points3D`.
Pure functions of arrays: no state, no clocks; torch is not imported.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from streamer.calibration import Rig

__all__ = ["MIN_VIEWS", "Triangulation", "TriangulationSettings", "triangulate_dlt", "triangulate_robust"]

log = logging.getLogger(__name__)

MIN_VIEWS = 2
_FD_STEP_M = 1e-6  # forward-difference step for the LM Jacobian, metres
_MIN_DEPTH_M = 1e-3
_MAX_ABS_PIXEL = 1e6  # coordinates beyond this are garbage, treated as not observed


@dataclass(frozen=True, slots=True)
class TriangulationSettings:
    """threshold_px: inlier gate on the reprojection error, pixels.
    min_confidence: observations with confidence <= this are ignored.
    huber_px: Huber scale of the LM robust weights, pixels.
    lm_iterations: Levenberg-Marquardt iterations (each: one batched projection of 4 points per keypoint).
    max_pairs: most view pairs seeding candidates (all pairs up to 8 views; a spread subset beyond).
    prior_gate_m: distance from the previous 3D point at which the prior term saturates, metres.
    prior_weight: prior cost at saturation, in units of one outlier view (threshold_px squared).
    """

    threshold_px: float = 15.0
    min_confidence: float = 0.0
    huber_px: float = 4.0
    lm_iterations: int = 2
    max_pairs: int = 32
    prior_gate_m: float = 0.2
    prior_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.threshold_px > 0 or not self.huber_px > 0 or not self.prior_gate_m > 0:
            raise ValueError("TriangulationSettings: threshold_px, huber_px and prior_gate_m must be > 0")
        if self.lm_iterations < 0 or self.prior_weight < 0 or not 0 <= self.min_confidence < 1 or self.max_pairs < 1:
            raise ValueError(
                "TriangulationSettings: lm_iterations >= 0, prior_weight >= 0, 0 <= min_confidence < 1, "
                "max_pairs >= 1 required"
            )


@dataclass(frozen=True, slots=True)
class Triangulation:
    """Result, shaped like protocol `Points3D`.

    points: (K, 3) float64, metres, world frame; NaN where missing (n_views < 2).
    n_views: (K,) uint8, inlier views used per point.
    inliers: (K, V) bool.
    reproj_px: (K, V) float64, distorted-pixel reprojection error of every observed view (inlier or not);
        NaN where not observed or where the point is missing.
    confidence: (K,) float64 in [0, 1], mean detector confidence of the inlier views; 0 where missing.
    mean_reproj_px: mean reprojection error over all inlier observations; NaN when nothing was triangulated.
    """

    points: np.ndarray
    n_views: np.ndarray
    inliers: np.ndarray
    reproj_px: np.ndarray
    confidence: np.ndarray
    mean_reproj_px: float

    @property
    def valid(self) -> np.ndarray:
        """(K,) bool: triangulated (finite, n_views >= 2)."""
        return self.n_views >= MIN_VIEWS


# ---------------------------------------------------------------- input checks and shared pieces


def _prepare(pixels, confidence, rig: Rig, min_confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> pixels (V, K, 2) float64, weights (V, K) (0 where not observed), observed (V, K) bool."""
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim != 3 or pixels.shape[2] != 2:
        raise ValueError(f"triangulate: pixels must be (V, K, 2), got {pixels.shape}")
    V, K = pixels.shape[:2]
    if V != len(rig):
        raise ValueError(f"triangulate: pixels has {V} views but the rig has {len(rig)} cameras ({rig.names})")
    if confidence is None:
        confidence = np.ones((V, K))
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.shape != (V, K):
        raise ValueError(f"triangulate: confidence must be (V, K) = {(V, K)}, got {confidence.shape}")
    with np.errstate(invalid="ignore"):
        finite = (np.abs(pixels[..., 0]) < _MAX_ABS_PIXEL) & (np.abs(pixels[..., 1]) < _MAX_ABS_PIXEL)
    finite &= np.isfinite(confidence)
    weights = np.where(finite & (confidence > min_confidence), np.minimum(confidence, 1.0), 0.0)
    return pixels, weights, weights > 0


def _missing(V: int, K: int) -> Triangulation:
    return Triangulation(
        points=np.full((K, 3), np.nan),
        n_views=np.zeros(K, dtype=np.uint8),
        inliers=np.zeros((K, V), dtype=bool),
        reproj_px=np.full((K, V), np.nan),
        confidence=np.zeros(K),
        mean_reproj_px=float("nan"),
    )


def _undistort(rig: Rig, pixels: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> nx, ny: (V, K) normalised undistorted coordinates, 0 where not observed.

    `observed` (V, K) is updated in place: points OpenCV cannot undistort are not observed.
    """
    normalised = rig.undistort(np.where(observed[..., None], pixels, np.nan))
    observed &= np.isfinite(normalised[..., 0]) & np.isfinite(normalised[..., 1])  # in place: callers see it
    nx = np.where(observed, normalised[..., 0], 0.0)
    ny = np.where(observed, normalised[..., 1], 0.0)
    return nx, ny


# Symmetric 3x3 matrices are carried as their 6 unique entries (00, 01, 02, 11, 12, 22) on the first axis.
_SYM = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
_SYM_ROWS = np.array([i for i, _ in _SYM])
_SYM_COLS = np.array([j for _, j in _SYM])
_SYM_DIAGONAL = [0, 3, 5]


@lru_cache(maxsize=64)
def _pairs(V: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """View pairs (first < second) seeding the candidates, and their index: three (P,) int arrays.

    All V (V - 1) / 2 pairs up to `max_pairs`; beyond, `max_pairs` pairs evenly spread over the list of
    all pairs (every view keeps about 2 max_pairs / V pairs, with short and long baselines).
    """
    first, second = np.triu_indices(V, k=1)
    if len(first) > max_pairs:
        keep = np.unique(np.linspace(0, len(first) - 1, max_pairs).round().astype(int))
        first, second = first[keep], second[keep]
    return first, second, np.arange(len(first))


def _linear_terms(rig: Rig, nx: np.ndarray, ny: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-view normal-equation terms of the inhomogeneous DLT, rows weighted by `w2` (squared confidence).

    nx, ny, w2: (V, K). Row for x: (x R_3 - R_1) . X = t_1 - x t_3 (likewise for y).
    Returns A: (6, V, K) unique entries of sum a a^T over the view's two rows; b: (3, V, K) sum of a * rhs.
    """
    R, t = rig.R, rig.t
    ax = [nx * R[:, 2, j, None] - R[:, 0, j, None] for j in range(3)]  # 3 x (V, K)
    ay = [ny * R[:, 2, j, None] - R[:, 1, j, None] for j in range(3)]
    bx = (t[:, 0, None] - nx * t[:, 2, None]) * w2
    by = (t[:, 1, None] - ny * t[:, 2, None]) * w2
    A = np.stack([(ax[i] * ax[j] + ay[i] * ay[j]) * w2 for i, j in _SYM])
    b = np.stack([ax[j] * bx + ay[j] * by for j in range(3)])
    return A, b


def _solve3(A: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched solve of A x = r, A symmetric as (6, ...) unique entries, r (3, ...) -> (x (3, ...), ok (...))."""
    a, b, c, d, e, f = A
    c00 = d * f - e * e
    c01 = c * e - b * f
    c02 = b * e - c * d
    c11 = a * f - c * c
    c12 = b * c - a * e
    c22 = a * d - b * b
    det = a * c00 + b * c01 + c * c02
    scale = (np.abs(a) + np.abs(d) + np.abs(f)) * (1.0 / 3.0)
    ok = np.abs(det) > 1e-12 * scale * scale * scale
    inv_det = 1.0 / np.where(ok, det, 1.0)
    r0, r1, r2 = r
    x = np.stack(
        [
            (c00 * r0 + c01 * r1 + c02 * r2) * inv_det,
            (c01 * r0 + c11 * r1 + c12 * r2) * inv_det,
            (c02 * r0 + c12 * r1 + c22 * r2) * inv_det,
        ]
    )
    return x, ok


def _reproj_error(rig: Rig, points: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """points (K, 3), pixels (V, K, 2) -> (V, K) distorted-pixel error; inf behind a camera or where NaN."""
    u, v = rig.project_columns(points.T)
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.hypot(u - pixels[..., 0], v - pixels[..., 1])
    return np.where(np.isnan(err), np.inf, err)


# ---------------------------------------------------------------- robust triangulation


def triangulate_robust(
    pixels: np.ndarray,
    confidence: np.ndarray | None,
    rig: Rig,
    settings: TriangulationSettings = TriangulationSettings(),
    *,
    prior: np.ndarray | None = None,
) -> Triangulation:
    """Robust triangulation of K keypoints seen by the V cameras of `rig`.

    pixels: (V, K, 2) distorted image pixels, NaN where not detected.
    confidence: (V, K) detector confidence in [0, 1] (None: 1 wherever pixels are finite).
    rig: posed cameras, in the order of the V axis.
    prior: optional (K, 3) metres, world, the previous 3D points (NaN where unknown): causal temporal prior.
    Never raises on NaN or degenerate input; raises ValueError on wrong shapes.
    """
    pixels, weights, observed = _prepare(pixels, confidence, rig, settings.min_confidence)
    V, K = observed.shape
    if prior is not None:
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != (K, 3):
            raise ValueError(f"triangulate_robust: prior must be (K, 3) = {(K, 3)}, got {prior.shape}")
    if V < MIN_VIEWS or K == 0 or not observed.any():
        return _missing(V, K)
    tau2 = settings.threshold_px**2
    nx, ny = _undistort(rig, pixels, observed)
    weights = np.where(observed, weights, 0.0)
    A, b = _linear_terms(rig, nx, ny, weights * weights)

    # 2. candidates from every pair of views: (3, P, K)
    first, second, pairs = _pairs(V, settings.max_pairs)
    P = len(first)
    candidates, pair_ok = _solve3(A[:, first] + A[:, second], b[:, first] + b[:, second])
    pair_ok &= observed[first] & observed[second]

    # 3. robust score in undistorted pixels: err2 (V, P, K)
    x, y, z = rig.to_camera_columns(candidates.reshape(3, -1))
    in_front = z > _MIN_DEPTH_M
    inv_z = 1.0 / np.where(in_front, z, 1.0)
    focal2 = (0.5 * (rig.K[:, 0, 0] + rig.K[:, 1, 1]))[:, None, None] ** 2
    dx = (x * inv_z).reshape(V, P, K) - nx[:, None]
    dy = (y * inv_z).reshape(V, P, K) - ny[:, None]
    err2 = np.where(in_front.reshape(V, P, K), (dx * dx + dy * dy) * focal2, np.inf)
    cost = np.sum(weights[:, None] * np.minimum(err2, tau2), axis=0)  # (P, K); unobserved views weigh 0
    # a candidate must lie in front of, and agree with, both of its own seed views
    pair_ok &= (err2[first, pairs] < tau2) & (err2[second, pairs] < tau2)
    if prior is not None:
        dist2 = np.sum((candidates - prior.T[:, None, :]) ** 2, axis=0) / settings.prior_gate_m**2
        cost += np.where(np.isfinite(dist2), settings.prior_weight * tau2 * np.minimum(dist2, 1.0), 0.0)
    cost = np.where(pair_ok, cost, np.inf)
    best = np.argmin(cost, axis=0)  # (K,)
    keys = np.arange(K)
    has_candidate = np.isfinite(cost[best, keys])

    # 4. inliers of the best candidate: (V, K)
    inliers = observed & (err2[:, best, keys] < tau2) & has_candidate

    # 5. reseed from all inliers; 6. gate in distorted pixels and LM refinement; 7. contract
    points = _reseed(A, b, inliers)
    points, err, inliers = _refine_lm(rig, points, pixels, weights, observed, inliers, settings)
    return _finish(points, err, weights, observed, inliers, settings.threshold_px)


def _reseed(A: np.ndarray, b: np.ndarray, inliers: np.ndarray) -> np.ndarray:
    """Linear triangulation from the inlier views (V, K): (3, K), NaN where fewer than 2 inliers or singular."""
    points, ok = _solve3(np.sum(A * inliers, axis=1), np.sum(b * inliers, axis=1))
    ok &= inliers.sum(axis=0) >= MIN_VIEWS
    return np.where(ok, points, np.nan)


def _refine_lm(
    rig: Rig, points, pixels, weights, observed, inliers, settings: TriangulationSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on the distorted reprojection of the inlier views, Huber x confidence weights.

    points: (3, K) seeds (NaN columns are left alone); inliers: (V, K), gated at the seed (views beyond
    threshold_px dropped). Every step is batched over points: the Jacobian comes from one projection of
    the stacked points [X, X + h e_x, X + h e_y, X + h e_z] (forward differences).
    Returns points (3, K), the (V, K) reprojection error of every view at them (inf where not observed
    or behind the camera), and the gated inliers (V, K).
    """
    V, K = inliers.shape
    err_out = np.full((V, K), np.inf)
    active = np.all(np.isfinite(points), axis=0)
    if not active.any():
        return points, err_out, inliers & False
    X = points[:, active]  # (3, k)
    k = X.shape[1]
    seen = observed[:, active]
    target = np.where(seen, pixels[:, active].transpose(2, 0, 1), 0.0).reshape(2 * V, k)  # u rows, then v rows
    delta = settings.huber_px
    offsets = np.zeros((3, 4, 1))
    offsets[[0, 1, 2], [1, 2, 3]] = _FD_STEP_M

    def project(X):
        """-> uv (2V, 4, k): u rows then v rows at [X, X + h e_x, X + h e_y, X + h e_z]; residual norm (V, k)."""
        uv = np.concatenate(rig.project_columns((X[:, None, :] + offsets).reshape(3, -1))).reshape(2 * V, 4, k)
        resid = uv[:, 0] - target
        norm = np.sqrt(resid[:V] ** 2 + resid[V:] ** 2)
        return uv, resid, np.where(seen & np.isfinite(norm), norm, np.inf)

    def normal_equations(uv, resid, norm, mask):
        """-> cost (k,), J^T W J as (6, k) unique entries, J^T W r (3, k); W = mask x Huber IRLS weight."""
        used = mask > 0
        small = norm <= delta
        huber = np.where(small, 0.5 * norm * norm, delta * (norm - 0.5 * delta))
        cost = np.sum(mask * np.where(used, huber, 0.0), axis=0)
        robust = mask * np.where(used & small, 1.0, np.where(used, delta / np.maximum(norm, delta), 0.0))  # (V, k)
        robust = np.concatenate([robust, robust])  # (2V, k)
        J = (uv[:, 1:] - uv[:, :1]) * (1.0 / _FD_STEP_M)  # (2V, 3, k)
        J[~np.isfinite(J)] = 0.0
        Jw = J * robust[:, None]
        JtJ = np.sum(Jw[:, _SYM_ROWS] * J[:, _SYM_COLS], axis=0)  # (6, k)
        Jtr = np.sum(Jw * np.where(robust > 0, resid, 0.0)[:, None], axis=0)  # (3, k)
        return cost, JtJ, Jtr

    uv, resid, norm = project(X)
    gated = inliers[:, active] & (norm < settings.threshold_px)
    mask = np.where(gated, weights[:, active], 0.0)
    cost, JtJ, Jtr = normal_equations(uv, resid, norm, mask)
    lam = np.full(k, 1e-3)
    for _ in range(settings.lm_iterations):
        damped = JtJ.copy()
        damped[_SYM_DIAGONAL] *= 1.0 + lam
        step, ok = _solve3(damped, -Jtr)
        X_new = np.where(ok, X + step, X)
        uv, resid, norm_new = project(X_new)
        cost_new, JtJ_new, Jtr_new = normal_equations(uv, resid, norm_new, mask)
        better = cost_new < cost
        X = np.where(better, X_new, X)
        norm = np.where(better, norm_new, norm)
        cost = np.where(better, cost_new, cost)
        JtJ = np.where(better, JtJ_new, JtJ)
        Jtr = np.where(better, Jtr_new, Jtr)
        lam = np.where(better, lam * 0.1, lam * 10.0)
    out = points.copy()
    out[:, active] = X
    err_out[:, active] = norm
    gated_all = np.zeros_like(inliers)
    gated_all[:, active] = gated
    return out, err_out, gated_all


def _finish(points, err, weights, observed, inliers, threshold_px: float) -> Triangulation:
    """Apply the contract. points (3, K); err, observed, inliers, weights (V, K)."""
    inliers = inliers & observed & (err < threshold_px)
    n_views = inliers.sum(axis=0)
    valid = (n_views >= MIN_VIEWS) & np.all(np.isfinite(points), axis=0)
    inliers &= valid
    reproj = np.where(observed & valid & np.isfinite(err), err, np.nan)
    inlier_err = reproj[inliers]
    conf = np.where(valid, np.sum(weights * inliers, axis=0) / np.maximum(n_views, 1), 0.0)
    return Triangulation(
        points=np.where(valid[:, None], points.T, np.nan),
        n_views=np.where(valid, n_views, np.minimum(n_views, MIN_VIEWS - 1)).astype(np.uint8),
        inliers=np.ascontiguousarray(inliers.T),
        reproj_px=np.ascontiguousarray(reproj.T),
        confidence=conf,
        mean_reproj_px=float(inlier_err.mean()) if inlier_err.size else float("nan"),
    )


# ---------------------------------------------------------------- plain DLT baseline


def triangulate_dlt(
    pixels: np.ndarray, confidence: np.ndarray | None, rig: Rig, *, min_confidence: float = 0.0
) -> Triangulation:
    """Plain confidence-weighted homogeneous DLT (SVD) from every observing view; no outlier handling.

    Same inputs and output as `triangulate_robust`; every observing view counts as an inlier.
    """
    pixels, weights, observed = _prepare(pixels, confidence, rig, min_confidence)
    V, K = observed.shape
    if V < MIN_VIEWS or K == 0 or not observed.any():
        return _missing(V, K)
    nx, ny = _undistort(rig, pixels, observed)
    weights = np.where(observed, weights, 0.0)
    P = np.concatenate([rig.R, rig.t[:, :, None]], axis=2)  # (V, 3, 4)
    rows_x = (nx[..., None] * P[:, None, 2] - P[:, None, 0]) * weights[..., None]  # (V, K, 4)
    rows_y = (ny[..., None] * P[:, None, 2] - P[:, None, 1]) * weights[..., None]
    solvable = observed.sum(axis=0) >= MIN_VIEWS
    points = np.full((3, K), np.nan)
    if solvable.any():
        design = np.concatenate([rows_x, rows_y], axis=0)[:, solvable].transpose(1, 0, 2)  # (k, 2V, 4)
        _, _, vt = np.linalg.svd(design, full_matrices=False)
        homogeneous = vt[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            points[:, solvable] = (homogeneous[:, :3] / homogeneous[:, 3:4]).T
    inliers = observed & solvable & np.all(np.isfinite(points), axis=0)
    return _finish(points, _reproj_error(rig, points.T, pixels), weights, observed, inliers, np.inf)
