"""Offline re-solve of a take: the sync and fitter nodes' own code, in-process, on virtual time.

The recorded inputs (`calib`, `kp2d/<cam>`) are fed in log-time order to an in-process sync node,
its `points3d` (and rig `calib`) straight to an in-process fitter node, as fast as possible. Time
inside both nodes is virtual: the clock reads the recorded receive time (`log_time`) of the message
being delivered, and frame-set deadlines fire at their virtual due times. So the nodes make the
decisions they made live, and the same take and settings always give identical poses.

The nodes read `time.monotonic_ns()` / `self.clock.now_ns()`; `virtual_time` swaps the `time`
module seen by a node module for one whose monotonic clock is virtual (wall-clock profiling via
`perf_counter_ns` stays real and affects only stats, never outputs).
"""
from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from protocol import topic_of
from streamer.node import NodeConfig, settings_from_dict
from streamer.recording import TakeReader, TakeWriter, read_take, take_segments

__all__ = ["OfflineResult", "VirtualClock", "progress_bar", "run_offline", "virtual_time"]

log = logging.getLogger(__name__)

INPUT_PREFIXES = ("calib", "kp2d/", "truth")


class VirtualClock:
    """A settable clock: `now_ns()` / `monotonic_ns()` return the time last `set`."""

    def __init__(self, t_ns: int = 0):
        self.t_ns = int(t_ns)

    def set(self, t_ns: int) -> None:
        self.t_ns = max(self.t_ns, int(t_ns))

    def now_ns(self) -> int:
        return self.t_ns

    def correction_ns(self) -> int:
        return 0


@contextlib.contextmanager
def virtual_time(modules: list[types.ModuleType], clock: VirtualClock) -> Iterator[None]:
    """Within the block, `time.monotonic_ns` / `time.monotonic` of `modules` read `clock`."""
    shim = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    shim.monotonic_ns = clock.now_ns
    shim.monotonic = lambda: clock.now_ns() / 1e9
    saved = [(m, m.time) for m in modules if getattr(m, "time", None) is time]
    for m, _ in saved:
        m.time = shim
    try:
        yield
    finally:
        for m, original in saved:
            m.time = original


class _InProcess:
    """A node instance driven by direct calls; what it publishes lands in `outbox`."""

    def __init__(self, module: types.ModuleType, cls_name: str, settings: dict, clock: VirtualClock):
        cls = getattr(module, cls_name)
        node_settings = settings_from_dict(cls.Settings, settings, f"offline {module.__name__} settings")
        self.node = cls(NodeConfig(name=module.__name__.rsplit(".", 1)[-1], bind="inproc://offline"), node_settings)
        self.node.clock = clock
        self.outbox: list[tuple[object, bool]] = []
        self.node.publish = lambda msg: self.outbox.append((msg, False)) or True
        self.node.publish_state = lambda msg: self.outbox.append((msg, True)) or True
        self.tick_ns = 0
        self.next_tick_ns = 0

    def setup(self) -> None:
        self.node.setup()
        self.tick_ns = max(1, int(self.node.tick_interval_s * 1e9))
        self.next_tick_ns = self.node.clock.now_ns()

    def advance(self, to_ns: int, clock: VirtualClock, after_tick: Callable[[int], None]) -> None:
        """Run the node's ticks that fall due up to `to_ns`, each at its own virtual time."""
        while self.next_tick_ns + self.tick_ns <= to_ns:
            self.next_tick_ns += self.tick_ns
            clock.set(self.next_tick_ns)
            self.node.on_tick(self.next_tick_ns)
            after_tick(self.next_tick_ns)

    def take(self) -> list[tuple[object, bool]]:
        out, self.outbox = self.outbox, []
        return out


@dataclass
class OfflineResult:
    """What `run_offline` did: message counts and the output take's segments."""

    inputs: int = 0
    points3d: int = 0
    poses: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    sync_counters: dict[str, int] = field(default_factory=dict)
    fitter_counters: dict[str, int] = field(default_factory=dict)


def run_offline(
    take: Path,
    out: Path,
    *,
    sync_settings: dict | None = None,
    fitter_settings: dict | None = None,
    fit: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> OfflineResult:
    """Re-solve `take` into a new take `out`: inputs copied, fresh `points3d` (and `pose` when `fit`).

    progress(done, total): called every few hundred input messages.
    """
    sync_mod = importlib.import_module("nodes.sync")
    fitter_mod = importlib.import_module("nodes.fitter") if fit else None
    clock = VirtualClock()
    modules = [m for m in (sync_mod, fitter_mod) if m is not None]
    total = sum(n for p in take_segments(take) for t, n in TakeReader(p).topics().items()
                if t.startswith(INPUT_PREFIXES))
    result = OfflineResult()
    rejected: collections.Counter = collections.Counter()
    with virtual_time(modules, clock), TakeWriter(out, metadata={"source": str(take), "offline": "true"}) as writer:
        messages = read_take(take, rejected=rejected)
        first = next(messages, None)
        if first is None:
            raise ValueError(f"{take}: no messages")
        clock.set(first[0])
        sync = _InProcess(sync_mod, "Sync", sync_settings or {}, clock)
        sync.setup()
        fitter = None
        if fitter_mod is not None:
            fitter = _InProcess(fitter_mod, "Fitter", fitter_settings or {}, clock)
            fitter.setup()

        def route(now_ns: int) -> None:
            for msg, _ in sync.take():
                writer.write(msg, now_ns)
                if msg.KIND == "points3d":
                    result.points3d += 1
                if fitter is not None:
                    fitter.node.on_message(topic_of(msg), msg)
            if fitter is not None:
                for msg, _ in fitter.take():
                    writer.write(msg, now_ns)
                    if msg.KIND == "pose":
                        result.poses += 1

        item = first
        while item is not None:
            log_ns, topic, msg = item
            if topic.startswith(INPUT_PREFIXES):
                sync.advance(log_ns, clock, route)
                if fitter is not None:
                    fitter.advance(log_ns, clock, route)
                clock.set(log_ns)
                writer.write(msg, log_ns)
                if topic != "truth":
                    sync.node.on_message(topic, msg)
                    route(log_ns)
                result.inputs += 1
                if progress is not None and result.inputs % 200 == 0:
                    progress(result.inputs, total)
            item = next(messages, None)
        sync.node.teardown()
        route(clock.now_ns())
        if fitter is not None:
            fitter.node.teardown()
            route(clock.now_ns())
        if progress is not None:
            progress(result.inputs, total)
        result.sync_counters = dict(sync.node.counters)
        if fitter is not None:
            result.fitter_counters = dict(fitter.node.counters)
    result.rejected = dict(rejected)
    return result


def progress_bar(done: int, total: int, *, width: int = 40, stream=None) -> None:
    """Draw `[#####.....]  45%  1234/2700 messages` on one terminal line (stderr by default)."""
    stream = stream or sys.stderr
    frac = done / total if total else 1.0
    filled = int(round(frac * width))
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}%  {done}/{total} messages")
    if done >= total:
        stream.write("\n")
    stream.flush()
