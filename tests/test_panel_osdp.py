"""The OSDP reader against libosdp's own ControlPanel, both ends in the test as libosdp's tests do,
over a pseudo-terminal pair: the reader opens the pty's slave as its serial port (pyserial, as on a
real RS-485 adapter), the panel talks on the master. Secure Channel on."""
from __future__ import annotations

import fcntl
import logging
import os
import random
import tty
from pathlib import Path

import pytest

osdp = pytest.importorskip("osdp", reason="libosdp is not installed: pip install 'facegate[panel]'")

from daemon.panel.formats import STANDARD_FORMATS, encode, to_bytes  # noqa: E402
from daemon.panel.osdp_reader import OsdpError, OsdpReader, OsdpSettings, load_key, main, save_key  # noqa: E402
from tests.conftest import wait_for  # noqa: E402

ADDRESS = 101


class MasterChannel:
    """The panel's end of the pty."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)

    def read(self, max_bytes: int) -> bytes:
        try:
            return os.read(self.fd, max_bytes)
        except BlockingIOError:
            return b""

    def write(self, buf: bytes) -> int:
        return os.write(self.fd, buf)

    def flush(self) -> None:
        pass


@pytest.fixture
def line():
    master, slave = os.openpty()
    tty.setraw(master)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "osdp.key"
    save_key(path, bytes(range(16)))
    return path


class Indicators:
    def __init__(self) -> None:
        self.led: list[bool] = []
        self.buzzer: list[bool] = []


def _reader(port: str, key_file: Path, indicators: Indicators | None = None, **settings) -> OsdpReader:
    indicators = indicators or Indicators()
    reader = OsdpReader(OsdpSettings(port=port, key_file=key_file, address=ADDRESS, **settings),
                        on_led=indicators.led.append, on_buzzer=indicators.buzzer.append)
    reader.start()
    return reader


def _panel(master: int, key: bytes | None, enforce_secure: bool = True) -> osdp.ControlPanel:
    flags = [osdp.LibFlag.EnforceSecure] if enforce_secure else []
    panel = osdp.ControlPanel([osdp.PDInfo(ADDRESS, MasterChannel(master), scbk=key, flags=flags)],
                              log_level=osdp.LogLevel.Warning)
    panel.start()
    return panel


def _card_event(panel: osdp.ControlPanel, timeout: float = 5.0) -> dict | None:
    """The next card read the panel received (status and other events skipped)."""
    deadline = timeout
    while deadline > 0:
        event = panel.get_event(ADDRESS, timeout=0.5)
        deadline -= 0.5
        if event is not None and event["event"] == osdp.Event.CardRead:
            return event
    return None


def test_the_panel_gets_the_card_bits_in_secure_channel_and_drives_led_and_buzzer(line, key_file: Path) -> None:
    master, port = line
    indicators = Indicators()
    reader = _reader(port, key_file, indicators)
    panel = _panel(master, bytes(range(16)))
    try:
        assert panel.sc_wait(ADDRESS, timeout=10), "no Secure Channel"
        assert wait_for(lambda: reader.online and reader.secure)
        bits = encode(STANDARD_FORMATS["H10301"], 42, 31337)
        assert reader.report_card(bits)
        event = _card_event(panel)
        assert event is not None, "the card read never reached the panel"
        assert event["format"] == osdp.CardFormat.Wiegand and event["length"] == 26
        assert event["data"] == to_bytes(bits)
        led = {"command": osdp.Command.LED, "reader": 0, "led_number": 0, "control_code": 1, "on_count": 10,
               "off_count": 0, "on_color": osdp.CommandLEDColor.Green, "off_color": osdp.CommandLEDColor.Black,
               "timer_count": 10, "temporary": True}
        assert panel.submit_command(ADDRESS, led)
        assert wait_for(lambda: indicators.led == [True])
        assert panel.submit_command(ADDRESS, dict(led, on_color=osdp.CommandLEDColor.Black))
        assert wait_for(lambda: indicators.led == [True, False])
        assert panel.submit_command(ADDRESS, {"command": osdp.Command.Buzzer, "reader": 0, "control_code": 2,
                                              "on_count": 5, "off_count": 5, "rep_count": 1})
        assert wait_for(lambda: indicators.buzzer == [True])
    finally:
        panel.teardown()
        reader.close()


def test_a_wrong_key_fails_the_session_with_a_clear_log_line(line, key_file: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    master, port = line
    with caplog.at_level(logging.ERROR, "facegate.panel.osdp"):
        reader = _reader(port, key_file)
        panel = _panel(master, bytes(range(1, 17)))
        try:
            assert wait_for(lambda: "Secure Channel handshake fails" in caplog.text, timeout=15)
            assert str(key_file) in caplog.text
            assert not reader.secure and not panel.is_sc_active(ADDRESS)
        finally:
            panel.teardown()
            reader.close()


def test_the_panel_going_away_and_coming_back_resumes(line, key_file: Path) -> None:
    master, port = line
    reader = _reader(port, key_file)
    panel = _panel(master, bytes(range(16)))
    try:
        assert panel.sc_wait(ADDRESS, timeout=10)
        panel.teardown()
        assert wait_for(lambda: not reader.online, timeout=20), "the reader never noticed the silence"
        panel = _panel(master, bytes(range(16)))
        assert panel.sc_wait(ADDRESS, timeout=10), "no Secure Channel after the panel came back"
        bits = encode(STANDARD_FORMATS["H10304"], 7, 77777)
        assert reader.report_card(bits)
        assert (_card_event(panel) or {}).get("data") == to_bytes(bits)
    finally:
        panel.teardown()
        reader.close()


def test_random_bytes_and_half_frames_never_crash_the_reader(line, key_file: Path) -> None:
    master, port = line
    reader = _reader(port, key_file)
    rng = random.Random(22)
    # Noise on the line before any panel: random bytes, then frames cut short (0x53 is OSDP's start of message).
    os.write(master, bytes(rng.randrange(256) for _ in range(2000)))
    for cut in (2, 5, 9):
        os.write(master, bytes([0x53, ADDRESS, 0x08, 0x00, 0x04, 0x60, 0x12, 0x34, 0x56])[:cut])
    panel = _panel(master, bytes(range(16)))
    try:
        assert panel.sc_wait(ADDRESS, timeout=10), "no Secure Channel after the noise"
        os.write(master, bytes([0x53, ADDRESS, 0x20]))  # half a frame in the middle of the session
        bits = encode(STANDARD_FORMATS["C1000-35"], 100, 200)
        assert reader.report_card(bits)
        assert (_card_event(panel, timeout=10) or {}).get("data") == to_bytes(bits)
        assert reader._pd.thread.is_alive()
    finally:
        panel.teardown()
        reader.close()


def test_install_mode_takes_the_panels_key_and_keeps_it_owner_only(line, tmp_path: Path) -> None:
    master, port = line
    key_file = tmp_path / "new.key"
    reader = _reader(port, key_file, install_mode=True)
    # A panel commissioning a reader: it falls back to the default key (SCBK-D), then sends its own.
    panel = _panel(master, bytes(range(5, 21)), enforce_secure=False)
    try:
        assert panel.sc_wait(ADDRESS, timeout=10)
        assert wait_for(key_file.exists)
        assert load_key(key_file) == bytes(range(5, 21))
        assert key_file.stat().st_mode & 0o777 == 0o600
    finally:
        panel.teardown()
        reader.close()


def test_key_files_that_are_exposed_malformed_or_missing_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    with pytest.raises(OsdpError, match="no such key file"):
        load_key(path)
    path.write_text("00" * 16)
    path.chmod(0o644)
    with pytest.raises(OsdpError, match="chmod 600"):
        load_key(path)
    path.chmod(0o600)
    assert load_key(path) == bytes(16)
    path.write_text("not hex")
    with pytest.raises(OsdpError, match="32 hex digits"):
        load_key(path)


def test_new_key_writes_owner_only_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "osdp.key"
    assert main(["new-key", str(path)]) == 0
    assert load_key(path).hex() == capsys.readouterr().out.strip()
    assert main(["new-key", str(path)]) == 1
    assert "never overwritten" in capsys.readouterr().out


def test_a_missing_serial_port_is_a_clear_error(key_file: Path) -> None:
    with pytest.raises(OsdpError, match="cannot open serial port /dev/nonexistent-tty"):
        OsdpReader(OsdpSettings(port="/dev/nonexistent-tty", key_file=key_file))
