"""Monitor: status logic and alerts (streamer/monitoring), the status table, and the Rerun view read back
with Rerun's own API after a real replay -> monitor run."""
from __future__ import annotations

import collections
import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import NodeStats, Points3D, Pose, PoseFlag, Verdict
from streamer.monitoring import MonitorSettings, StageStatus, render_table
from streamer.recording import TakeWriter, read_take
from tests.stage_takes import ring_rig, write_stage_take
from tools.offline import run_offline

REPO = Path(__file__).resolve().parents[1]
FIT_OFFSET_M = 0.005  # the stand-in "fit" in the Rerun test is the truth moved 5 mm along x


def _points3d(t_ns: int, cameras: list[str], errors_px: list[float], rng) -> Points3D:
    K, V = 70, len(cameras)
    reproj = np.abs(rng.normal(errors_px, 0.1 * np.asarray(errors_px) + 0.05, (K, V))).astype(np.float32)
    return Points3D(
        t_ns=t_ns, frame_index=0, person_id=0, calib_version="v", cameras=cameras,
        sources_seq=np.zeros(V, np.int64), sync_spread_ns=1_000_000, points=np.zeros((K, 3), np.float32),
        n_views=np.full(K, V, np.uint8), inliers=np.ones((K, V), bool), reproj_px=reproj,
        confidence=np.ones(K, np.float32), mean_reproj_px=float(reproj.mean()), usable=True)


def _feed_sets(status: StageStatus, n: int, errors_px: list[float], t0: int, rng) -> int:
    cams = [f"cam{i}" for i in range(len(errors_px))]
    for i in range(n):
        t = t0 + i * 33_000_000
        status.update("points3d", _points3d(t, cams, errors_px, rng), t)
        for c in cams:
            status.cameras[c].last_seen_ns = t  # alive
    return t0 + n * 33_000_000


def test_bump_alert_needs_one_camera_rising_alone():
    rng = np.random.default_rng(0)
    everyone = StageStatus()
    t = _feed_sets(everyone, 40, [0.5, 0.5, 0.5, 0.5], 0, rng)
    t = _feed_sets(everyone, 20, [6.0, 6.0, 6.0, 6.0], t, rng)  # e.g. a badly detected person: all rise
    assert not everyone.report(t).alerts
    one = StageStatus()
    t = _feed_sets(one, 40, [0.5, 0.5, 0.5, 0.5], 0, rng)
    t = _feed_sets(one, 5, [0.5, 0.5, 6.0, 0.5], t, rng)
    assert not one.report(t).alerts  # a short blip is not a bump (recent window not full)
    t = _feed_sets(one, 20, [0.5, 0.5, 6.0, 0.5], t, rng)
    alerts = one.report(t).alerts
    assert [(a.kind, a.subject) for a in alerts] == [("bumped", "cam2")]
    small = StageStatus(MonitorSettings(bump_min_px=10.0))
    t = _feed_sets(small, 40, [0.5, 0.5, 0.5, 0.5], 0, rng)
    t = _feed_sets(small, 20, [0.5, 0.5, 6.0, 0.5], t, rng)
    assert not small.report(t).alerts  # below the pixel floor


def _stats(node: str, t_ns: int, counters: dict, gauges: dict, clock_offset_ns: int = 0) -> NodeStats:
    return NodeStats(node=node, t_ns=t_ns, fps=30.0, latency_ms=np.array([1.0, 2.0, 3.0], np.float32),
                     queue_depth=0, clock_offset_ns=clock_offset_ns, counter_names=list(counters),
                     counter_values=np.array(list(counters.values()), np.int64), gauge_names=list(gauges),
                     gauge_values=np.array(list(gauges.values()), np.float64))


def test_stats_give_drops_used_share_clock_offset_and_counter_liveness():
    status = StageStatus()
    s = 1_000_000_000
    for k in range(4):
        t = k * s
        status.update("stats/sync", _stats("sync", t, {
            "received/cam0": 30 * (k + 1), "dropped/cam0": 2, "late/cam0": 1, "evicted/cam0": 0,
            "received/cam1": 30 if k < 2 else 30,  # cam1 stops after the first second
        }, {"detections_used_share/cam0": 0.75, "sync_spread_ms_p50": 4.0}), t)
        status.update("stats/cap", _stats("cap", t, {}, {"fps/cam0": 30.0}, clock_offset_ns=1_500_000), t)
    report = status.report(3 * s + 100)
    rows = {r.camera: r for r in report.cameras}
    assert rows["cam0"].alive and rows["cam0"].drops == 3 and rows["cam0"].used_share == 0.75
    assert rows["cam0"].fps == pytest.approx(30.0)
    assert rows["cam0"].clock_offset_ms == pytest.approx(1.5)
    assert not rows["cam1"].alive
    assert [(a.kind, a.subject) for a in report.alerts] == [("dead", "cam1")]
    assert {r.node for r in report.stages} == {"sync", "cap"}
    assert report.sync_spread_ms == 4.0


@pytest.mark.slow
def test_status_table_shows_a_killed_camera_and_a_bumped_one(tmp_path):
    """Real sync + triangulation (offline, in-process) on a 5-camera take: cam4 dies at frame 70,
    cam2 is turned by 0.05 rad (about 45 px) at frame 40 while its calibration stays."""
    take, solved = tmp_path / "take.mcap", tmp_path / "solved.mcap"
    write_stage_take(take, 120, rig=ring_rig(5), bump={"cam2": (40, (0.0, 0.05, 0.0))}, dead_from={"cam4": 70})
    run_offline(take, solved, fit=False)
    status = StageStatus()
    last = 0
    seen_before_bump = None
    for log_ns, topic, msg in read_take(solved):
        status.update(topic, msg, log_ns)
        last = log_ns
        if topic == "kp2d/cam0" and msg.frame_index == 39:
            seen_before_bump = status.report(log_ns)
    assert seen_before_bump is not None and not seen_before_bump.alerts
    report = status.report(last + 100_000_000)
    assert sorted((a.kind, a.subject) for a in report.alerts) == [("bumped", "cam2"), ("dead", "cam4")]
    rows = {r.camera: r for r in report.cameras}
    assert rows["cam2"].reproj_px > 20 and rows["cam2"].baseline_px < 1.5
    assert all(rows[c].reproj_px < 1.5 for c in ("cam0", "cam1", "cam3"))
    assert rows["cam0"].fps == pytest.approx(30.0, rel=0.05)
    text = render_table(report)
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("cam")}
    assert " DEAD " in lines["cam4"] and " BUMP " in lines["cam2"] and " ok " in lines["cam0"]
    assert "ALERTS (2)" in text
    assert "! camera cam4 is dead" in text
    assert "! camera cam2: reprojection error" in text and "bumped since calibration" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _take_with_poses(tmp_path: Path) -> Path:
    take, solved, final = tmp_path / "take.mcap", tmp_path / "solved.mcap", tmp_path / "final.mcap"
    write_stage_take(take, 45)
    run_offline(take, solved, fit=False)
    with TakeWriter(final) as out:
        for log_ns, topic, msg in read_take(solved):
            if topic == "pose":
                continue
            out.write(msg, log_ns)
            if topic == "truth":
                k = msg.persons[0].keypoints + np.float32([FIT_OFFSET_M, 0, 0])
                out.write(Pose(t_ns=msg.t_ns, frame_index=msg.frame_index, person_id=0, body_model="stand-in",
                               params=np.zeros(0, np.float32), keypoints=k, joint_rotations=np.zeros((1, 4), np.float32),
                               world_from_root=np.eye(4, dtype=np.float32), flags=np.full(70, PoseFlag.MEASURED, np.uint8),
                               loss=0.0, data_loss=0.0, n_valid=70, verdict=Verdict.GOOD, iterations=1),
                          log_ns + 8_000_000)
    return final


def _read_rrd(path: Path) -> dict[str, dict[str, list]]:
    from rerun.chunk import RrdReader

    columns: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for chunk in RrdReader(str(path)).stream().to_chunks():
        batch = chunk.to_record_batch()
        for name in batch.schema.names:
            if ":" in name:  # component columns: Archetype:field
                columns[chunk.entity_path][name].extend(batch.column(name).to_pylist())
    return columns


@pytest.mark.slow
def test_monitor_logs_a_replayed_take_to_rerun_and_it_reads_back(tmp_path):
    take = _take_with_poses(tmp_path)
    rrd = tmp_path / "monitor.rrd"
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    monitor = subprocess.Popen(
        [sys.executable, "-m", "nodes.monitor", "--name", "monitor", "--input", f"replay={endpoint}",
         "--settings-json", f'{{"rrd_out": "{rrd}", "table_interval_s": 0.25}}', "--seconds", "30"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    replay = subprocess.Popen(
        [sys.executable, "-m", "streamer", "replay", str(take), "--bind", endpoint, "--start-delay", "2",
         "--exit-at-end"], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    try:
        assert replay.wait(60) == 0
        time.sleep(0.6)
        monitor.terminate()
        out, _ = monitor.communicate(timeout=30)
    finally:
        for p in (replay, monitor):
            if p.poll() is None:
                p.kill()
    assert monitor.returncode == 0
    assert "cam0" in out and "STAGE" in out  # the status table was printed
    data = _read_rrd(rrd)
    for entity in ("/world", "/world/fit", "/world/truth/0", "/world/points3d", "/world/cameras/cam0",
                   "/world/cameras/cam3/kp2d", "/metrics/sync_spread_ms", "/metrics/reproj_px/cam1",
                   "/metrics/valid_points", "/metrics/truth_error_mm", "/metrics/fps/cam0"):
        assert entity in data, f"{entity} missing; have {sorted(data)}"
    classes = data["/world"]["AnnotationContext:context"][0][0]
    assert [c["class_description"]["info"]["label"] for c in classes] == ["fit", "truth", "triangulated"]
    assert len(classes[0]["class_description"]["keypoint_connections"]) == 65  # the MHR-70 skeleton
    fit = data["/world/fit"]
    assert len(fit["Points3D:positions"][0]) == 70 and fit["Points3D:keypoint_ids"][0] == list(range(70))
    errors = data["/metrics/truth_error_mm"]["Scalars:scalars"]
    assert len(errors) >= 20 and np.allclose(np.concatenate(errors), FIT_OFFSET_M * 1e3, atol=0.05)
    spreads = np.concatenate(data["/metrics/sync_spread_ms"]["Scalars:scalars"])
    assert len(spreads) >= 20 and (spreads >= 0).all() and (spreads < 20).all()
    assert np.concatenate(data["/metrics/valid_points"]["Scalars:scalars"]).tolist().count(70) >= 20
    reproj = np.concatenate(data["/metrics/reproj_px/cam1"]["Scalars:scalars"])
    assert (reproj < 2.0).all()
    fps = np.concatenate(data["/metrics/fps/cam0"]["Scalars:scalars"])
    assert np.nanmax(fps) == pytest.approx(30.0, rel=0.1)
    kp2d = data["/world/cameras/cam3/kp2d"]["Points2D:positions"]
    assert len(kp2d) >= 1 and len(kp2d[0]) == 70
    assert "Pinhole:image_from_camera" in data["/world/cameras/cam0"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 70), st.one_of(st.floats(0, 1e4), st.just(float("nan"))),
                          st.integers(-10**12, 10**12)), min_size=1, max_size=20))
def test_status_never_crashes_on_odd_but_valid_messages(items):
    status = StageStatus()
    rng = np.random.default_rng(0)
    for n_views, n_points, value, t in items:
        cams = [f"c{i}" for i in range(n_views)]
        reproj = np.full((n_points, n_views), value, np.float32)
        msg = Points3D(t_ns=t, frame_index=0, person_id=0, calib_version="v", cameras=cams,
                       sources_seq=np.zeros(n_views, np.int64), sync_spread_ns=abs(t) % 10**8,
                       points=rng.normal(size=(n_points, 3)).astype(np.float32), n_views=np.zeros(n_points, np.uint8),
                       inliers=np.zeros((n_points, n_views), bool), reproj_px=reproj,
                       confidence=np.zeros(n_points, np.float32), mean_reproj_px=value, usable=False)
        status.update("points3d", msg, t)
        status.update("stats/x", _stats("x", t, {f"received/{cams[0]}": abs(t) % 1000, "dropped/c9": 1},
                                        {f"fps/{cams[-1]}": value}), t)
    report = status.report(items[-1][3] + 10**9)
    assert render_table(report).endswith("\n")


def test_fit_is_compared_with_the_nearest_truth_person():
    from protocol import PersonTruth, Truth

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(70, 3)).astype(np.float32), rng.normal(size=(70, 3)).astype(np.float32) + 5
    status = StageStatus()
    status.update("truth", Truth(t_ns=100, frame_index=0, persons=[
        PersonTruth(person_id=0, keypoints=a, params=np.zeros(0, np.float32)),
        PersonTruth(person_id=1, keypoints=b, params=np.zeros(0, np.float32))]), 100)
    flags = np.full(70, PoseFlag.MEASURED, np.uint8)
    flags[:10] = PoseFlag.MISSING
    fit = b + np.float32([0.002, 0, 0])
    fit[:10] += 1.0  # missing points do not count
    pose = Pose(t_ns=100 + 1_000_000, frame_index=0, person_id=7, body_model="x", params=np.zeros(0, np.float32),
                keypoints=fit, joint_rotations=np.zeros((1, 4), np.float32), world_from_root=np.eye(4, dtype=np.float32),
                flags=flags, loss=0.0, data_loss=0.0, n_valid=60, verdict=Verdict.GOOD, iterations=1)
    assert status.update("pose", pose, 200) == pytest.approx(2.0, abs=1e-3)
    late = dataclasses.replace(pose, t_ns=100 + 50_000_000)
    assert status.update("pose", late, 300) is None  # no truth at that instant


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 80), st.integers(1, 8), st.floats(0.0, 1.0))
def test_per_camera_reprojection_error_is_the_median_of_its_finite_points(seed, n_points, n_cameras, missing):
    rng = np.random.default_rng(seed)
    cams = [f"cam{i}" for i in range(n_cameras)]
    msg = _points3d(0, cams, list(rng.uniform(0.5, 5.0, n_cameras)), rng)
    reproj = np.array(msg.reproj_px[:n_points])
    reproj[rng.random(reproj.shape) < missing] = np.nan
    reproj[rng.random(reproj.shape) < 0.05] = np.inf
    msg.reproj_px = reproj
    status = StageStatus()
    status.update("points3d", msg, 0)
    for v, cam in enumerate(cams):
        column = reproj[:, v].astype(float)[np.isfinite(reproj[:, v])]
        got = status.cameras[cam].baseline if cam in status.cameras else []
        assert got == ([float(np.median(column))] if column.size >= 3 else [])  # fewer than 3 points: no value
