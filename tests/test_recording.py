"""Take file format (streamer/recording.py): round trip, chunking, rotation, strict reading, salvage."""
from __future__ import annotations

import collections
import shutil

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcap.reader import make_reader
from mcap.writer import Writer

from protocol import Keypoints2D, Person2D, RigCalibration, encode
from streamer.recording import (
    TakeError,
    TakeReader,
    TakeWriter,
    read_take,
    salvage_take,
    take_segments,
)

T0 = 1_700_000_000_000_000_000


def kp2d(camera: str, seq: int, t_ns: int, rng: np.random.Generator) -> Keypoints2D:
    person = Person2D(
        box=np.array([10, 20, 300, 400], np.float32),
        score=0.9,
        keypoints=rng.uniform(0, 640, (70, 2)).astype(np.float32),
        confidence=rng.uniform(0, 1, 70).astype(np.float32),
    )
    return Keypoints2D(
        camera=camera,
        seq=seq,
        frame_index=seq,
        t_capture_ns=t_ns,
        image_size=np.array([640, 480], np.int32),
        calib_version="v1",
        persons=[person],
    )


def write_sequence(path, n=120, fps=60, cams=("cam0", "cam1"), **kwargs):
    rng = np.random.default_rng(0)
    sent = []
    with TakeWriter(path, **kwargs) as take:
        take.write(RigCalibration(version="v1", cameras=[]), log_time_ns=T0)
        for i in range(n):
            t = T0 + int(i * 1e9 / fps)
            for cam in cams:
                msg = kp2d(cam, i, t, rng)
                frames = encode(msg)
                take.write(frames, log_time_ns=t + 2_000_000)
                sent.append((t + 2_000_000, frames))
    return sent, take


def test_round_trip_is_byte_exact_with_capture_publish_time_and_sequence(tmp_path):
    path = tmp_path / "take.mcap"
    sent, _ = write_sequence(path, n=30)
    got = list(TakeReader(path).records(topics=["kp2d/cam0", "kp2d/cam1"]))
    assert len(got) == len(sent)
    by_key = {(lt, bytes(f[0])): f for lt, f in sent}
    for log_time, publish_time, sequence, frames in got:
        assert frames == by_key[(log_time, frames[0])]
        assert publish_time == log_time - 2_000_000  # capture time
        assert sequence == round((publish_time - T0) * 60 / 1e9)
    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    assert {c.message_encoding for c in summary.channels.values()} == {"msgpack"}
    assert sorted(c.topic for c in summary.channels.values()) == ["calib", "kp2d/cam0", "kp2d/cam1"]
    decoded = list(read_take(path, topics=["kp2d/cam1"]))
    assert [m.seq for _, _, m in decoded] == list(range(30))
    assert all(topic == "kp2d/cam1" for _, topic, _ in decoded)
    assert TakeReader(path).metadata()["take_id"]


def test_chunks_span_at_most_one_second(tmp_path):
    path = tmp_path / "take.mcap"
    write_sequence(path, n=60 * 4, chunk_bytes=64 * 1024 * 1024)
    with open(path, "rb") as f:
        chunks = make_reader(f).get_summary().chunk_indexes
    assert len(chunks) >= 4
    assert all(c.message_end_time - c.message_start_time < 1_000_000_000 for c in chunks)


def test_rotation_writes_segments_and_read_follows_them(tmp_path):
    path = tmp_path / "take.mcap"
    sent, take = write_sequence(path, n=60 * 3, rotate_s=1.0)
    segments = take_segments(path)
    assert segments == take.segments and len(segments) >= 3
    assert segments[1].name == "take.001.mcap"
    got = list(read_take(path))
    assert len(got) == len(sent) + 1
    assert [lt for lt, _, _ in got] == sorted(lt for lt, _, _ in got)
    assert len(list(read_take(path, follow_segments=False))) < len(got)


def test_truncated_file_is_refused_naming_it_and_salvage_keeps_closed_chunks(tmp_path):
    path = tmp_path / "take.mcap"
    sent, _ = write_sequence(path, n=60 * 3, chunk_bytes=64 * 1024 * 1024)
    with open(path, "rb") as f:
        chunks = make_reader(f).get_summary().chunk_indexes
    last = max(chunks, key=lambda c: c.chunk_start_offset)
    cut = tmp_path / "cut.mcap"
    data = path.read_bytes()[: last.chunk_start_offset + 100]  # the last chunk is half-written
    cut.write_bytes(data)
    with pytest.raises(TakeError, match="cut.mcap"):
        list(read_take(cut))
    fixed = tmp_path / "fixed.mcap"
    report = salvage_take(cut, fixed)
    assert report.exit_code == 3 and not report.complete
    kept = list(read_take(fixed))
    expected = sum(1 for lt, _ in sent if lt < last.message_start_time) + 1  # + calib
    assert len(kept) == expected
    assert TakeReader(fixed).metadata()["recovered"] == "true"
    # A whole file salvages losslessly.
    again = salvage_take(path, tmp_path / "copy.mcap")
    assert again.exit_code == 0 and again.messages == len(sent) + 1


def test_salvage_of_garbage_recovers_nothing(tmp_path):
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"not an mcap file at all")
    assert salvage_take(bad, tmp_path / "out.mcap").exit_code == 1


def _raw_take(path, blobs):
    with open(path, "wb") as f:
        w = Writer(f)
        w.start()
        cid = w.register_channel(topic="kp2d/cam0", message_encoding="msgpack", schema_id=0)
        for i, blob in enumerate(blobs):
            w.add_message(cid, log_time=T0 + i, data=blob, publish_time=T0 + i)
        w.finish()


def test_bad_records_are_counted_and_skipped(tmp_path):
    rng = np.random.default_rng(1)
    good = msgpack.packb(encode(kp2d("cam0", 0, T0, rng)))
    wrong_topic = msgpack.packb(encode(kp2d("cam9", 1, T0, rng)))
    path = tmp_path / "mixed.mcap"
    _raw_take(path, [b"\xc1", good, msgpack.packb([b"kp2d/cam0", b"\x00"]), wrong_topic, msgpack.packb({"a": 1})])
    rejected = collections.Counter()
    got = list(read_take(path, rejected=rejected))
    assert len(got) == 1 and got[0][2].seq == 0
    assert rejected == {"record": 2, "header": 1, "topic": 1}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=5))
def test_reader_never_crashes_on_arbitrary_record_bytes(tmp_path_factory, blobs):
    path = tmp_path_factory.mktemp("fuzz") / "f.mcap"
    _raw_take(path, blobs)
    rejected = collections.Counter()
    got = list(read_take(path, rejected=rejected))
    assert len(got) + sum(rejected.values()) == len(blobs)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=4000))
def test_salvage_of_any_truncation_keeps_a_readable_prefix(tmp_path_factory, cut_at):
    base = tmp_path_factory.mktemp("trunc")
    path = base / "take.mcap"
    if not path.exists():
        write_sequence(path, n=40, chunk_span_ns=100_000_000)
    data = path.read_bytes()
    cut = base / "cut.mcap"
    cut.write_bytes(data[: min(cut_at * 8, len(data))])
    report = salvage_take(cut, base / "out.mcap")
    got = list(read_take(base / "out.mcap"))
    assert len(got) == report.messages
    shutil.rmtree(base)


def test_existing_takes_are_not_overwritten_when_asked(tmp_path):
    from streamer.recording import unused_take_path

    path = tmp_path / "take.mcap"
    write_sequence(path, n=2)
    with pytest.raises(TakeError, match="take.mcap: already exists"):
        TakeWriter(path, overwrite=False)
    free = unused_take_path(path, "20260101T000000")
    assert free.name == "take-20260101T000000.mcap" and not free.exists()
    free.write_bytes(b"")
    assert unused_take_path(path, "20260101T000000").name == "take-20260101T000000-2.mcap"
    assert unused_take_path(tmp_path / "new.mcap", "x") == tmp_path / "new.mcap"
