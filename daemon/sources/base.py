"""What every frame source shares: the Frame, the newest-only grabber thread, reopening with
backoff, frame checks and counters. A backend only says how to open, grab and close its device.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cv2
import numpy as np

log = logging.getLogger("facegate.sources")

ROTATIONS = (0, 90, 180, 270)  # clockwise degrees
_CV2_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}

STOP_TIMEOUT = 5.0  # seconds stop() waits for a grabber stuck inside a device call
CORRUPT_LOG_INTERVAL = 5.0  # seconds between two "corrupt frame" lines; a broken stream must not flood journald


class SourceError(RuntimeError):
    """A source that cannot work on this machine or with this input; retrying will not help."""


class SourceLost(Exception):
    """The device stopped delivering; the grabber closes it, backs off and reopens it."""


class CorruptFrame(Exception):
    """One unusable frame: skipped, counted and logged (rate-limited); the source goes on."""


class EndOfStream(Exception):
    """A file source has delivered its last frame and does not loop."""


@dataclass(frozen=True)
class Frame:
    rgb: np.ndarray = field(repr=False)  # H x W x 3 uint8, RGB order, upright; kept out of log lines
    index: int  # 0, 1, 2... in grab order for this source; a gap is a dropped frame
    time: float  # time.monotonic() when grabbed
    video_time: float | None = None  # seconds into a file source, growing on across loops; None for cameras


@dataclass(frozen=True)
class SourceStats:
    grabbed: int  # good frames produced (returned or dropped)
    dropped: int  # replaced by a newer frame before anyone read them
    corrupt: int  # unusable frames skipped
    reopens: int  # successful opens after the first one


class Grabbed(NamedTuple):
    bgr: Any  # what the backend handed over, checked before use
    video_time: float | None = None


def rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    """The image turned clockwise by a multiple of 90 degrees."""
    degrees %= 360
    return image if degrees == 0 else cv2.rotate(image, _CV2_ROTATE[degrees])


def to_rgb(image: Any, degrees: int) -> np.ndarray:
    """A backend's BGR image as upright RGB; CorruptFrame when it is not a usable 8-bit colour image."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3 and image.size > 0):
        raise CorruptFrame(f"unusable frame: {_summary(image)}")
    return rotate(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), degrees)


def _summary(image: Any) -> str:
    if isinstance(image, np.ndarray):
        return f"array of shape {image.shape} and dtype {image.dtype}"
    return "None" if image is None else type(image).__name__


class Backoff:
    """Delays between reopen attempts: `first`, doubling up to `most`, back to `first` after a good frame."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, most
        self._delay = first

    def next(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, self.most)
        return delay

    def reset(self) -> None:
        self._delay = self.first


class _ThrottledWarning:
    """At most one log line per interval; the next line says how many were held back."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._held = 0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._held += 1
            return
        held = f" ({self._held} more since the last report)" if self._held else ""
        log.warning("%s%s", message, held)
        self._last, self._held = now, 0


class FrameSource(ABC):
    """Frames from one camera or file: `start()`, `read(timeout)`, `stop()`, or use it as a context manager.

    A live source (newest_only) runs a grabber thread that reads as fast as the device delivers
    and keeps only the newest frame: the pipeline always works on the present, and a frame it was
    too slow for is dropped and counted. The same thread closes a failing device and reopens it
    with backoff, so the daemon sees a lost camera only as a pause in frames.
    A synchronous source (a file read at pace fast) reads in the caller's thread, every frame in order.
    """

    def __init__(self, *, rotate: int = 0, newest_only: bool = True,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        if rotate not in ROTATIONS:
            raise ValueError(f"rotate = {rotate!r} is not allowed: expected one of {ROTATIONS}")
        self.rotate = rotate
        self.newest_only = newest_only
        self._backoff = backoff
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._is_open = False
        self._ever_opened = False
        self._device_rotation = 0
        self._fault: str | None = None  # why no frames come now (see fault)
        self._grabbed = self._dropped = self._corrupt = self._reopens = 0
        self._warn_corrupt = _ThrottledWarning(CORRUPT_LOG_INTERVAL)

    # --- what a backend provides -------------------------------------------------------------

    @abstractmethod
    def describe(self) -> str:
        """The source in a few words for log lines (no secrets)."""

    @abstractmethod
    def _open(self) -> int:
        """Open the device, raising on failure; return the clockwise degrees its frames still
        need to be upright (stream metadata the backend did not apply)."""

    @abstractmethod
    def _grab(self) -> Grabbed:
        """The next BGR image; raise SourceLost (or anything) for a failing device,
        CorruptFrame to skip one frame, EndOfStream at the end of a file."""

    @abstractmethod
    def _close(self) -> None:
        """Release the device."""

    # --- the public interface ----------------------------------------------------------------

    def start(self) -> FrameSource:
        """Begin grabbing. A live source returns at once and keeps trying to open its device;
        a synchronous source opens now and raises SourceError when it cannot."""
        if self._started:
            return self
        self._started = True
        if self.newest_only:
            self._thread = threading.Thread(target=self._run, name="facegate-source", daemon=True)
            self._thread.start()
        else:
            try:
                self._open_device()
            except Exception as error:
                raise SourceError(f"{self.describe()}: cannot open: {error}") from error
        log.info("%s: started", self.describe())
        return self

    def read(self, timeout: float) -> Frame | None:
        """The newest frame not yet returned, or None when none came within `timeout` seconds,
        the source is exhausted or stopped. A synchronous source returns its next frame at once."""
        if not self._started:
            raise RuntimeError(f"{self.describe()}: call start() before read()")
        if not self.newest_only:
            return self._read_in_order()
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._ended or self._stopping.is_set(),
                                timeout)
            frame, self._latest = self._latest, None
        return frame

    def stop(self) -> None:
        """Stop grabbing and release the device; safe to call more than once."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                log.warning("%s: grabber still blocked in the device after %.0f s; leaving it behind",
                            self.describe(), STOP_TIMEOUT)
        else:
            self._close_device()
        if self._started:
            log.info("%s: stopped (%s)", self.describe(), self.stats)

    @property
    def exhausted(self) -> bool:
        """True once a file source without loop has delivered its last frame."""
        with self._cond:
            return self._ended and self._latest is None

    @property
    def fault(self) -> str | None:
        """Why the source delivers no frames now ('camera ... cannot be opened: ...', '... lost: ...'), for
        /healthz and systemd's STATUS; None before the first attempt and again from the next good frame."""
        with self._cond:
            return self._fault

    @property
    def stats(self) -> SourceStats:
        with self._cond:
            return SourceStats(self._grabbed, self._dropped, self._corrupt, self._reopens)

    def __enter__(self) -> FrameSource:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- machinery ---------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(*self._backoff)
        try:
            while not self._stopping.is_set():
                if not self._is_open and not self._try_open(backoff):
                    continue
                try:
                    frame = self._next_frame()
                except CorruptFrame as error:
                    self._skip(error)
                    continue
                except EndOfStream:
                    self._end()
                    return
                except Exception as error:  # whatever the backend raises, the daemon goes on
                    self._lose(error, backoff)
                    continue
                backoff.reset()
                self._publish(frame)
        finally:
            self._close_device()

    def _try_open(self, backoff: Backoff) -> bool:
        try:
            self._open_device()
            return True
        except Exception as error:
            delay = backoff.next()
            # An ERROR, each try: a door without its camera decides nothing (the backoff bounds the lines).
            fault = f"camera {self.describe()} cannot be opened: {error}"
            self._set_fault(fault)
            log.error("%s; retrying in %.1f s", fault, delay)
            self._stopping.wait(delay)
            return False

    def _lose(self, error: Exception, backoff: Backoff) -> None:
        delay = backoff.next()
        self._set_fault(f"camera {self.describe()} lost: {type(error).__name__}: {error}")
        log.warning("%s: lost (%s: %s); reopening in %.1f s", self.describe(), type(error).__name__, error, delay)
        self._close_device()
        self._stopping.wait(delay)

    def _open_device(self) -> None:
        self._device_rotation = self._open()
        self._is_open = True
        if self._ever_opened:
            with self._cond:
                self._reopens += 1
            log.info("%s: reopened (reopen %d)", self.describe(), self._reopens)
        else:
            log.info("%s: opened", self.describe())
        self._ever_opened = True

    def _close_device(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        try:
            self._close()
        except Exception as error:  # a device that fails to close is still given up
            log.warning("%s: error while closing (%s)", self.describe(), error)

    def _next_frame(self) -> Frame:
        grabbed = self._grab()
        now = time.monotonic()
        rgb = to_rgb(grabbed.bgr, self._device_rotation + self.rotate)
        with self._cond:
            index = self._grabbed
            self._grabbed += 1
        return Frame(rgb, index, now, grabbed.video_time)

    def _read_in_order(self) -> Frame | None:
        while self._is_open:
            try:
                return self._next_frame()
            except CorruptFrame as error:
                self._skip(error)
            except EndOfStream:
                self._end()
            except Exception as error:  # no thread to retry in: end the stream rather than the caller
                log.error("%s: read failed (%s: %s); ending the stream", self.describe(),
                          type(error).__name__, error)
                self._end()
        return None

    def _skip(self, error: CorruptFrame) -> None:
        with self._cond:
            self._corrupt += 1
        self._warn_corrupt(f"{self.describe()}: skipped a corrupt frame ({error})")

    def _end(self) -> None:
        log.info("%s: end of stream", self.describe())
        self._close_device()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if self._latest is not None:
                self._dropped += 1
            self._latest = frame
            self._fault = None
            self._cond.notify_all()

    def _set_fault(self, fault: str) -> None:
        with self._cond:
            self._fault = fault

    def _sleep(self, seconds: float) -> None:
        """Wait, but wake at once on stop()."""
        if seconds > 0:
            self._stopping.wait(seconds)
