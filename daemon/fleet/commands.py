"""Commands a door takes from `<prefix>/command`.

A payload is a JSON object, at most MAX_BYTES long:
  {"command": "unlock", "client_id": "homeassistant", "issued_at": 1767254400.5}
      a remote grant (only with mqtt.allow_remote_unlock: true)
  {"command": "lock", "client_id": "..."}     end an unlock now (always allowed: it only makes the door safer)
  {"command": "reload", "client_id": "..."}   re-read the config, as SIGHUP does
client_id names the sender for the event log. MQTT does not tell a subscriber who published a
message, so it is what the sender says it is: restrict who may publish to the command topic
with the broker's ACLs (docs/fleet.md, The broker).

A stale command must not open the door, so:
- A message that arrives with the MQTT retain flag is never obeyed, whatever it says. The broker hands a
  retained message to the door at every subscription (every restart, every reconnection), so a retained
  unlock would open the door each time. (A retained message published while the door is subscribed
  reaches it once without the flag, as MQTT 3.1.1 delivers it: that is a live command.)
- issued_at says when the sender issued the command: Unix seconds as a JSON number (`1767254400` or
  `1767254400.25`; Home Assistant: `{{ now().timestamp() }}`, a shell: `$(date +%s)`), or an ISO 8601
  string with its UTC offset (`"2026-01-01T08:00:00Z"`, `"2026-01-01T09:00:00+01:00"`; a time without
  an offset is refused: its zone would be a guess). A command carrying it is refused once it is older than
  mqtt.command_max_age_seconds (default 30 s) on the door's clock, or when it lies more than
  CLOCK_SKEW_SECONDS (5 s) in the future: the sender's clock may run that far ahead of the door's, no
  further (both should keep NTP time; an old stamp from a clock far behind is refused as old).
- An unlock without issued_at is refused while mqtt.require_issued_at is true (the default): an
  unstamped unlock delayed on its way (a sender that queued it while the broker was down, a bridge)
  cannot be told from a fresh one. lock and reload need no stamp (a late lock only makes the door safer).
- The age is checked on receipt and again where the door loop carries the command out: receive()
  stamps each command with the monotonic time it expires, so a command that waited in a stalled door
  loop is refused there (Command.expired).
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

from daemon.fleet.settings import MqttSettings

COMMANDS = ("unlock", "lock", "reload")
MAX_BYTES = 1024
CLOCK_SKEW_SECONDS = 5.0  # how far in the future an issued_at may lie: the sender's clock ahead of the door's
_CLIENT_ID = re.compile(r"[\w.@:/-]{1,64}")


class CommandRefused(ValueError):
    """A payload that is not a command this door takes; the message says why."""


@dataclass(frozen=True)
class Command:
    name: str  # one of COMMANDS
    client_id: str  # who sent it, as the sender claims
    issued_at: float | None = None  # Unix seconds, as the sender stamped it
    # time.monotonic() after which the door loop no longer carries it out; receive() sets it.
    # Bookkeeping of this door, not part of what was sent: left out of comparisons.
    expires: float = field(default=math.inf, compare=False)

    @property
    def reason(self) -> str:
        """What the event log records for it."""
        return f"remote {self.name} by {self.client_id} (MQTT)"

    def expired(self, monotonic: float | None = None) -> bool:
        """True once the command is too old to carry out (monotonic: time.monotonic(), by default now)."""
        return (time.monotonic() if monotonic is None else monotonic) > self.expires


def parse_command(payload: bytes) -> Command:
    """The command in a payload, or CommandRefused saying what is wrong with it."""
    if len(payload) > MAX_BYTES:
        raise CommandRefused(f"payload of {len(payload)} bytes is over the {MAX_BYTES}-byte limit")
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CommandRefused(f"not a JSON object: {_shown(payload)}") from None
    if not isinstance(message, dict):
        raise CommandRefused(f"not a JSON object: {_shown(payload)}")
    name = message.get("command")
    if name not in COMMANDS:
        raise CommandRefused(f"unknown command {_shown(name)}: expected one of {list(COMMANDS)}")
    client_id = message.get("client_id")
    if client_id is None:
        client_id = "unknown sender"  # not a client_id a sender could claim: it has a space
    elif not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise CommandRefused(f"client_id {_shown(client_id)} is not 1-64 letters, digits or ._-@:/")
    return Command(name, client_id, _issued_at(message.get("issued_at")))


def _issued_at(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise CommandRefused(f"issued_at {_shown(value)} is not a time: expected Unix seconds after 1970")
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            return when.timestamp()
    raise CommandRefused(f"issued_at {_shown(value)} is not a time: expected Unix seconds (a JSON number) or "
                         "ISO 8601 with a UTC offset, e.g. \"2026-01-01T08:00:00Z\"")


def receive(payload: bytes, retained: bool, settings: MqttSettings, now: float | None = None,
            monotonic: float | None = None) -> Command:
    """The command in a message from the broker, if the door may carry it out, with its expiry stamped;
    else CommandRefused saying why. now: the wall clock (Unix seconds), monotonic: time.monotonic()."""
    now = time.time() if now is None else now
    monotonic = time.monotonic() if monotonic is None else monotonic
    if retained:
        raise CommandRefused(f"retained command ignored ({_shown(payload)}): the broker would hand it over at "
                             f"every reconnection; clear it with mosquitto_pub -r -n -t {settings.command_topic}")
    command = parse_command(payload)
    who = f"{command.name} by {command.client_id}"
    if command.name == "unlock" and not settings.allow_remote_unlock:
        raise CommandRefused(f"remote {who} refused: mqtt.allow_remote_unlock is false")
    max_age = settings.command_max_age_seconds
    if command.issued_at is None:
        if command.name == "unlock" and settings.require_issued_at:
            raise CommandRefused(f"remote {who} refused: no issued_at and mqtt.require_issued_at is true "
                                 "(stamp the command with issued_at, Unix seconds)")
        return replace(command, expires=monotonic + max_age)
    age = now - command.issued_at
    if age > max_age:
        raise CommandRefused(f"remote {who} refused: issued {age:.1f} s ago, over mqtt.command_max_age_seconds "
                             f"({max_age:g} s)")
    if age < -CLOCK_SKEW_SECONDS:
        raise CommandRefused(f"remote {who} refused: issued_at is {-age:.1f} s in the future, beyond the "
                             f"{CLOCK_SKEW_SECONDS:g} s of clock skew tolerated (check NTP on the door and the sender)")
    return replace(command, expires=monotonic + max_age - max(age, 0.0))


def _shown(value: object) -> str:
    """A payload or value fit for one log line: bounded, printable."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:60] + ("..." if len(text) > 60 else "")
