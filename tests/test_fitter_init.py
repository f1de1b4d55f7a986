"""Fitter initialisation from the estimator's per-view parameters (`points3d.view_params`).

The fitter node runs in-process (its own on_message API, messages through the real codec) with `body_model
= "mhr"` on a TorchScript STAND-IN for mhr_model.pt (tests/mhr_stand_in.py: a toy linear body with a real
root rotation, NOT MHR; MHR's assets are gated). Cold starts pick the view most consistent with the 3D
points, fall back without parameters or calibration, and re-initialise from the parameters after a loss.
The layout conversion is also checked on the four real SAM-3D Body outputs (skipped without shared data).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from protocol import Keypoints2D, Points3D, Pose, ViewParams, decode, encode
from streamer.body.mhr_model import ESTIMATOR_KEYS, MhrBody, MhrPaths
from streamer.body.mhr_params import euler_xyz_to_rotmat
from streamer.calibration import Rig
from streamer.fitting.align import Alignment
from streamer.fitting.init import align_params, model_keypoints
from streamer.node import NodeConfig
from tests.mhr_stand_in import stand_in_assets
from tests.shared_data import load_sam3d_outputs
from tests.sync_sim import make_scene, scene_camera
from tools.offline import VirtualClock

FPS = 30.0
T0_NS = 7_000_000_000
CAMERAS = ["c0", "c1", "c2", "c3"]
FLIP = np.diag([1.0, -1.0, -1.0])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return stand_in_assets(tmp_path_factory.mktemp("mhr_stand_in"))


@pytest.fixture(scope="module")
def body(assets) -> MhrBody:
    return MhrBody(MhrPaths.resolve(checkpoint=assets))


@pytest.fixture(scope="module")
def rig() -> Rig:
    scene = make_scene(len(CAMERAS))
    return Rig(tuple(scene_camera(scene, v, name) for v, name in enumerate(CAMERAS)))


def world_truth(body: MhrBody, rng: np.random.Generator) -> np.ndarray:
    """(P,) a posed stand-in body standing upright (world z up) at the stage centre."""
    g = body.groups
    params = body.default_params(1)[0].double().numpy()
    params[g["body_pose"]] = np.where(body.movable.numpy()[g["body_pose"]], rng.normal(0, 0.3, 133), 0.0)
    # mean shape: the track holds non-movable dims (MHR's shape, scale) at the model's default on a first start
    yaw = rng.uniform(-np.pi, np.pi)
    upright = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # output -y (MHR up, flipped) -> world +z
    turn = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]) @ upright
    kp = model_keypoints(body, params)
    return align_params(body, params, Alignment(turn, np.array([0.2, -0.1, 1.0]) - turn @ kp.mean(0), 1.0, 0.0))


def estimator_view(body: MhrBody, world: np.ndarray, rig: Rig, camera: str, pose_noise: float,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """What SAM-3D Body would send for this person in `camera` (Person2D.params, camera frame), with noise."""
    cam = rig.camera(camera)
    in_camera = align_params(body, world, Alignment(cam.R, cam.t, 1.0, 0.0))
    g = body.groups
    movable = body.movable.numpy()[g["body_pose"]]
    in_camera[g["body_pose"]] += np.where(movable, rng.normal(0, pose_noise, 133), 0.0)
    return {key: in_camera[g[group]].astype(np.float32) for group, key in ESTIMATOR_KEYS.items()}


def points3d(keypoints: np.ndarray, k: int, rig: Rig, views: dict[str, dict], usable: bool = True) -> Points3D:
    finite = np.isfinite(keypoints).all(1)
    msg = Points3D(
        t_ns=T0_NS + int(k * 1e9 / FPS), frame_index=k, person_id=0, calib_version=rig.version, cameras=CAMERAS,
        sources_seq=np.full(4, k, np.int64), sync_spread_ns=0, points=keypoints.astype(np.float32),
        n_views=np.where(finite, 4, 0).astype(np.uint8), inliers=np.repeat(finite[:, None], 4, 1),
        reproj_px=np.where(finite[:, None], 1.0, np.nan).repeat(4, 1).astype(np.float32),
        confidence=np.where(finite, 0.9, 0.0).astype(np.float32), mean_reproj_px=1.0, usable=usable,
        view_params=[ViewParams(camera=c, params=p) for c, p in views.items()])
    return decode(encode(msg))[1]  # what the fitter receives over the wire


class Harness:
    """A fitter node on the MHR stand-in, fed in-process on a virtual clock."""

    def __init__(self, assets, rig: Rig | None, **settings):
        from nodes.fitter import Fitter, Settings

        self.node = Fitter(NodeConfig(name="fitter", bind="inproc://fitter-init"),
                           Settings(body_model="mhr", mhr_checkpoint=str(assets), **settings))
        self.clock = VirtualClock(T0_NS)
        self.node.clock = self.clock
        self.out: list[Pose] = []
        self.node.publish = lambda msg: self.out.append(msg) or True
        self.node.setup()
        if rig is not None:
            self.node.on_message("calib", decode(encode(rig.to_message()))[1])

    def feed(self, msg: Points3D) -> Pose | None:
        self.clock.set(msg.t_ns)
        n = len(self.out)
        self.node.on_message("points3d", msg)
        return self.out[-1] if len(self.out) > n else None


def mean_error_m(pose: Pose, truth: np.ndarray) -> float:
    return float(np.linalg.norm(pose.keypoints - truth, axis=1).mean())


@pytest.mark.parametrize("good", ["c0", "c2"])
def test_cold_start_picks_the_consistent_view_and_restarts_from_it_after_a_loss(assets, body, rig, good):
    rng = np.random.default_rng(3)
    world = world_truth(body, rng)
    truth = model_keypoints(body, world)
    views = {c: estimator_view(body, world, rig, c, 0.01 if c == good else 0.6, rng) for c in CAMERAS}
    h = Harness(assets, rig, lost_after_s=0.3, max_iterations_cold=20)

    def noisy(k):
        return points3d(truth + rng.normal(0, 0.005, truth.shape), k, rig, views)

    first = h.feed(noisy(0))
    counters = h.node.counters
    assert counters["start/estimator"] == 1 and counters[f"start_view/{good}"] == 1
    assert sum(v for k, v in counters.items() if k.startswith("start_view/")) == 1
    assert h.node.gauges["start_rms_mm"] < 20.0  # the good view, aligned, before any fitting
    assert mean_error_m(first, truth) < 0.01
    for k in range(1, 4):
        h.feed(noisy(k))
    assert counters["start/estimator"] == 1  # warm frames do not re-initialise
    # the track is lost (unusable input for longer than lost_after_s), then the person comes back
    for k in range(4, 20):
        h.feed(points3d(np.full_like(truth, np.nan), k, rig, {}, usable=False))
    back = h.feed(noisy(20))
    assert counters["start/estimator"] == 2 and counters[f"start_view/{good}"] == 2
    assert mean_error_m(back, truth) < 0.01


def test_without_view_params_or_calibration_the_start_is_canonical(assets, body, rig):
    rng = np.random.default_rng(4)
    world = world_truth(body, rng)
    truth = model_keypoints(body, world)
    views = {c: estimator_view(body, world, rig, c, 0.01, rng) for c in CAMERAS}
    h = Harness(assets, rig)
    assert h.feed(points3d(truth, 0, rig, {})) is not None
    assert h.node.counters["start/canonical"] == 1 and h.node.counters.get("start/estimator", 0) == 0
    # no calib state for the points' calibration version: the views cannot be put in the world
    h = Harness(assets, None)
    assert h.feed(points3d(truth, 0, rig, views)) is not None
    assert h.node.counters["init/no_calib"] == 1 and h.node.counters["start/canonical"] == 1
    # unknown cameras and malformed parameters are skipped, the usable view still starts the track
    h = Harness(assets, rig)
    broken = dict(views["c1"])
    broken["body_pose"] = broken["body_pose"][:100]
    odd = {"c1": broken, "c3": {k: v for k, v in views["c3"].items() if k != "cam_t"}, "cx": views["c0"],
           "c2": views["c2"]}
    assert h.feed(points3d(truth, 0, rig, odd)) is not None
    counters = h.node.counters
    assert counters["init/bad_view_params"] == 2 and counters["init/unknown_camera"] == 1
    assert counters["start/estimator"] == 1 and counters["start_view/c2"] == 1


def test_view_params_turn_into_the_world_exactly(body, rig):
    from nodes.fitter import world_from_camera

    rng = np.random.default_rng(5)
    world = world_truth(body, rng)
    for camera in CAMERAS:
        estimate = estimator_view(body, world, rig, camera, 0.0, rng)
        in_camera = body.params_from_estimator(estimate)
        cam = rig.camera(camera)
        # the estimator's camera-frame keypoints are the world keypoints seen from the camera
        assert np.allclose(model_keypoints(body, in_camera), model_keypoints(body, world) @ cam.R.T + cam.t, atol=1e-4)
        back = align_params(body, in_camera, world_from_camera(rig, camera))
        assert np.allclose(model_keypoints(body, back), model_keypoints(body, world), atol=1e-4)
        rot = body.groups["global_rot"]
        assert np.allclose(euler_xyz_to_rotmat(torch.as_tensor(back[rot])).numpy(),
                           euler_xyz_to_rotmat(torch.as_tensor(world[rot])).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="'hand'"):
        body.params_from_estimator({k: v for k, v in estimate.items() if k != "hand"})
    with pytest.raises(ValueError, match="'scale': expected shape \\(28,\\)"):
        body.params_from_estimator({**estimate, "scale": np.zeros(27)})


def test_anny_says_once_that_estimator_params_do_not_fit_its_layout(caplog):
    from nodes.fitter import Fitter, Settings

    node = Fitter(NodeConfig(name="fitter", bind="inproc://fitter-anny"), Settings(lost_after_s=0.2))
    node.clock = VirtualClock(T0_NS)
    out = []
    node.publish = lambda msg: out.append(msg) or True
    node.setup()
    truth = model_keypoints(node.model, node.context.reference)
    truth = np.where(node.context.defined[:, None], truth, np.nan) + np.array([0.3, 0.2, 0.0])
    rig = Rig(tuple(scene_camera(make_scene(4), v, name) for v, name in enumerate(CAMERAS)))
    node.on_message("calib", rig.to_message())
    views = {c: {"cam_t": np.zeros(3, np.float32), "body_pose": np.zeros(133, np.float32)} for c in CAMERAS}
    with caplog.at_level(logging.INFO, logger="nodes.fitter"):
        for k in (0, 1, 30, 31):  # 30: after a gap longer than lost_after_s, a second cold start
            node.clock.set(T0_NS + int(k * 1e9 / FPS))
            node.on_message("points3d", points3d(truth, k, rig, views))
    assert len(out) == 4 and node.counters["start/canonical"] == 2
    assert node.counters["init/params_not_in_model_layout"] == 2
    said = [r for r in caplog.records if "cannot start from them" in r.getMessage()]
    assert len(said) == 1 and "'anny'" in said[0].getMessage()


def test_real_sam3d_outputs_reach_the_mhr_layout(body, rig):
    """Four real SAM-3D Body outputs -> capture adapter (Person2D.params) -> kp2d and points3d on the wire ->
    the MHR parameter vector: every group is the estimator's value, and the root rotation turned into the world
    is the estimator's camera-frame root rotation (F @ pred_global_rots[1]) seen from the world."""
    from nodes.fitter import world_from_camera
    from streamer.capture.sam3d import PARAM_KEYS, person_from_sam3d

    assert set(ESTIMATOR_KEYS.values()) == set(PARAM_KEYS)
    outputs = load_sam3d_outputs()
    K = np.array([[2535.27, 0, 960.0], [0, 2535.27, 445.0], [0, 0, 1]])
    views = {}
    for camera, out in zip(CAMERAS, outputs):
        person = person_from_sam3d(out, K)
        kp2d = Keypoints2D(camera=camera, seq=0, frame_index=0, t_capture_ns=T0_NS, image_size=np.array([1920, 890], np.int32),
                           calib_version=rig.version, persons=[person])
        views[camera] = decode(encode(kp2d))[1].persons[0].params
    msg = points3d(np.zeros((70, 3)), 0, rig, views)
    g = body.groups
    for view, out in zip(msg.view_params, outputs):
        params = body.params_from_estimator(view.params)
        for group, key in (("global_rot", "global_rot"), ("transl", "pred_cam_t"), ("body_pose", "body_pose_params"),
                           ("hand_pose", "hand_pose_params"), ("shape", "shape_params"), ("scale", "scale_params")):
            assert np.array_equal(params[g[group]], out[key].astype(np.float32).astype(np.float64)), (view.camera, group)
        world_from_cam = world_from_camera(rig, view.camera)
        turned = body.turn_global_rot(params[g["global_rot"]], world_from_cam.rotation)
        in_world = FLIP @ euler_xyz_to_rotmat(torch.as_tensor(turned)).numpy()
        assert np.allclose(in_world, world_from_cam.rotation @ FLIP @ out["pred_global_rots"][1], atol=1e-5)


def test_an_estimator_start_keeps_the_estimator_shape_scale_and_the_dims_it_does_not_fit(assets, body, rig):
    """MHR's shape and scale are not fitted (nor the hands, without fit_hands): a first track started from the
    estimator keeps the estimator's values of every dim it does not fit, instead of the model's default."""
    rng = np.random.default_rng(6)
    world = world_truth(body, rng)
    g = body.groups
    world[g["shape"]] = rng.normal(0, 0.5, 45)
    world[g["scale"]] = rng.normal(0, 0.3, 28)
    world[g["hand_pose"]] = rng.normal(0, 0.3, 108)
    truth = model_keypoints(body, world)
    default_body = world.copy()
    default_body[g["shape"]], default_body[g["scale"]] = 0.0, 0.0
    default = body.default_params(1)[0].numpy()
    assert not default[g["shape"]].any() and not default[g["scale"]].any()
    assert mean_error_m_of(model_keypoints(body, default_body), truth) > 0.01  # the default body is visibly off
    views = {c: estimator_view(body, world, rig, c, 0.01, rng) for c in CAMERAS}
    h = Harness(assets, rig, max_iterations_cold=20)
    fixed = ~h.node.context.free
    assert fixed[g["shape"]].all() and fixed[g["scale"]].all() and fixed[g["hand_pose"]].all()  # fit_hands off
    poses = [h.feed(points3d(truth + rng.normal(0, 0.003, truth.shape), k, rig, views)) for k in range(5)]
    assert h.node.counters["start/estimator"] == 1
    for pose in poses:
        assert np.allclose(pose.params[fixed], world[fixed], atol=1e-5)  # every view carries the true values
        assert mean_error_m(pose, truth) < 0.005


def mean_error_m_of(keypoints: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(keypoints - truth, axis=1).mean())


def _views_seen(msg: Points3D, rng: np.random.Generator) -> Points3D:
    """`msg` with each point seen by 2 to 4 random cameras (the inliers that weigh the information metric)."""
    k, v = msg.inliers.shape
    inliers = np.zeros((k, v), bool)
    for row in inliers:
        row[rng.choice(v, rng.integers(2, v + 1), replace=False)] = True
    return replace(msg, inliers=inliers, n_views=inliers.sum(1).astype(np.uint8))


def _reordered(msg: Points3D, order: list[int]) -> Points3D:
    """The same frame with its V axis (cameras, inliers, residuals, sources) in another order."""
    return replace(msg, cameras=[msg.cameras[i] for i in order], inliers=msg.inliers[:, order],
                   reproj_px=msg.reproj_px[:, order], sources_seq=msg.sources_seq[order])


def test_the_data_term_is_information_weighted_with_the_rig_and_euclidean_without(assets, body, rig):
    """With the `calib` of the points' version every frame gets the information metric of its inlier views, the
    V axis read in the order of `points3d.cameras`; without it (or with a camera the rig lacks, or with the
    setting off) the fit is Euclidean, counted."""
    rng = np.random.default_rng(7)
    world = world_truth(body, rng)
    truth = model_keypoints(body, world)
    frames = [_views_seen(points3d(truth + rng.normal(0, 0.01, truth.shape), k, rig, {}), rng) for k in range(6)]
    reverse = [3, 2, 1, 0]
    runs = {"metric": (rig, {}, frames), "reordered": (rig, {}, [_reordered(m, reverse) for m in frames]),
            "no_calib": (None, {}, frames), "off": (rig, {"information_metric": False}, frames),
            "unknown_camera": (rig, {}, [replace(m, cameras=["c0", "c1", "c2", "cx"]) for m in frames])}
    poses, counters = {}, {}
    for name, (with_rig, settings, msgs) in runs.items():
        h = Harness(assets, with_rig, **settings)
        poses[name] = [h.feed(decode(encode(m))[1]) for m in msgs]
        counters[name] = {k: v for k, v in h.node.counters.items() if k.startswith("info/")}
    assert counters == {"metric": {"info/metric": 6}, "reordered": {"info/metric": 6}, "no_calib": {"info/no_calib": 6},
                        "off": {}, "unknown_camera": {"info/unknown_camera": 6}}

    def losses(name):
        return np.array([p.data_loss for p in poses[name]])

    assert np.allclose(losses("reordered"), losses("metric"), rtol=1e-6)  # the V axis follows points3d.cameras
    assert np.array_equal(losses("no_calib"), losses("off")) and np.array_equal(losses("unknown_camera"), losses("off"))
    assert not np.allclose(losses("metric"), losses("off"), rtol=1e-2)  # the metric changes the fit
    for name in poses:
        assert all(mean_error_m(p, truth) < 0.015 for p in poses[name]), name


def test_a_track_stuck_in_a_wrong_pose_is_reinitialised(assets, body, rig):
    """The subject's points turn half round and move 0.3 m between two frames (an identity swap upstream): one
    LM step per frame from the warm start crawls out of the wrong pose for seconds; after `relock_after_s` without
    a good fit the track starts afresh from the points and is good again."""
    rng = np.random.default_rng(8)
    truth = model_keypoints(body, world_truth(body, rng))
    centre = truth.mean(0)
    moved = (truth - centre) @ np.diag([-1.0, -1.0, 1.0]) + centre + [0.3, 0.0, 0.0]
    errors = {}
    for relock_after_s in (0.5, 0.0):
        h = Harness(assets, rig, relock_after_s=relock_after_s)
        poses = [h.feed(points3d((truth if k < 15 else moved) + rng.normal(0, 0.003, truth.shape), k, rig, {}))
                 for k in range(45)]
        errors[relock_after_s] = [mean_error_m(p, truth if k < 15 else moved) for k, p in enumerate(poses)]
        starts = h.node.counters["start/canonical"]
        assert starts == (2 if relock_after_s else 1)
        assert all(p.verdict == "good" for p in poses[5:15]) and poses[16].verdict == "poor"
        if relock_after_s:
            assert all(p.verdict == "good" for p in poses[15 + 17:])  # 0.5 s of poor fits, then the restart
    assert max(errors[0.5][32:]) < 0.005
    assert min(errors[0.0][32:]) > 0.05  # without the restart still far off 1 s later
