"""Raspberry Pi cameras through picamera2 (libcamera). picamera2 comes from Raspberry Pi OS's apt
repository, not from pip, so it is imported only when this source is chosen."""
from __future__ import annotations

from typing import Any

from daemon.sources.base import FrameSource, Grabbed, SourceError

APT_PACKAGE = "python3-picamera2"


def import_picamera2() -> type:
    """picamera2's Picamera2 class, or a SourceError that says how to install it."""
    try:
        from picamera2 import Picamera2
    except ImportError as error:
        raise SourceError(
            f"camera.type 'picamera2' needs the picamera2 library, which does not import ({error}); "
            f"on Raspberry Pi OS install it with 'sudo apt install {APT_PACKAGE}' and create the venv "
            f"with --system-site-packages so the service can see it") from error
    return Picamera2


class Picamera2Source(FrameSource):
    """A Raspberry Pi camera: build a video configuration, apply it, start, capture arrays."""

    def __init__(self, camera: int = 0, *, size: tuple[int, int] | None = None, fps: float | None = None,
                 rotate: int = 0, picamera2_class: type | None = None,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        super().__init__(rotate=rotate, newest_only=True, backoff=backoff)
        self.camera, self.size, self.fps = camera, size, fps
        # Imported here, not at module level: a box without picamera2 still imports the daemon,
        # and a Pi without it fails at start-up with the fix in the message.
        self._camera_class = picamera2_class or import_picamera2()
        self._picam: Any = None

    def describe(self) -> str:
        return f"picamera2 camera {self.camera}"

    def configuration(self) -> dict[str, Any]:
        """Arguments for create_video_configuration."""
        # picamera2's "RGB888" is B, G, R in memory: the same order OpenCV hands over,
        # so the base converts both alike.
        main: dict[str, Any] = {"format": "RGB888"}
        if self.size is not None:
            main["size"] = self.size
        arguments: dict[str, Any] = {"main": main}
        if self.fps is not None:
            arguments["controls"] = {"FrameRate": self.fps}
        return arguments

    def _open(self) -> int:
        picam = self._camera_class(camera_num=self.camera)
        try:
            picam.configure(picam.create_video_configuration(**self.configuration()))
            picam.start()
        except Exception:
            picam.close()
            raise
        self._picam = picam
        return 0

    def _grab(self) -> Grabbed:
        return Grabbed(self._picam.capture_array("main"))

    def _close(self) -> None:
        picam, self._picam = self._picam, None
        try:
            picam.stop()
        finally:
            picam.close()
