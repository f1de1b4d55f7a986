"""`streamer synth OUT.mcap`: write a synthetic take (virtual cameras around animated Anny bodies).

The take holds the rig calibration (`calib`, first), then per frame the ground truth (`truth`) and
each camera's detections (`kp2d/<cam>`), as a live synthetic stage would publish them. The same
settings and seed give a byte-identical file. See streamer/synthetic/ for the models.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

__all__ = ["main", "stage_settings_from_args", "write_take"]

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="take file to write (.mcap)")
    parser.add_argument("--seconds", type=float, default=10.0, help="take length (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    rig = parser.add_argument_group("cameras")
    rig.add_argument("--cameras", type=int, default=4, help="number of cameras on the ring (default 4)")
    rig.add_argument("--fps", type=float, default=60.0, help="frame rate of every camera (default 60)")
    rig.add_argument("--radius", type=float, default=4.0, help="ring radius, metres (default 4)")
    rig.add_argument("--height", type=float, default=2.0, help="camera height, metres (default 2)")
    rig.add_argument("--fov", type=float, default=70.0, help="horizontal field of view, degrees (default 70)")
    rig.add_argument("--width", type=int, default=1280, help="image width, pixels (default 1280)")
    rig.add_argument("--image-height", type=int, default=720, help="image height, pixels (default 720)")
    rig.add_argument("--distortion", type=float, nargs="*", default=[-0.08, 0.02, 0.0, 0.0, 0.0],
                     help="OpenCV k1 k2 p1 p2 k3 (none: no distortion)")
    obs = parser.add_argument_group("observation model")
    obs.add_argument("--noise-px", type=float, default=2.0, help="pixel noise std (default 2)")
    obs.add_argument("--outlier-rate", type=float, default=0.02, help="per-point gross outlier rate (default 0.02)")
    obs.add_argument("--lr-swap-rate", type=float, default=0.01, help="per-detection left/right swap rate")
    obs.add_argument("--miss-rate", type=float, default=0.01, help="per-detection miss rate")
    obs.add_argument("--drop-rate", type=float, default=0.005, help="per-camera-frame drop rate")
    obs.add_argument("--clock-offset-ms", type=float, default=2.0, help="std of per-camera clock offsets")
    obs.add_argument("--jitter-ms", type=float, default=0.5, help="std of exposure-time jitter")
    obs.add_argument("--genlock", action="store_true", help="all cameras expose together (no trigger phase)")
    obs.add_argument("--no-distractor", action="store_true", help="only the subject, no second person")
    return parser


def stage_settings_from_args(args: argparse.Namespace):
    """`StageSettings` from the parsed command line."""
    from streamer.synthetic import ObservationSettings, RigSettings, StageSettings

    rig = RigSettings(cameras=args.cameras, ring_radius_m=args.radius, height_m=args.height, fov_deg=args.fov,
                      width_px=args.width, height_px=args.image_height, distortion=tuple(args.distortion),
                      fps=args.fps)
    observation = ObservationSettings(noise_px=args.noise_px, outlier_rate=args.outlier_rate,
                                      lr_swap_rate=args.lr_swap_rate, miss_rate=args.miss_rate,
                                      drop_rate=args.drop_rate, clock_offset_ms=args.clock_offset_ms,
                                      jitter_ms=args.jitter_ms, trigger_phase=not args.genlock)
    return StageSettings(rig=rig, observation=observation, seed=args.seed, distractor=not args.no_distractor)


def write_take(stage, path: Path, seconds: float) -> dict[str, int]:
    """Write `seconds` of `stage` to the take `path`; returns message counts by kind."""
    from streamer.recording import TakeWriter

    frames = max(1, round(seconds * stage.fps))
    s = stage.settings
    counts = {"calib": 0, "truth": 0, "kp2d": 0, "dropped": 0}
    metadata = {"source": "synth", "seed": str(s.seed), "take_id": f"synth-{s.content_hash()}",
                "settings_hash": s.content_hash(), "cameras": ",".join(stage.camera_names), "fps": repr(stage.fps)}
    with TakeWriter(path, metadata=metadata) as take:
        take.write(stage.calibration(), log_time_ns=s.t0_ns // 2)
        counts["calib"] += 1
        for k in range(frames):
            take.write(stage.truth(k), log_time_ns=stage.frame_time_ns(k))
            counts["truth"] += 1
            for msg, _ in stage.observe_cameras(k).values():
                if msg is None:
                    counts["dropped"] += 1
                    continue
                take.write(msg, log_time_ns=msg.t_capture_ns)
                counts["kp2d"] += 1
    return counts


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"streamer synth: {args.out} exists (use --overwrite to replace it)", file=sys.stderr)
        return 1
    if args.seconds <= 0:
        print("streamer synth: --seconds must be > 0", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = stage_settings_from_args(args)
    except ValueError as exc:
        print(f"streamer synth: {exc}", file=sys.stderr)
        return 2
    from streamer.synthetic import SyntheticStage

    t0 = time.perf_counter()
    stage = SyntheticStage(settings)
    t1 = time.perf_counter()
    if args.out.exists():
        args.out.unlink()
    counts = write_take(stage, args.out, args.seconds)
    t2 = time.perf_counter()
    print(f"wrote {args.out}: {args.seconds:g} s, {len(stage.camera_names)} cameras at {stage.fps:g} fps, "
          f"{counts['kp2d']} kp2d ({counts['dropped']} dropped frames), {counts['truth']} truth; "
          f"setup {t1 - t0:.1f} s, generation {t2 - t1:.1f} s ({args.seconds / max(t2 - t1, 1e-9):.1f}x real time)")
    return 0
