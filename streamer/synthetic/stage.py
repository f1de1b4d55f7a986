"""`SyntheticStage`: virtual cameras around animated Anny bodies, as a capture source with ground truth.

The animation of every person (one motion cycle, periodic) is computed once at construction,
batched through the body model; live generation is then only interpolation, projection and the
observation model (compiled kernels, `streamer.synthetic.observe`): about 0.3 ms of CPU per camera frame.

Timing model of camera c, frame k (seconds from `t0_ns`):
    exposure  = k / fps + phase_c + jitter_ck     (phase_c uniform in [0, 1/fps) unless genlocked)
    reported  = exposure + offset_c               (offset_c: the camera's clock error, constant)
The observed points are the truth at the exposure time; `t_capture_ns` carries the reported time.
Truth frame k is at exactly k / fps. Frame k of camera c is dropped (no message) with
`drop_rate`. Every random draw is seeded by (seed, camera, frame): any call order gives the same data.

Persons: 0 is the subject; 1 is a distractor walking a wider circle the other way (optional).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from protocol.messages import Keypoints2D, PersonTruth, RigCalibration, Truth
from streamer.calibration import Rig
from streamer.synthetic.animation_cache import load_or_build_animations
from streamer.synthetic.motion import Animation, MotionSettings, animate
from streamer.synthetic.observe import ObservationSettings, Observed, observe_persons
from streamer.synthetic.rig import RigSettings, ring_rig

if TYPE_CHECKING:
    from streamer.body.anny_model import AnnyBody

__all__ = ["StageSettings", "SyntheticStage"]

_NS = 1_000_000_000


@dataclass(frozen=True)
class StageSettings:
    """Everything that defines a synthetic take; equal settings give identical data."""

    rig: RigSettings = field(default_factory=RigSettings)
    motion: MotionSettings = field(default_factory=MotionSettings)
    observation: ObservationSettings = field(default_factory=ObservationSettings)
    seed: int = 0
    distractor: bool = True
    distractor_path_radius_m: float = 2.2
    t0_ns: int = _NS  # stage-clock time of frame 0 (> 0 so that negative clock offsets stay valid)

    def content_hash(self) -> str:
        """16 hex digits of sha256 over all settings (the take id of a recording)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class SyntheticStage:
    """A synthetic capture stage. See the module docstring for the timing and person model.

    body: the Anny body model to animate (shared to save start-up time). Without one the animations
    come from the on-disk cache (`streamer.synthetic.animation_cache`; no torch import), computed
    with a default `AnnyBody` by the first process that needs them.
    """

    def __init__(self, settings: StageSettings | None = None, body: AnnyBody | None = None) -> None:
        self.settings = settings or StageSettings()
        s = self.settings
        self._body = body
        self.rig: Rig = ring_rig(s.rig)
        self.fps = float(s.rig.fps)
        self.camera_names: list[str] = self.rig.names
        self._subsets: dict[tuple[str, ...], Rig] = {}
        self._centers = {cam.name: cam.center for cam in self.rig.cameras}
        self.animations: list[Animation] = (
            self._animate() if body is not None else load_or_build_animations(s, self._animate))
        self.cycle_frames = self.animations[0].num_frames
        self._keypoints = np.stack([a.keypoints for a in self.animations], axis=1)  # (T, N, 70, 3), time-major
        obs = s.observation
        self._phase_s, self._offset_s = {}, {}
        for index, name in enumerate(self.camera_names):
            rng = np.random.default_rng([s.seed, 1_000_000 + index])
            self._phase_s[name] = rng.uniform(0, 1 / self.fps) if obs.trigger_phase else 0.0
            self._offset_s[name] = obs.clock_offset_ms * 1e-3 * rng.standard_normal()
        self._camera_index = {name: i for i, name in enumerate(self.camera_names)}
        self.observe_cameras(0)  # compiles the observation kernels now (numba, cached on disk), not on a live frame

    @property
    def body(self) -> AnnyBody:
        """The Anny body model (built on first use when the animations came from the cache)."""
        if self._body is None:
            from streamer.body.anny_model import AnnyBody

            self._body = AnnyBody()
        return self._body

    def _animate(self) -> list[Animation]:
        s = self.settings
        animations = [animate(self.body, s.motion, fps=self.fps, seed=s.seed, person=0)]
        if s.distractor:
            animations.append(animate(self.body, s.motion, fps=self.fps, seed=s.seed, person=1,
                                      path_radius_m=s.distractor_path_radius_m))
        return animations

    # -- ground truth and calibration ------------------------------------------------------

    def calibration(self) -> RigCalibration:
        """The `calib` message of the whole rig (version = content hash)."""
        return self.rig.to_message()

    def frame_time_ns(self, frame_index: int) -> int:
        """Nominal (true) stage time of frame `frame_index`."""
        return self.settings.t0_ns + round(frame_index * _NS / self.fps)

    def exposure_time_ns(self, frame_index: int, camera: str) -> int:
        """Stage time at which `camera` exposes frame `frame_index`: the frame time plus the camera's trigger
        phase (its capture jitter, ~1 ms, left out). A live source delivers the frame no earlier."""
        return self.frame_time_ns(frame_index) + round(self._phase_s[camera] * _NS)

    def truth_points(self, frame_index: int) -> np.ndarray:
        """(N, 70, 3) true points of every person at frame `frame_index`, metres, world."""
        k = frame_index % self.cycle_frames
        return np.stack([a.keypoints[k] for a in self.animations])

    def truth(self, frame_index: int) -> Truth:
        """The `truth` message of frame `frame_index` (person 0 = subject, 1 = distractor)."""
        k = frame_index % self.cycle_frames
        persons = [PersonTruth(person_id=i, keypoints=a.keypoints[k].astype(np.float32), params=a.params[k].copy())
                   for i, a in enumerate(self.animations)]
        return Truth(t_ns=self.frame_time_ns(frame_index), frame_index=frame_index, persons=persons)

    def points_at(self, t_s: np.ndarray | float) -> np.ndarray:
        """(..., N, 70, 3) true points at times `t_s` (...) after frame 0 (linear between frames, periodic)."""
        f = np.asarray(t_s, dtype=np.float64) * self.fps
        base = np.floor(f)
        w = (f - base)[..., None, None, None]
        i0 = base.astype(np.int64) % self.cycle_frames
        i1 = (i0 + 1) % self.cycle_frames
        k = self._keypoints  # (T, N, 70, 3)
        return k[i0] * (1 - w) + k[i1] * w

    # -- observations ----------------------------------------------------------------------

    def observe_cameras(self, frame_index: int, cameras: list[str] | None = None
                        ) -> dict[str, tuple[Keypoints2D | None, Observed | None]]:
        """{camera: (message, what the observation model did)} for frame `frame_index`, vectorised over
        the cameras (default all); (None, None) for a dropped frame. Same result as camera by camera."""
        cameras = self.camera_names if cameras is None else list(cameras)
        for camera in cameras:
            if camera not in self._camera_index:
                raise KeyError(f"no camera {camera!r} in the synthetic rig; known: {', '.join(self.camera_names)}")
        if frame_index < 0:
            raise ValueError(f"frame_index must be >= 0, got {frame_index}")
        s = self.settings
        obs = s.observation
        out: dict[str, tuple[Keypoints2D | None, Observed | None]] = {}
        live, rngs, exposures = [], [], []
        for camera in cameras:
            rng = np.random.default_rng([s.seed, self._camera_index[camera], frame_index])
            dropped = rng.random() < obs.drop_rate
            jitter_s = obs.jitter_ms * 1e-3 * rng.standard_normal()
            if dropped:
                out[camera] = (None, None)
                continue
            live.append(camera)
            rngs.append(rng)
            exposures.append(frame_index / self.fps + self._phase_s[camera] + jitter_s)
        if live:
            rig = self._subset(tuple(live))
            points = self.points_at(np.array(exposures))  # (V, N, 70, 3)
            n_cams = len(live)
            u, v = rig.project_columns(points.reshape(-1, 3).T)  # every camera sees every camera's points
            diagonal = np.arange(n_cams)
            u = u.reshape(n_cams, n_cams, -1)[diagonal, diagonal]
            v = v.reshape(n_cams, n_cams, -1)[diagonal, diagonal]
            pixels = np.stack([u, v], axis=-1).reshape(points.shape[:-1] + (2,))
            centers = np.stack([self._centers[c] for c in live])
            sizes = np.array([rig.cameras[i].image_size for i in range(n_cams)])
            observed = observe_persons(points, pixels, centers, sizes, obs, rngs)
            for i, camera in enumerate(live):
                reported_ns = s.t0_ns + round((exposures[i] + self._offset_s[camera]) * _NS)
                out[camera] = (Keypoints2D(
                    camera=camera, seq=frame_index, frame_index=frame_index, t_capture_ns=reported_ns,
                    image_size=np.asarray(sizes[i], dtype=np.int32), calib_version=self.rig.version,
                    persons=observed[i].persons), observed[i])
        return {camera: out[camera] for camera in cameras}

    def observe_detailed(self, frame_index: int, camera: str) -> tuple[Keypoints2D | None, Observed | None]:
        """(message, what the observation model did), or (None, None) for a dropped frame."""
        return self.observe_cameras(frame_index, [camera])[camera]

    def _subset(self, cameras: tuple[str, ...]) -> Rig:
        rig = self._subsets.get(cameras)
        if rig is None:
            rig = self._subsets[cameras] = self.rig.subset(list(cameras))
        return rig

    def observe(self, frame_index: int, camera: str) -> Keypoints2D | None:
        """The `kp2d/<camera>` message of frame `frame_index`, or None when that frame is dropped."""
        return self.observe_detailed(frame_index, camera)[0]

    def frames(self, camera: str, start: int = 0, stop: int | None = None) -> Iterator[Keypoints2D]:
        """The camera's messages for frames start..stop-1 (endless when stop is None), dropped frames skipped."""
        index = start
        while stop is None or index < stop:
            message = self.observe(index, camera)
            if message is not None:
                yield message
            index += 1
