"""The front desk's security through Starlette's in-process client: every route refuses without a session,
CSRF on every change, roles, login rate limiting and lockout, idle sessions, forged cookies, security
headers and no inline script or style, escaped names, upload limits, the listen rules, and the
operator CLI. The helpers here (desk_state, login) are the other desk tests' too."""
from __future__ import annotations

import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the desk extra (starlette) is not installed")
pytest.importorskip("multipart", reason="the desk extra (python-multipart) is not installed")
from starlette.routing import Mount  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from daemon.events import EventReader  # noqa: E402
from daemon.gallery import Gallery, Template  # noqa: E402
from desk.app import HERE, SESSION_COOKIE, create_app  # noqa: E402
from desk.operators import LOCK_AFTER, OperatorStore  # noqa: E402
from desk.security import CSP  # noqa: E402
from desk.settings import MAX_PIXELS, DeskSettings, DeskSettingsError, check_listen, parse_listen  # noqa: E402
from tests.conftest import REPO  # noqa: E402

PASSWORD = "correct horse battery"
ROLES = ("viewer", "enroller", "admin")


def desk_state(tmp_path: Path, **settings) -> DeskSettings:
    """A state folder with one operator per role (named after it) and the desk's settings for it."""
    store = OperatorStore(tmp_path / "desk.db")
    for role in ROLES:
        store.add(role, role, PASSWORD)
    store.close()
    return DeskSettings(gallery=tmp_path / "gallery.db", events=tmp_path / "events.db", desk_db=tmp_path / "desk.db",
                        **settings)


def form_csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def login(client: TestClient, name: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post("/login", data={"csrf": form_csrf(page.text), "name": name, "password": password,
                                       "next": "/people"}, follow_redirects=False)


def csrf_of(client: TestClient) -> str:
    return form_csrf(client.get("/people").text)


def add_person(settings: DeskSettings, name: str) -> int:
    vector = np.ones(128, np.float32) / np.sqrt(128)
    with Gallery.open(settings.gallery) as gallery:
        return gallery.add_person(name, [Template(vector, "test-model")])


@pytest.fixture
def settings(tmp_path) -> DeskSettings:
    return desk_state(tmp_path)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as client:
        yield client


def test_every_route_but_the_login_page_refuses_without_a_session(client, settings):
    person = add_person(settings, "Alice")
    checked = 0
    for route in client.app.routes:
        if isinstance(route, Mount) or route.path == "/login":
            continue
        assert hasattr(route.endpoint, "role"), f"{route.path} has no role guard"
        path = re.sub(r"\{[^}]+\}", str(person), route.path)
        for method in route.methods - {"HEAD"}:
            response = client.request(method, path, follow_redirects=False)
            if method == "GET":
                assert response.status_code == 303 and response.headers["location"].startswith("/login"), path
            else:
                assert response.status_code == 401, (method, path)
            checked += 1
    assert checked >= 20
    with Gallery.open(settings.gallery) as gallery:
        assert gallery.get_person(person).active, "a refused request changed the gallery"


def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(client, settings):
    person = add_person(settings, "Alice")
    assert login(client, "admin").status_code == 303
    for data, headers in (({}, {}), ({"csrf": "forged"}, {}), ({}, {"X-CSRF-Token": "forged"})):
        response = client.post(f"/people/{person}/disable", data=data, headers=headers, follow_redirects=False)
        assert response.status_code == 403 and "security token" in response.text
    response = client.post(f"/people/{person}/delete", data={"confirm": "yes"}, follow_redirects=False)
    assert response.status_code == 403
    with Gallery.open(settings.gallery) as gallery:
        assert gallery.get_person(person).active
    token = csrf_of(client)
    assert client.post(f"/people/{person}/disable", data={"csrf": token}, follow_redirects=False).status_code == 303
    with Gallery.open(settings.gallery) as gallery:
        assert not gallery.get_person(person).active


def test_roles_viewer_reads_enroller_changes_admin_deletes(client, settings):
    person = add_person(settings, "Alice")
    login(client, "viewer")
    assert client.get("/people").status_code == 200 and client.get(f"/people/{person}").status_code == 200
    token = csrf_of(client)
    assert client.post(f"/people/{person}/disable", data={"csrf": token}).status_code == 403
    assert client.get("/enrol").status_code == 403
    client.cookies.clear()
    login(client, "enroller")
    token = csrf_of(client)
    assert client.post(f"/people/{person}/disable", data={"csrf": token}, follow_redirects=False).status_code == 303
    refused = client.post(f"/people/{person}/delete", data={"csrf": token, "confirm": "yes"})
    assert refused.status_code == 403 and "admin role" in refused.text
    client.cookies.clear()
    login(client, "admin")
    token = csrf_of(client)
    assert client.get(f"/people/{person}/delete").status_code == 200, "the confirmation page"
    assert client.post(f"/people/{person}/delete", data={"csrf": token, "confirm": "yes"},
                       follow_redirects=False).status_code == 303
    with Gallery.open(settings.gallery) as gallery:
        assert gallery.list_people() == []
    operator_events = [e.reason for e in EventReader(settings.events).query(kinds=["operator"])]
    assert "enroller from testclient: disabled" in operator_events
    assert "admin from testclient: deleted with 1 template(s)" in operator_events


def test_a_name_holding_markup_is_shown_escaped(client, settings):
    person = add_person(settings, "<script>alert(1)</script> Mallory")
    login(client, "viewer")
    for page in ("/people", f"/people/{person}", "/people?q=Mallory"):
        html = client.get(page).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; Mallory" in html and "<script>alert" not in html, page


def test_headers_and_no_inline_script_or_style(client):
    response = client.get("/login")
    assert response.headers["content-security-policy"] == CSP and "unsafe-inline" not in CSP
    assert "frame-ancestors 'none'" in CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    for template in (HERE / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{template.name}: inline script"
        assert "<style" not in text and not re.search(r"\sstyle=", text), f"{template.name}: inline style"
        assert not re.search(r"\son[a-z]+=", text), f"{template.name}: inline event handler"
    htmx = HERE / "static" / "htmx.min.js"
    assert client.get("/static/htmx.min.js").content == htmx.read_bytes()
    assert "Zero-Clause BSD" in (HERE / "static" / "htmx.LICENSE").read_text()


def test_the_session_cookie_is_httponly_strict_and_a_forged_one_opens_nothing(client, settings):
    response = login(client, "viewer")
    cookie = response.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    token = client.cookies[SESSION_COOKIE]
    client.cookies.clear()
    client.cookies[SESSION_COOKIE] = token.split(".")[0] + ".AAAA"
    assert client.get("/people", follow_redirects=False).status_code == 303
    client.cookies[SESSION_COOKIE] = token
    assert client.get("/people", follow_redirects=False).status_code == 200


def test_an_idle_session_ends_and_logging_out_ends_it(client, settings):
    login(client, "viewer")
    assert client.get("/people", follow_redirects=False).status_code == 200
    with sqlite3.connect(settings.desk_db) as db:
        db.execute("UPDATE sessions SET last_seen = last_seen - 3600")
    assert client.get("/people", follow_redirects=False).status_code == 303, "idle for an hour"
    login(client, "viewer")
    token = csrf_of(client)
    cookie = client.cookies[SESSION_COOKIE]
    assert client.post("/logout", data={"csrf": token}, follow_redirects=False).status_code == 303
    client.cookies[SESSION_COOKIE] = cookie  # the old cookie, replayed
    assert client.get("/people", follow_redirects=False).status_code == 303


def test_wrong_passwords_lock_the_operator_and_many_failures_slow_the_client(client, settings):
    for _ in range(LOCK_AFTER):
        assert login(client, "admin", "wrong password").status_code == 401
    locked = login(client, "admin")
    assert locked.status_code == 401 and "locked" in locked.text, "the right password is refused while locked"
    assert login(client, "viewer").status_code == 303, "other operators are not locked"
    client.cookies.clear()
    for _ in range(10 - LOCK_AFTER - 1):  # the failures so far count for this client address too
        assert login(client, "nobody", "wrong password").status_code == 401
    slowed = login(client, "viewer")
    assert slowed.status_code == 429 and int(slowed.headers["retry-after"]) > 0
    reasons = [e.reason for e in EventReader(settings.events).query(kinds=["operator"])]
    assert f"admin from testclient: login refused: account locked after {LOCK_AFTER} failures" in reasons
    assert "nobody from testclient: login refused" in reasons


def test_a_stale_login_form_is_refused(client):
    response = client.post("/login", data={"csrf": "made-up", "name": "admin", "password": PASSWORD})
    assert response.status_code == 403
    assert client.get("/people", follow_redirects=False).status_code == 303


def test_login_only_redirects_within_the_desk(client):
    page = client.get("/login")
    response = client.post("/login", data={"csrf": form_csrf(page.text), "name": "viewer", "password": PASSWORD,
                                           "next": "//evil.example/"}, follow_redirects=False)
    assert response.headers["location"] == "/people"


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few bytes: what a decompression bomb looks like to a header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def enrol_form(client: TestClient, files, name: str = "Alice"):
    return client.post("/enrol", data={"csrf": csrf_of(client), "name": name}, files=files)


def test_uploads_that_are_not_photos_or_too_big_are_refused_in_plain_words(client, settings):
    login(client, "enroller")
    cases = [
        ([("photos", ("alice.jpg", b"this is text, not a photo", "image/jpeg"))], "not a photo"),
        ([("photos", ("empty.jpg", b"", "image/jpeg"))], None),  # an empty file part is no photo chosen
        ([("photos", ("huge.png", png_header(8000, 6000), "image/png"))], "megapixels"),
        ([("photos", ("bomb.png", png_header(30000, 30000), "image/png"))], "too many pixels to decode safely"),
        ([("photos", (f"p{n}.jpg", b"x", "image/jpeg")) for n in range(9)], "is 8"),
    ]
    for files, words in cases:
        response = enrol_form(client, files)
        assert response.status_code in (400, 413)
        if words:
            assert words in response.text, words
    oversized = client.post("/enrol", content=b"x" * (81 * 1024 * 1024),
                            headers={"content-type": "multipart/form-data; boundary=x", "X-CSRF-Token": "t"})
    assert oversized.status_code == 413 and "too large" in oversized.text
    with Gallery.open(settings.gallery) as gallery:
        assert gallery.list_people() == []
    assert 8000 * 6000 > MAX_PIXELS


def test_listen_rules():
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:8443") == ("::1", 8443)
    for bad in ("8080", "host:", "host:99999", ":80"):
        with pytest.raises(DeskSettingsError):
            parse_listen(bad)
    check_listen("127.0.0.1", None, None, False)
    check_listen("::1", None, None, False)
    check_listen("192.168.1.20", None, None, True)
    with pytest.raises(DeskSettingsError, match="without TLS"):
        check_listen("0.0.0.0", None, None, False)
    with pytest.raises(DeskSettingsError, match="go together"):
        check_listen("0.0.0.0", Path("cert.pem"), None, False)


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "enroll_local.py"), *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_serve_refuses_a_lan_address_without_tls(tmp_path):
    result = run_cli("--db", str(tmp_path / "gallery.db"), "serve", "--listen", "0.0.0.0:8443")
    assert result.returncode == 2 and "without TLS" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "gallery.db").exists() and not (tmp_path / "desk.db").exists()


def test_operator_add_asks_twice_and_refuses_a_mismatch_or_a_short_password(tmp_path):
    db = str(tmp_path / "gallery.db")
    differ = run_cli("--db", db, "operator", "add", "Dana", stdin=f"{PASSWORD}\n{PASSWORD}x\n")
    assert differ.returncode == 1 and "differ" in differ.stderr and "Traceback" not in differ.stderr
    short = run_cli("--db", db, "operator", "add", "Dana", stdin="short\nshort\n")
    assert short.returncode == 1 and "at least" in short.stderr
    assert OperatorStore(tmp_path / "desk.db").names() == []
    made = run_cli("--db", db, "operator", "add", "Dana", "--role", "admin", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert made.returncode == 0, made.stderr
    [dana] = OperatorStore(tmp_path / "desk.db").names()
    assert (dana.name, dana.role) == ("Dana", "admin")
    again = run_cli("--db", db, "operator", "add", "Dana", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert (tmp_path / "desk.db").stat().st_mode & 0o077 == 0, "desk.db holds password hashes: owner-only"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_desk_unit_file_verifies_and_listens_on_loopback(tmp_path):
    unit = (REPO / "systemd" / "facegate-desk.service").read_text()
    # verify checks that ExecStart exists; point it at this interpreter.
    (tmp_path / "facegate-desk.service").write_text(unit.replace("/opt/facegate/venv/bin/python", sys.executable))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "facegate-desk.service")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "ignoring" not in result.stderr.lower(), result.stderr
    [start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert start.endswith(" serve") and "--listen" not in start and "--insecure-http" not in unit
    for directive in ("User=facegate", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateDevices=yes"):
        assert directive in unit
