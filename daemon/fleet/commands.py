"""Commands a door takes from `<prefix>/command`.

A payload is a JSON object, at most MAX_BYTES long:
  {"command": "unlock", "client_id": "homeassistant"}   a remote grant (only with mqtt.allow_remote_unlock: true)
  {"command": "lock", "client_id": "..."}               end an unlock now (always allowed: it only makes the door safer)
  {"command": "reload", "client_id": "..."}             re-read the config, as SIGHUP does
client_id names the sender for the event log. MQTT does not tell a subscriber who published a
message, so it is what the sender says it is: restrict who may publish to the command topic
with the broker's ACLs (README, Fleet).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

COMMANDS = ("unlock", "lock", "reload")
MAX_BYTES = 1024
_CLIENT_ID = re.compile(r"[\w.@:/-]{1,64}")


class CommandRefused(ValueError):
    """A payload that is not a command this door takes; the message says why."""


@dataclass(frozen=True)
class Command:
    name: str  # one of COMMANDS
    client_id: str  # who sent it, as the sender claims

    @property
    def reason(self) -> str:
        """What the event log records for it."""
        return f"remote {self.name} by {self.client_id} (MQTT)"


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
    client_id = message.get("client_id", "unknown sender")
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise CommandRefused(f"client_id {_shown(client_id)} is not 1-64 letters, digits or ._-@:/")
    return Command(name, client_id)


def _shown(value: object) -> str:
    """A payload or value fit for one log line: bounded, printable."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:60] + ("..." if len(text) > 60 else "")
