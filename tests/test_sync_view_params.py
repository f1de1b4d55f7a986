"""The sync node forwards, per camera, the estimator parameters of the person it chose there (not the
distractor's) in `points3d.view_params`, over the wire; none when the estimator sends none or when off."""
from __future__ import annotations

import numpy as np
import pytest

from protocol import decode, encode
from tests.sync_sim import true_subject
from tests.test_sync_node import N_VIEWS, Harness, points, persons_for

pytest.importorskip("nodes.sync")


def tagged_frame(h: Harness, view: int, k: int):
    """One camera's kp2d whose persons carry params naming the camera and whether it is the subject."""
    persons = persons_for(h.scene, view, k, np.random.default_rng(1000 * k + view))
    truth = h.scene.project(true_subject(k))[view]
    for p in persons:
        subject = float(np.nanmedian(np.linalg.norm(p.keypoints - truth, axis=1)) < 5.0)
        p.params = {"cam_t": np.array([view, subject, k], np.float32), "body_pose": np.full(133, view, np.float32)}
    return h.frame(view, k, persons=persons)


@pytest.mark.parametrize("enabled", [True, False])
def test_points3d_carries_the_chosen_persons_params_per_camera(enabled):
    h = Harness(cameras=("c0", "c1", "c2", "c3"), view_params=enabled)
    h.send_calibs()
    frames = [tagged_frame(h, v, k) for k in range(5) for v in range(N_VIEWS)]  # built first: sets close on time
    for msg in frames:
        h.node.on_message(f"kp2d/{msg.camera}", msg)
    h.node.teardown()
    out = points(h)
    assert len(out) >= 4 and all(m.usable for m in out)
    for m in out:
        m = decode(encode(m))[1]  # what the fitter receives
        if not enabled:
            assert m.view_params == []
            continue
        assert [vp.camera for vp in m.view_params] == ["c0", "c1", "c2", "c3"]
        for v, vp in enumerate(m.view_params):
            # this camera's person, the subject (c0 and c1 also see a distractor), this frame set
            assert vp.params["cam_t"].tolist() == [v, 1.0, m.frame_index]
            assert vp.params["body_pose"].shape == (133,)


def test_views_without_params_or_without_a_chosen_person_are_left_out():
    h = Harness(cameras=("c0", "c1", "c2", "c3"))
    h.send_calibs()
    frames = [tagged_frame(h, v, k) for k in range(3) for v in range(N_VIEWS)]
    for msg in frames:
        if msg.camera == "c1":
            for p in msg.persons:
                p.params = {}
        if msg.camera == "c3":
            msg.persons = []
        h.node.on_message(f"kp2d/{msg.camera}", msg)
    h.node.teardown()
    assert points(h)
    for m in points(h):
        assert [vp.camera for vp in m.view_params] == ["c0", "c2"]
