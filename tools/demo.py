"""`streamer demo`: the synthetic stage end to end, measured against its ground truth.

Runs `launch/demo.toml` (synthetic stage seen by N capture nodes, truth, sync, fitter, recorder,
monitor, avatar sender) adjusted for `--cameras` and `--fps`, written with the take into a fresh
folder; waits until poses flow (showing which nodes are up), measures for `--seconds`, stops every
node cleanly (upstream first), then summarises the recorded take (`streamer.take_summary`): MPJPE
against ground truth, jitter, capture-publish -> pose-publish latency, per-node latency, rates and
the drop ledger. `--json` prints the summary as one JSON object (stable keys: mpjpe_mm, e2e_p50_ms,
e2e_p99_ms, unaccounted_drops, jitter_mm, fps, drops, take).

    streamer demo                      # 4 cameras x 30 fps, 20 s
    streamer demo --cameras 8 --seconds 60 --json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import tomli_w

from streamer.launch import Supervisor, load_graph
from streamer.take_summary import load_take, summarize
from streamer.transport import Subscriber

__all__ = ["LoggingSupervisor", "adjust_graph", "main", "run_graph_and_summarize", "warm_stage_cache"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEMO_GRAPH = REPO / "launch" / "demo.toml"
TAKE_NAME = "demo.mcap"
_CONSUMERS_OF_CAPTURE = ("recorder", "monitor")
_OUTPUT = {"sync": "points3d", "fitter": "pose", **{f"cam{i}": f"kp2d/cam{i}" for i in range(64)}}


def adjust_graph(doc: dict, *, cameras: int, fps: float, base_port: int | None = None,
                 take_path: str = TAKE_NAME) -> dict:
    """The demo graph for `cameras` capture nodes cam0..cam{N-1} at `fps` (a new dict).

    The template's first capture node is the model for every camera; every synth_* setting, the
    sync's camera list and the inputs of the sync, recorder and monitor follow; the recorder writes
    `take_path` (give an absolute path: the recorder resolves it against its working folder)."""
    if not 1 <= cameras <= 64:
        raise ValueError(f"cameras must be in 1..64, got {cameras}")
    nodes = {name: dict(spec) for name, spec in doc["nodes"].items()}
    captures = [n for n, spec in nodes.items() if spec.get("kind") == "capture"]
    if not captures:
        raise ValueError("demo graph: no capture node to copy")
    model = nodes[captures[0]]
    for name in captures:
        del nodes[name]
    names = [f"cam{i}" for i in range(cameras)]
    out_nodes: dict = {}
    for name in names:
        spec = dict(model)
        spec["settings"] = dict(model.get("settings", {}), cameras=[name], synth_cameras=cameras, synth_fps=fps)
        out_nodes[name] = spec
    for name, spec in nodes.items():
        spec = dict(spec)
        settings = dict(spec.get("settings", {}))
        if "synth_cameras" in settings:
            settings |= {"synth_cameras": cameras, "synth_fps": fps}
        if spec.get("kind") == "sync":  # waits scale with the frame period (the template's: 1 and 4 periods)
            settings |= {"cameras": names, "fps": fps, "deadline_ms": round(1000 / fps, 1),
                         "buffer_ms": round(4000 / fps, 1)}
            spec["inputs"] = names
        elif spec.get("kind") in _CONSUMERS_OF_CAPTURE:
            spec["inputs"] = names + [i for i in spec.get("inputs", []) if i not in captures]
        if spec.get("kind") == "recorder":
            settings["path"] = take_path
        if settings:
            spec["settings"] = settings
        out_nodes[name] = spec
    graph = dict(doc["graph"])
    if base_port is not None:
        graph["base_port"] = base_port
        graph["clock_port"] = base_port - 1
    return {**{k: v for k, v in doc.items() if k not in ("graph", "nodes")}, "graph": graph, "nodes": out_nodes}


def warm_stage_cache(doc: dict) -> None:
    """Fill the on-disk caches here, once, so that no node stalls on them while frames flow: the
    synthetic animation (computed by the first process otherwise) and the compiled kernels (numba's
    cache) of the stage's observation model, the triangulation and the avatar's retargeting (compiled
    by every capture node, the sync and the avatar at once otherwise)."""
    import numpy as np

    from nodes.capture import Settings, build_synthetic_stage
    from streamer.humanoid import retarget, tpose_keypoints
    from streamer.triangulation import triangulate_robust

    retarget(tpose_keypoints())

    spec = next(s for s in doc["nodes"].values() if s.get("kind") == "capture")
    fields = {k: v for k, v in spec.get("settings", {}).items() if k.startswith("synth_")}
    stage = build_synthetic_stage(Settings(**fields))
    pixels = np.full((len(stage.camera_names), 70, 2), np.nan)
    confidence = np.zeros((len(stage.camera_names), 70))
    for v, camera in enumerate(stage.camera_names):
        msg = stage.observe(0, camera)
        if msg is not None and msg.persons:
            pixels[v], confidence[v] = msg.persons[0].keypoints, msg.persons[0].confidence
    triangulate_robust(pixels, confidence, stage.rig)


class LoggingSupervisor(Supervisor):
    """A Supervisor whose node processes log into `<log_dir>/<node>.log` instead of the terminal."""

    def __init__(self, graph, log_dir: Path, host: str | None = None):
        super().__init__(graph, host)
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, proc) -> None:
        with open(self.log_dir / f"{proc.spec.name}.log", "ab") as out:
            proc.popen = subprocess.Popen(proc.cmd, env=self._env, start_new_session=True, stdout=out,
                                          stderr=subprocess.STDOUT)
        proc.started_mono = time.monotonic()


def _cpu_seconds(pids: dict[str, int | None]) -> dict[str, float]:
    """CPU time (user + system, s) used so far by each running node process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


class _Progress:
    """One status line on stderr: rewritten in place on a terminal, else printed when it changes."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = ""
        self.last_print = 0.0

    def __call__(self, text: str, *, key: str | None = None) -> None:
        key = text if key is None else key
        if self.quiet or key == self.last or (self.tty and time.monotonic() - self.last_print < 0.2 and text):
            return
        self.last, self.last_print = key, time.monotonic()
        if self.tty:
            print(f"\r\033[K{text}", end="" if text else "", file=sys.stderr, flush=True)
        elif text:
            print(text, file=sys.stderr, flush=True)


def run_graph_and_summarize(graph_path: Path, seconds: float, *, startup_timeout_s: float = 120.0,
                            warmup_s: float = 3.0, quiet: bool = False, sync_node: str = "sync") -> dict:
    """Run a graph file until poses flow, measure `seconds`, stop it, summarise its recorder's take.

    The measurement window starts `warmup_s` after the first received pose's stage time (the fitter
    settles the subject's shape over its first good frames). Raises RuntimeError when
    no pose arrives within `startup_timeout_s` (the node logs are in `<graph dir>/logs/`)."""
    graph = load_graph(graph_path)
    recorder = next(s for s in graph.nodes.values() if s.kind == "recorder")
    take_path = Path(recorder.settings["path"])
    supervisor = LoggingSupervisor(graph, graph_path.parent / "logs")
    subscriber = Subscriber({n: s.connect for n, s in graph.nodes.items()}, ("stats/", "pose"))
    window: tuple[int, int] | None = None
    progress = _Progress(quiet)
    up: set[str] = set()
    started = time.monotonic()
    try:
        supervisor.start()
        deadline = started + startup_timeout_s
        while window is None:
            supervisor.poll()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no pose within {startup_timeout_s:.0f} s; nodes up: {sorted(up)}; "
                                   f"logs in {supervisor.log_dir}")
            got = subscriber.recv(100)
            if got is None:
                continue
            topic, msg = got
            if topic.startswith("stats/"):
                up.add(msg.node)
                waiting = sorted(set(graph.nodes) - up)
                status = f"{len(up)}/{len(graph.nodes)} nodes up" + (
                    f", waiting for {', '.join(waiting)}" if waiting else ", waiting for poses")
                progress(f"starting ({time.monotonic() - started:4.1f} s): {status}", key=status)
            elif topic == "pose":
                start_ns = msg.t_ns + int(warmup_s * 1e9)
                window = (start_ns, start_ns + int(seconds * 1e9))
        measure_start = time.monotonic()
        cpu_start = _cpu_seconds(supervisor.pids())
        while True:
            supervisor.poll()
            elapsed = time.monotonic() - measure_start
            settled = elapsed >= warmup_s
            progress(f"measuring: {elapsed - warmup_s:4.1f} / {seconds:.0f} s" if settled else
                     f"poses flow; settling for {warmup_s:g} s", key=f"{elapsed:.0f}" if progress.tty else str(settled))
            got = subscriber.recv(100)
            if got is not None and got[0] == "pose" and got[1].t_ns >= window[1]:
                break
            if elapsed > warmup_s + seconds + 10:  # poses stopped: end anyway, the summary shows it
                break
        cpu_end = _cpu_seconds(supervisor.pids())
        measured_s = time.monotonic() - measure_start
        progress("stopping...")
    finally:
        subscriber.close()
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:  # a second Ctrl-C must not orphan the nodes
            supervisor.stop()
        finally:
            for s, handler in ignored.items():
                signal.signal(s, handler)
        progress("")
    data = load_take(take_path)
    summary = summarize(data, window, sync_node=sync_node)
    summary["startup_s"] = round(measure_start - started, 1)
    cores = {n: round((cpu_end[n] - cpu_start[n]) / measured_s, 3) for n in cpu_end if n in cpu_start}
    summary["cpu_cores"] = cores | {"total": round(sum(cores.values()), 3)}  # CPU s per wall s while measuring
    summary["logs"] = str(supervisor.log_dir)
    summary["exit_codes"] = {n: p.last_rc for n, p in supervisor.procs.items()}
    return summary


def _format(summary: dict) -> str:
    def f(value, unit="") -> str:
        return "n/a" if value is None else f"{value}{unit}"

    lines = [f"take: {summary['take']}  (graph, logs: {Path(summary['logs']).parent})",
             f"measured {summary['window_s']} s after {summary['startup_s']} s of start-up",
             f"MPJPE (body points vs truth): {f(summary['mpjpe_mm'], ' mm')}  p95 {f(summary['mpjpe_p95_mm'], ' mm')}"
             f"  over {summary['mpjpe_poses']} poses; jitter {f(summary['jitter_mm'], ' mm/frame^2')}",
             f"e2e latency capture publish -> pose publish: p50 {f(summary['e2e_p50_ms'], ' ms')}  "
             f"p95 {f(summary['e2e_p95_ms'], ' ms')}  p99 {f(summary['e2e_p99_ms'], ' ms')}  "
             f"max {f(summary['e2e_max_ms'], ' ms')}  ({summary['e2e_samples']} poses)",
             "hops (p50/p99 ms): " + ", ".join(f"{hop} {f(v['p50_ms'])}/{f(v['p99_ms'])}"
                                               for hop, v in summary["hop_latency_ms"].items()),
             "", f"{'node':<10} {'fps':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'queue max':>9}"]
    for node, lat in summary["node_latency_ms"].items():
        queue = summary["queues"].get(node, {}).get("max", "")
        rate = summary["fps"].get(_OUTPUT.get(node, ""))
        lines.append(f"{node:<10} {f(rate):>7} {f(lat['p50']):>8} {f(lat['p95']):>8} "
                     f"{f(lat['p99']):>8} {queue:>9}")
    lines += ["(fps: the node's data output in the window, from the take; latency: the node's own stats)",
              "CPU while measuring (cores): " + ", ".join(f"{n} {v}" for n, v in summary["cpu_cores"].items()),
              "", "rates (/s): " + ", ".join(f"{k} {v}" for k, v in summary["fps"].items()),
              "verdicts: " + ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items()), "",
              f"{'camera':<7} {'published':>9} {'received':>8} {'used':>6} {'late':>5} {'evicted':>7} {'gaps':>5} "
              f"{'rejected':>8} {'unmatched':>9} {'stage drops':>11} {'behind':>6} {'unaccounted':>11}"]
    for cam, row in summary["drops"].items():
        lines.append(f"{cam:<7} {row.get('published', '?'):>9} {row.get('received', '?'):>8} {row.get('used', '?'):>6} "
                     f"{row.get('late', '?'):>5} {row.get('evicted', '?'):>7} {row.get('gaps', '?'):>5} "
                     f"{row.get('rejected', '?'):>8} {row.get('unmatched', '?'):>9} {row.get('stage_drops', '?'):>11} "
                     f"{row.get('grabber_drops', '?'):>6} {f(row['unaccounted']):>11}")
    lines.append(f"unaccounted drops: {f(summary['unaccounted_drops'])}  (definition: streamer/take_summary.py)")
    if summary["restarts"]:
        lines.append(f"restarts: {summary['restarts']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=4, help="capture nodes / virtual cameras, 4..8 (default 4)")
    parser.add_argument("--fps", type=float, default=30.0, help="camera frame rate, Hz (default 30)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time after poses flow (default 20)")
    parser.add_argument("--graph", type=Path, default=DEMO_GRAPH, help="template graph (default launch/demo.toml)")
    parser.add_argument("--out", type=Path, help="take folder (default takes/demo-<UTC time>)")
    parser.add_argument("--base-port", type=int, help="first TCP port of the graph (default: the template's)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds between the first pose and measuring")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the first pose")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = parser.parse_args(argv)
    if not 4 <= args.cameras <= 8:
        parser.error(f"--cameras must be in 4..8, got {args.cameras}")
    if args.seconds <= 0 or args.fps <= 0:
        parser.error("--seconds and --fps must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = (args.out or Path("takes") / f"demo-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}").resolve()
    try:
        doc = adjust_graph(tomllib.loads(args.graph.read_text()), cameras=args.cameras, fps=args.fps,
                           base_port=args.base_port, take_path=str(out / TAKE_NAME))
    except (OSError, tomllib.TOMLDecodeError, ValueError, KeyError) as exc:
        print(f"streamer demo: {args.graph}: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    graph_path = out / "demo.toml"
    graph_path.write_text(tomli_w.dumps(doc))
    if not args.json:
        print(f"streamer demo: {args.cameras} cameras x {args.fps:g} fps, {args.seconds:g} s; graph {graph_path}",
              file=sys.stderr)
        print("preparing the synthetic stage and compiled kernels (the first run computes them, ~20-60 s)...",
              file=sys.stderr)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the graph cleanly, as on Ctrl-C
    warm_stage_cache(doc)
    try:
        summary = run_graph_and_summarize(graph_path, args.seconds, startup_timeout_s=args.startup_timeout,
                                          warmup_s=args.warmup, quiet=args.json)
    except RuntimeError as exc:
        print(f"streamer demo: {exc}", file=sys.stderr)
        return 1
    summary |= {"cameras": args.cameras, "camera_fps": args.fps, "graph": str(graph_path)}
    print(json.dumps(summary) if args.json else _format(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
