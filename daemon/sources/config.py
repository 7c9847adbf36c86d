"""The `camera` section of the YAML config: one backend per `type`, each with its own keys."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.settings import ConfigError, Section
from daemon.sources.base import ROTATIONS

TYPES = ("opencv", "picamera2", "file")
PACES = ("realtime", "fast")
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://")
GST_PREFIX = "gst:"

_COMMON_KEYS = {"type", "rotate"}
_TYPE_KEYS = {
    "opencv": {"device", "width", "height", "fps"},
    "picamera2": {"device", "width", "height", "fps"},
    "file": {"path", "fps", "pace", "loop"},
}
_DEVICE_HELP = ("a V4L2 index such as 0, a device path such as /dev/video0, an rtsp:// or http(s):// URL, "
                "or 'gst: <pipeline ending in appsink>' (a video file is camera.type: file)")


class SourceConfigError(ConfigError):
    """A camera config value outside what is allowed; the message names its key path."""


@dataclass(frozen=True)
class SourceConfig:
    type: str
    device: int | str | None = None  # opencv: index, path, URL or 'gst: ...'; picamera2: camera number
    path: Path | None = None  # file: a video file or a folder of images
    size: tuple[int, int] | None = None  # (width, height) asked of the camera
    fps: float | None = None  # cameras: asked of the device; file: overrides the video's own rate
    pace: str = "realtime"
    loop: bool = False
    rotate: int = 0  # clockwise, applied after any rotation the video's metadata asks for


def opencv_device_kind(device: Any) -> str | None:
    """'v4l2', 'url' or 'gstreamer' for a usable OpenCV camera device, else None."""
    if isinstance(device, bool):
        return None
    if isinstance(device, int):
        return "v4l2" if device >= 0 else None
    if not isinstance(device, str):
        return None
    if device.startswith(GST_PREFIX):
        return "gstreamer" if device[len(GST_PREFIX):].strip() else None
    if device.startswith("/"):  # /dev/video0, or a stable /dev/v4l/by-id/... link
        return "v4l2"
    if device.lower().startswith(URL_SCHEMES):
        return "url"
    return None


def redact(device: int | str) -> int | str:
    """The device with a URL's password masked, for log lines and error messages."""
    return re.sub(r"(?<=://)([^/@:]*):[^/@]*@", r"\1:***@", device) if isinstance(device, str) else device


def parse_source_config(raw: Any, path: str = "camera") -> SourceConfig:
    """Read the YAML `camera` section; errors name the key path, the value and what is allowed."""
    try:
        return _parse(Section(raw, path, _COMMON_KEYS.union(*_TYPE_KEYS.values())))
    except SourceConfigError:
        raise
    except ConfigError as error:
        raise SourceConfigError(str(error)) from None


def _parse(section: Section) -> SourceConfig:
    kind = section.choice("type", TYPES)
    allowed = _COMMON_KEYS | _TYPE_KEYS[kind]
    foreign = sorted(set(section.raw) - allowed)
    if foreign:
        raise SourceConfigError(f"{section.key(foreign[0])} is not allowed with {section.key('type')} = {kind!r}: "
                                f"expected only {sorted(allowed)}")
    rotate = section.get("rotate", int, 0)
    if rotate not in ROTATIONS:
        section.fail("rotate", rotate, "0, 90, 180 or 270 (degrees clockwise)")
    fps = section.number("fps", None, low=1, high=240)
    if kind == "file":
        return SourceConfig(kind, path=_file_path(section), fps=fps, pace=section.choice("pace", PACES, "realtime"),
                            loop=section.get("loop", bool, False), rotate=rotate)
    device = _opencv_device(section) if kind == "opencv" else section.number("device", 0, low=0, integer=True)
    return SourceConfig(kind, device=device, size=_size(section), fps=fps, rotate=rotate)


def _file_path(section: Section) -> Path:
    value = section.get("path", str)
    path = Path(value).expanduser()
    if not path.exists():
        section.fail("path", value, "an existing video file or folder of images")
    return path


def _opencv_device(section: Section) -> int | str:
    device = section.get("device", (int, str))
    kind = opencv_device_kind(device)
    if kind is None or kind == "v4l2" and isinstance(device, str) and Path(device).is_file():
        section.fail("device", redact(device), _DEVICE_HELP)
    if kind in ("url", "gstreamer"):
        for key in ("width", "height", "fps"):
            if key in section.raw:
                raise SourceConfigError(f"{section.key(key)} is not allowed with {section.key('device')} = "
                                        f"{redact(device)!r}: the stream or the pipeline sets the format")
    return device


def _size(section: Section) -> tuple[int, int] | None:
    width = section.number("width", None, low=16, high=8192, integer=True)
    height = section.number("height", None, low=16, high=8192, integer=True)
    if (width is None) != (height is None):
        raise SourceConfigError(f"{section.key('width')} and {section.key('height')} go together: "
                                f"set both or neither")
    return None if width is None else (width, height)
