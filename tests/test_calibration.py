"""Camera / Rig model and calibration files: every real file in ../shared/data, round trips, errors, fuzz."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import CameraCalibration, RigCalibration, decode, encode
from streamer.calibration import Camera, Rig
from streamer.calibration_io import (
    CalibrationError,
    load_calibration,
    load_caliscope,
    load_camera_tables,
    load_qualisys,
    write_caliscope,
)
from tests.shared_data import SHARED


def shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (see ../shared/reference/data.md)")
    return path


# file -> (camera count, posed count, rotation form); from data.md §2.1 and Caliscope 0.11.8's own loader
CAMERA_ARRAYS = {
    "reference__2d_data": (3, 3),
    "reference__base_data": (5, 4),
    "capture_volume_pre_quality_control": (6, 4),
    "charuco_calibration": (4, 4),
    "charuco_calibration_2_cam": (2, 2),
    "larger_calibration_post_monocal": (11, 11),
    "not_sufficient_stereopairs": (6, 0),
    "point_estimate_creation__fully_linked": (11, 11),
    "point_estimate_creation__unlinked_camera": (6, 0),
    "post_monocal": (4, 4),
    "post_optimization": (4, 4),
}


def random_rig(dist_lengths=(0, 4, 5, 8, 12), seed=0) -> Rig:
    rng = np.random.default_rng(seed)
    cams = []
    for i, n in enumerate(dist_lengths):
        K = [[rng.uniform(600, 1200), 0, rng.uniform(600, 680)], [0, rng.uniform(600, 1200), rng.uniform(330, 390)],
             [0, 0, 1]]
        cams.append(Camera.from_rvec(str(i), (1280, 720), K, rng.normal(0, 0.03, n), rng.normal(0, 0.3, 3),
                                     [rng.normal(0, 0.1), rng.normal(0, 0.1), 3.0]))
    return Rig(tuple(cams))


# ---------------------------------------------------------------- model


def test_vectorised_projection_matches_opencv_for_every_distortion_model():
    rig = random_rig()
    points = np.random.default_rng(1).normal(0, 0.4, (200, 3))
    ours = rig.project(points)
    opencv = np.stack([cam.project(points) for cam in rig])
    assert ours.shape == (5, 200, 2)
    assert np.max(np.abs(ours - opencv)) < 1e-6
    batched = rig.project(np.stack([points, points[::-1]]))
    assert batched.shape == (2, 5, 200, 2) and np.allclose(batched[1], ours[:, ::-1])


def test_undistort_inverts_projection_and_nan_stays_nan():
    rig = random_rig((5, 5, 8))
    points = np.random.default_rng(2).normal(0, 0.4, (50, 3))
    pixels = rig.project(points)
    pixels[1, 3] = np.nan
    normalised = rig.undistort(pixels)
    camera = rig.to_camera(points)
    expected = camera[..., :2] / camera[..., 2:]
    assert np.isnan(normalised[1, 3]).all()
    ok = np.isfinite(normalised[..., 0])
    assert np.max(np.abs(normalised[ok] - expected[ok])) < 1e-6


def test_points_behind_a_camera_project_to_nan():
    rig = random_rig((5,))
    cam = rig.cameras[0]
    behind = cam.center - 1.0 * cam.R[2]  # 1 m behind the camera, on its axis
    assert np.isnan(rig.project(behind[None])).all()


def test_version_is_a_content_hash_and_messages_round_trip():
    rig = random_rig()
    same = Rig(tuple(Camera(c.name, c.image_size, c.K.copy(), c.dist.copy(), c.R.copy(), c.t.copy()) for c in rig))
    assert rig.version == same.version and len(rig.version) == 16
    moved = Rig(rig.cameras[:-1] + (Camera("4", (1280, 720), rig.cameras[-1].K, rig.cameras[-1].dist,
                                           rig.cameras[-1].R, rig.cameras[-1].t + 1e-9),))
    assert moved.version != rig.version
    msg = rig.to_message()
    topic, decoded = decode(encode(msg))
    assert topic == "calib" and isinstance(decoded, RigCalibration)
    back = Rig.from_message(decoded)
    assert back.version == rig.version == decoded.version
    decoded.version = "0" * 16
    with pytest.raises(ValueError, match="does not match"):
        Rig.from_message(decoded)


def test_camera_validation_names_the_camera():
    good = dict(K=np.diag([900.0, 900.0, 1.0]), dist=np.zeros(5), R=np.eye(3), t=np.zeros(3))
    with pytest.raises(ValueError, match="camera 'c1'.*rotation"):
        Camera("c1", (640, 480), good["K"], good["dist"], np.eye(3) * 2, good["t"])
    with pytest.raises(ValueError, match="camera 'c1'.*dist"):
        Camera("c1", (640, 480), good["K"], np.zeros(7), good["R"], good["t"])
    with pytest.raises(ValueError, match="camera 'c1'.*skew"):
        Camera("c1", (640, 480), [[900, 1, 320], [0, 900, 240], [0, 0, 1]], None, None, None)
    with pytest.raises(ValueError, match="both"):
        Camera("c1", (640, 480), good["K"], good["dist"], good["R"], None)
    with pytest.raises(KeyError, match="known: 0, 1"):
        random_rig((4, 4)).camera("nope")
    with pytest.raises(ValueError, match="duplicate"):
        Rig((Camera("a", (1, 1)), Camera("a", (1, 1))))


# ---------------------------------------------------------------- real files


@pytest.mark.data
@pytest.mark.parametrize("stem", sorted(CAMERA_ARRAYS))
def test_every_caliscope_camera_array_loads(stem):
    path = shared("caliscope/camera_arrays") / f"{stem}.toml"
    rig = load_calibration(path)
    count, posed = CAMERA_ARRAYS[stem]
    assert len(rig) == count and len(rig.posed()) == posed
    assert [int(n) for n in rig.names] == sorted(int(n) for n in rig.names)  # numeric order: "10" after "9"
    for cam in rig.posed():  # 1-2 px ChArUco reprojection says world->camera in metres: centres within ~10 m
        assert np.linalg.norm(cam.center) < 20 and np.allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-6)


@pytest.mark.data
def test_caliscope_edge_cases():
    arrays = shared("caliscope/camera_arrays")
    base = load_caliscope(arrays / "reference__base_data.toml")
    assert not base.camera("0").has_intrinsics and not base.camera("0").is_posed  # no matrix at all
    quality = load_caliscope(arrays / "capture_volume_pre_quality_control.toml")
    assert quality.camera("4").has_intrinsics and not quality.camera("4").is_posed  # "null" extrinsics
    assert quality.camera("4").image_size == (2376, 1080)
    big = load_caliscope(arrays / "larger_calibration_post_monocal.toml")
    assert big.names[-3:] == ["9", "10", "11"]
    matrix_form = load_caliscope(arrays / "post_optimization.toml").camera("0")  # legacy 3x3 rotation
    assert matrix_form.R[0, 0] == pytest.approx(-0.7070716153979968)
    assert matrix_form.dist[0] == pytest.approx(-0.3321, abs=1e-4)


@pytest.mark.data
@pytest.mark.parametrize("stem", ["post_optimization", "charuco_calibration_2_cam", "reference__base_data"])
def test_legacy_config_equals_camera_array(stem):
    legacy = load_camera_tables(shared("caliscope/legacy_config") / f"{stem}.toml")
    current = load_caliscope(shared("caliscope/camera_arrays") / f"{stem}.toml")
    assert legacy.names == current.names
    assert legacy.posed().version == current.posed().version  # same data, two layouts, same content hash


@pytest.mark.data
def test_charuco_session_array_is_post_optimization():
    session = load_calibration(shared("caliscope/charuco_session") / "camera_array.toml")
    assert session.version == load_calibration(shared("caliscope/camera_arrays") / "post_optimization.toml").version


@pytest.mark.data
def test_pose2sim_toml_and_qualisys_agree():
    folder = shared("pose2sim_demo/calibration")
    toml_rig = load_calibration(folder / "Calib_qualisys.toml")
    qca_rig = load_qualisys(folder / "Calib.qca.txt")
    assert toml_rig.names == qca_rig.names == ["cam_01", "cam_02", "cam_03", "cam_04"]
    for a, b in zip(toml_rig, qca_rig):
        assert a.image_size == b.image_size == (1088, 1920)
        for x, y in ((a.K, b.K), (a.dist, b.dist), (a.R, b.R), (a.t, b.t)):
            assert np.max(np.abs(x - y)) < 1e-12
    cam = toml_rig.camera("cam_01")
    assert cam.K[0, 0] == pytest.approx(1681.24, abs=0.01) and cam.K[1, 2] == pytest.approx(948.14, abs=0.01)
    assert np.allclose(cam.rvec, [1.688, 1.048, -0.420], atol=1e-3)
    assert np.allclose(cam.t, [0.321, 0.956, 2.891], atol=1e-3)


@pytest.mark.data
@pytest.mark.parametrize("stem", ["capture_volume_pre_quality_control", "post_optimization", "reference__base_data"])
def test_caliscope_writer_round_trip(stem, tmp_path):
    rig = load_caliscope(shared("caliscope/camera_arrays") / f"{stem}.toml")
    write_caliscope(rig, tmp_path / "camera_array.toml")
    back = load_caliscope(tmp_path / "camera_array.toml")
    assert back.names == rig.names
    for a, b in zip(rig, back):
        assert a.is_posed == b.is_posed and a.has_intrinsics == b.has_intrinsics and a.image_size == b.image_size
        if a.is_posed:
            assert np.allclose(a.R, b.R, atol=1e-12) and np.allclose(a.t, b.t) and np.allclose(a.K, b.K)
        assert a.extra.get("error") == b.extra.get("error")
    text = (tmp_path / "camera_array.toml").read_text()
    assert ('rotation = "null"' in text) == (len(rig.posed()) < len(rig))


# ---------------------------------------------------------------- errors name file, camera, field


def write_toml(path: Path, data: dict) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


CAM = {"cam_id": 1, "size": [1280, 720], "matrix": [[900.0, 0, 640], [0, 900.0, 360], [0, 0, 1]],
       "distortions": [0.0] * 5, "rotation": [0.0, 0.0, 0.0], "translation": [0.0, 0.0, 1.0]}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"rotation": [0.0, 1.0]}, "rotation"),
        ({"size": "big"}, "size"),
        ({"translation": "null"}, "translation"),
        ({"distortions": [0.1, 0.2, 0.3]}, "distortions"),
        ({"matrix": [[1.0, 2.0], [3.0, 4.0]]}, "matrix"),
        ({"fisheye": True}, "fisheye"),
        ({"cam_id": 7}, "cam_id"),
    ],
)
def test_errors_name_file_camera_and_field(tmp_path, change, field):
    path = write_toml(tmp_path / "camera_array.toml", {"cameras": {"1": {**CAM, **change}}})
    with pytest.raises(CalibrationError) as info:
        load_calibration(path)
    message = str(info.value)
    assert str(path) in message and "camera '1'" in message and f"field {field!r}" in message


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.toml").write_text("[cameras.1\nsize = ")
    with pytest.raises(CalibrationError, match="bad.toml: not valid TOML"):
        load_calibration(tmp_path / "bad.toml")
    (tmp_path / "bad.qca.txt").write_text("<calibration><cameras><camera serial='c9'><fov_video left='0'/>"
                                          "</camera></cameras></calibration>")
    with pytest.raises(CalibrationError, match="camera 'c9': field 'fov_video.top'"):
        load_calibration(tmp_path / "bad.qca.txt")
    with pytest.raises(CalibrationError, match="no \\[cam_N\\]"):
        load_calibration(write_toml(tmp_path / "empty.toml", {"title": "x"}))
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "missing.toml")


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
    st.lists(st.floats(-1e3, 1e3), max_size=6), st.lists(st.lists(st.floats(-2, 2), min_size=3, max_size=3),
                                                          min_size=3, max_size=3),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.dictionaries(st.sampled_from(sorted(CAM) + ["fisheye", "ignore"]), _values, max_size=8))
def test_fuzzed_camera_tables_load_or_raise_calibration_error(tmp_path, table):
    clean = {k: v for k, v in table.items() if v is not None}
    try:
        path = write_toml(tmp_path / "fuzz.toml", {"cameras": {"1": clean}})
    except (TypeError, ValueError):
        return  # not representable in TOML (e.g. NaN inside tomli-w's rules)
    try:
        rig = load_calibration(path)
    except CalibrationError as exc:
        assert "fuzz.toml" in str(exc)
        return
    assert len(rig) == 1 and rig.names == ["1"]
    if rig.cameras[0].is_posed:  # a loaded posed camera always projects (NaN only behind it)
        assert rig.project(np.array([[0.0, 0.0, 2.0]])).shape == (1, 1, 2)


_matrix = st.one_of(
    hnp.arrays(np.float64, (3, 3), elements=st.floats(-2e3, 2e3)),
    st.just(np.array([[900.0, 0, 640], [0, 900, 360], [0, 0, 1]])),
    hnp.arrays(np.float64, (3, 3), elements=st.sampled_from([np.nan, np.inf, 0.0, 1.0])),
)
_rotation = st.one_of(
    st.builds(lambda v: cv2.Rodrigues(np.asarray(v, dtype=np.float64))[0],
              hnp.arrays(np.float64, (3,), elements=st.floats(-4, 4))),
    hnp.arrays(np.float64, (3, 3), elements=st.one_of(st.floats(-2, 2), st.just(np.nan))),
)


@settings(max_examples=150, deadline=None)
@given(K=_matrix, R=_rotation,
       t=hnp.arrays(np.float64, (3,), elements=st.one_of(st.floats(-1e3, 1e3), st.just(np.nan))),
       dist=hnp.arrays(np.float64, st.sampled_from([0, 4, 5, 7, 8, 12, 14]), elements=st.floats(-1, 1)),
       size=hnp.arrays(np.int32, (2,), elements=st.integers(-5, 5000)))
def test_fuzzed_calibration_messages_build_a_rig_or_raise_value_error(K, R, t, dist, size):
    msg = RigCalibration(version="", cameras=[CameraCalibration(camera="x", image_size=size, K=K, dist=dist, R=R, t=t)])
    try:
        rig = Rig.from_message(msg)
    except ValueError:
        return
    assert rig.to_message().version == rig.version
    assert rig.project(np.array([[0.1, 0.2, 5.0]])).shape == (1, 1, 2)  # a valid rig always projects
