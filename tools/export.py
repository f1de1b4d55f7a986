"""`streamer export bvh TAKE.mcap OUT.bvh`: write a take's fitted poses as a BVH animation.

Reads the `pose` topic, follows one person (`--person`, default the first seen), retargets the
fitted keypoints to the HumanBodyBones skeleton (`streamer.humanoid`) and writes BVH
(`streamer.bvh`: Y-up, centimetres by default). Poses with the verdict "unusable" hold the previous
usable pose so the frame timing stays uniform. The frame time is the median interval of the poses.
Prints the frame count and the round-trip error of constant bone offsets (FK of the BVH vs the take).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from protocol import Verdict
from streamer.bvh import roundtrip_error, write_bvh
from streamer.humanoid import retarget
from streamer.recording import TakeError, read_take

__all__ = ["main", "take_keypoints"]

log = logging.getLogger(__name__)


def take_keypoints(path: Path, person_id: int = -1, topic: str = "pose") -> tuple[np.ndarray, np.ndarray, int]:
    """(keypoints (T, 70, 3) stage metres, t_ns (T,), held frames) of one person's poses in a take."""
    keypoints, times, held = [], [], 0
    for _, _, pose in read_take(path, topics=[topic]):
        if person_id < 0:
            person_id = pose.person_id
        if pose.person_id != person_id:
            continue
        if pose.verdict == Verdict.UNUSABLE:
            if not keypoints:
                continue
            keypoints.append(keypoints[-1])
            held += 1
        else:
            keypoints.append(np.asarray(pose.keypoints, float))
        times.append(pose.t_ns)
    if not keypoints:
        raise TakeError(f"{path}: no usable {topic!r} messages" + (f" for person {person_id}" if person_id >= 0 else ""))
    return np.stack(keypoints), np.asarray(times, np.int64), held


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    bvh = sub.add_parser("bvh", help="BVH animation of the fitted poses")
    bvh.add_argument("take", type=Path, help="take file (.mcap) with a pose topic")
    bvh.add_argument("out", type=Path, help="BVH file to write")
    bvh.add_argument("--person", type=int, default=-1, help="person id to export (default: the first seen)")
    bvh.add_argument("--scale", type=float, default=100.0, help="units per metre in the BVH (100: centimetres)")
    bvh.add_argument("--topic", default="pose", help="topic holding the poses")
    args = parser.parse_args(argv)
    try:
        keypoints, times, held = take_keypoints(args.take, args.person, args.topic)
    except TakeError as exc:
        print(f"streamer export: {exc}")
        return 1
    steps = np.diff(times)
    frame_time_s = float(np.median(steps)) / 1e9 if steps.size and np.median(steps) > 0 else 1 / 30
    skeleton = retarget(keypoints)
    write_bvh(args.out, skeleton, frame_time_s, scale=args.scale)
    err_mm = roundtrip_error(skeleton) * 1e3
    print(f"{args.out}: {len(keypoints)} frames at {1 / frame_time_s:.2f} fps ({held} held), "
          f"round-trip error p95 {np.percentile(err_mm, 95):.2f} mm, max {err_mm.max():.2f} mm")
    return 0
