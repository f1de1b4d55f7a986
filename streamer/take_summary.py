"""Summary of a live take with ground truth: accuracy, latency, rates and the drop ledger.

`load_take(path)` reads what the demo's recorder wrote (`streamer.recording`); `summarize(data,
window_ns)` turns it into one JSON-able dict (the `streamer demo` / `streamer bench e2e` output).

Definitions (all times are the nodes' stage clocks; `window_ns` selects by capture/stage time):
- MPJPE: per non-stale pose in the window, the mean distance over the MHR-70 body points
  (`mhr70.BODY`, flags not MISSING) between the fitted keypoints and the truth person it tracks,
  truth at the pose's time `t_ns` (the median capture time of its frame set), interpolated linearly
  between the two truth frames around it (free-running cameras expose up to a period after the frame
  time, so the pose's `frame_index` frame alone would count the motion in between as error; without
  both frames, the `frame_index` frame). "The person it tracks": per pose `person_id`, the truth
  person nearest to most of its poses (a track that switched to the distractor is scored against
  the person it tracked most of the time, so the switch counts as error).
- jitter_mm: mean |second difference| of (fitted - truth) body points over consecutive frames of one
  track, mm: acceleration that the true motion does not explain.
- e2e latency, per non-stale pose (a `stale` pose re-sends the last one because no input came, e.g. while
  the graph stops: it is no capture's pose): `pose.t_send_ns` minus the newest `t_send_ns` of the kp2d
  messages its points3d was built from (`Points3D.cameras` / `sources_seq` = each camera's kp2d `seq`),
  i.e. capture publish -> pose publish. Hops: sync = points3d publish - newest source kp2d publish;
  fitter = pose publish - points3d publish.
- Drop ledger, per camera, from the nodes' final stats (`stats/<node>` records, last of each node):
  published = the capture node's `frames/<cam>` (its kp2d seq counter: seq 0..published-1);
  expected = published - `first_seq/<cam>` of the sync (messages from the first one the sync got on);
  seen = the sync's assembler `received/<cam>` + its rejects (`no_calib/`, `calib_mismatch/`,
  `keypoint_count_mismatch/<cam>`); gaps = the sync's `dropped/<cam>` (seq gaps: lost in transit, counted);
  outcomes = used + late + duplicate + evicted + unmatched (what became of every received frame).
  **Unaccounted drops** = sum over cameras of |expected - seen - gaps| + |received - outcomes|:
  kp2d messages the capture published that the sync neither received nor counted as lost, plus
  received frames with no counted outcome. Frames the capture never published (the stage's own
  dropped frames `stage_drops/`, frames a capture's latest-frame grabber replaced before publishing
  `dropped/<cam>`) are reported beside it; they are accounted losses. `None` when a capture or the sync restarted (a
  second process instance resets the counters) or a needed stats record is missing.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocol.messages import Keypoints2D, NodeStats, Points3D, Pose, PoseFlag, Truth, Verdict
from streamer.body import mhr70
from streamer.recording import read_take

__all__ = ["TakeData", "drop_ledger", "load_take", "percentiles_ms", "summarize", "truth_at"]

log = logging.getLogger(__name__)

_SYNC_REJECTS = ("no_calib", "calib_mismatch", "keypoint_count_mismatch")
_OUTCOMES = ("used", "late", "duplicate", "evicted", "unmatched")
_TRANSPORT_COUNTERS = ("received", "drops_in", "drops_out", "superseded", "rejects")


@dataclass
class TakeData:
    """What the summary needs from a take. Stats: every `stats/<node>` record in log order."""

    path: str = ""
    truth: dict[int, np.ndarray] = field(default_factory=dict)  # frame_index -> (N, 70, 3) metres, world
    truth_t_ns: dict[int, int] = field(default_factory=dict)  # frame_index -> the truth frame's time, stage clock
    kp2d: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # (camera, seq) -> (t_capture, t_send)
    points3d: dict[tuple[int, int], Points3D] = field(default_factory=dict)  # (t_ns, person_id) -> message
    poses: list[Pose] = field(default_factory=list)
    stats: list[NodeStats] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)  # damaged records skipped by reason


def load_take(path: str | Path) -> TakeData:
    """Read a recorded take (and its rotation segments). Raises `streamer.recording.TakeError`."""
    data = TakeData(path=str(path))
    for _, topic, msg in read_take(path, rejected=data.rejected):
        if isinstance(msg, Keypoints2D):
            data.kp2d[(msg.camera, msg.seq)] = (msg.t_capture_ns, msg.t_send_ns)
        elif isinstance(msg, Truth):
            data.truth[msg.frame_index] = np.stack([p.keypoints for p in msg.persons]) if msg.persons else None
            data.truth_t_ns[msg.frame_index] = msg.t_ns
        elif isinstance(msg, Points3D):
            data.points3d[(msg.t_ns, msg.person_id)] = msg
        elif isinstance(msg, Pose):
            data.poses.append(msg)
        elif isinstance(msg, NodeStats):
            data.stats.append(msg)
    return data


def percentiles_ms(samples_ns, prefix: str = "") -> dict[str, float | None]:
    """{prefix}p50_ms, p95_ms, p99_ms, max_ms of samples in ns (None without samples)."""
    keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
    values = np.asarray(samples_ns, np.float64) / 1e6
    if values.size == 0:
        return {prefix + k: None for k in keys}
    figures = [*np.percentile(values, [50, 95, 99]), values.max()]
    return {prefix + k: round(float(v), 3) for k, v in zip(keys, figures)}


def _final_stats(stats: list[NodeStats]) -> tuple[dict[str, dict], dict[str, int]]:
    """({node: {counters, gauges, latency_ms, fps}} of each node's last record, {node: process instances})."""
    final: dict[str, dict] = {}
    pids: dict[str, set] = defaultdict(set)
    for s in stats:
        gauges = dict(zip(s.gauge_names, s.gauge_values.tolist()))
        if "pid" in gauges:
            pids[s.node].add(int(gauges["pid"]))
        final[s.node] = {"counters": dict(zip(s.counter_names, s.counter_values.tolist())), "gauges": gauges,
                         "latency_ms": [round(float(v), 3) if np.isfinite(v) else None for v in s.latency_ms],
                         "fps": float(s.fps)}
    return final, {node: max(1, len(p)) for node, p in pids.items()}


def drop_ledger(final: dict[str, dict], instances: dict[str, int], capture_of: dict[str, str],
                sync_node: str) -> dict:
    """Per-camera kp2d ledger and `unaccounted` (see the module docstring).

    final/instances: from the stats (`_final_stats`); capture_of: camera -> capture node name."""
    sync = final.get(sync_node)
    cameras: dict[str, dict] = {}
    unaccounted: int | None = 0
    for camera, node in sorted(capture_of.items()):
        cap = final.get(node)
        row: dict = {"capture_node": node}
        if cap is not None:
            c = cap["counters"]
            row |= {"published": c.get(f"frames/{camera}", 0), "stage_drops": c.get(f"stage_drops/{camera}", 0),
                    "grabber_drops": c.get(f"dropped/{camera}", 0),
                    "publisher_drops": c.get("drops_out", 0)}
        if sync is not None:
            c = sync["counters"]
            row |= {"first_seq": c.get(f"first_seq/{camera}"), "received": c.get(f"received/{camera}", 0),
                    "rejected": sum(c.get(f"{r}/{camera}", 0) for r in _SYNC_REJECTS),
                    "gaps": c.get(f"dropped/{camera}", 0), "seq_resets": c.get(f"seq_resets/{camera}", 0)}
            row |= {k: c.get(f"{k}/{camera}", 0) for k in _OUTCOMES}
        complete = (cap is not None and sync is not None and instances.get(node, 1) == 1
                    and instances.get(sync_node, 1) == 1 and row.get("seq_resets", 0) == 0)
        if complete and row["first_seq"] is None:  # the sync never got a frame of this camera
            row["unaccounted"] = row["published"]
        elif complete:
            expected = row["published"] - row["first_seq"]
            outcomes = sum(row[k] for k in _OUTCOMES)
            row["unaccounted"] = abs(expected - row["received"] - row["rejected"] - row["gaps"]) + abs(
                row["received"] - outcomes)
        else:
            row["unaccounted"] = None
        if unaccounted is not None:
            unaccounted = None if row["unaccounted"] is None else unaccounted + row["unaccounted"]
        cameras[camera] = row
    return {"cameras": cameras, "unaccounted": unaccounted}


def truth_at(pose: Pose, truth: dict[int, np.ndarray], truth_t_ns: dict[int, int]) -> np.ndarray | None:
    """(N, 70, 3) truth persons at the pose's time: linear between the truth frames k and k+1 around
    `pose.t_ns` (k from the pose's `frame_index` and its neighbours), else the `frame_index` frame."""
    for k in (pose.frame_index - 1, pose.frame_index):
        t0, t1 = truth_t_ns.get(k), truth_t_ns.get(k + 1)
        a, b = truth.get(k), truth.get(k + 1)
        if (t0 is None or t1 is None or a is None or b is None or a.shape != b.shape
                or not t0 <= pose.t_ns <= t1 or t1 <= t0):
            continue
        w = (pose.t_ns - t0) / (t1 - t0)
        return (1.0 - w) * a.astype(np.float64) + w * b.astype(np.float64)
    return truth.get(pose.frame_index)


def _assign_truth(poses: list[Pose], truth_of: dict[int, np.ndarray], body: np.ndarray) -> dict[int, int]:
    """person_id -> index of the truth person nearest to most of its poses (truth_of: id(pose) -> truth)."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for pose in poses:
        persons = truth_of.get(id(pose))
        if persons is None:
            continue
        distance = np.linalg.norm(persons[:, body] - pose.keypoints[body], axis=-1).mean(axis=1)
        votes[pose.person_id][int(np.argmin(distance))] += 1
    return {pid: c.most_common(1)[0][0] for pid, c in votes.items()}


def _accuracy(poses: list[Pose], truth: dict[int, np.ndarray], truth_t_ns: dict[int, int]) -> dict:
    body = mhr70.BODY
    truth_of = {id(pose): truth_at(pose, truth, truth_t_ns) for pose in poses}
    assigned = _assign_truth(poses, truth_of, body)
    errors, good_errors = [], []
    residual: dict[int, dict[int, np.ndarray]] = defaultdict(dict)  # person_id -> frame -> (B, 3) fit - truth
    for pose in poses:
        persons = truth_of[id(pose)]
        if persons is None or pose.person_id not in assigned:
            continue
        ok = pose.flags[body] != PoseFlag.MISSING
        if not ok.any():
            continue
        diff = pose.keypoints[body].astype(np.float64) - persons[assigned[pose.person_id], body]
        error = float(np.linalg.norm(diff[ok], axis=-1).mean())
        errors.append(error)
        if pose.verdict == Verdict.GOOD:
            good_errors.append(error)
        residual[pose.person_id][pose.frame_index] = diff
    second = []
    for frames in residual.values():
        for k, d in frames.items():
            if k + 1 in frames and k + 2 in frames:
                second.append(np.linalg.norm(frames[k + 2] - 2 * frames[k + 1] + d, axis=-1).mean())
    e = np.asarray(errors)
    return {
        "mpjpe_mm": round(float(e.mean() * 1e3), 2) if e.size else None,
        "mpjpe_p95_mm": round(float(np.percentile(e, 95) * 1e3), 2) if e.size else None,
        "mpjpe_good_mm": round(float(np.mean(good_errors) * 1e3), 2) if good_errors else None,
        "mpjpe_poses": int(e.size),
        "jitter_mm": round(float(np.mean(second) * 1e3), 3) if second else None,
        "tracked_truth_person": {str(k): v for k, v in sorted(assigned.items())},
    }


def _latencies(data: TakeData, poses: list[Pose]) -> dict:
    e2e, sync_hop, fit_hop = [], [], []
    incomplete = 0
    for pose in poses:
        if pose.verdict == Verdict.STALE:
            continue
        points = data.points3d.get((pose.t_ns, pose.person_id))
        if points is None:
            incomplete += 1
            continue
        sends = [data.kp2d.get((cam, int(seq)), (0, None))[1]
                 for cam, seq in zip(points.cameras, points.sources_seq.tolist()) if seq >= 0]
        if not sends or any(s is None for s in sends):
            incomplete += 1
            continue
        newest = max(sends)
        e2e.append(pose.t_send_ns - newest)
        sync_hop.append(points.t_send_ns - newest)
        fit_hop.append(pose.t_send_ns - points.t_send_ns)
    return {"e2e": percentiles_ms(e2e, "e2e_") | {"e2e_samples": len(e2e), "e2e_unmatched": incomplete},
            "hops": {"sync": percentiles_ms(sync_hop), "fitter": percentiles_ms(fit_hop)}}


def _queues(stats: list[NodeStats], window_ns: tuple[int, int] | None) -> dict[str, dict]:
    """Per node: max queue depth and the mean depth of the last third minus the first third (growth)."""
    series: dict[str, list] = defaultdict(list)
    for s in stats:
        if window_ns is None or window_ns[0] <= s.t_ns <= window_ns[1]:
            series[s.node].append(s.queue_depth)
    out = {}
    for node, depths in sorted(series.items()):
        d = np.asarray(depths, np.float64)
        third = max(1, len(d) // 3)
        out[node] = {"max": int(d.max()), "growth": round(float(d[-third:].mean() - d[:third].mean()), 2)}
    return out


def summarize(data: TakeData, window_ns: tuple[int, int] | None = None, *, capture_of: dict[str, str] | None = None,
              sync_node: str = "sync") -> dict:
    """The summary dict (stable keys: mpjpe_mm, jitter_mm, e2e_p50_ms, e2e_p99_ms, unaccounted_drops, fps,
    node_latency_ms, hop_latency_ms, drops, verdicts, queues, window_s, take).

    window_ns: (start, end) stage time; poses and points by `t_ns`, kp2d by capture time, truth by frame
    time. capture_of: camera -> capture node (default: the node whose stats count `frames/<cam>`)."""
    if window_ns is None:  # the whole take: from the first to the last capture or pose time
        times = [t for t, _ in data.kp2d.values()] + [p.t_ns for p in data.poses]
        window_ns = (min(times), max(times) + 1) if times else (0, 1)

    def inside(t: int) -> bool:
        return window_ns[0] <= t < window_ns[1]

    poses = [p for p in data.poses if inside(p.t_ns) and p.verdict != Verdict.STALE]
    final, instances = _final_stats(data.stats)
    if capture_of is None:
        capture_of = {name.split("/", 1)[1]: node for node, f in final.items() for name in f["counters"]
                      if name.startswith("frames/")}
    ledger = drop_ledger(final, instances, capture_of, sync_node)
    latencies = _latencies(data, poses)
    span_s = (window_ns[1] - window_ns[0]) / 1e9
    counts = Counter(f"kp2d/{cam}" for (cam, _), (t_capture, _) in data.kp2d.items() if inside(t_capture))
    counts["points3d"] = sum(1 for p in data.points3d.values() if inside(p.t_ns))
    counts["pose"] = len(poses)
    fps = {topic: round(n / span_s, 2) if span_s > 0 else None for topic, n in sorted(counts.items())}
    verdicts = Counter(p.verdict for p in data.poses if inside(p.t_ns))
    summary = {
        "take": data.path,
        "window_s": round(span_s, 3),
        **_accuracy(poses, data.truth, data.truth_t_ns),
        **latencies["e2e"],
        "unaccounted_drops": ledger["unaccounted"],
        "fps": fps,
        "hop_latency_ms": latencies["hops"],
        "node_latency_ms": {node: dict(zip(("p50", "p95", "p99"), f["latency_ms"]))
                            for node, f in sorted(final.items())},
        "drops": ledger["cameras"],
        "transport": {node: {k: f["counters"].get(k, 0) for k in _TRANSPORT_COUNTERS}
                      for node, f in sorted(final.items())},
        "restarts": {node: n - 1 for node, n in sorted(instances.items()) if n > 1},
        "verdicts": dict(sorted(verdicts.items())),
        "queues": _queues(data.stats, window_ns),
        "damaged_records": sum(data.rejected.values()),
    }
    return summary
