"""Terminal status table of a `StatusReport`: cameras, stages, alerts (plain text, fixed columns)."""
from __future__ import annotations

import math
import re
import time

from streamer.monitoring.status import StatusReport

__all__ = ["render_table"]


def _num(value: float, spec: str) -> str:
    """`value` formatted with the format spec `spec` (e.g. "+10.2f"), or "-" right-aligned when NaN."""
    width = int(re.match(r"[+ -]?(\d*)", spec).group(1) or 0)
    return f"{'-':>{width}}" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}"


def render_table(report: StatusReport) -> str:
    """The whole status screen as text (ends with a newline). Alerts are marked `!`, dead cameras `DEAD`."""
    clock = time.strftime("%H:%M:%S", time.gmtime(report.t_ns / 1e9))
    alive = sum(c.alive for c in report.cameras)
    lines = [
        f"STAGE {clock}Z  cameras {alive}/{len(report.cameras)} alive  pose age p50 "
        f"{_num(report.pose_age_ms_p50, '.1f')} ms  valid points {report.pose_valid_points}  "
        f"sync spread {_num(report.sync_spread_ms, '.1f')} ms"
        + ("" if math.isnan(report.truth_error_mm) else f"  fit-truth {report.truth_error_mm:.1f} mm"),
        "",
        f"{'camera':<12} {'state':<6} {'fps':>6} {'drops':>7} {'offset_ms':>10} {'used%':>6} {'reproj_px':>10} {'base_px':>8}",
    ]
    bumped = {a.subject for a in report.alerts if a.kind == "bumped"}
    for c in report.cameras:
        state = "DEAD" if not c.alive else ("BUMP" if c.camera in bumped else "ok")
        lines.append(
            f"{c.camera:<12} {state:<6} {_num(c.fps, '6.1f')} {c.drops:>7d} {_num(c.clock_offset_ms, '+10.2f')} "
            f"{_num(c.used_share * 100 if not math.isnan(c.used_share) else math.nan, '6.0f')} "
            f"{_num(c.reproj_px, '10.2f')} {_num(c.baseline_px, '8.2f')}"
        )
    lines += ["", f"{'stage':<12} {'fps':>6} {'p50_ms':>8} {'p95_ms':>8} {'p99_ms':>8} {'drops':>7} {'rejects':>8}"]
    for s in report.stages:
        p50, p95, p99 = s.latency_ms
        lines.append(f"{s.node:<12} {_num(s.fps, '6.1f')} {_num(p50, '8.2f')} {_num(p95, '8.2f')} "
                     f"{_num(p99, '8.2f')} {s.drops:>7d} {s.rejects:>8d}")
    lines.append("")
    if report.alerts:
        lines.append(f"ALERTS ({len(report.alerts)})")
        lines += [f" ! {a.text}" for a in report.alerts]
    else:
        lines.append("no alerts")
    return "\n".join(lines) + "\n"
