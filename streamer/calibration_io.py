"""Calibration files <-> `Rig`: Caliscope, aniposelib / Pose2Sim, Qualisys; writer to Caliscope.

Readers (all return a `Rig` holding every camera of the file, posed or not, in file-id order):
- `load_caliscope(path)`: Caliscope `camera_array.toml`, tables `[cameras.<id>]`; ids are strings sorted
  numerically; `rotation` is a Rodrigues vector (3) or a legacy 3x3 matrix; unposed cameras have
  `rotation`/`translation` absent or the string "null"; a camera may lack intrinsics.
- `load_camera_tables(path)`: one top-level `[cam_N]` table per camera: Caliscope's legacy
  `config.toml` (`cam_id` or `port`, 3x3 rotation) and the aniposelib / Pose2Sim calibration TOML
  (`name`, Rodrigues rotation, `fisheye = false`). Camera names: Caliscope ids as strings ("0"),
  aniposelib `name` ("cam_01").
- `load_qualisys(path)`: Qualisys `.qca.txt` XML, converted to OpenCV (see `_qualisys_camera`).
- `load_calibration(path)`: any of the above, chosen by content.
Writer: `write_caliscope(rig, path)` (Rodrigues rotations, "null" for unposed cameras, like Caliscope).

Errors are `CalibrationError` (a ValueError) naming the file, the camera and the field.
"""
from __future__ import annotations

import logging
import math
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tomli_w

from streamer.calibration import Camera, Rig

__all__ = [
    "CalibrationError",
    "load_calibration",
    "load_caliscope",
    "load_camera_tables",
    "load_qualisys",
    "write_caliscope",
]

log = logging.getLogger(__name__)

# Caliscope fields kept in Camera.extra for round trips (not part of the content hash).
_CALISCOPE_EXTRA = ("rotation_count", "error", "exposure", "grid_count", "ignore", "verified_resolutions", "fisheye")


class CalibrationError(ValueError):
    """A calibration file that cannot be read: says which file, camera and field, and what was expected."""

    def __init__(self, path, camera: str | None, field: str | None, problem: str):
        where = str(path)
        if camera is not None:
            where += f": camera {camera!r}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.path, self.camera, self.field = str(path), camera, field


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise CalibrationError(path, None, None, f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationError(path, None, None, f"not valid TOML: {exc}") from None


def _is_null(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", ""))


def _array(path, camera, table: dict, field: str, shapes: tuple[tuple[int, ...], ...], required: bool):
    """table[field] as float64 of one of `shapes`; None when absent or "null" and not required."""
    value = table.get(field)
    if _is_null(value):
        if required:
            raise CalibrationError(path, camera, field, "missing (expected " + " or ".join(map(str, shapes)) + ")")
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(path, camera, field, f"expected numbers, got {value!r}") from None
    if array.shape not in shapes:
        expected = " or ".join(map(str, shapes))
        raise CalibrationError(path, camera, field, f"expected shape {expected}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise CalibrationError(path, camera, field, f"expected finite numbers, got {value!r}")
    return array


def _camera_from_table(path, name: str, table: dict, *, rotation_shapes=((3,), (3, 3))) -> Camera:
    """One camera table in the shared Caliscope / aniposelib vocabulary."""
    if not isinstance(table, dict):
        raise CalibrationError(path, name, None, f"expected a table, got {type(table).__name__}")
    if bool(table.get("fisheye", False)) is True:
        raise CalibrationError(path, name, "fisheye", "fisheye cameras are not supported (pinhole OpenCV model only)")
    size = _array(path, name, table, "size", ((2,),), required=True)
    K = _array(path, name, table, "matrix", ((3, 3),), required=False)
    dist = _array(path, name, table, "distortions", tuple((n,) for n in (0, 4, 5, 8, 12)), required=False)
    if dist is not None and K is None:
        raise CalibrationError(path, name, "matrix", "missing while distortions are given")
    rotation = _array(path, name, table, "rotation", rotation_shapes, required=False)
    translation = _array(path, name, table, "translation", ((3,),), required=False)
    if (rotation is None) != (translation is None):
        missing = "rotation" if rotation is None else "translation"
        raise CalibrationError(path, name, missing, "missing while the other extrinsic is given (camera half posed)")
    extra = {key: table[key] for key in _CALISCOPE_EXTRA if key in table}
    try:
        if rotation is not None and rotation.shape == (3,):
            return Camera.from_rvec(name, tuple(size), K, dist, rotation, translation, extra=extra)
        return Camera(name, tuple(size), K, dist, rotation, translation, extra=extra)
    except ValueError as exc:
        raise CalibrationError(path, name, None, str(exc)) from None


def _numeric_key(name: str) -> tuple:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (0, int(digits), name) if digits else (1, 0, name)


def load_caliscope(path) -> Rig:
    """Caliscope `camera_array.toml` -> Rig of every camera (unposed ones included), ids sorted numerically."""
    path = Path(path)
    data = _read_toml(path)
    cameras = data.get("cameras")
    if not isinstance(cameras, dict) or not cameras:
        raise CalibrationError(path, None, "cameras", "expected one [cameras.<id>] table per camera")
    out = []
    for key in sorted(cameras, key=_numeric_key):
        table = cameras[key]
        cam_id = table.get("cam_id", key) if isinstance(table, dict) else key
        if str(cam_id) != str(key):
            raise CalibrationError(path, str(key), "cam_id", f"expected {key} (the table key), got {cam_id!r}")
        out.append(_camera_from_table(path, str(key), table))
    return Rig(tuple(out))


def load_camera_tables(path) -> Rig:
    """Top-level `[cam_N]` tables (Caliscope legacy config.toml, aniposelib / Pose2Sim TOML) -> Rig."""
    path = Path(path)
    data = _read_toml(path)
    tables = {key: value for key, value in data.items() if key.startswith("cam") and isinstance(value, dict)}
    if not tables:
        raise CalibrationError(path, None, None, "no [cam_N] camera tables found")
    out = []
    for key in sorted(tables, key=_numeric_key):
        table = tables[key]
        if "cam_id" in table or "port" in table:  # Caliscope legacy: the id is the camera's name
            name = str(table.get("cam_id", table.get("port")))
        else:
            name = str(table.get("name", key))
        out.append(_camera_from_table(path, name, table))
    return Rig(tuple(out))


def _qualisys_camera(path, element: ET.Element) -> Camera:
    """One Qualisys `<camera>` -> OpenCV camera.

    K = [[fU/64, 0, cU/64 - left], [0, fV/64, cV/64 - top], [0, 0, 1]] with the `fov_video` offsets;
    dist = [k1, k2, p1, p2] / 64; `<transform>` r11..r33 row-major = Rrow, camera centre C in mm;
    R_w2c = diag(1, -1, -1) Rrow, t = diag(1, -1, -1) (-Rrow C / 1000).
    """
    name = element.get("serial") or "?"

    def number(tag: str, attribute: str) -> float:
        node = element.find(tag)
        if node is None or node.get(attribute) is None:
            raise CalibrationError(path, name, f"{tag}.{attribute}", "missing")
        try:
            value = float(node.get(attribute))
        except ValueError:
            raise CalibrationError(path, name, f"{tag}.{attribute}", f"expected a number, got {node.get(attribute)!r}")
        if not math.isfinite(value):
            raise CalibrationError(path, name, f"{tag}.{attribute}", f"expected a finite number, got {value}")
        return value

    left, top = number("fov_video", "left"), number("fov_video", "top")
    width = number("fov_video", "right") - left + 1
    height = number("fov_video", "bottom") - top + 1
    K = np.array(
        [
            [number("intrinsic", "focalLengthU") / 64, 0.0, number("intrinsic", "centerPointU") / 64 - left],
            [0.0, number("intrinsic", "focalLengthV") / 64, number("intrinsic", "centerPointV") / 64 - top],
            [0.0, 0.0, 1.0],
        ]
    )
    dist = np.array(
        [
            number("intrinsic", key)
            for key in ("radialDistortion1", "radialDistortion2", "tangentalDistortion1", "tangentalDistortion2")
        ]
    ) / 64
    rows = np.array([[number("transform", f"r{i}{j}") for j in (1, 2, 3)] for i in (1, 2, 3)])
    centre_mm = np.array([number("transform", axis) for axis in ("x", "y", "z")])
    flip = np.diag([1.0, -1.0, -1.0])
    R = flip @ rows
    t = flip @ (-rows @ centre_mm / 1000.0)
    try:
        return Camera(name, (width, height), K, dist, R, t)
    except ValueError as exc:
        raise CalibrationError(path, name, None, str(exc)) from None


def load_qualisys(path) -> Rig:
    """Qualisys `.qca.txt` (XML) -> Rig, cameras named by their `serial`, in file order."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except OSError as exc:
        raise CalibrationError(path, None, None, f"cannot read: {exc}") from None
    except ET.ParseError as exc:
        raise CalibrationError(path, None, None, f"not valid XML: {exc}") from None
    elements = root.findall("./cameras/camera")
    if not elements:
        raise CalibrationError(path, None, "cameras", "no <cameras><camera> elements")
    return Rig(tuple(_qualisys_camera(path, element) for element in elements))


def load_calibration(path) -> Rig:
    """Any supported calibration file -> Rig, chosen by content (XML: Qualisys; TOML: [cameras.*] or [cam_N])."""
    path = Path(path)
    try:
        head = path.read_bytes()[:256].lstrip()
    except OSError as exc:
        raise CalibrationError(path, None, None, f"cannot read: {exc}") from None
    if head.startswith(b"<"):
        return load_qualisys(path)
    data = _read_toml(path)
    if "cameras" in data:
        return load_caliscope(path)
    return load_camera_tables(path)


def _caliscope_id(name: str):
    return int(name) if name.isdigit() else name


def write_caliscope(rig: Rig, path) -> None:
    """Write `rig` as a Caliscope `camera_array.toml` (Rodrigues rotations; "null" extrinsics when unposed)."""
    path = Path(path)
    cameras = {}
    for cam in rig:
        table = {"cam_id": _caliscope_id(cam.name), "size": list(cam.image_size)}
        table.update({key: cam.extra[key] for key in _CALISCOPE_EXTRA if key in cam.extra})
        if cam.K is not None:
            table["matrix"] = cam.K.tolist()
            table["distortions"] = cam.dist_or_zero.tolist()
        if cam.R is not None:
            table["translation"] = cam.t.tolist()
            table["rotation"] = cam.rvec.tolist()
        else:
            table["translation"] = "null"
            table["rotation"] = "null"
        cameras[cam.name] = table
    path.write_text(tomli_w.dumps({"cameras": cameras}))
