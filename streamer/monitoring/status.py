"""Stage status for operators: per-camera and per-stage health and alerts, from the stage's own messages.

`StageStatus` is a socket-free state machine: feed it every message the monitor receives with the
receive time (`update(topic, msg, now_ns)`), ask for a `StatusReport` (`report(now_ns)`).

Sources, per camera: `kp2d/<cam>` (last seen, fps from the producer `seq` over capture time, so
superseded messages in a latest-value monitor do not lower it), the sync node's stats (`received/`,
`dropped/`, `late/`, `evicted/` counters, `detections_used_share/` gauge; fps from `received/` when
no kp2d is seen), the capture node's stats (clock offset of the node whose `fps/<cam>` gauge names
the camera) and `points3d` (per-camera median reprojection error over the set's observed points).
Per stage: `stats/<node>` latency percentiles and fps; the age of each pose at arrival (`now - t_ns`).

Alerts:
- dead camera: nothing from it (kp2d, or growth of its sync `received/` counter) for `dead_after_s`;
- bumped camera: its recent reprojection error (median of the last `recent_sets` sets) is above
  `bump_min_px`, above `bump_ratio` x its own baseline (median of its first `baseline_sets` sets),
  and above `bump_ratio` x the median of the other cameras' recent errors. A camera knocked out of
  calibration shows exactly this step on one camera while the others stay put; noise or a badly
  detected person raises all cameras together and does not alert.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np

from protocol import NodeStats, Points3D, Pose, PoseFlag

__all__ = ["Alert", "CameraRow", "MonitorSettings", "StageRow", "StageStatus", "StatusReport"]


@dataclass(frozen=True)
class MonitorSettings:
    dead_after_s: float = 1.0  # a camera silent this long is dead
    baseline_sets: int = 30  # frame sets that define a camera's baseline reprojection error
    recent_sets: int = 15  # frame sets in the recent window
    bump_ratio: float = 3.0  # recent error this many times baseline (and the others) -> bumped
    bump_min_px: float = 3.0  # ... and at least this many pixels
    truth_match_ns: int = 2_000_000  # a truth and a pose within this are the same instant


@dataclass(frozen=True)
class Alert:
    """An active alert: `kind` ("dead", "bumped"), `subject` (camera or node), human `text`."""

    kind: str
    subject: str
    text: str


@dataclass(frozen=True)
class CameraRow:
    camera: str
    alive: bool
    fps: float  # NaN when unknown
    drops: int  # frames lost before or inside sync: dropped + late + evicted
    clock_offset_ms: float  # of the capture host, NaN when unknown
    used_share: float  # share of its detections used in frame sets, NaN when unknown
    reproj_px: float  # recent median reprojection error, NaN when unknown
    baseline_px: float  # baseline reprojection error, NaN until known


@dataclass(frozen=True)
class StageRow:
    node: str
    fps: float
    latency_ms: tuple[float, float, float]  # p50 p95 p99
    drops: int
    rejects: int


@dataclass(frozen=True)
class StatusReport:
    t_ns: int
    cameras: list[CameraRow]
    stages: list[StageRow]
    alerts: list[Alert]
    pose_age_ms_p50: float = math.nan  # receive time - pose time (capture), stage clock
    pose_valid_points: int = 0
    sync_spread_ms: float = math.nan
    truth_error_mm: float = math.nan  # mean keypoint distance fit - nearest truth person, latest pair, mm


@dataclass
class _Camera:
    last_seen_ns: int | None = None
    seq_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))  # (seq, t_capture)
    received: int | None = None
    received_changed_ns: int | None = None
    received_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=8))
    drops: int = 0
    used_share: float = math.nan
    clock_offset_ms: float = math.nan
    baseline: list = field(default_factory=list)
    recent: collections.deque = field(default_factory=collections.deque)


class StageStatus:
    """Aggregates the stage's messages into a `StatusReport` (see module docstring)."""

    def __init__(self, settings: MonitorSettings = MonitorSettings()):
        self.settings = settings
        self.cameras: dict[str, _Camera] = {}
        self.stages: dict[str, NodeStats] = {}
        self.pose_ages_ms: collections.deque = collections.deque(maxlen=120)
        self.pose_valid_points = 0
        self.sync_spread_ms = math.nan
        self.truth: collections.OrderedDict[int, dict[int, np.ndarray]] = collections.OrderedDict()
        self.truth_error_mm = math.nan

    def _camera(self, name: str) -> _Camera:
        cam = self.cameras.get(name)
        if cam is None:
            cam = self.cameras[name] = _Camera()
            cam.recent = collections.deque(maxlen=self.settings.recent_sets)
        return cam

    # ------------------------------------------------------------ inputs

    def update(self, topic: str, msg, now_ns: int) -> float | None:
        """Take one message received at `now_ns` (stage clock). Returns the fit-vs-truth error (mm) when
        this message completed a pair, else None."""
        kind = getattr(msg, "KIND", None)
        if kind == "kp2d":
            cam = self._camera(msg.camera)
            cam.last_seen_ns = now_ns
            cam.seq_times.append((msg.seq, msg.t_capture_ns))
        elif kind == "calib":
            for c in msg.cameras:
                self._camera(c.camera)
        elif kind == "stats":
            self._on_stats(msg, now_ns)
        elif kind == "points3d":
            self._on_points(msg)
        elif kind == "pose":
            return self._on_pose(msg, now_ns)
        elif kind == "truth":
            self.truth[msg.t_ns] = {p.person_id: np.asarray(p.keypoints, float) for p in msg.persons}
            while len(self.truth) > 256:
                self.truth.popitem(last=False)
        return None

    def _on_stats(self, msg: NodeStats, now_ns: int) -> None:
        self.stages[msg.node] = msg
        counters = dict(zip(msg.counter_names, (int(v) for v in msg.counter_values)))
        gauges = dict(zip(msg.gauge_names, (float(v) for v in msg.gauge_values)))
        for name, value in counters.items():
            if name.startswith("received/"):
                cam = self._camera(name.split("/", 1)[1])
                if cam.received is None or value > cam.received:
                    cam.received_changed_ns = now_ns
                    cam.received_times.append((value, msg.t_ns))
                cam.received = value
        for cam_name, cam in self.cameras.items():
            parts = [counters.get(f"{k}/{cam_name}") for k in ("dropped", "late", "evicted")]
            if any(p is not None for p in parts):
                cam.drops = sum(p or 0 for p in parts)
            share = gauges.get(f"detections_used_share/{cam_name}")
            if share is not None:
                cam.used_share = share
            if f"fps/{cam_name}" in gauges:
                cam.clock_offset_ms = msg.clock_offset_ns / 1e6
        spread = gauges.get("sync_spread_ms_p50")
        if spread is not None:
            self.sync_spread_ms = spread

    def _on_points(self, msg: Points3D) -> None:
        self.sync_spread_ms = msg.sync_spread_ns / 1e6
        reproj = np.asarray(msg.reproj_px, float)
        if reproj.ndim != 2 or reproj.shape[0] == 0:
            return
        errors, counts = _column_medians(reproj[:, :len(msg.cameras)])
        for name, error, count in zip(msg.cameras, errors.tolist(), counts.tolist()):
            if count < 3:
                continue
            cam = self._camera(name)
            if len(cam.baseline) < self.settings.baseline_sets:
                cam.baseline.append(error)
            cam.recent.append(error)

    def _on_pose(self, msg: Pose, now_ns: int) -> float | None:
        self.pose_ages_ms.append((now_ns - msg.t_ns) / 1e6)
        self.pose_valid_points = int(msg.n_valid)
        if not self.truth:
            return None
        t_truth = min(self.truth, key=lambda t: abs(t - msg.t_ns))
        if abs(t_truth - msg.t_ns) > self.settings.truth_match_ns:
            return None
        fit = np.asarray(msg.keypoints, float)
        measured = (np.asarray(msg.flags) != PoseFlag.MISSING) & np.isfinite(fit).all(1)
        best = None
        for truth in self.truth[t_truth].values():  # the truth person nearest the fit (ids need not agree)
            keep = measured & np.isfinite(truth).all(1)
            if keep.any():
                error = float(np.linalg.norm(fit[keep] - truth[keep], axis=1).mean())
                best = error if best is None else min(best, error)
        if best is None:
            return None
        self.truth_error_mm = best * 1e3
        return self.truth_error_mm

    # ------------------------------------------------------------ report

    def report(self, now_ns: int) -> StatusReport:
        s = self.settings
        dead_ns = int(s.dead_after_s * 1e9)
        rows, alerts = [], []
        recent_by_cam = {n: float(np.median(c.recent)) for n, c in self.cameras.items() if c.recent}
        for name in sorted(self.cameras):
            cam = self.cameras[name]
            seen = [t for t in (cam.last_seen_ns, cam.received_changed_ns) if t is not None]
            last = max(seen) if seen else None
            alive = last is not None and now_ns - last <= dead_ns
            fps = _fps(cam) if alive else 0.0
            baseline = float(np.median(cam.baseline)) if len(cam.baseline) >= min(5, s.baseline_sets) else math.nan
            recent = recent_by_cam.get(name, math.nan)
            rows.append(CameraRow(name, alive, fps, cam.drops, cam.clock_offset_ms, cam.used_share, recent, baseline))
            if not alive:
                since = "never seen" if last is None else f"no frames for {(now_ns - last) / 1e9:.1f} s"
                alerts.append(Alert("dead", name, f"camera {name} is dead ({since})"))
                continue
            others = [e for n, e in recent_by_cam.items() if n != name and self._is_alive(n, now_ns, dead_ns)]
            if (len(cam.recent) >= s.recent_sets and not math.isnan(baseline) and recent > s.bump_min_px
                    and recent > s.bump_ratio * baseline
                    and (not others or recent > s.bump_ratio * float(np.median(others)))):
                alerts.append(Alert("bumped", name, (
                    f"camera {name}: reprojection error {recent:.1f} px vs baseline {baseline:.1f} px"
                    f" (others {float(np.median(others)) if others else math.nan:.1f} px): bumped since calibration?")))
        stages = []
        for node in sorted(self.stages):
            st = self.stages[node]
            counters = dict(zip(st.counter_names, (int(v) for v in st.counter_values)))
            lat = tuple(float(x) for x in st.latency_ms)
            stages.append(StageRow(node, float(st.fps), lat,
                                   counters.get("drops_in", 0) + counters.get("drops_out", 0), counters.get("rejects", 0)))
        age = float(np.median(self.pose_ages_ms)) if self.pose_ages_ms else math.nan
        return StatusReport(now_ns, rows, stages, alerts, age, self.pose_valid_points, self.sync_spread_ms,
                            self.truth_error_mm)

    def _is_alive(self, name: str, now_ns: int, dead_ns: int) -> bool:
        cam = self.cameras[name]
        seen = [t for t in (cam.last_seen_ns, cam.received_changed_ns) if t is not None]
        return bool(seen) and now_ns - max(seen) <= dead_ns


def _column_medians(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median of the finite entries, their count) of each column of (K, V) `values`, all columns at once
    (one sort instead of a `np.median` per column); NaN for a column without any."""
    finite = np.isfinite(values)
    counts = finite.sum(0)
    ordered = np.sort(np.where(finite, values, np.inf), axis=0)  # the finite entries first, ascending
    columns = np.arange(values.shape[1])
    upper = ordered[np.minimum(counts // 2, len(values) - 1), columns]
    lower = ordered[np.maximum((counts - 1) // 2, 0), columns]
    return np.where(counts > 0, (lower + upper) / 2, np.nan), counts


def _fps(cam: _Camera) -> float:
    """Frames per second from producer seq over capture time, else from the sync `received/` counter."""
    if len(cam.seq_times) >= 2:
        (s0, t0), (s1, t1) = cam.seq_times[0], cam.seq_times[-1]
        if t1 > t0 and s1 > s0:
            return (s1 - s0) * 1e9 / (t1 - t0)
    if len(cam.received_times) >= 2:
        (r0, t0), (r1, t1) = cam.received_times[0], cam.received_times[-1]
        if t1 > t0:
            return (r1 - r0) * 1e9 / (t1 - t0)
    return math.nan
