"""Frame sources: files read fast and in real time, live cameras through fakes of the real APIs
(failing, vanishing, corrupt), rotation metadata on a real sideways video, and config errors."""
from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.settings import ConfigError
from daemon.sources import (FileSource, OpenCVSource, Picamera2Source, SourceConfigError, SourceError,
                            make_source, parse_source_config)
from daemon.sources.base import Backoff
from tests.conftest import DEMO_CLIP, wait_for

FAST_BACKOFF = (0.01, 0.05)
AUTO = cv2.CAP_PROP_ORIENTATION_AUTO


def read_all(source, limit: int = 10_000) -> list:
    frames = []
    while len(frames) < limit and (frame := source.read(timeout=5.0)) is not None:
        frames.append(frame)
    return frames


def write_video(path: Path, count: int, fps: float) -> Path:
    """A small MJPG video whose frame i is a flat grey of level 20 * i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened(), "this OpenCV cannot write MJPG"
    for i in range(count):
        writer.write(np.full((48, 64, 3), 20 * i % 256, np.uint8))
    writer.release()
    return path


def level(frame) -> int:
    return round(float(frame.rgb.mean()) / 20)


def bgr(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


class FakeCamera:
    """A cv2.VideoCapture stand-in for a live camera: a frame every 5 ms, each filled with `value`,
    raising like a failing driver after `fail_after` frames; records what is set on it."""

    def __init__(self, value: int = 1, fail_after: int | None = None) -> None:
        self.value, self.fail_after = value, fail_after
        self.reads = 0
        self.settings: dict[int, float] = {}
        self.released = False

    def isOpened(self) -> bool:
        return True

    def read(self):
        time.sleep(0.005)
        if self.fail_after is not None and self.reads >= self.fail_after:
            raise RuntimeError("USB transfer error")
        self.reads += 1
        return True, bgr(self.value)

    def set(self, prop: int, value: float) -> bool:
        self.settings[prop] = value
        return prop != AUTO

    def get(self, prop: int) -> float:
        return self.settings.get(prop, 0.0)

    def release(self) -> None:
        self.released = True


class ClosedCapture(FakeCamera):
    """What cv2.VideoCapture returns for a device that is not there."""

    def isOpened(self) -> bool:
        return False


class ScriptedCapture(FakeCamera):
    """A video 'file' whose read() results are given, then the end."""

    def __init__(self, results: list) -> None:
        super().__init__()
        self.results = list(results)
        self.settings[cv2.CAP_PROP_FPS] = 25.0

    def read(self):
        return self.results.pop(0) if self.results else (False, None)


# --- files ---------------------------------------------------------------------------------


def test_fast_file_source_returns_every_frame_in_order_as_rgb():
    capture = cv2.VideoCapture(str(DEMO_CLIP))
    with FileSource(DEMO_CLIP, pace="fast") as source:
        frames = read_all(source)
        for frame in frames:
            ok, expected = capture.read()
            assert ok
            np.testing.assert_array_equal(frame.rgb, cv2.cvtColor(expected, cv2.COLOR_BGR2RGB))
        assert not capture.read()[0], "the source stopped before the end of the clip"
        assert source.exhausted
        assert source.read(timeout=0.1) is None
        assert source.stats.dropped == 0
    assert len(frames) == 521
    assert [f.index for f in frames] == list(range(521))
    assert frames[0].rgb.shape == (480, 640, 3) and frames[0].rgb.dtype == np.uint8
    assert frames[100].video_time == pytest.approx(100 / 29.97, abs=1e-3)


def test_loop_restarts_with_video_time_growing_on(tmp_path):
    video = write_video(tmp_path / "ten.avi", 10, fps=50)
    with FileSource(video, pace="fast", loop=True) as source:
        frames = [source.read(timeout=1.0) for _ in range(25)]
        assert not source.exhausted
        assert source.loops == 2
    assert [level(f) for f in frames] == [i % 10 for i in range(25)]
    assert [f.index for f in frames] == list(range(25))
    assert [f.video_time for f in frames] == pytest.approx([i / 50 for i in range(25)])


def test_image_folder_in_natural_order_skips_an_unreadable_image(tmp_path, caplog):
    for name, value in (("img1.png", 20), ("img2.png", 40), ("img10.png", 60)):
        cv2.imwrite(str(tmp_path / name), bgr(value))
    (tmp_path / "img3.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="facegate.sources"):
        with FileSource(tmp_path, pace="fast") as source:
            frames = read_all(source)
            assert source.exhausted
            assert source.stats.corrupt == 1
    assert [int(f.rgb.mean()) for f in frames] == [20, 40, 60]
    assert [f.video_time for f in frames] == pytest.approx([0.0, 0.1, 0.3])  # img3 kept its time slot
    assert "img3.png" in caplog.text


def test_realtime_pace_drops_frames_for_a_slow_consumer_and_returns_the_newest(tmp_path):
    video = write_video(tmp_path / "forty.avi", 40, fps=50)
    returned = []
    with FileSource(video, pace="realtime") as source:
        deadline = time.monotonic() + 10
        while not source.exhausted and time.monotonic() < deadline:
            grabbed_before = source.stats.grabbed
            frame = source.read(timeout=1.0)
            if frame is not None:
                # Nothing older than what the grabber had when read() was called.
                assert frame.index >= grabbed_before - 1
                returned.append(frame)
            time.sleep(0.06)  # three frame periods: a pipeline slower than the video
        assert source.exhausted, "the realtime source never reached the end"
        stats = source.stats
    indices = [f.index for f in returned]
    assert indices == sorted(set(indices)), "a frame was returned twice or out of order"
    assert stats.dropped > 0
    assert stats.grabbed == 40
    assert stats.dropped + len(returned) == stats.grabbed  # every frame was either returned or dropped


def test_fast_file_that_cannot_open_raises_source_error(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    source = FileSource(tmp_path / "broken.mp4", pace="fast")
    with pytest.raises(SourceError, match="broken.mp4"):
        source.start()


# --- corrupt frames and lost devices -----------------------------------------------------


def test_corrupt_frames_are_skipped_counted_and_logged_rate_limited(caplog):
    results = [(True, bgr(1)), (True, None), (True, bgr(2)), (True, np.zeros((0, 0, 3), np.uint8)),
               (True, bgr(3)), (True, np.zeros((8, 8, 3), np.float32)), (True, np.zeros((8, 8), np.uint8)),
               (True, bgr(4))]
    source = FileSource("fake.mp4", pace="fast", capture_factory=lambda target, api: ScriptedCapture(results))
    with caplog.at_level(logging.WARNING, logger="facegate.sources"):
        with source:
            frames = read_all(source)
            assert source.stats.corrupt == 4
    assert [int(f.rgb.mean()) for f in frames] == [1, 2, 3, 4]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    corrupt_lines = [r for r in caplog.records if "corrupt frame" in r.getMessage()]
    assert len(corrupt_lines) == 1, "corrupt frames within a few seconds must share one log line"
    assert "None" in corrupt_lines[0].getMessage()


def test_a_backend_raising_mid_run_is_reopened_and_frames_flow_again(caplog):
    url = "rtsp://admin:secret@camera.local/stream"
    captures: list[FakeCamera] = []

    def factory(target, api):
        assert (target, api) == (url, cv2.CAP_FFMPEG)
        captures.append(FakeCamera(value=len(captures) + 1, fail_after=5 if not captures else None))
        return captures[-1]

    with caplog.at_level(logging.INFO, logger="facegate.sources"):
        with OpenCVSource(url, capture_factory=factory, backoff=FAST_BACKOFF) as source:
            assert wait_for(lambda: (f := source.read(timeout=0.5)) is not None and f.rgb[0, 0, 0] == 2), \
                "no frame from the reopened camera"
            assert source.stats.reopens == 1
            assert captures[0].released
    assert "lost (RuntimeError: USB transfer error)" in caplog.text
    assert "reopened" in caplog.text
    assert "secret" not in caplog.text


def test_backoff_doubles_to_its_ceiling_and_resets():
    backoff = Backoff(0.5, 30.0)
    assert [backoff.next() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    backoff.reset()
    assert backoff.next() == 0.5


def test_a_good_frame_resets_the_backoff(caplog):
    factory = lambda target, api: FakeCamera(fail_after=2)  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="facegate.sources"):
        with OpenCVSource("rtsp://camera.local/stream", capture_factory=factory, backoff=(0.1, 100.0)):
            assert wait_for(lambda: caplog.text.count("lost (") >= 3)
    delays = re.findall(r"reopening in ([0-9.]+) s", caplog.text)
    assert delays[:3] == ["0.1", "0.1", "0.1"], "the delay kept growing although frames came in between"


def test_a_vanished_device_path_is_closed_and_reopened_when_it_returns(tmp_path, caplog):
    node = tmp_path / "video0"
    node.touch()
    opened: list[FakeCamera] = []

    def factory(target, api):
        assert (target, api) == (str(node), cv2.CAP_V4L2)
        opened.append(FakeCamera() if Path(target).exists() else ClosedCapture())
        return opened[-1]

    with caplog.at_level(logging.INFO, logger="facegate.sources"):
        with OpenCVSource(str(node), capture_factory=factory, backoff=FAST_BACKOFF) as source:
            assert source.read(timeout=5.0) is not None
            assert source.fault is None
            node.unlink()
            assert wait_for(lambda: "has vanished" in caplog.text)
            missing = f"camera opencv v4l2 {node} cannot be opened: {node} does not exist"
            assert wait_for(lambda: source.fault is not None and source.fault.startswith(missing))
            assert any(r.levelno == logging.ERROR and r.getMessage().startswith(missing) for r in caplog.records)
            source.read(timeout=0)  # a frame grabbed just before the loss
            assert source.read(timeout=0.2) is None
            node.touch()
            assert source.read(timeout=5.0) is not None
            assert source.stats.reopens == 1
            assert source.fault is None, "a good frame clears the fault"
    assert opened[0].released


def test_a_camera_that_never_opens_gives_no_frames_and_stops_promptly(caplog):
    source = OpenCVSource("rtsp://nowhere/stream", capture_factory=lambda target, api: ClosedCapture(),
                          backoff=(5.0, 30.0))
    assert source.fault is None, "no fault before the first try"
    with caplog.at_level(logging.WARNING, logger="facegate.sources"):
        source.start()
        assert source.read(timeout=0.2) is None
        assert wait_for(lambda: source.fault is not None)
        began = time.monotonic()
        source.stop()
    assert time.monotonic() - began < 2.0, "stop() waited out the backoff instead of waking it"
    assert source.fault == "camera opencv url rtsp://nowhere/stream cannot be opened: the device did not open"
    [line] = [r for r in caplog.records if "cannot be opened" in r.getMessage()]
    assert line.levelno == logging.ERROR and line.getMessage() == f"{source.fault}; retrying in 5.0 s"


def test_read_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="start"):
        FileSource(DEMO_CLIP, pace="fast").read(timeout=0)


# --- what is passed to the camera APIs -----------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="V4L2 is Linux only")
def test_v4l2_asks_for_one_buffer_the_size_and_the_rate(tmp_path):
    cameras: list[FakeCamera] = []
    factory = lambda target, api: cameras.append(FakeCamera()) or cameras[-1]  # noqa: E731
    node = tmp_path / "video2"
    node.touch()  # the source looks for the device node before it asks OpenCV
    with OpenCVSource(str(node), size=(1280, 720), fps=15, capture_factory=factory):
        assert wait_for(lambda: cameras)
    assert {cv2.CAP_PROP_BUFFERSIZE: 1, cv2.CAP_PROP_FRAME_WIDTH: 1280, cv2.CAP_PROP_FRAME_HEIGHT: 720,
            cv2.CAP_PROP_FPS: 15}.items() <= cameras[0].settings.items()


def test_gstreamer_pipeline_opens_with_cap_gstreamer(monkeypatch):
    monkeypatch.setattr(cv2.videoio_registry, "hasBackend", lambda api: True)
    calls = []
    factory = lambda target, api: calls.append((target, api)) or FakeCamera()  # noqa: E731
    pipeline = "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv ! appsink drop=1"
    with OpenCVSource(f"gst: {pipeline}", capture_factory=factory) as source:
        assert source.read(timeout=5.0) is not None
    assert calls[0] == (pipeline, cv2.CAP_GSTREAMER)


def test_gstreamer_pipeline_without_gstreamer_in_opencv_names_the_fix(monkeypatch):
    monkeypatch.setattr(cv2.videoio_registry, "hasBackend", lambda api: False)
    with pytest.raises(SourceError, match="without GStreamer.*JetPack"):
        make_source({"type": "opencv", "device": "gst: videotestsrc ! appsink"})


class FakePicamera2:
    """Records the calls picamera2 would see; capture_array hands out B, G, R like RGB888 does."""

    def __init__(self, camera_num: int = 0) -> None:
        self.calls: list[tuple] = [("init", camera_num)]
        FakePicamera2.last = self

    def create_video_configuration(self, **arguments):
        self.calls.append(("create_video_configuration", arguments))
        return {"built from": arguments}

    def configure(self, configuration) -> None:
        self.calls.append(("configure", configuration))

    def start(self) -> None:
        self.calls.append(("start",))

    def capture_array(self, name: str = "main") -> np.ndarray:
        time.sleep(0.005)
        return np.broadcast_to(np.array([10, 20, 30], np.uint8), (6, 4, 3)).copy()

    def stop(self) -> None:
        self.calls.append(("stop",))

    def close(self) -> None:
        self.calls.append(("close",))


def test_picamera2_is_configured_then_started_and_gives_rgb():
    source = Picamera2Source(1, size=(640, 480), fps=15, rotate=90, picamera2_class=FakePicamera2)
    with source:
        frame = source.read(timeout=5.0)
    arguments = {"main": {"format": "RGB888", "size": (640, 480)}, "controls": {"FrameRate": 15}}
    assert FakePicamera2.last.calls == [("init", 1), ("create_video_configuration", arguments),
                                        ("configure", {"built from": arguments}), ("start",), ("stop",), ("close",)]
    assert frame.rgb.shape == (4, 6, 3)  # turned 90 degrees
    assert frame.rgb[0, 0].tolist() == [30, 20, 10]


def test_missing_picamera2_names_the_apt_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` fail
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        make_source({"type": "picamera2"})


# --- rotation ------------------------------------------------------------------------------


class RefusesAutoOrientation:
    """A real capture whose backend refuses CAP_PROP_ORIENTATION_AUTO but reports the angle."""

    def __init__(self, target, api) -> None:
        self._capture = cv2.VideoCapture(target, api)
        self._capture.set(AUTO, 0)

    def set(self, prop: int, value: float) -> bool:
        return False if prop == AUTO else self._capture.set(prop, value)

    def get(self, prop: int) -> float:
        return 0.0 if prop == AUTO else self._capture.get(prop)

    def __getattr__(self, name: str):
        return getattr(self._capture, name)


def first_frames(path: Path, count: int = 3, **options) -> list:
    with FileSource(path, pace="fast", **options) as source:
        return [source.read(timeout=1.0) for _ in range(count)]


@pytest.fixture
def sideways_video(shared_data: Path) -> Path:
    path = shared_data / "videos" / "new_face_video_rotated_metadata.mp4"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_rotation_metadata_is_honoured(sideways_video):
    stored = cv2.VideoCapture(str(sideways_video))
    stored.set(AUTO, 0)
    ok, raw = stored.read()
    assert ok and raw.shape == (640, 480, 3), "the test video is no longer stored sideways"
    upright = first_frames(sideways_video)[0].rgb
    assert upright.shape == (480, 640, 3)
    np.testing.assert_array_equal(upright, cv2.cvtColor(cv2.rotate(raw, cv2.ROTATE_90_CLOCKWISE), cv2.COLOR_BGR2RGB))
    # Upright means sky at the top and a coat at the bottom; the wrong turn would swap them.
    assert upright[:160].mean() > upright[-160:].mean() + 30


def test_rotation_metadata_applied_by_hand_where_opencv_does_not(sideways_video):
    expected = first_frames(sideways_video)
    by_hand = first_frames(sideways_video, capture_factory=RefusesAutoOrientation)
    for want, got in zip(expected, by_hand):
        np.testing.assert_array_equal(got.rgb, want.rgb)


def test_configured_rotation_turns_on_top_of_the_metadata(sideways_video):
    upright = first_frames(sideways_video, count=1)[0].rgb
    turned = first_frames(sideways_video, count=1, rotate=90)[0].rgb
    np.testing.assert_array_equal(turned, np.rot90(upright, k=-1))


# --- config --------------------------------------------------------------------------------

DEMO = str(DEMO_CLIP)


@pytest.mark.parametrize("section, message", [
    ({"type": "file", "path": DEMO, "pace": "slow"},
     "camera.pace = 'slow' is not allowed: expected 'realtime' or 'fast'"),
    ({}, "camera.type is required"),
    ("usb", "camera = 'usb' is not allowed: expected a mapping"),
    ({"type": "webcam"}, "camera.type = 'webcam' is not allowed: expected 'opencv' or 'picamera2' or 'file'"),
    ({"type": "opencv", "device": 0, "colour": "x"}, "camera.colour is not a known key"),
    ({"type": "opencv", "device": 0, "pace": "fast"}, "camera.pace is not allowed with camera.type = 'opencv'"),
    ({"type": "opencv"}, "camera.device is required"),
    ({"type": "opencv", "device": "video.mp4"}, "camera.device = 'video.mp4' is not allowed: expected a V4L2 index"),
    ({"type": "opencv", "device": DEMO}, f"camera.device = {DEMO!r} is not allowed"),
    ({"type": "opencv", "device": True}, "camera.device = True is not allowed"),
    ({"type": "opencv", "device": -1}, "camera.device = -1 is not allowed"),
    ({"type": "opencv", "device": "rtsp://u:pw@cam/s", "width": 640, "height": 480},
     "camera.width is not allowed with camera.device = 'rtsp://u:***@cam/s'"),
    ({"type": "opencv", "device": 0, "width": 640}, "camera.width and camera.height go together"),
    ({"type": "opencv", "device": 0, "rotate": 45}, "camera.rotate = 45 is not allowed: expected 0, 90, 180 or 270"),
    ({"type": "picamera2", "device": -1}, "camera.device = -1 is not allowed"),
    ({"type": "file", "path": "/nonexistent/clip.mp4"},
     "camera.path = '/nonexistent/clip.mp4' is not allowed: expected an existing video file or folder of images"),
    ({"type": "file", "path": DEMO, "fps": 0}, "camera.fps = 0.0 is not allowed: expected a number from 1 to 240"),
    ({"type": "file", "path": DEMO, "loop": "yes"}, "camera.loop = 'yes' is not allowed: expected true or false"),
])
def test_config_errors_name_the_key_the_value_and_what_is_allowed(section, message):
    with pytest.raises(SourceConfigError, match=re.escape(message)) as caught:
        make_source(section)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)


def test_config_builds_each_backend_without_opening_it():
    file_source = make_source({"type": "file", "path": DEMO, "pace": "fast", "loop": True, "rotate": 180})
    assert isinstance(file_source, FileSource)
    assert (file_source.pace, file_source.loop, file_source.rotate) == ("fast", True, 180)
    camera = make_source({"type": "opencv", "device": "/dev/video0", "width": 1280, "height": 720, "fps": 30})
    assert isinstance(camera, OpenCVSource) and camera.size == (1280, 720) and camera.fps == 30
    assert camera.describe() == "opencv v4l2 /dev/video0"
    stream = make_source({"type": "opencv", "device": "rtsp://admin:secret@cam/stream"})
    assert stream.describe() == "opencv url rtsp://admin:***@cam/stream"
    assert parse_source_config({"type": "picamera2"}).device == 0
