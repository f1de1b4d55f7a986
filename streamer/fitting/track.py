"""One subject's fit over time: warm start, temporal priors, coasting, re-acquisition, held shape.

`track_step(state, targets, t_ns, context)` is a pure function over explicit state (the fitter
node keeps one `TrackState` per person). Per frame:

- usable targets: start from the constant-velocity prediction (a Kalman over the parameters),
  or re-initialise (`choose_start`) when there is no track, it was lost (no usable frame for
  `lost_after_s`) or it is stuck (fitted frames without a "good" verdict for `relock_after_s`: a
  warm start caught in a wrong pose that one LM step per frame does not leave), or, whatever the
  verdicts, when `stuck_body_points` or more body keypoints (`mhr70.BODY`) have each been measured and
  off their targets by more than `stuck_body_m` (targets' metric) in every fit for `relock_after_s`
  (the same points each frame: an outlier target is far off for a frame, a wrong pose for many): the
  verdict's inlier RMS averages a few far-off hips over the ~60 well-fitted points, so a synthetic squat
  held the hips 70-280 mm off for 10 s, judged "good", while their triangulation was ~10 mm off. 60 s
  synthetic takes, 4 cameras, seeds 0-2: MPJPE 14.4 / 19.1 / 14.3 -> 9.5 / 10.3 / 10.2 mm, 3-5 starts a
  minute); fit with the acceleration prior toward that prediction; ship the fit.
- unusable targets (or NaN input): never fitted and never fed to any filter; the root
  translation is coasted for up to `coast_root_s` and every rotation (global and joints) for
  `coast_pose_s` (flags PREDICTED), then held (flags MISSING).
- after any frame that was not a fit (or a gap without frames), the next fits are slew-limited:
  no keypoint moves faster than `max_speed_mps` between shipped poses (no jump at re-acquisition);
  a lost track starts afresh instead (its held pose was flagged MISSING), as does a stuck one (its
  verdicts said its pose was wrong).
- shape: free (if the model lets it move) over the first `shape_frames` good fits, then held at
  their mean for the rest of the track. A constant: predicted unchanged and shipped as fitted (the
  Kalman smooths the motion only), so each such frame evaluates two new shapes (step, one shape
  Jacobian column), not five.
- keypoint offsets (a subject-specific marker calibration, for models with `set_keypoint_offsets`):
  a detector's keypoints are not the body model's (OpenPose's shoulders and hips sit centimetres
  from Anny's). Over `offset_rounds` windows of `offset_frames` good fits each (default: every good
  fit of the first 100), `offset_gain` times the mean inlier residual of every point (target - model
  point, in the frame of the node the point moves with) is added to that point's offset (norm clipped
  to `max_offset_m`), then the offsets are held for the track at their mean over the calibration's
  second half (not its last, noisiest step: synthetic 15 s walks, MPJPE 15.0 -> 13.8 mm on one seed). Causal: a window only changes later
  frames. With `offset_frames` 0 there is no calibration. Gain 0.5 every frame converges about as
  fast as gain 1 every 2 frames with half the offset noise (Pose2Sim balancing trial, in-sample
  reprojection / jitter drop: windows of 5 at gain 1 1.80x / 2.47x; every frame at gain 1 1.45x /
  1.33x, 0.4 1.52x / 2.72x, 0.5 1.49x / 2.39x, 0.6 1.48x / 2.12x).
- a start (re)initialised by any of these spreads its solver iterations over its first frames
  (`start_iterations`, `start_frame_iterations`): a relock's first frame costs ~6 ms CPU instead of 10-24; a
  pose shipped before the start converged is judged "poor".
Every shipped number is judged at the shipped parameters (`objective.evaluate`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from protocol.messages import PoseFlag, Verdict
from streamer.body import mhr70
from streamer.body.model import BodyModel
from streamer.filters import KalmanSettings, KalmanState, kalman_init, kalman_predicted_position, kalman_step
from streamer.fitting.init import choose_start, model_keypoints
from streamer.fitting.objective import FitEvaluation, FitSettings, Prior, evaluate, metric_distance
from streamer.fitting.solve import fit_frame, jacobian_method
from streamer.fitting.targets import FitTargets, TargetSettings

__all__ = ["TrackContext", "TrackOutput", "TrackSettings", "TrackState", "body_far", "make_context", "starts_afresh",
           "track_init", "track_step"]

_NEVER_NS = np.iinfo(np.int64).min
_FINGER_GROUPS = ("pose_hands", "hand_pose")  # the finger parameter groups of the body models (Anny, MHR)


@dataclass(frozen=True)
class TrackSettings:
    """lost_after_s: no usable frame this long -> re-initialise on the next. coast_root_s / coast_pose_s:
    how long the root (global rotation, translation) / the pose coast on the constant-velocity
    prediction through unusable frames. max_speed_mps: slew limit after a gap. shape_frames: good
    fits averaged into the held shape. fit_hands: move the finger dims (else frozen). frozen_groups:
    parameter groups never moved (e.g. "jaw"). offset_frames / offset_rounds / offset_gain / max_offset_m:
    the keypoint offset calibration (module docstring); offset_min_weight: a point's offset moves only when its mean
    weight over the window reaches this. jacobian_stagger: with a difference Jacobian, a warm frame
    recomputes every n-th column (Broyden updates carry the rest); an analytic one is recomputed whole
    but for the shape columns, one per frame in turn (`_refresh_columns`).
    root_accel_noise / pose_accel_noise: Kalman process
    noise of the parameter prediction (rad/s^2 or m/s^2); param_meas_std: its measurement std.
    relock_after_s: fitted frames without a "good" verdict this long -> re-initialise (0: never).
    stuck_body_m / stuck_body_points: this many body keypoints (`mhr70.BODY`) each farther than stuck_body_m
    (metres, in the targets' metric) from its measured target in every fit for relock_after_s -> re-initialise
    (0 points: never; the shipped verdict is unchanged). Default: the data term's Huber
    threshold, beyond which the fit treats a point as an outlier (a per-frame test at 5 cm left 10 s windows of
    two of three synthetic seeds 1-6 mm worse than their triangulation; at 2 cm it moved the Pose2Sim scores).
    start_iterations: a (re)initialisation runs at most this many LM iterations (cold: the whole Jacobian each),
    spread over its first frames, `start_frame_iterations` a frame (`start_frame_iterations_shape` while the shape
    is still estimated: a track's first start, whose two shape columns make an iteration ~4x dearer), until one
    frame's fit converges or the budget is spent; a pose shipped before it converged is judged "poor" (counted
    neither into the shape, the offsets nor the stuck test). Converging frames start from the last shipped pose,
    with it as their (constant) prediction. 0: the whole start in its first frame, up to `max_iterations_cold`
    (the fitter before). Synthetic 20 s takes (4 cameras, seeds 0-2), 51 forced relocks: first frame 9.8 -> 6.1
    ms CPU p50, 23.3 -> 6.6 p99; body MPJPE of the first 3 poses 14.0/9.7/9.2 -> 16.6/12.8/9.7 mm, of frames
    10-30 11.61 -> 11.62 mm. A first start is not spread (1 iteration a frame cost the Pose2Sim balancing trial
    its 1.5x in-sample goal, 1.59x) but capped: p50 30 ms, p99 79.9 -> 44.4 ms.
"""

    fit: FitSettings = field(default_factory=FitSettings)
    targets: TargetSettings = field(default_factory=TargetSettings)
    lost_after_s: float = 1.5
    coast_root_s: float = 1.0
    coast_pose_s: float = 0.2
    max_speed_mps: float = 4.0
    shape_frames: int = 15
    fit_hands: bool = False
    all_shape_dims: bool = False
    frozen_groups: tuple[str, ...] = ("jaw",)
    jacobian_stagger: int = 3
    smooth_output: bool = True
    offset_frames: int = 1
    offset_rounds: int = 100
    offset_gain: float = 0.5
    max_offset_m: float = 0.08
    offset_min_weight: float = 0.3
    root_accel_noise: float = 2.0
    pose_accel_noise: float = 20.0
    param_meas_std: float = 0.02
    relock_after_s: float = 0.5
    stuck_body_m: float = 0.03
    stuck_body_points: int = 2
    start_iterations: int = 8
    start_frame_iterations: int = 4
    start_frame_iterations_shape: int = 8

    def __post_init__(self) -> None:
        if not 0.0 < self.offset_gain <= 1.0:
            raise ValueError(f"TrackSettings.offset_gain: expected a share in (0, 1], got {self.offset_gain!r}")


@dataclass(frozen=True)
class TrackContext:
    """Per-model constants: free (P,) bool dims a fit may move (shape excluded); shape (P,) bool;
    root (P,) bool the root translation dims; reference (P,) rest params; method: Jacobian method."""

    model: BodyModel
    settings: TrackSettings
    free: np.ndarray
    shape: np.ndarray
    root: np.ndarray
    reference: np.ndarray
    defined: np.ndarray
    method: str


@dataclass(frozen=True)
class TrackState:
    """params: (P,) float64 last shipped (None before the first fit); t_ns: last step; t_fit_ns: last
    fitted frame; root_kf / pose_kf: Kalman states of the root and the other dims; slewing: the
    next fit is slew-limited; shape_sum / shape_count / shape_held: the shape estimate; jacobian,
    jacobian_phase: the carried keypoint Jacobian and its refresh phase; offsets: (K, 3) the keypoint
    offsets in use (None: zero); offset_sum (K, 3) / offset_info (K, 3, 3) / offset_weight (K,) /
    offset_count: the current calibration window (node-frame metric-weighted residual sum, metric sum,
    weight sum, fits); offset_round: windows done; offset_tail_sum: sum of the offsets after each window of
    the calibration's second half (their mean is held); t_good_ns: last fit judged "good", slew-limited (its
    pose lags the data on purpose) or (re)initialised; body_far_since_ns: (len(mhr70.BODY),) int64 per body
    keypoint, the first of the consecutive fits up to the last in which it was far off (`body_far`), else the
    minimum int64 (None: no fit since the start); start_done: LM iterations a (re)start has run while it has not
    converged (-1: none going on)."""

    params: np.ndarray | None
    t_ns: int
    t_fit_ns: int
    root_kf: KalmanState
    pose_kf: KalmanState
    slewing: bool
    shape_sum: np.ndarray
    shape_count: int
    shape_held: np.ndarray | None
    jacobian: np.ndarray | None = None
    jacobian_phase: int = 0
    offsets: np.ndarray | None = None
    offset_sum: np.ndarray | None = None
    offset_weight: np.ndarray | None = None
    offset_info: np.ndarray | None = None
    offset_count: int = 0
    offset_round: int = 0
    offset_tail_sum: np.ndarray | None = None
    t_good_ns: int = _NEVER_NS
    body_far_since_ns: np.ndarray | None = None
    start_done: int = -1


@dataclass(frozen=True)
class TrackOutput:
    """params: (P,) float32 shipped (finite); keypoints: (K, 3) float32 at params, zero where the model
    has no such point; flags: (K,) uint8 PoseFlag; evaluation: losses and verdict at params (verdict
    "unusable" on coasted / held frames, "poor" while a start has not converged); iterations; source: "fit",
    "coast" or "hold"."""

    params: np.ndarray
    keypoints: np.ndarray
    flags: np.ndarray
    evaluation: FitEvaluation
    iterations: int
    source: str


def make_context(model: BodyModel, settings: TrackSettings = TrackSettings()) -> TrackContext:
    """Constants for tracking with `model`: which dims move (movable, influential on a defined
    keypoint, not frozen, fingers only with fit_hands), the Jacobian method."""
    p = model.num_params
    movable = model.movable.cpu().numpy().astype(bool)
    g = model.groups
    group_mask = lambda name: np.isin(np.arange(p), np.arange(p)[g[name]]) if name in g else np.zeros(p, bool)  # noqa: E731
    shape = group_mask("shape") & (movable | settings.all_shape_dims)
    root = group_mask("transl")  # coasted long; rotations (global and joints) coast briefly
    free = movable & ~shape
    for name in settings.frozen_groups:
        free &= ~group_mask(name)
    if not settings.fit_hands:
        for name in _FINGER_GROUPS:
            free &= ~group_mask(name)
    reference = model.default_params(1)[0].to(torch.float64).cpu().numpy()
    defined = model.keypoint_defined.cpu().numpy().astype(bool)
    # dims that move no defined keypoint only cost time: drop them (one batched difference pass)
    step = 1e-3
    batch = np.repeat(reference[None], p + 1, 0)
    batch[np.arange(1, p + 1), np.arange(p)] += step
    kp = model_keypoints(model, batch)[:, defined]
    influence = np.abs(kp[1:] - kp[:1]).reshape(p, -1).max(1)
    free &= influence > 1e-9
    method = jacobian_method(model, settings.fit.jacobian, int(free.sum()))
    return TrackContext(model, settings, free, shape, root, reference, defined, method)


def track_init(context: TrackContext) -> TrackState:
    """The state of a subject never seen."""
    n_root = int(context.root.sum())
    n_rest = context.model.num_params - n_root
    return TrackState(None, _NEVER_NS, _NEVER_NS, kalman_init(n_root, 1), kalman_init(n_rest, 1), False,
                      np.zeros(int(context.shape.sum())), 0, None)


def _start_budget(settings: TrackSettings) -> int:
    """LM iterations a (re)initialisation spreads over its first frames."""
    return min(settings.start_iterations, settings.fit.max_iterations_cold)


def _lost(state: TrackState, t_ns: int, settings: TrackSettings) -> bool:
    """No track yet, no fitted frame for longer than `lost_after_s` before t_ns, or stuck in a wrong pose: fitted
    frames judged not "good" for `relock_after_s` (gaps without fits and slew-limited re-acquisition do not
    count), or `stuck_body_points` body keypoints far off in every fit for `relock_after_s`."""
    if state.params is None or (int(t_ns) - state.t_fit_ns) * 1e-9 > settings.lost_after_s:
        return True
    if settings.relock_after_s <= 0:
        return False
    if (state.t_fit_ns - state.t_good_ns) * 1e-9 >= settings.relock_after_s:
        return True
    if settings.stuck_body_points <= 0 or state.body_far_since_ns is None:
        return False
    since = state.body_far_since_ns
    far_long = (since != _NEVER_NS) & ((state.t_fit_ns - since) * 1e-9 >= settings.relock_after_s)
    return int(far_long.sum()) >= settings.stuck_body_points


def body_far(targets: FitTargets, evaluation: FitEvaluation, settings: TrackSettings) -> np.ndarray:
    """(len(mhr70.BODY),) bool: the body keypoints measured (valid targets) and farther than `stuck_body_m` from
    their targets at the evaluated pose (distance in the targets' metric when they have one: a two-view point's
    poorly seen depth does not count as far off)."""
    body = np.asarray(mhr70.BODY)
    if body.max() >= len(targets.points):
        return np.zeros(len(body), bool)
    valid = targets.valid[body] & np.isfinite(evaluation.keypoints[body]).all(1)
    resid = np.where(valid[:, None], np.nan_to_num(evaluation.keypoints[body]) - targets.points[body], 0.0)
    metric = None if targets.metric is None else np.asarray(targets.metric, np.float64)[body]
    return valid & (metric_distance(resid, metric) > settings.stuck_body_m)


def starts_afresh(state: TrackState, targets: FitTargets, t_ns: int, context: TrackContext) -> bool:
    """Whether `track_step(state, targets, t_ns, context)` (re)initialises the track (and so uses its
    `candidates`): usable targets, time advancing, and no track or no fit for `lost_after_s`."""
    return targets.usable and int(t_ns) > state.t_ns and _lost(state, t_ns, context.settings)


def _kalman_settings(context: TrackContext, accel_noise: float, max_gap_s: float) -> KalmanSettings:
    s = context.settings
    return KalmanSettings(accel_noise=accel_noise, meas_std=s.param_meas_std, init_speed_std=0.5,
                          max_gap_s=max_gap_s, gate_sigma=None)


def _flags(context: TrackContext, targets: FitTargets | None, source: str) -> np.ndarray:
    defined = context.defined
    if source == "fit":
        measured = targets.valid & defined
        return np.where(measured, PoseFlag.MEASURED, np.where(defined, PoseFlag.PREDICTED, PoseFlag.MISSING)).astype(np.uint8)
    state = PoseFlag.PREDICTED if source == "coast" else PoseFlag.MISSING
    return np.where(defined, state, PoseFlag.MISSING).astype(np.uint8)


def _output(context: TrackContext, params32: np.ndarray, evaluation: FitEvaluation, targets: FitTargets | None,
            iterations: int, source: str) -> TrackOutput:
    kp = np.where(np.isfinite(evaluation.keypoints), evaluation.keypoints, 0.0).astype(np.float32)
    return TrackOutput(params32, kp, _flags(context, targets, source), evaluation, iterations, source)


def _predicted(context: TrackContext, state: TrackState, t_ns: int) -> np.ndarray | None:
    """(P,) the parameters predicted at t_ns: constant velocity for rows measured within their coasting
    window, the last shipped value for the others and for the shape (a constant; None without a track)."""
    if state.params is None:
        return None
    s = context.settings
    pred = state.params.copy()
    for kf, rows, gap_s in ((state.root_kf, context.root, s.coast_root_s), (state.pose_kf, ~context.root, s.coast_pose_s)):
        ahead = kalman_predicted_position(kf, t_ns)[:, 0]
        seen = kf.t_ns != np.iinfo(np.int64).min
        live = seen & ((t_ns - kf.t_ns) * 1e-9 <= gap_s) & np.isfinite(ahead)
        sub = pred[rows]
        sub[live] = ahead[live]
        pred[rows] = sub
    pred[context.shape] = state.params[context.shape]  # the shape is a constant: predicted unchanged
    return pred


def _update_filters(context: TrackContext, state: TrackState, params: np.ndarray | None, t_ns: int
                    ) -> tuple[KalmanState, KalmanState, np.ndarray, bool]:
    """Step both Kalman states with `params` (None: missing) -> (states, filtered params, root coasting).

    Filtered params: the posterior where measured, the coasted prediction where predicted, the last
    shipped value where a row was dropped (its gap exceeded the coasting limit)."""
    s = context.settings
    sample = np.full(context.model.num_params, np.nan) if params is None else params
    root_kf, root_out = kalman_step(state.root_kf, sample[context.root, None], t_ns,
                                    _kalman_settings(context, s.root_accel_noise, s.coast_root_s))
    pose_kf, pose_out = kalman_step(state.pose_kf, sample[~context.root, None], t_ns,
                                    _kalman_settings(context, s.pose_accel_noise, s.coast_pose_s))
    coasted = state.params.copy() if state.params is not None else sample.copy()
    for rows, out in ((context.root, root_out), (~context.root, pose_out)):
        sub = coasted[rows]
        ok = out.status != PoseFlag.MISSING
        sub[ok] = out.values[ok, 0]
        coasted[rows] = sub
    coasting = bool((root_out.status == PoseFlag.PREDICTED).any())
    return root_kf, pose_kf, coasted, coasting


def _slew_limit(context: TrackContext, model: BodyModel, previous: np.ndarray, fitted: np.ndarray, dt_s: float
                ) -> tuple[np.ndarray, bool]:
    """Params moved from `previous` toward `fitted` so that no defined keypoint moves more than
    max_speed_mps * dt_s; returns (params, limited)."""
    limit = context.settings.max_speed_mps * max(dt_s, 1e-3)
    d = context.defined
    kp_prev = model_keypoints(model, previous)[d]
    alpha = 1.0
    for _ in range(12):
        cand = previous + alpha * (fitted - previous)
        move = np.linalg.norm(model_keypoints(model, cand)[d] - kp_prev, axis=1).max()
        if move <= limit:
            return cand, alpha < 1.0
        alpha *= 0.95 * limit / move  # keypoints are close to linear in small parameter steps
    return previous.copy(), True


def _refresh_columns(context: TrackContext, free: np.ndarray, phase: int) -> tuple[np.ndarray, int]:
    """(indices into the free dims whose Jacobian columns a warm frame recomputes, number of phases).

    A difference Jacobian recomputes every `jacobian_stagger`-th column. An analytic one recomputes
    every rotation and translation column (they cost about nothing beyond the forward pass), but
    only one free shape column per frame, in turn: each costs a forward pass with new shape tables.
    Broyden updates carry the other columns."""
    n_free = int(free.sum())
    if context.method != "analytic":
        stagger = max(1, context.settings.jacobian_stagger)
        return np.flatnonzero(np.arange(n_free) % stagger == phase % stagger), stagger
    is_shape = context.shape[free]
    shape_cols = np.flatnonzero(is_shape)
    if len(shape_cols) <= 1:
        return np.arange(n_free), 1
    due = shape_cols[phase % len(shape_cols)]
    return np.flatnonzero(~is_shape | (np.arange(n_free) == due)), len(shape_cols)


def _calibrate_offsets(context: TrackContext, state: TrackState, params: np.ndarray, targets: FitTargets,
                       evaluation: FitEvaluation) -> TrackState:
    """`state` with this good fit's inlier residuals added to the offset window (closing the window
    after `offset_frames` fits: the offsets move by its mean residual). With a metric on the targets the
    mean is weighted by it (per point, the offset change that best explains the window's residuals in
    the well-observed directions: (sum_t R^T M R)^-1 sum_t R^T M r, R = world_from_node)."""
    s = context.settings
    model = context.model
    k = len(targets.points)
    with torch.no_grad():
        x = torch.as_tensor(params, device=model.device).to(model.dtype)[None]
        frames = model.keypoint_frames(x)[0].to(torch.float64).cpu().numpy()  # (K, 3, 3) world_from_node
    use = targets.valid & context.defined & (np.nan_to_num(evaluation.errors_m, nan=np.inf) <= s.fit.outlier_m)
    resid = np.where(use[:, None], targets.points - np.nan_to_num(evaluation.keypoints), 0.0)
    w = np.where(use, targets.weights, 0.0)
    metric = np.broadcast_to(np.eye(3), (k, 3, 3)) if targets.metric is None else targets.metric
    info = w[:, None, None] * np.einsum("kai,kab,kbj->kij", frames, metric, frames)  # node-frame metric
    total = (np.zeros((k, 3)) if state.offset_sum is None else state.offset_sum) + \
        np.einsum("kai,kab,kb->ki", frames, w[:, None, None] * metric, resid)
    info_sum = (np.zeros((k, 3, 3)) if state.offset_info is None else state.offset_info) + info
    weight = (np.zeros(k) if state.offset_weight is None else state.offset_weight) + w
    count = state.offset_count + 1
    if count < s.offset_frames:
        return replace(state, offset_sum=total, offset_info=info_sum, offset_weight=weight, offset_count=count)
    moved = weight >= s.offset_min_weight * count
    regular = info_sum + 1e-9 * np.eye(3)
    mean = np.where(moved[:, None], np.linalg.solve(regular, total[..., None])[..., 0], 0.0)
    offsets = (np.zeros((k, 3)) if state.offsets is None else state.offsets) + s.offset_gain * mean
    norm = np.linalg.norm(offsets, axis=1, keepdims=True)
    offsets = offsets * np.minimum(1.0, s.max_offset_m / np.maximum(norm, 1e-12))
    done = state.offset_round + 1
    tail = state.offset_tail_sum
    if done > s.offset_rounds // 2:  # the held offsets: the mean over the calibration's second half, not its last step
        tail = offsets if tail is None else tail + offsets
        if done == s.offset_rounds:
            offsets = tail / (s.offset_rounds - s.offset_rounds // 2)
    return replace(state, offsets=offsets, offset_sum=None, offset_info=None, offset_weight=None, offset_count=0,
                   offset_round=done, offset_tail_sum=tail)


def track_step(
    state: TrackState, targets: FitTargets, t_ns: int, context: TrackContext,
    *, candidates: np.ndarray | None = None,
) -> tuple[TrackState, TrackOutput | None]:
    """Advance one subject by one frame at `t_ns` (stage clock, ns). Returns the new state and the
    output (None when there is nothing to ship yet, or the timestamp does not advance).

    The subject's keypoint offsets are applied to the model for the step only (the model is shared
    between subjects), so outputs include them and the model is left as it was."""
    model = context.model
    if not hasattr(model, "set_keypoint_offsets"):
        return _track_step(state, targets, t_ns, context, candidates=candidates)
    saved = model.keypoint_offsets
    model.set_keypoint_offsets(state.offsets)
    try:
        return _track_step(state, targets, t_ns, context, candidates=candidates)
    finally:
        model.set_keypoint_offsets(saved)


def _track_step(
    state: TrackState, targets: FitTargets, t_ns: int, context: TrackContext,
    *, candidates: np.ndarray | None = None,
) -> tuple[TrackState, TrackOutput | None]:
    t_ns = int(t_ns)
    if t_ns <= state.t_ns:
        return state, None
    s = context.settings
    model = context.model
    lost = _lost(state, t_ns, s)
    if not targets.usable:
        if state.params is None:
            return replace(state, t_ns=t_ns), None
        root_kf, pose_kf, coasted, coasting = _update_filters(context, state, None, t_ns)
        source = "coast" if coasting else "hold"
        if not coasting:
            coasted = state.params
        if source == "coast":  # a coasted pose moves no faster than a fitted one may
            coasted, _ = _slew_limit(context, model, state.params, coasted, (t_ns - state.t_ns) * 1e-9)
        params32 = coasted.astype(np.float32)
        evaluation = evaluate(model, params32, targets, context.free, Prior(), s.fit)
        new = replace(state, params=params32.astype(np.float64), t_ns=t_ns, root_kf=root_kf, pose_kf=pose_kf,
                      slewing=True)
        return new, _output(context, params32, evaluation, targets, 0, source)

    reference = context.reference.copy()
    if state.shape_held is not None:
        reference[context.shape] = state.shape_held
    converging = not lost and state.start_done >= 0  # a start still converging: its fit goes on, cold
    starting = lost or converging
    free = context.free.copy()
    if state.shape_held is None:
        free |= context.shape
    prediction = None if lost else state.params.copy() if converging else _predicted(context, state, t_ns)
    if state.params is not None and (t_ns - state.t_ns) * 1e-9 > s.coast_pose_s:
        state = replace(state, slewing=True)  # input resumes after a gap without frames: re-acquire gently
    if converging:
        start_params, cold = state.params.copy(), True
        root_kf, pose_kf = kalman_init(int(context.root.sum()), 1), kalman_init(int((~context.root).sum()), 1)
        state = replace(state, root_kf=root_kf, pose_kf=pose_kf, slewing=False)
    elif lost:
        start = choose_start(model, targets, candidates=candidates, reference=reference)
        if state.params is not None:  # keep the held shape on re-initialisation
            start.params[context.shape] = reference[context.shape]
        # a first track starts the dims it does not fit (MHR's shape, scale, hands) from the reference, unless
        # the estimator measured them
        keep = state.params is not None or start.source == "estimator"
        start_params, cold = (start.params if keep else np.where(free, start.params, reference)), True
        root_kf, pose_kf = kalman_init(int(context.root.sum()), 1), kalman_init(int((~context.root).sum()), 1)
        # a new track: no continuity with the held (MISSING-flagged) pose, so no slew limit
        state = replace(state, root_kf=root_kf, pose_kf=pose_kf, slewing=False, t_good_ns=t_ns, body_far_since_ns=None,
                        start_done=0)
    else:  # after a gap (slewing), the data may be far from the prediction: allow a cold fit's iterations
        start_params, cold = prediction, state.slewing
    if state.shape_held is not None:
        start_params[context.shape] = state.shape_held
    predicted_kp = (model_keypoints(model, prediction) if prediction is not None and s.fit.accel_keypoint_prior > 0
                    else None)
    prior = Prior(prediction=prediction, previous=state.params, reference=reference, prediction_keypoints=predicted_kp)
    refresh, phases = _refresh_columns(context, free, state.jacobian_phase)
    fit_settings = s.fit
    spread = starting and s.start_iterations > 0
    if spread:  # this frame's share of the start's iterations (fewer while the shape is estimated: dearer)
        per_frame = s.start_frame_iterations if state.shape_held is not None else s.start_frame_iterations_shape
        fit_settings = replace(s.fit, max_iterations_cold=max(1, min(per_frame, _start_budget(s) - state.start_done)))
    result = fit_frame(model, targets, start_params, free, prior, fit_settings, cold=cold, method=context.method,
                       jacobian_guess=state.jacobian, refresh_columns=refresh,
                       judge=not (s.smooth_output and not cold))
    params = result.params.astype(np.float64)
    evaluation = result.evaluation
    start_done = -1
    if spread:
        start_done = state.start_done + result.iterations
        if result.converged or start_done >= _start_budget(s):
            start_done = -1
        else:  # not converged yet: shipped as "poor", the start goes on next frame
            evaluation = replace(evaluation, verdict=Verdict.POOR)
    unconverged = start_done >= 0
    root_kf, pose_kf, filtered, _ = _update_filters(context, state, params, t_ns)
    changed = False
    if s.smooth_output and not cold:  # ship the Kalman posterior (constant velocity: no lag at steady speed)
        params, changed = np.where(free & ~context.shape, filtered, params), True
    slewing = False
    if state.slewing and state.params is not None:
        params, slewing = _slew_limit(context, model, state.params, params, (t_ns - state.t_ns) * 1e-9)
        changed |= slewing
    if changed or evaluation is None:  # judge what ships
        params = params.astype(np.float32).astype(np.float64)
        evaluation = evaluate(model, params.astype(np.float32), targets, free, prior, s.fit)
    params32 = params.astype(np.float32)
    shape_sum, shape_count, shape_held = state.shape_sum, state.shape_count, state.shape_held
    if shape_held is None and evaluation.verdict == Verdict.GOOD:
        shape_sum, shape_count = shape_sum + params[context.shape], shape_count + 1
        if shape_count >= s.shape_frames:
            shape_held = shape_sum / shape_count
    calibrating = (s.offset_frames > 0 and state.offset_round < s.offset_rounds and state.shape_held is not None
                   and evaluation.verdict == Verdict.GOOD and hasattr(model, "set_keypoint_offsets"))
    if calibrating:
        state = _calibrate_offsets(context, state, params, targets, evaluation)
    # a slew-limited pose lags the data on purpose; an unconverged start has not reached it yet
    far = body_far(targets, evaluation, s) & (not slewing) & (not unconverged)
    since = np.full(len(far), _NEVER_NS) if state.body_far_since_ns is None else state.body_far_since_ns
    since = np.where(far, np.where(since == _NEVER_NS, t_ns, since), _NEVER_NS)
    new = replace(state, params=params, t_ns=t_ns, t_fit_ns=t_ns, body_far_since_ns=since, root_kf=root_kf,
                  pose_kf=pose_kf,
                  slewing=slewing, shape_sum=shape_sum, shape_count=shape_count, shape_held=shape_held,
                  jacobian=result.jacobian, jacobian_phase=(state.jacobian_phase + 1) % phases,
                  t_good_ns=t_ns if evaluation.verdict == Verdict.GOOD or slewing or unconverged else state.t_good_ns,
                  start_done=start_done)
    return new, _output(context, params32, evaluation, targets, result.iterations, "fit")
