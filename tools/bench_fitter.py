"""`streamer bench fitter`: the fitter node's own CPU per pose and its start-up, on a recorded take.

Runs the sync and fitter nodes in-process on TAKE (`tools.offline.run_offline`, e.g. a take from
`streamer synth TAKE --seconds 10 --cameras 4 --fps 30`) and times, in this thread's CPU time, every
`Fitter.on_message` call that publishes a pose (target selection, the fit, `pose_message`), its
`pose_message` part alone, and the node's `setup` (body model, tracking context). With one torch thread, CPU time is the latency of an
unloaded core; other processes' load does not count. The process's CPU time over the same calls
(`process_cpu_*`) also counts helper threads (a BLAS pool the node did not ask for would show here).

`--json` prints one object; stable keys: poses, cpu_p50_ms, cpu_p99_ms, cpu_mean_ms, pose_message_p50_ms, setup_s;
also process_cpu_p50_ms, process_cpu_p99_ms.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench fitter", description=__doc__.splitlines()[0])
    parser.add_argument("take", type=Path, help="recorded take with kp2d/calib (e.g. from `streamer synth`)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from nodes import fitter
    from tools.offline import run_offline

    per_pose_ms: list[float] = []
    process_ms: list[float] = []
    pose_ms: list[float] = []
    setup_s: list[float] = []
    on_message, setup, pose_message = fitter.Fitter.on_message, fitter.Fitter.setup, fitter.pose_message

    def timed_pose_message(*a, **k):
        t0 = time.thread_time()
        pose = pose_message(*a, **k)
        pose_ms.append((time.thread_time() - t0) * 1000)
        return pose

    def timed_on_message(self, topic, msg):
        before, t0, p0 = self.counters.get("published", 0), time.thread_time(), time.process_time()
        on_message(self, topic, msg)
        if self.counters.get("published", 0) > before:
            per_pose_ms.append((time.thread_time() - t0) * 1000)
            process_ms.append((time.process_time() - p0) * 1000)

    def timed_setup(self):
        t0 = time.perf_counter()
        setup(self)
        setup_s.append(time.perf_counter() - t0)

    fitter.Fitter.on_message, fitter.Fitter.setup, fitter.pose_message = timed_on_message, timed_setup, timed_pose_message
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_offline(args.take, Path(tmp) / "out.mcap")
    finally:
        fitter.Fitter.on_message, fitter.Fitter.setup, fitter.pose_message = on_message, setup, pose_message
    ms = np.asarray(per_pose_ms)
    out = {"poses": int(ms.size), "cpu_p50_ms": float(np.percentile(ms, 50)),
           "cpu_p99_ms": float(np.percentile(ms, 99)), "cpu_mean_ms": float(ms.mean()),
           "pose_message_p50_ms": float(np.median(pose_ms)), "setup_s": setup_s[0],
           "process_cpu_p50_ms": float(np.percentile(process_ms, 50)),
           "process_cpu_p99_ms": float(np.percentile(process_ms, 99))}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"fitter node on {args.take}: {out['poses']} poses, CPU per pose p50 {out['cpu_p50_ms']:.2f} ms, "
              f"p99 {out['cpu_p99_ms']:.2f} ms, mean {out['cpu_mean_ms']:.2f} ms (pose_message p50 "
              f"{out['pose_message_p50_ms']:.2f} ms); process CPU (all threads) p50 {out['process_cpu_p50_ms']:.2f}, "
              f"p99 {out['process_cpu_p99_ms']:.2f} ms; setup {out['setup_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
