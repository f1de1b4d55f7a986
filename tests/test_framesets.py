"""Frame-set assembly: clock offsets and jitter, dropped frames, a dying camera, the spread limit, late frames."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.framesets import Assembler, AssemblySettings, PushOutcome
from tests.sync_sim import CameraSim, frames_of, simulate

MS = 1_000_000
SETTINGS = AssemblySettings.for_fps(30.0)  # spread 30 ms, deadline 33.3 ms, buffer 4 periods, stale 3 periods


def check_invariants(sets, assembler, settings=SETTINGS):
    """Properties that hold for any input: spread limit, each frame once, sets never cross, counts close."""
    used = set()
    last_t = {}
    previous_t = None
    for fs in sets:
        assert fs.spread_ns <= settings.max_spread_ns
        assert len(fs.frames) >= settings.min_cameras
        assert len({f.camera for f in fs.frames}) == len(fs.frames)
        if previous_t is not None:
            assert fs.t_ns > previous_t
        previous_t = fs.t_ns
        for f in fs.frames:
            key = (f.camera, f.seq)
            assert key not in used
            used.add(key)
            assert f.t_capture_ns > last_t.get(f.camera, -1)
            last_t[f.camera] = f.t_capture_ns
    assert assembler.pending_count() == 0
    for camera, cc in assembler.counters.items():
        taken = cc.used + cc.late + cc.unmatched + cc.evicted + cc.duplicate
        assert taken == cc.received, (camera, cc)
        assert cc.used == sum(1 for fs in sets for f in fs.frames if f.camera == camera)


def test_offsets_and_jitter_recover_the_true_sets():
    cams = [CameraSim(f"c{i}", offset_ms=o, jitter_ms=1.5) for i, o in enumerate([0.0, 4.0, -5.0, 2.5, -2.0, 6.0])]
    sets, assembler = simulate(cams, 120, SETTINGS, seed=3)
    check_invariants(sets, assembler)
    assert len(sets) == 120
    for k, fs in enumerate(sets):
        assert fs.reason == "complete" and not fs.partial
        assert {f.seq for f in fs.frames} == {k}
    # per-camera mean offset to the set time follows the injected clock offsets (median-centred)
    offsets = np.array([assembler.counters[c.name].offset_ns / MS for c in cams])
    injected = np.array([c.offset_ms for c in cams])
    assert np.allclose(offsets - offsets.mean(), injected - injected.mean(), atol=1.5)
    assert all(cc.late == cc.dropped == cc.unmatched == cc.evicted == 0 for cc in assembler.counters.values())


def test_sets_do_not_depend_on_arrival_order_within_the_deadline():
    cams = [CameraSim(f"c{i}", offset_ms=o, jitter_ms=2.0) for i, o in enumerate([0.0, 3.0, -4.0, 7.0])]
    events = frames_of(cams, 80, SETTINGS.frame_period_ns, seed=5)
    rng = np.random.default_rng(9)
    reshuffled = sorted((arrival + int(rng.integers(0, 15 * MS)), cam, seq, t) for arrival, cam, seq, t in events)
    reference, _ = simulate(cams, 80, SETTINGS, events=events)
    shuffled, assembler = simulate(cams, 80, SETTINGS, events=reshuffled)
    check_invariants(shuffled, assembler)
    assert [[(f.camera, f.seq) for f in fs.frames] for fs in shuffled] == \
           [[(f.camera, f.seq) for f in fs.frames] for fs in reference]


@pytest.mark.parametrize("seed", range(6))
def test_invariants_under_random_offsets_drops_and_latency(seed):
    rng = np.random.default_rng(seed)
    cams = [CameraSim(f"c{i}", offset_ms=float(rng.uniform(-14, 14)), jitter_ms=float(rng.uniform(0, 4)),
                      latency_ms=float(rng.uniform(2, 40)), latency_jitter_ms=float(rng.uniform(0, 8)),
                      dropped=set(rng.choice(100, size=int(rng.integers(0, 12)), replace=False).tolist()),
                      dies_at=int(rng.integers(30, 100)) if i == 0 else None)
            for i in range(int(rng.integers(2, 9)))]
    sets, assembler = simulate(cams, 100, SETTINGS, seed=seed)
    check_invariants(sets, assembler)
    assert sets


def test_dropped_frames_are_counted_and_leave_partial_sets():
    cams = [CameraSim(f"c{i}", offset_ms=o, jitter_ms=1.0) for i, o in enumerate([0.0, 2.0, -3.0, 4.0])]
    cams[1].dropped = {10, 11, 40}
    cams[3].dropped = {25}
    sets, assembler = simulate(cams, 60, SETTINGS, seed=1)
    check_invariants(sets, assembler)
    assert len(sets) == 60
    assert assembler.counters["c1"].dropped == 3 and assembler.counters["c3"].dropped == 1
    by_seq = {next(iter({f.seq for f in fs.frames})): fs for fs in sets}
    assert all(len({f.seq for f in fs.frames}) == 1 for fs in sets)
    for k, fs in by_seq.items():
        expected_missing = tuple(c.name for c in cams if k in c.dropped)
        assert fs.missing == expected_missing
    # a dropped frame is written off once overdue by the camera's timing model (its capture period and
    # arrival latency), well before the deadline, also twice in a row (10, 11)
    for k in (10, 11, 25, 40):
        fs = by_seq[k]
        assert fs.reason == "overdue"
        assert fs.t_emit_ns - min(f.t_arrival_ns for f in fs.frames) < SETTINGS.deadline_ns / 2
    assert all(cc.late == 0 for cc in assembler.counters.values())


def test_a_camera_that_dies_mid_run_gives_partial_sets_at_the_deadline_then_without_waiting():
    cams = [CameraSim(f"c{i}", offset_ms=o, jitter_ms=1.0) for i, o in enumerate([0.0, 3.0, -2.0])]
    cams[2].dies_at = 40
    sets, assembler = simulate(cams, 100, SETTINGS, seed=2)
    check_invariants(sets, assembler)
    assert len(sets) == 100
    before, after = sets[:40], sets[40:]
    assert all(fs.reason == "complete" for fs in before)
    assert all(fs.missing == ("c2",) for fs in after)
    for fs in after:  # never later than the deadline after the set's first frame arrived
        seed = min(fs.frames, key=lambda f: f.t_capture_ns)
        assert fs.t_emit_ns - seed.t_arrival_ns <= SETTINGS.deadline_ns
    deadline_sets = [fs for fs in after if fs.reason in ("deadline", "overdue")]
    assert 1 <= len(deadline_sets) <= 4  # until the camera counts as stale (3 periods)
    assert all(fs.reason == "resolved" for fs in after[len(deadline_sets):])
    # once stale (the set after the last deadline set may still straddle that moment), a set is
    # decided on the arrival of its last frame
    waits = [fs.t_emit_ns - max(f.t_arrival_ns for f in fs.frames) for fs in after[len(deadline_sets) + 1:]]
    assert max(waits) == 0


def test_spread_limit_is_never_exceeded_and_an_out_of_phase_camera_is_left_out():
    settings = AssemblySettings.for_fps(30.0, max_spread_periods=0.3)  # 10 ms
    cams = [CameraSim("a", 0.0, 0.5), CameraSim("b", 1.0, 0.5), CameraSim("half", 16.7, 0.5)]
    sets, assembler = simulate(cams, 50, settings, seed=4)
    check_invariants(sets, assembler, settings)
    assert len(sets) == 50
    assert all(fs.cameras == ("a", "b") for fs in sets)
    assert assembler.counters["half"].unmatched == 50 and assembler.counters["half"].late == 0


@pytest.mark.parametrize("predict", [False, True])
def test_a_camera_slower_than_the_deadline_is_late_and_counted(predict):
    settings = AssemblySettings.for_fps(30.0, predict_timing=predict)
    cams = [CameraSim("a"), CameraSim("b", offset_ms=1.0), CameraSim("slow", offset_ms=-1.0, latency_ms=60.0)]
    sets, assembler = simulate(cams, 40, settings, seed=6)
    check_invariants(sets, assembler, settings)
    assert all(fs.cameras == ("a", "b") for fs in sets)
    assert assembler.counters["slow"].late >= 39
    assert assembler.sets_partial == len(sets)
    waits = [fs.t_emit_ns - max(f.t_arrival_ns for f in fs.frames) for fs in sets]
    if predict:  # once its timing model is warm, its frames are known to come after the deadline: no wait
        assert all(fs.reason == "resolved" and wait == 0 for fs, wait in zip(sets[10:], waits[10:]))
    else:  # waited for until the deadline every time
        assert all(fs.reason == "deadline" for fs in sets)
        assert min(waits) > SETTINGS.deadline_ns - 10 * MS


def test_a_camera_with_a_far_clock_is_bounded_and_counted():
    cams = [CameraSim("a"), CameraSim("b", offset_ms=1.0), CameraSim("future", offset_ms=10_000.0)]
    events = frames_of(cams, 60, SETTINGS.frame_period_ns, seed=8)
    assembler = Assembler(["a", "b", "future"], SETTINGS)
    sets, max_pending = [], 0
    for arrival, cam, seq, t in events:
        while (due := assembler.next_deadline_ns()) is not None and due <= arrival:
            sets += assembler.poll(due)
        assembler.push(cam, seq, t, arrival)
        sets += assembler.poll(arrival)
        max_pending = max(max_pending, assembler.pending_count())
    sets += assembler.flush(events[-1][0])
    check_invariants(sets, assembler)
    assert max_pending <= 2 * (SETTINGS.buffer_ns // SETTINGS.frame_period_ns + 2) + 6
    future = assembler.counters["future"]
    assert future.used == 0 and future.evicted + future.unmatched == 60
    assert len(sets) == 60 and all(fs.cameras == ("a", "b") for fs in sets)


def test_push_outcomes_duplicate_restart_unknown_and_late():
    a = Assembler(["a", "b"], SETTINGS)
    assert a.push("x", 0, 0, 0) == PushOutcome.UNKNOWN_CAMERA and a.unknown_camera == 1
    assert a.push("a", 5, 1_000 * MS, 0) == PushOutcome.PENDING
    assert a.push("a", 5, 1_000 * MS, 1) == PushOutcome.DUPLICATE
    assert a.push("b", 7, 1_001 * MS, 2) == PushOutcome.PENDING
    (fs,) = a.poll(3)
    assert fs.cameras == ("a", "b") and fs.spread_ns == 1 * MS and fs.t_ns == 1_000 * MS + MS // 2
    assert a.push("b", 8, 1_002 * MS, 4) == PushOutcome.LATE  # belongs to the set already emitted
    assert a.push("a", 2, 1_034 * MS, 5) == PushOutcome.PENDING  # seq went back: restart, not late
    assert a.counters["a"].seq_resets == 1 and a.counters["a"].duplicate == 1
    assert a.counters["b"].late == 1
    a.note_rejected("b", 9, 1_035 * MS, 6)  # rejected upstream: neither a gap now nor at the next frame
    assert a.push("b", 10, 1_068 * MS, 6) == PushOutcome.PENDING and a.counters["b"].dropped == 0
    a.note_rejected("b", 12, 1_134 * MS, 7)
    assert a.counters["b"].dropped == 1


def test_a_rejected_frame_is_not_waited_for():
    a = Assembler(["a", "b", "c"], SETTINGS)
    for k in range(2):
        t = 1_000 * MS + k * SETTINGS.frame_period_ns
        a.push("a", k, t, t + MS)
        a.push("b", k, t + MS, t + MS)
        if k == 0:
            a.push("c", k, t, t + MS)
        else:  # c's frame 1 arrives but is rejected (e.g. a stale calib_version)
            a.note_rejected("c", k, t, t + 2 * MS)
    sets = a.poll(1_000 * MS + SETTINGS.frame_period_ns + 2 * MS)  # long before any deadline
    assert [fs.cameras for fs in sets] == [("a", "b", "c"), ("a", "b")]
    assert sets[1].reason == "resolved"


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="max_spread_ns"):
        AssemblySettings(max_spread_ns=0)
    with pytest.raises(ValueError, match="buffer_ns"):
        AssemblySettings(buffer_ns=SETTINGS.frame_period_ns)
    with pytest.raises(ValueError, match="distinct camera ids"):
        Assembler(["a", "a"])


# ---------------------------------------------------------------- fuzz: any push sequence keeps the invariants

from hypothesis import given, settings as hyp_settings, strategies as st  # noqa: E402

_push = st.tuples(
    st.sampled_from(["a", "b", "c", "zz"]),  # "zz" is not a camera of the assembler
    st.integers(0, 40),  # seq: gaps, repeats and restarts
    st.integers(-200, 200),  # capture time, ms around a base (out of order, far jumps)
    st.integers(0, 60),  # ms of the caller's clock since the previous push
)


@hyp_settings(max_examples=150, deadline=None)
@given(st.lists(_push, max_size=80))
def test_any_push_sequence_keeps_the_invariants(pushes):
    assembler = Assembler(["a", "b", "c"], SETTINGS)
    now = 0
    sets = []
    for camera, seq, t_ms, step_ms in pushes:
        now += step_ms * MS
        outcome = assembler.push(camera, seq, 10_000 * MS + t_ms * MS, now)
        assert outcome in (PushOutcome.PENDING, PushOutcome.LATE, PushOutcome.DUPLICATE, PushOutcome.UNKNOWN_CAMERA)
        sets += assembler.poll(now)
        due = assembler.next_deadline_ns()
        assert due is None or assembler.pending_count() > 0
    sets += assembler.flush(now)
    check_invariants(sets, assembler)
    assert assembler.unknown_camera == sum(1 for p in pushes if p[0] == "zz")
