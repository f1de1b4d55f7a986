"""`streamer bench estimator` argument parsing (the benchmark itself needs a CUDA GPU and upstream SAM-3D Body)."""
from __future__ import annotations

import pytest

from tools.bench_estimator import parse_process_configs


def test_process_configs_parse_processes_batch_and_graph_suffix():
    assert parse_process_configs("4x32, 8x16g,,1x8g") == [(4, 32, False), (8, 16, True), (1, 8, True)]
    assert parse_process_configs("") == []


@pytest.mark.parametrize("text", ["4", "4x", "x8", "0x8", "4x0", "4x8q", "axb"])
def test_process_configs_reject_malformed_entries_naming_them(text):
    with pytest.raises(SystemExit, match="--processes"):
        parse_process_configs(text)
