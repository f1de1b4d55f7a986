"""Legacy importer: ROOT/npy/<frame>/<camera>.npy (pickled SAM-3D Body dicts) -> take, on a small tree built
here from the real outputs in ../shared/data/sam3d_body_outputs/."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.messages import Keypoints2D, RigCalibration
from streamer.calibration import Camera, Rig
from streamer.capture.sources import ReplaySource
from streamer.recording import read_take
from tests.shared_data import load_sam3d_outputs
from tools.import_legacy import LegacyImportError, import_legacy, load_legacy_view, main

F_PX = 2535.27


@pytest.fixture(scope="module")
def outputs() -> list[dict]:
    return load_sam3d_outputs()


def _rig() -> Rig:
    cams = []
    for i, name in enumerate(["c0", "c1"]):
        K = np.array([[F_PX, 0, 940.0 + 5 * i], [0, F_PX, 460.0], [0, 0, 1]])
        cams.append(Camera.from_rvec(name, (1920, 890), K, np.zeros(5), [0, 0.1 * i, 0], [0.5 * i, 0, 0]))
    return Rig(tuple(cams))


def _save(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array(obj, dtype=object) if isinstance(obj, list) else obj, allow_pickle=True)


def _tree(tmp_path: Path, outputs: list[dict]) -> Path:
    """frames 0, 1, 3; c0 saved with the calibrated focal (cam_int passed), c1 with the model's own focal;
    frame 1 of c1 holds two persons (a list); frame 3 lacks c1."""
    root = tmp_path / "legacy"
    for frame in (0, 1, 3):
        _save(root / "npy" / f"{frame:06d}" / "c0.npy", dict(outputs[frame % 4], focal_length=np.float32(F_PX)))
        if frame == 1:
            _save(root / "npy" / f"{frame:06d}" / "c1.npy",
                  [dict(outputs[1], focal_length=np.float32(2000.0)), dict(outputs[2], focal_length=np.float32(2000.0))])
        elif frame == 0:
            _save(root / "npy" / f"{frame:06d}" / "c1.npy", dict(outputs[0], focal_length=np.float32(2000.0)))
    return root


def test_import_writes_a_replayable_take_with_keypoints_and_params(tmp_path, outputs):
    root, out, rig = _tree(tmp_path, outputs), tmp_path / "take.mcap", _rig()
    report = import_legacy(root, out, rig, fps=50.0, trust_pickle=True)
    assert (report.frames, report.messages, report.persons) == (3, 5, 6)
    assert report.missing == {"c1": 1} and report.k_used == {"calibrated": 3, "model": 3}

    records = list(read_take(out))
    calibs = [m for _, t, m in records if t == "calib"]
    assert len(calibs) == 1 and isinstance(calibs[0], RigCalibration)
    assert Rig.from_message(calibs[0]).version == rig.version
    kp = {(m.camera, m.frame_index): m for _, t, m in records if isinstance(m, Keypoints2D)}
    assert sorted(kp) == [("c0", 0), ("c0", 1), ("c0", 3), ("c1", 0), ("c1", 1)]
    assert kp[("c0", 3)].t_capture_ns == 60_000_000 and kp[("c1", 1)].seq == 1
    assert all(m.calib_version == rig.version for m in kp.values())

    # c0: calibrated K (focal matched fx) -> projection with the calibrated principal point
    K0 = rig.camera("c0").K
    src = outputs[1]
    p = src["pred_keypoints_3d"].astype(np.float64) + src["pred_cam_t"]
    expected = np.column_stack([K0[0, 0] * p[:, 0] / p[:, 2] + K0[0, 2], K0[1, 1] * p[:, 1] / p[:, 2] + K0[1, 2]])
    person = kp[("c0", 1)].persons[0]
    np.testing.assert_allclose(person.keypoints, expected, atol=1e-3)
    np.testing.assert_array_equal(person.params["body_pose"], src["body_pose_params"])
    np.testing.assert_array_equal(person.params["hand"], src["hand_pose_params"])
    # c1: the model's own camera (focal 2000, image centre) -> equals the model's own centred projection
    two = kp[("c1", 1)].persons
    assert len(two) == 2
    for person, src in zip(two, (outputs[1], outputs[2])):
        p = src["pred_keypoints_3d"].astype(np.float64) + src["pred_cam_t"]
        np.testing.assert_allclose(person.keypoints, 2000.0 * p[:, :2] / p[:, 2:] + [960, 445], atol=1e-3)
        np.testing.assert_array_equal(person.params["shape"], src["shape_params"])

    # the take replays through the capture node's replay source
    with ReplaySource(out, "c1", t0_ns=10) as replay:
        frames = list(replay)
    assert [f.index for f in frames] == [0, 1] and [len(f.persons) for f in frames] == [1, 2]
    assert [f.t_capture_ns for f in frames] == [10, 10 + 20_000_000]


def test_pickle_needs_explicit_trust(tmp_path, outputs):
    root = _tree(tmp_path, outputs)
    with pytest.raises(LegacyImportError, match="trust-pickle.*arbitrary code|arbitrary code.*trust-pickle"):
        import_legacy(root, tmp_path / "t.mcap", _rig(), fps=30, trust_pickle=False)
    with pytest.raises(LegacyImportError, match="arbitrary code"):
        load_legacy_view(root / "npy" / "000000" / "c0.npy", trust_pickle=False)
    assert not (tmp_path / "t.mcap").exists()
    assert main([str(root), str(tmp_path / "t.mcap"), "--calibration", "x.toml", "--fps", "30"]) == 2


def test_names_are_matched_exactly(tmp_path, outputs):
    root = _tree(tmp_path, outputs)
    _save(root / "npy" / "000000" / "C0.npy", dict(outputs[0]))  # differs only by case: never matched
    with pytest.raises(LegacyImportError, match="'C0' is not in the calibration"):
        import_legacy(root, tmp_path / "t.mcap", _rig(), fps=30, trust_pickle=True)
    (root / "npy" / "000000" / "C0.npy").unlink()
    (root / "npy" / "frame_7").mkdir()
    with pytest.raises(LegacyImportError, match="frame_7.*decimal digits"):
        import_legacy(root, tmp_path / "t.mcap", _rig(), fps=30, trust_pickle=True)


def test_bad_content_names_the_file(tmp_path, outputs):
    root = tmp_path / "legacy"
    _save(root / "npy" / "0" / "c0.npy", dict(outputs[0]))  # no focal_length: K unknown in auto mode
    with pytest.raises(LegacyImportError, match="c0.npy.*focal_length"):
        import_legacy(root, tmp_path / "t.mcap", _rig(), fps=30, trust_pickle=True)
    report = import_legacy(root, tmp_path / "t2.mcap", _rig(), fps=30, trust_pickle=True, model_k="calibrated")
    assert report.messages == 1 and report.missing == {"c1": 1}
    _save(root / "npy" / "0" / "c0.npy", dict({k: v for k, v in outputs[0].items() if k != "pred_cam_t"},
                                              focal_length=np.float32(F_PX)))
    with pytest.raises(LegacyImportError, match="c0.npy.*pred_cam_t"):
        import_legacy(root, tmp_path / "t3.mcap", _rig(), fps=30, trust_pickle=True)
    np.save(root / "npy" / "0" / "c0.npy", np.arange(3))
    with pytest.raises(LegacyImportError, match="c0.npy: expected a SAM-3D Body output dict"):
        import_legacy(root, tmp_path / "t4.mcap", _rig(), fps=30, trust_pickle=True)


def test_cli_route_streamer_import_legacy(tmp_path, outputs, capsys):
    """`streamer import legacy ROOT OUT --calibration FILE --fps F --trust-pickle` through the importer dispatcher,
    with an aniposelib-style calibration TOML whose camera names equal the .npy stems."""
    from tools.importers import main as import_main

    root = _tree(tmp_path, outputs)
    lines = []
    for i, cam in enumerate(_rig()):
        lines += [f"[cam_{i}]", f'name = "{cam.name}"', f"size = [{cam.image_size[0]}, {cam.image_size[1]}]",
                  f"matrix = {cam.K.tolist()}", f"distortions = {cam.dist.tolist()}",
                  f"rotation = {cam.rvec.tolist()}", f"translation = {cam.t.tolist()}", "fisheye = false", ""]
    (tmp_path / "calib.toml").write_text("\n".join(lines))
    out = tmp_path / "cli.mcap"
    code = import_main(["legacy", str(root), str(out), "--calibration", str(tmp_path / "calib.toml"), "--fps", "25",
                        "--trust-pickle"])
    assert code == 0, capsys.readouterr()
    assert "5 kp2d messages" in capsys.readouterr().out
    topics = [t for _, t, _ in read_take(out)]
    assert topics.count("calib") == 1 and topics.count("kp2d/c0") == 3 and topics.count("kp2d/c1") == 2
