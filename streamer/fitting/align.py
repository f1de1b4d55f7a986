"""Weighted rigid / similarity alignment of two point sets (Kabsch-Umeyama), valid points only.

Umeyama, "Least-squares estimation of transformation parameters between two point
patterns", TPAMI 1991. Points with zero weight (or non-finite coordinates) never enter
the means or the SVD (ARCHITECTURE.md §4.1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Alignment", "align_points"]


@dataclass(frozen=True)
class Alignment:
    """target ≈ scale * rotation @ source + translation.

    rotation: (3, 3) proper rotation; translation: (3,) metres; scale: 1.0 unless similarity;
    rms_m: weighted RMS residual after alignment, metres."""

    rotation: np.ndarray
    translation: np.ndarray
    scale: float
    rms_m: float

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3)."""
        return self.scale * points @ self.rotation.T + self.translation


def align_points(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray, *, similarity: bool = False
) -> Alignment | None:
    """Best transform taking `source` (N, 3) onto `target` (N, 3) under `weights` (N,) >= 0.

    Rows where either point is non-finite or the weight is not positive are ignored.
    Returns None when fewer than 3 usable points remain or they are (near) collinear."""
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    weights = np.asarray(weights, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3 or weights.shape != source.shape[:1]:
        raise ValueError(f"align_points: expected source, target (N, 3) and weights (N,); got "
                         f"{source.shape}, {target.shape}, {weights.shape}")
    use = np.isfinite(source).all(1) & np.isfinite(target).all(1) & np.isfinite(weights) & (weights > 0)
    if use.sum() < 3:
        return None
    src, dst, w = source[use], target[use], weights[use] / weights[use].sum()
    mu_src, mu_dst = w @ src, w @ dst
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = (dst_c * w[:, None]).T @ src_c  # (3, 3) target-source cross covariance
    u, sigma, vt = np.linalg.svd(cov)
    if sigma[1] < 1e-9 * max(sigma[0], 1e-30):  # collinear: rotation about the line is unknown
        return None
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0
    rotation = (u * d) @ vt
    scale = 1.0
    if similarity:
        var_src = float(w @ (src_c**2).sum(1))
        scale = float((sigma * d).sum() / var_src) if var_src > 0 else 1.0
    translation = mu_dst - scale * rotation @ mu_src
    resid = dst - (scale * src @ rotation.T + translation)
    rms = float(np.sqrt(w @ (resid**2).sum(1)))
    return Alignment(rotation, translation, scale, rms)
