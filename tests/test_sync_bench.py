"""`streamer bench sync` runs and prints its stable JSON keys (figures are not asserted: benchmarks, not timed tests)."""
from __future__ import annotations

import json

import pytest

from tools import bench_sync


def test_bench_sync_json_has_the_stable_keys(capsys):
    assert bench_sync.main(["--json", "--sets", "10", "--repeats", "1", "--seconds", "3", "--rigs", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("assembly_ms_8cam", "assembly_only_ms_8cam", "choice_ms_8cam", "bootstrap_ms_8cam",
                "triangulation_ms_8cam", "assembly_ms_4cam", "assembly_ms_16cam"):
        assert result[key] > 0
    # the headline figure is assembly plus person choice (each rounded to 4 decimals)
    assert abs(result["assembly_ms_8cam"] - result["assembly_only_ms_8cam"] - result["choice_ms_8cam"]) < 2e-4
    for config in ("4x30", "4x60", "8x30", "8x60"):
        for suffix in ("", "_fixed"):
            assert 0 <= result[f"wait_p50_ms_{config}{suffix}"] <= result[f"wait_p99_ms_{config}{suffix}"] <= 34
            assert result[f"late_per_1k_{config}{suffix}"] >= 0
            shares = sum(result[f"{r}_share_{config}{suffix}"] for r in ("complete", "resolved", "overdue", "deadline"))
            assert abs(shares - 1) < 1e-3
        assert result[f"overdue_share_{config}_fixed"] == 0  # only the timing model writes frames off


def test_bench_sync_table_and_bad_arguments(capsys):
    assert bench_sync.main(["--sets", "10", "--repeats", "1", "--seconds", "2", "--rigs", "1"]) == 0
    out = capsys.readouterr().out
    assert "assembly + person choice" in out and "8 cams" in out
    assert "decision wait" in out and "8x60" in out and "fixed" in out
    with pytest.raises(SystemExit) as refused:
        bench_sync.main(["--sets", "1"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit) as refused:
        bench_sync.main(["--take", "no/such/take.mcap"])
    assert refused.value.code == 2


def test_bench_sync_take_replays_its_arrivals_and_reads_the_live_hop(tmp_path, capsys):
    """A small real take (kp2d of 3 cameras, one points3d per frame, received 2 ms after its newest member)."""
    import numpy as np

    from protocol import Keypoints2D, Points3D
    from streamer.recording import TakeWriter

    events = bench_sync.simulated_arrivals(3, 30.0, 3.0, seed=4)
    path = tmp_path / "take.mcap"
    newest: dict[int, int] = {}
    k, v = 2, 3  # keypoints, cameras
    with TakeWriter(path) as take:
        for arrival, camera, seq, t_capture in events:
            take.write(Keypoints2D(camera=camera, seq=seq, frame_index=seq, t_capture_ns=t_capture,
                                   image_size=np.array([1280, 720], np.int32), calib_version="v", persons=[]), arrival)
            newest[seq] = max(newest.get(seq, 0), arrival)
        for seq, arrival in sorted(newest.items(), key=lambda item: item[1]):
            take.write(Points3D(t_ns=seq, frame_index=seq, person_id=0, calib_version="v",
                                cameras=["cam0", "cam1", "cam2"], sources_seq=np.full(v, seq, np.int64),
                                sync_spread_ns=0, points=np.zeros((k, 3), np.float32), n_views=np.zeros(k, np.uint8),
                                inliers=np.zeros((k, v), bool), reproj_px=np.zeros((k, v), np.float32),
                                confidence=np.zeros(k, np.float32), mean_reproj_px=0.0, usable=True),
                       arrival + 2_000_000)
    assert bench_sync.main(["--json", "--sets", "10", "--repeats", "1", "--seconds", "1", "--rigs", "1",
                            "--take", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    # a points3d naming a dropped frame has no computable hop and is skipped
    assert abs(result["take_live_sync_hop_p50_ms"] - 2.0) < 1e-6 and abs(result["take_live_sync_hop_p99_ms"] - 2.0) < 1e-6
    assert 0 <= result["wait_p50_ms_take"] <= result["wait_p99_ms_take"] <= 34
    assert result["wait_p99_ms_take"] <= result["wait_p99_ms_take_fixed"]
