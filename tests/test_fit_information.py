"""Uncertainty-weighted data term: per-point information from the rig, the targets' metric, the solver using it."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from streamer.calibration import Camera, Rig
from streamer.fitting import FitSettings, Prior, evaluate, fit_frame, fit_targets, model_keypoints
from streamer.fitting.information import point_information
from tests.test_fit_body import ChainBody, random_poses


def ring_rig(views: int = 4, radius: float = 4.0, distortion: bool = False) -> Rig:
    """Cameras on a ring at 1.5 m height looking at the origin, 1280x720, f = 1000 px."""
    cameras = []
    for v in range(views):
        angle = 2 * np.pi * v / views
        centre = np.array([radius * np.cos(angle), radius * np.sin(angle), 1.5])
        forward = -centre / np.linalg.norm(centre)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        R = np.stack([right, down, forward])  # world -> camera rows
        K = np.array([[1000.0, 0, 640], [0, 1010.0, 360], [0, 0, 1]])
        dist = np.array([0.05, -0.01, 0.0, 0.0, 0.0]) if distortion else None
        cameras.append(Camera(f"cam{v}", (1280, 720), K, dist, R, -R @ centre))
    return Rig(tuple(cameras))


def numeric_information(rig: Rig, point: np.ndarray, views: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """sum over `views` of J^T J, J the central-difference Jacobian of rig.project at `point`."""
    jac = np.zeros((len(rig), 2, 3))
    for i in range(3):
        d = np.zeros(3)
        d[i] = step
        jac[:, :, i] = (rig.project((point + d)[None]) - rig.project((point - d)[None]))[:, 0] / (2 * step)
    jac = jac[views]
    return np.einsum("vai,vaj->ij", jac, jac)


def test_information_is_the_reprojection_jacobian_gram_matrix():
    """Without distortion, Lambda equals sum_v J_v^T J_v of the real projection over the inlier views only."""
    rig = ring_rig()
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.8, 0.8, (6, 3)) + [0, 0, 1.0]
    inliers = rng.random((6, 4)) < 0.7
    inliers[:, :2] = True
    info = point_information(points, inliers, rig)
    for k in range(6):
        expected = numeric_information(rig, points[k], inliers[k])
        np.testing.assert_allclose(info[k], expected, rtol=1e-5, atol=1e-3 * np.abs(expected).max())
    # two opposite cameras see the same line: the direction between them (depth) carries no information
    opposite = np.zeros((1, 4), bool)
    opposite[0, [0, 2]] = True
    eig = np.linalg.eigvalsh(point_information(np.zeros((1, 3)) + [0, 0, 1.5], opposite, rig)[0])
    assert eig[0] < 1e-6 * eig[-1]
    # distortion is ignored: within a few percent of the distorted projection's information
    distorted = ring_rig(distortion=True)
    full = np.ones((1, 4), bool)
    p = np.array([[0.5, -0.4, 1.2]])
    np.testing.assert_allclose(point_information(p, full, distorted)[0], numeric_information(distorted, p[0], full[0]),
                               rtol=0.08, atol=0.08 * 1000**2 / 16)


def test_information_is_zero_where_missing_and_shapes_are_checked():
    rig = ring_rig()
    points = np.array([[0.0, 0.0, 1.0], [np.nan, 0.0, 1.0], [0.1, 0.2, 0.3]])
    inliers = np.array([[True] * 4, [True] * 4, [False] * 4])
    info = point_information(points, inliers, rig)
    assert np.all(info[1:] == 0) and np.all(np.isfinite(info))
    assert np.all(np.linalg.eigvalsh(info[0]) > 0)
    with pytest.raises(ValueError, match="inliers"):
        point_information(points, inliers[:, :3], rig)


def test_metric_is_scaled_to_a_typical_point_and_floored():
    """The weighted-median point's metric has mean eigenvalue 1; a degenerate direction keeps the floor;
    information that is not finite or has no positive eigenvalue makes the point invalid."""
    rig = ring_rig()
    rng = np.random.default_rng(1)
    points = rng.uniform(-0.5, 0.5, (20, 3)) + [0, 0, 1.0]
    inliers = np.ones((20, 4), bool)
    points[0] = [0.3, 0.0, 1.5]  # on the line between cameras 0 and 2 (at 1.5 m height, facing each other)
    inliers[0] = [True, False, True, False]  # that opposite pair only: its depth is not observed
    info = point_information(points, inliers, rig)
    info[3] = np.nan
    info[4] = 0.0
    targets = fit_targets(points, inliers=inliers, information=info)
    assert not targets.valid[[3, 4]].any() and targets.weights[[3, 4]].sum() == 0
    assert targets.valid.sum() == 18 and targets.usable
    eig = np.linalg.eigvalsh(targets.metric)
    assert np.all(np.isfinite(targets.metric)) and np.allclose(targets.metric, np.swapaxes(targets.metric, 1, 2))
    mean = eig[targets.valid].mean(1)
    assert np.min(np.abs(mean - 1.0)) < 1e-9 and 0.3 < np.median(mean) < 3.0
    assert eig[0, 0] == pytest.approx(targets_floor(), rel=1e-9)
    np.testing.assert_allclose(targets.metric[[3, 4]], np.broadcast_to(np.eye(3), (2, 3, 3)))
    # scaling the information leaves the metric unchanged (only its shape across points matters)
    scaled = fit_targets(points, inliers=inliers, information=info * 7.0)
    np.testing.assert_allclose(scaled.metric, targets.metric, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="information"):
        fit_targets(points, information=info[:, :2])


def targets_floor() -> float:
    from streamer.fitting.targets import TargetSettings

    return TargetSettings().min_metric_eigenvalue


@hyp_settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=8 * 9, max_size=8 * 9),
       st.lists(st.floats(-2, 2), min_size=8 * 3, max_size=8 * 3))
def test_any_information_input_gives_a_safe_metric(values, coords):
    """Whatever crosses the boundary (NaN, inf, negative, asymmetric): no exception, finite symmetric metric
    with eigenvalues >= the floor on valid points, identity elsewhere."""
    info = np.array(values).reshape(8, 3, 3)
    targets = fit_targets(np.array(coords).reshape(8, 3), information=info, settings=_loose())
    assert targets.metric is not None and np.all(np.isfinite(targets.metric))
    assert np.allclose(targets.metric, np.swapaxes(targets.metric, 1, 2))
    if targets.valid.any():
        eig = np.linalg.eigvalsh(targets.metric[targets.valid])
        assert np.all(eig[:, 0] >= targets_floor() - 1e-12 * np.maximum(1.0, eig[:, -1]))  # up to rounding
    invalid = ~targets.valid
    np.testing.assert_array_equal(targets.metric[invalid], np.broadcast_to(np.eye(3), (invalid.sum(), 3, 3)))


def _loose():
    from streamer.fitting.targets import TargetSettings

    return TargetSettings(min_valid=1)


def test_fit_with_a_metric_moves_error_into_the_poorly_observed_directions():
    """Targets the model cannot meet exactly (5 cm noise), each seen well in two directions and badly (x0.02) in
    its own random third: fitting in the metric leaves smaller residuals along the well-observed directions
    than the Euclidean fit, scores a lower metric loss, and reports exactly the loss of its shipped parameters."""
    model = ChainBody()
    rng = np.random.default_rng(3)
    truth = random_poses(model, 1, rng)[0].numpy()
    defined = model.keypoint_defined.numpy()
    kp = model_keypoints(model, truth)
    noisy = kp + rng.normal(0, 0.05, kp.shape)
    q, _ = np.linalg.qr(rng.normal(size=(70, 3, 3)))
    weak = q[:, :, 0]  # (70, 3) unit vectors
    info = np.eye(3)[None] - 0.98 * np.einsum("ki,kj->kij", weak, weak)
    free = model.movable.numpy()
    reference = model.default_params()[0].numpy()
    settings = FitSettings(huber_m=1.0, max_iterations_cold=100, rel_tolerance=1e-9)
    out = {}
    for name, information in (("euclidean", None), ("metric", info)):
        targets = fit_targets(noisy, defined=defined, information=information)
        result = fit_frame(model, targets, truth, free, Prior(reference=reference), settings, cold=True,
                           method="difference")
        resid = result.evaluation.keypoints[defined] - noisy[defined]
        strong = resid - np.einsum("ki,ki->k", resid, weak[defined])[:, None] * weak[defined]
        out[name] = result, np.sqrt((strong**2).sum(1).mean())
    metric_targets = fit_targets(noisy, defined=defined, information=info)
    assert out["metric"][1] < 0.8 * out["euclidean"][1], (out["metric"][1], out["euclidean"][1])
    loss = {name: evaluate(model, r.params, metric_targets, free, Prior(), settings).data_loss
            for name, (r, _) in out.items()}
    assert loss["metric"] < loss["euclidean"]
    shipped = out["metric"][0]
    again = evaluate(model, shipped.params, metric_targets, free, Prior(reference=reference), settings)
    assert again.loss == shipped.evaluation.loss and again.data_loss == shipped.evaluation.data_loss
