"""Keypoint offsets (subject-specific marker calibration) on the real Anny body: exact in the model and
its Jacobian, recovered causally by the tracker, and left out of the shared model between steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamer.body import mhr70
from streamer.fitting import FitSettings, fit_targets
from streamer.fitting.track import TrackSettings, make_context, track_init, track_step

FPS = 30.0
SHIFTED = [mhr70.index_of(n) for n in ("left-shoulder", "right-shoulder", "left-hip", "right-hip", "neck")]
BODY_POINTS = np.r_[mhr70.BODY, mhr70.WRISTS, mhr70.index_of("neck")]


@pytest.fixture(scope="module")
def body():
    from streamer.body.anny_model import AnnyBody

    return AnnyBody()


def _motion(body, frames: int) -> np.ndarray:
    """(T, P) float64: a slow turn and sway with swinging arms and legs."""
    params = body.default_params(frames).to(torch.float64).numpy()
    t = np.arange(frames) / FPS
    params[:, 2] = 0.3 * np.sin(0.7 * t)
    params[:, 3] = 0.2 * np.sin(0.5 * t)
    g = body.groups
    for bone, amp in (("upperarm01.L", 0.5), ("upperarm01.R", -0.5), ("upperleg01.L", 0.3), ("upperleg01.R", -0.3),
                      ("lowerarm01.L", 0.4)):
        params[:, g[f"pose:{bone}"].start] = amp * np.sin(2.0 * t)
    return params


def test_offsets_are_exact_in_keypoints_and_jacobian():
    from streamer.body.anny_model import AnnyBody

    body = AnnyBody(dtype=torch.float64)
    x = torch.as_tensor(_motion(body, 20)[13:14])
    x[0, 6:156] += 0.1 * torch.randn(150, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = body.keypoints(x)
    offsets = np.random.default_rng(0).normal(0, 0.03, (70, 3))
    body.set_keypoint_offsets(offsets)
    moved = body.keypoints(x)
    expected = plain + torch.einsum("bkij,kj->bki", body.keypoint_frames(x), torch.as_tensor(offsets))
    assert torch.allclose(moved, expected, atol=1e-12)
    assert (moved - plain).norm(dim=-1).min() > 1e-3  # every point moved
    kp, jac = body.keypoints_and_jacobian(x, torch.arange(156))
    direction = torch.zeros_like(x)
    direction[0, :156] = torch.randn(156, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = 1e-6  # central difference along a random direction: the offsets' lever arms are in the Jacobian
    numeric = (body.keypoints(x + h * direction) - body.keypoints(x - h * direction)) / (2 * h)
    assert torch.allclose(kp, moved, atol=1e-12)
    assert torch.allclose(jac[0] @ direction[0, :156], numeric[0], atol=1e-7)
    body.set_keypoint_offsets(None)
    assert torch.equal(body.keypoints(x), plain)  # the shape-table cache is keyed by the offsets too
    with pytest.raises(ValueError, match="keypoint offsets"):
        body.set_keypoint_offsets(np.full((70, 3), np.nan))


def _track(body, targets, times, settings):
    context = make_context(body, settings)
    state, outs = track_init(context), []
    for t, tg in zip(times, targets):
        state, out = track_step(state, tg, int(t), context)
        outs.append(out)
        assert not body.keypoint_offsets.any()  # applied for the step only
    return state, outs


def _observed(truth: np.ndarray, noise_m: float, seed: int) -> tuple[list, np.ndarray]:
    """(per-frame fit targets, frame times ns): the body points, wrists and neck of `truth` (T, 70, 3) with
    Gaussian noise; every other point missing."""
    rng = np.random.default_rng(seed)
    frames = len(truth)
    measured = np.full((frames, 70, 3), np.nan)
    measured[:, BODY_POINTS] = truth[:, BODY_POINTS] + rng.normal(0, noise_m, (frames, len(BODY_POINTS), 3))
    return [fit_targets(m) for m in measured], (np.arange(frames) * 1e9 / FPS).astype(np.int64) + 1


def test_tracker_calibrates_offsets_causally(body):
    frames = 70
    truth_params = _motion(body, frames)
    true_offsets = np.zeros((70, 3))
    true_offsets[SHIFTED] = [[0.03, 0.0, 0.01], [-0.03, 0.0, 0.01], [0.0, 0.025, 0.0], [0.0, 0.025, 0.0],
                             [0.0, 0.02, -0.03]]
    body.set_keypoint_offsets(true_offsets)
    try:
        with torch.no_grad():
            truth = body.keypoints(torch.as_tensor(truth_params, dtype=torch.float32)).double().numpy()
    finally:
        body.set_keypoint_offsets(None)
    targets, times = _observed(truth, 0.004, seed=0)
    fit = FitSettings(max_iterations=2, jacobian="analytic")  # "auto" times the methods: runs could differ
    common = dict(fit=fit, shape_frames=10)
    state, outs = _track(body, targets, times, TrackSettings(offset_frames=10, offset_rounds=3, **common))
    _, plain = _track(body, targets, times, TrackSettings(offset_frames=0, **common))
    assert state.offset_round == 3
    # causal: until the first window closes (10 good fits after the shape's 10), outputs are bitwise equal
    first = next(k for k in range(frames) if not np.array_equal(outs[k].keypoints, plain[k].keypoints))
    assert first >= 20, first
    # bounded, and (pose and offsets share what they explain) the fit ends closer to the true points
    assert np.isfinite(state.offsets).all() and np.linalg.norm(state.offsets, axis=1).max() <= 0.08 + 1e-9
    tail = slice(frames - 20, frames)
    err = lambda o: np.nanmean([np.linalg.norm(p.keypoints[BODY_POINTS] - m[BODY_POINTS], axis=1)  # noqa: E731
                                for p, m in zip(o[tail], truth[tail])])
    assert err(outs) < 0.85 * err(plain), (err(outs), err(plain))  # measured: 4.6 vs 6.0 mm


def test_held_offsets_are_the_mean_of_the_calibrations_second_half(body):
    """Offsets move on every good fit during the calibration; what is held afterwards is their mean over its
    second half (rounds 4-6 of 6), not the last, noisiest step."""
    frames = 40
    truth_params = _motion(body, frames)
    with torch.no_grad():
        truth = body.keypoints(torch.as_tensor(truth_params, dtype=torch.float32)).double().numpy()
    targets, times = _observed(truth, 0.01, seed=1)
    common = dict(fit=FitSettings(max_iterations=2, jacobian="analytic"), shape_frames=5, offset_frames=1)

    def offsets_by_round(rounds):
        context = make_context(body, TrackSettings(offset_rounds=rounds, **common))
        state, seen = track_init(context), {}
        for t, tg in zip(times, targets):
            state, _ = track_step(state, tg, int(t), context)
            seen.setdefault(state.offset_round, None if state.offsets is None else state.offsets.copy())
        return state, seen

    held, _ = offsets_by_round(6)
    _, longer = offsets_by_round(7)  # the same steps, one round more: rounds 4-6 are not yet averaged there
    assert held.offset_round == 6
    np.testing.assert_allclose(held.offsets, (longer[4] + longer[5] + longer[6]) / 3, atol=1e-12)
    assert not np.allclose(held.offsets, longer[6])  # not the last step
