"""The sync node as a real process, fed by real camera publisher processes over ZeroMQ (tcp loopback):
clock offsets and jitter, delivery jitter, dropped frames, a distractor, and one camera killed mid-run."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protocol import NodeStats, Points3D, RigCalibration
from streamer.calibration import Rig
from streamer.transport import Subscriber
from tests.sync_sim import make_scene, scene_camera, true_subject

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CAMERAS = {  # name: (clock offset ms, capture jitter ms, delivery delay ms, drop every N, stale calib every N)
    "c0": (0.0, 1.5, 6.0, 0, 0),
    "c1": (6.0, 1.5, 6.0, 10, 0),
    "c2": (-5.0, 1.5, 6.0, 0, 15),
    "c3": (3.0, 1.5, 6.0, 0, 0),
}
MAX_SPREAD_MS = 20.0
DEADLINE_MS = 60.0  # about two frame periods: tolerant of a loaded CI machine
STALE_AFTER_MS = 200.0  # a dead camera is waited for (deadline sets) for about this long, then not
FPS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    """A child process from the repository root; its output goes to `log` (a pipe could fill and block it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_sync_node_with_camera_processes(tmp_path):
    anchor_ns = time.time_ns() + 4_000_000_000
    endpoints = {name: f"tcp://127.0.0.1:{free_port()}" for name in CAMERAS}
    sync_endpoint = f"tcp://127.0.0.1:{free_port()}"
    cameras = {}
    for view, (name, (offset, jitter, delay, drop, stale)) in enumerate(CAMERAS.items()):
        cameras[name] = spawn([
            "-m", "tests.sync_sim", "publish", "--endpoint", endpoints[name], "--camera", name, "--view", str(view),
            "--views", str(len(CAMERAS)), "--anchor-ns", str(anchor_ns), "--fps", str(FPS), "--frames", "600",
            "--offset-ms", str(offset), "--jitter-ms", str(jitter), "--delay-ms", str(delay),
            "--drop-every", str(drop), "--bad-calib-every", str(stale), "--seed", str(view)], tmp_path / f"{name}.log")
    settings = ('{"cameras": ["c0", "c1", "c2", "c3"], "fps": 30.0, "max_spread_ms": %s, "deadline_ms": %s, '
                '"stale_after_ms": %s}' % (MAX_SPREAD_MS, DEADLINE_MS, STALE_AFTER_MS))
    sync = spawn(["-m", "streamer", "node", "sync", "--name", "sync", "--bind", sync_endpoint,
                  *[a for name, ep in endpoints.items() for a in ("--input", f"{name}={ep}")],
                  "--settings-json", settings, "--seconds", "60"], tmp_path / "sync.log")
    sub = Subscriber({"sync": sync_endpoint}, ("points3d", "calib", "stats/sync"))
    points: list[tuple[int, Points3D]] = []  # (receive time, message)
    rig_msg, stats, killed_at_frame = None, None, None
    try:
        give_up = time.monotonic() + 45
        first = None
        while time.monotonic() < give_up:
            got = sub.recv(100)
            if got is None:
                continue
            topic, msg = got
            if isinstance(msg, RigCalibration):
                rig_msg = msg
            elif isinstance(msg, Points3D):
                points.append((time.monotonic_ns(), msg))
                if first is None and msg.cameras == list(CAMERAS):
                    first = msg.frame_index
                if killed_at_frame is None and first is not None and msg.frame_index >= first + 45:
                    cameras["c3"].send_signal(signal.SIGKILL)  # dies: no goodbye, no heartbeat
                    killed_at_frame = msg.frame_index
                if killed_at_frame is not None and msg.frame_index >= killed_at_frame + 60:
                    break
        assert killed_at_frame is not None, \
            f"sync produced {len(points)} points3d; log: {(tmp_path / 'sync.log').read_text()[-3000:]}"
        sync.send_signal(signal.SIGTERM)
        until = time.monotonic() + 5
        while time.monotonic() < until:  # the final stats come after teardown
            got = sub.recv(100)
            if got is not None and isinstance(got[1], NodeStats):
                stats = got[1]  # the last one is the final one, unless it was lost
            if sync.poll() is not None and got is None:
                break
    finally:
        for proc in [*cameras.values(), sync]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        sub.close()
    assert sync.returncode == 0, (tmp_path / "sync.log").read_text()[-3000:]

    # the merged rig is republished downstream as state
    scene = make_scene(len(CAMERAS))
    expected_rig = Rig(tuple(scene_camera(scene, v, n) for v, n in enumerate(CAMERAS)))
    assert rig_msg is not None and rig_msg.version == expected_rig.version
    assert [c.camera for c in rig_msg.cameras] == list(CAMERAS)

    # the rig grows as calibrations arrive (a camera without one is not used); judge the full rig
    points = [(t, m) for t, m in points if m.cameras == list(CAMERAS)]
    messages = [m for _, m in points]
    names = list(CAMERAS)
    frames = [m.frame_index for m in messages]
    assert frames == sorted(set(frames)), "every frame set once, in order"
    c3 = names.index("c3")
    for m in messages:
        seqs = m.sources_seq[m.sources_seq >= 0]
        assert len(seqs) >= 2 and np.all(seqs == m.frame_index), "a frame set holds one frame index"
        assert m.sync_spread_ns <= MAX_SPREAD_MS * 1e6, "never a set wider than the limit"
        if m.frame_index % 10 == 9:
            assert m.sources_seq[names.index("c1")] == -1  # c1 drops these frames at the source
        if m.frame_index % 15 == 14:
            assert m.sources_seq[names.index("c2")] == -1  # c2 sends these with a calib_version of nothing

    last_c3 = max(m.frame_index for m in messages if m.sources_seq[c3] >= 0)
    assert killed_at_frame - 3 <= last_c3 <= killed_at_frame + 15
    before = [m for m in messages if first + 5 <= m.frame_index <= killed_at_frame - 5]
    after = [m for m in messages if m.frame_index > last_c3]
    full = [m for m in before if m.frame_index % 10 != 9 and m.frame_index % 15 != 14]
    assert sum(bool(np.all(m.sources_seq >= 0)) for m in full) >= 0.6 * len(full)  # margin for a loaded CI box
    assert all(m.sources_seq[c3] == -1 for m in after)
    # the stream goes on without the dead camera: partial sets, about one per frame
    span = after[-1].frame_index - after[0].frame_index + 1
    assert len(after) >= 0.8 * span
    received_after = np.array([t for t, m in points if m.frame_index > last_c3], np.float64)
    assert 25 < np.median(np.diff(received_after)) / 1e6 < 45  # still about one set per frame period (ms)
    regular = [m for m in after if m.frame_index % 10 != 9 and m.frame_index % 15 != 14]
    assert sum(int((m.sources_seq >= 0).sum()) == 3 for m in regular) >= 0.6 * len(regular)

    # the tracked subject (not the distractor seen by c0 and c1) is triangulated
    usable = [m for m in messages if m.usable]
    assert len(usable) >= 0.9 * len(messages), [(m.frame_index, int((m.sources_seq >= 0).sum()), int(m.n_views.astype(bool).sum())) for m in messages if not m.usable]
    errors = [np.nanmedian(np.linalg.norm(m.points - true_subject(m.frame_index), axis=1)) for m in usable]
    assert np.median(errors) < 0.01 and max(errors) < 0.05

    assert stats is not None, "final stats/sync not received"
    counters = dict(zip(stats.counter_names, stats.counter_values.tolist()))
    gauges = dict(zip(stats.gauge_names, stats.gauge_values.tolist()))
    # c1 never sends one frame in ten, c2 sends one in fifteen with a stale calib_version: whatever
    # moment this stats snapshot is from, the counters keep those ratios
    c1_sent = counters["received/c1"] + counters["dropped/c1"]
    assert abs(counters["dropped/c1"] - c1_sent / 10) <= 1.5 and counters["dropped/c1"] >= 5
    c2_seen = counters["received/c2"] + counters["calib_mismatch/c2"]
    assert abs(counters["calib_mismatch/c2"] - c2_seen / 15) <= 1.5 and counters["calib_mismatch/c2"] >= 3
    assert counters["dropped/c2"] == 0  # rejected frames are not also counted as dropped
    assert counters.get("dropped/c0", 0) == 0 and "calib_mismatch/c0" not in counters
    # the dead camera was waited for: until its frame was overdue (its timing model's predicted arrival) or, at
    # the latest, the deadline
    assert counters.get("sets/overdue", 0) + counters.get("sets/deadline", 0) >= 1, counters
    assert counters.get("sets/resolved", 0) >= 10  # ... then counted stale, not waited for
    assert gauges["sync_spread_ms_max"] <= MAX_SPREAD_MS
    assert gauges["partial_rate"] > 0.3
    assert counters.get("track_lost", 0) == 0 and len({m.person_id for m in messages}) == 1
