"""Synthetic stage: determinism (library and `streamer synth`), measured rates vs settings, geometry."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from protocol.messages import Keypoints2D, RigCalibration, Truth
from streamer.body.anny_model import AnnyBody
from streamer.calibration import Rig
from streamer.recording import read_take
from streamer.synthetic import MotionSettings, ObservationSettings, RigSettings, StageSettings, SyntheticStage
from streamer.synthetic.observe import CLEAN, DROPPED, OCCLUDED, OUTLIER, observe_persons, occluded_points
from streamer.synthetic.stage import _NS
from tools import synth

SHORT = MotionSettings(segments=(("walk", 2.0), ("arm_raise", 1.0), ("squat", 1.0), ("hands", 1.0)))


@pytest.fixture(scope="module")
def body() -> AnnyBody:
    return AnnyBody()


@pytest.fixture(scope="module")
def stage(body) -> SyntheticStage:
    return SyntheticStage(StageSettings(rig=RigSettings(cameras=4, fps=30.0), motion=SHORT, seed=3), body=body)


def test_cli_twice_with_one_seed_gives_identical_takes(tmp_path) -> None:
    args = ["--seconds", "0.5", "--cameras", "2", "--fps", "30"]
    a, b, c = tmp_path / "a.mcap", tmp_path / "b.mcap", tmp_path / "c.mcap"
    assert synth.main([str(a), "--seed", "5", *args]) == 0
    assert synth.main([str(b), "--seed", "5", *args]) == 0
    assert synth.main([str(c), "--seed", "6", *args]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert synth.main([str(a), "--seed", "5", *args]) == 1  # refuses to overwrite without --overwrite
    records = list(read_take(a))
    topics = [topic for _, topic, _ in records]
    assert topics[0] == "calib" and isinstance(records[0][2], RigCalibration)
    assert topics.count("truth") == 15
    kp2d = [msg for _, topic, msg in records if topic.startswith("kp2d/")]
    assert {m.camera for m in kp2d} == {"cam0", "cam1"} and 25 <= len(kp2d) <= 30
    assert all(isinstance(m, Keypoints2D) and m.calib_version == records[0][2].version for m in kp2d)
    assert all(isinstance(msg, Truth) for _, topic, msg in records if topic == "truth")


def test_observe_is_stateless_and_deterministic(stage, body) -> None:
    first = stage.observe(7, "cam2")
    for k in range(5):
        stage.observe(k, "cam1")
    again = stage.observe(7, "cam2")
    twin = SyntheticStage(stage.settings, body=body).observe(7, "cam2")
    for other in (again, twin):
        assert other.t_capture_ns == first.t_capture_ns and len(other.persons) == len(first.persons)
        for p, q in zip(first.persons, other.persons):
            np.testing.assert_array_equal(p.keypoints, q.keypoints)
            np.testing.assert_array_equal(p.confidence, q.confidence)
    together = stage.observe_cameras(7)  # vectorised over cameras: the same messages
    assert together["cam2"][0].t_capture_ns == first.t_capture_ns
    for p, q in zip(first.persons, together["cam2"][0].persons):
        np.testing.assert_array_equal(p.keypoints, q.keypoints)
    frames = list(stage.frames("cam0", start=0, stop=20))
    assert [m.frame_index for m in frames] == sorted(m.frame_index for m in frames)
    with pytest.raises(KeyError, match="known: cam0"):
        stage.observe(0, "nope")


def test_truth_and_calibration_are_consistent_with_observations(stage) -> None:
    truth = stage.truth(12)
    assert truth.t_ns == stage.frame_time_ns(12) and [p.person_id for p in truth.persons] == [0, 1]
    assert truth.persons[0].params.shape == (stage.body.num_params,)
    rig = Rig.from_message(stage.calibration())
    assert rig.version == stage.rig.version
    # Clean points reproject from the truth at the exposure time (genlocked, no jitter here: exact frame time).
    settings = dataclasses.replace(stage.settings, observation=ObservationSettings(
        trigger_phase=False, jitter_ms=0.0, clock_offset_ms=0.0, drop_rate=0.0, miss_rate=0.0, lr_swap_rate=0.0))
    exact = SyntheticStage(settings, body=stage.body)
    msg, detail = exact.observe_detailed(12, "cam1")
    assert msg.t_capture_ns == exact.frame_time_ns(12)
    projected = rig.subset(["cam1"]).project(exact.truth_points(12).reshape(-1, 3))[0].reshape(-1, 70, 2)
    for person, pid, labels in zip(msg.persons, detail.person_ids, detail.labels):
        clean = labels == CLEAN
        error = np.linalg.norm(person.keypoints[clean] - projected[pid][clean], axis=1)
        assert np.median(error) < 4.0
        assert np.isnan(person.keypoints[labels == DROPPED]).all() and not person.confidence[labels == DROPPED].any()


def test_measured_rates_match_settings(stage) -> None:
    settings = ObservationSettings(noise_px=3.0, outlier_rate=0.05, lr_swap_rate=0.08, miss_rate=0.06,
                                   occluded_drop_prob=0.6, confidence_mean=0.8)
    cam = stage.rig.cameras[0]
    single = stage.rig.subset([cam.name])
    rng_frames = range(0, stage.cycle_frames, 1)
    residuals, labels_all, swaps, detections, candidates, occluded_total, occluded_kept, conf = [], [], [], 0, 0, 0, 0, []
    for repeat in range(4):
        for k in rng_frames:
            points = stage.truth_points(k)
            pixels = single.project(points.reshape(-1, 3))[0].reshape(points.shape[0], 70, 2)
            rng = np.random.default_rng([99, repeat, k])
            observed = observe_persons(points[None], pixels[None], cam.center[None], [cam.image_size], settings,
                                       [rng])[0]
            in_view = [p for p in range(len(points)) if (np.isfinite(pixels[p]).all(1) & (pixels[p, :, 0] >= 0)
                       & (pixels[p, :, 0] < cam.image_size[0]) & (pixels[p, :, 1] >= 0)
                       & (pixels[p, :, 1] < cam.image_size[1])).sum() >= 3]
            candidates += len(in_view)
            detections += len(observed.persons)
            for person, labels, swapped, clean in zip(observed.persons, observed.labels, observed.swapped,
                                                      observed.clean_pixels):
                swaps.append(swapped)
                labels_all.append(labels)
                body = np.r_[0:21, 63:70]
                ok = labels[body] == CLEAN
                residuals.append(person.keypoints[body][ok] - clean[body][ok])
                conf.append(person.confidence[labels == CLEAN])
            starts = np.stack([0.5 * (points[:, 9] + points[:, 10]), 0.5 * (points[:, 3] + points[:, 4])]).reshape(-1, 3)
            ends = np.stack([points[:, 69], 0.5 * (points[:, 3] + points[:, 4])]).reshape(-1, 3)
            radii = np.repeat([settings.torso_radius_m, settings.head_radius_m], len(points))
            for pid, labels in zip(observed.person_ids, observed.labels):
                occ = occluded_points(cam.center, points[pid], starts, ends, radii)
                inside = np.isfinite(pixels[pid]).all(1)
                occluded_total += int((occ & inside).sum())
                occluded_kept += int(((labels == OCCLUDED) | (labels == OUTLIER))[occ & inside].sum())
    residuals = np.concatenate(residuals)
    labels = np.concatenate(labels_all)
    noise_std = residuals.std()
    assert abs(noise_std - 3.0) < 0.15, noise_std
    live = labels != DROPPED
    outlier_rate = (labels[live] == OUTLIER).mean()
    assert abs(outlier_rate - 0.05) < 0.01, outlier_rate
    assert abs(np.mean(swaps) - 0.08) < 0.03, np.mean(swaps)
    miss_rate = 1 - detections / candidates
    assert abs(miss_rate - 0.06) < 0.03, miss_rate
    assert occluded_total > 200
    assert abs(occluded_kept / occluded_total - 0.4) < 0.06, occluded_kept / occluded_total
    assert abs(np.concatenate(conf).mean() - 0.8) < 0.02


def test_timing_model(stage) -> None:
    obs = ObservationSettings(jitter_ms=1.0, clock_offset_ms=5.0, drop_rate=0.1)
    timed = SyntheticStage(dataclasses.replace(stage.settings, observation=obs), body=stage.body)
    frames = 300
    for cam in timed.camera_names:
        messages = [timed.observe(k, cam) for k in range(frames)]
        kept = [m for m in messages if m is not None]
        assert abs(1 - len(kept) / frames - 0.1) < 0.06
        lag_ms = np.array([(m.t_capture_ns - timed.frame_time_ns(m.frame_index)) / 1e6 for m in kept])
        assert abs(lag_ms.std() - 1.0) < 0.2  # jitter
        assert np.all(np.diff([m.t_capture_ns for m in kept]) > 0)
    offsets = [np.mean([(timed.observe(k, c) or timed.observe(k + 1, c)).t_capture_ns - timed.frame_time_ns(k)
                        for k in range(0, 60, 2)]) / 1e6 for c in timed.camera_names]
    assert np.ptp(offsets) > 0.5  # cameras disagree: phase and clock offset
    assert max(abs(o) for o in offsets) < 1000 / timed.fps + 4 * 5.0


def test_motion_is_periodic_and_grounded(stage) -> None:
    for animation in stage.animations:
        k = animation.keypoints
        assert np.abs(k[0] - k[-1]).max() < 0.08  # loops without a jump (one frame of motion)
        assert abs(k[:, 13:21, 2].min(axis=1) - k[0, 13:21, 2].min()).max() < 1e-6  # feet on the floor
        assert k[:, 0, 2].max() - k[:, 0, 2].min() > 0.25  # squats move the head
    assert _NS == 1_000_000_000


def test_occlusion_geometry_and_broadcasting() -> None:
    camera = np.array([0.0, -5.0, 1.0])
    start, end, radius = np.array([[0.0, 0.0, 0.5]]), np.array([[0.0, 0.0, 1.5]]), np.array([0.2])  # vertical capsule
    points = np.array([
        [0.0, 2.0, 1.0],  # straight behind the capsule: occluded
        [0.0, -2.0, 1.0],  # between the camera and the capsule: visible
        [0.0, 0.1, 1.0],  # inside the capsule, less than a radius beyond its near side: visible (its own surface)
        [1.0, 2.0, 1.0],  # behind, but the ray passes 0.71 m to the side: visible
        [0.0, 2.0, 3.0],  # behind and above: the ray passes over the top cap (0.3 m): visible
        [0.0, 2.0, 1.6],  # behind, the ray crosses the top cap within the radius: occluded
    ])
    assert occluded_points(camera, points, start, end, radius).tolist() == [True, False, False, False, False, True]
    rng = np.random.default_rng(5)  # leading dims broadcast: one call for V cameras == V calls
    centers, pts = rng.normal(size=(3, 3)) * 4, rng.normal(size=(3, 50, 3))
    starts, ends, radii = rng.normal(size=(3, 4, 3)) * 0.5, rng.normal(size=(3, 4, 3)) * 0.5, rng.uniform(0.1, 0.6, (3, 4))
    batched = occluded_points(centers, pts, starts, ends, radii)
    assert batched.shape == (3, 50) and batched.any() and not batched.all()
    for v in range(3):
        assert np.array_equal(batched[v], occluded_points(centers[v], pts[v], starts[v], ends[v], radii[v]))
    assert np.array_equal(occluded_points(centers[0], pts, starts[0], ends[0], radii[0]),
                          np.stack([occluded_points(centers[0], p, starts[0], ends[0], radii[0]) for p in pts]))


def test_detection_boxes_hold_the_visible_points_with_a_margin(stage) -> None:
    cam = stage.rig.cameras[1]
    for k in range(0, stage.cycle_frames, 5):
        msg, observed = stage.observe_detailed(k, cam.name)
        if msg is None:
            continue
        width, height = cam.image_size
        for person, clean in zip(msg.persons, observed.clean_pixels):
            visible = clean[(clean[:, 0] >= 0) & (clean[:, 0] < width) & (clean[:, 1] >= 0) & (clean[:, 1] < height)]
            lo, hi = visible.min(0), visible.max(0)
            margin = 0.1 * np.maximum(hi - lo, 1.0)
            expected = np.clip(np.r_[lo - margin, hi + margin], 0, [width, height, width, height])
            assert person.box.dtype == np.float32 and np.allclose(person.box, expected, atol=1e-3)
