"""The door's metrics and health over HTTP (`metrics: {listen: 127.0.0.1:9108}`; off by default).

GET /metrics (Prometheus text format):
  facegate_frames_total, facegate_faces_total      frames processed, faces found in them
  facegate_stage_seconds{stage}                    time per pipeline stage (detect, recognise, decide, frame...)
  facegate_grab_to_decision_seconds                from the camera grab to the access decision
  facegate_fps                                     frames processed per second over the last few seconds
  facegate_decisions_total{kind}                   grant, deny (presentation attacks included), unknown
  facegate_liveness_rejects_total                  denies for a suspected presentation attack
  facegate_relay_on, facegate_door_open            1/0; door_open is absent without a door contact
  facegate_camera_reconnects_total                 a counter read from the camera source's stats
  facegate_gallery_people, facegate_gallery_version  enrolled people; the synced bundle version or 0
  facegate_decision_threshold, facegate_gallery_templates  the match distance threshold in force, and the
                                                   templates searched that it was derived for (daemon/service.py)
  facegate_mqtt_connected, facegate_mqtt_backlog   1/0; events the broker has not acknowledged yet
  facegate_event_write_failures_total              event log writes that failed (full disk, locked or broken file)
  facegate_events_dropped_total                    events lost: the in-memory backlog overflowed while writes failed
A value read at scrape time whose reader fails or has nothing to report is left out of that scrape.

GET /healthz: 200 {"status": "ok", ...} while frames flow, 503 {"status": "stalled", ...} when none came
within stall_seconds (or none came yet); its reason names the camera's fault where the source knows one
("camera opencv v4l2 /dev/video0 cannot be opened: /dev/video0 does not exist").

Prometheus scrape_config:
  - job_name: facegate
    static_configs:
      - targets: ["door-1.local:9108"]
"""
from __future__ import annotations

import functools
import ipaddress
import json
import logging
import re
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from daemon.settings import Section

log = logging.getLogger("facegate.metrics")

KEYS = {"listen"}
DECISION_KINDS = ("grant", "deny", "unknown")
# From a fast detector stage (~1 ms) to a slow first frame or a stalled camera grab (~2 s).
SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>\d{1,5})")
_LISTEN_ALLOWED = "host:port or [IPv6]:port with a port from 1 to 65535, e.g. 127.0.0.1:9108, or null for off"

Reading = Callable[[], "float | bool | None"]


class MetricsError(OSError):
    """The metrics endpoint cannot listen on its address; the message names it."""


@dataclass(frozen=True)
class MetricsSettings:
    host: str
    port: int  # 0 in tests: any free port

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_metrics(raw: Any, path: str = "metrics") -> MetricsSettings | None:
    """The metrics section; None (no endpoint) when it is absent or metrics.listen is null."""
    section = Section(raw, path, KEYS)
    listen = section.get("listen", str, None)
    if listen is None:
        return None
    match = _LISTEN.fullmatch(listen.strip())
    if match is None or not 1 <= int(match["port"]) <= 65535:
        section.fail("listen", listen, _LISTEN_ALLOWED)
    host = match["v6"] or match["host"]
    if match["v6"] and not _is_ipv6(host):
        section.fail("listen", listen, _LISTEN_ALLOWED)
    return MetricsSettings(host, int(match["port"]))


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _never_raises(method: Callable) -> Callable:
    """For the door loop's calls: a metrics fault costs a debug line, never a frame or a decision."""
    @functools.wraps(method)
    def quiet(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.debug("metrics: %s failed", method.__name__, exc_info=True)
    return quiet


class _Watched:
    """One value read when Prometheus scrapes, so nobody has to push it from the door loop."""

    def __init__(self, name: str, help: str, read: Reading, counter: bool) -> None:
        self.name, self.help, self.read, self.counter = name, help, read, counter

    def describe(self) -> list[Metric]:
        # Lets the registry refuse a second metric of the same name when it is watched.
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        try:
            value = self.read()
        except Exception:
            log.debug("metrics: reading %s failed; left out of this scrape", self.name, exc_info=True)
            return
        if value is None:
            return
        family = self._family()
        family.add_metric([], float(value))
        yield family

    def _family(self) -> Metric:
        kind = CounterMetricFamily if self.counter else GaugeMetricFamily
        return kind(self.name, self.help)


class DoorMetrics:
    """The door's metrics in a registry of their own, so several services (or tests) can live in one process.

    The door loop calls frame(), grab_to_decision(), decision(), relay() and door_open(): each is a few
    counter updates under a short lock, and never raises. Other values are read at scrape time from the
    readers given here or to watch(); a reader returning None has nothing to report."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, fps_window: float = 5.0,
                 camera_reconnects: Reading | None = None, gallery_people: Reading | None = None,
                 gallery_version: Reading | None = None, mqtt_connected: Reading | None = None,
                 mqtt_backlog: Reading | None = None, event_write_failures: Reading | None = None,
                 events_dropped: Reading | None = None,
                 camera_fault: Callable[[], str | None] | None = None) -> None:
        self.registry = CollectorRegistry()
        self._camera_fault = camera_fault  # why the camera gives no frames (the source's fault), for /healthz
        self._clock = clock
        self._fps_window = fps_window
        self._arrivals: deque[float] = deque()
        self._arrivals_lock = threading.Lock()
        self._last_frame: float | None = None
        self._relay_on: bool | None = None
        self._door_open: bool | None = None
        self._frames = Counter("facegate_frames", "Frames processed", registry=self.registry)
        self._faces = Counter("facegate_faces", "Faces found in processed frames", registry=self.registry)
        self._stages = Histogram("facegate_stage_seconds", "Seconds spent per pipeline stage", ["stage"],
                                 buckets=SECONDS_BUCKETS, registry=self.registry)
        self._grab_to_decision = Histogram("facegate_grab_to_decision_seconds",
                                           "Seconds from the camera grab to the access decision",
                                           buckets=SECONDS_BUCKETS, registry=self.registry)
        self._decisions = Counter("facegate_decisions", "Access decisions by kind (attacks count as deny)",
                                  ["kind"], registry=self.registry)
        for kind in DECISION_KINDS:
            self._decisions.labels(kind=kind)  # exported as 0 from the start, so rate() has a baseline
        self._liveness_rejects = Counter("facegate_liveness_rejects",
                                         "Denies for a suspected presentation attack", registry=self.registry)
        Gauge("facegate_fps", "Frames processed per second over the last few seconds",
              registry=self.registry).set_function(self._fps)
        self.watch("facegate_relay_on", "1 while the lock relay is energised", lambda: self._relay_on)
        self.watch("facegate_door_open", "1 while the door contact reads open (absent without a contact)",
                   lambda: self._door_open)
        self._watch_given(camera_reconnects, gallery_people, gallery_version, mqtt_connected, mqtt_backlog,
                          event_write_failures, events_dropped)

    def _watch_given(self, camera_reconnects: Reading | None, gallery_people: Reading | None,
                     gallery_version: Reading | None, mqtt_connected: Reading | None,
                     mqtt_backlog: Reading | None, event_write_failures: Reading | None,
                     events_dropped: Reading | None) -> None:
        given = (
            ("facegate_camera_reconnects_total", "Camera reopens after the first open (the source's stats)",
             camera_reconnects, True),
            ("facegate_gallery_people", "People enrolled in the running gallery", gallery_people, False),
            ("facegate_gallery_version", "Version of the synced gallery bundle, 0 for none", gallery_version, False),
            ("facegate_mqtt_connected", "1 while connected to the MQTT broker", mqtt_connected, False),
            ("facegate_mqtt_backlog", "Events not yet acknowledged by the MQTT broker", mqtt_backlog, False),
            ("facegate_event_write_failures_total", "Event log writes that failed (the events wait in memory)",
             event_write_failures, True),
            ("facegate_events_dropped_total", "Events lost because the event log's in-memory backlog overflowed",
             events_dropped, True),
        )
        for name, help, read, counter in given:
            if read is not None:
                self.watch(name, help, read, counter=counter)

    def watch(self, name: str, help: str, read: Reading, *, counter: bool = False) -> None:
        """Export read() at every scrape: a gauge, or with counter=True a counter (name ending in _total).

        A name already exported is a ValueError; call this at start-up, not from the door loop."""
        self.registry.register(_Watched(name, help, read, counter))

    @_never_raises
    def frame(self, stage_seconds: dict[str, float], faces: int) -> None:
        """One processed frame: its time per stage and the faces found in it."""
        now = self._clock()
        with self._arrivals_lock:
            self._arrivals.append(now)
            self._forget_arrivals_before(now - self._fps_window)
            self._last_frame = now
        self._frames.inc()
        self._faces.inc(faces)
        for stage, seconds in stage_seconds.items():
            self._stages.labels(stage=stage).observe(seconds)

    @_never_raises
    def grab_to_decision(self, seconds: float) -> None:
        self._grab_to_decision.observe(seconds)

    @_never_raises
    def decision(self, kind: str) -> None:
        """grant, deny, unknown, or attack: a deny for a suspected presentation attack."""
        if kind == "attack":
            self._liveness_rejects.inc()
            kind = "deny"
        if kind not in DECISION_KINDS:
            log.debug("metrics: decision kind %r is not one of %s; not counted", kind, DECISION_KINDS)
            return
        self._decisions.labels(kind=kind).inc()

    def relay(self, on: bool) -> None:
        """The lock relay; facegate_relay_on is absent until the first call."""
        self._relay_on = on

    def door_open(self, open: bool | None) -> None:
        """The door contact; None when there is none or it cannot be read."""
        self._door_open = open

    def last_frame_age(self) -> float | None:
        """Seconds since the last processed frame, None before the first one."""
        last = self._last_frame
        return None if last is None else self._clock() - last

    def health(self, stall_seconds: float) -> dict[str, Any]:
        """The /healthz body: status ok while a frame came within stall_seconds, else stalled and why."""
        age = self.last_frame_age()
        body: dict[str, Any] = {"status": "ok", "last_frame_age_s": None if age is None else round(age, 3),
                                "stall_seconds": stall_seconds}
        if age is None:
            body.update(status="stalled", reason=self._read_camera_fault() or "no frame processed yet")
        elif age > stall_seconds:
            body.update(status="stalled", reason=self._read_camera_fault() or f"no frame processed for {age:.1f} s")
        return body

    def _read_camera_fault(self) -> str | None:
        try:
            return None if self._camera_fault is None else self._camera_fault()
        except Exception:  # the reason is a courtesy: /healthz still answers without it
            log.debug("metrics: reading the camera fault failed", exc_info=True)
            return None

    def _fps(self) -> float:
        now = self._clock()
        with self._arrivals_lock:
            self._forget_arrivals_before(now - self._fps_window)
            count, oldest = len(self._arrivals), self._arrivals[0] if self._arrivals else now
        # Intervals since the oldest frame in the window, so a window not yet full after start-up reads right
        # and the rate falls towards 0 as soon as frames stop.
        span = now - oldest
        return (count - 1) / span if count > 1 and span > 0 else 0.0

    def _forget_arrivals_before(self, cutoff: float) -> None:
        while self._arrivals and self._arrivals[0] <= cutoff:
            self._arrivals.popleft()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: MetricsSettings, metrics: DoorMetrics, stall_seconds: float) -> None:
        self.metrics, self.stall_seconds = metrics, stall_seconds
        self.address_family = socket.AF_INET6 if _is_ipv6(settings.host) else socket.AF_INET
        super().__init__((settings.host, settings.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang on a door without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper hanging up mid-reply is routine; socketserver would print a traceback to stderr.
        log.debug("metrics: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that stops talking must not keep a thread forever

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._reply(200, CONTENT_TYPE_LATEST, generate_latest(self.server.metrics.registry))
        elif path == "/healthz":
            body = self.server.metrics.health(self.server.stall_seconds)
            code = 200 if body["status"] == "ok" else 503
            self._reply(code, "application/json", json.dumps(body).encode() + b"\n")
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Prometheus scrapes every few seconds: request lines would flood the journal at INFO.
        log.debug("metrics: %s %s", self.address_string(), format % args)


class MetricsServer:
    """GET /metrics and /healthz for metrics, served from a daemon thread until close()."""

    def __init__(self, metrics: DoorMetrics, settings: MetricsSettings, stall_seconds: float = 5.0) -> None:
        try:
            self._server = _Server(settings, metrics, stall_seconds)
        except OSError as error:
            reason = error.strerror or str(error)
            raise MetricsError(f"metrics.listen {settings.address}: cannot listen there: {reason}") from error
        # close() waits up to one poll interval; 0.1 s keeps a reload quick at ten idle wake-ups a second.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s/metrics and /healthz", self.address)

    @property
    def host(self) -> str:
        return self._server.server_name

    @property
    def port(self) -> int:
        """The port listened on: the one the system chose when the settings asked for 0."""
        return self._server.server_port

    @property
    def address(self) -> str:
        return MetricsSettings(self.host, self.port).address

    def close(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
