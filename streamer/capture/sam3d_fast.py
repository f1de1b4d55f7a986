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
5. takes person boxes from hints (the 3D track reprojected, `streamer.capture.boxes`), so no detector runs.

Measured options that are kept off by default (`streamer bench estimator`, README "SAM-3D Body speed"): bf16
autocast of the decoder layers (no gain, outputs moved beyond the agreement tolerance), `torch.compile` of the
decoder (no gain: graph breaks), a second CUDA stream overlapping backbone and decoder (`run_pipelined`, ~2 %).
What remains slow is upstream's decoder, bound by host work (thousands of small kernels and host->device copies
of index constants, each a stream sync, per call) rather than by the GPU.

Use in the capture node (one process serving the cameras that share a GPU):

    upstream = build_sam3d_body(checkpoint, mhr_path)            # streamer.capture.sam3d
    fast = FastBodyEstimator(upstream.model, compile_backbone=True)
    estimator = FastSam3dEstimator(fast, upstream)               # hinted views: one forward; others: stock + detector

Call contract relied on (upstream sam-3d-body 1.0.0): `model.image_mean`, `model.image_std` ((3, 1, 1)),
`model.backbone(x (B, 3, S, S), backbone dtype) -> (B, C, h, w)`, `model.backbone_dtype`,
`model.decoder.layers` (ModuleList of layers returning `(tokens, image_tokens)`), `model.forward_step(batch,
decoder_type="body") -> {"mhr": dict of (B, ...) tensors}`, `model._initialize_batch(batch)`, and the batch dict
of `sam_3d_body.data.utils.prepare_batch`. The module never imports the upstream package itself.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamer.capture.estimator import Estimator, View

__all__ = [
    "BODY_BOX_PADDING",
    "CropRequest",
    "FastBodyEstimator",
    "FastSam3dEstimator",
    "crop_affine",
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
    image_index: n ints, which image each crop comes from; crop_from_image: (n, 2, 3) float32.
    Returns (n, 3, h, w) float32 in [0, 1], rounded to the 1/255 steps of a uint8 crop.
    """
    out_w, out_h = input_size
    device = images[0].device
    a = crop_from_image.to(device=device, dtype=torch.float64)
    u = torch.arange(out_w, device=device, dtype=torch.float64)
    v = torch.arange(out_h, device=device, dtype=torch.float64)
    crops = torch.empty((len(image_index), 3, out_h, out_w), device=device)
    index = torch.as_tensor(list(image_index), dtype=torch.int64)
    for img_id in sorted(set(int(i) for i in image_index)):
        rows = torch.nonzero(index == img_id).flatten()
        height, width = images[img_id].shape[:2]
        s, tx, ty = a[rows, 0, 0], a[rows, 0, 2], a[rows, 1, 2]
        x = (u[None, :] - tx[:, None]) / s[:, None]  # (m, w) pixel index in the image
        y = (v[None, :] - ty[:, None]) / s[:, None]  # (m, h)
        xn = (2 * x / (width - 1) - 1)[:, None, :].expand(-1, out_h, -1)
        yn = (2 * y / (height - 1) - 1)[:, :, None].expand(-1, -1, out_w)
        grid = torch.stack([xn, yn], dim=-1).float()
        src = images[img_id].permute(2, 0, 1)[None].float().expand(len(rows), -1, -1, -1)
        crops[rows.to(device)] = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
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


class _GraphedBackbone:
    """The backbone replayed from one CUDA graph per batch size (input copied into a static buffer)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.pool = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self.graphs:
            static_in = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                static_out = self.fn(static_in)
            self.pool = graph.pool()
            self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


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
def _host_faces(head: nn.Module) -> Iterator[None]:
    """Keep the head's output-only `faces` (36874, 3) on the host while decoding: upstream copies it to numpy
    after every decoder layer, one device->host copy and sync each (restored afterwards)."""
    original = head._parameters.get("faces")
    if original is None or original.device.type == "cpu":
        yield
        return
    head._parameters["faces"] = nn.Parameter(original.detach().cpu(), requires_grad=False)
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
    cuda_graphs: replay the backbone from CUDA graphs (CUDA only); compile_backbone: torch.compile it first;
    compile_decoder: torch.compile upstream `forward_decoder` (decoder layers, MHR head, camera projection, keypoint
    token updates; graph breaks at the TorchScript MHR call).
    The model object is shared: the fast path swaps submodules only for the duration of a call, under a lock.
    """

    def __init__(self, model: nn.Module, *, decoder_autocast: torch.dtype | None = None,
                 cuda_graphs: bool = True, compile_backbone: bool = False, compile_decoder: bool = False) -> None:
        self.model = model
        self.device = model.image_mean.device
        size = model.cfg.MODEL.IMAGE_SIZE  # upstream passes it to TopdownAffine as (w, h)
        self.input_size = (int(size[0]), int(size[1]))
        self.decoder_autocast = decoder_autocast
        self._lock = threading.Lock()
        backbone = model.backbone
        fn: Callable[[torch.Tensor], torch.Tensor] = backbone
        if compile_backbone:
            fn = torch.compile(backbone, dynamic=False)
        use_graphs = cuda_graphs and self.device.type == "cuda"
        self._encode_fn = _GraphedBackbone(fn) if use_graphs else fn
        self._decoder_fn = torch.compile(model.forward_decoder, dynamic=False) if compile_decoder else None

    # -- batch building ---------------------------------------------------------------------------------------
    def make_batch(self, images: Sequence[np.ndarray | torch.Tensor], requests: Sequence[CropRequest]
                   ) -> dict[str, torch.Tensor]:
        """The upstream batch dict for n person crops (batch n, one person each, its own camera matrix).

        images: V arrays (H_v, W_v, 3) uint8 RGB (host or device); requests: n crops of them.
        """
        if not requests:
            raise ValueError("requests: expected at least one CropRequest")
        dev = self.device
        tensors = [torch.as_tensor(im).to(dev, non_blocking=True) for im in images]
        for i, t in enumerate(tensors):
            if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[2] != 3:
                raise ValueError(f"images[{i}]: expected (H, W, 3) uint8 RGB, got {tuple(t.shape)} {t.dtype}")
        for j, r in enumerate(requests):
            if not 0 <= r.image_index < len(tensors):
                raise ValueError(f"requests[{j}].image_index {r.image_index} outside 0..{len(tensors) - 1}")
            if np.asarray(r.camera_matrix).shape != (3, 3):
                raise ValueError(f"requests[{j}].camera_matrix: expected (3, 3), got {np.asarray(r.camera_matrix).shape}")
        geo = [crop_affine(r.box_xyxy, self.input_size) for r in requests]
        n = len(requests)
        w, h = self.input_size
        affine = torch.from_numpy(np.stack([g[2] for g in geo]))
        crops = warp_crops(tensors, [r.image_index for r in requests], affine, self.input_size)
        ori_size = [(tensors[r.image_index].shape[1], tensors[r.image_index].shape[0]) for r in requests]

        def per_person(array: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(array, dtype=np.float32)).to(dev).unsqueeze(1)

        return {
            "img": crops.unsqueeze(1),
            "img_size": per_person(np.tile([w, h], (n, 1))),
            "ori_img_size": per_person(ori_size),
            "bbox_center": per_person(np.stack([g[0] for g in geo])),
            "bbox_scale": per_person(np.stack([g[1] for g in geo])),
            "bbox": per_person(np.stack([np.asarray(r.box_xyxy, dtype=np.float32).reshape(4) for r in requests])),
            "affine_trans": affine.to(dev).unsqueeze(1),
            "mask": torch.zeros((n, 1, 1, h, w), device=dev),
            "mask_score": torch.zeros((n, 1), device=dev),
            "person_valid": torch.ones((n, 1), device=dev),
            "cam_int": per_person(np.stack([np.asarray(r.camera_matrix) for r in requests])).squeeze(1),
        }

    # -- the two stages -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone stage: (n, C, h, w) embeddings in the backbone dtype."""
        img = batch["img"].flatten(0, 1)
        x = ((img - self.model.image_mean) / self.model.image_std).to(self.model.backbone_dtype)
        return self._encode_fn(x)

    @torch.no_grad()
    def decode(self, batch: dict[str, torch.Tensor], embeddings: torch.Tensor) -> dict[str, Any]:
        """Decoder stage (prompt-free body decoder, MHR head, camera head): the upstream "mhr" output dict."""
        model = self.model
        with self._lock, contextlib.ExitStack() as stack:
            stack.enter_context(_swapped(model, "backbone", _Precomputed(embeddings)))
            stack.enter_context(_host_faces(model.head_pose))
            stack.enter_context(_method_override(model, "forward_decoder", self._decoder_fn))
            if self.decoder_autocast is not None:
                for i, layer in enumerate(model.decoder.layers):
                    stack.enter_context(_swapped(model.decoder.layers, str(i), _Autocast(layer, self.decoder_autocast)))
            model._initialize_batch(batch)
            return model.forward_step(batch, decoder_type="body")["mhr"]

    def __call__(self, images: Sequence[np.ndarray | torch.Tensor], requests: Sequence[CropRequest]
                 ) -> dict[str, Any]:
        """All crops in one forward: the upstream "mhr" output dict with a leading batch of len(requests)."""
        batch = self.make_batch(images, requests)
        return self.decode(batch, self.encode(batch))

    def estimate(self, images: Sequence[np.ndarray | torch.Tensor], requests: Sequence[CropRequest]
                 ) -> list[dict[str, np.ndarray]]:
        """Like `__call__`, as one numpy dict per request in request order (upstream key names)."""
        return person_dicts(self(images, requests), np.stack([np.asarray(r.box_xyxy) for r in requests]))

    def run_pipelined(self, batches: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, Any]]:
        """Yield the decoder output of each batch, encoding batch t+1 on a second stream while batch t decodes.

        The decoder is bound by kernel launches and host syncs; the backbone by arithmetic: overlapping them
        hides most of the decoder. CUDA only; batches come from `make_batch`.
        """
        if self.device.type != "cuda":
            for batch in batches:
                yield self.decode(batch, self.encode(batch))
            return
        encode_stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        pending: tuple[dict[str, torch.Tensor], torch.Tensor, torch.cuda.Event] | None = None
        for batch in batches:
            encode_stream.wait_stream(main)  # the batch was built on the main stream
            with torch.cuda.stream(encode_stream):
                emb = self.encode(batch)
                done = torch.cuda.Event()
                done.record(encode_stream)
            if pending is not None:
                yield self._decode_when_ready(*pending)
            pending = (batch, emb, done)
        if pending is not None:
            yield self._decode_when_ready(*pending)

    def _decode_when_ready(self, batch: dict[str, torch.Tensor], emb: torch.Tensor, done: torch.cuda.Event
                           ) -> dict[str, Any]:
        torch.cuda.current_stream(self.device).wait_event(done)
        emb.record_stream(torch.cuda.current_stream(self.device))
        return self.decode(batch, emb)


class FastSam3dEstimator(Estimator):
    """The capture node's `Estimator` over the fast path: all hinted boxes of all views in one forward.

    fast: a FastBodyEstimator. stock: the upstream `SAM3DBodyEstimator` of the same model (with its optional
    detector), used for views without boxes (acquisition), in body-only mode so every person comes from the
    same decoder. Persons come out in box order per view, as `streamer.capture.sam3d.person_from_sam3d` builds them.
    """

    name = "sam3d-fast"

    def __init__(self, fast: FastBodyEstimator, stock: Any = None, *, bbox_thr: float = 0.5) -> None:
        self.fast = fast
        self.stock = stock
        self.bbox_thr = bbox_thr

    def estimate(self, views: Sequence[View]) -> list[list[Any]]:
        """One list of `Person2D` per view, in view order."""
        from streamer.capture.sam3d import infer_sam3d_batch, person_from_sam3d

        requests, owners = [], []
        for v, view in enumerate(views):
            if view.boxes is None:
                continue
            for b, box in enumerate(np.asarray(view.boxes, np.float32).reshape(-1, 4)):
                requests.append(CropRequest(image_index=v, box_xyxy=box, camera_matrix=np.asarray(view.K)))
                owners.append((v, b))
        outputs: list[list[dict]] = [[] for _ in views]
        if requests:
            for (v, _), out in zip(owners, self.fast.estimate([view.image for view in views], requests)):
                outputs[v].append(out)
        unboxed = [v for v, view in enumerate(views) if view.boxes is None]
        if unboxed:
            if self.stock is None:
                raise ValueError(f"views {[views[v].camera for v in unboxed]} have no boxes and no stock "
                                 "estimator (detector) was given")
            found = infer_sam3d_batch(self.stock, [views[v] for v in unboxed], inference_type="body",
                                      bbox_thr=self.bbox_thr)
            for v, outs in zip(unboxed, found):
                outputs[v] = list(outs)
        persons = []
        for view, outs in zip(views, outputs):
            scores = view.box_scores if view.boxes is not None else None
            track_ids = view.track_ids if view.boxes is not None else None
            persons.append([person_from_sam3d(out, view.K,
                                              score=1.0 if scores is None else float(scores[i]),
                                              track_id=-1 if track_ids is None else int(track_ids[i]))
                            for i, out in enumerate(outs)])
        return persons

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""
