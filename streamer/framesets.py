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
  that follows (received, or predicted for a camera with nothing pending, so the cut does not
  depend on what has arrived yet; single-linkage cut: the set is the tightest cluster around the
  seed, which gives the smallest spread once cameras run in steady state). Except: the whole
  sequence (every camera with a frame in the window) stays one set when the gap after it is at least
  `whole_set_gap_share` of the largest gap, so capture jitter cannot flip the cut between two about
  equal gaps (phases spread evenly over the period) and split a period's frames into two partial sets
  (simulated rigs: 1.00 sets per period instead of up to 1.4). With a warm timing model a frame
  stands in the cut at its camera's capture-line time (`FrameClock.line_time_ns`, the frame's time
  without capture jitter; awaited frames at their predicted line time), so the cut depends on the
  cameras' phases, not on this frame's jitter, and is known without waiting for a frame it would
  leave out. Each frame is used once and
  sets never cross: a set always takes each member camera's oldest pending frame.
- The set is decided only when every live camera that could still contribute has a pending
  frame, or when the deadline (`deadline_ns` after the seed frame *arrived*) has passed; then
  it is emitted partial, from the cameras that arrived. A camera is not waited for when it has
  never been seen, is stale (no arrival for `stale_after_ns` *and* its newest capture time more
  than `stale_after_ns` before the seed's: a stall of the caller, which queues every camera's
  frames, makes none stale), or its next frame cannot fall inside the window. A camera never
  seen is awaited only during the first `stale_after_ns` after the first frame arrived.
- Which frame of a camera is next, and when it arrives, comes from the camera's timing model
  (`streamer.frame_timing.FrameClock`: period and phase tracked over its capture times, capture
  jitter, recent arrival latency; not learnt from frames the caller took after being busy for more
  than `QUEUED_AFTER_BUSY_NS`, which may have queued behind it) once that has seen a few frames
  (`predict_timing`). The next
  frame is expected at its predicted capture time, give or take `margin` = 2 jitters +
  `timing_margin_ns`. It is awaited only when it can fall inside the window, would not be late
  on arrival, and would arrive before the deadline at its camera's median latency;
  and only until its predicted capture time + the camera's recent largest arrival latency +
  `margin` + half the camera's recent latency range (at least 1 ms) + the seed frame's own delay
  (its latency beyond its camera's smallest: a stalled caller or a network hiccup delays every
  camera alike). A frame not there by then is overdue (dropped or unusually late): the camera's
  following frame is considered instead, and a set decided without it is labelled "overdue".
  A set is also decided at once when every awaited frame, at its predicted time give or take
  its margin, would fall after the set's cut (it would open the next set; such a frame is not
  counted late when it comes).
  Without a warm model (first frames, or `predict_timing=False`) the rule is fixed: awaited when
  its last frame + 3/4 period is inside the window, until the deadline. The deadline bounds
  every wait.
- A set never spans more than `max_spread_ns`. Sets with fewer than `min_cameras` frames
  are not emitted; their frames count as `unmatched`.
- A frame arriving after the set it belongs to was emitted (capture time not after the
  camera's last used frame, or inside the last emitted set's spread window and nearer that set
  than the next one) is `late` and dropped. Gaps in a camera's `seq` count as `dropped`.
"""
from __future__ import annotations

import bisect
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from streamer.frame_timing import FrameClock

__all__ = ["DEFAULT_MAX_SPREAD_PERIODS", "QUEUED_AFTER_BUSY_NS", "AssemblySettings", "Assembler", "CameraCounters",
           "Frame", "FrameSet", "PushOutcome"]

log = logging.getLogger(__name__)

# free-running cameras have trigger phases anywhere in a period: a cap below ~1 period splits a period's frames
DEFAULT_MAX_SPREAD_PERIODS = 0.9
QUEUED_AFTER_BUSY_NS = 2_000_000  # a frame taken after the caller was busy this long may have queued: no latency


@dataclass(frozen=True, slots=True)
class AssemblySettings:
    """Timing of frame-set assembly; every duration in integer nanoseconds."""

    frame_period_ns: int = 33_333_333  # nominal camera frame period (30 fps)
    max_spread_ns: int = 20_000_000  # a set never spans more than this (latest - earliest capture)
    deadline_ns: int = 33_333_333  # after the seed frame arrived, wait at most this for the others
    buffer_ns: int = 133_333_333  # pending frames older than this behind a camera's newest are evicted
    stale_after_ns: int = 100_000_000  # a camera silent (and behind) for this long is not waited for
    min_cameras: int = 2  # smaller sets are not emitted (their frames count as unmatched)
    predict_timing: bool = True  # wait by each camera's timing model (False: fixed 3/4-period rule + deadline)
    timing_margin_ns: int = 250_000  # added to 2 capture jitters around a predicted capture or arrival
    # the longest one-frame-per-camera prefix is kept whole when the gap after it is at least this share of the
    # largest gap (1.0: the plain largest-gap cut)
    whole_set_gap_share: float = 0.5

    def __post_init__(self) -> None:
        for name in ("frame_period_ns", "max_spread_ns", "deadline_ns", "buffer_ns", "stale_after_ns",
                     "timing_margin_ns"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"AssemblySettings.{name}: expected a positive integer of ns, got {value!r}")
        if self.buffer_ns < 2 * self.frame_period_ns:
            raise ValueError(
                f"AssemblySettings.buffer_ns: expected at least two frame periods ({2 * self.frame_period_ns}), "
                f"got {self.buffer_ns}")
        if not 0.0 < self.whole_set_gap_share <= 1.0:
            raise ValueError("AssemblySettings.whole_set_gap_share: expected a share in (0, 1], "
                             f"got {self.whole_set_gap_share!r}")
        if self.min_cameras < 1:
            raise ValueError(f"AssemblySettings.min_cameras: expected >= 1, got {self.min_cameras}")

    @classmethod
    def for_fps(cls, fps: float, *, max_spread_periods: float = DEFAULT_MAX_SPREAD_PERIODS,
                deadline_periods: float = 1.0, buffer_periods: float = 4.0, stale_after_periods: float = 3.0,
                min_cameras: int = 2, predict_timing: bool = True) -> "AssemblySettings":
        """Settings scaled to a camera rate; durations given in frame periods."""
        if not fps > 0:
            raise ValueError(f"AssemblySettings.for_fps: expected fps > 0, got {fps!r}")
        period = round(1e9 / fps)
        return cls(frame_period_ns=period, max_spread_ns=round(max_spread_periods * period),
                   deadline_ns=round(deadline_periods * period), buffer_ns=round(buffer_periods * period),
                   stale_after_ns=round(stale_after_periods * period), min_cameras=min_cameras,
                   predict_timing=predict_timing)


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
    never seen, or their next frame is outside the window), "overdue" (a missing camera's frame
    predicted inside the window was not there by its predicted arrival), "deadline" (emitted
    partial at the deadline while a live camera was still awaited).
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
    period_ns: float = 0.0  # estimated frame period (the camera's timing model)
    last_seq: int | None = None
    last_t_ns: int | None = None  # capture time of the last received frame
    last_arrival_ns: int | None = None
    last_used_t_ns: int | None = None  # capture time of the last frame taken off the buffer (used or unmatched)


_OFFSET_EWMA = 0.05
_NEXT_FRAME_MIN_PERIODS = 0.75  # without a timing model: the next frame is at least this many periods after the last
_MARGIN_JITTERS = 2.0  # predicted times are trusted to this many capture jitters (+ timing_margin_ns)
_ARRIVAL_MARGIN_MIN_NS = 1_000_000  # a due frame is given at least this long beyond its recent latest arrival


@dataclass(frozen=True, slots=True)
class _Awaited:
    """A camera waited for: until when (caller's clock) and, with a timing model, the capture time
    predicted for the frame awaited, give or take `margin_ns` (stage clock)."""

    index: int
    until_ns: int
    expected_ns: float | None = None
    margin_ns: float = 0.0


class Assembler:
    """Per-camera buffers and the set-forming loop. Not thread-safe; one per sync node."""

    def __init__(self, cameras: list[str] | tuple[str, ...], settings: AssemblySettings = AssemblySettings()):
        if len(set(cameras)) != len(cameras) or not cameras:
            raise ValueError(f"Assembler: expected a non-empty list of distinct camera ids, got {list(cameras)!r}")
        self.settings = settings
        self.cameras: tuple[str, ...] = tuple(cameras)
        self._order = {c: i for i, c in enumerate(self.cameras)}
        self._pending: list[deque[Frame]] = [deque() for _ in self.cameras]
        self._clocks: list[FrameClock] = [FrameClock(settings.frame_period_ns) for _ in self.cameras]
        self.counters: dict[str, CameraCounters] = {
            c: CameraCounters(period_ns=float(settings.frame_period_ns)) for c in self.cameras}
        self.unknown_camera = 0
        self.sets_emitted = 0
        self.sets_partial = 0
        self.last_set: FrameSet | None = None
        self._max_pending = max(2, settings.buffer_ns // settings.frame_period_ns + 2)
        self._t_first_push_ns: int | None = None
        self._now_ns: int | None = None  # latest caller's clock seen in push / poll
        # cameras whose frame was predicted after the last set's cut when it was decided without
        # waiting for them: from which capture time their frames belong to a later set (not late)
        self._left_for_later: dict[int, float] = {}

    def add_camera(self, camera: str) -> None:
        """Expect frames from one more camera from now on (no-op when already known)."""
        if camera in self._order:
            return
        self._order[camera] = len(self.cameras)
        self.cameras = self.cameras + (camera,)
        self._pending.append(deque())
        self._clocks.append(FrameClock(self.settings.frame_period_ns))
        self.counters[camera] = CameraCounters(period_ns=float(self.settings.frame_period_ns))

    # ------------------------------------------------------------------ input

    def push(self, camera: str, seq: int, t_capture_ns: int, now_ns: int, payload: Any = None, *,
             caller_busy_ns: int = 0) -> str:
        """Offer one frame; returns a `PushOutcome` label. Call `poll` afterwards.

        caller_busy_ns: how long the caller had been busy (not waiting for input) when it took this
        frame. Beyond `QUEUED_AFTER_BUSY_NS` the frame may have queued behind the caller's own work,
        so its arrival latency is not learnt (a stall of the caller would otherwise pass for slow
        cameras and lengthen every wait for the next `LATENCY_FRAMES` frames)."""
        index = self._order.get(camera)
        if index is None:
            self.unknown_camera += 1
            return PushOutcome.UNKNOWN_CAMERA
        cc = self.counters[camera]
        cc.received += 1
        if self._t_first_push_ns is None:
            self._t_first_push_ns = now_ns
        self._now_ns = now_ns if self._now_ns is None else max(self._now_ns, now_ns)
        if cc.last_seq is not None:
            step = seq - cc.last_seq
            if step == 0:
                cc.duplicate += 1
                return PushOutcome.DUPLICATE
            if step < 0:
                cc.seq_resets += 1
                self._clocks[index].restart()
                log.info("camera %s: seq went back from %d to %d (restart?)", camera, cc.last_seq, seq)
            else:
                cc.dropped += step - 1
        self._observe_timing(index, t_capture_ns, now_ns if caller_busy_ns <= QUEUED_AFTER_BUSY_NS else None)
        cc.last_seq = seq
        cc.last_t_ns = t_capture_ns
        cc.last_arrival_ns = now_ns
        if self._is_late(index, t_capture_ns):
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
        self._observe_timing(self._order[camera], t_capture_ns, now_ns)
        if cc.last_seq is None or seq > cc.last_seq:
            if cc.last_seq is not None:
                cc.dropped += seq - cc.last_seq - 1
            cc.last_seq = seq
        cc.last_t_ns = t_capture_ns if cc.last_t_ns is None else max(cc.last_t_ns, t_capture_ns)
        cc.last_arrival_ns = now_ns

    def _observe_timing(self, index: int, t_capture_ns: int, now_ns: int | None) -> None:
        """Learn the camera's timing from one frame; its arrival latency too unless `now_ns` is None."""
        clock = self._clocks[index]
        clock.observe(t_capture_ns, now_ns)
        self.counters[self.cameras[index]].period_ns = clock.period_ns

    def _is_late(self, index: int, t_capture_ns: float) -> bool:
        cc = self.counters[self.cameras[index]]
        if cc.last_used_t_ns is not None and t_capture_ns <= cc.last_used_t_ns:
            return True
        last = self.last_set
        if last is None or index in self._left_for_later and t_capture_ns >= self._left_for_later[index]:
            return False
        return t_capture_ns < last.t_ns + cc.period_ns / 2 and t_capture_ns <= last.start_ns + self.settings.max_spread_ns

    # ----------------------------------------------------------------- output

    def poll(self, now_ns: int) -> list[FrameSet]:
        """Every set that can be decided at `now_ns`, oldest first."""
        self._now_ns = now_ns if self._now_ns is None else max(self._now_ns, now_ns)
        out: list[FrameSet] = []
        while True:
            decided = self._decide_one(now_ns)
            if decided is None:
                return out
            if decided is not _DISCARDED:
                out.append(decided)

    def next_deadline_ns(self) -> int | None:
        """When (caller's clock) the oldest pending set is decided at the latest without another
        arrival (its deadline, or earlier when a camera it waits for becomes overdue or stale);
        None when nothing is pending."""
        seed = self._seed()
        if seed is None:
            return None
        deadline = seed.t_arrival_ns + self.settings.deadline_ns
        awaited, _, _ = self._awaited(seed, max(self._now_ns, seed.t_arrival_ns), deadline)
        return min([deadline, *(a.until_ns for a in awaited)])

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

    def _awaited(self, seed: Frame, now_ns: int, deadline_ns: int) -> tuple[list[_Awaited], bool, float]:
        """For the set seeded by `seed`: the awaited cameras (until when, caller's clock, and their
        predicted frame), whether a camera's frame predicted inside the window is overdue, and the
        earliest frame predicted beyond the window of a camera with nothing pending."""
        window_end = seed.t_capture_ns + self.settings.max_spread_ns
        seed_clock = self._clocks[self._order[seed.camera]]
        # how much later than its camera's best recent latency the seed came: a delay of delivery
        # (the caller stalled, the network hiccuped) that the frames awaited share
        delay_ns = 0 if seed_clock.latency_low_ns is None else max(
            0, seed.t_arrival_ns - seed.t_capture_ns - seed_clock.latency_low_ns)
        awaited, overdue, beyond = [], False, math.inf
        for i, pending in enumerate(self._pending):
            if not pending:
                waiting, camera_overdue, camera_beyond = self._awaited_until(
                    i, seed.t_capture_ns, window_end, now_ns, deadline_ns, delay_ns)
                overdue |= camera_overdue
                beyond = min(beyond, camera_beyond)
                if waiting is not None:
                    awaited.append(waiting)
        return awaited, overdue, beyond

    def _awaited_until(self, index: int, window_start_ns: int, window_end_ns: int, now_ns: int,
                       deadline_ns: int, delay_ns: int) -> tuple[_Awaited | None, bool, float]:
        """Whether a camera with nothing pending could still deliver a frame inside the window:
        (until when it is awaited, caller's clock, capped at the deadline, and the frame predicted;
        or None when it is not), whether a frame of it predicted inside the window is overdue, and
        its next frame predicted beyond the window (inf when unknown). Frames predicted to be late
        on arrival (belonging to the last set emitted) or to arrive after the deadline are not awaited."""
        s = self.settings
        cc = self.counters[self.cameras[index]]
        if cc.last_arrival_ns is None:  # never seen: awaited while the assembler itself is young
            if self._t_first_push_ns is None or now_ns - self._t_first_push_ns > s.stale_after_ns:
                return None, False, math.inf
            return _Awaited(index, min(deadline_ns, self._t_first_push_ns + s.stale_after_ns + 1)), False, math.inf
        behind = window_start_ns - cc.last_t_ns > s.stale_after_ns
        if behind and now_ns - cc.last_arrival_ns > s.stale_after_ns:
            return None, False, math.inf
        stale_at = min(deadline_ns, cc.last_arrival_ns + s.stale_after_ns + 1) if behind else deadline_ns
        clock = self._clocks[index]
        if not (s.predict_timing and clock.warm):
            # a camera whose last frame is inside the window had its frame for this set (rejected or used)
            next_at_least = cc.last_t_ns + _NEXT_FRAME_MIN_PERIODS * cc.period_ns
            if cc.last_t_ns < window_start_ns and next_at_least <= window_end_ns:
                return _Awaited(index, stale_at), False, math.inf
            return None, False, math.inf
        margin = _MARGIN_JITTERS * clock.jitter_ns + s.timing_margin_ns
        period = clock.period_ns
        expected = clock.next_capture_ns()
        # frames before the last set's first frame would be late; earlier than two periods before the seed, long overdue
        earliest = max(window_start_ns - 2 * period, self.last_set.start_ns if self.last_set else -math.inf) - margin
        if expected < earliest:
            expected += math.ceil((earliest - expected) / period) * period
        overdue = False
        while expected - margin <= window_end_ns:
            if self._is_late(index, expected + margin):  # it would belong to the last set emitted: no use
                expected += period
                continue
            if expected + clock.latency_median_ns > deadline_ns:
                return None, overdue, math.inf  # more likely than not after the deadline: waiting would not get it
            arrives_by = expected + clock.latency_high_ns + margin + delay_ns + max(
                _ARRIVAL_MARGIN_MIN_NS, (clock.latency_high_ns - clock.latency_low_ns) / 2)
            if now_ns < arrives_by:
                return _Awaited(index, min(stale_at, math.ceil(arrives_by)), expected, margin), overdue, math.inf
            overdue |= expected + margin >= window_start_ns
            expected += period
        return None, overdue, expected

    def _cut_time(self, index: int, t_capture_ns: int) -> float:
        """Where a frame stands for the cut: its capture line's time (`FrameClock.line_time_ns`: the
        frame's time without capture jitter) with timing models, else its capture time. Cuts on the lines
        depend on the cameras' phases only, so jitter cannot flip them between two about equal gaps."""
        clock = self._clocks[index]
        return clock.line_time_ns(t_capture_ns) if self.settings.predict_timing else t_capture_ns

    def _cut(self, candidates: list[tuple[float, int, Frame | None]], next_beyond: float) -> int:
        """How many of the time-ordered candidates (capture time, camera index, frame) form the set:
        the prefix with one frame per camera cut at the largest gap to what follows, except that the
        longest such prefix (every camera that has a frame in the window) is kept whole when the gap
        after it is at least `whole_set_gap_share` of that largest gap: with phases spread evenly over
        the period two gaps are about equal, capture jitter would otherwise flip the cut between them
        and split each period's frames into two partial sets; a whole set that ends right before the
        next frames (a poor grouping of the period) still gives way to the largest gap."""
        best_end, best_gap = 0, -1.0
        end, gap = 0, -1.0
        in_prefix: set[int] = set()
        predicted_next = math.inf  # earliest next frame of a camera already in the prefix
        for j, (t, i, _) in enumerate(candidates):
            if i in in_prefix:
                break
            in_prefix.add(i)
            predicted_next = min(predicted_next, t + self.counters[self.cameras[i]].period_ns)
            following = candidates[j + 1][0] if j + 1 < len(candidates) else min(predicted_next, next_beyond)
            end, gap = j + 1, following - t
            if gap >= best_gap:
                best_end, best_gap = end, gap
        return end if gap >= self.settings.whole_set_gap_share * best_gap else best_end

    def _cut_before_awaited(self, candidates, next_beyond: float, window_end_ns: int,
                            awaited: list[_Awaited]) -> list | None:
        """The set's members if the awaited cameras' frames, at their predicted capture times give or
        take their margins, would all fall after the cut (so waiting for them changes nothing);
        else None. Each awaited frame takes part in the cut as a placeholder, so the set is the one
        it would be with them."""
        members = None
        for shift in (-1.0, 0.0, 1.0):  # whether it falls inside the window depends on its capture jitter ...
            trial, beyond = list(candidates), next_beyond
            for a in awaited:
                if a.expected_ns + shift * a.margin_ns > window_end_ns:
                    beyond = min(beyond, a.expected_ns)
                else:  # ... where it cuts, not: cuts are made on the cameras' capture lines
                    trial.append((a.expected_ns, a.index, None))
            trial.sort(key=lambda c: (c[0], c[1]))
            prefix = trial[:self._cut(trial, beyond)]
            if any(f is None for _, _, f in prefix) or (members is not None and prefix != members):
                return None
            members = prefix
        return members

    def _decide_one(self, now_ns: int):
        s = self.settings
        seed = self._seed()
        if seed is None:
            return None
        t0 = seed.t_capture_ns
        window_end = t0 + s.max_spread_ns
        deadline = seed.t_arrival_ns + s.deadline_ns
        awaited, overdue, predicted_beyond = self._awaited(seed, now_ns, deadline)
        waiting = bool(awaited) and now_ns < deadline
        if waiting and any(a.expected_ns is None for a in awaited):
            return None  # no prediction to decide without them
        # Candidates inside the window, time order; the first frame beyond it (received or, of a
        # camera with nothing pending, predicted) bounds the last gap, whatever has arrived yet.
        candidates: list[tuple[float, int, Frame | None]] = []
        next_beyond = predicted_beyond
        for i, pending in enumerate(self._pending):
            for f in pending:
                if f.t_capture_ns > window_end:
                    next_beyond = min(next_beyond, self._cut_time(i, f.t_capture_ns))
                    break
                candidates.append((self._cut_time(i, f.t_capture_ns), i, f))
        left_for_later: dict[int, float] = {}
        if waiting:
            members = self._cut_before_awaited(candidates, next_beyond, window_end, awaited)
            if members is None:
                return None
            left_for_later = {a.index: a.expected_ns - a.margin_ns for a in awaited}
            awaited = []  # what they will send belongs to a later set
        else:
            candidates.sort(key=lambda c: (c[0], c[1]))
            members = candidates[:self._cut(candidates, next_beyond)]

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
        elif overdue:
            reason = "overdue"
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
        self._left_for_later = left_for_later
        return frame_set


_DISCARDED = object()
