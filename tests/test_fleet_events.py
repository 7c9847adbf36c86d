"""The door's MQTT link against a real Mosquitto: events out from the persisted cursor, state,
availability and commands in (tests/broker.py starts the broker)."""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from daemon.events import EventLog, EventReader
from daemon.fleet.commands import Command
from daemon.fleet.link import Fleet, FleetLink
from daemon.fleet.settings import parse_mqtt
from tests.broker import Subscriber

PREFIX = "facegate/test-door"


class Door:
    """What the link reads of a door, and what it hands back."""

    def __init__(self, path: Path) -> None:
        self.events = EventLog(path / "events.db")
        self.state = {"lock": "locked", "door": "closed", "alarm": None}
        self.commands: list[Command] = []
        self.path = path

    def record(self, kind: str, reason: str) -> None:
        self.events.record(kind, door="test-door", reason=reason)

    def link(self, broker, **mqtt) -> FleetLink:
        settings = parse_mqtt(broker.mqtt_section(topic_prefix=PREFIX, client_id="door-under-test", **mqtt),
                              "test-door")
        link = FleetLink(settings, Fleet(events_path=self.path / "events.db", cursor_path=self.path / "mqtt.db",
                                         door_state=lambda: dict(self.state), on_command=self.commands.append,
                                         record=self.record, discovery=[]))
        link.start()
        return link


@pytest.fixture
def door(tmp_path):
    door = Door(tmp_path)
    yield door
    door.events.close()


def event_ids(messages) -> list[int]:
    return [json.loads(m.payload)["id"] for m in messages if "/events/" in m.topic]


def first_arrivals(messages) -> list[int]:
    """Event ids as a consumer keeping the id sees them: the broker may deliver a QoS 1 message to a
    subscriber twice (at least once) when it restarts before the subscriber's acknowledgement."""
    seen: dict[int, None] = {}
    for event_id in event_ids(messages):
        seen.setdefault(event_id)
    return list(seen)


def events_the_broker_received(broker) -> int:
    """The door's event PUBLISH packets in the broker's log (which outlives its restarts)."""
    return sum(1 for line in broker.log_path.read_text().splitlines()
               if "Received PUBLISH from door-under-test" in line and f"'{PREFIX}/events/" in line)


def record_some(door: Door, count: int, first: int = 0) -> list[int]:
    for n in range(first, first + count):
        door.events.record("exit_request", door="test-door", reason=f"press {n}")
    return [e.id for e in EventReader(door.path / "events.db").query()]


def all_ids(door: Door) -> list[int]:
    return [e.id for e in EventReader(door.path / "events.db").query()]


def test_every_event_goes_out_in_order_with_its_id_kind_and_group(broker_factory, door):
    broker = broker_factory()
    door.events.record("start", door="test-door", reason="camera")
    door.events.record("grant", door="test-door", person_id=3, person_name="Alice", score=0.31, track_id=7,
                       reason="allowed")
    door.events.record("alarm_forced_open", door="test-door", reason="door opened while locked")
    record_some(door, 40)
    with Subscriber(broker, f"{PREFIX}/events/#") as events:
        link = door.link(broker)
        try:
            messages = events.wait_for(lambda m: len(m) >= 43)
        finally:
            link.close()
    assert event_ids(messages) == all_ids(door), "each event once, in the log's order"
    grant = json.loads(messages[1].payload)
    assert messages[1].topic == f"{PREFIX}/events/access"
    assert grant["event_type"] == grant["kind"] == "grant" and grant["person_name"] == "Alice"
    assert grant["score"] == pytest.approx(0.31) and grant["track_id"] == 7
    assert [m.topic.rsplit("/", 1)[1] for m in messages[:4]] == ["system", "access", "alarm", "door"]
    assert not any(m.retain for m in messages)


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_events_recorded_while_the_broker_is_down_arrive_once_in_order_after_it_returns(broker_factory, door,
                                                                                         outage):
    broker = broker_factory()
    record_some(door, 5)
    # A persistent session, saved by a graceful restart, so the broker queues for it whatever happens next.
    events = Subscriber(broker, f"{PREFIX}/events/#", client_id="watcher", clean_session=False).connect()
    broker.restart()
    link = door.link(broker)
    try:
        events.wait_for(lambda m: len(event_ids(m)) >= 5)
        getattr(broker, outage)()
        record_some(door, 30, first=5)
        assert link.backlog() == 30, "the rows wait in the log while the broker is away"
        broker.start()
        messages = events.wait_for(lambda m: len(first_arrivals(m)) >= 35, timeout=60)
        assert first_arrivals(messages) == all_ids(door)
        assert sorted(set(event_ids(messages)[5:]) & set(all_ids(door)[5:])) == event_ids(messages)[-30:], \
            "the backlog arrives once each, in order"
        wait_until(lambda: link.backlog() == 0)
        assert events_the_broker_received(broker) == 35, "the door sent each event once"
    finally:
        link.close()
        events.disconnect()


def wait_until(predicate, timeout: float = 20.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        done.wait(0.05)
    assert predicate(), "condition not met in time"


def test_a_restarted_daemon_resumes_from_the_cursor_mid_backlog(broker_factory, door):
    broker = broker_factory()
    events = Subscriber(broker, f"{PREFIX}/events/#", client_id="watcher", clean_session=False).connect()
    broker.restart()
    record_some(door, 10)
    link = door.link(broker)
    events.wait_for(lambda m: len(event_ids(m)) >= 10)
    broker.stop()
    record_some(door, 25, first=10)
    link.close()  # the daemon stops with 25 rows not yet delivered
    broker.start()
    record_some(door, 5, first=35)
    link = door.link(broker)
    try:
        messages = events.wait_for(lambda m: len(first_arrivals(m)) >= 40, timeout=60)
        wait_until(lambda: link.backlog() == 0)
    finally:
        link.close()
        events.disconnect()
    assert first_arrivals(messages) == all_ids(door), "nothing lost across the restart, in order"
    assert event_ids(messages)[-30:] == all_ids(door)[10:], "the backlog once each, in order"
    assert events_the_broker_received(broker) == 40, "nothing sent twice across the restart"


def test_availability_and_state_are_retained_and_follow_the_door(broker_factory, door):
    broker = broker_factory()
    door.events.record("grant", door="test-door", person_id=1, person_name="Bob", reason="allowed")
    link = door.link(broker)
    try:
        with Subscriber(broker, f"{PREFIX}/state") as state:
            first = json.loads(state.wait_for(lambda m: m)[0].payload)
            assert first == {"lock": "locked", "door": "closed", "alarm": None, "last_granted": "Bob",
                             "last_granted_at": EventReader(door.path / "events.db").query()[0].time}
            door.state.update(lock="unlocked", door="open")
            door.events.record("grant", door="test-door", person_id=2, person_name="Carol", reason="allowed")
            latest = json.loads(state.wait_for(lambda m: json.loads(m[-1].payload)["last_granted"] == "Carol")[-1]
                                .payload)
            assert latest["lock"] == "unlocked" and latest["door"] == "open"
        with Subscriber(broker, f"{PREFIX}/availability") as availability:
            assert availability.wait_for(lambda m: m)[0] == (f"{PREFIX}/availability", b"online", True)
    finally:
        link.close()
    with Subscriber(broker, f"{PREFIX}/#") as retained:
        messages = retained.wait_for(lambda m: any(x.topic.endswith("/availability") for x in m))
    assert (f"{PREFIX}/availability", b"offline", True) in messages, "a stopped door says offline, retained"


def test_a_door_that_drops_off_is_marked_offline_by_its_last_will(broker_factory, door):
    broker = broker_factory()
    link = door.link(broker)
    try:
        with Subscriber(broker, f"{PREFIX}/availability") as availability:
            availability.wait_for(lambda m: m and m[-1].payload == b"online")
            link.client.socket().close()  # the connection dies without a DISCONNECT: the broker sends the will
            messages = availability.wait_for(lambda m: [x.payload for x in m][-2:] == [b"offline", b"online"])
        assert [m.payload for m in messages][:1] == [b"online"]
        wait_until(lambda: link.connected)
    finally:
        link.close()


def send_command(broker, payload: bytes) -> None:
    broker.publish(f"{PREFIX}/command", payload)


def test_remote_unlock_is_off_by_default_and_refusals_are_recorded(broker_factory, door, caplog):
    broker = broker_factory()
    link = door.link(broker)
    try:
        wait_until(lambda: link.connected)
        with caplog.at_level(logging.WARNING, "facegate.mqtt"):
            send_command(broker, b'{"command": "unlock", "client_id": "ha"}')
            send_command(broker, b'{"command": "reload", "client_id": "ops"}')
            wait_until(lambda: door.commands)
    finally:
        link.close()
    assert door.commands == [Command("reload", "ops")], "unlock refused, reload passed on"
    refused = EventReader(door.path / "events.db").query(kinds=["command_refused"])
    assert [e.reason for e in refused] == ["remote unlock by ha refused: mqtt.allow_remote_unlock is false"]
    assert "allow_remote_unlock is false" in caplog.text


def test_remote_unlock_when_allowed_names_the_sender(broker_factory, door):
    broker = broker_factory()
    link = door.link(broker, allow_remote_unlock=True)
    issued_at = round(time.time(), 3)
    try:
        wait_until(lambda: link.connected)
        send_command(broker, json.dumps({"command": "unlock", "client_id": "security-desk",
                                         "issued_at": issued_at}).encode())
        wait_until(lambda: door.commands)
    finally:
        link.close()
    assert door.commands == [Command("unlock", "security-desk", issued_at)]
    assert door.commands[0].reason == "remote unlock by security-desk (MQTT)"
    assert not door.commands[0].expired(), "handed over with its expiry ahead"


def test_a_retained_command_is_never_obeyed_and_the_refusal_says_how_to_clear_it(broker_factory, door, caplog):
    """The broker hands a retained command over at every subscription: the door takes none of them, and takes
    the live commands after it."""
    broker = broker_factory()
    fresh = json.dumps({"command": "unlock", "client_id": "ha-automation", "issued_at": time.time()}).encode()
    broker.publish(f"{PREFIX}/command", fresh, retain=True)  # the easy mistake: mosquitto_pub -r, or retain: true
    with caplog.at_level(logging.WARNING, "facegate.mqtt"):
        link = door.link(broker, allow_remote_unlock=True)
        try:
            wait_until(lambda: EventReader(door.path / "events.db").query(kinds=["command_refused"]))
            send_command(broker, b'{"command": "lock", "client_id": "after"}')
            wait_until(lambda: door.commands)
        finally:
            link.close()
    assert door.commands == [Command("lock", "after")], "the retained unlock was not handed to the door"
    [refused] = EventReader(door.path / "events.db").query(kinds=["command_refused"])
    assert refused.reason.startswith("retained command ignored")
    assert f"mosquitto_pub -r -n -t {PREFIX}/command" in refused.reason
    assert "retained command ignored" in caplog.text


def test_clearing_the_retained_command_is_no_refusal(broker_factory, door):
    broker = broker_factory()
    link = door.link(broker)
    try:
        wait_until(lambda: link.connected)
        broker.publish(f"{PREFIX}/command", b"", retain=True)  # mosquitto_pub -r -n: what the refusal advises
        send_command(broker, b'{"command": "reload", "client_id": "after"}')
        wait_until(lambda: door.commands)
    finally:
        link.close()
    assert door.commands == [Command("reload", "after")]
    assert EventReader(door.path / "events.db").query(kinds=["command_refused"]) == []


@pytest.mark.parametrize("offset, accepted, why", [
    (-120.0, False, "s ago, over mqtt.command_max_age_seconds (30 s)"),
    (-5.0, True, None),
    (2.0, True, None),  # within the tolerated clock skew
    (60.0, False, "s in the future, beyond the 5 s of clock skew tolerated"),
])
def test_issued_at_is_checked_against_the_maximum_age_and_the_clock_skew(broker_factory, door, offset, accepted,
                                                                         why):
    broker = broker_factory()
    link = door.link(broker, allow_remote_unlock=True)
    try:
        wait_until(lambda: link.connected)
        stamp = time.time() + offset
        send_command(broker, json.dumps({"command": "unlock", "client_id": "desk", "issued_at": stamp}).encode())
        send_command(broker, b'{"command": "lock", "client_id": "after"}')
        wait_until(lambda: any(c.name == "lock" for c in door.commands))
    finally:
        link.close()
    refused = EventReader(door.path / "events.db").query(kinds=["command_refused"])
    if accepted:
        assert [c.name for c in door.commands] == ["unlock", "lock"] and refused == []
    else:
        assert [c.name for c in door.commands] == ["lock"]
        [refusal] = refused
        assert refusal.reason.startswith("remote unlock by desk refused: ") and why in refusal.reason, refusal.reason


@pytest.mark.parametrize("payload, why", [
    (b"unlock", "not a JSON object"),
    (b'{"command": "open-sesame"}', "unknown command"),
    (b'["unlock"]', "not a JSON object"),
    (b'{"command": "unlock", "client_id": "' + b"x" * 2000 + b'"}', "over the 1024-byte limit"),
    (b"\xff\xfe", "not a JSON object"),
    (b'{"command": "reload", "client_id": "a b"}', "client_id"),
])
def test_bad_commands_are_logged_and_ignored(broker_factory, door, caplog, payload, why):
    broker = broker_factory()
    link = door.link(broker)
    try:
        wait_until(lambda: link.connected)
        with caplog.at_level(logging.WARNING, "facegate.mqtt"):
            send_command(broker, payload)
            send_command(broker, b'{"command": "reload", "client_id": "after"}')
            # two publishers' messages may arrive in either order: wait for both to be handled
            wait_until(lambda: door.commands and why in caplog.text)
    finally:
        link.close()
    assert door.commands == [Command("reload", "after")], "the link lives on after a bad command"
    assert why in caplog.text
    [refused] = EventReader(door.path / "events.db").query(kinds=["command_refused"])
    assert why in refused.reason


def test_a_flood_of_bad_commands_records_one_event(broker_factory, door):
    broker = broker_factory()
    link = door.link(broker)
    try:
        wait_until(lambda: link.connected)
        for _ in range(20):
            send_command(broker, b"garbage")
        send_command(broker, b'{"command": "reload", "client_id": "after"}')
        wait_until(lambda: door.commands)
    finally:
        link.close()
    assert len(EventReader(door.path / "events.db").query(kinds=["command_refused"])) == 1


@pytest.mark.parametrize("tls, password", [(True, False), (False, True), (True, True)])
def test_events_go_out_over_tls_and_with_a_password(broker_factory, door, tls, password):
    broker = broker_factory(tls=tls, password=password)
    ids = record_some(door, 3)
    with Subscriber(broker, f"{PREFIX}/events/#") as events:
        link = door.link(broker)
        try:
            assert event_ids(events.wait_for(lambda m: len(m) >= 3)) == ids
        finally:
            link.close()


def test_a_wrong_password_is_logged_and_the_events_wait(broker_factory, door, tmp_path, caplog):
    broker = broker_factory(password=True)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    record_some(door, 3)
    with caplog.at_level(logging.ERROR, "facegate.mqtt"):
        link = door.link(broker, password_file=str(wrong))
        try:
            wait_until(lambda: "refused the connection" in caplog.text)
            assert not link.connected and link.backlog() == 3
        finally:
            link.close()
    assert "mqtt.password_file" in caplog.text
