"""Launch: graph files (TOML), `streamer run`, `streamer nodes`, `streamer node`.

A graph file is data (no expressions). Edges are declared by the consumer: each node lists
the exact names of the upstream nodes it reads (`inputs`). Example:

    [graph]
    name = "example"
    base_port = 5550                # ports given out from here to nodes without port/endpoint
    heartbeat_interval_s = 0.25     # optional; dead after 4 silent intervals
    clock_master = "cam0"           # optional: this node serves the stage clock ...
    clock_port = 5549               # ... on this port of its host; every other node probes it
    keys_dir = "keys"               # optional: CURVE on every link (NAME.key_secret per node)
    stop_grace_s = 5.0              # optional: SIGKILL a node still running this long after SIGTERM

    [hosts.stage]                   # optional; default one host "local" = 127.0.0.1
    address = "127.0.0.1"

    [nodes.cam0]
    kind = "pulse"                  # a key of NODE_KINDS (`streamer nodes` lists them)
    host = "stage"                  # optional when there is one host
    port = 5551                     # or endpoint = "ipc:///tmp/cam0"; or neither (auto)
    restart = "on-failure"          # "on-failure" (default) | "always" | "never"
    settings = { camera = "cam0", rate_hz = 60.0 }

    [nodes.relay]
    kind = "relay"
    inputs = ["cam0"]
    delivery = "all"                # "all" (default) | "latest": newest message per topic only
    hwm = 100                       # optional socket queue bound, messages
    clock_offset_ns = 0             # optional: inject a clock offset (tests, drills)
    cpus = [1]                      # optional: pin the process (and its threads) to these CPUs of its host
    nice = 10                       # optional: niceness added to the launcher's (-20..19; < 0 needs privileges)

Settings keys ending in `_path`/`_file` are input files: resolved relative to the graph file
and must exist. Keys ending in `_dir` are resolved the same way but not required to exist.

Each node runs as `python -m streamer node KIND --name NAME --bind EP --input UP=EP ...
--settings-json JSON [...]` (see streamer/node.py), with one NumPy BLAS thread (`OPENBLAS_NUM_THREADS`,
`MKL_NUM_THREADS` = 1 unless set). A node that exits non-zero is restarted
with exponential backoff (0.5 s doubling to 8 s; reset after 10 s of running). `streamer run`
stops the graph upstream first (sources, then their consumers, ...) on SIGINT/SIGTERM, after
`--seconds`, or when every node has exited for good; its exit code is 0 when every node's last
exit was clean. Edges may form cycles (box hints: a capture node reads the sync node that reads
it); within a cycle the node declared first in the file counts as upstream.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from streamer.node import configure_logging, settings_from_dict, settings_schema
from streamer.stage_config import GRAPH_ENV

__all__ = [
    "NODE_KINDS",
    "Graph",
    "GraphError",
    "NodeSpec",
    "Supervisor",
    "list_nodes_main",
    "load_graph",
    "main",
    "node_command",
    "node_main",
]

log = logging.getLogger(__name__)

# kind -> module defining `Settings`, the node class and `main(argv)`. Imported by string only.
NODE_KINDS: dict[str, str] = {
    "capture": "nodes.capture",
    "synth": "nodes.synth",
    "sync": "nodes.sync",
    "fitter": "nodes.fitter",
    "recorder": "nodes.recorder",
    "replay": "nodes.replay",
    "monitor": "nodes.monitor",
    "avatar": "nodes.avatar",
    "pulse": "nodes.pulse",
    "relay": "nodes.relay",
}

RESTART_POLICIES = ("on-failure", "always", "never")
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 8.0
BACKOFF_RESET_AFTER_S = 10.0
STOP_GRACE_S = 5.0
# NumPy's BLAS thread pool, woken by any product above its threshold (a 60 x 210 gemv in the fitter), costs
# one node up to 20x wall time beside the other nodes' threads; nodes are many small processes: one BLAS thread each
SINGLE_THREAD_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_REPO_ROOT = Path(__file__).resolve().parents[1]
_NODE_KEYS = {"kind", "host", "port", "endpoint", "inputs", "settings", "restart", "delivery", "hwm", "clock_offset_ns",
              "cpus", "nice"}
_GRAPH_KEYS = {"name", "base_port", "heartbeat_interval_s", "stats_interval_s", "clock_master", "clock_port", "keys_dir",
               "stop_grace_s"}


class GraphError(ValueError):
    """An invalid graph file; the message names the file, the node and the field."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    kind: str
    host: str
    bind: str  # endpoint the node binds (XPUB)
    connect: str  # endpoint other nodes connect to
    inputs: tuple[str, ...]
    settings: dict
    restart: str = "on-failure"
    latest: bool = False
    hwm: int | None = None
    clock_offset_ns: int = 0
    cpus: tuple[int, ...] = ()  # CPU affinity of the process on its host; () = the scheduler's choice
    nice: int = 0  # niceness added to the launcher's (consumers off the latency path: > 0)


@dataclass(frozen=True)
class Graph:
    path: Path
    name: str
    hosts: dict[str, str]  # host name -> address
    nodes: dict[str, NodeSpec]
    heartbeat_interval_s: float | None = None
    stats_interval_s: float | None = None
    clock_master: str | None = None
    clock_bind: str | None = None
    clock_connect: str | None = None
    keys_dir: Path | None = None
    stop_grace_s: float = STOP_GRACE_S


def import_kind(kind: str):
    """The module of a node kind; raises ValueError when the kind is unknown or fails to import."""
    if kind not in NODE_KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(sorted(NODE_KINDS))}")
    try:
        return importlib.import_module(NODE_KINDS[kind])
    except ImportError as exc:
        raise ValueError(f"kind {kind!r}: module {NODE_KINDS[kind]} cannot be imported ({exc})") from None


def load_graph(path: str | Path) -> Graph:
    """Read and validate a graph file; GraphError names file, node and field."""
    try:
        return _load_graph(Path(path))
    except GraphError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError) as exc:  # a shape the checks above did not foresee
        raise GraphError(f"{path}: malformed graph ({exc!r})") from None


def _load_graph(path: Path) -> Graph:
    if not path.is_file():
        raise GraphError(f"{path}: graph file not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GraphError(f"{path}: not valid TOML ({exc})") from None

    def fail(where: str, text: str):
        raise GraphError(f"{path}: {where}: {text}")

    unknown = set(data) - {"graph", "hosts", "nodes"}
    if unknown:
        fail("top level", f"unknown table(s) {sorted(unknown)}; expected graph, hosts, nodes")
    for table in ("graph", "hosts", "nodes"):
        if table in data and not isinstance(data[table], dict):
            fail(f"[{table}]", "expected a table")
    g = data.get("graph", {})
    bad = set(g) - _GRAPH_KEYS
    if bad:
        fail("[graph]", f"unknown key(s) {sorted(bad)}; known: {sorted(_GRAPH_KEYS)}")
    hosts_raw = data.get("hosts", {"local": {"address": "127.0.0.1"}})
    hosts = {}
    for hname, h in hosts_raw.items():
        if not isinstance(h, dict) or not isinstance(h.get("address"), str) or set(h) - {"address"}:
            fail(f"host {hname!r}", "expected a table with one string field 'address'")
        hosts[hname] = h["address"]
    nodes_raw = data.get("nodes")
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        fail("[nodes]", "a graph needs at least one [nodes.NAME] table")
    base_port = g.get("base_port", 5550)
    if type(base_port) is not int or not 1024 <= base_port <= 65000:
        fail("[graph] field 'base_port'", f"expected an integer in 1024..65000, got {base_port!r}")

    used: dict[tuple[str, object], str] = {}  # (host address or "ipc", port or path) -> owner

    def claim(key, owner: str, where: str):
        if key in used:
            fail(where, f"{key[1]} on host {key[0]!r} already used by {used[key]}")
        used[key] = owner

    clock_master = g.get("clock_master")
    clock_bind = clock_connect = None
    if clock_master is not None:
        if not isinstance(clock_master, str) or not isinstance(nodes_raw.get(clock_master), dict):
            fail("[graph] field 'clock_master'", f"no node named {clock_master!r}")
        clock_port = g.get("clock_port")
        if type(clock_port) is not int or not 1024 <= clock_port <= 65535:
            fail("[graph] field 'clock_port'", f"expected an integer port with clock_master, got {clock_port!r}")
        master_host = nodes_raw[clock_master].get("host") or (next(iter(hosts)) if len(hosts) == 1 else None)
        if master_host not in hosts:
            fail(f"node {clock_master!r} field 'host'", f"unknown host {master_host!r}; known: {sorted(hosts)}")
        addr = hosts[master_host]
        claim((addr, clock_port), "the stage clock ([graph] clock_port)", "[graph] field 'clock_port'")
        clock_bind = clock_connect = f"tcp://{addr}:{clock_port}"

    specs: dict[str, NodeSpec] = {}
    next_port = base_port
    for name, n in nodes_raw.items():
        where = f"node {name!r}"
        if not isinstance(n, dict):
            fail(where, "expected a table")
        bad = set(n) - _NODE_KEYS
        if bad:
            fail(where, f"unknown field(s) {sorted(bad)}; known: {sorted(_NODE_KEYS)}")
        if "/" in name or not name.isprintable() or len(name) > 64:
            fail(where, "names are at most 64 printable characters without '/'")
        kind = n.get("kind")
        if not isinstance(kind, str):
            fail(f"{where} field 'kind'", "required, a string")
        try:
            module = import_kind(kind)
        except ValueError as exc:
            fail(f"{where} field 'kind'", str(exc))
        host = n.get("host")
        if host is None:
            if len(hosts) != 1:
                fail(f"{where} field 'host'", f"required when the graph has several hosts ({sorted(hosts)})")
            host = next(iter(hosts))
        if host not in hosts:
            fail(f"{where} field 'host'", f"unknown host {host!r}; known: {sorted(hosts)}")
        addr = hosts[host]
        if "endpoint" in n and "port" in n:
            fail(where, "give either 'port' or 'endpoint', not both")
        if "endpoint" in n:
            ep = n["endpoint"]
            if not isinstance(ep, str) or not ep.startswith("ipc://") or len(ep) <= len("ipc://"):
                fail(f"{where} field 'endpoint'", f"expected ipc://PATH (tcp nodes give 'port'), got {ep!r}")
            claim(("ipc", ep), f"node {name!r}", f"{where} field 'endpoint'")
            bind = connect = ep
        else:
            port = n.get("port")
            if port is None:
                taken = {key[1] for key in used}  # auto ports are unique across hosts: easier to read
                while next_port in taken:
                    next_port += 1
                port = next_port
            elif type(port) is not int or not 1024 <= port <= 65535:
                fail(f"{where} field 'port'", f"expected an integer in 1024..65535, got {port!r}")
            claim((addr, port), f"node {name!r}", f"{where} field 'port'")
            bind = connect = f"tcp://{addr}:{port}"
        inputs = n.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            fail(f"{where} field 'inputs'", "expected a list of node names")
        for up in inputs:
            if up not in nodes_raw:
                fail(f"{where} field 'inputs'", f"no node named {up!r} (exact names; known: {sorted(nodes_raw)})")
            if up == name:
                fail(f"{where} field 'inputs'", "a node cannot read itself")
        if len(set(inputs)) != len(inputs):
            fail(f"{where} field 'inputs'", "lists a node twice")
        restart = n.get("restart", "on-failure")
        if restart not in RESTART_POLICIES:
            fail(f"{where} field 'restart'", f"expected one of {list(RESTART_POLICIES)}, got {restart!r}")
        delivery = n.get("delivery", "all")
        if delivery not in ("all", "latest"):
            fail(f"{where} field 'delivery'", f"expected 'all' or 'latest', got {delivery!r}")
        hwm = n.get("hwm")
        if hwm is not None and (type(hwm) is not int or not 1 <= hwm <= 1_000_000):
            fail(f"{where} field 'hwm'", f"expected an integer in 1..1000000, got {hwm!r}")
        offset = n.get("clock_offset_ns", 0)
        if type(offset) is not int:
            fail(f"{where} field 'clock_offset_ns'", f"expected an integer, got {offset!r}")
        cpus = n.get("cpus", [])
        if (not isinstance(cpus, list) or any(type(c) is not int or not 0 <= c < 4096 for c in cpus)
                or len(set(cpus)) != len(cpus)):
            fail(f"{where} field 'cpus'", f"expected a list of distinct CPU numbers (0..4095), got {cpus!r}")
        nice = n.get("nice", 0)
        if type(nice) is not int or not -20 <= nice <= 19:
            fail(f"{where} field 'nice'", f"expected an integer in -20..19, got {nice!r}")
        if not isinstance(n.get("settings", {}), dict):
            fail(f"{where} field 'settings'", "expected a table")
        settings = _resolve_paths(dict(n.get("settings", {})), path.parent, lambda f, t: fail(f"{where} field {f!r}", t))
        try:
            settings_from_dict(getattr(module, "Settings"), settings, "settings")
        except AttributeError:
            fail(f"{where} field 'kind'", f"module {NODE_KINDS[kind]} defines no Settings")
        except ValueError as exc:
            raise GraphError(f"{path}: {where} field {exc}") from None
        specs[name] = NodeSpec(
            name=name, kind=kind, host=host, bind=bind, connect=connect, inputs=tuple(inputs), settings=settings,
            restart=restart, latest=delivery == "latest", hwm=hwm, clock_offset_ns=offset, cpus=tuple(cpus),
            nice=nice,
        )

    keys_dir = None
    if "keys_dir" in g:
        keys_dir = (path.parent / g["keys_dir"]).resolve()
        if not keys_dir.is_dir():
            fail("[graph] field 'keys_dir'", f"folder not found: {keys_dir}")
        for name, spec in specs.items():
            secret = keys_dir / f"{name}.key_secret"
            if not secret.is_file():
                fail(f"node {name!r}", f"CURVE key file not found: {secret} (python -m streamer.transport.keygen {path})")
            if spec.connect.startswith("ipc://"):
                fail(f"node {name!r} field 'endpoint'", "CURVE works over tcp only")
    for key in ("heartbeat_interval_s", "stats_interval_s", "stop_grace_s"):
        v = g.get(key)
        if v is not None and (type(v) not in (int, float) or not 0.01 <= v <= 600):
            fail(f"[graph] field {key!r}", f"expected seconds in 0.01..600, got {v!r}")
    return Graph(
        path=path, name=g.get("name", path.stem), hosts=hosts, nodes=specs,
        heartbeat_interval_s=g.get("heartbeat_interval_s"), stats_interval_s=g.get("stats_interval_s"),
        clock_master=clock_master, clock_bind=clock_bind, clock_connect=clock_connect, keys_dir=keys_dir,
        stop_grace_s=float(g.get("stop_grace_s", STOP_GRACE_S)),
    )


def _resolve_paths(settings: dict, base: Path, fail) -> dict:
    for key, value in settings.items():
        if not isinstance(value, str) or not value or not key.endswith(("_path", "_file", "_dir")):
            continue  # "" means unset
        resolved = (base / value).resolve()
        if key.endswith(("_path", "_file")) and not resolved.exists():
            fail(f"settings.{key}", f"file not found: {resolved}")
        settings[key] = str(resolved)
    return settings


def node_command(graph: Graph, spec: NodeSpec) -> list[str]:
    """The argv that runs one node of the graph as its own process."""
    cmd = [sys.executable, "-m", "streamer", "node", spec.kind, "--name", spec.name, "--bind", spec.bind]
    for up in spec.inputs:
        cmd += ["--input", f"{up}={graph.nodes[up].connect}"]
    cmd += ["--settings-json", json.dumps(spec.settings)]
    if spec.latest:
        cmd.append("--latest")
    if spec.hwm is not None:
        cmd += ["--hwm", str(spec.hwm)]
    if graph.heartbeat_interval_s is not None:
        cmd += ["--heartbeat-s", str(graph.heartbeat_interval_s)]
    if graph.stats_interval_s is not None:
        cmd += ["--stats-s", str(graph.stats_interval_s)]
    if graph.clock_master == spec.name:
        cmd += ["--clock-serve", graph.clock_bind]
    elif graph.clock_master is not None:
        cmd += ["--clock-connect", graph.clock_connect]
    if spec.clock_offset_ns:
        cmd += ["--clock-offset-ns", str(spec.clock_offset_ns)]
    if graph.keys_dir is not None:
        cmd += ["--keys-dir", str(graph.keys_dir)]
    return cmd


@dataclass
class _Proc:
    spec: NodeSpec
    cmd: list[str]
    popen: subprocess.Popen | None = None
    started_mono: float = 0.0
    next_start_mono: float = 0.0
    backoff_s: float = BACKOFF_INITIAL_S
    restarts: int = 0
    last_rc: int | None = None
    exit_codes: list = field(default_factory=list)  # every exit seen while running


class Supervisor:
    """Starts node processes, restarts crashed ones with backoff, stops all cleanly."""

    def __init__(self, graph: Graph, host: str | None = None):
        if host is not None and host not in graph.hosts:
            raise GraphError(f"{graph.path}: --host {host!r} is not a host of the graph; known: {sorted(graph.hosts)}")
        self.graph = graph
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
        env[GRAPH_ENV] = str(Path(graph.path).resolve())  # the sync node serves it as the `stage` configuration
        for name in SINGLE_THREAD_BLAS_ENV:  # unless the user says otherwise
            env.setdefault(name, "1")
        self._env = env
        self.procs = {
            name: _Proc(spec, node_command(graph, spec))
            for name, spec in graph.nodes.items()
            if host is None or spec.host == host
        }
        self._stopping = False

    def start(self) -> None:
        for proc in self.procs.values():
            self._spawn(proc)

    def _spawn(self, proc: _Proc) -> None:
        proc.popen = subprocess.Popen(proc.cmd, env=self._env, start_new_session=True)
        proc.started_mono = time.monotonic()
        if proc.spec.cpus:  # before the node starts its threads, which inherit it
            try:
                os.sched_setaffinity(proc.popen.pid, proc.spec.cpus)
            except OSError as exc:  # e.g. a CPU this host does not have: run unpinned, say so
                log.error("node %s: cannot pin to cpus %s (this host has %s): %s", proc.spec.name,
                          list(proc.spec.cpus), sorted(os.sched_getaffinity(0)), exc)
        if proc.spec.nice:  # likewise before its threads start: they inherit it
            try:
                os.setpriority(os.PRIO_PROCESS, proc.popen.pid, os.getpriority(os.PRIO_PROCESS, 0) + proc.spec.nice)
            except OSError as exc:  # e.g. a negative niceness without the privilege: run at the default, say so
                log.error("node %s: cannot set niceness %+d: %s", proc.spec.name, proc.spec.nice, exc)
        log.info("started %s (%s) pid=%d", proc.spec.name, proc.spec.kind, proc.popen.pid)

    def pids(self) -> dict[str, int | None]:
        return {n: (p.popen.pid if p.popen and p.popen.poll() is None else None) for n, p in self.procs.items()}

    def poll(self) -> None:
        """Reap exited nodes and (re)start those whose backoff has passed; call every ~0.1 s."""
        now = time.monotonic()
        for proc in self.procs.values():
            if proc.popen is not None:
                rc = proc.popen.poll()
                if rc is None:
                    continue
                proc.popen = None
                proc.last_rc = rc
                proc.exit_codes.append(rc)
                ran_s = now - proc.started_mono
                wants = proc.spec.restart == "always" or (proc.spec.restart == "on-failure" and rc != 0)
                if self._stopping or not wants:
                    log.info("%s exited rc=%d after %.1f s; not restarting", proc.spec.name, rc, ran_s)
                    proc.next_start_mono = float("inf")
                    continue
                if ran_s >= BACKOFF_RESET_AFTER_S:
                    proc.backoff_s = BACKOFF_INITIAL_S
                proc.next_start_mono = now + proc.backoff_s
                log.warning("%s exited rc=%d after %.1f s; restarting in %.1f s", proc.spec.name, rc, ran_s, proc.backoff_s)
                proc.backoff_s = min(BACKOFF_MAX_S, proc.backoff_s * 2)
            elif not self._stopping and now >= proc.next_start_mono:
                proc.restarts += 1
                self._spawn(proc)

    def finished(self) -> bool:
        """True when no node runs and none will be restarted (e.g. a replay graph that has played out)."""
        return all(p.popen is None and p.next_start_mono == float("inf") for p in self.procs.values())

    def exit_code(self) -> int:
        """0 when every node's last exit was clean (0, or stopped by our SIGTERM while starting)."""
        return 0 if all(p.last_rc in (None, 0, -signal.SIGTERM) for p in self.procs.values()) else 1

    def stop(self, grace_s: float | None = None) -> int:
        """Stop the graph upstream first (sources, then their consumers, ...), so every consumer still
        receives and flushes what its inputs sent last: SIGTERM one depth level, wait for it (SIGKILL
        after grace_s), then the next. Returns `exit_code()`."""
        self._stopping = True
        grace_s = self.graph.stop_grace_s if grace_s is None else grace_s
        for level in _depth_levels(self.graph, list(self.procs)):
            running = [self.procs[n] for n in level if self.procs[n].popen is not None and self.procs[n].popen.poll() is None]
            for p in running:
                p.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for p in running:
                try:
                    p.last_rc = p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("%s did not stop in %.1f s: killing", p.spec.name, grace_s)
                    p.popen.kill()
                    p.last_rc = p.popen.wait()
                p.popen = None
        for name, p in self.procs.items():
            if p.last_rc not in (None, 0, -signal.SIGTERM):
                log.warning("%s: last exit code %s", name, p.last_rc)
            log.info("%s: %d restart(s), exit codes %s, last %s", name, p.restarts, p.exit_codes, p.last_rc)
        return self.exit_code()


def _depth_levels(graph: Graph, names: list[str]) -> list[list[str]]:
    """Nodes grouped by depth in the graph (0 = reads no node); inputs on other hosts count too.

    Cycles are allowed (box hints fed back from sync to capture): within a cycle the node declared
    first in the graph file counts as upstream, i.e. an input from a later-declared node that closes a
    cycle is not an ordering edge. Declare sources before their consumers."""
    order = {name: i for i, name in enumerate(graph.nodes)}
    reads: dict[str, set[str]] = {}  # every node a node reads, directly or not

    def upstream(name: str) -> set[str]:
        if name not in reads:
            reads[name] = seen = set()
            todo = list(graph.nodes[name].inputs)
            while todo:
                up = todo.pop()
                if up not in seen:
                    seen.add(up)
                    todo += graph.nodes[up].inputs
        return reads[name]

    def ordering_inputs(name: str) -> list[str]:
        return [u for u in graph.nodes[name].inputs if not (order[u] > order[name] and name in upstream(u))]

    depth: dict[str, int] = {}

    def visit(name: str) -> int:  # the ordering edges form no cycle: within one, they only go forward
        if name not in depth:
            depth[name] = 1 + max((visit(u) for u in ordering_inputs(name)), default=-1)
        return depth[name]

    for name in names:
        visit(name)
    levels: dict[int, list[str]] = {}
    for name in names:
        levels.setdefault(depth[name], []).append(name)
    return [levels[d] for d in sorted(levels)]


def main(argv: list[str]) -> int:
    """`streamer run GRAPH.toml [--host NAME] [--seconds S]`."""
    parser = argparse.ArgumentParser(prog="streamer run", description="start the nodes of a graph file as processes")
    parser.add_argument("graph", help="graph file (TOML), e.g. launch/demo.toml")
    parser.add_argument("--host", help="start only the nodes of this host of the graph")
    parser.add_argument("--seconds", type=float, help="stop everything after this many seconds")
    parser.add_argument("--check", action="store_true", help="validate the graph, print the node commands, exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging("launch", args.log_level)
    try:
        graph = load_graph(args.graph)
        supervisor = Supervisor(graph, args.host)
    except GraphError as exc:
        print(f"streamer run: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for proc in supervisor.procs.values():
            print(shlex.join(proc.cmd))
        return 0
    stop = []
    handlers = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    end = time.monotonic() + args.seconds if args.seconds is not None else float("inf")
    try:
        supervisor.start()
        while not stop and time.monotonic() < end:
            supervisor.poll()
            if supervisor.finished():
                log.info("every node has exited and none is due a restart")
                break
            time.sleep(0.05)
    finally:
        rc = supervisor.stop()
        for s, h in handlers.items():
            signal.signal(s, h)
    log.info("graph %s stopped (exit %d)", graph.name, rc)
    return rc


def list_nodes_main(argv: list[str]) -> int:
    """`streamer nodes`: every node kind, what it does, and its settings."""
    parser = argparse.ArgumentParser(prog="streamer nodes", description="list node kinds and their settings")
    parser.add_argument("--json", action="store_true", help="one JSON object: kind -> settings")
    args = parser.parse_args(argv)
    out = {}
    for kind in NODE_KINDS:
        try:
            module = import_kind(kind)
            doc = (module.__doc__ or "").strip().splitlines()
            schema = settings_schema(module.Settings) if dataclasses.is_dataclass(module.Settings) else []
            out[kind] = {
                "module": NODE_KINDS[kind],
                "about": doc[0] if doc else "",
                "settings": [
                    {"name": n, "type": t, "default": None if d is dataclasses.MISSING else d, "help": h}
                    for n, t, d, h in schema
                ],
            }
        except (ValueError, AttributeError) as exc:
            out[kind] = {"module": NODE_KINDS[kind], "unavailable": str(exc)}
    if args.json:
        print(json.dumps(out, default=list, indent=1))
        return 0
    for kind, info in out.items():
        if "unavailable" in info:
            print(f"{kind}  (not available: {info['unavailable']})")
            continue
        print(f"{kind}  [{info['module']}]  {info['about']}")
        for s in info["settings"]:
            default = "(required)" if s["default"] is None else repr(s["default"])
            print(f"    {s['name']}: {s['type']} = {default}" + (f"  # {s['help']}" if s["help"] else ""))
    return 0


def node_main(argv: list[str]) -> int:
    """`streamer node KIND [node options]`: run one node process (what the launcher runs)."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: streamer node KIND [--help | node options]\n\nkinds: " + ", ".join(NODE_KINDS))
        return 0 if argv else 2
    try:
        module = import_kind(argv[0])
    except ValueError as exc:
        print(f"streamer node: {exc}", file=sys.stderr)
        return 2
    return int(module.main(argv[1:]) or 0)
