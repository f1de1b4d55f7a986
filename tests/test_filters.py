"""Causal NaN-safe filters: One Euro and constant-velocity Kalman (streamer/filters.py)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from protocol.messages import PoseFlag
from streamer.filters import (
    KalmanSettings, OneEuroSettings, kalman_init, kalman_step, one_euro_init, one_euro_step,
)

RATE_HZ = 60.0
DT_NS = int(1e9 / RATE_HZ)


def run_one_euro(samples, settings, times_ns=None):
    state = one_euro_init(samples.shape[1], samples.shape[2])
    outs = []
    for i, x in enumerate(samples):
        state, out = one_euro_step(state, x, DT_NS * (i + 1) if times_ns is None else times_ns[i], settings)
        outs.append(out)
    return state, outs


def run_kalman(samples, settings):
    state = kalman_init(samples.shape[1], samples.shape[2])
    outs = []
    for i, x in enumerate(samples):
        state, out = kalman_step(state, x, DT_NS * (i + 1), settings)
        outs.append(out)
    return state, outs


def noisy_walk(rng, n=240, k=5, noise=0.01):
    t = np.arange(n)[:, None, None] / RATE_HZ
    truth = np.concatenate([1.2 * t, 0.2 * np.sin(2 * np.pi * 0.8 * t), np.zeros_like(t)], axis=-1) + rng.normal(0, 1, (1, k, 3))
    return truth, truth + rng.normal(0, noise, truth.shape)


def mean_abs_accel(x):
    return float(np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=-1).mean())


@pytest.mark.parametrize("kind, max_error_m", [("one_euro", 0.04), ("kalman", 0.013)])
def test_smooths_noise_without_nan(kind, max_error_m):
    """1 cm noise on a 1.2 m/s walk: jitter down 3x; One Euro pays lag at speed (~2 frames at
    beta 2), the constant-velocity Kalman does not (its error is below the raw samples')."""
    rng = np.random.default_rng(0)
    truth, noisy = noisy_walk(rng)
    if kind == "one_euro":
        _, outs = run_one_euro(noisy, OneEuroSettings(min_cutoff_hz=1.0, beta=2.0))
    else:
        _, outs = run_kalman(noisy, KalmanSettings(accel_noise=1.0, meas_std=0.01))
    values = np.stack([o.values for o in outs])
    assert np.isfinite(values).all()
    assert all((o.status == PoseFlag.MEASURED).all() for o in outs)
    assert mean_abs_accel(values[30:]) < mean_abs_accel(noisy[30:]) / 3
    assert np.linalg.norm(values[60:] - truth[60:], axis=-1).mean() < max_error_m
    raw_error = np.linalg.norm(noisy[60:] - truth[60:], axis=-1).mean()
    assert kind == "one_euro" or np.linalg.norm(values[60:] - truth[60:], axis=-1).mean() < raw_error


@pytest.mark.parametrize("kind", ["one_euro", "kalman"])
def test_one_nan_frame_does_not_poison(kind):
    """Earlier outputs bitwise unchanged; the NaN frame is held/coasted; later outputs close to the NaN-free run."""
    rng = np.random.default_rng(1)
    _, noisy = noisy_walk(rng, n=120)
    broken = noisy.copy()
    broken[50] = np.nan
    broken[70, 2] = [np.inf, 0, 0]  # one non-finite coordinate poisons only its own row, once
    run = (lambda s: run_one_euro(s, OneEuroSettings(beta=2.0))) if kind == "one_euro" else (
        lambda s: run_kalman(s, KalmanSettings(accel_noise=5.0)))
    _, clean_outs = run(noisy)
    _, broken_outs = run(broken)
    clean = np.stack([o.values for o in clean_outs])
    got = np.stack([o.values for o in broken_outs])
    assert np.array_equal(clean[:50], got[:50])
    assert np.isfinite(got).all()
    assert (broken_outs[50].status == PoseFlag.PREDICTED).all()
    assert broken_outs[70].status[2] == PoseFlag.PREDICTED and (np.delete(broken_outs[70].status, 2) == PoseFlag.MEASURED).all()
    assert np.abs(got[51:] - clean[51:]).max() < 0.03
    assert np.abs(got[90:] - clean[90:]).max() < 1e-3


def test_one_euro_backwards_timestamp_rejected():
    settings = OneEuroSettings()
    state = one_euro_init(2, 3)
    state, _ = one_euro_step(state, np.zeros((2, 3)), 1_000_000_000, settings)
    state2, out = one_euro_step(state, np.ones((2, 3)), 999_000_000, settings)
    assert not out.accepted and state2 is state
    assert np.array_equal(out.values, np.zeros((2, 3)))
    _, out = one_euro_step(state, np.ones((2, 3)), 1_000_000_000, settings)  # equal time: no rate
    assert not out.accepted


def test_kalman_backwards_timestamp_rejected():
    settings = KalmanSettings()
    state, _ = kalman_step(kalman_init(1, 3), np.zeros((1, 3)), 10, settings)
    state2, out = kalman_step(state, np.ones((1, 3)), 5, settings)
    assert not out.accepted and state2 is state


def test_one_euro_hold_then_reinitialise_after_long_gap():
    settings = OneEuroSettings(max_gap_s=0.25)
    x = np.zeros((40, 1, 3))
    x[10:30] = np.nan  # 20 frames = 0.33 s > max_gap
    x[30:] = 5.0
    _, outs = run_one_euro(x, settings)
    statuses = np.array([o.status[0] for o in outs])
    assert (statuses[10:25] == PoseFlag.PREDICTED).all()  # held up to 0.25 s
    assert (statuses[26:30] == PoseFlag.MISSING).all() and np.isnan(outs[27].values).all()
    assert np.array_equal(outs[12].values, outs[9].values)  # held, not updated
    assert np.array_equal(outs[30].values, np.full((1, 3), 5.0))  # fresh start, no drag from old state


def test_kalman_coasts_short_gap_and_reacquires():
    rng = np.random.default_rng(2)
    t = np.arange(180)[:, None, None] / RATE_HZ
    truth = np.concatenate([1.2 * t, 0.3 * t, np.zeros_like(t)], axis=-1) + rng.normal(0, 1, (1, 3, 3))
    noisy = truth + rng.normal(0, 0.003, truth.shape)
    noisy[60:72] = np.nan  # 0.2 s
    settings = KalmanSettings(accel_noise=1.0, meas_std=0.003, max_gap_s=0.3)
    _, outs = run_kalman(noisy, settings)
    values = np.stack([o.values for o in outs])
    assert all((o.status == PoseFlag.PREDICTED).all() for o in outs[60:72])
    # coasting follows the walk: no hold at the gap start, no jump at re-acquisition
    coast_error = np.linalg.norm(values[60:72] - truth[60:72], axis=-1).max()
    hold_error = np.linalg.norm(values[59] - truth[71], axis=-1).max()  # what holding would cost
    assert coast_error < 0.04 and coast_error < hold_error / 5
    steps = np.linalg.norm(np.diff(values, axis=0), axis=-1)
    assert steps[55:80].max() < 0.02 + 0.04  # one frame of walking plus the coasting error


def test_kalman_long_gap_drops_then_reinitialises():
    settings = KalmanSettings(max_gap_s=0.1)
    x = np.zeros((30, 1, 3))
    x[5:20] = np.nan
    x[20:] = 3.0
    _, outs = run_kalman(x, settings)
    statuses = np.array([o.status[0] for o in outs])
    assert (statuses[5:11] == PoseFlag.PREDICTED).all() and (statuses[12:20] == PoseFlag.MISSING).all()
    assert np.array_equal(outs[20].values, np.full((1, 3), 3.0))


def test_kalman_gates_outlier_then_relocks():
    settings = KalmanSettings(meas_std=0.01, accel_noise=1.0, gate_sigma=5.0, max_gated=2)
    x = np.zeros((20, 1, 3))
    x[10] = 1.0  # one gross outlier: gated, coasted
    x[15:] = 2.0  # a real relocation: gated twice then accepted
    _, outs = run_kalman(x, settings)
    assert outs[10].status[0] == PoseFlag.PREDICTED and np.abs(outs[10].values).max() < 1e-3
    assert outs[15].status[0] == PoseFlag.PREDICTED and outs[16].status[0] == PoseFlag.PREDICTED
    assert outs[17].status[0] == PoseFlag.MEASURED and np.array_equal(outs[17].values, np.full((1, 3), 2.0))


def test_kalman_bad_measurement_std_is_missing():
    state, _ = kalman_step(kalman_init(2, 3), np.zeros((2, 3)), 1, KalmanSettings())
    state, out = kalman_step(state, np.full((2, 3), 0.001), 2, KalmanSettings(), meas_std=np.array([np.nan, 0.01]))
    assert out.status.tolist() == [PoseFlag.PREDICTED, PoseFlag.MEASURED]


def test_settings_validated():
    with pytest.raises(ValueError, match="OneEuroSettings"):
        OneEuroSettings(min_cutoff_hz=0)
    with pytest.raises(ValueError, match="KalmanSettings"):
        KalmanSettings(accel_noise=-1)
    with pytest.raises(ValueError, match="expected shape"):
        one_euro_step(one_euro_init(2, 3), np.zeros((3, 3)), 1, OneEuroSettings())


samples_strategy = st.lists(
    st.lists(st.sampled_from([0.0, 1.0, -2.5, 1e3, np.nan, np.inf, -np.inf]), min_size=6, max_size=6),
    min_size=1, max_size=25,
)


@hyp_settings(max_examples=60, deadline=None)
@given(samples_strategy, st.lists(st.integers(-5, 40), min_size=25, max_size=25))
def test_fuzz_never_nan_where_present(rows, dt_ms):
    """Arbitrary non-finite samples and timestamps (including backwards) never crash nor leak NaN."""
    x = np.array(rows).reshape(len(rows), 2, 3)
    times = np.cumsum(np.array(dt_ms[: len(rows)]) * 1_000_000)
    e_state, k_state = one_euro_init(2, 3), kalman_init(2, 3)
    for sample, t in zip(x, times):
        for step, args in ((one_euro_step, OneEuroSettings(beta=0.5)), (kalman_step, KalmanSettings())):
            state = e_state if step is one_euro_step else k_state
            state, out = step(state, sample, int(t), args)
            present = out.status != PoseFlag.MISSING
            assert np.isfinite(out.values[present]).all()
            assert np.isnan(out.values[~present]).all()
            if step is one_euro_step:
                e_state = state
            else:
                k_state = state


def test_predicted_position_is_the_predicted_states():
    from streamer.filters import kalman_init, kalman_predict, kalman_predicted_position, kalman_step, KalmanSettings

    settings = KalmanSettings(gate_sigma=None)
    rng = np.random.default_rng(3)
    state = kalman_init(5, 2)
    for k in range(4):
        state, _ = kalman_step(state, rng.normal(size=(5, 2)), 1_000_000_000 + k * 33_000_000, settings)
    for t_ns in (state.t_step_ns - 1, state.t_step_ns, state.t_step_ns + 50_000_000):
        np.testing.assert_array_equal(kalman_predicted_position(state, t_ns),
                                      kalman_predict(state, t_ns, settings).position)
