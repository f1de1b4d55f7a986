"""protocol/: round trips of every message type (hypothesis, strategies derived from the field
specs) and a decoder that rejects garbage, truncation, oversize, wrong dtype/shape and NaN
with a DecodeError reason, never another exception."""
from __future__ import annotations

import dataclasses
import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import (
    MESSAGE_TYPES,
    DecodeError,
    Keypoints2D,
    Person2D,
    decode,
    decode_envelope,
    decode_record,
    encode,
    encode_record,
)
from protocol.codec import MAX_MESSAGE_BYTES, _fields
from protocol.messages import MAX_PERSONS
from protocol.schema import Arr, ArrMap, Bool, Float, Int, Seq, Str, StrSeq

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- strategies from specs


def _float_elements(dtype: str, allow_nan: bool):
    width = 32 if dtype == "<f4" else 64
    return st.floats(width=width, allow_nan=allow_nan, allow_infinity=False)


def _array(spec: Arr, symbols: dict[str, int], draw):
    shape = tuple(
        want if isinstance(want, int) else symbols[want] if isinstance(want, str) else draw(st.integers(0, 6))
        for want in spec.shape
    )
    dtype = np.dtype(spec.dtypes[0])
    if dtype.kind == "f":
        elements = _float_elements(spec.dtypes[0], spec.allow_nan)
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _value(spec, symbols, draw):
    if isinstance(spec, Arr):
        return _array(spec, symbols, draw)
    if isinstance(spec, Int):
        return draw(st.integers(max(spec.lo, -(2**63)), min(spec.hi, 2**64 - 1)))
    if isinstance(spec, Float):
        return draw(st.floats(allow_nan=spec.allow_nan, allow_infinity=False))
    if isinstance(spec, Bool):
        return draw(st.booleans())
    if isinstance(spec, Str):
        return draw(st.text(max_size=min(spec.max_len, 12)))
    if isinstance(spec, StrSeq):
        return draw(st.lists(st.text(max_size=8), max_size=4))
    if isinstance(spec, Seq):
        return [_struct(spec.item, symbols, draw) for _ in range(draw(st.integers(0, 3)))]
    if isinstance(spec, ArrMap):
        keys = draw(st.lists(st.text(min_size=1, max_size=6), max_size=3, unique=True))
        return {
            k: draw(hnp.arrays(np.float32, draw(st.integers(0, 5)), elements=_float_elements("<f4", False)))
            for k in keys
        }
    raise AssertionError(spec)


def _struct(cls, symbols, draw):
    return cls(**{name: _value(spec, symbols, draw) for name, spec, _ in _fields(cls)})


@st.composite
def messages(draw, cls):
    symbols = {s: draw(st.integers(0, 6)) for s in ("K", "V", "P", "J", "C", "G")}
    msg = _struct(cls, symbols, draw)
    # the counter/gauge name lists must match their value arrays
    if cls.KIND == "stats":
        msg.counter_names = [f"c{i}" for i in range(symbols["C"])]
        msg.gauge_names = [f"g{i}" for i in range(symbols["G"])]
    return msg


def assert_same(a, b):
    assert type(a) is type(b)
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", sorted(MESSAGE_TYPES))
def test_every_message_type_round_trips(kind):
    cls = MESSAGE_TYPES[kind]

    @SETTINGS
    @given(messages(cls), st.one_of(st.none(), st.integers(0, 2**64 - 1)))
    def check(msg, seq):
        frames = encode(msg, seq=seq)
        assert all(type(f) is bytes for f in frames)
        topic, back, seq_back = decode_envelope(frames)
        assert topic == frames[0].decode()
        assert seq_back == seq
        assert_same(msg, back)
        assert_same(msg, decode_record(encode_record(frames))[1])

    check()


def one_person_kp2d(k: int = 70) -> Keypoints2D:
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 1000, (k, 2)).astype(np.float32)
    kp[5] = np.nan
    conf = rng.uniform(0, 1, k).astype(np.float32)
    conf[5] = 0
    person = Person2D(box=np.array([0, 0, 10, 10], np.float32), score=0.9, keypoints=kp, confidence=conf)
    return Keypoints2D(
        camera="cam0", seq=3, frame_index=3, t_capture_ns=10**18, image_size=np.array([1280, 720], np.int32),
        calib_version="abc", persons=[person],
    )


def test_decoded_arrays_are_read_only_views_and_nan_marks_missing():
    _, back = decode(encode(one_person_kp2d()))
    kp = back.persons[0].keypoints
    assert kp.shape == (70, 2) and kp.dtype == np.float32 and not kp.flags.writeable
    assert np.isnan(kp[5]).all() and back.persons[0].confidence[5] == 0


# ---------------------------------------------------------------- rejects


def _reason(frames) -> str:
    with pytest.raises(DecodeError) as info:
        decode(frames)
    return info.value.reason


def _with_header(frames, edit):
    header = msgpack.unpackb(frames[1], raw=False)
    edit(header)
    return [frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]]


@SETTINGS
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=6))
def test_garbage_frames_raise_only_decode_error(frames):
    with pytest.raises(DecodeError):
        decode(frames)


@SETTINGS
@given(st.data())
def test_truncated_or_bit_flipped_frames_raise_only_decode_error(data):
    frames = encode(one_person_kp2d())
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    if data.draw(st.booleans()) or not frame:
        cut = data.draw(st.integers(0, max(0, len(frame) - 1)))
        frame = frame[:cut]
    else:
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] ^= data.draw(st.integers(1, 255))
    frames[i] = bytes(frame)
    try:
        decode(frames)  # a flip inside a float payload may still be a valid message
    except DecodeError as exc:
        assert exc.reason


def test_dropped_payload_frame_is_rejected():
    frames = encode(one_person_kp2d())
    assert _reason(frames[:-1]) == "frames"


def test_oversized_message_is_rejected():
    frames = encode(one_person_kp2d())
    assert _reason([*frames, b"\0" * (MAX_MESSAGE_BYTES + 1)]) == "size"


def test_too_many_persons_is_rejected():
    msg = one_person_kp2d()
    msg.persons = msg.persons * (MAX_PERSONS + 1)
    assert _reason(encode(msg)) == "limit"


def test_too_many_keypoints_is_rejected():
    assert _reason(encode(one_person_kp2d(k=300))) == "limit"


@pytest.mark.parametrize("dtype", ["|O", "<f2", ">f4", "object", "<U4"])
def test_disallowed_dtype_is_rejected(dtype):
    frames = encode(one_person_kp2d())

    def edit(h):
        h["arrays"][2][0] = dtype

    assert _reason(_with_header(frames, edit)) == "dtype"


def test_allowed_but_wrong_dtype_for_the_field_is_rejected():
    frames = encode(one_person_kp2d())  # array 2 = keypoints (70, 2) <f4 -> claim (70, 1) <f8, same bytes

    def edit(h):
        h["arrays"][2] = ["<f8", [70, 1]]

    assert _reason(_with_header(frames, edit)) == "dtype"


@pytest.mark.parametrize("shape,reason", [([140, 1], "shape"), ([70, 3], "length"), ([2, 70], "shape"), ([-1, 2], "shape")])
def test_wrong_shape_is_rejected(shape, reason):
    frames = encode(one_person_kp2d())

    def edit(h):
        h["arrays"][2][1] = shape

    assert _reason(_with_header(frames, edit)) == reason


def test_inconsistent_keypoint_count_within_a_message_is_rejected():
    msg = one_person_kp2d()
    msg.persons[0].confidence = np.ones(69, np.float32)
    assert _reason(encode(msg)) == "shape"


@pytest.mark.parametrize("field,value", [("box", np.nan), ("confidence", np.nan), ("keypoints", np.inf)])
def test_nan_or_inf_where_not_allowed_is_rejected(field, value):
    msg = one_person_kp2d()
    arr = getattr(msg.persons[0], field).copy()
    arr.flat[1] = value
    setattr(msg.persons[0], field, arr)
    assert _reason(encode(msg)) == "nonfinite"


def test_nan_score_is_rejected():
    msg = one_person_kp2d()
    msg.persons[0].score = float("nan")
    assert _reason(encode(msg)) == "nonfinite"


@pytest.mark.parametrize(
    "edit,reason",
    [
        (lambda h: h.update(v=99), "version"),
        (lambda h: h.update(v=True), "version"),
        (lambda h: h["body"].update(image_size=99), "field"),
        (lambda h: h["body"].update(image_size=msgpack.ExtType(1, b"\0\0\0\0")), "header"),
        (lambda h: h.update(kind="nope"), "kind"),
        (lambda h: h["body"].pop("camera"), "field"),
        (lambda h: h["body"].update(seq=-1), "field"),
        (lambda h: h["body"].update(seq=True), "field"),
        (lambda h: h["body"].update(camera="x" * 65), "field"),
        (lambda h: h.update(seq="1"), "header"),
        (lambda h: h["body"].update(image_size=[1280, 720]), "field"),
    ],
)
def test_header_defects_are_rejected_with_a_reason(edit, reason):
    assert _reason(_with_header(encode(one_person_kp2d()), edit)) == reason


def test_estimator_parameter_names_must_be_strings():
    msg = one_person_kp2d()
    msg.persons[0].params = {"shape": np.zeros(45, np.float32)}
    frames = encode(msg)
    assert decode(frames)[1].persons[0].params["shape"].shape == (45,)

    def bytes_key(h):
        params = h["body"]["persons"][0]["params"]
        params[b"shape"] = params.pop("shape")

    assert _reason(_with_header(frames, bytes_key)) == "field"


def test_topic_must_match_the_message():
    frames = encode(one_person_kp2d())
    assert _reason([b"kp2d/cam9", *frames[1:]]) == "topic"


def test_error_names_the_field_path():
    msg = one_person_kp2d()
    msg.persons[0].box = np.array([0, np.nan, 1, 1], np.float32)
    with pytest.raises(DecodeError, match=r"kp2d\.persons\[0\]\.box"):
        decode(encode(msg))


def test_bad_record_blob_is_rejected():
    with pytest.raises(DecodeError) as info:
        decode_record(b"\xc1garbage")
    assert info.value.reason == "record"


def test_non_contiguous_and_other_dtype_arrays_are_sent_in_c_order_as_the_field_dtype():
    msg = one_person_kp2d()
    kp = np.asfortranarray(msg.persons[0].keypoints.astype(np.float64))  # f8, Fortran order
    msg.persons[0].keypoints = kp
    msg.persons[0].confidence = np.ones((70, 2), np.float32)[:, 0]  # strided view
    _, back = decode(encode(msg))
    assert back.persons[0].keypoints.dtype == np.float32
    assert np.array_equal(back.persons[0].keypoints, kp.astype(np.float32), equal_nan=True)
    assert np.array_equal(back.persons[0].confidence, np.ones(70, np.float32))
