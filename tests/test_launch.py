"""streamer/launch.py: graph validation names file, node and field; node commands; CLI listing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.launch import GraphError, Supervisor, list_nodes_main, load_graph, node_command

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.toml"
    path.write_text(text)
    return path


GOOD = """
[graph]
name = "t"
base_port = 6100
clock_master = "cam0"
clock_port = 6099

[hosts.a]
address = "127.0.0.1"
[hosts.b]
address = "127.0.0.2"

[nodes.cam0]
kind = "pulse"
host = "a"
settings = { camera = "cam0", rate_hz = 30 }

[nodes.cam1]
kind = "pulse"
host = "b"
port = 6100
settings = { camera = "cam1" }

[nodes.relay]
kind = "relay"
host = "a"
inputs = ["cam0", "cam1"]
delivery = "latest"
restart = "always"
"""


def test_good_graph_loads_with_ports_endpoints_and_commands(tmp_path):
    g = load_graph(write(tmp_path, GOOD))
    assert g.nodes["cam0"].bind == "tcp://127.0.0.1:6100"
    assert g.nodes["cam1"].bind == "tcp://127.0.0.2:6100"  # same port, other host: no clash
    assert g.nodes["relay"].bind == "tcp://127.0.0.1:6101"
    assert g.nodes["cam0"].settings == {"camera": "cam0", "rate_hz": 30}
    cmd = node_command(g, g.nodes["relay"])
    assert cmd[1:6] == ["-m", "streamer", "node", "relay", "--name"]
    assert "--latest" in cmd and "--clock-connect" in cmd and "tcp://127.0.0.1:6099" in cmd
    assert cmd.count("--input") == 2 and "cam1=tcp://127.0.0.2:6100" in cmd
    assert "--clock-serve" in node_command(g, g.nodes["cam0"])
    assert set(Supervisor(g, host="a").procs) == {"cam0", "relay"}
    with pytest.raises(GraphError, match="'c'"):
        Supervisor(g, host="c")


def error(tmp_path, text: str) -> str:
    with pytest.raises(GraphError) as info:
        load_graph(write(tmp_path, text))
    return str(info.value)


def test_unknown_kind_names_node_and_field(tmp_path):
    msg = error(tmp_path, '[nodes.cam0]\nkind = "camera"\n')
    assert "graph.toml" in msg and "node 'cam0' field 'kind'" in msg and "unknown kind 'camera'" in msg and "pulse" in msg


def test_port_clash_names_both_nodes(tmp_path):
    msg = error(tmp_path, '[nodes.a]\nkind = "pulse"\nport = 6200\n[nodes.b]\nkind = "pulse"\nport = 6200\n')
    assert "node 'b' field 'port'" in msg and "6200" in msg and "node 'a'" in msg


def test_port_clash_with_the_clock_port(tmp_path):
    msg = error(tmp_path, '[graph]\nclock_master = "a"\nclock_port = 6300\n[nodes.a]\nkind = "pulse"\nport = 6300\n')
    assert "node 'a' field 'port'" in msg and "stage clock" in msg


def test_ipc_endpoint_clash(tmp_path):
    msg = error(tmp_path, '[nodes.a]\nkind = "pulse"\nendpoint = "ipc:///tmp/x"\n[nodes.b]\nkind = "pulse"\nendpoint = "ipc:///tmp/x"\n')
    assert "node 'b' field 'endpoint'" in msg


def test_missing_input_file_names_node_and_setting(tmp_path):
    msg = error(tmp_path, '[nodes.a]\nkind = "pulse"\nsettings = { keypoints_file = "nope.npy" }\n')
    assert "node 'a' field 'settings.keypoints_file'" in msg and str(tmp_path / "nope.npy") in msg


def test_input_file_is_resolved_relative_to_the_graph(tmp_path):
    np.save(tmp_path / "still.npy", np.zeros((70, 2), np.float32))
    g = load_graph(write(tmp_path, '[nodes.a]\nkind = "pulse"\nsettings = { keypoints_file = "still.npy" }\n'))
    assert g.nodes["a"].settings["keypoints_file"] == str(tmp_path / "still.npy")


@pytest.mark.parametrize(
    "text,expected",
    [
        ('[nodes.a]\nkind = "relay"\ninputs = ["b"]\n', "node 'a' field 'inputs'"),
        ('[nodes.a]\nkind = "pulse"\nsettings = { fps = 3 }\n', "node 'a' field settings: unknown setting(s) ['fps']"),
        ('[nodes.a]\nkind = "pulse"\nsettings = { rate_hz = "fast" }\n', "node 'a' field settings.rate_hz: expected a number"),
        ('[nodes.a]\nkind = "pulse"\nrestart = "sometimes"\n', "node 'a' field 'restart'"),
        ('[nodes.a]\nkind = "pulse"\ndelivery = "newest"\n', "node 'a' field 'delivery'"),
        ('[nodes.a]\nkind = "pulse"\nport = 80\n', "node 'a' field 'port'"),
        ('[nodes.a]\nkind = "pulse"\ncolour = "red"\n', "node 'a': unknown field(s) ['colour']"),
        ('[nodes.a]\nkind = "pulse"\nhost = "x"\n', "node 'a' field 'host'"),
        ('[nodes.a]\nkind = "pulse"\ncpus = [0, 0]\n', "node 'a' field 'cpus'"),
        ('[nodes.a]\nkind = "pulse"\ncpus = "0"\n', "node 'a' field 'cpus'"),
        ('[nodes.a]\nkind = "pulse"\ncpus = [-1]\n', "node 'a' field 'cpus'"),
        ('[nodes.a]\nkind = "pulse"\nnice = 20\n', "node 'a' field 'nice'"),
        ('[nodes.a]\nkind = "pulse"\nnice = 1.5\n', "node 'a' field 'nice'"),
        ('[graph]\nkeys_dir = "keys"\n[nodes.a]\nkind = "pulse"\n', "[graph] field 'keys_dir'"),
        ('[graph]\nclock_master = "zz"\nclock_port = 6000\n[nodes.a]\nkind = "pulse"\n', "[graph] field 'clock_master'"),
        ('[nodes.a]\nkind = "pulse"\n[nodes.a.settings]\n', "graph.toml"),
        ("[graph]\n", "at least one [nodes.NAME]"),
        ("[nodes.a\n", "not valid TOML"),
    ],
)
def test_invalid_graphs_are_rejected_with_node_and_field(tmp_path, text, expected):
    if expected == "graph.toml":  # a valid edge case: empty settings table
        load_graph(write(tmp_path, text))
        return
    assert expected in error(tmp_path, text)


def test_missing_graph_file(tmp_path):
    with pytest.raises(GraphError, match="graph file not found"):
        load_graph(tmp_path / "none.toml")


def test_curve_keys_required_per_node(tmp_path):
    (tmp_path / "keys").mkdir()
    msg = error(tmp_path, '[graph]\nkeys_dir = "keys"\n[nodes.a]\nkind = "pulse"\n')
    assert "node 'a'" in msg and "a.key_secret" in msg and "streamer.transport.keygen" in msg


def test_example_graphs_in_launch_are_valid():
    graphs = sorted((REPO / "launch").glob("*.toml"))
    assert graphs
    for path in graphs:
        try:
            load_graph(path)
        except GraphError as exc:
            if "cannot be imported" not in str(exc):  # kinds other helpers are still writing
                raise


def test_streamer_nodes_lists_kinds_with_settings(capsys):
    assert list_nodes_main(["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pulse = {s["name"]: s for s in out["pulse"]["settings"]}
    assert pulse["rate_hz"]["default"] == 60.0 and pulse["rate_hz"]["type"] == "float"
    assert out["relay"]["settings"][0]["type"] == "tuple[str, ...]"


def test_run_cli_reports_graph_errors_with_exit_2(tmp_path):
    path = write(tmp_path, '[nodes.a]\nkind = "camera"\n')
    done = subprocess.run([sys.executable, "-m", "streamer", "run", str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 2 and "node 'a' field 'kind'" in done.stderr


def test_node_cli_rejects_bad_settings_with_exit_2():
    done = subprocess.run([sys.executable, "-m", "streamer", "node", "pulse", "--settings-json", '{"rate": 1}'],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2 and "unknown setting(s) ['rate']" in done.stderr


@pytest.mark.slow
def test_a_node_with_cpus_runs_pinned_to_them(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    g = load_graph(write(tmp_path, f'[graph]\nbase_port = 6630\n[nodes.a]\nkind = "pulse"\ncpus = [{cpu}]\n'
                                   '[nodes.b]\nkind = "pulse"\n'))
    assert g.nodes["a"].cpus == (cpu,) and g.nodes["b"].cpus == ()
    sup = Supervisor(g)
    sup.start()
    try:
        pids = sup.pids()
        assert os.sched_getaffinity(pids["a"]) == {cpu}
        assert os.sched_getaffinity(pids["b"]) == os.sched_getaffinity(0)
    finally:
        sup.stop()


@pytest.mark.slow
def test_a_node_with_nice_runs_at_that_niceness_threads_included(tmp_path):
    g = load_graph(write(tmp_path, '[graph]\nbase_port = 6635\n[nodes.a]\nkind = "pulse"\nnice = 7\n'
                                   '[nodes.b]\nkind = "pulse"\n'))
    assert g.nodes["a"].nice == 7 and g.nodes["b"].nice == 0
    own = os.getpriority(os.PRIO_PROCESS, 0)
    sup = Supervisor(g)
    sup.start()
    try:
        pids = sup.pids()
        end = time.monotonic() + 20.0
        while time.monotonic() < end and len(os.listdir(f"/proc/{pids['a']}/task")) < 2:
            time.sleep(0.1)  # wait for the node's threads (transport, clock)
        tasks = [int(t) for t in os.listdir(f"/proc/{pids['a']}/task")]
        assert len(tasks) >= 2
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in tasks} == {own + 7}
        assert os.getpriority(os.PRIO_PROCESS, pids["b"]) == own
        environ = dict(kv.split("=", 1) for kv in open(f"/proc/{pids['a']}/environ").read().split("\0") if "=" in kv)
        assert environ["OPENBLAS_NUM_THREADS"] == os.environ.get("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread
    finally:
        sup.stop()


def test_crashing_node_is_restarted_with_growing_backoff(tmp_path):
    # rate_hz = 0 passes the type check but the pulse node refuses it in setup -> exit code 1
    g = load_graph(write(tmp_path, '[graph]\nbase_port = 6620\n[nodes.bad]\nkind = "pulse"\nsettings = { rate_hz = 0.0 }\n'))
    sup = Supervisor(g)
    sup.start()
    end = time.monotonic() + 30.0
    try:
        while time.monotonic() < end and len(sup.procs["bad"].exit_codes) < 3:
            sup.poll()
            time.sleep(0.05)
    finally:
        rc = sup.stop()
    proc = sup.procs["bad"]
    assert proc.exit_codes[:3] == [1, 1, 1]
    # waits before restart 1, 2, 3: 0.5, 1, 2 s; the next one would be 4 s
    assert proc.restarts >= 2 and proc.backoff_s == 4.0
    # stopped while crashed: unclean; stopped while (re)starting: our SIGTERM ended it, clean
    assert rc == (1 if proc.last_rc == 1 else 0)

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(["camera", "rate_hz", "n_keypoints", "keypoints_file", "x"]), _JSON, max_size=4))
def test_settings_from_anything_either_build_or_raise_value_error(values):
    from nodes.pulse import Settings
    from streamer.node import settings_from_dict

    try:
        s = settings_from_dict(Settings, values)
    except ValueError as exc:
        assert "settings" in str(exc)
    else:
        assert isinstance(s.rate_hz, float) and isinstance(s.camera, str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_any_graph_text_loads_or_raises_graph_error(tmp_path, text):
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        load_graph(path)
    except GraphError as exc:
        assert str(path) in str(exc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(node=st.dictionaries(st.sampled_from(sorted(["kind", "host", "port", "endpoint", "inputs", "settings", "restart",
                                                     "delivery", "hwm", "clock_offset_ns", "bogus"])), _JSON, max_size=5))
def test_any_node_table_loads_or_raises_graph_error(tmp_path, node):
    import tomli_w

    node = {k: v for k, v in node.items() if v is not None}
    try:
        text = tomli_w.dumps({"nodes": {"n": node}})
    except (TypeError, ValueError):
        return  # not representable in TOML
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        load_graph(path)
    except GraphError as exc:
        assert "node 'n'" in str(exc) or "[nodes]" in str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(["graph", "hosts", "nodes", "extra"]),
                           st.dictionaries(st.sampled_from(["name", "base_port", "clock_master", "clock_port", "a", "n"]),
                                           _JSON, max_size=3) | _JSON, max_size=3))
def test_any_graph_document_loads_or_raises_graph_error(tmp_path, doc):
    import tomli_w

    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        return
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        load_graph(path)
    except GraphError as exc:
        assert str(path) in str(exc)


def test_graph_stops_upstream_first(tmp_path):
    from streamer.launch import _depth_levels

    g = load_graph(write(tmp_path, """
[nodes.sink]
kind = "relay"
inputs = ["mid", "cam"]
[nodes.mid]
kind = "relay"
inputs = ["cam"]
[nodes.cam]
kind = "pulse"
[nodes.loop_a]
kind = "relay"
inputs = ["loop_b"]
[nodes.loop_b]
kind = "relay"
inputs = ["loop_a"]
"""))
    levels = _depth_levels(g, list(g.nodes))
    flat = {n: i for i, level in enumerate(levels) for n in level}
    assert flat["cam"] < flat["mid"] < flat["sink"]
    assert {"loop_a", "loop_b"} <= set(flat)


@pytest.mark.slow
def test_run_ends_when_every_node_has_exited_for_good(tmp_path):
    path = write(tmp_path, '[graph]\nbase_port = 6640\n[nodes.p]\nkind = "pulse"\nrestart = "never"\nsettings = { rate_hz = 0.0 }\n')
    done = subprocess.run([sys.executable, "-m", "streamer", "run", str(path), "--seconds", "60"], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1  # the node failed and was not restarted
    assert "none is due a restart" in done.stderr and "exit codes [1]" in done.stderr
