"""Home Assistant discovery: the configs carry what HA's documented schema requires, their templates
render (with Jinja2, as HA renders them) against the door's state, and they are retained on the broker."""
from __future__ import annotations

import json

import jinja2
import pytest

from daemon.door import DoorConfig
from daemon.fleet.discovery import ACCESS_EVENT_TYPES, discovery_messages
from daemon.fleet.link import Fleet, FleetLink
from daemon.fleet.settings import parse_mqtt
from daemon.events import EventLog
from tests.broker import Subscriber
from tests.test_fleet_events import wait_until

SETTINGS = parse_mqtt({"host": "broker"}, "front-door")
WITH_CONTACT = DoorConfig(relay_pin=17, name="front-door", contact_pin=27)
REQUIRED = {"lock": {"command_topic"}, "binary_sensor": {"state_topic"}, "sensor": {"state_topic"},
            "event": {"state_topic", "event_types"}}


def configs(door: DoorConfig = WITH_CONTACT, settings=SETTINGS) -> dict[str, dict]:
    return {topic: config for topic, config in discovery_messages(settings, door, "0.1.0")}


def render(template: str, state: dict) -> str:
    return jinja2.Environment().from_string(template).render(value_json=state, value=json.dumps(state))


STATE = {"lock": "locked", "door": "closed", "alarm": None, "last_granted": None, "last_granted_at": None}


def test_every_config_has_what_ha_requires_for_its_component():
    found = configs()
    assert sorted(topic.split("/")[1] for topic in found) == \
        ["binary_sensor", "binary_sensor", "binary_sensor", "event", "lock", "sensor"]
    for topic, config in found.items():
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", "facegate-front-door", "config")
        assert REQUIRED[component] <= set(config), topic
        assert config["unique_id"] == f"{node}_{object_id}"
        assert config["default_entity_id"] == f"{component}.facegate_front_door_{object_id}"
        assert config["device"]["identifiers"] == [node] and config["device"]["name"] == "front-door"
        assert config["availability_topic"] == "facegate/front-door/availability"
    assert len({c["unique_id"] for c in found.values()}) == len(found)


def test_the_lock_commands_are_fresh_commands_the_door_takes():
    import datetime

    from daemon.fleet.commands import receive

    [lock] = [c for t, c in configs().items() if "/lock/" in t]
    assert lock["command_topic"] == SETTINGS.command_topic
    pressed = datetime.datetime(2026, 12, 4, 21, 0, tzinfo=datetime.timezone.utc)
    unlocking = parse_mqtt({"host": "broker", "allow_remote_unlock": True}, "front-door")
    for payload, name in ((lock["payload_unlock"], "unlock"), (lock["payload_lock"], "lock")):
        # HA renders command_template with value = the payload and its own now() at the press
        sent = jinja2.Environment().from_string(lock["command_template"]).render(value=payload, now=lambda: pressed)
        command = receive(sent.encode(), retained=False, settings=unlocking, now=pressed.timestamp() + 1)
        assert command.name == name
    stale = jinja2.Environment().from_string(lock["command_template"]).render(value="unlock", now=lambda: pressed)
    with pytest.raises(ValueError, match="old|age"):
        receive(stale.encode(), retained=False, settings=unlocking, now=pressed.timestamp() + 3600)
    assert render(lock["value_template"], {**STATE, "lock": "unlocked"}) == lock["state_unlocked"]
    assert render(lock["value_template"], STATE) == lock["state_locked"]


@pytest.mark.parametrize("state, on", [
    ({}, set()),
    ({"door": "open"}, {"contact"}),
    ({"door": "open", "alarm": "held_open"}, {"contact", "held_open"}),
    ({"door": "open", "alarm": "forced_open"}, {"contact", "forced_open"}),
])
def test_the_binary_sensors_read_the_state(state, on):
    sensors = {t.split("/")[3]: c for t, c in configs().items() if "/binary_sensor/" in t}
    rendered = {name: render(c["value_template"], {**STATE, **state}) for name, c in sensors.items()}
    assert {name for name, value in rendered.items() if value == "ON"} == on
    assert set(rendered.values()) <= {"ON", "OFF"}


def test_the_last_person_sensor_and_its_attributes():
    [sensor] = [c for t, c in configs().items() if "/sensor/" in t]
    assert render(sensor["value_template"], STATE) == "none"
    granted = {**STATE, "last_granted": "Alice", "last_granted_at": "2026-12-02T08:00:00.000Z"}
    assert render(sensor["value_template"], granted) == "Alice"
    assert json.loads(render(sensor["json_attributes_template"], granted)) == {"granted_at": "2026-12-02T08:00:00.000Z"}


def test_the_access_event_entity_listens_where_access_events_go():
    [event] = [c for t, c in configs().items() if "/event/" in t]
    assert event["state_topic"] == "facegate/front-door/events/access"
    assert event["event_types"] == ACCESS_EVENT_TYPES == ["grant", "deny", "unknown_face"]


def test_no_contact_no_binary_sensors_and_discovery_can_be_off():
    assert not [t for t in configs(DoorConfig(relay_pin=17, name="front-door")) if "/binary_sensor/" in t]
    assert configs(settings=parse_mqtt({"host": "b", "discovery_prefix": None}, "d")) == {}


def test_the_configs_are_retained_and_sent_again_when_home_assistant_restarts(broker_factory, tmp_path):
    broker = broker_factory()
    settings = parse_mqtt(broker.mqtt_section(), "front-door")
    messages = discovery_messages(settings, WITH_CONTACT, "0.1.0")
    with EventLog(tmp_path / "events.db"):
        pass
    link = FleetLink(settings, Fleet(tmp_path / "events.db", tmp_path / "mqtt.db", lambda: dict(STATE),
                                     lambda command: None, lambda kind, reason: None, messages))
    link.start()
    try:
        wait_until(lambda: link.connected)
        with Subscriber(broker, "homeassistant/+/+/+/config") as retained:
            got = retained.wait_for(lambda m: len(m) >= len(messages))
            assert {m.topic: json.loads(m.payload) for m in got} == dict(messages) and all(m.retain for m in got)
            broker.publish("homeassistant/status", "online")
            again = retained.wait_for(lambda m: len(m) >= 2 * len(messages))
            assert {m.topic for m in again[len(messages):]} == {t for t, _ in messages}
    finally:
        link.close()
