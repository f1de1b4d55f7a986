"""One graph file split across two hosts (`streamer run GRAPH --host NAME` on each) with CURVE on.

The hosts are Linux network namespaces joined by veth pairs (tests/netns.py; root only): the
camera host runs the capture nodes and the truth node, the stage host the sync, fitter and
recorder. End to end poses must flow across the hosts; a peer on a third host with an unknown
CURVE key, or without CURVE, receives nothing, while a peer with an authorised key does."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from streamer.launch import load_graph
from streamer.take_summary import load_take, summarize
from streamer.transport.curve import generate_keypair_files
from tests.netns import TestHosts, netns_available
from tools.demo import DEMO_GRAPH, TAKE_NAME, adjust_graph, warm_stage_cache

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(netns_available() is not None,
                                                     reason=f"multi-host test: {netns_available()}")]

_PEER = textwrap.dedent("""
    import json, sys, time
    import zmq
    from streamer.transport.curve import load_keypair, load_public_key, make_client
    endpoint, server_key, client_key, seconds, topic = sys.argv[1:6]
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.linger = 0
    if client_key != "-":
        make_client(sock, load_keypair(client_key), load_public_key(server_key))
    sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoint)
    received, end = 0, time.monotonic() + float(seconds)
    while time.monotonic() < end:
        if sock.poll(100):
            sock.recv_multipart()
            received += 1
    print(json.dumps({"received": received}))
""")


def _graph(tmp_path: Path, hosts: TestHosts) -> Path:
    doc = adjust_graph(tomllib.loads(DEMO_GRAPH.read_text()), cameras=4, fps=30.0, base_port=7400,
                       take_path=str(tmp_path / TAKE_NAME))
    for name in ("monitor", "avatar"):
        del doc["nodes"][name]
    doc["hosts"] = {name: {"address": hosts.address[name]} for name in ("cams", "stage")}
    for name, spec in doc["nodes"].items():
        spec["host"] = "cams" if spec["kind"] in ("capture", "synth") else "stage"
    doc["graph"]["keys_dir"] = "keys"
    warm_stage_cache(doc)
    for name in [*doc["nodes"], "viewer"]:  # viewer: an authorised outside peer
        generate_keypair_files(tmp_path / "keys", name)
    path = tmp_path / "graph.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def _peer(hosts: TestHosts, tmp_path: Path, endpoint: str, server: str, client: str | None, *, seconds: float = 6.0,
          topic: str = "") -> subprocess.Popen:
    """A subscriber on host "outside" counting what it receives from `endpoint` (CURVE client key
    `client`: a node name of the keys folder or a key file; None: no CURVE); prints {"received": n}."""
    script = tmp_path / "peer.py"
    script.write_text(_PEER)
    keys = tmp_path / "keys"
    client_arg = "-" if client is None else str(client if os.sep in client else keys / f"{client}.key_secret")
    argv = [sys.executable, str(script), endpoint, str(keys / f"{server}.key"), client_arg, str(seconds), topic]
    return hosts.popen("outside", argv,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_split_graph_runs_across_hosts_with_curve_and_shuts_out_unknown_peers(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with TestHosts(["cams", "stage", "outside"]) as hosts:
        graph = _graph(tmp_path, hosts)
        logs = {h: open(tmp_path / f"{h}.log", "w") for h in ("cams", "stage")}
        runs = {h: hosts.popen(h, [sys.executable, "-m", "streamer", "run", str(graph), "--host", h], cwd=REPO,
                               env=env, stdout=logs[h], stderr=subprocess.STDOUT) for h in ("stage", "cams")}
        try:
            fitter = load_graph(graph).nodes["fitter"].connect
            deadline = time.monotonic() + 150
            while True:  # until poses reach an authorised peer on a third host
                peer = _peer(hosts, tmp_path, fitter, "fitter", "viewer", seconds=3.0, topic="pose")
                out, err = peer.communicate(timeout=60)
                assert peer.returncode == 0, err
                if json.loads(out)["received"] >= 30:
                    break
                assert time.monotonic() < deadline, (tmp_path / "stage.log").read_text()[-3000:]
            stranger_key = generate_keypair_files(tmp_path / "stranger", "stranger")[1]
            peers = {"authorised": _peer(hosts, tmp_path, fitter, "fitter", "viewer"),
                     "unknown key": _peer(hosts, tmp_path, fitter, "fitter", str(stranger_key)),
                     "no CURVE": _peer(hosts, tmp_path, fitter, "fitter", None)}
            received = {}
            for name, peer in peers.items():
                out, err = peer.communicate(timeout=60)
                assert peer.returncode == 0, err
                received[name] = json.loads(out)["received"]
        finally:
            for h in ("cams", "stage"):  # stop the camera host first, like the launcher does
                runs[h].send_signal(signal.SIGTERM)
                runs[h].wait(timeout=60)
                logs[h].close()
    assert received["authorised"] > 20, received  # poses (and stats) reach a peer with an authorised key
    assert received["unknown key"] == 0 and received["no CURVE"] == 0, received
    summary = summarize(load_take(tmp_path / TAKE_NAME))
    assert summary["e2e_samples"] > 30, (tmp_path / "stage.log").read_text()[-3000:]
    assert summary["mpjpe_mm"] is not None and summary["mpjpe_mm"] < 60
    assert summary["fps"]["kp2d/cam0"] > 20
    assert summary["unaccounted_drops"] == 0, summary["drops"]
