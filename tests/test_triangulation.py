"""Robust triangulation: synthetic ground truth (noise, gross outliers, missing views), contract, fuzz."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import Points3D, decode, encode
from streamer.body.mhr70 import FLIP_PERMUTATION
from streamer.calibration import Camera, Rig
from streamer.triangulation import MIN_VIEWS, TriangulationSettings, triangulate_dlt, triangulate_robust
from tools.bench_triangulation import make_scene


def errors(results, truth) -> np.ndarray:
    return np.linalg.norm(np.stack([r.points for r in results]) - truth, axis=-1)


@pytest.fixture(scope="module")
def scene8():
    return make_scene(8, 25, seed=11)


def assert_contract(result, V: int, K: int):
    assert result.points.shape == (K, 3) and result.n_views.shape == (K,) and result.n_views.dtype == np.uint8
    assert result.inliers.shape == (K, V) and result.reproj_px.shape == (K, V) and result.confidence.shape == (K,)
    finite = np.all(np.isfinite(result.points), axis=1)
    assert np.array_equal(finite, result.n_views >= MIN_VIEWS)  # missing is NaN *and* n_views < 2
    assert np.array_equal(result.inliers.sum(axis=1)[finite], result.n_views[finite])
    assert not result.inliers[~finite].any() and np.all(result.confidence[~finite] == 0)
    assert np.all((result.confidence >= 0) & (result.confidence <= 1))


def test_outliers_barely_hurt_robust_but_ruin_plain_dlt(scene8):
    rig, truth = scene8["rig"], scene8["truth"]
    robust_clean = errors([triangulate_robust(p, None, rig) for p in scene8["clean"]], truth)
    robust_outl = errors([triangulate_robust(p, None, rig) for p in scene8["outliers"]], truth)
    dlt_clean = errors([triangulate_dlt(p, None, rig) for p in scene8["clean"]], truth)
    dlt_outl = errors([triangulate_dlt(p, None, rig) for p in scene8["outliers"]], truth)
    assert scene8["outlier_mask"].mean() == pytest.approx(0.1, abs=0.02)
    assert np.isfinite(robust_outl).all() and np.isfinite(robust_clean).all()
    assert robust_clean.mean() < 8e-3  # 2 px noise, 8 views: a few mm
    assert robust_outl.mean() <= 1.5 * robust_clean.mean()
    assert dlt_outl.mean() > 5 * dlt_clean.mean()  # plain DLT degrades
    assert robust_clean.mean() <= 1.05 * dlt_clean.mean()  # and robust costs nothing without outliers


def test_outlier_views_are_flagged(scene8):
    rig, mask = scene8["rig"], scene8["outlier_mask"]
    flagged = [triangulate_robust(p, None, rig).inliers.T for p in scene8["outliers"]]  # (V, K) each
    flagged = ~np.stack(flagged)
    gross = mask & (np.linalg.norm(scene8["outliers"] - scene8["clean"], axis=-1) > 30)
    assert flagged[gross].mean() > 0.97  # gross outliers are excluded
    assert flagged[~mask].mean() < 0.02  # good views are kept


def test_exact_data_is_reproduced_by_both_methods():
    scene = make_scene(4, 3, seed=3, noise_px=0.0, outlier_fraction=0.0)
    for method in (triangulate_robust, triangulate_dlt):
        result = method(scene["clean"][0], None, scene["rig"])
        assert np.max(np.abs(result.points - scene["truth"][0])) < 1e-6
        assert result.mean_reproj_px < 1e-4


def test_fewer_than_two_views_is_missing():
    scene = make_scene(4, 1, seed=4, outlier_fraction=0.0)
    pixels = scene["clean"][0].copy()
    confidence = np.ones(pixels.shape[:2])
    pixels[1:, 0] = np.nan  # point 0: one view
    pixels[:, 1] = np.nan  # point 1: none
    confidence[:3, 2] = 0.0  # point 2: one view with confidence
    result = triangulate_robust(pixels, confidence, scene["rig"])
    assert_contract(result, 4, 70)
    assert np.isnan(result.points[:3]).all() and (result.n_views[:3] < 2).all()
    assert np.isfinite(result.points[3:]).all() and (result.n_views[3:] == 4).all()
    assert np.isnan(result.reproj_px[1]).all() and np.isfinite(result.reproj_px[3]).all()


def test_all_nan_and_degenerate_inputs_return_all_missing():
    rig = make_scene(3, 1, seed=5)["rig"]
    for method in (triangulate_robust, triangulate_dlt):
        result = method(np.full((3, 70, 2), np.nan), np.ones((3, 70)), rig)
        assert_contract(result, 3, 70)
        assert np.isnan(result.points).all() and not result.n_views.any() and np.isnan(result.mean_reproj_px)
        assert method(np.zeros((3, 0, 2)), None, rig).points.shape == (0, 3)
        single = method(np.zeros((1, 5, 2)), None, rig.subset([rig.names[0]]))
        assert np.isnan(single.points).all()
    with pytest.raises(ValueError, match="3 cameras"):
        triangulate_robust(np.zeros((2, 5, 2)), None, rig)
    with pytest.raises(ValueError, match="confidence"):
        triangulate_robust(np.zeros((3, 5, 2)), np.ones((3, 4)), rig)


def test_temporal_prior_breaks_a_left_right_tie():
    scene = make_scene(4, 1, seed=6, noise_px=0.5, outlier_fraction=0.0)
    rig, truth = scene["rig"], scene["truth"][0]
    pixels = scene["clean"][0].copy()
    pixels[2:] = pixels[2:, FLIP_PERMUTATION]  # two of four views swap left and right: a tie
    sides = FLIP_PERMUTATION != np.arange(70)
    prior = truth + np.random.default_rng(0).normal(0, 0.01, truth.shape)
    with_prior = triangulate_robust(pixels, None, rig, prior=prior)
    err = np.linalg.norm(with_prior.points - truth, axis=1)
    assert np.all(err[sides] < 0.02) and np.all(with_prior.n_views[sides] >= 2)
    mirrored_prior = triangulate_robust(pixels, None, rig, prior=truth[FLIP_PERMUTATION])
    mirrored = np.linalg.norm(mirrored_prior.points - truth[FLIP_PERMUTATION], axis=1)
    assert np.mean(mirrored[sides] < 0.02) > 0.9  # the prior decides ties (not a view majority)
    with pytest.raises(ValueError, match="prior"):
        triangulate_robust(pixels, None, rig, prior=truth[:5])


def test_confidence_weights_and_threshold():
    scene = make_scene(6, 1, seed=7, outlier_fraction=0.0)
    rig, truth = scene["rig"], scene["truth"][0]
    pixels = scene["clean"][0].copy()
    pixels[0] += 40.0  # one view off by ~57 px everywhere
    strict = triangulate_robust(pixels, None, rig, TriangulationSettings(threshold_px=15.0))
    assert not strict.inliers[:, 0].any() and np.nanmedian(strict.reproj_px[:, 0]) > 30
    loose = triangulate_robust(pixels, None, rig, TriangulationSettings(threshold_px=1000.0))
    assert loose.inliers[:, 0].all()
    assert np.linalg.norm(strict.points - truth, axis=1).mean() < np.linalg.norm(loose.points - truth, axis=1).mean()
    confidence = np.ones((6, 70))
    confidence[0] = 0.05
    low = triangulate_robust(pixels, confidence, rig, TriangulationSettings(min_confidence=0.1))
    assert not low.inliers[:, 0].any() and np.isnan(low.reproj_px[:, 0]).all()


def test_result_fits_the_points3d_message(scene8):
    rig = scene8["rig"]
    r = triangulate_robust(scene8["outliers"][0], None, rig)
    msg = Points3D(t_ns=1, frame_index=0, person_id=0, calib_version=rig.version, cameras=rig.names,
                   sources_seq=np.zeros(len(rig), np.int64), sync_spread_ns=0, points=r.points.astype(np.float32),
                   n_views=r.n_views, inliers=r.inliers, reproj_px=r.reproj_px.astype(np.float32),
                   confidence=r.confidence.astype(np.float32), mean_reproj_px=r.mean_reproj_px, usable=True)
    _, back = decode(encode(msg))
    assert np.array_equal(back.n_views, r.n_views) and np.allclose(back.points, r.points, equal_nan=True)


_pixel = st.one_of(st.floats(-1e4, 1e4), st.just(np.nan), st.just(np.inf), st.just(-np.inf), st.just(1e300))


@settings(max_examples=120, deadline=None)
@given(pixels=hnp.arrays(np.float64, (5, 6, 2), elements=_pixel),
       confidence=hnp.arrays(np.float64, (5, 6), elements=st.one_of(st.floats(-1, 2), st.just(np.nan))))
def test_fuzzed_inputs_never_raise_and_keep_the_contract(pixels, confidence):
    rig = _FUZZ_RIG
    for result in (triangulate_robust(pixels, confidence, rig), triangulate_dlt(pixels, confidence, rig)):
        assert_contract(result, 5, 6)


_FUZZ_RIG = make_scene(5, 1, seed=8)["rig"]


def _distorted_rig() -> Rig:
    """Three cameras covering the OpenCV models the kernel re-implements: plain, strong radial (a webcam),
    rational + thin prism."""
    rng = np.random.default_rng(9)
    dists = [np.zeros(0), np.array([-0.42, 0.25, 0.002, -0.001, -0.08]),
             np.array([0.3, -0.1, 0.001, 0.002, 0.01, 0.35, -0.05, 0.02, 0.001, -0.002, 0.0015, 0.0005])]
    cameras = []
    for v, dist in enumerate(dists):
        R = cv2.Rodrigues(rng.normal(0, 0.3, 3))[0]
        K = np.array([[950.0 + 50 * v, 0, 640.0], [0, 930.0 + 50 * v, 360.0], [0, 0, 1]])
        cameras.append(Camera(f"c{v}", (1280, 720), K, dist, R, np.array([0.1, -0.2, 3.0])))
    return Rig(tuple(cameras))


def test_kernel_undistortion_and_projection_match_opencv():
    from streamer.triangulation import _camera_arrays, _project_point, _undistort_point

    rig = _distorted_rig()
    intrinsics, dist, R, t = _camera_arrays(rig)
    rng = np.random.default_rng(10)
    pixels = np.stack([rng.uniform(0, 1280, (len(rig), 200)), rng.uniform(0, 720, (len(rig), 200))], axis=-1)
    expected = rig.undistort(pixels)  # cv2.undistortPoints, 12 iterations
    for v, cam in enumerate(rig):
        ours = np.array([_undistort_point(u, w, v, intrinsics, dist) for u, w in pixels[v]])
        assert np.max(np.abs(ours - expected[v]) * cam.K[0, 0]) < 1e-4  # pixels
    points = rng.uniform(-1.0, 1.0, (300, 3))
    unused = np.empty((len(rig), 2, 3))  # the Jacobian output, not asked for
    expected = rig.project(points)  # (V, N, 2), agrees with cv2.projectPoints (test_calibration)
    for v in range(len(rig)):
        ours = np.array([_project_point(*p, v, R, t, intrinsics, dist, False, unused) for p in points])
        assert np.allclose(ours, expected[v], atol=1e-6, equal_nan=True)
        assert np.isnan(ours).any() == np.isnan(expected[v]).any()


def test_robust_triangulation_on_strongly_distorted_cameras():
    rig = _distorted_rig()
    truth = np.random.default_rng(12).uniform(-0.4, 0.4, (70, 3))
    pixels = rig.project(truth)
    assert np.isfinite(pixels).all()
    result = triangulate_robust(pixels, None, rig)
    assert np.max(np.abs(result.points - truth)) < 1e-6 and result.mean_reproj_px < 1e-4
    assert (result.n_views == 3).all()


def test_kernel_projection_jacobian_matches_central_differences():
    from streamer.triangulation import _camera_arrays, _project_point

    rig = _distorted_rig()
    intrinsics, dist, R, t = _camera_arrays(rig)
    J = np.empty((len(rig), 2, 3))
    step = 1e-6
    for X in np.random.default_rng(13).uniform(-0.8, 0.8, (20, 3)):
        for v in range(len(rig)):
            with_jacobian = _project_point(*X, v, R, t, intrinsics, dist, True, J)
            assert with_jacobian == _project_point(*X, v, R, t, intrinsics, dist, False, J)
            numeric = np.empty((2, 3))
            for j in range(3):
                offset = np.eye(3)[j] * step
                plus = np.array(_project_point(*(X + offset), v, R, t, intrinsics, dist, False, J))
                minus = np.array(_project_point(*(X - offset), v, R, t, intrinsics, dist, False, J))
                numeric[:, j] = (plus - minus) / (2 * step)
            assert np.allclose(J[v], numeric, rtol=1e-5, atol=1e-3), (v, J[v], numeric)  # px per metre: ~300-3000
