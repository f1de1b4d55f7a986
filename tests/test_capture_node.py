"""The capture node as a real process (`streamer node capture`) publishing over real ZeroMQ sockets:
replay of an imported take (always runs) and MediaPipe on two Pose2Sim videos (needs mediapipe)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protocol.messages import Keypoints2D, NodeStats, RigCalibration
from streamer.calibration import Camera, Rig
from streamer.transport import Subscriber

REPO = Path(__file__).resolve().parents[1]
from tests.shared_data import SHARED

POSE2SIM = SHARED / "pose2sim_demo"
from tests.shared_data import load_sam3d_outputs


def _run_capture(tmp_path: Path, settings: dict, seconds: float) -> tuple[list, subprocess.Popen]:
    endpoint = f"ipc://{tmp_path}/cap.ipc"
    cmd = [sys.executable, "-m", "streamer", "node", "capture", "--name", "cap", "--bind", endpoint,
           "--settings-json", json.dumps(settings), "--seconds", str(seconds), "--stats-s", "0.5"]
    sub = Subscriber({"cap": endpoint}, topics=("kp2d/", "calib", "stats/"))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    received = []
    deadline = time.monotonic() + seconds + 90  # start-up (imports, Anny, MediaPipe) is slow on a busy machine
    try:
        while time.monotonic() < deadline:
            got = sub.recv(timeout_ms=100)
            if got is not None:
                received.append(got)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    return received, proc


def _make_take(tmp_path: Path) -> tuple[Path, Rig, list[dict]]:
    from tools.import_legacy import import_legacy

    outs = load_sam3d_outputs()
    K = np.array([[2535.27, 0, 960], [0, 2535.27, 445], [0, 0, 1]])
    rig = Rig((Camera.from_rvec("a", (1920, 890), K, np.zeros(5), [0, 0, 0], [0, 0, 0]),))
    for frame in range(60):
        folder = tmp_path / "legacy" / "npy" / str(frame)
        folder.mkdir(parents=True)
        np.save(folder / "a.npy", dict(outs[frame % 4], focal_length=np.float32(2535.27)), allow_pickle=True)
    take = tmp_path / "take.mcap"
    import_legacy(tmp_path / "legacy", take, rig, fps=30.0, trust_pickle=True)
    return take, rig, outs


@pytest.mark.slow
@pytest.mark.data
def test_replay_capture_node_republishes_the_take(tmp_path):
    take, rig, outs = _make_take(tmp_path)
    settings = dict(cameras=["a"], source="replay", sources=[str(take)], estimator="replay", pace=True,
                    start_delay_s=1.0)
    received, proc = _run_capture(tmp_path, settings, seconds=15)
    assert proc.returncode == 0, proc.stdout.read()
    kp = [m for t, m in received if t == "kp2d/a"]
    stats = [m for t, m in received if t.startswith("stats/")]
    final = stats[-1]
    counters = dict(zip(final.counter_names, final.counter_values.tolist()))
    # every recorded frame was published (and received) or, if the node fell behind the take's 30 fps
    # (a loaded machine), dropped and counted: never queued, never reordered
    assert counters["grabbed/a"] == 60 and counters["frames/a"] == len(kp)
    assert counters["frames/a"] + counters["dropped/a"] == 60 and counters["dropped/a"] <= 10
    indices = np.array([m.frame_index for m in kp])
    assert np.all(np.diff(indices) > 0) and indices[-1] == 59
    # re-timed to the node's start on the stage clock, spacing preserved (1/30 s)
    recorded = np.round(indices * 1e9 / 30).astype(np.int64)
    np.testing.assert_array_equal(np.diff([m.t_capture_ns for m in kp]), np.diff(recorded))
    for m in kp:
        src = outs[m.frame_index % 4]
        np.testing.assert_array_equal(m.persons[0].params["body_pose"], src["body_pose_params"])
        np.testing.assert_allclose(m.persons[0].keypoints, src["pred_keypoints_2d"], atol=0.02)
        assert m.calib_version == rig.version
    calibs = [m for t, m in received if t == "calib"]
    assert calibs and calibs[0].version == rig.version  # the take's rig, republished as state


@pytest.mark.slow
@pytest.mark.data
def test_mediapipe_capture_node_on_two_pose2sim_cameras(tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe (extra 'mediapipe') is not installed")
    videos = POSE2SIM / "S00_P00_T01_BalancingTrial" / "videos"
    calibration = POSE2SIM / "calibration" / "Calib_qualisys.toml"
    if not videos.is_dir():
        pytest.skip(f"shared test data not found at {videos} (see ../shared/reference/data.md)")
    settings = dict(cameras=["cam_01", "cam_03"], source="video", sources=["cam01.mp4", "cam03.mp4"],
                    sources_dir=str(videos), calibration_file=str(calibration), estimator="mediapipe",
                    pace=True, start_delay_s=1.0)
    received, proc = _run_capture(tmp_path, settings, seconds=30)
    assert proc.returncode == 0, proc.stdout.read()
    calibs = [m for t, m in received if t == "calib"]
    assert calibs and isinstance(calibs[0], RigCalibration)
    assert [c.camera for c in calibs[0].cameras] == ["cam_01", "cam_03"]
    stats = [m for t, m in received if isinstance(m, NodeStats)]
    counters = dict(zip(stats[-1].counter_names, stats[-1].counter_values.tolist()))
    for camera in ("cam_01", "cam_03"):
        kp = [m for t, m in received if t == f"kp2d/{camera}"]
        assert len(kp) >= 1  # a 1.7 s take against ~25-70 ms per estimate; few on a loaded machine
        assert all(isinstance(m, Keypoints2D) and m.calib_version == calibs[0].version for m in kp)
        indices = np.array([m.frame_index for m in kp])
        assert np.all(np.diff(indices) > 0)
        # capture times follow the container's frame times (1/60 s) from one origin
        times = np.array([m.t_capture_ns for m in kp])
        np.testing.assert_allclose(np.diff(times), np.diff(indices) * 1e9 / 60, atol=2e3)
        found = [m.persons[0] for m in kp if m.persons]
        assert len(found) >= 0.9 * len(kp)
        assert np.median([np.isfinite(p.keypoints[:, 0]).sum() for p in found]) >= 19  # 21 mapped points
        # every frame the grabber read was either published (and received here) or counted as dropped
        assert counters[f"grabbed/{camera}"] == 100
        assert counters[f"frames/{camera}"] == len(kp)
        assert counters[f"dropped/{camera}"] + counters[f"frames/{camera}"] == 100


@pytest.mark.slow
def test_synthetic_capture_node_publishes_the_stage_observations_live(tmp_path):
    """Two cameras of the synthetic stage in one capture process, live on the stage clock: the messages are
    exactly the stage's observation of those frames, due at the stage's frame times."""
    from nodes.capture import Settings, build_synthetic_stage

    settings = dict(cameras=["cam0", "cam2"], source="synthetic", estimator="synthetic", synth_cameras=4,
                    synth_fps=30.0, synth_seed=3, start_delay_s=1.0)
    received, proc = _run_capture(tmp_path, settings, seconds=4)
    assert proc.returncode == 0, proc.stdout.read()
    stage = build_synthetic_stage(Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}))
    calibs = [m for t, m in received if t == "calib"]
    assert calibs and calibs[0].version == stage.rig.subset(["cam0", "cam2"]).version
    for camera in ("cam0", "cam2"):
        kp = [m for t, m in received if t == f"kp2d/{camera}"]
        assert len(kp) >= 60  # ~3 s at 30 fps after the start delay
        indices = np.array([m.frame_index for m in kp])
        assert np.all(np.diff(indices) >= 1) and np.mean(np.diff(indices) == 1) > 0.9
        for m in kp[::10]:
            expected = stage.observe(m.frame_index, camera)
            assert m.t_capture_ns == expected.t_capture_ns and m.calib_version == calibs[0].version
            assert len(m.persons) == len(expected.persons)
            for a, b in zip(m.persons, expected.persons):
                np.testing.assert_array_equal(a.keypoints, b.keypoints)
        # published after the frame was exposed (a camera cannot deliver earlier) and shortly after (live,
        # not replayed from the past)
        lag_ms = np.array([(m.t_send_ns - stage.exposure_time_ns(m.frame_index, camera)) / 1e6 for m in kp])
        print(f"{camera}: publish - exposure: median {np.median(lag_ms):.2f} ms, p99 {np.percentile(lag_ms, 99):.2f} ms")
        assert np.percentile(lag_ms, 1) > -1.0 and np.median(lag_ms) < 0.25 * 1000 / 30


def test_missing_camera_exits_non_zero_for_the_launcher_to_restart(tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe (extra 'mediapipe') is not installed")
    settings = dict(cameras=["w"], source="webcam", sources=["/dev/video_does_not_exist"], estimator="mediapipe")
    received, proc = _run_capture(tmp_path, settings, seconds=2)
    output = proc.stdout.read()
    assert proc.returncode == 1 and "webcam '/dev/video_does_not_exist'" in output
    assert not [t for t, _ in received if t.startswith("kp2d/")]
