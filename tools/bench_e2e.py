"""`streamer bench e2e`: end-to-end latency (capture publish -> pose publish) of the live demo graph.

For each configuration (4 and 8 cameras x 30 and 60 fps) the demo graph (`launch/demo.toml`:
synthetic stage, capture nodes, sync, fitter, recorder, monitor, avatar; all real processes and
sockets) runs for `--seconds` after poses flow; the recorded take gives the latency of every pose
(`streamer.take_summary`: pose.t_send_ns - newest source kp2d.t_send_ns), the drop ledger and the
queue depths over time (sustained = no queue growth and zero unaccounted drops). CPU time per node
is reported as cores used, which stays meaningful on a machine loaded by other work.

    streamer bench e2e                       # 60 s per configuration
    streamer bench e2e --seconds 20 --json
    streamer bench e2e --configs 8x60 --seconds 60

JSON keys (stable): p50_ms_<N>cam_<F>fps, p99_ms_<N>cam_<F>fps, pose_fps_<N>cam_<F>fps,
cpu_cores_<N>cam_<F>fps, mpjpe_mm_<N>cam_<F>fps, unaccounted_drops (sum over configurations; null
when not computable), sustained_8cam_60fps, configs (full summaries), load_avg_start / load_avg_end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path

import tomli_w

from tools.demo import DEMO_GRAPH, TAKE_NAME, adjust_graph, run_graph_and_summarize, warm_stage_cache

__all__ = ["main", "sustained"]

DEFAULT_CONFIGS = ("4x30", "4x60", "8x30", "8x60")
_MAX_QUEUE_GROWTH = 5.0  # mean queue depth of the last third minus the first third, messages


def sustained(summary: dict, camera_fps: float) -> bool:
    """Every camera stream and the poses at >= 90 % of the camera rate, zero unaccounted drops, no
    node's queue growing."""
    rates = [v for k, v in summary["fps"].items() if k.startswith("kp2d/")] + [summary["fps"].get("pose") or 0.0]
    return (len(rates) > 1 and min(rates) >= 0.9 * camera_fps and summary["unaccounted_drops"] == 0
            and all(q["growth"] <= _MAX_QUEUE_GROWTH for q in summary["queues"].values()))


def _parse_config(text: str) -> tuple[int, float]:
    cameras, _, fps = text.partition("x")
    try:
        return int(cameras), float(fps)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CAMERASxFPS like 8x60, got {text!r}") from None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench e2e", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per configuration (default 60)")
    parser.add_argument("--configs", nargs="+", type=_parse_config, default=[_parse_config(c) for c in DEFAULT_CONFIGS],
                        help="CAMERASxFPS configurations (default: 4x30 4x60 8x30 8x60)")
    parser.add_argument("--out", type=Path, help="folder for the takes (default takes/bench-e2e-<UTC time>)")
    parser.add_argument("--base-port", type=int, default=6850)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    out = (args.out or Path("takes") / f"bench-e2e-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}").resolve()
    template = tomllib.loads(DEMO_GRAPH.read_text())
    result: dict = {"seconds": args.seconds, "load_avg_start": list(os.getloadavg()), "configs": {}}
    unaccounted: int | None = 0
    rows = []
    for cameras, fps in args.configs:
        key = f"{cameras}cam_{fps:g}fps"
        folder = out / key
        folder.mkdir(parents=True, exist_ok=True)
        doc = adjust_graph(template, cameras=cameras, fps=fps, base_port=args.base_port,
                           take_path=str(folder / TAKE_NAME))
        warm_stage_cache(doc)
        (folder / "demo.toml").write_text(tomli_w.dumps(doc))
        if not args.json:
            print(f"{key}: running {args.seconds:g} s ...", file=sys.stderr)
        summary = run_graph_and_summarize(folder / "demo.toml", args.seconds, quiet=True)
        result["configs"][key] = summary
        result[f"p50_ms_{key}"] = summary["e2e_p50_ms"]
        result[f"p99_ms_{key}"] = summary["e2e_p99_ms"]
        result[f"pose_fps_{key}"] = summary["fps"].get("pose")
        result[f"cpu_cores_{key}"] = summary["cpu_cores"]["total"]
        result[f"mpjpe_mm_{key}"] = summary["mpjpe_mm"]
        result[f"sustained_{key}"] = sustained(summary, fps)
        if unaccounted is not None:
            unaccounted = None if summary["unaccounted_drops"] is None else unaccounted + summary["unaccounted_drops"]
        rows.append((key, summary))
    result["unaccounted_drops"] = unaccounted
    result["load_avg_end"] = list(os.getloadavg())
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'config':<13} {'e2e p50':>8} {'e2e p99':>8} {'sync p99':>8} {'fit p99':>8} {'pose/s':>7} "
          f"{'fitter cores':>12} {'all cores':>9} {'MPJPE':>7} {'unacc.':>6} {'queue growth':>12} {'sustained':>9}")
    for key, s in rows:
        growth = max((q["growth"] for q in s["queues"].values()), default=0.0)
        print(f"{key:<13} {s['e2e_p50_ms']!s:>8} {s['e2e_p99_ms']!s:>8} {s['hop_latency_ms']['sync']['p99_ms']!s:>8} "
              f"{s['hop_latency_ms']['fitter']['p99_ms']!s:>8} {s['fps'].get('pose')!s:>7} "
              f"{s['cpu_cores'].get('fitter')!s:>12} {s['cpu_cores']['total']!s:>9} {s['mpjpe_mm']!s:>7} "
              f"{s['unaccounted_drops']!s:>6} {growth:>12} {result['sustained_' + key]!s:>9}")
    print(f"ms; latency = pose publish - newest source kp2d publish; load average {result['load_avg_start'][0]:.1f} "
          f"-> {result['load_avg_end'][0]:.1f} on {os.cpu_count()} cores; takes in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
