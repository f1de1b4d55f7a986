"""`streamer bench capture`: frames per second per camera of the capture path (video decode + CPU estimator).

For every camera video, every frame is decoded (OpenCV/FFmpeg, BGR->RGB) and given to the CPU estimator
(MediaPipe BlazePose when installed), one camera at a time in this process, as fast as possible; the
figure is frames / (decode + estimate) wall time. A live capture node runs one camera per grabber
thread and drops frames when slower than the camera, so fps below the camera rate means drops.
Without MediaPipe the benchmark says so and reports decode-only figures (`"estimator": "none"`).

Stable `--json` keys: `fps_per_camera` ({camera: fps}), plus `estimator`, `decode_ms_p50`,
`estimate_ms_p50`, `frames_per_camera`, `image_size`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from streamer.capture.estimator import View
from streamer.capture.sources import VideoFileSource

__all__ = ["main", "measure_camera"]

_DEFAULT_VIDEOS = Path("pose2sim_demo") / "S00_P00_T01_BalancingTrial" / "videos"


def _shared_data() -> Path:
    env = os.environ.get("STREAMER_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def measure_camera(path: Path, estimator, max_frames: int) -> dict:
    """Decode (and estimate on) up to max_frames frames of one video; times in ms per frame."""
    decode_ms, estimate_ms = [], []
    size = None
    start = time.perf_counter()
    with VideoFileSource(path) as source:
        for _ in range(max_frames):
            t0 = time.perf_counter()
            frame = source.read()
            if frame is None:
                break
            t1 = time.perf_counter()
            size = frame.image_size
            if estimator is not None:
                estimator.estimate([View(path.stem, frame.image, np.eye(3))])
            t2 = time.perf_counter()
            decode_ms.append((t1 - t0) * 1e3)
            estimate_ms.append((t2 - t1) * 1e3)
    elapsed = time.perf_counter() - start
    return {"frames": len(decode_ms), "fps": len(decode_ms) / elapsed if elapsed > 0 else 0.0,
            "decode_ms": decode_ms, "estimate_ms": estimate_ms, "image_size": size}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench capture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=None,
                        help="folder of camera videos (*.mp4 listed by exact name with --cameras); "
                             "default: the Pose2Sim balancing trial in ../shared/data")
    parser.add_argument("--cameras", nargs="+", default=["cam01", "cam02", "cam03", "cam04"],
                        help="video file stems inside --videos")
    parser.add_argument("--frames", type=int, default=100, help="frames per camera")
    parser.add_argument("--estimator", choices=("mediapipe", "none"), default="mediapipe")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    videos = args.videos or _shared_data() / _DEFAULT_VIDEOS
    paths = [videos / f"{camera}.mp4" for camera in args.cameras]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"streamer bench capture: video(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    estimator, note = None, ""
    if args.estimator == "mediapipe":
        try:
            from streamer.capture.mediapipe_pose import MediaPipeEstimator

            estimator = MediaPipeEstimator()
        except ImportError as exc:
            note = f"MediaPipe is not installed ({exc}); decode-only figures"
    results = {camera: measure_camera(path, estimator, args.frames) for camera, path in zip(args.cameras, paths)}
    if estimator is not None:
        estimator.close()
    decode = np.concatenate([r["decode_ms"] for r in results.values()])
    estimate = np.concatenate([r["estimate_ms"] for r in results.values()])
    summary = {
        "fps_per_camera": {c: round(r["fps"], 2) for c, r in results.items()},
        "estimator": "mediapipe" if estimator is not None else "none",
        "decode_ms_p50": round(float(np.median(decode)), 2),
        "estimate_ms_p50": round(float(np.median(estimate)), 2) if estimator is not None else None,
        "frames_per_camera": {c: r["frames"] for c, r in results.items()},
        "image_size": {c: list(r["image_size"]) for c, r in results.items()},
        "cpu_count": os.cpu_count(),
    }
    if note:
        summary["note"] = note
    if args.json:
        print(json.dumps(summary))
        return 0
    if note:
        print(f"note: {note}")
    print(f"capture bench: video decode + {summary['estimator']} estimator, every frame, one camera at a time")
    print(f"{'camera':<10} {'frames':>6} {'size':>11} {'fps':>8}")
    for camera, r in results.items():
        w, h = r["image_size"]
        print(f"{camera:<10} {r['frames']:>6} {f'{w}x{h}':>11} {r['fps']:>8.1f}")
    print(f"decode p50 {summary['decode_ms_p50']:.1f} ms/frame"
          + (f", estimator p50 {summary['estimate_ms_p50']:.1f} ms/frame" if estimator is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
