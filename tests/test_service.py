"""The door service end to end on the demo clip, with gpiozero's MockFactory pins."""
from __future__ import annotations

import logging
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
import numpy as np
import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from daemon import config as config_module
from daemon.demo import DEMO_CLIP, ENROL_FRAME, demo_config, enrol_from_clip, print_summary
from daemon.events import EventReader
from daemon.gallery import Gallery
from daemon.notify import Notifier
from daemon.service import ATTACK_REASON, DoorService, Outcome, Stats
from engines.model_card import cards_of
from tests.conftest import MODELS, REPO

RELAY = 17
CARDS_LIVE_THRESHOLD = cards_of(MODELS, "liveness")[0].threshold  # read from the cards, tuned there
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
    assert config.liveness.enabled and config.liveness.threshold == CARDS_LIVE_THRESHOLD, "liveness is on by default"
    person = enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    factory = MockFactory()
    service, watch, code = run_service(config, factory)
    assert code == 0
    # The clip is a direct camera recording: the real liveness nets judge the hiker live.
    [granted] = [o for o in service.stats.decided if o.kind == "grant"]
    assert granted.name == "Lead Hiker" and granted.live_score >= config.liveness.threshold
    assert service.stats.attacks == 0
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

    # A camera that never delivers a frame: the service runs, but is never ready and never feeds the watchdog.
    raw = demo_config(tmp_path / "b", fast=True)
    raw["camera"] = {"type": "opencv", "device": "/dev/video-missing-for-test"}
    starved = config_module.parse(raw)
    service = DoorService(starved, pin_factory=MockFactory(), notifier=Notifier(str(listener.path)))
    threading.Timer(1.5, service.stop).start()
    assert service.run() == 0
    sent = listener.messages()
    assert not any(m.startswith("READY=1") for m in sent), "READY=1 before the first frame"
    assert "WATCHDOG=1" not in sent
    assert ("STATUS=not ready: camera opencv v4l2 /dev/video-missing-for-test cannot be opened: "
            "/dev/video-missing-for-test does not exist (unplugged, or another video node?)") in sent


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


# --- liveness (presentation-attack detection) ------------------------------------------------------------


def spoofed(service: DoorService, score: float = 0.05) -> list[int]:
    """Make the liveness nets see a photo: every face scores `score` (the real nets cannot be made to
    see a printed photo in the clip). Returns a list that counts the faces scored per call."""
    scored: list[int] = []

    def low(rgb, faces):
        scored.append(len(faces))
        return np.full(len(faces), score, np.float32)

    service.recogniser.liveness.score = low
    return scored


def test_a_spoofed_track_is_denied_once_as_an_attack_with_a_snapshot_and_the_relay_stays_off(tmp_path, short_clip):
    config = make_config(tmp_path, short_clip, events={"snapshots": True})
    person = enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    factory = MockFactory()
    frames = []
    service = DoorService(config, pin_factory=factory,
                          on_frame=lambda frame, seen, unlocked: frames.append((list(seen), factory.pin(RELAY).state,
                                                                                frame.video_time)))
    scored = spoofed(service)
    assert service.run() == 0
    assert all(state == 0 for _, state, _ in frames), "the relay went high for a presentation attack"
    assert service.stats.grants == 0 and service.stats.attacks == 1
    [deny] = EventReader(config.events.path).query(kinds=["deny"])
    assert deny.person_id == person and deny.reason.startswith(ATTACK_REASON)
    assert f"live score 0.050 below the liveness threshold {config.liveness.threshold:.3f}" in deny.reason
    assert deny.has_snapshot
    jpeg = EventReader(config.events.path).snapshot(deny.id)
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
    assert not EventReader(config.events.path).query(kinds=["grant", "relay_on"])
    # The attack decided the track: its later faces are neither embedded nor scored again.
    [attack] = [o for o in service.stats.decided if o.kind == "attack"]
    assert attack.live_score == pytest.approx(0.05)
    later = [face for seen, _, at in frames for face in seen
             if face.track.id == attack.track_id and at > attack.video_time]
    assert later and all(face.observation is None for face in later)
    # Liveness is computed for the faces that passed the quality gate on undecided tracks, and only for those.
    usable = [face for seen, _, _ in frames for face in seen
              if face.observation is not None and face.observation.usable]
    assert sum(scored) == len(usable) and all(face.observation.liveness == pytest.approx(0.05) for face in usable)
    assert not any(face.observation.liveness is not None for seen, _, _ in frames for face in seen
                   if face.observation is not None and not face.observation.usable)


def test_with_liveness_off_identity_alone_grants_and_every_start_warns(tmp_path, short_clip, caplog):
    caplog.set_level(logging.INFO, logger="facegate")
    on = make_config(tmp_path / "on", short_clip)
    off = make_config(tmp_path / "off", short_clip, liveness={"enabled": False})
    outcomes = {}
    for name, config in (("on", on), ("off", off)):
        enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
        caplog.clear()
        service = DoorService(config, pin_factory=MockFactory())
        if config.liveness.enabled:
            spoofed(service)
        else:
            assert service.recogniser.liveness is None, "liveness off: the nets are not even loaded"
        assert service.run() == 0
        outcomes[name] = ([e.kind for e in EventReader(config.events.path).query(kinds=["grant", "deny"])],
                          [r for r in caplog.records if "liveness.enabled is false" in r.getMessage()])
    assert outcomes["on"] == (["deny"], [])
    kinds, warnings = outcomes["off"]
    assert kinds == ["grant"]
    assert [w.levelno for w in warnings] == [logging.WARNING] and "a printed photo" in warnings[0].getMessage()


def test_sighup_reloads_liveness_enabled_and_threshold(tmp_path, short_clip, caplog):
    raw = demo_config(tmp_path, short_clip, fast=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = config_module.load(path)
    service = DoorService(config, pin_factory=MockFactory())
    service.source.start()  # step() by step(), as run() would, each reload applied before a frame
    try:
        assert service.decider.live_threshold == CARDS_LIVE_THRESHOLD
        caplog.set_level(logging.INFO, logger="facegate")

        def reload(liveness: dict) -> None:
            path.write_text(yaml.safe_dump({**raw, "liveness": liveness}))
            service.request_reload()
            assert service.step()

        reload({"enabled": False})
        assert service.decider.live_threshold is None and not service.recogniser.live_enabled
        assert any("liveness.enabled is false" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
        reload({"enabled": True, "threshold": 0.93})
        assert service.decider.live_threshold == 0.93 and service.recogniser.live_enabled
        caplog.clear()
        reload({"enabled": True, "threshold": 7})  # refused: the running settings stay
        assert service.decider.live_threshold == 0.93
        assert any("reload refused" in r.getMessage() and "liveness.threshold = 7" in r.getMessage()
                   for r in caplog.records)
    finally:
        service.close()


def test_a_door_started_without_liveness_loads_the_nets_when_a_reload_enables_it(tmp_path, short_clip):
    raw = demo_config(tmp_path, short_clip, fast=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**raw, "liveness": {"enabled": False}}))
    service = DoorService(config_module.load(path), pin_factory=MockFactory())
    service.source.start()
    try:
        assert service.recogniser.liveness is None and service.decider.live_threshold is None
        path.write_text(yaml.safe_dump(raw))
        service.request_reload()
        assert service.step()
        assert service.recogniser.liveness is not None and service.decider.live_threshold == CARDS_LIVE_THRESHOLD
    finally:
        service.close()


def test_liveness_config_defaults_and_errors_name_the_key(tmp_path):
    def parse(liveness=None, **sections):
        raw = demo_config(tmp_path, fast=True)
        if liveness is not None:
            raw["liveness"] = liveness
        raw.update(sections)
        return config_module.parse(raw)

    default = parse().liveness
    assert default.enabled and default.threshold == CARDS_LIVE_THRESHOLD and default.models_dir == MODELS
    assert "minifasnet" in default.threshold_source
    assert parse({"threshold": 0.8}).liveness.live_threshold == 0.8
    assert parse({"enabled": False}).liveness.live_threshold is None
    no_cards = tmp_path / "no_liveness_cards"
    no_cards.mkdir()
    for bad, message in (({"threshold": 1.5}, "liveness.threshold = 1.5 is not allowed: expected a number from 0 to 1"),
                         ({"threshold": -0.1}, "liveness.threshold = -0.1 is not allowed"),
                         ({"enabled": "yes"}, "liveness.enabled = 'yes' is not allowed: expected true or false"),
                         ({"statistic": "mean"}, "liveness.statistic is not a known key"),
                         ({"models_dir": str(tmp_path / "absent")}, "liveness.models_dir = "),
                         ({"models_dir": str(no_cards)}, "model cards of role 'liveness'"),
                         ({"engines": {"minifasnet-v3": "/x.engine"}}, "liveness.engines.minifasnet-v3 = "
                                                                      "'/x.engine' is not allowed: expected a key"),
                         ({"engines": {"minifasnet-v2-2.7": "/x.onnx"}}, "expected a TensorRT .engine")):
        with pytest.raises(config_module.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse(bad)
    assert parse({"models_dir": str(no_cards), "enabled": False}).liveness.threshold is None
    engines = {"minifasnet-v2-2.7": "/var/lib/facegate/engines/minifasnet_v2_2.7.fp16.engine"}
    assert parse({"engines": engines}).liveness.engines == {k: Path(v) for k, v in engines.items()}
    # A models folder of its own from before liveness: the shipped liveness nets judge its faces.
    older = tmp_path / "models_before_liveness"
    older.mkdir()
    for card in MODELS.iterdir():
        if card.suffix in (".yaml", ".onnx") and not card.name.startswith("minifasnet") or card.name == "DEFAULTS":
            os.symlink(card, older / card.name)
    assert parse(detector={"models_dir": str(older)}).liveness.models_dir == MODELS


def test_check_config_refuses_a_bad_liveness_threshold(tmp_path):
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load(config_module.EXAMPLE_PATH.read_text())
    assert raw["liveness"] == {"enabled": True, "threshold": None, "models_dir": None, "engines": {}}, \
        "the example shows the defaults"
    raw["liveness"]["threshold"] = 2
    bad.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "daemon", "check-config", str(bad)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert "liveness.threshold = 2.0 is not allowed: expected a number from 0 to 1" in result.stderr


def test_the_demo_summary_prints_the_live_score_of_each_decided_track(capsys):
    stats = Stats(frames=10, faces=12, grants=1, unknowns=1, frame_ms=[50.0])
    stats.decided.extend([Outcome(1, "grant", "Lead Hiker", 0.41, 0.806, 1.9),
                          Outcome(2, "unknown", None, None, 0.981, 2.5),
                          Outcome(3, "attack", "Lead Hiker", 0.4, 0.05, 3.0)])

    class Service:
        config = config_module.parse(demo_config(Path("/tmp/facegate-summary-test"), fast=True))

    Service.stats = stats
    live = type("Live", (), {"relay_on_video_time": [1.9]})()
    print_summary(Service(), live, 1.0, None)
    out = capsys.readouterr().out
    assert f"on, threshold {CARDS_LIVE_THRESHOLD:.3f}" in out
    assert "track 1   granted            Lead Hiker     live 0.806" in out
    assert "track 2   unknown face       unknown        live 0.981" in out
    assert "track 3   denied (attack)    Lead Hiker     live 0.050" in out
