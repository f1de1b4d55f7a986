"""A take starts on the performer even when its first frame sets are poor (sync node, contract 5); seeded, in-process.

How a take used to start on the distractor and stay on it: the sync node committed to the first bootstrap's
choice. In a frame set where the performer is seen consistently by too few cameras (a camera's first frames not
there yet, the performer hidden behind the distractor in one view and its left and right swapped in another),
the distractor is the only person three cameras agree on, so it was chosen; the track then follows whoever it
holds. Now the node commits only to a confident bootstrap (`streamer.association.bootstrap_choice`), with a
bounded wait (`bootstrap_wait_sets`); `bootstrap_wait_sets = 0` restores committing at once.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from streamer.association import (
    AssociationSettings,
    bootstrap_choice,
    fundamental_matrices,
    pack_detections,
)
from tests.bootstrap_harness import build_stage, run_take, take_summary
from tests.sync_sim import body_points, scene_rig, seen_person

SETTINGS = AssociationSettings()


@pytest.fixture(scope="module")
def stages():
    return {n: build_stage(n) for n in (3, 4)}


@pytest.mark.parametrize("n_cameras, start", [
    (3, 36),  # cam0 joins 4 frames late: the first sets have two cameras, the performer seen consistently by one
    (4, 204),  # cam0 joins late: the performer hidden behind the distractor in cam1, so three cameras agree only on it
])
def test_a_take_whose_first_frame_sets_are_poor_starts_and_stays_on_the_performer(stages, n_cameras, start):
    stage, late = stages[n_cameras], ("cam0", 4)
    at_once = take_summary(run_take(stage, start, 12, late=late, bootstrap_wait_sets=0), start)
    assert (at_once["first"], at_once["last"], at_once["switches"]) == (1, 1, 0)  # before: the distractor, all take
    points, counters = run_take(stage, start, 12, late=late)
    summary = take_summary((points, counters), start)
    assert (summary["first"], summary["last"], summary["switches"]) == (0, 0, 0)
    assert counters["bootstraps"] == 1 and counters["bootstrap_waits"] >= 1 and "bootstrap_forced" not in counters
    assert summary["first_frame"] <= late[1] + 2  # the first pose once the late camera is in
    waited = [person for _, _, person in points][:counters["bootstrap_waits"]]
    assert waited == [None] * counters["bootstrap_waits"]  # sets while waiting: published, not usable


def test_with_a_dead_camera_the_wait_is_bounded(stages):
    """One camera of three never sends: no frame set has the three cameras a confident bootstrap needs; after
    `bootstrap_wait_sets` sets the node commits to the person nearest the optical axes."""
    for wait in (10, 4):
        points, counters = run_take(stages[3], 99, 30, late=("cam0", 10**6), bootstrap_wait_sets=wait)
        summary = take_summary((points, counters), 99)
        assert counters["bootstrap_waits"] == wait and counters["bootstrap_forced"] == 1 and counters["bootstraps"] == 1
        assert (summary["first"], summary["last"], summary["switches"]) == (0, 0, 0)
        assert summary["first_frame"] <= wait + 3




@pytest.mark.parametrize("n_views, hidden_in, no_frame, shifted, expected, seen_enough, nearest", [
    (4, (), (), (), "PPPP", True, True),
    (4, (0,), (), (), "-PPP", True, True),  # hidden behind the visitor in one camera: still three agree
    (4, (0, 2), (), (), "VVVV", True, False),  # two cameras agree on the performer, nearer the axes: a poor set
    (3, (), (2,), (), "PP-", False, True),  # a camera's frame not there: two views do not make a rig of three
    (2, (), (), (), "PP", True, True),  # a two-camera rig: two views are all it has
    # camera 3 sees the performer 18 px right and lower (calibration or detector bias), more than one epipolar gate off
    # every other view (14-21 px): left out of the group, but less than SAME_PERSON_GATES off: not a rival either
    (4, (), (), (3,), "PPP-", True, True),
])
def test_bootstrap_choice_is_confident_only_on_enough_cameras_and_a_clear_margin(
        n_views, hidden_in, no_frame, shifted, expected, seen_enough, nearest):
    rig = scene_rig(n_views)
    performer = body_points(np.random.default_rng(5))
    visitor = body_points(np.random.default_rng(6), at=(1.6, -1.2))
    lists = [[] if v in no_frame else ([] if v in hidden_in else [seen_person(camera, performer)])
             + [seen_person(camera, visitor)] for v, camera in enumerate(rig.cameras)]
    for v in shifted:
        lists[v][0].keypoints += 18.0
    packed = pack_detections(lists, 70, SETTINGS.min_confidence)
    focal = rig.K[:, None, None, [0, 1], [0, 1]]
    centre = rig.K[:, None, None, [0, 1], [2, 2]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # padding and hidden persons: all-NaN rows
        off_axis = np.nanmedian(np.linalg.norm((packed.keypoints - centre) / focal, axis=-1), axis=-1)
    choice = bootstrap_choice(packed.keypoints, packed.counts, fundamental_matrices(rig.K, rig.R, rig.t), SETTINGS,
                              off_axis=off_axis)
    index = {"P": lambda persons: 0, "V": lambda persons: len(persons) - 1, "-": lambda persons: -1}
    np.testing.assert_array_equal(choice.chosen, [index[e](persons) for e, persons in zip(expected, lists)])
    assert (choice.seen_enough, choice.nearest, choice.confident) == (seen_enough, nearest, seen_enough and nearest)


def test_the_margin_setting_is_checked():
    with pytest.raises(ValueError, match="bootstrap_margin"):
        AssociationSettings(bootstrap_margin=-0.1)
