"""`streamer bench sync`: frame-set assembly + person choice per frame set, against the 0.3 ms budget;
and how long the assembler waits before deciding a set.

CPU per frame set at 4, 8 and 16 cameras (two people in every view, one of them tracked):
- assembly: `Assembler.push` of every camera's frame (clock offsets, capture jitter) and `poll`;
- person choice: packing the detections, projecting the 3D track into every camera, choosing the
  tracked person per camera (`choose_by_track`) and gathering its keypoints (`select_persons`);
- for reference: bootstrap without a track (epipolar, runs only at start and after a loss) and
  the robust triangulation of the chosen keypoints (its own budget, 1 ms at 8 views).
Times are the best of the repeats of the mean per set, in ms.

Decision wait (deterministic: the assembler is a pure state machine fed the simulated receive clock,
so machine load does not enter): per set, decided time - newest member's arrival, the sync's share
of the end-to-end latency. Free-running cameras at 4 and 8 cameras x 30 and 60 fps
(`simulated_arrivals`: trigger phases uniform over the frame period, clock offsets, capture jitter,
per-camera publish latency with a tail, dropped frames), and with `--take` a recorded take
(kp2d receive times of the recorder as arrivals; beside it the live sync node's hop recorded in
the take, points3d receive - newest member kp2d receive, both on the recorder's clock, so free of
the senders' clock offsets). Each with the timing model (`predict_timing`, the default) and the
fixed rule. Reported: p50/p99 wait, the share of sets that were complete,
resolved early (partial, no camera awaited), overdue (a predicted frame written off) or decided
at the deadline, late frames (arrived after their set was emitted) and frames used in a set per
1000 received, cameras per set.

`--json` prints one object; stable keys: `assembly_ms_8cam` (assembly + person choice at 8 cameras),
`wait_p50_ms_<N>x<F>`, `wait_p99_ms_<N>x<F>`, `late_per_1k_<N>x<F>`, `used_per_1k_<N>x<F>` (timing model) and the same with
`_fixed` appended (fixed rule), `<reason>_share_<N>x<F>`; with --take the same keys with `take` for `<N>x<F>`,
and `take_live_sync_hop_p50_ms` / `take_live_sync_hop_p99_ms`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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

__all__ = ["decision_waits", "main", "measure", "recorded_sync_hop", "ring_rig", "simulated_arrivals", "take_arrivals"]

BUDGET_MS = 0.3
VIEW_COUNTS = (4, 8, 16)
N_KEYPOINTS = 70
WAIT_CONFIGS = ((4, 30.0), (4, 60.0), (8, 30.0), (8, 60.0))
REASONS = ("complete", "resolved", "overdue", "deadline")
_MS = 1_000_000

Arrival = tuple[int, str, int, int]  # (arrival ns on the receiver's clock, camera, seq, capture ns on the stage clock)


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


def simulated_arrivals(n_cameras: int, fps: float, seconds: float, seed: int = 0, *, jitter_ms: float = 0.5,
                       clock_offset_ms: float = 2.0, drop_rate: float = 0.005, latency_ms: tuple[float, float] = (4.0, 12.0),
                       latency_jitter_ms: float = 2.0, tail_rate: float = 0.02, tail_ms: float = 8.0) -> list[Arrival]:
    """Free-running cameras `cam0..`, in arrival order. Camera c: trigger phase uniform in one period,
    constant clock offset N(0, clock_offset_ms), capture jitter N(0, jitter_ms); publish latency
    U(latency_ms) per camera + |N(0, latency_jitter_ms)| per frame + with `tail_rate` an extra
    Exp(tail_ms); frames of one camera arrive in order (one socket); `drop_rate` of frames never sent."""
    rng = np.random.default_rng(seed)
    period = 1e9 / fps
    n = int(seconds * fps)
    k = np.arange(n)
    events: list[Arrival] = []
    for c in range(n_cameras):
        phase = rng.uniform(0.0, period)
        offset = rng.normal(0.0, clock_offset_ms) * _MS
        base = rng.uniform(*latency_ms) * _MS
        exposure = 1e9 + k * period + phase + rng.normal(0.0, jitter_ms * _MS, n)
        latency = (base + np.abs(rng.normal(0.0, latency_jitter_ms * _MS, n))
                   + (rng.random(n) < tail_rate) * rng.exponential(tail_ms * _MS, n))
        arrival = np.maximum.accumulate(exposure + latency)
        sent = np.flatnonzero(rng.random(n) >= drop_rate)
        events += [(int(arrival[i]), f"cam{c}", int(i), int(exposure[i] + offset)) for i in sent]
    events.sort()
    return events


def take_arrivals(path: Path) -> tuple[list[Arrival], float]:
    """The kp2d frames of a recorded take in receive order (the recorder's log time as arrival), and
    the camera rate (from the median capture interval of the first camera)."""
    from protocol import Keypoints2D
    from streamer.recording import read_take

    events = sorted((log_ns, msg.camera, msg.seq, msg.t_capture_ns) for log_ns, _, msg in read_take(path)
                    if isinstance(msg, Keypoints2D))
    if not events:
        raise ValueError(f"{path}: no kp2d messages")
    first = [e[3] for e in events if e[1] == events[0][1]]
    return events, (1e9 / float(np.median(np.diff(first))) if len(first) > 1 else 30.0)


def recorded_sync_hop(path: Path) -> dict[str, float]:
    """The live sync node's hop in a recorded take, ms: for every points3d, its receive time minus the
    newest receive time of its member kp2d (`sources_seq`), both the recorder's log times."""
    from protocol import Keypoints2D, Points3D
    from streamer.recording import read_take

    received: dict[tuple[str, int], int] = {}
    hops = []
    for log_ns, _, msg in read_take(path):
        if isinstance(msg, Keypoints2D):
            received[(msg.camera, msg.seq)] = log_ns
        elif isinstance(msg, Points3D):
            members = [received.get((c, int(s))) for c, s in zip(msg.cameras, msg.sources_seq) if s >= 0]
            if members and None not in members:
                hops.append((log_ns - max(members)) / _MS)
    if not hops:
        return {}
    return {"live_sync_hop_p50_ms": float(np.percentile(hops, 50)), "live_sync_hop_p99_ms": float(np.percentile(hops, 99))}


def decision_waits(events: list[Arrival], settings: AssemblySettings) -> dict[str, float]:
    """Feed the arrivals to an assembler (polling at every arrival and every due time in between) and
    sum up: wait = set decided - newest member arrived (ms) p50/p99/max, the share of sets per reason,
    late, unmatched and used (in a set) frames per 1000 received, mean cameras per set."""
    cameras = sorted({e[1] for e in events}, key=lambda c: (len(c), c))
    assembler = Assembler(cameras, settings)
    sets = []
    for arrival, camera, seq, t_capture in events:
        while (due := assembler.next_deadline_ns()) is not None and due <= arrival:
            sets += assembler.poll(due)
        assembler.push(camera, seq, t_capture, arrival)
        sets += assembler.poll(arrival)
    sets += assembler.flush(events[-1][0])
    waits = np.array([fs.t_emit_ns - max(f.t_arrival_ns for f in fs.frames) for fs in sets], np.float64) / _MS
    received = sum(cc.received for cc in assembler.counters.values())
    out = {"sets": len(sets), "wait_p50_ms": float(np.percentile(waits, 50)),
           "wait_p99_ms": float(np.percentile(waits, 99)), "wait_max_ms": float(waits.max()),
           "late_per_1k": 1e3 * sum(cc.late for cc in assembler.counters.values()) / received,
           "unmatched_per_1k": 1e3 * sum(cc.unmatched for cc in assembler.counters.values()) / received,
           "used_per_1k": 1e3 * sum(cc.used for cc in assembler.counters.values()) / received,
           "cameras_per_set": float(np.mean([len(fs.frames) for fs in sets]))}
    for reason in REASONS:
        chosen = [w for fs, w in zip(sets, waits) if fs.reason == reason]
        out[f"{reason}_share"] = len(chosen) / len(sets)
        out[f"{reason}_p99_ms"] = float(np.percentile(chosen, 99)) if chosen else 0.0
    return out


def _wait_rows(seconds: float, seeds: int, take: Path | None) -> dict[str, dict[str, dict[str, float]]]:
    """{config label: {"model"|"fixed": decision_waits}}; simulated configs pool `seeds` random rigs."""
    rows: dict[str, dict[str, dict[str, float]]] = {}
    sources: list[tuple[str, list[list[Arrival]], float]] = [
        (f"{n}x{fps:.0f}", [simulated_arrivals(n, fps, seconds, seed) for seed in range(seeds)], fps)
        for n, fps in WAIT_CONFIGS]
    if take is not None:
        events, fps = take_arrivals(take)
        sources.append(("take", [events], fps))
    for label, runs, fps in sources:
        rows[label] = {}
        for rule, predict in (("model", True), ("fixed", False)):
            settings = AssemblySettings.for_fps(round(fps), predict_timing=predict)
            parts = [decision_waits(events, settings) for events in runs]
            rows[label][rule] = _pool(parts)
    return rows


def _pool(parts: list[dict[str, float]]) -> dict[str, float]:
    """Set-weighted means of per-run figures (percentiles: the mean over runs, a close stand-in)."""
    weights = np.array([p["sets"] for p in parts], np.float64)
    pooled = {key: float(np.average([p[key] for p in parts], weights=weights)) for key in parts[0]}
    pooled["sets"] = int(weights.sum())
    pooled["wait_max_ms"] = max(p["wait_max_ms"] for p in parts)
    return pooled


def _print_waits(rows: dict[str, dict[str, dict[str, float]]]) -> None:
    header = (f"{'decision wait (ms)':<20}{'rule':>7}{'sets':>7}{'p50':>7}{'p99':>7}{'max':>7}"
              + "".join(f"{r[:8]:>10}" for r in REASONS) + f"{'late/1k':>9}{'used/1k':>9}{'cams/set':>9}")
    print(header)
    print("-" * len(header))
    for label, by_rule in rows.items():
        for rule, r in by_rule.items():
            print(f"{label:<20}{rule:>7}{r['sets']:>7}{r['wait_p50_ms']:>7.1f}{r['wait_p99_ms']:>7.1f}"
                  f"{r['wait_max_ms']:>7.1f}" + "".join(f"{r[f'{x}_share']:>10.1%}" for x in REASONS)
                  + f"{r['late_per_1k']:>9.1f}{r['used_per_1k']:>9.1f}{r['cameras_per_set']:>9.2f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--sets", type=int, default=200, help="frame sets per repeat (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; the best is reported (default 5)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default) or this process's CPU time (use on a loaded machine)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="decision wait: simulated seconds per rig (default 60)")
    parser.add_argument("--rigs", type=int, default=5, help="decision wait: random rigs per configuration (default 5)")
    parser.add_argument("--take", type=Path, help="decision wait: also replay this recorded take's kp2d arrivals")
    args = parser.parse_args(argv)
    if args.sets < 10 or args.repeats < 1:
        parser.error("--sets must be >= 10 and --repeats >= 1")
    if args.seconds < 1 or args.rigs < 1:
        parser.error("--seconds must be >= 1 and --rigs >= 1")
    if args.take is not None and not args.take.is_file():
        parser.error(f"--take {args.take}: no such file")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    results = {n: measure(n, args.sets, args.repeats, clock=clock) for n in VIEW_COUNTS}
    waits = _wait_rows(args.seconds, args.rigs, args.take)
    live = recorded_sync_hop(args.take) if args.take is not None else {}
    flat = {f"{key}_{n}cam": round(value, 4) for n, row in results.items() for key, value in row.items()}
    flat.update({f"take_{key}": round(value, 4) for key, value in live.items()})
    flat["budget_ms"] = BUDGET_MS
    flat["clock"] = args.clock
    for label, by_rule in waits.items():
        for rule, row in by_rule.items():
            suffix = "" if rule == "model" else "_fixed"
            for key in ("wait_p50_ms", "wait_p99_ms", "late_per_1k", "used_per_1k") + tuple(f"{r}_share" for r in REASONS):
                flat[f"{key}_{label}{suffix}"] = round(row[key], 4)
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
    print()
    _print_waits(waits)
    if live:
        print(f"take, live sync node (recorder clock): hop p50 {live['live_sync_hop_p50_ms']:.1f} ms, "
              f"p99 {live['live_sync_hop_p99_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
