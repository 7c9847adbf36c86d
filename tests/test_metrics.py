"""The metrics endpoint, through real HTTP requests to a real server on 127.0.0.1 (any free port)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import DoorMetrics, MetricsError, MetricsServer, MetricsSettings, parse_metrics
from daemon.settings import ConfigError

ANY_PORT = MetricsSettings("127.0.0.1", 0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def get(server: MetricsServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{server.address}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(server: MetricsServer) -> dict[tuple[str, tuple], float]:
    """The scraped samples by (name, sorted labels), parsed as Prometheus would."""
    status, text = get(server, "/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def health(server: MetricsServer) -> tuple[int, dict]:
    status, text = get(server, "/healthz")
    return status, json.loads(text)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> DoorMetrics:
    return DoorMetrics(clock=clock)


@pytest.fixture
def server(metrics: DoorMetrics):
    with MetricsServer(metrics, ANY_PORT, stall_seconds=5.0) as running:
        yield running


def test_counters_export_the_values_fed(metrics: DoorMetrics, server: MetricsServer) -> None:
    metrics.frame({"detect": 0.02, "recognise": 0.01, "frame": 0.04}, faces=2)
    metrics.frame({"detect": 0.03, "frame": 0.05}, faces=0)
    metrics.grab_to_decision(0.12)
    metrics.decision("grant")
    metrics.decision("grant")
    metrics.decision("unknown")
    metrics.relay(True)
    metrics.door_open(False)
    got = samples(server)
    assert got[("facegate_frames_total", ())] == 2
    assert got[("facegate_faces_total", ())] == 2
    assert got[("facegate_stage_seconds_count", (("stage", "detect"),))] == 2
    assert got[("facegate_stage_seconds_sum", (("stage", "detect"),))] == pytest.approx(0.05)
    assert got[("facegate_stage_seconds_count", (("stage", "recognise"),))] == 1
    assert got[("facegate_grab_to_decision_seconds_count", ())] == 1
    assert got[("facegate_grab_to_decision_seconds_bucket", (("le", "0.15"),))] == 1
    assert got[("facegate_grab_to_decision_seconds_bucket", (("le", "0.1"),))] == 0
    assert got[("facegate_decisions_total", (("kind", "grant"),))] == 2
    assert got[("facegate_decisions_total", (("kind", "unknown"),))] == 1
    assert got[("facegate_decisions_total", (("kind", "deny"),))] == 0  # pre-created: exported before any deny
    assert got[("facegate_relay_on", ())] == 1
    assert got[("facegate_door_open", ())] == 0


def test_an_attack_counts_as_a_deny_and_a_liveness_reject(metrics: DoorMetrics, server: MetricsServer) -> None:
    metrics.decision("deny")
    metrics.decision("attack")
    got = samples(server)
    assert got[("facegate_decisions_total", (("kind", "deny"),))] == 2
    assert got[("facegate_liveness_rejects_total", ())] == 1
    assert ("facegate_decisions_total", (("kind", "attack"),)) not in got


def test_the_door_loop_calls_never_raise(metrics: DoorMetrics, server: MetricsServer) -> None:
    metrics.decision("exit")  # not a decision kind: ignored
    metrics.frame({"detect": "slow"}, faces=1)  # type: ignore[dict-item]
    metrics.frame({}, faces=-1)
    metrics.grab_to_decision(None)  # type: ignore[arg-type]
    assert samples(server)[("facegate_frames_total", ())] == 2


def test_no_door_contact_leaves_door_open_out(metrics: DoorMetrics, server: MetricsServer) -> None:
    metrics.door_open(True)
    assert samples(server)[("facegate_door_open", ())] == 1
    metrics.door_open(None)
    assert ("facegate_door_open", ()) not in samples(server)


def test_fps_counts_the_frames_of_the_last_seconds(clock: FakeClock, metrics: DoorMetrics,
                                                   server: MetricsServer) -> None:
    assert samples(server)[("facegate_fps", ())] == 0
    metrics.frame({}, faces=0)
    assert samples(server)[("facegate_fps", ())] == 0  # one frame is no rate yet
    for _ in range(10):  # 1 s after start-up: the window is not full, the rate still reads right
        clock.now += 0.1
        metrics.frame({}, faces=0)
    assert samples(server)[("facegate_fps", ())] == pytest.approx(10)
    for _ in range(100):  # 10 s at 10 fps, more than the 5 s window
        clock.now += 0.1
        metrics.frame({}, faces=0)
    assert samples(server)[("facegate_fps", ())] == pytest.approx(10, rel=0.05)
    clock.now += 60
    assert samples(server)[("facegate_fps", ())] == 0


def test_healthz_follows_the_frames(clock: FakeClock, metrics: DoorMetrics, server: MetricsServer) -> None:
    status, body = health(server)
    assert (status, body["status"], body["last_frame_age_s"]) == (503, "stalled", None)
    assert "no frame" in body["reason"]
    metrics.frame({}, faces=0)
    clock.now += 1
    status, body = health(server)
    assert (status, body["status"], body["last_frame_age_s"]) == (200, "ok", 1.0)
    clock.now += 5
    status, body = health(server)
    assert (status, body["status"], body["last_frame_age_s"]) == (503, "stalled", 6.0)
    assert "6.0 s" in body["reason"]


def test_other_paths_are_not_found(server: MetricsServer) -> None:
    assert get(server, "/")[0] == 404
    assert get(server, "/metrics?name[]=x")[0] == 200


def test_scrape_time_readers_and_a_failing_one(clock: FakeClock, server: MetricsServer) -> None:
    def broken() -> float:
        raise RuntimeError("the link is gone")

    metrics = DoorMetrics(clock=clock, camera_reconnects=lambda: 3, gallery_people=lambda: 12,
                          gallery_version=lambda: 0, mqtt_connected=broken, mqtt_backlog=lambda: 7)
    metrics.watch("facegate_test_broken", "always fails", broken)
    with MetricsServer(metrics, ANY_PORT) as served:
        status, text = get(served, "/metrics")
        got = samples(served)
    assert status == 200
    assert "# TYPE facegate_camera_reconnects_total counter" in text
    assert got[("facegate_camera_reconnects_total", ())] == 3
    assert got[("facegate_gallery_people", ())] == 12
    assert got[("facegate_gallery_version", ())] == 0
    assert got[("facegate_mqtt_backlog", ())] == 7
    assert ("facegate_mqtt_connected", ()) not in got
    assert ("facegate_test_broken", ()) not in got
    assert got[("facegate_frames_total", ())] == 0


def test_a_name_watched_twice_is_refused(metrics: DoorMetrics) -> None:
    with pytest.raises(ValueError):
        metrics.watch("facegate_frames_total", "again", lambda: 1, counter=True)


def test_two_door_metrics_in_one_process_do_not_collide(clock: FakeClock) -> None:
    first, second = DoorMetrics(clock=clock), DoorMetrics(clock=clock)
    first.decision("grant")
    with MetricsServer(first, ANY_PORT) as one, MetricsServer(second, ANY_PORT) as two:
        assert one.port != two.port
        assert samples(one)[("facegate_decisions_total", (("kind", "grant"),))] == 1
        assert samples(two)[("facegate_decisions_total", (("kind", "grant"),))] == 0


def test_a_used_port_is_a_clear_error_and_close_frees_it(metrics: DoorMetrics) -> None:
    first = MetricsServer(metrics, ANY_PORT)
    taken = MetricsSettings("127.0.0.1", first.port)
    get(first, "/metrics")
    with pytest.raises(MetricsError, match=rf"metrics.listen 127.0.0.1:{first.port}: cannot listen"):
        MetricsServer(metrics, taken)
    first.close()
    first.close()
    with MetricsServer(metrics, taken) as again:
        assert get(again, "/healthz")[0] == 503


@pytest.mark.parametrize("raw, expected", [
    (None, None),
    ({}, None),
    ({"listen": None}, None),
    ({"listen": "127.0.0.1:9108"}, MetricsSettings("127.0.0.1", 9108)),
    ({"listen": "0.0.0.0:1"}, MetricsSettings("0.0.0.0", 1)),
    ({"listen": "door-1.local:65535"}, MetricsSettings("door-1.local", 65535)),
    ({"listen": "[::1]:9108"}, MetricsSettings("::1", 9108)),
])
def test_config_good_values(raw: object, expected: MetricsSettings | None) -> None:
    assert parse_metrics(raw) == expected


@pytest.mark.parametrize("raw, key", [
    ({"listen": "127.0.0.1"}, "metrics.listen"),
    ({"listen": "127.0.0.1:0"}, "metrics.listen"),
    ({"listen": "127.0.0.1:65536"}, "metrics.listen"),
    ({"listen": ":9108"}, "metrics.listen"),
    ({"listen": "::1:9108"}, "metrics.listen"),
    ({"listen": "[door]:9108"}, "metrics.listen"),
    ({"listen": 9108}, "metrics.listen"),
    ({"port": 9108}, "metrics.port"),
    ("127.0.0.1:9108", "metrics"),
])
def test_config_bad_values_name_the_key(raw: object, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}\b"):
        parse_metrics(raw)


def test_an_ipv6_address_is_shown_in_brackets() -> None:
    assert MetricsSettings("::1", 9108).address == "[::1]:9108"
    assert MetricsSettings("127.0.0.1", 9108).address == "127.0.0.1:9108"
