"""Node `pulse`: a test-card source of `kp2d/<camera>` and `calib`, for wiring and transport checks.

It publishes a deterministic one-person `Keypoints2D` at `rate_hz` (keypoints on a circle that
turns once a second, or a still from `keypoints_file`) and its camera's calibration as
last-value state on `calib`. Use it to check a stage's wiring, transport and
clock without cameras; it recovers from nothing because it needs nothing.
"""
from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass

import numpy as np

from protocol import CameraCalibration, Keypoints2D, Person2D, RigCalibration
from streamer.node import Node, run_node

__all__ = ["Pulse", "Settings", "load_still", "main", "pattern_calibration", "pattern_person"]


@dataclass(frozen=True)
class Settings:
    camera: str = "pulse0"  # camera id: topic kp2d/<camera>
    rate_hz: float = 60.0  # messages per second
    n_keypoints: int = 70  # K, MHR-70 by default
    width_px: int = 1280
    height_px: int = 720
    keypoints_file: str = ""  # optional .npy, (K, 2) float32 pixels (NaN = missing): shown still instead of the circle


def pattern_calibration(camera: str, width_px: int, height_px: int) -> RigCalibration:
    """A one-camera rig: pinhole camera 3 m in front of the origin looking at it (world->camera R, t)."""
    cam = CameraCalibration(
        camera=camera,
        image_size=np.array([width_px, height_px], np.int32),
        K=np.array([[1000.0, 0, width_px / 2], [0, 1000.0, height_px / 2], [0, 0, 1]]),
        dist=np.zeros(5),
        R=np.eye(3),
        t=np.array([0.0, 0.0, 3.0]),
    )
    version = hashlib.sha256(f"{camera}:{width_px}x{height_px}".encode()).hexdigest()[:16]
    return RigCalibration(version=version, cameras=[cam])


def pattern_person(frame_index: int, rate_hz: float, n_keypoints: int, width_px: int, height_px: int) -> Person2D:
    """K keypoints on a circle of radius height/4 around the image centre, turning at 1 rev/s."""
    phase = 2 * math.pi * frame_index / rate_hz
    angles = phase + np.linspace(0, 2 * math.pi, n_keypoints, endpoint=False)
    r = height_px / 4
    kp = np.stack([width_px / 2 + r * np.cos(angles), height_px / 2 + r * np.sin(angles)], axis=1).astype(np.float32)
    box = np.array([kp[:, 0].min(), kp[:, 1].min(), kp[:, 0].max(), kp[:, 1].max()], np.float32)
    return Person2D(box=box, score=1.0, keypoints=kp, confidence=np.ones(n_keypoints, np.float32))


def load_still(path: str) -> Person2D:
    """A person from a (K, 2) float .npy of pixel keypoints (no pickles); ValueError names the file."""
    try:
        kp = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({exc})") from None
    if kp.ndim != 2 or kp.shape[1] != 2 or kp.dtype.kind != "f" or not 0 < len(kp) <= 256:
        raise ValueError(f"{path}: expected (K, 2) float keypoints with K in 1..256, got {kp.shape} {kp.dtype}")
    kp = kp.astype(np.float32)
    seen = np.isfinite(kp).all(axis=1)
    if not seen.any():
        raise ValueError(f"{path}: no finite keypoint")
    box = np.array([*np.nanmin(kp[seen], axis=0), *np.nanmax(kp[seen], axis=0)], np.float32)
    return Person2D(box=box, score=1.0, keypoints=kp, confidence=seen.astype(np.float32))


class Pulse(Node):
    """Publishes the test card every 1/rate_hz s."""

    Settings = Settings
    INPUT_TOPICS = ()

    def setup(self) -> None:
        s = self.settings
        if s.rate_hz <= 0 or not 0 < s.n_keypoints <= 256:
            raise ValueError(f"pulse {self.name}: rate_hz must be > 0 and n_keypoints in 1..256")
        self.tick_interval_s = 1.0 / s.rate_hz
        self.still = load_still(s.keypoints_file) if s.keypoints_file else None
        self.calib = pattern_calibration(s.camera, s.width_px, s.height_px)
        self.publish_state(self.calib)
        self.frame_index = 0

    def on_tick(self, now_ns: int) -> None:
        s = self.settings
        msg = Keypoints2D(
            camera=s.camera,
            seq=self.frame_index,
            frame_index=self.frame_index,
            t_capture_ns=now_ns,
            image_size=np.array([s.width_px, s.height_px], np.int32),
            calib_version=self.calib.version,
            persons=[self.still if self.still is not None
                     else pattern_person(self.frame_index, s.rate_hz, s.n_keypoints, s.width_px, s.height_px)],
        )
        self.publish(msg)
        self.observe_latency_ns(self.clock.now_ns() - now_ns)
        self.frame_index += 1


def main(argv: list[str]) -> int:
    return run_node(Pulse, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
