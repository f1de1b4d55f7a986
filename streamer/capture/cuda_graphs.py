"""Replaying upstream SAM-3D Body stages from CUDA graphs: the graph wrappers and the sync-free dispatch mode.

`GraphedBackbone` replays a backbone (optionally compiled) from one CUDA graph per batch size. Upstream's decoder
cannot be recorded as it is: it indexes device tensors with host index lists and boolean masks (each a pageable
host->device copy, a stream sync), moves host constants with `.to()`/`.cuda()`, checks `inputs.max()` on the
device, and roma's Euler conversion indexes with device boolean masks (`nonzero`, a sync). `SyncFree`, a dispatch
mode active only while a graph is recorded (and on its warm-up calls), turns host indices and constants into
device constants made once (keyed by their content), and roma's elementwise masked assignments into `torch.where`
(`masked_write`); anything else that would sync raises, so a graph is either complete or not made. `GraphedDecode`
records a decoder call under it, one graph per input shape. Each wrapper records on its own stream
(`capture_stream`: on torch's shared capture stream a two-stream replay hung on the H200). Used by
`streamer.capture.sam3d_fast`; the module never imports the upstream package.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["ELEMENTWISE_MASK_FUNCTIONS", "GraphedBackbone", "GraphedDecode", "SyncFree", "capture_stream",
           "expand_host_indices", "masked_write"]

logger = logging.getLogger(__name__)


def capture_stream(owner: Any, device: torch.device | None = None) -> torch.cuda.Stream:
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


class GraphedBackbone:
    """The backbone replayed from one CUDA graph per batch size (input copied into a static buffer); all its graphs
    are recorded on its own stream (`capture_stream`) into its own memory pool."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.pool = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self.graphs:
            static_in = x.clone()
            side = capture_stream(self, x.device)
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


class SyncFree(TorchDispatchMode):
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
    """Companion of `SyncFree` (see `SyncFree.active`): list indices of device tensors and device tensors made
    from Python data become the sync-free mode's device constants."""

    def __init__(self, sync_free: SyncFree) -> None:
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


class GraphedDecode:
    """The decoder stage replayed from one CUDA graph per input shape (recorded on its own stream, own pool).

    run(batch, embeddings, mode) -> output dict: the decoder call to record; it must enter `mode` (a `SyncFree`)
    itself. Off CUDA nothing is recorded: each call runs `run` under the mode (the same code, for tests). The
    graph's inputs are static copies of the batch tensors and embeddings; outputs are cloned after each replay.
    """

    def __init__(self, run: Callable[[dict, torch.Tensor, SyncFree], dict], device: torch.device,
                 warmup: int = 3) -> None:
        self.run = run
        self.device = torch.device(device)
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[Any, dict, torch.Tensor, dict, SyncFree]] = {}
        self.pool = None
        self._host_mode = SyncFree(self.device)

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
        mode = SyncFree(self.device)
        static_batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        static_embeddings = embeddings.clone()
        side = capture_stream(self, self.device)
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
