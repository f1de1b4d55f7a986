"""Node `sync`: kp2d of every camera -> frame sets by capture time -> the tracked person -> points3d.

Subscribes `kp2d/<cam>` and the cameras' `calib` state; merges the cameras into one rig and
republishes it as `calib` state downstream, with the stage configuration as `stage` state
(`streamer.stage_config`: graph name and file, camera rate, cameras, calibration version).
Frames are assembled into sets by capture time (`streamer.framesets`: smallest spread, each
frame used once, a partial set at the deadline when a camera is late or dead, never a set wider
than `max_spread_ms`, by default 0.9 frame period: free-running cameras have trigger phases anywhere in
a period, so a narrower cap splits one period's frames into two partial sets, each triangulated from
fewer views and fitted; measured on the synthetic stage at 8 cameras x 30 fps, a 20 ms cap made 1.4
sets per period and 27 mm MPJPE, 0.9 period one set and 14 mm); in every set the tracked person is chosen per camera by consistency with the 3D track, or bootstrapped by
epipolar consistency when there is none (`streamer.association`); the chosen keypoints are
triangulated robustly with the previous frame's points as a temporal prior and published as
`points3d` (usable only with at least `min_valid_points` valid points).

Committing to a person: a take (or a lost track) starts on a bootstrap, and a poor first frame set (the
performer seen by too few cameras: hidden by the distractor, missed, its left and right swapped, a camera's
frame not there yet) can make the bootstrap choose the distractor, which the track then follows for the whole
take. So the node commits only to a confident bootstrap (`streamer.association.bootstrap_choice`: seen by at
least three cameras, all of a smaller rig's, and everyone else in the set farther from the optical axes by
`bootstrap_margin`). A frame set whose bootstrap is not confident is published with `usable = False`, starts
no track and sends no hints (counter `bootstrap_waits`). After `bootstrap_wait_sets` such sets in a row the
camera count is waived (a camera may be dead): the node commits to a person nearest the optical axes by the
margin; after twice that many, to the current choice anyway (counter `bootstrap_forced` for both), so the
first pose is late by at most 2 x `bootstrap_wait_sets` frame sets. Once committed, the track is never
switched to someone else: only a lost track bootstraps again, under the same rule. `bootstrap_wait_sets = 0`
commits at once, as before.

Box hints: while the track is confirmed, each frame set also yields one `hint/<cam>` per camera
(protocol `BoxHints`, `streamer.capture.hints.track_hints`): the track's 3D points re-projected into
that camera and boxed, so capture nodes with `use_track_hints` run no person detector per frame.
Hints are data whose latest value matters (counter `hints_sent`; like every data message they
count in the node's `published` and fps).

Recovery: frames whose `calib_version` does not match the calibration received for their
camera are counted (`calib_mismatch/<cam>`) and dropped, as are frames of cameras without a
calibration yet (`no_calib/<cam>`) and frames whose keypoint count differs from the first one
(`keypoint_count_mismatch/<cam>`); a frame set that fails is counted (`frame_set_errors`)
and skipped, never a crash; a dead camera only costs a wait until its frame is overdue (its
timing model's predicted arrival; at most the deadline) per set until it counts as stale, then sets complete without it; a lost track is re-acquired by bootstrap.
"""
from __future__ import annotations

import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from protocol import Keypoints2D, Points3D, RigCalibration, ViewParams
from streamer.association import (
    AssociationSettings,
    TrackState,
    advance_track,
    association_keypoints,
    bootstrap_choice,
    choose_by_track,
    consistent_with_track,
    fundamental_matrices,
    pack_detections,
    select_persons,
)
from streamer.body import mhr70
from streamer.calibration import Camera, Rig
from streamer.capture.hints import track_hints
from streamer.framesets import (
    DEFAULT_MAX_SPREAD_PERIODS,
    Assembler,
    AssemblySettings,
    FrameSet,
    PushOutcome,
)
from streamer.node import Node, run_node
from streamer.stage_config import graph_from_environment, stage_config
from streamer.triangulation import (
    TriangulationSettings,
    keep_freed_memory,
    load_kernels,
    triangulate_robust,
)

__all__ = ["Settings", "Sync", "main"]

_STATS_REFRESH_NS = 250_000_000


@dataclass(frozen=True)
class Settings:
    cameras: tuple[str, ...] = ()  # camera ids of the rig, in V order; empty: every camera whose calib arrives
    fps: float = 30.0  # nominal camera rate
    max_spread_ms: float | None = None  # a frame set never spans more (latest - earliest capture); None: 0.9 period
    deadline_ms: float = 33.3  # wait at most this after a set's first frame arrived, then emit it partial
    buffer_ms: float = 133.3  # per-camera buffer, by capture time (3-5 frame periods)
    stale_after_ms: float = 100.0  # a camera silent this long is not waited for
    predict_timing: bool = True  # wait for a camera only as its timing model predicts (False: fixed rule + deadline)
    min_cameras: int = 2  # smaller frame sets are not triangulated
    min_valid_points: int = 6  # fewer valid 3D points: points3d.usable = False
    threshold_px: float = 15.0  # triangulation inlier gate, pixels
    min_confidence: float = 0.3  # keypoints below this detector confidence are ignored
    use_prior: bool = True  # previous frame's points as the triangulation's temporal prior
    gate_px: float = 25.0  # association: smallest reprojection gate to the track, pixels
    epipolar_gate_px: float = 12.0  # association bootstrap: epipolar consistency gate, pixels
    lost_after_frames: int = 15  # frame sets without a consistent person before re-acquiring
    max_jump_m: float = 0.3  # a body whose median point moved farther from the track is not the subject
    coast_speed_m: float = 0.1  # ... plus this per frame set without a confirmed track
    max_point_jump_m: float = 0.5  # a track point that moved farther per frame set is left out of the track (hints)
    bootstrap_wait_sets: int = 10  # poor bootstrap frame sets in a row before the camera count is waived (0: at once)
    bootstrap_margin: float = 0.05  # a confident bootstrap's person is this much nearer the optical axes (tan)
    poll_interval_ms: float = 2.0  # how often deadlines are checked
    publish_hints: bool = True  # hint/<cam>: the confirmed track's boxes per camera, for capture nodes
    hint_margin: float = 0.15  # share of the projected box size added on every side of a hint box
    view_params: bool = True  # points3d carries each chosen person's estimator parameters (fitter initialisation)


def _ns(ms: float) -> int:
    return int(round(ms * 1e6))


class Sync(Node):
    """Frame sets, person choice and triangulation; state: rig, assembler, track."""

    Settings = Settings
    INPUT_TOPICS = ("kp2d/", "calib")

    def max_spread_ms(self) -> float:
        """The frame-set spread cap in ms: the setting, or 0.9 frame period when unset."""
        s = self.settings
        return DEFAULT_MAX_SPREAD_PERIODS * 1e3 / s.fps if s.max_spread_ms is None else s.max_spread_ms

    def setup(self) -> None:
        s = self.settings
        load_kernels()  # now, not on the first frame set (a ~0.3 s stall with every camera queueing behind it)
        self.tick_interval_s = s.poll_interval_ms / 1e3
        self.assembly_settings = AssemblySettings(
            frame_period_ns=_ns(1e3 / s.fps), max_spread_ns=_ns(self.max_spread_ms()), deadline_ns=_ns(s.deadline_ms),
            buffer_ns=_ns(s.buffer_ms), stale_after_ns=_ns(s.stale_after_ms), min_cameras=s.min_cameras,
            predict_timing=s.predict_timing)
        self.association_settings = AssociationSettings(
            min_confidence=s.min_confidence, gate_px=s.gate_px, epipolar_gate_px=s.epipolar_gate_px,
            lost_after_frames=s.lost_after_frames, max_jump_m=s.max_jump_m, coast_speed_m=s.coast_speed_m,
            max_point_jump_m=s.max_point_jump_m, bootstrap_margin=s.bootstrap_margin)
        self.triangulation_settings = TriangulationSettings(threshold_px=s.threshold_px)
        # without configured cameras the assembler is built when the first calibration names them
        self.assembler = Assembler(list(s.cameras), self.assembly_settings) if s.cameras else None
        self.cameras: dict[str, Camera] = {}
        self.accepted_versions: dict[str, set[str]] = {}
        self.rig: Rig | None = None
        self.fundamental: np.ndarray | None = None
        self.track = TrackState()
        self.person_id = -1
        self.bootstrap_waited = 0  # frame sets in a row whose bootstrap was not confident enough to commit
        self.local = Counter()
        self.spreads_ns: list[int] = []
        self.waits_ns: list[int] = []  # set decided - first member arrived
        self.assembly_ns: list[int] = []  # push + poll
        self.work_ns: list[int] = []  # person choice + triangulation + message
        self.next_stats_refresh = 0
        self.n_keypoints: int | None = None  # K of the first accepted kp2d; others are rejected
        self.errors_logged = 0
        self.first_seq: dict[str, int] = {}  # per camera, the seq of the first kp2d that arrived (drop accounting)
        self.graph_name, self.graph_toml = graph_from_environment(self.config.name)
        self._publish_stage_config()

    # ------------------------------------------------------------ inputs

    def on_message(self, topic: str, msg) -> None:
        if isinstance(msg, RigCalibration):
            self._merge_calibration(msg)
        elif isinstance(msg, Keypoints2D):
            self._on_keypoints(msg)

    def _merge_calibration(self, msg: RigCalibration) -> None:
        configured = set(self.settings.cameras)
        changed = moved = False
        for cal in msg.cameras:
            if configured and cal.camera not in configured:
                self.count("calib_ignored")
                continue
            try:
                camera = Camera.from_message(cal)
            except ValueError as error:
                self.count("rejects/calib_invalid")
                self.log.warning("calibration of camera %s rejected: %s", cal.camera, error)
                continue
            versions = self.accepted_versions.setdefault(cal.camera, set())
            old = self.cameras.get(cal.camera)
            if old is None or old.content_bytes() != camera.content_bytes():
                self.cameras[cal.camera] = camera
                versions.clear()
                changed = True
                moved |= old is not None
            versions.update({msg.version, Rig((camera,)).version})
        if changed:
            self._rebuild_rig(keep_track=not moved)

    def _rebuild_rig(self, keep_track: bool) -> None:
        """A camera joined (the track stays valid: same world) or one was recalibrated (re-acquire)."""
        names = list(self.settings.cameras) or sorted(self.cameras)
        present = [n for n in names if n in self.cameras]
        self.rig = Rig(tuple(self.cameras[n] for n in present))
        rig_version = self.rig.version
        for versions in self.accepted_versions.values():
            versions.add(rig_version)
        self.fundamental = fundamental_matrices(self.rig.K, self.rig.R, self.rig.t) if len(self.rig) >= 2 else None
        if self.assembler is None:
            self.assembler = Assembler(present, self.assembly_settings)
        else:
            for name in present:
                self.assembler.add_camera(name)
        if not keep_track:
            self.track = TrackState()
        self.publish_state(self.rig.to_message())
        self._publish_stage_config()
        self.log.info("rig %s: %d cameras (%s)", rig_version, len(present), ", ".join(present))

    def _publish_stage_config(self) -> None:
        """The stage configuration as this node sees it, as `stage` state (late joiners get it at once)."""
        cameras = [c.name for c in self.rig.cameras] if self.rig is not None else list(self.settings.cameras)
        self.publish_state(stage_config(
            name=self.graph_name, fps=self.settings.fps, cameras=cameras,
            calib_version=self.rig.version if self.rig is not None else "", graph_toml=self.graph_toml,
            t_ns=self.clock.now_ns()))

    def _on_keypoints(self, msg: Keypoints2D) -> None:
        camera = msg.camera
        if camera in self.first_seq or len(self.first_seq) < 64:  # bounded against made-up camera names
            self.first_seq.setdefault(camera, msg.seq)
        reject = self._reject_reason(msg)
        if reject is not None:
            self.count(f"{reject}/{camera}")
            if self.assembler is None:
                return
        now = time.monotonic_ns()
        if reject is None:
            if self.assembler.push(camera, msg.seq, msg.t_capture_ns, now, payload=msg,
                                   caller_busy_ns=self.busy_ns()) == PushOutcome.UNKNOWN_CAMERA:
                self.count("unknown_camera")
        else:  # it arrived: neither a seq gap nor a camera to wait for
            self.assembler.note_rejected(camera, msg.seq, msg.t_capture_ns, now)
        frame_sets = self.assembler.poll(now)
        self.assembly_ns.append(time.monotonic_ns() - now)
        self._emit(frame_sets, from_tick=False)

    def _reject_reason(self, msg: Keypoints2D) -> str | None:
        """Why a kp2d frame cannot be used (a counter name), or None."""
        if msg.camera not in self.cameras:
            return "no_calib"
        if msg.calib_version not in self.accepted_versions[msg.camera]:
            return "calib_mismatch"
        if msg.persons:
            if self.n_keypoints is None:
                self.n_keypoints = len(msg.persons[0].keypoints)
            if any(len(p.keypoints) != self.n_keypoints for p in msg.persons):
                return "keypoint_count_mismatch"
        return None

    def on_tick(self, now_ns: int) -> None:
        if self.assembler is None:
            return
        now = time.monotonic_ns()
        due = self.assembler.next_deadline_ns()
        if due is not None and due <= now:
            self._emit(self.assembler.poll(now), from_tick=True)
        if now >= self.next_stats_refresh:
            self._refresh_stats()
            self.next_stats_refresh = now + _STATS_REFRESH_NS

    def teardown(self) -> None:
        if self.assembler is not None:
            self._emit(self.assembler.flush(time.monotonic_ns()), from_tick=True)
            self._refresh_stats()

    def queue_depth(self) -> int:
        return self.assembler.pending_count() if self.assembler is not None else 0

    # ------------------------------------------------------------ frame sets

    def _emit(self, frame_sets: list[FrameSet], *, from_tick: bool) -> None:
        for frame_set in frame_sets:
            start = time.perf_counter_ns()
            try:
                points = self._process(frame_set)
            except Exception:  # a bad frame set must not stop the stage: count, log a few, go on
                self.count("frame_set_errors")
                if self.errors_logged < 10:
                    self.errors_logged += 1
                    self.log.exception("frame set at %d ns not processed", frame_set.t_ns)
                continue
            self.work_ns.append(time.perf_counter_ns() - start)
            self.spreads_ns.append(frame_set.spread_ns)
            self.waits_ns.append(frame_set.t_emit_ns - min(f.t_arrival_ns for f in frame_set.frames))
            self.publish(points)
            self._publish_hints(frame_set.t_ns)
            if from_tick:  # no receive in progress: latency from the newest member's arrival
                newest = max(f.t_arrival_ns for f in frame_set.frames)
                self.observe_latency_ns(time.monotonic_ns() - newest)
            self.local["sets"] += 1
            self.local[f"sets/{frame_set.reason}"] += 1

    def _process(self, frame_set: FrameSet) -> Points3D:
        rig, s = self.rig, self.association_settings
        names = rig.names
        messages = [frame_set.frame(name) for name in names]
        persons = [[] if f is None else f.payload.persons for f in messages]
        n_keypoints = self.n_keypoints or mhr70.NUM_KEYPOINTS
        detections = pack_detections(persons, n_keypoints, s.min_confidence)
        committed = True
        if self.track.points is not None and len(self.track.points) == n_keypoints:
            subset = association_keypoints(n_keypoints)
            chosen, _ = choose_by_track(rig.project(self.track.points[subset]), detections, s, subset)
        else:
            self.track = TrackState()
            chosen, committed = self._bootstrap(detections)
        n_chosen = int((chosen >= 0).sum())
        for name, p, c in zip(names, persons, chosen):
            self.local[f"detections/{name}"] += len(p)
            self.local[f"chosen/{name}"] += int(c >= 0)
        pixels, confidence = select_persons(detections, chosen)
        prior = self.track.points if self.settings.use_prior else None
        result = triangulate_robust(pixels, confidence, rig, self.triangulation_settings, prior=prior)
        n_valid = int(result.valid.sum())
        usable = n_valid >= self.settings.min_valid_points
        if not committed:
            usable = False  # a poor frame set: no person to follow yet (see the module docstring)
        elif usable and not consistent_with_track(self.track, result.points, s):
            usable = False  # someone else (e.g. one behind the other in the chosen views): not the subject
            self.local["track_jump"] += 1
        had_track = self.track.points is not None
        self.track = advance_track(self.track, result.points if usable else None,
                                   usable and n_chosen >= s.min_views, s)
        if had_track and self.track.points is None:
            self.local["track_lost"] += 1
        if not usable and committed:
            self.local["unusable"] += 1
        frame_indices = [f.payload.frame_index for f in frame_set.frames]
        return Points3D(
            t_ns=frame_set.t_ns,
            frame_index=int(Counter(frame_indices).most_common(1)[0][0]),
            person_id=self.person_id,
            calib_version=rig.version,
            cameras=list(names),
            sources_seq=np.array([-1 if f is None else f.seq for f in messages], np.int64),
            sync_spread_ns=int(frame_set.spread_ns),
            points=result.points.astype(np.float32),
            n_views=result.n_views.astype(np.uint8),
            inliers=result.inliers.astype(bool),
            reproj_px=result.reproj_px.astype(np.float32),
            confidence=np.clip(result.confidence, 0.0, 1.0).astype(np.float32),
            mean_reproj_px=float(result.mean_reproj_px),
            usable=bool(usable),
            view_params=self._view_params(names, persons, chosen),
        )

    def _view_params(self, names, persons, chosen) -> list[ViewParams]:
        """The estimator parameters of the person chosen in each camera that has them (`Points3D.view_params`)."""
        if not self.settings.view_params:
            return []
        return [ViewParams(camera=name, params=p[c].params)
                for name, p, c in zip(names, persons, chosen) if 0 <= c < len(p) and p[c].params]

    def _publish_hints(self, t_ns: int) -> None:
        """`hint/<cam>` for every camera of the rig when this frame set confirmed the track (not while coasting:
        the capture nodes' hints then age out and their detectors re-acquire)."""
        track = self.track
        if not self.settings.publish_hints or track.points is None or track.frames_lost > 0:
            return
        valid = np.isfinite(track.points).all(axis=1)
        score = float(np.mean(valid))  # share of the keypoints the track holds
        hints = track_hints(self.rig, track.points[None], [self.person_id], [score], t_ns=t_ns,
                            margin=self.settings.hint_margin)
        for hint in hints:
            self.publish(hint)
        self.local["hints_sent"] += len(hints)

    def _bootstrap(self, detections) -> tuple[np.ndarray, bool]:
        """Choose persons without a track (epipolar consistency on undistorted pixels). Returns (chosen (V,) person
        index or -1, whether to commit to them: a confident choice, or one after `bootstrap_wait_sets` poor frame
        sets in a row; see the module docstring)."""
        rig = self.rig
        if self.fundamental is None or not (detections.counts > 0).any():
            return np.full(len(rig), -1, np.int64), True
        keypoints = detections.keypoints[:, :, association_keypoints(detections.keypoints.shape[2])]
        V, P, K, _ = keypoints.shape
        normalised = rig.undistort(keypoints.reshape(V, P * K, 2).astype(np.float64))
        undistorted = np.einsum("vij,vnj->vni", rig.K[:, :2, :2], normalised) + rig.K[:, None, :2, 2]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN persons: NaN off-axis, never chosen first
            off_axis = np.nanmedian(np.linalg.norm(normalised.reshape(V, P, K, 2), axis=-1), axis=-1)
        choice = bootstrap_choice(undistorted.reshape(V, P, K, 2), detections.counts, self.fundamental,
                                  self.association_settings, off_axis=off_axis)
        if (choice.chosen >= 0).sum() < self.association_settings.min_views:
            return choice.chosen, True  # nobody to commit to: the set cannot start a track
        if not choice.confident:
            waited, bound = self.bootstrap_waited, self.settings.bootstrap_wait_sets
            if waited < bound or (waited < 2 * bound and not choice.nearest):
                self.bootstrap_waited += 1
                self.local["bootstrap_waits"] += 1
                return choice.chosen, False
            self.local["bootstrap_forced"] += 1
        self.bootstrap_waited = 0
        self.person_id += 1
        self.local["bootstraps"] += 1
        return choice.chosen, True

    # ------------------------------------------------------------ stats

    def _refresh_stats(self) -> None:
        a = self.assembler
        if a is None:
            return
        for name, cc in a.counters.items():
            for field in ("received", "used", "late", "dropped", "duplicate", "seq_resets", "evicted", "unmatched"):
                self.counters[f"{field}/{name}"] = getattr(cc, field)
            self.gauge(f"sync_offset_ms/{name}", cc.offset_ns / 1e6)
            self.gauge(f"sync_abs_offset_ms/{name}", cc.abs_offset_ns / 1e6)
            self.gauge(f"used_share/{name}", cc.used / cc.received if cc.received else 0.0)
            detections = self.local[f"detections/{name}"]
            self.gauge(f"detections_used_share/{name}", self.local[f"chosen/{name}"] / detections if detections else 0.0)
            self.gauge(f"period_ms/{name}", cc.period_ns / 1e6)
        for name, seq in self.first_seq.items():
            self.counters[f"first_seq/{name}"] = seq
        for key, value in self.local.items():
            if not key.startswith(("detections/", "chosen/")):
                self.counters[key] = value
        self.counters["sets_partial"] = a.sets_partial
        self.gauge("partial_rate", a.sets_partial / a.sets_emitted if a.sets_emitted else 0.0)
        for label, samples in (("sync_spread_ms", self.spreads_ns), ("set_wait_ms", self.waits_ns),
                               ("assembly_ms", self.assembly_ns), ("set_work_ms", self.work_ns)):
            if samples:
                values = np.asarray(samples, np.float64) / 1e6
                self.gauge(f"{label}_p50", float(np.percentile(values, 50)))
                self.gauge(f"{label}_p99", float(np.percentile(values, 99)))
                self.gauge(f"{label}_max", float(values.max()))
                del samples[:-512]
        self.gauge("tracking", float(self.track.points is not None))


def main(argv: list[str]) -> int:
    keep_freed_memory()  # once at start: keeps per-frame temporaries mapped (streamer.triangulation)
    return run_node(Sync, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
