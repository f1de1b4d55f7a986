"""Node `monitor`: the operators' view of the stage: a Rerun view and a terminal status table.

Subscribes to everything (run it `--latest`: the newest message per topic is enough) and takes its
inputs `rate_hz` times a second (default 30, a display's rate; `Node.dispatch_interval_s`): what
arrived in between is superseded by the newest per topic and never handed to the view. Camera fps
come from the producer `seq` over capture time, so they are exact at any rate. Every message taken
feeds `streamer.monitoring.StageStatus` (per-camera fps, drops, clock offset, share of detections
used, reprojection error; per-stage latency; alerts for a dead camera and a bumped camera) and, when
a Rerun sink is configured, `RerunView` (3D skeleton with MHR-70 links, each camera's 2D keypoints,
time series, ground truth against the fit). Every `table_interval_s` the status table is printed
(stdout; redrawn in place on a terminal) and each newly raised alert is logged once as a warning.
Recovers by itself: a failing viewer is counted (`rerun_errors`) and never stops the node.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from streamer.monitoring import MonitorSettings, StageStatus, render_table
from streamer.node import Node, run_node

__all__ = ["Monitor", "Settings", "main"]


@dataclass(frozen=True)
class Settings:
    rrd_out: str | None = field(default=None, metadata={"help": "write the Rerun view to this .rrd file"})
    rerun_url: str | None = field(default=None, metadata={"help": "stream to a Rerun viewer (rerun+http://...)"})
    spawn_viewer: bool = field(default=False, metadata={"help": "start a local Rerun viewer"})
    table: bool = field(default=True, metadata={"help": "print the status table"})
    rate_hz: float = field(default=30.0, metadata={
        "help": "inputs taken (newest per topic) per second; 0: every arrival"})
    table_interval_s: float = field(default=1.0, metadata={"help": "status table / time series period, s"})
    dead_after_s: float = field(default=1.0, metadata={"help": "a camera silent this long is dead"})
    bump_ratio: float = field(default=3.0, metadata={"help": "reprojection rise that flags a bumped camera"})
    bump_min_px: float = field(default=3.0, metadata={"help": "... and at least this many pixels"})


class Monitor(Node):
    Settings = Settings
    INPUT_TOPICS = ("",)

    def setup(self) -> None:
        s = self.settings
        self.status = StageStatus(MonitorSettings(dead_after_s=s.dead_after_s, bump_ratio=s.bump_ratio,
                                                  bump_min_px=s.bump_min_px))
        self.tick_interval_s = s.table_interval_s
        if s.rate_hz < 0:
            raise ValueError(f"monitor settings.rate_hz must be >= 0, got {s.rate_hz}")
        self.dispatch_interval_s = 1.0 / s.rate_hz if s.rate_hz > 0 else 0.0
        self.view = None
        if s.rrd_out or s.rerun_url or s.spawn_viewer:
            import rerun as rr

            from streamer.monitoring.rerun_view import RerunView

            rec = rr.RecordingStream("streamer_monitor")
            if s.rrd_out:
                rec.save(s.rrd_out)
            elif s.rerun_url:
                rec.connect_grpc(s.rerun_url)
            else:
                rec.spawn()
            self.view = RerunView(rec)
        self._active: set[tuple[str, str]] = set()
        self._tty = sys.stdout.isatty()

    def on_message(self, topic: str, msg) -> None:
        now = self.clock.now_ns()
        error_mm = self.status.update(topic, msg, now)
        if self.view is not None:
            try:
                self.view.log_message(topic, msg)
                if error_mm is not None:
                    self.view.log_truth_error(msg.t_ns, error_mm)
            except Exception as exc:  # the viewer never stops the monitor
                self.count("rerun_errors")
                if self.counters["rerun_errors"] == 1:
                    self.log.warning("rerun logging failed: %s", exc)

    def on_tick(self, now_ns: int) -> None:
        report = self.status.report(now_ns)
        active = {(a.kind, a.subject) for a in report.alerts}
        for alert in report.alerts:
            if (alert.kind, alert.subject) not in self._active:
                self.log.warning("ALERT %s", alert.text)
                self.count(f"alerts/{alert.kind}")
        self._active = active
        self.gauge("alerts", len(active))
        self.gauge("cameras_alive", sum(c.alive for c in report.cameras))
        if self.settings.table:
            text = render_table(report)
            sys.stdout.write(("\x1b[H\x1b[2J" if self._tty else "") + text)
            sys.stdout.flush()
        if self.view is not None:
            try:
                self.view.log_report(report)
            except Exception:
                self.count("rerun_errors")

    def teardown(self) -> None:
        if self.view is not None:
            self.view.close()


def main(argv: list[str]) -> int:
    return run_node(Monitor, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
