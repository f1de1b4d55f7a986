"""Start-up cost of the demo: the synthetic animation cache and stopping a node during its setup."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.synthetic import MotionSettings, RigSettings, StageSettings
from streamer.synthetic.animation_cache import animation_cache_key, load_or_build_animations
from streamer.synthetic.motion import Animation

REPO = Path(__file__).resolve().parents[1]


def _fake_build(calls: list):
    def build():
        calls.append(1)
        rng = np.random.default_rng(len(calls))
        return [Animation(fps=60.0, params=rng.random((5, 4), dtype=np.float32), keypoints=rng.random((5, 70, 3)))]
    return build


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMER_CACHE_DIR", str(tmp_path))
    return tmp_path / "synthetic"


def test_key_follows_animation_settings_only():
    base = StageSettings()
    assert animation_cache_key(base) == animation_cache_key(StageSettings())
    for changed in (dataclasses.replace(base, seed=1), dataclasses.replace(base, distractor=False),
                    dataclasses.replace(base, rig=RigSettings(fps=30.0)),
                    dataclasses.replace(base, motion=MotionSettings(path_radius_m=1.5))):
        assert animation_cache_key(changed) != animation_cache_key(base)
    # the camera count and the observation model do not change the animation
    assert animation_cache_key(dataclasses.replace(base, rig=RigSettings(cameras=8))) == animation_cache_key(base)


def test_second_load_reads_the_stored_animation(cache_dir):
    calls: list = []
    first = load_or_build_animations(StageSettings(), _fake_build(calls))
    second = load_or_build_animations(StageSettings(), _fake_build(calls))
    assert len(calls) == 1
    np.testing.assert_array_equal(first[0].keypoints, second[0].keypoints)
    np.testing.assert_array_equal(first[0].params, second[0].params)
    assert second[0].fps == 60.0


def test_damaged_or_foreign_entry_is_recomputed(cache_dir):
    calls: list = []
    settings = StageSettings()
    load_or_build_animations(settings, _fake_build(calls))
    entry = cache_dir / f"{animation_cache_key(settings)}.npz"
    entry.write_bytes(b"not a zip file")
    rebuilt = load_or_build_animations(settings, _fake_build(calls))
    assert len(calls) == 2 and rebuilt[0].keypoints.shape == (5, 70, 3)
    # an entry whose stored key differs (e.g. copied by hand under another name) is not trusted
    other = StageSettings(seed=5)
    load_or_build_animations(other, _fake_build(calls))
    os.replace(cache_dir / f"{animation_cache_key(other)}.npz", entry)
    load_or_build_animations(settings, _fake_build(calls))
    assert len(calls) == 4


def test_unwritable_cache_still_builds(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("STREAMER_CACHE_DIR", str(blocker))  # a file where the folder should be
    calls: list = []
    assert len(load_or_build_animations(StageSettings(), _fake_build(calls))) == 1 and calls == [1]


@pytest.mark.slow
def test_cached_stage_starts_without_torch_and_sigterm_ends_a_slow_setup(tmp_path):
    env = dict(os.environ, STREAMER_CACHE_DIR=str(tmp_path))
    probe = ("import sys; from streamer.synthetic import SyntheticStage, StageSettings; "
             "s = SyntheticStage(StageSettings(distractor=False)); "
             "print(int('torch' in sys.modules), s.observe(3, 'cam1').frame_index)")
    first = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["1", "3"]  # computed: the body model was needed
    second = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert second.stdout.split() == ["0", "3"], second.stderr  # loaded: no torch import

    # a capture node building a stage that is not cached yet (another seed) stops promptly on SIGTERM
    node = subprocess.Popen(
        [sys.executable, "-m", "streamer", "node", "capture", "--name", "cam0", "--bind", "tcp://127.0.0.1:0",
         "--settings-json", '{"source": "synthetic", "estimator": "synthetic", "synth_seed": 7}'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    head = []
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:  # "start" is logged right before setup (import torch, animate: >= 1 s)
        line = node.stdout.readline()
        head.append(line)
        if not line or "msg=\"start pid=" in line:
            break
    assert node.poll() is None, "".join(head)
    sent = time.monotonic()
    node.send_signal(signal.SIGTERM)
    rest, _ = node.communicate(timeout=30)
    out = "".join(head) + rest
    assert time.monotonic() - sent < 5.0, out
    assert node.returncode == 0, out
    assert "stopped during setup" in out
