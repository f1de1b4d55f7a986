"""Natural motions of synthetic Anny bodies: walk, turn, arm raise, squat, hands opening and closing.

A motion program is a cycle of timed segments (default 20 s: walk 6, turn 3, arm raise 4, squat 4,
hands 3). Everything is periodic in the cycle (the walk is one lap of a circle, the turn a full
360°), so a live stage can loop it without a jump. Small idle motions (breathing sway, head turns,
finger play) run all the time. Per-person variation (shape, speeds, amplitudes, phases, walking
direction) comes from the seed only: the same (seed, person) gives the same animation.

Pose axes are Anny's "local-ref" axes (world-aligned in the reference pose: X left, Y back, Z up):
hip flexion is -X, knee flexion +X, shoulder abduction -Y (left) / +Y (right), elbow flexion -X,
spine flexion +X, finger curl + about the bone's reference X axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamer.body import mhr70

if TYPE_CHECKING:  # torch and anny are imported only when animating (stage start-up loads a cached animation)
    import torch

    from streamer.body.anny_model import AnnyBody

__all__ = ["MOTIONS", "Animation", "MotionSettings", "animate", "cycle_seconds", "motion_params"]

MOTIONS = ("walk", "turn", "arm_raise", "squat", "hands", "idle")
_FOOT_POINTS = np.r_[13:21]  # ankles, toes, heels


@dataclass(frozen=True)
class MotionSettings:
    """segments: (motion, seconds) in cycle order; path_radius_m: radius of the walked circle."""

    segments: tuple[tuple[str, float], ...] = (
        ("walk", 6.0), ("turn", 3.0), ("arm_raise", 4.0), ("squat", 4.0), ("hands", 3.0))
    path_radius_m: float = 1.0
    ramp_s: float = 0.6
    shape_spread: float = 0.25  # phenotypes drawn in 0.5 +- spread

    def __post_init__(self) -> None:
        for motion, seconds in self.segments:
            if motion not in MOTIONS:
                raise ValueError(f"motion: unknown motion {motion!r}; known: {', '.join(MOTIONS)}")
            if seconds <= 0:
                raise ValueError(f"motion: segment {motion!r} must last > 0 s, got {seconds}")
        if not self.segments:
            raise ValueError("motion: at least one segment is needed")


def cycle_seconds(settings: MotionSettings) -> float:
    return float(sum(seconds for _, seconds in settings.segments))


@dataclass(frozen=True)
class Animation:
    """One person's take, sampled at `fps` over one motion cycle (periodic).

    params: (T, P) float32 AnnyBody parameters. keypoints: (T, 70, 3) float64 MHR-70, metres, world.
    """

    fps: float
    params: np.ndarray
    keypoints: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.params)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _segment_progress(settings: MotionSettings, t: np.ndarray, motion: str) -> tuple[np.ndarray, np.ndarray]:
    """(progress u in [0, 1] inside the motion's segments, else 0; envelope with ramps, 0 outside)."""
    u = np.zeros_like(t)
    envelope = np.zeros_like(t)
    start = 0.0
    for name, seconds in settings.segments:
        inside = (t >= start) & (t < start + seconds)
        if name == motion:
            local = t[inside] - start
            u[inside] = local / seconds
            ramp = min(settings.ramp_s, seconds / 2)
            envelope[inside] = _smoothstep(local / ramp) * _smoothstep((seconds - local) / ramp)
        start += seconds
    return u, envelope


def motion_params(body: AnnyBody, settings: MotionSettings, times_s: np.ndarray, *, seed: int,
                  person: int = 0, path_radius_m: float | None = None) -> torch.Tensor:
    """(T, P) AnnyBody parameters at `times_s` (taken modulo the cycle), before ground contact."""
    import torch

    from streamer.body.anny_model import ANNY_SHAPE_NAMES

    rng = np.random.default_rng([seed, person, 7])
    cycle = cycle_seconds(settings)
    t = np.mod(np.asarray(times_s, dtype=np.float64), cycle)
    radius = settings.path_radius_m if path_radius_m is None else path_radius_m
    params = body.default_params(len(t)).to(torch.float64).cpu().numpy().copy()
    g = body.groups

    def set_rot(bone: str, axis: int, values: np.ndarray) -> None:
        params[:, g[f"pose:{bone}"].start + axis] += values

    shape = 0.5 + settings.shape_spread * rng.uniform(-1, 1, len(ANNY_SHAPE_NAMES))
    params[:, g["shape"]] = shape
    direction = 1.0 if rng.random() < 0.5 else -1.0
    theta0 = rng.uniform(0, 2 * math.pi)
    stride_hz = rng.uniform(0.8, 1.0)
    hip_amp, knee_amp, arm_amp = rng.uniform(0.3, 0.42), rng.uniform(0.5, 0.75), rng.uniform(0.2, 0.4)
    phases = rng.uniform(0, 2 * math.pi, 8)

    # Walk: one lap per cycle, gait phase advancing only while walking.
    fine = np.linspace(0.0, cycle, 4001)
    _, fine_env = _segment_progress(settings, fine, "walk")
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (fine_env[1:] + fine_env[:-1]) * np.diff(fine))])
    lap = np.interp(t, fine, cumulative) / cumulative[-1] if cumulative[-1] > 0 else np.zeros_like(t)
    theta = theta0 + direction * 2 * math.pi * lap
    _, walk = _segment_progress(settings, t, "walk")
    strides = max(1, round(stride_hz * cumulative[-1]))  # whole gait cycles per lap: a seamless loop
    gait = 2 * math.pi * strides * lap
    swing = np.sin(gait) * walk
    set_rot("upperleg01.L", 0, -hip_amp * swing)
    set_rot("upperleg01.R", 0, hip_amp * swing)
    set_rot("lowerleg01.L", 0, knee_amp * walk * np.clip(np.sin(gait + 1.2), 0, None))
    set_rot("lowerleg01.R", 0, knee_amp * walk * np.clip(np.sin(gait + 1.2 + math.pi), 0, None))
    set_rot("upperarm01.L", 0, arm_amp * swing)
    set_rot("upperarm01.R", 0, -arm_amp * swing)
    set_rot("lowerarm01.L", 0, -0.3 * walk)
    set_rot("lowerarm01.R", 0, -0.3 * walk)

    # Heading: along the path tangent, plus one full turn in place during "turn".
    u_turn, _ = _segment_progress(settings, t, "turn")
    yaw = theta + (math.pi if direction > 0 else 0.0) + 2 * math.pi * _smoothstep(u_turn) * direction
    params[:, g["global_rot"]] = np.stack([np.zeros_like(yaw), np.zeros_like(yaw), yaw], axis=1)
    params[:, g["transl"].start] = radius * np.cos(theta)
    params[:, g["transl"].start + 1] = radius * np.sin(theta)

    # Arm raise: left, right, then both, sideways up to ~130 degrees, elbows softly bent.
    u_arm, _ = _segment_progress(settings, t, "arm_raise")
    third = np.clip(u_arm * 3, 0, 3)
    left = np.where(third < 1, np.sin(math.pi * third) ** 2, 0) + np.where(third >= 2, np.sin(math.pi * third) ** 2, 0)
    right = np.where((third >= 1) & (third < 2), np.sin(math.pi * third) ** 2, 0) + np.where(
        third >= 2, np.sin(math.pi * third) ** 2, 0)
    left, right = left * (u_arm > 0), right * (u_arm > 0)
    raise_amp = rng.uniform(1.9, 2.3)
    set_rot("upperarm01.L", 1, -raise_amp * left)
    set_rot("upperarm01.R", 1, raise_amp * right)
    set_rot("lowerarm01.L", 0, -0.4 * left)
    set_rot("lowerarm01.R", 0, -0.4 * right)

    # Squat: two squats; thighs forward, shins lean forward a little, feet flat, torso leans.
    u_squat, _ = _segment_progress(settings, t, "squat")
    depth = np.sin(2 * math.pi * u_squat) ** 2 * rng.uniform(1.1, 1.4)
    shin = 0.35 * depth
    for s in ("L", "R"):
        set_rot(f"upperleg01.{s}", 0, -depth)
        set_rot(f"lowerleg01.{s}", 0, depth + shin)
        set_rot(f"foot.{s}", 0, -shin)
    set_rot("spine03", 0, 0.35 * depth)
    set_rot("upperarm01.L", 0, -0.6 * depth)
    set_rot("upperarm01.R", 0, -0.6 * depth)

    # Hands: open and close twice; fingers also play a little all the time.
    u_hands, _ = _segment_progress(settings, t, "hands")
    curl = 1.1 * np.sin(2 * math.pi * u_hands) ** 2 + 0.15 + 0.1 * np.sin(2 * math.pi * t / cycle * 3 + phases[0])
    reference = body._t["reference_orientations"].to(torch.float64).cpu().numpy()
    for s in ("L", "R"):
        for finger in range(1, 6):
            for phalanx in range(1, 4):
                bone = f"finger{finger}-{phalanx}.{s}"
                axis = reference[body.joint_names.index(bone)][:, 0]
                scale = (0.3 if phalanx == 1 else 0.5) if finger == 1 else (0.9 if phalanx == 1 else 1.0)
                sl = g[f"pose:{bone}"]
                params[:, sl] += (scale * curl)[:, None] * axis[None, :]

    # Idle: breathing sway, head turns (periodic in the cycle).
    w = 2 * math.pi / cycle
    set_rot("spine02", 1, 0.04 * np.sin(3 * w * t + phases[1]))
    set_rot("spine02", 0, 0.03 * np.sin(5 * w * t + phases[2]))
    set_rot("neck01", 2, 0.35 * np.sin(2 * w * t + phases[3]))
    set_rot("head", 0, 0.12 * np.sin(4 * w * t + phases[4]))
    set_rot("wrist.L", 0, 0.2 * np.sin(6 * w * t + phases[5]))
    set_rot("wrist.R", 0, 0.2 * np.sin(6 * w * t + phases[6]))
    return torch.from_numpy(params)


def animate(body: AnnyBody, settings: MotionSettings, *, fps: float, seed: int, person: int = 0,
            path_radius_m: float | None = None, chunk: int = 512) -> Animation:
    """One motion cycle of one person at `fps`, with the feet kept on the floor (z >= 0)."""
    import torch

    frames = max(1, round(cycle_seconds(settings) * fps))
    times = np.arange(frames) / fps
    params = motion_params(body, settings, times, seed=seed, person=person, path_radius_m=path_radius_m)
    params = params.to(device=body.device, dtype=body.dtype)
    with torch.no_grad():
        rest_floor = float(body.keypoints(body.default_params(1))[0, _FOOT_POINTS, 2].min())
        keypoints = torch.cat([body.keypoints(params[i:i + chunk]) for i in range(0, frames, chunk)])
    keypoints = keypoints.to(torch.float64).cpu().numpy()
    lift = rest_floor - keypoints[:, _FOOT_POINTS, 2].min(axis=1)  # lowest foot point on its rest height
    keypoints[:, :, 2] += lift[:, None]
    params_np = params.to(torch.float64).cpu().numpy()
    params_np[:, body.groups["transl"].start + 2] += lift
    assert keypoints.shape[1] == mhr70.NUM_KEYPOINTS
    return Animation(fps=float(fps), params=params_np.astype(np.float32), keypoints=keypoints)
