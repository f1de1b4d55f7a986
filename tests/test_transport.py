"""streamer/transport over real ZeroMQ sockets (tcp and ipc on loopback): delivery, last-value
state for late joiners, rejects and drops counted, keep-latest draining, liveness, CURVE."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes.pulse import pattern_calibration, pattern_person
from protocol import Keypoints2D, encode
from streamer.transport import Publisher, Subscriber, generate_keypair_files, load_keypair, load_public_key
from streamer.transport.curve import start_authenticator


def kp2d(seq: int, camera: str = "cam0") -> Keypoints2D:
    return Keypoints2D(
        camera=camera, seq=seq, frame_index=seq, t_capture_ns=seq, image_size=np.array([1280, 720], np.int32),
        calib_version="v", persons=[pattern_person(seq, 60.0, 70, 1280, 720)],
    )


def until(predicate, timeout_s: float = 3.0, step=lambda: None):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        step()
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    return predicate()


def connect(pub: Publisher, sub: Subscriber, topic_prefix: str = "hb/") -> None:
    """Wait until the subscription is through (slow joiner): heartbeats arrive."""
    assert until(lambda: sub.liveness.alive[next(iter(sub.peers))], step=lambda: (pub.heartbeat(), sub.recv(10)))


@pytest.fixture
def pair():
    pub = Publisher("tcp://127.0.0.1:0", name="src")
    sub = Subscriber({"src": pub.endpoint}, ("kp2d/", "calib"))
    connect(pub, sub)
    yield pub, sub
    sub.close()
    pub.close()


def test_publish_delivers_decoded_message_with_send_time(pair):
    pub, sub = pair
    before = time.time_ns()
    pub.publish(kp2d(1))
    got = sub.recv(timeout_ms=1000)
    assert got is not None
    topic, msg = got
    assert topic == "kp2d/cam0" and msg.seq == 1 and sub.last_peer == "src"
    assert before <= msg.t_send_ns <= time.time_ns()
    assert sub.drops == 0 and not sub.rejects


def test_default_endpoints_are_loopback(pair):
    pub, _ = pair
    assert pub.endpoint.startswith("tcp://127.0.0.1:")


def test_ipc_endpoint(tmp_path):
    pub = Publisher(f"ipc://{tmp_path}/a.sock", name="src")
    sub = Subscriber({"src": pub.endpoint}, ("kp2d/",))
    connect(pub, sub)
    pub.publish(kp2d(7))
    assert sub.recv(1000)[1].seq == 7
    sub.close(), pub.close()


def test_late_joiner_receives_last_value_state():
    pub = Publisher("tcp://127.0.0.1:0", name="src", state_resend_s=60.0)
    calib = pattern_calibration("cam0", 1280, 720)
    pub.publish_state(calib)  # nobody listening yet
    sub = Subscriber({"src": pub.endpoint}, ("calib",))
    got = until(lambda: sub.recv(10), step=pub.service)  # XPUB sees the subscribe and re-sends
    assert got is not None and got[0] == "calib" and got[1].version == calib.version
    assert pub.state_resends >= 1
    sub.close(), pub.close()


def test_state_is_resent_periodically():
    pub = Publisher("tcp://127.0.0.1:0", name="src", state_resend_s=0.05)
    sub = Subscriber({"src": pub.endpoint}, ("calib",))
    connect(pub, sub)
    pub.publish_state(pattern_calibration("cam0", 640, 480))
    seen = []

    def step():
        pub.service()
        got = sub.recv(10)
        if got is not None:
            seen.append(got)

    until(lambda: len(seen) >= 3, step=step)
    assert len(seen) >= 3 and all(t == "calib" for t, _ in seen)
    sub.close(), pub.close()


def test_malformed_frames_are_counted_and_dropped_then_valid_ones_flow():
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.linger = 0
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber({"raw": f"tcp://127.0.0.1:{port}"}, ("",))
    assert until(lambda: sub.recv(10) is not None or sub.received, step=lambda: raw.send_multipart(encode(kp2d(0))))
    good = encode(kp2d(1))
    raw.send_multipart([b"kp2d/cam0", b"\x81\xa1v\x01"])  # header without kind
    raw.send_multipart([b"kp2d/cam0", good[1]])  # payload frames missing
    raw.send_multipart([b"kp2d/cam0", good[1], *good[2:], b"extra"])  # one frame too many
    raw.send_multipart([b"\xff\xfe", b"x"])
    raw.send_multipart(good)
    got = until(lambda: [m for m in iter(lambda: sub.recv(10), None)])
    assert [m.seq for _, m in got if m.seq == 1] == [1]
    assert sum(sub.rejects.values()) == 4
    assert set(sub.rejects) <= {"kind", "frames", "topic", "header", "version"}
    sub.close(), raw.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=64), min_size=1, max_size=5))
def test_fuzzed_frames_over_a_socket_never_reach_the_node(raw_pub_sub, frames):
    raw, sub = raw_pub_sub
    before = sum(sub.rejects.values())
    raw.send_multipart(frames)
    raw.send_multipart([b"kp2d/x", b"\x00"])  # a marker, always rejected
    delivered = []
    until(lambda: sum(sub.rejects.values()) >= before + 2, step=lambda: delivered.append(sub.recv(5)))
    assert sum(sub.rejects.values()) == before + 2
    assert delivered.count(None) == len(delivered)


@pytest.fixture(scope="module")
def raw_pub_sub():
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.linger = 0
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber({"raw": f"tcp://127.0.0.1:{port}"}, ("",))
    assert until(lambda: sum(sub.rejects.values()) > 0, step=lambda: (raw.send_multipart([b"x", b"\x00"]), sub.recv(5)))
    time.sleep(0.05)
    while sub.recv(20) is not None:
        pass
    yield raw, sub
    sub.close(), raw.close()


def test_gaps_in_transport_seq_count_as_drops():
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.linger = 0
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber({"raw": f"tcp://127.0.0.1:{port}"}, ("kp2d/",))
    assert until(lambda: sub.recv(10), step=lambda: raw.send_multipart(encode(kp2d(0), seq=100)))
    while sub.recv(20):
        pass
    base = sub.drops
    raw.send_multipart(encode(kp2d(1), seq=1000))
    raw.send_multipart(encode(kp2d(2), seq=1005))  # 1001..1004 lost
    until(lambda: sub.received >= 2 and sub.drops > base, step=lambda: sub.recv(10))
    assert sub.drops - base >= 4
    sub.close(), raw.close()


def test_drain_latest_keeps_newest_per_topic(pair):
    pub, sub = pair
    for i in range(5):
        pub.publish(kp2d(i, "cam0"))
        pub.publish(kp2d(10 + i, "cam1"))
    latest = {}
    until(lambda: latest.get("kp2d/cam0") is not None and latest["kp2d/cam0"].seq == 4
          and latest.get("kp2d/cam1") is not None and latest["kp2d/cam1"].seq == 14,
          step=lambda: latest.update(sub.drain_latest(10)))
    assert latest["kp2d/cam0"].seq == 4 and latest["kp2d/cam1"].seq == 14
    assert sub.superseded >= 1


def test_publish_never_blocks_when_nobody_reads():
    pub = Publisher("tcp://127.0.0.1:0", name="src", hwm=5)
    sub = Subscriber({"src": pub.endpoint}, ("kp2d/",), hwm=5)
    connect(pub, sub)
    t0 = time.perf_counter()
    for i in range(2000):
        pub.publish(kp2d(i))
    assert time.perf_counter() - t0 < 5.0  # returns; the slow subscriber loses messages, the publisher does not wait
    got = [m.seq for _, m in iter(lambda: sub.recv(50), None)]
    assert 0 < len(got) < 2000
    sub.close(), pub.close()


_STALLED_SUBSCRIBER = """
import json, sys, time
from streamer.transport import Subscriber
sub = Subscriber({"src": sys.argv[1]}, ("kp2d/",), hwm=4)
end = time.monotonic() + 10
while not sub.liveness.alive["src"] and time.monotonic() < end:
    sub.recv(10)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))  # not reading: the receive queue (hwm 4) stays full while the publisher floods
received_before = sub.received
end = time.monotonic() + 1.0
while time.monotonic() < end:
    sub.recv(10)
print(json.dumps({"received_before": received_before, "received": sub.received, "drops": sub.drops}), flush=True)
"""


@pytest.mark.slow
def test_a_stalled_subscriber_with_a_full_queue_survives_a_flood_and_drains():
    """Regression: with ZMTP heartbeats on, libzmq 4.3.5 aborted such a process (issue #3937)."""
    stall_s = 4.5  # longer than any transport-level heartbeat timeout would be
    pub = Publisher("tcp://127.0.0.1:0", name="src", hwm=4, heartbeat_interval_s=0.05)
    child = subprocess.Popen([sys.executable, "-c", _STALLED_SUBSCRIBER, pub.endpoint, str(stall_s)],
                             cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        seq = 0
        while child.poll() is None:
            pub.service()
            pub.publish(kp2d(seq))
            seq += 1
            time.sleep(0.0005)
        out, err = child.communicate(timeout=5)
    finally:
        if child.poll() is None:
            child.kill()
        pub.close()
    assert child.returncode == 0, f"subscriber died (rc {child.returncode}): {err[-2000:]}"
    lines = out.splitlines()
    assert lines[0] == "ready"
    counts = json.loads(lines[-1])
    assert counts["received"] > counts["received_before"]  # it drains after the stall
    assert counts["drops"] > 100  # the flood beyond its queue is counted as transport-seq gaps


def test_liveness_detects_a_dead_publisher_and_its_return():
    pub = Publisher("tcp://127.0.0.1:0", name="src", heartbeat_interval_s=0.05)
    endpoint = pub.endpoint
    sub = Subscriber({"src": endpoint}, ("kp2d/",), heartbeat_interval_s=0.05, liveness_intervals=4)
    events = []

    def step():
        if pub is not None:
            pub.service()
        sub.recv(5)
        events.extend(sub.check_liveness())

    assert until(lambda: ("src", True) in events, step=step)
    time.sleep(0.3)
    step()
    assert ("src", False) not in events  # idle publisher keeps it alive with heartbeats
    pub.close()
    pub = None
    assert until(lambda: ("src", False) in events, step=step)
    assert sub.liveness.deaths["src"] == 1
    events.clear()
    pub = Publisher(endpoint, name="src", heartbeat_interval_s=0.05)
    assert until(lambda: ("src", True) in events, timeout_s=5.0, step=step)
    sub.close(), pub.close()


def test_curve_authorised_client_receives_and_others_receive_nothing(tmp_path):
    keys = tmp_path / "keys"
    for name in ("server", "client"):
        generate_keypair_files(keys, name)
    generate_keypair_files(tmp_path / "outsider", "intruder")
    ctx = zmq.Context()
    auth = start_authenticator(ctx, keys)
    try:
        server_kp = load_keypair(keys / "server.key_secret")
        pub = Publisher("tcp://127.0.0.1:0", name="server", context=ctx, curve=server_kp)
        good = Subscriber({"server": pub.endpoint}, ("kp2d/",), context=ctx, curve=load_keypair(keys / "client.key_secret"),
                          server_keys={"server": load_public_key(keys / "server.key")})
        # right server key, but a client key the server has not authorised
        intruder = Subscriber({"server": pub.endpoint}, ("kp2d/",), context=ctx,
                              curve=load_keypair(tmp_path / "outsider" / "intruder.key_secret"),
                              server_keys={"server": server_kp.public})
        plain = Subscriber({"server": pub.endpoint}, ("kp2d/",), context=ctx)  # no CURVE at all
        got = []

        def step():
            pub.publish(kp2d(1))
            item = good.recv(10)
            if item is not None:
                got.append(item)

        until(lambda: got, step=step)
        assert got and got[0][1].seq == 1
        for i in range(20):
            pub.publish(kp2d(i))
            time.sleep(0.01)
        assert intruder.recv(300) is None and intruder.received == 0
        assert plain.recv(300) is None and plain.received == 0
        for s in (good, intruder, plain):
            s.close()
        pub.close()
    finally:
        auth.stop()
        ctx.term()


def test_curve_key_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_keypair(tmp_path / "nobody.key_secret")
    public, _ = generate_keypair_files(tmp_path, "x")
    with pytest.raises(ValueError, match="no secret"):
        load_keypair(public)


def test_publisher_flags_messages_receivers_would_reject(caplog):
    pub = Publisher("tcp://127.0.0.1:0", name="buggy")
    bad = kp2d(1)
    bad.persons[0].box = np.array([0, np.nan, 1, 1], np.float32)  # NaN is not allowed in a box
    with caplog.at_level("ERROR"):
        pub.publish(bad)
    assert pub.invalid == 1 and "kp2d.persons[0].box" in caplog.text
    pub.publish(kp2d(2))
    assert pub.invalid == 1
    pub.close()


def test_keygen_writes_a_pair_per_graph_node_and_keeps_existing(tmp_path):
    from streamer.launch import load_graph
    from streamer.transport.keygen import main as keygen

    graph = tmp_path / "g.toml"
    graph.write_text('[graph]\nkeys_dir = "keys"\n[nodes.a]\nkind = "pulse"\n[nodes.b]\nkind = "relay"\ninputs = ["a"]\n')
    assert keygen([str(graph)]) == 0
    first = (tmp_path / "keys" / "a.key_secret").read_bytes()
    assert keygen([str(graph)]) == 0 and (tmp_path / "keys" / "a.key_secret").read_bytes() == first
    assert load_keypair(tmp_path / "keys" / "b.key_secret").public == load_public_key(tmp_path / "keys" / "b.key")
    assert load_graph(graph).keys_dir == tmp_path / "keys"
    assert keygen(["--dir", str(tmp_path / "v"), "viewer"]) == 0 and (tmp_path / "v" / "viewer.key").is_file()


def _edited(frames, edit):
    import msgpack

    header = msgpack.unpackb(frames[1], raw=False)
    edit(header)
    return [frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]]


def _nan_box():
    msg = kp2d(1)
    msg.persons[0].box = np.array([0, np.nan, 1, 1], np.float32)
    return encode(msg)


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: encode(kp2d(1))[:-1], "frames"),  # truncated: last payload frame missing
        (lambda: [*encode(kp2d(1))[:-1], encode(kp2d(1))[-1][:-3]], "length"),  # truncated payload
        (lambda: [b"kp2d/cam0", encode(kp2d(1))[1][:-5], *encode(kp2d(1))[2:]], "header"),  # truncated header
        (lambda: [*encode(kp2d(1)), b"\0" * (5 * 2**20)], "size"),  # oversized
        (lambda: _edited(encode(kp2d(1)), lambda h: h["arrays"][2].__setitem__(0, "|O")), "dtype"),
        (lambda: _edited(encode(kp2d(1)), lambda h: h["arrays"][2].__setitem__(1, [35, 4])), "shape"),
        (_nan_box, "nonfinite"),
    ],
)
def test_defective_messages_over_a_socket_are_counted_by_reason(raw_pub_sub, make, reason):
    raw, sub = raw_pub_sub
    before = sub.rejects[reason]
    raw.send_multipart(make())
    raw.send_multipart(encode(kp2d(99)))  # a good one after it still arrives
    got = until(lambda: sub.recv(10))
    assert got is not None and got[1].seq == 99
    assert sub.rejects[reason] == before + 1


def test_an_input_that_never_comes_up_is_reported_once():
    from streamer.transport import Liveness

    live = Liveness(["a", "b"], interval_s=0.1, intervals=4, start_ns=0)
    live.beat("a", 100_000_000)
    assert live.check(300_000_000) == []
    assert live.check(450_000_000) == [("b", False)]  # never heard within 0.4 s
    assert live.check(460_000_000) == []  # reported once
    assert live.check(600_000_000) == [("a", False)]  # heard at 0.1 s, silent since


def test_bad_endpoints_raise_and_leave_no_socket_open():
    ctx = zmq.Context()
    with pytest.raises(zmq.ZMQError):
        Publisher("tcp://nonsense", name="x", context=ctx)
    with pytest.raises(zmq.ZMQError):
        Subscriber({"a": "tcp://127.0.0.1:6590", "b": "bogus://x"}, context=ctx)
    ctx.term()  # returns only when every socket of the context is closed
