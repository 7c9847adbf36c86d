"""Calibration frames: photos from a folder or every Nth frame of a video, fitted to the camera's frame size.

Every frame is letterboxed to the configured frame size (scaled to fit, aspect
kept, centred on black), so P-Net always sees the one packed canvas its engine
is built for, and faces keep their proportions. A stretched photo would give
R-Net, O-Net and the embedder faces no camera ever produces.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from engines.errors import ImageError
from engines.images import load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}
FIT = "letterbox"  # how frames of another size are brought to the configured one


@dataclass(frozen=True)
class Frame:
    source: Path  # the photo or video file
    index: int  # frame number in the video; 0 for a photo
    rgb: np.ndarray  # HxWx3 uint8 at the configured frame size


@dataclass(frozen=True)
class Selection:
    """Which video frames are used: those with index % every == offset, at most limit frames in all."""

    every: int = 1
    offset: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every = {self.every}: expected >= 1")
        if not 0 <= self.offset < self.every:
            raise ValueError(f"offset = {self.offset}: expected 0 <= offset < every ({self.every})")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit = {self.limit}: expected >= 1")


def source_files(sources: Sequence[Path]) -> list[Path]:
    """The photo and video files named by `sources` (files, or folders searched recursively), in a fixed order."""
    files = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{source}: no photos or videos in this folder")
            files += found
        elif source.is_file():
            if source.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                raise ValueError(f"{source}: not a photo or video (suffix {source.suffix!r})")
            files.append(source)
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
    return files


def iter_frames(files: Sequence[Path], size: tuple[int, int], selection: Selection = Selection()) -> Iterator[Frame]:
    """Frames of `files` (see source_files) fitted to size (width, height); unreadable photos are skipped."""
    produced = 0
    for path in files:
        frames = _video_frames(path, selection) if path.suffix.lower() in VIDEO_SUFFIXES else _photo(path)
        for index, rgb in frames:
            if selection.limit is not None and produced >= selection.limit:
                return
            produced += 1
            yield Frame(path, index, letterbox(rgb, size))


def letterbox(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """rgb scaled to fit size (width, height) with its aspect kept, centred on black."""
    width, height = size
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    scale = min(width / w, height / h)
    fitted_w, fitted_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    fitted = cv2.resize(rgb, (fitted_w, fitted_h), interpolation=interpolation)
    canvas = np.zeros((height, width, 3), np.uint8)
    x, y = (width - fitted_w) // 2, (height - fitted_h) // 2
    canvas[y:y + fitted_h, x:x + fitted_w] = fitted
    return canvas


def _photo(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    try:
        yield 0, load_image(path)
    except ImageError as error:
        # One bad photo in a folder costs that photo, not the calibration set.
        print(f"calibration: skipped {error}", file=sys.stderr)


def _video_frames(path: Path, selection: Selection) -> Iterator[tuple[int, np.ndarray]]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise OSError(f"{path}: OpenCV cannot open this video")
    try:
        index = 0
        # grab() skips the colour conversion and copy of frames that are not used.
        while capture.grab():
            if index % selection.every == selection.offset:
                ok, bgr = capture.retrieve()
                if not ok:
                    raise OSError(f"{path}: frame {index} could not be decoded")
                yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()
