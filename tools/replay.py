"""`streamer replay TAKE.mcap`: replay a recorded take.

Live (default): publish the take on the data plane (`--bind`) with its original timing, scaled by
`--rate`, from `--seek` seconds in, optionally `--loop`ing; downstream nodes connect to it as to
any upstream node (the `replay` node kind, see nodes/replay.py). Stops at the end with `--exit-at-end`.

Offline (`--offline OUT.mcap`): run the sync and fitter nodes' own code in-process on the take's
inputs, as fast as possible with a progress bar, and write a new take with the inputs and the fresh
`points3d` / `pose` (tools/offline.py). `--sync-settings` / `--fitter-settings` take JSON objects of
those nodes' settings. Deterministic: the same take and settings give identical poses.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("take", type=Path, help="take file (.mcap)")
    live = parser.add_argument_group("live replay")
    live.add_argument("--bind", default="tcp://127.0.0.1:5590", help="endpoint the replay publishes on")
    live.add_argument("--name", default="replay", help="node name")
    live.add_argument("--rate", type=float, default=1.0, help="speed factor (2 = twice as fast)")
    live.add_argument("--seek", type=float, default=0.0, help="start this many seconds into the take")
    live.add_argument("--loop", action="store_true", help="start over at the end")
    live.add_argument("--topics", nargs="+", default=[""], help="topic prefixes to replay (default: all)")
    live.add_argument("--exit-at-end", action="store_true", help="stop after the last message")
    live.add_argument("--start-delay", type=float, default=1.0, help="seconds to wait for subscribers first")
    offline = parser.add_argument_group("offline re-solve")
    offline.add_argument("--offline", type=Path, metavar="OUT.mcap", help="re-run sync and fit into this new take")
    offline.add_argument("--sync-settings", default="{}", help="JSON settings of the sync node")
    offline.add_argument("--fitter-settings", default="{}", help="JSON settings of the fitter node")
    offline.add_argument("--no-fit", action="store_true", help="offline: sync and triangulate only")
    offline.add_argument("--quiet", action="store_true", help="offline: no progress bar")
    args = parser.parse_args(argv)
    if not args.take.is_file():
        print(f"streamer replay: {args.take}: no such file", file=sys.stderr)
        return 1
    if args.offline is not None:
        return _offline(args)
    from nodes.replay import main as replay_node_main

    settings = {"path": str(args.take), "rate": args.rate, "start_s": args.seek, "loop": args.loop,
                "topics": list(args.topics), "exit_at_end": args.exit_at_end, "start_delay_s": args.start_delay}
    return replay_node_main(["--name", args.name, "--bind", args.bind, "--settings-json", json.dumps(settings)])


def _offline(args) -> int:
    from streamer.recording import TakeError
    from tools.offline import progress_bar, run_offline

    try:
        sync_settings = json.loads(args.sync_settings)
        fitter_settings = json.loads(args.fitter_settings)
    except json.JSONDecodeError as exc:
        print(f"streamer replay: settings are not JSON: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        result = run_offline(args.take, args.offline, sync_settings=sync_settings, fitter_settings=fitter_settings,
                             fit=not args.no_fit, progress=None if args.quiet else progress_bar)
    except (TakeError, ValueError) as exc:
        print(f"streamer replay: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"{args.offline}: {result.inputs} inputs -> {result.points3d} points3d, {result.poses} poses "
          f"in {elapsed:.1f} s ({result.points3d / max(elapsed, 1e-9):.0f} frame sets/s)"
          + (f"; skipped bad records {result.rejected}" if result.rejected else ""))
    return 0
