"""Fitter node: points3d -> pose on the real Anny body; NaN and unusable input, stale hold and recovery."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protocol.codec import decode, encode
from protocol.messages import Points3D, Pose, PoseFlag, Verdict
from streamer.node import NodeConfig
from tools.offline import VirtualClock

REPO = Path(__file__).resolve().parents[1]
FPS = 30.0
T0_NS = 5_000_000_000


@pytest.fixture(scope="module")
def walk():
    """(300, 70, 3) true Anny keypoints of the synthetic stage's walk (30 fps, subject only)."""
    from streamer.synthetic.rig import RigSettings
    from streamer.synthetic.stage import StageSettings, SyntheticStage

    stage = SyntheticStage(StageSettings(rig=RigSettings(fps=FPS), distractor=False))
    return np.stack([stage.truth_points(k)[0] for k in range(300)])


def points3d(points: np.ndarray, k: int, *, usable: bool = True, person: int = 0) -> Points3D:
    finite = np.isfinite(points).all(1)
    return Points3D(
        t_ns=T0_NS + int(k * 1e9 / FPS), frame_index=k, person_id=person, calib_version="v", cameras=["a", "b", "c", "d"],
        sources_seq=np.full(4, k, np.int64), sync_spread_ns=0, points=points.astype(np.float32),
        n_views=np.where(finite, 4, 0).astype(np.uint8), inliers=np.repeat(finite[:, None], 4, 1),
        reproj_px=np.where(finite[:, None], 1.0, np.nan).repeat(4, 1).astype(np.float32),
        confidence=np.where(finite, 0.9, 0.0).astype(np.float32), mean_reproj_px=1.0, usable=usable)


def noisy(walk: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return walk[k] + rng.normal(0, 0.01, walk[k].shape)


def test_node_fits_coasts_goes_stale_and_recovers(walk):
    from nodes.fitter import Fitter, Settings

    node = Fitter(NodeConfig(name="fitter", bind="inproc://fitter-test"), Settings(stale_after_s=0.3, shape_frames=10))
    clock = VirtualClock(T0_NS)
    node.clock = clock
    out: list[Pose] = []
    node.publish = lambda msg: out.append(msg) or True
    node.setup()
    rng = np.random.default_rng(0)

    def feed(k, points, **kw):
        clock.set(T0_NS + int(k * 1e9 / FPS))
        node.on_message("points3d", points3d(points, k, **kw))

    for k in range(30):
        feed(k, noisy(walk, k, rng))
    nan_frame = noisy(walk, 30, rng)
    nan_frame[:] = np.nan
    feed(30, nan_frame)  # all NaN: coasted, never fitted
    feed(31, noisy(walk, 31, rng), usable=False)  # flagged unusable upstream: not fitted either
    for k in range(32, 40):
        feed(k, noisy(walk, k, rng))
    assert len(out) == 40
    for pose in out:
        assert np.isfinite(pose.params).all() and np.isfinite(pose.keypoints).all()
        assert pose.joint_rotations.shape[1] == 4
        assert np.allclose(np.linalg.norm(pose.joint_rotations, axis=1), 1, atol=1e-4)
    assert all(p.verdict == Verdict.GOOD for p in out[5:30])
    assert out[30].verdict == Verdict.UNUSABLE and out[31].verdict == Verdict.UNUSABLE
    assert (out[30].flags == PoseFlag.PREDICTED).all() and out[30].n_valid == 0
    # not computed is NaN, never a loss of 0 that would read as a perfect fit; it survives the wire
    for pose in (out[30], out[31], decode(encode(out[30]))[1]):
        assert np.isnan(pose.loss) and np.isnan(pose.data_loss)
    assert all(np.isfinite(p.loss) and p.loss > 0 and np.isfinite(p.data_loss) for p in out[5:30])
    assert (out[20].flags == PoseFlag.MEASURED).all()
    err = [np.linalg.norm(p.keypoints[:21] - walk[p.frame_index][:21], axis=1).mean() for p in out[5:]]
    assert np.mean(err) < 0.03
    assert node.counters["source/coast"] == 2 and node.counters["verdict/good"] >= 30

    # input stops: after stale_after_s the last pose is re-sent as stale, held (same keypoints)
    n = len(out)
    for dt_s in (0.1, 0.2, 0.4, 0.5, 0.7, 0.8):
        now = T0_NS + int(39 * 1e9 / FPS) + int(dt_s * 1e9)
        clock.set(now)
        node.on_tick(now)
    stale = out[n:]
    assert len(stale) >= 2 and all(p.verdict == Verdict.STALE for p in stale)
    assert all(np.isnan(p.loss) and np.isnan(p.data_loss) for p in stale)
    assert np.array_equal(stale[0].keypoints, out[n - 1].keypoints) and stale[0].frame_index == 39
    # input returns (1 s later): fitted again, no jump above the slew limit
    m = len(out)
    for k in range(70, 80):
        feed(k, noisy(walk, k, rng))
    back = out[m:]
    assert len(back) == 10 and all(p.verdict != Verdict.STALE for p in back)
    assert back[-1].verdict == Verdict.GOOD
    step = np.linalg.norm(back[0].keypoints - out[m - 1].keypoints, axis=1).max()
    dt_s = (back[0].t_ns - out[m - 1].t_ns) * 1e-9
    assert step <= node.settings.max_speed_mps * dt_s * 1.02


def test_node_rejects_wrong_keypoint_count_without_crashing():
    from nodes.fitter import Fitter, Settings

    node = Fitter(NodeConfig(name="fitter", bind="inproc://fitter-test2"), Settings())
    node.clock = VirtualClock(T0_NS)
    out = []
    node.publish = lambda msg: out.append(msg) or True
    node.setup()
    node.on_message("points3d", points3d(np.zeros((17, 3)), 0))
    assert out == [] and node.counters["rejects/bad_points3d"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fitter_process_publishes_poses(walk):
    """The real node process between real ZeroMQ sockets: points3d in, pose out, never NaN."""
    from streamer.transport import Publisher, Subscriber

    up, down = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    publisher = Publisher(up, name="sync")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "node", "fitter", "--name", "fitter", "--bind", down,
         "--input", f"sync={up}", "--seconds", "200", "--settings-json", '{"stale_after_s": 0.5}'],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stderr=subprocess.DEVNULL)
    sub = Subscriber({"fitter": down}, topics=("pose", "stats/"))
    poses = []
    try:
        ready = time.monotonic() + 120  # the node is up once it publishes its stats (torch + Anny load first)
        while time.monotonic() < ready:
            publisher.service()
            item = sub.recv(timeout_ms=50)
            if item is not None and item[0].startswith("stats/"):
                break
        rng = np.random.default_rng(1)
        deadline = time.monotonic() + 60
        k = 0
        while time.monotonic() < deadline and len(poses) < 40:
            publisher.publish(points3d(noisy(walk, k % len(walk), rng), k))
            publisher.service()
            k += 1
            end = time.monotonic() + 2 / FPS  # half rate: the node keeps up on a loaded 2-core machine
            while time.monotonic() < end:
                item = sub.recv(timeout_ms=5)
                if item is not None and isinstance(item[1], Pose):
                    poses.append(item[1])
        assert len(poses) >= 40, f"only {len(poses)} poses"
        assert all(isinstance(p, Pose) and np.isfinite(p.params).all() for p in poses)
        assert sum(p.verdict == Verdict.GOOD for p in poses) >= 30, [(p.frame_index, p.verdict, p.iterations) for p in poses]
        # input stops: stale poses follow
        end = time.monotonic() + 20  # the node may first work through a backlog on a loaded machine
        stale = []
        while time.monotonic() < end and not stale:
            item = sub.recv(timeout_ms=50)
            if item is not None and isinstance(item[1], Pose) and item[1].verdict == Verdict.STALE:
                stale.append(item[1])
        assert stale
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sub.close()
        publisher.close()


NODE_ONLY_SETTINGS = {"body_model", "mhr_model", "mhr_checkpoint", "device", "torch_threads", "information_metric",
                      "stale_after_s", "stale_interval_s", "forget_after_s"}


def test_node_defaults_are_the_tracking_library_defaults():
    """The node repeats no tracking default (one source of truth: TrackSettings), and each of its tracking
    settings reaches the library."""
    import dataclasses

    from nodes.fitter import Settings, track_settings
    from streamer.fitting.track import TrackSettings

    assert track_settings(Settings()) == TrackSettings()
    tracking = [f for f in dataclasses.fields(Settings) if f.name not in NODE_ONLY_SETTINGS]
    assert len(tracking) == 23
    for f in tracking:
        value = getattr(Settings(), f.name)
        changed = ((not value) if isinstance(value, bool) else value + 1 if isinstance(value, int)
                   else value / 2 if f.name == "offset_gain" else value * 2 + 0.1)  # a gain is a share in (0, 1]
        assert track_settings(Settings(**{f.name: changed})) != TrackSettings(), f.name
