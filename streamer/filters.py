"""Causal, NaN-safe filters over rows of samples: One Euro and a constant-velocity Kalman.

Both filters are pure step functions over explicit state (the caller, a node, keeps the
state): `state, out = one_euro_step(state, samples, t_ns, settings)`. A sample array is
(K, D): K independent rows (keypoints, parameters) of D coordinates, filtered row by row
but vectorised. Contract (ARCHITECTURE.md §4.4):

- A row with any non-finite coordinate is *missing*: it never updates that row's state.
- A missing row is held (One Euro) or coasted (Kalman) and flagged `PoseFlag.PREDICTED`
  while its gap is at most `max_gap_s`; after that it is `MISSING` (NaN out) and the next
  valid sample re-initialises the row from scratch, so a long gap never drags old state.
- The rate comes from the timestamps (integer ns, stage clock). A timestamp not after the
  previous step's is rejected: the state is returned unchanged and `out.accepted` is False.

Jitter versus lag (values for metres at 30-60 fps):

- One Euro: `min_cutoff_hz` sets smoothing when still (lag about 1/(2*pi*fc): 1 Hz ~ 160 ms,
  3 Hz ~ 53 ms, 10 Hz ~ 16 ms); `beta` (1/m) raises the cutoff with speed, removing lag
  when moving (a walking limb at 1 m/s with beta 1.0 adds 1 Hz). Tune: beta 0, lower
  min_cutoff until still jitter is acceptable, then raise beta until moving lag is gone.
- Kalman: `accel_noise` (m/s^2, white-acceleration spectral density) is the only knob
  that trades jitter for lag; the constant-velocity model has no steady lag at constant
  speed, only on accelerations. Larger -> follows faster, keeps more noise. `meas_std`
  (m) per row per step comes from triangulation quality when known.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from protocol.messages import PoseFlag

__all__ = [
    "FilterOutput",
    "KalmanSettings",
    "KalmanState",
    "OneEuroSettings",
    "OneEuroState",
    "kalman_init",
    "kalman_predicted_position",
    "kalman_predict",
    "kalman_step",
    "one_euro_init",
    "one_euro_step",
    "valid_rows",
]

_NEVER_NS = np.iinfo(np.int64).min  # "no sample yet" time


@dataclass(frozen=True)
class FilterOutput:
    """One step's output.

    values: (K, D) float64; NaN where `status == MISSING`.
    status: (K,) uint8 PoseFlag: MEASURED (updated from this step's sample), PREDICTED
        (held or coasted through a short gap, or a gated outlier), MISSING.
    accepted: False when the step was rejected for a non-increasing timestamp.
    """

    values: np.ndarray
    status: np.ndarray
    accepted: bool


def valid_rows(samples: np.ndarray) -> np.ndarray:
    """(K, D) -> (K,) bool: rows whose coordinates are all finite."""
    return np.isfinite(samples).all(axis=-1)


def _check_samples(samples: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape != shape:
        raise ValueError(f"samples: expected shape {shape} (K, D), got {samples.shape}")
    return samples


# ---------------------------------------------------------------- One Euro


@dataclass(frozen=True)
class OneEuroSettings:
    """min_cutoff_hz, d_cutoff_hz: Hz; beta: 1/(signal unit), per unit of speed; max_gap_s: hold limit, seconds."""

    min_cutoff_hz: float = 1.0
    beta: float = 0.0
    d_cutoff_hz: float = 1.0
    max_gap_s: float = 0.25

    def __post_init__(self) -> None:
        if not (self.min_cutoff_hz > 0 and self.d_cutoff_hz > 0 and self.beta >= 0 and self.max_gap_s >= 0):
            raise ValueError(f"OneEuroSettings: cutoffs must be > 0, beta and max_gap_s >= 0; got {self}")


@dataclass(frozen=True)
class OneEuroState:
    """value, derivative: (K, D) float64 filtered value and its rate (unit/s); NaN rows uninitialised.
    t_ns: (K,) int64 time of each row's last accepted sample; t_step_ns: time of the last step."""

    value: np.ndarray
    derivative: np.ndarray
    t_ns: np.ndarray
    t_step_ns: int


def one_euro_init(num_rows: int, dim: int) -> OneEuroState:
    """An empty One Euro state for (num_rows, dim) samples."""
    nan = np.full((num_rows, dim), np.nan)
    return OneEuroState(nan, nan.copy(), np.full(num_rows, _NEVER_NS, np.int64), _NEVER_NS)


def _smoothing_factor(dt_s: np.ndarray, cutoff_hz: np.ndarray) -> np.ndarray:
    tau = 1.0 / (2.0 * np.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


def _row_gap_s(t_ns: int, row_t_ns: np.ndarray) -> np.ndarray:
    """Seconds since each row's last sample; inf for rows never sampled."""
    gap = np.full(row_t_ns.shape, np.inf)
    seen = row_t_ns != _NEVER_NS
    gap[seen] = (t_ns - row_t_ns[seen]) * 1e-9
    return gap


def one_euro_step(
    state: OneEuroState, samples: np.ndarray, t_ns: int, settings: OneEuroSettings
) -> tuple[OneEuroState, FilterOutput]:
    """Filter one (K, D) sample (NaN rows missing) taken at `t_ns`; returns the new state and output."""
    samples = _check_samples(samples, state.value.shape)
    t_ns = int(t_ns)
    gap_s = _row_gap_s(t_ns, state.t_ns)
    live = gap_s <= settings.max_gap_s  # rows with state young enough to continue or hold
    if t_ns <= state.t_step_ns:
        return state, _one_euro_output(state.value, live, np.zeros_like(live), accepted=False)
    valid = valid_rows(samples)
    fresh = valid & ~live  # (re)initialise from this sample
    update = valid & live
    value, derivative, row_t = state.value.copy(), state.derivative.copy(), state.t_ns.copy()
    value[fresh], derivative[fresh] = samples[fresh], 0.0
    if update.any():
        dt = gap_s[update][:, None]
        x, x_prev, dx_prev = samples[update], state.value[update], state.derivative[update]
        a_d = _smoothing_factor(dt, np.full_like(dt, settings.d_cutoff_hz))
        dx = a_d * (x - x_prev) / dt + (1.0 - a_d) * dx_prev
        cutoff = settings.min_cutoff_hz + settings.beta * np.linalg.norm(dx, axis=-1, keepdims=True)
        a = _smoothing_factor(dt, cutoff)
        value[update] = a * x + (1.0 - a) * x_prev
        derivative[update] = dx
    row_t[valid] = t_ns
    new = OneEuroState(value, derivative, row_t, t_ns)
    return new, _one_euro_output(value, live | valid, valid, accepted=True)


def _one_euro_output(value: np.ndarray, present: np.ndarray, measured: np.ndarray, *, accepted: bool) -> FilterOutput:
    status = np.where(measured, PoseFlag.MEASURED, np.where(present, PoseFlag.PREDICTED, PoseFlag.MISSING))
    return FilterOutput(np.where(present[:, None], value, np.nan), status.astype(np.uint8), accepted)


# ---------------------------------------------------------------- constant-velocity Kalman


@dataclass(frozen=True)
class KalmanSettings:
    """Constant-velocity Kalman per row (each coordinate independent, same noise).

    accel_noise: white-acceleration spectral density, unit/s^2 (the jitter/lag knob).
    meas_std: default measurement std, unit (used where the step gives none).
    init_speed_std: prior std of the velocity of a fresh row, unit/s.
    max_gap_s: coast a row at most this long without a measurement, then drop it (MISSING).
    gate_sigma: reject a sample whose normalised innovation exceeds this (per coordinate,
        chi-square over D coordinates); None disables gating.
    max_gated: after this many consecutive gated samples, re-initialise the row from the
        sample (anti-lockout when the track itself went wrong).
    """

    accel_noise: float = 20.0
    meas_std: float = 0.01
    init_speed_std: float = 1.0
    max_gap_s: float = 0.5
    gate_sigma: float | None = 6.0
    max_gated: int = 3

    def __post_init__(self) -> None:
        if not (self.accel_noise > 0 and self.meas_std > 0 and self.init_speed_std > 0 and self.max_gap_s >= 0):
            raise ValueError(f"KalmanSettings: noises must be > 0 and max_gap_s >= 0; got {self}")


@dataclass(frozen=True)
class KalmanState:
    """position, velocity: (K, D) float64 (unit, unit/s), NaN rows uninitialised; covariance: (K, 2, 2)
    of (position, velocity) per coordinate; t_ns: (K,) last measurement time per row; n_gated: (K,)
    consecutive gated samples; t_step_ns: time the state was last predicted to."""

    position: np.ndarray
    velocity: np.ndarray
    covariance: np.ndarray
    t_ns: np.ndarray
    n_gated: np.ndarray
    t_step_ns: int


def kalman_init(num_rows: int, dim: int) -> KalmanState:
    """An empty Kalman state for (num_rows, dim) samples."""
    nan = np.full((num_rows, dim), np.nan)
    return KalmanState(
        nan, nan.copy(), np.full((num_rows, 2, 2), np.nan), np.full(num_rows, _NEVER_NS, np.int64),
        np.zeros(num_rows, np.int64), _NEVER_NS,
    )


def kalman_predict(state: KalmanState, t_ns: int, settings: KalmanSettings) -> KalmanState:
    """The state predicted to `t_ns` (no measurement); rows are unchanged if `t_ns` is not later."""
    dt = _predict_dt_s(state, t_ns)
    if dt <= 0:
        return state
    q = settings.accel_noise
    p = state.covariance
    covariance = np.empty_like(p)  # F P F^T + Q, F = [[1, dt], [0, 1]], written out (2 x 2 per row)
    top, bottom = p[:, 0, 1] + dt * p[:, 1, 1], p[:, 1, 0] + dt * p[:, 1, 1]
    covariance[:, 0, 0] = p[:, 0, 0] + dt * p[:, 1, 0] + dt * top + q * dt**3 / 3
    covariance[:, 0, 1] = top + q * dt**2 / 2
    covariance[:, 1, 0] = bottom + q * dt**2 / 2
    covariance[:, 1, 1] = p[:, 1, 1] + q * dt
    return replace(state, position=state.position + state.velocity * dt, covariance=covariance, t_step_ns=int(t_ns))


def kalman_predicted_position(state: KalmanState, t_ns: int) -> np.ndarray:
    """(K, D) `kalman_predict(state, t_ns, ...).position` without the covariance (its cost)."""
    dt = _predict_dt_s(state, t_ns)
    return state.position + state.velocity * dt if dt > 0 else state.position


def _predict_dt_s(state: KalmanState, t_ns: int) -> float:
    return (int(t_ns) - state.t_step_ns) * 1e-9 if state.t_step_ns != _NEVER_NS else 0.0


def kalman_step(
    state: KalmanState,
    samples: np.ndarray,
    t_ns: int,
    settings: KalmanSettings,
    meas_std: np.ndarray | None = None,
) -> tuple[KalmanState, FilterOutput]:
    """Predict to `t_ns`, then update rows with a finite sample (and finite positive `meas_std`, (K,) unit)."""
    samples = _check_samples(samples, state.position.shape)
    t_ns = int(t_ns)
    if t_ns <= state.t_step_ns:
        present = _row_gap_s(state.t_step_ns, state.t_ns) <= settings.max_gap_s
        return state, _kalman_output(state, present, np.zeros_like(present), accepted=False)
    r_std = np.full(len(samples), settings.meas_std) if meas_std is None else np.asarray(meas_std, np.float64)
    valid = valid_rows(samples) & np.isfinite(r_std) & (r_std > 0)
    state = kalman_predict(state, t_ns, settings)
    live = _row_gap_s(t_ns, state.t_ns) <= settings.max_gap_s
    r_var = r_std**2
    position, velocity = state.position.copy(), state.velocity.copy()
    covariance, row_t, n_gated = state.covariance.copy(), state.t_ns.copy(), state.n_gated.copy()

    candidate = valid & live
    innovation = samples - position
    s = covariance[:, 0, 0] + r_var  # innovation variance per coordinate
    with np.errstate(invalid="ignore"):
        nis = np.where(candidate, (innovation**2).sum(-1) / s, 0.0)
    dim = samples.shape[1]
    gated = candidate & (settings.gate_sigma is not None) & (nis > (settings.gate_sigma or 0.0) ** 2 * dim)
    relock = gated & (n_gated + 1 > settings.max_gated)
    gated &= ~relock
    update = candidate & ~gated & ~relock
    fresh = (valid & ~live) | relock

    if update.any():  # over all rows, kept where `update` (cheaper than gathering the rows when most update)
        with np.errstate(invalid="ignore", divide="ignore"):
            gain = covariance[:, :, 0] / s[:, None]  # (K, 2): position and velocity gains
            rows = update[:, None]
            position = np.where(rows, position + gain[:, :1] * innovation, position)
            velocity = np.where(rows, velocity + gain[:, 1:] * innovation, velocity)
            covariance = np.where(rows[:, :, None], covariance - gain[:, :, None] * covariance[:, None, 0, :],
                                  covariance)
    position[fresh], velocity[fresh] = samples[fresh], 0.0
    covariance[fresh] = 0.0
    covariance[fresh, 0, 0] = r_var[fresh]
    covariance[fresh, 1, 1] = settings.init_speed_std**2
    lost = ~live & ~fresh
    position[lost], velocity[lost], covariance[lost] = np.nan, np.nan, np.nan
    measured = update | fresh
    row_t[measured] = t_ns
    n_gated[measured] = 0
    n_gated[gated] += 1
    new = KalmanState(position, velocity, covariance, row_t, n_gated, t_ns)
    return new, _kalman_output(new, live | fresh, measured, accepted=True)


def _kalman_output(state: KalmanState, present: np.ndarray, measured: np.ndarray, *, accepted: bool) -> FilterOutput:
    status = np.where(measured, PoseFlag.MEASURED, np.where(present, PoseFlag.PREDICTED, PoseFlag.MISSING))
    return FilterOutput(np.where(present[:, None], state.position, np.nan), status.astype(np.uint8), accepted)
