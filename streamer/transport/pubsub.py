"""Pattern: PUB/SUB data plane (XPUB publisher with a last-value cache, one SUB per upstream).

Frames are `[topic, header, payload...]` (protocol/SPEC.md). The publisher is an XPUB so
it sees subscriptions: when a subscriber (re)connects, the last value of every state topic
it subscribes to (e.g. `calib`) is sent again at once, and again every `state_resend_s`.
Sends never block (NOBLOCK; a full queue counts a drop). Every message carries a
per-topic transport `seq` in its header; subscribers count gaps as drops in transit.
Malformed frames are counted in `Subscriber.rejects[reason]` and dropped, never raised.

    pub = Publisher("tcp://127.0.0.1:5551", name="cam0")
    sub = Subscriber({"cam0": "tcp://127.0.0.1:5551"}, topics=("kp2d/",))
    pub.publish(msg)                 # data: fire and forget
    pub.publish_state(calib)         # state: last value, re-sent to late joiners
    got = sub.recv(timeout_ms=100)   # (topic, msg) or None
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable, Mapping

import zmq

from protocol import DecodeError, Heartbeat, decode, decode_envelope, encode, topic_of
from streamer.transport.curve import CurveKeypair, make_client, make_server
from streamer.transport.liveness import HEARTBEAT_INTERVAL_S, LIVENESS_INTERVALS, Liveness

__all__ = ["DEFAULT_HWM", "STATE_RESEND_S", "Publisher", "Subscriber"]

log = logging.getLogger(__name__)

DEFAULT_HWM = 100  # messages per peer queue (send and receive); PUB drops beyond it
STATE_RESEND_S = 2.0
RECONNECT_IVL_MAX_MS = 1000
# No ZMTP heartbeats (ZMQ_HEARTBEAT_IVL/TIMEOUT/TTL) on any socket: with them libzmq 4.3.5 aborts the
# process (`Assertion failed: _input_stopped`, libzmq issue #3937) when a receive queue is full. Dead peers
# are found by the application heartbeats (`hb/<node>`, transport.liveness); a vanished host (no TCP
# reset) is dropped by kernel TCP keepalive, which never touches the ZMTP engine.
TCP_KEEPALIVE_IDLE_S = 5
TCP_KEEPALIVE_INTVL_S = 1
TCP_KEEPALIVE_CNT = 3
MAX_FRAME_BYTES = 64 * 2**20  # ZMQ_MAXMSGSIZE: a peer sending a larger frame is disconnected (memory bound);
# frames between protocol's MAX_MESSAGE_BYTES (4 MiB) and this are received and rejected as "size"
_MAX_BURST = 256  # messages read from one socket per fill, so one busy peer cannot starve others
SELF_CHECKS_PER_TOPIC = 10  # the first messages of each topic are decoded once here, to catch producer bugs early


def _set_tcp_keepalive(sock: zmq.Socket) -> None:
    """Kernel TCP keepalive (drops a connection to a vanished host within ~8 s); ignored for ipc/inproc."""
    sock.tcp_keepalive = 1
    sock.tcp_keepalive_idle = TCP_KEEPALIVE_IDLE_S
    sock.tcp_keepalive_intvl = TCP_KEEPALIVE_INTVL_S
    sock.tcp_keepalive_cnt = TCP_KEEPALIVE_CNT


class Publisher:
    """XPUB bound to `endpoint`; publishes data and last-value state for the node `name`.

    clock: anything with `now_ns()` (stage clock) used for `t_send_ns` and heartbeats;
    defaults to `time.time_ns`. curve: this node's keypair to serve CURVE (tcp only).
    Counters: `sent`, `drops` (send refused: queue full), `state_resends`, `invalid` (messages
    that every receiver would reject: the first `SELF_CHECKS_PER_TOPIC` of each topic are decoded
    here and an error is logged naming the field; they are still sent).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        name: str,
        context: zmq.Context | None = None,
        hwm: int = DEFAULT_HWM,
        clock=None,
        curve: CurveKeypair | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        state_resend_s: float = STATE_RESEND_S,
    ):
        self.name = name
        self._clock_ns = clock.now_ns if clock is not None else time.time_ns
        self.socket = (context or zmq.Context.instance()).socket(zmq.XPUB)
        self.socket.linger = 0
        self.socket.sndhwm = hwm
        self.socket.rcvhwm = hwm
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscribe, not only the first per topic
        _set_tcp_keepalive(self.socket)
        try:
            if curve is not None:
                make_server(self.socket, curve)
            self.socket.bind(endpoint)
        except zmq.ZMQError:
            self.socket.close(linger=0)
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0
        self.drops = 0
        self.state_resends = 0
        self.invalid = 0
        self._seq: dict[str, int] = collections.defaultdict(int)
        self._state: dict[str, object] = {}
        self._hb_seq = 0
        self._hb_interval_ns = int(heartbeat_interval_s * 1e9)
        self._resend_ns = int(state_resend_s * 1e9)
        now = time.monotonic_ns()
        self._last_send_mono = now
        self._last_resend_mono = now

    def publish(self, msg) -> bool:
        """Send a data message now (sets `msg.t_send_ns` when it has that field); False if dropped."""
        if hasattr(msg, "t_send_ns"):
            msg.t_send_ns = self._clock_ns()
        topic = topic_of(msg)
        seq = self._seq[topic]
        self._seq[topic] = seq + 1
        frames = encode(msg, seq=seq)
        if seq < SELF_CHECKS_PER_TOPIC:
            try:
                decode(frames)
            except DecodeError as exc:
                self.invalid += 1
                log.error("%s publishes a message every receiver will reject (%s): %s", self.name, exc.reason, exc)
        return self._send(frames)

    def publish_state(self, msg) -> bool:
        """Publish a last-value state message: cached per topic, re-sent to late joiners and periodically."""
        self._state[topic_of(msg)] = msg
        return self.publish(msg)

    def state(self) -> dict[str, object]:
        """The cached last value per state topic."""
        return dict(self._state)

    def service(self, now_mono_ns: int | None = None) -> None:
        """Housekeeping, call often (the node loop does): answer subscriptions with the cached
        state, re-send state periodically, send a heartbeat when idle for an interval."""
        now = time.monotonic_ns() if now_mono_ns is None else now_mono_ns
        prefixes = []
        while True:
            try:
                event = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] == b"\x01":
                prefixes.append(event[1:])
        if prefixes:
            self._resend_state(lambda t: any(t.startswith(p) for p in prefixes))
        if self._state and now - self._last_resend_mono >= self._resend_ns:
            self._last_resend_mono = now
            self._resend_state(lambda t: True)
        if now - self._last_send_mono >= self._hb_interval_ns:
            self.heartbeat()

    def heartbeat(self) -> bool:
        """Send `hb/<name>` now."""
        self._hb_seq += 1
        return self.publish(Heartbeat(node=self.name, t_ns=self._clock_ns(), seq=self._hb_seq))

    def close(self, flush_ms: int = 0) -> None:
        """Close the socket, letting queued messages out for up to `flush_ms`."""
        self.socket.close(linger=flush_ms)

    def _resend_state(self, wanted) -> None:
        for topic, msg in self._state.items():
            if wanted(topic.encode()):
                self.state_resends += 1
                self.publish(msg)

    def _send(self, frames: list[bytes]) -> bool:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.drops += 1
            return False
        self.sent += 1
        self._last_send_mono = time.monotonic_ns()
        return True


class Subscriber:
    """One SUB socket per upstream peer, so liveness and gaps are known per peer.

    peers: {peer name: endpoint} (or an iterable of endpoints, named by themselves).
    topics: topic prefixes to subscribe to; `hb/` is always added and heartbeats are
    consumed here (they feed liveness and are never returned).
    curve: this node's keypair; server_keys: {peer name: server public key} for CURVE peers.
    Counters: `received`, `rejects[reason]`, `drops` (gaps in transport seq), `superseded`
    (older values dropped by `drain_latest`); `liveness` holds per-peer state.
    """

    def __init__(
        self,
        peers: Mapping[str, str] | Iterable[str],
        topics: Iterable[str] = ("",),
        *,
        context: zmq.Context | None = None,
        hwm: int = DEFAULT_HWM,
        curve: CurveKeypair | None = None,
        server_keys: Mapping[str, bytes] | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        liveness_intervals: int = LIVENESS_INTERVALS,
    ):
        peers = dict(peers) if isinstance(peers, Mapping) else {ep: ep for ep in peers}
        topics = list(dict.fromkeys(topics))
        if not any("hb/".startswith(t) for t in topics):
            topics.append("hb/")
        context = context or zmq.Context.instance()
        self.topics = tuple(topics)
        self.peers = peers
        self.sockets: dict[zmq.Socket, str] = {}
        try:
            for peer, endpoint in peers.items():
                self.sockets[self._connect(context, peer, endpoint, topics, hwm, curve, server_keys)] = peer
        except (zmq.ZMQError, ValueError):
            self.close()
            raise
        self._poller = zmq.Poller()
        for sock in self.sockets:
            self._poller.register(sock, zmq.POLLIN)
        self.liveness = Liveness(peers, interval_s=heartbeat_interval_s, intervals=liveness_intervals)
        self.received = 0
        self.drops = 0
        self.superseded = 0
        self.rejects: collections.Counter[str] = collections.Counter()
        self.revived: list[str] = []  # peers that came (back) alive since the last `take_revived`
        self._pending: collections.deque = collections.deque()
        self._last_seq: dict[tuple[str, str], int] = {}
        self.last_peer: str | None = None  # peer of the message last returned by recv

    def recv(self, timeout_ms: int = 0) -> tuple[str, object] | None:
        """The next decoded message `(topic, msg)`, waiting up to timeout_ms; None when none came."""
        if not self._pending:
            self._fill(timeout_ms)
        if not self._pending:
            return None
        peer, topic, msg = self._pending.popleft()
        self.last_peer = peer
        return topic, msg

    def drain_latest(self, timeout_ms: int = 0) -> dict[str, object]:
        """Everything waiting, keeping only the newest message per topic (older ones count as `superseded`)."""
        latest: dict[str, object] = {}
        item = self.recv(timeout_ms)
        while item is not None:
            topic, msg = item
            if topic in latest:
                self.superseded += 1
            latest[topic] = msg
            item = self.recv(0)
        return latest

    def queue_depth(self) -> int:
        """Messages read off the sockets but not yet returned."""
        return len(self._pending)

    def check_liveness(self, now_mono_ns: int | None = None) -> list[tuple[str, bool]]:
        """Peer liveness transitions since the last call: `[(peer, alive), ...]`."""
        now = time.monotonic_ns() if now_mono_ns is None else now_mono_ns
        changes = [(p, True) for p in self.revived]
        self.revived = []
        return changes + self.liveness.check(now)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)

    @staticmethod
    def _connect(context, peer, endpoint, topics, hwm, curve, server_keys) -> zmq.Socket:
        sock = context.socket(zmq.SUB)
        try:
            sock.linger = 0
            sock.rcvhwm = hwm
            sock.maxmsgsize = MAX_FRAME_BYTES
            sock.reconnect_ivl_max = RECONNECT_IVL_MAX_MS
            _set_tcp_keepalive(sock)
            if curve is not None:
                if not server_keys or peer not in server_keys:
                    raise ValueError(f"CURVE subscriber: no server public key for peer {peer!r}")
                make_client(sock, curve, server_keys[peer])
            for t in topics:
                sock.setsockopt(zmq.SUBSCRIBE, t.encode())
            sock.connect(endpoint)
        except (zmq.ZMQError, ValueError):
            sock.close(linger=0)
            raise
        return sock

    def _fill(self, timeout_ms: int) -> None:
        ready = self._poller.poll(timeout_ms)
        now = time.monotonic_ns()
        for sock, _ in ready:
            peer = self.sockets[sock]
            for _ in range(_MAX_BURST):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if self.liveness.beat(peer, now):
                    self.revived.append(peer)
                self._accept(peer, frames)

    def _accept(self, peer: str, frames: list[bytes]) -> None:
        try:
            topic, msg, seq = decode_envelope(frames)
        except DecodeError as exc:
            self.rejects[exc.reason] += 1
            if self.rejects[exc.reason] == 1 or self.rejects[exc.reason] % 1000 == 0:
                log.warning("rejected message from %s (%d so far for %r): %s", peer, self.rejects[exc.reason], exc.reason, exc)
            return
        self.received += 1
        if seq is not None:
            key = (peer, topic)
            last = self._last_seq.get(key)
            if last is not None and seq > last + 1:
                self.drops += seq - last - 1
            self._last_seq[key] = seq  # seq <= last: the publisher restarted, start again
        if isinstance(msg, Heartbeat):
            return
        self._pending.append((peer, topic, msg))
