"""Node runtime: the base every node process stands on.

A node is one process with one output (an XPUB bound on `config.bind`) and any number of
inputs (one SUB per upstream node). `Node.run()` gives it a lifecycle:

    setup()  ->  loop: poll inputs (timeout <= tick) -> on_message(topic, msg) ... on_tick(now_ns)
             ->  SIGINT/SIGTERM: teardown(), final stats, outputs flushed, sockets closed, exit 0

An exception in `on_message`/`on_tick` is counted (`errors/<hook>`), logged (first and every
100th) and the loop carries on; one in `setup`/`teardown` ends the process with exit code 1
(the launcher restarts it). The base also sends heartbeats when idle, tracks upstream liveness (`on_peer(name, alive)`),
re-sends last-value state to late joiners, keeps the stage clock (probing the master when
the graph names one), and publishes `NodeStats` on `stats/<name>` every `stats_interval_s`:
fps (data messages published per second), latency p50/p95/p99 (ms, receive -> publish inside
`on_message`, or what the node reports with `observe_latency_ns`), queue depth, drops,
rejects, clock offset, plus the node's own counters (`count`) and gauges (`gauge`).

Example (a whole node module, `nodes/doubler.py`):

    from dataclasses import dataclass
    from streamer.node import Node, run_node

    @dataclass(frozen=True)
    class Settings:
        factor: float = 2.0  # scale applied to every point

    class Doubler(Node):
        Settings = Settings
        INPUT_TOPICS = ("points3d",)

        def on_message(self, topic, msg):
            msg.points = msg.points * self.settings.factor
            self.publish(msg)
            self.count("scaled")

    def main(argv):
        return run_node(Doubler, argv)

Launch contract: the launcher runs `python -m streamer node KIND --name NAME --bind EP
[--input NAME=EP ...] [--settings-json JSON] [--latest] [--clock-serve EP | --clock-connect EP]
[--keys-dir DIR] [--hwm N] [--heartbeat-s S] [--seconds S] [--log-level LEVEL]`;
`run_node` parses exactly that (see `node_arg_parser`). Settings JSON keys must be fields
of the node's frozen `Settings` dataclass (unknown keys and wrong types are errors).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
import types
import typing
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from protocol import NodeStats
from streamer.clock import ClockClient, ClockServer, ClockThread, StageClock
from streamer.transport.curve import load_keypair, load_public_key, start_authenticator
from streamer.transport.liveness import HEARTBEAT_INTERVAL_S
from streamer.transport.pubsub import DEFAULT_HWM, Publisher, Subscriber

__all__ = [
    "FLUSH_MS",
    "MIN_RATE_WINDOW_S",
    "Input",
    "Node",
    "NodeConfig",
    "configure_logging",
    "node_arg_parser",
    "run_node",
    "settings_from_dict",
    "settings_schema",
    "window_rate",
]

log = logging.getLogger(__name__)

FLUSH_MS = 500  # how long queued output may take to leave at shutdown
MAX_POLL_MS = 50  # the loop wakes at least this often (signals, housekeeping)
HOUSEKEEPING_MS = 10  # heartbeats, state re-sends and input liveness are checked this often (and on subscriptions)
MIN_RATE_WINDOW_S = 0.2  # a rate over a shorter window (e.g. the final stats at shutdown) is not measured
_MAX_BATCH = 1000  # messages dispatched per loop iteration before ticks get a turn
_WAITED_NS = 50_000  # a poll that took this long waited for input (one with input ready returns in ~10 us)
_LATENCY_WINDOW = 4096
_MAX_STAT_NAMES = 256
_MAX_STAT_NAME_LEN = 96


def window_rate(count: int, elapsed_s: float, fallback: float = 0.0) -> float:
    """Events per second over a window of `elapsed_s` seconds; `fallback` (the previous rate, or 0)
    when the window is shorter than `MIN_RATE_WINDOW_S`, so a tiny window never reports a huge rate."""
    if not elapsed_s >= MIN_RATE_WINDOW_S:
        return float(fallback)
    return count / elapsed_s


class _StoppedDuringSetup(BaseException):
    """Raised by the signal handler while setup() runs: the node ends without finishing its setup.
    A BaseException (like KeyboardInterrupt), so `except Exception` fallbacks inside libraries that
    setup() imports (e.g. an optional-dependency probe) cannot swallow it."""


@dataclass(frozen=True)
class Input:
    """One upstream node: its name and the endpoint its XPUB is bound on."""

    name: str
    endpoint: str


@dataclass(frozen=True)
class NodeConfig:
    """What the launcher tells a node: identity, wiring and the graph-wide options."""

    name: str
    bind: str
    inputs: tuple[Input, ...] = ()
    latest: bool = False  # deliver only the newest message per topic (monitor, avatar)
    hwm: int = DEFAULT_HWM
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    stats_interval_s: float = 1.0
    clock_serve: str | None = None  # this node is the stage-clock master, ROUTER on this endpoint
    clock_connect: str | None = None  # probe the master at this endpoint
    keys_dir: str | None = None  # CURVE: NAME.key_secret per node, authorised *.key files
    seconds: float | None = None  # stop after this long (None: until signalled)


class Node:
    """Base of every node. Subclasses set `Settings` and override the hooks they need.

    Attributes available in hooks: `name`, `config`, `settings`, `clock` (StageClock;
    `clock.now_ns()` is stage time), `log` (logger named after the node).
    `tick_interval_s` (default 0.1) may be changed in `setup()`, and so may `dispatch_interval_s`
    (default 0: inputs are taken the moment they arrive): when > 0 the loop does not wake for input
    and takes what has arrived at most this often, one batch (with `latest` delivery the newest
    message per topic; the rest count as `superseded`). For display consumers, which gain nothing
    from seeing a value they will overwrite before showing it: each wake-up and each dispatch costs
    CPU whatever the message. `run()` may be called from a thread other than the main one (tests);
    it then installs no signal handlers, use `stop()`.
    """

    Settings: typing.ClassVar[type] = type("NoSettings", (), {})
    INPUT_TOPICS: typing.ClassVar[tuple[str, ...]] = ("",)  # prefixes subscribed on every input

    def __init__(self, config: NodeConfig, settings=None, *, clock_offset_ns: int = 0):
        self.config = config
        self.name = config.name
        self.settings = settings if settings is not None else self.Settings()
        self.clock = StageClock(injected_offset_ns=clock_offset_ns)
        self.log = logging.getLogger(f"node.{config.name}")
        self.tick_interval_s = 0.1
        self.dispatch_interval_s = 0.0
        self.counters: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}
        self._stop = False
        self._in_setup = False
        self._latencies_ns: list[int] = []
        self._published_in_window = 0
        self._window_start_mono_ns = time.monotonic_ns()
        self._last_fps = 0.0
        self._recv_mono_ns: int | None = None
        # monotonic ns when the loop last came out of a wait for input: what it takes after that may have
        # queued behind its own work (`busy_ns`); None outside the loop (a node driven in-process)
        self._awake_since_ns: int | None = None
        self._publisher: Publisher | None = None
        self._subscriber: Subscriber | None = None
        self._authenticator = None
        self._clock_threads: list[ClockThread] = []

    # ------------------------------------------------------------ hooks

    def input_topics(self) -> tuple[str, ...]:
        """Topic prefixes to subscribe to on every input (default `INPUT_TOPICS`)."""
        return self.INPUT_TOPICS

    def setup(self) -> None:
        """Called once, sockets ready, before the loop (may publish state)."""

    def on_message(self, topic: str, msg) -> None:
        """Called for every decoded input message (heartbeats excluded)."""

    def on_tick(self, now_ns: int) -> None:
        """Called every `tick_interval_s` with stage time."""

    def on_peer(self, peer: str, alive: bool) -> None:
        """Called when an upstream node goes silent (alive=False) or is heard again."""

    def teardown(self) -> None:
        """Called once after the loop; last chance to publish (outputs are flushed after)."""

    def queue_depth(self) -> int:
        """Messages waiting inside this node; override when the node buffers (default: input backlog)."""
        return self._subscriber.queue_depth() if self._subscriber else 0

    # ------------------------------------------------------------ for subclasses

    def busy_ns(self) -> int:
        """How long the loop has been busy since it last waited for input, ns: an input taken now may have
        queued that long behind the node's own work (its arrival time is then not the network's); 0 when
        the node is driven in-process, not by its loop."""
        return 0 if self._awake_since_ns is None else time.monotonic_ns() - self._awake_since_ns

    @property
    def endpoint(self) -> str | None:
        """The endpoint actually bound (port 0 resolved), once `run()` has opened the sockets."""
        return self._publisher.endpoint if self._publisher is not None else None

    def publish(self, msg) -> bool:
        """Publish a data message (sets t_send_ns); inside `on_message` also records latency."""
        ok = self._publisher.publish(msg)
        self._published_in_window += 1
        if self._recv_mono_ns is not None:
            self.observe_latency_ns(time.monotonic_ns() - self._recv_mono_ns)
        return ok

    def publish_state(self, msg) -> bool:
        """Publish last-value state (e.g. `calib`): re-sent to late joiners and periodically."""
        return self._publisher.publish_state(msg)

    def count(self, name: str, n: int = 1) -> None:
        """Add to a cumulative counter reported in stats."""
        self.counters[name] += n

    def gauge(self, name: str, value: float) -> None:
        """Set a gauge reported in stats."""
        self.gauges[name] = float(value)

    def observe_latency_ns(self, latency_ns: int) -> None:
        """Record one input->output latency sample (ns) for the stats percentiles."""
        if len(self._latencies_ns) < _LATENCY_WINDOW:
            self._latencies_ns.append(latency_ns)

    def stop(self) -> None:
        """Ask the loop to end (as a signal would)."""
        self._stop = True

    # ------------------------------------------------------------ runtime

    def run(self) -> int:
        """Run the whole lifecycle; returns the process exit code (0 after a graceful stop, 1 after a
        crash, 2 when the sockets cannot be set up: endpoint in use or invalid, CURVE keys unusable)."""
        cfg = self.config
        context = zmq.Context.instance()
        try:
            authenticator, clock_server, clock_client = self._open_sockets(context)
        except (zmq.ZMQError, ValueError) as exc:
            self.log.error("cannot set up sockets (bind %s, inputs %s): %s", cfg.bind,
                           ",".join(i.endpoint for i in cfg.inputs) or "-", exc)
            if self._subscriber is not None:
                self._subscriber.close()
            if self._publisher is not None:
                self._publisher.close()
            if self._authenticator is not None:
                self._authenticator.stop()
            return 2
        in_main_thread = threading.current_thread() is threading.main_thread()  # signals only work there
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
        exit_code = 0
        try:
            self._in_setup = True  # from here a signal abandons the setup (no window before setup starts)
            try:
                self.log.info("start pid=%d bind=%s inputs=%s", os.getpid(), self._publisher.endpoint,
                              ",".join(f"{i.name}={i.endpoint}" for i in cfg.inputs) or "-")
                if self._stop:  # a signal that came before the handler could raise
                    raise _StoppedDuringSetup
                self.setup()
            finally:
                self._in_setup = False
            if not self._stop:
                self._loop(clock_server, clock_client)
            self.teardown()
        except _StoppedDuringSetup:
            self.log.info("stopped during setup")
        except Exception:
            self.log.exception("crashed")
            exit_code = 1
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            try:
                self._publish_stats(time.monotonic_ns())
            except Exception:
                self.log.exception("final stats not sent")
            self._subscriber.close()
            self._publisher.close(flush_ms=FLUSH_MS)
            for thread in self._clock_threads:
                thread.stop()
            for extra in (clock_server, clock_client):
                if extra is not None:
                    extra.close()
            if authenticator is not None:
                authenticator.stop()
            self.log.info("stop exit=%d", exit_code)
        return exit_code

    def _open_sockets(self, context: zmq.Context):
        cfg = self.config
        keypair = server_keys = None
        if cfg.keys_dir:
            keys = Path(cfg.keys_dir)
            keypair = load_keypair(keys / f"{cfg.name}.key_secret")
            server_keys = {i.name: load_public_key(keys / f"{i.name}.key") for i in cfg.inputs}
            self._authenticator = start_authenticator(context, keys)
        self._publisher = Publisher(
            cfg.bind, name=cfg.name, context=context, hwm=cfg.hwm, clock=self.clock, curve=keypair,
            heartbeat_interval_s=cfg.heartbeat_interval_s,
        )
        self._subscriber = Subscriber(
            {i.name: i.endpoint for i in cfg.inputs}, self.input_topics(), context=context, hwm=cfg.hwm,
            curve=keypair, server_keys=server_keys, heartbeat_interval_s=cfg.heartbeat_interval_s,
        )
        clock_server = ClockServer(cfg.clock_serve, self.clock, context=context) if cfg.clock_serve else None
        clock_client = ClockClient(cfg.clock_connect, self.clock, context=context) if cfg.clock_connect else None
        self._clock_client = clock_client
        self._clock_threads = [ClockThread(e) for e in (clock_server, clock_client) if e is not None]
        for thread in self._clock_threads:  # probes served off the node's loop (see ClockThread)
            thread.start()
        return self._authenticator, clock_server, clock_client

    def _on_signal(self, signum, frame) -> None:
        self.log.info("signal %s: stopping", signal.Signals(signum).name)
        self._stop = True
        if self._in_setup:  # a slow setup (model loading) must not delay the stop: abandon it
            raise _StoppedDuringSetup

    def _loop(self, clock_server, clock_client) -> None:
        cfg = self.config
        sub, pub = self._subscriber, self._publisher
        dispatch_ns = int(self.dispatch_interval_s * 1e9)
        poller = zmq.Poller()  # what wakes the loop: inputs only when they are taken as they arrive
        for sock in (pub.socket, *(sub.sockets if dispatch_ns <= 0 else ())):
            poller.register(sock, zmq.POLLIN)
        start = time.monotonic_ns()
        end = start + int(cfg.seconds * 1e9) if cfg.seconds is not None else None
        next_tick = next_dispatch = next_housekeeping = start
        housekeeping_ns = HOUSEKEEPING_MS * 1_000_000
        stats_ns = int(cfg.stats_interval_s * 1e9)
        next_stats = start + stats_ns
        self._window_start_mono_ns = self._awake_since_ns = start
        self._published_in_window = 0
        while not self._stop:
            now = time.monotonic_ns()
            wake = next_tick if dispatch_ns <= 0 else min(next_tick, next_dispatch)
            wait_ms = min(MAX_POLL_MS, max(0, -(-(wake - now) // 1_000_000)))
            subscribed = any(sock is pub.socket for sock, _ in poller.poll(wait_ms))
            polled = time.monotonic_ns()
            if polled - now >= _WAITED_NS:  # it waited: input taken from here on did not queue behind its work
                self._awake_since_ns = polled
            now = polled
            if now >= next_dispatch:
                self._dispatch(sub)
                if dispatch_ns > 0:
                    late = now - next_dispatch >= dispatch_ns
                    next_dispatch = now + dispatch_ns if late else next_dispatch + dispatch_ns
            now = time.monotonic_ns()
            if now >= next_tick:
                try:
                    self.on_tick(self.clock.now_ns())
                except Exception:
                    self._handler_error("on_tick")
                tick_ns = int(self.tick_interval_s * 1e9)
                next_tick = next_tick + tick_ns if now - next_tick < tick_ns else now + tick_ns
            if subscribed or now >= next_housekeeping:  # not on every input: costs per wake-up add up
                next_housekeeping = now + housekeeping_ns
                pub.service(now)
                for peer, alive in sub.check_liveness(now):
                    self.count("peer_revived" if alive else "peer_dead")
                    if alive:
                        self.log.info("input %s alive", peer)
                    elif sub.liveness.last_seen_ns[peer] is None:
                        self.log.warning("input %s never heard (is it running? endpoint %s)", peer, sub.peers[peer])
                    else:
                        self.log.warning("input %s DEAD (no heartbeat)", peer)
                    self.on_peer(peer, alive)
            if now >= next_stats:
                self._publish_stats(now)
                next_stats = now + stats_ns
            if end is not None and now >= end:
                self.log.info("ran %.1f s: stopping", cfg.seconds)
                break

    def _dispatch(self, sub: Subscriber) -> None:
        if self.config.latest:
            items = list(sub.drain_latest().items())
        else:
            items = []
            got = sub.recv(0)
            while got is not None:  # what the sockets held when polled; no second poll only to find them empty
                items.append(got)
                if len(items) >= _MAX_BATCH or not sub.queue_depth():
                    break
                got = sub.recv(0)
        for topic, msg in items:
            self._recv_mono_ns = time.monotonic_ns()
            try:
                self.on_message(topic, msg)
            except Exception:
                self._handler_error("on_message", topic)
            finally:
                self._recv_mono_ns = None

    def _handler_error(self, hook: str, topic: str = "") -> None:
        """A hook raised: count it, log the first and every 100th traceback, carry on."""
        self.counters[f"errors/{hook}"] += 1
        n = self.counters[f"errors/{hook}"]
        if n == 1 or n % 100 == 0:
            self.log.exception("%s failed (%d so far)%s", hook, n, f" on {topic}" if topic else "")

    def _publish_stats(self, now_mono: int) -> None:
        """Publish `stats/<node>` for the window since the previous stats (fps over it, see `window_rate`)."""
        sub, pub = self._subscriber, self._publisher
        self._last_fps = window_rate(self._published_in_window, (now_mono - self._window_start_mono_ns) / 1e9,
                                     fallback=self._last_fps)
        if self._latencies_ns:
            latency_ms = np.percentile(np.asarray(self._latencies_ns, np.float64), [50, 95, 99]) / 1e6
        else:
            latency_ms = np.full(3, np.nan)
        counters = Counter(self.counters)
        counters["published"] = pub.sent
        counters["drops_out"] = pub.drops
        counters["invalid_out"] = pub.invalid
        counters["drops_in"] = sub.drops
        counters["received"] = sub.received
        counters["superseded"] = sub.superseded
        for reason, n in sub.rejects.items():
            counters[f"rejects/{reason}"] = n
        counters["rejects"] = sum(sub.rejects.values())
        gauges = dict(self.gauges)
        gauges["pid"] = os.getpid()
        gauges["inputs_alive"] = sub.liveness.n_alive()
        gauges["inputs"] = len(sub.peers)
        client = getattr(self, "_clock_client", None)
        if client is not None and client.rtt_ns is not None:
            gauges["clock_rtt_us"] = client.rtt_ns / 1e3
            gauges["clock_drift_ppm"] = self.clock.drift_ppm
        names = sorted(counters)[:_MAX_STAT_NAMES]  # the wire caps (protocol.NodeStats): never make stats unreadable
        gnames = sorted(gauges)[:_MAX_STAT_NAMES]
        if len(counters) > _MAX_STAT_NAMES or len(gauges) > _MAX_STAT_NAMES:
            self.log.warning("more than %d counters or gauges: stats keep the first %d", _MAX_STAT_NAMES, _MAX_STAT_NAMES)
        gauge_values = np.array([gauges[n] for n in gnames], np.float64)
        gauge_values[np.isinf(gauge_values)] = np.nan  # infinity is not allowed on the wire; NaN = no value
        stats = NodeStats(
            node=self.name,
            t_ns=self.clock.now_ns(),
            fps=self._last_fps,
            latency_ms=latency_ms.astype(np.float32),
            queue_depth=int(self.queue_depth()),
            clock_offset_ns=int(self.clock.correction_ns()),
            counter_names=[n[:_MAX_STAT_NAME_LEN] for n in names],
            counter_values=np.array([counters[n] for n in names], np.int64),
            gauge_names=[n[:_MAX_STAT_NAME_LEN] for n in gnames],
            gauge_values=gauge_values,
        )
        self._latencies_ns = []
        self._published_in_window = 0
        self._window_start_mono_ns = now_mono
        pub.publish(stats)


# ---------------------------------------------------------------- settings


def settings_schema(settings_cls: type) -> list[tuple[str, str, object, str]]:
    """`[(name, type name, default, help)]` of a frozen Settings dataclass (help: field metadata "help")."""
    hints = typing.get_type_hints(settings_cls)
    out = []
    for f in dataclasses.fields(settings_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return out


def _type_name(tp) -> str:
    if typing.get_args(tp) or not hasattr(tp, "__name__"):
        return str(tp).replace("typing.", "")
    return tp.__name__


def settings_from_dict(settings_cls: type, values: Mapping, where: str = "settings"):
    """Build a frozen Settings from plain (TOML/JSON) values; ValueError names `where.field` and what was expected.

    Lists become tuples for tuple fields; ints are accepted for float fields; nothing else is coerced.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a table of settings, got {type(values).__name__}")
    if not dataclasses.is_dataclass(settings_cls):
        if values:
            raise ValueError(f"{where}: this node kind takes no settings, got {sorted(values)}")
        return settings_cls()
    hints = typing.get_type_hints(settings_cls)
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: required setting(s) missing: {missing}")
    return settings_cls(**kwargs)


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(option, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            items = [_coerce(args[0], v, f"{where}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if type(value) is not bool:
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if type(value) is not int:
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if type(value) not in (int, float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is typing.Any or tp is object:
        return value
    raise ValueError(f"{where}: settings of type {_type_name(tp)} are not supported")


# ---------------------------------------------------------------- process entry


class _LogfmtFormatter(logging.Formatter):
    def __init__(self, node: str):
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        text = f"t={t} node={self.node} level={record.levelname} logger={record.name} msg={json.dumps(record.getMessage())}"
        if record.exc_info:
            text += " exc=" + json.dumps(self.formatException(record.exc_info))
        return text


def configure_logging(node: str, level: str = "INFO") -> None:
    """Structured (logfmt) log lines on stderr: `t=... node=... level=... logger=... msg="..."`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogfmtFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def node_arg_parser(kind: str) -> argparse.ArgumentParser:
    """The command line every node process takes (see the module docstring)."""
    p = argparse.ArgumentParser(prog=f"streamer node {kind}", description=f"run one {kind!r} node")
    p.add_argument("--name", default=kind, help="node name (topics stats/NAME, hb/NAME)")
    p.add_argument("--bind", default="tcp://127.0.0.1:0", help="output endpoint (XPUB), e.g. tcp://127.0.0.1:5551")
    p.add_argument("--input", action="append", default=[], metavar="NAME=ENDPOINT", help="an upstream node (repeat)")
    p.add_argument("--settings-json", default="{}", help="settings as a JSON object")
    p.add_argument("--latest", action="store_true", help="deliver only the newest message per topic")
    p.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="high-water mark per socket queue, messages")
    p.add_argument("--heartbeat-s", type=float, default=HEARTBEAT_INTERVAL_S, help="heartbeat interval, s")
    p.add_argument("--stats-s", type=float, default=1.0, help="stats interval, s")
    p.add_argument("--clock-serve", help="serve the stage clock (ROUTER) on this endpoint")
    p.add_argument("--clock-connect", help="estimate the offset to the stage clock served here")
    p.add_argument("--clock-offset-ns", type=int, default=0, help="inject an offset into this node's clock (tests)")
    p.add_argument("--keys-dir", help="CURVE key folder (NAME.key_secret per node, authorised *.key)")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--log-level", default="INFO")
    return p


def run_node(node_cls: type[Node], argv: list[str], kind: str | None = None) -> int:
    """Parse the node command line, build config and settings, run the node; returns the exit code."""
    kind = kind or node_cls.__module__.rsplit(".", 1)[-1]
    args = node_arg_parser(kind).parse_args(argv)
    configure_logging(args.name, args.log_level)
    try:
        inputs = []
        for item in args.input:
            name, sep, endpoint = item.partition("=")
            if not sep or not name or not endpoint:
                raise ValueError(f"--input {item!r}: expected NAME=ENDPOINT")
            inputs.append(Input(name, endpoint))
        try:
            raw = json.loads(args.settings_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--settings-json: not JSON ({exc})") from None
        settings = settings_from_dict(node_cls.Settings, raw, f"node {args.name!r} settings")
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    config = NodeConfig(
        name=args.name, bind=args.bind, inputs=tuple(inputs), latest=args.latest, hwm=args.hwm,
        heartbeat_interval_s=args.heartbeat_s, stats_interval_s=args.stats_s, clock_serve=args.clock_serve,
        clock_connect=args.clock_connect, keys_dir=args.keys_dir, seconds=args.seconds,
    )
    return node_cls(config, settings, clock_offset_ns=args.clock_offset_ns).run()
