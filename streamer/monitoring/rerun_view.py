"""Rerun view of the stage (rerun-sdk 0.41 API, pinned): skeletons, cameras, 2D keypoints, time series.

Entities (timeline `stage_time`, the message's own time on the stage clock):
- `world` (static): right-handed Z-up view coordinates and the annotation context that draws the
  MHR-70 links: class 0 "fit", 1 "truth", 2 "triangulated".
- `world/fit` Points3D of the pose keypoints (class 0, keypoint ids 0..69 -> skeleton lines);
  `world/truth/<person>` (class 1) when `truth` is present; `world/points3d` (class 2, NaN rows dropped).
- `world/cameras/<cam>`: Transform3D (world_from_camera) + Pinhole (K, image size, RDF);
  `world/cameras/<cam>/kp2d`: Points2D of each detected person's keypoints (class 0).
- `metrics/...` Scalars: `fps/<cam>`, `latency_ms/<node>/p50|p95`, `sync_spread_ms`,
  `reproj_px/mean`, `reproj_px/<cam>`, `valid_points`, `truth_error_mm`, `alerts`.

The viewer never breaks the monitor: the monitor node catches and counts logging errors.
"""
from __future__ import annotations

import math

import numpy as np
import rerun as rr

from streamer.body import mhr70
from streamer.monitoring.status import StatusReport

__all__ = ["CLASS_FIT", "CLASS_POINTS3D", "CLASS_TRUTH", "RerunView"]

CLASS_FIT, CLASS_TRUTH, CLASS_POINTS3D = 0, 1, 2
TIMELINE = "stage_time"
_COLORS = {CLASS_FIT: (80, 200, 120), CLASS_TRUTH: (230, 230, 230), CLASS_POINTS3D: (240, 160, 40)}


class RerunView:
    """Logs stage messages to a Rerun recording stream (a file via `save`, a viewer via `connect_grpc`)."""

    def __init__(self, recording: rr.RecordingStream):
        self.rec = recording
        keypoints = [rr.AnnotationInfo(id=i, label=name) for i, name in enumerate(mhr70.NAMES)]
        classes = [
            rr.ClassDescription(info=rr.AnnotationInfo(id=cid, label=label, color=_COLORS[cid]),
                                keypoint_annotations=keypoints, keypoint_connections=list(mhr70.LINKS))
            for cid, label in ((CLASS_FIT, "fit"), (CLASS_TRUTH, "truth"), (CLASS_POINTS3D, "triangulated"))
        ]
        self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        self.rec.log("world", rr.AnnotationContext(classes), static=True)

    @classmethod
    def to_file(cls, path: str, application_id: str = "streamer_monitor") -> RerunView:
        """A view that writes a `.rrd` file."""
        rec = rr.RecordingStream(application_id)
        rec.save(path)
        return cls(rec)

    def close(self) -> None:
        """Flush everything and end the recording."""
        self.rec.flush()
        self.rec.disconnect()

    def _at(self, t_ns: int) -> None:
        self.rec.set_time(TIMELINE, timestamp=t_ns / 1e9)

    def _scalar(self, path: str, value: float) -> None:
        if value is not None and math.isfinite(value):
            self.rec.log(path, rr.Scalars(float(value)))

    def log_message(self, topic: str, msg) -> None:
        """Log one stage message (kp2d, calib, points3d, pose, truth; others are ignored)."""
        kind = getattr(msg, "KIND", None)
        if kind == "pose":
            self._at(msg.t_ns)
            k = np.asarray(msg.keypoints)
            self.rec.log("world/fit", rr.Points3D(k, class_ids=CLASS_FIT, keypoint_ids=np.arange(len(k)), radii=0.015))
            self._scalar("metrics/valid_points", msg.n_valid)
        elif kind == "truth":
            self._at(msg.t_ns)
            for p in msg.persons:
                k = np.asarray(p.keypoints)
                self.rec.log(f"world/truth/{p.person_id}", rr.Points3D(k, class_ids=CLASS_TRUTH, keypoint_ids=np.arange(len(k)),
                                                        radii=0.01))
        elif kind == "points3d":
            self._at(msg.t_ns)
            pts = np.asarray(msg.points)
            ok = np.isfinite(pts).all(1)
            self.rec.log("world/points3d", rr.Points3D(pts[ok], class_ids=CLASS_POINTS3D,
                                                       keypoint_ids=np.flatnonzero(ok), radii=0.01))
            self._scalar("metrics/sync_spread_ms", msg.sync_spread_ns / 1e6)
            self._scalar("metrics/reproj_px/mean", msg.mean_reproj_px)
            reproj = np.asarray(msg.reproj_px, float)
            for v, cam in enumerate(msg.cameras):
                col = reproj[:, v][np.isfinite(reproj[:, v])] if reproj.ndim == 2 and v < reproj.shape[1] else []
                if len(col):
                    self._scalar(f"metrics/reproj_px/{cam}", float(np.median(col)))
        elif kind == "kp2d":
            self._at(msg.t_capture_ns)
            if msg.persons:
                pts = np.concatenate([np.asarray(p.keypoints) for p in msg.persons])
                ids = np.concatenate([np.arange(len(p.keypoints)) for p in msg.persons])
                ok = np.isfinite(pts).all(1)
                self.rec.log(f"world/cameras/{msg.camera}/kp2d",
                             rr.Points2D(pts[ok], class_ids=CLASS_FIT, keypoint_ids=ids[ok], radii=3.0))
            else:
                self.rec.log(f"world/cameras/{msg.camera}/kp2d", rr.Clear(recursive=False))
        elif kind == "calib":
            for cam in msg.cameras:
                R, t = np.asarray(cam.R), np.asarray(cam.t)
                path = f"world/cameras/{cam.camera}"
                self.rec.log(path, rr.Transform3D(translation=-R.T @ t, mat3x3=R.T), static=True)
                self.rec.log(path, rr.Pinhole(image_from_camera=np.asarray(cam.K), resolution=list(cam.image_size),
                                              camera_xyz=rr.ViewCoordinates.RDF), static=True)

    def log_truth_error(self, t_ns: int, error_mm: float) -> None:
        self._at(t_ns)
        self._scalar("metrics/truth_error_mm", error_mm)

    def log_report(self, report: StatusReport) -> None:
        """Time series of a status report: per-camera fps, per-stage latency, alert count."""
        self._at(report.t_ns)
        for c in report.cameras:
            self._scalar(f"metrics/fps/{c.camera}", c.fps)
        for s in report.stages:
            self._scalar(f"metrics/latency_ms/{s.node}/p50", s.latency_ms[0])
            self._scalar(f"metrics/latency_ms/{s.node}/p95", s.latency_ms[1])
        self._scalar("metrics/alerts", len(report.alerts))
