"""`streamer bench fitter_start`: the fitter node's time to its first pose, and where the start-up goes.

1. Phases, in a fresh interpreter, in that process's CPU time (other processes' load does not count):
   import torch; import roma (roma >= 1.6 imports torch._dynamo at import: `dynamo_by_roma`); import the
   fitter node and the Anny body; `Fitter.setup` (body model, tracking context); the first (cold) fit.
2. The real node process (`streamer node fitter`) between real ZeroMQ sockets: from spawn to the first
   `pose` received, wall time and the node process's CPU time (psutil) at that moment, while points3d of the
   Anny rest pose are published every 33 ms from the start (so the figure is the node's own start-up).

`--json` prints one object; stable keys: first_pose_s, first_pose_cpu_s, import_torch_cpu_s, import_roma_cpu_s,
dynamo_by_roma, import_node_cpu_s, setup_cpu_s, first_fit_cpu_s, load_1min.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]

_PHASES = r"""
import json, sys, time
marks = {}
def mark(name, t0=[time.process_time()]):
    now = time.process_time(); marks[name] = now - t0[0]; t0[0] = now
import numpy as np, zmq, msgpack
mark("import_base_cpu_s")
import torch
mark("import_torch_cpu_s")
import roma
mark("import_roma_cpu_s")
marks["dynamo_by_roma"] = "torch._dynamo" in sys.modules
from nodes.fitter import Fitter, Settings
from streamer.body.anny_model import AnnyBody
from streamer.node import NodeConfig
mark("import_node_cpu_s")
node = Fitter(NodeConfig(name="fitter", bind="inproc://bench"), Settings())
node.setup()
mark("setup_cpu_s")
rest = node.model.keypoints(node.model.default_params(1))[0].detach().double().numpy()
points = np.where(node.context.defined[:, None], rest, np.nan) + np.array([0.2, -0.3, 0.0])
np.save(sys.argv[1], points)
from protocol.messages import Points3D
k = len(points); ok = np.isfinite(points).all(1)
msg = Points3D(t_ns=10**9, frame_index=0, person_id=0, calib_version="v", cameras=["a", "b"],
               sources_seq=np.zeros(2, np.int64), sync_spread_ns=0, points=points.astype(np.float32),
               n_views=np.where(ok, 2, 0).astype(np.uint8), inliers=np.repeat(ok[:, None], 2, 1),
               reproj_px=np.ones((k, 2), np.float32), confidence=ok.astype(np.float32), mean_reproj_px=1.0, usable=True)
out = []
node.publish = lambda m: out.append(m) or True
mark("_")
node.on_message("points3d", msg)
mark("first_fit_cpu_s")
assert out, "no pose"
del marks["_"]
print(json.dumps(marks))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _points3d(points: np.ndarray, k: int):
    from protocol.messages import Points3D

    ok = np.isfinite(points).all(1)
    return Points3D(t_ns=10**9 + int(k * 1e9 / 30), frame_index=k, person_id=0, calib_version="v", cameras=["a", "b"],
                    sources_seq=np.full(2, k, np.int64), sync_spread_ns=0, points=points.astype(np.float32),
                    n_views=np.where(ok, 2, 0).astype(np.uint8), inliers=np.repeat(ok[:, None], 2, 1),
                    reproj_px=np.ones((len(points), 2), np.float32), confidence=ok.astype(np.float32),
                    mean_reproj_px=1.0, usable=True)


def time_to_first_pose(points: np.ndarray, timeout_s: float = 120.0) -> tuple[float, float]:
    """(wall s, node CPU s) from spawning the fitter process to its first pose."""
    import psutil

    from protocol.messages import Pose
    from streamer.transport import Publisher, Subscriber

    up, down = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    publisher = Publisher(up, name="sync")
    sub = Subscriber({"fitter": down}, topics=("pose",))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "node", "fitter", "--name", "fitter", "--bind", down, "--input",
         f"sync={up}", "--seconds", str(int(timeout_s))],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watch = psutil.Process(proc.pid)
    try:
        k, next_send = 0, t0
        while time.perf_counter() - t0 < timeout_s:
            if time.perf_counter() >= next_send:
                publisher.publish(_points3d(points, k))
                k, next_send = k + 1, next_send + 1 / 30
            publisher.service()
            item = sub.recv(timeout_ms=2)
            if item is not None and isinstance(item[1], Pose):
                wall = time.perf_counter() - t0
                cpu = watch.cpu_times()
                return wall, cpu.user + cpu.system
        raise RuntimeError(f"no pose from the fitter within {timeout_s} s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sub.close()
        publisher.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench fitter_start", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="process start-ups to time (the median is reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        points_file = Path(tmp) / "points.npy"
        phases = subprocess.run([sys.executable, "-c", _PHASES, str(points_file)], cwd=REPO, check=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
        out = json.loads(phases.stdout.strip().splitlines()[-1])
        points = np.load(points_file)
    runs = [time_to_first_pose(points) for _ in range(max(1, args.runs))]
    out["first_pose_s"] = float(np.median([r[0] for r in runs]))
    out["first_pose_cpu_s"] = float(np.median([r[1] for r in runs]))
    out["load_1min"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"fitter start-up (load {out['load_1min']:.1f} on {os.cpu_count()} cores), CPU seconds of its process:")
    for key in ("import_base_cpu_s", "import_torch_cpu_s", "import_roma_cpu_s", "import_node_cpu_s", "setup_cpu_s",
                "first_fit_cpu_s"):
        note = " (imports torch._dynamo)" if key == "import_roma_cpu_s" and out["dynamo_by_roma"] else ""
        print(f"  {key:20s} {out[key]:6.2f}{note}")
    print(f"spawn -> first pose: {out['first_pose_s']:.2f} s wall, {out['first_pose_cpu_s']:.2f} s node CPU "
          f"(median of {len(runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
