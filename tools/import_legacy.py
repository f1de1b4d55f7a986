"""`streamer import legacy ROOT OUT.mcap --trust-pickle --calibration CALIB --fps FPS`: import the older offline
pipeline's per-view SAM-3D Body outputs as a take the sync and fit nodes can replay.

Input layout, matched by exact names only (nothing is globbed or fuzzily matched):
    ROOT/npy/<frame>/<camera>.npy
<frame> is a folder named by decimal digits (the frame index); <camera> must be exactly a camera name of
the calibration. Each file holds what the older pipeline saved with `np.save`: one SAM-3D Body output dict
(or a list of them, one per person), i.e. a pickled Python object.

Why --trust-pickle: loading a pickled `.npy` runs `pickle`, which can execute arbitrary code from the
file. Only import folders you produced yourself or otherwise trust; without the flag nothing is loaded.

Output: a take (streamer/recording.py) with the rig on `calib` and one `kp2d/<camera>` message per
file, `t_capture_ns = frame * 1e9 / fps`. Keypoints are re-projected from `pred_keypoints_3d + pred_cam_t`
with the K the model used: the calibrated K when the saved `focal_length` equals the calibrated fx (the
pipeline passed `cam_int`), else the model's own (focal_length, image centre) camera; `--model-k` overrides.
All MHR parameters go along (streamer/capture/sam3d.py `person_from_sam3d`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocol import Keypoints2D
from streamer.calibration import Rig
from streamer.capture.sam3d import person_from_sam3d
from streamer.recording import TakeWriter

__all__ = ["LegacyImportError", "LegacyImportReport", "import_legacy", "load_legacy_view", "main"]

log = logging.getLogger(__name__)

_FOCAL_MATCH_REL = 0.005  # saved focal_length within 0.5 % of the calibrated fx: the pipeline passed cam_int
_PICKLE_WARNING = ("these .npy files are pickled Python objects; loading them can run arbitrary code. "
                   "Pass --trust-pickle only for folders you produced yourself or otherwise trust")


class LegacyImportError(ValueError):
    """The legacy folder cannot be imported as asked; the message names the file or folder."""


@dataclass
class LegacyImportReport:
    """What was imported: messages written, files missing per camera, persons, K choice per file."""

    frames: int = 0
    messages: int = 0
    persons: int = 0
    missing: Counter = field(default_factory=Counter)  # camera -> frames without a file
    k_used: Counter = field(default_factory=Counter)  # "calibrated" / "model" -> files


def load_legacy_view(path: Path, *, trust_pickle: bool) -> list[dict]:
    """The person dicts saved in one `<camera>.npy` (a dict, or a list/array of dicts)."""
    if not trust_pickle:
        raise LegacyImportError(f"{path}: refusing to load without --trust-pickle: {_PICKLE_WARNING}")
    try:
        obj = np.load(path, allow_pickle=True)
    except Exception as exc:
        raise LegacyImportError(f"{path}: not a readable .npy file ({exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        obj = obj.item() if obj.ndim == 0 else list(obj.reshape(-1))
    persons = [obj] if isinstance(obj, dict) else obj
    if not isinstance(persons, list) or not all(isinstance(p, dict) for p in persons):
        raise LegacyImportError(f"{path}: expected a SAM-3D Body output dict or a list of them, "
                                f"got {type(obj).__name__}")
    return persons


def _frame_folders(root: Path) -> list[tuple[int, Path]]:
    npy = root / "npy"
    if not npy.is_dir():
        raise LegacyImportError(f"{root}: no 'npy' folder (expected ROOT/npy/<frame>/<camera>.npy)")
    frames = []
    for entry in sorted(npy.iterdir()):
        if not entry.is_dir():
            log.warning("%s: not a frame folder, ignored", entry)
            continue
        if not entry.name.isdigit():
            raise LegacyImportError(f"{entry}: frame folders must be named by decimal digits (the frame index)")
        frames.append((int(entry.name), entry))
    indices = [i for i, _ in frames]
    if len(set(indices)) != len(indices):
        raise LegacyImportError(f"{npy}: two frame folders name the same frame index (e.g. '7' and '007')")
    if not frames:
        raise LegacyImportError(f"{npy}: no frame folders")
    return sorted(frames)


def _model_K(output: dict, K_calibrated: np.ndarray, image_size: tuple[int, int], mode: str) -> tuple[np.ndarray, str]:
    """The K the model used for this output (see module docstring) and which one it was."""
    focal = output.get("focal_length")
    if mode == "calibrated":
        return K_calibrated, "calibrated"
    if focal is None or not np.isfinite(float(np.asarray(focal).reshape(-1)[0])):
        raise LegacyImportError("output has no focal_length, so the K the model used is unknown: pass "
                                "--model-k calibrated if the older pipeline gave the model the calibrated K (cam_int)")
    focal = float(np.asarray(focal).reshape(-1)[0])
    if mode == "auto" and abs(focal - K_calibrated[0, 0]) <= _FOCAL_MATCH_REL * K_calibrated[0, 0]:
        return K_calibrated, "calibrated"
    width, height = image_size
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]]), "model"


def import_legacy(root: str | Path, out: str | Path, rig: Rig, *, fps: float, trust_pickle: bool,
                  model_k: str = "auto", t0_ns: int = 0) -> LegacyImportReport:
    """Convert ROOT/npy/<frame>/<camera>.npy into the take `out` (see module docstring)."""
    if not trust_pickle:
        raise LegacyImportError(f"refusing to import {root} without --trust-pickle: {_PICKLE_WARNING}")
    if not fps > 0:
        raise LegacyImportError(f"--fps must be > 0, got {fps}")
    if model_k not in ("auto", "calibrated", "model"):
        raise LegacyImportError(f"--model-k must be auto, calibrated or model, got {model_k!r}")
    root = Path(root)
    frames = _frame_folders(root)
    cameras = {cam.name: cam for cam in rig}
    for _, folder in frames:
        for entry in folder.iterdir():
            if entry.suffix == ".npy" and entry.stem not in cameras:
                raise LegacyImportError(f"{entry}: camera {entry.stem!r} is not in the calibration "
                                        f"(cameras: {', '.join(cameras)}); names must match exactly")
    report = LegacyImportReport()
    calib = rig.to_message()
    seq = Counter()
    with TakeWriter(out, metadata={"source": "legacy-npy", "root": str(root.resolve())}) as take:
        take.write(calib, log_time_ns=t0_ns)
        for frame_index, folder in frames:
            report.frames += 1
            t_ns = t0_ns + int(round(frame_index * 1e9 / fps))
            for name, camera in cameras.items():
                path = folder / f"{name}.npy"
                if not path.is_file():
                    report.missing[name] += 1
                    continue
                persons = []
                for output in load_legacy_view(path, trust_pickle=True):
                    try:
                        K, which = _model_K(output, camera.K, camera.image_size, model_k)
                        persons.append(person_from_sam3d(output, K))
                    except ValueError as exc:
                        raise LegacyImportError(f"{path}: {exc}") from None
                    report.k_used[which] += 1
                msg = Keypoints2D(camera=name, seq=seq[name], frame_index=frame_index, t_capture_ns=t_ns,
                                  image_size=np.array(camera.image_size, np.int32), calib_version=calib.version,
                                  persons=persons)
                take.write(msg, log_time_ns=t_ns)
                seq[name] += 1
                report.messages += 1
                report.persons += len(persons)
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="streamer import legacy",
        description="Import the older offline pipeline's ROOT/npy/<frame>/<camera>.npy SAM-3D Body outputs as a take. "
                    "Names are matched exactly. The files are pickles: " + _PICKLE_WARNING + ".")
    parser.add_argument("root", type=Path, help="folder holding npy/<frame>/<camera>.npy")
    parser.add_argument("out", type=Path, help="take to write (.mcap)")
    parser.add_argument("--calibration", type=Path, required=True,
                        help="rig calibration; its camera names must equal the .npy file stems")
    parser.add_argument("--fps", type=float, required=True, help="frame rate: t_capture = frame / fps")
    parser.add_argument("--trust-pickle", action="store_true", help="allow loading pickled .npy files (required)")
    parser.add_argument("--model-k", choices=("auto", "calibrated", "model"), default="auto",
                        help="K the model used: auto (from focal_length), calibrated (cam_int was passed), "
                             "model (focal_length and image centre)")
    args = parser.parse_args(argv)
    if not args.trust_pickle:
        print(f"streamer import legacy: {_PICKLE_WARNING}. Refusing without --trust-pickle.", file=sys.stderr)
        return 2
    from streamer.calibration_io import load_calibration

    try:
        rig = load_calibration(args.calibration)
        report = import_legacy(args.root, args.out, rig, fps=args.fps, trust_pickle=True, model_k=args.model_k)
    except (LegacyImportError, ValueError, OSError) as exc:
        print(f"streamer import legacy: {exc}", file=sys.stderr)
        return 1
    missing = ", ".join(f"{c}: {n}" for c, n in sorted(report.missing.items())) or "none"
    print(f"wrote {args.out}: {report.frames} frames, {report.messages} kp2d messages, {report.persons} persons; "
          f"missing files per camera: {missing}; K used: {dict(report.k_used)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
