"""msgpack codec: message <-> ZeroMQ multipart frames `[topic, header, payload_0, ...]`.

The header is a msgpack map `{"v", "kind", "arrays", "body"[, "seq"]}`; every ndarray field in
`body` holds an unsigned integer index into `arrays` (`[dtype, shape]` per payload frame) and
the payload frames, which carry the raw little-endian bytes. Never pickle. protocol/SPEC.md
is the full wire format.

Decoding is strict and total: anything malformed raises `DecodeError` with a short
`reason` suitable for a counter; no other exception escapes `decode`. Per message class the
decoder is compiled once into a plan of field decoders (`_plan`), so validation costs little.
"""
from __future__ import annotations

import dataclasses
import typing
from functools import cache

import msgpack
import numpy as np

from protocol.messages import MAX_CAMERAS, MAX_KEYPOINTS, MAX_PERSONS, MESSAGE_TYPES
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

SCHEMA_VERSION = 2  # 2: array fields are plain integer indices (1 used msgpack ext type 1)
MAX_HEADER_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_ARRAYS = 512
MAX_NDIM = 4
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "|u1", "|b1", "<u2"})


class DecodeError(ValueError):
    """A rejected message. `reason` is a short stable label for counters (e.g. "dtype")."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def topic_of(msg) -> str:
    """The topic a message is published on: `kp2d/<camera>`, `hint/<camera>`, `stats/<node>`, `hb/<node>`,
    else its kind."""
    kind = msg.KIND
    if kind in ("kp2d", "hint"):
        return f"{kind}/{msg.camera}"
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
    return {name: encoder(getattr(obj, name), payloads, arrays) for name, encoder in _encode_plan(type(obj))}


@cache
def _encode_plan(cls: type):
    """Compiled encoders of a message class: one function per field, specialised to its spec."""
    return tuple((name, _field_encoder(spec)) for name, spec, _ in _fields(cls))


def _field_encoder(spec):
    if isinstance(spec, Arr):
        dtypes = spec.dtypes
        return lambda v, payloads, arrays: _encode_array(v, dtypes, payloads, arrays)
    if isinstance(spec, ArrMap):
        return lambda v, payloads, arrays: {
            k: _encode_array(x, _FLOAT_DTYPES, payloads, arrays) for k, x in v.items()
        }
    if isinstance(spec, Seq):
        return lambda v, payloads, arrays: [_encode_struct(x, payloads, arrays) for x in v]
    if isinstance(spec, Float):
        return lambda v, payloads, arrays: float(v)
    if isinstance(spec, Int):
        return lambda v, payloads, arrays: int(v)
    if isinstance(spec, Bool):
        return lambda v, payloads, arrays: bool(v)
    if isinstance(spec, StrSeq):
        return lambda v, payloads, arrays: [str(x) for x in v]
    return lambda v, payloads, arrays: str(v)


_FLOAT_DTYPES = ("<f4", "<f8")


def _encode_array(value, dtypes: tuple[str, ...], payloads: list, arrays: list) -> int:
    arr = value if type(value) is np.ndarray else np.asarray(value)
    if arr.dtype.str not in dtypes:
        arr = arr.astype(dtypes[0])
    arrays.append([arr.dtype.str, list(arr.shape)])
    payloads.append(arr.tobytes())  # C order whatever the layout of arr
    return len(payloads) - 1


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
    if type(frames) not in (list, tuple) or len(frames) < 2:
        raise DecodeError("frames", "expected [topic, header, payload...]")
    if len(frames) > MAX_ARRAYS + 2:
        raise DecodeError("frames", f"{len(frames)} frames > {MAX_ARRAYS + 2}")
    if not all(type(f) is bytes for f in frames):
        try:
            frames = [f if type(f) is bytes else bytes(f) for f in frames]  # zmq.Frame, memoryview
        except TypeError:
            raise DecodeError("frames", "frames must be bytes-like") from None
    total = sum(map(len, frames))
    if total > MAX_MESSAGE_BYTES:
        raise DecodeError("size", f"{total} bytes > {MAX_MESSAGE_BYTES}")
    header_b = frames[1]
    if len(header_b) > MAX_HEADER_BYTES:
        raise DecodeError("size", f"header {len(header_b)} bytes > {MAX_HEADER_BYTES}")
    try:
        topic = frames[0].decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("topic", "not UTF-8") from None
    try:
        header = msgpack.unpackb(
            header_b, raw=False, strict_map_key=True, max_array_len=4096, max_map_len=512, ext_hook=_reject_ext
        )
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError("header", repr(exc)[:200]) from None
    if type(header) is not dict:
        raise DecodeError("header", "not a map")
    version = header.get("v")
    if version != SCHEMA_VERSION or type(version) is not int:
        raise DecodeError("version", f"schema version {version!r}, expected {SCHEMA_VERSION}")
    kind = header.get("kind")
    cls = MESSAGE_TYPES.get(kind) if type(kind) is str else None
    if cls is None:
        raise DecodeError("kind", f"unknown kind {kind!r}")
    ctx = _Context(_decode_arrays(header.get("arrays"), frames))
    body = header.get("body")
    if type(body) is not dict:
        raise DecodeError("field", "body is not a map")
    msg = _decode_struct(_plan(cls), body, ctx, kind)
    if len(ctx.seen) != len(ctx.arrays):
        raise DecodeError("frames", f"{len(ctx.arrays) - len(ctx.seen)} payload frames not referenced")
    if topic != topic_of(msg):
        raise DecodeError("topic", f"topic {topic!r} does not match the message ({topic_of(msg)!r})")
    seq = header.get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq < 2**64):
        raise DecodeError("header", f"seq {seq!r} is not a u64")
    return topic, msg, seq


def _reject_ext(code: int, data: bytes):
    raise DecodeError("header", f"unexpected msgpack ext type {code}")


_DTYPES = {s: np.dtype(s) for s in ALLOWED_DTYPES}


def _decode_arrays(descs, frames: list[bytes]) -> list[np.ndarray]:
    """Arrays of payload frames 2.. as described in the header; read-only views, no copies."""
    n = len(frames) - 2
    if type(descs) is not list or len(descs) != n:
        raise DecodeError("frames", "array descriptors do not match payload frames")
    out = []
    for i, desc in enumerate(descs):
        if type(desc) is not list or len(desc) != 2 or type(desc[1]) is not list:
            raise DecodeError("header", f"array {i}: descriptor must be [dtype, shape]")
        dtype, shape = desc
        dt = _DTYPES.get(dtype) if type(dtype) is str else None
        if dt is None:
            raise DecodeError("dtype", f"array {i}: dtype {dtype!r} not allowed")
        if len(shape) > MAX_NDIM:
            raise DecodeError("shape", f"array {i}: {len(shape)} dims > {MAX_NDIM}")
        size = dt.itemsize
        for d in shape:
            if type(d) is not int or not 0 <= d <= MAX_MESSAGE_BYTES:
                raise DecodeError("shape", f"array {i}: bad shape {shape!r}")
            size *= d
        payload = frames[i + 2]
        if size != len(payload):
            raise DecodeError("length", f"array {i}: shape {shape} x {dt.itemsize} B != {len(payload)} B")
        out.append(np.ndarray(shape, dt, payload))  # read-only view of the frame
    return out


class _Context:
    """Per-message decode state: the arrays, which were used, and bound shape symbols."""

    __slots__ = ("arrays", "seen", "symbols")

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.seen: set[int] = set()
        self.symbols: dict[str, int] = {}

    def take(self, index) -> np.ndarray:
        if type(index) is not int:
            raise DecodeError("field", "expected an array index")
        if not 0 <= index < len(self.arrays) or index in self.seen:
            raise DecodeError("field", f"bad array index {index}")
        self.seen.add(index)
        return self.arrays[index]


_MISSING = object()


def _decode_struct(plan, body, ctx: _Context, where: str):
    """Decode one struct with its compiled plan `(cls, ((name, decoder, required), ...))`."""
    cls, fields = plan
    if type(body) is not dict:
        raise DecodeError("field", f"{where}: expected a map")
    kwargs = {}
    for name, decoder, required in fields:
        value = body.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise DecodeError("field", f"{where}.{name}: required field missing")
            continue
        try:
            kwargs[name] = decoder(value, ctx)
        except DecodeError as exc:  # prefix the path on the way out (errors are rare)
            raise DecodeError(exc.reason, f"{where}.{name}{exc.detail if exc.detail.startswith(('.', '[')) else ': ' + exc.detail}") from None
    return cls(**kwargs)


@cache
def _plan(cls: type):
    """Compiled decoders of a message class: one closure per field, specialised to its spec."""
    return cls, tuple((name, _field_decoder(spec), not has_default) for name, spec, has_default in _fields(cls))


def _field_decoder(spec):
    if isinstance(spec, Arr):
        return _array_decoder(spec)
    if isinstance(spec, Int):
        lo, hi = spec.lo, spec.hi

        def dec_int(v, ctx):
            if type(v) is not int or not lo <= v <= hi:
                raise DecodeError("field", f"expected int in [{lo}, {hi}]")
            return v

        return dec_int
    if isinstance(spec, Float):
        allow_nan = spec.allow_nan

        def dec_float(v, ctx):
            t = type(v)
            if t is float:
                if v - v != 0.0 and not (allow_nan and v != v):  # x - x is 0 only for finite x
                    raise DecodeError("nonfinite", str(v))
                return v
            if t is int and -(2**63) <= v < 2**64:
                return float(v)
            raise DecodeError("field", "expected a number")

        return dec_float
    if isinstance(spec, Bool):

        def dec_bool(v, ctx):
            if type(v) is not bool:
                raise DecodeError("field", "expected bool")
            return v

        return dec_bool
    if isinstance(spec, Str):
        max_len = spec.max_len

        def dec_str(v, ctx):
            if type(v) is not str or len(v) > max_len:
                raise DecodeError("field", f"expected a string of <= {max_len} chars")
            return v

        return dec_str
    if isinstance(spec, StrSeq):
        max_items, max_len = spec.max_items, spec.max_len

        def dec_strseq(v, ctx):
            if type(v) is not list or len(v) > max_items:
                raise DecodeError("limit", f"expected a list of <= {max_items} strings")
            for s in v:
                if type(s) is not str or len(s) > max_len:
                    raise DecodeError("field", f"expected strings of <= {max_len} chars")
            return v

        return dec_strseq
    if isinstance(spec, Seq):
        max_items, item = spec.max_items, spec.item

        def dec_seq(v, ctx):
            if type(v) is not list or len(v) > max_items:
                raise DecodeError("limit", f"expected a list of <= {max_items} items")
            plan = _plan(item)
            return [_decode_struct(plan, x, ctx, f"[{i}]") for i, x in enumerate(v)]

        return dec_seq
    if isinstance(spec, ArrMap):
        max_items, max_len = spec.max_items, spec.max_len

        def dec_arrmap(v, ctx):
            if type(v) is not dict or len(v) > max_items:
                raise DecodeError("limit", f"expected a map of <= {max_items} arrays")
            out = {}
            for key, ref in v.items():
                if type(key) is not str:
                    raise DecodeError("field", f"array map key {key!r}: expected a string")
                arr = ctx.take(ref)
                if len(key) > 64 or arr.dtype.kind != "f" or arr.ndim > 2 or arr.size > max_len:
                    raise DecodeError("shape", f"{key}: expected a float array of <= {max_len} values")
                if not _all_finite(arr):
                    raise DecodeError("nonfinite", f"{key}: NaN or infinity")
                out[key] = arr
            return out

        return dec_arrmap
    raise TypeError(f"no decoder for {spec!r}")  # pragma: no cover


_SYMBOL_LIMITS = {"K": MAX_KEYPOINTS, "V": MAX_CAMERAS, "P": MAX_PERSONS}


def _array_decoder(spec: Arr):
    dtypes = frozenset(spec.dtypes)
    ndim = len(spec.shape)
    exact = tuple((axis, want) for axis, want in enumerate(spec.shape) if type(want) is int)
    symbols = tuple((axis, want, _SYMBOL_LIMITS.get(want, MAX_MESSAGE_BYTES))
                    for axis, want in enumerate(spec.shape) if type(want) is str)
    is_float = all(np.dtype(d).kind == "f" for d in spec.dtypes)
    allow_nan = spec.allow_nan

    def dec_array(ref, ctx):
        arr = ctx.take(ref)
        if arr.dtype.str not in dtypes:
            raise DecodeError("dtype", f"dtype {arr.dtype.str}, expected one of {sorted(dtypes)}")
        shape = arr.shape
        if len(shape) != ndim:
            raise DecodeError("shape", f"{len(shape)} dims, expected {ndim}")
        for axis, want in exact:
            if shape[axis] != want:
                raise DecodeError("shape", f"shape {shape}, expected {spec.shape}")
        for axis, sym, limit in symbols:
            size = shape[axis]
            bound = ctx.symbols.setdefault(sym, size)
            if bound != size:
                raise DecodeError("shape", f"{sym}={size} but {sym}={bound} elsewhere")
            if size > limit:
                raise DecodeError("limit", f"{sym}={size} > {limit}")
        if is_float:
            if allow_nan:
                if not _no_infinity(arr):
                    raise DecodeError("nonfinite", "infinity")
            elif not _all_finite(arr):
                raise DecodeError("nonfinite", "NaN or infinity")
        return arr

    return dec_array


def _all_finite(arr: np.ndarray) -> bool:
    return arr.size == np.count_nonzero(np.isfinite(arr))


def _no_infinity(arr: np.ndarray) -> bool:
    return np.count_nonzero(np.isinf(arr)) == 0
