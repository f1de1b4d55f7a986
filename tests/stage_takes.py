"""Test support: a small ring rig and a take of projected keypoints (kp2d + calib + truth) from the humanoid poses.

Deliberately independent of the synthetic-stage tool so recorder/replay/monitor tests do not move
when that tool does. Every random draw is seeded.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from protocol import Keypoints2D, Person2D, PersonTruth, Truth
from streamer.calibration import Camera, Rig
from streamer.recording import TakeWriter
from tests.humanoid_poses import posed_keypoints_stage

__all__ = ["bumped", "ring_rig", "stage_frames", "write_stage_take"]

T0_NS = 1_800_000_000_000_000_000
W, H = 1280, 720


def ring_rig(n_cameras: int = 4, radius_m: float = 4.0, height_m: float = 1.5) -> Rig:
    """Cameras on a circle around the origin (stage world, Z up), looking at (0, 0, 1)."""
    cams = []
    for i in range(n_cameras):
        a = 2 * np.pi * i / n_cameras
        center = np.array([radius_m * np.cos(a), radius_m * np.sin(a), height_m])
        forward = np.array([0.0, 0.0, 1.0]) - center
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        R = np.stack([right, down, forward])  # world -> camera rows (OpenCV: x right, y down, z forward)
        K = np.array([[900.0, 0, W / 2], [0, 900.0, H / 2], [0, 0, 1]])
        cams.append(Camera(f"cam{i}", (W, H), K, np.zeros(5), R, -R @ center))
    return Rig(tuple(cams))


def stage_frames(n_frames: int, seed: int = 0) -> np.ndarray:
    """(n, 70, 3) stage-frame keypoints: a body walking slowly in a circle, limbs bending."""
    rng = np.random.default_rng(seed)
    base = posed_keypoints_stage(rng, n=1)[0]
    base = base - np.nanmean(base, axis=0) + np.array([0.0, 0.0, 1.0])
    out = []
    for f in range(n_frames):
        yaw = Rotation.from_rotvec([0, 0, 0.02 * f])
        out.append(yaw.apply(base) + np.array([0.3 * np.sin(0.05 * f), 0.0, 0.0]))
    return np.stack(out)


def bumped(camera: Camera, rotvec: tuple[float, float, float]) -> Camera:
    """The camera physically turned by `rotvec` (radians, camera frame) after calibration."""
    R = Rotation.from_rotvec(rotvec).as_matrix() @ camera.R
    center = camera.center
    return Camera(camera.name, camera.image_size, camera.K, camera.dist, R, -R @ center)


def write_stage_take(path, n_frames: int = 60, fps: float = 30.0, *, seed: int = 0, noise_px: float = 0.5,
                     rig: Rig | None = None, with_truth: bool = True, bump: dict | None = None,
                     dead_from: dict | None = None) -> tuple[Rig, np.ndarray]:
    """A take of `n_frames` frame sets: calib first, then kp2d per camera (capture jitter, +2 ms
    transport) and truth. Returns (rig, keypoints (n, 70, 3)).

    bump: {camera: (from_frame, rotvec)}: that camera is turned from that frame on (calib unchanged).
    dead_from: {camera: frame}: that camera sends nothing from that frame on.
    """
    rig = rig or ring_rig()
    bump, dead_from = bump or {}, dead_from or {}
    turned = {name: bumped(rig.camera(name), rv) for name, (_, rv) in bump.items()}
    rng = np.random.default_rng(seed)
    truth = stage_frames(n_frames, seed)
    period = int(1e9 / fps)
    with TakeWriter(path, metadata={"source": "tests.stage_takes"}) as take:
        take.write(rig.to_message(), T0_NS - 10_000_000)
        for f in range(n_frames):
            t = T0_NS + f * period
            if with_truth:
                take.write(Truth(t_ns=t, frame_index=f, persons=[PersonTruth(
                    person_id=0, keypoints=truth[f].astype(np.float32), params=np.zeros(0, np.float32))]), t)
            for v, cam in enumerate(rig):
                if f >= dead_from.get(cam.name, n_frames):
                    continue
                physical = turned[cam.name] if f >= bump.get(cam.name, (n_frames,))[0] else cam
                px = physical.project(truth[f]) + rng.normal(0, noise_px, (70, 2))
                t_cap = t + int(rng.integers(-2_000_000, 2_000_000))
                person = Person2D(
                    box=np.array([*px.min(0), *px.max(0)], np.float32), score=0.95,
                    keypoints=px.astype(np.float32), confidence=np.full(70, 0.9, np.float32))
                msg = Keypoints2D(camera=cam.name, seq=f, frame_index=f, t_capture_ns=t_cap,
                                  image_size=np.array([W, H], np.int32), calib_version=rig.version, persons=[person])
                take.write(msg, t_cap + 2_000_000 + v * 100_000)
    return rig, truth
