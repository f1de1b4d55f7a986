"""`streamer eval charuco|pose2sim` on the real data in ../shared/data (skips with a reason when absent)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protocol import decode, encode
from tests.shared_data import SHARED
from tools import evaluate

BALANCING = "pose2sim_demo/S00_P00_T01_BalancingTrial"

pytestmark = pytest.mark.data


def shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (see ../shared/reference/data.md)")
    return path


def run_json(capsys, argv: list[str]) -> dict:
    assert evaluate.main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_charuco_corners_match_the_true_board(capsys):
    result = run_json(capsys, ["charuco", str(shared("caliscope/charuco_session"))])
    assert result["board_poses"] == 57 and result["corners"] == 660  # every corner seen by >= 2 cameras
    assert result["rmse_mm"] <= 1.5
    assert result["rmse_mm"] <= result["dlt_rmse_mm"] + 1e-9  # not worse than plain DLT
    assert result["dlt_rmse_mm"] == pytest.approx(1.41, abs=0.03)  # data.md's independent figure
    assert result["median_mm"] < result["rmse_mm"] < result["p95_mm"]


def test_pose2sim_reprojection_not_worse_than_its_own_trc(capsys):
    result = run_json(capsys, ["pose2sim", str(shared(BALANCING))])
    assert result["frames"] == 100 and result["markers"] == 20 and result["observations"] > 5000
    assert result["median_reproj_px"] <= result["trc_median_reproj_px"]
    assert result["trc_median_reproj_px"] == pytest.approx(10.8, abs=1.5)  # data.md: 7.9 - 17.2 px per camera
    assert result["dlt_agreement_median_mm"] < 1.0  # plain DLT reproduces the .trc (data.md: median 0.1 mm)
    assert np.isfinite(result["agreement_median_mm"]) and result["agreement_median_mm"] < 60.0


def test_pose2sim_trial_points3d_are_valid_messages():
    trial = evaluate.pose2sim_trial(shared(BALANCING))
    assert trial.points.shape == (100, 70, 3) and trial.rig.names == ["cam_01", "cam_02", "cam_03", "cam_04"]
    messages = evaluate.trial_points3d(trial)
    assert len(messages) == 100 and messages[1].t_ns == round(1e9 / 60)
    _, back = decode(encode(messages[10]))
    assert back.calib_version == trial.rig.version and back.usable
    valid = trial.results[10].valid
    assert valid.sum() >= 15 and np.isnan(back.points[~valid]).all()


def test_errors_are_reported_not_raised(capsys, tmp_path):
    assert evaluate.main(["pose2sim", str(tmp_path)]) == 1
    assert "calibration" in capsys.readouterr().err


def test_kabsch_recovers_a_rigid_motion():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(12, 3))
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    R_fit, t_fit = evaluate.kabsch(source, source @ R.T + [1, 2, 3])
    assert np.allclose(R_fit, R) and np.allclose(t_fit, [1, 2, 3])
