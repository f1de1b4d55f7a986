"""Node `synth`: the synthetic stage's ground truth on `truth`, paced on the stage clock.

The capture nodes of a synthetic stage (`capture` with `source = "synthetic"`) publish what the
virtual cameras see; this node publishes what really happened: frame i's ground-truth MHR-70
points and body parameters at stage time `stage.frame_time_ns(i)`. The stage is deterministic, so
with the same `synth_*` settings as the capture nodes every frame index means the same instant in
every process, and consumers (monitor, demo summary) measure accuracy live.

Recovery: stateless; a restarted node resumes at the current frame (frames it missed are counted
as `skipped`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from streamer.node import Node, run_node

__all__ = ["Settings", "SynthTruth", "main"]

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Settings:
    # Same names and meaning as the capture node's synth_* settings: give both the same values.
    synth_cameras: int = 4  # cameras on the ring
    synth_fps: float = 60.0  # frame rate of the stage, Hz
    synth_seed: int = 0
    synth_distractor: bool = True  # a second person walking around the subject
    synth_noise_px: float = 2.0
    synth_outlier_rate: float = 0.02
    max_catch_up_frames: int = 4  # behind by more frames than this: jump to now, count the rest as skipped


class SynthTruth(Node):
    Settings = Settings
    INPUT_TOPICS = ()

    def setup(self) -> None:
        from nodes.capture import build_synthetic_stage  # reads only the synth_* fields

        self.stage = build_synthetic_stage(self.settings)
        self.tick_interval_s = 0.5 / self.stage.fps
        self._next_index: int | None = None

    def _due_index(self, now_ns: int) -> int:
        elapsed_ns = now_ns - self.stage.frame_time_ns(0)
        return max(0, int(elapsed_ns * self.stage.fps // _NS_PER_S))

    def on_tick(self, now_ns: int) -> None:
        due = self._due_index(now_ns)
        if self._next_index is None or due - self._next_index > self.settings.max_catch_up_frames:
            if self._next_index is not None:
                self.count("skipped", due - self._next_index)
            self._next_index = due
        while self._next_index <= due:
            truth = self.stage.truth(self._next_index)
            self.publish(truth)
            self.observe_latency_ns(max(0, self.clock.now_ns() - truth.t_ns))
            self._next_index += 1


def main(argv: list[str]) -> int:
    return run_node(SynthTruth, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
