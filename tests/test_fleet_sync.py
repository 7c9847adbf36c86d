"""Gallery sync over a real Mosquitto: the front desk publishes a signed bundle (retained), every door's
link verifies and mirrors it and announces the version it runs; bad bundles leave the doors alone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.bundles import SIGNATURE_SIZE, SIGNED_MAGIC, generate_keypair, load_private_key
from daemon.events import EventLog, EventReader
from daemon.fleet.link import Fleet, FleetLink, GallerySync
from daemon.fleet.settings import parse_mqtt
from daemon.fleet.sync import apply_signed_bundle
from daemon.gallery import Gallery
from tests.broker import Subscriber
from tests.test_bundles import (CARD, contents, door, flip, front_desk, keys, people_of, signed,  # noqa: F401
                                templates)
from tests.test_fleet_events import wait_until
from tools.enroll_local import publish_gallery


class SyncedDoor:
    """A door's gallery, event log and link with gallery sync on."""

    def __init__(self, root: Path, name: str, broker, public_key) -> None:
        self.name = name
        self.gallery = door(root / f"{name}.db", f"{name} local")
        self.events_path = root / f"{name}-events.db"
        self.events = EventLog(self.events_path)
        settings = parse_mqtt(broker.mqtt_section(topic_prefix=f"facegate/{name}", client_id=name), name)

        def record(kind: str, reason: str) -> None:
            self.events.record(kind, door=name, reason=reason)

        def running_version():
            with Gallery.open(self.gallery) as gallery:
                synced = gallery.synced_bundle()
            return None if synced is None else {"version": synced.version, "sender": synced.sender}

        sync = GallerySync(lambda payload: apply_signed_bundle(payload, public_key, self.gallery, CARD, [CARD]),
                           running_version, record)
        self.link = FleetLink(settings, Fleet(self.events_path, root / f"{name}-mqtt.db", lambda: {},
                                              lambda command: None, record, [], sync))
        self.link.start()

    def kinds(self, *kinds: str) -> list:
        return EventReader(self.events_path).query(kinds=list(kinds))

    def close(self) -> None:
        self.link.close()
        self.events.close()


@pytest.fixture
def fleet(tmp_path, broker_factory, keys):
    broker = broker_factory(password=True)
    doors: list[SyncedDoor] = []

    def start(name: str) -> SyncedDoor:
        doors.append(SyncedDoor(tmp_path, name, broker, keys[1]))
        return doors[-1]

    yield broker, start
    for each in doors:
        each.close()


def publish(desk: Path, broker, key, version: int | None = None):
    settings = parse_mqtt(broker.mqtt_section(client_id="front-desk"), "front-desk")
    with Gallery.open(desk) as gallery:
        return publish_gallery(gallery, CARD.id, key, settings, version=version, timeout_s=20)


def test_a_published_bundle_is_mirrored_by_every_door_which_announces_its_version(tmp_path, fleet, keys):
    broker, start = fleet
    desk = front_desk(tmp_path / "desk.db")
    north, south = start("north"), start("south")
    with Subscriber(broker, "facegate/+/gallery") as versions:
        published = publish(desk, broker, keys[0], version=7)
        messages = versions.wait_for(lambda m: {x.topic for x in m if json.loads(x.payload)} ==
                                     {"facegate/north/gallery", "facegate/south/gallery"})
    assert published.version == 7 and published.people == 2
    latest = {m.topic: json.loads(m.payload) for m in messages}
    assert latest == {f"facegate/{name}/gallery": {"version": 7, "sender": "front-desk"} for name in ("north", "south")}
    for each in (north, south):
        assert people_of(each.gallery) == people_of(desk), f"{each.name} mirrors the front desk"
        [synced] = each.kinds("gallery_synced")
        assert "version 7 from 'front-desk': 2 people" in synced.reason


def test_a_door_that_was_off_catches_up_from_the_retained_bundle(tmp_path, fleet, keys):
    broker, start = fleet
    desk = front_desk(tmp_path / "desk.db")
    publish(desk, broker, keys[0], version=3)
    late = start("late")  # connects after the publish: the broker hands it the retained bundle
    wait_until(lambda: late.kinds("gallery_synced"))
    assert people_of(late.gallery) == people_of(desk)


@pytest.mark.parametrize("spoil", ["tampered", "wrong key", "truncated", "unsigned", "older"])
def test_a_bad_bundle_is_refused_logged_and_the_door_keeps_its_gallery(tmp_path, fleet, keys, spoil):
    broker, start = fleet
    desk = front_desk(tmp_path / "desk.db")
    running = start("door")
    publish(desk, broker, keys[0], version=5)
    wait_until(lambda: running.kinds("gallery_synced"))
    before = contents(running.gallery)
    with Gallery.open(desk) as gallery:
        gallery.add_person("Mallory", templates("mallory"))
    good = signed(desk, keys, 6)
    payload = {
        "tampered": flip(good, len(good) - 100),
        "wrong key": signed_with_another_key(tmp_path, desk),
        "truncated": good[: len(good) // 2],
        "unsigned": good[len(SIGNED_MAGIC) + SIGNATURE_SIZE:],  # the plain zip inside
        "older": signed(desk, keys, 4),
    }[spoil]
    broker.publish("facegate/gallery", payload, retain=True)
    wait_until(lambda: running.kinds("gallery_sync_refused"))
    [refused] = running.kinds("gallery_sync_refused")
    why = {"tampered": "signature", "wrong key": "signature", "truncated": "signature", "unsigned": "not a signed",
           "older": "older than version 5"}[spoil]
    assert why in refused.reason
    assert contents(running.gallery) == before, "a refused bundle changes nothing"
    assert not running.kinds("grant")


def signed_with_another_key(tmp_path: Path, desk: Path) -> bytes:
    generate_keypair(tmp_path / "other.key", tmp_path / "other.key.pub")
    return signed(desk, (load_private_key(tmp_path / "other.key"), None), 6)
