"""A video file or a folder of images standing in for a camera: development, CI, benchmarks, the demo.

pace realtime releases frames at the video's rate through the same newest-only grabber as a
camera, so a slow pipeline drops frames just as it would at the door. pace fast reads in the
caller's thread and returns every frame in order, as fast as it is asked for.
With loop, `video_time` grows on across passes (pass k starts at k times the pass's duration),
so time never runs backwards for the tracker; `loops` counts the completed passes.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from daemon.sources.base import CorruptFrame, EndOfStream, FrameSource, Grabbed, SourceLost
from daemon.sources.opencv import CaptureFactory, metadata_rotation

log = logging.getLogger("facegate.sources")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
DEFAULT_FPS = 10.0  # an image folder's rate, or a video's that does not state one, unless camera.fps is set


class _VideoFile:
    def __init__(self, path: Path, capture_factory: CaptureFactory) -> None:
        self._capture = capture_factory(str(path), cv2.CAP_ANY)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceLost(f"cannot open video {path}")
        self.rotation = metadata_rotation(self._capture)
        self.fps: float | None = self._capture.get(cv2.CAP_PROP_FPS) or None
        self.position = 0  # frames read so far

    def seek(self, position: int) -> None:
        if position:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, position)
        self.position = position

    def read(self) -> Any:
        """The next frame as decoded (BGR, checked by the caller); EndOfStream at the end."""
        ok, image = self._capture.read()
        if not ok:
            raise EndOfStream
        self.position += 1
        return image

    def close(self) -> None:
        self._capture.release()


class _ImageFolder:
    rotation = 0  # cv2.imread already applies EXIF orientation
    fps: float | None = None

    def __init__(self, path: Path) -> None:
        self._files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                             key=_natural_key)
        self.position = 0

    def seek(self, position: int) -> None:
        self.position = position

    def read(self) -> np.ndarray:
        """The next image (BGR); CorruptFrame for one that does not decode, EndOfStream at the end."""
        if self.position >= len(self._files):
            raise EndOfStream
        file = self._files[self.position]
        self.position += 1
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            raise CorruptFrame(f"unreadable image {file}")
        return image

    def close(self) -> None:
        pass


def _natural_key(path: Path) -> list[Any]:
    """frame2.png before frame10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class FileSource(FrameSource):
    """A video file or a folder of images (sorted by name, numbers in names compared as numbers)."""

    def __init__(self, path: str | Path, *, pace: str = "realtime", loop: bool = False, fps: float | None = None,
                 rotate: int = 0, capture_factory: CaptureFactory = cv2.VideoCapture,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        if pace not in ("realtime", "fast"):
            raise ValueError(f"pace = {pace!r} is not allowed: expected 'realtime' or 'fast'")
        super().__init__(rotate=rotate, newest_only=pace == "realtime", backoff=backoff)
        self.path = Path(path)
        self.pace, self.loop = pace, loop
        self.loops = 0
        self._fps_override = fps
        self._factory = capture_factory
        self._reader: _VideoFile | _ImageFolder | None = None
        self._fps = DEFAULT_FPS  # the reader's, known once it is open
        self._position = 0  # where a reopen after a failure resumes
        self._pass_start = 0.0  # video_time of the current pass's first frame
        self._good_in_pass = 0
        self._pace_origin: float | None = None  # monotonic time at which video_time 0 was (or would have been) due

    def describe(self) -> str:
        kind = "folder" if self.path.is_dir() else "video"
        return f"file {kind} {self.path} ({self.pace}{', loop' if self.loop else ''})"

    def _open(self) -> int:
        reader = _ImageFolder(self.path) if self.path.is_dir() else _VideoFile(self.path, self._factory)
        reader.seek(self._position)
        self._reader = reader
        self._fps = self._fps_override or reader.fps or DEFAULT_FPS
        return reader.rotation

    def _grab(self) -> Grabbed:
        try:
            image = self._read()
        except EndOfStream:
            self._rewind()
            image = self._read()
        self._good_in_pass += 1
        video_time = self._pass_start + (self._reader.position - 1) / self._fps
        self._pace(video_time)
        return Grabbed(image, video_time)

    def _read(self) -> Any:
        try:
            return self._reader.read()
        finally:
            self._position = self._reader.position

    def _rewind(self) -> None:
        """Start the next pass, or raise EndOfStream when not looping."""
        if not self.loop:
            raise EndOfStream
        if self._good_in_pass == 0:
            log.warning("%s: a whole pass without a readable frame; not looping", self.describe())
            raise EndOfStream
        self._pass_start += self._reader.position / self._fps
        self.loops += 1
        self._good_in_pass = self._position = 0
        self._reader.close()
        self._open()  # the same path, so the same rotation

    def _pace(self, video_time: float) -> None:
        if self.pace != "realtime":
            return
        # A late frame moves the origin instead of being followed by a burst of catch-up frames.
        now = time.monotonic()
        due_now = now - video_time
        self._pace_origin = due_now if self._pace_origin is None else max(self._pace_origin, due_now)
        self._sleep(self._pace_origin + video_time - now)

    def _close(self) -> None:
        reader, self._reader = self._reader, None
        reader.close()
