"""The README's graph for a two-GPU SAM-3D Body stage loads as a real graph file: node kinds, every setting's
name and type, and the capture -> sync -> capture (box hints) edges. Its weight, calibration and camera files
are the user's, so empty files stand in for them (load_graph only checks that they exist)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from streamer.launch import load_graph

README = Path(__file__).resolve().parents[1] / "README.md"


def _graph_block(marker: str) -> str:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"expected one ```toml block in README.md containing {marker!r}, got {len(found)}"
    return found[0]


def test_two_gpu_stage_graph_loads_with_one_capture_process_per_gpu(tmp_path):
    text = _graph_block('name = "sam3d_two_gpus"')
    for node in tomllib.loads(text)["nodes"].values():
        for key, value in node.get("settings", {}).items():
            if key.endswith(("_path", "_file")) and value:
                (tmp_path / value).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / value).touch()
    path = tmp_path / "graph.toml"
    path.write_text(text)
    graph = load_graph(path)
    captures = {n: s for n, s in graph.nodes.items() if s.kind == "capture"}
    assert sorted(s.settings["sam3d_device"] for s in captures.values()) == ["cuda:0", "cuda:1"]
    cameras = [c for s in captures.values() for c in s.settings["cameras"]]
    assert len(cameras) == len(set(cameras)) == 8
    assert sorted(cameras) == sorted(graph.nodes["sync"].settings["cameras"])
    assert set(graph.nodes["sync"].inputs) == set(captures)
    for spec in captures.values():
        assert spec.settings["sam3d_inference"] == "fast" and spec.inputs == ("sync",)
        assert Path(spec.settings["sam3d_checkpoint_path"]).is_file()  # resolved against the graph's folder
