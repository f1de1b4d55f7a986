"""Take files: MCAP with msgpack records, the one format every recorder, importer and replayer uses.

Layout of a take file (see `RECORDING_API.md` in the notes and the README):

- MCAP, zstd chunks, one channel per topic (`kp2d/cam0`, `points3d`, `pose`, `calib`, ...),
  `message_encoding = "msgpack"`, no schema (schema id 0; the records are self-describing).
- Message data = `protocol.encode_record(frames)`: the wire frames `[topic, header, payload...]`,
  byte-exact, as one msgpack array of byte strings.
- `publish_time` = capture time on the stage clock (`t_capture_ns` of a kp2d message, `t_ns` of
  the others; the receive time for messages without one, e.g. `calib`), `log_time` = receive time
  at the recorder, `sequence` = the producer's sequence (`seq`, else `frame_index`, else 0), mod 2**32.
- Chunks hold at most `chunk_span_ns` of log time (default 1 s) and at most `chunk_bytes`; each
  closed chunk is flushed to the OS, so a process killed with SIGKILL loses only the open chunk.
  `salvage_take` (behind `streamer recover`) rebuilds index and footer of such a file.
- Rotation: a writer with `rotate_s` / `rotate_bytes` continues in `<stem>.001.mcap`,
  `<stem>.002.mcap`, ... beside the first file; `take_segments(path)` lists them by exact name.
- Metadata record `streamer.take`: take id, segment index, writer library, plus caller metadata.

Example::

    with TakeWriter(path, metadata={"source": "synth"}) as take:
        take.write(msg, log_time_ns=t)              # a protocol message
        take.write(frames, log_time_ns=t)           # or received wire frames (decoded to validate)
    for log_time_ns, topic, msg in read_take(path, topics=["pose"]):
        ...
"""
from __future__ import annotations

import collections
import io
import logging
import os
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, DataEnd, Footer, Header, Message, Metadata, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import CompressionType, Writer

from protocol import DecodeError, decode, decode_record, encode, encode_record, topic_of

__all__ = [
    "MESSAGE_ENCODING",
    "unused_take_path",
    "TAKE_METADATA_NAME",
    "SalvageReport",
    "TakeError",
    "TakeReader",
    "TakeWriter",
    "capture_time_and_sequence",
    "read_take",
    "salvage_take",
    "segment_path",
    "take_segments",
]

log = logging.getLogger(__name__)

MESSAGE_ENCODING = "msgpack"
TAKE_METADATA_NAME = "streamer.take"
LIBRARY = "streamer-recording/1"
DEFAULT_CHUNK_SPAN_NS = 1_000_000_000
DEFAULT_CHUNK_BYTES = 256 * 1024
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


class TakeError(ValueError):
    """A take file that cannot be read as asked; the message names the file."""


def capture_time_and_sequence(msg) -> tuple[int | None, int]:
    """`(capture time ns or None, producer sequence)` of a protocol message.

    Capture time: `t_capture_ns` (kp2d), else `t_ns`; None when the message has neither (calib).
    Sequence: `seq`, else `frame_index`, else 0.
    """
    t = getattr(msg, "t_capture_ns", None)
    if t is None:
        t = getattr(msg, "t_ns", None)
    seq = getattr(msg, "seq", None)
    if seq is None:
        seq = getattr(msg, "frame_index", 0)
    return t, int(seq)


def segment_path(path: str | os.PathLike, index: int) -> Path:
    """File of rotation segment `index` of the take at `path` (0 is `path` itself)."""
    path = Path(path)
    if index == 0:
        return path
    return path.with_name(f"{path.stem}.{index:03d}{path.suffix}")


def take_segments(path: str | os.PathLike) -> list[Path]:
    """The files of a take in order: `path`, then `<stem>.001.mcap`, ... while they exist."""
    path = Path(path)
    if not path.is_file():
        raise TakeError(f"{path}: no such take file")
    out = [path]
    while (nxt := segment_path(path, len(out))).is_file():
        out.append(nxt)
    return out


def unused_take_path(path: str | os.PathLike, stamp: str) -> Path:
    """`path` if neither it nor its segments exist, else `<stem>-<stamp>[-n].mcap` that is free."""
    path = Path(path)
    candidate, n = path, 1
    while candidate.exists() or segment_path(candidate, 1).exists():
        suffix = f"-{stamp}" if n == 1 else f"-{stamp}-{n}"
        candidate = path.with_name(f"{path.stem}{suffix}{path.suffix}")
        n += 1
    return candidate


class TakeWriter:
    """Write a take (see module docstring). Not thread-safe: one writer thread owns it.

    path: the first segment's file; rotation continues in `segment_path(path, i)`.
    chunk_span_ns: a chunk is closed before it would span more log time than this.
    chunk_bytes: a chunk is closed once its uncompressed size exceeds this.
    rotate_s / rotate_bytes: start a new segment after this much log time / file size (None: never).
    metadata: string key/values stored in every segment's `streamer.take` metadata record.
    overwrite: replace existing files; False raises `TakeError` instead (naming the file).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        chunk_span_ns: int = DEFAULT_CHUNK_SPAN_NS,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        rotate_s: float | None = None,
        rotate_bytes: int | None = None,
        metadata: dict[str, str] | None = None,
        fsync: bool = False,
        overwrite: bool = True,
    ):
        if chunk_span_ns <= 0 or chunk_bytes <= 0:
            raise ValueError("chunk_span_ns and chunk_bytes must be positive")
        self.path = Path(path)
        self.chunk_span_ns = int(chunk_span_ns)
        self.chunk_bytes = int(chunk_bytes)
        self.rotate_ns = None if rotate_s is None else int(rotate_s * 1e9)
        self.rotate_bytes = rotate_bytes
        self.fsync = fsync
        self.overwrite = overwrite
        self.take_id = (metadata or {}).get("take_id") or uuid.uuid4().hex
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.segments: list[Path] = []
        self.message_count = 0
        self.chunk_count = 0
        self._file: io.BufferedWriter | None = None
        self._writer: Writer | None = None
        self._channels: dict[str, int] = {}
        self._chunk_start_ns: int | None = None
        self._segment_start_ns: int | None = None
        self._open_segment()

    # -------------------------------------------------------------- lifecycle

    def _open_segment(self) -> None:
        target = segment_path(self.path, len(self.segments))
        target.parent.mkdir(parents=True, exist_ok=True)
        if not self.overwrite and target.exists():
            raise TakeError(f"{target}: already exists (not overwriting a take)")
        self._file = open(target, "wb")
        self._writer = Writer(
            self._file,
            chunk_size=self.chunk_bytes,
            compression=CompressionType.ZSTD,
            enable_crcs=True,
        )
        self._writer.start(profile="", library=LIBRARY)
        meta = dict(self.metadata, take_id=self.take_id, segment=str(len(self.segments)))
        self._writer.add_metadata(TAKE_METADATA_NAME, meta)
        self._file.flush()
        self._flushed_at = self._file.tell()
        self.segments.append(target)
        self._channels = {}
        self._chunk_start_ns = None
        self._segment_start_ns = None

    def _close_segment(self) -> None:
        assert self._writer is not None and self._file is not None
        self._writer.finish()
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        self._writer = None
        self._file = None

    def close(self) -> None:
        """Finish the open segment (final chunk, summary, footer). Idempotent."""
        if self._writer is not None:
            self._close_segment()

    def __enter__(self) -> TakeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._writer is None

    # -------------------------------------------------------------- writing

    def write(self, item, log_time_ns: int) -> object:
        """Append one message (a protocol message or its wire frames); returns the decoded message.

        Frames are decoded strictly first (raises `protocol.DecodeError` on a bad message, which
        is then not written) and stored byte-exact.
        """
        if isinstance(item, (list, tuple)):
            frames = [bytes(f) for f in item]
            _, msg = decode(frames)
        else:
            msg, frames = item, encode(item)
        t_capture, seq = capture_time_and_sequence(msg)
        self.write_frames(
            frames,
            log_time_ns=log_time_ns,
            publish_time_ns=log_time_ns if t_capture is None else t_capture,
            sequence=seq,
        )
        return msg

    def write_frames(
        self, frames: Sequence[bytes], *, log_time_ns: int, publish_time_ns: int, sequence: int
    ) -> None:
        """Append already-validated wire frames without decoding them (topic = frame 0)."""
        if self._writer is None:
            raise TakeError(f"{self.path}: writer is closed")
        log_time_ns = int(log_time_ns)
        if not 0 <= log_time_ns <= _U64:
            raise ValueError(f"log_time_ns {log_time_ns} outside the u64 range")
        publish_time_ns = int(publish_time_ns)
        if not 0 <= publish_time_ns <= _U64:
            publish_time_ns = log_time_ns
        self._maybe_rotate(log_time_ns)
        self.tick(log_time_ns)
        topic = bytes(frames[0]).decode("utf-8")
        channel_id = self._channels.get(topic)
        if channel_id is None:
            channel_id = self._writer.register_channel(
                topic=topic, message_encoding=MESSAGE_ENCODING, schema_id=0, metadata={}
            )
            self._channels[topic] = channel_id
        if self._chunk_start_ns is None:
            self._chunk_start_ns = log_time_ns
        if self._segment_start_ns is None:
            self._segment_start_ns = log_time_ns
        self._writer.add_message(
            channel_id=channel_id,
            log_time=log_time_ns,
            data=encode_record(list(frames)),
            publish_time=publish_time_ns,
            sequence=int(sequence) & _U32,
        )
        self.message_count += 1
        if self._file.tell() > self._flushed_at:  # mcap closed a chunk because of its size
            self._end_chunk()

    def tick(self, now_log_ns: int) -> None:
        """Close the open chunk if it has spanned `chunk_span_ns` by `now_log_ns` (call when idle too)."""
        if self._chunk_start_ns is not None and now_log_ns - self._chunk_start_ns >= self.chunk_span_ns:
            self._end_chunk()

    def flush(self) -> None:
        """Close the open chunk now and hand every byte to the OS."""
        if self._writer is not None:
            self._end_chunk()

    def _end_chunk(self) -> None:
        if self._chunk_start_ns is not None:
            self.chunk_count += 1
        self._writer.flush()  # finishes the chunk in progress, flushes the Python buffer
        if self.fsync:
            os.fsync(self._file.fileno())
        self._flushed_at = self._file.tell()
        self._chunk_start_ns = None

    def _maybe_rotate(self, log_time_ns: int) -> None:
        if self._segment_start_ns is None:
            return
        too_long = self.rotate_ns is not None and log_time_ns - self._segment_start_ns >= self.rotate_ns
        too_big = self.rotate_bytes is not None and self._file.tell() >= self.rotate_bytes
        if too_long or too_big:
            self._close_segment()
            self._open_segment()


# ------------------------------------------------------------------ reading


@dataclass
class TakeReader:
    """Strict reader of one take file. `rejected` counts skipped bad records by reason."""

    path: Path
    rejected: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self):
        self.path = Path(self.path)

    def metadata(self) -> dict[str, str]:
        """The `streamer.take` metadata record ({} when absent)."""
        with open(self.path, "rb") as f:
            reader = self._seeking(f)
            for record in reader.iter_metadata():
                if record.name == TAKE_METADATA_NAME:
                    return dict(record.metadata)
        return {}

    def topics(self) -> dict[str, int]:
        """Topic -> message count, from the summary."""
        with open(self.path, "rb") as f:
            summary = self._seeking(f).get_summary()
        counts = summary.statistics.channel_message_counts if summary.statistics else {}
        return {ch.topic: counts.get(cid, 0) for cid, ch in summary.channels.items()}

    def time_range_ns(self) -> tuple[int, int]:
        """(first, last) log time of the messages in the file."""
        with open(self.path, "rb") as f:
            summary = self._seeking(f).get_summary()
        if summary.statistics is None or summary.statistics.message_count == 0:
            raise TakeError(f"{self.path}: take holds no messages")
        return summary.statistics.message_start_time, summary.statistics.message_end_time

    def records(
        self,
        topics: Iterable[str] | None = None,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> Iterator[tuple[int, int, int, list[bytes]]]:
        """`(log_time_ns, publish_time_ns, sequence, frames)` in log-time order, undecoded wire frames.

        Records whose envelope is not a msgpack array of byte strings, or whose topic frame
        disagrees with the channel, are counted in `rejected` and skipped.
        """
        topics = None if topics is None else list(topics)
        with open(self.path, "rb") as f:
            reader = self._seeking(f)
            try:
                for _, channel, message in reader.iter_messages(
                    topics=topics, start_time=start_ns, end_time=end_ns, log_time_order=True
                ):
                    if channel.message_encoding != MESSAGE_ENCODING:
                        self._reject("encoding", channel.topic)
                        continue
                    try:
                        frames = msgpack.unpackb(message.data, raw=False, max_map_len=0)
                    except Exception:  # msgpack raises beyond its own exception tree
                        self._reject("record", channel.topic)
                        continue
                    if not (isinstance(frames, list) and len(frames) >= 2 and all(isinstance(x, bytes) for x in frames)):
                        self._reject("record", channel.topic)
                        continue
                    if frames[0] != channel.topic.encode():
                        self._reject("topic", channel.topic)
                        continue
                    yield message.log_time, message.publish_time, message.sequence, frames
            except (McapError, zlib.error, ValueError, EOFError) as exc:
                raise TakeError(f"{self.path}: damaged take ({exc}); try `streamer recover {self.path}`") from None

    def messages(
        self,
        topics: Iterable[str] | None = None,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> Iterator[tuple[int, str, object]]:
        """`(log_time_ns, topic, message)` in log-time order, decoded strictly; bad records skipped and counted."""
        for log_time, _, _, frames in self.records(topics, start_ns=start_ns, end_ns=end_ns):
            try:
                topic, msg = decode(frames)
            except DecodeError as exc:
                self._reject(exc.reason, frames[0].decode("utf-8", "replace"))
                continue
            yield log_time, topic, msg

    def _reject(self, reason: str, topic: str) -> None:
        if not self.rejected:
            log.warning("%s: skipping a bad record on %s (%s); further ones are only counted", self.path, topic, reason)
        self.rejected[reason] += 1

    def _seeking(self, f) -> SeekingReader:
        try:
            reader = SeekingReader(f, validate_crcs=True)
            if reader.get_summary() is None:
                raise McapError("no summary")
        except (McapError, ValueError, EOFError, OSError) as exc:
            raise TakeError(
                f"{self.path}: not a complete take ({exc}); if the recorder crashed, run `streamer recover {self.path}`"
            ) from None
        return reader


def read_take(
    path: str | os.PathLike,
    topics: Iterable[str] | None = None,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    follow_segments: bool = True,
    rejected: collections.Counter | None = None,
) -> Iterator[tuple[int, str, object]]:
    """Yield `(log_time_ns, topic, message)` of a take in log-time order, decoded strictly.

    follow_segments: continue into the rotation segments `<stem>.001.mcap`, ... of `path`.
    rejected: a Counter that receives the skipped bad records by reason (the log names the file).
    Raises `TakeError` (naming the file) for a missing, truncated or damaged file.
    """
    paths = take_segments(path) if follow_segments else [Path(path)]
    topics = None if topics is None else list(topics)
    for p in paths:
        reader = TakeReader(p)
        yield from reader.messages(topics, start_ns=start_ns, end_ns=end_ns)
        if rejected is not None:
            rejected.update(reader.rejected)


# ------------------------------------------------------------------ recovery


@dataclass
class SalvageReport:
    """What `salvage_take` kept: messages, chunks, whether the source was already complete."""

    messages: int = 0
    chunks: int = 0
    complete: bool = False  # the source had its footer: nothing was lost
    stopped_at_byte: int = 0
    reason: str = ""

    @property
    def exit_code(self) -> int:
        """`mcap recover` convention: 0 all recovered, 3 lossy, 1 nothing recovered."""
        if self.complete:
            return 0
        return 3 if self.messages else 1


def salvage_take(src: str | os.PathLike, dst: str | os.PathLike) -> SalvageReport:
    """Copy every message of the intact prefix of `src` (e.g. a recorder killed with SIGKILL) into a
    complete, indexed take at `dst`. Reading stops at the first truncated or corrupt record
    (chunk CRCs are checked); everything before it is kept, with its channels and metadata.
    """
    src, dst = Path(src), Path(dst)
    report = SalvageReport()
    channels: dict[int, Channel] = {}
    metadata: dict[str, str] = {}
    out: TakeWriter | None = None
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        reader = StreamReader(f, emit_chunks=True, validate_crcs=False)
        records = reader.records
        while True:
            offset = f.tell()
            try:
                record = next(records)
                if isinstance(record, Chunk):
                    inner = breakup_chunk(record, validate_crc=True)
            except StopIteration:
                break
            except Exception as exc:  # any defect ends the intact prefix
                report.stopped_at_byte = offset
                report.reason = f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__
                break
            if isinstance(record, Footer):
                report.complete = True
                break
            if isinstance(record, (Header, DataEnd, Schema)):
                continue
            if isinstance(record, Metadata) and record.name == TAKE_METADATA_NAME:
                metadata = dict(record.metadata)
            elif isinstance(record, Channel):
                channels[record.id] = record
            elif isinstance(record, Chunk):
                for item in inner:
                    if isinstance(item, Channel):
                        channels[item.id] = item
                    elif isinstance(item, Message):
                        if out is None:
                            out = _salvage_writer(dst, metadata)
                        _copy_message(out, channels, item, src)
                        report.messages += 1
                report.chunks += 1
            elif isinstance(record, Message):
                if out is None:
                    out = _salvage_writer(dst, metadata)
                _copy_message(out, channels, record, src)
                report.messages += 1
        if not report.complete and not report.reason:
            report.stopped_at_byte = size
            report.reason = "no footer"
    if out is None:
        out = _salvage_writer(dst, metadata)
    out.close()
    return report


def _salvage_writer(dst: Path, metadata: dict[str, str]) -> TakeWriter:
    meta = {k: v for k, v in metadata.items() if k != "segment"}
    meta["recovered"] = "true"
    return TakeWriter(dst, metadata=meta)


def _copy_message(out: TakeWriter, channels: dict[int, Channel], message: Message, src: Path) -> None:
    channel = channels.get(message.channel_id)
    if channel is None:
        raise TakeError(f"{src}: message on unknown channel {message.channel_id}")
    try:
        frames = msgpack.unpackb(message.data, raw=False, max_map_len=0)
    except Exception:
        frames = None
    if not (isinstance(frames, list) and frames and all(isinstance(x, bytes) for x in frames)):
        log.warning("%s: dropping an unreadable record on %s during recovery", src, channel.topic)
        return
    out.write_frames(
        frames, log_time_ns=message.log_time, publish_time_ns=message.publish_time, sequence=message.sequence
    )
