"""One clock per run for everything the door decides with.

A camera, or a file paced in real time, runs on the monotonic clock: unlock pulses,
alarms and track ages pass as the seconds do. A file replayed `fast` runs on the
video's own clock instead: time moves only when a frame arrives, by the frames'
timestamps, so a replay makes the same decisions and the same relay timeline on any
machine at any speed. The stall guard and the systemd watchdog never use this clock:
they watch the process, which lives in real time.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from daemon.sources import Frame, SourceConfig


class Clock:
    """The monotonic clock. Deadlines on it are kept by a thread that sleeps until them."""

    driven_by_frames = False

    def now(self) -> float:
        return time.monotonic()

    def frame_time(self, frame: Frame) -> float:
        """The time of a frame on this clock (for a camera: when it was grabbed)."""
        return frame.time

    def on_advance(self, callback: Callable[[float], None]) -> Callable[[], None]:
        """Real time advances by itself: nobody is called. Returns the undo."""
        return lambda: None


class VideoClock(Clock):
    """The clock of a fast replay: the latest frame's video time, never running backwards.

    Whoever keeps deadlines on it registers with on_advance and is called, in the
    thread that delivered the frame and before the frame is processed, each time the
    clock moves: so a relay pulse ends at the same frame on every run.
    """

    driven_by_frames = True

    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[float], None]] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def frame_time(self, frame: Frame) -> float:
        if frame.video_time is None:
            raise ValueError("a video clock needs frames with a video_time (a file source)")
        with self._lock:
            self._now = max(self._now, frame.video_time)
            now, listeners = self._now, list(self._listeners)
        for listener in listeners:
            listener(now)
        return now

    def on_advance(self, callback: Callable[[float], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(callback)

        def undo() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return undo


def clock_for(camera: SourceConfig) -> Clock:
    """The video's clock for a file replayed fast, else the monotonic clock."""
    if camera.type == "file" and camera.pace == "fast":
        return VideoClock()
    return Clock()
