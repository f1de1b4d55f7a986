"""Shared test helpers for sync: free-running camera streams and a small pinhole scene (not a test module)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamer.framesets import Assembler, AssemblySettings, FrameSet

__all__ = ["CameraSim", "Scene", "body_points", "frames_of", "make_scene", "scene_camera", "scene_rig", "seen_person",
           "simulate"]

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


# ---------------------------------------------------------------- a camera publisher process

def scene_camera(scene: Scene, view: int, name: str):
    from streamer.calibration import Camera

    return Camera(name, scene.image_size, scene.K[view], np.zeros(5), scene.R[view], scene.t[view])


def scene_rig(n_views: int):
    """The `make_scene(n_views)` cameras as a Rig named cam0..cam{n-1}."""
    from streamer.calibration import Rig

    scene = make_scene(n_views)
    return Rig(tuple(scene_camera(scene, v, f"cam{v}") for v in range(n_views)))


def seen_person(camera, body: np.ndarray):
    """`body` ((K, 3) metres, world) as `camera` sees it: a Person2D with exact pixels, full confidence, its box."""
    from protocol import Person2D

    pixels = camera.project(body)
    return Person2D(box=np.r_[pixels.min(axis=0), pixels.max(axis=0)].astype(np.float32), score=0.9,
                    keypoints=pixels.astype(np.float32), confidence=np.ones(len(body), np.float32))


def subject_at(frame_index: int) -> np.ndarray:
    """Where the simulated subject stands at a frame: (3,) metres offset, a slow circle."""
    phase = 2 * np.pi * frame_index / 90
    return np.array([0.3 * np.sin(phase), 0.2 * np.cos(phase), 0.0])


SUBJECT_SEED = 1234
DISTRACTOR_AT = np.array([1.1, -0.9, 0.0])


def true_subject(frame_index: int) -> np.ndarray:
    """The simulated subject's (K, 3) keypoints at a frame, metres, world."""
    return body_points(np.random.default_rng(SUBJECT_SEED)) + subject_at(frame_index)


def persons_for(scene: Scene, view: int, frame_index: int, rng: np.random.Generator, noise_px: float = 1.0):
    """Person2D list for one camera and frame, in random order: the subject, and in views 0 and 1 a
    distractor of the same build (someone at the edge of the stage, seen by two cameras)."""
    from protocol import Person2D

    body = body_points(np.random.default_rng(SUBJECT_SEED))
    persons = []
    for offset in (subject_at(frame_index), DISTRACTOR_AT) if view < 2 else (subject_at(frame_index),):
        px = scene.project(body + offset)[view] + rng.normal(0.0, noise_px, (len(body), 2))
        seen = np.isfinite(px).all(-1)
        if seen.sum() < 4:
            continue
        box = np.r_[np.nanmin(px, 0), np.nanmax(px, 0)].astype(np.float32)
        persons.append(Person2D(box=box, score=0.9, keypoints=px.astype(np.float32),
                                confidence=np.where(seen, 0.9, 0.0).astype(np.float32)))
    return [persons[i] for i in rng.permutation(len(persons))]


def publish_main(argv: list[str]) -> int:
    """A camera process: binds a Publisher, serves its calibration as `calib` state and sends
    `kp2d/<camera>` on a shared frame grid with a clock offset, capture jitter, delivery jitter
    and dropped frames."""
    import argparse
    import time

    from protocol import Keypoints2D
    from streamer.calibration import Rig
    from streamer.transport import Publisher

    parser = argparse.ArgumentParser(prog="python -m tests.sync_sim publish")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--camera", required=True)
    parser.add_argument("--view", type=int, required=True, help="index of this camera in the scene")
    parser.add_argument("--views", type=int, required=True, help="cameras in the scene")
    parser.add_argument("--anchor-ns", type=int, required=True, help="wall-clock time of frame 0, ns")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--offset-ms", type=float, default=0.0, help="this camera's clock offset")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="capture-time jitter (std)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="max extra delivery delay (uniform)")
    parser.add_argument("--drop-every", type=int, default=0, help="drop frames with index %% N == N-1")
    parser.add_argument("--bad-calib-every", type=int, default=0,
                        help="frames with index %% N == N-1 carry a calib_version that matches nothing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    scene = make_scene(args.views)
    camera = scene_camera(scene, args.view, args.camera)
    calibration = Rig((camera,)).to_message()
    rng = np.random.default_rng(args.seed)
    period_ns = 1e9 / args.fps
    publisher = Publisher(args.endpoint, name=args.camera)
    publisher.publish_state(calibration)
    try:
        for k in range(args.frames):
            due = args.anchor_ns + k * period_ns + rng.uniform(0.0, args.delay_ms) * 1e6
            while (left := due - time.time_ns()) > 0:
                publisher.service()
                time.sleep(min(left / 1e9, 0.005))
            if args.drop_every and k % args.drop_every == args.drop_every - 1:
                continue
            t_capture = int(args.anchor_ns + k * period_ns + (args.offset_ms + rng.normal(0, args.jitter_ms)) * 1e6)
            stale = args.bad_calib_every and k % args.bad_calib_every == args.bad_calib_every - 1
            publisher.publish(Keypoints2D(
                camera=args.camera, seq=k, frame_index=k, t_capture_ns=t_capture,
                image_size=np.array(scene.image_size, np.int32),
                calib_version="0123456789abcdef" if stale else calibration.version,
                persons=persons_for(scene, args.view, k, rng)))
            publisher.service()
    finally:
        publisher.close(flush_ms=200)
    return 0


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1] != "publish":
        sys.exit("usage: python -m tests.sync_sim publish --help")
    sys.exit(publish_main(sys.argv[2:]))
