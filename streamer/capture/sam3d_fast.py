"""Fast SAM-3D Body inference for several cameras sharing one GPU (body-only, batched, CUDA graphs, compile).

Wraps a model built by the upstream package (`sam_3d_body.load_sam_3d_body`, or `SAM3DBody(cfg)`): it uses
the upstream modules as they are and changes only how they are driven. Against the stock call
(`SAM3DBodyEstimator.process_one_image`, one image at a time, "full" mode) the fast path

1. decodes the body only (`inference_type="body"`): one backbone pass and one decoder run per person instead of
   three backbone passes and up to four decoder runs (no hand-crop refinement of fingers and wrists);
2. batches the person crops of all cameras into one forward (each crop keeps its own camera matrix);
3. crops on the GPU (one bilinear `grid_sample` per crop, the same affine as upstream's `TopdownAffine`)
   instead of `cv2.warpAffine` of the image and of an all-zero mask on the CPU;
4. replays the backbone (optionally `torch.compile`d) from a CUDA graph per batch size, and keeps the
   output-only mesh faces on the host (upstream copies them out after every decoder layer);
5. optionally (`graph_decoder=True`) replays the whole decoder stage (prompt-free decoder, MHR head, camera
   head, keypoint-token updates) from one CUDA graph per batch size. Upstream's decoder cannot be captured as it
   is: it indexes device tensors with host index lists and boolean masks (each a pageable host->device copy, a
   stream sync), moves host constants with `.to()`/`.cuda()`, checks `inputs.max()` on the device and its prompt
   encoder and roma's Euler conversion index with device boolean masks (`nonzero`, a sync). `_SyncFree`, a
   dispatch mode active only while the graph is recorded, turns the first two into device constants made once
   (keyed by their content), and roma's elementwise masked assignments into `torch.where`; the dummy prompt's
   embedding (the body pass always sends the all-invalid prompt) is computed once per batch size, and (in every
   path) upstream's input normalisation, whose output only reaches the precomputed backbone, is skipped.
   Anything else that would sync raises while recording, so a graph is either complete or not made. On the
   H200 the replayed decoder gave the eager path's outputs bit for bit, on the recorded inputs and on others.
   Only the MHR stand-in of `streamer bench estimator` has been recorded: the real TorchScript `mhr_model.pt`
   is gated (if it syncs, recording raises and `graph_decoder=False` is the way back);
6. takes person boxes from hints (the 3D track reprojected, `streamer.capture.boxes`), so no detector runs;
7. optionally pipelines calls (`submit` / `pipelined`): the crop and backbone of call t+1 run on one stream
   while the decoder of call t runs on a higher-priority one (each graph recorded on its own stream, see
   `_capture_stream`); outputs come one call late. On the H200: +20 % at 8 crops per call, +3 % at 64;
8. optionally (`decoder_tf32=True`, on in the capture node) runs the decoder stage's float32 matrix products on
   TF32 tensor cores: on the H200 the decoder took 75 instead of 111 ms for 64 crops, outputs within 6.9e-4.

Measured options that are kept off by default (`streamer bench estimator`, README "SAM-3D Body on a GPU"): bf16
autocast of the decoder layers (no gain, outputs moved beyond the agreement tolerance), `torch.compile` of the
decoder (no gain: graph breaks), a bf16 backbone (no faster than float16), an FP8 backbone (`precision="fp8"`,
+10 %; with the random weights' LayerScale set to 1 its outputs move by up to 18 %, so it stays opt-in until
checked on the released weights). Eagerly, upstream's decoder is bound by host work (thousands of small kernels
and host->device copies of index constants, each a stream sync, per call); replayed from a CUDA graph
(`graph_decoder=True`) it costs its GPU time only (about 4,000 kernels, 20-26 ms for 8 crops on the H200), and the
backbone is the larger part.

Use in the capture node (one process serving the cameras that share a GPU):

    upstream = build_sam3d_body(checkpoint, mhr_path)            # streamer.capture.sam3d
    fast = FastBodyEstimator(upstream.model, compile_backbone=True, graph_decoder=True, decoder_tf32=True,
                             batch_sizes=(len(cameras),))        # up to one person per camera: one recorded size
    estimator = FastSam3dEstimator(fast, upstream)               # hinted views: one forward; others: stock + detector
    persons = estimator.estimate(views)                          # or, one frame set late but faster on a GPU:
    pending = estimator.submit(views_t1); persons_t = previous.result(); previous = pending

Call contract relied on (upstream sam-3d-body 1.0.0): `model.image_mean`, `model.image_std` ((3, 1, 1)),
`model.backbone(x (B, 3, S, S), backbone dtype) -> (B, C, h, w)`, `model.backbone_dtype`,
`model.decoder.layers` (ModuleList of layers returning `(tokens, image_tokens)`), `model.forward_step(batch,
decoder_type="body") -> {"mhr": dict of (B, ...) tensors}`, `model._initialize_batch(batch)`,
`model.data_preprocess(inputs, ...)`, `model.prompt_encoder(keypoints=...) -> (embeddings, mask)` and
`model.head_pose.faces` (copied to the host once, when the FastBodyEstimator is made), and the batch dict of
`sam_3d_body.data.utils.prepare_batch`. The module never imports the upstream package itself.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from streamer.capture.estimator import Estimator, View

__all__ = [
    "BACKBONE_PRECISIONS",
    "BODY_BOX_PADDING",
    "ELEMENTWISE_MASK_FUNCTIONS",
    "CropRequest",
    "FastBodyEstimator",
    "FastSam3dEstimator",
    "PendingCall",
    "PendingPersons",
    "crop_affine",
    "expand_host_indices",
    "masked_write",
    "person_dicts",
    "warp_crops",
]

logger = logging.getLogger(__name__)

BODY_BOX_PADDING = 1.25  # upstream GetBBoxCenterScale padding for body crops
_PRIOR_ASPECT = 0.75  # upstream TopdownAffine: first expand to w/h = 0.75, then to the model input's aspect

# Output keys copied to the per-person dicts, named as upstream `process_one_image` names them.
_OUTPUT_KEYS = {
    "pred_keypoints_3d": "pred_keypoints_3d",
    "pred_keypoints_2d": "pred_keypoints_2d",
    "pred_vertices": "pred_vertices",
    "pred_cam_t": "pred_cam_t",
    "focal_length": "focal_length",
    "global_rot": "global_rot",
    "body_pose": "body_pose_params",
    "hand": "hand_pose_params",
    "scale": "scale_params",
    "shape": "shape_params",
    "pred_joint_coords": "pred_joint_coords",
    "joint_global_rots": "pred_global_rots",
    "mhr_model_params": "mhr_model_params",
}


@dataclass(frozen=True)
class CropRequest:
    """One person to estimate: which image, the person box and the camera matrix.

    image_index: index into the list of images passed with the requests.
    box_xyxy: (4,) float, pixels, full image (x1, y1, x2, y2).
    camera_matrix: (3, 3) float, pixels (fx, fy, cx, cy), the camera that took the image.
    """

    image_index: int
    box_xyxy: np.ndarray
    camera_matrix: np.ndarray


def _fix_aspect(scale_wh: np.ndarray, aspect: float) -> np.ndarray:
    """Grow (w, h) so that w / h == aspect (upstream `fix_aspect_ratio`)."""
    w, h = float(scale_wh[0]), float(scale_wh[1])
    return np.array([w, w / aspect] if w > h * aspect else [h * aspect, h], dtype=np.float64)


def crop_affine(box_xyxy: np.ndarray, input_size: tuple[int, int], padding: float = BODY_BOX_PADDING
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop geometry of one person box, as upstream GetBBoxCenterScale + TopdownAffine compute it (no rotation).

    box_xyxy: (4,) pixels; input_size: model input (w, h) pixels.
    Returns center (2,) px, scale (2,) px (the padded, aspect-fixed box size) and crop_from_image (2, 3) float32,
    the affine mapping full-image pixel indices to crop pixel indices.
    """
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(4)
    if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box_xyxy: expected finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {box.tolist()}")
    out_w, out_h = input_size
    center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    scale = _fix_aspect(_fix_aspect(np.array([box[2] - box[0], box[3] - box[1]]) * padding, _PRIOR_ASPECT),
                        out_w / out_h)
    s = out_w / scale[0]
    crop_from_image = np.array([[s, 0.0, out_w / 2 - s * center[0]],
                                [0.0, s, out_h / 2 - s * center[1]]], dtype=np.float32)
    return center.astype(np.float32), scale.astype(np.float32), crop_from_image


def warp_crops(images: Sequence[torch.Tensor], image_index: Sequence[int], crop_from_image: torch.Tensor,
               input_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear crops on the device, matching cv2.warpAffine(INTER_LINEAR, zero border) then ToTensor.

    images: V tensors (H_v, W_v, 3) uint8 RGB on the target device (sizes may differ).
    image_index: n ints, which image each crop comes from; crop_from_image: (n, 2, 3) float32 (best on the
    device already: then nothing waits for a host->device copy when the crops of an image are consecutive).
    Returns (n, 3, h, w) float32 in [0, 1], rounded to the 1/255 steps of a uint8 crop.
    """
    out_w, out_h = input_size
    device = images[0].device
    a = crop_from_image.to(device=device, dtype=torch.float64)
    u = torch.arange(out_w, device=device, dtype=torch.float64)
    v = torch.arange(out_h, device=device, dtype=torch.float64)
    crops = torch.empty((len(image_index), 3, out_h, out_w), device=device)
    index = np.asarray(list(image_index), dtype=np.int64)
    for img_id in sorted(set(index.tolist())):
        found = np.flatnonzero(index == img_id)
        rows: slice | torch.Tensor = (slice(int(found[0]), int(found[-1]) + 1)
                                      if found[-1] - found[0] + 1 == len(found) else torch.from_numpy(found).to(device))
        height, width = images[img_id].shape[:2]
        s, tx, ty = a[rows, 0, 0], a[rows, 0, 2], a[rows, 1, 2]
        x = (u[None, :] - tx[:, None]) / s[:, None]  # (m, w) pixel index in the image
        y = (v[None, :] - ty[:, None]) / s[:, None]  # (m, h)
        xn = (2 * x / (width - 1) - 1)[:, None, :].expand(-1, out_h, -1)
        yn = (2 * y / (height - 1) - 1)[:, :, None].expand(-1, -1, out_w)
        grid = torch.stack([xn, yn], dim=-1).float()
        src = images[img_id].permute(2, 0, 1)[None].float().expand(len(found), -1, -1, -1)
        crops[rows] = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return crops.clamp_(0, 255).round_().div_(255.0)


def person_dicts(mhr_output: dict[str, Any], boxes_xyxy: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per-person numpy dicts with the key names of upstream `process_one_image` (body-only subset).

    mhr_output: the model's `forward_step(...)["mhr"]` dict of (n, ...) tensors; boxes_xyxy: (n, 4) px.
    """
    host = {name: mhr_output[key].detach().float().cpu().numpy()
            for key, name in _OUTPUT_KEYS.items() if isinstance(mhr_output.get(key), torch.Tensor)}
    return [{"bbox": np.asarray(boxes_xyxy[i], dtype=np.float32), **{k: v[i] for k, v in host.items()}}
            for i in range(len(boxes_xyxy))]


class _Precomputed(nn.Module):
    """Stands in for the backbone inside `forward_step` and returns embeddings computed beforehand."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.embeddings = embeddings

    def forward(self, x: torch.Tensor, extra_embed: Any = None) -> torch.Tensor:
        if x.shape[0] != self.embeddings.shape[0]:
            raise ValueError(f"batch of {x.shape[0]} crops but {self.embeddings.shape[0]} precomputed embeddings")
        return self.embeddings


def _skip_preprocess(inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Stands in for upstream `data_preprocess` (normalisation and a device `max()` check) when the backbone is
    precomputed: its output is only passed to that backbone, which ignores it (dtype float32 either way)."""
    return inputs


class _Autocast(nn.Module):
    """Runs one decoder layer under autocast and hands float32 tensors back to the (float32) caller."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.layer = layer
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        device_type = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device_type, dtype=self.dtype):
            out = self.layer(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.float() if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


def _capture_stream(owner: Any, device: torch.device | None = None) -> torch.cuda.Stream:
    """The stream `owner` records all its CUDA graphs on, made once per owner.

    Not torch.cuda.graph's shared default stream: recorded there, the backbone and decoder graphs replayed at
    once on two streams never finished on the H200 (the host waited forever on the first result); each recorded
    on its own stream, they run. The likely cause: cuBLAS takes its workspace per (handle, stream), a graph bakes
    in the workspace of the stream it was recorded on, so two graphs recorded on one stream share a workspace
    and their GEMMs write into each other's when replayed at the same time.
    """
    if getattr(owner, "_stream", None) is None:
        owner._stream = torch.cuda.Stream(device)
    return owner._stream


class _GraphedBackbone:
    """The backbone replayed from one CUDA graph per batch size (input copied into a static buffer); all its graphs
    are recorded on its own stream (`_capture_stream`) into its own memory pool."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.pool = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self.graphs:
            static_in = x.clone()
            side = _capture_stream(self, x.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=side):
                static_out = self.fn(static_in)
            self.pool = graph.pool()
            self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


BACKBONE_PRECISIONS = ("model", "bf16", "fp8", "fp8-fast-accum")


def _backbone_at_precision(backbone: nn.Module, dtype: torch.dtype, precision: str) -> tuple[nn.Module, torch.dtype]:
    """The backbone to run and its input dtype. "model": the model's own (its dtype, float16 for the released
    configuration); "bf16": a bfloat16 copy; "fp8"/"fp8-fast-accum": a copy whose linear layers run in FP8
    (`streamer.capture.fp8`; Hopper's fast accumulation for the latter), other layers in the model's dtype.
    Copies leave the model itself as it is (the stock path keeps using it)."""
    if precision == "model":
        return backbone, dtype
    if precision == "bf16":
        return copy.deepcopy(backbone).to(torch.bfloat16), torch.bfloat16
    from streamer.capture.fp8 import convert_linears_to_fp8

    converted = copy.deepcopy(backbone)
    if not convert_linears_to_fp8(converted, fast_accum=precision == "fp8-fast-accum"):
        raise ValueError("precision fp8: the backbone has no linear layer that can run in FP8")
    return converted, dtype


# Functions whose boolean-mask indexing is purely elementwise (x[m] read, changed elementwise, written back with
# the same m): while recording, those reads return the whole tensor and the writes become torch.where, which is
# exact at the selected positions. (file suffix, function name); anything else with a device mask raises.
ELEMENTWISE_MASK_FUNCTIONS: tuple[tuple[str, str], ...] = (("roma/euler.py", "unitquat_to_euler"),)
_aten = torch.ops.aten
_INDEX_READ = {_aten.index.Tensor}
_INDEX_WRITE = {_aten.index_put_.default, _aten.index_put.default, _aten._index_put_impl_.default}
_SYNCING = {_aten._local_scalar_dense.default, _aten.nonzero.default, _aten.is_nonzero.default,
            _aten.equal.default}


def _inside(functions: Iterable[tuple[str, str]]) -> bool:
    """Whether a caller frame runs one of `functions` ((file suffix, function name) pairs)."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        name, path = code.co_name, code.co_filename.replace("\\", "/")
        if any(name == fn and path.endswith(suffix) for suffix, fn in functions):
            return True
        frame = frame.f_back
    return False


def expand_host_indices(indices: Sequence[torch.Tensor | None], to_device: Callable[[torch.Tensor], torch.Tensor]
                        ) -> list[torch.Tensor | None]:
    """Advanced-indexing index list with each host boolean mask replaced by its integer index tensors (one per
    masked dimension, as `aten.index` expands them) and every host index tensor passed through `to_device`."""
    out: list[torch.Tensor | None] = []
    for index in indices:
        if index is None:
            out.append(None)
        elif index.dtype in (torch.bool, torch.uint8) and index.dim() > 0:
            out.extend(to_device(column) for column in index.nonzero().unbind(1))
        else:
            out.append(to_device(index))
    return out


def masked_write(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, accumulate: bool) -> torch.Tensor:
    """`x[mask] = values` (or `+=`) without a sync, for a mask over x's leading dims and values that broadcast to
    x's shape (one element, a row, or the whole-tensor stand-in of `x[mask]`, see ELEMENTWISE_MASK_FUNCTIONS;
    torch strips leading 1-dims from assigned values). In place; returns x.
    """
    if tuple(mask.shape) != tuple(x.shape[: mask.dim()]):
        raise RuntimeError(f"masked write: mask {tuple(mask.shape)} does not cover the leading dims of {tuple(x.shape)}")
    try:
        fits = torch.broadcast_shapes(values.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise RuntimeError(f"masked write: values {tuple(values.shape)} do not broadcast to the target "
                           f"{tuple(x.shape)} (a compacted x[mask] cannot be written without a sync)")
    m = mask.reshape(tuple(mask.shape) + (1,) * (x.dim() - mask.dim()))
    if values.dim() == 0 and values.device != x.device:  # a host scalar: filled on the device, no copy
        values = x.new_full((), values.item())
    values = values.to(device=x.device, dtype=x.dtype)
    if accumulate:
        return x.add_(torch.where(m, values, x.new_zeros(())))
    return x.copy_(torch.where(m, values, x))


class _SyncFree(TorchDispatchMode):
    """Dispatch mode under which upstream's decoder issues no host<->device synchronisation (for CUDA-graph capture).

    device: where the model runs. Host tensors that an op would copy to the device (host index lists and masks of
    `aten.index`/`index_put_`, constants moved with `.to()`/`.cuda()`/`copy_`) become device constants, made once
    per content and reused (a `_to_copy` result is a fresh clone: callers may write to it). Device boolean masks
    are allowed only inside `elementwise_functions` (see ELEMENTWISE_MASK_FUNCTIONS). Any other op that would wait
    for the device (`.item()`, `nonzero`, a device->host copy) raises, naming the op. Keep the mode alive as long
    as a graph recorded under it: the graph reads its constants.
    """

    def __init__(self, device: torch.device,
                 elementwise_functions: Sequence[tuple[str, str]] = ELEMENTWISE_MASK_FUNCTIONS) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.elementwise_functions = tuple(elementwise_functions)
        self.constants: dict[tuple[Any, ...], torch.Tensor] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """This mode and its Python-level companion (`_DeviceIndexLists`): index lists such as `x[:, [0, 2]]` and
        `torch.tensor(..., device=...)` are copied to the device by torch's argument parsing, below any dispatch
        mode, so they are replaced by device constants before that."""
        with _DeviceIndexLists(self), self:
            yield

    def _on_device(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.device.type == self.device.type

    def _on_host(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.device.type == "cpu" and self.device.type != "cpu"

    def constant(self, host: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The device copy of a host tensor (converted to dtype first), made once per content."""
        src = host if dtype is None or host.dtype == dtype else host.to(dtype)
        raw = src.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        key = (src.dtype, tuple(src.shape), hashlib.blake2b(raw, digest_size=16).digest())
        found = self.constants.get(key)
        if found is None:
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"host constant {tuple(src.shape)} {src.dtype} first seen while recording a CUDA "
                                   "graph; the warm-up call should have made it")
            found = src.to(self.device)
            self.constants[key] = found
        return found

    def _sync_error(self, func: Any) -> RuntimeError:
        return RuntimeError(f"{func} waits for the device inside the decoder; this stage cannot be replayed from a "
                            "CUDA graph (FastBodyEstimator(graph_decoder=False) runs it eagerly)")

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _SYNCING and any(self._on_device(a) for a in args):
            raise self._sync_error(func)
        if func is _aten._to_copy.default:
            src, target = args[0], kwargs.get("device")
            if self._on_host(src) and target is not None and torch.device(target).type == self.device.type:
                return self.constant(src, kwargs.get("dtype")).clone()
            if self._on_device(src) and target is not None and torch.device(target).type == "cpu":
                raise self._sync_error(func)
        if func is _aten.copy_.default:
            dst, src = args[0], args[1]
            if self._on_device(dst) and self._on_host(src):
                return dst.copy_(self.constant(src))
            if self._on_host(dst) and self._on_device(src):
                raise self._sync_error(func)
        if (func in _INDEX_READ or func in _INDEX_WRITE) and self._on_device(args[0]):
            x, indices = args[0], list(args[1])
            if any(self._on_device(i) and i.dtype in (torch.bool, torch.uint8) for i in indices if i is not None):
                return self._device_mask(func, x, indices, args, kwargs)
            indices = expand_host_indices(indices, lambda t: self.constant(t) if self._on_host(t) else t)
            rest = list(args[2:])
            if func in _INDEX_WRITE and rest and self._on_host(rest[0]):
                rest[0] = self.constant(rest[0])
            return func(x, indices, *rest, **kwargs)
        return func(*args, **kwargs)

    def _device_mask(self, func: Any, x: torch.Tensor, indices: list, args: tuple, kwargs: dict) -> torch.Tensor:
        if len(indices) != 1 or not _inside(self.elementwise_functions):
            raise self._sync_error(f"{func} with a device boolean mask")
        mask = indices[0].bool()
        if func in _INDEX_READ:
            if tuple(mask.shape) != tuple(x.shape[: mask.dim()]):
                raise self._sync_error(f"{func} with a partial device boolean mask")
            return x.clone()  # stands in for x[mask]: only elementwise use follows (see ELEMENTWISE_MASK_FUNCTIONS)
        values = args[2]
        values = self.constant(values) if self._on_host(values) and values.dim() > 0 else values
        accumulate = bool(args[3]) if len(args) > 3 else bool(kwargs.get("accumulate", False))
        target = x if func is not _aten.index_put.default else x.clone()
        return masked_write(target, mask, values, accumulate)


def _is_index_list(item: Any) -> bool:
    """A (nested) list of ints or bools: an advanced index that torch turns into a tensor on the target's device."""
    if not isinstance(item, list) or not item:
        return False
    return all(_is_index_list(x) if isinstance(x, list) else isinstance(x, (int, bool)) for x in item)


class _DeviceIndexLists(TorchFunctionMode):
    """Companion of `_SyncFree` (see `_SyncFree.active`): list indices of device tensors and device tensors made
    from Python data become the sync-free mode's device constants."""

    def __init__(self, sync_free: _SyncFree) -> None:
        super().__init__()
        self.sync_free = sync_free

    def _index_tensor(self, item: list) -> torch.Tensor:
        array = np.asarray(item)
        if array.dtype == np.bool_:  # a boolean list selects like its nonzero positions (1-D)
            array = np.flatnonzero(array)
        host = torch.from_numpy(array.astype(np.int64))
        return self.sync_free.constant(host) if self.sync_free.device.type != "cpu" else host

    def _convert(self, index: Any) -> Any:
        if _is_index_list(index):
            return self._index_tensor(index)
        if isinstance(index, tuple):
            return tuple(self._index_tensor(i) if _is_index_list(i) else i for i in index)
        return index

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and self.sync_free._on_device(args[0]):
            args = (args[0], self._convert(args[1]), *args[2:])
        elif func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == self.sync_free.device.type != "cpu":
            host = func(*args, **{k: v for k, v in kwargs.items() if k != "device"})
            if isinstance(host, torch.Tensor) and host.device.type == "cpu":
                return self.sync_free.constant(host).clone()
            return host
        return func(*args, **kwargs)


class _GraphedDecode:
    """The decoder stage replayed from one CUDA graph per input shape (recorded on its own stream, own pool).

    run(batch, embeddings, mode) -> output dict: the decoder call to record; it must enter `mode` (a `_SyncFree`)
    itself. Off CUDA nothing is recorded: each call runs `run` under the mode (the same code, for tests). The
    graph's inputs are static copies of the batch tensors and embeddings; outputs are cloned after each replay.
    """

    def __init__(self, run: Callable[[dict, torch.Tensor, _SyncFree], dict], device: torch.device,
                 warmup: int = 3) -> None:
        self.run = run
        self.device = torch.device(device)
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[Any, dict, torch.Tensor, dict, _SyncFree]] = {}
        self.pool = None
        self._host_mode = _SyncFree(self.device)

    def __call__(self, batch: dict[str, Any], embeddings: torch.Tensor) -> dict[str, Any]:
        if self.device.type != "cuda":
            return self.run(dict(batch), embeddings, self._host_mode)
        key = (tuple(embeddings.shape), embeddings.dtype,
               tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items()) if isinstance(v, torch.Tensor)))
        if key not in self.graphs:
            self.graphs[key] = self._record(batch, embeddings)
        graph, static_batch, static_embeddings, static_out, _ = self.graphs[key]
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                static_batch[k].copy_(v)
        static_embeddings.copy_(embeddings)
        graph.replay()
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in static_out.items()}

    def _record(self, batch: dict[str, Any], embeddings: torch.Tensor) -> tuple:
        mode = _SyncFree(self.device)
        static_batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        static_embeddings = embeddings.clone()
        side = _capture_stream(self, self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.run(dict(static_batch), static_embeddings, mode)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=side):
            static_out = self.run(dict(static_batch), static_embeddings, mode)
        self.pool = graph.pool()
        logger.info("decoder recorded as a CUDA graph for %d crops (%d device constants)", embeddings.shape[0],
                    len(mode.constants))
        return graph, static_batch, static_embeddings, static_out, mode


@contextlib.contextmanager
def _tf32_matmuls(enabled: bool) -> Iterator[None]:
    """While enabled: float32 matrix products on CUDA may use TF32 (a process-wide torch flag, restored after;
    the callers hold the estimator's lock, and the capture node runs no other float32 GPU work meanwhile)."""
    if not enabled:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@contextlib.contextmanager
def _swapped(parent: nn.Module, name: str, replacement: nn.Module) -> Iterator[None]:
    """Temporarily replace the submodule `parent.<name>` (restored even when the body raises)."""
    original = parent._modules[name]
    parent._modules[name] = replacement
    try:
        yield
    finally:
        parent._modules[name] = original


@contextlib.contextmanager
def _host_faces(head: nn.Module, host_faces: nn.Parameter | None) -> Iterator[None]:
    """Keep the head's output-only `faces` (36874, 3) on the host while decoding (`host_faces`, copied once; None:
    leave as is): upstream copies it to numpy after every decoder layer, one device->host copy and sync each."""
    if host_faces is None:
        yield
        return
    original = head._parameters["faces"]
    head._parameters["faces"] = host_faces
    try:
        yield
    finally:
        head._parameters["faces"] = original


@contextlib.contextmanager
def _method_override(obj: nn.Module, name: str, fn: Callable[..., Any] | None) -> Iterator[None]:
    """Shadow the method `obj.<name>` with fn (an instance attribute) for the duration; None: no change."""
    if fn is None:
        yield
        return
    obj.__dict__[name] = fn
    try:
        yield
    finally:
        del obj.__dict__[name]


class FastBodyEstimator:
    """Body-only SAM-3D Body for many cameras at once on one GPU.

    model: upstream `SAM3DBody` in eval mode on its device. Options (keyword-only):
    decoder_autocast: dtype for the decoder's transformer layers (torch.bfloat16) or None for float32 (default:
    bf16 moved the outputs by more than the agreement tolerance and gained nothing, see the README);
    decoder_tf32: let the decoder stage's float32 matrix products use TF32 tensor cores (cuBLAS; set while a call
    decodes or a graph records, restored after; no effect off CUDA). Off by default (upstream's float32); on, the
    H200 decoder took 75 instead of 111 ms for 64 crops with outputs within 6.8e-4 of float32 (README);
    cuda_graphs: replay the backbone from CUDA graphs (CUDA only); compile_backbone: torch.compile it first;
    compile_decoder: torch.compile upstream `forward_decoder` (decoder layers, MHR head, camera projection, keypoint
    token updates; graph breaks at the TorchScript MHR call); graph_decoder: replay the decoder stage from a CUDA
    graph per batch size (module docstring, point 5; recorded on the first call of each size, a few seconds);
    batch_sizes: pad each call with n crops up to the smallest of these >= n (repeating the last crop, whose
    extra outputs are dropped), so a live stage whose person count varies replays a few recorded/compiled sizes
    instead of recording a new one mid-stream; `warm_up` records them all beforehand; precision: the backbone's
    ("model": as loaded, float16 for the released configuration; "bf16"; "fp8" / "fp8-fast-accum": its linear
    layers in FP8 on a copy, `streamer.capture.fp8`; see BACKBONE_PRECISIONS and the README for agreement).
    `submit` / `pipelined` overlap one call's decoder with the next call's crop and backbone on two streams.
    The model object is shared: the fast path swaps submodules only for the duration of a call, under a lock.
    """

    def __init__(self, model: nn.Module, *, decoder_autocast: torch.dtype | None = None, decoder_tf32: bool = False,
                 cuda_graphs: bool = True, compile_backbone: bool = False, compile_decoder: bool = False,
                 graph_decoder: bool = False, batch_sizes: Sequence[int] = (), precision: str = "model") -> None:
        if graph_decoder and compile_decoder:
            raise ValueError("graph_decoder and compile_decoder exclude each other: pick one")
        if precision not in BACKBONE_PRECISIONS:
            raise ValueError(f"precision: expected one of {BACKBONE_PRECISIONS}, got {precision!r}")
        if any(int(b) < 1 for b in batch_sizes):
            raise ValueError(f"batch_sizes: expected sizes >= 1, got {list(batch_sizes)}")
        self.batch_sizes = tuple(sorted({int(b) for b in batch_sizes}))
        self.model = model
        self.device = model.image_mean.device
        size = model.cfg.MODEL.IMAGE_SIZE  # upstream passes it to TopdownAffine as (w, h)
        self.input_size = (int(size[0]), int(size[1]))
        self.decoder_autocast = decoder_autocast
        self.decoder_tf32 = decoder_tf32
        self._lock = threading.Lock()
        self.precision = precision
        backbone, self.backbone_dtype = _backbone_at_precision(model.backbone, model.backbone_dtype, precision)
        fn: Callable[[torch.Tensor], torch.Tensor] = backbone
        if compile_backbone:
            fn = torch.compile(backbone, dynamic=False)
        use_graphs = cuda_graphs and self.device.type == "cuda"
        self._encode_fn = _GraphedBackbone(fn) if use_graphs else fn
        self._decoder_fn = torch.compile(model.forward_decoder, dynamic=False) if compile_decoder else None
        self.graph_decoder = graph_decoder
        self._graphed_decode = _GraphedDecode(self._decode_sync_free, self.device) if graph_decoder else None
        self._dummy_prompts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ran_sizes: set[int] = set()  # batch sizes called once (graphs recorded, backbone compiled)
        self._streams: tuple[torch.cuda.Stream, torch.cuda.Stream] | None = None  # submit's front and back
        faces = getattr(model.head_pose, "faces", None)
        self._host_faces = (nn.Parameter(faces.detach().cpu(), requires_grad=False)
                            if isinstance(faces, torch.Tensor) and faces.device.type != "cpu" else None)

    # -- batch building ---------------------------------------------------------------------------------------
    def make_batch(self, images: Sequence[np.ndarray | torch.Tensor], requests: Sequence[CropRequest]
                   ) -> dict[str, torch.Tensor]:
        """The upstream batch dict for n person crops (batch n, one person each, its own camera matrix).

        images: V arrays (H_v, W_v, 3) uint8 RGB (host or device); requests: n crops of them. Host data goes
        up through pinned memory without waiting for the device (one packed copy for the per-crop numbers).
        """
        if not requests:
            raise ValueError("requests: expected at least one CropRequest")
        tensors = [im if isinstance(im, torch.Tensor) and im.device == self.device else self._upload(im)
                   for im in images]
        for i, t in enumerate(tensors):
            if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[2] != 3:
                raise ValueError(f"images[{i}]: expected (H, W, 3) uint8 RGB, got {tuple(t.shape)} {t.dtype}")
        for j, r in enumerate(requests):
            if not 0 <= r.image_index < len(tensors):
                raise ValueError(f"requests[{j}].image_index {r.image_index} outside "
                                 f"0..{len(tensors) - 1}")
            if np.asarray(r.camera_matrix).shape != (3, 3):
                raise ValueError(f"requests[{j}].camera_matrix: expected (3, 3), got {np.asarray(r.camera_matrix).shape}")
        geo = [crop_affine(r.box_xyxy, self.input_size) for r in requests]
        n = len(requests)
        w, h = self.input_size
        # per crop, float32 as upstream's batch holds them:
        # affine 6 | center 2 | scale 2 | box 4 | K 9 | image (w, h) 2 | crop (w, h) 2
        packed = np.concatenate([
            np.stack([g[2].reshape(6) for g in geo]), np.stack([g[0] for g in geo]), np.stack([g[1] for g in geo]),
            np.stack([np.asarray(r.box_xyxy, dtype=np.float32).reshape(4) for r in requests]),
            np.stack([np.asarray(r.camera_matrix, dtype=np.float32).reshape(9) for r in requests]),
            np.array([(tensors[r.image_index].shape[1], tensors[r.image_index].shape[0]) for r in requests]),
            np.tile([w, h], (n, 1)),
        ], axis=1).astype(np.float32)
        per_crop = self._upload(packed)
        affine = per_crop[:, 0:6].reshape(n, 2, 3)
        crops = warp_crops(tensors, [r.image_index for r in requests], affine, self.input_size)
        return {
            "img": crops.unsqueeze(1),
            "img_size": per_crop[:, 25:27].unsqueeze(1).contiguous(),
            "ori_img_size": per_crop[:, 23:25].unsqueeze(1).contiguous(),
            "bbox_center": per_crop[:, 6:8].unsqueeze(1).contiguous(),
            "bbox_scale": per_crop[:, 8:10].unsqueeze(1).contiguous(),
            "bbox": per_crop[:, 10:14].unsqueeze(1).contiguous(),
            "affine_trans": affine.unsqueeze(1).contiguous(),
            "mask": torch.zeros((n, 1, 1, h, w), device=self.device),
            "mask_score": torch.zeros((n, 1), device=self.device),
            "person_valid": torch.ones((n, 1), device=self.device),
            "cam_int": per_crop[:, 14:23].reshape(n, 3, 3).contiguous(),
        }

    def _upload(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A host array on the model's device; from pinned memory on CUDA, so the copy does not wait."""
        t = torch.as_tensor(array)
        if self.device.type == "cuda" and t.device.type == "cpu":
            t = t.contiguous().pin_memory()
        return t.to(self.device, non_blocking=True)

    # -- the two stages -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone stage: (n, C, h, w) embeddings in the backbone dtype."""
        img = batch["img"].flatten(0, 1)
        x = ((img - self.model.image_mean) / self.model.image_std).to(self.backbone_dtype)
        return self._encode_fn(x)

    @torch.no_grad()
    def decode(self, batch: dict[str, torch.Tensor], embeddings: torch.Tensor) -> dict[str, Any]:
        """Decoder stage (prompt-free body decoder, MHR head, camera head): the upstream "mhr" output dict."""
        with self._lock, _tf32_matmuls(self.decoder_tf32):
            if self._graphed_decode is not None:
                return self._graphed_decode(batch, embeddings)
            with contextlib.ExitStack() as stack:
                self._enter_decoder_swaps(stack, embeddings)
                stack.enter_context(_method_override(self.model, "forward_decoder", self._decoder_fn))
                return self._forward_body(batch)

    def _enter_decoder_swaps(self, stack: contextlib.ExitStack, embeddings: torch.Tensor) -> None:
        """Precomputed backbone, host faces, no backbone normalisation (its output goes only to the precomputed
        backbone, which ignores it), optional autocast layers; all restored when the stack closes."""
        model = self.model
        stack.enter_context(_swapped(model, "backbone", _Precomputed(embeddings)))
        stack.enter_context(_host_faces(model.head_pose, self._host_faces))
        if hasattr(model, "data_preprocess"):
            stack.enter_context(_method_override(model, "data_preprocess", _skip_preprocess))
        if self.decoder_autocast is not None:
            for i, layer in enumerate(model.decoder.layers):
                stack.enter_context(_swapped(model.decoder.layers, str(i), _Autocast(layer, self.decoder_autocast)))

    def _forward_body(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        self.model._initialize_batch(batch)
        return self.model.forward_step(batch, decoder_type="body")["mhr"]

    def _decode_sync_free(self, batch: dict[str, torch.Tensor], embeddings: torch.Tensor, mode: _SyncFree
                          ) -> dict[str, Any]:
        """The decoder stage as `_GraphedDecode` records it: swaps, the dummy prompt's embedding from a cache,
        everything under the sync-free dispatch mode."""
        with contextlib.ExitStack() as stack:
            self._enter_decoder_swaps(stack, embeddings)
            encoder = getattr(self.model, "prompt_encoder", None)
            if encoder is not None:
                stack.enter_context(_method_override(encoder, "forward",
                                                     self._dummy_prompt_forward(encoder, embeddings.shape[0])))
            stack.enter_context(mode.active())
            return self._forward_body(batch)

    def _dummy_prompt_forward(self, encoder: nn.Module, n: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """The prompt encoder's output for upstream's first-pass prompt (one all-invalid keypoint, label -2, per
        crop; `forward_pose_branch` sends nothing else), computed eagerly once per batch size. Its boolean-mask
        assignments would sync; the value does not depend on the images."""
        if n not in self._dummy_prompts:
            keypoints = torch.zeros((n, 1, 3), device=self.device)
            keypoints[:, :, -1] = -2
            self._dummy_prompts[n] = encoder(keypoints=keypoints)
        cached = self._dummy_prompts[n]

        def forward(keypoints: torch.Tensor | None = None, boxes: Any = None, masks: Any = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
            if keypoints is None or tuple(keypoints.shape) != (n, 1, 3) or boxes is not None or masks is not None:
                raise RuntimeError("graph_decoder: only the first pass's all-invalid keypoint prompt is supported, "
                                   f"got keypoints {None if keypoints is None else tuple(keypoints.shape)}")
            return cached
        return forward

    def __call__(self, images: Sequence[np.ndarray | torch.Tensor], requests: Sequence[CropRequest]
                 ) -> dict[str, Any]:
        """All crops in one forward: the upstream "mhr" output dict with a leading batch of len(requests)."""
        padded = self._padded(requests)
        batch = self.make_batch(images, padded)
        out = self.decode(batch, self.encode(batch))
        self._ran_sizes.add(len(padded))
        return _unpadded(out, len(requests), len(padded))

    def _padded(self, requests: Sequence[CropRequest]) -> list[CropRequest]:
        """requests padded (repeating the last) to the smallest of `batch_sizes` that holds them."""
        n = len(requests)
        size = next((b for b in self.batch_sizes if b >= n), n)
        return list(requests) + [requests[-1]] * (size - n) if requests else list(requests)

    def warm_up(self, image_size: tuple[int, int], camera_matrix: np.ndarray) -> None:
        """One call at each of `batch_sizes` on a blank image (w, h) px with a centred box: the first call of a
        size compiles and records (seconds to a minute with compile_backbone), so pay it before frames are due."""
        width, height = image_size
        image = np.zeros((height, width, 3), np.uint8)
        box = np.array([width * 0.4, height * 0.2, width * 0.6, height * 0.8], np.float32)
        for size in self.batch_sizes:
            self([image], [CropRequest(0, box, np.asarray(camera_matrix))] * size)

    def estimate(self, images: Sequence[np.ndarray | torch.Tensor], requests: Sequence[CropRequest]
                 ) -> list[dict[str, np.ndarray]]:
        """Like `__call__`, as one numpy dict per request in request order (upstream key names)."""
        return person_dicts(self(images, requests), np.stack([np.asarray(r.box_xyxy) for r in requests]))

    def submit(self, images: Sequence[np.ndarray | torch.Tensor], requests: Sequence[CropRequest]) -> "PendingCall":
        """Enqueue one call (as `__call__`) and return without waiting for the device.

        On CUDA, once a batch size has run (the first call of a size records its graphs, serially), the crop
        and backbone go on a front stream and the decoder on a higher-priority back stream that waits for them:
        the next call's crop and backbone overlap this call's decoder. Each graph replays from its own memory
        pool. Off CUDA, and on a batch size's first call, the call runs at once. `PendingCall.result()` gives
        the output.
        """
        n = len(requests)
        padded = self._padded(requests)
        if self.device.type != "cuda" or len(padded) not in self._ran_sizes:
            return PendingCall(self(images, requests), None)
        if self._streams is None:  # the decoder's many small kernels first whenever an SM frees up
            self._streams = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device, priority=-1))
        front, back = self._streams
        front.wait_stream(torch.cuda.current_stream(self.device))  # device images the caller made
        with torch.cuda.stream(front):
            batch = self.make_batch(images, padded)
            embeddings = self.encode(batch)
        back.wait_stream(front)
        with torch.cuda.stream(back):
            for tensor in (*batch.values(), embeddings):
                tensor.record_stream(back)
            out = self.decode(batch, embeddings)
            done = torch.cuda.Event()
            done.record(back)
        return PendingCall(_unpadded(out, n, len(padded)), done)

    def pipelined(self, calls: Iterable[tuple[Sequence[np.ndarray | torch.Tensor], Sequence[CropRequest]]]
                  ) -> Iterator[dict[str, Any]]:
        """`self(images, requests)` for each item of `calls`, in order, each call's crop and backbone overlapping the
        previous call's decoder (`submit`): an output is yielded once the next call is enqueued (one call late)."""
        pending: PendingCall | None = None
        for images, requests in calls:
            following = self.submit(images, requests)
            if pending is not None:
                yield pending.result()
            pending = following
        if pending is not None:
            yield pending.result()


class PendingCall:
    """A submitted call (`FastBodyEstimator.submit`): `result()` makes the caller's stream wait for its decoder
    and returns the upstream "mhr" output dict (leading batch of the call's request count)."""

    def __init__(self, output: dict[str, Any], done: torch.cuda.Event | None) -> None:
        self._output = output
        self._done = done

    def result(self) -> dict[str, Any]:
        if self._done is not None:
            tensors = [v for v in self._output.values() if isinstance(v, torch.Tensor)]
            stream = torch.cuda.current_stream(tensors[0].device) if tensors else torch.cuda.current_stream()
            stream.wait_event(self._done)
            for tensor in tensors:
                tensor.record_stream(stream)
            self._done = None
        return self._output


def _unpadded(out: dict[str, Any], n: int, size: int) -> dict[str, Any]:
    """The output dict of a call padded from n to size crops, cut back to n."""
    if size == n:
        return out
    return {k: v[:n] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v
            for k, v in out.items()}


class FastSam3dEstimator(Estimator):
    """The capture node's `Estimator` over the fast path: all hinted boxes of all views in one forward.

    fast: a FastBodyEstimator. stock: the upstream `SAM3DBodyEstimator` of the same model (with its optional
    detector), used for views without boxes (acquisition), in body-only mode so every person comes from the
    same decoder. Persons come out in box order per view, as `streamer.capture.sam3d.person_from_sam3d` builds them.
    The first call (the capture node's warm-up on blank frames) also warms the fast path at its batch sizes.
    """

    name = "sam3d-fast"

    def __init__(self, fast: FastBodyEstimator, stock: Any = None, *, bbox_thr: float = 0.5) -> None:
        self.fast = fast
        self.stock = stock
        self.bbox_thr = bbox_thr
        self._warmed = False

    def estimate(self, views: Sequence[View]) -> list[list[Any]]:
        """One list of `Person2D` per view, in view order."""
        return self.submit(views).result()

    def submit(self, views: Sequence[View]) -> "PendingPersons":
        """`estimate` in two steps: returns once the hinted views' forward is enqueued (`FastBodyEstimator.submit`;
        on a GPU the next submitted call's crop and backbone overlap this call's decoder), views without boxes
        run through the stock call at once; `result()` gives `estimate`'s list. A caller that takes frame set t's
        result after submitting frame set t+1 gains throughput (README) for one frame set of latency."""
        from streamer.capture.sam3d import infer_sam3d_batch

        if not self._warmed and views:
            self._warmed = True
            height, width = np.asarray(views[0].image).shape[:2]
            self.fast.warm_up((width, height), np.asarray(views[0].K))

        requests, owners = [], []
        for v, view in enumerate(views):
            if view.boxes is None:
                continue
            for box in np.asarray(view.boxes, np.float32).reshape(-1, 4):
                requests.append(CropRequest(image_index=v, box_xyxy=box, camera_matrix=np.asarray(view.K)))
                owners.append(v)
        pending = self.fast.submit([view.image for view in views], requests) if requests else None
        stock_outputs: dict[int, list[dict]] = {}
        unboxed = [v for v, view in enumerate(views) if view.boxes is None]
        if unboxed:
            if self.stock is None:
                raise ValueError(f"views {[views[v].camera for v in unboxed]} have no boxes and no stock "
                                 "estimator (detector) was given")
            found = infer_sam3d_batch(self.stock, [views[v] for v in unboxed], inference_type="body",
                                      bbox_thr=self.bbox_thr)
            stock_outputs = {v: list(outs) for v, outs in zip(unboxed, found)}
        return PendingPersons(list(views), owners, requests, pending, stock_outputs)

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""


class PendingPersons:
    """A submitted `FastSam3dEstimator` call: `result()` waits for the fast path's outputs and returns one list of
    `Person2D` per view, in view order (persons in box order per view)."""

    def __init__(self, views: list[View], owners: list[int], requests: list[CropRequest],
                 pending: PendingCall | None, stock_outputs: dict[int, list[dict]]) -> None:
        self._views = views
        self._owners = owners  # view index of each request
        self._requests = requests
        self._pending = pending
        self._stock_outputs = stock_outputs

    def result(self) -> list[list[Any]]:
        from streamer.capture.sam3d import person_from_sam3d

        outputs: list[list[dict]] = [[] for _ in self._views]
        if self._pending is not None:
            boxes = np.stack([np.asarray(r.box_xyxy) for r in self._requests])
            for v, out in zip(self._owners, person_dicts(self._pending.result(), boxes)):
                outputs[v].append(out)
        for v, outs in self._stock_outputs.items():
            outputs[v] = outs
        persons = []
        for view, outs in zip(self._views, outputs):
            scores = view.box_scores if view.boxes is not None else None
            track_ids = view.track_ids if view.boxes is not None else None
            persons.append([person_from_sam3d(out, view.K,
                                              score=1.0 if scores is None else float(scores[i]),
                                              track_id=-1 if track_ids is None else int(track_ids[i]))
                            for i, out in enumerate(outs)])
        return persons
