"""`streamer eval charuco DIR` and `streamer eval pose2sim DIR`: accuracy checks on real data (table, or --json).

charuco: a Caliscope session (camera_array.toml + xy_CHARUCO.csv with the true board-frame corner
    positions `obj_loc`). Every board pose is triangulated, the true board is rigidly fitted (Kabsch)
    to the triangulated corners, and the residuals give the RMSE in mm. Keys: rmse_mm (ours, robust),
    median_mm, p95_mm, dlt_rmse_mm (plain DLT), caliscope_rmse_mm (Caliscope's own xyz_CHARUCO.csv).
pose2sim: a Pose2Sim trial folder (pose-associated/camNN_json/, pose-3d/*.trc; calibration in
    ../calibration/). Our triangulation of the OpenPose 2D vs Pose2Sim's own .trc on the same frames:
    median reprojection error over the same observations (keys median_reproj_px, trc_median_reproj_px)
    and the 3D agreement (agreement_median_mm, agreement_p90_mm).

`pose2sim_trial(...)` returns the per-frame triangulation of a trial (MHR-70 layout) and
`trial_points3d(trial)` the matching protocol `Points3D` messages, for other checks (e.g. a fit).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol import Points3D
from streamer.body.mhr70 import NUM_KEYPOINTS
from streamer.calibration import Rig
from streamer.calibration_io import load_calibration
from streamer.importing.openpose import (
    BODY25B_NAMES,
    LAYOUTS,
    frame_files,
    pose2sim_cameras,
    read_frame,
    to_mhr70,
)
from streamer.triangulation import Triangulation, TriangulationSettings, triangulate_dlt, triangulate_robust

__all__ = [
    "Pose2SimTrial",
    "evaluate_charuco",
    "evaluate_pose2sim",
    "kabsch",
    "main",
    "pose2sim_trial",
    "read_trc",
    "trial_points3d",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- shared helpers


def kabsch(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rigid (R, t) minimising |R @ source_i + t - target_i|^2; source, target: (N, 3), N >= 3."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    H = (source - mu_s).T @ (target - mu_t)
    U, _, Vt = np.linalg.svd(H)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    return R, mu_t - R @ mu_s


def _percentile(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size else float("nan")


# ---------------------------------------------------------------- ChArUco


def _read_charuco(path: Path) -> dict[int, dict]:
    """xy_CHARUCO.csv -> {sync_index: {"cams": {cam_id: {corner: (x, y)}}, "board": {corner: (X, Y, Z)}}}."""
    poses: dict[int, dict] = {}
    with path.open(newline="") as handle:
        for n, row in enumerate(csv.DictReader(handle), start=2):
            try:
                sync, cam, corner = int(row["sync_index"]), str(int(row["cam_id"])), int(row["keypoint_id"])
                xy = (float(row["img_loc_x"]), float(row["img_loc_y"]))
                board = (float(row["obj_loc_x"]), float(row["obj_loc_y"]), float(row["obj_loc_z"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: row {n}: {exc!r}") from None
            pose = poses.setdefault(sync, {"cams": {}, "board": {}})
            pose["cams"].setdefault(cam, {})[corner] = xy
            pose["board"][corner] = board
    return poses


def _board_residuals(points: np.ndarray, board: np.ndarray) -> np.ndarray:
    """Distances (m) of the rigidly fitted true board corners to the triangulated ones (finite rows, >= 3)."""
    ok = np.all(np.isfinite(points), axis=1)
    if ok.sum() < 3:
        return np.zeros(0)
    R, t = kabsch(board[ok], points[ok])
    return np.linalg.norm(board[ok] @ R.T + t - points[ok], axis=1)


def evaluate_charuco(session: Path, settings: TriangulationSettings = TriangulationSettings()) -> dict:
    """Triangulate every board pose of a Caliscope ChArUco session; RMSE against the true board geometry."""
    session = Path(session)
    rig = load_calibration(session / "camera_array.toml").posed()
    poses = _read_charuco(session / "xy_CHARUCO.csv")
    caliscope_xyz: dict[int, dict[int, tuple]] = {}
    xyz_path = session / "xyz_CHARUCO.csv"
    if xyz_path.is_file():
        with xyz_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                caliscope_xyz.setdefault(int(row["sync_index"]), {})[int(row["keypoint_id"])] = tuple(
                    float(row[c]) for c in ("x_coord", "y_coord", "z_coord")
                )
    residuals = {"ours": [], "dlt": [], "caliscope": []}
    corners_used = 0
    for sync in sorted(poses):
        pose = poses[sync]
        corners = sorted(pose["board"])
        board = np.array([pose["board"][c] for c in corners])
        pixels = np.full((len(rig), len(corners), 2), np.nan)
        for v, cam in enumerate(rig.names):
            for k, corner in enumerate(corners):
                if corner in pose["cams"].get(cam, {}):
                    pixels[v, k] = pose["cams"][cam][corner]
        ours = triangulate_robust(pixels, None, rig, settings)
        dlt = triangulate_dlt(pixels, None, rig)
        residuals["ours"].append(_board_residuals(ours.points, board))
        residuals["dlt"].append(_board_residuals(dlt.points, board))
        corners_used += int(ours.valid.sum())
        if sync in caliscope_xyz:
            theirs = np.array([caliscope_xyz[sync].get(c, (np.nan,) * 3) for c in corners])
            residuals["caliscope"].append(_board_residuals(theirs, board))
    stacked = {key: np.concatenate(value) * 1000.0 if value else np.zeros(0) for key, value in residuals.items()}
    rmse = {key: float(np.sqrt(np.mean(v**2))) if v.size else float("nan") for key, v in stacked.items()}
    return {
        "rmse_mm": rmse["ours"],
        "median_mm": _percentile(stacked["ours"], 50),
        "p95_mm": _percentile(stacked["ours"], 95),
        "dlt_rmse_mm": rmse["dlt"],
        "caliscope_rmse_mm": rmse["caliscope"],
        "board_poses": len(poses),
        "corners": corners_used,
        "cameras": len(rig),
    }


# ---------------------------------------------------------------- Pose2Sim


def read_trc(path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Pose2Sim .trc -> (frame numbers (F,) as written, marker names, points (F, M, 3) metres, world Z-up).

    The .trc is Y-up: trc (x, y, z) = world (Y, Z, X), so world = trc[..., [2, 0, 1]].
    """
    lines = Path(path).read_text().splitlines()
    if len(lines) < 6:
        raise ValueError(f"{path}: too short for a .trc file")
    names = [n for n in lines[3].split("\t")[2:] if n.strip()]
    rows = [line.split("\t") for line in lines[5:] if line.strip()]
    frames = np.array([int(float(r[0])) for r in rows])
    values = np.array([[float(x) if x.strip() else np.nan for x in r[2 : 2 + 3 * len(names)]] for r in rows])
    if values.shape[1] != 3 * len(names):
        raise ValueError(f"{path}: expected {3 * len(names)} coordinates per row, got {values.shape[1]}")
    return frames, names, values.reshape(len(rows), len(names), 3)[..., [2, 0, 1]]


@dataclass(frozen=True)
class Pose2SimTrial:
    """A triangulated Pose2Sim trial. F frames, V cameras, K = 70 (MHR-70).

    frames: (F,) frame numbers (JSON file numbers); rig: cameras in the V order; pixels (F, V, K, 2);
    confidence (F, V, K); results: one Triangulation per frame; points (F, K, 3) metres, NaN where missing.
    """

    frames: np.ndarray
    rig: Rig
    pixels: np.ndarray
    confidence: np.ndarray
    results: list[Triangulation]
    fps: float

    @property
    def points(self) -> np.ndarray:
        return np.stack([r.points for r in self.results])


def pose2sim_trial(
    trial: Path,
    *,
    calibration: Path | None = None,
    source: str = "pose-associated",
    person: int = 0,
    layout: str = "body25b",
    fps: float = 60.0,
    settings: TriangulationSettings = TriangulationSettings(min_confidence=0.3),
    method: str = "robust",
) -> Pose2SimTrial:
    """Read and triangulate a Pose2Sim trial: person entry `person` of every JSON file, mapped to MHR-70.

    The temporal prior is the previous frame's points (causal), as the sync node does.
    """
    trial = Path(trial)
    rig, names, folders = pose2sim_cameras(trial, calibration, source)
    num_joints, mapping = LAYOUTS[layout]
    per_camera = [dict(frame_files(folder)) for folder in folders.values()]
    frames = np.array(sorted(set().union(*per_camera)))
    pixels = np.full((len(frames), len(rig), NUM_KEYPOINTS, 2), np.nan)
    confidence = np.zeros((len(frames), len(rig), NUM_KEYPOINTS))
    for v, files in enumerate(per_camera):
        for f, frame in enumerate(frames):
            if frame not in files:
                continue
            persons = read_frame(files[frame], num_joints)
            if len(persons) > person:
                mapped = to_mhr70(persons[person], mapping)
                pixels[f, v], confidence[f, v] = mapped.keypoints, mapped.confidence
    results, prior = [], None
    for f in range(len(frames)):
        if method == "dlt":
            result = triangulate_dlt(pixels[f], confidence[f], rig, min_confidence=settings.min_confidence)
        else:
            result = triangulate_robust(pixels[f], confidence[f], rig, settings, prior=prior)
            prior = result.points
        results.append(result)
    return Pose2SimTrial(frames, rig, pixels, confidence, results, fps)


def trial_points3d(trial: Pose2SimTrial, person_id: int = 0) -> list[Points3D]:
    """The `points3d` messages of a triangulated trial (t = frame / fps), as the sync node would publish."""
    out = []
    for frame, result in zip(trial.frames, trial.results):
        out.append(
            Points3D(
                t_ns=int(round(frame * 1e9 / trial.fps)),
                frame_index=int(frame),
                person_id=person_id,
                calib_version=trial.rig.version,
                cameras=list(trial.rig.names),
                sources_seq=np.full(len(trial.rig), int(frame), dtype=np.int64),
                sync_spread_ns=0,
                points=result.points.astype(np.float32),
                n_views=result.n_views,
                inliers=result.inliers,
                reproj_px=result.reproj_px.astype(np.float32),
                confidence=result.confidence.astype(np.float32),
                mean_reproj_px=result.mean_reproj_px,
                usable=bool(result.valid.sum() >= 6),
            )
        )
    return out


def _default_trc(trial: Path) -> Path:
    folder = trial / "pose-3d"
    raw = sorted(p for p in folder.glob("*.trc") if "_filt" not in p.stem) if folder.is_dir() else []
    if len(raw) != 1:
        raise ValueError(f"{folder}: expected exactly one unfiltered .trc (found {len(raw)}); pass --trc")
    return raw[0]


def evaluate_pose2sim(
    trial: Path,
    *,
    calibration: Path | None = None,
    trc: Path | None = None,
    person: int = 0,
    min_confidence: float = 0.3,
    threshold_px: float = 15.0,
) -> dict:
    """Our robust triangulation of a Pose2Sim trial vs Pose2Sim's .trc, on the same frames and observations."""
    trial = Path(trial)
    settings = TriangulationSettings(min_confidence=min_confidence, threshold_px=threshold_px)
    ours = pose2sim_trial(trial, calibration=calibration, person=person, settings=settings)
    dlt = pose2sim_trial(trial, calibration=calibration, person=person, settings=settings, method="dlt")
    trc_frames, trc_names, trc_points = read_trc(trc or _default_trc(trial))
    # .trc Frame# counts from 1 over the JSON frames in order; markers are BODY_25B names.
    body25b_index = {name: i for i, name in enumerate(BODY25B_NAMES)}
    mapping = LAYOUTS["body25b"][1]
    markers = [(m, mapping[body25b_index[n]]) for m, n in enumerate(trc_names) if body25b_index.get(n) in mapping]
    frame_rows = {int(f): i for i, f in enumerate(trc_frames)}
    rows = [frame_rows.get(i + 1) for i in range(len(ours.frames))]
    keep = [f for f, r in enumerate(rows) if r is not None]
    marker_cols = np.array([m for m, _ in markers])
    mhr = np.array([k for _, k in markers])
    theirs = np.stack([trc_points[rows[f]][marker_cols] for f in keep])  # (F, M, 3)
    mine = ours.points[keep][:, mhr]
    plain = dlt.points[keep][:, mhr]
    observed = ours.confidence[keep][:, :, mhr] > min_confidence  # (F, V, M)
    obs_px = ours.pixels[keep][:, :, mhr]

    def reproj(points: np.ndarray) -> np.ndarray:  # (F, M, 3) -> (F, V, M) px, NaN where not comparable
        projected = ours.rig.project(points)  # (F, V, M, 2)
        return np.where(observed, np.linalg.norm(projected - obs_px, axis=-1), np.nan)

    err_ours, err_trc, err_dlt = reproj(mine), reproj(theirs), reproj(plain)
    common = np.isfinite(err_ours) & np.isfinite(err_trc)
    agreement = np.linalg.norm(mine - theirs, axis=-1) * 1000.0
    dlt_agreement = np.linalg.norm(plain - theirs, axis=-1) * 1000.0
    per_camera = {
        name: {
            "ours_median_px": _percentile(err_ours[:, v][common[:, v]], 50),
            "trc_median_px": _percentile(err_trc[:, v][common[:, v]], 50),
        }
        for v, name in enumerate(ours.rig.names)
    }
    return {
        "median_reproj_px": _percentile(err_ours[common], 50),
        "trc_median_reproj_px": _percentile(err_trc[common], 50),
        "p90_reproj_px": _percentile(err_ours[common], 90),
        "trc_p90_reproj_px": _percentile(err_trc[common], 90),
        "dlt_median_reproj_px": _percentile(err_dlt[np.isfinite(err_dlt) & common], 50),
        "agreement_median_mm": _percentile(agreement, 50),
        "agreement_p90_mm": _percentile(agreement, 90),
        "dlt_agreement_median_mm": _percentile(dlt_agreement, 50),
        "dlt_agreement_p90_mm": _percentile(dlt_agreement, 90),
        "frames": len(keep),
        "markers": len(markers),
        "observations": int(common.sum()),
        "per_camera": per_camera,
    }


# ---------------------------------------------------------------- CLI


def _print_table(title: str, result: dict) -> None:
    print(title)
    for key, value in result.items():
        if isinstance(value, dict):
            for sub, numbers in value.items():
                print(f"  {key}.{sub:<14} " + "  ".join(f"{k} {v:.2f}" for k, v in numbers.items()))
        elif isinstance(value, float):
            print(f"  {key:<26} {value:10.3f}")
        else:
            print(f"  {key:<26} {value:>10}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    charuco = sub.add_parser("charuco", help="ChArUco session: RMSE of triangulated corners vs the true board (mm)")
    charuco.add_argument("dir", type=Path, help="Caliscope session folder (camera_array.toml, xy_CHARUCO.csv)")
    charuco.add_argument("--threshold-px", type=float, default=15.0, help="triangulation inlier gate, pixels")
    charuco.add_argument("--json", action="store_true", help="print one JSON object")
    p2s = sub.add_parser("pose2sim", help="Pose2Sim trial: reprojection error vs Pose2Sim's .trc, 3D agreement")
    p2s.add_argument("dir", type=Path, help="trial folder (pose-associated/, pose-3d/; calibration in ../calibration)")
    p2s.add_argument("--calibration", type=Path, help="calibration file (default: the one .toml in ../calibration)")
    p2s.add_argument("--trc", type=Path, help="reference .trc (default: the one unfiltered .trc in pose-3d/)")
    p2s.add_argument("--person", type=int, default=0, help="entry index in pose-associated JSON files")
    p2s.add_argument("--min-confidence", type=float, default=0.3, help="ignore 2D points below this confidence")
    p2s.add_argument("--threshold-px", type=float, default=15.0, help="triangulation inlier gate, pixels")
    p2s.add_argument("--json", action="store_true", help="print one JSON object")
    p2s.add_argument("--fit", action="store_true", help="also run the fitter: fitted vs raw reprojection and jitter "
                     "(keys fit_*, see tools/eval_fit.py)")
    args = parser.parse_args(argv)
    try:
        if args.check == "charuco":
            result = evaluate_charuco(args.dir, TriangulationSettings(threshold_px=args.threshold_px))
            title = f"ChArUco session {args.dir}: triangulated corners vs true board (rigid fit)"
        else:
            result = evaluate_pose2sim(
                args.dir, calibration=args.calibration, trc=args.trc, person=args.person,
                min_confidence=args.min_confidence, threshold_px=args.threshold_px,
            )
            title = f"Pose2Sim trial {args.dir}: ours vs Pose2Sim .trc on the same frames and observations"
            if args.fit:
                from tools.eval_fit import evaluate_pose2sim_fit
                fit = evaluate_pose2sim_fit(args.dir, calibration=args.calibration, person=args.person,
                                            min_confidence=args.min_confidence)
                result.update({k if k.startswith("fit_") else f"fit_{k}": v for k, v in fit.items()})
    except (OSError, ValueError) as exc:
        print(f"streamer eval {args.check}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(title, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
