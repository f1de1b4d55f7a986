"""SAM-3D Body adapter: upstream `sam_3d_body` (facebookresearch/sam-3d-body, installed by the user) -> Person2D.

Upstream contract used here, exactly (reference: ../shared/reference/sam3d-body-and-mhr.md §1-4):
- build: `model, cfg = load_sam_3d_body(checkpoint_path, device, mhr_path)` (reads `model_config.yaml`
  beside the checkpoint or in its parent folder), then `SAM3DBodyEstimator(model, cfg, human_detector=...)`.
- per image: `process_one_image(img_rgb, bboxes=(N, 4) xyxy or None, cam_int=(1, 3, 3) torch tensor,
  bbox_thr=..., inference_type=...)` -> one dict per box, in box order. Without boxes the optional
  upstream detector runs (no detector: the whole image is one box).
- The final `pred_keypoints_2d` of "full" mode is projected about the image centre, not K's principal
  point, so this adapter re-projects `pred_keypoints_3d + pred_cam_t` with the calibrated K
  (the same K the model was given) for every person. No lens distortion is applied: the model
  explains the distorted image with a pinhole camera, so its projection already lands on the
  image's (distorted) pixels.

Upstream has no multi-image call (issues #37, #116), so a batch of views from N cameras is a loop
over views with one model (`infer_sam3d_batch`); model building (`build_sam3d_body`) and the
per-batch call are separate small functions so a faster batch path (issue 9) can replace the loop.

Upstream boxes carry no score: a person from upstream's own detector gets score 1.0 (it passed the
detector's `bbox_thr`); a person from a hint or ONNX detector box keeps that box's score.
Keypoint confidence is 1 where the keypoint is in front of the camera (SAM-3D Body gives no
per-keypoint confidence), else 0 with NaN pixels.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protocol.messages import Person2D
from streamer.capture.estimator import Estimator, View

__all__ = [
    "PARAM_KEYS",
    "Sam3dEstimator",
    "Sam3dUnavailable",
    "build_sam3d_body",
    "check_sam3d_files",
    "infer_sam3d_batch",
    "person_from_sam3d",
    "project_camera_points",
]

log = logging.getLogger(__name__)

# Person2D.params key -> (upstream output key, shape)
PARAM_KEYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "body_pose": ("body_pose_params", (133,)),
    "hand": ("hand_pose_params", (108,)),
    "shape": ("shape_params", (45,)),
    "scale": ("scale_params", (28,)),
    "global_rot": ("global_rot", (3,)),
    "cam_t": ("pred_cam_t", (3,)),
}
KEYPOINTS_3D_CAM = "keypoints_3d_cam"  # extra params key: (70, 3) metres, camera frame (OpenCV axes)

_INSTALL_HELP = (
    "SAM-3D Body is optional. Install the upstream package into this environment: "
    "`git clone https://github.com/facebookresearch/sam-3d-body && pip install -e sam-3d-body` "
    "(see its INSTALL.md: CUDA torch; detectron2 only for its ViTDet person detector). The weights are gated: "
    "request access at https://huggingface.co/facebook/sam-3d-body-dinov3 (or -vith), download the repo, and "
    "point `checkpoint` at <download>/model.ckpt (model_config.yaml must sit beside it or in its parent folder) "
    "and `mhr_path` at <download>/assets/mhr_model.pt. Without them use the `mediapipe` estimator."
)


class Sam3dUnavailable(RuntimeError):
    """SAM-3D Body cannot be built here: the message says what to install and where to put the files."""


def check_sam3d_files(checkpoint: str | Path, mhr_path: str | Path) -> list[str]:
    """Problems with the checkpoint, its model_config.yaml and mhr_model.pt (empty list: all present)."""
    problems = []
    checkpoint, mhr_path = Path(checkpoint), Path(mhr_path)
    if not checkpoint.is_file():
        problems.append(f"checkpoint {checkpoint} not found (expected model.ckpt from the HF repo)")
    else:
        configs = [checkpoint.parent / "model_config.yaml", checkpoint.parent.parent / "model_config.yaml"]
        if not any(c.is_file() for c in configs):
            problems.append(f"model_config.yaml not found at {configs[0]} or {configs[1]}")
    if not mhr_path.is_file():
        problems.append(f"MHR model {mhr_path} not found (expected assets/mhr_model.pt from the HF repo)")
    return problems


def build_sam3d_body(checkpoint: str | Path, mhr_path: str | Path, *, device: str = "cuda",
                     human_detector=None):
    """Build the upstream `SAM3DBodyEstimator` (an optional upstream detector object goes with it).

    Raises Sam3dUnavailable naming what is missing and how to get it.
    """
    problems = check_sam3d_files(checkpoint, mhr_path)
    if problems:
        raise Sam3dUnavailable("; ".join(problems) + ". " + _INSTALL_HELP)
    # Upstream picks the MHR backend when its head module is imported: with the variable unset it
    # prefers the `mhr` package's own asset folder; set, it loads the TorchScript file we pass.
    os.environ.setdefault("MOMENTUM_ENABLED", "1")
    try:
        from sam_3d_body import SAM3DBodyEstimator, load_sam_3d_body
    except ImportError as exc:
        raise Sam3dUnavailable(f"cannot import sam_3d_body ({exc}). " + _INSTALL_HELP) from None
    model, model_cfg = load_sam_3d_body(str(checkpoint), device=device, mhr_path=str(mhr_path))
    return SAM3DBodyEstimator(model, model_cfg, human_detector=human_detector)


def infer_sam3d_batch(upstream, views: Sequence[View], *, inference_type: str = "full",
                      bbox_thr: float = 0.5) -> list[list[dict]]:
    """Run upstream `process_one_image` on every view; returns its dicts per view (box order).

    upstream: a `SAM3DBodyEstimator` (or anything with its `process_one_image` signature).
    Each view's calibrated K goes in as `cam_int`, a float32 torch tensor of shape (1, 3, 3).
    """
    import torch

    results = []
    for view in views:
        cam_int = torch.as_tensor(np.asarray(view.K, np.float32).reshape(1, 3, 3))
        boxes = None if view.boxes is None else np.asarray(view.boxes, np.float32).reshape(-1, 4)
        if boxes is not None and len(boxes) == 0:
            results.append([])
            continue
        outputs = upstream.process_one_image(view.image, bboxes=boxes, cam_int=cam_int, bbox_thr=bbox_thr,
                                             inference_type=inference_type)
        results.append(list(outputs))
    return results


def project_camera_points(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """points_cam: (N, 3) metres, camera frame (x right, y down, z forward) -> (N, 2) pixels with K (3, 3).

    NaN where a point is not finite, not in front of the camera (z <= 1 mm), or projects to a non-finite pixel.
    """
    points_cam = np.asarray(points_cam, np.float64)
    K = np.asarray(K, np.float64)
    z = points_cam[:, 2]
    valid = np.isfinite(points_cam).all(axis=1) & (z > 1e-3)
    out = np.full((len(points_cam), 2), np.nan)
    with np.errstate(over="ignore", invalid="ignore"):
        out[valid, 0] = K[0, 0] * points_cam[valid, 0] / z[valid] + K[0, 2]
        out[valid, 1] = K[1, 1] * points_cam[valid, 1] / z[valid] + K[1, 2]
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out


def _param(output: dict, key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in output:
        raise ValueError(f"SAM-3D Body output lacks {key!r}; keys: {sorted(output)}")
    value = np.asarray(output[key], np.float32)
    if value.shape != shape:
        raise ValueError(f"SAM-3D Body output {key!r} must have shape {shape}, got {value.shape}")
    return value


def person_from_sam3d(output: dict, K: np.ndarray, *, score: float = 1.0, track_id: int = -1) -> Person2D:
    """One upstream per-person dict -> Person2D, keypoints re-projected with the calibrated K (3, 3).

    output: `bbox` (4,), `pred_keypoints_3d` (70, 3), `pred_cam_t` (3,) and the MHR parameters of PARAM_KEYS.
    Non-finite parameters (never expected) are zeroed with a warning, since params must be finite on the wire.
    """
    keypoints_3d = _param(output, "pred_keypoints_3d", (70, 3))
    cam_t = _param(output, "pred_cam_t", (3,))
    with np.errstate(over="ignore", invalid="ignore"):  # absurd values become non-finite -> missing below
        points_cam = keypoints_3d.astype(np.float64) + cam_t
        keypoints = project_camera_points(points_cam, K).astype(np.float32)
    valid = np.isfinite(keypoints).all(axis=1)
    keypoints[~valid] = np.nan
    confidence = valid.astype(np.float32)
    params = {name: _param(output, key, shape) for name, (key, shape) in PARAM_KEYS.items()}
    params[KEYPOINTS_3D_CAM] = points_cam.astype(np.float32)
    for name, value in params.items():
        if not np.all(np.isfinite(value)):
            log.warning("SAM-3D Body output %s has non-finite values; zeroed", name)
            params[name] = np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
    return Person2D(box=_param(output, "bbox", (4,)), score=float(score), keypoints=keypoints,
                    confidence=confidence, params=params, track_id=int(track_id))


class Sam3dEstimator(Estimator):
    """SAM-3D Body for a batch of views (see module docstring). `upstream` is a built SAM3DBodyEstimator."""

    name = "sam3d"

    def __init__(self, upstream, *, inference_type: str = "full", bbox_thr: float = 0.5):
        if inference_type not in ("full", "body"):
            raise ValueError(f"inference_type must be 'full' or 'body' ('hand' is broken upstream, #109), "
                             f"got {inference_type!r}")
        self.upstream = upstream
        self.inference_type = inference_type
        self.bbox_thr = bbox_thr

    def estimate(self, views: Sequence[View]) -> list[list[Person2D]]:
        batch = infer_sam3d_batch(self.upstream, views, inference_type=self.inference_type, bbox_thr=self.bbox_thr)
        persons_per_view = []
        for view, outputs in zip(views, batch):
            if view.boxes is not None and len(outputs) != len(view.boxes):
                raise ValueError(f"camera {view.camera!r}: SAM-3D Body returned {len(outputs)} persons "
                                 f"for {len(view.boxes)} boxes")
            scores = view.box_scores if view.boxes is not None and view.box_scores is not None else None
            track_ids = view.track_ids if view.boxes is not None and view.track_ids is not None else None
            persons_per_view.append([
                person_from_sam3d(
                    out, view.K,
                    score=1.0 if scores is None else float(scores[i]),
                    track_id=-1 if track_ids is None else int(track_ids[i]),
                )
                for i, out in enumerate(outputs)
            ])
        return persons_per_view
