"""Playback of a take with its original timing: the schedule and the message time shift (pure).

rosbag2-style player clock: anchor `(log_time, monotonic)` pairs; a message with log time `t` is
due at `anchor_mono + (t - anchor_log) / rate`. Seeking or pausing re-anchors. Looping replays the
take again with every capture time shifted by whole loop lengths, so downstream clocks never run
backwards; `shift_times` does that shift on a message (fields `t_capture_ns` / `t_ns`).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from streamer.recording import read_take

__all__ = ["PlaybackClock", "last_state_before", "shift_times"]

TIME_FIELDS = ("t_capture_ns", "t_ns")


@dataclass
class PlaybackClock:
    """Maps take log time to monotonic time. rate: playback speed (2.0 = twice as fast)."""

    rate: float
    anchor_log_ns: int = 0
    anchor_mono_ns: int = 0

    def __post_init__(self):
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")

    def anchor(self, log_ns: int, mono_ns: int) -> None:
        """Make log time `log_ns` play at monotonic time `mono_ns` (start, seek, resume)."""
        self.anchor_log_ns, self.anchor_mono_ns = int(log_ns), int(mono_ns)

    def due_mono_ns(self, log_ns: int) -> int:
        """Monotonic time (ns) at which a message logged at `log_ns` is due."""
        return self.anchor_mono_ns + round((log_ns - self.anchor_log_ns) / self.rate)


def shift_times(msg, delta_ns: int):
    """A copy of `msg` with its capture/message time fields moved by `delta_ns` (the message if 0)."""
    if delta_ns == 0:
        return msg
    out = copy.copy(msg)
    for name in TIME_FIELDS:
        if hasattr(out, name):
            setattr(out, name, getattr(out, name) + delta_ns)
    return out


def last_state_before(path: str | os.PathLike, topics: tuple[str, ...], before_ns: int) -> dict[str, object]:
    """Newest message per state topic (e.g. `calib`) logged before `before_ns`, to replay first after a seek."""
    state: dict[str, object] = {}
    for log_ns, topic, msg in read_take(path, topics=list(topics)):
        if log_ns >= before_ns:
            break
        state[topic] = msg
    return state
