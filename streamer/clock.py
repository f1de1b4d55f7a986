"""The stage clock (integer ns) and its NTP-style offset probe over ZeroMQ ROUTER/DEALER.

Every process keeps a `StageClock`: a monotonic clock anchored once to the wall clock
(so it never steps), plus an estimated `offset_ns` to the stage master and a drift rate.
One node of a graph is the master (`ClockServer`, ROUTER); every other node probes it
(`ClockClient`, DEALER) with bursts of `PROBES_PER_BURST` four-timestamp probes, keeps the
lowest-round-trip sample, and re-estimates every `REESTIMATE_S`:

    offset = ((t1 - t0) + (t2 - t3)) / 2        rtt = (t3 - t0) - (t2 - t1)

t0/t3: client local send/receive time, t1/t2: server stage receive/send time. Error is
bounded by rtt/2 (tens of us on loopback). Wire format (protocol/SPEC.md, "Clock probe"):
request one frame `<q t0>` (8 bytes), reply one frame `<qqq t0 t1 t2>` (24 bytes).
"""
from __future__ import annotations

import logging
import struct
import threading
import time

import zmq

__all__ = [
    "PROBES_PER_BURST",
    "REESTIMATE_S",
    "ClockClient",
    "ClockServer",
    "ClockThread",
    "StageClock",
    "offset_from_probe",
]

log = logging.getLogger(__name__)

PROBES_PER_BURST = 16
REESTIMATE_S = 5.0
PROBE_TIMEOUT_S = 0.2
RETRY_S = 0.5
MAX_DRIFT_PPM = 500.0
_REQUEST = struct.Struct("<q")
_REPLY = struct.Struct("<qqq")


class StageClock:
    """Stage time in ns: `local_ns() + offset_ns` (+ drift since the last estimate).

    injected_offset_ns: added to this process's local clock, to simulate a host whose
    clock is off (tests, fault drills); the probe should estimate it away.
    """

    def __init__(self, injected_offset_ns: int = 0):
        self._anchor_ns = time.time_ns() - time.monotonic_ns() + int(injected_offset_ns)
        # (offset stage - local ns, drift ppm, local ns of the estimate or None): one tuple, replaced whole,
        # so a reader in another thread (the clock probe runs in its own) never sees half an update
        self._estimate: tuple[int, float, int | None] = (0, 0.0, None)

    @property
    def offset_ns(self) -> int:
        """stage - local, ns, from the last estimate."""
        return self._estimate[0]

    @property
    def drift_ppm(self) -> float:
        """Rate of change of the offset, followed between estimates."""
        return self._estimate[1]

    def local_ns(self) -> int:
        """This process's uncorrected clock (monotonic, anchored to the wall clock at start)."""
        return time.monotonic_ns() + self._anchor_ns

    def now_ns(self) -> int:
        """Stage time, ns."""
        local = time.monotonic_ns() + self._anchor_ns
        return local + self._correction_at(local)

    def correction_ns(self) -> int:
        """Current total correction stage - local, ns (what stats report as clock offset)."""
        return self._correction_at(time.monotonic_ns() + self._anchor_ns)

    def _correction_at(self, local_ns: int) -> int:
        offset, drift_ppm, at_local_ns = self._estimate
        if at_local_ns is None:
            return offset
        return offset + int((local_ns - at_local_ns) * drift_ppm * 1e-6)

    def set_estimate(self, offset_ns: int, at_local_ns: int) -> None:
        """Adopt a new offset measured at local time `at_local_ns`; derives drift from the previous one."""
        old_offset, drift_ppm, old_at = self._estimate
        if old_at is not None:
            dt = at_local_ns - old_at
            if dt >= 1_000_000_000:
                drift = (offset_ns - old_offset) / dt * 1e6
                drift_ppm = max(-MAX_DRIFT_PPM, min(MAX_DRIFT_PPM, drift))
        self._estimate = (int(offset_ns), drift_ppm, at_local_ns)


def offset_from_probe(t0: int, t1: int, t2: int, t3: int) -> tuple[int, int]:
    """NTP four-timestamp estimate: `(offset_ns, rtt_ns)`; offset = server - client."""
    return ((t1 - t0) + (t2 - t3)) // 2, (t3 - t0) - (t2 - t1)


class ClockServer:
    """ROUTER answering clock probes with the master's stage time. Poll `socket`, call `service()`."""

    def __init__(self, endpoint: str, clock: StageClock, *, context: zmq.Context | None = None):
        self.clock = clock
        self.socket = (context or zmq.Context.instance()).socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.answered = 0
        self.rejects = 0

    def service(self) -> None:
        """Answer every waiting probe."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            t1 = self.clock.now_ns()
            if len(frames) != 2 or len(frames[1]) != _REQUEST.size:
                self.rejects += 1
                continue
            (t0,) = _REQUEST.unpack(frames[1])
            try:
                self.socket.send_multipart([frames[0], _REPLY.pack(t0, t1, self.clock.now_ns())], zmq.NOBLOCK)
            except zmq.ZMQError:
                self.rejects += 1
                continue
            self.answered += 1

    def next_due_ms(self) -> int:
        """How long the socket may be left unpolled when no probe comes: indefinitely (the caller caps it)."""
        return -1

    def close(self) -> None:
        self.socket.close(linger=0)


class ClockClient:
    """DEALER probing a `ClockServer`; updates `clock` after every completed burst.

    Poll `socket` for input and call `service()` on input and regularly (it sends the next
    probe, times out lost ones and starts a burst every `reestimate_s`).
    `rtt_ns`: round trip of the sample used last; `estimates`: completed bursts.
    """

    def __init__(
        self,
        endpoint: str,
        clock: StageClock,
        *,
        context: zmq.Context | None = None,
        probes_per_burst: int = PROBES_PER_BURST,
        reestimate_s: float = REESTIMATE_S,
    ):
        self.clock = clock
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.sndhwm = 4
        self.socket.connect(endpoint)
        self.probes_per_burst = probes_per_burst
        self.reestimate_ns = int(reestimate_s * 1e9)
        self.rtt_ns: int | None = None
        self.estimates = 0
        self.rejects = 0
        self._burst: list[tuple[int, int]] = []  # (rtt, offset) samples of the current burst
        self._probes_sent = 0
        self._outstanding: int | None = None  # t0 of the probe in flight
        self._sent_mono = 0
        self._next_burst_mono = time.monotonic_ns()

    def service(self) -> None:
        """Read replies, send the next probe, finish a burst when it is complete."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            t3 = self.clock.local_ns()
            if len(frames) != 1 or len(frames[0]) != _REPLY.size:
                self.rejects += 1
                continue
            t0, t1, t2 = _REPLY.unpack(frames[0])
            if t0 != self._outstanding:
                continue  # a late reply to a probe already timed out
            self._outstanding = None
            offset, rtt = offset_from_probe(t0, t1, t2, t3)
            if rtt >= 0:
                self._burst.append((rtt, offset))
        now = time.monotonic_ns()
        if self._outstanding is not None and now - self._sent_mono > PROBE_TIMEOUT_S * 1e9:
            self._outstanding = None  # lost; the burst goes on with the next probe
        if self._outstanding is None:
            if self._probes_sent >= self.probes_per_burst:
                self._finish_burst(now)
            elif now >= self._next_burst_mono:
                self._send_probe(now)

    def next_due_ms(self) -> int:
        """ms until `service()` has something to do besides reading a reply (a probe to time out or send)."""
        now = time.monotonic_ns()
        due = (self._sent_mono + int(PROBE_TIMEOUT_S * 1e9) if self._outstanding is not None
               else now if self._probes_sent >= self.probes_per_burst else self._next_burst_mono)
        return max(0, -(-(due - now) // 1_000_000))

    def _send_probe(self, now_mono: int) -> None:
        t0 = self.clock.local_ns()
        try:
            self.socket.send(_REQUEST.pack(t0), zmq.NOBLOCK)
        except zmq.Again:
            return
        self._outstanding = t0
        self._sent_mono = now_mono
        self._probes_sent += 1

    def _finish_burst(self, now_mono: int) -> None:
        if self._burst:
            rtt, offset = min(self._burst)
            self.clock.set_estimate(offset, self.clock.local_ns())
            self.rtt_ns = rtt
            self.estimates += 1
            log.debug("clock offset %d ns (rtt %d ns, %d samples)", offset, rtt, len(self._burst))
        retry = not self._burst  # no answer at all: the master may not be up yet, try again soon
        self._burst = []
        self._probes_sent = 0
        self._next_burst_mono = now_mono + (RETRY_S * 1e9 if retry else self.reestimate_ns)

    def close(self) -> None:
        self.socket.close(linger=0)


class ClockThread:
    """Serves a `ClockServer` or `ClockClient` from its own thread.

    A node's loop may be busy or asleep for a whole frame (a capture node waits in its source for the
    next frame): probes served from it are answered, and replies read, that late, and every sample of
    a burst carries half that delay as offset error (-11 to -16 ms was seen on one host). Here the
    socket wakes this thread the moment a message arrives; samples delayed by the interpreter lock
    have longer round trips and lose the lowest-round-trip choice. The thread owns the socket from
    `start()` to `stop()`; `stop()` joins it, then the caller may close the endpoint.
    """

    def __init__(self, endpoint: ClockServer | ClockClient, *, max_wait_ms: int = 100):
        self.endpoint = endpoint
        self.max_wait_ms = max_wait_ms
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"clock-{type(endpoint).__name__}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.endpoint.socket, zmq.POLLIN)
        while not self._stop.is_set():
            due = self.endpoint.next_due_ms()
            try:
                poller.poll(self.max_wait_ms if due < 0 else min(due, self.max_wait_ms))
                self.endpoint.service()
            except zmq.ZMQError as exc:  # the context is going away: nothing left to serve
                if exc.errno == zmq.ETERM:
                    return
                self.errors += 1
                log.warning("clock %s: %s", type(self.endpoint).__name__, exc)
                self._stop.wait(0.1)
