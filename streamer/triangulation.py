"""Robust multi-view triangulation of keypoints: one compiled kernel over all points (no Python loop per point).

Letters: V views (the rig's cameras, in order), K keypoints.

`triangulate_robust` checks shapes in numpy and runs steps 1-6 for every keypoint in one numba kernel
(`_robust_kernel`), then the output contract (`_contract`, shared with `triangulate_dlt`). Kernels are
compiled on first use (~10 s CPU once) and cached on disk beside this file (a fresh process loads them in
~0.4 s). ~0.25 ms CPU per 70-point frame at 8 views: 5x less than the numpy formulation it replaced (~300
array operations and 8 OpenCV calls per frame), with the same results (to 2e-6 px). Per keypoint:
1. undistort the observed pixels to normalised camera coordinates (OpenCV's iterative algorithm,
   re-implemented in the kernel; agrees with `cv2.undistortPoints` to < 1e-4 px, tested);
2. candidates: linear (DLT-style, inhomogeneous) triangulation from every pair of the keypoint's
   `seed_views` most confident observing views (all pairs up to 6 views), rows weighted by detector
   confidence, solved as 3x3 normal equations (closed form);
3. robust score of every candidate across all observing views: confidence-weighted truncated quadratic
   (MSAC) of the reprojection error in undistorted pixels (normalised error x focal length),
   plus, when a previous 3D point is given, a capped distance term (causal temporal prior: it
   breaks ties between candidates and pulls away from outlier-born ones);
4. inliers of the best candidate: views within `threshold_px`; fewer than 2 -> missing;
5. reseed: linear triangulation from all inliers;
6. Levenberg-Marquardt on the distorted-pixel reprojection error of the inlier views, with
   confidence x Huber weights (IRLS), analytic Jacobian, 3x3 normal equations, per-point damping;
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

import numba
import numpy as np

from streamer.calibration import Rig

__all__ = [
    "MIN_VIEWS",
    "Triangulation",
    "TriangulationSettings",
    "keep_freed_memory",
    "load_kernels",
    "triangulate_dlt",
    "triangulate_robust",
]

log = logging.getLogger(__name__)

MIN_VIEWS = 2
_MIN_DEPTH_M = 1e-3
_MAX_ABS_PIXEL = 1e6  # coordinates beyond this are garbage, treated as not observed
# OpenCV's default (5 fixed-point iterations) leaves ~0.5 px at the corners of strongly distorted webcams
# (Caliscope post_optimization cam 0); 12 iterations converge to < 2e-4 px there (as Rig.undistort).
_UNDISTORT_ITERATIONS = 12
_UNDISTORT_TOLERANCE = 1e-9  # normalised units (~1e-6 px): the iteration stops earlier once steps are this small
# Compiled on first use and cached on disk beside this file (numba's cache); error_model="numpy": division by
# zero gives inf/NaN as in numpy instead of raising.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})


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


def load_kernels() -> None:
    """Load the compiled kernels now (from numba's cache: ~0.3 s; compiled on the first run in a checkout:
    ~10 s) by triangulating one point seen by two made-up cameras. A live node calls it in its setup: paid on
    its first frame set instead, the load stalled the node with every camera's frames queueing behind it."""
    from streamer.calibration import Camera

    K = np.array([[1000.0, 0.0, 640.0], [0.0, 1000.0, 360.0], [0.0, 0.0, 1.0]])
    cameras = tuple(Camera(name, (1280, 720), K, np.zeros(5), np.eye(3), np.array([x, 0.0, 3.0]))
                    for name, x in (("a", 0.5), ("b", -0.5)))
    point = np.array([0.0, 0.0, 0.0])
    pixels = np.stack([K[:2, :2] @ ((point[:2] + cam.t[:2]) / (point[2] + cam.t[2])) + K[:2, 2] for cam in cameras])
    triangulate_robust(pixels[:, None, :], None, Rig(cameras), prior=np.full((1, 3), np.nan))


# ---------------------------------------------------------------- input checks and shared pieces


def _prepare(pixels, confidence, rig: Rig, min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """-> pixels (V, K, 2) float64 contiguous, weights (V, K): confidence clipped to 1, 0 where not observed
    (pixel not finite or beyond +-1e6, confidence not finite or <= min_confidence)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.float64)
    if pixels.ndim != 3 or pixels.shape[2] != 2:
        raise ValueError(f"triangulate: pixels must be (V, K, 2), got {pixels.shape}")
    V, K = pixels.shape[:2]
    if V != len(rig):
        raise ValueError(f"triangulate: pixels has {V} views but the rig has {len(rig)} cameras ({rig.names})")
    if confidence is None:
        confidence = np.ones((V, K))
    confidence = np.ascontiguousarray(confidence, dtype=np.float64)
    if confidence.shape != (V, K):
        raise ValueError(f"triangulate: confidence must be (V, K) = {(V, K)}, got {confidence.shape}")
    weights = np.empty((V, K))
    _observation_weights(pixels, confidence, float(min_confidence), weights)
    return pixels, weights


@_jit
def _observation_weights(pixels, confidence, min_confidence, weights):
    """Fills weights (V, K) as `_prepare` describes (compiled: one pass instead of ~10 array operations)."""
    V, K = weights.shape
    for v in range(V):
        for k in range(K):
            c = confidence[v, k]
            observed = (abs(pixels[v, k, 0]) < _MAX_ABS_PIXEL and abs(pixels[v, k, 1]) < _MAX_ABS_PIXEL
                        and np.isfinite(c) and c > min_confidence)
            weights[v, k] = min(c, 1.0) if observed else 0.0


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


def _reproj_error(rig: Rig, points: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """points (K, 3), pixels (V, K, 2) -> (V, K) distorted-pixel error; inf behind a camera or where NaN."""
    u, v = rig.project_columns(points.T)
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.hypot(u - pixels[..., 0], v - pixels[..., 1])
    return np.where(np.isnan(err), np.inf, err)


# ---------------------------------------------------------------- robust triangulation


@lru_cache(maxsize=16)
def _camera_arrays(rig: Rig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kernel inputs of a rig: intrinsics (V, 5) = fx, fy, cx, cy, mean focal; dist (V, 12); R (V, 3, 3);
    t (V, 3). Cached per Rig object (rigs are immutable)."""
    K = rig.K
    intrinsics = np.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], rig.mean_focal_px], axis=1)
    return intrinsics, np.ascontiguousarray(rig.dist12), np.ascontiguousarray(rig.R), np.ascontiguousarray(rig.t)


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
    pixels, weights = _prepare(pixels, confidence, rig, settings.min_confidence)
    V, K = weights.shape
    if prior is None:
        prior = np.full((K, 3), np.nan)
    else:
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != (K, 3):
            raise ValueError(f"triangulate_robust: prior must be (K, 3) = {(K, 3)}, got {prior.shape}")
    if V < MIN_VIEWS or K == 0 or not weights.any():
        return _missing(V, K)
    # contiguous arrays and plain float/int scalars: one compiled specialisation serves every call
    points, err, inliers = np.empty((3, K)), np.empty((V, K)), np.empty((V, K), dtype=bool)
    _robust_kernel(
        pixels, weights, *_camera_arrays(rig), np.ascontiguousarray(prior),
        float(settings.threshold_px), float(settings.huber_px), int(settings.lm_iterations),
        min(V, int(settings.seed_views)), float(settings.prior_gate_m), float(settings.prior_weight),
        points, err, inliers,
    )
    return _finish(points, err, weights, inliers, settings.threshold_px)


# ---------------------------------------------------------------- compiled per-keypoint kernel (numba)


@_jit
def _undistort_point(pixel_x, pixel_y, view, intrinsics, dist):
    """Distorted pixel of camera `view` -> normalised undistorted (x, y): OpenCV's iterative `undistortPoints`
    (no tilt terms), at most `_UNDISTORT_ITERATIONS` fixed-point steps; like OpenCV, the first guess where the
    model folds over. Helpers take the rig arrays and a view index: slicing per call costs more than the maths."""
    fx, fy, cx, cy = intrinsics[view, 0], intrinsics[view, 1], intrinsics[view, 2], intrinsics[view, 3]
    k1, k2, p1, p2, k3, k4, k5, k6 = dist[view, 0], dist[view, 1], dist[view, 2], dist[view, 3], \
        dist[view, 4], dist[view, 5], dist[view, 6], dist[view, 7]
    s1, s2, s3, s4 = dist[view, 8], dist[view, 9], dist[view, 10], dist[view, 11]
    x0 = (pixel_x - cx) / fx
    y0 = (pixel_y - cy) / fy
    x, y = x0, y0
    for _ in range(_UNDISTORT_ITERATIONS):
        r2 = x * x + y * y
        icdist = (1 + ((k6 * r2 + k5) * r2 + k4) * r2) / (1 + ((k3 * r2 + k2) * r2 + k1) * r2)
        if icdist < 0:
            return x0, y0
        delta_x = 2 * p1 * x * y + p2 * (r2 + 2 * x * x) + s1 * r2 + s2 * r2 * r2
        delta_y = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y + s3 * r2 + s4 * r2 * r2
        x_next = (x0 - delta_x) * icdist
        y_next = (y0 - delta_y) * icdist
        converged = abs(x_next - x) + abs(y_next - y) < _UNDISTORT_TOLERANCE
        x, y = x_next, y_next
        if converged:  # further steps change < 1e-6 px: OpenCV's result to well within its own residual
            break
    return x, y


@_jit
def _to_camera(X0, X1, X2, view, R, t):
    """World point (metres) -> camera `view` frame (x, y, z)."""
    return (R[view, 0, 0] * X0 + R[view, 0, 1] * X1 + R[view, 0, 2] * X2 + t[view, 0],
            R[view, 1, 0] * X0 + R[view, 1, 1] * X1 + R[view, 1, 2] * X2 + t[view, 1],
            R[view, 2, 0] * X0 + R[view, 2, 1] * X1 + R[view, 2, 2] * X2 + t[view, 2])


@_jit
def _project_point(X0, X1, X2, view, R, t, intrinsics, dist, jacobian, J):
    """World point (metres) -> distorted pixel (u, v) in camera `view` (the OpenCV model, as `Rig.project`);
    NaN at or behind the camera (depth <= 1 mm). With `jacobian`, also J[view] (2, 3): d(u, v) / d(world
    point), pixels per metre, analytic (0 at or behind the camera); J is (V, 2, 3)."""
    x, y, z = _to_camera(X0, X1, X2, view, R, t)
    if not z > _MIN_DEPTH_M:
        if jacobian:
            J[view] = 0.0
        return np.nan, np.nan
    inv_z = 1.0 / z
    x *= inv_z
    y *= inv_z
    k1, k2, p1, p2, k3 = dist[view, 0], dist[view, 1], dist[view, 2], dist[view, 3], dist[view, 4]
    k4, k5, k6 = dist[view, 5], dist[view, 6], dist[view, 7]
    s1, s2, s3, s4 = dist[view, 8], dist[view, 9], dist[view, 10], dist[view, 11]
    x2, y2, xy = x * x, y * y, x * y
    r2 = x2 + y2
    r4 = r2 * r2
    radial = 1 + k1 * r2 + k2 * r4 + k3 * r4 * r2
    d_radial = k1 + (2 * k2 + 3 * k3 * r2) * r2  # d radial / d r2
    if k4 != 0 or k5 != 0 or k6 != 0:  # rational model
        denominator = 1 + k4 * r2 + k5 * r4 + k6 * r4 * r2
        radial /= denominator
        d_radial = (d_radial - radial * (k4 + (2 * k5 + 3 * k6 * r2) * r2)) / denominator
    xd = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x2) + s1 * r2 + s2 * r4
    yd = y * radial + p1 * (r2 + 2 * y2) + 2 * p2 * xy + s3 * r2 + s4 * r4
    fx, fy = intrinsics[view, 0], intrinsics[view, 1]
    if jacobian:
        prism_x, prism_y = 2 * (s1 + 2 * s2 * r2), 2 * (s3 + 2 * s4 * r2)
        dxd_dx = radial + 2 * x2 * d_radial + 2 * p1 * y + 6 * p2 * x + x * prism_x
        dxd_dy = 2 * xy * d_radial + 2 * p1 * x + 2 * p2 * y + y * prism_x
        dyd_dx = 2 * xy * d_radial + 2 * p1 * x + 2 * p2 * y + x * prism_y
        dyd_dy = radial + 2 * y2 * d_radial + 6 * p1 * y + 2 * p2 * x + y * prism_y
        for j in range(3):
            dx = (R[view, 0, j] - x * R[view, 2, j]) * inv_z  # d(x, y) / d(world point)
            dy = (R[view, 1, j] - y * R[view, 2, j]) * inv_z
            J[view, 0, j] = fx * (dxd_dx * dx + dxd_dy * dy)
            J[view, 1, j] = fy * (dyd_dx * dx + dyd_dy * dy)
    return fx * xd + intrinsics[view, 2], fy * yd + intrinsics[view, 3]


@_jit
def _undistorted_err2(X, view, R, t, intrinsics, x, y):
    """Squared reprojection error of X (3,) in camera `view` against normalised (x, y), in undistorted pixels
    (normalised error x mean focal length); inf at or behind the camera."""
    cx, cy, z = _to_camera(X[0], X[1], X[2], view, R, t)
    if not z > _MIN_DEPTH_M:
        return np.inf
    inv_z = 1.0 / z
    dx = cx * inv_z - x
    dy = cy * inv_z - y
    return (dx * dx + dy * dy) * (intrinsics[view, 4] * intrinsics[view, 4])


@_jit
def _linear_terms(terms, view, x, y, w2, R, t):
    """Camera `view`'s two inhomogeneous DLT rows, weighted by w2, as normal-equation terms in terms[view] (9,):
    0-5 the unique entries (00, 01, 02, 11, 12, 22) of A = sum w2 a a^T, 6-8 b = sum w2 a rhs, with rows
    a = x R_3 - R_1, rhs = t_1 - x t_3 and a = y R_3 - R_2, rhs = t_2 - y t_3 (R_i rows of R). Terms add up
    over views: the system of any set of views is the sum of theirs."""
    terms[view, :] = 0.0
    for row in range(2):
        n = x if row == 0 else y
        a0 = n * R[view, 2, 0] - R[view, row, 0]
        a1 = n * R[view, 2, 1] - R[view, row, 1]
        a2 = n * R[view, 2, 2] - R[view, row, 2]
        rhs = (t[view, row] - n * t[view, 2]) * w2
        terms[view, 0] += w2 * a0 * a0
        terms[view, 1] += w2 * a0 * a1
        terms[view, 2] += w2 * a0 * a2
        terms[view, 3] += w2 * a1 * a1
        terms[view, 4] += w2 * a1 * a2
        terms[view, 5] += w2 * a2 * a2
        terms[view, 6] += a0 * rhs
        terms[view, 7] += a1 * rhs
        terms[view, 8] += a2 * rhs


@_jit
def _solve3(system, out):
    """Solve A x = b, `system` (9,) = unique entries of the symmetric A then b (as `_linear_terms`), by
    cofactors. Writes x to `out` (3,); False (out untouched) when A is singular relative to its scale."""
    a, b, c, d, e, f = system[0], system[1], system[2], system[3], system[4], system[5]
    c00, c01, c02 = d * f - e * e, c * e - b * f, b * e - c * d
    c11, c12, c22 = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * c00 + b * c01 + c * c02
    scale = (abs(a) + abs(d) + abs(f)) / 3.0
    if not abs(det) > 1e-12 * scale * scale * scale:
        return False
    r0, r1, r2 = system[6], system[7], system[8]
    inv_det = 1.0 / det
    out[0] = (c00 * r0 + c01 * r1 + c02 * r2) * inv_det
    out[1] = (c01 * r0 + c11 * r1 + c12 * r2) * inv_det
    out[2] = (c02 * r0 + c12 * r1 + c22 * r2) * inv_det
    return True


@_jit
def _reprojection(X, pixels, k, seen, R, t, intrinsics, dist, jacobian, uv, norm, J):
    """Distorted reprojection of X (3,) into every view: uv (V, 2) pixels and the error norm (V,) against
    keypoint k of pixels (V, K, 2), inf where not `seen` or not projectable; with `jacobian`, J (V, 2, 3)
    of the seen views too (`_project_point`)."""
    for v in range(len(seen)):
        u, w = _project_point(X[0], X[1], X[2], v, R, t, intrinsics, dist, jacobian and seen[v], J)
        uv[v, 0], uv[v, 1] = u, w
        du, dv = u - pixels[v, k, 0], w - pixels[v, k, 1]
        n = np.sqrt(du * du + dv * dv)
        norm[v] = n if seen[v] and np.isfinite(n) else np.inf


@_jit
def _huber_cost(norm, mask, huber):
    """sum over views with mask > 0 of mask x Huber(norm)."""
    cost = 0.0
    for v in range(len(mask)):
        if mask[v] > 0:
            n = norm[v]
            cost += mask[v] * (0.5 * n * n if n <= huber else huber * (n - 0.5 * huber))
    return cost


@_jit
def _gauss_newton_system(uv, norm, J, mask, huber, pixels, k, system):
    """IRLS normal equations into `system` (9,) (A = J^T W J unique entries, b = -J^T W r): W = mask x Huber
    weight per view. uv (V, 2), norm (V,), J (V, 2, 3): the reprojection and its Jacobian at the current
    point (`_reprojection`); pixels (V, K, 2), k the keypoint."""
    system[:] = 0.0
    for v in range(len(mask)):
        if not mask[v] > 0:
            continue
        robust = mask[v] * huber / max(norm[v], huber)
        for row in range(2):
            j0, j1, j2 = J[v, row, 0], J[v, row, 1], J[v, row, 2]
            resid = uv[v, row] - pixels[v, k, row]
            system[0] += robust * j0 * j0
            system[1] += robust * j0 * j1
            system[2] += robust * j0 * j2
            system[3] += robust * j1 * j1
            system[4] += robust * j1 * j2
            system[5] += robust * j2 * j2
            system[6] -= robust * j0 * resid
            system[7] -= robust * j1 * resid
            system[8] -= robust * j2 * resid


@_jit
def _robust_kernel(pixels, weights, intrinsics, dist, R, t, prior, threshold_px, huber_px, lm_iterations,
                   seed_count, prior_gate_m, prior_weight, points, err, inliers):
    """Steps 1-6 of the module docstring for every keypoint; see `triangulate_robust` for the inputs.

    weights (V, K): 0 where not observed; set to 0 in place where a pixel cannot be undistorted.
    Fills (passed in, as in `_contract`) points (3, K) (NaN where fewer than 2 inliers or singular), err (V, K)
    distorted-pixel error of every observed view at the refined point (inf where not observed or not
    projectable), inliers (V, K).
    """
    V, K = weights.shape
    tau2 = threshold_px * threshold_px
    points[:] = np.nan
    err[:] = np.inf
    inliers[:] = False
    nx, ny, w = np.empty(V), np.empty(V), np.empty(V)
    seen = np.empty(V, dtype=np.bool_)
    ranked = np.empty(V, dtype=np.int64)
    system, candidate, best, X, X_new = np.empty(9), np.empty(3), np.empty(3), np.empty(3), np.empty(3)
    uv, norm, norm_new, mask = np.empty((V, 2)), np.empty(V), np.empty(V), np.empty(V)
    J, damped = np.empty((V, 2, 3)), np.empty(9)
    terms = np.empty((V, 9))
    for k in range(K):
        # 1. undistort; rank the observing views by confidence (stable: ties keep the view order)
        n_seen = 0
        for v in range(V):
            nx[v] = 0.0
            ny[v] = 0.0
            if weights[v, k] > 0:
                nx[v], ny[v] = _undistort_point(pixels[v, k, 0], pixels[v, k, 1], v, intrinsics, dist)
                if not (np.isfinite(nx[v]) and np.isfinite(ny[v])):
                    weights[v, k] = 0.0
            w[v] = weights[v, k]
            seen[v] = w[v] > 0
            if seen[v]:
                _linear_terms(terms, v, nx[v], ny[v], w[v] * w[v], R, t)
                slot = n_seen
                while slot > 0 and w[ranked[slot - 1]] < w[v]:
                    ranked[slot] = ranked[slot - 1]
                    slot -= 1
                ranked[slot] = v
                n_seen += 1
        # 2.-3. candidates from the pairs of the seed views, robust score over all observing views
        best_cost = np.inf
        for i in range(min(n_seen, seed_count)):
            for j in range(i + 1, min(n_seen, seed_count)):
                first, second = ranked[i], ranked[j]
                for i_term in range(9):
                    system[i_term] = terms[first, i_term] + terms[second, i_term]
                if not _solve3(system, candidate):
                    continue
                # a candidate must lie in front of, and agree with, both of its own seed views
                err2_first = _undistorted_err2(candidate, first, R, t, intrinsics, nx[first], ny[first])
                err2_second = _undistorted_err2(candidate, second, R, t, intrinsics, nx[second], ny[second])
                if not (err2_first < tau2 and err2_second < tau2):
                    continue
                cost = w[first] * err2_first + w[second] * err2_second
                for v in range(V):
                    if seen[v] and v != first and v != second:
                        cost += w[v] * min(_undistorted_err2(candidate, v, R, t, intrinsics, nx[v], ny[v]), tau2)
                        if cost >= best_cost:  # the cost only grows: this candidate cannot win
                            break
                dist2 = ((candidate[0] - prior[k, 0]) ** 2 + (candidate[1] - prior[k, 1]) ** 2
                         + (candidate[2] - prior[k, 2]) ** 2) / (prior_gate_m * prior_gate_m)
                if np.isfinite(dist2):
                    cost += prior_weight * tau2 * min(dist2, 1.0)
                if cost < best_cost:
                    best_cost = cost
                    best[:] = candidate
        if not np.isfinite(best_cost):
            continue
        # 4. inliers of the best candidate; 5. reseed from all of them
        system[:] = 0.0
        n_inliers = 0
        for v in range(V):
            if seen[v] and _undistorted_err2(best, v, R, t, intrinsics, nx[v], ny[v]) < tau2:
                for i_term in range(9):
                    system[i_term] += terms[v, i_term]
                n_inliers += 1
                inliers[v, k] = True
        if n_inliers < MIN_VIEWS or not _solve3(system, X):
            inliers[:, k] = False
            continue
        # 6. gate in distorted pixels, Levenberg-Marquardt with confidence x Huber weights (IRLS)
        _reprojection(X, pixels, k, seen, R, t, intrinsics, dist, lm_iterations > 0, uv, norm, J)
        for v in range(V):
            inliers[v, k] &= norm[v] < threshold_px
            mask[v] = w[v] if inliers[v, k] else 0.0
        cost = _huber_cost(norm, mask, huber_px)
        damping = 1e-3
        if lm_iterations > 0:
            _gauss_newton_system(uv, norm, J, mask, huber_px, pixels, k, system)
        for iteration in range(lm_iterations):
            last = iteration == lm_iterations - 1  # the last step is only checked (no Jacobian)
            damped[:] = system
            damped[0] *= 1.0 + damping
            damped[3] *= 1.0 + damping
            damped[5] *= 1.0 + damping
            X_new[:] = X
            if _solve3(damped, candidate):
                X_new += candidate
            _reprojection(X_new, pixels, k, seen, R, t, intrinsics, dist, not last, uv, norm_new, J)
            cost_new = _huber_cost(norm_new, mask, huber_px)
            better = cost_new < cost
            if better:
                X[:] = X_new
                norm[:] = norm_new
                cost = cost_new
            if not last:
                if better:
                    _gauss_newton_system(uv, norm, J, mask, huber_px, pixels, k, system)
                damping = damping * 0.1 if better else damping * 10.0
        points[:, k] = X
        err[:, k] = norm


def _finish(points, err, weights, inliers, threshold_px: float) -> Triangulation:
    """Apply the contract. points (3, K); err, inliers, weights (V, K), observed where weights > 0."""
    V, K = weights.shape
    out = (np.empty((K, 3)), np.empty(K, dtype=np.uint8), np.empty((K, V), dtype=bool), np.empty((K, V)), np.empty(K))
    mean = _contract(points, err, weights, inliers, float(threshold_px), *out)
    return Triangulation(*out, mean_reproj_px=float(mean))


@_jit
def _contract(points, err, weights, inliers, threshold_px, out_points, n_views, out_inliers, reproj, confidence):
    """`_finish` per keypoint (compiled): inliers re-gated at threshold_px; fewer than 2 or a non-finite point
    -> missing. Fills the `Triangulation` arrays out_* (K-major; passed in: arrays returned from compiled code
    cost a few microseconds each to box) and returns the mean inlier error (NaN when there is none)."""
    V, K = weights.shape
    out_points[:] = np.nan
    n_views[:] = 0
    out_inliers[:] = False
    reproj[:] = np.nan
    confidence[:] = 0.0
    err_sum, err_count = 0.0, 0
    for k in range(K):
        n = 0
        for v in range(V):
            n += inliers[v, k] and weights[v, k] > 0 and err[v, k] < threshold_px
        if n < MIN_VIEWS or not (np.isfinite(points[0, k]) and np.isfinite(points[1, k])
                                 and np.isfinite(points[2, k])):
            n_views[k] = min(n, MIN_VIEWS - 1)
            continue
        n_views[k] = n
        out_points[k, 0], out_points[k, 1], out_points[k, 2] = points[0, k], points[1, k], points[2, k]
        weight_sum = 0.0
        for v in range(V):
            if weights[v, k] > 0 and np.isfinite(err[v, k]):
                reproj[k, v] = err[v, k]
            if inliers[v, k] and weights[v, k] > 0 and err[v, k] < threshold_px:
                out_inliers[k, v] = True
                weight_sum += weights[v, k]
                err_sum += err[v, k]
                err_count += 1
        confidence[k] = weight_sum / n
    return err_sum / err_count if err_count else np.nan


# ---------------------------------------------------------------- plain DLT baseline


def triangulate_dlt(
    pixels: np.ndarray, confidence: np.ndarray | None, rig: Rig, *, min_confidence: float = 0.0
) -> Triangulation:
    """Plain confidence-weighted homogeneous DLT (SVD) from every observing view; no outlier handling.

    Same inputs and output as `triangulate_robust`; every observing view counts as an inlier.
    """
    pixels, weights = _prepare(pixels, confidence, rig, min_confidence)
    observed = weights > 0
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
    return _finish(points, _reproj_error(rig, points.T, pixels), weights, inliers, np.inf)
