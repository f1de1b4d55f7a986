"""`streamer import KIND ...`: turn real takes into a take file (MCAP) of `kp2d/<camera>` messages.

    streamer import pose2sim TRIAL OUT.mcap   Pose2Sim / OpenPose JSON folders (BODY_25B -> MHR-70)
    streamer import caliscope DIR OUT.mcap    Caliscope xy_<TRACKER>.csv (MediaPipe ids -> MHR-70)
    streamer import legacy ROOT OUT.mcap ...  the older offline pipeline's .npy outputs (tools/import_legacy.py)

The take (streamer/recording.py) holds the rig on `calib` first, then one kp2d message per camera and
frame in capture-time order; log time = capture time. Every person of a frame is written (the sync node
chooses); points the source layout lacks are NaN with confidence 0.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocol import Keypoints2D, Person2D
from streamer.calibration import Rig
from streamer.calibration_io import load_calibration
from streamer.importing.mediapipe import read_caliscope_xy, read_frame_times
from streamer.importing.openpose import LAYOUTS, frame_files, pose2sim_cameras, read_frame, to_mhr70
from streamer.recording import TakeWriter

__all__ = ["ImportReport", "import_caliscope", "import_pose2sim", "main", "person_from_keypoints"]

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What an import wrote: messages, persons and frames per camera; where the capture times came from."""

    messages: int = 0
    persons: int = 0
    cameras: list[str] = field(default_factory=list)
    frames: int = 0
    time_source: str = ""

    def summary(self) -> str:
        return (f"{self.messages} kp2d messages ({self.persons} persons) from {len(self.cameras)} cameras "
                f"({', '.join(self.cameras)}), {self.frames} frames; capture times: {self.time_source}")


def person_from_keypoints(keypoints: np.ndarray, confidence: np.ndarray) -> Person2D | None:
    """(70, 2) pixels NaN where missing, (70,) confidence -> Person2D (box from the seen points); None if none seen."""
    seen = np.isfinite(keypoints[:, 0]) & (confidence > 0)
    if not seen.any():
        return None
    lo, hi = keypoints[seen].min(axis=0), keypoints[seen].max(axis=0)
    return Person2D(
        box=np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float32),
        score=float(confidence[seen].mean()),
        keypoints=np.where(seen[:, None], keypoints, np.nan).astype(np.float32),
        confidence=np.where(seen, confidence, 0.0).astype(np.float32),
    )


def _write_take(out: Path, rig: Rig, messages: list[Keypoints2D], metadata: dict) -> None:
    messages.sort(key=lambda m: (m.t_capture_ns, m.camera))
    t0 = messages[0].t_capture_ns if messages else 0
    with TakeWriter(out, metadata=metadata) as take:
        take.write(rig.to_message(), log_time_ns=t0)
        for msg in messages:
            take.write(msg, log_time_ns=msg.t_capture_ns)


def import_pose2sim(
    trial: Path, out: Path, *, calibration: Path | None = None, source: str = "pose-associated",
    layout: str = "body25b", fps: float = 60.0,
) -> ImportReport:
    """Pose2Sim trial (TRIAL/<source>/camNN_json/*.json) -> take. Capture time = frame / fps (hardware-synced)."""
    rig, names, folders = pose2sim_cameras(trial, calibration, source)
    num_joints, mapping = LAYOUTS[layout]
    report = ImportReport(cameras=names, time_source=f"frame / {fps:g} fps (the demo is hardware-synchronised)")
    messages, frames_seen = [], set()
    for name, folder in zip(names, folders.values()):
        camera = rig.camera(name)
        for seq, (frame, path) in enumerate(frame_files(folder)):
            persons = []
            for person in read_frame(path, num_joints):
                mapped = to_mhr70(person, mapping)
                p2d = person_from_keypoints(mapped.keypoints, mapped.confidence)
                if p2d is not None:
                    persons.append(p2d)
            messages.append(Keypoints2D(
                camera=name, seq=seq, frame_index=frame, t_capture_ns=int(round(frame * 1e9 / fps)),
                image_size=np.array(camera.image_size, np.int32), calib_version=rig.version, persons=persons,
            ))
            frames_seen.add(frame)
            report.persons += len(persons)
    report.messages, report.frames = len(messages), len(frames_seen)
    _write_take(out, rig, messages, {"source": "pose2sim", "trial": str(trial.resolve()), "layout": layout})
    return report


_NOT_BODY_TRACKERS = frozenset({"CHARUCO", "ARUCO", "FACE"})  # Caliscope trackers whose ids are not MediaPipe body


def _caliscope_calibration(folder: Path) -> Path:
    for name in ("camera_array.toml", "config.toml"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder}: neither camera_array.toml nor config.toml; pass --calibration")


def _caliscope_xy(folder: Path, tracker: str | None) -> Path:
    if tracker is not None:
        path = folder / f"xy_{tracker}.csv"
        if not path.is_file():
            raise ValueError(f"{path}: not found")
        return path
    found = sorted(folder.glob("xy_*.csv"))
    if len(found) != 1:
        raise ValueError(f"{folder}: expected exactly one xy_<TRACKER>.csv (found {[p.name for p in found]}); "
                         "pass --tracker")
    return found[0]


def import_caliscope(
    folder: Path, out: Path, *, calibration: Path | None = None, tracker: str | None = None,
    timestamps: Path | None = None, fps: float = 30.0,
) -> ImportReport:
    """Caliscope recording folder -> take. Capture times, first that covers every (sync index, camera):
    the xy file's frame_time column, --timestamps, frame_time_history.csv, videos/timestamps.csv,
    timestamps.csv; else sync_index / fps (logged)."""
    folder = Path(folder)
    rig = load_calibration(calibration or _caliscope_calibration(folder))
    xy_path = _caliscope_xy(folder, tracker)
    tracker_name = xy_path.stem.removeprefix("xy_")
    if tracker_name in _NOT_BODY_TRACKERS:
        raise ValueError(f"{xy_path}: {tracker_name} is not a body tracker (MediaPipe pose/hand point ids expected)")
    data = read_caliscope_xy(xy_path)
    for name in data.cameras:
        if name not in rig.names or not rig.camera(name).is_posed:
            raise ValueError(f"{xy_path}: camera {name!r} is not a posed camera of the calibration {rig.names}")
    rig = rig.subset(data.cameras)
    needed = [(int(s), c) for s in data.sync_indices for c in data.cameras]
    times, source = None, ""
    if np.all(np.isfinite(data.frame_times)):
        times = {(int(s), c): float(data.frame_times[i, v]) for i, s in enumerate(data.sync_indices)
                 for v, c in enumerate(data.cameras)}
        source = f"{xy_path.name} frame_time column"
    candidates = [timestamps] if timestamps else [
        folder / "frame_time_history.csv", folder / "videos" / "timestamps.csv", folder / "timestamps.csv"]
    for path in candidates:
        if times is not None:
            break
        if path is not None and path.is_file():
            table = read_frame_times(path)
            if all(key in table for key in needed):
                times, source = table, str(path.relative_to(folder) if path.is_relative_to(folder) else path)
            else:
                log.info("%s does not cover every sync index of %s; not used", path, xy_path.name)
    if times is None:
        if timestamps:
            raise ValueError(f"{timestamps}: does not hold a frame time for every (sync_index, camera) of {xy_path}")
        times = {(s, c): s / fps for s, c in needed}
        source = f"sync_index / {fps:g} fps (no frame-time file covers the take)"
        log.warning("%s: %s", folder, source)
    report = ImportReport(cameras=list(data.cameras), time_source=source, frames=len(data.sync_indices))
    messages = []
    for v, name in enumerate(data.cameras):
        camera = rig.camera(name)
        for seq, (i, sync) in enumerate(enumerate(data.sync_indices)):
            person = person_from_keypoints(data.keypoints[i, v], data.confidence[i, v])
            persons = [] if person is None else [person]
            messages.append(Keypoints2D(
                camera=name, seq=seq, frame_index=int(sync), t_capture_ns=int(round(times[(int(sync), name)] * 1e9)),
                image_size=np.array(camera.image_size, np.int32), calib_version=rig.version, persons=persons,
            ))
            report.persons += len(persons)
    report.messages = len(messages)
    _write_take(out, rig, messages, {"source": "caliscope", "folder": str(folder.resolve()), "xy": xy_path.name})
    return report


def main(argv: list[str]) -> int:
    if argv and argv[0] == "legacy":
        from tools.import_legacy import main as legacy_main

        return legacy_main(argv[1:])
    parser = argparse.ArgumentParser(prog="streamer import", description=__doc__.split("\n\n")[0],
                                     epilog="streamer import legacy --help: the older pipeline's .npy outputs")
    sub = parser.add_subparsers(dest="kind", required=True)
    p2s = sub.add_parser("pose2sim", help="Pose2Sim / OpenPose JSON folders -> take")
    p2s.add_argument("trial", type=Path, help="trial folder holding <source>/camNN_json/")
    p2s.add_argument("out", type=Path, help="take to write (.mcap)")
    p2s.add_argument("--calibration", type=Path, help="calibration file (default: the one .toml in calibration/ "
                     "of the trial or beside it)")
    p2s.add_argument("--source", default="pose-associated", help="2D folder inside the trial (pose-associated, pose)")
    p2s.add_argument("--layout", choices=sorted(LAYOUTS), default="body25b", help="OpenPose model of the JSON")
    p2s.add_argument("--fps", type=float, default=60.0, help="frame rate: capture time = frame / fps")
    cal = sub.add_parser("caliscope", help="Caliscope xy_<TRACKER>.csv (MediaPipe holistic ids) -> take")
    cal.add_argument("dir", type=Path, help="recording folder (xy_<TRACKER>.csv; camera_array.toml or config.toml)")
    cal.add_argument("out", type=Path, help="take to write (.mcap)")
    cal.add_argument("--calibration", type=Path, help="calibration file (default: DIR/camera_array.toml)")
    cal.add_argument("--tracker", help="read DIR/xy_<TRACKER>.csv (default: the only xy_*.csv)")
    cal.add_argument("--timestamps", type=Path, help="frame-time CSV (sync_index, cam_id, frame_time)")
    cal.add_argument("--fps", type=float, default=30.0, help="fallback rate when no frame times are found")
    args = parser.parse_args(argv)
    try:
        if args.kind == "pose2sim":
            report = import_pose2sim(args.trial, args.out, calibration=args.calibration, source=args.source,
                                     layout=args.layout, fps=args.fps)
        else:
            report = import_caliscope(args.dir, args.out, calibration=args.calibration, tracker=args.tracker,
                                      timestamps=args.timestamps, fps=args.fps)
    except (OSError, ValueError) as exc:
        print(f"streamer import {args.kind}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
