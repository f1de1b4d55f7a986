"""Latest-frame grabber: a thread reads a source continuously and keeps only the newest frame.

Pattern: a one-slot mailbox. The grabber thread overwrites the slot with every new frame; a
frame that is overwritten before the consumer took it is a counted drop. The consumer
(`latest()`) takes whatever is newest. When the estimator is slower than the camera, stale
frames are dropped and counted, never queued: the backlog is at most one frame, always.

`pace=True` makes a file source behave like a camera: frames are released at their own
capture times (relative to the first), on `time.monotonic`; when decoding falls behind real time,
frames whose successor is already due are skipped without decoding an image (counted as drops).

Example::

    with LatestFrameGrabber(VideoFileSource(path), pace=True) as grabber:
        while (frame := grabber.latest(timeout_s=1.0)) is not None:
            persons = estimate(frame)
    grabber.counts  # {"grabbed": 100, "delivered": 34, "dropped": 66}
"""
from __future__ import annotations

import logging
import threading
import time

from streamer.capture.sources import Frame, FrameSource

__all__ = ["LatestFrameGrabber", "SequentialReader"]

log = logging.getLogger(__name__)


class LatestFrameGrabber:
    """Read `source` on a background thread, keep only its newest frame (see module docstring).

    grabbed / delivered / dropped: cumulative counts; grabbed == delivered + dropped + backlog.
    `error`: the exception that stopped the source, if any (the stream then ends).
    `last_wait_ns`: how long the frame last delivered waited in the slot (its queueing delay, bounded by
    one consumer iteration). With pace: `release_monotonic_ns(frame)` is when a frame was due (monotonic
    clock); a source that decodes slower than real time releases frames later than that (not a queue).
    """

    def __init__(self, source: FrameSource, *, pace: bool = False):
        self.source = source
        self.pace = pace
        self.grabbed = 0
        self.delivered = 0
        self.dropped = 0
        self.error: BaseException | None = None
        self._pace_origin_ns: int | None = None  # monotonic time at which the first frame was due
        self._first_t_ns: int | None = None
        self._slot: Frame | None = None
        self._slot_put_ns = 0
        self.last_wait_ns = 0
        self._ended = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="frame-grabber", daemon=True)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> LatestFrameGrabber:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close the source."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.source.close()

    def __enter__(self) -> LatestFrameGrabber:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def ended(self) -> bool:
        """True once the source has ended and its last frame has been taken."""
        with self._cond:
            return self._ended and self._slot is None

    @property
    def backlog(self) -> int:
        """Frames waiting for the consumer: 0 or 1 (the node's queue depth)."""
        with self._cond:
            return int(self._slot is not None)

    @property
    def counts(self) -> dict[str, int]:
        with self._cond:
            return {"grabbed": self.grabbed, "delivered": self.delivered, "dropped": self.dropped}

    # ------------------------------------------------------------ consumer side

    def latest(self, timeout_s: float | None = None) -> Frame | None:
        """The newest frame not yet taken; waits up to timeout_s for one. None on timeout or end."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._slot is None and not self._ended:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            if frame is not None:
                self.delivered += 1
                self.last_wait_ns = time.monotonic_ns() - self._slot_put_ns
            return frame

    # ------------------------------------------------------------ grabber thread

    def release_monotonic_ns(self, frame: Frame) -> int:
        """Monotonic time at which a paced frame was due (its capture time relative to the first frame's)."""
        return self._release_ns(frame.t_capture_ns)

    def _release_ns(self, t_capture_ns: int) -> int:
        if self._pace_origin_ns is None or self._first_t_ns is None:
            raise ValueError("release_monotonic_ns: the grabber is not pacing or has not read a frame yet")
        return self._pace_origin_ns + t_capture_ns - self._first_t_ns

    def _catch_up(self, last_t_ns: int) -> bool:
        """Paced file source behind real time: skip (without decoding to an image) every frame whose successor
        is already due, as a camera would have overwritten it; skipped frames count as grabbed and dropped.
        Returns False at the end of the stream."""
        period_ns = int(1e9 / self.source.nominal_fps) if self.source.nominal_fps > 0 else 0
        if period_ns <= 0:
            return True
        while time.monotonic_ns() > self._release_ns(last_t_ns) + 2 * period_ns and not self._stop.is_set():
            skipped_t_ns = self.source.skip()
            if skipped_t_ns is None:
                return False
            with self._cond:
                self.grabbed += 1
                self.dropped += 1
            last_t_ns = skipped_t_ns
        return True

    def _run(self) -> None:
        last_t_ns: int | None = None
        try:
            while not self._stop.is_set():
                if self.pace and last_t_ns is not None and not self._catch_up(last_t_ns):
                    break
                frame = self.source.read()
                if frame is None:
                    break
                if self.pace:
                    if self._first_t_ns is None:
                        self._first_t_ns, self._pace_origin_ns = frame.t_capture_ns, time.monotonic_ns()
                    last_t_ns = frame.t_capture_ns
                    wait_s = (self.release_monotonic_ns(frame) - time.monotonic_ns()) / 1e9
                    if wait_s > 0 and self._stop.wait(wait_s):
                        break
                with self._cond:
                    self.grabbed += 1
                    if self._slot is not None:
                        self.dropped += 1
                    self._slot = frame
                    self._slot_put_ns = time.monotonic_ns()
                    self._cond.notify_all()
        except Exception as exc:  # a dead camera ends the stream; the node reports it
            log.error("frame source %r stopped: %s", self.source, exc)
            self.error = exc
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()


class SequentialReader:
    """Offline counterpart of `LatestFrameGrabber` (same consumer interface, no thread): every frame of a
    file source, in order, read on demand, never dropped. For replays that must process every frame."""

    def __init__(self, source: FrameSource):
        self.source = source
        self.grabbed = 0
        self.delivered = 0
        self.dropped = 0
        self.backlog = 0
        self.error: BaseException | None = None
        self.ended = False

    def start(self) -> SequentialReader:
        return self

    def stop(self) -> None:
        self.source.close()

    def __enter__(self) -> SequentialReader:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def counts(self) -> dict[str, int]:
        return {"grabbed": self.grabbed, "delivered": self.delivered, "dropped": self.dropped}

    def latest(self, timeout_s: float | None = None) -> Frame | None:
        """The next frame (timeout_s is ignored: reading a file does not wait); None at the end."""
        if self.ended:
            return None
        try:
            frame = self.source.read()
        except Exception as exc:
            log.error("frame source %r stopped: %s", self.source, exc)
            self.error, frame = exc, None
        if frame is None:
            self.ended = True
            return None
        self.grabbed += 1
        self.delivered += 1
        return frame
