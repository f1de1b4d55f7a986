"""Capture sources and the latest-frame grabber on the real Pose2Sim videos (skip without ../shared/data)."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import streamer.capture.sources as sources_module
from streamer.capture.latest import LatestFrameGrabber
from streamer.capture.sources import (
    ImageFolderSource,
    SourceError,
    SyntheticSource,
    VideoFileSource,
    buffer_time_to_clock_ns,
    read_timestamp_file,
)
from tests.shared_data import SHARED

VIDEOS = SHARED / "pose2sim_demo" / "S00_P00_T01_BalancingTrial" / "videos"
CAMERAS = ["cam01", "cam02", "cam03", "cam04"]
FRAME_NS = 1e9 / 60


@pytest.fixture(scope="module")
def videos() -> Path:
    if not VIDEOS.is_dir():
        pytest.skip(f"shared test data not found at {VIDEOS} (see ../shared/reference/data.md)")
    return VIDEOS


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    """100 frames, 160 x 120, 60 fps MJPG: decodes in ~1 ms, so timing tests do not depend on a busy CPU
    keeping up with 1080 x 1920 H.264 (which the real-video tests cover)."""
    path = tmp_path_factory.mktemp("video") / "small.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 60.0, (160, 120))
    assert writer.isOpened()
    for i in range(100):
        writer.write(np.full((120, 160, 3), i, np.uint8))
    writer.release()
    return path


@pytest.mark.data
@pytest.mark.parametrize("camera", CAMERAS)
def test_video_source_delivers_100_frames_with_container_times(videos, camera):
    t0 = 5_000_000_000
    with VideoFileSource(videos / f"{camera}.mp4", t0_ns=t0) as source:
        frames = [(f.index, f.t_capture_ns, f.image_size, f.image.shape, f.image.dtype) for f in source]
        assert source.container_times
    assert source.nominal_fps == pytest.approx(60.0)
    assert len(frames) == 100
    assert [f[0] for f in frames] == list(range(100))
    times = np.array([f[1] for f in frames], np.float64)
    np.testing.assert_allclose(times - t0, np.arange(100) * FRAME_NS, atol=1e3)  # within 1 us of i/60 s
    width, height = frames[0][2]
    assert height == 1920 and width in (1080, 1088)  # data.md: cam01/02 1080 wide, cam03/04 1088
    assert all(f[3] == (height, width, 3) and f[4] == np.uint8 for f in frames)


@pytest.mark.data
def test_video_source_is_rgb(videos):
    with VideoFileSource(videos / "cam03.mp4") as source:
        rgb = source.read().image
    capture = cv2.VideoCapture(str(videos / "cam03.mp4"))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])


def test_latest_frame_grabber_drops_stale_frames_under_a_slow_estimator(small_video):
    """Camera-paced 60 fps source, estimator taking 40 ms: drops are counted, nothing queues: a delivered
    frame waited in the slot at most about one estimator iteration, and that wait does not grow over the run."""
    slow_estimator_s = 0.040
    waits_ms, indices = [], []
    with LatestFrameGrabber(VideoFileSource(small_video), pace=True) as grabber:
        while (frame := grabber.latest(timeout_s=2.0)) is not None:
            waits_ms.append(grabber.last_wait_ns / 1e6)
            indices.append(frame.index)
            assert grabber.backlog == 0  # the slot was emptied by latest(): no queue behind it
            time.sleep(slow_estimator_s)
        counts = grabber.counts
    assert grabber.error is None and grabber.ended
    assert counts["grabbed"] == 100
    assert counts["delivered"] == len(indices)
    assert counts["dropped"] == counts["grabbed"] - counts["delivered"]
    # 100 frames over ~1.65 s at ~42 ms per estimate: about 40 delivered, about 60 dropped
    assert 20 <= counts["delivered"] <= 60 and counts["dropped"] >= 40
    assert indices == sorted(set(indices))  # newest first-come, never re-delivered, never reordered
    assert indices[-1] >= 97  # the end of the take is reached, not left in a queue
    waits = np.array(waits_ms)
    assert waits.min() >= 0 and np.percentile(waits, 90) < slow_estimator_s * 1e3 + 20
    first, last = waits[: len(waits) // 2], waits[len(waits) // 2:]
    assert np.median(last) < np.median(first) + 10


def test_paced_grabber_with_a_fast_consumer_delivers_every_frame_in_order(small_video):
    with LatestFrameGrabber(VideoFileSource(small_video), pace=True) as grabber:
        indices = []
        while (frame := grabber.latest(timeout_s=2.0)) is not None:
            indices.append(frame.index)
    # a consumer faster than the camera gets every frame (a CPU-starved decoder could have to skip a few
    # to stay live, and would count them)
    assert indices == sorted(set(indices)) and len(indices) + grabber.dropped == 100
    assert grabber.dropped <= 5


def test_grabber_reports_a_dying_source():
    class Dying:
        live = True
        nominal_fps = 30.0
        def __init__(self):
            self.n = 0
        def read(self):
            self.n += 1
            if self.n > 3:
                raise SourceError("webcam 0: grab failed (unplugged or busy)")
            from streamer.capture.sources import Frame
            return Frame(self.n - 1, self.n, (4, 4), np.zeros((4, 4, 3), np.uint8))
        def close(self):
            pass

    with LatestFrameGrabber(Dying()) as grabber:
        got = []
        while (frame := grabber.latest(timeout_s=1.0)) is not None:
            got.append(frame.index)
    assert isinstance(grabber.error, SourceError) and "unplugged" in str(grabber.error)
    assert grabber.grabbed == 3 and len(got) + grabber.dropped == 3


def test_v4l2_buffer_time_conversion():
    mono_now, clock_now = 1_000_000_000_000, 1_700_000_000_000_000_000
    # a buffer stamped 12.5 ms ago on CLOCK_MONOTONIC
    buffer_ms = (mono_now - 12_500_000) / 1e6
    assert buffer_time_to_clock_ns(buffer_ms, mono_now, clock_now) == clock_now - 12_500_000
    assert buffer_time_to_clock_ns(0.0, mono_now, clock_now) is None  # driver gave nothing
    assert buffer_time_to_clock_ns((mono_now + 5_000_000) / 1e6, mono_now, clock_now) is None  # future
    assert buffer_time_to_clock_ns((mono_now - 3_000_000_000) / 1e6, mono_now, clock_now) is None  # stale clock
    assert buffer_time_to_clock_ns(float("nan"), mono_now, clock_now) is None


def _write_folder(tmp_path: Path, header: str, rows: list[str], n_images: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n_images):
        cv2.imwrite(str(tmp_path / f"img_{i:03d}.png"), rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    (tmp_path / "timestamps.csv").write_text("\n".join([header, *rows]) + "\n")
    return tmp_path


def test_image_folder_source_reads_listed_files_with_their_times(tmp_path):
    folder = _write_folder(tmp_path, "frame,file,t_s", ["10,img_000.png,1.0", "11,img_001.png,1.04",
                                                        "13,img_002.png,1.12"])
    with ImageFolderSource(folder, t0_ns=7) as source:
        frames = list(source)
    assert [f.index for f in frames] == [10, 11, 13]
    assert [f.t_capture_ns for f in frames] == [7 + 1_000_000_000, 7 + 1_040_000_000, 7 + 1_120_000_000]
    bgr = cv2.imread(str(folder / "img_001.png"))
    np.testing.assert_array_equal(frames[1].image, bgr[:, :, ::-1])
    assert frames[0].image_size == (8, 6)
    assert source.nominal_fps == pytest.approx(2 / 0.12)


@pytest.mark.parametrize("header,rows,match", [
    ("name,t_ns", ["img_000.png,1"], "header must name"),
    ("file,t_ns", ["img_000.png,abc"], "line 2"),
    ("file,t_ns", ["img_000.png,5", "img_001.png,5"], "must increase"),
    ("file,t_ns", ["../img_000.png,5"], "plain file name"),
    ("file,t_ns", ["img_000.png,5", "img_009.png,6"], "do not exist"),
])
def test_image_folder_source_rejects_bad_timestamp_files(tmp_path, header, rows, match):
    folder = _write_folder(tmp_path, header, rows)
    with pytest.raises(SourceError, match=match):
        ImageFolderSource(folder)


def test_timestamp_file_with_integer_ns(tmp_path):
    (tmp_path / "t.csv").write_text("file,t_ns\na.png,100\nb.png,200\n")
    assert read_timestamp_file(tmp_path / "t.csv") == [(0, "a.png", 100), (1, "b.png", 200)]


def test_missing_video_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        VideoFileSource(tmp_path / "nope.mp4")


@pytest.mark.data
def test_sequential_reader_gives_every_frame_to_a_slow_consumer(videos):
    from streamer.capture.latest import SequentialReader

    with SequentialReader(VideoFileSource(videos / "cam04.mp4")) as reader:
        indices = []
        while (frame := reader.latest()) is not None:
            indices.append(frame.index)
            if len(indices) % 25 == 0:
                time.sleep(0.05)
    assert indices == list(range(100)) and reader.counts == {"grabbed": 100, "delivered": 100, "dropped": 0}
    assert reader.ended and reader.error is None


def test_missing_webcam_is_a_clear_error():
    with pytest.raises(SourceError, match="webcam '/dev/video_does_not_exist'"):
        from streamer.capture.sources import WebcamSource

        WebcamSource("/dev/video_does_not_exist")


def test_paced_source_behind_real_time_skips_to_stay_live(small_video):
    """A file 'camera' whose reader stalls (here: 0.5 s in the middle) skips the frames whose successors are
    already due instead of releasing them late: delivered frames stay close to real time."""
    class Stalling(VideoFileSource):
        def read(self):
            if self._index == 30:
                time.sleep(0.5)
            return super().read()

    with LatestFrameGrabber(Stalling(small_video), pace=True) as grabber:
        late_ms, indices = [], []
        while (frame := grabber.latest(timeout_s=2.0)) is not None:
            late_ms.append((time.monotonic_ns() - grabber.last_wait_ns - grabber.release_monotonic_ns(frame)) / 1e6)
            indices.append(frame.index)
    assert grabber.grabbed == 100 and grabber.grabbed == grabber.delivered + grabber.dropped
    after = [late for i, late in zip(indices, late_ms) if i > 30 + 35]  # well after the stall
    assert grabber.dropped >= 20  # ~0.5 s of frames (30) skipped or overwritten
    assert after and np.median(after) < 3 * FRAME_NS / 1e6  # back to real time, not 500 ms behind


def test_live_synthetic_source_starts_at_the_current_frame_without_counting_earlier_ones_as_skipped(monkeypatch):
    """The stage started long before the capture node: the first read is the current frame, `skipped` stays 0;
    falling behind afterwards is counted."""
    from streamer.synthetic.observe import ObservationSettings
    from streamer.synthetic.rig import RigSettings
    from streamer.synthetic.stage import StageSettings, SyntheticStage

    stage = SyntheticStage(StageSettings(rig=RigSettings(cameras=2, fps=30.0), distractor=False,
                                         observation=ObservationSettings(drop_rate=0.0)))
    now_ns = [stage.exposure_time_ns(1000, "cam0") + 1]  # the stage clock, set by the test: frame 1000 is due
    source = SyntheticSource(stage, "cam0", realtime=True, clock_ns=lambda: now_ns[0])
    first = source.read()
    assert first.index == 1000 and first.t_capture_ns >= stage.frame_time_ns(1000) - 10**8
    assert source.skipped == 0
    now_ns[0] = stage.exposure_time_ns(1005, "cam0") + 1  # the reader fell behind by frames 1001..1004
    assert source.read().index == 1005
    assert source.skipped == 4
    # a frame is never delivered before its exposure (frame time + the camera's trigger phase): the source
    # waits for it (the test's sleep moves the test's clock)
    now_ns[0] = stage.exposure_time_ns(1006, "cam0") - 2_000_000
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now_ns[0] += round(seconds * 1e9)

    monkeypatch.setattr(sources_module.time, "sleep", sleep)
    assert source.read().index == 1006 and slept == [pytest.approx(0.002)]
    assert now_ns[0] >= stage.exposure_time_ns(1006, "cam0")
