"""Node `recorder`: writes everything its inputs publish into a take file (`streamer.recording`).

Two threads of its own, so the node loop and the disk never stall the sockets:
- receiver: one SUB per input with a large RCVHWM (`rcvhwm`), stamps each message with its
  receive time (stage clock) and queues the raw wire frames (a plain deque, at most `queue_max`);
- writer: takes everything queued, then sleeps `WRITER_IDLE_S` when the queue is empty (batches of
  messages instead of one thread wake-up per message: the writer has no deadline); validates each
  message (`protocol.decode_envelope`; bad ones counted in `rejects/<reason>` and dropped), counts
  gaps in the transport sequence per input and topic (`gaps`, messages lost before they reached the
  recorder), and appends the byte-exact frames.
Chunks close after `chunk_span_s` of data and are flushed to the OS, so SIGKILL loses at most the
open chunk (repair with `streamer recover TAKE.mcap`); SIGINT/SIGTERM finish the file properly.
An existing take is never overwritten (a restarted recorder writes `<stem>-<UTC time>.mcap`).
Heartbeats are not recorded. Counters: `recorded`, `gaps`, `queue_dropped`, `rejects/*`.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from protocol import DecodeError, decode_envelope
from streamer.node import Node, run_node
from streamer.transport.curve import load_keypair, load_public_key, make_client
from streamer.recording import TakeWriter, capture_time_and_sequence, unused_take_path

__all__ = ["WRITER_IDLE_S", "Recorder", "Settings", "main"]

WRITER_IDLE_S = 0.005  # the writer's nap when nothing is queued


@dataclass(frozen=True)
class Settings:
    path: str = field(default="take.mcap", metadata={"help": "take file to write (rotation adds <stem>.001.mcap ...)"})
    topics: tuple[str, ...] = field(default=("",), metadata={"help": "topic prefixes to record"})
    rcvhwm: int = field(default=100_000, metadata={"help": "receive high-water mark per input, messages"})
    queue_max: int = field(default=200_000, metadata={"help": "messages buffered between receiver and writer"})
    chunk_span_s: float = field(default=1.0, metadata={"help": "a chunk holds at most this much time, s"})
    chunk_kib: int = field(default=256, metadata={"help": "a chunk closes beyond this size, KiB"})
    rotate_s: float | None = field(default=None, metadata={"help": "start a new file segment every S seconds"})
    rotate_mib: float | None = field(default=None, metadata={"help": "start a new file segment beyond this size, MiB"})
    fsync: bool = field(default=False, metadata={"help": "fsync each closed chunk (power-loss safety)"})


class Recorder(Node):
    Settings = Settings
    INPUT_TOPICS = ("hb/",)  # the base keeps liveness only; data is read raw by the receiver thread

    def setup(self) -> None:
        s = self.settings
        self._queue: collections.deque = collections.deque()  # (input, frames, receive time); thread-safe ends
        self._halt = threading.Event()
        self._receiver_done = threading.Event()
        self._stats = collections.Counter()
        path = unused_take_path(s.path, time.strftime("%Y%m%dT%H%M%S", time.gmtime()))
        if str(path) != s.path:
            self.log.warning("%s exists (an earlier take): recording into %s instead", s.path, path)
        self._take = TakeWriter(
            path,
            chunk_span_ns=int(s.chunk_span_s * 1e9),
            chunk_bytes=s.chunk_kib * 1024,
            rotate_s=s.rotate_s,
            rotate_bytes=None if s.rotate_mib is None else int(s.rotate_mib * 2**20),
            metadata={"recorder": self.name},
            fsync=s.fsync,
            overwrite=False,
        )
        self._receiver = threading.Thread(target=self._receive, name="recorder-receiver", daemon=True)
        self._writer = threading.Thread(target=self._write, name="recorder-writer", daemon=True)
        self._writer.start()
        self._receiver.start()
        self.log.info("recording %s into %s", ",".join(i.name for i in self.config.inputs) or "-", path)

    def _receive(self) -> None:
        context = zmq.Context.instance()
        sockets = {}
        poller = zmq.Poller()
        keys = Path(self.config.keys_dir) if self.config.keys_dir else None
        keypair = load_keypair(keys / f"{self.config.name}.key_secret") if keys is not None else None
        for inp in self.config.inputs:
            sock = context.socket(zmq.SUB)
            sock.linger = 0
            sock.rcvhwm = self.settings.rcvhwm
            if keypair is not None:  # CURVE graph: the inputs only talk to authorised clients
                make_client(sock, keypair, load_public_key(keys / f"{inp.name}.key"))
            for prefix in self.settings.topics:
                sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
            sock.connect(inp.endpoint)
            sockets[sock] = inp.name
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                for sock, _ in poller.poll(50):
                    for _ in range(1000):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if len(self._queue) < self.settings.queue_max:
                            self._queue.append((sockets[sock], frames, self.clock.now_ns()))
                        else:
                            self._stats["queue_dropped"] += 1
        finally:
            for sock in sockets:
                sock.close(linger=0)
            self._receiver_done.set()

    def _write(self) -> None:
        last_seq: dict[tuple[str, str], int] = {}
        take = self._take
        while True:
            try:
                peer, frames, log_time_ns = self._queue.popleft()
            except IndexError:
                if self._receiver_done.is_set() and not self._queue:  # the receiver queues nothing after done
                    break
                take.tick(self.clock.now_ns())
                time.sleep(WRITER_IDLE_S)
                continue
            if frames[0].startswith(b"hb/"):
                continue
            try:
                topic, msg, seq = decode_envelope(frames)
            except DecodeError as exc:
                self._stats[f"rejects/{exc.reason}"] += 1
                continue
            t_capture, msg_seq = capture_time_and_sequence(msg)
            if seq is not None:
                key = (peer, topic)
                previous = last_seq.get(key)
                if previous is not None and seq > previous + 1:
                    self._stats["gaps"] += seq - previous - 1
                last_seq[key] = seq
            take.write_frames(
                frames,
                log_time_ns=log_time_ns,
                publish_time_ns=log_time_ns if t_capture is None else t_capture,
                sequence=msg_seq if seq is None else seq,
            )
            self._stats["recorded"] += 1
        take.close()

    def on_tick(self, now_ns: int) -> None:
        for name, value in list(self._stats.items()):
            self.counters[name] = value
        self.gauge("recorder_queue", len(self._queue))
        self.gauge("chunks", self._take.chunk_count)
        self.gauge("segments", len(self._take.segments))

    def queue_depth(self) -> int:
        return len(self._queue)

    def teardown(self) -> None:
        self._halt.set()
        self._receiver.join(5)
        deadline = time.monotonic() + 30
        while self._writer.is_alive() and time.monotonic() < deadline:
            self._writer.join(0.5)
        if self._writer.is_alive():
            self.log.error("writer did not finish within 30 s; the take may need `streamer recover`")
        self.on_tick(self.clock.now_ns())
        self.log.info("recorded %d messages, %d gaps into %s", self._stats["recorded"], self._stats["gaps"],
                      ", ".join(str(p) for p in self._take.segments))


def main(argv: list[str]) -> int:
    return run_node(Recorder, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
