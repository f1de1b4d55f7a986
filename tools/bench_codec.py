"""`streamer bench codec`: encode and decode time of one-person `kp2d` and of a `pose` message.

Messages are built like the live ones: kp2d = one person, MHR-70 keypoints (70, 2) with a few NaN,
box, confidence (with and without the estimator's MHR parameters); pose = 70 keypoints, 127 joint
rotations, 204 parameters. Decoding includes the full validation (dtype allow-list, shapes, caps,
finiteness). Figures are the median over repeats of the mean per call, in microseconds of this
process's CPU time (`time.process_time_ns`): the codec's own cost, which wall time overstates on a
shared, loaded machine (waiting for a core is not codec work). Wall-clock figures are reported too
(`wall_*` keys, the `wall` columns).

Live messages do not arrive back to back: at 60 Hz a receiver sleeps ~16 ms between them, and its caches go
cold. `cold_encode_kp2d_us` / `cold_decode_kp2d_us` time one call after each `--cold-gap-ms` sleep (median
wall time of `--cold-calls` such calls): the cost a sparse live stream really pays, and the part of the
1-publisher transport latency that is our code rather than ZeroMQ.

Stable `--json` keys: `encode_kp2d_us`, `decode_kp2d_us`, `decode_pose_us`, plus `encode_pose_us`,
`encode_kp2d_params_us`, `decode_kp2d_params_us`, `wall_<op>_<message>_us` for each of those,
`kp2d_bytes`, `kp2d_params_bytes`, `pose_bytes`, `target_decode_us`, `clock`, `cold_encode_kp2d_us`,
`cold_decode_kp2d_us`, `cold_gap_ms`.
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


def time_per_call_us(fn, *, calls: int, repeats: int, clock=time.process_time_ns) -> float:
    """Median over `repeats` of the mean time of `calls` calls on `clock` (ns), microseconds."""
    for _ in range(min(calls, 200)):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(calls):
            fn()
        runs.append((clock() - t0) / calls / 1e3)
    return statistics.median(runs)


def time_cold_us(fn, *, gap_s: float, calls: int) -> float:
    """Median wall time (us) of one call made right after sleeping `gap_s`: caches cold as in a sparse stream."""
    times = []
    for _ in range(calls):
        time.sleep(gap_s)
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return statistics.median(times)


def measure(calls: int = 2000, repeats: int = 7, cold_gap_ms: float = 16.7, cold_calls: int = 100) -> dict:
    kp2d, kp2d_params, pose = sample_kp2d(), sample_kp2d(with_params=True), sample_pose()
    f_kp2d, f_params, f_pose = encode(kp2d), encode(kp2d_params), encode(pose)
    cases = {
        "kp2d": (lambda: encode(kp2d), lambda: decode(f_kp2d)),
        "kp2d_params": (lambda: encode(kp2d_params), lambda: decode(f_params)),
        "pose": (lambda: encode(pose), lambda: decode(f_pose)),
    }
    out: dict = {}
    for name, (enc, dec) in cases.items():
        for op, fn in (("encode", enc), ("decode", dec)):
            out[f"{op}_{name}_us"] = round(time_per_call_us(fn, calls=calls, repeats=repeats), 2)
            out[f"wall_{op}_{name}_us"] = round(
                time_per_call_us(fn, calls=calls, repeats=repeats, clock=time.perf_counter_ns), 2)
    for op, fn in (("encode", cases["kp2d"][0]), ("decode", cases["kp2d"][1])):
        out[f"cold_{op}_kp2d_us"] = round(time_cold_us(fn, gap_s=cold_gap_ms / 1e3, calls=cold_calls), 2)
    out.update(cold_gap_ms=cold_gap_ms, clock="process_cpu", kp2d_bytes=sum(map(len, f_kp2d)), kp2d_params_bytes=sum(map(len, f_params)),
               pose_bytes=sum(map(len, f_pose)), target_decode_us=TARGET_DECODE_US)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench codec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calls", type=int, default=2000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cold-gap-ms", type=float, default=16.7, help="idle time before each cold call (default: 60 Hz)")
    parser.add_argument("--cold-calls", type=int, default=100, help="cold calls timed (one per gap)")
    args = parser.parse_args(argv)
    r = measure(args.calls, args.repeats, args.cold_gap_ms, args.cold_calls)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"microseconds per call: CPU time of this process (wall clock); target decode < {TARGET_DECODE_US:.0f} us")
    print(f"{'message':<24}{'bytes':>7}{'encode':>9}{'(wall)':>9}{'decode':>9}{'(wall)':>9}")
    for name, label in (("kp2d", "kp2d, 1 person"), ("kp2d_params", "kp2d, 1 person + MHR"), ("pose", "pose")):
        print(f"{label:<24}{r[name + '_bytes']:>7}{r[f'encode_{name}_us']:>9.1f}{r[f'wall_encode_{name}_us']:>9.1f}"
              f"{r[f'decode_{name}_us']:>9.1f}{r[f'wall_decode_{name}_us']:>9.1f}")
    print(f"{'kp2d, cold: 1 call after':<24}{'':>7}{'':>9}{r['cold_encode_kp2d_us']:>9.1f}{'':>9}{r['cold_decode_kp2d_us']:>9.1f}"
          f"   (wall, after {r['cold_gap_ms']:g} ms idle)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
