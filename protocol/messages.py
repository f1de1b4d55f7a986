"""Message types of the stage, one dataclass per topic family (protocol/SPEC.md is the prose form).

Units everywhere: times in integer nanoseconds on the stage clock, pixels for 2D, metres
for 3D, world frame for 3D points unless stated. Keypoint layout is MHR-70 (K = 70 on the
wire today; decoders accept any K up to `MAX_KEYPOINTS` as long as it is consistent).

Missing is explicit: NaN coordinates *and* a zero confidence / `n_views < 2` / cleared flag.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar

import numpy as np

from protocol.schema import Arr, ArrMap, Bool, Float, Int, Seq, Str, StrSeq

__all__ = [
    "MAX_CAMERAS",
    "MAX_KEYPOINTS",
    "MAX_PERSONS",
    "MESSAGE_TYPES",
    "BoxHints",
    "CameraCalibration",
    "Heartbeat",
    "Keypoints2D",
    "NodeStats",
    "Person2D",
    "PersonTruth",
    "Points3D",
    "Pose",
    "PoseFlag",
    "RigCalibration",
    "StageConfig",
    "Truth",
    "Verdict",
    "ViewParams",
]

MAX_PERSONS = 16
MAX_KEYPOINTS = 256
MAX_CAMERAS = 64

F32 = ("<f4",)
F32_OR_F64 = ("<f4", "<f8")


class PoseFlag:
    """Per-keypoint state in `Pose.flags` (uint8)."""

    MISSING = 0  # no measurement and no trustworthy prediction
    MEASURED = 1  # fitted to a triangulated point this frame
    PREDICTED = 2  # filled by the body model / filter (coasting)


class Verdict:
    """Fit verdicts in `Pose.verdict`."""

    GOOD = "good"
    POOR = "poor"
    UNUSABLE = "unusable"
    STALE = "stale"  # no fresh input: the last pose is held
    ALL = (GOOD, POOR, UNUSABLE, STALE)


@dataclass(slots=True)
class Person2D:
    """One detected person in one image.

    box: (4,) float32, pixels, x0 y0 x1 y1.
    keypoints: (K, 2) float32, pixels (distorted image), NaN where missing.
    confidence: (K,) float32 in [0, 1], 0 where missing.
    params: estimator body-model parameters (MHR from SAM-3D Body: body_pose (133,),
        hand (108,), shape (45,), scale (28,), global_rot (3,), cam_t (3,)); may be empty.
    """

    box: Annotated[np.ndarray, Arr(F32, (4,))]
    score: Annotated[float, Float()]
    keypoints: Annotated[np.ndarray, Arr(F32, ("K", 2), allow_nan=True)]
    confidence: Annotated[np.ndarray, Arr(F32, ("K",))]
    params: Annotated[dict, ArrMap()] = field(default_factory=dict)
    track_id: Annotated[int, Int(-1, 2**31 - 1)] = -1


@dataclass(slots=True)
class Keypoints2D:
    """Topic `kp2d/<camera>`: every person a capture node found in one frame of one camera."""

    KIND: ClassVar[str] = "kp2d"
    camera: Annotated[str, Str(64)]
    seq: Annotated[int, Int(0)]
    frame_index: Annotated[int, Int(0)]
    t_capture_ns: Annotated[int, Int()]
    image_size: Annotated[np.ndarray, Arr(("<i4",), (2,))]  # width, height in pixels
    calib_version: Annotated[str, Str(64)]
    persons: Annotated[list, Seq(Person2D, MAX_PERSONS)]
    t_send_ns: Annotated[int, Int()] = 0


@dataclass(slots=True)
class BoxHints:
    """Topic `hint/<camera>`: the tracked persons' boxes in one camera, re-projected from the 3D track.

    Published by the sync node per camera per frame set while the track is confirmed (latest-value
    data: only the newest matters); a capture node uses them instead of running a person detector.
    t_ns: stage-clock time of the frame set the track comes from. calib_version: version of the
    one-camera rig of `camera` the boxes were projected with (`Rig((camera,)).version`).
    track_ids: (P,) int64. boxes: (P, 4) float32 pixels x0 y0 x1 y1, NaN row = not visible in this
    camera. scores: (P,) float32 in [0, 1], the track's confidence.
    """

    KIND: ClassVar[str] = "hint"
    camera: Annotated[str, Str(64)]
    t_ns: Annotated[int, Int()]
    calib_version: Annotated[str, Str(64)]
    track_ids: Annotated[np.ndarray, Arr(("<i8",), ("P",))]
    boxes: Annotated[np.ndarray, Arr(F32, ("P", 4), allow_nan=True)]
    scores: Annotated[np.ndarray, Arr(F32, ("P",))]
    t_send_ns: Annotated[int, Int()] = 0


@dataclass(slots=True)
class ViewParams:
    """The estimator body-model parameters of the person a `Points3D` used in one camera.

    camera: one of the Points3D's `cameras`. params: that camera's `Person2D.params`, as the
    estimator sent them (MHR layout, camera frame, see Person2D); never empty.
    """

    camera: Annotated[str, Str(64)]
    params: Annotated[dict, ArrMap()]


@dataclass(slots=True)
class Points3D:
    """Topic `points3d`: one triangulated person from one frame set.

    cameras: the V camera ids, in the order of the V axis below.
    sources_seq: (V,) int64, the `seq` of the kp2d message used per camera, -1 if absent.
    points: (K, 3) float32, metres, world frame, NaN where missing.
    n_views: (K,) uint8, inlier views used per point (< 2 means missing).
    inliers: (K, V) bool. reproj_px: (K, V) float32 pixels, NaN where not observed.
    confidence: (K,) float32 in [0, 1], 0 where missing.
    view_params: per camera whose chosen person came with estimator parameters, a `ViewParams`
        (at most one per camera; empty when the estimator sends none), for the fitter's initialisation.
    """

    KIND: ClassVar[str] = "points3d"
    t_ns: Annotated[int, Int()]
    frame_index: Annotated[int, Int(0)]
    person_id: Annotated[int, Int(-1, 2**31 - 1)]
    calib_version: Annotated[str, Str(64)]
    cameras: Annotated[list, StrSeq(MAX_CAMERAS, 64)]
    sources_seq: Annotated[np.ndarray, Arr(("<i8",), ("V",))]
    sync_spread_ns: Annotated[int, Int(0)]
    points: Annotated[np.ndarray, Arr(F32, ("K", 3), allow_nan=True)]
    n_views: Annotated[np.ndarray, Arr(("|u1",), ("K",))]
    inliers: Annotated[np.ndarray, Arr(("|b1",), ("K", "V"))]
    reproj_px: Annotated[np.ndarray, Arr(F32, ("K", "V"), allow_nan=True)]
    confidence: Annotated[np.ndarray, Arr(F32, ("K",))]
    mean_reproj_px: Annotated[float, Float(allow_nan=True)]
    usable: Annotated[bool, Bool()]
    t_send_ns: Annotated[int, Int()] = 0
    view_params: Annotated[list, Seq(ViewParams, MAX_CAMERAS)] = field(default_factory=list)


@dataclass(slots=True)
class Pose:
    """Topic `pose`: the fitted body of one person. Never a NaN in anything shipped.

    params: (P,) float32, the body model's parameter vector (layout named by body_model).
    keypoints: (K, 3) float32, metres, world frame (right-handed; the rig's up axis).
    joint_rotations: (J, 4) float32, local joint rotations, quaternion XYZW.
    world_from_root: (4, 4) float32, rigid transform of the model root into the world, metres.
    flags: (K,) uint8 PoseFlag per keypoint.
    """

    KIND: ClassVar[str] = "pose"
    t_ns: Annotated[int, Int()]
    frame_index: Annotated[int, Int(0)]
    person_id: Annotated[int, Int(-1, 2**31 - 1)]
    body_model: Annotated[str, Str(64)]
    params: Annotated[np.ndarray, Arr(F32, (None,))]
    keypoints: Annotated[np.ndarray, Arr(F32, ("K", 3))]
    joint_rotations: Annotated[np.ndarray, Arr(F32, ("J", 4))]
    world_from_root: Annotated[np.ndarray, Arr(F32, (4, 4))]
    flags: Annotated[np.ndarray, Arr(("|u1",), ("K",))]
    loss: Annotated[float, Float(allow_nan=True)]
    data_loss: Annotated[float, Float(allow_nan=True)]
    n_valid: Annotated[int, Int(0, MAX_KEYPOINTS)]
    verdict: Annotated[str, Str(16)]
    iterations: Annotated[int, Int(0)]
    t_input_ns: Annotated[int, Int()] = 0  # t_send_ns of the points3d that produced it
    t_send_ns: Annotated[int, Int()] = 0


@dataclass(slots=True)
class NodeStats:
    """Topic `stats/<node>`: a node's health, published about once a second.

    latency_ms: (3,) float32, p50 p95 p99 of the node's own input->output latency, ms.
    counters: cumulative counts (drops, rejects by reason, frames...), name -> int.
    gauges: current values (fps per input, sync spread, reprojection error...), name -> float.
    """

    KIND: ClassVar[str] = "stats"
    node: Annotated[str, Str(64)]
    t_ns: Annotated[int, Int()]
    fps: Annotated[float, Float()]
    latency_ms: Annotated[np.ndarray, Arr(F32, (3,), allow_nan=True)]
    queue_depth: Annotated[int, Int(0)]
    clock_offset_ns: Annotated[int, Int()]
    counter_names: Annotated[list, StrSeq(256, 96)]
    counter_values: Annotated[np.ndarray, Arr(("<i8",), ("C",))]
    gauge_names: Annotated[list, StrSeq(256, 96)]
    gauge_values: Annotated[np.ndarray, Arr(("<f8",), ("G",), allow_nan=True)]


@dataclass(slots=True)
class PersonTruth:
    """Ground truth of one synthetic person: keypoints (K, 3) float32 metres, world; params (P,)."""

    person_id: Annotated[int, Int(-1, 2**31 - 1)]
    keypoints: Annotated[np.ndarray, Arr(F32, ("K", 3))]
    params: Annotated[np.ndarray, Arr(F32, (None,))]


@dataclass(slots=True)
class Truth:
    """Topic `truth`: ground truth of the synthetic stage at one instant."""

    KIND: ClassVar[str] = "truth"
    t_ns: Annotated[int, Int()]
    frame_index: Annotated[int, Int(0)]
    persons: Annotated[list, Seq(PersonTruth, MAX_PERSONS)]


@dataclass(slots=True)
class CameraCalibration:
    """One camera: K (3, 3) pixels; dist (D,) OpenCV order (D in 0..14);
    R (3, 3) and t (3,) world->camera, metres; image_size (2,) width, height."""

    camera: Annotated[str, Str(64)]
    image_size: Annotated[np.ndarray, Arr(("<i4",), (2,))]
    K: Annotated[np.ndarray, Arr(("<f8",), (3, 3))]
    dist: Annotated[np.ndarray, Arr(("<f8",), (None,))]
    R: Annotated[np.ndarray, Arr(("<f8",), (3, 3))]
    t: Annotated[np.ndarray, Arr(("<f8",), (3,))]


@dataclass(slots=True)
class RigCalibration:
    """Topic `calib`: the current rig, served to late joiners (last-value). version = content hash."""

    KIND: ClassVar[str] = "calib"
    version: Annotated[str, Str(64)]
    cameras: Annotated[list, Seq(CameraCalibration, MAX_CAMERAS)]


MAX_GRAPH_TOML = 32 * 1024  # characters; the header (which carries it) is capped at 64 KiB


@dataclass(slots=True)
class StageConfig:
    """Topic `stage`: the stage configuration, last-value state served to late joiners (the sync node's).

    name: the launch graph's name (the node's name outside a graph). version: content hash of every
    other field but t_ns. fps: nominal camera rate, frames/s. cameras: camera ids in rig order.
    calib_version: the `RigCalibration.version` this configuration goes with ("" before any).
    graph_toml: the launch graph file as the node was started with it ("" outside a graph).
    """

    KIND: ClassVar[str] = "stage"
    name: Annotated[str, Str(64)]
    version: Annotated[str, Str(64)]
    t_ns: Annotated[int, Int()]
    fps: Annotated[float, Float()]
    cameras: Annotated[list, StrSeq(MAX_CAMERAS, 64)]
    calib_version: Annotated[str, Str(64)]
    graph_toml: Annotated[str, Str(MAX_GRAPH_TOML)] = ""


@dataclass(slots=True)
class Heartbeat:
    """Topic `hb/<node>`: sent by a publisher when it has been idle for a heartbeat interval."""

    KIND: ClassVar[str] = "hb"
    node: Annotated[str, Str(64)]
    t_ns: Annotated[int, Int()]
    seq: Annotated[int, Int(0)]


MESSAGE_TYPES: dict[str, type] = {
    cls.KIND: cls for cls in (Keypoints2D, BoxHints, Points3D, Pose, NodeStats, Truth, RigCalibration, StageConfig,
                          Heartbeat)
}
