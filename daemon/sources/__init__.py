"""Frame sources: where the daemon's frames come from, one module per backend.

    camera:                      # a USB camera
      type: opencv
      device: /dev/video0        # or 0, rtsp://user:pass@host/stream, "gst: nvarguscamerasrc ! ... ! appsink drop=1"
      width: 1280                # optional, V4L2 and picamera2 only; width and height go together
      height: 720
      fps: 30                    # optional
      rotate: 0                  # 0 | 90 | 180 | 270 clockwise, for a camera mounted sideways

    camera: {type: picamera2, device: 0, width: 1280, height: 720}
    camera: {type: file, path: daemon/demo/video_02_hikers_walking_towards_camera.mp4, pace: realtime, loop: true}

Every source hands out upright RGB `Frame`s through `start()`, `read(timeout)` and `stop()`;
live sources keep only the newest frame and reopen a lost device with backoff by themselves.
"""
from __future__ import annotations

from typing import Any, Mapping

from daemon.sources.base import CorruptFrame, Frame, FrameSource, SourceError, SourceStats
from daemon.sources.config import SourceConfig, SourceConfigError, parse_source_config
from daemon.sources.files import FileSource
from daemon.sources.opencv import OpenCVSource
from daemon.sources.picam import Picamera2Source

__all__ = ["CorruptFrame", "FileSource", "Frame", "FrameSource", "OpenCVSource", "Picamera2Source",
           "SourceConfig", "SourceConfigError", "SourceError", "SourceStats", "make_source",
           "parse_source_config"]


def make_source(config: Mapping[str, Any] | SourceConfig, path: str = "camera") -> FrameSource:
    """The source a `camera` section describes (a plain dict from YAML, or its parsed form).

    Raises SourceConfigError for an invalid section and SourceError when the backend cannot
    work on this machine (picamera2 missing, OpenCV without GStreamer); nothing is opened yet.
    """
    if not isinstance(config, SourceConfig):
        config = parse_source_config(config, path)
    if config.type == "file":
        return FileSource(config.path, pace=config.pace, loop=config.loop, fps=config.fps, rotate=config.rotate)
    if config.type == "picamera2":
        return Picamera2Source(config.device, size=config.size, fps=config.fps, rotate=config.rotate)
    return OpenCVSource(config.device, size=config.size, fps=config.fps, rotate=config.rotate)
