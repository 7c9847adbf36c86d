"""The door's running connection to the broker.

Threads: paho's network thread (callbacks), the publisher thread (events, state) and, with gallery
sync on, a sync thread (a bundle import can take seconds: it must hold up neither events nor the
network loop). The door loop only hands over what it must (commands go back to it through
on_command); everything else is read from the event log and from door_state().
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from daemon.events import EventReader
from daemon.fleet.commands import Command, CommandRefused, receive
from daemon.fleet.cursor import Cursor
from daemon.fleet.discovery import birth_topic
from daemon.fleet.publisher import EventPublisher
from daemon.fleet.settings import MqttSettings, make_client

log = logging.getLogger("facegate.mqtt")

POLL_SECONDS = 0.2  # how soon a new event or a state change goes out
SAVE_SECONDS = 1.0  # how often the cursor is written while events flow
REFUSAL_LOG_SECONDS = 10.0  # refused commands are recorded at most this often (a flood must not fill the log)
Record = Callable[[str, str], None]  # (kind, reason) into the door's event log
Messages = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Fleet:
    """What the link needs from the door service."""

    events_path: Path
    cursor_path: Path
    door_state: Callable[[], dict[str, Any]]  # lock, door, alarm: read often, from another thread
    on_command: Callable[[Command], None]  # called on paho's thread: queue it, don't act there
    record: Record
    discovery: Messages  # Home Assistant discovery configs, published retained on each connection
    gallery_sync: Any = None  # a GallerySync, when mqtt.gallery_public_key is set


class FleetLink:
    def __init__(self, settings: MqttSettings, fleet: Fleet) -> None:
        self.settings = settings
        self.fleet = fleet
        self.connected = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._sent_state: bytes | None = None
        self._last_refusal_record = -REFUSAL_LOG_SECONDS
        self._refusals_unrecorded = 0
        self._connect_error_logged = False
        self.reader = EventReader(fleet.events_path)
        self.cursor = Cursor(fleet.cursor_path, settings.topic_prefix)
        self.publisher = EventPublisher(self.reader, self.cursor, settings)
        self.client = make_client(settings)
        self.client.will_set(settings.availability_topic, b"offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.max_inflight_messages_set(0)  # the publisher keeps its own window; state must not queue behind it
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background: an unreachable broker is retried, never waited for."""
        self.client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self.client.loop_start()
        self._thread.start()
        if self.fleet.gallery_sync is not None:
            self.fleet.gallery_sync.start(self._publish_gallery_version)
        log.info("MQTT: connecting to %s:%d%s as %s, topics under %s/", self.settings.host, self.settings.port,
                 " (TLS)" if self.settings.tls else "", self.settings.client_id, self.settings.topic_prefix)

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what the log still holds (the stop event, say) for up to timeout while connected, say
        offline (retained), save the cursor, disconnect."""
        deadline = time.monotonic() + timeout
        while self.connected and self._thread.is_alive() and time.monotonic() < deadline \
                and self._backlog_or_unknown() > 0:
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.fleet.gallery_sync is not None:
            self.fleet.gallery_sync.stop()
        if self.connected:
            info = self.client.publish(self.settings.availability_topic, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass  # the will says offline if this one did not get out
        self.client.disconnect()
        self.client.loop_stop()
        self.cursor.close()
        self.reader.close()

    def backlog(self) -> int:
        return self.publisher.backlog()

    # -- the publisher thread ----------------------------------------------------------------

    def _run(self) -> None:
        next_save = time.monotonic() + SAVE_SECONDS
        while not self._stop.is_set():
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            try:
                if self.connected:
                    self._publish_state()
                    while self.connected and not self._stop.is_set() and self.publisher.pump(self.client):
                        pass
            except Exception:  # the door keeps working; the rows wait in the log for the next round
                log.exception("MQTT: publishing failed; retrying")
                self._stop.wait(1.0)
            if time.monotonic() >= next_save:
                self.cursor.save()
                next_save = time.monotonic() + SAVE_SECONDS
        self.cursor.save()

    def _publish_state(self, force: bool = False) -> None:
        last = self.publisher.last_granted
        state = {**self.fleet.door_state(), "last_granted": last.person_name if last else None,
                 "last_granted_at": last.time if last else None}
        payload = json.dumps(state).encode()
        if force or payload != self._sent_state:
            self.client.publish(self.settings.state_topic, payload, qos=1, retain=True)
            self._sent_state = payload

    def _publish_gallery_version(self, version: dict[str, Any] | None) -> None:
        if self.connected:
            self.client.publish(self.settings.gallery_version_topic, json.dumps(version).encode(), qos=1,
                                retain=True)

    # -- paho's callbacks (its network thread) -----------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if not self._connect_error_logged:
                log.error("MQTT: %s:%d refused the connection: %s (check mqtt.username, mqtt.password_file and "
                          "the broker's ACLs); retrying", self.settings.host, self.settings.port, reason_code)
                self._connect_error_logged = True
            return
        self._connect_error_logged = False
        self.publisher.reconnected()
        log.info("MQTT: connected to %s:%d", self.settings.host, self.settings.port)
        client.publish(self.settings.availability_topic, b"online", qos=1, retain=True)
        self._publish_discovery()
        subscriptions = [(self.settings.command_topic, 1)]
        if birth_topic(self.settings) is not None:
            subscriptions.append((birth_topic(self.settings), 1))
        if self.fleet.gallery_sync is not None:
            subscriptions.append((self.settings.gallery_topic, 1))
            self._publish_gallery_version_now()
        client.subscribe(subscriptions)
        self.connected = True
        self._sent_state = None  # a fresh broker may have lost the retained state
        self._wake.set()

    def _publish_gallery_version_now(self) -> None:
        version = self.fleet.gallery_sync.running_version()
        self.client.publish(self.settings.gallery_version_topic, json.dumps(version).encode(), qos=1, retain=True)

    def _publish_discovery(self) -> None:
        for topic, config in self.fleet.discovery:
            self.client.publish(topic, json.dumps(config).encode(), qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected and not self._stop.is_set():
            log.warning("MQTT: lost the broker (%s); events wait in the log and go out on reconnection "
                        "(%d waiting)", reason_code, self._backlog_or_unknown())
        self.connected = False

    def _backlog_or_unknown(self) -> int:
        try:
            return self.publisher.backlog()
        except Exception:
            return -1

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.publisher.acknowledged(mid)
        self._wake.set()  # the window has room again

    def _on_message(self, client, userdata, message) -> None:
        try:
            if message.topic == self.settings.command_topic:
                self._command(message.payload, bool(message.retain))
            elif message.topic == self.settings.gallery_topic and self.fleet.gallery_sync is not None:
                self.fleet.gallery_sync.offer(message.payload)
            elif message.topic == birth_topic(self.settings) and message.payload == b"online":
                self._publish_discovery()  # Home Assistant restarted: it forgets unretained configs
                self._sent_state = None
                self._wake.set()
        except Exception:  # a message must never take the link down
            log.exception("MQTT: handling a message on %s failed", message.topic)

    def _command(self, payload: bytes, retained: bool) -> None:
        if not payload:  # what clearing a retained command delivers: nothing to obey, nothing wrong
            log.info("MQTT: the command topic %s was cleared", self.settings.command_topic)
            return
        try:
            command = receive(payload, retained, self.settings)
        except CommandRefused as refusal:
            self._refuse(str(refusal))
            return
        self.fleet.on_command(command)

    def _refuse(self, reason: str) -> None:
        log.warning("MQTT: command on %s ignored: %s", self.settings.command_topic, reason)
        now = time.monotonic()
        if now - self._last_refusal_record < REFUSAL_LOG_SECONDS:
            self._refusals_unrecorded += 1
            return
        if self._refusals_unrecorded:
            reason += f" ({self._refusals_unrecorded} more refused since the last one recorded)"
        self._last_refusal_record = now
        self._refusals_unrecorded = 0
        self.fleet.record("command_refused", reason)
        self._wake.set()


class GallerySync:
    """Signed bundles from the broker applied one at a time on a thread of their own; the newest waits."""

    def __init__(self, apply: Callable[[bytes], Any], running_version: Callable[[], dict[str, Any] | None],
                 record: Record) -> None:
        self._apply = apply
        self.running_version = running_version
        self._record = record
        self._offers: queue.Queue[bytes | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._announce: Callable[[dict[str, Any] | None], None] = lambda version: None

    def start(self, announce: Callable[[dict[str, Any] | None], None]) -> None:
        self._announce = announce
        self._thread = threading.Thread(target=self._run, name="gallery-sync", daemon=True)
        self._thread.start()

    def offer(self, payload: bytes) -> None:
        """A bundle arrived: replace any still waiting (only the newest matters)."""
        while True:
            try:
                self._offers.put_nowait(payload)
                return
            except queue.Full:
                try:
                    self._offers.get_nowait()
                except queue.Empty:
                    pass

    def stop(self) -> None:
        if self._thread is not None:
            self.offer(None)  # type: ignore[arg-type]
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while (payload := self._offers.get()) is not None:
            if not payload:
                continue  # the retained bundle was cleared: nothing to apply, the gallery stays
            self._apply_one(payload)

    def _apply_one(self, payload: bytes) -> None:
        from daemon.bundles import BundleError

        try:
            outcome = self._apply(payload)
        except BundleError as error:
            log.error("gallery bundle refused, the gallery is unchanged: %s", error)
            self._record("gallery_sync_refused", str(error))
            return
        except Exception as error:
            log.exception("gallery bundle could not be applied, the gallery is unchanged")
            self._record("gallery_sync_refused", f"{type(error).__name__}: {error}")
            return
        if outcome.applied:
            summary = (f"version {outcome.version} from {outcome.sender!r}: {outcome.people} people, "
                       f"{outcome.templates} templates; {outcome.reason}")
            log.info("gallery synced: %s", summary)
            self._record("gallery_synced", summary)
            self._announce(self.running_version())
        else:
            log.info("gallery bundle not applied: %s", outcome.reason)
