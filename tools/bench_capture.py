"""`streamer bench capture`: frames per second per camera of the capture path (video decode + CPU estimator).

For every camera video, every frame is decoded (OpenCV/FFmpeg, BGR->RGB) and given to the CPU estimator
(MediaPipe BlazePose when installed), one camera at a time in this process, as fast as possible; the
figure is frames / (decode + estimate) wall time. A live capture node runs one camera per grabber
thread and drops frames when slower than the camera, so fps below the camera rate means drops.
Without MediaPipe the benchmark says so and reports decode-only figures (`"estimator": "none"`).

`--accuracy` also runs MediaPipe on the Pose2Sim balancing trial's four videos, triangulates its points
(streamer/triangulation.py `triangulate_robust`, causal prior, as the sync node does) and compares them, on the
same frames and keypoints, with the OpenPose-based results: our triangulation of the trial's OpenPose
BODY_25B JSON, and Pose2Sim's own `.trc` (see `pose2sim_agreement`).

Stable `--json` keys: `fps_per_camera` ({camera: fps}), plus `estimator`, `decode_ms_p50`,
`estimate_ms_p50`, `frames_per_camera`, `image_size`; with --accuracy, `accuracy` (keys of `pose2sim_agreement`).
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

__all__ = ["main", "measure_camera", "pose2sim_agreement", "slow_estimator_drops"]

_TRIAL = Path("pose2sim_demo") / "S00_P00_T01_BalancingTrial"
_DEFAULT_VIDEOS = _TRIAL / "videos"


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


def slow_estimator_drops(path: Path, estimator_ms: float) -> dict:
    """Latest-frame semantics measured: the video paced at its own rate (a camera), an 'estimator' that takes
    estimator_ms per frame (a sleep). wait = time a delivered frame sat in the grabber's slot (the queueing
    delay); source lateness = release time - due time (the decoder falling behind real time on a loaded CPU)."""
    from streamer.capture.latest import LatestFrameGrabber

    waits_ms, lateness_ms = [], []
    with LatestFrameGrabber(VideoFileSource(path), pace=True) as grabber:
        while (frame := grabber.latest(timeout_s=2.0)) is not None:
            now = time.monotonic_ns()
            waits_ms.append(grabber.last_wait_ns / 1e6)
            lateness_ms.append((now - grabber.last_wait_ns - grabber.release_monotonic_ns(frame)) / 1e6)
            time.sleep(estimator_ms / 1e3)
        counts = grabber.counts
    waits, half = np.array(waits_ms), len(waits_ms) // 2
    return {**counts, "estimator_ms": estimator_ms, "wait_p50_ms": round(float(np.median(waits)), 1),
            "wait_max_ms": round(float(waits.max()), 1),
            "wait_p50_first_half_ms": round(float(np.median(waits[:half])), 1),
            "wait_p50_second_half_ms": round(float(np.median(waits[half:])), 1),
            "source_lateness_max_ms": round(float(max(lateness_ms)), 1)}


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def _p90(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, 90)) if values.size else float("nan")


def pose2sim_agreement(trial_dir: Path, estimator, *, frame_step: int = 1) -> dict:
    """MediaPipe (or any `Estimator`) on a Pose2Sim trial's videos vs the OpenPose-based results, same frames.

    Frames 0, frame_step, ... of every camera video (first person of each view); keypoints compared: the
    MHR-70 points both BlazePose and BODY_25B map to. Distances in mm (3D) and px (2D). Returns
    detection_rate, mp_vs_openpose_2d_median_px, mp_vs_openpose_3d_median_mm / _p90_mm,
    mp_vs_trc_3d_median_mm / _p90_mm, openpose_vs_trc_3d_median_mm, mp_reproj_median_px,
    openpose_reproj_median_px, frames, keypoints.
    """
    from streamer.capture.mediapipe_pose import BLAZEPOSE_TO_MHR70
    from streamer.importing.openpose import BODY25B_NAMES, BODY25B_TO_MHR70, match_cameras
    from streamer.triangulation import TriangulationSettings, triangulate_robust
    from tools.evaluate import pose2sim_trial, read_trc

    settings = TriangulationSettings(min_confidence=0.3)
    trial = pose2sim_trial(trial_dir, settings=settings)  # OpenPose BODY_25B, our robust triangulation
    rig = trial.rig
    videos = sorted((trial_dir / "videos").glob("*.mp4"))
    names = match_cameras([v.stem for v in videos], rig.names)
    by_camera = dict(zip(names, videos))
    frames = [int(f) for f in trial.frames[::frame_step]]
    rows = {int(f): i for i, f in enumerate(trial.frames)}
    pixels = np.full((len(frames), len(rig), 70, 2), np.nan)
    confidence = np.zeros((len(frames), len(rig), 70))
    for v, camera in enumerate(rig.names):
        wanted = dict(zip(frames, range(len(frames))))
        with VideoFileSource(by_camera[camera]) as source:
            for frame in source:
                if frame.index in wanted:
                    found = estimator.estimate([View(camera, frame.image, rig.camera(camera).K)])[0]
                    if found:
                        pixels[wanted[frame.index], v] = found[0].keypoints
                        confidence[wanted[frame.index], v] = found[0].confidence
                if frame.index >= frames[-1]:
                    break
    common = np.array(sorted(set(BLAZEPOSE_TO_MHR70.values()) & set(BODY25B_TO_MHR70.values())))
    mine, prior = [], None
    for f in range(len(frames)):
        result = triangulate_robust(pixels[f], confidence[f], rig, settings, prior=prior if frame_step == 1 else None)
        prior = result.points
        mine.append(result)
    ours = np.stack([r.points[common] for r in mine])  # (F, C, 3)
    openpose = np.stack([trial.results[rows[f]].points[common] for f in frames])
    op_pixels = np.stack([trial.pixels[rows[f]][:, common] for f in frames])
    trc_frames, trc_names, trc_points = read_trc(next(p for p in sorted((trial_dir / "pose-3d").glob("*.trc"))
                                                      if "_filt" not in p.stem))
    # .trc Frame# counts from 1 over the JSON frames in order; markers are BODY_25B names
    trc_row = {int(f): i for i, f in enumerate(trc_frames)}
    to_body25b = {name: i for i, name in enumerate(BODY25B_NAMES)}
    trc_cols = {BODY25B_TO_MHR70[to_body25b[n]]: m for m, n in enumerate(trc_names)
                if to_body25b.get(n) in BODY25B_TO_MHR70}
    trc = np.full_like(ours, np.nan)
    for fi, f in enumerate(frames):
        row = trc_row.get(rows[f] + 1)
        for ci, k in enumerate(common):
            if row is not None and k in trc_cols:
                trc[fi, ci] = trc_points[row, trc_cols[k]]
    mm = 1000.0
    d_op = np.linalg.norm(ours - openpose, axis=-1) * mm
    d_trc = np.linalg.norm(ours - trc, axis=-1) * mm
    d_op_trc = np.linalg.norm(openpose - trc, axis=-1) * mm
    d_2d = np.linalg.norm(pixels[:, :, common] - op_pixels, axis=-1)
    return {
        "frames": len(frames),
        "keypoints": len(common),
        "detection_rate": float(np.isfinite(pixels[..., 0]).any(axis=-1).mean()),
        "mp_vs_openpose_2d_median_px": round(_median(d_2d), 1),
        "mp_vs_openpose_3d_median_mm": round(_median(d_op), 1),
        "mp_vs_openpose_3d_p90_mm": round(_p90(d_op), 1),
        "mp_vs_trc_3d_median_mm": round(_median(d_trc), 1),
        "mp_vs_trc_3d_p90_mm": round(_p90(d_trc), 1),
        "openpose_vs_trc_3d_median_mm": round(_median(d_op_trc), 1),
        "mp_reproj_median_px": round(_median(np.array([r.mean_reproj_px for r in mine])), 2),
        "openpose_reproj_median_px": round(_median(np.array([trial.results[rows[f]].mean_reproj_px
                                                             for f in frames])), 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench capture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=None,
                        help="folder of camera videos (*.mp4 listed by exact name with --cameras); "
                             "default: the Pose2Sim balancing trial in ../shared/data")
    parser.add_argument("--cameras", nargs="+", default=["cam01", "cam02", "cam03", "cam04"],
                        help="video file stems inside --videos")
    parser.add_argument("--frames", type=int, default=100, help="frames per camera")
    parser.add_argument("--estimator", choices=("mediapipe", "none"), default="mediapipe")
    parser.add_argument("--slow-estimator-ms", type=float, default=40.0,
                        help="latest-frame check: a paced camera video against an estimator this slow (0: skip)")
    parser.add_argument("--accuracy", action="store_true",
                        help="also compare triangulated MediaPipe with the OpenPose-based results on the Pose2Sim trial")
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
    accuracy = None
    if args.accuracy and estimator is not None:
        estimator.close()
        estimator = MediaPipeEstimator()  # fresh per-camera tracking
        accuracy = pose2sim_agreement(_shared_data() / _TRIAL, estimator)
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
    if accuracy is not None:
        summary["accuracy"] = accuracy
    if args.slow_estimator_ms > 0:
        summary["slow_estimator"] = slow_estimator_drops(paths[0], args.slow_estimator_ms)
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
    if "slow_estimator" in summary:
        slow = summary["slow_estimator"]
        print(f"\nlatest-frame grabber, {args.cameras[0]} paced at its frame rate, estimator {slow['estimator_ms']:.0f} ms: "
              f"grabbed {slow['grabbed']}, delivered {slow['delivered']}, dropped {slow['dropped']}; wait in the slot p50 "
              f"{slow['wait_p50_ms']} ms (first half {slow['wait_p50_first_half_ms']}, second half "
              f"{slow['wait_p50_second_half_ms']}), max {slow['wait_max_ms']} ms; decoder behind real time by at most "
              f"{slow['source_lateness_max_ms']} ms")
    if accuracy is not None:
        print(f"\nMediaPipe vs OpenPose on the Pose2Sim balancing trial ({accuracy['frames']} frames x 4 cameras, "
              f"{accuracy['keypoints']} common keypoints):")
        for key, value in accuracy.items():
            if key not in ("frames", "keypoints"):
                print(f"  {key:<32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
