"""Home Assistant MQTT discovery: the door as a device with a lock, binary sensors for the contact
and its alarms, a sensor for the last person granted and an event entity for access decisions.

One retained config per entity, `<discovery_prefix>/<component>/<node_id>/<object_id>/config`, as
HA's discovery documentation describes; every entity shares the door's device block and its
availability topic, and reads the door's retained state JSON:
  {"lock": "locked" | "unlocked", "door": "open" | "closed" | null (no contact),
   "alarm": null | "held_open" | "forced_open", "last_granted": name | null, "last_granted_at": ISO | null}
Access events (`<prefix>/events/access`) carry `event_type` = their kind, as HA's event entity reads it.
"""
from __future__ import annotations

import json
import re
from typing import Any

from daemon.door import DoorConfig
from daemon.fleet.settings import MqttSettings

ACCESS_EVENT_TYPES = ["grant", "deny", "unknown_face"]


def birth_topic(settings: MqttSettings) -> str | None:
    """Where Home Assistant says `online` when it starts (and has forgotten unretained configs)."""
    return None if settings.discovery_prefix is None else f"{settings.discovery_prefix}/status"


def discovery_messages(settings: MqttSettings, door: DoorConfig, sw_version: str) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) for each entity of this door; empty when discovery is off."""
    if settings.discovery_prefix is None:
        return []
    node = re.sub(r"[^a-zA-Z0-9_-]", "_", settings.client_id)
    common = {
        "device": {"identifiers": [node], "name": door.name, "manufacturer": "facegate", "model": "facegate door",
                   "sw_version": sw_version},
        "availability_topic": settings.availability_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    entities = [("lock", "lock", _lock(settings))]
    if door.contact_pin is not None:
        entities += [
            ("binary_sensor", "contact", _binary(settings, "Door", "door", "value_json.door == 'open'")),
            ("binary_sensor", "held_open", _binary(settings, "Held open", "problem",
                                                   "value_json.alarm == 'held_open'")),
            ("binary_sensor", "forced_open", _binary(settings, "Forced open", "problem",
                                                     "value_json.alarm == 'forced_open'")),
        ]
    entities += [("sensor", "last_granted", _last_granted(settings)), ("event", "access", _access(settings))]
    return [(f"{settings.discovery_prefix}/{component}/{node}/{object_id}/config",
             {**common, **config, "unique_id": f"{node}_{object_id}",
              "default_entity_id": _entity_id(component, f"{node}_{object_id}")})
            for component, object_id, config in entities]


def _entity_id(component: str, object_id: str) -> str:
    """default_entity_id: HA 2025.10 replaced object_id with it (object_id stops working in 2026.4);
    older HA drops the unknown key (its discovery schemas remove extras) and names the entity itself."""
    return f"{component}.{re.sub(r'[^a-z0-9_]', '_', object_id.lower())}"


def _lock(settings: MqttSettings) -> dict[str, Any]:
    return {
        "name": "Lock",
        "command_topic": settings.command_topic,
        # HA renders the template at press time with value = payload_(un)lock: the door refuses unlocks
        # without a fresh issued_at (daemon/fleet/commands.py), so the stamp is made then, not here.
        "command_template": '{"command": "{{ value }}", "client_id": "homeassistant", '
                            '"issued_at": {{ now().timestamp() }}}',
        "payload_unlock": "unlock",
        "payload_lock": "lock",
        "state_topic": settings.state_topic,
        "value_template": "{{ value_json.lock }}",
        "state_locked": "locked",
        "state_unlocked": "unlocked",
        "optimistic": False,
        "qos": 1,
    }


def _binary(settings: MqttSettings, name: str, device_class: str, condition: str) -> dict[str, Any]:
    return {
        "name": name,
        "device_class": device_class,
        "state_topic": settings.state_topic,
        "value_template": f"{{{{ 'ON' if {condition} else 'OFF' }}}}",
        "payload_on": "ON",
        "payload_off": "OFF",
    }


def _last_granted(settings: MqttSettings) -> dict[str, Any]:
    return {
        "name": "Last person granted",
        "icon": "mdi:account-check",
        "state_topic": settings.state_topic,
        "value_template": "{{ value_json.last_granted or 'none' }}",
        "json_attributes_topic": settings.state_topic,
        "json_attributes_template": "{{ {'granted_at': value_json.last_granted_at} | tojson }}",
    }


def _access(settings: MqttSettings) -> dict[str, Any]:
    return {
        "name": "Access",
        "state_topic": settings.events_topic("access"),
        "event_types": ACCESS_EVENT_TYPES,
        "qos": 1,
    }
