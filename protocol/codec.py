"""msgpack codec: message <-> ZeroMQ multipart frames `[topic, header, payload_0, ...]`.

The header is a msgpack map `{"v", "kind", "arrays", "body"}`; every ndarray in `body` is
an ext-type-1 reference (4-byte little-endian index) to a payload frame holding its raw
little-endian bytes, described in `arrays` as `[dtype, shape]`. Never pickle.

Decoding is strict and total: anything malformed raises `DecodeError` with a short
`reason` suitable for a counter; no other exception escapes `decode`.
"""
from __future__ import annotations

import dataclasses
import math
import struct
import typing
from functools import cache

import msgpack
import numpy as np

from protocol.messages import MESSAGE_TYPES
from protocol.schema import Arr, ArrMap, Bool, Float, Int, Seq, Str, StrSeq

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_ARRAYS",
    "MAX_HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "SCHEMA_VERSION",
    "DecodeError",
    "decode",
    "decode_envelope",
    "decode_record",
    "encode",
    "encode_record",
    "topic_of",
]

SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_ARRAYS = 512
MAX_NDIM = 4
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "|u1", "|b1", "<u2"})
_ARRAY_EXT = 1
_INDEX = struct.Struct("<I")


class DecodeError(ValueError):
    """A rejected message. `reason` is a short stable label for counters (e.g. "dtype")."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def topic_of(msg) -> str:
    """The topic a message is published on: `kp2d/<camera>`, `stats/<node>`, `hb/<node>`, else its kind."""
    kind = msg.KIND
    if kind == "kp2d":
        return f"kp2d/{msg.camera}"
    if kind in ("stats", "hb"):
        return f"{kind}/{msg.node}"
    return kind


@cache
def _fields(cls: type) -> tuple[tuple[str, object, bool], ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        spec = hints[f.name].__metadata__[0]
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        out.append((f.name, spec, has_default))
    return tuple(out)


# ---------------------------------------------------------------- encode


def encode(msg, *, seq: int | None = None) -> list[bytes]:
    """Encode a message into multipart frames `[topic, header, payload...]`.

    seq: optional transport sequence number (per publisher and topic, u64) put in the
    header as `"seq"`, so receivers can count messages lost in transit.
    """
    payloads: list[bytes] = []
    arrays: list[list] = []
    body = _encode_struct(msg, payloads, arrays)
    header = {"v": SCHEMA_VERSION, "kind": msg.KIND, "arrays": arrays, "body": body}
    if seq is not None:
        header["seq"] = int(seq)
    return [topic_of(msg).encode(), msgpack.packb(header, use_bin_type=True), *payloads]


def _encode_struct(obj, payloads: list, arrays: list) -> dict:
    out = {}
    for name, spec, _ in _fields(type(obj)):
        value = getattr(obj, name)
        if isinstance(spec, Arr):
            out[name] = _encode_array(value, spec.dtypes, payloads, arrays)
        elif isinstance(spec, ArrMap):
            out[name] = {k: _encode_array(v, ("<f4", "<f8"), payloads, arrays) for k, v in value.items()}
        elif isinstance(spec, Seq):
            out[name] = [_encode_struct(item, payloads, arrays) for item in value]
        elif isinstance(spec, Float):
            out[name] = float(value)
        elif isinstance(spec, Int):
            out[name] = int(value)
        elif isinstance(spec, Bool):
            out[name] = bool(value)
        elif isinstance(spec, StrSeq):
            out[name] = [str(s) for s in value]
        else:
            out[name] = str(value)
    return out


def _encode_array(value, dtypes: tuple[str, ...], payloads: list, arrays: list) -> msgpack.ExtType:
    arr = np.asarray(value)
    if arr.dtype.str not in dtypes:
        arr = arr.astype(dtypes[0])
    arr = np.ascontiguousarray(arr)
    arrays.append([arr.dtype.str, list(arr.shape)])
    payloads.append(arr.tobytes())
    return msgpack.ExtType(_ARRAY_EXT, _INDEX.pack(len(payloads) - 1))


def encode_record(frames: list[bytes]) -> bytes:
    """One blob for files (MCAP message data): msgpack array of the frames, byte-exact."""
    return msgpack.packb(list(frames), use_bin_type=True)


def decode_record(blob: bytes) -> tuple[str, object]:
    """Inverse of `encode_record` followed by `decode`."""
    try:
        frames = msgpack.unpackb(
            blob, raw=False, max_array_len=MAX_ARRAYS + 2, max_map_len=0
        )
    except Exception as exc:  # msgpack may raise beyond its own exception tree
        raise DecodeError("record", repr(exc)[:200]) from None
    if not isinstance(frames, list) or not all(isinstance(f, bytes) for f in frames):
        raise DecodeError("record", "expected a msgpack array of byte strings")
    return decode(frames)


# ---------------------------------------------------------------- decode


def decode(frames: list) -> tuple[str, object]:
    """Decode multipart frames into `(topic, message)`; raises `DecodeError` on any defect."""
    topic, msg, _ = decode_envelope(frames)
    return topic, msg


def decode_envelope(frames: list) -> tuple[str, object, int | None]:
    """Decode multipart frames into `(topic, message, seq)`; seq is the header's transport
    sequence number or None when absent. Raises `DecodeError` on any defect."""
    try:
        return _decode(frames)
    except DecodeError:
        raise
    except Exception as exc:  # belt and braces: nothing but DecodeError leaves the decoder
        raise DecodeError("internal", repr(exc)[:200]) from None


def _decode(frames: list) -> tuple[str, object, int | None]:
    if not isinstance(frames, (list, tuple)) or len(frames) < 2:
        raise DecodeError("frames", "expected [topic, header, payload...]")
    if len(frames) > MAX_ARRAYS + 2:
        raise DecodeError("frames", f"{len(frames)} frames > {MAX_ARRAYS + 2}")
    frames = [bytes(f) for f in frames]
    total = sum(len(f) for f in frames)
    if total > MAX_MESSAGE_BYTES:
        raise DecodeError("size", f"{total} bytes > {MAX_MESSAGE_BYTES}")
    topic_b, header_b, payloads = frames[0], frames[1], frames[2:]
    if len(header_b) > MAX_HEADER_BYTES:
        raise DecodeError("size", f"header {len(header_b)} bytes > {MAX_HEADER_BYTES}")
    try:
        topic = topic_b.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("topic", "not UTF-8") from None
    try:
        header = msgpack.unpackb(
            header_b,
            raw=False,
            strict_map_key=True,
            max_array_len=4096,
            max_map_len=512,
            ext_hook=_ext_hook,
        )
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError("header", repr(exc)[:200]) from None
    if not isinstance(header, dict):
        raise DecodeError("header", "not a map")
    version = header.get("v")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise DecodeError("version", f"schema version {version!r}, expected {SCHEMA_VERSION}")
    kind = header.get("kind")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DecodeError("kind", f"unknown kind {kind!r}")
    arrays = _decode_arrays(header.get("arrays"), payloads)
    body = header.get("body")
    if not isinstance(body, dict):
        raise DecodeError("field", "body is not a map")
    ctx = _Context(arrays)
    msg = _decode_struct(cls, body, ctx, kind)
    if ctx.used != len(arrays):
        raise DecodeError("frames", f"{len(arrays) - ctx.used} payload frames not referenced")
    if topic != topic_of(msg):
        raise DecodeError("topic", f"topic {topic!r} does not match the message ({topic_of(msg)!r})")
    seq = header.get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq < 2**64):
        raise DecodeError("header", f"seq {seq!r} is not a u64")
    return topic, msg, seq


class _ArrayRef:
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def _ext_hook(code: int, data: bytes):
    if code != _ARRAY_EXT or len(data) != 4:
        raise DecodeError("header", f"unexpected ext type {code}")
    return _ArrayRef(_INDEX.unpack(data)[0])


def _decode_arrays(descs, payloads: list[bytes]) -> list[np.ndarray]:
    if not isinstance(descs, list) or len(descs) != len(payloads):
        raise DecodeError("frames", "array descriptors do not match payload frames")
    out = []
    for i, (desc, payload) in enumerate(zip(descs, payloads)):
        if not (isinstance(desc, list) and len(desc) == 2 and isinstance(desc[0], str) and isinstance(desc[1], list)):
            raise DecodeError("header", f"array {i}: descriptor must be [dtype, shape]")
        dtype, shape = desc
        if dtype not in ALLOWED_DTYPES:
            raise DecodeError("dtype", f"array {i}: dtype {dtype!r} not allowed")
        if len(shape) > MAX_NDIM or not all(type(d) is int and 0 <= d <= MAX_MESSAGE_BYTES for d in shape):
            raise DecodeError("shape", f"array {i}: bad shape {shape!r}")
        dt = np.dtype(dtype)
        if math.prod(shape) * dt.itemsize != len(payload):
            raise DecodeError("length", f"array {i}: shape {shape} x {dt.itemsize} B != {len(payload)} B")
        out.append(np.frombuffer(payload, dtype=dt).reshape(shape))
    return out


class _Context:
    """Per-message decode state: the arrays, which were used, and bound shape symbols."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.used = 0
        self.seen: set[int] = set()
        self.symbols: dict[str, int] = {}

    def take(self, ref, where: str) -> np.ndarray:
        if not isinstance(ref, _ArrayRef):
            raise DecodeError("field", f"{where}: expected an array reference")
        if ref.index >= len(self.arrays) or ref.index in self.seen:
            raise DecodeError("field", f"{where}: bad array index {ref.index}")
        self.seen.add(ref.index)
        self.used += 1
        return self.arrays[ref.index]


def _decode_struct(cls: type, body: dict, ctx: _Context, where: str):
    if not isinstance(body, dict):
        raise DecodeError("field", f"{where}: expected a map")
    kwargs = {}
    for name, spec, has_default in _fields(cls):
        path = f"{where}.{name}"
        if name not in body:
            if has_default:
                continue
            raise DecodeError("field", f"{path}: required field missing")
        kwargs[name] = _decode_value(spec, body[name], ctx, path)
    return cls(**kwargs)


def _decode_value(spec, value, ctx: _Context, path: str):
    if isinstance(spec, Arr):
        return _check_array(ctx.take(value, path), spec, ctx, path)
    if isinstance(spec, Int):
        if type(value) is not int or not spec.lo <= value <= spec.hi:
            raise DecodeError("field", f"{path}: expected int in [{spec.lo}, {spec.hi}]")
        return value
    if isinstance(spec, Float):
        if type(value) not in (float, int):
            raise DecodeError("field", f"{path}: expected a number")
        value = float(value)
        if math.isinf(value) or (math.isnan(value) and not spec.allow_nan):
            raise DecodeError("nonfinite", f"{path}: {value}")
        return value
    if isinstance(spec, Bool):
        if type(value) is not bool:
            raise DecodeError("field", f"{path}: expected bool")
        return value
    if isinstance(spec, Str):
        if not isinstance(value, str) or len(value) > spec.max_len:
            raise DecodeError("field", f"{path}: expected a string of <= {spec.max_len} chars")
        return value
    if isinstance(spec, StrSeq):
        if not isinstance(value, list) or len(value) > spec.max_items:
            raise DecodeError("limit", f"{path}: expected a list of <= {spec.max_items} strings")
        if not all(isinstance(s, str) and len(s) <= spec.max_len for s in value):
            raise DecodeError("field", f"{path}: expected strings of <= {spec.max_len} chars")
        return value
    if isinstance(spec, Seq):
        if not isinstance(value, list) or len(value) > spec.max_items:
            raise DecodeError("limit", f"{path}: expected a list of <= {spec.max_items} items")
        return [_decode_struct(spec.item, v, ctx, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(spec, ArrMap):
        if not isinstance(value, dict) or len(value) > spec.max_items:
            raise DecodeError("limit", f"{path}: expected a map of <= {spec.max_items} arrays")
        out = {}
        for key, ref in value.items():
            arr = ctx.take(ref, f"{path}.{key}")
            if len(key) > 64 or arr.dtype.kind != "f" or arr.ndim > 2 or arr.size > spec.max_len:
                raise DecodeError("shape", f"{path}.{key}: expected a float array of <= {spec.max_len} values")
            if not np.isfinite(arr).all():
                raise DecodeError("nonfinite", f"{path}.{key}")
            out[key] = arr
        return out
    raise DecodeError("internal", f"{path}: no decoder for {spec!r}")  # pragma: no cover


def _check_array(arr: np.ndarray, spec: Arr, ctx: _Context, path: str) -> np.ndarray:
    if arr.dtype.str not in spec.dtypes:
        raise DecodeError("dtype", f"{path}: dtype {arr.dtype.str}, expected one of {spec.dtypes}")
    if arr.ndim != len(spec.shape):
        raise DecodeError("shape", f"{path}: {arr.ndim} dims, expected {len(spec.shape)}")
    for size, want in zip(arr.shape, spec.shape):
        if isinstance(want, int) and size != want:
            raise DecodeError("shape", f"{path}: shape {arr.shape}, expected {spec.shape}")
        if isinstance(want, str):
            bound = ctx.symbols.setdefault(want, size)
            if bound != size:
                raise DecodeError("shape", f"{path}: {want}={size} but {want}={bound} elsewhere")
    if "K" in spec.shape and arr.shape[spec.shape.index("K")] > 256:
        raise DecodeError("limit", f"{path}: more than 256 keypoints")
    if "V" in spec.shape and arr.shape[spec.shape.index("V")] > 64:
        raise DecodeError("limit", f"{path}: more than 64 views")
    if arr.dtype.kind == "f":
        if spec.allow_nan:
            if np.isinf(arr).any():
                raise DecodeError("nonfinite", f"{path}: infinity")
        elif not np.isfinite(arr).all():
            raise DecodeError("nonfinite", f"{path}: NaN or infinity")
    return arr
