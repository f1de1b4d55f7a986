"""SAM-3D Body adapter against a STAND-IN estimator (the real weights are gated and not available here).

`StandInSam3dBodyEstimator` is NOT SAM-3D Body: it honours upstream's exact `process_one_image`
signature and input checks (RGB ndarray, (N, 4) boxes, `cam_int` a torch tensor (1, 3, 3)) and returns
per-person dicts built from the four real upstream outputs in ../shared/data/sam3d_body_outputs/, with
`pred_keypoints_2d` projected about the image centre exactly as upstream's "full" mode does.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol import decode, encode
from protocol.messages import Keypoints2D
from streamer.capture.estimator import View
from streamer.capture.sam3d import (
    PARAM_KEYS,
    Sam3dEstimator,
    Sam3dUnavailable,
    build_sam3d_body,
    check_sam3d_files,
    person_from_sam3d,
    project_camera_points,
)
from tests.shared_data import load_sam3d_outputs

# The four outputs share one image: f = 2535.27 px, centre (960, 445) (reference §4, verified there)
F_PX, WIDTH, HEIGHT = 2535.27, 1920, 890


@pytest.fixture(scope="module")
def real_outputs() -> list[dict]:
    return load_sam3d_outputs()


class StandInSam3dBodyEstimator:
    """STAND-IN for `sam_3d_body.SAM3DBodyEstimator` (see module docstring). Records its calls."""

    def __init__(self, outputs: list[dict]):
        self.outputs = outputs
        self.calls: list[dict] = []

    def process_one_image(self, img, bboxes=None, masks=None, cam_int=None, det_cat_id=0, bbox_thr=0.5,
                          nms_thr=0.3, use_mask=False, inference_type="full"):
        assert isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
        assert isinstance(cam_int, torch.Tensor) and tuple(cam_int.shape) == (1, 3, 3)  # upstream: cam_int.to(...)
        self.calls.append(dict(bboxes=bboxes, cam_int=cam_int.clone(), inference_type=inference_type,
                               bbox_thr=bbox_thr))
        height, width = img.shape[:2]
        if bboxes is None:  # no detector in the stand-in: upstream then uses the whole image as one box
            boxes = np.array([[0, 0, width, height]], np.float32)
        else:
            boxes = np.asarray(bboxes).reshape(-1, 4)
        f = float(cam_int[0, 0, 0])
        results = []
        for i, box in enumerate(boxes):
            src = self.outputs[i % len(self.outputs)]
            out = {k: v.copy() for k, v in src.items()}
            points = out["pred_keypoints_3d"] + out["pred_cam_t"]
            # upstream "full"-mode final 2D: about the image centre, whatever K's principal point is
            out["pred_keypoints_2d"] = (f * points[:, :2] / points[:, 2:] + [width / 2, height / 2]).astype(np.float32)
            out["bbox"] = np.asarray(box, np.float32)
            out["focal_length"] = np.float32(f)
            out["mask"] = None
            results.append(out)
        return results


def _image() -> np.ndarray:
    return np.zeros((HEIGHT, WIDTH, 3), np.uint8)


def test_reprojection_reproduces_the_real_2d_when_k_has_the_image_centre(real_outputs):
    """On the real outputs, re-projecting 3D + cam_t with the K the model used gives its own 2D."""
    K = np.array([[F_PX, 0, WIDTH / 2], [0, F_PX, HEIGHT / 2], [0, 0, 1]])
    for out in real_outputs:
        person = person_from_sam3d(out, K)
        np.testing.assert_allclose(person.keypoints, out["pred_keypoints_2d"], atol=0.02)
        assert np.all(person.confidence == 1.0)


def test_adapter_end_to_end_with_a_calibrated_k_off_centre(real_outputs):
    """Four persons in one view, calibrated K with principal point != image centre: every person is
    published in box order, keypoints are the K projection (not upstream's centred 2D), parameters exact,
    and the message survives the wire codec."""
    stand_in = StandInSam3dBodyEstimator(real_outputs)
    estimator = Sam3dEstimator(stand_in)
    K = np.array([[F_PX, 0, 931.5], [0, F_PX + 3.0, 471.25], [0, 0, 1]])
    boxes = np.stack([o["bbox"] for o in real_outputs]).astype(np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    view = View("cam_a", _image(), K, boxes=boxes, box_scores=scores, track_ids=np.array([3, -1, 7, 8]))
    [persons] = estimator.estimate([view])

    call = stand_in.calls[0]
    np.testing.assert_allclose(call["cam_int"][0].numpy(), K, rtol=1e-6)
    assert call["cam_int"].dtype == torch.float32 and call["inference_type"] == "full"
    np.testing.assert_array_equal(call["bboxes"], boxes)

    assert len(persons) == 4
    for person, out, score, tid in zip(persons, real_outputs, scores, [3, -1, 7, 8]):
        points = out["pred_keypoints_3d"].astype(np.float64) + out["pred_cam_t"]
        expected = np.column_stack([K[0, 0] * points[:, 0] / points[:, 2] + K[0, 2],
                                    K[1, 1] * points[:, 1] / points[:, 2] + K[1, 2]])
        np.testing.assert_allclose(person.keypoints, expected, atol=1e-3)
        centred = F_PX * points[:, :2] / points[:, 2:] + [WIDTH / 2, HEIGHT / 2]
        assert np.abs(person.keypoints - centred).max() > 10  # upstream's centred 2D was not passed on
        np.testing.assert_array_equal(person.box, out["bbox"])
        assert person.score == pytest.approx(score) and person.track_id == tid
        for name, (key, shape) in PARAM_KEYS.items():
            assert person.params[name].shape == shape
            np.testing.assert_array_equal(person.params[name], out[key])
        np.testing.assert_allclose(person.params["keypoints_3d_cam"], points, atol=1e-5)

    msg = Keypoints2D(camera="cam_a", seq=1, frame_index=5, t_capture_ns=123, image_size=np.array([WIDTH, HEIGHT]),
                      calib_version="v1", persons=persons)
    topic, back = decode(encode(msg))
    assert topic == "kp2d/cam_a" and len(back.persons) == 4
    for a, b in zip(persons, back.persons):
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        for name in PARAM_KEYS:
            np.testing.assert_array_equal(a.params[name], b.params[name])


def test_batch_of_views_from_several_cameras(real_outputs):
    """One call for N cameras: one person list per view; each view's own K goes to upstream; a view
    without boxes lets upstream search (its detector, or the whole image); an empty box list yields nobody."""
    stand_in = StandInSam3dBodyEstimator(real_outputs)
    estimator = Sam3dEstimator(stand_in, inference_type="body")
    Ks = [np.array([[F_PX + 10 * i, 0, 950.0 + i], [0, F_PX + 10 * i, 440.0 - i], [0, 0, 1]]) for i in range(3)]
    views = [
        View("c0", _image(), Ks[0], boxes=np.stack([o["bbox"] for o in real_outputs[:2]])),
        View("c1", _image(), Ks[1]),
        View("c2", _image(), Ks[2], boxes=np.zeros((0, 4), np.float32)),
    ]
    result = estimator.estimate(views)
    assert [len(p) for p in result] == [2, 1, 0]
    assert len(stand_in.calls) == 2 and all(c["inference_type"] == "body" for c in stand_in.calls)
    assert stand_in.calls[1]["bboxes"] is None
    np.testing.assert_allclose(stand_in.calls[1]["cam_int"][0].numpy(), Ks[1], rtol=1e-6)
    assert result[1][0].score == 1.0 and result[1][0].track_id == -1
    # the persons of camera c1 are projected with c1's K
    points = real_outputs[0]["pred_keypoints_3d"].astype(np.float64) + real_outputs[0]["pred_cam_t"]
    np.testing.assert_allclose(result[1][0].keypoints, project_camera_points(points, Ks[1]), atol=1e-3)


def test_points_behind_the_camera_are_missing(real_outputs):
    out = dict(real_outputs[0])
    out["pred_cam_t"] = out["pred_cam_t"] * np.array([1, 1, 0], np.float32)  # body straddles the camera plane
    person = person_from_sam3d(out, np.array([[1000.0, 0, 500], [0, 1000, 500], [0, 0, 1]]))
    behind = (out["pred_keypoints_3d"][:, 2] <= 1e-3)
    assert behind.any() and (~behind).any()
    assert np.all(np.isnan(person.keypoints[behind])) and np.all(person.confidence[behind] == 0)
    assert np.all(np.isfinite(person.keypoints[~behind])) and np.all(person.confidence[~behind] == 1)


def test_malformed_upstream_output_names_the_key(real_outputs):
    out = dict(real_outputs[0])
    out["shape_params"] = out["shape_params"][:40]
    with pytest.raises(ValueError, match="shape_params.*\\(45,\\)"):
        person_from_sam3d(out, np.eye(3))


def test_box_count_mismatch_is_an_error(real_outputs):
    class Short(StandInSam3dBodyEstimator):
        def process_one_image(self, img, **kw):
            return super().process_one_image(img, **kw)[:1]
    view = View("c", _image(), np.eye(3) * [F_PX, F_PX, 1], boxes=np.zeros((2, 4), np.float32) + [0, 0, 50, 80])
    with pytest.raises(ValueError, match="1 persons for 2 boxes"):
        Sam3dEstimator(Short(real_outputs)).estimate([view])


def test_missing_weights_say_what_to_install_and_where(tmp_path):
    problems = check_sam3d_files(tmp_path / "model.ckpt", tmp_path / "assets" / "mhr_model.pt")
    assert len(problems) == 2
    with pytest.raises(Sam3dUnavailable) as info:
        build_sam3d_body(tmp_path / "model.ckpt", tmp_path / "assets" / "mhr_model.pt", device="cpu")
    text = str(info.value)
    for needle in ("model.ckpt", "mhr_model.pt", "facebook/sam-3d-body-dinov3", "pip install", "mediapipe"):
        assert needle in text
    # files present but no model_config.yaml beside the checkpoint
    (tmp_path / "model.ckpt").write_bytes(b"x")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "mhr_model.pt").write_bytes(b"x")
    assert check_sam3d_files(tmp_path / "model.ckpt", tmp_path / "assets" / "mhr_model.pt") == [
        f"model_config.yaml not found at {tmp_path / 'model_config.yaml'} or {tmp_path.parent / 'model_config.yaml'}"]


def test_missing_package_is_reported_after_files_check(tmp_path, monkeypatch):
    try:
        import sam_3d_body  # noqa: F401
        pytest.skip("sam_3d_body is installed here; the missing-package message cannot be observed")
    except ImportError:
        pass
    (tmp_path / "model.ckpt").write_bytes(b"x")
    (tmp_path / "model_config.yaml").write_text("MODEL: {}\n")
    (tmp_path / "mhr_model.pt").write_bytes(b"x")
    monkeypatch.setenv("MOMENTUM_ENABLED", "1")
    with pytest.raises(Sam3dUnavailable, match="cannot import sam_3d_body.*git clone https://github.com/facebookresearch/sam-3d-body"):
        build_sam3d_body(tmp_path / "model.ckpt", tmp_path / "mhr_model.pt", device="cpu")


def test_hand_inference_type_is_refused():
    with pytest.raises(ValueError, match="hand"):
        Sam3dEstimator(object(), inference_type="hand")
