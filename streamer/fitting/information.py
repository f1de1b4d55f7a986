"""How well the cameras pin down each triangulated point: its 3x3 information matrix, pixels^2 per m^2.

A point triangulated from inlier views v moves its reprojection in view v by J_v dX (J_v: the (2, 3)
pinhole Jacobian of the pixel with respect to the world point, focal f_v, camera depth z_v), so a
model point off the triangulated one by r costs, to first order, r^T Lambda r squared pixels over
the inlier views, with Lambda = sum_v J_v^T J_v. Along the image plane of a view Lambda grows as
(f / z)^2; along a ray seen by a single view (two near-parallel views: depth) it is small. A data term
weighted by Lambda puts the model's unavoidable error where the cameras cannot see it.
"""
from __future__ import annotations

import numpy as np

from streamer.calibration import Rig

__all__ = ["point_information"]


def point_information(points: np.ndarray, inliers: np.ndarray, rig: Rig) -> np.ndarray:
    """Information matrix of each triangulated point from its inlier views' pinhole Jacobians.

    points: (K, 3) metres, world frame, NaN where missing; inliers: (K, V) bool, the views each point
    was triangulated from (V follows `rig.names`); rig: posed cameras (distortion ignored: a local
    scale change of a few percent). Returns (K, 3, 3) float64 symmetric PSD, pixels^2 / m^2; zero
    where the point is missing or a view sees it at depth <= 1 mm."""
    points = np.asarray(points, np.float64)
    inliers = np.asarray(inliers, bool)
    k = len(points)
    if points.shape != (k, 3) or inliers.shape != (k, len(rig)):
        raise ValueError(f"point_information: expected points (K, 3) and inliers (K, {len(rig)}); "
                         f"got {points.shape}, {inliers.shape}")
    finite = np.isfinite(points).all(1)
    cam = np.matmul(np.where(finite[:, None], points, 0.0), rig.R.transpose(0, 2, 1)) + rig.t[:, None]  # (V, K, 3)
    z = cam[..., 2]
    seen = inliers.T & finite[None] & (z > 1e-3)  # (V, K)
    inv_z = np.where(seen, 1.0 / np.where(seen, z, 1.0), 0.0)  # 0 where unseen: no rows
    # rows of the world Jacobian of (u, v): f / z * (R_row - (x or y) / z * R_row_z), R world -> camera
    jac = np.empty(z.shape + (2, 3))  # (V, K, 2, 3)
    for axis, focal in ((0, rig.K[:, 0, 0]), (1, rig.K[:, 1, 1])):
        ratio = cam[..., axis] * inv_z
        scale = (focal[:, None] * inv_z)[..., None]
        jac[..., axis, :] = scale * (rig.R[:, None, axis] - ratio[..., None] * rig.R[:, None, 2])
    rows = jac.transpose(1, 0, 2, 3).reshape(len(points), -1, 3)  # (K, 2V, 3)
    return np.matmul(rows.transpose(0, 2, 1), rows)
