"""`streamer bench sync`: frame-set assembly + person choice per frame set, against the 0.3 ms budget.

Per frame set at 4, 8 and 16 cameras (two people in every view, one of them tracked):
- assembly: `Assembler.push` of every camera's frame (clock offsets, capture jitter) and `poll`;
- person choice: packing the detections, projecting the 3D track into every camera, choosing the
  tracked person per camera (`choose_by_track`) and gathering its keypoints (`select_persons`);
- for reference: bootstrap without a track (epipolar, runs only at start and after a loss) and
  the robust triangulation of the chosen keypoints (its own budget, 1 ms at 8 views).
Times are the best of the repeats of the mean per set, in ms. `--json` prints one object; the stable
key is `assembly_ms_8cam` (assembly + person choice at 8 cameras).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from protocol import Person2D
from streamer.association import (
    AssociationSettings,
    association_keypoints,
    bootstrap_persons,
    choose_by_track,
    fundamental_matrices,
    pack_detections,
    select_persons,
)
from streamer.calibration import Camera, Rig
from streamer.framesets import Assembler, AssemblySettings
from streamer.triangulation import triangulate_robust

__all__ = ["main", "measure", "ring_rig"]

BUDGET_MS = 0.3
VIEW_COUNTS = (4, 8, 16)
N_KEYPOINTS = 70


def ring_rig(n_views: int, radius_m: float = 4.0, focal_px: float = 900.0) -> Rig:
    """n_views pinhole cameras (1280x720, small radial distortion) on a circle, looking at (0, 0, 1) m."""
    cameras = []
    for v in range(n_views):
        angle = 2 * np.pi * v / n_views
        centre = np.array([radius_m * np.cos(angle), radius_m * np.sin(angle), 1.6 + 0.3 * (v % 2)])
        forward = np.array([0.0, 0.0, 1.0]) - centre
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        R = np.stack([right, np.cross(forward, right), forward])
        K = np.array([[focal_px, 0, 640.0], [0, focal_px, 360.0], [0, 0, 1]])
        cameras.append(Camera(f"cam{v}", (1280, 720), K, np.array([-0.05, 0.01, 0, 0, 0]), R, -R @ centre))
    return Rig(tuple(cameras))


def _people(rig: Rig, rng: np.random.Generator) -> tuple[np.ndarray, list[list[Person2D]]]:
    """The tracked body (K, 3) and, per camera, Person2D of it and of a distractor in random order."""
    body = np.column_stack([rng.uniform(-0.25, 0.25, N_KEYPOINTS), rng.uniform(-0.15, 0.15, N_KEYPOINTS),
                            rng.uniform(0.05, 1.8, N_KEYPOINTS)])
    persons: list[list[Person2D]] = [[] for _ in range(len(rig))]
    for offset in ((0.0, 0.0, 0.0), (1.0, -0.7, 0.0)):
        px = rig.project(body + np.array(offset)) + rng.normal(0.0, 1.5, (len(rig), N_KEYPOINTS, 2))
        for v in range(len(rig)):
            kp = px[v].astype(np.float32)
            persons[v].append(Person2D(box=np.r_[kp.min(0), kp.max(0)].astype(np.float32), score=0.9, keypoints=kp,
                                       confidence=np.full(N_KEYPOINTS, 0.9, np.float32)))
    for v in range(len(rig)):
        persons[v] = [persons[v][i] for i in rng.permutation(2)]
    return body, persons


def _per_set_ms(fn, n_sets: int, repeats: int, clock=time.perf_counter) -> float:
    samples = []
    for _ in range(repeats):
        start = clock()
        fn()
        samples.append((clock() - start) / n_sets * 1e3)
    return float(np.min(samples))  # the least disturbed repeat (timeit practice on a shared machine)


def measure(n_views: int, n_sets: int = 200, repeats: int = 5, seed: int = 0,
            clock=time.perf_counter) -> dict[str, float]:
    """Mean ms per frame set of each stage at n_views cameras (best repeat); clock: perf_counter
    (wall) or process_time (this process's CPU time, insensitive to other processes' load)."""
    rng = np.random.default_rng(seed)
    rig = ring_rig(n_views)
    names = rig.names
    settings = AssemblySettings.for_fps(30.0)
    period = settings.frame_period_ns
    offsets = rng.uniform(-6e6, 6e6, n_views)
    arrivals = []
    for k in range(n_sets):
        stamps = 1_000_000_000 + k * period + offsets + rng.normal(0, 1.5e6, n_views)
        order = rng.permutation(n_views)
        arrivals.append([(names[v], k, int(stamps[v]), 1_000_000_000 + k * period + 8_000_000 + i * 100_000)
                         for i, v in enumerate(order)])

    def assemble():
        assembler = Assembler(names, settings)
        emitted = 0
        for frames in arrivals:
            for camera, seq, t_capture, now in frames:
                assembler.push(camera, seq, t_capture, now)
            emitted += len(assembler.poll(frames[-1][3]))
        assert emitted == n_sets, f"bench_sync: {emitted} sets from {n_sets} (assembly regressed)"

    body, persons = _people(rig, rng)
    association = AssociationSettings()
    track = body + 0.02
    subset = association_keypoints(N_KEYPOINTS)

    def choose():
        for _ in range(n_sets):
            detections = pack_detections(persons, N_KEYPOINTS, association.min_confidence)
            chosen, _ = choose_by_track(rig.project(track[subset]), detections, association, subset)
            select_persons(detections, chosen)

    detections = pack_detections(persons, N_KEYPOINTS, association.min_confidence)
    fundamental = fundamental_matrices(rig.K, rig.R, rig.t)
    chosen, _ = choose_by_track(rig.project(track[subset]), detections, association, subset)
    pixels, confidence = select_persons(detections, chosen)
    few = max(1, n_sets // 10)

    def bootstrap():
        for _ in range(few):
            normalised = rig.undistort(detections.keypoints.reshape(n_views, -1, 2).astype(np.float64))
            undistorted = np.einsum("vij,vnj->vni", rig.K[:, :2, :2], normalised) + rig.K[:, None, :2, 2]
            bootstrap_persons(undistorted.reshape(detections.keypoints.shape), detections.counts, fundamental,
                              association)

    def triangulate():
        for _ in range(few):
            triangulate_robust(pixels, confidence, rig, prior=track)

    assembly_ms = _per_set_ms(assemble, n_sets, repeats, clock)
    choice_ms = _per_set_ms(choose, n_sets, repeats, clock)
    return {
        "assembly_only_ms": assembly_ms,
        "choice_ms": choice_ms,
        "assembly_ms": assembly_ms + choice_ms,
        "bootstrap_ms": _per_set_ms(bootstrap, few, repeats, clock),
        "triangulation_ms": _per_set_ms(triangulate, few, repeats, clock),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--sets", type=int, default=200, help="frame sets per repeat (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; the best is reported (default 5)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default) or this process's CPU time (use on a loaded machine)")
    args = parser.parse_args(argv)
    if args.sets < 10 or args.repeats < 1:
        parser.error("--sets must be >= 10 and --repeats >= 1")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    results = {n: measure(n, args.sets, args.repeats, clock=clock) for n in VIEW_COUNTS}
    flat = {f"{key}_{n}cam": round(value, 4) for n, row in results.items() for key, value in row.items()}
    flat["budget_ms"] = BUDGET_MS
    flat["clock"] = args.clock
    if args.json:
        print(json.dumps(flat, sort_keys=True))
        return 0
    rows = [("assembly (push + poll)", "assembly_only_ms", ""),
            ("person choice (track)", "choice_ms", ""),
            ("assembly + person choice", "assembly_ms", f"< {BUDGET_MS}"),
            ("bootstrap (no track; rare)", "bootstrap_ms", ""),
            ("robust triangulation (ref.)", "triangulation_ms", "< 1.0 at 8")]
    header = f"{f'ms per frame set ({args.clock})':<30}" + "".join(f"{f'{n} cams':>10}" for n in VIEW_COUNTS) + f"{'budget':>14}"
    print(header)
    print("-" * len(header))
    for label, key, budget in rows:
        print(f"{label:<30}" + "".join(f"{results[n][key]:>10.3f}" for n in VIEW_COUNTS) + f"{budget:>14}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
