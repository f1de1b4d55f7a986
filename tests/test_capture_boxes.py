"""Person boxes: hints from the 3D track, the acquire/re-acquire policy, and the ONNX detector path
(tested with a TINY ONNX GRAPH BUILT IN THE TEST, not a real detector: it returns fixed detections)."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.calibration import Camera
from streamer.capture.boxes import BoxHint, BoxPolicy, box_iou, boxes_for_frame, boxes_from_track, merge_detections


def _camera() -> Camera:
    # 3 m in front of the origin, looking along +z of the world
    K = np.array([[1000.0, 0, 640], [0, 1000.0, 360], [0, 0, 1]])
    return Camera.from_rvec("c", (1280, 720), K, np.array([0.1, -0.05, 0, 0, 0]), [0, 0, 0], [0, 0, 3.0])


def test_boxes_from_track_enclose_the_projected_points_with_a_margin():
    rng = np.random.default_rng(1)
    person = rng.uniform([-0.3, -0.8, -0.2], [0.3, 0.8, 0.2], (70, 3))
    person[5] = np.nan  # missing points are ignored
    behind = np.full((70, 3), [0.0, 0.0, -5.0])  # behind the camera: no box
    boxes = boxes_from_track(_camera(), np.stack([person, behind]), margin=0.1)
    pixels = _camera().project(person[np.isfinite(person).all(axis=1)])
    lo, hi = pixels.min(axis=0), pixels.max(axis=0)
    np.testing.assert_allclose(boxes[0], np.r_[lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)], rtol=1e-5)
    assert np.all(np.isnan(boxes[1]))


def test_boxes_from_track_clip_to_the_image_and_drop_invisible_persons():
    far_left = np.tile([-20.0, 0.0, 0.0], (70, 1)) + np.random.default_rng(2).normal(0, 0.1, (70, 3))
    half_out = np.random.default_rng(3).uniform([-2.5, -0.5, -0.1], [-1.5, 0.5, 0.1], (70, 3))
    boxes = boxes_from_track(_camera(), np.stack([far_left, half_out]))
    assert np.all(np.isnan(boxes[0]))
    assert boxes[1][0] == 0.0 and 0 < boxes[1][2] < 1280


def test_hint_freshness_and_clipping():
    hint = BoxHint("c", t_ns=1_000, track_ids=np.array([4, 5, 6]),
                   boxes=np.array([[10, 20, 110, 220], [np.nan] * 4, [-50, 700, 1300, 900]], np.float32),
                   scores=np.array([0.9, 0.8, 0.7], np.float32))
    boxes, scores, ids = boxes_for_frame(hint, 1_000 + 50_000_000, max_age_ns=100_000_000, image_size=(1280, 720))
    np.testing.assert_array_equal(ids, [4, 6])  # NaN row dropped, none reordered
    np.testing.assert_array_equal(boxes[1], [0, 700, 1280, 720])
    np.testing.assert_allclose(scores, [0.9, 0.7])
    assert boxes_for_frame(hint, 1_000 + 200_000_000, max_age_ns=100_000_000, image_size=(1280, 720)) is None
    assert boxes_for_frame(None, 0, max_age_ns=1, image_size=(10, 10)) is None


def test_policy_runs_the_detector_only_to_acquire_and_periodically():
    policy = BoxPolicy(use_hints=True, max_hint_age_s=0.1, redetect_interval_s=1.0)
    size = (1280, 720)
    def hint_at(t):
        return BoxHint("c", t, np.array([1]), np.array([[10, 10, 100, 200]], np.float32), np.array([1.0], np.float32))
    ms = 1_000_000
    runs = []
    for t_ms in range(0, 3000, 20):  # 50 fps; track present from 500 ms to 2500 ms
        hint = hint_at(t_ms * ms) if 500 <= t_ms < 2500 else None
        hinted, run = policy.plan("c", t_ms * ms, hint, size)
        assert (hinted is not None) == (hint is not None)
        runs.append(run)
    runs = np.array(runs)
    t = np.arange(0, 3000, 20)
    assert runs[t < 500].all() and runs[t >= 2500].all()  # acquiring / re-acquiring: every frame
    tracked = (t >= 500) & (t < 2500)
    assert runs[tracked].sum() == 2  # while tracked: at most once per redetect interval (at 1.0 s and 2.0 s)
    assert policy.hinted_frames == tracked.sum()
    off = BoxPolicy(use_hints=False)
    assert off.plan("c", 0, hint_at(0), size) == (None, True)


def test_merge_adds_only_new_people():
    boxes = np.array([[0, 0, 100, 200]], np.float32)
    det = np.array([[5, 5, 102, 198], [300, 0, 400, 200]], np.float32)
    merged, scores, ids = merge_detections(boxes, np.array([0.9], np.float32), np.array([7]), det,
                                           np.array([0.8, 0.6], np.float32))
    np.testing.assert_array_equal(ids, [7, -1])
    np.testing.assert_array_equal(merged[1], det[1])
    assert box_iou(det, boxes)[0, 0] > 0.85 and box_iou(det, boxes)[1, 0] == 0


# ------------------------------------------------------------------ ONNX detector (tiny test graph)

def _tiny_onnx_detector(path, layout: str, size=(320, 320)):
    """A TEST GRAPH, not a detector: fixed detections (+ 0 x mean(image), so the input is used)."""
    onnx = pytest.importorskip("onnx", reason="onnx (model builder) is not installed")
    from onnx import TensorProto, helper

    h, w = size
    if layout == "yolo":
        # (1, 5, 8) rows cx, cy, w, h, person score; anchors: two overlapping, one weak, one separate
        dets = np.array([[100, 104, 60, 250], [104, 100, 60, 160], [40, 40, 40, 60], [100, 100, 60, 60],
                         [0.9, 0.8, 0.2, 0.7]], np.float32)
        dets = np.concatenate([dets, np.zeros((5, 4), np.float32)], axis=1)[None]  # + 4 empty anchors (A > rows)
    else:
        dets = np.array([[80, 50, 120, 150, 0.9, 0], [220, 10, 300, 130, 0.75, 0], [0, 0, 50, 50, 0.95, 2]], np.float32)
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(dets.shape))
    nodes = [
        helper.make_node("Constant", [], ["dets"], value=helper.make_tensor("d", TensorProto.FLOAT, dets.shape,
                                                                          dets.ravel().tolist())),
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Mul", ["m", "zero"], ["m0"]),
        helper.make_node("Add", ["dets", "m0"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "tiny_test_detector", [image], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_yolo_layout_letterbox_threshold_and_nms(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime (extra 'onnx') is not installed")
    from streamer.capture.onnx_detector import OnnxPersonDetector

    detector = OnnxPersonDetector(_tiny_onnx_detector(tmp_path / "d.onnx", "yolo"), score_threshold=0.5, nms_iou=0.45)
    assert detector.providers == ["CPUExecutionProvider"] and detector.input_size == (320, 320)
    image = np.zeros((480, 640, 3), np.uint8)  # letterboxed: scale 0.5, pad_y 40
    boxes, scores = detector.detect(image)
    # anchor 1 (0.8) overlaps anchor 0 (0.9) -> suppressed; anchor 2 (0.2) below threshold
    np.testing.assert_allclose(scores, [0.9, 0.7])
    np.testing.assert_allclose(boxes[0], [(100 - 20) / 0.5, (104 - 50 - 40) / 0.5, (100 + 20) / 0.5, (104 + 50 - 40) / 0.5])
    np.testing.assert_allclose(boxes[1], [(250 - 30) / 0.5, (160 - 30 - 40) / 0.5, (250 + 30) / 0.5, (160 + 30 - 40) / 0.5])


def test_onnx_boxes_layout_keeps_persons_only(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime (extra 'onnx') is not installed")
    from streamer.capture.onnx_detector import OnnxPersonDetector

    detector = OnnxPersonDetector(_tiny_onnx_detector(tmp_path / "b.onnx", "boxes"), score_threshold=0.5,
                                  device="cuda")  # no CUDA provider here: falls back to the CPU with a warning
    assert detector.providers == ["CPUExecutionProvider"]
    boxes, scores = detector.detect(np.zeros((320, 320, 3), np.uint8))  # no letterbox
    np.testing.assert_allclose(scores, [0.9, 0.75])  # class-2 row dropped
    np.testing.assert_allclose(boxes, [[80, 50, 120, 150], [220, 10, 300, 130]])


def test_onnx_missing_model_and_providers():
    from streamer.capture.onnx_detector import OnnxDetectorUnavailable, OnnxPersonDetector, providers_for

    with pytest.raises(OnnxDetectorUnavailable, match="not found"):
        OnnxPersonDetector("/nonexistent/detector.onnx")
    assert providers_for("cuda:0", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    assert providers_for("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
