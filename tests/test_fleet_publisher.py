"""The publisher's bookkeeping, with a stand-in for paho's client that acknowledges when told to:
the cursor moves only over rows the broker acknowledged, in order, whatever order the PUBACKs come in."""
from __future__ import annotations

from types import SimpleNamespace

from daemon.events import EventLog, EventReader
from daemon.fleet.cursor import Cursor
from daemon.fleet.publisher import WINDOW, EventPublisher
from daemon.fleet.settings import parse_mqtt

SETTINGS = parse_mqtt({"host": "broker"}, "door")


class Client:
    """Records what was published; `early` acknowledges a message before publish() returns, as paho's
    network thread may."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.publisher: EventPublisher | None = None
        self.early = False

    def publish(self, topic, payload, qos, retain):
        mid = len(self.sent) + 100
        self.sent.append((mid, topic))
        if self.early:
            self.publisher.acknowledged(mid)
        return SimpleNamespace(mid=mid)


def setup(tmp_path, rows: int):
    with EventLog(tmp_path / "events.db") as log:
        for n in range(rows):
            log.record("exit_request", reason=str(n))
    cursor = Cursor(tmp_path / "mqtt.db", SETTINGS.topic_prefix)
    publisher = EventPublisher(EventReader(tmp_path / "events.db"), cursor, SETTINGS)
    client = Client()
    client.publisher = publisher
    return publisher, cursor, client


def test_the_cursor_moves_over_the_acknowledged_head_only(tmp_path):
    publisher, cursor, client = setup(tmp_path, 5)
    assert publisher.pump(client) == 5
    mids = [mid for mid, _ in client.sent]
    publisher.acknowledged(mids[1])
    publisher.acknowledged(mids[2])
    assert cursor.event_id == 0, "row 1 is not acknowledged yet"
    publisher.acknowledged(mids[0])
    assert cursor.event_id == 3
    publisher.acknowledged(mids[4])
    assert cursor.event_id == 3 and publisher.backlog() == 2


def test_an_acknowledgement_before_publish_returns_counts_and_strangers_do_not(tmp_path):
    publisher, cursor, client = setup(tmp_path, 3)
    publisher.acknowledged(99)  # the link's own state message, say: not an event
    client.early = True
    publisher.pump(client)
    assert cursor.event_id == 3 and publisher.in_flight == 0


def test_at_most_a_window_is_in_flight_and_the_rest_waits_in_the_log(tmp_path):
    publisher, cursor, client = setup(tmp_path, WINDOW + 7)
    assert publisher.pump(client) == WINDOW and publisher.pump(client) == 0
    publisher.acknowledged(client.sent[0][0])
    assert publisher.pump(client) == 1 and publisher.backlog() == WINDOW + 6


def test_after_a_reconnection_new_rows_wait_for_the_resent_ones(tmp_path):
    publisher, cursor, client = setup(tmp_path, 3)
    publisher.pump(client)
    with EventLog(tmp_path / "events.db") as log:
        log.record("exit_request", reason="while away")
    publisher.reconnected()  # paho re-sends the three in flight
    assert publisher.pump(client) == 0
    for mid, _ in client.sent:
        publisher.acknowledged(mid)
    assert publisher.pump(client) == 1 and cursor.event_id == 3


def test_the_cursor_survives_a_restart(tmp_path):
    publisher, cursor, client = setup(tmp_path, 4)
    publisher.pump(client)
    for mid, _ in client.sent[:2]:
        publisher.acknowledged(mid)
    cursor.close()
    again = Cursor(tmp_path / "mqtt.db", SETTINGS.topic_prefix)
    assert again.event_id == 2
    assert Cursor(tmp_path / "mqtt.db", "another/prefix").event_id == 0, "each prefix has its own cursor"
