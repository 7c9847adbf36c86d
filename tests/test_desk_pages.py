"""The front desk's pages through Starlette's in-process client, on the real models and a real gallery:
people (search and paging at 10,000), a person's page, editing, enrolling from photos with every refusal
said, the duplicate guard showing whom a face matches, events (filters, CSV, live rows), the door running
while people are added and deleted, and the doors page against the tests' Mosquitto."""
from __future__ import annotations

import csv
import io
import json
import re
import threading

import numpy as np
import pytest
import yaml
from gpiozero.pins.mock import MockFactory
from PIL import Image
from skimage import data

pytest.importorskip("starlette", reason="the desk extra (starlette) is not installed")
from starlette.testclient import TestClient  # noqa: E402

from daemon.bundles import generate_keypair  # noqa: E402
from daemon.events import EventLog, EventReader  # noqa: E402
from daemon.gallery import Gallery, NewPerson, Template  # noqa: E402
from desk.app import create_app  # noqa: E402
from tests.broker import Subscriber  # noqa: E402
from tests.test_desk_security import csrf_of, desk_state, login  # noqa: E402
from tests.test_service import make_config, run_service, short_clip  # noqa: E402,F401 (short_clip: a fixture)


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


ASTRONAUT = jpeg(data.astronaut())


@pytest.fixture
def settings(tmp_path):
    return desk_state(tmp_path)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as client:
        yield client


def enrol(client, name: str, *photos: tuple[str, bytes], **fields):
    return client.post("/enrol", data={"csrf": csrf_of(client), "name": name, **fields},
                       files=[("photos", (label, content, "image/jpeg")) for label, content in photos],
                       follow_redirects=False)


def test_ten_thousand_people_page_and_search_in_sql(client, settings):
    vector = np.ones(128, np.float32) / np.sqrt(128)
    with Gallery.open(settings.gallery) as gallery:
        gallery.add_people([NewPerson(f"person {n:05d}", f"E{n}", None, True, None, None,
                                      [Template(vector, "test-model")]) for n in range(10_000)])
    login(client, "viewer")
    first = client.get("/people").text
    assert "10000 people" in first and "page 1 of 200" in first and first.count("<tr class=") == 50
    last = client.get("/people?page=200").text
    assert "person 09999" in last and "person 09949" not in last and last.count("<tr class=") == 50
    partial = client.get("/people?q=person 0123&page=1", headers={"HX-Request": "true"}).text
    assert "<html" not in partial, "htmx gets the table only"
    assert "10 people" in partial and "person 01239" in partial
    by_external = client.get("/people?q=E4321").text
    assert "1 person" in by_external and "person 04321" in by_external
    assert "0 people" in client.get("/people?q=100%25").text, "a % in the search is a character, not a wildcard"


def test_enrol_from_photos_then_the_person_page_edit_disable_and_delete(client, settings):
    login(client, "admin")
    response = enrol(client, "Eileen Collins", ("astronaut.jpg", ASTRONAUT), ("mirrored.jpg", jpeg(data.astronaut()[:, ::-1])),
                     external_id="E1", valid_from="2026-01-01")
    assert response.status_code == 303, response.text
    person_id = int(response.headers["location"].rsplit("/", 1)[1])
    page = client.get(f"/people/{person_id}").text
    assert "Eileen Collins" in page and "2026-01-01" in page and "astronaut.jpg" in page
    photo = re.search(rf'src="(/people/{person_id}/photo/\d+)"', page).group(1)
    assert client.get(photo).headers["content-type"] == "image/jpeg"

    token = csrf_of(client)
    edited = client.post(f"/people/{person_id}/edit", data={"csrf": token, "name": "Eileen M. Collins",
                                                             "valid_from": "2026-01-01", "valid_until": "2026-12-31"},
                         follow_redirects=False)
    assert edited.status_code == 303
    bad = client.post(f"/people/{person_id}/edit", data={"csrf": token, "name": "Eileen", "valid_until": "soon"})
    assert bad.status_code == 400 and "is not a date" in bad.text
    client.post(f"/people/{person_id}/disable", data={"csrf": token})
    with Gallery.open(settings.gallery) as gallery:
        person = gallery.get_person(person_id)
        assert (person.name, person.valid_until, person.active) == ("Eileen M. Collins", "2026-12-31", False)
        assert len({t.model_id for t in gallery.templates(person_id)}) >= 1
    assert "Delete for good" in client.get(f"/people/{person_id}/delete").text
    unconfirmed = client.post(f"/people/{person_id}/delete", data={"csrf": token}, follow_redirects=False)
    assert unconfirmed.headers["location"] == f"/people/{person_id}/delete", "no confirm: back to the question"
    client.post(f"/people/{person_id}/delete", data={"csrf": token, "confirm": "yes"})
    with Gallery.open(settings.gallery) as gallery:
        assert gallery.list_people() == []
    actions = [e.reason.split(": ", 1)[1] for e in EventReader(settings.events).query(kinds=["operator"])]
    assert actions[1:] == ["enrolled from 2 photo(s)", "edited: name 'Eileen Collins' to 'Eileen M. Collins'; "
                           "valid 2026-01-01 .. 2026-12-31", "disabled", "deleted with " + actions[-1].split()[-2]
                           + " template(s)"]


def test_every_refusal_is_said_and_nothing_is_enrolled(client, settings):
    login(client, "enroller")
    grey = jpeg(np.full((480, 640, 3), 128, np.uint8))
    refused = enrol(client, "Nobody", ("astronaut.jpg", ASTRONAUT), ("wall.jpg", grey))
    assert refused.status_code == 400
    assert "wall.jpg" in refused.text and "no face found" in refused.text and "nobody was enrolled" in refused.text
    assert enrol(client, "  ", ("astronaut.jpg", ASTRONAUT)).status_code == 400
    assert "choose at least one photo" in enrol(client, "Eileen").text
    assert not settings.gallery.exists() or Gallery.open(settings.gallery).list_people() == []


def test_the_duplicate_guard_shows_the_person_the_face_matches(client, settings):
    login(client, "enroller")
    first = enrol(client, "Eileen Collins", ("astronaut.jpg", ASTRONAUT))
    person_id = int(first.headers["location"].rsplit("/", 1)[1])
    again = enrol(client, "Someone Else", ("same.jpg", jpeg(data.astronaut()[20:, 10:])))
    assert again.status_code == 409 and "looks like 'Eileen Collins'" in again.text.replace("&#39;", "'")
    assert f'src="/people/{person_id}/photo"' in again.text
    assert client.get(f"/people/{person_id}/photo").headers["content-type"] == "image/jpeg"
    taken = enrol(client, "Eileen Collins", ("astronaut.jpg", ASTRONAUT))
    assert taken.status_code == 409 and "already enrolled" in taken.text
    with Gallery.open(settings.gallery) as gallery:
        assert [p.name for p in gallery.list_people()] == ["Eileen Collins"]


def test_events_filters_csv_and_live_rows(client, settings):
    with EventLog(settings.events) as log:
        log.record("grant", door="front", person_id=1, person_name="Alice", score=0.2, at=1_800_000_000)
        log.record("deny", door="back", person_id=2, person_name="Bob", reason="outside hours", at=1_800_000_060)
        log.record("unknown_face", door="front", at=1_800_000_120)
    login(client, "viewer")
    page = client.get("/events?door=front").text
    assert "Alice" in page and "Bob" not in page
    assert "Bob" in client.get("/events?kind=deny").text and "Alice" not in client.get("/events?kind=deny").text
    assert "Alice" not in client.get("/events?since=2027-01-15T08:01").text
    assert "is not a time" in client.get("/events?since=yesterday").text
    rows = list(csv.reader(io.StringIO(client.get("/events.csv?door=front").text)))
    assert rows[0][:5] == ["id", "time", "unix", "door", "kind"] and [r[4] for r in rows[1:]] == ["grant",
                                                                                               "unknown_face"]
    newest = int(re.search(r'data-after="(\d+)"', client.get("/events").text).group(1))
    with EventLog(settings.events) as log:
        log.record("grant", door="front", person_id=3, person_name="<b>Carol</b>")
    with client.stream("GET", f"/events/stream?after={newest}&kind=grant") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                live = json.loads(line.removeprefix("data: "))
                break
    assert live["person"] == "<b>Carol</b>" and live["kind"] == "grant", "rows go as JSON; desk.js sets textContent"


def test_the_door_keeps_deciding_while_people_are_added_and_deleted(client, settings, short_clip):  # noqa: F811
    from daemon.demo import DEMO_CLIP, ENROL_FRAME, enrol_from_clip

    door = make_config(settings.gallery.parent, short_clip, liveness={"enabled": False})
    hiker = enrol_from_clip(door, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    login(client, "admin")
    result = {}
    running = threading.Thread(target=lambda: result.update(zip(("service", "watch", "code"),
                                                                run_service(door, MockFactory()))))
    running.start()
    changes = 0
    while running.is_alive() or changes < 2:
        response = enrol(client, f"Eileen {changes}", ("astronaut.jpg", ASTRONAUT), **{"force": "yes"})
        assert response.status_code == 303, response.text
        added = int(response.headers["location"].rsplit("/", 1)[1])
        assert client.post(f"/people/{added}/delete", data={"csrf": csrf_of(client), "confirm": "yes"},
                           follow_redirects=False).status_code == 303
        changes += 1
    running.join()
    assert result["code"] == 0 and result["watch"].high_at, "the door stopped granting the hiker"
    assert [o.name for o in result["service"].stats.decided if o.kind == "grant"] == ["Lead Hiker"]
    with Gallery.open(settings.gallery) as gallery:
        assert [p.id for p in gallery.list_people()] == [hiker]


def test_the_doors_page_shows_retained_state_and_publishes_the_signed_gallery(tmp_path, mosquitto):
    from tools.enroll_local import publish_gallery

    config = tmp_path / "frontdesk.yaml"
    config.write_text(yaml.safe_dump({"mqtt": mosquitto.mqtt_section(client_id="front-desk")}))
    key = tmp_path / "desk.key"
    generate_keypair(key, tmp_path / "desk.key.pub")
    mosquitto.publish("facegate/lobby/state", json.dumps({"lock": "locked", "door": "closed",
                                                          "last_granted": "Alice"}), retain=True)
    mosquitto.publish("facegate/lobby/availability", "online", retain=True)
    settings = desk_state(tmp_path, mqtt_config=config, signing_key=key, publish=publish_gallery)
    with TestClient(create_app(settings)) as client:
        login(client, "admin")
        page = client.get("/doors").text
        assert re.search(r"<td>lobby</td><td>online</td><td>locked</td>\s*<td>closed</td>\s*<td>Alice", page), page
        refused = client.post("/doors/publish", data={"csrf": csrf_of(client)})
        assert refused.status_code == 502 and "holds nobody" in refused.text
        assert enrol(client, "Eileen Collins", ("astronaut.jpg", ASTRONAUT)).status_code == 303
        published = client.post("/doors/publish", data={"csrf": csrf_of(client)})
        assert published.status_code == 200 and "Published gallery version" in published.text
        assert "1 people" in published.text
        size = int(re.search(r"(\d+) bytes, signed", published.text).group(1))
        with Subscriber(mosquitto, "facegate/gallery") as bundles:  # what a door starting now would get
            bundles.wait_for(lambda messages: any(m.retain and len(m.payload) == size for m in messages))
        reasons = [e.reason for e in EventReader(settings.events).query(kinds=["operator"])]
        assert any("published gallery version" in r for r in reasons)
