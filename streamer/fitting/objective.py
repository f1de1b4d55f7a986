"""The fit objective, its settings, and the verdict, evaluated at given parameters.

loss(x) = data_loss(x) + prior_loss(x), with
  data_loss = sum_k w_k huber(|kp_k(x) - y_k|_k) / sum_k w_k        (metres^2, Huber threshold `huber_m`)
  |r|_k = sqrt(r^T M_k r) with the targets' metric M_k (`FitTargets.metric`; Euclidean when None)
  prior_loss = 1/2 accel_keypoint_prior * sum_k w_k |kp_k(x) - kp_k(pred)|_k^2 / sum_k w_k
             + 1/2 sum_i over free dims of
      accel_prior    * (x_i - pred_i)^2   (pred: the constant-velocity prediction for this frame)
    + velocity_prior * (x_i - prev_i)^2
    + pose_prior     * (x_i - ref_i)^2   (pose dims: toward the reference, the rest pose)
    + shape_prior    * (x_i - ref_i)^2   (shape dims: toward the reference shape)
Rotations are in radians and translations in metres; the prior weights share one scale
(0.01 rad at 1 m ~ 1 cm).

The acceleration prior mostly acts on the keypoints (`accel_keypoint_prior`): the prediction's keypoints
are soft targets over the same points, weights and metric as the data, so in every direction of the
parameters the fit blends data and prediction in the same ratio. A prior on the parameters alone
(`accel_prior`) weighs a direction by its radians, not by how much it moves the points: along a direction
the keypoints barely see, it outweighs the data by orders of magnitude and errors there never decay. The
pelvis is one: pitching it while the lumbar spine and both thighs turn back moves only the two hip
keypoints, by ~3 cm per radian. With `accel_prior` 1e-3 alone, synthetic fits held the pelvis 0.3-1.1 rad
off for seconds and the hips 8-17 mm off even from exact targets (every other body point within 2-6 mm).
A small `accel_prior` stays, to keep directions no keypoint sees well posed.

`evaluate` is the one place losses and verdicts are computed, so what a result reports is exactly what its
parameters score (ARCHITECTURE.md §4.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protocol.messages import Verdict
from streamer.body.model import BodyModel
from streamer.fitting.init import model_keypoints
from streamer.fitting.targets import FitTargets

__all__ = [
    "FitEvaluation", "FitSettings", "Prior", "PriorTerms", "evaluate", "huber", "keypoint_prior_loss",
    "metric_distance", "prior_terms",
]


@dataclass(frozen=True)
class FitSettings:
    """Solver and verdict settings. Distances in metres; prior weights per rad^2 (or m^2).

    max_iterations / max_iterations_cold: Levenberg-Marquardt iterations (Jacobian
    evaluations) for a warm-started / a freshly initialised frame. rel_tolerance: stop when an
    accepted step lowers the loss by less than this fraction. jacobian: "analytic" (the model's
    `keypoints_and_jacobian`), "jacfwd" (forward-mode autodiff), "difference" (one batched forward
    pass of finite differences) or "auto" (the fastest available, timed once per model). broyden: in
    a warm-started frame, compute the Jacobian once and update it by secant (Broyden) steps (cold
    frames recompute it). Verdict: "good" when the weighted RMS error of the points within outlier_m is <= good_rms_m and their weighted
    fraction >= min_inlier_fraction; otherwise "poor". accel_keypoint_prior: weight of the prediction's keypoints
    relative to the data (module docstring; 0.15 with accel_prior 3e-4 replaced accel_prior 1e-3 alone: Pose2Sim
    balancing trial in-sample 1.488x -> 1.495x, jitter 2.39x -> 2.46x, held out 0.974x -> 0.977x).
    """

    huber_m: float = 0.03
    accel_prior: float = 3e-4
    accel_keypoint_prior: float = 0.15
    velocity_prior: float = 0.0
    pose_prior: float = 1e-6
    shape_prior: float = 1e-4
    max_iterations: int = 1
    max_iterations_cold: int = 60
    rel_tolerance: float = 1e-3
    lm_damping: float = 1e-3
    jacobian: str = "auto"
    broyden: bool = True
    good_rms_m: float = 0.04
    outlier_m: float = 0.10
    min_inlier_fraction: float = 0.75

    def __post_init__(self) -> None:
        if self.jacobian not in ("auto", "analytic", "jacfwd", "difference"):
            raise ValueError("FitSettings.jacobian: expected 'auto', 'analytic', 'jacfwd' or 'difference', "
                             f"got {self.jacobian!r}")
        if not (self.huber_m > 0 and self.max_iterations >= 1 and self.max_iterations_cold >= 1):
            raise ValueError(f"FitSettings: need huber_m > 0 and iterations >= 1; got {self}")
        if min(self.accel_prior, self.accel_keypoint_prior, self.velocity_prior, self.pose_prior,
           self.shape_prior) < 0:
            raise ValueError(f"FitSettings: prior weights must be >= 0; got {self}")


@dataclass(frozen=True)
class Prior:
    """What a frame's fit is pulled toward; all (P,) parameter vectors, None where absent.

    prediction: the constant-velocity prediction of this frame's parameters (acceleration prior).
    prediction_keypoints: (K, 3) metres, world, the model's keypoints at `prediction` (the keypoint
    acceleration prior; NaN rows and None: no such term).
    previous: the parameters shipped at t-1, same subject (velocity prior).
    reference: rest pose with the subject's shape (pose and shape priors pull toward it)."""

    prediction: np.ndarray | None = None
    previous: np.ndarray | None = None
    reference: np.ndarray | None = None
    prediction_keypoints: np.ndarray | None = None


@dataclass(frozen=True)
class PriorTerms:
    """The prior as a diagonal quadratic over the free dims: 1/2 sum_i sum_t weight_t,i (x_i - anchor_t,i)^2.

    weights, anchors: (T, n_free) float64."""

    weights: np.ndarray
    anchors: np.ndarray

    def value(self, x_free: np.ndarray) -> float:
        return float(0.5 * (self.weights * (x_free[None] - self.anchors) ** 2).sum())

    def gradient_and_diagonal(self, x_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (self.weights * (x_free[None] - self.anchors)).sum(0), self.weights.sum(0)


@dataclass(frozen=True)
class FitEvaluation:
    """Everything reported about a fit, computed at one parameter vector.

    loss, data_loss: as in the module docstring (NaN when unusable). rms_m: weighted RMS
    error of the inlier points (within outlier_m); inlier_fraction: their weighted fraction; errors_m: (K,) per-point
    Euclidean distance (also with a metric: the verdict is about metres), NaN where not valid; keypoints: (K, 3)
    float64 model points (NaN where undefined)."""

    loss: float
    data_loss: float
    rms_m: float
    inlier_fraction: float
    n_valid: int
    verdict: str
    errors_m: np.ndarray
    keypoints: np.ndarray


def huber(distance: torch.Tensor | np.ndarray, threshold: float) -> torch.Tensor | np.ndarray:
    """Huber penalty of non-negative distances: d^2/2 inside the threshold, linear outside (torch or NumPy)."""
    where = torch.where if isinstance(distance, torch.Tensor) else np.where
    return where(distance <= threshold, 0.5 * distance**2, threshold * (distance - 0.5 * threshold))


def keypoint_prior_loss(keypoints: np.ndarray, prediction_keypoints: np.ndarray | None, weights: np.ndarray,
                        metric: np.ndarray | None, weight: float) -> float:
    """1/2 weight * sum_r weights_r |keypoints_r - prediction_keypoints_r|_r^2 over rows (R, 3) (weights (R,) as
    the data term's, normalised; metric (R, 3, 3) or None); 0 without prediction keypoints, NaN rows count 0."""
    if prediction_keypoints is None or weight <= 0:
        return 0.0
    resid = np.nan_to_num(keypoints - prediction_keypoints)
    return float(0.5 * weight * (weights @ metric_distance(resid, metric) ** 2))


def metric_distance(residual: np.ndarray, metric: np.ndarray | None) -> np.ndarray:
    """(R,) distances of residuals (R, 3) under per-row metrics (R, 3, 3) (Euclidean when None)."""
    if metric is None:
        return np.linalg.norm(residual, axis=1)
    return np.sqrt(np.maximum(((metric @ residual[:, :, None])[:, :, 0] * residual).sum(1), 0.0))


def prior_terms(model: BodyModel, free: np.ndarray, prior: Prior, settings: FitSettings) -> PriorTerms:
    """The diagonal prior terms over the free dims `free` (P,) bool."""
    idx = np.flatnonzero(free)
    pose_dims = np.zeros(model.num_params, bool)
    pose_dims[model.groups["pose"]] = True
    shape_dims = np.zeros(model.num_params, bool)
    shape_dims[model.groups["shape"]] = True
    weights, anchors = [], []
    if prior.prediction is not None and settings.accel_prior > 0:
        weights.append(np.full(len(idx), settings.accel_prior))
        anchors.append(np.asarray(prior.prediction, np.float64)[idx])
    if prior.previous is not None and settings.velocity_prior > 0:
        weights.append(np.full(len(idx), settings.velocity_prior))
        anchors.append(np.asarray(prior.previous, np.float64)[idx])
    if prior.reference is not None:
        ref = np.asarray(prior.reference, np.float64)
        w = np.where(pose_dims, settings.pose_prior, 0.0) + np.where(shape_dims, settings.shape_prior, 0.0)
        weights.append(w[idx])
        anchors.append(ref[idx])
    if not weights:
        weights, anchors = [np.zeros(len(idx))], [np.zeros(len(idx))]
    return PriorTerms(np.stack(weights), np.stack(anchors))


def evaluate(
    model: BodyModel, params: np.ndarray, targets: FitTargets, free: np.ndarray, prior: Prior, settings: FitSettings
) -> FitEvaluation:
    """Losses, point errors and the verdict of `params` (P,) against `targets` (the shipped numbers)."""
    keypoints = model_keypoints(model, params)
    errors = np.full(len(keypoints), np.nan)
    valid = targets.valid & np.isfinite(keypoints).all(1)
    errors[valid] = np.linalg.norm(keypoints[valid] - targets.points[valid], axis=1)
    n_valid = int(valid.sum())
    w = np.where(valid, targets.weights, 0.0)
    w_sum = float(w.sum())
    finite_params = bool(np.isfinite(np.asarray(params, np.float64)).all())
    if not targets.usable or w_sum <= 0 or not finite_params:
        return FitEvaluation(np.nan, np.nan, np.nan, np.nan, n_valid, Verdict.UNUSABLE, errors, keypoints)
    e = np.nan_to_num(errors)
    dist = e
    metric = None if targets.metric is None else np.asarray(targets.metric, np.float64)
    if metric is not None:
        resid = np.where(valid[:, None], np.nan_to_num(keypoints) - targets.points, 0.0)
        dist = metric_distance(resid, metric)
    data_loss = float(w @ huber(dist, settings.huber_m) / w_sum)
    x_free = np.asarray(params, np.float64)[free]
    loss = data_loss + prior_terms(model, free, prior, settings).value(x_free)
    if prior.prediction_keypoints is not None and settings.accel_keypoint_prior > 0:
        rows = np.flatnonzero(valid)
        loss += keypoint_prior_loss(keypoints[rows], np.asarray(prior.prediction_keypoints, np.float64)[rows],
                                    w[rows] / w_sum, None if metric is None else metric[rows],
                                    settings.accel_keypoint_prior)
    inlier = e <= settings.outlier_m
    inliers = float(w @ inlier / w_sum)
    w_in = float(w @ inlier)
    rms = float(np.sqrt((w * inlier) @ e**2 / w_in)) if w_in > 0 else np.inf
    if not np.isfinite(loss):
        verdict = Verdict.UNUSABLE
    elif rms <= settings.good_rms_m and inliers >= settings.min_inlier_fraction:
        verdict = Verdict.GOOD
    else:
        verdict = Verdict.POOR
    return FitEvaluation(loss, data_loss, rms, inliers, n_valid, verdict, errors, keypoints)
