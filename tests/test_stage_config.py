"""Stage configuration (`stage` last-value state): content-hash versions, the graph file from the
launcher's environment, and a late joiner of a real sync node process started by `streamer run`."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from protocol import RigCalibration, StageConfig
from protocol.messages import MAX_GRAPH_TOML
from streamer.launch import Supervisor, load_graph
from streamer.stage_config import GRAPH_ENV, graph_from_environment, stage_config
from streamer.transport import Subscriber

BASE = dict(name="demo", fps=30.0, cameras=["c0", "c1"], calib_version="abc", graph_toml="[graph]\n", t_ns=5)


def test_version_is_a_content_hash_of_everything_but_the_time():
    a = stage_config(**BASE)
    assert a == stage_config(**BASE) and len(a.version) == 16
    assert stage_config(**{**BASE, "t_ns": 6}).version == a.version
    for field, value in (("name", "other"), ("fps", 60.0), ("cameras", ["c1", "c0"]), ("calib_version", "abd"),
                         ("graph_toml", "")):
        assert stage_config(**{**BASE, field: value}).version != a.version, field


def test_graph_from_environment(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(GRAPH_ENV, raising=False)
    assert graph_from_environment("sync") == ("sync", "")
    good = tmp_path / "g.toml"
    good.write_text('[graph]\nname = "stage-a"\n')
    monkeypatch.setenv(GRAPH_ENV, str(good))
    assert graph_from_environment("sync") == ("stage-a", '[graph]\nname = "stage-a"\n')
    unnamed = tmp_path / "unnamed.toml"
    unnamed.write_text("[nodes.a]\nkind = 'sync'\n")
    monkeypatch.setenv(GRAPH_ENV, str(unnamed))
    assert graph_from_environment("sync") == ("sync", "[nodes.a]\nkind = 'sync'\n")
    big = tmp_path / "big.toml"
    big.write_text('[graph]\nname = "big"\n' + "#" * MAX_GRAPH_TOML)
    monkeypatch.setenv(GRAPH_ENV, str(big))
    assert graph_from_environment("sync") == ("big", "")  # too large to serve: the name still comes through
    broken = tmp_path / "broken.toml"
    broken.write_text("[graph\n")
    for path in (broken, tmp_path / "missing.toml"):
        monkeypatch.setenv(GRAPH_ENV, str(path))
        caplog.clear()
        assert graph_from_environment("sync") == ("sync", "")
        assert str(path) in caplog.text


@pytest.mark.slow
def test_a_late_joiner_receives_the_stage_configuration_and_the_rig(tmp_path):
    """`streamer run` starts a pulse camera and a sync node; a subscriber that joins 3 s later gets
    `stage` (naming the graph, with its file) and `calib` at once, and a new `stage` version never
    goes without the rig it names."""
    path = tmp_path / "graph.toml"
    path.write_text("""
[graph]
name = "late-join"
base_port = 6640

[nodes.cam0]
kind = "pulse"
settings = { camera = "cam0", rate_hz = 30.0 }

[nodes.sync]
kind = "sync"
inputs = ["cam0"]
settings = { cameras = ["cam0"], fps = 30.0, min_cameras = 1 }
""")
    graph = load_graph(path)
    sup = Supervisor(graph)
    sup.start()
    sub = None
    try:
        time.sleep(3.0)
        sub = Subscriber({"sync": graph.nodes["sync"].connect}, ("stage", "calib"))
        got: dict[str, object] = {}
        end = time.monotonic() + 20.0
        while time.monotonic() < end and not (
                isinstance(got.get("stage"), StageConfig) and got["stage"].calib_version and "calib" in got):
            sup.poll()
            item = sub.recv(100)
            if item is not None:
                got[item[0]] = item[1]
    finally:
        if sub is not None:
            sub.close()
        sup.stop()
    stage, rig = got.get("stage"), got.get("calib")
    assert isinstance(stage, StageConfig) and isinstance(rig, RigCalibration), got
    assert stage.name == "late-join" and stage.graph_toml == Path(path).read_text()
    assert stage.fps == 30.0 and stage.cameras == ["cam0"] and stage.calib_version == rig.version
    assert stage.version == stage_config(name=stage.name, fps=stage.fps, cameras=stage.cameras,
                                         calib_version=stage.calib_version, graph_toml=stage.graph_toml,
                                         t_ns=0).version
