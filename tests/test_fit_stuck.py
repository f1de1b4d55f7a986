"""A track whose shipped pose stays far off the same few measured body points while its verdict stays "good"
(the verdict's inlier RMS averages them over the ~60 well-fitted points) is re-initialised after
`relock_after_s` (`TrackSettings.stuck_body_m` / `stuck_body_points`), on the real Anny body; outlier targets,
far off for a frame each, are not a stuck pose."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol.messages import Verdict
from streamer.body import mhr70
from streamer.fitting import fit_targets
from streamer.fitting.init import model_keypoints
from streamer.fitting.objective import FitEvaluation
from streamer.fitting.targets import FitTargets
from streamer.fitting.track import TrackSettings, body_far, make_context, starts_afresh, track_init, track_step

FPS = 30.0
SWITCH = 15  # frame at which the subject squats


@pytest.fixture(scope="module")
def body():
    from streamer.body.anny_model import AnnyBody

    return AnnyBody()


def _truth(body) -> tuple[np.ndarray, np.ndarray]:
    """(standing (P,), squatting (P,)) float64: both thighs flexed and both knees bent, the rest unchanged."""
    stand = body.default_params(1).to(torch.float64).numpy()[0]
    squat = stand.copy()
    g = body.groups
    for bone, angle in (("upperleg01.L", 1.2), ("upperleg01.R", 1.2), ("lowerleg01.L", -1.6), ("lowerleg01.R", -1.6)):
        squat[g[f"pose:{bone}"].start] = angle
    return stand, squat


def _run(body, settings: TrackSettings, frames: int = 45, seed: int = 3):
    """Track the subject standing, then squatting from frame SWITCH on; every defined point measured with 3 mm
    noise, 3 % of them outliers (about one body point in two frames; 0.3 m off, new ones each frame).
    Returns (per-frame outputs, per-frame body-point truth (T, 21, 3), the frames that restarted the track
    after the first)."""
    rng = np.random.default_rng(seed)
    context = make_context(body, settings)
    defined = body.keypoint_defined.numpy().astype(bool)
    stand, squat = _truth(body)
    truth = {False: model_keypoints(body, stand), True: model_keypoints(body, squat)}
    state, outs, body_truth, restarts = track_init(context), [], [], []
    for k in range(frames):
        kp = truth[k >= SWITCH]
        points = kp + rng.normal(0, 0.003, kp.shape)
        outlier = rng.random(len(kp)) < 0.03
        points[outlier] += rng.normal(0, 0.3, (int(outlier.sum()), 3))
        points = np.where(defined[:, None], points, np.nan)
        targets = fit_targets(points, defined=defined)
        t_ns = int(1e9 + k * 1e9 / FPS)
        if k > 0 and starts_afresh(state, targets, t_ns, context):
            restarts.append(k)
        state, out = track_step(state, targets, t_ns, context)
        outs.append(out)
        body_truth.append(kp[mhr70.BODY])
    return outs, np.array(body_truth), restarts


def _body_error_m(outs, body_truth) -> np.ndarray:
    return np.array([np.linalg.norm(o.keypoints[mhr70.BODY] - t, axis=1).mean() for o, t in zip(outs, body_truth)])


def test_a_good_verdict_with_body_points_far_off_still_relocks(body):
    """A slow parameter filter (the shipped pose crawls after the data, as a warm start caught in a wrong minimum
    does) leaves the legs far off after the subject squats: judged "good" throughout, so the verdict alone never
    relocks; the body test restarts the track once, relock_after_s after the legs went far off (not on the
    outliers), and the legs are right after."""
    crawl = {"pose_accel_noise": 1e-3, "root_accel_noise": 1e-3, "param_meas_std": 1.0, "offset_frames": 0,
             "shape_frames": 5}
    runs = {points: _run(body, TrackSettings(stuck_body_points=points, **crawl)) for points in (2, 0)}
    outs, truth, restarts = runs[0]  # the body test off: the behaviour before it
    error = _body_error_m(outs, truth)
    assert restarts == [] and all(o.evaluation.verdict == Verdict.GOOD for o in outs)
    assert error[:SWITCH].max() < 0.015 and error[-10:].min() > 0.05  # stuck, and judged good
    outs, truth, restarts = runs[2]
    error = _body_error_m(outs, truth)
    assert len(restarts) == 1 and SWITCH + 0.5 * FPS <= restarts[0] <= SWITCH + 0.5 * FPS + 2  # 0.5 s far, +1 frame
    assert error[:SWITCH].max() < 0.015 and error[restarts[0]:].max() < 0.01


def test_body_far_counts_body_points_in_the_targets_metric():
    """Two body points 8 cm off make a fit "far off"; one does not, nor do non-body points, nor a body point off
    along a direction its metric says the cameras barely see (a two-view point's depth)."""
    k = mhr70.NUM_KEYPOINTS
    points = np.zeros((k, 3))
    hips = [mhr70.index_of("left-hip"), mhr70.index_of("right-hip")]
    hand = int(mhr70.LEFT_HAND[0])

    def far(moved: dict[int, np.ndarray], metric: np.ndarray | None = None, settings=None) -> list:
        keypoints = points.copy()
        for i, shift in moved.items():
            keypoints[i] += shift
        targets = fit_targets(points)
        if metric is not None:
            targets = FitTargets(targets.points, targets.weights, targets.valid, targets.usable, targets.reason, metric)
        evaluation = FitEvaluation(0.0, 0.0, 0.0, 1.0, k, Verdict.GOOD, np.zeros(k), keypoints)
        far_rows = body_far(targets, evaluation, settings or TrackSettings())
        return np.flatnonzero(far_rows).tolist()  # the BODY rows are the MHR-70 indices 0-20

    off = np.array([0.08, 0.0, 0.0])
    assert far({hips[0]: off, hips[1]: off}) == hips
    assert far({hips[0]: off, hand: off, hand + 1: off}) == hips[:1]
    depth_blind = np.broadcast_to(np.diag([0.02, 1.0, 1.0]), (k, 3, 3)).copy()  # x barely seen
    assert far({hips[0]: off, hips[1]: off}, depth_blind) == []
    assert far({hips[0]: off[[1, 0, 2]], hips[1]: off[[1, 0, 2]]}, depth_blind) == hips  # along y: seen
    assert far({hips[0]: off, hips[1]: off}, settings=TrackSettings(stuck_body_m=0.09)) == []
