"""Frame sources of a capture node: video files, V4L2 webcams, image folders, recorded kp2d, the synthetic stage.

Every source yields `Frame`s through `read()` (None at the end of the stream) and is a context
manager. Image sources deliver RGB images (what SAM-3D Body and MediaPipe expect); keypoint
sources (replay, synthetic) deliver ready `Person2D` lists instead and need no estimator.

Times: `t_capture_ns` is on the source's clock (`clock_ns`, default `time.time_ns`); the capture
node adds its estimated offset to the stage clock. Files carry their own times (container
timestamps, a timestamp file, the recording), shifted by `t0_ns`.

A live camera must be read by a `LatestFrameGrabber` (streamer/capture/latest.py) so that a slow
estimator drops stale frames instead of queueing them; file sources can be paced to their frame
times (`LatestFrameGrabber(pace=True)`) to behave like a camera, or read one by one offline.
"""
from __future__ import annotations

import csv
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from protocol.messages import Person2D

__all__ = [
    "Frame",
    "FrameSource",
    "ImageFolderSource",
    "ReplaySource",
    "SourceError",
    "SyntheticSource",
    "VideoFileSource",
    "WebcamSource",
    "buffer_time_to_clock_ns",
    "read_timestamp_file",
]

log = logging.getLogger(__name__)

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000


class SourceError(ValueError):
    """A source that cannot be opened or read as configured; the message names the file or device."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One capture of one camera.

    index: frame index in the source (0-based; file order or device sequence).
    t_capture_ns: capture time, ns, on the source's clock (see module docstring).
    image_size: (width, height) pixels.
    image: (H, W, 3) uint8 RGB, or None for keypoint sources.
    persons: the persons of a keypoint source (replay, synthetic), else None.
    """

    index: int
    t_capture_ns: int
    image_size: tuple[int, int]
    image: np.ndarray | None = None
    persons: list[Person2D] | None = None


class FrameSource(ABC):
    """A stream of `Frame`s. `live` sources (cameras) must be read continuously by a grabber thread."""

    live: bool = False

    @property
    @abstractmethod
    def nominal_fps(self) -> float:
        """Frames per second the source is expected to deliver (0 when unknown)."""

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream."""

    def skip(self) -> int | None:
        """Pass over the next frame (cheaply where the source can); its t_capture_ns, or None at the end."""
        frame = self.read()
        return None if frame is None else frame.t_capture_ns

    def close(self) -> None:
        """Release the device or file."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame


def _bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class VideoFileSource(FrameSource):
    """A video file decoded with OpenCV (FFmpeg).

    Frame times come from the container (presentation timestamp of each decoded frame); when
    the container gives none that increase (some raw streams), from `index / fps`.
    t_capture_ns = t0_ns + frame time.
    """

    def __init__(self, path: str | Path, *, t0_ns: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video file {self.path} does not exist")
        self._capture = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._capture.isOpened():
            raise SourceError(f"video file {self.path}: OpenCV (FFmpeg) cannot open it")
        self._fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.t0_ns = int(t0_ns)
        self._index = 0
        self._last_pts_ns = -1
        self.container_times = True  # false once a frame had to be timed from the frame rate

    @property
    def nominal_fps(self) -> float:
        return self._fps

    def _frame_time_ns(self) -> int:
        pts_ns = int(round(self._capture.get(cv2.CAP_PROP_POS_MSEC) * _NS_PER_MS))
        if self.container_times and pts_ns > self._last_pts_ns and (self._index == 0 or pts_ns > 0):
            self._last_pts_ns = pts_ns
            return pts_ns
        if self._fps <= 0:
            raise SourceError(f"video file {self.path}: no usable container timestamps and no frame rate")
        if self.container_times:
            log.warning("video file %s: container timestamps not increasing at frame %d; using the frame rate",
                        self.path, self._index)
            self.container_times = False
        return int(round(self._index * _NS_PER_S / self._fps))

    def read(self) -> Frame | None:
        if not self._capture.grab():
            return None
        t_ns = self._frame_time_ns()
        ok, image = self._capture.retrieve()
        if not ok:
            raise SourceError(f"video file {self.path}: frame {self._index} could not be decoded")
        frame = Frame(self._index, self.t0_ns + t_ns, (image.shape[1], image.shape[0]), _bgr_to_rgb(image))
        self._index += 1
        return frame

    def skip(self) -> int | None:
        """Demux and decode the next frame but convert no image (the costly colour conversions)."""
        if not self._capture.grab():
            return None
        t_ns = self._frame_time_ns()
        self._index += 1
        return self.t0_ns + t_ns

    def close(self) -> None:
        self._capture.release()


def buffer_time_to_clock_ns(buffer_ms: float, monotonic_now_ns: int, clock_now_ns: int,
                            max_age_ns: int = _NS_PER_S) -> int | None:
    """Convert a V4L2 buffer timestamp to the caller's clock.

    buffer_ms: OpenCV's CAP_PROP_POS_MSEC for a V4L2 capture = the kernel buffer timestamp
        (CLOCK_MONOTONIC, start of exposure or end of frame as the driver reports), milliseconds.
    monotonic_now_ns, clock_now_ns: `time.monotonic_ns()` and the target clock, read together.
    Returns the capture time on the target clock, or None when the value is not a plausible
    monotonic timestamp (0, in the future, or older than max_age_ns) so the caller falls back.
    """
    if not np.isfinite(buffer_ms) or buffer_ms <= 0:
        return None
    age_ns = monotonic_now_ns - int(round(buffer_ms * _NS_PER_MS))
    if age_ns < 0 or age_ns > max_age_ns:
        return None
    return clock_now_ns - age_ns


class WebcamSource(FrameSource):
    """A webcam through OpenCV's V4L2 backend.

    Capture time: the driver's buffer timestamp (taken by the kernel at exposure start or frame
    end, see `buffer_time_to_clock_ns`) converted to `clock_ns`; when the driver gives none, the
    clock right after `grab()` returns (later than exposure by about the transfer time).
    The driver keeps one buffer (CAP_PROP_BUFFERSIZE 1) so frames are never stale in the kernel.
    `driver_times` tells which of the two was used for the last frame.
    """

    live = True

    def __init__(self, device: int | str, *, width: int = 0, height: int = 0, fps: float = 0.0,
                 clock_ns: Callable[[], int] = time.time_ns):
        self.device = device
        self._capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not self._capture.isOpened():
            raise SourceError(f"webcam {device!r}: OpenCV V4L2 cannot open it (is /dev/video{device} present "
                              "and readable by this user?)")
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if width and height:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            self._capture.set(cv2.CAP_PROP_FPS, fps)
        self._fps = float(self._capture.get(cv2.CAP_PROP_FPS) or fps or 0.0)
        self._clock_ns = clock_ns
        self._index = 0
        self.driver_times = False

    @property
    def nominal_fps(self) -> float:
        return self._fps

    def read(self) -> Frame | None:
        if not self._capture.grab():
            raise SourceError(f"webcam {self.device!r}: grab failed (unplugged or busy)")
        monotonic_now, clock_now = time.monotonic_ns(), self._clock_ns()
        t_ns = buffer_time_to_clock_ns(self._capture.get(cv2.CAP_PROP_POS_MSEC), monotonic_now, clock_now)
        self.driver_times = t_ns is not None
        if t_ns is None:
            t_ns = clock_now
        ok, image = self._capture.retrieve()
        if not ok:
            raise SourceError(f"webcam {self.device!r}: frame {self._index} could not be decoded")
        frame = Frame(self._index, t_ns, (image.shape[1], image.shape[0]), _bgr_to_rgb(image))
        self._index += 1
        return frame

    def close(self) -> None:
        self._capture.release()


def read_timestamp_file(path: str | Path) -> list[tuple[int, str, int]]:
    """Read an image folder's timestamp file: CSV with a header naming `file` and `t_ns`
    (integer ns) or `t_s` (float seconds), optionally `frame` (index; else the row number).

    Returns [(frame index, file name, t_ns)] in file order. Raises SourceError naming the
    file, the row and the field on any defect (missing column, bad number, times not increasing).
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"timestamp file {path} does not exist")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if "file" not in columns or not ({"t_ns", "t_s"} & columns):
            raise SourceError(f"timestamp file {path}: header must name 'file' and 't_ns' or 't_s', "
                              f"got {sorted(columns)}")
        rows = []
        for row_number, row in enumerate(reader):
            line = row_number + 2
            try:
                index = int(row["frame"]) if "frame" in columns else row_number
                t_ns = int(row["t_ns"]) if "t_ns" in columns else int(round(float(row["t_s"]) * _NS_PER_S))
            except (TypeError, ValueError):
                raise SourceError(f"timestamp file {path}, line {line}: 'frame'/'t_ns'/'t_s' must be numbers, "
                                  f"got {dict(row)}") from None
            name = (row["file"] or "").strip()
            if not name or "/" in name or "\\" in name:
                raise SourceError(f"timestamp file {path}, line {line}: 'file' must be a plain file name, got {name!r}")
            if rows and (t_ns <= rows[-1][2] or index <= rows[-1][0]):
                raise SourceError(f"timestamp file {path}, line {line}: frame and time must increase "
                                  f"(previous frame {rows[-1][0]} at {rows[-1][2]} ns, got {index} at {t_ns} ns)")
            rows.append((index, name, t_ns))
    return rows


class ImageFolderSource(FrameSource):
    """Images listed, by exact file name, in a timestamp file (see `read_timestamp_file`).

    Every listed file must exist in `folder` (checked at open); nothing is globbed.
    t_capture_ns = t0_ns + the file's time.
    """

    def __init__(self, folder: str | Path, timestamps: str | Path | None = None, *, t0_ns: int = 0):
        self.folder = Path(folder)
        timestamps = Path(timestamps) if timestamps is not None else self.folder / "timestamps.csv"
        self._rows = read_timestamp_file(timestamps)
        missing = [name for _, name, _ in self._rows if not (self.folder / name).is_file()]
        if missing:
            raise SourceError(f"image folder {self.folder}: {len(missing)} file(s) listed in {timestamps} "
                              f"do not exist, first {missing[:3]}")
        self.t0_ns = int(t0_ns)
        self._next = 0
        span_ns = self._rows[-1][2] - self._rows[0][2] if len(self._rows) > 1 else 0
        self._fps = (len(self._rows) - 1) * _NS_PER_S / span_ns if span_ns > 0 else 0.0

    @property
    def nominal_fps(self) -> float:
        return self._fps

    def read(self) -> Frame | None:
        if self._next >= len(self._rows):
            return None
        index, name, t_ns = self._rows[self._next]
        self._next += 1
        image = cv2.imread(str(self.folder / name), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"image folder {self.folder}: {name} is not a readable image")
        return Frame(index, self.t0_ns + t_ns, (image.shape[1], image.shape[0]), _bgr_to_rgb(image))


class ReplaySource(FrameSource):
    """Recorded `kp2d/<camera>` messages of a take (streamer/recording.py), as keypoint frames.

    t_capture_ns = t0_ns + recorded capture time - first recorded capture time (so a replay
    can be re-timed to now); frame index and persons as recorded. `calibration`: the take's first
    `calib` message (RigCalibration) or None.
    """

    def __init__(self, path: str | Path, camera: str, *, t0_ns: int | None = None):
        from streamer.recording import read_take

        self.path = Path(path)
        self.camera = camera
        topic = f"kp2d/{camera}"
        self.calibration = next((msg for _, _, msg in read_take(self.path, topics=["calib"])), None)
        self._messages = iter(msg for _, _, msg in read_take(self.path, topics=[topic]))
        self.t0_ns = t0_ns
        self._first_ns: int | None = None
        self._count = 0
        self._fps = 0.0

    @property
    def nominal_fps(self) -> float:
        return self._fps

    def read(self) -> Frame | None:
        msg = next(self._messages, None)
        if msg is None:
            if self._count == 0:
                raise SourceError(f"take {self.path}: no kp2d/{self.camera} messages")
            return None
        if self._first_ns is None:
            self._first_ns = msg.t_capture_ns
        elif self._count == 1 and msg.t_capture_ns > self._first_ns:
            self._fps = _NS_PER_S / (msg.t_capture_ns - self._first_ns)
        self._count += 1
        t_ns = msg.t_capture_ns if self.t0_ns is None else self.t0_ns + msg.t_capture_ns - self._first_ns
        size = (int(msg.image_size[0]), int(msg.image_size[1]))
        return Frame(msg.frame_index, t_ns, size, None, list(msg.persons))


class SyntheticSource(FrameSource):
    """One camera of the synthetic stage (streamer/synthetic `SyntheticStage`): its observation model's persons.

    realtime=True (a live camera): frame i is delivered at its exposure time `stage.exposure_time_ns(i, camera)`
    (frame time + the camera's trigger phase) on `clock_ns` (the stage clock), never before it was exposed, so
    every process with the same stage settings produces the same frame at the same time; the first read
    starts at the current frame (the frames before it are not counted), and a reader that later falls behind
    skips to the current frame (counted in `skipped`), as a camera would. realtime=False: frames
    start, start+1, ... as fast as they are read, with their own times. Frames the stage drops are skipped
    (counted in `stage_drops`).
    """

    def __init__(self, stage, camera: str, *, realtime: bool = True, start: int = 0, stop: int | None = None,
                 clock_ns: Callable[[], int] = time.time_ns):
        if camera not in stage.camera_names:
            raise SourceError(f"synthetic stage has no camera {camera!r}; known: {', '.join(stage.camera_names)}")
        self.stage = stage
        self.camera = camera
        self.live = realtime
        self._clock_ns = clock_ns
        self._next = start
        self._stop = stop
        self._started = False  # a live source counts skipped frames only after its first read
        self.skipped = 0
        self.stage_drops = 0

    @property
    def nominal_fps(self) -> float:
        return self.stage.fps

    def _current_index(self) -> int:
        elapsed_ns = self._clock_ns() - self.stage.exposure_time_ns(0, self.camera)
        return max(0, int(elapsed_ns * self.stage.fps // _NS_PER_S))

    def next_due_ns(self) -> int | None:
        """Stage time (on `clock_ns`) at which the next `read()` returns without waiting: the exposure of the
        next frame, or of the current one when the reader is behind; None when not live or at the end."""
        if not self.live or (self._stop is not None and self._next >= self._stop):
            return None
        return self.stage.exposure_time_ns(max(self._next, self._current_index()), self.camera)

    def read(self) -> Frame | None:
        while self._stop is None or self._next < self._stop:
            index = self._next
            if self.live:
                current = self._current_index()
                if current > index:
                    if self._started:
                        self.skipped += current - index
                    index = current
                wait_ns = self.stage.exposure_time_ns(index, self.camera) - self._clock_ns()
                if wait_ns > 0:
                    time.sleep(wait_ns / _NS_PER_S)
            self._next = index + 1
            self._started = True
            msg = self.stage.observe(index, self.camera)
            if msg is None:
                self.stage_drops += 1
                continue
            size = (int(msg.image_size[0]), int(msg.image_size[1]))
            return Frame(msg.frame_index, msg.t_capture_ns, size, None, list(msg.persons))
        return None
