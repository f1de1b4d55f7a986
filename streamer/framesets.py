"""Frame-set assembly by capture time: approximate-time matching with a deadline for partial sets.

Pure state machine: no sockets and no clock inside. The caller passes `now_ns` (its own
receive clock, any monotonic ns clock) with every call; capture times are on the stage clock.

Algorithm (a partial-set variant of ROS message_filters ApproximateTime, see
`../shared/reference/ecosystem.md` §3.1):

- Every camera has a pending buffer sorted by capture time, bounded by time (`buffer_ns`,
  3-5 frame periods) and by count; what falls out is counted as `evicted`.
- The next set is seeded by the earliest pending frame (time `t0`). Its candidates are the
  pending frames with `t <= t0 + max_spread_ns`, in time order. The set is a prefix of that
  sequence holding at most one frame per camera, cut at the largest time gap to the frame
  that follows (single-linkage cut: the set is the tightest cluster around the seed, which
  gives the smallest spread once cameras run in steady state). Each frame is used once and
  sets never cross: a set always takes each member camera's oldest pending frame.
- The set is decided only when every live camera that could still contribute has a pending
  frame, or when the deadline (`deadline_ns` after the seed frame *arrived*) has passed; then
  it is emitted partial, from the cameras that arrived. A camera is not waited for when it has
  never been seen, is stale (no arrival for `stale_after_ns`), or its next frame cannot fall
  inside the window (its last frame, used or rejected, + 3/4 period is beyond it). A camera never
  seen is awaited only during the first `stale_after_ns` after the first frame arrived.
- A set never spans more than `max_spread_ns`. Sets with fewer than `min_cameras` frames
  are not emitted; their frames count as `unmatched`.
- A frame arriving after the set it belongs to was emitted (capture time not after the
  camera's last used frame, or nearer the last emitted set than the next one) is `late`
  and dropped. Gaps in a camera's `seq` count as `dropped`.
"""
from __future__ import annotations

import bisect
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["AssemblySettings", "Assembler", "CameraCounters", "Frame", "FrameSet", "PushOutcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AssemblySettings:
    """Timing of frame-set assembly; every duration in integer nanoseconds."""

    frame_period_ns: int = 33_333_333  # nominal camera frame period (30 fps)
    max_spread_ns: int = 20_000_000  # a set never spans more than this (latest - earliest capture)
    deadline_ns: int = 33_333_333  # after the seed frame arrived, wait at most this for the others
    buffer_ns: int = 133_333_333  # pending frames older than this behind a camera's newest are evicted
    stale_after_ns: int = 100_000_000  # a camera silent for this long is not waited for
    min_cameras: int = 2  # smaller sets are not emitted (their frames count as unmatched)

    def __post_init__(self) -> None:
        for name in ("frame_period_ns", "max_spread_ns", "deadline_ns", "buffer_ns", "stale_after_ns"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"AssemblySettings.{name}: expected a positive integer of ns, got {value!r}")
        if self.buffer_ns < 2 * self.frame_period_ns:
            raise ValueError(
                f"AssemblySettings.buffer_ns: expected at least two frame periods ({2 * self.frame_period_ns}), "
                f"got {self.buffer_ns}")
        if self.min_cameras < 1:
            raise ValueError(f"AssemblySettings.min_cameras: expected >= 1, got {self.min_cameras}")

    @classmethod
    def for_fps(cls, fps: float, *, max_spread_periods: float = 0.6, deadline_periods: float = 1.0,
                buffer_periods: float = 4.0, stale_after_periods: float = 3.0, min_cameras: int = 2
                ) -> "AssemblySettings":
        """Settings scaled to a camera rate; durations given in frame periods."""
        if not fps > 0:
            raise ValueError(f"AssemblySettings.for_fps: expected fps > 0, got {fps!r}")
        period = round(1e9 / fps)
        return cls(frame_period_ns=period, max_spread_ns=round(max_spread_periods * period),
                   deadline_ns=round(deadline_periods * period), buffer_ns=round(buffer_periods * period),
                   stale_after_ns=round(stale_after_periods * period), min_cameras=min_cameras)


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera frame waiting for (or used in) a set. `payload` is the caller's (e.g. a Keypoints2D)."""

    camera: str
    seq: int
    t_capture_ns: int  # stage clock
    t_arrival_ns: int  # caller's receive clock
    payload: Any = None


@dataclass(frozen=True, slots=True)
class FrameSet:
    """Frames of several cameras taken at about the same instant.

    frames: members in the assembler's camera order; missing: expected cameras without a frame.
    reason: "complete" (every camera), "resolved" (the missing ones cannot contribute: stale,
    never seen, or their next frame is outside the window), "deadline" (emitted partial at the
    deadline while a live camera was still awaited).
    """

    t_ns: int  # median capture time of the members, stage clock
    start_ns: int
    end_ns: int
    frames: tuple[Frame, ...]
    missing: tuple[str, ...]
    reason: str
    t_emit_ns: int  # caller's clock when the set was decided

    @property
    def spread_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(f.camera for f in self.frames)

    def frame(self, camera: str) -> Frame | None:
        for f in self.frames:
            if f.camera == camera:
                return f
        return None


class PushOutcome:
    """What `Assembler.push` did with a frame (stable labels, usable as counter names)."""

    PENDING = "pending"
    LATE = "late"
    DUPLICATE = "duplicate"
    UNKNOWN_CAMERA = "unknown_camera"


@dataclass(slots=True)
class CameraCounters:
    """Per-camera bookkeeping; counts are cumulative."""

    received: int = 0
    used: int = 0  # frames that went into an emitted set
    late: int = 0
    dropped: int = 0  # seq gaps
    duplicate: int = 0  # same seq again
    seq_resets: int = 0  # seq went backwards (camera restarted)
    evicted: int = 0
    unmatched: int = 0  # in a would-be set smaller than min_cameras
    offset_ns: float = 0.0  # running mean of (capture time - set time) over the camera's used frames
    abs_offset_ns: float = 0.0  # running mean of |capture time - set time|
    max_abs_offset_ns: int = 0
    period_ns: float = 0.0  # estimated frame period
    last_seq: int | None = None
    last_t_ns: int | None = None  # capture time of the last received frame
    last_arrival_ns: int | None = None
    last_used_t_ns: int | None = None  # capture time of the last frame taken off the buffer (used or unmatched)


_OFFSET_EWMA = 0.05
_NEXT_FRAME_MIN_PERIODS = 0.75  # a camera's next frame is at least this many periods after its last (jitter)
_PERIOD_EWMA = 0.1


class Assembler:
    """Per-camera buffers and the set-forming loop. Not thread-safe; one per sync node."""

    def __init__(self, cameras: list[str] | tuple[str, ...], settings: AssemblySettings = AssemblySettings()):
        if len(set(cameras)) != len(cameras) or not cameras:
            raise ValueError(f"Assembler: expected a non-empty list of distinct camera ids, got {list(cameras)!r}")
        self.settings = settings
        self.cameras: tuple[str, ...] = tuple(cameras)
        self._order = {c: i for i, c in enumerate(self.cameras)}
        self._pending: list[deque[Frame]] = [deque() for _ in self.cameras]
        self.counters: dict[str, CameraCounters] = {
            c: CameraCounters(period_ns=float(settings.frame_period_ns)) for c in self.cameras}
        self.unknown_camera = 0
        self.sets_emitted = 0
        self.sets_partial = 0
        self.last_set: FrameSet | None = None
        self._max_pending = max(2, settings.buffer_ns // settings.frame_period_ns + 2)
        self._t_first_push_ns: int | None = None

    def add_camera(self, camera: str) -> None:
        """Expect frames from one more camera from now on (no-op when already known)."""
        if camera in self._order:
            return
        self._order[camera] = len(self.cameras)
        self.cameras = self.cameras + (camera,)
        self._pending.append(deque())
        self.counters[camera] = CameraCounters(period_ns=float(self.settings.frame_period_ns))

    # ------------------------------------------------------------------ input

    def push(self, camera: str, seq: int, t_capture_ns: int, now_ns: int, payload: Any = None) -> str:
        """Offer one frame; returns a `PushOutcome` label. Call `poll` afterwards."""
        index = self._order.get(camera)
        if index is None:
            self.unknown_camera += 1
            return PushOutcome.UNKNOWN_CAMERA
        cc = self.counters[camera]
        cc.received += 1
        if self._t_first_push_ns is None:
            self._t_first_push_ns = now_ns
        if cc.last_seq is not None:
            step = seq - cc.last_seq
            if step == 0:
                cc.duplicate += 1
                return PushOutcome.DUPLICATE
            if step < 0:
                cc.seq_resets += 1
                log.info("camera %s: seq went back from %d to %d (restart?)", camera, cc.last_seq, seq)
            else:
                cc.dropped += step - 1
                if cc.last_t_ns is not None and step <= 4 and t_capture_ns > cc.last_t_ns:
                    sample = (t_capture_ns - cc.last_t_ns) / step
                    if 0.5 * self.settings.frame_period_ns < sample < 2.0 * self.settings.frame_period_ns:
                        cc.period_ns += _PERIOD_EWMA * (sample - cc.period_ns)
        cc.last_seq = seq
        cc.last_t_ns = t_capture_ns
        cc.last_arrival_ns = now_ns
        if self._is_late(cc, t_capture_ns):
            cc.late += 1
            return PushOutcome.LATE
        frame = Frame(camera, seq, t_capture_ns, now_ns, payload)
        pending = self._pending[index]
        if not pending or pending[-1].t_capture_ns < t_capture_ns:
            pending.append(frame)
        else:  # out of order within one camera: keep the buffer sorted
            times = [f.t_capture_ns for f in pending]
            pending.insert(bisect.bisect_right(times, t_capture_ns), frame)
        newest = pending[-1].t_capture_ns
        while pending and (pending[0].t_capture_ns < newest - self.settings.buffer_ns
                           or len(pending) > self._max_pending):
            evicted = pending.popleft()
            cc.evicted += 1
            cc.last_used_t_ns = max(cc.last_used_t_ns or evicted.t_capture_ns, evicted.t_capture_ns)
        return PushOutcome.PENDING

    def note_rejected(self, camera: str, seq: int, t_capture_ns: int, now_ns: int) -> None:
        """A frame of `camera` arrived but was rejected upstream of the assembler (e.g. calibration
        mismatch): remember it so it is neither counted as dropped nor waited for."""
        cc = self.counters.get(camera)
        if cc is None:
            return
        if cc.last_seq is None or seq > cc.last_seq:
            if cc.last_seq is not None:
                cc.dropped += seq - cc.last_seq - 1
            cc.last_seq = seq
        cc.last_t_ns = t_capture_ns if cc.last_t_ns is None else max(cc.last_t_ns, t_capture_ns)
        cc.last_arrival_ns = now_ns

    def _is_late(self, cc: CameraCounters, t_capture_ns: int) -> bool:
        if cc.last_used_t_ns is not None and t_capture_ns <= cc.last_used_t_ns:
            return True
        return self.last_set is not None and t_capture_ns < self.last_set.t_ns + cc.period_ns / 2

    # ----------------------------------------------------------------- output

    def poll(self, now_ns: int) -> list[FrameSet]:
        """Every set that can be decided at `now_ns`, oldest first."""
        out: list[FrameSet] = []
        while True:
            decided = self._decide_one(now_ns)
            if decided is None:
                return out
            if decided is not _DISCARDED:
                out.append(decided)

    def next_deadline_ns(self) -> int | None:
        """When (caller's clock) the oldest pending set times out; None when nothing is pending."""
        seed = self._seed()
        return None if seed is None else seed.t_arrival_ns + self.settings.deadline_ns

    def pending_count(self) -> int:
        return sum(len(p) for p in self._pending)

    def flush(self, now_ns: int) -> list[FrameSet]:
        """Decide everything pending as if every deadline had passed (end of a take)."""
        out: list[FrameSet] = []
        while self._seed() is not None:
            out += self.poll(max(now_ns, self._seed().t_arrival_ns + self.settings.deadline_ns))
        return out

    def _seed(self) -> Frame | None:
        best = None
        for pending in self._pending:
            if pending and (best is None or pending[0].t_capture_ns < best.t_capture_ns):
                best = pending[0]
        return best

    def _awaited(self, index: int, window_end_ns: int, now_ns: int) -> bool:
        """Whether a camera with nothing pending could still deliver a frame inside the window."""
        cc = self.counters[self.cameras[index]]
        if cc.last_arrival_ns is None:  # never seen: awaited while the assembler itself is young
            return self._t_first_push_ns is not None and now_ns - self._t_first_push_ns <= self.settings.stale_after_ns
        if now_ns - cc.last_arrival_ns > self.settings.stale_after_ns:
            return False
        return cc.last_t_ns + _NEXT_FRAME_MIN_PERIODS * cc.period_ns <= window_end_ns

    def _decide_one(self, now_ns: int):
        s = self.settings
        seed = self._seed()
        if seed is None:
            return None
        t0 = seed.t_capture_ns
        window_end = t0 + s.max_spread_ns
        deadline_passed = now_ns - seed.t_arrival_ns >= s.deadline_ns
        awaited = [i for i, p in enumerate(self._pending) if not p and self._awaited(i, window_end, now_ns)]
        if awaited and not deadline_passed:
            return None

        # Candidates inside the window, time order; the first frame beyond it bounds the last gap.
        candidates: list[tuple[int, int, Frame]] = []
        next_beyond = None
        for i, pending in enumerate(self._pending):
            for f in pending:
                if f.t_capture_ns > window_end:
                    if next_beyond is None or f.t_capture_ns < next_beyond:
                        next_beyond = f.t_capture_ns
                    break
                candidates.append((f.t_capture_ns, i, f))
        candidates.sort(key=lambda c: (c[0], c[1]))

        best_end, best_gap = 0, -1.0
        in_prefix: set[int] = set()
        predicted_next = float("inf")  # earliest next frame of a camera already in the prefix
        for j, (t, i, _) in enumerate(candidates):
            if i in in_prefix:
                break
            in_prefix.add(i)
            predicted_next = min(predicted_next, t + self.counters[self.cameras[i]].period_ns)
            if j + 1 < len(candidates):
                following = candidates[j + 1][0]
            else:
                following = min(predicted_next, next_beyond if next_beyond is not None else float("inf"))
            gap = following - t
            if gap >= best_gap:
                best_end, best_gap = j + 1, gap
        members = candidates[:best_end]

        frames = []
        for _, i, f in sorted(members, key=lambda c: c[1]):
            popped = self._pending[i].popleft()
            assert popped is f, "a set must take each member camera's oldest pending frame"
            self.counters[f.camera].last_used_t_ns = f.t_capture_ns
            frames.append(f)
        if len(frames) < s.min_cameras:
            for f in frames:
                self.counters[f.camera].unmatched += 1
            return _DISCARDED

        times = sorted(f.t_capture_ns for f in frames)
        n = len(times)
        t_set = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) // 2
        present = {f.camera for f in frames}
        missing = tuple(c for c in self.cameras if c not in present)
        if not missing:
            reason = "complete"
        elif awaited:
            reason = "deadline"
        else:
            reason = "resolved"
        frame_set = FrameSet(t_ns=t_set, start_ns=times[0], end_ns=times[-1], frames=tuple(frames),
                             missing=missing, reason=reason, t_emit_ns=now_ns)
        for f in frames:
            cc = self.counters[f.camera]
            cc.used += 1
            offset = f.t_capture_ns - t_set
            weight = max(_OFFSET_EWMA, 1.0 / cc.used)
            cc.offset_ns += weight * (offset - cc.offset_ns)
            cc.abs_offset_ns += weight * (abs(offset) - cc.abs_offset_ns)
            cc.max_abs_offset_ns = max(cc.max_abs_offset_ns, abs(offset))
        self.sets_emitted += 1
        self.sets_partial += bool(missing)
        self.last_set = frame_set
        return frame_set


_DISCARDED = object()
