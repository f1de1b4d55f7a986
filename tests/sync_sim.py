"""Shared test helpers for sync: free-running camera streams and a small pinhole scene (not a test module)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamer.framesets import Assembler, AssemblySettings, FrameSet

__all__ = ["CameraSim", "Scene", "body_points", "frames_of", "make_scene", "simulate"]

MS = 1_000_000


@dataclass
class CameraSim:
    """One simulated camera: stage-clock offset, capture jitter and delivery latency, all in ms."""

    name: str
    offset_ms: float = 0.0
    jitter_ms: float = 0.0
    latency_ms: float = 5.0
    latency_jitter_ms: float = 1.0
    dropped: set[int] = field(default_factory=set)  # frame indices never sent
    dies_at: int | None = None  # first frame index not sent any more


def frames_of(cams: list[CameraSim], n_frames: int, period_ns: int, seed: int):
    """(arrival_ns, camera, seq, t_capture_ns) for every frame sent, in arrival order; seq = frame index."""
    rng = np.random.default_rng(seed)
    events = []
    for cam in cams:
        for k in range(n_frames):
            t_true = 1_000_000_000 + k * period_ns
            t_capture = t_true + round((cam.offset_ms + rng.normal(0.0, cam.jitter_ms)) * MS)
            arrival = t_true + round((cam.latency_ms + abs(rng.normal(0.0, cam.latency_jitter_ms))) * MS)
            if k in cam.dropped or (cam.dies_at is not None and k >= cam.dies_at):
                continue
            events.append((arrival, cam.name, k, t_capture))
    events.sort()
    return events


def simulate(cams: list[CameraSim], n_frames: int, settings: AssemblySettings, seed: int = 0,
             events=None) -> tuple[list[FrameSet], Assembler]:
    """Feed the frames in arrival order, polling at every arrival and at every deadline in between."""
    assembler = Assembler([c.name for c in cams], settings)
    if events is None:
        events = frames_of(cams, n_frames, settings.frame_period_ns, seed)
    sets: list[FrameSet] = []
    for arrival, camera, seq, t_capture in events:
        while (due := assembler.next_deadline_ns()) is not None and due <= arrival:
            sets += assembler.poll(due)
        assembler.push(camera, seq, t_capture, arrival, payload=(camera, seq))
        sets += assembler.poll(arrival)
    last = events[-1][0] if events else 0
    sets += assembler.flush(last)
    return sets, assembler


@dataclass
class Scene:
    """V pinhole cameras (no distortion) on a circle around the origin, looking at the stage centre.

    K: (V, 3, 3) pixels; R: (V, 3, 3), t: (V, 3) world->camera, metres; image_size (w, h) pixels.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    image_size: tuple[int, int] = (1280, 720)

    def project(self, points: np.ndarray) -> np.ndarray:
        """points (K, 3) world metres -> (V, K, 2) pixels; NaN behind the camera or outside the image."""
        cam = np.einsum("vij,kj->vki", self.R, points) + self.t[:, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            px = np.einsum("vij,vkj->vki", self.K, cam)
            px = px[..., :2] / px[..., 2:3]
        w, h = self.image_size
        inside = (cam[..., 2] > 0.05) & (px[..., 0] >= 0) & (px[..., 0] < w) & (px[..., 1] >= 0) & (px[..., 1] < h)
        return np.where(inside[..., None], px, np.nan)


def make_scene(n_views: int, radius_m: float = 4.0, focal_px: float = 900.0) -> Scene:
    K, R, t = [], [], []
    target = np.array([0.0, 0.0, 1.0])
    for v in range(n_views):
        angle = 2 * np.pi * v / n_views
        centre = np.array([radius_m * np.cos(angle), radius_m * np.sin(angle), 1.6 + 0.3 * (v % 2)])
        forward = target - centre
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rot = np.stack([right, down, forward])  # rows: camera axes in world
        K.append([[focal_px, 0, 640], [0, focal_px, 360], [0, 0, 1]])
        R.append(rot)
        t.append(-rot @ centre)
    return Scene(np.array(K, float), np.array(R), np.array(t))


def body_points(rng: np.random.Generator, n_keypoints: int = 70, at=(0.0, 0.0)) -> np.ndarray:
    """A rough person: (K, 3) metres, standing at `at` (x, y), 1.8 m tall."""
    pts = np.column_stack([rng.uniform(-0.25, 0.25, n_keypoints), rng.uniform(-0.15, 0.15, n_keypoints),
                           rng.uniform(0.05, 1.8, n_keypoints)])
    pts[:, 0] += at[0]
    pts[:, 1] += at[1]
    return pts
