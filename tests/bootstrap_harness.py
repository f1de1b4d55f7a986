"""Short takes of the synthetic stage through an in-process sync node: who the take starts on (not a test module).

The stage and node are those of `streamer run` with a synthetic capture source and the plain detector (every
person reported), on a virtual clock: frame k of every camera arrives 2 ms after its capture time; the sync node
is ticked just before the next frame is due. Used by tests/test_bootstrap_confirmation.py and to measure the
rate of takes that start on the distractor (see that module)."""
from __future__ import annotations

import contextlib
import itertools
import time

import numpy as np

from protocol import Points3D
from streamer.node import NodeConfig

__all__ = ["VirtualClock", "build_stage", "run_take", "take_summary"]

FPS = 30.0


def build_stage(n_cameras: int, seed: int = 1):
    """The synthetic stage of `streamer run` with `n_cameras` cameras at 30 fps (performer 0, distractor 1)."""
    from nodes.capture import Settings, build_synthetic_stage

    return build_synthetic_stage(Settings(cameras=tuple(f"cam{i}" for i in range(n_cameras)), source="synthetic",
                                          estimator="synthetic", synth_cameras=n_cameras, synth_fps=FPS,
                                          synth_seed=seed))


class VirtualClock:
    """`time` as the sync node sees it: monotonic_ns follows the stage (set per message), 1 us per call."""

    def __init__(self) -> None:
        self.now_ns = 0

    def monotonic_ns(self) -> int:
        self.now_ns += 1_000
        return self.now_ns

    def __getattr__(self, name):
        return getattr(time, name)


@contextlib.contextmanager
def _virtual_time(module):
    clock = VirtualClock()
    real = module.time
    module.time = clock
    try:
        yield clock
    finally:
        module.time = real


def run_take(stage, start: int, n_frames: int, late: tuple[str, int] | None = None,
             **sync_settings) -> tuple[list[tuple[int, Points3D, int | None]], dict]:
    """Frames start..start+n_frames-1 of every camera through a fresh Sync node (a take that starts at `start`).

    late: (camera, frames): that camera's first frames of the take are not sent (it joins the take late, so the
    first frame sets lack it). Returns ([(frame, points3d, nearest true person or None when not usable)], the
    node's local counters)."""
    import nodes.sync as nodes_sync

    out = []
    with _virtual_time(nodes_sync) as clock:
        node = nodes_sync.Sync(NodeConfig(name="sync", bind="inproc://unused"),
                               nodes_sync.Settings(fps=FPS, deadline_ms=60.0, publish_hints=False,
                                                   **sync_settings))
        published = []
        node.publish = lambda msg: published.append(msg) or True
        node.publish_state = lambda msg: True
        node.setup()
        node.on_message("calib", stage.calibration())
        for frame in range(start, start + n_frames):
            observed = [o for o, _ in stage.observe_cameras(frame).values()
                        if o is not None and not (late and o.camera == late[0] and frame < start + late[1])]
            for msg in sorted(observed, key=lambda m: m.t_capture_ns):
                clock.now_ns = max(clock.now_ns, msg.t_capture_ns + 2_000_000)
                node.on_message(f"kp2d/{msg.camera}", msg)
            clock.now_ns = max(clock.now_ns, stage.frame_time_ns(frame + 1) - 1_000_000)
            node.on_tick(0)
            for msg in published:
                if isinstance(msg, Points3D):
                    person = None
                    if msg.usable:
                        truth = stage.points_at((msg.t_ns - stage.settings.t0_ns) / 1e9)
                        valid = np.isfinite(msg.points[:, 0])
                        person = int(np.argmin([np.median(np.linalg.norm(msg.points[valid] - body[valid], axis=1))
                                                for body in truth]))
                    out.append((frame, msg, person))
            published.clear()
    return out, dict(node.local)


def take_summary(take, start: int) -> dict:
    """first: the true person of the first usable points3d (None: none); first_frame: frames from the take's start
    to it; switches: changes of true person between usable points3d; last: the last usable one's person."""
    points, counters = take
    people = [(frame, person) for frame, _, person in points if person is not None]
    return {"start": start, "first": people[0][1] if people else None,
            "first_frame": people[0][0] - start if people else None,
            "switches": sum(a[1] != b[1] for a, b in itertools.pairwise(people)),
            "last": people[-1][1] if people else None, "bootstraps": counters.get("bootstraps", 0)}
