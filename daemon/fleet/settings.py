"""The `mqtt:` config section and the topics a door uses.

Topics (prefix: mqtt.topic_prefix, default facegate/<door name>):
  <prefix>/events/<group>   every event-log row as JSON, QoS 1 (groups: access, door, alarm, gallery, system)
  <prefix>/state            retained: lock, door contact, alarms, the last person granted
  <prefix>/availability     retained: online; offline (also as the last will)
  <prefix>/gallery          retained: the gallery bundle version this door runs
  <prefix>/command          in: {"command": "unlock" | "lock" | "reload", "client_id": "...", "issued_at": ...}
                            (never retained: daemon/fleet/commands.py)
  <gallery_topic>           in, retained: the front desk's signed gallery bundle (shared by the fleet)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.settings import ConfigError, Section

KEYS = {"host", "port", "tls", "username", "password_file", "client_id", "topic_prefix", "keepalive",
        "allow_remote_unlock", "command_max_age_seconds", "require_issued_at", "discovery_prefix", "gallery_topic",
        "gallery_public_key"}
TLS_KEYS = {"enabled", "ca", "cert", "key"}
DEFAULT_GALLERY_TOPIC = "facegate/gallery"
_TOPIC = re.compile(r"[^#+\x00]+")  # a topic name to publish to: no wildcards, not empty


@dataclass(frozen=True)
class TlsSettings:
    ca: Path | None  # None: the system's CA certificates
    cert: Path | None  # a client certificate (with key), for brokers that ask for one
    key: Path | None


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    tls: TlsSettings | None  # None: plain TCP
    username: str | None
    password: str | None  # read from password_file when the config is loaded
    client_id: str
    topic_prefix: str
    keepalive: int
    allow_remote_unlock: bool
    command_max_age_seconds: float  # a command older than this is refused (daemon/fleet/commands.py)
    require_issued_at: bool  # an unlock without issued_at is refused
    discovery_prefix: str | None  # None: no Home Assistant discovery
    gallery_topic: str
    gallery_public_key: Path | None  # None: this door does not take gallery bundles from the broker

    def topic(self, *parts: str) -> str:
        return "/".join((self.topic_prefix, *parts))

    @property
    def state_topic(self) -> str:
        return self.topic("state")

    @property
    def availability_topic(self) -> str:
        return self.topic("availability")

    @property
    def command_topic(self) -> str:
        return self.topic("command")

    @property
    def gallery_version_topic(self) -> str:
        return self.topic("gallery")

    def events_topic(self, group: str) -> str:
        return self.topic("events", group)


def parse_mqtt(raw: Any, door_name: str, path: str = "mqtt") -> MqttSettings | None:
    """The mqtt section; None (MQTT off) when it is absent or mqtt.host is null."""
    section = Section(raw, path, KEYS)
    host = section.get("host", str, None)
    if host is None:
        return None
    tls = _tls(section)
    username = section.get("username", str, None)
    password = _password(section, username)
    topic_prefix = section.get("topic_prefix", str, f"facegate/{door_name}")
    gallery_topic = section.get("gallery_topic", str, DEFAULT_GALLERY_TOPIC)
    for key, topic in (("topic_prefix", topic_prefix), ("gallery_topic", gallery_topic)):
        if not _TOPIC.fullmatch(topic) or topic.startswith("/") or topic.endswith("/") or topic.startswith("$"):
            section.fail(key, topic, "an MQTT topic without wildcards (+ #), not starting with $ or /, "
                                     "not ending with /")
    # Written as null, discovery is off (elsewhere null means "the default", which here is on).
    switched_off = "discovery_prefix" in section.raw and section.raw["discovery_prefix"] is None
    discovery = None if switched_off else section.get("discovery_prefix", str, "homeassistant")
    if discovery is not None and not _TOPIC.fullmatch(discovery):
        section.fail("discovery_prefix", discovery, "an MQTT topic without wildcards, or null for no discovery")
    client_id = section.get("client_id", str, f"facegate-{door_name}")
    if not client_id or len(client_id.encode()) > 65535:
        section.fail("client_id", client_id, "a non-empty client id")
    return MqttSettings(
        host=host,
        port=section.number("port", 8883 if tls else 1883, low=1, high=65535, integer=True),
        tls=tls,
        username=username,
        password=password,
        client_id=client_id,
        topic_prefix=topic_prefix,
        keepalive=section.number("keepalive", 60, low=5, high=65535, integer=True),
        allow_remote_unlock=section.get("allow_remote_unlock", bool, False),
        command_max_age_seconds=section.number("command_max_age_seconds", 30.0, low=1, high=3600),
        require_issued_at=section.get("require_issued_at", bool, True),
        discovery_prefix=discovery,
        gallery_topic=gallery_topic,
        gallery_public_key=_file(section, "gallery_public_key", "the front desk's Ed25519 public key (PEM), "
                                 "written by tools/enroll_local.py keygen"),
    )


def _tls(section: Section) -> TlsSettings | None:
    tls = section.section("tls", TLS_KEYS)
    if not tls.get("enabled", bool, False):
        return None
    cert = _file(tls, "cert", "a PEM client certificate file")
    key = _file(tls, "key", "the PEM private key file of tls.cert")
    if (cert is None) != (key is None):
        tls.fail("key" if key is None else "cert", None, "tls.cert and tls.key together, or neither")
    return TlsSettings(_file(tls, "ca", "a PEM file of CA certificates, or null for the system's"), cert, key)


def _password(section: Section, username: str | None) -> str | None:
    given = section.get("password_file", str, None)
    if given is None:
        return None
    if username is None:
        section.fail("password_file", given, "null unless mqtt.username is set")
    try:
        text = Path(given).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"{section.key('password_file')} = {given!r} cannot be read: {reason}; expected a file "
                          "holding the broker password (its first line), readable by the service") from None
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        section.fail("password_file", given, "a file whose first line is the password (this one is empty)")
    return password


def _file(section: Section, key: str, what: str) -> Path | None:
    given = section.get(key, str, None)
    if given is None:
        return None
    if not Path(given).is_file():
        section.fail(key, given, f"an existing file: {what}")
    return Path(given)


def make_client(settings: MqttSettings, client_id: str | None = None):
    """A paho-mqtt 2.x client for settings, not yet connected: MQTT 3.1.1, TLS and credentials applied.

    clean_session: a door's events are re-sent from its own cursor, so the broker need not keep
    a session for it."""
    import ssl

    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or settings.client_id,
                         protocol=mqtt.MQTTv311, clean_session=True)
    if settings.tls is not None:
        try:
            client.tls_set(ca_certs=_str(settings.tls.ca), certfile=_str(settings.tls.cert),
                           keyfile=_str(settings.tls.key), cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as error:
            raise ConfigError(f"mqtt.tls: the certificate files cannot be used: {error}") from None
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    return client


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
