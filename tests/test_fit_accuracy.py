"""Fitter accuracy on the synthetic stage (real Anny body, real triangulation) and on real Pose2Sim data."""
from __future__ import annotations

import pytest

from tests.shared_data import SHARED

BALANCING = SHARED / "pose2sim_demo" / "S00_P00_T01_BalancingTrial"


def test_synthetic_stage_fit_beats_raw_triangulation():
    """4 cameras, 2 px noise, 10 % outliers, 30 fps walk (6 s, as `bench fit`): MPJPE <= 25 mm and below raw;
    jitter 3x lower (3.22x; over the first 2.5 s alone, all inside the keypoint-offset calibration, 2.77x);
    lag <= 1 frame."""
    from tools.eval_fit import run_synthetic

    m = run_synthetic(seconds=6.0, fps=30.0, seed=0).metrics
    assert m["mpjpe_mm"] <= 25.0 and m["mpjpe_mm"] < m["raw_mpjpe_mm"], m
    assert m["jitter_ratio"] >= 3.0, m
    assert abs(m["lag_fit_frames"] - m["lag_raw_frames"]) <= 1.0, m
    assert m["good_fraction"] > 0.9, m


@pytest.mark.data
def test_pose2sim_balancing_trial_fit():
    """Real OpenPose data, scored on the same 2D observations for raw and fit. In-sample (the raw points
    reprojected onto the very observations they were triangulated from): the fitted median is 1.49x the
    raw robust triangulation's (goal 1.5x; 1.80x with the keypoint offsets calibrated in windows of 5 fits
    at full gain, 2.17x before the information-weighted data term); jitter 2.4x lower (goal 2x). Held out
    (leave one camera out, both scored on the camera neither saw): 0.97x."""
    if not BALANCING.is_dir():
        pytest.skip(f"shared test data not found at {BALANCING} (see ../shared/reference/data.md)")
    from tools.eval_fit import evaluate_pose2sim_fit

    r = evaluate_pose2sim_fit(BALANCING)
    assert r["jitter_ratio"] >= 2.0, r
    assert r["reproj_ratio"] <= 1.5, r
    assert r["good_fraction"] > 0.9, r
    assert r["heldout_ratio"] < 1.02 and r["heldout_observations"] > 5000, r
