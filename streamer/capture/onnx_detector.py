"""A user-supplied ONNX person detector run with ONNX Runtime (optional extra `onnx`).

Runs only to acquire or re-acquire persons (streamer/capture/boxes.py). Execution provider:
CUDA (onnxruntime-gpu) when asked for a CUDA device and available, else the CPU provider.

Model contract (what users export; stated in the README):
- one input, NCHW float32 (1, 3, H, W), RGB scaled to [0, 1]; the image is letterboxed to H x W
  (aspect kept, grey 114 padding). H, W are read from the model, or `input_size` when dynamic.
- one output (the first is used), in one of two layouts:
  * "yolo" (Ultralytics YOLOv8/11 detect or pose export): (1, R, A) with rows cx, cy, w, h,
    then the person (class 0) score in row 4; further rows (other classes, pose keypoints) ignored;
  * "boxes": (N, 5) or (1, N, 5) x0 y0 x1 y1 score, or (N, 6) with class id in column 5 (0 = person),
    in input pixels.
Detections are un-letterboxed to image pixels, thresholded at `score_threshold`, and suppressed
with NMS at `nms_iou`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

__all__ = ["OnnxDetectorUnavailable", "OnnxPersonDetector", "letterbox", "providers_for"]

log = logging.getLogger(__name__)

_PAD_VALUE = 114


class OnnxDetectorUnavailable(RuntimeError):
    """onnxruntime is not installed or the model file is missing (the message says what to do)."""


def providers_for(device: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers for a device string ("cpu", "cuda", "cuda:1") given the available ones."""
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.startswith("cuda"):
        log.warning("device %s asked for, but onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); "
                    "using the CPU", device)
    return ["CPUExecutionProvider"]


def letterbox(image: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize (H, W, 3) uint8 keeping aspect into size_hw, padded with grey.

    Returns (tensor (1, 3, h, w) float32 in [0, 1], scale, (pad_x, pad_y)); image pixel =
    (input pixel - pad) / scale.
    """
    target_h, target_w = size_hw
    height, width = image.shape[:2]
    scale = min(target_w / width, target_h / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (target_w - new_w) / 2, (target_h - new_h) / 2
    canvas = np.full((target_h, target_w, 3), _PAD_VALUE, np.uint8)
    left, top = int(round(pad_x - 0.1)), int(round(pad_y - 0.1))
    canvas[top:top + new_h, left:left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return tensor, scale, (float(left), float(top))


def _decode(output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw model output -> (boxes (N, 4) x0 y0 x1 y1 input pixels, scores (N,)); see module docstring."""
    output = np.asarray(output, np.float32)
    if output.ndim == 3 and output.shape[0] == 1 and output.shape[1] >= 5 and output.shape[1] < output.shape[2]:
        rows = output[0]
        cx, cy, w, h, score = rows[0], rows[1], rows[2], rows[3], rows[4]
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1), score
    if output.ndim == 3 and output.shape[0] == 1:
        output = output[0]
    if output.ndim == 2 and output.shape[1] in (5, 6):
        keep = output[:, 5] == 0 if output.shape[1] == 6 else np.ones(len(output), bool)
        return output[keep, :4], output[keep, 4]
    raise ValueError(f"ONNX detector output of shape {output.shape} is neither (1, R>=5, A) 'yolo' "
                     "nor (N, 5|6) 'boxes' (see streamer/capture/onnx_detector.py)")


class OnnxPersonDetector:
    """Person boxes from an ONNX model (see module docstring for the model contract)."""

    def __init__(self, model_path: str | Path, *, device: str = "cpu", score_threshold: float = 0.5,
                 nms_iou: float = 0.45, input_size: tuple[int, int] | None = None, threads: int = 0):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise OnnxDetectorUnavailable(f"ONNX detector {model_path} not found")
        try:
            import onnxruntime as ort
        except ImportError:
            raise OnnxDetectorUnavailable("onnxruntime is not installed: pip install onnxruntime "
                                          "(or onnxruntime-gpu for CUDA)") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.providers = providers_for(device, ort.get_available_providers())
        self.session = ort.InferenceSession(str(model_path), options, providers=self.providers)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        shape = model_input.shape
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"ONNX detector {model_path}: input {self.input_name!r} must be (1, 3, H, W), got {shape}")
        fixed = tuple(d if isinstance(d, int) else None for d in shape[2:])
        if None in fixed:
            if input_size is None:
                raise ValueError(f"ONNX detector {model_path}: input size is dynamic {shape}; set input_size (H, W)")
            fixed = tuple(input_size)
        self.input_size: tuple[int, int] = fixed  # (H, W)
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image: (H, W, 3) uint8 RGB -> (boxes (N, 4) float32 x0 y0 x1 y1 image pixels, scores (N,) float32)."""
        tensor, scale, (pad_x, pad_y) = letterbox(image, self.input_size)
        output = self.session.run(None, {self.input_name: tensor})[0]
        boxes, scores = _decode(output)
        keep = np.isfinite(scores) & (scores >= self.score_threshold) & np.isfinite(boxes).all(axis=1)
        boxes, scores = boxes[keep], scores[keep]
        if len(boxes) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        boxes = (boxes - [pad_x, pad_y, pad_x, pad_y]) / scale
        height, width = image.shape[:2]
        boxes = np.clip(boxes, 0, [width, height, width, height])
        xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
        picked = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.score_threshold, self.nms_iou),
                            np.int64).reshape(-1)
        picked = picked[np.argsort(-scores[picked], kind="stable")]
        return boxes[picked].astype(np.float32), scores[picked].astype(np.float32)
