"""Box hints (`hint/<camera>`, protocol `BoxHints`) from the sync node's 3D track to the capture node.

Unit tests of the message, the hint helpers and the launcher's ordering of a capture <-> sync cycle;
then the real thing: `streamer run` on a graph of a synthetic-stage capture process and a sync process
wired both ways, watched over ZeroMQ. The synthetic stage's observation model stands in for camera and
estimator (a box-driven one under hints: `streamer.capture.hints.persons_in_boxes`).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protocol import BoxHints, DecodeError, NodeStats, Person2D, Points3D, decode, encode, topic_of
from streamer.calibration import Camera, Rig
from streamer.capture.hints import accept_hint, hint_calib_version, persons_in_boxes, track_hints
from streamer.launch import _depth_levels, load_graph

REPO = Path(__file__).resolve().parents[1]


def _hint(**changes) -> BoxHints:
    hint = BoxHints(camera="cam1", t_ns=5_000, calib_version="abc", track_ids=np.array([3, 4], np.int64),
                    boxes=np.array([[10, 20, 110, 220], [np.nan] * 4], np.float32),
                    scores=np.array([0.9, 0.5], np.float32))
    return dataclasses.replace(hint, **changes)


def test_box_hints_round_trip_on_their_camera_topic():
    frames = encode(_hint(), seq=3)
    assert frames[0] == b"hint/cam1" and topic_of(_hint()) == "hint/cam1"
    topic, back = decode(frames)
    assert topic == "hint/cam1" and back.track_ids.dtype == np.int64 and back.t_ns == 5_000
    np.testing.assert_array_equal(back.boxes, _hint().boxes)  # a NaN row (not visible) survives


@pytest.mark.parametrize("changes, reason", [
    (dict(scores=np.array([0.9], np.float32)), "shape"),  # P disagrees between fields
    (dict(boxes=np.zeros((2, 3), np.float32)), "shape"),
    (dict(scores=np.array([0.9, np.nan], np.float32)), "nonfinite"),
    (dict(boxes=np.array([[0, 0, np.inf, 1], [0, 0, 1, 1]], np.float32)), "nonfinite"),
    (dict(track_ids=np.zeros(17, np.int64), boxes=np.zeros((17, 4), np.float32), scores=np.zeros(17, np.float32)),
     "limit"),  # more than MAX_PERSONS
])
def test_malformed_box_hints_are_rejected_with_a_reason(changes, reason):
    with pytest.raises(DecodeError) as info:
        decode(encode(_hint(**changes), seq=0))
    assert info.value.reason == reason


def test_track_ids_of_another_integer_dtype_are_rejected():
    import msgpack

    frames = encode(_hint(), seq=0)
    header = msgpack.unpackb(frames[1])
    index = header["body"]["track_ids"]
    header["arrays"][index] = ["<i4", [2]]
    frames[1] = msgpack.packb(header)
    frames[2 + index] = np.array([3, 4], np.int32).tobytes()
    with pytest.raises(DecodeError) as info:
        decode(frames)
    assert info.value.reason == "dtype"


def _ring(n: int = 4) -> Rig:
    """n cameras 4 m from the origin on a circle, looking at it (world z up)."""
    K = np.array([[800.0, 0, 640], [0, 800.0, 360], [0, 0, 1]])
    cameras = []
    for i in range(n):
        angle = 2 * np.pi * i / n
        center = 4.0 * np.array([np.cos(angle), np.sin(angle), 0.0])
        forward = -center / np.linalg.norm(center)
        right = np.cross(forward, [0, 0, 1.0])
        down = np.cross(forward, right)
        R = np.stack([right, down, forward])  # rows: camera axes in the world
        cameras.append(Camera(f"cam{i}", (1280, 720), K, np.zeros(5), R, -R @ center))
    return Rig(tuple(cameras))


def test_track_hints_box_the_projected_track_in_every_camera():
    rig = _ring()
    rng = np.random.default_rng(4)
    body = rng.uniform([-0.25, -0.25, -0.9], [0.25, 0.25, 0.9], (70, 3))
    body[7] = np.nan
    far = body + [0.0, 0.0, 40.0]  # far above every camera's view: no box anywhere
    hints = track_hints(rig, np.stack([body, far]), [7, 8], [0.8, 1.5], t_ns=123, margin=0.1)
    assert [h.camera for h in hints] == rig.names
    for hint, camera in zip(hints, rig.cameras):
        assert hint.t_ns == 123 and hint.calib_version == hint_calib_version(camera) == Rig((camera,)).version
        np.testing.assert_array_equal(hint.track_ids, [7, 8])
        np.testing.assert_allclose(hint.scores, [0.8, 1.0])  # clipped to [0, 1]
        pixels = camera.project(body[np.isfinite(body).all(axis=1)])
        x0, y0, x1, y1 = hint.boxes[0]
        assert np.all((pixels >= [x0, y0]) & (pixels <= [x1, y1]))
        size = pixels.max(axis=0) - pixels.min(axis=0)
        np.testing.assert_allclose([x1 - x0, y1 - y0], 1.2 * size, rtol=1e-4)  # 10 % margin on every side
        assert np.all(np.isnan(hint.boxes[1]))
        decode(encode(hint))  # every hint is a valid message
    with pytest.raises(ValueError, match="2 persons, 1 track ids"):
        track_hints(rig, np.stack([body, far]), [7], [0.8, 0.9], t_ns=0)


def test_accept_hint_keeps_the_newest_hint_of_the_matching_calibration():
    assert accept_hint(None, _hint(), "abc") is None
    assert accept_hint(None, _hint(), "other") == "hint_calib_mismatch"
    assert accept_hint(None, _hint(), None) == "hint_no_calib"
    assert accept_hint(_hint(t_ns=6_000), _hint(), "abc") == "hint_stale"
    assert accept_hint(_hint(t_ns=4_000), _hint(), "abc") is None


def _person(box, tag: float) -> Person2D:
    return Person2D(box=np.array(box, np.float32), score=0.9, keypoints=np.full((3, 2), tag, np.float32),
                    confidence=np.ones(3, np.float32))


def test_persons_in_boxes_reports_the_hinted_persons_and_newcomers_only_when_searched():
    persons = [_person([500, 0, 600, 200], 0), _person([0, 0, 100, 200], 1), _person([10, 5, 110, 210], 2)]
    boxes = np.array([[5, 0, 108, 205], [300, 300, 400, 400]], np.float32)  # the second covers nobody
    hinted = persons_in_boxes(persons, boxes, np.array([11, 12]), keep_unmatched=False)
    assert [(p.keypoints[0, 0], p.track_id) for p in hinted] == [(2, 11)]  # best overlap wins, one per box
    searched = persons_in_boxes(persons, boxes, np.array([11, 12]), keep_unmatched=True)
    assert [(p.keypoints[0, 0], p.track_id) for p in searched] == [(2, 11), (0, -1), (1, -1)]
    assert persons_in_boxes([], boxes, np.array([11, 12]), keep_unmatched=True) == []


CYCLE_GRAPH = """
[nodes.cap_a]
kind = "capture"
inputs = ["sync"]
settings = {{ cameras = ["cam0", "cam1"], source = "synthetic", estimator = "synthetic", use_track_hints = true }}
[nodes.cap_b]
kind = "capture"
inputs = ["sync"]
settings = {{ cameras = ["cam2", "cam3"], source = "synthetic", estimator = "synthetic", use_track_hints = true }}
[nodes.sync]
kind = "sync"
inputs = ["cap_a", "cap_b"]
[nodes.fit]
kind = "relay"
inputs = ["sync"]
{extra}
"""


def test_launcher_accepts_the_capture_sync_cycle_and_stops_captures_first(tmp_path):
    path = tmp_path / "graph.toml"
    path.write_text(CYCLE_GRAPH.format(extra=""))
    graph = load_graph(path)
    expected = [["cap_a", "cap_b"], ["sync"], ["fit"]]
    for names in (list(graph.nodes), list(reversed(graph.nodes)), ["sync", "fit", "cap_b", "cap_a"]):
        levels = _depth_levels(graph, names)
        assert [sorted(level) for level in levels] == expected, names
    # a plain two-node loop: the node declared first counts as upstream
    path.write_text(CYCLE_GRAPH.format(extra='[nodes.x]\nkind = "relay"\ninputs = ["y"]\n'
                                             '[nodes.y]\nkind = "relay"\ninputs = ["x"]\n'))
    graph = load_graph(path)
    flat = {n: i for i, level in enumerate(_depth_levels(graph, list(graph.nodes))) for n in level}
    assert flat["x"] < flat["y"] and flat["cap_a"] < flat["sync"] < flat["fit"]


# ---------------------------------------------------------------- real processes

FPS = 30.0
REDETECT_S = 1.0
TRACKED_S = 5.0  # run until this much stage time has been received with hints flowing (start-up time varies)
HINT_GRAPH = """
[graph]
name = "hints"
stats_interval_s = 0.5

[nodes.cap]
kind = "capture"
endpoint = "ipc://{tmp}/cap.ipc"
inputs = ["sync"]
settings = {{ cameras = ["cam0", "cam1", "cam2", "cam3"], source = "synthetic", estimator = "synthetic", synth_cameras = 4, synth_fps = {fps}, synth_seed = 1, use_track_hints = true, redetect_interval_s = {redetect}, start_delay_s = 0.5 }}

[nodes.sync]
kind = "sync"
endpoint = "ipc://{tmp}/sync.ipc"
inputs = ["cap"]
settings = {{ fps = {fps}, deadline_ms = 60.0 }}
"""


def _counters(msg: NodeStats) -> dict[str, int]:
    return dict(zip(msg.counter_names, msg.counter_values.tolist()))


@pytest.mark.slow
def test_hints_replace_the_detector_while_the_track_is_held(tmp_path):
    from nodes.capture import Settings, build_synthetic_stage
    from streamer.transport import Subscriber

    graph = tmp_path / "hints.toml"
    graph.write_text(HINT_GRAPH.format(tmp=tmp_path, fps=FPS, redetect=REDETECT_S))
    sub = Subscriber({"cap": f"ipc://{tmp_path}/cap.ipc", "sync": f"ipc://{tmp_path}/sync.ipc"},
                     topics=("kp2d/", "hint/", "points3d", "stats/"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "run", str(graph)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    received = []
    deadline = time.monotonic() + 90  # the first synthetic stage of a machine computes its animation
    first_hint_ns = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            got = sub.recv(timeout_ms=100)
            if got is None:
                continue
            received.append((time.monotonic(), *got))
            topic, msg = got
            if topic.startswith("hint/") and first_hint_ns is None:
                first_hint_ns = msg.t_ns
            if topic.startswith("kp2d/") and first_hint_ns is not None and msg.t_capture_ns - first_hint_ns > TRACKED_S * 1e9:
                break
        proc.send_signal(signal.SIGTERM)
        stop_deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < stop_deadline:  # the nodes' final stats come on stopping
            got = sub.recv(timeout_ms=100)
            if got is not None:
                received.append((time.monotonic(), *got))
        assert proc.wait(timeout=5) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
        log.close()
    stage = build_synthetic_stage(Settings(cameras=("cam0", "cam1", "cam2", "cam3"), source="synthetic",
                                           estimator="synthetic", synth_cameras=4, synth_fps=FPS, synth_seed=1))
    hints = [m for _, t, m in received if t.startswith("hint/")]
    kp2d = [m for _, t, m in received if t.startswith("kp2d/")]
    points = [m for _, t, m in received if t == "points3d"]
    cap_stats = [(at, _counters(m)) for at, t, m in received if t == "stats/cap"]
    sync_stats = [_counters(m) for _, t, m in received if t == "stats/sync"]
    assert first_hint_ns is not None, "no hint was published: " + (tmp_path / "run.log").read_text()[-3000:]

    # the sync node sent one hint per camera per confirmed frame set, each boxing the tracked person's keypoints
    assert sync_stats[-1]["hints_sent"] >= len(hints) >= 4 * FPS * 2
    assert {h.camera for h in hints} == {"cam0", "cam1", "cam2", "cam3"}
    points_at = {p.t_ns: p for p in points}
    inside, tracked_person = [], []
    for hint in hints[::5]:
        camera = stage.rig.camera(hint.camera)
        assert hint.calib_version == Rig((camera,)).version
        if hint.t_ns not in points_at:  # its points3d was not received
            continue
        truth = stage.points_at((hint.t_ns - stage.settings.t0_ns) / 1e9)  # (persons, K, 3) at the frame-set time
        # the person the track follows: the one nearest to the frame set's triangulated points
        person = int(np.argmin([np.nanmedian(np.linalg.norm(points_at[hint.t_ns].points - body, axis=1))
                                for body in truth]))
        tracked_person.append(person)
        pixels = camera.project(truth[person])
        pixels = pixels[(pixels >= 0).all(axis=1) & (pixels <= camera.image_size).all(axis=1)]
        x0, y0, x1, y1 = hint.boxes[0]
        inside.append(np.mean((pixels >= [x0, y0]).all(axis=1) & (pixels <= [x1, y1]).all(axis=1)))
    inside = np.array(inside)
    print(f"tracked person(s) {sorted(set(tracked_person))}; share of its visible keypoints inside its hint box: "
          f"median {np.median(inside):.3f}, 5th percentile {np.percentile(inside, 5):.3f} over {len(inside)} hints")
    assert len(inside) >= 0.9 * len(hints[::5])
    assert np.median(inside) == 1.0 and np.mean(inside >= 0.9) >= 0.95
    assert len(set(tracked_person)) == 1  # on hinted boxes the track keeps its person

    # capture: once hints flow, frames are hinted and the detector runs only every REDETECT_S per camera
    tracked = [(at, c) for at, c in cap_stats if c.get("hinted_frames", 0) > 0]
    assert len(tracked) >= 4, "the capture node never used a hint"
    (t_first, first), (t_last, last) = tracked[0], tracked[-1]
    frames = sum(last[f"frames/cam{i}"] - first[f"frames/cam{i}"] for i in range(4))
    hinted = last["hinted_frames"] - first["hinted_frames"]
    detector = last["detector_runs"] - first["detector_runs"]
    allowed = (frames - hinted) + 4 * ((t_last - t_first) / REDETECT_S + 1.5)  # re-acquisitions + periodic searches
    print(f"while tracked ({t_last - t_first:.1f} s): {frames} frames, {hinted} hinted, {detector} detector runs "
          f"(allowed {allowed:.0f}); before: {first['detector_runs']} detector runs (acquisition)")
    assert frames >= 4 * FPS * 2 and hinted >= 0.9 * frames
    assert detector <= allowed
    assert first["detector_runs"] >= 4  # acquisition: every camera searched before any hint existed

    # hinted frames carry the tracked person with the sync node's track id; the distractor only when searched
    held = [m for m in kp2d if m.persons and all(p.track_id >= 0 for p in m.persons)]
    assert len(held) >= 0.8 * frames
    person_id = {p.person_id for p in points if p.usable}
    assert {p.track_id for m in held for p in m.persons} <= person_id
    newcomers = sum(any(p.track_id < 0 for p in m.persons) for m in kp2d[-int(frames):])
    assert newcomers <= detector + 4
    # and the track held on hinted boxes alone: the frame sets stay usable
    late = [p for p in points if p.t_ns >= hints[len(hints) // 4].t_ns]
    assert np.mean([p.usable for p in late]) >= 0.9
