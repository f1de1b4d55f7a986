"""`streamer import pose2sim|caliscope`: real Pose2Sim JSON; Caliscope-format CSV, real calibration and frame times."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import Keypoints2D, RigCalibration
from streamer.body.mhr70 import index_of
from streamer.calibration import Rig
from streamer.calibration_io import load_calibration
from streamer.importing.mediapipe import CALISCOPE_TO_MHR70, read_frame_times
from streamer.importing.openpose import (
    BODY25B_TO_MHR70,
    OpenPoseError,
    match_cameras,
    read_frame,
)
from streamer.recording import read_take
from streamer.triangulation import triangulate_robust
from tests.shared_data import SHARED
from tools import importers

BALANCING = "pose2sim_demo/S00_P00_T01_BalancingTrial"


def shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (see ../shared/reference/data.md)")
    return path


def take_messages(path: Path) -> list[tuple[int, str, object]]:
    return list(read_take(path))


# ---------------------------------------------------------------- Pose2Sim


@pytest.mark.data
def test_pose2sim_import_writes_calib_then_kp2d(tmp_path, capsys):
    out = tmp_path / "balancing.mcap"
    assert importers.main(["pose2sim", str(shared(BALANCING)), str(out)]) == 0
    assert "400 kp2d messages" in capsys.readouterr().out
    messages = take_messages(out)
    topic0, calib = messages[0][1], messages[0][2]
    assert topic0 == "calib" and isinstance(calib, RigCalibration) and len(calib.cameras) == 4
    kp = [m for _, topic, m in messages if topic.startswith("kp2d/")]
    assert Counter(m.camera for m in kp) == {f"cam_0{i}": 100 for i in range(1, 5)}
    assert all(m.calib_version == calib.version == Rig.from_message(calib).version for m in kp)
    assert all(m.t_capture_ns == round(m.frame_index * 1e9 / 60) for m in kp)
    log_times = [t for t, _, _ in messages]
    assert log_times == sorted(log_times)
    # pose-associated: one person per file, except one empty {} entry in cam03 (data.md)
    assert sum(len(m.persons) for m in kp) == 399
    empty = [m for m in kp if not m.persons]
    assert len(empty) == 1 and empty[0].camera == "cam_03"
    person = next(m for m in kp if m.camera == "cam_01" and m.frame_index == 0).persons[0]
    assert person.keypoints.shape == (70, 2) and person.confidence.shape == (70,)
    mapped = sorted(BODY25B_TO_MHR70.values())
    assert np.isfinite(person.keypoints[index_of("neck")]).all()  # BODY_25B 17 -> MHR-70 neck
    unmapped = np.setdiff1d(np.arange(70), mapped)
    assert np.isnan(person.keypoints[unmapped]).all() and not person.confidence[unmapped].any()
    raw = json.loads((shared(BALANCING) / "pose-associated/cam01_json/cam01.0000.json").read_text())
    nose = raw["people"][0]["pose_keypoints_2d"][:3]
    assert np.allclose(person.keypoints[index_of("nose")], nose[:2], atol=1e-3)
    assert person.confidence[index_of("nose")] == pytest.approx(nose[2], abs=1e-6)
    lo, hi = np.nanmin(person.keypoints, axis=0), np.nanmax(person.keypoints, axis=0)
    assert np.allclose(person.box, [lo[0], lo[1], hi[0], hi[1]])


@pytest.mark.data
def test_pose2sim_raw_detections_keep_every_person(tmp_path):
    out = tmp_path / "raw.mcap"
    report = importers.import_pose2sim(shared(BALANCING), out, source="pose")
    per_camera = Counter()
    for _, topic, msg in take_messages(out):
        if isinstance(msg, Keypoints2D):
            per_camera[msg.camera] = max(per_camera[msg.camera], len(msg.persons))
    assert per_camera["cam_01"] >= 2 and per_camera["cam_03"] == 1  # data.md: cam01 2-3 people, cam03 1
    assert report.messages == 400


def test_camera_names_match_exactly_or_by_number():
    assert match_cameras(["cam01", "cam_02"], ["cam_01", "cam_02"]) == ["cam_01", "cam_02"]
    with pytest.raises(ValueError, match="cam07"):
        match_cameras(["cam07"], ["cam_01", "cam_02"])
    with pytest.raises(ValueError, match="unique"):
        match_cameras(["cam1"], ["cam_1", "c1"])


def test_openpose_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / "cam01.0003.json"
    bad.write_text("{not json")
    with pytest.raises(OpenPoseError, match="cam01.0003.json"):
        read_frame(bad)
    bad.write_text(json.dumps({"people": [{}, {"pose_keypoints_2d": [1.0] * 12}]}))
    with pytest.raises(OpenPoseError, match=r"people\[1\].pose_keypoints_2d: expected 75 numbers, got 12"):
        read_frame(bad)
    bad.write_text(json.dumps({"people": [{}, {"pose_keypoints_2d": [0.0] * 75}]}))
    (person,) = read_frame(bad)
    assert np.isnan(person.keypoints).all() and not person.confidence.any()  # zero confidence = missing


_scalar = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.integers(), st.text(max_size=4))
_json = st.recursive(_scalar,
                     lambda inner: st.one_of(st.lists(inner, max_size=80), st.dictionaries(st.text(max_size=20), inner,
                                                                                           max_size=4)), max_leaves=90)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(_json, st.fixed_dictionaries({"people": st.lists(
    st.fixed_dictionaries({"pose_keypoints_2d": st.lists(st.one_of(st.floats(allow_nan=False), st.text(max_size=2)),
                                                         max_size=80)}), max_size=3)})))
def test_fuzzed_openpose_json_reads_or_raises_openpose_error(tmp_path, document):
    path = tmp_path / "cam01.0000.json"
    path.write_text(json.dumps(document))
    try:
        persons = read_frame(path)
    except OpenPoseError as exc:
        assert "cam01.0000.json" in str(exc)
        return
    for person in persons:
        assert person.keypoints.shape == (25, 2) and np.all((person.confidence >= 0) & (person.confidence <= 1))
        assert np.array_equal(np.isfinite(person.keypoints[:, 0]), person.confidence > 0)


# ---------------------------------------------------------------- Caliscope


def _write_holistic_take(folder: Path, rig: Rig, syncs: list[int], truth: np.ndarray, drop: set) -> None:
    """xy_HOLISTIC.csv in Caliscope's layout: pose ids 0-32, right hand 100-120, left hand 200-220."""
    ids = sorted(CALISCOPE_TO_MHR70) + [15, 16]  # + the pose model's wrists (used only without a hand wrist)
    with (folder / "xy_HOLISTIC.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sync_index", "cam_id", "frame_index", "point_id", "img_loc_x", "img_loc_y"])
        for s, sync in enumerate(syncs):
            projected = rig.project(truth[s])  # (V, 70, 2)
            for v, cam in enumerate(rig.names):
                for point in ids:
                    if (sync, cam, point) in drop:
                        continue
                    pose_wrist = index_of("left-wrist") if point == 15 else index_of("right-wrist")
                    k = CALISCOPE_TO_MHR70.get(point, pose_wrist)
                    x, y = projected[v, k] + (7.0 if point in (15, 16) else 0.0)  # pose wrists 10 px off
                    writer.writerow([sync, cam, s, point, f"{x:.4f}", f"{y:.4f}"])


@pytest.mark.data
def test_caliscope_import_uses_real_frame_times_and_maps_mediapipe_ids(tmp_path):
    session = shared("caliscope/charuco_session")
    rig = load_calibration(session / "camera_array.toml")
    syncs = list(range(35, 45))
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 0.1, (len(syncs), 70, 3))  # around the world origin, where the board was
    drop = {(36, "2", 100), (36, "2", 200)}  # no hand wrist: the pose wrist fills in
    _write_holistic_take(tmp_path, rig, syncs, truth, drop)
    out = tmp_path / "take.mcap"
    report = importers.import_caliscope(tmp_path, out, calibration=session / "camera_array.toml",
                                        timestamps=session / "videos" / "timestamps.csv")
    assert report.messages == 40 and report.cameras == ["0", "1", "2", "3"]
    times = read_frame_times(session / "videos" / "timestamps.csv")
    kp = [m for _, _, m in take_messages(out) if isinstance(m, Keypoints2D)]
    for msg in kp:
        assert msg.t_capture_ns == round(times[(msg.frame_index, msg.camera)] * 1e9)  # real webcam frame times
    spread = {}
    for msg in kp:
        spread.setdefault(msg.frame_index, []).append(msg.t_capture_ns)
    assert max(max(v) - min(v) for v in spread.values()) > 1_000_000  # unsynchronised: ms of spread
    by_key = {(m.frame_index, m.camera): m.persons[0] for m in kp}
    projected = rig.project(truth[1])
    hand = by_key[(36, "2")]
    assert np.allclose(hand.keypoints[index_of("right-wrist")], projected[2, index_of("right-wrist")] + 7.0, atol=1e-3)
    other = by_key[(36, "1")]
    assert np.allclose(other.keypoints[index_of("right-wrist")], projected[1, index_of("right-wrist")], atol=1e-3)
    assert np.allclose(other.keypoints[index_of("left-index-tip")], projected[1, index_of("left-index-tip")], atol=1e-3)
    assert np.isnan(other.keypoints[index_of("neck")]).all()  # MediaPipe has no neck point
    # end to end: the imported 2D triangulates back to the truth
    pixels = np.stack([by_key[(37, c)].keypoints for c in rig.names])
    result = triangulate_robust(pixels, np.stack([by_key[(37, c)].confidence for c in rig.names]), rig)
    seen = result.valid
    assert seen.sum() == len(set(CALISCOPE_TO_MHR70.values()))
    assert np.max(np.linalg.norm(result.points[seen] - truth[2][seen], axis=1)) < 2e-3


@pytest.mark.data
def test_caliscope_import_picks_the_timestamp_file_that_covers_the_take(tmp_path):
    session = shared("caliscope/charuco_session")
    rig = load_calibration(session / "camera_array.toml")
    (tmp_path / "videos").mkdir()
    for name in ("timestamps.csv", "videos/timestamps.csv"):  # root file: re-indexed 0-55; videos/: 35-91
        (tmp_path / name).write_bytes((session / name).read_bytes())
    truth = np.random.default_rng(1).normal(0, 0.1, (3, 70, 3))
    _write_holistic_take(tmp_path, rig, [60, 70, 91], truth, set())
    report = importers.import_caliscope(tmp_path, tmp_path / "t.mcap", calibration=session / "camera_array.toml")
    assert report.time_source == str(Path("videos") / "timestamps.csv")
    (tmp_path / "videos" / "timestamps.csv").unlink()
    fallback = importers.import_caliscope(tmp_path, tmp_path / "v.mcap", calibration=session / "camera_array.toml")
    assert fallback.time_source.startswith("sync_index / 30 fps")  # root file lacks sync 60-91


@pytest.mark.data
def test_caliscope_import_rejects_unknown_cameras(tmp_path, capsys):
    session = shared("caliscope/charuco_session")
    (tmp_path / "xy_HOLISTIC.csv").write_text("sync_index,cam_id,point_id,img_loc_x,img_loc_y\n1,9,0,10,10\n")
    code = importers.main(["caliscope", str(tmp_path), str(tmp_path / "x.mcap"),
                           "--calibration", str(session / "camera_array.toml")])
    assert code == 1 and "camera '9'" in capsys.readouterr().err
    code = importers.main(["caliscope", str(session), str(tmp_path / "y.mcap")])  # xy_CHARUCO.csv: board corners
    assert code == 1 and "CHARUCO is not a body tracker" in capsys.readouterr().err


@pytest.mark.data
def test_caliscope_import_reads_frame_times_from_an_older_xy_file(tmp_path):
    """Older Caliscope versions write `port` instead of cam_id and a frame_time column in xy_<TRACKER>.csv."""
    session = shared("caliscope/charuco_session")
    rig = load_calibration(session / "camera_array.toml")
    point = rig.project(np.array([[0.0, 0.0, 0.0]]))  # (V, 1, 2)
    rows = ["sync_index,port,frame_index,frame_time,point_id,img_loc_x,img_loc_y"]
    for sync in (0, 1):
        for v, cam in enumerate(rig.names):
            t = 100.0 + sync / 30 + 0.004 * v
            rows.append(f"{sync},{cam},{sync},{t},0,{point[v, 0, 0]},{point[v, 0, 1]}")
    (tmp_path / "xy_POSE.csv").write_text("\n".join(rows) + "\n")
    report = importers.import_caliscope(tmp_path, tmp_path / "t.mcap", calibration=session / "camera_array.toml")
    assert report.time_source == "xy_POSE.csv frame_time column"
    kp = [m for _, _, m in take_messages(tmp_path / "t.mcap") if isinstance(m, Keypoints2D)]
    assert sorted(m.t_capture_ns for m in kp if m.frame_index == 1) == [
        round((100.0 + 1 / 30 + 0.004 * v) * 1e9) for v in range(4)]
    assert all(np.allclose(m.persons[0].keypoints[index_of("nose")], point[int(m.camera), 0]) for m in kp)
