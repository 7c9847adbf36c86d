"""Event-log rows out to the broker, in order, each once, nothing lost.

The publisher reads the log (its own read-only connection) for rows after the cursor and hands
them to the MQTT client, QoS 1, only while the client is connected and at most WINDOW at a time,
so a long outage costs no memory: the rows wait in SQLite. paho re-sends the unacknowledged ones
after a reconnection; the cursor moves past a row only when the broker has acknowledged it and
every row before it, and is saved, so a restarted daemon resumes where the broker left off.
A daemon killed between an acknowledgement and the next save sends those few rows again:
consumers keep the event id to recognise them.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict
from typing import Any, Protocol

from daemon.events import Event, EventReader
from daemon.fleet.cursor import Cursor
from daemon.fleet.settings import MqttSettings

log = logging.getLogger("facegate.mqtt")

WINDOW = 20  # rows handed to the client and not yet acknowledged
GROUPS = {
    "grant": "access", "deny": "access", "unknown_face": "access",
    "relay_on": "door", "relay_off": "door", "exit_request": "door", "unlock_extended": "door",
    "alarm_held_open": "alarm", "alarm_forced_open": "alarm", "alarm_cleared": "alarm",
    "gallery_synced": "gallery", "gallery_sync_refused": "gallery",
}  # anything else (start, stop, fault, command_refused): system


class Client(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Any: ...


def group_of(kind: str) -> str:
    return GROUPS.get(kind, "system")


def event_payload(event: Event) -> bytes:
    """An event as published: the log's columns, and event_type (its kind) for Home Assistant's event entity."""
    fields = asdict(event)
    return json.dumps({"event_type": event.kind, **fields}, ensure_ascii=False).encode()


class EventPublisher:
    """Moves the cursor as the broker acknowledges; pump() and acknowledged() may run on different threads."""

    def __init__(self, reader: EventReader, cursor: Cursor, settings: MqttSettings) -> None:
        self.reader = reader
        self.cursor = cursor
        self.settings = settings
        self.last_granted: Event | None = reader.last_with_person("grant")
        self._lock = threading.Lock()
        self._handed = cursor.event_id  # the last row given to the client (sent or queued by it)
        self._inflight: OrderedDict[int, int] = OrderedDict()  # message id -> event id, in sending order
        self._acked: set[int] = set()  # acknowledged message ids not yet past the head of _inflight
        # An acknowledgement can arrive (on paho's thread) before publish() has returned its message id,
        # and the link's own QoS 1 messages (state, discovery) are acknowledged through the same
        # callback: unknown ids are kept only while a publish() is under way, and only its own is used.
        self._publishing = False
        self._early: set[int] = set()
        self._holding = False  # after a reconnection, until paho's re-sent rows are acknowledged

    def pump(self, client: Client) -> int:
        """Hand the client the next rows the window allows; returns how many."""
        with self._lock:
            self._holding = self._holding and bool(self._inflight)
            room = 0 if self._holding else WINDOW - len(self._inflight)
            after = self._handed
        if room <= 0:
            return 0
        events = self.reader.after(after, room)
        for event in events:
            with self._lock:
                self._publishing = True
            try:
                info = client.publish(self.settings.events_topic(group_of(event.kind)), event_payload(event),
                                      qos=1, retain=False)
            finally:
                with self._lock:
                    self._publishing = False
            with self._lock:
                self._handed = event.id
                self._inflight[info.mid] = event.id
                if info.mid in self._early:
                    self._acked.add(info.mid)
                self._early.clear()
                self._settle()
            if event.kind == "grant" and event.person_name is not None:
                self.last_granted = event
        return len(events)

    def acknowledged(self, mid: int) -> None:
        """The broker's PUBACK for message mid."""
        with self._lock:
            if mid in self._inflight:
                self._acked.add(mid)
                self._settle()
            elif self._publishing:
                self._early.add(mid)

    def reconnected(self) -> None:
        """paho re-sends the unacknowledged rows after its on_connect callback: newer rows wait until
        those are through, so the broker sees every row in order."""
        with self._lock:
            self._holding = bool(self._inflight)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def backlog(self) -> int:
        """Rows the broker has not acknowledged yet (in flight or still in the log)."""
        return self.reader.count_after(self.cursor.event_id)

    def _settle(self) -> None:
        """Move the cursor over the acknowledged head of the in-flight rows (self._lock held)."""
        while self._inflight:
            mid, event_id = next(iter(self._inflight.items()))
            if mid not in self._acked:
                return
            self._acked.discard(mid)
            del self._inflight[mid]
            self.cursor.advance(event_id)
