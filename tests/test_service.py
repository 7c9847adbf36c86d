"""The door service end to end on the demo clip, with gpiozero's MockFactory pins."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from gpiozero.pins.mock import MockFactory

from daemon import config as config_module
from daemon.demo import DEMO_CLIP, ENROL_FRAME, demo_config, enrol_from_clip
from daemon.events import EventReader
from daemon.gallery import Gallery
from daemon.notify import Notifier
from daemon.service import DoorService
from tests.conftest import REPO

RELAY = 17
HIKER_GONE = 4.3  # clip seconds after which the lead hiker has walked out of the frame


def make_config(state: Path, clip: Path = DEMO_CLIP, **overrides):
    raw = demo_config(state, clip, fast=True)
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return config_module.parse(raw)


@pytest.fixture
def short_clip(tmp_path) -> Path:
    """Frames 80-135 of the demo clip: the lead hiker walking up to the camera and out of view."""
    capture = cv2.VideoCapture(str(DEMO_CLIP))
    path = tmp_path / "short.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 29.97, (640, 480))
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok or index > 135:
            break
        if index >= 80:
            writer.write(frame)
        index += 1
    writer.release()
    return path


class RelayWatch:
    """Records the mock relay pin at every processed frame."""

    def __init__(self, factory: MockFactory) -> None:
        self.pin = factory.pin(RELAY)
        self.high_at: list[float] = []

    def __call__(self, frame, observed, unlocked) -> None:
        if self.pin.state:
            self.high_at.append(frame.video_time)


def run_service(config, factory: MockFactory, **kwargs) -> tuple[DoorService, RelayWatch, int]:
    watch = RelayWatch(factory)
    service = DoorService(config, pin_factory=factory, on_frame=watch, **kwargs)
    code = service.run()
    return service, watch, code


def test_the_enrolled_hiker_opens_the_door_and_nobody_else_does(tmp_path):
    config = make_config(tmp_path)
    person = enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    factory = MockFactory()
    service, watch, code = run_service(config, factory)
    assert code == 0
    assert watch.high_at, "the relay never went high for the enrolled hiker"
    # A fast replay runs on the clip's clock: one pulse of unlock_seconds of clip time, whatever the machine's speed.
    assert max(watch.high_at) <= HIKER_GONE + config.door.unlock_seconds
    assert max(watch.high_at) - min(watch.high_at) < config.door.unlock_seconds
    assert max(watch.high_at) - min(watch.high_at) >= config.door.unlock_seconds - 2 / 29.97
    assert factory.pin(RELAY).state == 0, "the relay must be released at the end"
    grants = EventReader(config.events.path).query(kinds=["grant"])
    assert grants and {g.person_id for g in grants} == {person}

    with Gallery.open(config.gallery.path) as gallery:
        gallery.remove_person(person)
    factory = MockFactory()
    _, watch, code = run_service(make_config(tmp_path), factory)
    assert code == 0 and watch.high_at == [], "the relay went high with nobody enrolled"


def event_sequence(path: Path) -> list[tuple]:
    """The event log without its wall-clock timestamps."""
    return [(e.kind, e.person_id, e.track_id, e.reason, e.score) for e in EventReader(path).query()]


def test_a_fast_replay_decides_the_same_at_any_speed(tmp_path, short_clip):
    """The same clip replayed with every frame slowed down and without: the same events and the same
    relay timeline in clip time, because a fast replay's timers run on the video's clock."""
    runs = []
    for delay in (0.0, 0.1):
        state = tmp_path / f"delay-{delay}"
        config = make_config(state, short_clip, door={"relay": {"pin": RELAY, "unlock_seconds": 0.5}})
        enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
        factory = MockFactory()
        watch = RelayWatch(factory)
        service = DoorService(config, pin_factory=factory, on_frame=watch)
        detect = service.recogniser.detect

        def slow_detect(rgb, detect=detect, delay=delay):
            time.sleep(delay)  # a machine this much slower per frame
            return detect(rgb)

        service.recogniser.detect = slow_detect
        assert service.run() == 0
        runs.append((event_sequence(config.events.path), watch.high_at))
    (events, high_at), slowed = runs
    assert [kind for kind, *_ in events].count("grant") == 1
    assert high_at and max(high_at) - min(high_at) < 0.5, "the pulse outlasted its 0.5 s of clip time"
    assert slowed == (events, high_at)


def test_faces_on_decided_tracks_cost_detection_only(tmp_path, short_clip):
    config = make_config(tmp_path, short_clip)
    enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    seen_per_frame = []
    service = DoorService(config, pin_factory=MockFactory(),
                          on_frame=lambda frame, seen, unlocked: seen_per_frame.append(list(seen)))
    embedded = []
    embed = service.recogniser.embedder.embed
    service.recogniser.embedder.embed = lambda chips: embedded.append(len(chips)) or embed(chips)
    assert service.run() == 0
    assert service.stats.grants == 1
    seen = [face for frame in seen_per_frame for face in frame]
    decided_in_view = [face for face in seen if face.observation is None]
    assert len(decided_in_view) >= 20, "the hiker should stay in view for a while after her grant"
    assert all(face.track.decided for face in decided_in_view)
    # Every face that was recognised was on an undecided track when it was, and only those were embedded.
    assert sum(embedded) == sum(1 for face in seen if face.observation is not None and face.observation.usable)
    assert service.stats.recognised == len(seen) - len(decided_in_view)


def test_sigterm_releases_the_relay_at_once(tmp_path, short_clip):
    config = make_config(tmp_path, short_clip, door={"relay": {"pin": RELAY, "unlock_seconds": 300}},
                         camera={"loop": True})
    enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    factory = MockFactory()
    service = DoorService(config, pin_factory=factory)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    service.install_signal_handlers()
    relay = factory.pin(RELAY)
    released_while_running = []

    def terminate_when_unlocked():
        deadline = time.monotonic() + 60
        while not relay.state and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        released_while_running.append(relay.state)

    terminator = threading.Thread(target=terminate_when_unlocked, daemon=True)
    terminator.start()
    try:
        code = service.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    terminator.join(timeout=10)
    assert code == 0
    assert released_while_running == [0]
    kinds = [e.kind for e in EventReader(config.events.path).query()]
    assert "relay_on" in kinds and kinds[-1] == "stop"
    off = [e.reason for e in EventReader(config.events.path).query(kinds=["relay_off"])]
    assert off[0] == "start" and any("stop signal" in reason for reason in off[1:])


def test_an_unhandled_error_releases_the_relay_and_exits_non_zero(tmp_path, short_clip):
    config = make_config(tmp_path, short_clip, door={"relay": {"pin": RELAY, "unlock_seconds": 300}})
    enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    factory = MockFactory()
    service = DoorService(config, pin_factory=factory)
    detect = service.recogniser.detect

    def crash_once_unlocked(rgb):
        if service.door.is_unlocked:
            raise RuntimeError("injected failure")
        return detect(rgb)

    service.recogniser.detect = crash_once_unlocked
    assert service.run() == 1
    assert factory.pin(RELAY).state == 0
    faults = EventReader(config.events.path).query(kinds=["fault"])
    assert any("injected failure" in f.reason for f in faults)


def test_a_stalled_loop_releases_the_relay(tmp_path, short_clip):
    config = make_config(tmp_path, short_clip, door={"relay": {"pin": RELAY, "unlock_seconds": 300}},
                         watchdog={"stall_seconds": 0.5})
    enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    factory = MockFactory()
    service = DoorService(config, pin_factory=factory)
    detect = service.recogniser.detect
    relay = factory.pin(RELAY)
    state_during_stall = []

    def stall_once_unlocked(rgb):
        if service.door.is_unlocked and not state_during_stall:
            time.sleep(1.5)  # the loop hangs (a stuck driver, say) with the door unlocked
            state_during_stall.append(relay.state)
            service.stop()
        return detect(rgb)

    service.recogniser.detect = stall_once_unlocked
    service.run()
    assert state_during_stall == [0]
    assert any(e.reason == "main loop stalled" for e in EventReader(config.events.path).query(kinds=["fault"]))


class NotifySocket:
    """A stand-in for systemd's notify socket that keeps reading, as systemd does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self._received: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            with self._lock:
                self._received.append(message)

    def messages(self) -> list[str]:
        """Everything received since the last call."""
        time.sleep(0.2)
        with self._lock:
            found, self._received = self._received, []
        return found


def test_a_full_notify_queue_never_blocks(tmp_path):
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    silent.bind(str(tmp_path / "silent.sock"))  # bound but never read
    notifier = Notifier(str(tmp_path / "silent.sock"))
    for _ in range(10_000):
        notifier.watchdog()  # returns at once even with the queue full


def test_the_watchdog_is_fed_only_while_frames_flow(tmp_path, short_clip, monkeypatch):
    listener = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    flowing = make_config(tmp_path / "a", short_clip)
    service = DoorService(flowing, pin_factory=MockFactory(), notifier=Notifier(str(listener.path)))
    assert service.run() == 0
    sent = listener.messages()
    assert any(m.startswith("READY=1") for m in sent) and any("STOPPING=1" in m for m in sent)
    assert sum(m == "WATCHDOG=1" for m in sent) >= 2

    # A camera that never delivers a frame: the service runs, but the watchdog starves.
    raw = demo_config(tmp_path / "b", fast=True)
    raw["camera"] = {"type": "opencv", "device": "/dev/video-missing-for-test"}
    starved = config_module.parse(raw)
    service = DoorService(starved, pin_factory=MockFactory(), notifier=Notifier(str(listener.path)))
    threading.Timer(1.5, service.stop).start()
    assert service.run() == 0
    sent = listener.messages()
    assert any(m.startswith("READY=1") for m in sent)
    assert "WATCHDOG=1" not in sent


def test_check_config_names_the_bad_key(tmp_path):
    good = subprocess.run([sys.executable, "-m", "daemon", "check-config", str(config_module.EXAMPLE_PATH)],
                          capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_module.EXAMPLE_PATH.read_text().replace("k: 3 ", "k: 9 "))
    result = subprocess.run([sys.executable, "-m", "daemon", "check-config", str(bad)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert "decision.k = 9" in result.stderr


def test_onnx_sessions_default_to_two_and_are_checked(tmp_path):
    raw = demo_config(tmp_path, fast=True)
    assert config_module.parse(raw).models.sessions == 2
    raw["detector"] = {**raw.get("detector", {}), "sessions": 0}
    with pytest.raises(config_module.ConfigError, match="detector.sessions = 0"):
        config_module.parse(raw)


def test_run_refuses_an_invalid_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera: {type: file, path: /nonexistent.mp4}\ncolour: blue\n")
    result = subprocess.run([sys.executable, "-m", "daemon", "run", "--config", str(bad)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert "colour is not a known key" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_file_verifies(tmp_path):
    unit = (REPO / "systemd" / "facegate.service").read_text()
    # verify checks that ExecStart exists; point it at this interpreter.
    (tmp_path / "facegate.service").write_text(unit.replace("/opt/facegate/venv/bin/python", sys.executable))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "facegate.service")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "ignoring" not in result.stderr.lower(), result.stderr
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "NoNewPrivileges=yes",
                      "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "DevicePolicy=closed",
                      "StateDirectory=facegate", "ConfigurationDirectory=facegate", "User=facegate"):
        assert directive in unit
