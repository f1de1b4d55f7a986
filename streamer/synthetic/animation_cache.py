"""Content-keyed on-disk cache of the synthetic stage's precomputed animations.

Building a stage animates every person through the Anny body model (importing torch and anny and
batching a whole motion cycle: ~10-20 s on a loaded 2-core machine). Every capture process and the
truth node of a live stage need the same animations, so the first process computes them and
stores one `.npz`; the others load it without importing torch or anny.

Key: sha256 over the settings that shape the animation (motion, seed, distractor, its path radius,
fps) and the code version (the source bytes of the motion and body-model modules and the installed
`anny` version). Nothing is trusted by name or by a folder existing: a file is used only when its
name is the key and its stored key matches; anything unreadable is recomputed and replaced.
Concurrent builders serialise on a lock file beside the entry, so only the first one computes.

Location: `$STREAMER_CACHE_DIR/synthetic` (default `~/.cache/streamer/synthetic`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from streamer.synthetic.motion import Animation

__all__ = ["animation_cache_key", "cache_dir", "load_or_build_animations"]

log = logging.getLogger(__name__)

_FORMAT = 1  # bump when the file layout changes
_CODE_FILES = ("synthetic/motion.py", "body/anny_model.py")


def cache_dir() -> Path:
    """Folder of cached animations (`$STREAMER_CACHE_DIR/synthetic`, default ~/.cache/streamer/synthetic)."""
    root = os.environ.get("STREAMER_CACHE_DIR") or Path.home() / ".cache" / "streamer"
    return Path(root) / "synthetic"


def _code_version() -> str:
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"format {_FORMAT}".encode())
    for relative in _CODE_FILES:
        digest.update((package / relative).read_bytes())
    try:
        digest.update(importlib.metadata.version("anny").encode())
    except importlib.metadata.PackageNotFoundError:
        digest.update(b"anny missing")
    return digest.hexdigest()


def animation_cache_key(settings) -> str:
    """32 hex digits identifying the animations of `settings` (a StageSettings) with this code."""
    shaping = {"motion": asdict(settings.motion), "seed": settings.seed, "distractor": settings.distractor,
               "distractor_path_radius_m": settings.distractor_path_radius_m, "fps": float(settings.rig.fps)}
    text = json.dumps(shaping, sort_keys=True) + _code_version()
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _load(path: Path, key: str) -> list[Animation] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            count = int(data["count"])
            fps = float(data["fps"])
            return [Animation(fps=fps, params=data[f"params{i}"], keypoints=data[f"keypoints{i}"])
                    for i in range(count)]
    except (OSError, KeyError, ValueError) as exc:
        if path.exists():
            log.warning("animation cache %s unreadable (%s): recomputing", path, exc)
        return None


def _store(path: Path, key: str, animations: list[Animation]) -> None:
    arrays = {"key": np.array(key), "count": np.array(len(animations)), "fps": np.array(animations[0].fps)}
    for i, a in enumerate(animations):
        arrays[f"params{i}"] = a.params
        arrays[f"keypoints{i}"] = a.keypoints
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)  # readers see a whole file or none


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_or_build_animations(settings, build: Callable[[], list[Animation]]) -> list[Animation]:
    """The animations of `settings` from the cache, else `build()` (stored for the next process).

    An unwritable cache folder only costs the build: the result is returned either way."""
    key = animation_cache_key(settings)
    folder = cache_dir()
    path = folder / f"{key}.npz"
    cached = _load(path, key)
    if cached is not None:
        return cached
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = _locked(folder / f"{key}.lock")
        lock.__enter__()
    except OSError as exc:
        log.warning("animation cache %s not usable (%s): computing without it", folder, exc)
        return build()
    try:
        cached = _load(path, key)  # another process may have built it while we waited
        if cached is not None:
            return cached
        log.info("computing the synthetic animations (cached for the next processes in %s)", folder)
        animations = build()
        try:
            _store(path, key, animations)
        except OSError as exc:
            log.warning("animation cache %s not written: %s", path, exc)
        return animations
    finally:
        lock.__exit__(None, None, None)
