"""The capture node's `pipeline_estimates`: frame set t is submitted before t-1's persons are taken, and every
frame is still published exactly once, in order, with its own persons (not its neighbour's).

In-process node (its publish captured, as tests/test_fit_node.py does) over real image-folder sources (PNG files
and a timestamp file on disk), with a deterministic test estimator behind the real `Estimator` interface: each
person's keypoints carry the frame's pixel value, so a person published with the wrong frame shows.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from protocol.messages import Keypoints2D, Person2D
from streamer.capture.estimator import Estimator, Finished, View
from streamer.node import NodeConfig

FRAMES = 12


def _kp(out: list) -> list[Keypoints2D]:
    """The node's published Keypoints2D messages, in publishing order."""
    return [m for m in out if isinstance(m, Keypoints2D)]


class _Deferred:
    """A submitted estimate computed only when asked for (as a GPU estimator's pending result)."""

    def __init__(self, estimator: "_PixelValueEstimator", views: list[View]) -> None:
        self.estimator, self.views = estimator, views

    def result(self) -> list[list[Person2D]]:
        self.estimator.events.append(("result", [int(v.image[0, 0, 0]) for v in self.views]))
        return self.estimator.estimate(self.views)


class _PixelValueEstimator(Estimator):
    """TEST estimator: one person per view whose 70 keypoints all sit at (pixel value, pixel value)."""

    name = "pixel-value"

    def __init__(self) -> None:
        self.events: list[tuple[str, list[int]]] = []

    def estimate(self, views):
        return [[Person2D(keypoints=np.full((70, 2), float(v.image[0, 0, 0]), np.float32),
                          confidence=np.ones(70, np.float32), box=np.array([0, 0, 8, 8], np.float32), score=1.0)]
                for v in views]

    def submit(self, views):
        self.events.append(("submit", [int(v.image[0, 0, 0]) for v in views]))
        return _Deferred(self, list(views))


def _folder(root: Path, camera: str, offset: int) -> Path:
    folder = root / camera
    folder.mkdir()
    rows = ["file,t_ns"]
    for i in range(FRAMES):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((8, 8, 3), offset + i, np.uint8))
        rows.append(f"{i:03d}.png,{i * 33_333_333}")
    (folder / "timestamps.csv").write_text("\n".join(rows) + "\n")
    return folder


def _run(tmp_path: Path, monkeypatch, pipelined: bool, stop_at_end: bool = True, frame_sets_per_call: int = 1
         ) -> tuple[list, list, object]:
    import nodes.capture as capture

    estimator = _PixelValueEstimator()
    monkeypatch.setattr(capture, "build_estimator", lambda settings: (estimator, None))
    root = tmp_path / f"{'pipelined' if pipelined else 'serial'}-{frame_sets_per_call}"
    root.mkdir()
    settings = capture.Settings(cameras=("a", "b"), source="images",
                                sources=(str(_folder(root, "a", 0)), str(_folder(root, "b", 100))),
                                estimator="mediapipe", pace=False, warmup=False, pipeline_estimates=pipelined,
                                stop_at_end=stop_at_end, frame_sets_per_call=frame_sets_per_call)
    node = capture.Capture(NodeConfig(name="cap", bind=f"inproc://cap-{pipelined}-{frame_sets_per_call}"), settings)
    out: list = []
    node.publish = lambda msg: out.append(msg) or True
    node.setup()
    for _ in range(FRAMES + 2):
        if node._stop:
            break
        node.on_tick(node.clock.now_ns())
    return out, estimator.events, node


@pytest.mark.parametrize("pipelined", [False, True])
def test_every_frame_is_published_once_in_order_with_its_own_persons(tmp_path, monkeypatch, pipelined):
    out, events, node = _run(tmp_path, monkeypatch, pipelined)
    published = _kp(out)
    assert node._stop  # the sources ended and the node stopped itself, the last frame set flushed first
    for camera, offset in (("a", 0), ("b", 100)):
        mine = [m for m in published if m.camera == camera]
        assert [m.frame_index for m in mine] == list(range(FRAMES))
        assert [m.seq for m in mine] == list(range(FRAMES))
        for m in mine:  # each frame carries the persons estimated on its own image
            assert m.persons[0].keypoints[0, 0] == offset + m.frame_index
    kinds = [kind for kind, _ in events]
    if pipelined:  # frame set t+1 is submitted before frame set t's persons are taken
        assert kinds[:3] == ["submit", "submit", "result"] and events[2][1] == events[0][1]
    else:
        assert kinds[:4] == ["submit", "result", "submit", "result"]
    assert kinds.count("submit") == kinds.count("result") == FRAMES


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("sets", [2, 5])
def test_gathered_frame_sets_go_in_one_call_and_each_frame_keeps_its_persons(tmp_path, monkeypatch, pipelined, sets):
    out, events, node = _run(tmp_path, monkeypatch, pipelined, frame_sets_per_call=sets)
    assert node._stop
    for camera, offset in (("a", 0), ("b", 100)):
        mine = [m for m in _kp(out) if m.camera == camera]
        assert [m.frame_index for m in mine] == list(range(FRAMES))
        assert all(m.persons[0].keypoints[0, 0] == offset + m.frame_index for m in mine)
    submits = [pixels for kind, pixels in events if kind == "submit"]
    calls = -(-FRAMES // sets)  # the last call holds what is left when the sources end
    assert len(submits) == calls and [kind for kind, _ in events].count("result") == calls
    for i, pixels in enumerate(submits):  # views in order: set by set, camera by camera
        first, last = i * sets, min(FRAMES, (i + 1) * sets)
        assert pixels == [p for f in range(first, last) for p in (f, 100 + f)]


def test_a_partial_gathering_goes_after_the_flush_time(tmp_path, monkeypatch):
    import nodes.capture as capture

    out, events, node = _run(tmp_path, monkeypatch, False, stop_at_end=False, frame_sets_per_call=5)
    assert len(_kp(out)) == 2 * 10 and node.gathered_sets == 2  # 12 frames: two calls of 5, 2 sets gathered
    time.sleep(capture.PIPELINE_FLUSH_NS / 1e9 * 1.5)
    node.on_tick(node.clock.now_ns())
    assert len(_kp(out)) == 2 * FRAMES and node.gathered == []
    assert [pixels for kind, pixels in events if kind == "submit"][-1] == [10, 110, 11, 111]


def test_a_pipelined_frame_set_is_not_held_when_no_next_one_comes(tmp_path, monkeypatch):
    import nodes.capture as capture

    out, _, node = _run(tmp_path, monkeypatch, True, stop_at_end=False)
    assert not node._stop and len(_kp(out)) == 2 * (FRAMES - 1)  # the last frame set is still in flight
    node.on_tick(node.clock.now_ns())
    assert len(_kp(out)) == 2 * (FRAMES - 1)  # a tick without frames, too soon to give up on a next set
    time.sleep(capture.PIPELINE_FLUSH_NS / 1e9 * 1.5)
    node.on_tick(node.clock.now_ns())
    assert len(_kp(out)) == 2 * FRAMES and node.in_flight is None
    assert [m.frame_index for m in _kp(out)[-2:]] == [FRAMES - 1, FRAMES - 1]


def test_the_default_submit_computes_at_once():
    estimator = _PixelValueEstimator()
    done = Estimator.submit(estimator, [View("a", np.full((4, 4, 3), 9, np.uint8), np.eye(3))])
    assert isinstance(done, Finished) and done.result()[0][0].keypoints[0, 0] == 9
