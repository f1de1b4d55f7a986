"""Replay: original timing over the data plane (rate, seek, loop) and the deterministic offline re-solve."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.playback import PlaybackClock, shift_times
from streamer.recording import TakeReader, read_take
from streamer.transport import Subscriber
from tests.stage_takes import T0_NS, write_stage_take
from tools.replay import main as replay_main

REPO = Path(__file__).resolve().parents[1]
HAS_FITTER = importlib.util.find_spec("nodes.fitter") is not None


def test_playback_clock_scales_and_reanchors():
    clock = PlaybackClock(rate=2.0)
    clock.anchor(log_ns=1_000, mono_ns=50_000)
    assert clock.due_mono_ns(1_000) == 50_000
    assert clock.due_mono_ns(3_000) == 51_000  # 2000 ns of take in 1000 ns at 2x
    clock.anchor(log_ns=10_000, mono_ns=0)
    assert clock.due_mono_ns(12_000) == 1_000
    with pytest.raises(ValueError, match="rate"):
        PlaybackClock(rate=0)


def test_shift_times_moves_capture_time_on_a_copy(tmp_path):
    write_stage_take(tmp_path / "t.mcap", n_frames=2)
    _, _, msg = next(iter(read_take(tmp_path / "t.mcap", topics=["kp2d/cam0"])))
    moved = shift_times(msg, 5)
    assert moved.t_capture_ns == msg.t_capture_ns + 5 and moved is not msg
    assert shift_times(msg, 0) is msg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replay_process(take: Path, endpoint: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", "replay", str(take), "--bind", endpoint, "--start-delay", "1.5",
         *extra],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stderr=subprocess.DEVNULL,
    )


def _collect(endpoint: str, seconds: float, stop_after: int | None = None) -> list[tuple[float, str, object]]:
    sub = Subscriber({"replay": endpoint}, topics=("kp2d/cam0", "calib"))
    got = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and (stop_after is None or len(got) < stop_after):
            item = sub.recv(timeout_ms=20)
            if item is not None:
                got.append((time.monotonic(), *item))
    finally:
        sub.close()
    return got


@pytest.mark.slow
def test_live_replay_keeps_original_timing_scaled_by_rate_with_seek(tmp_path):
    take = tmp_path / "take.mcap"
    write_stage_take(take, n_frames=60, fps=30.0, with_truth=False)  # 2 s of take
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    proc = _replay_process(take, endpoint, "--rate", "2", "--seek", "0.5", "--exit-at-end")
    try:
        got = _collect(endpoint, 8.0)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert got[0][1] == "calib"  # state before the seek point comes first
    frames = [(t, m) for t, topic, m in got if topic == "kp2d/cam0"]
    # seek 0.5 s: the first frame replayed is frame 15 (30 fps), none before it, all after it
    assert [m.frame_index for _, m in frames] == list(range(15, 60))
    # original capture times, untouched
    assert frames[0][1].t_capture_ns - T0_NS == pytest.approx(0.5e9, abs=3e6)
    # arrival spacing follows capture spacing at rate 2 (least-squares slope over 1.5 s of take)
    arrival = np.array([t for t, _ in frames])
    capture = np.array([m.t_capture_ns for _, m in frames]) / 1e9
    slope = np.polyfit(capture, arrival, 1)[0]
    assert slope == pytest.approx(0.5, rel=0.15)


@pytest.mark.slow
def test_loop_replays_again_with_capture_time_moving_forward(tmp_path):
    take = tmp_path / "take.mcap"
    write_stage_take(take, n_frames=10, fps=30.0, with_truth=False)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    proc = _replay_process(take, endpoint, "--rate", "4", "--loop")
    try:
        got = _collect(endpoint, 10.0, stop_after=30)
    finally:
        proc.terminate()
        proc.wait(10)
    frames = [m for _, topic, m in got if topic == "kp2d/cam0"]
    assert len(frames) >= 25
    indices = [m.frame_index for m in frames]
    assert indices[:10] == list(range(10)) and indices[10:20] == list(range(10))
    times = [m.t_capture_ns for m in frames]
    assert all(b > a for a, b in zip(times, times[1:]))


def _poses(path: Path, topic: str) -> list:
    return [m for _, _, m in read_take(path, topics=[topic])]


@pytest.mark.slow
def test_offline_resolve_is_deterministic_and_accurate(tmp_path, capsys):
    take = tmp_path / "take.mcap"
    _, truth = write_stage_take(take, n_frames=45)
    extra = [] if HAS_FITTER else ["--no-fit"]
    outs = [tmp_path / "a.mcap", tmp_path / "b.mcap"]
    for out in outs:
        assert replay_main([str(take), "--offline", str(out), *extra]) == 0
    assert "100.0%" in capsys.readouterr().err  # the progress bar ran to the end
    topic = "pose" if HAS_FITTER else "points3d"
    a, b = (_poses(o, topic) for o in outs)
    assert len(a) == len(b) >= 40
    for x, y in zip(a, b):
        assert x.t_ns == y.t_ns
        fields = ("keypoints", "params", "joint_rotations") if HAS_FITTER else ("points", "n_views")
        for name in fields:
            assert np.array_equal(getattr(x, name), getattr(y, name), equal_nan=True), name
        assert getattr(x, "verdict", None) == getattr(y, "verdict", None)
    # the re-solved take carries the inputs too, so it can be re-solved again
    topics = TakeReader(outs[0]).topics()
    assert topics["calib"] >= 1 and topics["kp2d/cam0"] == 45 and topics["truth"] == 45
    points = _poses(outs[0], "points3d")
    err = [np.nanmax(np.linalg.norm(p.points - truth[p.frame_index], axis=-1)) for p in points if p.usable]
    assert len(err) >= 40 and max(err) < 0.01  # 0.5 px noise, 4 cameras at 4 m: millimetres


@pytest.mark.slow
def test_offline_with_other_settings_changes_the_result(tmp_path):
    take = tmp_path / "take.mcap"
    write_stage_take(take, n_frames=20)
    a, b = tmp_path / "a.mcap", tmp_path / "b.mcap"
    assert replay_main([str(take), "--offline", str(a), "--no-fit", "--quiet"]) == 0
    assert replay_main([str(take), "--offline", str(b), "--no-fit", "--quiet",
                        "--sync-settings", '{"min_cameras": 5}']) == 0
    assert len(_poses(a, "points3d")) >= 18 and len(_poses(b, "points3d")) == 0
    assert replay_main([str(take), "--offline", str(b), "--sync-settings", "{bad"]) == 2
