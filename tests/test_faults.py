"""Faults under load: the demo graph at 8 cameras x 60 fps as real processes, with nodes killed,
garbage injected into the sync's input and one capture process's clock off by 300 ms.

Each test runs one graph (~40-60 s on a loaded 2-core machine) and checks live what the sync and
the fitter publish, then the recorded take (`streamer.take_summary`)."""
from __future__ import annotations

import time
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import zmq

from protocol import encode
from protocol.messages import Keypoints2D, Person2D, Verdict
from streamer.clock import MAX_DRIFT_PPM, REESTIMATE_S
from streamer.launch import load_graph
from streamer.recording import read_take
from streamer.take_summary import load_take, summarize
from streamer.transport import Subscriber
from tools.demo import DEMO_GRAPH, TAKE_NAME, LoggingSupervisor, adjust_graph, warm_stage_cache

pytestmark = pytest.mark.slow

CAMERAS = 8
FPS = 60.0
STARTUP_S = 120.0


def _graph(tmp_path: Path, base_port: int, edit=None) -> Path:
    doc = adjust_graph(tomllib.loads(DEMO_GRAPH.read_text()), cameras=CAMERAS, fps=FPS, base_port=base_port,
                       take_path=str(tmp_path / TAKE_NAME))
    for name in ("monitor", "avatar"):  # consumers that do not matter here: CPU for the rest
        del doc["nodes"][name]
    if edit is not None:
        edit(doc)
    warm_stage_cache(doc)
    path = tmp_path / "graph.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


class _Running:
    """The graph's processes (host `host` only) plus a subscriber to points3d and pose."""

    def __init__(self, graph_path: Path, host: str | None = None):
        self.graph = load_graph(graph_path)
        self.supervisor = LoggingSupervisor(self.graph, graph_path.parent / "logs", host=host)
        self.sub = Subscriber({"sync": self.graph.nodes["sync"].connect, "fitter": self.graph.nodes["fitter"].connect},
                              ("points3d", "pose"), hwm=10_000)
        self.points: list[tuple[float, object]] = []
        self.poses: list[tuple[float, object]] = []

    def __enter__(self) -> "_Running":
        self.supervisor.start()
        self.pump_until(lambda: self.poses, STARTUP_S, "the first pose")
        return self

    def __exit__(self, *exc) -> None:
        self.sub.close()
        self.supervisor.stop()

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.supervisor.poll()
            got = self.sub.recv(20)
            if got is not None:
                (self.points if got[0] == "points3d" else self.poses).append((time.monotonic(), got[1]))

    def pump_until(self, condition, timeout_s: float, what: str) -> float:
        start = time.monotonic()
        while not condition():
            assert time.monotonic() - start < timeout_s, (
                f"no {what} within {timeout_s} s (logs: {self.supervisor.log_dir})")
            self.pump(0.1)
        return time.monotonic()

    def kill(self, node: str) -> None:
        self.supervisor.procs[node].popen.kill()


def _column(points, camera: str) -> np.ndarray:
    return np.array([p.sources_seq[p.cameras.index(camera)] if camera in p.cameras else -1 for p in points])


def test_killed_capture_and_sync_recover(tmp_path):
    with _Running(_graph(tmp_path, 7100)) as run:
        run.pump(3.0)
        before = [p for t, p in run.points]
        killed_ns = time.time_ns()  # stage time ~ wall clock here (the sync, clock master, is anchored to it)
        run.kill("cam7")  # the launcher restarts it (on-failure, 0.5 s backoff)
        run.pump_until(lambda: run.supervisor.procs["cam7"].restarts >= 1, 20, "restart of cam7")
        respawned_ns = time.time_ns()

        def rejoined() -> bool:
            return any(p.t_ns > respawned_ns and _column([p], "cam7")[0] >= 0 for t, p in run.points)

        run.pump_until(rejoined, 30, "cam7 frames after its restart")
        run.pump(2.0)
        later = sorted((p for t, p in run.points if p.t_ns > killed_ns + 200_000_000), key=lambda p: p.t_ns)
        back = next(i for i, p in enumerate(later) if _column([p], "cam7")[0] >= 0)
        outage, after = later[:back], later[back:]
        poses_during = [p for t, p in run.poses if killed_ns < p.t_ns < later[back].t_ns]
        # the sync went on with 7 views: sets without cam7 (in stage time), fewer views per point, poses kept flowing
        assert len(outage) > 20, len(outage)
        assert max((_column([p], "cam7")[0] < 0) for p in outage)  # by construction; sets of <= 7 views
        assert np.mean([(p.sources_seq >= 0).sum() for p in outage]) <= 7.0
        assert (_column(before, "cam7") >= 0).mean() > 0.25  # partial sets happen on a loaded machine
        # fits of 7-view sets went on (a stall on a loaded machine may flag some stale)
        assert sum(p.verdict != Verdict.STALE for p in poses_during) >= 1
        assert (_column(after, "cam7") >= 0).mean() > 0.25  # rejoined

        killed_at = time.monotonic()
        run.kill("sync")
        run.pump_until(lambda: any(t > killed_at and p.verdict == Verdict.STALE for t, p in run.poses), 10,
                       "stale pose while the sync is down")
        stale = [p for t, p in run.poses if t > killed_at and p.verdict == Verdict.STALE]
        held = [p for t, p in run.poses if p.verdict != Verdict.STALE and (p.t_ns, p.person_id) == (
            stale[0].t_ns, stale[0].person_id)]
        assert held and np.allclose(stale[0].keypoints, held[-1].keypoints)  # the last pose, held, flagged stale
        run.pump_until(lambda: run.supervisor.procs["sync"].restarts >= 1, 20, "restart of the sync")
        sync_back_ns = time.time_ns()
        recovered = run.pump_until(lambda: any(p.verdict in (Verdict.GOOD, Verdict.POOR) and p.t_ns > sync_back_ns
                                               for t, p in run.poses), 40, "fresh poses after the sync restarted")
        assert recovered - killed_at < 40
        restarts = {n: p.restarts for n, p in run.supervisor.procs.items()}
    assert restarts["sync"] == 1 and restarts["cam7"] == 1
    assert all(v == 0 for n, v in restarts.items() if n not in ("sync", "cam7")), restarts


def _defective_messages(rng: np.random.Generator) -> list[tuple[list[bytes], str]]:
    """(frames, kind) of defective kp2d messages (a topic the sync subscribes to, so none is filtered by ZMQ)."""
    def kp2d(seq: int, box=None) -> Keypoints2D:
        person = Person2D(box=np.array(box or [0, 0, 5, 5], np.float32), score=0.9,
                          keypoints=np.full((70, 2), 3.0, np.float32), confidence=np.ones(70, np.float32))
        return Keypoints2D(camera="cam0", seq=seq, frame_index=seq, t_capture_ns=1, image_size=np.array(
            [10, 10], np.int32), calib_version="x", persons=[person])

    good = encode(kp2d(1))
    return [
        ([b"kp2d/cam0", *(bytes(rng.integers(0, 256, 40, dtype=np.uint8)) for _ in range(2))], "malformed"),
        (good[:-1], "truncated"),
        ([b"kp2d/cam0", good[1][:-5], *good[2:]], "truncated header"),
        ([*good, b"\0" * (5 * 2**20)], "oversized"),
        (encode(kp2d(2, box=[0, np.nan, 1, 1])), "NaN"),
    ]


def test_injected_garbage_and_a_clock_off_by_300ms(tmp_path):
    offset_ns = 300_000_000

    def edit(doc):
        doc["hosts"] = {"local": {"address": "127.0.0.1"}, "outside": {"address": "127.0.0.1"}}
        for spec in doc["nodes"].values():
            spec["host"] = "local"
        doc["nodes"]["inject"] = {"kind": "relay", "host": "outside", "port": 7290, "restart": "never"}
        doc["nodes"]["sync"]["inputs"] = [*doc["nodes"]["sync"]["inputs"], "inject"]
        doc["nodes"]["cam7"]["clock_offset_ns"] = offset_ns  # this process's clock is 300 ms ahead

    rng = np.random.default_rng(0)
    garbage = _defective_messages(rng)
    context = zmq.Context.instance()
    injector = context.socket(zmq.PUB)  # stands where the graph's `inject` node (host "outside") would be
    injector.linger = 0
    injector.bind("tcp://127.0.0.1:7290")
    sent = Counter()
    try:
        with _Running(_graph(tmp_path, 7200, edit), host="local") as run:
            run.pump(3.0)  # past start-up stalls (e.g. JIT compiles): the window below starts clean
            inject_start_ns = time.time_ns()
            end = time.monotonic() + 6.0
            i = 0
            while time.monotonic() < end:  # ~300 defective messages/s, one 5 MiB frame every ~0.3 s
                frames, kind = garbage[i % len(garbage)]
                if kind != "oversized" or i % 100 == 3:
                    injector.send_multipart(frames)
                    sent[kind] += 1
                i += 1
                if i % 10 == 0:
                    run.pump(0.03)
            inject_end_ns = time.time_ns()
            run.pump(2.5)
            points = [p for t, p in run.points]
    finally:
        injector.close()
    summary = summarize(load_take(tmp_path / TAKE_NAME))
    sync_counters = _final_counters(tmp_path / TAKE_NAME, "sync")
    rejects = sum(v for k, v in sync_counters.items() if k.startswith("rejects/"))
    assert sum(sent.values()) > 1000
    assert rejects == sum(sent.values()), (sent, {k: v for k, v in sync_counters.items() if "reject" in k})
    assert summary["unaccounted_drops"] == 0, summary["drops"]  # nothing else lost
    # nothing else lost while the garbage came in: no seq gap in any camera's kp2d, no transport drop
    lost = _lost_between(tmp_path / TAKE_NAME, inject_start_ns - 1_000_000_000, inject_end_ns + 1_500_000_000)
    assert lost == 0, lost
    assert summary["restarts"] == {}
    # the clock: cam7's offset was estimated (its stats report a correction of about -300 ms) ...
    cam7, rtt_us = _final_offset_and_rtt(tmp_path / TAKE_NAME, "cam7")
    # NTP bound (rtt/2 of the kept sample) plus what drift following may add between estimates
    # (|drift| <= MAX_DRIFT_PPM over REESTIMATE_S), plus 1 ms
    drift_ns = MAX_DRIFT_PPM * 1e-6 * REESTIMATE_S * 1e9
    assert abs(cam7 + offset_ns) < max(5_000_000, rtt_us * 1000 / 2 + drift_ns + 1_000_000), (cam7, rtt_us)
    # ... and no frame set mixes frames of different instants. The cameras are not genlocked (each has
    # a trigger phase within one frame period), so a correct set holds frames k or k+1 of the stage;
    # a set built on cam7's wrong clock would mix frames ~18 apart (300 ms at 60 fps).
    data = load_take(tmp_path / TAKE_NAME)
    frame_of = {}
    for _, _, msg in read_take(tmp_path / TAKE_NAME, topics=[f"kp2d/cam{i}" for i in range(CAMERAS)]):
        frame_of[(msg.camera, msg.seq)] = msg.frame_index
    spans, with_cam7 = [], 0
    for p in data.points3d.values():
        frames = [frame_of[(c, int(s))] for c, s in zip(p.cameras, p.sources_seq) if s >= 0 and (c, int(s)) in frame_of]
        if len(frames) >= 2:
            spans.append(max(frames) - min(frames))
            with_cam7 += int("cam7" in p.cameras and p.sources_seq[p.cameras.index("cam7")] >= 0)
    assert len(spans) > 200 and max(spans) <= 1, Counter(spans)
    assert with_cam7 > 0.25 * len(spans)  # the off-clock camera did take part
    assert len(points) > 200 and summary["mpjpe_mm"] < 60


def _lost_between(take: Path, start_ns: int, end_ns: int) -> int:
    """Increase of the sync's kp2d seq gaps and transport drops between its stats records around the window."""
    stats = [s for s in load_take(take).stats if s.node == "sync"]
    first = [s for s in stats if s.t_ns <= start_ns][-1]
    last = next(s for s in stats if s.t_ns >= end_ns)

    def lost(s) -> int:
        counters = dict(zip(s.counter_names, s.counter_values.tolist()))
        return counters.get("drops_in", 0) + sum(v for k, v in counters.items() if k.startswith("dropped/"))

    return lost(last) - lost(first)


def _final_counters(take: Path, node: str) -> dict:
    stats = [s for s in load_take(take).stats if s.node == node]
    return dict(zip(stats[-1].counter_names, stats[-1].counter_values.tolist()))


def _final_offset_and_rtt(take: Path, node: str) -> tuple[int, float]:
    last = [s for s in load_take(take).stats if s.node == node][-1]
    return last.clock_offset_ns, dict(zip(last.gauge_names, last.gauge_values.tolist())).get("clock_rtt_us", 0.0)
