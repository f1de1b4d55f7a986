"""Virtual cameras of the synthetic stage: a ring of cameras looking at the stage centre.

World frame: right-handed, Z up, metres (the stage frame, as Pose2Sim/Qualisys). Cameras are OpenCV
cameras (x right, y down, z forward); camera i sits at azimuth 360° * i / N on a circle of
`ring_radius_m` at `height_m`, looking at (0, 0, `look_at_height_m`). Names are "cam0".."cam{N-1}".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from streamer.calibration import Camera, Rig

__all__ = ["RigSettings", "look_at_rotation", "ring_rig"]


@dataclass(frozen=True)
class RigSettings:
    """A ring of identical cameras.

    distortion: OpenCV (k1, k2, p1, p2, k3); () for none. fov_deg: horizontal field of view.
    """

    cameras: int = 4
    ring_radius_m: float = 4.0
    height_m: float = 2.0
    look_at_height_m: float = 1.0
    fov_deg: float = 70.0
    width_px: int = 1280
    height_px: int = 720
    distortion: tuple[float, ...] = (-0.08, 0.02, 0.0, 0.0, 0.0)
    fps: float = 60.0
    azimuth_offset_deg: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.cameras <= 64:
            raise ValueError(f"rig: cameras must be in 1..64, got {self.cameras}")
        if not 1.0 <= self.fov_deg <= 170.0:
            raise ValueError(f"rig: fov_deg must be in [1, 170], got {self.fov_deg}")
        if self.ring_radius_m <= 0 or self.width_px <= 0 or self.height_px <= 0 or self.fps <= 0:
            raise ValueError("rig: ring_radius_m, width_px, height_px and fps must be positive")
        if len(self.distortion) not in (0, 4, 5, 8):
            raise ValueError(f"rig: distortion must have 0, 4, 5 or 8 coefficients, got {len(self.distortion)}")


def look_at_rotation(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(3, 3) world->camera rotation of an OpenCV camera at `center` looking at `target`, Z-up world."""
    forward = target - center
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-9:  # looking straight up or down: any right vector
        right = np.array([1.0, 0.0, 0.0])
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def ring_rig(settings: RigSettings) -> Rig:
    """The `Rig` of `settings` (cameras in ring order)."""
    focal = 0.5 * settings.width_px / math.tan(math.radians(settings.fov_deg) / 2)
    K = np.array([[focal, 0.0, settings.width_px / 2], [0.0, focal, settings.height_px / 2], [0.0, 0.0, 1.0]])
    target = np.array([0.0, 0.0, settings.look_at_height_m])
    cameras = []
    for i in range(settings.cameras):
        azimuth = math.radians(settings.azimuth_offset_deg) + 2 * math.pi * i / settings.cameras
        center = np.array([settings.ring_radius_m * math.cos(azimuth),
                           settings.ring_radius_m * math.sin(azimuth), settings.height_m])
        R = look_at_rotation(center, target)
        dist = np.asarray(settings.distortion, dtype=np.float64) if settings.distortion else None
        cameras.append(Camera(f"cam{i}", (settings.width_px, settings.height_px), K.copy(), dist, R, -R @ center))
    return Rig(tuple(cameras))
