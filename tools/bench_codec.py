"""`streamer bench codec`: encode and decode time of one-person `kp2d` and of a `pose` message.

Messages are built like the live ones: kp2d = one person, MHR-70 keypoints (70, 2) with a few NaN,
box, confidence (with and without the estimator's MHR parameters); pose = 70 keypoints, 127 joint
rotations, 204 parameters. Decoding includes the full validation (dtype allow-list, shapes, caps,
finiteness). Figures are the median over repeats of the mean per call, in microseconds.

Stable `--json` keys: `encode_kp2d_us`, `decode_kp2d_us`, `decode_pose_us`, plus `encode_pose_us`,
`encode_kp2d_params_us`, `decode_kp2d_params_us`, `kp2d_bytes`, `pose_bytes`, `target_decode_us`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from protocol import Keypoints2D, Person2D, Pose, decode, encode

__all__ = ["main", "sample_kp2d", "sample_pose", "time_per_call_us"]

TARGET_DECODE_US = 50.0


def sample_kp2d(with_params: bool = False) -> Keypoints2D:
    """A one-person kp2d as a capture node sends it (70 keypoints, 3 missing)."""
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 1280, (70, 2)).astype(np.float32)
    conf = rng.uniform(0.3, 1, 70).astype(np.float32)
    kp[[10, 20, 30]] = np.nan
    conf[[10, 20, 30]] = 0
    params = {}
    if with_params:
        params = {name: rng.normal(size=n).astype(np.float32) for name, n in
                  (("body_pose", 133), ("hand", 108), ("shape", 45), ("scale", 28), ("global_rot", 3), ("cam_t", 3))}
    person = Person2D(box=np.array([100, 50, 600, 700], np.float32), score=0.97, keypoints=kp, confidence=conf,
                      params=params)
    return Keypoints2D(camera="cam03", seq=12345, frame_index=12345, t_capture_ns=1_790_000_000_000_000_000,
                       image_size=np.array([1280, 720], np.int32), calib_version="3f2a9c0d11e4b7a8", persons=[person])


def sample_pose() -> Pose:
    """A fitted pose as the fitter sends it."""
    rng = np.random.default_rng(1)
    q = rng.normal(size=(127, 4)).astype(np.float32)
    return Pose(t_ns=1_790_000_000_000_000_000, frame_index=12345, person_id=0, body_model="anny",
                params=rng.normal(size=204).astype(np.float32), keypoints=rng.normal(size=(70, 3)).astype(np.float32),
                joint_rotations=q / np.linalg.norm(q, axis=1, keepdims=True), world_from_root=np.eye(4, dtype=np.float32),
                flags=np.ones(70, np.uint8), loss=0.012, data_loss=0.01, n_valid=67, verdict="good", iterations=4)


def time_per_call_us(fn, *, calls: int, repeats: int) -> float:
    """Median over `repeats` of the mean time of `calls` calls, microseconds."""
    for _ in range(min(calls, 200)):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter_ns() - t0) / calls / 1e3)
    return statistics.median(runs)


def measure(calls: int = 2000, repeats: int = 7) -> dict:
    kp2d, kp2d_params, pose = sample_kp2d(), sample_kp2d(with_params=True), sample_pose()
    f_kp2d, f_params, f_pose = encode(kp2d), encode(kp2d_params), encode(pose)
    t = lambda fn: round(time_per_call_us(fn, calls=calls, repeats=repeats), 2)  # noqa: E731
    return {
        "encode_kp2d_us": t(lambda: encode(kp2d)),
        "decode_kp2d_us": t(lambda: decode(f_kp2d)),
        "encode_kp2d_params_us": t(lambda: encode(kp2d_params)),
        "decode_kp2d_params_us": t(lambda: decode(f_params)),
        "encode_pose_us": t(lambda: encode(pose)),
        "decode_pose_us": t(lambda: decode(f_pose)),
        "kp2d_bytes": sum(map(len, f_kp2d)),
        "pose_bytes": sum(map(len, f_pose)),
        "target_decode_us": TARGET_DECODE_US,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench codec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calls", type=int, default=2000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    r = measure(args.calls, args.repeats)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{'message':<22}{'bytes':>8}{'encode us':>12}{'decode us':>12}   target decode < {TARGET_DECODE_US:.0f} us")
    print(f"{'kp2d, 1 person':<22}{r['kp2d_bytes']:>8}{r['encode_kp2d_us']:>12.1f}{r['decode_kp2d_us']:>12.1f}")
    print(f"{'kp2d, 1 person + MHR':<22}{'':>8}{r['encode_kp2d_params_us']:>12.1f}{r['decode_kp2d_params_us']:>12.1f}")
    print(f"{'pose':<22}{r['pose_bytes']:>8}{r['encode_pose_us']:>12.1f}{r['decode_pose_us']:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
