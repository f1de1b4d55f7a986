"""Points3D.view_params (the estimator parameters of the chosen person per camera): round trips with
MHR-shaped parameters, older messages without the field still decode, and every defect of the new
field is rejected with a reason (property tests over truncation and bit flips included)."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import DecodeError, Points3D, ViewParams, decode, encode
from protocol.messages import MAX_CAMERAS
from tests.test_protocol import assert_same

MHR_SHAPES = {"body_pose": (133,), "hand": (108,), "shape": (45,), "scale": (28,), "global_rot": (3,),
              "cam_t": (3,), "keypoints_3d_cam": (70, 3)}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mhr_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.normal(0, 1, shape).astype(np.float32) for k, shape in MHR_SHAPES.items()}


def points3d(cameras: list[str], view_params: list[ViewParams] | None = None, k: int = 70) -> Points3D:
    v = len(cameras)
    rng = np.random.default_rng(1)
    msg = Points3D(
        t_ns=10**18, frame_index=4, person_id=0, calib_version="rig", cameras=cameras,
        sources_seq=np.arange(v, dtype=np.int64), sync_spread_ns=100, points=rng.normal(0, 1, (k, 3)).astype(np.float32),
        n_views=np.full(k, v, np.uint8), inliers=np.ones((k, v), bool), reproj_px=np.ones((k, v), np.float32),
        confidence=np.full(k, 0.9, np.float32), mean_reproj_px=1.0, usable=True)
    if view_params is not None:
        msg.view_params = view_params
    return msg


def _reason(frames) -> str:
    with pytest.raises(DecodeError) as info:
        decode(frames)
    return info.value.reason


def _edit_body(frames, edit) -> list[bytes]:
    header = msgpack.unpackb(frames[1], raw=False)
    edit(header["body"], header)
    return [frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]]


def test_mhr_view_params_round_trip_exactly():
    rng = np.random.default_rng(0)
    views = [ViewParams(camera=c, params=mhr_params(rng)) for c in ("cam0", "cam2")]
    msg = points3d(["cam0", "cam1", "cam2"], views)
    frames = encode(msg)
    _, back = decode(frames)
    assert_same(msg, back)
    assert [v.camera for v in back.view_params] == ["cam0", "cam2"]
    assert back.view_params[1].params["keypoints_3d_cam"].shape == (70, 3)
    # 7 arrays per view on top of the 6 of the points; a 4-camera MHR set adds about 9 kB
    assert len(frames) == 2 + 6 + 2 * len(MHR_SHAPES)


def test_older_message_without_the_field_decodes_with_none():
    frames = encode(points3d(["a", "b"]))
    old = _edit_body(frames, lambda body, header: body.pop("view_params"))
    _, msg = decode(old)
    assert msg.view_params == [] and msg.usable


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]),
                          st.dictionaries(st.sampled_from(sorted(MHR_SHAPES)), st.integers(1, 40), min_size=1)),
                max_size=4), st.integers(0, 2**31))
@SETTINGS
def test_any_view_params_round_trip(views, seed):
    rng = np.random.default_rng(seed)
    vp = [ViewParams(camera=c, params={k: rng.normal(0, 1, n).astype(rng.choice(["<f4", "<f8"])) for k, n in p.items()})
          for c, p in views]
    msg = points3d(["a", "b", "c", "d"], vp)
    assert_same(msg, decode(encode(msg))[1])


@given(st.data())
@SETTINGS
def test_truncated_or_bit_flipped_view_params_raise_only_decode_error(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    frames = [bytearray(f) for f in encode(points3d(["a", "b"], [ViewParams("a", mhr_params(rng))]))]
    i = data.draw(st.integers(1, len(frames) - 1))
    frame = frames[i]
    if data.draw(st.booleans()) or not frame:
        del frame[data.draw(st.integers(0, max(0, len(frame) - 1))):]
    else:
        frame[data.draw(st.integers(0, len(frame) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        decode([bytes(f) for f in frames])
    except DecodeError:
        pass  # a flip inside a float payload may still decode: only DecodeError may escape


@pytest.mark.parametrize("edit,reason", [
    (lambda body, h: body.__setitem__("view_params", {"a": 1}), "limit"),  # not a list
    (lambda body, h: body["view_params"][0].__setitem__("camera", 7), "field"),
    (lambda body, h: body["view_params"][0].__setitem__("camera", "x" * 65), "field"),
    (lambda body, h: body["view_params"][0].pop("params"), "field"),
    (lambda body, h: body["view_params"][0].__setitem__("params", [1]), "limit"),
    (lambda body, h: body["view_params"][0]["params"].__setitem__("cam_t", "zero"), "field"),
    (lambda body, h: body["view_params"][0]["params"].__setitem__("cam_t", 0), "field"),  # used twice
])
def test_malformed_view_params_are_rejected_with_a_reason(edit, reason):
    rng = np.random.default_rng(2)
    frames = encode(points3d(["a", "b"], [ViewParams("a", mhr_params(rng))]))
    assert _reason(_edit_body(frames, edit)) == reason


def test_non_finite_or_non_float_parameters_are_rejected():
    params = mhr_params(np.random.default_rng(3))
    params["global_rot"][1] = np.nan
    assert _reason(encode(points3d(["a", "b"], [ViewParams("a", params)]))) == "nonfinite"
    frames = encode(points3d(["a", "b"], [ViewParams("a", {"scale": np.ones(4, np.float32)})]))
    header = msgpack.unpackb(frames[1], raw=False)
    index = header["body"]["view_params"][0]["params"]["scale"]
    header["arrays"][index] = ["<i4", [4]]
    assert _reason([frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]]) == "shape"


def test_more_views_than_cameras_allow_are_rejected():
    views = [ViewParams(f"c{i}", {"cam_t": np.zeros(3, np.float32)}) for i in range(MAX_CAMERAS + 1)]
    assert _reason(encode(points3d(["a", "b"], views))) == "limit"
    views = [ViewParams("a", {f"k{i}": np.zeros(1, np.float32) for i in range(17)})]
    assert _reason(encode(points3d(["a", "b"], views))) == "limit"
    views = [ViewParams("a", {"big": np.zeros(4097, np.float32)})]
    assert _reason(encode(points3d(["a", "b"], views))) == "shape"
