"""Robust multi-view triangulation of keypoints, vectorised over points (no Python loop per point).

Letters: V views (the rig's cameras, in order), K keypoints, P view pairs.

`triangulate_robust` per keypoint, all keypoints at once:
1. undistort the observed pixels to normalised camera coordinates (OpenCV);
2. candidates: linear (DLT-style, inhomogeneous) triangulation from every pair of the keypoint's
   `seed_views` most confident observing views (all pairs up to 6 views), rows weighted by detector
   confidence, solved as batched 3x3 normal equations (closed form);
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

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from streamer.calibration import Rig

__all__ = [
    "MIN_VIEWS",
    "Triangulation",
    "TriangulationSettings",
    "keep_freed_memory",
    "triangulate_dlt",
    "triangulate_robust",
]

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
    seed_views: candidates come from every pair of the `seed_views` most confident observing views of each
        keypoint (all pairs up to that many views; 6 -> at most 15 candidates); scoring uses every view.
    prior_gate_m: distance from the previous 3D point at which the prior term saturates, metres.
    prior_weight: prior cost at saturation, in units of one outlier view (threshold_px squared).
    """

    threshold_px: float = 15.0
    min_confidence: float = 0.0
    huber_px: float = 4.0
    lm_iterations: int = 1
    seed_views: int = 6
    prior_gate_m: float = 0.2
    prior_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.threshold_px > 0 or not self.huber_px > 0 or not self.prior_gate_m > 0:
            raise ValueError("TriangulationSettings: threshold_px, huber_px and prior_gate_m must be > 0")
        if self.lm_iterations < 0 or self.prior_weight < 0 or not 0 <= self.min_confidence < 1 or self.seed_views < 2:
            raise ValueError(
                "TriangulationSettings: lm_iterations >= 0, prior_weight >= 0, 0 <= min_confidence < 1, "
                "seed_views >= 2 required"
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


def keep_freed_memory(keep_bytes: int = 128 << 20) -> bool:
    """Ask glibc malloc to keep freed memory instead of returning it to the OS after every large free.

    A frame's temporaries (~0.1-1 MB) are otherwise unmapped and page-faulted back on every call; on this
    project's VMs that costs ~1 ms per frame, more than the triangulation itself (measured with
    `streamer bench triangulation`). Call once at process start in hot-loop processes (sync node,
    benchmarks). Sets M_TRIM_THRESHOLD = M_TOP_PAD = keep_bytes and M_MMAP_THRESHOLD = 32 MiB.
    Returns False (and changes nothing) where the C library has no `mallopt`.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1
    ok &= mallopt(m_trim_threshold, int(keep_bytes)) == 1
    ok &= mallopt(m_top_pad, int(min(keep_bytes, 64 << 20))) == 1
    return bool(ok)


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
def _rank_pairs(M: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of ranks 0..M-1: two (P,) int arrays, P = M (M - 1) / 2."""
    return np.triu_indices(M, k=1)


@lru_cache(maxsize=16)
def _linear_constants(rig: Rig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-view constants (9, V, 1) each of `_linear_terms`: terms = w2 (s Cs + x Cx + y Cy + C0), s = x^2 + y^2.

    From a_x = x R_3 - R_1, a_y = y R_3 - R_2 (rows of R), b_x = t_1 - x t_3, b_y = t_2 - y t_3:
    a_x a_x^T + a_y a_y^T = s R3 R3^T - x (R3 R1^T + R1 R3^T) - y (R3 R2^T + R2 R3^T) + R1 R1^T + R2 R2^T and
    a_x b_x + a_y b_y = -s t_3 R3 + x (t_1 R3 + t_3 R1) + y (t_2 R3 + t_3 R2) - t_1 R1 - t_2 R2.
    Cached per Rig object (rigs are immutable).
    """
    R0, R1, R2 = rig.R[:, 0], rig.R[:, 1], rig.R[:, 2]  # (V, 3) rows
    t0, t1, t2 = rig.t[:, 0:1], rig.t[:, 1:2], rig.t[:, 2:3]  # (V, 1)

    def sym(P, Q):  # unique entries of P Q^T + Q P^T (P == Q: P P^T counted twice)
        return [P[:, i] * Q[:, j] + Q[:, i] * P[:, j] for i, j in _SYM]

    C_s = [0.5 * e for e in sym(R2, R2)] + list((-t2 * R2).T)
    C_x = [-e for e in sym(R2, R0)] + list((t0 * R2 + t2 * R0).T)
    C_y = [-e for e in sym(R2, R1)] + list((t1 * R2 + t2 * R1).T)
    C_0 = [0.5 * (p + q) for p, q in zip(sym(R0, R0), sym(R1, R1))] + list((-t0 * R0 - t1 * R1).T)
    return tuple(np.stack(c)[:, :, None] for c in (C_s, C_x, C_y, C_0))


def _linear_terms(rig: Rig, nx: np.ndarray, ny: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """Per-view normal-equation terms of the inhomogeneous DLT, rows weighted by `w2` (squared confidence).

    nx, ny, w2: (V, K). Rows: (x R_3 - R_1) . X = t_1 - x t_3 and (y R_3 - R_2) . X = t_2 - y t_3.
    Returns (9, V, K): 0-5 the unique entries of A = sum a a^T over the view's two rows, 6-8 b = sum a * rhs.
    Terms add over views: the system of any set of views is the sum of theirs.
    """
    C_s, C_x, C_y, C_0 = _linear_constants(rig)
    return (C_s * (nx * nx + ny * ny) + C_x * nx + C_y * ny + C_0) * w2


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
    terms = _linear_terms(rig, nx, ny, weights * weights)  # (9, V, K)

    # 2. candidates (3, P, K) from the pairs of each keypoint's seed_views most confident views. Gathers use
    #    np.take on flat (view, keypoint) indices: several times faster than fancy indexing at these sizes.
    keys = np.arange(K)
    M = min(V, settings.seed_views)
    ranked = np.argsort(-weights, axis=0, kind="stable")[:M]  # (M, K), observed views first
    rank_i, rank_j = _rank_pairs(M)
    P = len(rank_i)
    flat_first = (ranked[rank_i] * K + keys).ravel()  # (P K,) index into (V K)
    flat_second = (ranked[rank_j] * K + keys).ravel()
    flat_terms = terms.reshape(9, V * K)
    pair_terms = (np.take(flat_terms, flat_first, axis=1) + np.take(flat_terms, flat_second, axis=1)).reshape(9, P, K)
    candidates, pair_ok = _solve3(pair_terms[:6], pair_terms[6:])
    flat_observed = observed.ravel()
    pair_ok &= (flat_observed[flat_first] & flat_observed[flat_second]).reshape(P, K)

    # 3. robust score in undistorted pixels: err2 (V, P, K). float32 is ample for choosing a candidate
    #    (1e-4 px) and halves the memory traffic of the largest arrays of the call.
    x, y, z = rig.to_camera_columns(candidates.reshape(3, -1).astype(np.float32))
    in_front = z > _MIN_DEPTH_M
    inv_z = 1.0 / np.where(in_front, z, np.float32(1.0))
    focal2 = rig.mean_focal_px.astype(np.float32)[:, None, None] ** 2
    dx = (x * inv_z).reshape(V, P, K) - nx.astype(np.float32)[:, None]
    dy = (y * inv_z).reshape(V, P, K) - ny.astype(np.float32)[:, None]
    err2 = np.where(in_front.reshape(V, P, K), (dx * dx + dy * dy) * focal2, np.float32(np.inf))
    cost = np.sum(weights.astype(np.float32)[:, None] * np.minimum(err2, np.float32(tau2)), axis=0)  # (P, K)
    # a candidate must lie in front of, and agree with, both of its own seed views
    flat_err2 = err2.reshape(V, P * K)  # seed view v of pair-candidate (p, k) sits at [v, p K + k]
    seed_column = np.arange(P * K)
    pair_ok &= ((flat_err2.ravel()[(flat_first // K) * (P * K) + seed_column] < tau2)
                & (flat_err2.ravel()[(flat_second // K) * (P * K) + seed_column] < tau2)).reshape(P, K)
    if prior is not None:
        dist2 = np.sum((candidates - prior.T[:, None, :]) ** 2, axis=0) / settings.prior_gate_m**2
        cost += np.where(np.isfinite(dist2), settings.prior_weight * tau2 * np.minimum(dist2, 1.0), 0.0)
    cost = np.where(pair_ok, cost, np.inf)
    best = np.argmin(cost, axis=0)  # (K,)
    best_column = best * K + keys
    has_candidate = np.isfinite(np.take(cost.ravel(), best_column))

    # 4. inliers of the best candidate: (V, K)
    inliers = observed & (np.take(flat_err2, best_column, axis=1) < tau2) & has_candidate

    # 5. reseed from all inliers; 6. gate in distorted pixels and LM refinement; 7. contract
    points = _reseed(terms, inliers)
    points, err, inliers = _refine_lm(rig, points, pixels, weights, observed, inliers, settings)
    return _finish(points, err, weights, observed, inliers, settings.threshold_px)


def _reseed(terms: np.ndarray, inliers: np.ndarray) -> np.ndarray:
    """Linear triangulation from the inlier views (V, K) of `terms` (9, V, K): (3, K), NaN where fewer than
    2 inliers or singular."""
    system = np.sum(terms * inliers, axis=1)  # (9, K)
    points, ok = _solve3(system[:6], system[6:])
    ok &= inliers.sum(axis=0) >= MIN_VIEWS
    return np.where(ok, points, np.nan)


def _refine_lm(
    rig: Rig, points, pixels, weights, observed, inliers, settings: TriangulationSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on the distorted reprojection of the inlier views, Huber x confidence weights.

    points: (3, K) seeds (NaN columns are left alone); inliers: (V, K), gated at the seed (views beyond
    threshold_px dropped). Batched over points: the Jacobian comes from one projection of the stacked
    points [X, X + h e_x, X + h e_y, X + h e_z] (forward differences), the normal equations are 3x3 per
    point, the damping is per point. The last step is only checked (one plain projection, no Jacobian).
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

    def project(X, jacobian: bool):
        """-> uv (2V, 4 or 1, k) u rows then v rows at [X(, X + h e_x, X + h e_y, X + h e_z)], residual,
        residual norm (V, k) (inf where not observed or not projectable)."""
        stacked = (X[:, None, :] + offsets).reshape(3, -1) if jacobian else X
        uv = np.concatenate(rig.project_columns(stacked)).reshape(2 * V, -1, k)
        resid = uv[:, 0] - target
        norm = np.hypot(resid[:V], resid[V:])
        return uv, resid, np.where(seen & np.isfinite(norm), norm, np.inf)

    def huber_cost(norm, mask):
        huber = np.where(norm <= delta, 0.5 * norm * norm, delta * (norm - 0.5 * delta))
        return np.sum(mask * np.where(mask > 0, huber, 0.0), axis=0)  # (k,)

    def normal_equations(uv, resid, norm, mask):
        """-> J^T W J as (6, k) unique entries and J^T W r (3, k); W = mask x Huber IRLS weight."""
        robust = mask * np.where(mask > 0, delta / np.maximum(norm, delta), 0.0)  # (V, k)
        robust = np.concatenate([robust, robust])  # (2V, k)
        J = (uv[:, 1:] - uv[:, :1]) * (1.0 / _FD_STEP_M)  # (2V, 3, k)
        J[~np.isfinite(J)] = 0.0
        Jw = J * robust[:, None]
        JtJ = np.sum(Jw[:, _SYM_ROWS] * J[:, _SYM_COLS], axis=0)  # (6, k)
        Jtr = np.sum(Jw * np.where(robust > 0, resid, 0.0)[:, None], axis=0)  # (3, k)
        return JtJ, Jtr

    uv, resid, norm = project(X, jacobian=settings.lm_iterations > 0)
    gated = inliers[:, active] & (norm < settings.threshold_px)
    mask = np.where(gated, weights[:, active], 0.0)
    if settings.lm_iterations > 0:
        cost = huber_cost(norm, mask)
        JtJ, Jtr = normal_equations(uv, resid, norm, mask)
        lam = np.full(k, 1e-3)
    for iteration in range(settings.lm_iterations):
        last = iteration == settings.lm_iterations - 1
        damped = JtJ.copy()
        damped[_SYM_DIAGONAL] *= 1.0 + lam
        step, ok = _solve3(damped, -Jtr)
        X_new = np.where(ok, X + step, X)
        uv, resid, norm_new = project(X_new, jacobian=not last)
        cost_new = huber_cost(norm_new, mask)
        better = cost_new < cost
        X = np.where(better, X_new, X)
        norm = np.where(better, norm_new, norm)
        if not last:
            cost = np.where(better, cost_new, cost)
            JtJ_new, Jtr_new = normal_equations(uv, resid, norm_new, mask)
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
