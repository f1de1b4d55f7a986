"""Pattern: one-way heartbeats with liveness (zguide "Paranoid Pirate", PUB/SUB flavour).

A publisher sends `hb/<node>` only when it has sent nothing for a heartbeat interval; any
message counts as a heartbeat. A subscriber declares a peer dead after `LIVENESS_INTERVALS`
intervals of silence and alive again on the next message. Times are `time.monotonic_ns()`,
never the wall clock.
"""
from __future__ import annotations

import time

__all__ = ["HEARTBEAT_INTERVAL_S", "LIVENESS_INTERVALS", "Liveness"]

HEARTBEAT_INTERVAL_S = 0.25
LIVENESS_INTERVALS = 4  # silence of 4 intervals (1 s by default) = dead


class Liveness:
    """Liveness of named peers from the times their messages arrived.

    A peer starts "unknown" (never heard); `beat` makes it alive; `check` reports
    transitions `(peer, alive)` since the last check. A peer never heard within the timeout of
    `start_ns` is reported dead once too (an input that never came up).
    """

    def __init__(self, peers, *, interval_s: float = HEARTBEAT_INTERVAL_S, intervals: int = LIVENESS_INTERVALS,
                 start_ns: int | None = None):
        if interval_s <= 0 or intervals < 1:
            raise ValueError(f"liveness needs interval_s > 0 and intervals >= 1, got {interval_s}, {intervals}")
        self.timeout_ns = int(interval_s * intervals * 1e9)
        self.last_seen_ns: dict[str, int | None] = {p: None for p in peers}
        self.alive: dict[str, bool] = {p: False for p in peers}
        self.deaths: dict[str, int] = {p: 0 for p in peers}
        self.start_ns = time.monotonic_ns() if start_ns is None else start_ns
        self._never_heard_reported: set[str] = set()

    def beat(self, peer: str, now_ns: int) -> bool:
        """Record a message from `peer` at monotonic `now_ns`; True when this revives it."""
        self.last_seen_ns[peer] = now_ns
        if not self.alive[peer]:
            self.alive[peer] = True
            return True
        return False

    def check(self, now_ns: int) -> list[tuple[str, bool]]:
        """Peers that went silent past the timeout since the last check: `[(peer, False), ...]`."""
        died = []
        for peer, seen in self.last_seen_ns.items():
            if seen is None and peer not in self._never_heard_reported and now_ns - self.start_ns > self.timeout_ns:
                self._never_heard_reported.add(peer)
                died.append((peer, False))
            elif self.alive[peer] and seen is not None and now_ns - seen > self.timeout_ns:
                self.alive[peer] = False
                self.deaths[peer] += 1
                died.append((peer, False))
        return died

    def n_alive(self) -> int:
        return sum(self.alive.values())
