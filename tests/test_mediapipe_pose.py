"""MediaPipe BlazePose CPU fallback: the MHR-70 mapping (always) and, with mediapipe installed, real runs
on the Pose2Sim videos compared with the trial's OpenPose-based results on the same frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.body.mhr70 import NUM_KEYPOINTS, index_of
from streamer.capture.estimator import View
from streamer.capture.mediapipe_pose import (
    BLAZEPOSE_TO_MHR70,
    MediaPipeEstimator,
    landmarks_to_person,
)
from tests.shared_data import SHARED

TRIAL = SHARED / "pose2sim_demo" / "S00_P00_T01_BalancingTrial"


def test_mapping_is_by_name_and_leaves_the_rest_missing():
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(0, 1000, (33, 2))
    visibility = np.full(33, 0.9)
    visibility[13] = 0.05  # left elbow: too uncertain -> missing
    person = landmarks_to_person(landmarks, visibility, min_visibility=0.1)
    assert person.keypoints.shape == (NUM_KEYPOINTS, 2) and person.confidence.shape == (NUM_KEYPOINTS,)
    np.testing.assert_array_equal(person.keypoints[index_of("left-wrist")], landmarks[15].astype(np.float32))
    np.testing.assert_array_equal(person.keypoints[index_of("right-wrist")], landmarks[16].astype(np.float32))
    np.testing.assert_array_equal(person.keypoints[index_of("right-heel")], landmarks[30].astype(np.float32))
    np.testing.assert_array_equal(person.keypoints[index_of("left-big-toe-tip")], landmarks[31].astype(np.float32))
    assert np.isnan(person.keypoints[index_of("left-elbow")]).all() and person.confidence[index_of("left-elbow")] == 0
    present = np.isfinite(person.keypoints).all(axis=1)
    assert present.sum() == len(BLAZEPOSE_TO_MHR70) - 1
    assert np.all(person.confidence[~present] == 0) and np.all(person.confidence[present] == np.float32(0.9))
    for name in ("neck", "left-small-toe-tip", "right-index-tip", "left-olecranon"):
        assert not present[index_of(name)]
    seen = visibility >= 0.1
    np.testing.assert_allclose(person.box, np.r_[landmarks[seen].min(0), landmarks[seen].max(0)], rtol=1e-6)
    assert person.score == pytest.approx(0.9)


def test_only_the_bundled_model_complexity_is_accepted():
    with pytest.raises(ValueError, match="model_complexity must be 1"):
        MediaPipeEstimator(model_complexity=2)


@pytest.fixture(scope="module")
def trial() -> Path:
    pytest.importorskip("mediapipe", reason="mediapipe (extra 'mediapipe') is not installed")
    if not TRIAL.is_dir():
        pytest.skip(f"shared test data not found at {TRIAL} (see ../shared/reference/data.md)")
    return TRIAL


@pytest.mark.data
def test_box_crops_find_the_same_person_as_the_whole_image(trial):
    from streamer.capture.sources import VideoFileSource

    with VideoFileSource(trial / "videos" / "cam03.mp4") as source:
        image = source.read().image
    with MediaPipeEstimator() as estimator:
        [whole] = estimator.estimate([View("cam03", image, np.eye(3))])[0]
        box = whole.box + np.array([-40, -40, 40, 40], np.float32)
        decoy = np.array([0, 0, 200, 300], np.float32)  # empty corner: nobody there
        boxed = estimator.estimate([View("cam03", image, np.eye(3), boxes=np.stack([box, decoy]),
                                         track_ids=np.array([5, 6]))])[0]
    assert len(boxed) == 1 and boxed[0].track_id == 5
    both = np.isfinite(whole.keypoints[:, 0]) & np.isfinite(boxed[0].keypoints[:, 0])
    assert both.sum() >= 19
    assert np.median(np.linalg.norm(whole.keypoints[both] - boxed[0].keypoints[both], axis=1)) < 10


@pytest.mark.data
def test_triangulated_mediapipe_agrees_with_the_openpose_results(trial):
    """Every 10th frame of the four cameras. Measured on all 100 frames (streamer bench capture --accuracy):
    about 54 mm median to our triangulation of OpenPose, 48 mm to Pose2Sim's .trc (the two detectors define
    hips and face points differently); reprojection error on par with OpenPose's."""
    from tools.bench_capture import pose2sim_agreement

    with MediaPipeEstimator() as estimator:
        result = pose2sim_agreement(trial, estimator, frame_step=10)
    assert result["frames"] == 10 and result["keypoints"] == 21
    assert result["detection_rate"] == 1.0
    assert result["mp_vs_openpose_2d_median_px"] < 30
    assert result["mp_vs_openpose_3d_median_mm"] < 80 and result["mp_vs_openpose_3d_p90_mm"] < 200
    assert result["mp_vs_trc_3d_median_mm"] < 80
    assert result["mp_reproj_median_px"] < 2 * result["openpose_reproj_median_px"]
