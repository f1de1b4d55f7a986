"""Node `capture`: camera frames -> estimator -> `kp2d/<cam>`, one process for one or several cameras.

Per camera a source (video file, V4L2 webcam, image folder with timestamps, a recorded take, or one
camera of the synthetic stage) is read by a latest-frame grabber thread: when the estimator is slower than the cameras, stale frames
are dropped and counted (`dropped/<cam>`), never queued. Each tick the newest frame of every camera
goes to the estimator as one batch (SAM-3D Body on a GPU, MediaPipe on the CPU), and every person
found is published on `kp2d/<cam>` with the capture time on the stage clock. Replayed takes and the
synthetic stage's observation model carry their persons already (estimators `replay`, `synthetic`). The node publishes its cameras' calibration as
last-value state on `calib` and, in stats, per camera: fps, drops, estimator latency.

Box hints (`use_track_hints`): the node subscribes to `hint/<cam>` of its cameras on its inputs (the
sync node; an input edge sync -> capture in the graph) and keeps the newest hint per camera whose
calibration matches its own. `BoxPolicy` then gives the estimator the hinted boxes, and the person
detector (the ONNX one, or the estimator's own search without one) runs only without a fresh hint
(acquire, re-acquire) and every `redetect_interval_s` to find newcomers. The synthetic stage stands
in for a box-driven estimator: with a hint it reports only the persons inside the hinted boxes (with
their track ids), everyone when the detector ran. Stats: `hinted_frames`, `detector_runs`.

Pipelining (`pipeline_estimates`): each tick submits the new frame set (`Estimator.submit`) before taking the
previous one's persons, so an estimator whose submit returns before its GPU is done (sam3d "fast") works on two
frame sets at once; each is published one frame set later (after 0.1 s at most when no next one comes, and at
the end of the sources or on stopping). Other estimators compute in submit: no gain, one frame set of delay.
`frame_sets_per_call = k` gathers k frame sets into one estimator call (sam3d "fast": k times the crops per
forward, more images/s; the first set waits for the k-th, and a partial call goes after 0.1 s or at the end).

Recovery: a camera whose source fails ends its stream (counted as `source_errors/<cam>`, logged);
the others continue. With `stop_at_end` the node stops once every source has ended; if a live camera
(webcam) failed, it then exits non-zero so the launcher restarts it and the device is opened again.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from protocol import BoxHints, Keypoints2D, RigCalibration
from streamer.calibration import Rig
from streamer.capture.boxes import BoxPolicy, merge_detections
from streamer.capture.estimator import Estimator, View
from streamer.capture.hints import accept_hint, hint_calib_version, persons_in_boxes
from streamer.capture.latest import LatestFrameGrabber, SequentialReader
from streamer.capture.sources import (
    Frame,
    FrameSource,
    ImageFolderSource,
    ReplaySource,
    SourceError,
    SyntheticSource,
    VideoFileSource,
    WebcamSource,
)
from streamer.node import Node, run_node

__all__ = ["Capture", "Settings", "build_estimator", "build_synthetic_stage", "main", "open_source"]


PIPELINE_FLUSH_NS = 100_000_000  # pipeline_estimates: publish a frame set anyway once no next one came for 0.1 s


@dataclass(frozen=True)
class InFlight:
    """Frame sets submitted to the estimator in one call: their (camera, frame) pairs in view order, the
    estimator's pending result (`.result()` -> persons per view), when it was submitted (monotonic ns) and how
    long submitting took (ns)."""

    frames: list[tuple[str, Frame]]
    pending: Any
    submitted_at_ns: int
    submit_cost_ns: int


@dataclass(frozen=True)
class Settings:
    cameras: tuple[str, ...] = ("cam0",)  # camera ids (topics kp2d/<id>); must match the calibration's names
    source: Literal["video", "webcam", "images", "replay", "synthetic"] = "video"
    sources: tuple[str, ...] = ()  # one per camera: video file, webcam device ("0", "/dev/video0"), image folder,
    #                                take; unused for "synthetic" (cameras are the stage's: cam0, cam1, ...)
    sources_dir: str = ""  # relative entries of `sources` are resolved against this folder
    calibration_file: str = ""  # rig calibration (any format streamer.calibration_io reads); required for sam3d
    estimator: Literal["mediapipe", "sam3d", "replay", "synthetic"] = "mediapipe"  # replay/synthetic: keypoints as given
    pace: bool = True  # file sources released at their own frame times (like a camera); False: every frame, in order, as fast as the estimator goes
    stop_at_end: bool = True  # stop the node when every file source has ended
    start_delay_s: float = 0.0  # wait this long before the first frame (lets subscribers of file sources connect)
    warmup: bool = True  # run the estimator once on a blank image per camera before the sources start
    pipeline_estimates: bool = False  # publish frame set t once t+1 is submitted: a GPU estimator (sam3d "fast")
    #                                   then works on both at once (H200: +20 % images/s) for one frame set of latency
    frame_sets_per_call: int = 1  # frame sets gathered into one estimator call: a k-times larger GPU batch (sam3d
    #                               "fast": more images/s), the first set waiting up to k-1 frame periods for the rest
    webcam_width_px: int = 0  # 0: the driver's default
    webcam_height_px: int = 0
    webcam_fps: float = 0.0
    sam3d_checkpoint_path: str = ""  # <hf download>/model.ckpt (model_config.yaml beside it)
    sam3d_mhr_path: str = ""  # <hf download>/assets/mhr_model.pt
    sam3d_device: str = "cuda"
    sam3d_inference: Literal["full", "body", "fast"] = "full"  # fast: body-only, every camera's crops in one
    # forward, compiled backbone, CUDA-graph TF32 decoder (streamer/capture/sam3d_fast.py; README "SAM-3D Body on a GPU")
    sam3d_decoder_tf32: bool = True  # fast path on a GPU: TF32 decoder matmuls (2D within ~0.1 px); False: float32
    sam3d_cpu_threads: int = 4  # torch's CPU threads in this process (0: torch's default, one per core): the GPU
    #                             does the work; on a 16-core H200 host the default burnt 6x the CPU for no gain
    detector: Literal["none", "onnx"] = "none"  # finds persons when no track hint is fresh (none: the estimator's own search)
    detector_onnx_path: str = ""  # user-supplied ONNX person detector (see streamer/capture/onnx_detector.py)
    detector_device: str = "cpu"  # "cuda" uses onnxruntime-gpu when installed
    detector_score: float = 0.5
    use_track_hints: bool = False  # boxes from the sync node's 3D track (hint/<cam>; give the sync node as an input)
    max_hint_age_s: float = 0.2
    redetect_interval_s: float = 2.0
    mediapipe_min_visibility: float = 0.1
    # synthetic stage (streamer/synthetic): every capture process of one stage must use the same values
    synth_cameras: int = 4  # cameras on the ring
    synth_fps: float = 60.0
    synth_seed: int = 0
    synth_distractor: bool = True  # a second person walking around the subject
    synth_noise_px: float = 2.0
    synth_outlier_rate: float = 0.02


def open_source(kind: str, spec: str, camera: str, *, t0_ns: int, clock_ns, settings: Settings) -> FrameSource:
    """The frame source of one camera (`spec` as in `Settings.sources`)."""
    if kind == "webcam":
        device: int | str = int(spec) if spec.isdigit() else spec
        return WebcamSource(device, width=settings.webcam_width_px, height=settings.webcam_height_px,
                            fps=settings.webcam_fps, clock_ns=clock_ns)
    path = Path(spec)
    if not path.is_absolute() and settings.sources_dir:
        path = Path(settings.sources_dir) / path
    if kind == "video":
        return VideoFileSource(path, t0_ns=t0_ns)
    if kind == "images":
        return ImageFolderSource(path, t0_ns=t0_ns)
    if kind == "replay":
        return ReplaySource(path, camera, t0_ns=t0_ns)
    raise ValueError(f"capture: unknown source kind {kind!r}")


def build_synthetic_stage(settings: Settings):
    """The synthetic stage of the settings (frame 0 at stage time 1 s, so frame i is due at the same stage time
    in every process)."""
    from streamer.synthetic import ObservationSettings, RigSettings, StageSettings, SyntheticStage

    return SyntheticStage(StageSettings(
        rig=RigSettings(cameras=settings.synth_cameras, fps=settings.synth_fps), seed=settings.synth_seed,
        distractor=settings.synth_distractor,
        observation=ObservationSettings(noise_px=settings.synth_noise_px, outlier_rate=settings.synth_outlier_rate)))


def build_estimator(settings: Settings) -> tuple[Estimator | None, object | None]:
    """(estimator, ONNX detector or None) for the settings; None estimator for replayed keypoints."""
    detector = None
    if settings.detector == "onnx":
        from streamer.capture.onnx_detector import OnnxPersonDetector

        detector = OnnxPersonDetector(settings.detector_onnx_path, device=settings.detector_device,
                                      score_threshold=settings.detector_score)
    if settings.estimator in ("replay", "synthetic"):
        return None, detector
    if settings.estimator == "mediapipe":
        from streamer.capture.mediapipe_pose import MediaPipeEstimator

        return MediaPipeEstimator(min_visibility=settings.mediapipe_min_visibility), detector
    from streamer.capture.sam3d import build_sam3d_body

    # upstream's own detector (ViTDet, built by its repo's tools/build_detector.py) can be given to
    # build_sam3d_body(human_detector=...) by code that builds the estimator itself
    upstream = build_sam3d_body(settings.sam3d_checkpoint_path, settings.sam3d_mhr_path, device=settings.sam3d_device)
    return sam3d_estimator(upstream, settings), detector


def sam3d_estimator(upstream, settings: Settings):
    """The SAM-3D Body estimator for a built upstream `SAM3DBodyEstimator`: the stock call per view, or the fast
    path (`sam3d_inference = "fast"`) serving every camera of this process in one batched forward, with the graphs
    recorded for one crop per camera and gathered frame set during the node's warm-up; views without boxes go
    through the stock call."""
    import torch

    from streamer.capture.sam3d import Sam3dEstimator

    if settings.sam3d_cpu_threads > 0:
        torch.set_num_threads(settings.sam3d_cpu_threads)
    if settings.sam3d_inference != "fast":
        return Sam3dEstimator(upstream, inference_type=settings.sam3d_inference, bbox_thr=settings.detector_score)
    from streamer.capture.sam3d_fast import FastBodyEstimator, FastSam3dEstimator

    on_gpu = str(settings.sam3d_device).startswith("cuda")
    crops_per_call = len(settings.cameras) * settings.frame_sets_per_call
    fast = FastBodyEstimator(upstream.model, cuda_graphs=on_gpu, compile_backbone=on_gpu, graph_decoder=on_gpu,
                             decoder_tf32=on_gpu and settings.sam3d_decoder_tf32, batch_sizes=(crops_per_call,))
    return FastSam3dEstimator(fast, upstream, bbox_thr=settings.detector_score)


class Capture(Node):
    """See module docstring."""

    Settings = Settings
    INPUT_TOPICS = ()

    def input_topics(self) -> tuple[str, ...]:
        return tuple(f"hint/{c}" for c in self.settings.cameras) if self.settings.use_track_hints else ()

    def setup(self) -> None:
        s = self.settings
        if s.sam3d_cpu_threads < 0:
            raise ValueError(f"capture {self.name}: sam3d_cpu_threads must be >= 0, got {s.sam3d_cpu_threads}")
        if s.frame_sets_per_call < 1:
            raise ValueError(f"capture {self.name}: frame_sets_per_call must be >= 1, got {s.frame_sets_per_call}")
        if not s.cameras or (s.source != "synthetic" and len(s.sources) != len(s.cameras)):
            raise ValueError(f"capture {self.name}: give one entry of `sources` per camera "
                             f"({len(s.cameras)} cameras, {len(s.sources)} sources)")
        for kind in ("replay", "synthetic"):
            if (s.estimator == kind) != (s.source == kind):
                raise ValueError(f"capture {self.name}: estimator {kind!r} goes with source {kind!r} (and only with it)")
        self.rig: Rig | None = None
        self.calib: RigCalibration | None = None
        self.stage = build_synthetic_stage(s) if s.source == "synthetic" else None
        if self.stage is not None:
            self.rig = self.stage.rig.subset(list(s.cameras))
            self.calib = self.rig.to_message()
            self.publish_state(self.calib)
        elif s.calibration_file:
            from streamer.calibration_io import load_calibration

            self.rig = load_calibration(s.calibration_file).subset(list(s.cameras))
            self.calib = self.rig.to_message()
            self.publish_state(self.calib)
        elif s.estimator == "sam3d":
            raise ValueError(f"capture {self.name}: estimator 'sam3d' needs calibration_file (its K goes to the model)")
        self.estimator, self.detector = build_estimator(s)
        self.policy = BoxPolicy(use_hints=s.use_track_hints, max_hint_age_s=s.max_hint_age_s,
                                redetect_interval_s=s.redetect_interval_s)
        if s.warmup and self.estimator is not None:
            self._warm_up()
        if s.start_delay_s > 0:
            time.sleep(s.start_delay_s)
        t0_ns = self.clock.now_ns()
        self.grabbers: dict[str, LatestFrameGrabber | SequentialReader] = {}
        for camera, spec in zip(s.cameras, s.sources or [""] * len(s.cameras)):
            if self.stage is not None:
                source = SyntheticSource(self.stage, camera, realtime=s.pace, clock_ns=self.clock.now_ns)
            else:
                source = open_source(s.source, spec, camera, t0_ns=t0_ns, clock_ns=self.clock.now_ns, settings=s)
            if self.calib is None and isinstance(source, ReplaySource) and source.calibration is not None:
                self.rig = Rig.from_message(source.calibration).subset(list(s.cameras))
                self.calib = self.rig.to_message()
                self.publish_state(self.calib)
            if isinstance(source, SyntheticSource) or not (s.pace or source.live):
                # offline files: every frame in order; the synthetic stage paces itself on the stage clock and
                # skips to the current frame when behind, so it is read in the loop the moment it is due
                # (`_due_cameras`: the earliest exposure among the cameras first)
                self.grabbers[camera] = SequentialReader(source)
            else:
                self.grabbers[camera] = LatestFrameGrabber(source, pace=not source.live).start()
        self.hints: dict[str, BoxHints] = {}
        self.hint_versions = ({c: hint_calib_version(self.rig.camera(c)) for c in s.cameras}
                              if self.rig is not None else {})
        self.seq = dict.fromkeys(s.cameras, 0)
        self.published = dict.fromkeys(s.cameras, 0)
        self.window_start_ns = time.monotonic_ns()
        self.tick_interval_s = 0.002
        self.in_flight: InFlight | None = None  # the submitted call not yet published (pipeline_estimates)
        self.gathered: list[tuple[str, Frame, View]] = []  # frame sets waiting for the next call (frame_sets_per_call)
        self.gathered_sets = 0
        self.gathering_since_ns = 0  # monotonic ns of the first gathered set

    def on_message(self, topic: str, msg) -> None:
        if not isinstance(msg, BoxHints) or msg.camera not in self.seq:  # prefix hint/cam1 also matches cam10
            return
        rejected = accept_hint(self.hints.get(msg.camera), msg, self.hint_versions.get(msg.camera))
        if rejected is not None:
            self.count(f"{rejected}/{msg.camera}")
            return
        self.hints[msg.camera] = msg
        self.count(f"hints/{msg.camera}")

    def _warm_up(self) -> None:
        """First calls are slow (graph set-up, CUDA context, kernels): pay them before frames are due."""
        start = time.monotonic_ns()
        size = {c: self.rig.camera(c).image_size if self.rig is not None else (640, 480) for c in self.settings.cameras}
        views = [View(c, np.zeros((h, w, 3), np.uint8), self._K(c, (w, h))) for c, (w, h) in size.items()]
        self.estimator.estimate(views)  # nobody on a blank image: no tracking state is left behind
        self.log.info("estimator warmed up in %.1f s", (time.monotonic_ns() - start) / 1e9)

    def _K(self, camera: str, image_size: tuple[int, int]) -> np.ndarray:
        return self.rig.camera(camera).K if self.rig is not None else self._default_K(image_size)

    def _default_K(self, view_size: tuple[int, int]) -> np.ndarray:
        width, height = view_size
        return np.array([[max(width, height), 0, width / 2], [0, max(width, height), height / 2], [0, 0, 1.0]])

    def _view(self, camera: str, frame: Frame) -> View:
        K = self._K(camera, frame.image_size)
        hinted, run_detector = self.policy.plan(camera, frame.t_capture_ns, self.hints.get(camera), frame.image_size)
        boxes = scores = track_ids = None
        if hinted is not None:
            boxes, scores, track_ids = hinted
        if self.detector is not None and run_detector:
            det_boxes, det_scores = self.detector.detect(frame.image)
            if boxes is None:
                boxes, scores, track_ids = det_boxes, det_scores, np.full(len(det_boxes), -1, np.int64)
            else:  # while tracked: add only the people no hint covers
                boxes, scores, track_ids = merge_detections(boxes, scores, track_ids, det_boxes, det_scores)
        if boxes is None or (self.detector is not None and run_detector):  # a person search ran on this frame
            self.count("detector_runs")
        if hinted is not None:
            self.count("hinted_frames")
        return View(camera, frame.image, K, boxes=boxes, box_scores=scores, track_ids=track_ids)

    def _due_cameras(self) -> list[str]:
        """Cameras whose frame can be read now. Synthetic cameras are read in the loop (no thread): wait for
        the earliest exposure among them, then take every one that is due, so one camera's wait never
        delays another's frame (reading them in turn locked a camera up to a period behind another)."""
        due = {c: g.source.next_due_ns() for c, g in self.grabbers.items() if isinstance(g.source, SyntheticSource)}
        timed = [t for t in due.values() if t is not None]
        if timed:
            wait_ns = min(timed) - self.clock.now_ns()
            if wait_ns > 0:
                time.sleep(wait_ns / 1e9)
        now = self.clock.now_ns()
        return [c for c in self.grabbers if c not in due or due[c] is None or due[c] <= now]

    def on_tick(self, now_ns: int) -> None:
        frames = {}
        for camera in self._due_cameras():
            frame = self.grabbers[camera].latest(timeout_s=0)
            if frame is not None:
                frames[camera] = frame
        image_frames = {c: f for c, f in frames.items() if f.image is not None}
        persons = {c: f.persons for c, f in frames.items() if f.image is None}
        if self.stage is not None and self.settings.use_track_hints:
            persons = {c: self._synthetic_persons(c, frames[c]) for c in persons}
        for camera, found in persons.items():
            self._publish(camera, frames[camera], found or [])
        if image_frames:
            if not self.gathered:
                self.gathering_since_ns = time.monotonic_ns()
            self.gathered += [(c, f, self._view(c, f)) for c, f in image_frames.items()]
            self.gathered_sets += 1
        finished = None
        waited_ns = time.monotonic_ns() - self.gathering_since_ns
        if self.gathered and (self.gathered_sets >= self.settings.frame_sets_per_call or waited_ns > PIPELINE_FLUSH_NS):
            submitted = self._submit_gathered()  # a partial call too once its first set has waited long enough
            if self.settings.pipeline_estimates:
                finished, self.in_flight = self.in_flight, submitted
            else:
                finished = submitted
        elif (not image_frames and self.in_flight is not None
              and time.monotonic_ns() - self.in_flight.submitted_at_ns > PIPELINE_FLUSH_NS):
            finished, self.in_flight = self.in_flight, None  # no next frame set came: do not hold this one
        if finished is not None:
            self._publish_estimated(finished)
        self._report(now_ns)
        if self.settings.stop_at_end and all(g.ended for g in self.grabbers.values()):
            self.log.info("every source has ended: stopping")
            self._flush_in_flight()
            self.stop()

    def _submit_gathered(self) -> InFlight:
        """Submit every gathered frame set's views in one estimator call."""
        start = time.monotonic_ns()
        pending = self.estimator.submit([view for _, _, view in self.gathered])
        submitted = InFlight([(c, f) for c, f, _ in self.gathered], pending, start, time.monotonic_ns() - start)
        self.gauge("estimator_batch", len(self.gathered))
        self.gathered, self.gathered_sets = [], 0
        return submitted

    def _publish_estimated(self, done: InFlight) -> None:
        """Wait for a submitted call's persons and publish its frames. `estimator_ms`: the node's time in the
        estimator for this call (submitting it plus waiting for its result)."""
        start = time.monotonic_ns()
        found = done.pending.result()
        self.gauge("estimator_ms", (done.submit_cost_ns + time.monotonic_ns() - start) / 1e6)
        for (camera, frame), persons in zip(done.frames, found):
            self._publish(camera, frame, persons or [])

    def _flush_in_flight(self) -> None:
        """Publish the call in flight, then the gathered frame sets (submitted now), oldest first."""
        calls = [self.in_flight] if self.in_flight is not None else []
        self.in_flight = None
        if self.gathered:
            calls.append(self._submit_gathered())
        for done in calls:
            self._publish_estimated(done)

    def _synthetic_persons(self, camera: str, frame: Frame) -> list:
        """The stage's persons as a box-driven estimator would report them under the box policy."""
        hinted, run_detector = self.policy.plan(camera, frame.t_capture_ns, self.hints.get(camera), frame.image_size)
        if run_detector:
            self.count("detector_runs")
        if hinted is None:
            return frame.persons or []
        self.count("hinted_frames")
        boxes, _, track_ids = hinted
        return persons_in_boxes(frame.persons or [], boxes, track_ids, keep_unmatched=run_detector)

    def _publish(self, camera: str, frame: Frame, persons: list) -> None:
        msg = Keypoints2D(camera=camera, seq=self.seq[camera], frame_index=frame.index,
                          t_capture_ns=frame.t_capture_ns, image_size=np.array(frame.image_size, np.int32),
                          calib_version=self.calib.version if self.calib is not None else "", persons=persons)
        self.publish(msg)
        self.observe_latency_ns(max(0, self.clock.now_ns() - frame.t_capture_ns))
        self.seq[camera] += 1
        self.published[camera] += 1
        self.count(f"frames/{camera}")
        self.count(f"persons/{camera}", len(persons))

    def _report(self, now_ns: int) -> None:
        elapsed_ns = time.monotonic_ns() - self.window_start_ns
        if elapsed_ns < 1_000_000_000:
            return
        for camera, grabber in self.grabbers.items():
            self.gauge(f"fps/{camera}", self.published[camera] * 1e9 / elapsed_ns)
            if isinstance(grabber.source, SyntheticSource):
                self.counters[f"skipped/{camera}"] = grabber.source.skipped
                self.counters[f"stage_drops/{camera}"] = grabber.source.stage_drops
            self.counters[f"dropped/{camera}"] = grabber.dropped
            self.counters[f"grabbed/{camera}"] = grabber.grabbed
            if grabber.error is not None:
                self.counters[f"source_errors/{camera}"] = 1
            self.published[camera] = 0
        self.window_start_ns = time.monotonic_ns()

    def queue_depth(self) -> int:
        return sum(g.backlog for g in getattr(self, "grabbers", {}).values())

    def teardown(self) -> None:
        self._flush_in_flight()
        self._report(self.clock.now_ns())
        for camera, grabber in self.grabbers.items():
            grabber.stop()
            self.counters[f"dropped/{camera}"] = grabber.dropped
            self.counters[f"grabbed/{camera}"] = grabber.grabbed
        if self.estimator is not None:
            self.estimator.close()
        failed = {c: g.error for c, g in self.grabbers.items() if g.error is not None and g.source.live}
        if failed:  # exit code 1: the launcher restarts the node, which opens the cameras again
            raise SourceError(f"capture {self.name}: live camera(s) failed: "
                              + "; ".join(f"{c}: {e}" for c, e in failed.items()))


def main(argv: list[str]) -> int:
    return run_node(Capture, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
