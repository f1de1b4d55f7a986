"""Camera-rig model: `Camera` (one calibrated camera) and `Rig` (an ordered group of cameras).

Conventions (OpenCV, as Caliscope, aniposelib and Pose2Sim use them):
- `K` (3, 3) intrinsics in pixels; `dist` OpenCV coefficients (k1, k2, p1, p2[, k3[, k4, k5, k6[, s1..s4]]]).
- `R` (3, 3), `t` (3,) map world to camera: `x_camera = R @ X_world + t`, metres.
- A camera may be unposed (no R, t) or even lack intrinsics (Caliscope writes such cameras);
  `Rig.posed()` keeps the cameras usable for projection and triangulation.

`Rig.project` and `Rig.distort` are vectorised in numpy over views and points (they are the hot
path of triangulation) and agree with `cv2.projectPoints` to < 1e-6 px (tested);
`Camera.project` calls OpenCV itself. `Rig.version` is a content hash (sha256 of ids, sizes and
every coefficient), the `calib_version` carried by every message.
File loaders and the Caliscope writer live in `streamer.calibration_io`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from protocol.messages import CameraCalibration, RigCalibration

__all__ = ["SUPPORTED_DIST_LENGTHS", "Camera", "Rig"]

SUPPORTED_DIST_LENGTHS = (0, 4, 5, 8, 12)  # OpenCV models without the tilted-sensor terms
_FULL_DIST = 12
_MIN_DEPTH_M = 1e-3
# OpenCV's default (5 fixed-point iterations) leaves ~0.5 px at the corners of strongly distorted webcams
# (Caliscope post_optimization cam 0); 12 iterations converge to < 2e-4 px there.
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT, 12, 0.0)


def _as_matrix(value, shape: tuple[int, ...], what: str, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"camera {name!r}: {what} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"camera {name!r}: {what} must be finite, got {array.tolist()}")
    return array


@dataclass(frozen=True, eq=False)
class Camera:
    """One camera. name: its id (a string: "0", "cam_01"); image_size: (width, height) pixels.

    K: (3, 3) pixels or None; dist: (D,) OpenCV order, D in SUPPORTED_DIST_LENGTHS, or None;
    R: (3, 3) world->camera rotation or None; t: (3,) world->camera translation, metres, or None.
    """

    name: str
    image_size: tuple[int, int]
    K: np.ndarray | None = None
    dist: np.ndarray | None = None
    R: np.ndarray | None = None
    t: np.ndarray | None = None
    extra: dict = field(default_factory=dict)  # format-specific fields kept for round trips (e.g. Caliscope error)

    def __post_init__(self) -> None:
        name = str(self.name)
        object.__setattr__(self, "name", name)
        size = tuple(int(round(float(v))) for v in self.image_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"camera {name!r}: image_size must be (width, height) > 0, got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        if self.K is not None:
            K = _as_matrix(self.K, (3, 3), "K", name)
            if K[0, 0] <= 0 or K[1, 1] <= 0 or K[0, 1] != 0 or K[1, 0] != 0 or not np.allclose(K[2], (0, 0, 1)):
                raise ValueError(
                    f"camera {name!r}: K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0 "
                    f"(OpenCV has no skew), got {K.tolist()}"
                )
            object.__setattr__(self, "K", K)
        if self.dist is not None:
            dist = np.asarray(self.dist, dtype=np.float64).reshape(-1)
            if dist.size not in SUPPORTED_DIST_LENGTHS or not np.all(np.isfinite(dist)):
                raise ValueError(
                    f"camera {name!r}: dist must hold {SUPPORTED_DIST_LENGTHS} finite coefficients, got {dist.tolist()}"
                )
            object.__setattr__(self, "dist", dist)
        if (self.R is None) != (self.t is None):
            raise ValueError(f"camera {name!r}: R and t must both be given or both be None")
        if self.R is not None:
            R = _as_matrix(self.R, (3, 3), "R", name)
            if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
                raise ValueError(f"camera {name!r}: R must be a rotation matrix, got {R.tolist()}")
            object.__setattr__(self, "R", R)
            object.__setattr__(self, "t", _as_matrix(self.t, (3,), "t", name))

    @classmethod
    def from_rvec(cls, name: str, image_size, K, dist, rvec, t, **kwargs) -> Camera:
        """Build from a Rodrigues rotation vector (3,) instead of a matrix."""
        R = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))[0]
        return cls(name, image_size, K, dist, R, t, **kwargs)

    @property
    def has_intrinsics(self) -> bool:
        return self.K is not None

    @property
    def is_posed(self) -> bool:
        """True when the camera can project: intrinsics and extrinsics are known."""
        return self.K is not None and self.R is not None

    @property
    def rvec(self) -> np.ndarray:
        """(3,) Rodrigues vector of R."""
        self._require_pose()
        return cv2.Rodrigues(self.R)[0].reshape(3)

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in the world frame, metres."""
        self._require_pose()
        return -self.R.T @ self.t

    @property
    def dist_or_zero(self) -> np.ndarray:
        return np.zeros(0) if self.dist is None else self.dist

    def _require_pose(self) -> None:
        if not self.is_posed:
            raise ValueError(f"camera {self.name!r} is not posed (no intrinsics or no extrinsics)")

    def project(self, points: np.ndarray) -> np.ndarray:
        """points: (K, 3) metres, world -> (K, 2) distorted pixels via cv2.projectPoints; NaN in, NaN out."""
        self._require_pose()
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.full((len(points), 2), np.nan)
        finite = np.all(np.isfinite(points), axis=1)
        if finite.any():
            projected, _ = cv2.projectPoints(points[finite], self.rvec, self.t, self.K, self.dist_or_zero)
            out[finite] = projected.reshape(-1, 2)
        return out

    def undistort(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: (K, 2) distorted pixels -> (K, 2) normalised undistorted camera coordinates; NaN in, NaN out."""
        if self.K is None:
            raise ValueError(f"camera {self.name!r} has no intrinsics")
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
        if not len(pixels):
            return np.zeros((0, 2))
        return cv2.undistortPoints(pixels, self.K, self.dist_or_zero, criteria=_UNDISTORT_CRITERIA).reshape(-1, 2)

    def content_bytes(self) -> bytes:
        parts = [self.name.encode(), np.asarray(self.image_size, dtype="<i8").tobytes()]
        for array in (self.K, self.dist, self.R, self.t):
            parts.append(b"-" if array is None else np.ascontiguousarray(array, dtype="<f8").tobytes())
        return b"|".join(parts)

    def to_message(self) -> CameraCalibration:
        self._require_pose()
        return CameraCalibration(
            camera=self.name,
            image_size=np.asarray(self.image_size, dtype=np.int32),
            K=self.K.copy(),
            dist=self.dist_or_zero.copy(),
            R=self.R.copy(),
            t=self.t.copy(),
        )

    @classmethod
    def from_message(cls, msg: CameraCalibration) -> Camera:
        return cls(msg.camera, tuple(int(v) for v in msg.image_size), msg.K, msg.dist, msg.R, msg.t)


@dataclass(frozen=True, eq=False)
class Rig:
    """An ordered group of cameras (the V axis of every (V, ...) array follows `names`)."""

    cameras: tuple[Camera, ...]

    def __post_init__(self) -> None:
        cameras = tuple(self.cameras)
        object.__setattr__(self, "cameras", cameras)
        names = [c.name for c in cameras]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rig: duplicate camera names {duplicates}")

    def __len__(self) -> int:
        return len(self.cameras)

    def __iter__(self):
        return iter(self.cameras)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def camera(self, name: str) -> Camera:
        """The camera called `name`; KeyError lists the known names."""
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"no camera {name!r} in rig; known: {', '.join(self.names)}")

    def subset(self, names) -> Rig:
        """A rig of the named cameras, in the given order."""
        return Rig(tuple(self.camera(str(n)) for n in names))

    def posed(self) -> Rig:
        """The cameras that can project (intrinsics and extrinsics known), in order."""
        return Rig(tuple(c for c in self.cameras if c.is_posed))

    @cached_property
    def version(self) -> str:
        """Content hash: 16 hex digits of sha256 over every camera's id, size and coefficients."""
        digest = hashlib.sha256()
        for cam in self.cameras:
            digest.update(cam.content_bytes())
            digest.update(b"#")
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------ stacked arrays (posed rigs)

    @cached_property
    def _stack(self) -> dict:
        for cam in self.cameras:
            cam._require_pose()
        V = len(self)
        dist = np.zeros((V, _FULL_DIST))
        for v, cam in enumerate(self.cameras):
            dist[v, : cam.dist_or_zero.size] = cam.dist_or_zero
        K = np.stack([c.K for c in self.cameras]) if V else np.zeros((0, 3, 3))
        R = np.stack([c.R for c in self.cameras]) if V else np.zeros((0, 3, 3))
        t = np.stack([c.t for c in self.cameras]) if V else np.zeros((0, 3))
        return {
            "R": R,
            "R_rows": R.reshape(3 * V, 3),
            "R_rows32": R.reshape(3 * V, 3).astype(np.float32),
            "t32": t.astype(np.float32),
            "mean_focal": 0.5 * (K[:, 0, 0] + K[:, 1, 1]),
            "t": t,
            "K": K,
            "dist": dist,
            "dist_columns": [np.ascontiguousarray(dist[:, i, None]) for i in range(_FULL_DIST)],
            "2p1": 2 * dist[:, 2, None],
            "2p2": 2 * dist[:, 3, None],
            "rational": bool(np.any(dist[:, 5:8])),
            "prism": bool(np.any(dist[:, 8:12])),
            "fx": K[:, 0, 0, None].copy(),
            "fy": K[:, 1, 1, None].copy(),
            "cx": K[:, 0, 2, None].copy(),
            "cy": K[:, 1, 2, None].copy(),
        }

    @property
    def R(self) -> np.ndarray:
        """(V, 3, 3) world->camera rotations."""
        return self._stack["R"]

    @property
    def t(self) -> np.ndarray:
        """(V, 3) world->camera translations, metres."""
        return self._stack["t"]

    @property
    def K(self) -> np.ndarray:
        """(V, 3, 3) intrinsics, pixels."""
        return self._stack["K"]

    @property
    def mean_focal_px(self) -> np.ndarray:
        """(V,) mean of fx and fy, pixels per unit of normalised coordinate."""
        return self._stack["mean_focal"]

    @property
    def dist12(self) -> np.ndarray:
        """(V, 12) distortion coefficients padded with zeros to the 12-term OpenCV model."""
        return self._stack["dist"]

    def to_camera_columns(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """points: (3, N) world, metres (coordinate-first) -> x, y, z: (V, N) each, camera frame of every view.

        float32 points give float32 results (for scoring many candidates), anything else float64.
        """
        V = len(self)
        # einsum, not matmul: a (3V, 3) x (3, N) product is too small for BLAS threads, which only contend
        # for the cores with the other processes of the stage (measured: 20x slower under load at V = 16).
        single = points.dtype == np.float32  # float32 in, float32 out
        cam = np.einsum("ij,jn->in", self._stack["R_rows32" if single else "R_rows"], points).reshape(V, 3, -1)
        t = self._stack["t32" if single else "t"]
        return cam[:, 0] + t[:, 0, None], cam[:, 1] + t[:, 1, None], cam[:, 2] + t[:, 2, None]

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """points: (..., K, 3) world, metres -> (..., V, K, 3) camera frame of every view."""
        points = np.asarray(points, dtype=np.float64)
        x, y, z = self.to_camera_columns(points.reshape(-1, 3).T)  # (V, N) each
        out = np.stack([x, y, z], axis=-1).reshape((len(self),) + points.shape)
        return np.moveaxis(out, 0, -3)

    def distort_columns(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x, y: (V, N) undistorted normalised coordinates -> u, v: (V, N) distorted pixels (OpenCV model)."""
        stack = self._stack
        d = stack["dist_columns"]  # 12 arrays (V, 1), broadcasting over N
        x2, y2, xy = x * x, y * y, x * y
        r2 = x2 + y2
        r4 = r2 * r2
        radial = 1 + d[0] * r2 + d[1] * r4 + d[4] * (r4 * r2)
        if stack["rational"]:
            radial = radial / (1 + d[5] * r2 + d[6] * r4 + d[7] * (r4 * r2))
        xd = x * radial + stack["2p1"] * xy + d[3] * (r2 + 2 * x2)
        yd = y * radial + d[2] * (r2 + 2 * y2) + stack["2p2"] * xy
        if stack["prism"]:
            xd = xd + d[8] * r2 + d[9] * r4
            yd = yd + d[10] * r2 + d[11] * r4
        return stack["fx"] * xd + stack["cx"], stack["fy"] * yd + stack["cy"]

    def project_columns(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """points: (3, N) world, metres -> u, v: (V, N) distorted pixels; NaN at or behind a camera (depth <= 1 mm).

        The coordinate-first form of `project`, for hot loops (contiguous (V, N) arrays, no stacking).
        """
        x, y, z = self.to_camera_columns(points)
        inv_z = 1.0 / np.where(z > _MIN_DEPTH_M, z, np.nan)  # NaN, not a division warning, behind the camera
        return self.distort_columns(x * inv_z, y * inv_z)

    def project(self, points: np.ndarray) -> np.ndarray:
        """points: (..., K, 3) world, metres -> (..., V, K, 2) distorted pixels.

        Points at or behind a camera (depth <= 1 mm) project to NaN in that view; NaN in, NaN out.
        """
        points = np.asarray(points, dtype=np.float64)
        lead = points.shape[:-1]
        u, v = self.project_columns(points.reshape(-1, 3).T)
        V = len(self)
        out = np.stack([u, v], axis=-1).reshape((V,) + lead + (2,))  # (V, ..., K, 2)
        return np.moveaxis(out, 0, -3) if points.ndim > 2 else out

    def undistort(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: (V, K, 2) distorted -> (V, K, 2) normalised undistorted coordinates (OpenCV, iterative)."""
        pixels = np.asarray(pixels, dtype=np.float64)
        if pixels.ndim != 3 or pixels.shape[0] != len(self) or pixels.shape[2] != 2:
            raise ValueError(f"rig.undistort: pixels must be (V={len(self)}, K, 2), got {pixels.shape}")
        out = np.empty_like(pixels)
        for v, cam in enumerate(self.cameras):  # one OpenCV call per view
            if cam.K is None:
                raise ValueError(f"camera {cam.name!r} has no intrinsics")
            if pixels.shape[1]:
                out[v] = cv2.undistortPoints(
                    pixels[v].reshape(-1, 1, 2), cam.K, cam.dist_or_zero, criteria=_UNDISTORT_CRITERIA
                ).reshape(-1, 2)
        return out

    # ------------------------------------------------------------ protocol messages

    def to_message(self) -> RigCalibration:
        """The `calib` message of this rig (every camera must be posed)."""
        return RigCalibration(version=self.version, cameras=[c.to_message() for c in self.cameras])

    @classmethod
    def from_message(cls, msg: RigCalibration) -> Rig:
        """Inverse of `to_message`; raises ValueError if the carried version does not match the content."""
        rig = cls(tuple(Camera.from_message(c) for c in msg.cameras))
        if msg.version and msg.version != rig.version:
            raise ValueError(f"calib message version {msg.version!r} does not match its content ({rig.version!r})")
        return rig
