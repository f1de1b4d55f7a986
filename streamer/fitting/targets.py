"""Fit targets from a `points3d` frame: validity masks and per-point weights (ARCHITECTURE.md §4.1, §4.2).

Every array is masked by finiteness and validity here, before any math: downstream code
sees finite targets (invalid rows zeroed) and weights that are exactly 0 where a point
must not count. A frame is usable only with at least `min_valid` points and a weight sum
that is not (near) zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FitTargets", "TargetSettings", "fit_targets"]


@dataclass(frozen=True)
class TargetSettings:
    """min_valid: fewest valid points for a usable frame; min_weight_sum: below it the frame is unusable;
    full_views: a point seen by this many inlier views gets full view weight (fewer scale it down)."""

    min_valid: int = 6
    min_weight_sum: float = 1e-6
    full_views: int = 3

    def __post_init__(self) -> None:
        if self.min_valid < 1 or self.full_views < 2 or not self.min_weight_sum > 0:
            raise ValueError(f"TargetSettings: need min_valid >= 1, full_views >= 2, min_weight_sum > 0; got {self}")


@dataclass(frozen=True)
class FitTargets:
    """points: (K, 3) float64, metres, world; zero where invalid (never NaN).
    weights: (K,) float64 >= 0; exactly 0 where invalid. valid: (K,) bool.
    usable: enough valid points and weight. reason: why not usable ("" when usable)."""

    points: np.ndarray
    weights: np.ndarray
    valid: np.ndarray
    usable: bool
    reason: str

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
    settings: TargetSettings = TargetSettings(),
) -> FitTargets:
    """Masks and weights for one frame.

    points: (K, 3) metres, world frame; NaN where missing.
    n_views: (K,) inlier views per point (< 2 means missing); inliers: (K, V) bool (used for
    the view weight when n_views is absent); confidence: (K,) in [0, 1]; defined: (K,) bool,
    the points the body model defines. Weight = confidence * min(views, full_views) / full_views.
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
    weights = np.where(valid, weights, 0.0)
    clean = np.where(valid[:, None], points, 0.0)
    n_valid = int(valid.sum())
    if n_valid < settings.min_valid:
        reason = f"{n_valid} valid points < {settings.min_valid}"
    elif weights.sum() < settings.min_weight_sum:
        reason = f"weight sum {weights.sum():.3g} < {settings.min_weight_sum:g}"
    else:
        reason = ""
    return FitTargets(clean, weights, valid, reason == "", reason)


def _check(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    return array
