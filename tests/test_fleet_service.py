"""The door service with the fleet parts on: MQTT to a real Mosquitto (or to none), remote commands,
the metrics endpoint; on the demo clip with gpiozero's MockFactory pins."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from daemon import config as config_module
from daemon.demo import DEMO_CLIP, ENROL_FRAME, demo_config, enrol_from_clip
from daemon.events import EventReader
from daemon.fleet import link as link_module
from daemon.fleet.commands import Command, receive
from daemon.service import DoorService
from tests.broker import Subscriber
from tests.test_fleet_events import wait_until
from tests.test_service import RELAY, RelayWatch, event_sequence, make_config, short_clip  # noqa: F401 (fixture)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replay(state, clip, **sections):
    config = make_config(state, clip, door={"relay": {"pin": RELAY, "unlock_seconds": 0.5}}, **sections)
    enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    factory = MockFactory()
    watch = RelayWatch(factory)
    service = DoorService(config, pin_factory=factory, on_frame=watch)
    assert service.run() == 0
    return config, service, watch


def test_a_door_decides_the_same_with_mqtt_off_and_with_the_broker_down(tmp_path, short_clip):
    """The door loop never waits on the network: the same events and relay timeline, in clip time."""
    off_config, _, off_watch = replay(tmp_path / "off", short_clip)
    down_config, service, down_watch = replay(tmp_path / "down", short_clip,
                                              mqtt={"host": "127.0.0.1", "port": free_port()})
    assert [e[:3] for e in event_sequence(down_config.events.path)] == \
        [e[:3] for e in event_sequence(off_config.events.path)]
    assert down_watch.high_at == off_watch.high_at and down_watch.high_at
    assert not service.fleet.connected


def test_the_grant_reaches_the_broker_with_discovery_state_and_availability(tmp_path, short_clip, broker_factory):
    broker = broker_factory()
    with Subscriber(broker, "#") as everything:
        config, service, _ = replay(tmp_path, short_clip, mqtt=broker.mqtt_section())
        prefix = config.mqtt.topic_prefix
        logged = EventReader(config.events.path).query()
        messages = everything.wait_for(
            lambda m: sum(1 for x in m if "/events/" in x.topic) >= len(logged)
            and any(x.topic == f"{prefix}/availability" and x.payload == b"offline" for x in m))
    events = [json.loads(m.payload) for m in messages if m.topic.startswith(f"{prefix}/events/")]
    assert [e["id"] for e in events] == [e.id for e in logged]
    [grant] = [e for e in events if e["kind"] == "grant"]
    assert grant["person_name"] == "Lead Hiker" and grant["door"] == "demo-door"
    assert any(m.topic.startswith("homeassistant/lock/") for m in messages), "discovery went out"
    states = [json.loads(m.payload) for m in messages if m.topic == f"{prefix}/state"]
    assert states[-1]["last_granted"] == "Lead Hiker" and states[-1]["lock"] == "locked"
    assert {"locked", "unlocked"} <= {s["lock"] for s in states}, "the unlock pulse was published"


def test_remote_commands_are_carried_out_by_the_door_loop(tmp_path, short_clip):
    raw = demo_config(tmp_path, short_clip, fast=True)
    raw["door"]["relay"] = {"pin": RELAY, "unlock_seconds": 30}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = config_module.load(path)
    factory = MockFactory()
    service = DoorService(config, pin_factory=factory)
    try:
        service.source.start()
        service._commands.put(Command("unlock", "security-desk"))
        service.step()
        assert factory.pin(RELAY).state == 1 and service.door_state()["lock"] == "unlocked"
        service._commands.put(Command("lock", "security-desk"))
        service.step()
        assert factory.pin(RELAY).state == 0 and service.door_state()["lock"] == "locked"
        raw["decision"] = {"k": 4}
        path.write_text(yaml.safe_dump(raw))
        service._commands.put(Command("reload", "ops"))
        service.step()
        assert service.config.decision.k == 4, "reload re-read the config file"
    finally:
        service.close()
    [grant] = EventReader(config.events.path).query(kinds=["grant"])
    assert grant.reason == "remote unlock by security-desk (MQTT)" and grant.person_id is None
    relay_off = EventReader(config.events.path).query(kinds=["relay_off"])
    assert any(e.reason == "release: remote lock by security-desk (MQTT)" for e in relay_off)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_metrics_endpoint_reports_the_running_door(tmp_path, short_clip):
    port = free_port()
    scraped: list[tuple[int, str, int, str]] = []
    config = make_config(tmp_path, short_clip, metrics={"listen": f"127.0.0.1:{port}"})
    enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")

    def scrape(frame, seen, unlocked) -> None:
        if service.stats.grants and not scraped:
            scraped.append((*get(f"http://127.0.0.1:{port}/metrics"), *get(f"http://127.0.0.1:{port}/healthz")))

    service = DoorService(config, pin_factory=MockFactory(), on_frame=scrape)
    assert service.run() == 0
    [(status, text, health_status, health)] = scraped
    assert status == 200 and health_status == 200 and json.loads(health)["status"] == "ok"
    assert 'facegate_decisions_total{kind="grant"} 1.0' in text
    assert "facegate_gallery_people 1.0" in text and "facegate_stage_seconds_count{stage=\"detect\"}" in text
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # closed with the service


@pytest.fixture
def faceless_clip(tmp_path):
    """A second of a grey wall at 10 fps, looped by the door: frames flow, no face ever opens the door."""
    path = tmp_path / "wall.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for _ in range(10):
        writer.write(np.full((120, 160, 3), 90, np.uint8))
    writer.release()
    return path


class RunningDoor:
    """The door service running (DoorService.run) on its own thread, with its own mock pins."""

    def __init__(self, config) -> None:
        self.factory = MockFactory()
        self.service = DoorService(config, pin_factory=self.factory)
        self.relay = self.factory.pin(RELAY)
        self.code: list[int] = []
        self._thread = threading.Thread(target=lambda: self.code.append(self.service.run()), name="door")

    def __enter__(self) -> "RunningDoor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.service.stop()
        self._thread.join(timeout=60)
        assert self.code == [0], "the door ran and stopped cleanly"

    @property
    def relay_was_on(self) -> bool:
        return any(state.state for state in self.relay.states)


def unlock(issued_at: float | None = None, client_id: str = "security-desk") -> bytes:
    command = {"command": "unlock", "client_id": client_id}
    if issued_at is not None:
        command["issued_at"] = issued_at
    return json.dumps(command).encode()


def logged(config, kind: str) -> list:
    """The door's events of one kind so far (none before the door has made its log)."""
    if not config.events.path.is_file():
        return []
    reader = EventReader(config.events.path)
    try:
        return reader.query(kinds=[kind])
    finally:
        reader.close()


def remote_door_config(tmp_path, clip, broker):
    return make_config(tmp_path, clip, camera={"type": "file", "path": str(clip), "pace": "realtime", "loop": True},
                       door={"relay": {"pin": RELAY, "unlock_seconds": 0.5}},
                       mqtt=broker.mqtt_section(allow_remote_unlock=True))


def test_a_retained_unlock_never_opens_the_door_at_restarts_or_reconnections(tmp_path, faceless_clip,
                                                                            broker_factory, monkeypatch):
    """The mistake of the issue: an unlock published retained stays on the command topic, and the broker hands
    it over at every subscription. Neither the door's restart nor the broker's brings it back; a live unlock
    still works."""
    monkeypatch.setattr(link_module, "REFUSAL_LOG_SECONDS", 0.0)  # record every refusal, to count them
    broker = broker_factory()
    config = remote_door_config(tmp_path, faceless_clip, broker)
    topic = config.mqtt.command_topic

    def refusals() -> list[str]:
        return [e.reason for e in logged(config, "command_refused")]

    def handed_over() -> int:
        """How often the door has had the retained unlock: each time it is refused, or (the defect) obeyed."""
        return len(refusals()) + len(logged(config, "grant"))

    # Stamped now, from the right sender: only the retain flag is wrong with it.
    broker.publish(topic, unlock(time.time()), retain=True)
    with RunningDoor(config) as first:
        wait_until(lambda: handed_over() == 1, timeout=60)
    with RunningDoor(config) as door:  # the door restarts: the broker hands the retained unlock over again
        wait_until(lambda: handed_over() == 2, timeout=60)
        broker.restart()  # the broker goes away and comes back (persistence keeps the retained message)
        wait_until(lambda: handed_over() == 3, timeout=60)
        assert logged(config, "grant") == [], "the retained unlock was never obeyed"
        assert not first.relay_was_on and not door.relay_was_on, "the relay stayed off"
        broker.publish(topic, unlock(time.time()))  # a live one, as Home Assistant sends it
        wait_until(lambda: logged(config, "grant") and door.relay_was_on, timeout=60)
    assert all(r.startswith("retained command ignored") and f"mosquitto_pub -r -n -t {topic}" in r
               for r in refusals()), refusals()
    [grant] = logged(config, "grant")
    assert grant.reason == "remote unlock by security-desk (MQTT)"


def test_issued_at_decides_whether_a_remote_unlock_opens_the_door(tmp_path, faceless_clip, broker_factory,
                                                                 monkeypatch):
    monkeypatch.setattr(link_module, "REFUSAL_LOG_SECONDS", 0.0)
    broker = broker_factory()
    config = remote_door_config(tmp_path, faceless_clip, broker)

    def count(kind: str) -> int:
        return len(logged(config, kind))

    with RunningDoor(config) as door:
        wait_until(lambda: door.service.fleet.connected, timeout=60)
        broker.publish(config.mqtt.command_topic, unlock(time.time() - 120, "old"))
        wait_until(lambda: count("command_refused") == 1, timeout=60)
        broker.publish(config.mqtt.command_topic, unlock(client_id="unstamped"))
        wait_until(lambda: count("command_refused") == 2, timeout=60)
        assert count("grant") == 0 and not door.relay_was_on, "neither opened the door"
        broker.publish(config.mqtt.command_topic, unlock(time.time() + 2, "ahead"))  # within the 5 s skew
        wait_until(lambda: count("grant") == 1 and door.relay_was_on, timeout=60)
        broker.publish(config.mqtt.command_topic, unlock(time.time() + 60, "far-ahead"))
        wait_until(lambda: count("command_refused") == 3, timeout=60)
    reasons = [e.reason for e in logged(config, "command_refused")]
    assert reasons[0].startswith("remote unlock by old refused: issued 1") and "s ago" in reasons[0]
    assert "no issued_at and mqtt.require_issued_at is true" in reasons[1]
    assert reasons[2].startswith("remote unlock by far-ahead refused: ") and "in the future" in reasons[2]
    assert [e.reason for e in logged(config, "grant")] == ["remote unlock by ahead (MQTT)"]


def test_a_command_that_waited_too_long_in_the_door_loop_is_refused_there(tmp_path, short_clip):
    """The link admitted it fresh, then the door loop stalled: by the time the loop gets to it, it is too old to
    carry out."""
    config = make_config(tmp_path, short_clip, door={"relay": {"pin": RELAY, "unlock_seconds": 30}},
                         mqtt={"host": "127.0.0.1", "port": free_port(), "allow_remote_unlock": True})
    factory = MockFactory()
    service = DoorService(config, pin_factory=factory)
    admitted_a_minute_ago = receive(unlock(time.time()), False, config.mqtt, monotonic=time.monotonic() - 60)
    try:
        service.source.start()
        service._commands.put(admitted_a_minute_ago)
        service.step()
        assert factory.pin(RELAY).state == 0 and service.stats.grants == 0
        service._commands.put(receive(unlock(time.time()), False, config.mqtt))
        service.step()
        assert factory.pin(RELAY).state == 1, "a fresh one still opens the door"
    finally:
        service.close()
    [refused] = logged(config, "command_refused")
    assert refused.reason == ("remote unlock by security-desk (MQTT) refused: it waited past "
                              "mqtt.command_max_age_seconds to be carried out")
