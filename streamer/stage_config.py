"""The stage configuration served to late joiners: `protocol.StageConfig` on topic `stage` (last-value state).

The launcher (`streamer run`) tells every node which graph file it runs by the environment variable
`STREAMER_GRAPH` (absolute path); the sync node, the stage's hub, publishes the configuration as it
sees it (graph name and file, camera rate, cameras, calibration version) and re-publishes it when the
rig changes, so a monitor or recorder started later, on any host, learns what stage it joined.

    config = stage_config(name="demo", fps=30.0, cameras=["cam0", "cam1"], calib_version=rig.version,
                          graph_toml=text, t_ns=clock.now_ns())
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tomllib
from pathlib import Path

from protocol import StageConfig
from protocol.messages import MAX_GRAPH_TOML

__all__ = ["GRAPH_ENV", "graph_from_environment", "stage_config"]

log = logging.getLogger(__name__)

GRAPH_ENV = "STREAMER_GRAPH"


def stage_config(*, name: str, fps: float, cameras: list[str], calib_version: str, graph_toml: str,
                 t_ns: int) -> StageConfig:
    """A StageConfig whose `version` is the content hash (16 hex) of every field but t_ns."""
    content = json.dumps([name, float(fps), list(cameras), calib_version, graph_toml], separators=(",", ":"))
    version = hashlib.sha256(content.encode()).hexdigest()[:16]
    return StageConfig(name=name, version=version, t_ns=int(t_ns), fps=float(fps), cameras=list(cameras),
                       calib_version=calib_version, graph_toml=graph_toml)


def graph_from_environment(default_name: str) -> tuple[str, str]:
    """(graph name, graph file text) of the graph named by `STREAMER_GRAPH`; (default_name, "") when the
    node runs outside a graph. A file that cannot be read, parsed or served whole is logged and left out
    (the name falls back to `default_name`): the stage runs on without it."""
    path = os.environ.get(GRAPH_ENV)
    if not path:
        return default_name, ""
    try:
        text = Path(path).read_text(encoding="utf-8")
        name = tomllib.loads(text).get("graph", {}).get("name", default_name)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        log.error("%s=%s: cannot read the graph file (%s); the stage configuration goes without it", GRAPH_ENV, path, exc)
        return default_name, ""
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        name = default_name
    if len(text) > MAX_GRAPH_TOML:
        log.warning("%s: the graph file has %d characters, more than the %d a stage configuration carries; "
                    "it goes without the file", path, len(text), MAX_GRAPH_TOML)
        text = ""
    return name, text
