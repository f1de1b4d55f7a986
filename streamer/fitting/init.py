"""Where a frame's fit starts: estimator parameters, the previous frame, or the canonical pose aligned to the points.

The global rotation and translation of a start are set by a rigid (Kabsch-Umeyama) alignment
of the model's keypoints to the valid target points (ARCHITECTURE.md §4.1: valid points only).
A model whose "global_rot" is not an axis-angle acting on its output frame (MHR: XYZ Euler in
MHR's axes) provides `turn_global_rot(global_rot (3,), rotation (3, 3)) -> (3,)`, used to turn it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamer.body.model import BodyModel
from streamer.fitting.align import Alignment, align_points
from streamer.fitting.targets import FitTargets

__all__ = ["Start", "align_params", "choose_start", "model_keypoints"]


@dataclass(frozen=True)
class Start:
    """params: (P,) float64 start; source: "estimator", "previous" or "canonical"; cold: a fresh
    initialisation (the solver may use more iterations); rms_m: aligned RMS point error of the start;
    candidate: index of the estimator candidate chosen (-1 for other sources)."""

    params: np.ndarray
    source: str
    cold: bool
    rms_m: float
    candidate: int = -1


def model_keypoints(model: BodyModel, params: np.ndarray) -> np.ndarray:
    """(B, P) or (P,) -> (B, K, 3) or (K, 3) float64 keypoints, metres, model world frame. One row goes
    through the model's NumPy single-row evaluation when it has one (`keypoints_row`: no torch conversions)."""
    params = np.asarray(params, np.float64)
    if params.ndim == 1 and hasattr(model, "keypoints_row"):
        return model.keypoints_row(params)
    with torch.no_grad():
        x = torch.as_tensor(np.atleast_2d(params), device=model.device).to(model.dtype)
        kp = model.keypoints(x).to(torch.float64).cpu().numpy()
    return kp if params.ndim == 2 else kp[0]


def _rotvec_to_rotmat(rotvec: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(rotvec))
    if theta < 1e-12:
        return np.eye(3)
    k = rotvec / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def _rotmat_to_rotvec(rot: np.ndarray) -> np.ndarray:
    cos = np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0)
    theta = float(np.arccos(cos))
    if theta < 1e-9:
        return np.zeros(3)
    if np.pi - theta < 1e-6:  # near pi: axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(rot) + 1) / 2, 0, None))
        i = int(np.argmax(axis))
        axis = (rot[:, i] + np.eye(3)[i]) / (2 * axis[i])
        return theta * axis / np.linalg.norm(axis)
    w = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    return theta * w / (2 * np.sin(theta))


def _turned_global_rot(model: BodyModel, global_rot: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    turn = getattr(model, "turn_global_rot", None)
    if turn is not None:
        return np.asarray(turn(global_rot, rotation), np.float64)
    return _rotmat_to_rotvec(rotation @ _rotvec_to_rotmat(global_rot))  # axis-angle in the output frame (Anny)


def align_params(model: BodyModel, params: np.ndarray, alignment: Alignment) -> np.ndarray:
    """(P,) params with the rigid `alignment` applied to the whole body (global rotation and translation).

    The rotation composes onto "global_rot"; "transl" is then solved exactly (the model's
    translation is a pure offset) so the aligned centroid lands where the alignment puts it."""
    g = model.groups
    params = np.asarray(params, np.float64).copy()
    before = model_keypoints(model, params)
    params[g["global_rot"]] = _turned_global_rot(model, params[g["global_rot"]], alignment.rotation)
    rotated = model_keypoints(model, params)
    want = before @ alignment.rotation.T + alignment.translation
    ok = np.isfinite(want).all(1) & np.isfinite(rotated).all(1)
    params[g["transl"]] += (want[ok] - rotated[ok]).mean(0)
    return params


def _aligned(model: BodyModel, params: np.ndarray, targets: FitTargets) -> tuple[np.ndarray, float] | None:
    kp = model_keypoints(model, params)
    alignment = align_points(kp, targets.points, np.where(targets.valid, targets.weights, 0.0))
    if alignment is None:
        return None
    return align_params(model, params, alignment), alignment.rms_m


def choose_start(
    model: BodyModel,
    targets: FitTargets,
    *,
    previous: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    reference: np.ndarray | None = None,
) -> Start:
    """The start of a frame's fit.

    candidates: (C, P) estimator parameter vectors (e.g. one per view), already in this model's
    layout; the one whose rigidly aligned keypoints fit the targets best wins. Else `previous`
    (P,) (a warm start, used as is). Else `reference` (P,) or the model's default pose, aligned
    to the valid points. Targets must be usable."""
    if candidates is not None and len(candidates):
        best: tuple[np.ndarray, float, int] | None = None
        for index, cand in enumerate(np.asarray(candidates, np.float64)):
            if not np.isfinite(cand).all():
                continue
            got = _aligned(model, cand, targets)
            if got is not None and (best is None or got[1] < best[1]):
                best = (*got, index)
        if best is not None:
            return Start(best[0], "estimator", True, best[1], best[2])
    if previous is not None:
        return Start(np.asarray(previous, np.float64), "previous", False, np.nan)
    canonical = (np.asarray(reference, np.float64) if reference is not None
                 else model.default_params(1)[0].to(torch.float64).cpu().numpy())
    got = _aligned(model, canonical, targets)
    if got is None:  # collinear points: centre the canonical pose on them, keep its heading
        kp = model_keypoints(model, canonical)
        ok = targets.valid & np.isfinite(kp).all(1)
        canonical = canonical.copy()
        canonical[model.groups["transl"]] += (targets.points[ok] - kp[ok]).mean(0)
        return Start(canonical, "canonical", True, np.nan)
    return Start(got[0], "canonical", True, got[1])
