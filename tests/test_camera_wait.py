"""A door whose camera cannot be opened at start: not ready (no READY=1, no "facegate ready") until its
first frame, an ERROR naming the camera at each try, the relay off, and /healthz saying why; ready as
soon as the camera appears. The real service on the demo clip, gpiozero's MockFactory pins, a real
notify socket and the real metrics endpoint."""
from __future__ import annotations

import json
import logging
import threading

from gpiozero.pins.mock import MockFactory

from daemon.demo import DEMO_CLIP, ENROL_FRAME, enrol_from_clip
from daemon.notify import Notifier
from daemon.service import DoorService
from tests.conftest import wait_for
from tests.test_fleet_service import free_port, get
from tests.test_service import RELAY, NotifySocket, make_config, short_clip  # noqa: F401 (fixture)


def test_a_camera_that_cannot_be_opened_keeps_the_door_not_ready_until_it_appears(tmp_path, short_clip, caplog,
                                                                                   monkeypatch):
    listener = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"
    # A realtime file opens in the grabber thread and is retried with backoff, as a camera is.
    config = make_config(tmp_path, short_clip, camera={"pace": "realtime", "loop": True},
                         metrics={"listen": f"127.0.0.1:{port}"})
    enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    aside = short_clip.with_name("aside.mp4")
    short_clip.rename(aside)  # the camera's path names nothing now
    factory = MockFactory()
    service = DoorService(config, pin_factory=factory, notifier=Notifier(str(listener.path)))
    runner = threading.Thread(target=service.run, name="door")
    fault = f"camera file video {short_clip} (realtime, loop) cannot be opened: cannot open video {short_clip}"

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

    with caplog.at_level(logging.INFO):
        runner.start()
        try:
            assert wait_for(lambda: len(errors()) >= 2, timeout=60), "no ERROR, or no retry"
            assert errors()[:2] == [f"{fault}; retrying in 0.5 s", f"{fault}; retrying in 1.0 s"]
            assert wait_for(lambda: service.metrics_server is not None, timeout=30)
            status, body = get(health)
            assert status == 503 and json.loads(body)["reason"] == fault
            sent = listener.messages()
            assert f"STATUS=not ready: {fault}" in sent
            assert not any(m.startswith("READY=1") for m in sent) and "WATCHDOG=1" not in sent
            assert "facegate ready" not in caplog.text
            assert factory.pin(RELAY).state == 0 and not service.door.is_unlocked

            aside.rename(short_clip)  # the camera appears
            assert wait_for(lambda: "facegate ready" in caplog.text, timeout=60)
            assert wait_for(lambda: get(health)[0] == 200, timeout=30)
            sent = listener.messages()
            assert sum(m.startswith("READY=1") for m in sent) == 1
            assert wait_for(lambda: "WATCHDOG=1" in listener.messages(), timeout=30), "frames flow: watchdog fed"
        finally:
            service.stop()
            runner.join(30)
    assert not runner.is_alive()
    assert factory.pin(RELAY).state == 0
