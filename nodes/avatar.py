"""Node `avatar`: drives a game-engine avatar over the VMC protocol (OSC over UDP).

Latest-value consumer of `pose`: takes the newest pose of the chosen person once per bundle (inputs
are taken at `rate_hz`, just before each send: `Node.dispatch_interval_s`) and, at `rate_hz`,
retargets its keypoints to Unity HumanBodyBones (`streamer.humanoid`) and sends one VMC bundle
(`streamer.vmc`: Root/Pos, all Bone/Pos, OK, T) to `host:port`. Poses with the verdict
"unusable" are not sent; the last good one is held (VMC receivers expect a steady stream).
Recovers by itself: UDP send errors are counted, never fatal; no pose yet means nothing is sent.
"""
from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field

import numpy as np

from protocol import Verdict
from streamer.humanoid import tpose_keypoints
from streamer.node import Node, run_node
from streamer.vmc import vmc_bundle, vmc_frame_from_keypoints

__all__ = ["Avatar", "Settings", "main"]


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"help": "VMC receiver (Marionette) host"})
    port: int = field(default=39539, metadata={"help": "VMC receiver UDP port (39539 is common)"})
    rate_hz: float = field(default=60.0, metadata={"help": "bundles sent per second"})
    person_id: int = field(default=-1, metadata={"help": "person to follow; -1: the first seen"})


class Avatar(Node):
    Settings = Settings
    INPUT_TOPICS = ("pose",)

    def setup(self) -> None:
        if self.settings.rate_hz <= 0:
            raise ValueError(f"avatar settings.rate_hz must be > 0, got {self.settings.rate_hz}")
        self.tick_interval_s = 1.0 / self.settings.rate_hz
        self.dispatch_interval_s = self.tick_interval_s  # the newest pose before each bundle; no wake-up per pose
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._target = (self.settings.host, self.settings.port)
        self._keypoints: np.ndarray | None = None
        self._fresh = False
        self._person = self.settings.person_id
        self._previous_quats: np.ndarray | None = None
        self._t0_ns: int | None = None
        vmc_frame_from_keypoints(tpose_keypoints())  # compiles (first run, ~30 s) or loads the retargeting kernel now

    def on_message(self, topic: str, msg) -> None:
        if self._person < 0:
            self._person = msg.person_id
        if msg.person_id != self._person:
            self.count("other_person")
            return
        if msg.verdict == Verdict.UNUSABLE:
            self.count("unusable_held")
            return
        self._keypoints = np.asarray(msg.keypoints, float)
        self._fresh = True

    def on_tick(self, now_ns: int) -> None:
        if self._keypoints is None:
            return
        if self._t0_ns is None:
            self._t0_ns = now_ns
        if self._fresh or self._previous_quats is None:
            self._frame = vmc_frame_from_keypoints(self._keypoints, self._previous_quats)
            self._previous_quats = self._frame.local_rotations
            self._fresh = False
        else:
            self.count("held")
        try:
            self._sock.sendto(vmc_bundle(self._frame, (now_ns - self._t0_ns) / 1e9), self._target)
        except OSError as exc:
            self.count("send_errors")
            if self.counters["send_errors"] == 1:
                self.log.warning("VMC send to %s:%d failed: %s", *self._target, exc)
            return
        self.count("bundles_sent")

    def teardown(self) -> None:
        self._sock.close()


def main(argv: list[str]) -> int:
    return run_node(Avatar, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
