"""`streamer bench body`: body-model keypoint cost and synthetic-stage generation speed.

- Anny MHR-70 keypoints, forward + backward (sum of squares, gradient w.r.t. all parameters) for
  1 and 8 bodies, median over repeats, on the CPU (torch threads: --threads, default 1) and on
  CUDA when available. CPU figures are process CPU time per evaluation (stable on a loaded,
  shared host; wall-clock medians are reported beside them with a `_wall` suffix). "shape frozen" is the fitter's per-frame path (tables cached per shape);
  "shape moving" also differentiates the height/proportions phenotypes.
- Synthetic stage: generating kp2d for 8 cameras at 60 fps (projection + observation model, two
  persons, `observe_cameras`: vectorised over the cameras, as `streamer synth` does) as a multiple of real time (stage seconds per CPU second of this process), after the
  one-off animation precompute (reported too).

`--json` prints one object; stable keys: fwd_bwd_ms_1, fwd_bwd_ms_8 (CPU, shape frozen),
synth_realtime_factor.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

__all__ = ["main", "measure_keypoints", "measure_synth"]


def _clock(cuda: bool) -> tuple:
    return time.perf_counter(), (None if cuda else time.process_time())


def measure_keypoints(body, batch: int, *, shape_moving: bool, backward: bool = True,
                      repeats: int = 200) -> tuple[float, float]:
    """(median CPU ms, median wall ms) of one keypoints evaluation (+ backward) of `batch` random poses.
    On CUDA the first figure is the wall time too."""
    gen = torch.Generator().manual_seed(0)
    params = body.default_params(batch)
    pose = body.groups["pose"]
    params[:, pose] = 0.3 * torch.randn(batch, pose.stop - pose.start, generator=gen).to(params)
    saved = body.movable.clone()
    shape = body.groups["shape"]
    if not shape_moving:
        body.movable[shape] = False
    cuda = params.is_cuda
    try:
        cpu_times, wall_times = [], []
        for i in range(repeats + 10):
            wall0, cpu0 = _clock(cuda)
            if backward:
                p = params.clone().requires_grad_(True)
                body.keypoints(p).square().sum().backward()
            else:
                with torch.no_grad():
                    body.keypoints(params)
            if cuda:
                torch.cuda.synchronize()
            if i >= 10:
                wall_times.append(time.perf_counter() - wall0)
                cpu_times.append(wall_times[-1] if cuda else time.process_time() - cpu0)
        return 1e3 * statistics.median(cpu_times), 1e3 * statistics.median(wall_times)
    finally:
        body.movable.copy_(saved)


def measure_synth(body, *, cameras: int = 8, fps: float = 60.0, seconds: float = 2.0) -> tuple[float, float, float]:
    """(realtime factor by CPU time, by wall time, seconds of one-off setup) for `cameras` at `fps`."""
    from streamer.synthetic import RigSettings, StageSettings, SyntheticStage

    t0 = time.perf_counter()
    stage = SyntheticStage(StageSettings(rig=RigSettings(cameras=cameras, fps=fps)), body=body)
    setup_s = time.perf_counter() - t0
    frames = round(seconds * fps)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for k in range(frames):
        stage.truth(k)
        stage.observe_cameras(k)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return (frames / fps) / cpu, (frames / fps) / wall, setup_s


def measure_observe_one(body, *, frames: int = 120) -> float:
    """CPU ms of one camera's frame alone (what a live capture process pays per frame)."""
    from streamer.synthetic import RigSettings, StageSettings, SyntheticStage

    stage = SyntheticStage(StageSettings(rig=RigSettings(cameras=8)), body=body)
    cpu0 = time.process_time()
    for k in range(frames):
        stage.observe(k, "cam3")
    return 1e3 * (time.process_time() - cpu0) / frames


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench body", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=200, help="timed evaluations per figure")
    parser.add_argument("--synth-seconds", type=float, default=2.0, help="seconds of 8-camera stage to generate")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from streamer.body.anny_model import AnnyBody

    t0 = time.perf_counter()
    body = AnnyBody()
    results: dict[str, float] = {"anny_init_s": time.perf_counter() - t0}
    for batch in (1, 8):
        for key, moving, backward in ((f"fwd_ms_{batch}", False, False), (f"fwd_bwd_ms_{batch}", False, True),
                                      (f"fwd_bwd_ms_{batch}_shape", True, True)):
            results[key], results[key + "_wall"] = measure_keypoints(
                body, batch, shape_moving=moving, backward=backward, repeats=args.repeats)
    if torch.cuda.is_available():
        gpu = AnnyBody(device="cuda")
        for batch in (1, 8, 256):
            results[f"cuda_fwd_bwd_ms_{batch}"], _ = measure_keypoints(gpu, batch, shape_moving=False,
                                                                       repeats=args.repeats)
    factor, factor_wall, setup_s = measure_synth(body, seconds=args.synth_seconds)
    results["synth_observe_ms_per_camera"] = measure_observe_one(body)
    results["synth_realtime_factor"] = factor
    results["synth_realtime_factor_wall"] = factor_wall
    results["synth_setup_s"] = setup_s
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in results.items()}))
        return 0
    print(f"Anny MHR-70 keypoints, {args.threads} torch thread(s), median of {args.repeats}, "
          f"CPU ms (wall ms); AnnyBody() {results['anny_init_s']:.2f} s")
    print(f"{'bodies':>6} {'forward':>15} {'fwd+bwd':>15} {'fwd+bwd, shape moving':>23}")
    for batch in (1, 8):
        cells = [f"{results[k]:.2f} ({results[k + '_wall']:.2f})" for k in
                 (f"fwd_ms_{batch}", f"fwd_bwd_ms_{batch}", f"fwd_bwd_ms_{batch}_shape")]
        print(f"{batch:>6} {cells[0]:>15} {cells[1]:>15} {cells[2]:>23}")
    for key in (k for k in results if k.startswith("cuda_")):
        print(f"{key}: {results[key]:.2f}")
    print(f"synthetic stage, 8 cameras x 60 fps, 2 persons: {factor:.1f}x real time by CPU time "
          f"({factor_wall:.1f}x by wall time); one-off animation precompute {setup_s:.1f} s; "
          f"one camera alone {results['synth_observe_ms_per_camera']:.2f} ms CPU per frame")
    return 0
