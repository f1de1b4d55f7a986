"""Node `fitter`: points3d -> warm-started body fit with causal NaN-safe filtering -> pose.

Subscribes `points3d`; publishes `pose` (one per person per frame set) with per-keypoint flags
(MEASURED: fitted to a valid triangulated point; PREDICTED: filled by the body model or coasted;
MISSING: the body model has no such point, or a held pose) and diagnostics judged at the shipped
parameters (`streamer.fitting`). The math is in `streamer.fitting.track.track_step`; this node only
keeps one track state per person id.

Missing input: a `points3d` that is unusable (fewer than `min_valid_points` valid points, zero
weights, or `usable` cleared upstream) is never fitted: the pose coasts (root translation up to
`coast_root_s`, rotations up to `coast_pose_s`) then holds, verdict "unusable". When no `points3d`
arrives for `stale_after_s`, the last pose of each person is re-sent every `stale_interval_s` with
verdict "stale". When input returns the track continues (re-initialised after `lost_after_s`), and
the re-acquired pose is slew-limited to `max_speed_mps`, so it never jumps. Shipped parameters are
never NaN. On unusable and stale poses `loss` and `data_loss` are NaN ("not computed"; a zero loss
would claim a perfect fit, ARCHITECTURE.md §4 rule 2): read the verdict.

Data term: with `information_metric` each point's error is weighed by how well its inlier views see it
(`streamer.fitting.information.point_information` with the rig of `points3d.calib_version`, its cameras in
the order of `points3d.cameras`): error along a poorly seen direction (a two-view point's depth) costs
less than error in the cameras' image planes. Without that rig (or with a camera it lacks) the frame is
fitted with the Euclidean term (counted). Every tracking default is the library's (`TrackSettings`).

Initialisation (a person's first fit, and again after the track was lost, or stuck: no good fit for
`relock_after_s`, or `stuck_body_points` body keypoints over `stuck_body_m` off in every fit for as long):
with the MHR body the estimator's per-view parameters (`points3d.view_params`, SAM-3D
Body's MHR parameters in each camera's frame) are turned into world-frame candidates with the rig calibration
(`calib` state: the root rotation camera -> world, the translation re-solved) and the candidate whose rigidly
aligned keypoints fit the 3D points best is the start (`streamer.fitting.init.choose_start`); views of cameras
missing from the rig named by `points3d.calib_version`, or with malformed parameters, are skipped (counted).
Without candidates the start is the canonical pose aligned to the points. The Anny body cannot take MHR
parameters: the node says so once in the log and starts from the canonical pose.

Counters: frames, published, stale_sent, verdict/<v>, source/<fit|coast|hold>, rejects/bad_points3d,
not_published/<first_unusable|time_not_advancing>, start/<estimator|canonical> and start_view/<camera>
(which start each (re)initialisation used), init/<no_calib|unknown_camera|bad_view_params|
params_not_in_model_layout> (view parameters that could not be used), info/<metric|no_calib|unknown_camera|
bad_inliers> (the data term of each frame: metric, or why Euclidean). Gauges: fit_ms, iterations,
rms_mm, persons, start_rms_mm (aligned RMS error of the last start).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from protocol.messages import Points3D, Pose, PoseFlag, RigCalibration, Verdict
from streamer.calibration import Rig
from streamer.fitting import fit_targets
from streamer.fitting.align import Alignment
from streamer.fitting.information import point_information
from streamer.fitting.init import Start, align_params, choose_start
from streamer.fitting.targets import FitTargets
from streamer.fitting.track import (TrackOutput, TrackSettings, TrackState, make_context, starts_afresh, track_init,
                                    track_step)
from streamer.node import Node, run_node

__all__ = ["Fitter", "Settings", "main", "pose_message", "track_settings", "unit_quaternions"]

logger = logging.getLogger(__name__)


_TRACK = TrackSettings()  # the library's defaults: the node repeats none of them


@dataclass(frozen=True)
class Settings:
    body_model: str = "anny"  # body model id: "anny" (the embedded Anny body) or "mhr" (needs the gated assets)
    mhr_model: str = ""  # MHR: path of mhr_model.pt (empty: $STREAMER_MHR_MODEL or beside the checkpoint)
    mhr_checkpoint: str = ""  # MHR: SAM-3D Body model.ckpt or its folder (empty: $STREAMER_SAM3D_CHECKPOINT)
    device: str = "cpu"  # torch device: "cpu" or "cuda"
    torch_threads: int = 1  # CPU threads for torch in this process
    information_metric: bool = True  # weigh each point's error by how well its inlier views see it (needs `calib`)
    min_valid_points: int = _TRACK.targets.min_valid  # fewer valid 3D points: the frame is unusable
    huber_m: float = _TRACK.fit.huber_m  # Huber threshold of the data term, metres
    accel_prior: float = _TRACK.fit.accel_prior  # weight of the constant-velocity prior (per rad^2 / m^2)
    # the prior on the predicted keypoints, weighed as the data term (0 with accel_prior 1e-3: the old fit)
    accel_keypoint_prior: float = _TRACK.fit.accel_keypoint_prior
    max_iterations: int = _TRACK.fit.max_iterations  # LM steps per warm-started frame
    max_iterations_cold: int = _TRACK.fit.max_iterations_cold  # LM steps when (re)initialising
    start_iterations: int = _TRACK.start_iterations  # at most this many in all at a start, a relock's spread over
    #                                                  its first frames (0: one frame, max_iterations_cold)
    good_rms_m: float = _TRACK.fit.good_rms_m  # verdict "good" at most this inlier RMS error, metres
    smooth_output: bool = _TRACK.smooth_output  # ship the parameter Kalman's posterior (less jitter, no steady lag)
    pose_accel_noise: float = _TRACK.pose_accel_noise  # Kalman process noise of rotations, rad/s^2 (jitter vs lag)
    root_accel_noise: float = _TRACK.root_accel_noise  # Kalman process noise of the root translation, m/s^2
    coast_root_s: float = _TRACK.coast_root_s  # coast the root translation through unusable frames this long
    coast_pose_s: float = _TRACK.coast_pose_s  # coast rotations this long, then hold
    lost_after_s: float = _TRACK.lost_after_s  # no usable frame this long: re-initialise on the next
    relock_after_s: float = _TRACK.relock_after_s  # no good fit this long: re-initialise on the next (0: never)
    stuck_body_m: float = _TRACK.stuck_body_m  # body keypoints this far off their targets (metres, metric) ...
    stuck_body_points: int = _TRACK.stuck_body_points  # ... this many, for relock_after_s: re-initialise (0: off)
    max_speed_mps: float = _TRACK.max_speed_mps  # slew limit on keypoints after a gap, m/s
    shape_frames: int = _TRACK.shape_frames  # good fits averaged into the subject's held shape
    offset_frames: int = _TRACK.offset_frames  # good fits per keypoint-offset calibration window (0: none)
    offset_rounds: int = _TRACK.offset_rounds  # calibration windows, then the offsets are held
    offset_gain: float = _TRACK.offset_gain  # share of a window's mean residual added to the offsets
    fit_hands: bool = _TRACK.fit_hands  # move the finger dims
    stale_after_s: float = 0.5  # no points3d this long: re-send the last poses as "stale"
    stale_interval_s: float = 0.25  # how often a stale pose is re-sent
    forget_after_s: float = 30.0  # drop a person's track after this long without input


def track_settings(s: Settings) -> TrackSettings:
    """The tracking settings of the node's settings (the library's defaults for everything not in `Settings`)."""
    return replace(
        _TRACK,
        fit=replace(_TRACK.fit, huber_m=s.huber_m, accel_prior=s.accel_prior,
                    accel_keypoint_prior=s.accel_keypoint_prior, max_iterations=s.max_iterations,
                    max_iterations_cold=s.max_iterations_cold, good_rms_m=s.good_rms_m),
        targets=replace(_TRACK.targets, min_valid=s.min_valid_points),
        lost_after_s=s.lost_after_s, relock_after_s=s.relock_after_s, start_iterations=s.start_iterations,
        stuck_body_m=s.stuck_body_m,
        stuck_body_points=s.stuck_body_points, coast_root_s=s.coast_root_s,
        coast_pose_s=s.coast_pose_s, max_speed_mps=s.max_speed_mps, shape_frames=s.shape_frames, fit_hands=s.fit_hands,
        offset_frames=s.offset_frames, offset_rounds=s.offset_rounds, offset_gain=s.offset_gain,
        smooth_output=s.smooth_output,
        root_accel_noise=s.root_accel_noise, pose_accel_noise=s.pose_accel_noise)


def build_body(name: str, device: str, *, mhr_model: str = "", mhr_checkpoint: str = ""):
    """The body model named `name` on `device` (MHR assets from the paths, else the environment)."""
    if name == "anny":
        from streamer.body.anny_model import AnnyBody
        return AnnyBody(device=device)
    if name == "mhr":
        from streamer.body.mhr_model import MhrBody, MhrPaths
        return MhrBody(MhrPaths.resolve(model=mhr_model or None, checkpoint=mhr_checkpoint or None), device=device)
    raise ValueError(f"fitter: body_model must be 'anny' or 'mhr', got {name!r}")


def world_from_camera(rig: Rig, camera: str) -> Alignment:
    """The rigid transform taking `camera`'s frame (OpenCV axes, metres) into the rig's world frame."""
    cam = rig.camera(camera)
    return Alignment(rotation=cam.R.T, translation=-cam.R.T @ cam.t, scale=1.0, rms_m=0.0)


def unit_quaternions(rotations: np.ndarray) -> np.ndarray:
    """(J, 3, 3) rotation matrices -> (J, 4) XYZW unit quaternions, float64: Markley's variant of Shepperd's
    method, as `roma.rotmat_to_unitquat` (in NumPy: on one pose, ~10x faster than the torch call)."""
    a = np.asarray(rotations, np.float64).transpose(0, 2, 1)  # Markley's attitude matrix A = R^T
    a11, a12, a13, a21, a22, a23, a31, a32, a33 = a.reshape(-1, 9).T
    x = np.stack([1 + a11 - a22 - a33, a12 + a21, a13 + a31, a23 - a32,
                  a21 + a12, 1 + a22 - a33 - a11, a23 + a32, a31 - a13,
                  a31 + a13, a32 + a23, 1 + a33 - a11 - a22, a12 - a21,
                  a23 - a32, a31 - a13, a12 - a21, 1 + a11 + a22 + a33], axis=-1).reshape(-1, 4, 4)  # 4 q q^T
    best = x[np.arange(len(x)), x.diagonal(axis1=1, axis2=2).argmax(-1)]  # the row of the largest q_i^2
    return best / np.linalg.norm(best, axis=-1, keepdims=True)


def pose_message(model, output: TrackOutput, points: Points3D, t_input_ns: int) -> Pose:
    """The `pose` message of one track output (joint rotations as XYZW quaternions)."""
    with torch.no_grad():
        x = torch.as_tensor(output.params, device=model.device).to(model.dtype)[None]
        rotations, positions = model.joint_rotations_and_positions(x)
        rotations = rotations[0].cpu().numpy()
        root_position = positions[0, 0].cpu().numpy()
    quats = unit_quaternions(rotations).astype(np.float32)  # XYZW
    world_from_root = np.eye(4, dtype=np.float32)
    world_from_root[:3, :3] = rotations[0]
    world_from_root[:3, 3] = root_position
    ev = output.evaluation
    return Pose(
        t_ns=points.t_ns, frame_index=points.frame_index, person_id=points.person_id, body_model=model.name,
        params=output.params.astype(np.float32), keypoints=output.keypoints.astype(np.float32),
        joint_rotations=quats, world_from_root=world_from_root, flags=output.flags.astype(np.uint8),
        loss=float(ev.loss), data_loss=float(ev.data_loss), n_valid=int(ev.n_valid), verdict=ev.verdict,
        iterations=int(output.iterations), t_input_ns=t_input_ns)


class Fitter(Node):
    Settings = Settings
    INPUT_TOPICS = ("points3d", "calib")

    def setup(self) -> None:
        s = self.settings
        torch.set_num_threads(max(1, s.torch_threads))
        self.model = build_body(s.body_model, s.device, mhr_model=s.mhr_model, mhr_checkpoint=s.mhr_checkpoint)
        self.context = make_context(self.model, track_settings(s))
        self.tracks: dict[int, TrackState] = {}
        self.last_pose: dict[int, Pose] = {}
        self.last_input_ns: dict[int, int] = {}
        self.last_stale_ns: dict[int, int] = {}
        self.tick_interval_s = min(0.05, s.stale_interval_s)
        self.rigs: dict[str, Rig] = {}  # calibration version -> rig (the newest few), from the `calib` state
        self.view_rigs: dict[tuple[str, tuple[str, ...]], Rig | None] = {}  # (version, cameras) -> rig in V order
        self.said_no_layout = False

    def on_message(self, topic: str, msg) -> None:
        if isinstance(msg, RigCalibration):
            self._on_calibration(msg)
            return
        if not isinstance(msg, Points3D):
            return
        self.count("frames")
        try:
            targets = fit_targets(msg.points, n_views=msg.n_views, confidence=msg.confidence,
                                  defined=self.context.defined, information=self._information(msg),
                                  settings=self.context.settings.targets)
        except ValueError as exc:
            self.count("rejects/bad_points3d")
            logger.warning("points3d rejected: %s", exc)
            return
        if not msg.usable and targets.usable:
            targets = replace(targets, usable=False, reason="unusable upstream")
        person = msg.person_id
        state = self.tracks.get(person) or track_init(self.context)
        t0 = time.perf_counter()
        candidates = None
        if starts_afresh(state, targets, msg.t_ns, self.context):
            start = self._choose_start(msg, targets)
            candidates = start.params[None] if start is not None and start.source == "estimator" else None
        state, output = track_step(state, targets, msg.t_ns, self.context, candidates=candidates)
        fit_ms = (time.perf_counter() - t0) * 1000
        self.tracks[person] = state
        self.last_input_ns[person] = self.clock.now_ns()
        if output is None:
            reason = "first_unusable" if state.params is None else "time_not_advancing"
            self.count(f"not_published/{reason}")
            return
        pose = pose_message(self.model, output, msg, msg.t_send_ns)
        self.publish(pose)
        self.last_pose[person] = pose
        self.last_stale_ns.pop(person, None)
        self.count("published")
        self.count(f"verdict/{pose.verdict}")
        self.count(f"source/{output.source}")
        self.gauge("fit_ms", fit_ms)
        self.gauge("iterations", float(output.iterations))
        if np.isfinite(output.evaluation.rms_m):
            self.gauge("rms_mm", output.evaluation.rms_m * 1000)
        self.gauge("persons", float(len(self.tracks)))

    # ------------------------------------------------------------ data term

    def _information(self, msg: Points3D) -> np.ndarray | None:
        """(K, 3, 3) information of each point from its inlier views (`point_information`), or None (the Euclidean
        data term): the metric is off, the rig of `msg.calib_version` has not arrived, or it lacks (or cannot
        project with) one of `msg.cameras`; each fallback is counted."""
        if not self.settings.information_metric:
            return None
        key = (msg.calib_version, tuple(msg.cameras))
        if key not in self.view_rigs:
            rig = self.rigs.get(msg.calib_version)
            if rig is None:
                self.count("info/no_calib")
                return None
            try:
                view_rig = rig.subset(msg.cameras)
                unposed = [cam.name for cam in view_rig if not cam.is_posed]
                if unposed:
                    raise ValueError(f"cameras {unposed} are not posed")
            except (KeyError, ValueError) as exc:
                view_rig = None
                logger.warning("points3d of calibration %s: no information metric (%s)", msg.calib_version, exc)
            self.view_rigs[key] = view_rig
        view_rig = self.view_rigs[key]
        if view_rig is None:
            self.count("info/unknown_camera")
            return None
        try:
            information = point_information(msg.points, msg.inliers, view_rig)
        except ValueError as exc:
            self.count("info/bad_inliers")
            logger.debug("points3d: no information metric (%s)", exc)
            return None
        self.count("info/metric")
        return information

    # ------------------------------------------------------------ initialisation

    def _on_calibration(self, msg: RigCalibration) -> None:
        """Keep the rig of each calibration version (points3d name theirs), the newest four."""
        try:
            rig = Rig.from_message(msg)
        except ValueError as exc:
            self.count("rejects/calib_invalid")
            logger.warning("calibration %s rejected: %s", msg.version, exc)
            return
        self.rigs.pop(msg.version, None)
        self.rigs[msg.version] = rig
        while len(self.rigs) > 4:
            self.rigs.pop(next(iter(self.rigs)))
        self.view_rigs = {key: rig for key, rig in self.view_rigs.items() if key[0] in self.rigs}

    def _view_candidates(self, msg: Points3D) -> tuple[np.ndarray, list[str]]:
        """World-frame start candidates (C, P) from the estimator's per-view parameters, and their cameras."""
        model, none = self.model, (np.empty((0, self.model.num_params)), [])
        if not msg.view_params:
            return none
        if not hasattr(model, "params_from_estimator"):
            self.count("init/params_not_in_model_layout")
            if not self.said_no_layout:
                self.said_no_layout = True
                logger.info("points3d carry estimator parameters (MHR layout), but the %r body cannot start from "
                            "them: tracks start from the canonical pose aligned to the points", model.name)
            return none
        rig = self.rigs.get(msg.calib_version)
        if rig is None:
            self.count("init/no_calib")
            return none
        candidates, cameras = [], []
        for view in msg.view_params:
            if view.camera not in rig.names:
                self.count("init/unknown_camera")
                continue
            try:
                in_camera = model.params_from_estimator(view.params)
            except ValueError as exc:
                self.count("init/bad_view_params")
                logger.debug("view %s: %s", view.camera, exc)
                continue
            candidates.append(align_params(model, in_camera, world_from_camera(rig, view.camera)))
            cameras.append(view.camera)
        return (np.stack(candidates), cameras) if candidates else none

    def _choose_start(self, msg: Points3D, targets: FitTargets) -> Start | None:
        """The estimator start of a (re)initialised track, None without candidates (track_step then starts from
        the canonical pose); the source goes to the stats and the log."""
        candidates, cameras = self._view_candidates(msg)
        if not len(candidates):
            self.count("start/canonical")
            logger.info("person %d: track starts from the canonical pose", msg.person_id)
            return None
        start = choose_start(self.model, targets, candidates=candidates, reference=self.context.reference)
        self.count(f"start/{start.source}")
        view = cameras[start.candidate] if start.source == "estimator" else ""
        if view:
            self.count(f"start_view/{view}")
        if np.isfinite(start.rms_m):
            self.gauge("start_rms_mm", start.rms_m * 1000)
        logger.info("person %d: track starts from the %s pose%s (aligned rms %.1f mm, %d candidates)",
                    msg.person_id, start.source, f" of camera {view}" if view else "", start.rms_m * 1000,
                    len(candidates))
        return start

    def on_tick(self, now_ns: int) -> None:
        s = self.settings
        for person in list(self.last_input_ns):
            silent_s = (now_ns - self.last_input_ns[person]) * 1e-9
            if silent_s > s.forget_after_s:
                for table in (self.tracks, self.last_pose, self.last_input_ns, self.last_stale_ns):
                    table.pop(person, None)
                self.count("forgotten")
                continue
            pose = self.last_pose.get(person)
            if pose is None or silent_s < s.stale_after_s:
                continue
            last = self.last_stale_ns.get(person)
            if last is not None and (now_ns - last) * 1e-9 < s.stale_interval_s:
                continue
            flags = np.where(pose.flags == PoseFlag.MISSING, PoseFlag.MISSING, PoseFlag.PREDICTED).astype(np.uint8)
            stale = replace(pose, verdict=Verdict.STALE, flags=flags, loss=float("nan"), data_loss=float("nan"),
                            iterations=0)
            self.publish(stale)
            self.last_stale_ns[person] = now_ns
            self.count("stale_sent")


def main(argv: list[str]) -> int:
    return run_node(Fitter, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
