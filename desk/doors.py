"""The doors of the fleet: each door's retained state on the broker, and publishing the gallery to them.

Only when the desk was started with --mqtt CONFIG (a facegate config whose mqtt: section names the
broker). The state is what each door keeps retained on <prefix>/state, <prefix>/availability and
<prefix>/gallery (daemon/fleet/settings.py); doors with the default prefix (facegate/<door name>)
are found by subscribing to facegate/+/... for a moment. Publishing signs the whole gallery with the
front desk's key (--key, made by enroll_local.py keygen) and sends it retained, through the same
publish_gallery the CLI's publish runs (handed to the desk by the CLI that starts it).
"""
from __future__ import annotations

import json
import threading
from dataclasses import asdict
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.bundles import load_private_key
from daemon.config import read_yaml
from daemon.fleet.settings import MqttSettings, make_client, parse_mqtt
from daemon.gallery import GalleryError
from daemon.settings import ConfigError
from desk.app import desk_of, render, requires

LISTEN_S = 1.5  # retained messages arrive right after subscribing; this is ample on a LAN
DOOR_TOPICS = ("facegate/+/state", "facegate/+/availability", "facegate/+/gallery")


def mqtt_settings(desk) -> MqttSettings | None:
    path = desk.settings.mqtt_config
    if path is None:
        return None
    raw = read_yaml(path)
    return parse_mqtt(raw.get("mqtt") if isinstance(raw, dict) else None, door_name="front-desk")


def door_states(settings: MqttSettings, listen_s: float = LISTEN_S) -> dict[str, dict[str, Any]]:
    """Door name -> {"state": {...}, "availability": "online", "gallery": {...}} from the retained messages."""
    doors: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, 1) for topic in DOOR_TOPICS])
            subscribed.set()

    def on_message(client, userdata, message) -> None:
        _, door, part = message.topic.split("/", 2)
        text = message.payload.decode("utf-8", "replace")
        try:
            value = json.loads(text) if part != "availability" else text
        except ValueError:
            value = text
        with lock:
            doors.setdefault(door, {})[part] = value

    client = make_client(settings, client_id=f"{settings.client_id}-desk-{threading.get_ident()}")
    client.on_connect, client.on_message = on_connect, on_message
    try:
        client.connect(settings.host, settings.port, settings.keepalive)
    except (OSError, ValueError) as error:
        raise ConnectionError(f"cannot reach the broker at {settings.host}:{settings.port}: {error}") from None
    client.loop_start()
    try:
        if not subscribed.wait(listen_s * 3):
            raise ConnectionError(f"the broker at {settings.host}:{settings.port} did not accept the connection "
                                  "(check mqtt.username and mqtt.password_file)")
        threading.Event().wait(listen_s)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return dict(sorted(doors.items()))


@requires("viewer")
async def doors_page(request: Request) -> Response:
    desk = desk_of(request)
    try:
        settings = mqtt_settings(desk)
        doors = await run_in_threadpool(door_states, settings) if settings else {}
        problem = None
    except (ConfigError, ConnectionError) as error:
        settings, doors, problem = None, {}, str(error)
    return render(request, "doors.html", fleet=desk.settings.mqtt_config is not None, doors=doors,
                  problem=problem, published=None, can_publish=_can_publish(desk))


def _can_publish(desk) -> bool:
    return desk.settings.mqtt_config is not None and desk.settings.signing_key is not None and \
        desk.settings.publish is not None


@requires("admin")
async def publish(request: Request) -> Response:
    desk = desk_of(request)
    if not _can_publish(desk):
        return render(request, "doors.html", 409, fleet=desk.settings.mqtt_config is not None, doors={},
                      problem="publishing needs the desk started with --mqtt CONFIG and --key KEY", published=None,
                      can_publish=False)

    def send():
        from desk.enrol import desk_card

        settings = mqtt_settings(desk)
        key = load_private_key(desk.settings.signing_key)
        with desk.gallery() as gallery:
            if not gallery.list_people():
                raise GalleryError("the gallery holds nobody: publishing it would erase everyone at every door")
            return desk.settings.publish(gallery, desk_card(desk).id, key, settings)

    try:
        published = await run_in_threadpool(send)
    except Exception as error:  # a bad key, the broker (the CLI's PublishError), an empty gallery: all said
        desk.record(request, f"publishing the gallery failed: {error}")
        return render(request, "doors.html", 502, fleet=True, doors={}, problem=str(error), published=None,
                      can_publish=True)
    desk.record(request, f"published gallery version {published.version} ({published.people} people) on "
                         f"{published.topic}")
    return render(request, "doors.html", fleet=True, doors={}, problem=None, published=asdict(published),
                  can_publish=True)


routes = [Route("/doors", doors_page, methods=["GET"]), Route("/doors/publish", publish, methods=["POST"])]
