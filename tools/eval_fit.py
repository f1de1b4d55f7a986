"""Fitter accuracy: raw robust triangulation vs the warm-started fit, on the synthetic stage against truth,
and on a real Pose2Sim trial by reprojection (in-sample and leave-one-camera-out; `evaluate_pose2sim_fit`).

Pipeline per frame (subject only, no distractor, so the fitter is judged alone): the synthetic
stage's kp2d of every camera -> `triangulate_robust` (previous points as its prior) -> the
fitter's `track_step` on the Anny body. Metrics over the MHR-70 body points (`BODY_POINTS`):

- mpjpe_mm: mean distance to the true points (fit: every frame after the warm-up; raw: its valid points);
- jitter: mean |x[t+1] - 2 x[t] + x[t-1]| (mm per frame^2) over triples of frames where the raw
  point is valid in all three (the same triples for raw, fit and truth);
- lag_frames: least-squares time shift of the error along the true velocity, e = -lag * v
  (v per frame); measured on the walk segment; `added lag` = fit lag - raw lag.

Both give the fitter's targets the metric of `streamer.fitting.information.point_information`
(from each point's inlier views), as the fitter node does, unless `information=False`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from streamer.body import mhr70
from streamer.body.anny_model import AnnyBody
from streamer.fitting import fit_targets
from streamer.fitting.information import point_information
from streamer.fitting.track import TrackContext, TrackOutput, TrackSettings, make_context, track_init, track_step
from streamer.synthetic.observe import ObservationSettings
from streamer.synthetic.rig import RigSettings
from streamer.synthetic.stage import StageSettings, SyntheticStage
from streamer.triangulation import triangulate_robust

__all__ = [
    "BODY_POINTS", "Pose2SimFit", "SyntheticRun", "evaluate_pose2sim_fit", "held_out_reprojection", "jitter_mm",
    "lag_frames", "metrics", "pose2sim_points", "pose2sim_reprojection", "run_pose2sim_fit", "run_synthetic",
    "synthetic_frames",
]

BODY_POINTS = np.r_[mhr70.BODY, mhr70.index_of("left-wrist"), mhr70.index_of("right-wrist")]


@dataclass
class SyntheticRun:
    """truth, raw, fit: (T, 70, 3) metres (raw NaN where missing); fit_ms / fit_cpu_ms: (T,) per-frame
    track_step wall-clock / process CPU time (ms, fastest of the repeats);
    iterations: (T,) LM steps; verdicts: (T,) str; warmup: frames excluded from the metrics."""

    truth: np.ndarray
    raw: np.ndarray
    fit: np.ndarray
    fit_ms: np.ndarray
    fit_cpu_ms: np.ndarray
    iterations: np.ndarray
    verdicts: list[str]
    warmup: int
    fps: float
    walk_frames: int
    metrics: dict[str, float] = field(default_factory=dict)


def synthetic_frames(stage: SyntheticStage, frames: int) -> tuple[np.ndarray, list, np.ndarray]:
    """(truth (T, 70, 3), triangulations (T,), times_ns (T,)) of the stage's subject."""
    rig = stage.rig
    truths, tris, times = [], [], []
    prior = None
    for k in range(frames):
        pixels = np.full((len(rig.names), 70, 2), np.nan)
        conf = np.zeros((len(rig.names), 70))
        for v, cam in enumerate(rig.names):
            msg = stage.observe(k, cam)
            if msg is not None and msg.persons:
                pixels[v] = msg.persons[0].keypoints
                conf[v] = msg.persons[0].confidence
        tri = triangulate_robust(pixels, conf, rig, prior=prior)
        prior = tri.points
        truths.append(stage.truth_points(k)[0])
        tris.append(tri)
        times.append(stage.frame_time_ns(k))
    return np.stack(truths), tris, np.array(times)


def jitter_mm(points: np.ndarray, valid: np.ndarray) -> float:
    """Mean |second difference| in mm over (T, N, 3) points, on triples where `valid` (T, N) holds."""
    acc = np.linalg.norm(points[2:] - 2 * points[1:-1] + points[:-2], axis=-1)
    ok = valid[2:] & valid[1:-1] & valid[:-2]
    return float(acc[ok].mean() * 1000) if ok.any() else float("nan")


def lag_frames(estimate: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    """Least-squares lag (frames) of (T, N, 3) `estimate` behind `truth` along its velocity."""
    v = np.gradient(truth, axis=0)
    e = estimate - truth
    ok = valid & np.isfinite(e).all(-1)
    return float(-(e[ok] * v[ok]).sum() / (v[ok] * v[ok]).sum())


def run_synthetic(
    *, seconds: float = 6.0, seed: int = 0, outlier_rate: float = 0.10, noise_px: float = 2.0, cameras: int = 4,
    fps: float = 30.0, body: AnnyBody | None = None, context: TrackContext | None = None, warmup_s: float = 1.0,
    repeats: int = 1, information: bool = True,
) -> SyntheticRun:
    """Run the fitter over a synthetic take (the motion cycle starts with its 6 s walk).

    repeats: track the take this many times (deterministic); fit_ms keeps each frame's fastest run.
    information: targets with the `point_information` metric (as the fitter node); False: Euclidean."""
    body = body or AnnyBody()
    settings = StageSettings(
        rig=RigSettings(cameras=cameras, fps=fps),
        observation=ObservationSettings(noise_px=noise_px, outlier_rate=outlier_rate),
        seed=seed, distractor=False)
    stage = SyntheticStage(settings, body=body)
    frames = int(round(seconds * fps))
    truth, tris, times = synthetic_frames(stage, frames)
    context = context or make_context(body)
    targets = [fit_targets(tri.points, n_views=tri.n_views, confidence=tri.confidence, defined=context.defined,
                           information=point_information(tri.points, tri.inliers, stage.rig) if information else None,
                           settings=context.settings.targets) for tri in tris]
    fit = np.full_like(truth, np.nan)
    fit_ms, fit_cpu_ms = np.full(frames, np.inf), np.full(frames, np.inf)
    iterations, verdicts = np.zeros(frames, int), []
    for _ in range(repeats):  # identical work each time: per frame, the fastest run shows the cost without the load
        state = track_init(context)
        verdicts = []
        for k in range(frames):
            t0, c0 = time.perf_counter(), time.process_time()
            state, out = track_step(state, targets[k], int(times[k]), context)
            fit_cpu_ms[k] = min(fit_cpu_ms[k], (time.process_time() - c0) * 1000)
            fit_ms[k] = min(fit_ms[k], (time.perf_counter() - t0) * 1000)
            if out is not None:
                fit[k] = _finite_keypoints(out)
                iterations[k] = out.iterations
                verdicts.append(out.evaluation.verdict)
            else:
                verdicts.append("none")
    raw = np.stack([t.points for t in tris])
    walk = min(frames, int(6.0 * fps))
    run = SyntheticRun(truth, raw, fit, fit_ms, fit_cpu_ms, iterations, verdicts, int(warmup_s * fps), fps, walk)
    run.metrics = metrics(run)
    return run


def _finite_keypoints(out: TrackOutput) -> np.ndarray:
    return np.where(out.flags[:, None] > 0, out.keypoints, np.nan).astype(np.float64)


def metrics(run: SyntheticRun) -> dict[str, float]:
    """The figures of module docstring, over frames after the warm-up, body points only."""
    w, b = run.warmup, BODY_POINTS
    truth, raw, fit = run.truth[w:, b], run.raw[w:, b], run.fit[w:, b]
    raw_valid = np.isfinite(raw).all(-1)
    fit_valid = np.isfinite(fit).all(-1)
    err_fit = np.linalg.norm(fit - truth, axis=-1)
    err_raw = np.linalg.norm(raw - truth, axis=-1)
    walk = slice(0, max(3, run.walk_frames - w))
    jit_raw = jitter_mm(raw, raw_valid)
    jit_fit = jitter_mm(fit, raw_valid & fit_valid)
    return {
        "mpjpe_mm": float(err_fit[fit_valid].mean() * 1000),
        "raw_mpjpe_mm": float(err_raw[raw_valid].mean() * 1000),
        "raw_valid_fraction": float(raw_valid.mean()),
        "jitter_fit_mm": jit_fit,
        "jitter_raw_mm": jit_raw,
        "jitter_truth_mm": jitter_mm(truth, raw_valid),
        "jitter_ratio": jit_raw / jit_fit,
        "lag_fit_frames": lag_frames(fit[walk], truth[walk], fit_valid[walk]),
        "lag_raw_frames": lag_frames(raw[walk], truth[walk], raw_valid[walk]),
        "good_fraction": float(np.mean([v == "good" for v in run.verdicts[w:]])),
    }


@dataclass
class Pose2SimFit:
    """A Pose2Sim trial (`tools.evaluate.Pose2SimTrial`: rig, pixels, confidence, raw points) and the
    fitter's output on it: fit (F, 70, 3) metres, NaN where not shipped; verdicts (F,); fit_ms (F,) wall-clock."""

    trial: object
    fit: np.ndarray
    verdicts: list[str]
    fit_ms: list[float]


def run_pose2sim_fit(
    trial_dir, *, calibration=None, person: int = 0, min_confidence: float = 0.3, fps: float = 60.0,
    body: AnnyBody | None = None, settings: TrackSettings | None = None, information: bool = True,
) -> Pose2SimFit:
    """Triangulate a Pose2Sim trial (robust, causal prior) and track the subject with the fitter, causally.

    information: give each frame's targets the metric of `point_information` from the trial's rig and
    each point's inlier views (as the fitter node does); False: the Euclidean data term."""
    from tools.evaluate import pose2sim_trial
    from streamer.triangulation import TriangulationSettings

    trial = pose2sim_trial(trial_dir, calibration=calibration, person=person, fps=fps,
                           settings=TriangulationSettings(min_confidence=min_confidence))
    context = make_context(body or AnnyBody(), settings or TrackSettings())
    fit, verdicts, fit_ms = _track(trial.results, trial.rig, trial.frames, fps, context, information)
    return Pose2SimFit(trial, fit, verdicts, fit_ms)


def _track(results: list, rig, frames: np.ndarray, fps: float, context: TrackContext, information: bool
           ) -> tuple[np.ndarray, list[str], list[float]]:
    """Track one subject through per-frame `Triangulation`s of `rig` -> (fit (F, 70, 3), verdicts, fit_ms)."""
    state = track_init(context)
    fit = np.full((len(results), 70, 3), np.nan)
    verdicts, fit_ms = [], []
    for f, result in enumerate(results):
        info = point_information(result.points, result.inliers, rig) if information else None
        targets = fit_targets(result.points, n_views=result.n_views, confidence=result.confidence,
                              defined=context.defined, information=info, settings=context.settings.targets)
        t0 = time.perf_counter()
        state, out = track_step(state, targets, int(round(frames[f] * 1e9 / fps)) + 1, context)
        fit_ms.append((time.perf_counter() - t0) * 1000)
        if out is not None:
            fit[f] = _finite_keypoints(out)
            verdicts.append(out.evaluation.verdict)
    return fit, verdicts, fit_ms


def held_out_reprojection(run: Pose2SimFit, context: TrackContext, *, min_confidence: float = 0.3,
                          information: bool = True) -> dict[str, float]:
    """Leave-one-camera-out: for each camera, triangulate (robust, causal prior) and fit from the other
    cameras only, and score both on the left-out camera's observations, which neither has seen.

    Unlike the in-sample score (the raw points reprojected onto the very observations they were
    triangulated from, which favours following each frame's detection noise), this measures how well
    each estimate predicts an independent view. Keys: heldout_fit_median_px, heldout_raw_median_px,
    heldout_ratio (fit / raw), heldout_observations, heldout_<camera>_fit_median_px / _raw_median_px."""
    from streamer.triangulation import TriangulationSettings, triangulate_robust

    trial, mapped = run.trial, pose2sim_points()
    settings = TriangulationSettings(min_confidence=min_confidence)
    err_fit, err_raw, per_camera = [], [], {}
    for v, name in enumerate(trial.rig.names):
        others = [u for u in range(len(trial.rig)) if u != v]
        rig = trial.rig.subset([trial.rig.names[u] for u in others])
        results, prior = [], None
        for f in range(len(trial.frames)):
            result = triangulate_robust(trial.pixels[f, others], trial.confidence[f, others], rig, settings,
                                        prior=prior)
            prior = result.points
            results.append(result)
        raw = np.stack([r.points for r in results])
        fit, _, _ = _track(results, rig, trial.frames, trial.fps, context, information)
        observed = trial.confidence[:, v, mapped] > min_confidence  # (F, M)
        both = observed & np.isfinite(raw[:, mapped]).all(-1) & np.isfinite(fit[:, mapped]).all(-1)
        camera = trial.rig.subset([trial.rig.names[v]])
        for points, out in ((fit, err_fit), (raw, err_raw)):
            projected = camera.project(np.nan_to_num(points[:, mapped], nan=1e6))[:, 0]  # (F, M, 2)
            out.append(np.linalg.norm(projected - trial.pixels[:, v, mapped], axis=-1)[both])
        per_camera[f"heldout_{name}_fit_median_px"] = float(np.median(err_fit[-1]))
        per_camera[f"heldout_{name}_raw_median_px"] = float(np.median(err_raw[-1]))
    fit_med, raw_med = float(np.median(np.concatenate(err_fit))), float(np.median(np.concatenate(err_raw)))
    return {**per_camera, "heldout_fit_median_px": fit_med, "heldout_raw_median_px": raw_med,
            "heldout_ratio": fit_med / raw_med, "heldout_observations": float(sum(len(e) for e in err_fit))}


def pose2sim_reprojection(run: Pose2SimFit, points: np.ndarray, min_confidence: float = 0.3
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(errors (F, V, M) pixels, observed (F, V, M) bool) of `points` (F, 70, 3) against the trial's 2D
    observations (confidence > min_confidence) of the M mapped points (`pose2sim_points`), every view."""
    trial, mapped = run.trial, pose2sim_points()
    observed = trial.confidence[:, :, mapped] > min_confidence
    projected = trial.rig.project(np.nan_to_num(points[:, mapped], nan=1e6))  # (F, V, M, 2)
    return np.where(observed, np.linalg.norm(projected - trial.pixels[:, :, mapped], axis=-1), np.nan), observed


def pose2sim_points() -> np.ndarray:
    """(M,) the MHR-70 indices an OpenPose BODY_25B detection maps to."""
    from streamer.importing.openpose import LAYOUTS

    return np.array(sorted(set(LAYOUTS["body25b"][1].values())))


def evaluate_pose2sim_fit(
    trial_dir, *, calibration=None, person: int = 0, min_confidence: float = 0.3, fps: float = 60.0,
    body: AnnyBody | None = None, settings: TrackSettings | None = None, information: bool = True,
    held_out: bool = True,
) -> dict[str, float]:
    """The fitter on a real Pose2Sim trial (OpenPose BODY_25B, 4 cameras): fitted vs raw triangulated points.

    Both are reprojected into every camera and compared with the same 2D observations: every view's
    observation (confidence > min_confidence) of a mapped MHR-70 point in a frame where both the raw
    and the fitted point exist, whether or not the triangulation kept that view as an inlier. Jitter
    is the mean |acceleration| (mm/frame^2) on frames where the raw point is valid in three consecutive
    frames. Keys: fit_median_reproj_px, raw_median_reproj_px, reproj_ratio (fit / raw),
    fit_inlier_median_px / raw_inlier_median_px (the same, on the triangulation's inlier observations
    only), <camera>_fit_median_px / <camera>_raw_median_px, fit_jitter_mm, raw_jitter_mm, jitter_ratio
    (raw / fit), good_fraction, frames, observations, fit_p50_ms (wall-clock; `bench fit` measures cost);
    with held_out, also the keys of `held_out_reprojection` (four more triangulations and fits)."""
    body = body or AnnyBody()
    settings = settings or TrackSettings()
    run = run_pose2sim_fit(trial_dir, calibration=calibration, person=person, min_confidence=min_confidence,
                           fps=fps, body=body, settings=settings, information=information)
    trial, fit, mapped = run.trial, run.fit, pose2sim_points()
    raw = trial.points
    err_fit, observed = pose2sim_reprojection(run, fit, min_confidence)
    err_raw, _ = pose2sim_reprojection(run, raw, min_confidence)
    raw_valid = np.isfinite(raw[:, mapped]).all(-1)
    fit_valid = np.isfinite(fit[:, mapped]).all(-1)
    both = observed & (raw_valid & fit_valid)[:, None, :]
    inlier = both & np.stack([r.inliers[mapped].T for r in trial.results])
    raw_jit = jitter_mm(raw[:, mapped], raw_valid)
    fit_jit = jitter_mm(fit[:, mapped], raw_valid & fit_valid)
    fit_med = float(np.median(err_fit[both]))
    raw_med = float(np.median(err_raw[both]))
    per_camera = {}
    for v, name in enumerate(trial.rig.names):
        per_camera[f"{name}_fit_median_px"] = float(np.median(err_fit[:, v][both[:, v]]))
        per_camera[f"{name}_raw_median_px"] = float(np.median(err_raw[:, v][both[:, v]]))
    return {
        **per_camera,
        "fit_median_reproj_px": fit_med, "raw_median_reproj_px": raw_med, "reproj_ratio": fit_med / raw_med,
        "fit_inlier_median_px": float(np.median(err_fit[inlier])),
        "raw_inlier_median_px": float(np.median(err_raw[inlier])),
        "fit_jitter_mm": fit_jit, "raw_jitter_mm": raw_jit, "jitter_ratio": raw_jit / fit_jit,
        "good_fraction": float(np.mean([v == "good" for v in run.verdicts])) if run.verdicts else 0.0,
        "frames": float(len(trial.frames)), "observations": float(both.sum()),
        "fit_p50_ms": float(np.median(run.fit_ms)),
        **(held_out_reprojection(run, make_context(body, settings), min_confidence=min_confidence,
                                 information=information) if held_out else {}),
    }
