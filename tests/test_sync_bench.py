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
