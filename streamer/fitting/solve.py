"""Levenberg-Marquardt fit of a `BodyModel` to one frame's targets (Huber data term by IRLS).

Per iteration (distances in the targets' metric when they have one, `FitTargets.metric`): a
Jacobian of the valid keypoints with respect to the free dims (the model's analytic `keypoints_and_jacobian` when it has one, forward-mode autodiff, or one
batched forward pass of finite differences; in a
warm-started frame with `broyden`, computed once and then updated by rank-1 secant
updates along each accepted step, which costs no model evaluation), the
Gauss-Newton normal equations of the IRLS-weighted data term plus the diagonal priors,
Marquardt damping, and a step accepted only if the true objective drops. The best
parameters are kept, cast to float32 (the wire type), and every reported number is then
recomputed at exactly those parameters by `objective.evaluate` (ARCHITECTURE.md §4.3).

Cost: the arithmetic is float64 NumPy (torch on arrays this small costs its per-operation overhead);
the normal-equation product and the step's solve run through torch, whose thread setting the caller
owns (NumPy's BLAS would start a pool of its own). A model with NumPy single-row evaluation
(`keypoints_row`, `keypoints_and_jacobian_row`: the Anny body) is called without torch conversions.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from streamer.body.model import BodyModel
from streamer.fitting.objective import (
    FitEvaluation, FitSettings, Prior, evaluate, huber, keypoint_prior_loss, metric_distance, prior_terms,
)
from streamer.fitting.targets import FitTargets

__all__ = ["FitResult", "fit_frame", "jacobian_method"]

logger = logging.getLogger(__name__)

_MAX_DAMPING_RETRIES = 6  # per LM step of a cold fit
_MAX_DAMPING_RETRIES_WARM = 2  # a warm frame keeps its latency bounded; a failed step ships the start


@dataclass(frozen=True)
class FitResult:
    """One frame's fit. params: (P,) float32, the shipped parameters (always finite).
    evaluation: every loss, error and the verdict, computed at `params`. iterations: LM steps;
    start_loss: the objective at the start point (NaN when not fitted). jacobian: (K, 3, n_free)
    float64 keypoint Jacobian near `params` (rows of points not fitted this frame carried over
    from `jacobian_guess`), for the next frame's warm start; None when not fitted. converged: the solver
    stopped on its own (a step lowered the loss by less than `rel_tolerance`, or no step lowered it), not
    at its iteration cap."""

    params: np.ndarray
    evaluation: FitEvaluation | None
    iterations: int
    start_loss: float
    jacobian: np.ndarray | None = None
    converged: bool = True


def jacobian_method(model: BodyModel, requested: str = "auto", num_free: int | None = None) -> str:
    """The Jacobian method to use with `model`: `requested` unless "auto"; for "auto", "analytic" when
    the model has an exact `keypoints_and_jacobian` (chosen without timing, so every process and every
    offline re-run makes the same choice and gives the same poses), else the faster of "jacfwd" (when
    forward-mode autodiff runs through `model.keypoints`) and "difference", timed here on the rest
    pose with `num_free` free dims (default: all movable)."""
    if requested != "auto":
        return requested
    if hasattr(model, "keypoints_and_jacobian"):
        return "analytic"
    x = model.default_params(1)[0]
    n = int(model.movable.sum()) if num_free is None else num_free
    free_idx = torch.nonzero(model.movable, as_tuple=True)[0][:n].to(model.device)
    rows = torch.nonzero(model.keypoint_defined, as_tuple=True)[0].to(model.device)
    timings = {}
    for method in ("difference", "jacfwd"):
        jac = _keypoint_jacobian(model, x, free_idx, rows, method)
        try:
            jac(x[free_idx])  # warm-up (and a support check for jacfwd)
            runs = []
            for _ in range(3):  # CPU time, fastest run: other processes' load does not decide
                t0 = time.process_time() if model.device.type == "cpu" else time.perf_counter()
                jac(x[free_idx])
                runs.append((time.process_time() if model.device.type == "cpu" else time.perf_counter()) - t0)
            timings[method] = min(runs)
        except Exception as exc:  # a backend without forward-mode support: say so once
            logger.info("jacfwd not usable with %s (%s)", model.name, exc)
    logger.info("Jacobian timings for %s (fastest of 3 runs, s): %s", model.name, timings)
    return min(timings, key=timings.get)


def _keypoint_jacobian(
    model: BodyModel, base: torch.Tensor, free_idx: torch.Tensor, rows: torch.Tensor, method: str
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """(x_free (n,), columns (c,) or None) -> (jacobian (R, 3, c), keypoints (R, 3)) of the keypoint
    rows `rows` with respect to the free dims `columns` (all when None), in model dtype."""

    def points(x_free: torch.Tensor) -> torch.Tensor:
        x = base.index_put((free_idx,), x_free)
        return model.keypoints(x[None])[0, rows]

    if method == "analytic":
        def jac_analytic(x_free: torch.Tensor, columns: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
            x = base.index_put((free_idx,), x_free)
            cols = free_idx if columns is None else free_idx[columns.to(free_idx.device)]
            kp, jac = model.keypoints_and_jacobian(x[None], cols)
            return jac[0, rows], kp[0, rows]
        return jac_analytic

    if method == "jacfwd":
        def jac_fwd(x_free: torch.Tensor, columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            def both(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                p = points(x)
                return p, p
            jac, kp = torch.func.jacfwd(both, has_aux=True)(x_free)
            return (jac if columns is None else jac[..., columns]), kp
        return jac_fwd

    step = 1e-6 if model.dtype == torch.float64 else 1e-3

    def jac_diff(x_free: torch.Tensor, columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cols = torch.arange(len(x_free)) if columns is None else columns
        batch = base.expand(len(cols) + 1, -1).clone()
        batch[:, free_idx] = x_free
        batch[torch.arange(1, len(cols) + 1), free_idx[cols]] += step
        with torch.no_grad():
            kp = model.keypoints(batch)[:, rows]
        return ((kp[1:] - kp[:1]) / step).permute(1, 2, 0), kp[0]

    return jac_diff


def _torch_op(op: Callable[..., torch.Tensor], *arrays: np.ndarray) -> np.ndarray:
    """`op` on float64 arrays, run by torch: its intra-op threads are the process's setting (the fitter
    node uses one), where NumPy's BLAS / LAPACK would spread a product or solve this size over a pool of
    its own on every core."""
    return op(*(torch.from_numpy(a) for a in arrays)).numpy()


def _solve_spd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """matrix^-1 rhs for a symmetric positive definite `matrix` (Cholesky; LU where it is not)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        return torch.linalg.solve(matrix, rhs)
    return torch.cholesky_solve(rhs[:, None], factor)[:, 0]


def fit_frame(
    model: BodyModel,
    targets: FitTargets,
    start: np.ndarray,
    free: np.ndarray,
    prior: Prior,
    settings: FitSettings,
    *,
    cold: bool = False,
    method: str | None = None,
    jacobian_guess: np.ndarray | None = None,
    refresh_columns: np.ndarray | None = None,
    judge: bool = True,
) -> FitResult:
    """Fit `model` to `targets` from `start` (P,), moving only dims where `free` (P,) is True.

    cold: a fresh start (allows `max_iterations_cold`, recomputes the Jacobian every step).
    method: a `jacobian_method` result (computed once per model by the caller; "auto" here when
    None). jacobian_guess: (K, 3, n_free) a previous frame's `FitResult.jacobian`; with it (warm
    frames, broyden on) only the free-dim indices `refresh_columns` are recomputed (all when
    None). judge=False leaves `evaluation` None, for a caller that ships something else and
    judges that instead. Unusable targets are not fitted: the start is returned, judged "unusable"."""
    start = np.asarray(start, dtype=np.float64)
    free = np.asarray(free, bool)
    if start.shape != (model.num_params,) or free.shape != (model.num_params,):
        raise ValueError(f"start, free: expected shape ({model.num_params},), got {start.shape}, {free.shape}")
    if not np.isfinite(start).all():
        raise ValueError("start: parameters must be finite")
    if not targets.usable or not free.any():
        shipped = start.astype(np.float32)
        return FitResult(shipped, evaluate(model, shipped, targets, free, prior, settings), 0, np.nan)

    method = method or jacobian_method(model, settings.jacobian)
    dev, dtype = model.device, model.dtype
    defined = model.keypoint_defined.cpu().numpy()
    rows_np = np.flatnonzero(targets.valid & defined)
    rows = torch.as_tensor(rows_np, device=dev)
    # The solver's arithmetic is float64 NumPy (torch on arrays this small costs its per-operation
    # overhead); the model is evaluated in its own dtype and device.
    target = targets.points[rows_np].astype(np.float64)
    weights = targets.weights[rows_np].astype(np.float64)
    weights = weights / weights.sum()
    metric = None if targets.metric is None else targets.metric[rows_np].astype(np.float64)
    free_idx = torch.as_tensor(np.flatnonzero(free), device=dev)
    base = torch.as_tensor(start, device=dev).to(dtype)
    terms = prior_terms(model, free, prior, settings)
    kp_weight = settings.accel_keypoint_prior if prior.prediction_keypoints is not None else 0.0
    predicted_kp = (np.nan_to_num(np.asarray(prior.prediction_keypoints, np.float64)[rows_np]) if kp_weight > 0
                    else None)
    if predicted_kp is not None:  # a row the prediction lacks has no keypoint prior
        kp_rows_weight = np.where(np.isfinite(np.asarray(prior.prediction_keypoints)[rows_np]).all(1), weights, 0.0)
    keypoint_jacobian = _keypoint_jacobian(model, base, free_idx, rows, method)
    # a model with NumPy single-row evaluation (`keypoints_row`) is called without torch conversions
    by_row = hasattr(model, "keypoints_row") and (method != "analytic" or hasattr(model, "keypoints_and_jacobian_row"))
    free_np = np.flatnonzero(free)

    def full(x_free: np.ndarray) -> np.ndarray:
        x = start.copy()
        x[free] = x_free
        return x

    def jacobian(x_free: np.ndarray, columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if by_row and method == "analytic":
            kp, jac = model.keypoints_and_jacobian_row(full(x_free), free_np if columns is None else free_np[columns])
            return jac[rows_np], kp[rows_np]
        cols = None if columns is None else torch.as_tensor(columns)
        jac, kp = keypoint_jacobian(torch.from_numpy(x_free).to(dev, dtype), cols)
        return jac.to(torch.float64).cpu().numpy(), kp.to(torch.float64).cpu().numpy()

    def objective(x_free: np.ndarray) -> tuple[float, np.ndarray]:
        if by_row:
            kp = model.keypoints_row(full(x_free))[rows_np]
        else:
            with torch.no_grad():
                x = base.index_put((free_idx,), torch.from_numpy(x_free).to(dev, dtype))
                kp = model.keypoints(x[None])[0, rows].to(torch.float64).cpu().numpy()
        return loss_of(x_free, kp), kp

    def loss_of(x_free: np.ndarray, kp: np.ndarray) -> float:
        dist = metric_distance(kp - target, metric)
        loss = float(weights @ huber(dist, settings.huber_m) + terms.value(x_free))
        if predicted_kp is not None:
            loss += keypoint_prior_loss(kp, predicted_kp, kp_rows_weight, metric, kp_weight)
        return loss

    x = start[free]
    damping = settings.lm_damping
    iterations = 0
    max_iterations = settings.max_iterations_cold if cold else settings.max_iterations
    n_free = int(free.sum())
    guess_ok = (jacobian_guess is not None and jacobian_guess.shape == (len(defined), 3, n_free)
                and settings.broyden and not cold)
    jac, loss = None, None
    if guess_ok:
        jac = jacobian_guess[rows_np]  # a copy (fancy indexing)
        if refresh_columns is None or len(refresh_columns):
            fresh, kp = jacobian(x, refresh_columns)
            if refresh_columns is None:
                jac = fresh
            else:
                jac[..., refresh_columns] = fresh
            loss = loss_of(x, kp)  # the difference batch's base row is the start point
    if not guess_ok or loss is None:
        loss, kp = objective(x)
    start_loss = loss
    converged = False
    while iterations < max_iterations and np.isfinite(loss):
        if jac is None or cold or not settings.broyden:
            jac, kp = jacobian(x)
        iterations += 1
        resid = kp - target  # (R, 3)
        dist = metric_distance(resid, metric)
        irls = np.where(dist <= settings.huber_m, 1.0, settings.huber_m / np.maximum(dist, 1e-12))
        w = weights * irls  # (R,)
        pulled = resid * w[:, None]  # the data term's (and the keypoint prior's) weighted residuals
        if predicted_kp is not None:  # the keypoint prior: the prediction's keypoints as quadratic targets
            pulled = pulled + kp_weight * kp_rows_weight[:, None] * (kp - predicted_kp)
            w = w + kp_weight * kp_rows_weight
        metric_jac = jac if metric is None else metric @ jac  # M J
        jw = np.ascontiguousarray((metric_jac * w[:, None, None]).reshape(-1, n_free).T)  # (n, 3R)
        hessian = _torch_op(torch.matmul, jw, np.ascontiguousarray(jac.reshape(-1, n_free)))
        gradient = _torch_op(torch.mv, np.ascontiguousarray(metric_jac.reshape(-1, n_free).T), pulled.reshape(-1))
        prior_grad, prior_diag = terms.gradient_and_diagonal(x)
        hessian[np.diag_indices(n_free)] += prior_diag
        gradient = gradient + prior_grad
        diag = np.maximum(hessian.diagonal(), 1e-12)
        accepted = False
        for _ in range(_MAX_DAMPING_RETRIES if cold else _MAX_DAMPING_RETRIES_WARM):
            damped = hessian.copy()
            damped[np.diag_indices(n_free)] += damping * diag
            step = _torch_op(_solve_spd, damped, -gradient)
            candidate = x + step
            new_loss, new_kp = objective(candidate)
            if np.isfinite(new_loss) and new_loss < loss:
                accepted = True
                damping = max(damping / 3.0, 1e-9)
                break
            damping *= 4.0
        if not accepted:
            converged = True
            break
        if settings.broyden and not cold:  # rank-1 secant update of the Jacobian along the step
            step_sq = float(step @ step)
            if step_sq > 0:
                jac = jac + ((new_kp - kp) - jac @ step)[:, :, None] * (step / step_sq)
        decrease = loss - new_loss
        x, loss, kp = candidate, new_loss, new_kp
        if decrease < settings.rel_tolerance * loss:
            converged = True
            break

    best = start.copy()
    best[free] = x
    shipped = best.astype(np.float32)
    if not np.isfinite(shipped).all():  # cannot happen with accepted finite losses; never ship NaN
        shipped = start.astype(np.float32)
    full_jac = None
    if jac is not None:
        full_jac = jacobian_guess.copy() if guess_ok else np.zeros((len(defined), 3, n_free))
        full_jac[rows_np] = jac
    evaluation = evaluate(model, shipped, targets, free, prior, settings) if judge else None
    return FitResult(shipped, evaluation, iterations, start_loss, full_jac, converged or not np.isfinite(loss))
