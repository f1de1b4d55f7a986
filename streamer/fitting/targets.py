"""Fit targets from a `points3d` frame: validity masks and per-point weights (ARCHITECTURE.md §4.1, §4.2).

Every array is masked by finiteness and validity here, before any math: downstream code
sees finite targets (invalid rows zeroed) and weights that are exactly 0 where a point
must not count. A frame is usable only with at least `min_valid` points and a weight sum
that is not (near) zero.

With a per-point information matrix (`streamer.fitting.information.point_information`, pixels^2
per m^2), each point also gets a metric: the distance of a model point from a target is
sqrt(r^T metric r) instead of |r|, so the fit trades error along a point's poorly observed
directions (a two-view point's depth) for error in the cameras' image planes. The metric is the
information divided by one scale per frame (the weighted median of each point's mean eigenvalue),
so a typical point's metric has mean eigenvalue 1, like the Euclidean one: distances stay in
metres on average over directions and the Huber threshold and prior weights keep their meaning.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FitTargets", "TargetSettings", "fit_targets"]


@dataclass(frozen=True)
class TargetSettings:
    """min_valid: fewest valid points for a usable frame; min_weight_sum: below it the frame is unusable;
    full_views: a point seen by this many inlier views gets full view weight (fewer scale it down).
    min_metric_eigenvalue: floor of the metric's eigenvalues (a direction no view constrains still
    costs this much, so the normal equations stay well posed)."""

    min_valid: int = 6
    min_weight_sum: float = 1e-6
    full_views: int = 3
    min_metric_eigenvalue: float = 0.02

    def __post_init__(self) -> None:
        if self.min_valid < 1 or self.full_views < 2 or not self.min_weight_sum > 0 or \
                not 0 < self.min_metric_eigenvalue <= 1:
            raise ValueError("TargetSettings: need min_valid >= 1, full_views >= 2, min_weight_sum > 0, "
                             f"0 < min_metric_eigenvalue <= 1; got {self}")


@dataclass(frozen=True)
class FitTargets:
    """points: (K, 3) float64, metres, world; zero where invalid (never NaN).
    weights: (K,) float64 >= 0; exactly 0 where invalid. valid: (K,) bool.
    usable: enough valid points and weight. reason: why not usable ("" when usable).
    metric: (K, 3, 3) float64 symmetric positive definite, dimensionless (module docstring);
    identity where invalid; None: the Euclidean distance for every point."""

    points: np.ndarray
    weights: np.ndarray
    valid: np.ndarray
    usable: bool
    reason: str
    metric: np.ndarray | None = None

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


def fit_targets(
    points: np.ndarray,
    *,
    n_views: np.ndarray | None = None,
    inliers: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    defined: np.ndarray | None = None,
    information: np.ndarray | None = None,
    settings: TargetSettings = TargetSettings(),
) -> FitTargets:
    """Masks and weights for one frame.

    points: (K, 3) metres, world frame; NaN where missing.
    n_views: (K,) inlier views per point (< 2 means missing); inliers: (K, V) bool (used for
    the view weight when n_views is absent); confidence: (K,) in [0, 1]; defined: (K,) bool,
    the points the body model defines. Weight = confidence * min(views, full_views) / full_views.
    information: (K, 3, 3) pixels^2 / m^2 (`point_information`), optional: gives the targets a
    metric (module docstring); a point whose information is not finite or has no positive
    eigenvalue is invalid.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points: expected shape (K, 3), got {points.shape}")
    k = len(points)
    valid = np.isfinite(points).all(axis=1)
    views = None
    if n_views is not None:
        views = _check(n_views, (k,), "n_views").astype(np.float64)
    elif inliers is not None:
        inl = np.asarray(inliers)
        if inl.ndim != 2 or inl.shape[0] != k:
            raise ValueError(f"inliers: expected shape ({k}, V), got {inl.shape}")
        views = inl.astype(bool).sum(axis=1).astype(np.float64)
    weights = np.ones(k)
    if views is not None:
        valid &= views >= 2
        weights = np.minimum(views, settings.full_views) / settings.full_views
    if confidence is not None:
        conf = _check(confidence, (k,), "confidence").astype(np.float64)
        finite_conf = np.isfinite(conf) & (conf > 0)
        valid &= finite_conf
        weights = weights * np.where(finite_conf, np.minimum(conf, 1.0), 0.0)
    if defined is not None:
        valid &= _check(defined, (k,), "defined").astype(bool)
    metric = None
    if information is not None:
        metric, ok = _metric(_check(information, (k, 3, 3), "information").astype(np.float64), valid, weights,
                             settings.min_metric_eigenvalue)
        valid &= ok
    weights = np.where(valid, weights, 0.0)
    clean = np.where(valid[:, None], points, 0.0)
    n_valid = int(valid.sum())
    if n_valid < settings.min_valid:
        reason = f"{n_valid} valid points < {settings.min_valid}"
    elif weights.sum() < settings.min_weight_sum:
        reason = f"weight sum {weights.sum():.3g} < {settings.min_weight_sum:g}"
    else:
        reason = ""
    return FitTargets(clean, weights, valid, reason == "", reason, metric)


def _metric(information: np.ndarray, valid: np.ndarray, weights: np.ndarray, floor: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """(metric (K, 3, 3), ok (K,)): information over the frame's scale, eigenvalues floored at `floor`.

    ok: finite information whose largest eigenvalue lies in (1e-100, 1e100] (anything else is not a
    measurement: no camera gives 1e100 px^2 per m^2), so every step below stays finite."""
    finite = np.isfinite(information).all(axis=(1, 2)) & (np.abs(information).max(axis=(1, 2), initial=0) <= 1e100)
    sym = np.where(finite[:, None, None], 0.5 * (information + np.swapaxes(information, 1, 2)), np.eye(3))
    eigval, eigvec = np.linalg.eigh(sym)
    ok = finite & (eigval[:, -1] > 1e-100)
    use = valid & ok
    identity = np.broadcast_to(np.eye(3), information.shape).copy()
    if not use.any():
        return identity, ok
    mean_eig = np.maximum(eigval[use], 0.0).mean(axis=1)
    order = np.argsort(mean_eig)
    cum = np.cumsum(weights[use][order])
    scale = mean_eig[order][np.searchsorted(cum, 0.5 * cum[-1])]  # weighted median
    scaled = np.maximum(eigval / scale, floor)
    metric = np.matmul(eigvec * scaled[:, None, :], eigvec.transpose(0, 2, 1))
    metric = 0.5 * (metric + np.swapaxes(metric, 1, 2))
    return np.where(use[:, None, None], metric, identity), ok


def _check(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    return array
