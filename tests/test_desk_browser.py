"""The front desk in a real browser: Playwright for Python driving Debian's chromium (no browser download),
its fake camera fed from the demo clip (a y4m made here with OpenCV). Log in, enrol the lead hiker from the
webcam, see him listed, replay the clip through a door on the same gallery and event log, see his grant
arrive in the live event list, log out. ./facegate.sh test installs chromium (as root with apt-get); without
it, or without playwright, the test skips and says why."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
uvicorn = pytest.importorskip("uvicorn", reason="the desk extra (uvicorn) is not installed")

from daemon.demo import DEMO_CLIP  # noqa: E402
from daemon.events import EventReader  # noqa: E402
from daemon.gallery import Gallery  # noqa: E402
from desk.app import create_app  # noqa: E402
from tests.test_desk_security import PASSWORD, desk_state  # noqa: E402
from tests.test_service import make_config, run_service, short_clip  # noqa: E402,F401 (short_clip: a fixture)

from gpiozero.pins.mock import MockFactory  # noqa: E402

CAMERA_FRAMES = range(95, 136)  # the lead hiker large and frontal, walking up to the camera


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.skip("no chromium on PATH: ./facegate.sh test installs Debian's chromium as root (apt-get install "
                "chromium); elsewhere install it to run the browser test")


def fake_camera(path: Path) -> Path:
    """The clip's frames of the hiker as a y4m (YUV 4:2:0) file, Chromium's fake camera format."""
    capture = cv2.VideoCapture(str(DEMO_CLIP))
    with path.open("wb") as out:
        index, header = 0, False
        while True:
            ok, frame = capture.read()
            if not ok or index > CAMERA_FRAMES.stop:
                break
            if index in CAMERA_FRAMES:
                height, width = frame.shape[:2]
                if not header:
                    out.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
                    header = True
                out.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
            index += 1
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningDesk:
    """The desk under uvicorn on 127.0.0.1, in a thread, as enroll_local.py serve runs it."""

    def __init__(self, settings) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)
        assert self.server.started, "the desk did not start"
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_enrol_the_hiker_from_the_webcam_and_see_his_grant_live(tmp_path, short_clip):  # noqa: F811
    browser_path = chromium()
    screenshots = Path(os.environ.get("FACEGATE_DESK_SCREENSHOTS", tmp_path / "screenshots"))
    screenshots.mkdir(parents=True, exist_ok=True)
    camera = fake_camera(tmp_path / "camera.y4m")
    state = tmp_path / "state"
    state.mkdir()
    settings = desk_state(state)
    door = make_config(state, short_clip)  # the same gallery.db and events.db as the desk
    assert (door.gallery.path, door.events.path) == (settings.gallery, settings.events)

    with RunningDesk(settings) as url, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path, headless=True,
            args=["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-video-capture={camera}"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(f"{url}/people")
        assert page.url.startswith(f"{url}/login")
        page.screenshot(path=str(screenshots / "desk-login.png"))
        page.fill("input[name=name]", "enroller")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/people")

        page.goto(f"{url}/enrol/camera")
        # Each frame goes through the door's quality gate and liveness nets: the shots appear once 3 pass.
        page.wait_for_selector("#save:enabled", timeout=180_000)
        assert page.locator("#shots img.shot").count() == 3
        page.wait_for_function("Array.from(document.querySelectorAll('#shots img')).every(i => i.naturalWidth > 0)")
        page.screenshot(path=str(screenshots / "desk-webcam.png"))
        page.fill("#save-form input[name=name]", "Lead Hiker")
        page.click("#save")
        page.wait_for_selector("h1:has-text('Lead Hiker')")
        page.screenshot(path=str(screenshots / "desk-person.png"))
        with Gallery.open(settings.gallery) as gallery:
            [hiker] = gallery.list_people()
            assert hiker.name == "Lead Hiker" and {t.source for t in gallery.templates(hiker.id)} == {"camera"}

        page.goto(f"{url}/people")
        assert page.locator("table.list a", has_text="Lead Hiker").count() == 1
        page.screenshot(path=str(screenshots / "desk-people.png"))

        page.goto(f"{url}/events")
        page.wait_for_selector("#live:has-text('live: new events')")
        service, watch, code = run_service(door, MockFactory())  # the door replays the clip meanwhile
        assert code == 0 and watch.high_at, "the door did not open for the hiker enrolled at the desk"
        grant = page.wait_for_selector("#event-rows tr.kind-grant.fresh:has-text('Lead Hiker')", timeout=30_000)
        assert grant is not None
        page.screenshot(path=str(screenshots / "desk-events.png"))
        assert [e.person_id for e in EventReader(settings.events).query(kinds=["grant"])] == [hiker.id]

        page.click("#logout")
        page.wait_for_url(f"{url}/login")
        page.goto(f"{url}/people")
        assert page.url.startswith(f"{url}/login"), "logged out: the pages ask for a login again"
        browser.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors
    reasons = [e.reason for e in EventReader(settings.events).query(kinds=["operator"])]
    assert any(r.startswith("enroller from 127.0.0.1: enrolled from the webcam") for r in reasons), reasons
