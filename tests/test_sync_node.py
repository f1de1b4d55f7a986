"""The sync node's own logic, driven in-process by direct calls (the process test covers the sockets):
calibration merge and republish, calib_version and keypoint-count rejects, points3d contents."""
from __future__ import annotations

import time

import numpy as np
import pytest

from protocol import Keypoints2D, Person2D, Points3D, RigCalibration
from streamer.calibration import Rig
from streamer.node import NodeConfig
from tests.sync_sim import make_scene, persons_for, scene_camera, true_subject

nodes_sync = pytest.importorskip("nodes.sync")

N_VIEWS = 4
PERIOD_NS = 33_333_333


class VirtualTime:
    """The `time` module as the sync node sees it in these tests: `monotonic_ns` advances 0.1 ms per call, so
    deadlines and staleness follow the messages, not how long this (possibly loaded) machine takes."""

    def __init__(self):
        self._now_ns = 10**12

    def monotonic_ns(self) -> int:
        self._now_ns += 100_000
        return self._now_ns

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture(autouse=True)
def virtual_time(monkeypatch):
    monkeypatch.setattr(nodes_sync, "time", VirtualTime())


class Harness:
    """A Sync node whose publish / publish_state land in lists."""

    def __init__(self, **settings):
        self.node = nodes_sync.Sync(NodeConfig(name="sync", bind="inproc://unused"), nodes_sync.Settings(**settings))
        self.data: list = []
        self.state: list = []
        self.node.publish = lambda msg: self.data.append(msg) or True
        self.node.publish_state = lambda msg: self.state.append(msg) or True
        self.node.setup()
        self.scene = make_scene(N_VIEWS)
        self.calibs = {f"c{v}": Rig((scene_camera(self.scene, v, f"c{v}"),)).to_message() for v in range(N_VIEWS)}

    def send_calibs(self):
        for msg in self.calibs.values():
            self.node.on_message("calib", msg)

    def frame(self, view: int, k: int, *, version: str | None = None, persons=None) -> Keypoints2D:
        name = f"c{view}"
        rng = np.random.default_rng(1000 * k + view)
        return Keypoints2D(
            camera=name, seq=k, frame_index=k, t_capture_ns=10**12 + k * PERIOD_NS + view * 1_000_000,
            image_size=np.array(self.scene.image_size, np.int32),
            calib_version=self.calibs[name].version if version is None else version,
            persons=persons_for(self.scene, view, k, rng) if persons is None else persons)


def points(h: Harness) -> list[Points3D]:
    return [m for m in h.data if isinstance(m, Points3D)]


def test_merged_rig_is_republished_and_sets_are_triangulated():
    h = Harness(cameras=("c0", "c1", "c2", "c3"))
    h.send_calibs()
    rigs = [m for m in h.state if isinstance(m, RigCalibration)]
    assert [c.camera for c in rigs[-1].cameras] == ["c0", "c1", "c2", "c3"]
    expected = Rig(tuple(scene_camera(h.scene, v, f"c{v}") for v in range(N_VIEWS)))
    assert rigs[-1].version == expected.version
    for k in range(6):
        for v in range(N_VIEWS):
            h.node.on_message(f"kp2d/c{v}", h.frame(v, k))
    out = points(h)
    assert [m.frame_index for m in out] == list(range(6))  # a complete set goes out on its last frame
    for m in out:
        assert m.usable and m.calib_version == expected.version and m.cameras == ["c0", "c1", "c2", "c3"]
        assert m.sources_seq.tolist() == [m.frame_index] * N_VIEWS and m.sync_spread_ns == 3_000_000
        assert m.points.shape == (70, 3) and m.points.dtype == np.float32
        error = np.linalg.norm(m.points - true_subject(m.frame_index), axis=1)
        assert np.nanmedian(error) < 0.01  # the subject, not the distractor that c0 and c1 also see
    h.node.teardown()
    assert len(points(h)) == 6
    counters = h.node.counters
    assert counters["used/c0"] == 6 and counters["sets/complete"] == 6 and counters["bootstraps"] == 1


def test_frames_with_a_foreign_calibration_or_keypoint_count_are_counted_and_dropped():
    h = Harness(cameras=("c0", "c1", "c2", "c3"))
    h.node.on_message("kp2d/c0", h.frame(0, 0))  # before any calibration
    assert h.node.counters["no_calib/c0"] == 1
    h.send_calibs()
    for k in range(4):
        for v in range(N_VIEWS):
            if v == 2 and k == 1:
                msg = h.frame(v, k, version="ffffffffffffffff")
            elif v == 3 and k == 2:
                kp = np.zeros((17, 2), np.float32)
                msg = h.frame(v, k, persons=[Person2D(box=np.array([0, 0, 1, 1], np.float32), score=1.0,
                                                      keypoints=kp, confidence=np.ones(17, np.float32))])
            else:
                msg = h.frame(v, k)
            h.node.on_message(f"kp2d/c{v}", msg)
    h.node.teardown()
    counters = h.node.counters
    assert counters["calib_mismatch/c2"] == 1 and counters["keypoint_count_mismatch/c3"] == 1
    assert counters["dropped/c2"] == 0 and counters["dropped/c3"] == 0  # rejected, not counted twice
    by_frame = {m.frame_index: m for m in points(h)}
    assert by_frame[1].sources_seq.tolist() == [1, 1, -1, 1]
    assert by_frame[2].sources_seq.tolist() == [2, 2, 2, -1]
    assert counters.get("frame_set_errors", 0) == 0


def test_cameras_from_calibration_when_none_are_configured():
    h = Harness()
    h.send_calibs()
    for k in range(3):
        for v in range(N_VIEWS):
            h.node.on_message(f"kp2d/c{v}", h.frame(v, k))
    h.node.teardown()
    out = points(h)
    assert len(out) == 3 and out[0].cameras == ["c0", "c1", "c2", "c3"] and all(m.usable for m in out)


def test_fewer_than_six_valid_points_is_unusable_not_fitted():
    h = Harness(cameras=("c0", "c1", "c2", "c3"))
    h.send_calibs()
    for k in range(3):
        for v in range(N_VIEWS):
            persons = persons_for(h.scene, v, k, np.random.default_rng(k))
            for p in persons:  # only 4 keypoints detected with confidence
                p.confidence[4:] = 0.0
            h.node.on_message(f"kp2d/c{v}", h.frame(v, k, persons=persons))
    h.node.teardown()
    out = points(h)
    assert out and not any(m.usable for m in out)
    assert all(int((m.n_views >= 2).sum()) <= 4 for m in out)
    assert all(np.isnan(m.points[m.n_views < 2]).all() for m in out)


def test_a_joining_camera_keeps_the_track_a_recalibrated_one_resets_it():
    h = Harness(cameras=("c0", "c1", "c2", "c3"))
    for name in ("c0", "c1", "c2"):
        h.node.on_message("calib", h.calibs[name])

    def feed(frames):
        for k in frames:
            for v in range(N_VIEWS):
                h.node.on_message(f"kp2d/c{v}", h.frame(v, k))

    feed(range(0, 3))
    h.node.on_message("calib", h.calibs["c3"])  # joins: same world, the track goes on
    feed(range(3, 6))
    assert h.node.local["bootstraps"] == 1
    moved = Rig((scene_camera(h.scene, 1, "c1"),)).to_message()
    moved.cameras[0].t = moved.cameras[0].t + np.array([0.0, 0.0, 0.05])
    moved = Rig.from_message(type(moved)(version="", cameras=moved.cameras)).to_message()
    h.node.on_message("calib", moved)  # c1 recalibrated: re-acquire
    feed(range(6, 9))  # c1 still sends frames made with its old calibration: rejected
    assert h.node.local["bootstraps"] == 2 and h.node.counters["calib_mismatch/c1"] == 3
    views_used = [int((m.sources_seq >= 0).sum()) for m in points(h)]  # a set may name c3 before c3 has a frame in it
    assert views_used[:3] == [3, 3, 3] and views_used[3] == 4 and len(points(h)[3].cameras) == 4
    assert len({m.person_id for m in points(h)}) == 2


def test_timing_model_setting_reaches_the_assembler():
    for predict in (True, False):
        h = Harness(cameras=("c0", "c1"), predict_timing=predict)
        assert h.node.assembler.settings.predict_timing is predict


def test_setup_loads_the_triangulation_kernels_before_the_first_frame_set():
    """In a fresh process the compiled kernels are loaded by the node's setup (the first frame set used to pay
    ~0.3 s for it, a stall with every camera queueing behind; with box hints it lost the track)."""
    import subprocess
    import sys

    code = ("import streamer.triangulation as t, nodes.sync as s\n"
            "from streamer.node import NodeConfig\n"
            "before = len(t._robust_kernel.signatures)\n"
            "node = s.Sync(NodeConfig(name='sync', bind='inproc://x'), s.Settings())\n"
            "node.publish_state = lambda msg: True\n"
            "node.setup()\n"
            "print(before, len(t._robust_kernel.signatures), len(t._contract.signatures))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "1", "1"]
