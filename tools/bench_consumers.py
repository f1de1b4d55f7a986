"""`streamer bench consumers`: throughput of the consumers (take writing and reading, VMC, offline re-solve).

Measures on this machine, single process, in CPU time of this process (`time.process_time`), so the
figures are the work's cost even on a loaded host (rates are per CPU-second):
- take write: kp2d messages (8 cameras, 1 person, 70 keypoints) through `TakeWriter.write` (validated
  wire frames, 1 s chunks, zstd), messages/s and MB/s of wire data;
- take read: strict `read_take` (decode every record), messages/s;
- VMC frame: retarget 70 keypoints to 55 HumanBodyBones + build the OSC bundle, µs per frame.
`--json` prints one JSON object with the keys
`record_write_msgs_per_s, record_write_mb_per_s, record_read_msgs_per_s, vmc_frame_us`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _kp2d(camera: str, seq: int, t_ns: int, rng):
    from protocol import Keypoints2D, Person2D

    person = Person2D(box=np.array([0, 0, 100, 200], np.float32), score=0.9,
                      keypoints=rng.uniform(0, 1000, (70, 2)).astype(np.float32),
                      confidence=rng.uniform(0, 1, 70).astype(np.float32))
    return Keypoints2D(camera=camera, seq=seq, frame_index=seq, t_capture_ns=t_ns,
                       image_size=np.array([1280, 720], np.int32), calib_version="v", persons=[person])


def measure(seconds_of_take: float = 10.0) -> dict[str, float]:
    from protocol import encode
    from streamer.recording import TakeWriter, read_take
    from streamer.vmc import vmc_bundle, vmc_frame_from_keypoints

    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mcap"
        frames = [encode(_kp2d(f"cam{c}", i, i * 16_666_667, rng)) for i in range(int(seconds_of_take * 60))
                  for c in range(8)]
        n_bytes = sum(len(b) for f in frames for b in f)
        start = time.process_time()
        with TakeWriter(path) as take:
            for i, f in enumerate(frames):
                take.write(f, log_time_ns=1_000_000_000 + (i // 8) * 16_666_667)
        elapsed = time.process_time() - start
        out["record_write_msgs_per_s"] = len(frames) / elapsed
        out["record_write_mb_per_s"] = n_bytes / elapsed / 1e6
        start = time.process_time()
        n = sum(1 for _ in read_take(path))
        out["record_read_msgs_per_s"] = n / (time.process_time() - start)

        from scipy.spatial.transform import Rotation

        from streamer.humanoid import tpose_keypoints

        base = tpose_keypoints()
        poses = [Rotation.from_rotvec(rng.normal(0, 0.5, 3)).apply(base) for _ in range(50)]
        vmc_frame_from_keypoints(base)  # loads the compiled retargeting kernel, as the avatar node does in setup
        start = time.process_time()
        previous = None
        for kp in poses:
            frame = vmc_frame_from_keypoints(kp, previous)
            previous = frame.local_rotations
            vmc_bundle(frame, 0.0)
        out["vmc_frame_us"] = (time.process_time() - start) / len(poses) * 1e6
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench consumers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic 8-camera take, s")
    args = parser.parse_args(argv)
    figures = measure(args.seconds)
    if args.json:
        print(json.dumps({k: round(v, 2) for k, v in figures.items()}))
        return 0
    print(f"{'measure':<28} {'value':>12}")
    for key, value in figures.items():
        print(f"{key:<28} {value:>12.1f}")
    return 0
