"""The door service with the fleet parts on: MQTT to a real Mosquitto (or to none), remote commands,
the metrics endpoint; on the demo clip with gpiozero's MockFactory pins."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from daemon import config as config_module
from daemon.demo import DEMO_CLIP, ENROL_FRAME, demo_config, enrol_from_clip
from daemon.events import EventReader
from daemon.fleet.commands import Command
from daemon.service import DoorService
from tests.broker import Subscriber
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
