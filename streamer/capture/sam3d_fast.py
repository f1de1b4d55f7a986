"""Fast SAM-3D Body inference for several cameras sharing one GPU (body-only, batched, CUDA graphs, compile).

Wraps a model built by the upstream package (`sam_3d_body.load_sam_3d_body`, or `SAM3DBody(cfg)`): it uses
the upstream modules as they are and changes only how they are driven. Against the stock call
(`SAM3DBodyEstimator.process_one_image`, one image at a time, "full" mode) the fast path

1. decodes the body only (`inference_type="body"`): one backbone pass and one decoder run per person instead of
   three backbone passes and up to four decoder runs (no hand-crop refinement of fingers and wrists);
2. batches the person crops of all cameras into one forward (each crop keeps its own camera matrix);
3. crops on the GPU (`streamer.capture.crops`: one bilinear `grid_sample` per image, the same affine as
   upstream's `TopdownAffine`) instead of `cv2.warpAffine` of the image and of an all-zero mask on the CPU;
4. replays the backbone (optionally `torch.compile`d) from a CUDA graph per batch size, and keeps the
   output-only mesh faces on the host (upstream copies them out after every decoder layer);
5. optionally (`graph_decoder=True`) replays the whole decoder stage (prompt-free decoder, MHR head, camera
   head, keypoint-token updates) from one CUDA graph per batch size. Upstream's decoder cannot be captured as it
   is (host index lists and masks, host constants, device-mask `nonzero`: each a sync); `SyncFree`
   (`streamer.capture.cuda_graphs`), a dispatch mode active only while the graph is recorded, makes them device
   constants and `torch.where`s or raises; its prompt encoder's boolean masks are avoided as the dummy prompt's
   embedding (the body pass always sends the all-invalid prompt) is computed once per batch size, and (in every
   path) upstream's input normalisation, whose output only reaches the precomputed backbone, is skipped.
   Anything else that would sync raises while recording, so a graph is either complete or not made. On the
   H200 the replayed decoder gave the eager path's outputs bit for bit, on the recorded inputs and on others.
   Only the MHR stand-in of `streamer bench estimator` has been recorded: the real TorchScript `mhr_model.pt`
   is gated (if it syncs, recording raises and `graph_decoder=False` is the way back);
6. takes person boxes from hints (the 3D track reprojected, `streamer.capture.boxes`), so no detector runs;
7. optionally pipelines calls (`submit` / `pipelined`): the crop and backbone of call t+1 run on one stream
   while the decoder of call t runs on a higher-priority one (each graph recorded on its own stream, see
   `streamer.capture.cuda_graphs.capture_stream`); outputs come one call late. On the H200: +20 % at 8 crops per call, +3 % at 64;
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
import logging
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from streamer.capture.crops import CropRequest, crop_affine, warp_crops
from streamer.capture.cuda_graphs import GraphedBackbone, GraphedDecode, SyncFree
from streamer.capture.estimator import Estimator, View

__all__ = [
    "BACKBONE_PRECISIONS",
    "FastBodyEstimator",
    "FastSam3dEstimator",
    "PendingCall",
    "PendingPersons",
    "person_dicts",
]

logger = logging.getLogger(__name__)

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
        self._encode_fn = GraphedBackbone(fn) if use_graphs else fn
        self._decoder_fn = torch.compile(model.forward_decoder, dynamic=False) if compile_decoder else None
        self.graph_decoder = graph_decoder
        self._graphed_decode = GraphedDecode(self._decode_sync_free, self.device) if graph_decoder else None
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

    def _decode_sync_free(self, batch: dict[str, torch.Tensor], embeddings: torch.Tensor, mode: SyncFree
                          ) -> dict[str, Any]:
        """The decoder stage as `GraphedDecode` records it: swaps, the dummy prompt's embedding from a cache,
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
