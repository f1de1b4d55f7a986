"""streamer/node.py with real node processes: lifecycle, stats, graceful stop, settings parsing,
and the fault drill: the launcher restarts a killed publisher; subscribers see it die (heartbeat)
and recover."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from streamer.node import MIN_RATE_WINDOW_S, settings_from_dict, window_rate
from streamer.transport import Subscriber

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class _Settings:
    rate_hz: float = 1.0
    cameras: tuple[str, ...] = ()
    size: tuple[int, int] = (1, 2)
    name: str | None = None
    on: bool = False


def test_settings_from_dict_converts_and_validates():
    s = settings_from_dict(_Settings, {"rate_hz": 3, "cameras": ["a", "b"], "size": [4, 5], "name": None, "on": True})
    assert s == _Settings(3.0, ("a", "b"), (4, 5), None, True)
    for bad, text in [
        ({"rate_hz": "x"}, "settings.rate_hz: expected a number"),
        ({"cameras": "a"}, "settings.cameras: expected a list"),
        ({"cameras": [1]}, "settings.cameras[0]: expected a string"),
        ({"size": [1]}, "settings.size: expected 2 items"),
        ({"on": 1}, "settings.on: expected true or false"),
        ({"nope": 1}, "unknown setting(s) ['nope']"),
    ]:
        with pytest.raises(ValueError, match=text.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
            settings_from_dict(_Settings, bad)


def test_window_rate_over_a_too_short_window_falls_back_instead_of_exploding():
    assert window_rate(50, 0.5) == 100.0
    assert window_rate(3, MIN_RATE_WINDOW_S) == 3 / MIN_RATE_WINDOW_S
    assert window_rate(130, 1e-9, fallback=42.0) == 42.0  # shutdown stats right after the previous ones
    assert window_rate(130, MIN_RATE_WINDOW_S * 0.99) == 0.0
    assert window_rate(5, 0.0) == 0.0 and window_rate(5, -1.0, fallback=7.0) == 7.0
    assert window_rate(5, float("nan"), fallback=1.5) == 1.5


def spawn_node(kind: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamer", "node", kind, *args], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)


def collect(sub: Subscriber, seconds: float, stop=lambda items: False) -> list:
    items = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop(items):
        got = sub.recv(50)
        if got is not None:
            items.append((sub.last_peer, *got))
    return items


def stats_of(items, node: str):
    return [m for _, t, m in items if t == f"stats/{node}"]


@pytest.mark.slow
def test_pulse_node_publishes_data_state_and_stats_then_stops_gracefully():
    proc = spawn_node("pulse", "--name", "p", "--bind", "tcp://127.0.0.1:6510", "--stats-s", "0.5",
                      "--settings-json", '{"camera": "c7", "rate_hz": 50}')
    sub = Subscriber({"p": "tcp://127.0.0.1:6510"}, ("",))
    try:
        items = collect(sub, 15, stop=lambda it: len(stats_of(it, "p")) >= 3)
        topics = {t for _, t, _ in items}
        assert {"kp2d/c7", "calib", "stats/p"} <= topics
        kp = [m for _, t, m in items if t == "kp2d/c7"]
        assert [m.seq for m in kp] == list(range(kp[0].seq, kp[0].seq + len(kp)))  # none lost
        last = stats_of(items, "p")[-1]
        assert 30 < last.fps < 56  # 50 Hz asked; a loaded machine may lag a little
        counters = dict(zip(last.counter_names, last.counter_values))
        gauges = dict(zip(last.gauge_names, last.gauge_values))
        assert counters["drops_out"] == 0 and counters["published"] > 50
        assert gauges["pid"] == proc.pid
        assert last.latency_ms[0] <= last.latency_ms[1] <= last.latency_ms[2] < 50
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        tail = collect(sub, 1.0)
        final = stats_of(tail, "p")
        assert final, "final stats flushed at shutdown"
        assert 0 <= final[-1].fps < 56  # over the short last window: measured or the previous value, never huge
        log = proc.stderr.read()
        assert "node=p level=INFO" in log and "signal SIGTERM" in log and "stop exit=0" in log
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()


@pytest.mark.slow
def test_launcher_restarts_a_killed_publisher_and_subscribers_recover(tmp_path):
    graph = tmp_path / "fault.toml"
    graph.write_text("""
[graph]
base_port = 6530
heartbeat_interval_s = 0.1
stats_interval_s = 0.25

[nodes.pulse]
kind = "pulse"
settings = { camera = "cam0", rate_hz = 30.0 }

[nodes.relay]
kind = "relay"
inputs = ["pulse"]
""")
    peers = {"pulse": "tcp://127.0.0.1:6530", "relay": "tcp://127.0.0.1:6531"}
    sub = Subscriber(peers, ("",), heartbeat_interval_s=0.1)
    launcher = subprocess.Popen([sys.executable, "-m", "streamer", "run", str(graph), "--seconds", "60"], cwd=REPO)
    events: list[tuple[str, bool]] = []

    def watch(seconds: float, stop) -> list:
        items = []
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop(items):
            got = sub.recv(20)
            if got is not None:
                items.append((sub.last_peer, *got))
            events.extend(sub.check_liveness())
        return items

    try:
        items = watch(20, lambda it: stats_of(it, "pulse") and any(p == "relay" and t == "kp2d/cam0" for p, t, _ in it))
        pid = int(dict(zip(stats_of(items, "pulse")[-1].gauge_names, stats_of(items, "pulse")[-1].gauge_values))["pid"])
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        # the subscribers (this test and the relay node) see the publisher die ...
        watch(5, lambda it: ("pulse", False) in events)
        assert ("pulse", False) in events
        detect_s = time.monotonic() - killed_at
        assert detect_s < 2.0

        # ... the launcher restarts it (new pid), data flows through the relay again
        def recovered(it):
            new = [m for m in stats_of(it, "pulse") if dict(zip(m.gauge_names, m.gauge_values))["pid"] != pid]
            relayed = [m for p, t, m in it if p == "relay" and t == "kp2d/cam0"]
            relay_stats = [dict(zip(m.counter_names, m.counter_values)) for m in stats_of(it, "relay")]
            return new and relayed and any(c.get("peer_dead", 0) >= 1 and c.get("peer_revived", 0) >= 2 for c in relay_stats)

        items = watch(20, recovered)
        assert recovered(items), "publisher not restarted or relay did not recover"
        assert ("pulse", True) in events[events.index(("pulse", False)):]
        fresh = [m for p, t, m in items if p == "relay" and t == "kp2d/cam0"]
        assert fresh[-1].frame_index < 600  # frames of the restarted publisher (it counts from 0)
        assert launcher.poll() is None
    finally:
        launcher.send_signal(signal.SIGINT)
        rc = launcher.wait(20)
        sub.close()
    assert rc == 0  # every node stopped cleanly


@pytest.mark.slow
def test_curve_graph_serves_only_nodes_with_keys(tmp_path):
    from streamer.transport import generate_keypair_files, load_keypair, load_public_key

    keys = tmp_path / "keys"
    for name in ("pulse", "relay", "viewer"):
        generate_keypair_files(keys, name)
    graph = tmp_path / "curve.toml"
    graph.write_text("""
[graph]
base_port = 6550
keys_dir = "keys"

[nodes.pulse]
kind = "pulse"

[nodes.relay]
kind = "relay"
inputs = ["pulse"]
""")
    viewer = Subscriber({"relay": "tcp://127.0.0.1:6551"}, ("kp2d/",), curve=load_keypair(keys / "viewer.key_secret"),
                        server_keys={"relay": load_public_key(keys / "relay.key")})
    plain = Subscriber({"relay": "tcp://127.0.0.1:6551", "pulse": "tcp://127.0.0.1:6550"}, ("",))
    launcher = subprocess.Popen([sys.executable, "-m", "streamer", "run", str(graph), "--seconds", "60"], cwd=REPO)
    try:
        got = collect(viewer, 20, stop=lambda it: len(it) >= 5)
        assert len(got) >= 5, "an authorised CURVE client gets the relayed data"
        assert collect(plain, 1.0) == [] and plain.received == 0
    finally:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(20) == 0
        viewer.close(), plain.close()


@pytest.mark.slow
def test_hook_exceptions_are_counted_and_the_loop_goes_on():
    from streamer.node import Input, Node, NodeConfig

    class Fragile(Node):
        INPUT_TOPICS = ("kp2d/",)

        def setup(self):
            self.tick_interval_s = 0.05

        def on_message(self, topic, msg):
            raise RuntimeError("boom")

        def on_tick(self, now_ns):
            raise RuntimeError("tick boom")

    upstream = spawn_node("pulse", "--name", "up", "--bind", "tcp://127.0.0.1:6560", "--settings-json", '{"rate_hz": 50}')
    try:
        node = Fragile(NodeConfig(name="fragile", bind="tcp://127.0.0.1:0", inputs=(Input("up", "tcp://127.0.0.1:6560"),),
                                  seconds=3.0))
        assert node.run() == 0
    finally:
        upstream.terminate()
        upstream.wait(10)
    assert node.counters["errors/on_message"] > 10
    assert node.counters["errors/on_tick"] > 10


def test_stats_stay_readable_with_infinite_gauges_and_too_many_counters():
    from streamer.node import Node, NodeConfig

    class Noisy(Node):
        INPUT_TOPICS = ()

        def setup(self):
            self.gauge("forever", float("inf"))
            for i in range(300):
                self.count(f"c{i:03d}_" + "x" * 120)

    sub = Subscriber({"noisy": "tcp://127.0.0.1:6570"}, ("stats/",))
    node = Noisy(NodeConfig(name="noisy", bind="tcp://127.0.0.1:6570", stats_interval_s=0.2, seconds=1.0))
    assert node.run() == 0
    got = collect(sub, 2.0, stop=lambda it: len(it) >= 2)
    sub.close()
    assert got and not sub.rejects
    stats = got[-1][2]
    gauges = dict(zip(stats.gauge_names, stats.gauge_values))
    assert np.isnan(gauges["forever"]) and len(stats.counter_names) == 256


def test_endpoint_in_use_is_a_clear_error_with_exit_code_2(caplog):
    from streamer.node import Node, NodeConfig
    from streamer.transport import Publisher

    holder = Publisher("tcp://127.0.0.1:0", name="holder")
    node = Node(NodeConfig(name="late", bind=holder.endpoint, seconds=1.0))
    with caplog.at_level("ERROR"):
        assert node.run() == 2
    assert "cannot set up sockets" in caplog.text and holder.endpoint in caplog.text
    holder.close()


def test_a_node_runs_in_a_thread_and_stops_on_request():
    import threading

    from streamer.node import Node, NodeConfig

    class Ticker(Node):
        INPUT_TOPICS = ()

        def setup(self):
            self.tick_interval_s = 0.01
            self.ticks = 0

        def on_tick(self, now_ns):
            self.ticks += 1

    node = Ticker(NodeConfig(name="t", bind="tcp://127.0.0.1:0"))
    result = []
    thread = threading.Thread(target=lambda: result.append(node.run()))
    thread.start()
    time.sleep(0.5)
    node.stop()
    thread.join(5)
    assert result == [0] and node.ticks > 10


def test_dispatch_interval_takes_the_newest_per_topic_at_most_that_often():
    import threading

    from protocol import Keypoints2D
    from streamer.node import Input, Node, NodeConfig
    from streamer.transport import Publisher

    class Viewer(Node):
        INPUT_TOPICS = ("kp2d/",)

        def setup(self):
            self.dispatch_interval_s = 0.05
            self.dispatches = 0
            self.seen: list[tuple[int, float, str, int]] = []  # (dispatch, time, topic, seq)

        def _dispatch(self, sub):  # count the loop's dispatches (the runtime's internals, under test here)
            self.dispatches += 1
            super()._dispatch(sub)

        def on_message(self, topic, msg):
            self.seen.append((self.dispatches, time.monotonic(), topic, msg.seq))

    pub = Publisher("tcp://127.0.0.1:0", name="cams")
    node = Viewer(NodeConfig(name="viewer", bind="tcp://127.0.0.1:0", inputs=(Input("cams", pub.endpoint),),
                             latest=True, seconds=2.0))
    thread = threading.Thread(target=node.run)
    thread.start()
    cameras = [f"cam{i}" for i in range(4)]
    seq = 0
    deadline = time.monotonic() + 1.8
    while time.monotonic() < deadline:  # 4 topics x ~250 Hz
        for cam in cameras:
            pub.publish(Keypoints2D(camera=cam, seq=seq, frame_index=seq, t_capture_ns=seq, image_size=np.array(
                [640, 480], np.int32), calib_version="", persons=[]))
        pub.service()
        seq += 1
        time.sleep(0.004)
    thread.join(10)
    pub.close()
    assert node.seen, "nothing was dispatched"
    assert node.dispatches <= 2.0 / 0.05 + 2  # at most one dispatch per interval (not one per message) ...
    batches: dict[int, list] = {}
    for dispatch, t, topic, s in node.seen:
        batches.setdefault(dispatch, []).append((t, topic, s))
    assert len(batches) >= 0.5 * 1.5 / 0.05  # ... about one per interval while messages flow ...
    for batch in batches.values():  # ... each with the newest message of each topic only
        assert len({topic for _, topic, _ in batch}) == len(batch) <= len(cameras)
    starts = sorted(batch[0][0] for batch in batches.values())
    assert min(np.diff(starts)) > 0.03
    assert node._subscriber.superseded > 0.8 * seq * len(cameras) - len(node.seen)
    newest = {topic: s for _, _, topic, s in node.seen}
    assert all(seq - 1 - newest[f"kp2d/{cam}"] <= 0.06 / 0.004 for cam in cameras)  # ends with a recent value


def test_busy_ns_says_how_long_an_input_may_have_queued_behind_the_nodes_own_work():
    """Messages sent while the node is busy come in after it: their busy_ns covers that work; a message
    that finds the node waiting has busy_ns ~0. The node's work on messages 0, 10, 20 lasts until the test has
    sent the next two (events, not sleeps: a loaded machine cannot reorder it)."""
    import threading

    from protocol import Keypoints2D
    from streamer.node import Input, Node, NodeConfig
    from streamer.transport import Publisher

    working, release = threading.Event(), threading.Event()

    class Slow(Node):
        INPUT_TOPICS = ("kp2d/",)

        def setup(self):
            self.seen: list[tuple[int, int]] = []  # (seq, busy_ns)

        def on_message(self, topic, msg):
            self.seen.append((msg.seq, self.busy_ns()))
            if msg.seq % 10 == 0:  # its own work: what is sent meanwhile queues
                working.set()
                release.wait(5.0)
                release.clear()

    def send(seq: int) -> None:
        pub.publish(Keypoints2D(camera="cam0", seq=seq, frame_index=seq, t_capture_ns=seq,
                                image_size=np.array([640, 480], np.int32), calib_version="", persons=[]))
        pub.service()

    def wait_seen(seq: int) -> None:
        deadline = time.monotonic() + 5.0
        while not any(s == seq for s, _ in node.seen) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # back in its wait for input

    pub = Publisher("tcp://127.0.0.1:0", name="cams")
    node = Slow(NodeConfig(name="slow", bind="tcp://127.0.0.1:0", inputs=(Input("cams", pub.endpoint),), seconds=6.0))
    assert node.busy_ns() == 0  # not running its loop
    thread = threading.Thread(target=node.run)
    thread.start()
    time.sleep(1.0)  # subscribed
    for base in (0, 10, 20):
        send(base)
        assert working.wait(5.0)
        working.clear()
        send(base + 1)
        send(base + 2)
        time.sleep(0.1)  # both wait in the socket while the node works
        release.set()
        wait_seen(base + 2)
        for i in range(3, 6):  # one at a time, each after the node has taken the one before
            send(base + i)
            wait_seen(base + i)
    node.stop()
    thread.join(10)
    pub.close()
    busy = dict(node.seen)
    assert sorted(busy) == [b + i for b in (0, 10, 20) for i in range(6)]
    for base in (0, 10, 20):
        assert busy[base] < 30_000_000  # it found the node waiting (~0.1 ms; room for a loaded machine)
        assert all(busy[base + i] >= 100_000_000 for i in (1, 2))  # queued behind >= 0.1 s of work
        assert all(busy[base + i] < 30_000_000 for i in range(3, 6))  # each found the node waiting
