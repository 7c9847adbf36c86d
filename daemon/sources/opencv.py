"""Cameras through OpenCV's VideoCapture: a V4L2 device (USB camera), an RTSP/HTTP stream
(FFmpeg) or a GStreamer pipeline (a Jetson's CSI camera through nvarguscamerasrc)."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

import cv2

from daemon.sources.base import FrameSource, Grabbed, SourceError, SourceLost
from daemon.sources.config import GST_PREFIX, opencv_device_kind, redact

log = logging.getLogger("facegate.sources")

# cv2.VideoCapture's signature: (target, api preference) -> capture. Tests pass fakes.
CaptureFactory = Callable[[Any, int], Any]

# Pip's opencv-python cannot read CSI cameras; JetPack's OpenCV can.
_NO_GSTREAMER = ("this OpenCV ({version}) was built without GStreamer, so 'gst:' pipelines cannot open; "
                 "on a Jetson use JetPack's OpenCV (python3-opencv, venv with --system-site-packages) "
                 "instead of the opencv-python wheel")


def metadata_rotation(capture: Any) -> int:
    """Clockwise degrees a capture's frames still need to be upright.

    Phones and some cameras store frames sideways with a display rotation in the container.
    OpenCV's FFmpeg backend applies it itself once CAP_PROP_ORIENTATION_AUTO is on; where a
    backend refuses that, the angle it reports in CAP_PROP_ORIENTATION_META is left to us.
    OpenCV builds without either property leave frames as stored.
    """
    auto = getattr(cv2, "CAP_PROP_ORIENTATION_AUTO", None)
    if auto is None:
        return 0
    if capture.set(auto, 1) and capture.get(auto):
        return 0
    degrees = round(capture.get(cv2.CAP_PROP_ORIENTATION_META) or 0) % 360
    if degrees % 90:
        log.warning("ignoring a video rotation of %d degrees: only multiples of 90 are supported", degrees)
        return 0
    return degrees


class OpenCVSource(FrameSource):
    """A live camera read by cv2.VideoCapture in the grabber thread (newest frame only)."""

    def __init__(self, device: int | str, *, size: tuple[int, int] | None = None, fps: float | None = None,
                 rotate: int = 0, capture_factory: CaptureFactory = cv2.VideoCapture,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        super().__init__(rotate=rotate, newest_only=True, backoff=backoff)
        self.kind = opencv_device_kind(device)
        if self.kind is None:
            raise ValueError(f"device {redact(device)!r} is not an OpenCV camera device")
        if self.kind == "gstreamer" and not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise SourceError(_NO_GSTREAMER.format(version=cv2.__version__))
        self.device = device
        self.size, self.fps = size, fps
        self._factory = capture_factory
        self._capture: Any = None
        self._target, self._api = self._resolve(device)
        # A V4L2 node disappears when the USB camera is unplugged; checking for it catches
        # the loss even when the driver keeps answering reads with stale buffers.
        self._device_path = self._target if self.kind == "v4l2" else None

    def describe(self) -> str:
        if self.kind == "gstreamer":
            return f"opencv gstreamer {self._target[:60]!r}"
        return f"opencv {self.kind} {redact(self.device)}"

    @staticmethod
    def _resolve(device: int | str) -> tuple[Any, int]:
        if isinstance(device, int):
            on_linux = sys.platform.startswith("linux")
            return (f"/dev/video{device}", cv2.CAP_V4L2) if on_linux else (device, cv2.CAP_ANY)
        if device.startswith(GST_PREFIX):
            return device[len(GST_PREFIX):].strip(), cv2.CAP_GSTREAMER
        if device.startswith("/"):
            return device, cv2.CAP_V4L2
        # FFmpeg bounds a hanging network open or read by itself (30 s by default), so a dead
        # stream ends in a failed read and a reopen rather than a stuck thread.
        return device, cv2.CAP_FFMPEG

    def _open(self) -> int:
        if self._device_path is not None:  # OpenCV only says "did not open": say why where we can tell
            if not os.path.exists(self._device_path):
                raise SourceLost(f"{self._device_path} does not exist (unplugged, or another video node?)")
            if not os.access(self._device_path, os.R_OK | os.W_OK):
                raise SourceLost(f"{self._device_path}: permission denied (the service's user needs the video group)")
        capture = self._factory(self._target, self._api)
        if not capture.isOpened():
            capture.release()
            raise SourceLost("the device did not open")
        if self.kind == "v4l2":
            self._ask_format(capture)
        self._capture = capture
        return metadata_rotation(capture)

    def _ask_format(self, capture: Any) -> None:
        # One driver buffer: whatever we grab is as recent as the driver can make it.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.size is not None:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        if self.fps is not None:
            capture.set(cv2.CAP_PROP_FPS, self.fps)
        got = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
               capture.get(cv2.CAP_PROP_FPS))
        log.info("%s: %dx%d at %.1f fps (asked %s at %s fps)", self.describe(), *got,
                 "x".join(map(str, self.size)) if self.size else "the default size", self.fps or "the default")

    def _grab(self) -> Grabbed:
        if self._device_path is not None and not os.path.exists(self._device_path):
            raise SourceLost(f"{self._device_path} has vanished")
        ok, image = self._capture.read()
        if not ok:
            raise SourceLost("the device returned no frame")
        return Grabbed(image)

    def _close(self) -> None:
        capture, self._capture = self._capture, None
        capture.release()
