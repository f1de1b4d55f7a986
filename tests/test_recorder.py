"""Recorder node (nodes/recorder.py) against real processes: graceful stop, SIGKILL + `streamer recover`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protocol import RigCalibration
from streamer.recording import TakeError, TakeReader, read_take
from streamer.transport import Publisher
from tests.test_recording import kp2d
from tools.recover import main as recover_main

REPO = Path(__file__).resolve().parents[1]
RATE_HZ = 200


def start_recorder(path: Path, endpoint: str, chunk_span_s: float = 1.0) -> subprocess.Popen:
    settings = f'{{"path": "{path}", "chunk_span_s": {chunk_span_s}}}'
    return subprocess.Popen(
        [sys.executable, "-m", "nodes.recorder", "--name", "rec", "--input", f"cam={endpoint}",
         "--settings-json", settings, "--log-level", "WARNING"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def publish_for(pub: Publisher, seconds: float, start_seq: int, rng) -> int:
    """Publish kp2d/cam0 at RATE_HZ for `seconds`; returns the next seq."""
    seq = start_seq
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        pub.publish(kp2d("cam0", seq, time.time_ns(), rng))
        pub.service()
        seq += 1
        time.sleep(1 / RATE_HZ)
    return seq


@pytest.mark.slow
def test_graceful_stop_writes_a_complete_take_without_gaps(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "take.mcap"
    pub = Publisher("tcp://127.0.0.1:0", name="cam")
    pub.publish_state(RigCalibration(version="v1", cameras=[]))
    proc = start_recorder(path, pub.endpoint)
    try:
        time.sleep(1.5)  # let the recorder subscribe
        n = publish_for(pub, 2.0, 0, rng)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close()
    msgs = list(read_take(path))
    seqs = [m.seq for _, topic, m in msgs if topic == "kp2d/cam0"]
    assert seqs == list(range(seqs[0], n)) and seqs[0] < 10
    assert any(topic == "calib" for _, topic, _ in msgs)
    assert not any(topic.startswith("hb/") for _, topic, _ in msgs)
    # publish time is the capture time, log time the (later) receive time
    records = list(TakeReader(path).records(["kp2d/cam0"]))
    assert all(0 <= log - pub_t < 1e9 for log, pub_t, _, _ in records)
    assert [s for _, _, s, _ in records] == list(range(records[0][2], records[0][2] + len(records)))


@pytest.mark.slow
def test_sigkill_loses_at_most_the_last_chunk_and_recover_makes_the_file_whole(tmp_path, capsys):
    rng = np.random.default_rng(1)
    path = tmp_path / "take.mcap"
    pub = Publisher("tcp://127.0.0.1:0", name="cam")
    proc = start_recorder(path, pub.endpoint, chunk_span_s=0.5)
    try:
        time.sleep(1.5)
        n = publish_for(pub, 3.0, 0, rng)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close()
    with pytest.raises(TakeError, match="streamer recover"):
        list(read_take(path))
    assert recover_main([str(path)]) == 3
    assert "recovered" in capsys.readouterr().out
    assert (tmp_path / "take.mcap.damaged").is_file()
    seqs = [m.seq for _, _, m in read_take(path)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # a contiguous prefix, nothing missing inside
    lost = n - 1 - seqs[-1]
    # the open chunk spans <= 0.5 s of data; allow the writer's 0.1 s tick and scheduling on a busy CI box
    assert 0 <= lost <= RATE_HZ * (0.5 + 0.5), lost
    assert TakeReader(path).metadata()["recovered"] == "true"
    # recovering a whole file again changes nothing
    assert recover_main([str(path)]) == 0
