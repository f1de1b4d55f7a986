"""`streamer bench triangulation`: our robust triangulation vs aniposelib's `CameraGroup.triangulate`.

Same synthetic frames for both: V cameras (4, 8, 16) on a ring, 1280x720, OpenCV distortion; a
70-point symmetric body-sized point set per frame; 2 px detector noise; in the "outliers" runs 10 %
of the observations are replaced by gross outliers (half: the same point of another person standing
0.6-1.0 m away, half: the left/right mirror point). Reported per view count: time per frame on the outlier
frames (best of --repeats passes per frame, median over frames, ms), as wall time and as CPU time of the
process (the CPU figure is steadier on a machine shared with other work), mean 3D error (mm) with and
without outliers, and the speed ratios. Both processes get the same malloc settings (`keep_freed_memory`). aniposelib's
robust `triangulate_ransac` is timed on a few frames too (--ransac-frames, off by default: seconds to
minutes per frame; up to 8 views), for reference.

aniposelib 0.8 needs jax and opencv-contrib-python, which conflict with this project's
opencv-python-headless, so it lives in its own virtual environment. Its interpreter is, in order:
--aniposelib-python, $STREAMER_ANIPOSELIB_PYTHON, this interpreter if it can import aniposelib,
`<repo>/../venv-bench/bin/python`. It is run as a subprocess (this file with --aniposelib-worker,
which imports only numpy and aniposelib), exchanging .npz files. Set one up with:
    python3 -m venv venv-bench && venv-bench/bin/pip install aniposelib==0.8.0
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["make_scene", "main"]

VIEW_COUNTS = (4, 8, 16)
RANSAC_MAX_VIEWS = 8  # aniposelib triangulate_ransac explores camera subsets: ~74 s per frame at 8 views here
NUM_POINTS = 70
_REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- synthetic scene (also used by tests)


def _ring_cameras(num_views: int, rng: np.random.Generator, radius_m: float = 3.5):
    """(name, size, K, dist, R, t) tuples of cameras on a ring looking at the stage centre (Z up)."""
    cams = []
    for v in range(num_views):
        angle = 2 * np.pi * v / num_views + rng.uniform(-0.1, 0.1)
        centre = np.array([radius_m * np.cos(angle), radius_m * np.sin(angle), rng.uniform(0.8, 2.2)])
        forward = np.array([0.0, 0.0, 0.9]) - centre
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        R = np.stack([right, down, forward])
        f = rng.uniform(850, 1100)
        K = np.array([[f, 0, 640 + rng.uniform(-10, 10)], [0, f, 360 + rng.uniform(-10, 10)], [0, 0, 1]])
        dist = np.array([rng.uniform(-0.3, 0.1), rng.uniform(-0.05, 0.1), 0.0, 0.0, rng.uniform(-0.02, 0.02)])
        cams.append((f"cam{v}", (1280, 720), K, dist, R, -R @ centre))
    return cams


def _body_points(rng: np.random.Generator, centre: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """(70, 3) metres: a left/right-symmetric, body-sized point set (mirror pairs follow `flip`)."""
    local = np.stack([rng.uniform(0.05, 0.35, NUM_POINTS), rng.normal(0, 0.08, NUM_POINTS),
                      rng.uniform(0.0, 1.8, NUM_POINTS)], axis=1)
    for k in range(NUM_POINTS):
        if flip[k] == k:
            local[k, 0] = 0.0
        elif flip[k] > k:
            local[flip[k]] = local[k] * (-1.0, 1.0, 1.0)
    yaw = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(yaw), np.sin(yaw)
    return local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + centre


def make_scene(num_views: int, num_frames: int, *, seed: int = 0, noise_px: float = 2.0,
               outlier_fraction: float = 0.1) -> dict:
    """Synthetic frames with ground truth, identical for every method.

    Returns {"cameras": [(name, size, K, dist, R, t)], "truth": (F, 70, 3) m, "clean": (F, V, 70, 2) px
    with noise, "outliers": same with `outlier_fraction` of the observations replaced by gross outliers,
    "outlier_mask": (F, V, 70) bool}.
    """
    from streamer.body.mhr70 import FLIP_PERMUTATION
    from streamer.calibration import Camera, Rig

    rng = np.random.default_rng(seed)
    cameras = _ring_cameras(num_views, rng)
    rig = Rig(tuple(Camera(*c) for c in cameras))
    truth = np.stack([_body_points(rng, np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 0.0]),
                                   FLIP_PERMUTATION) for _ in range(num_frames)])
    offsets = rng.uniform(0.6, 1.0, (num_frames, 1, 1)) * np.stack(
        [np.cos(a := rng.uniform(0, 2 * np.pi, num_frames)), np.sin(a), np.zeros(num_frames)], axis=1)[:, None]
    other = truth + offsets.reshape(num_frames, 1, 3)
    exact = rig.project(truth)  # (F, V, K, 2)
    clean = exact + rng.normal(0, noise_px, exact.shape)
    other_px = rig.project(other) + rng.normal(0, noise_px, exact.shape)
    mirror_px = clean[..., FLIP_PERMUTATION, :]
    mask = rng.random(exact.shape[:3]) < outlier_fraction
    use_other = rng.random(exact.shape[:3]) < 0.5
    outliers = np.where((mask & use_other)[..., None], other_px, np.where(mask[..., None], mirror_px, clean))
    return {"cameras": cameras, "rig": rig, "truth": truth, "clean": clean, "outliers": outliers,
            "outlier_mask": mask}


# ---------------------------------------------------------------- measurement


def _mean_error_mm(points: np.ndarray, truth: np.ndarray) -> float:
    err = np.linalg.norm(points - truth, axis=-1)
    return float(np.nanmean(err) * 1000.0)


def _frame_ms(times, repeats: int, frames: int) -> float:
    """Time per frame, ms: each frame's best of `repeats` passes (removes scheduler interruptions on a busy
    machine, as timeit does), then the median over frames. Applied identically to both methods."""
    return float(np.median(np.asarray(times).reshape(repeats, frames).min(axis=0)) * 1000.0)


def _time_ours(scene: dict, key: str, repeats: int) -> tuple[float, np.ndarray]:
    from streamer.triangulation import triangulate_robust

    rig, frames = scene["rig"], scene[key]
    triangulate_robust(frames[0], None, rig)  # warm caches
    times, cpu_times, points = [], [], []
    for _ in range(repeats):
        points = []
        for pixels in frames:
            start, cpu_start = time.perf_counter(), time.process_time()
            result = triangulate_robust(pixels, None, rig)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            points.append(result.points)
    return _frame_ms(times, repeats, len(frames)), _frame_ms(cpu_times, repeats, len(frames)), np.stack(points)


def _aniposelib_worker(in_path: str, out_path: str) -> None:
    """Run aniposelib on the frames of `in_path` (npz), write points and per-frame times to `out_path`."""
    from aniposelib.cameras import Camera as AniCamera
    from aniposelib.cameras import CameraGroup

    data = np.load(in_path)
    group = CameraGroup([
        AniCamera(matrix=data["K"][v], dist=data["dist"][v], size=tuple(data["size"][v]), rvec=data["rvec"][v],
                  tvec=data["t"][v], name=f"cam{v}")
        for v in range(len(data["K"]))
    ])
    out = {}
    for key in ("clean", "outliers"):
        frames = data[key]
        group.triangulate(frames[0].copy(), progress=False)  # jit warm-up
        times, cpu_times, points = [], [], []
        for _ in range(int(data["repeats"])):
            points = []
            for pixels in frames:
                start, cpu_start = time.perf_counter(), time.process_time()
                points.append(group.triangulate(pixels.copy(), progress=False))
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        out[f"{key}_points"] = np.stack(points)
        out[f"{key}_times"] = np.array(times).reshape(int(data["repeats"]), len(frames))
        out[f"{key}_cpu_times"] = np.array(cpu_times).reshape(int(data["repeats"]), len(frames))
    ransac_frames = data["outliers"][: int(data["ransac_frames"])]
    if len(ransac_frames):  # aniposelib's robust variant (a Python loop per point): a few frames only
        group.triangulate_ransac(ransac_frames[0].copy(), progress=False)  # numba compile
        times, points = [], []
        for pixels in ransac_frames:
            start = time.perf_counter()
            points.append(group.triangulate_ransac(pixels.copy(), progress=False)[0])
            times.append(time.perf_counter() - start)
        out["ransac_points"], out["ransac_times"] = np.stack(points), np.array(times)
    np.savez(out_path, **out)


def _aniposelib_python(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("STREAMER_ANIPOSELIB_PYTHON"):
        return os.environ["STREAMER_ANIPOSELIB_PYTHON"]
    if importlib.util.find_spec("aniposelib") is not None:
        return sys.executable
    sibling = _REPO.parent / "venv-bench" / "bin" / "python"
    return str(sibling) if sibling.exists() else None


def _run_aniposelib(python: str, scene: dict, repeats: int, ransac_frames: int) -> dict:
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        cams = scene["cameras"]
        np.savez(in_path, K=np.stack([c[2] for c in cams]), dist=np.stack([c[3] for c in cams]),
                 size=np.array([c[1] for c in cams]), rvec=np.stack([cv2.Rodrigues(c[4])[0].ravel() for c in cams]),
                 t=np.stack([c[5] for c in cams]), clean=scene["clean"], outliers=scene["outliers"], repeats=repeats,
                 ransac_frames=ransac_frames)
        # the same malloc settings as keep_freed_memory() in this process, through glibc's environment knobs
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH="", MALLOC_TRIM_THRESHOLD_=str(128 << 20),
                   MALLOC_TOP_PAD_=str(64 << 20), MALLOC_MMAP_THRESHOLD_=str(32 << 20))
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--aniposelib-worker", str(in_path),
                               str(out_path)], capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"aniposelib worker ({python}) failed:\n{proc.stderr[-2000:]}")
        data = np.load(out_path)
        return {key: data[key] for key in data.files}


def run(view_counts=VIEW_COUNTS, frames: int = 40, repeats: int = 3, aniposelib_python: str | None = None,
        seed: int = 0, ransac_frames: int = 0) -> dict:
    """Measure both methods at every view count; returns the flat result dictionary (see --json)."""
    from streamer.triangulation import keep_freed_memory

    keep_freed_memory()
    python = _aniposelib_python(aniposelib_python)
    result: dict = {"frames": frames, "points": NUM_POINTS, "noise_px": 2.0, "outlier_fraction": 0.1,
                    "aniposelib_python": python}
    for views in view_counts:
        scene = make_scene(views, frames, seed=seed + views)
        for key, suffix in (("clean", "clean"), ("outliers", "outliers")):
            ms, cpu_ms, points = _time_ours(scene, key, repeats)
            result[f"err_ours_{suffix}_mm_{views}v"] = _mean_error_mm(points, scene["truth"])
            if key == "outliers":
                result[f"ours_ms_{views}v"], result[f"ours_cpu_ms_{views}v"] = ms, cpu_ms
        if python is not None:
            ani = _run_aniposelib(python, scene, repeats, ransac_frames if views <= RANSAC_MAX_VIEWS else 0)
            result[f"aniposelib_ms_{views}v"] = _frame_ms(ani["outliers_times"], repeats, frames)
            result[f"err_aniposelib_clean_mm_{views}v"] = _mean_error_mm(ani["clean_points"], scene["truth"])
            result[f"err_aniposelib_outliers_mm_{views}v"] = _mean_error_mm(ani["outliers_points"], scene["truth"])
            result[f"aniposelib_cpu_ms_{views}v"] = _frame_ms(ani["outliers_cpu_times"], repeats, frames)
            result[f"speedup_{views}v"] = result[f"aniposelib_ms_{views}v"] / result[f"ours_ms_{views}v"]
            result[f"speedup_cpu_{views}v"] = result[f"aniposelib_cpu_ms_{views}v"] / result[f"ours_cpu_ms_{views}v"]
            if "ransac_times" in ani:
                result[f"aniposelib_ransac_ms_{views}v"] = float(np.median(ani["ransac_times"]) * 1000.0)
                result[f"err_aniposelib_ransac_outliers_mm_{views}v"] = _mean_error_mm(
                    ani["ransac_points"], scene["truth"][:ransac_frames])
    if 8 in view_counts:  # the stable headline keys
        result["err_ours_outliers_mm"] = result["err_ours_outliers_mm_8v"]
        for key in ("aniposelib_ms_8v", "speedup_8v", "err_aniposelib_outliers_mm"):
            source = "err_aniposelib_outliers_mm_8v" if key == "err_aniposelib_outliers_mm" else key
            result[key] = result.get(source)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench triangulation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--frames", type=int, default=40, help="frames per view count")
    parser.add_argument("--repeats", type=int, default=3, help="timing passes over the frames")
    parser.add_argument("--views", type=int, nargs="+", default=list(VIEW_COUNTS), help="view counts")
    parser.add_argument("--aniposelib-python", help="interpreter that can import aniposelib")
    parser.add_argument("--ransac-frames", type=int, default=0,
                        help="frames for aniposelib's triangulate_ransac (slow: a Python loop per point); 0: skip")
    parser.add_argument("--aniposelib-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.aniposelib_worker:
        _aniposelib_worker(*args.aniposelib_worker)
        return 0
    result = run(tuple(args.views), args.frames, args.repeats, args.aniposelib_python, ransac_frames=args.ransac_frames)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"robust triangulation vs aniposelib CameraGroup.triangulate: {NUM_POINTS} points/frame, "
          f"{args.frames} frames, 2 px noise, 10 % gross outliers")
    if result["aniposelib_python"] is None:
        print("aniposelib: not found (see --help for how to set up its virtual environment)")
    print("ms: wall time per frame; cpu ms: CPU time of the process per frame")
    header = f"{'views':>5} {'ours ms':>8} {'anipose ms':>10} {'speedup':>8} {'ours cpu ms':>11} " \
             f"{'anip cpu ms':>11} {'cpu speedup':>11} {'ours mm':>8} {'anip mm':>8} " \
             f"{'ours mm (outl)':>15} {'anip mm (outl)':>15} {'ransac ms':>10} {'ransac mm (outl)':>17}"
    print(header)
    for views in args.views:
        get = lambda key: result.get(f"{key}_{views}v", float("nan"))  # noqa: E731
        print(f"{views:>5} {get('ours_ms'):8.3f} {get('aniposelib_ms'):10.3f} {get('speedup'):8.1f} "
              f"{get('ours_cpu_ms'):11.3f} {get('aniposelib_cpu_ms'):11.3f} {get('speedup_cpu'):11.1f} "
              f"{get('err_ours_clean_mm'):8.2f} {get('err_aniposelib_clean_mm'):8.2f} "
              f"{get('err_ours_outliers_mm'):15.2f} {get('err_aniposelib_outliers_mm'):15.2f} "
              f"{get('aniposelib_ransac_ms'):10.1f} {get('err_aniposelib_ransac_outliers_mm'):17.2f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--aniposelib-worker":
        _aniposelib_worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main(sys.argv[1:]))
