"""Node `replay`: publishes a recorded take over the data plane with its original timing.

Messages keep their original capture times (sync runs on capture time); each is due at its
recorded receive time (`log_time`) scaled by `rate` (`streamer.playback.PlaybackClock`).
`start_s` seeks (the newest state, e.g. `calib`, logged before it is published first), `loop`
starts over at the end with capture times shifted by the loop length so downstream time only
moves forward. State topics (`calib`) are republished as last-value state. Recorded `stats/` and
`hb/` are skipped by default (they describe the recording session's nodes, not this one).
Counters: `replayed`, `loops`, `late` (published > 50 ms after due; the host is too slow), `rejects`
from the take (bad records skipped). With `exit_at_end` the node stops after the last message.
"""
from __future__ import annotations

import collections
import sys
import time
from dataclasses import dataclass, field

from streamer.node import Node, run_node
from streamer.playback import PlaybackClock, last_state_before, shift_times
from streamer.recording import TakeReader, read_take, take_segments

__all__ = ["Replay", "Settings", "main"]

LATE_NS = 50_000_000


@dataclass(frozen=True)
class Settings:
    path: str = field(default="take.mcap", metadata={"help": "take file to replay"})
    rate: float = field(default=1.0, metadata={"help": "playback speed factor (2.0 = twice as fast)"})
    loop: bool = field(default=False, metadata={"help": "start over at the end"})
    start_s: float = field(default=0.0, metadata={"help": "seek: start this many seconds into the take"})
    topics: tuple[str, ...] = field(default=("",), metadata={"help": "topic prefixes to replay"})
    exclude: tuple[str, ...] = field(default=("stats/", "hb/"), metadata={"help": "topic prefixes never replayed"})
    state_topics: tuple[str, ...] = field(default=("calib", "stage"), metadata={"help": "topics republished as state"})
    exit_at_end: bool = field(default=False, metadata={"help": "stop the node after the last message"})
    start_delay_s: float = field(default=1.0, metadata={"help": "wait before playing, so subscribers can join"})
    loop_gap_s: float = field(default=0.033, metadata={"help": "time between the end of a loop and the next start"})


class Replay(Node):
    Settings = Settings
    INPUT_TOPICS = ()

    def setup(self) -> None:
        s = self.settings
        segments = take_segments(s.path)
        self._first_ns = TakeReader(segments[0]).time_range_ns()[0]
        last_ns = TakeReader(segments[-1]).time_range_ns()[1]
        self._start_ns = self._first_ns + int(s.start_s * 1e9)
        self._loop_ns = max(1, last_ns - self._start_ns + int(s.loop_gap_s * 1e9))
        self._clock = PlaybackClock(s.rate)
        self._rejected = collections.Counter()
        self._loops = 0
        self.tick_interval_s = 0.001
        for topic, msg in last_state_before(s.path, s.state_topics, self._start_ns).items():
            self.publish_state(msg)
        self._begin(time.monotonic_ns() + int(s.start_delay_s * 1e9))

    def _wanted(self, topic: str) -> bool:
        s = self.settings
        return any(topic.startswith(p) for p in s.topics) and not any(topic.startswith(p) for p in s.exclude)

    def _begin(self, mono_ns: int) -> None:
        self._messages = read_take(self.settings.path, start_ns=self._start_ns, rejected=self._rejected)
        self._clock.anchor(self._start_ns, mono_ns)
        self._pending = next(self._messages, None)

    def on_tick(self, now_ns: int) -> None:
        mono = time.monotonic_ns()
        shift = self._loops * self._loop_ns
        while self._pending is not None and self._clock.due_mono_ns(self._pending[0]) <= mono:
            log_ns, topic, msg = self._pending
            if self._wanted(topic):
                if mono - self._clock.due_mono_ns(log_ns) > LATE_NS:
                    self.count("late")
                msg = shift_times(msg, shift)
                if topic in self.settings.state_topics:
                    self.publish_state(msg)
                else:
                    self.publish(msg)
                self.count("replayed")
            self._pending = next(self._messages, None)
        if self._pending is None:
            self._end(mono)
        for reason, n in self._rejected.items():
            self.counters[f"rejects/take/{reason}"] = n

    def _end(self, mono_ns: int) -> None:
        if self.settings.loop:
            self._loops += 1
            self.count("loops")
            self._begin(max(mono_ns, self._clock.due_mono_ns(self._start_ns + self._loop_ns)))
        elif not self.counters["finished"]:
            self.count("finished")
            self.log.info("take finished: %d messages replayed", self.counters["replayed"])
            if self.settings.exit_at_end:
                self.stop()


def main(argv: list[str]) -> int:
    return run_node(Replay, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
