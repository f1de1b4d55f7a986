"""Property tests for the capture inputs that come from outside: timestamp files, estimator outputs
(SAM-3D Body dicts, BlazePose landmarks, ONNX detector tensors). Malformed input raises the module's
one documented error (naming what was wrong), never anything else; well-formed input never NaN-leaks."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from streamer.capture.mediapipe_pose import landmarks_to_person
from streamer.capture.onnx_detector import _decode
from streamer.capture.sam3d import PARAM_KEYS, person_from_sam3d
from streamer.capture.sources import SourceError, read_timestamp_file

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("file,t_nsframe0123456789.-\n\"a /x")), max_size=200))
def test_timestamp_file_parser_raises_only_source_error(tmp_path, text):
    path = tmp_path / "t.csv"
    path.write_text(text)
    try:
        rows = read_timestamp_file(path)
    except SourceError as exc:
        assert str(path) in str(exc)
        return
    for (i0, _, t0), (i1, _, t1) in zip(rows, rows[1:]):
        assert i1 > i0 and t1 > t0
    assert all(name and "/" not in name for _, name, _ in rows)


def _sam3d_dict():
    out = {"bbox": np.zeros(4, np.float32), "pred_keypoints_3d": np.zeros((70, 3), np.float32),
           "pred_cam_t": np.array([0, 0, 5], np.float32)}
    for key, shape in PARAM_KEYS.values():
        out[key] = np.zeros(shape, np.float32)
    return out


@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from(["bbox", "pred_keypoints_3d", "pred_cam_t", *[k for k, _ in PARAM_KEYS.values()]]),
       shape=st.lists(st.integers(0, 80), min_size=0, max_size=3).map(tuple), drop=st.booleans())
def test_malformed_sam3d_outputs_raise_value_error_naming_the_key(key, shape, drop):
    out = _sam3d_dict()
    if drop:
        del out[key]
    else:
        if shape == out[key].shape:
            return
        out[key] = np.zeros(shape, np.float32)
    try:
        person_from_sam3d(out, np.array([[1000.0, 0, 500], [0, 1000, 500], [0, 0, 1]]))
    except ValueError as exc:
        assert key in str(exc)
    else:
        raise AssertionError("a malformed output was accepted")


@settings(max_examples=100, deadline=None)
@given(points=arrays(np.float32, (70, 3), elements=floats), cam_t=arrays(np.float32, (3,), elements=floats),
       params=arrays(np.float32, (3,), elements=floats))
def test_sam3d_conversion_never_leaks_nan_into_valid_points_or_params(points, cam_t, params):
    out = _sam3d_dict()
    out["pred_keypoints_3d"], out["pred_cam_t"], out["global_rot"] = points, cam_t, params
    person = person_from_sam3d(out, np.array([[1000.0, 0, 500], [0, 1000, 500], [0, 0, 1]]))
    valid = person.confidence > 0
    assert np.all(np.isfinite(person.keypoints[valid])) and np.all(np.isnan(person.keypoints[~valid]))
    assert all(np.all(np.isfinite(v)) for v in person.params.values())


@settings(max_examples=100, deadline=None)
@given(landmarks=arrays(np.float64, (33, 2), elements=st.floats(allow_nan=True, allow_infinity=False, width=32)),
       visibility=arrays(np.float64, (33,), elements=st.floats(-1, 2)))
def test_landmark_mapping_is_nan_safe(landmarks, visibility):
    person = landmarks_to_person(landmarks, visibility)
    present = person.confidence > 0
    assert np.all(np.isfinite(person.keypoints[present])) and np.all(np.isnan(person.keypoints[~present]))
    assert np.all((person.confidence >= 0) & (person.confidence <= 1))
    assert np.all(np.isfinite(person.box)) and 0 <= person.score <= 1


@settings(max_examples=150, deadline=None)
@given(output=st.integers(1, 4).flatmap(
    lambda nd: arrays(np.float32, st.lists(st.integers(0, 9), min_size=nd, max_size=nd).map(tuple), elements=floats)))
def test_onnx_output_decoder_raises_only_value_error(output):
    try:
        boxes, scores = _decode(output)
    except ValueError as exc:
        assert "ONNX detector output" in str(exc)
        return
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and scores.shape == (len(boxes),)
