"""One camera's frame timing: capture period and phase, capture jitter, arrival latency.

A free-running camera captures at `anchor + k * period` plus jitter. `FrameClock` tracks that
line with an alpha-beta filter on the capture times (O(1) per frame; a frame's number is its
time since the last one divided by the period, so dropped frames and any `seq` numbering work):

    steps  = round((t - anchor) / period)          frames since the last one (>= 1)
    r      = t - (anchor + steps * period)         residual, ns
    anchor = anchor + steps * period + ALPHA * r   smoothed capture time of the newest frame
    period = period + BETA * r / steps

The period is kept within [1/2, 2] x nominal. The capture jitter is a running mean absolute
residual (x 1.25: the std of a normal residual). A residual beyond `OUTLIER_SIGMAS` jitters (and
1 ms) is not learnt from (the line moves on to that frame's predicted time); `RESTART_AFTER` in a
row mean the camera's timing changed (restart, clock step): the filter starts over from that
frame. `warm` once `WARM_FRAMES` frames followed the (re)start and an arrival latency is known.

Arrival latency (caller's receive clock minus the capture time, so a constant clock offset is part
of it) is kept over the last `LATENCY_FRAMES` frames: `latency_low_ns` / `latency_high_ns` are its
extremes (about the 1st and 99th percentiles; a sudden rise is followed after one frame, a spike
forgotten after `LATENCY_FRAMES`), `latency_median_ns` its median (refreshed every `MEDIAN_EVERY`
frames).
"""
from __future__ import annotations

from collections import deque

__all__ = ["FrameClock"]

ALPHA = 0.25
BETA = ALPHA * ALPHA / (2.0 - ALPHA)  # critically damped alpha-beta filter
JITTER_EWMA = 0.05
OUTLIER_SIGMAS = 6.0
OUTLIER_FLOOR_NS = 1_000_000
RESTART_AFTER = 3
WARM_FRAMES = 8
LATENCY_FRAMES = 128
MEDIAN_EVERY = 16
_MAX_STEPS = 8  # a gap of more frames than this re-anchors without learning the period from it


class FrameClock:
    """Timing model of one camera; times in integer ns (capture: stage clock, arrival: caller's clock)."""

    __slots__ = ("_latencies", "_latencies_since_median", "_latency_median_ns", "_outliers", "anchor_ns", "frames",
                 "jitter_ns", "latency_high_ns", "latency_low_ns", "nominal_period_ns", "period_ns")

    def __init__(self, nominal_period_ns: float):
        if not nominal_period_ns > 0:
            raise ValueError(f"FrameClock: expected a positive nominal period in ns, got {nominal_period_ns!r}")
        self.nominal_period_ns = float(nominal_period_ns)
        self._latencies: deque[int] = deque(maxlen=LATENCY_FRAMES)
        self.latency_low_ns: int | None = None  # smallest arrival - capture over the recent frames
        self.latency_high_ns: int | None = None  # largest
        self._latency_median_ns: int | None = None
        self._latencies_since_median = 0
        self.restart()

    def restart(self) -> None:
        """Forget the capture timing (not the latency): the next frame starts a new line."""
        self.period_ns = self.nominal_period_ns
        self.anchor_ns: float | None = None
        self.jitter_ns = 0.0
        self.frames = 0  # frames on the current line
        self._outliers = 0

    @property
    def warm(self) -> bool:
        """Enough frames on the current line, and an arrival latency learnt."""
        return self.frames >= WARM_FRAMES and self.latency_high_ns is not None

    def observe(self, t_capture_ns: int, t_arrival_ns: int | None = None) -> None:
        """Learn from one frame (any order; a frame not newer than the line's newest only adds latency)."""
        if t_arrival_ns is not None:
            self._observe_latency(t_arrival_ns - t_capture_ns)
        if self.anchor_ns is None:
            self.anchor_ns = float(t_capture_ns)
            self.frames = 1
            return
        elapsed = t_capture_ns - self.anchor_ns
        steps = round(elapsed / self.period_ns)
        if steps < 1:
            return  # out of order or a repeat of the newest frame's time
        predicted = self.anchor_ns + steps * self.period_ns
        residual = t_capture_ns - predicted
        if self.frames >= 2 and abs(residual) > OUTLIER_SIGMAS * self.jitter_ns + OUTLIER_FLOOR_NS:
            self._outliers += 1
            if self._outliers >= RESTART_AFTER:
                self.restart()
                self.anchor_ns = float(t_capture_ns)
                self.frames = 1
            else:  # a frame was taken there, at a time not trusted: the line moves on unchanged
                self.anchor_ns = predicted
            return
        self._outliers = 0
        self.frames += 1
        self.anchor_ns = predicted + ALPHA * residual
        if steps <= _MAX_STEPS:  # kept within [1/2, 2] x nominal whatever the input
            self.period_ns = min(max(self.period_ns + BETA * residual / steps, 0.5 * self.nominal_period_ns),
                                 2.0 * self.nominal_period_ns)
        weight = max(JITTER_EWMA, 1.0 / (self.frames - 1))
        self.jitter_ns += weight * (1.25 * abs(residual) - self.jitter_ns)

    def _observe_latency(self, latency: int) -> None:
        window = self._latencies
        forgotten = window[0] if len(window) == window.maxlen else None
        window.append(latency)
        self._latencies_since_median += 1
        if self.latency_high_ns is None:
            self.latency_low_ns = self.latency_high_ns = latency
            return
        self.latency_low_ns = min(window) if forgotten == self.latency_low_ns else min(self.latency_low_ns, latency)
        self.latency_high_ns = max(window) if forgotten == self.latency_high_ns else max(self.latency_high_ns, latency)

    @property
    def latency_median_ns(self) -> int | None:
        """Median arrival - capture over the recent frames (None before the first arrival)."""
        if self._latencies and (self._latency_median_ns is None or self._latencies_since_median >= MEDIAN_EVERY):
            ordered = sorted(self._latencies)
            self._latency_median_ns = ordered[len(ordered) // 2]
            self._latencies_since_median = 0
        return self._latency_median_ns

    def line_time_ns(self, t_capture_ns: float) -> float:
        """The point of the camera's capture line (anchor + k periods) nearest to `t_capture_ns`: the frame's
        time without its capture jitter; `t_capture_ns` itself while the model is not warm."""
        if not self.warm:
            return t_capture_ns
        return self.anchor_ns + round((t_capture_ns - self.anchor_ns) / self.period_ns) * self.period_ns

    def next_capture_ns(self) -> float | None:
        """Predicted capture time of the frame after the newest one (None before the first frame)."""
        return None if self.anchor_ns is None else self.anchor_ns + self.period_ns
