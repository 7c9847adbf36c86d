"""facegate as an OSDP reader (a peripheral device, IEC 60839-11-5) on the panel's RS-485 line.

libosdp does the protocol: its PeripheralDevice answers the panel's polls from its own thread
(every 20 ms), so the door loop never waits on the serial line and a busy face pipeline does not
take the reader offline (panels give up after about 200 ms of silence). This module adds what a door
needs around it: the serial channel (pyserial; a vanished USB adapter is reopened, not fatal), the
Secure Channel key kept owner-only (0600) and saved when the panel sets a new one, a supervisor
thread that logs online / offline / a failing Secure Channel handshake in words, card reads carrying
the Wiegand encoder's bits, and the panel's LED and buzzer commands handed to the door.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from daemon.panel.formats import to_bytes
from daemon.settings import ConfigError, Section
from engines.atomic_file import write_atomic

log = logging.getLogger("facegate.panel.osdp")

BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400)
KEY_BYTES = 16  # the Secure Channel Base Key (SCBK), AES-128
SC_GRACE_SECONDS = 3.0  # online this long without Secure Channel: the handshake is failing


class OsdpError(RuntimeError):
    """The OSDP reader cannot start: no libosdp, an unreadable or exposed key file."""


@dataclass(frozen=True)
class OsdpSettings:
    port: str  # the RS-485 adapter, e.g. /dev/ttyUSB0
    key_file: Path  # the SCBK as 32 hex digits, owner-only; written by the panel in install mode
    address: int = 0
    baud: int = 9600
    install_mode: bool = False  # accept the panel's key once (then set it false again)
    reader_no: int = 0

    @classmethod
    def from_config(cls, raw: Any, path: str) -> OsdpSettings:
        section = Section(raw, path, {"port", "address", "baud", "key_file", "install_mode", "reader_no"})
        return cls(port=section.get("port", str), key_file=Path(section.get("key_file", str)),
                   address=section.number("address", 0, low=0, high=126, integer=True),
                   baud=section.choice("baud", BAUD_RATES, 9600),
                   install_mode=section.get("install_mode", bool, False),
                   reader_no=section.number("reader_no", 0, low=0, high=255, integer=True))


def load_key(path: Path) -> bytes:
    """The SCBK from its key file; OsdpError when it is missing, malformed or readable by others."""
    try:
        info = path.stat()
        text = path.read_text().strip()
    except FileNotFoundError:
        raise OsdpError(f"{path}: no such key file: write the panel's SCBK there (32 hex digits, chmod 600), "
                        f"or make one with python -m daemon.panel.osdp_reader new-key {path}, or set "
                        f"install_mode: true for the panel to set it") from None
    except OSError as error:
        raise OsdpError(f"{path}: cannot read the OSDP key: {error.strerror}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise OsdpError(f"{path}: the OSDP key is readable by others (mode {stat.S_IMODE(info.st_mode):o}): "
                        f"chmod 600 {path}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise OsdpError(f"{path}: not an OSDP key: expected {2 * KEY_BYTES} hex digits (16 bytes)")
    return key


def save_key(path: Path, key: bytes) -> None:
    write_atomic(path, key.hex().encode() + b"\n", 0o600)


class SerialChannel:
    """libosdp's channel over a serial port. A port that fails (a USB adapter unplugged) is closed and
    reopened every two seconds; meanwhile the reader reads nothing and libosdp sees silence."""

    def __init__(self, port: str, baud: int) -> None:
        import serial

        self._serial_module = serial
        self._port, self._baud = port, baud
        self._serial: Any = None
        self._retry_at = 0.0
        self._open()
        if self._serial is None:
            raise OsdpError(f"OSDP: cannot open serial port {port}: {self._last_error}")

    def _open(self) -> None:
        try:
            self._serial = self._serial_module.Serial(self._port, self._baud, timeout=0, write_timeout=0.5)
            self._last_error = ""
        except (OSError, self._serial_module.SerialException) as error:
            self._serial, self._last_error = None, str(error)
            self._retry_at = time.monotonic() + 2.0

    def _port_ready(self) -> bool:
        if self._serial is None and time.monotonic() >= self._retry_at:
            self._open()
            if self._serial is not None:
                log.warning("OSDP: serial port %s open again", self._port)
        return self._serial is not None

    def _lost(self, error: Exception) -> None:
        log.error("OSDP: serial port %s failed (%s); reopening it every 2 s", self._port, error)
        try:
            self._serial.close()
        except Exception:  # already broken
            pass
        self._serial, self._retry_at = None, time.monotonic() + 2.0

    def read(self, max_bytes: int) -> bytes:
        if not self._port_ready():
            return b""
        try:
            return self._serial.read(max_bytes)
        except (OSError, self._serial_module.SerialException) as error:
            self._lost(error)
            return b""

    def write(self, buf: bytes) -> int:
        if not self._port_ready():
            return 0
        try:
            return self._serial.write(buf) or 0
        except (OSError, self._serial_module.SerialException) as error:
            self._lost(error)
            return 0

    def flush(self) -> None:
        if self._serial is not None:
            try:
                self._serial.reset_input_buffer()
            except (OSError, self._serial_module.SerialException) as error:
                self._lost(error)

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None


def _osdp() -> Any:
    try:
        import osdp
    except ImportError as error:
        raise OsdpError(f"the OSDP reader needs libosdp, which does not import ({error}): "
                        f"pip install 'facegate[panel]'") from error
    return osdp


Indicator = Callable[[bool], None]


class OsdpReader:
    """One reader on the panel's bus. report_card() sends a card read; the panel's LED and buzzer
    commands come back through on_led / on_buzzer (True: on)."""

    def __init__(self, settings: OsdpSettings, *, on_led: Indicator | None = None,
                 on_buzzer: Indicator | None = None, channel: Any = None) -> None:
        osdp = _osdp()
        self._osdp = osdp
        self.settings = settings
        self._on_led, self._on_buzzer = on_led, on_buzzer
        key = None if settings.install_mode and not settings.key_file.exists() else load_key(settings.key_file)
        flags = [osdp.LibFlag.InstallMode] if settings.install_mode else [osdp.LibFlag.EnforceSecure]
        # libosdp calls read/write/flush on whatever object it is given (no base class needed)
        self._channel = channel if channel is not None else SerialChannel(settings.port, settings.baud)
        capabilities = osdp.PDCapabilities([
            (osdp.Capability.CardDataFormat, 1, 1),
            (osdp.Capability.LEDControl, 1, 1),
            (osdp.Capability.AudibleControl, 1, 1),
            (osdp.Capability.CommunicationSecurity, 1, 1),
        ])
        self._pd = osdp.PeripheralDevice(osdp.PDInfo(settings.address, self._channel, scbk=key, flags=flags,
                                                     name=f"facegate-{settings.address}"),
                                         capabilities, log_level=osdp.LogLevel.Warning,
                                         command_handler=self._command)
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="osdp-supervisor", daemon=True)
        self.online = False
        self.secure = False

    def start(self) -> None:
        self._pd.start()
        self._supervisor.start()
        log.info("OSDP reader at address %d on %s, %d baud, %s", self.settings.address, self.settings.port,
                 self.settings.baud, "INSTALL MODE: the panel may set the Secure Channel key"
                 if self.settings.install_mode else "Secure Channel enforced")

    def report_card(self, bits: tuple[int, ...]) -> bool:
        """Queue a raw Wiegand card read for the panel's next poll; False when libosdp refused it."""
        event = {"event": self._osdp.Event.CardRead, "reader_no": self.settings.reader_no, "direction": 0,
                 "length": len(bits), "format": self._osdp.CardFormat.Wiegand, "data": to_bytes(bits)}
        return bool(self._pd.submit_event(event))

    def report_local(self, tamper: bool, power_failure: bool) -> bool:
        """The reader's local status (tamper switch, power) for the panel."""
        event = {"event": self._osdp.Event.Status, "type": self._osdp.StatusReportType.Local,
                 "report": bytes([int(tamper), int(power_failure)])}
        return bool(self._pd.submit_event(event))

    def close(self) -> None:
        self._stop.set()
        if self._supervisor.is_alive():
            self._supervisor.join(timeout=2)
        if self._pd.thread is not None:
            self._pd.teardown()
        closer = getattr(self._channel, "close", None)
        if closer is not None:
            closer()

    # -- libosdp's thread ---------------------------------------------------------------

    def _command(self, command: dict) -> tuple[int, Any]:
        """The panel's commands, in libosdp's thread: quick, and never raising into C."""
        osdp = self._osdp
        try:
            kind = command.get("command")
            if kind == osdp.Command.LED and self._on_led is not None:
                self._on_led(command.get("on_color", 0) != osdp.CommandLEDColor.Black)
            elif kind == osdp.Command.Buzzer and self._on_buzzer is not None:
                self._on_buzzer(command.get("control_code") == 2 and command.get("on_count", 0) > 0)  # 2: tone on
            elif kind == osdp.Command.Keyset:
                save_key(self.settings.key_file, bytes(command["data"]))
                log.warning("OSDP: the panel set a new Secure Channel key, saved to %s%s", self.settings.key_file,
                            "; set install_mode: false now" if self.settings.install_mode else "")
        except Exception:
            log.exception("OSDP: handling the panel's command %r failed", command.get("command"))
            return -1, None
        return 0, None

    # -- the supervisor ----------------------------------------------------------------

    def _supervise(self) -> None:
        without_sc_since: float | None = None
        reported_sc_failure = False
        while not self._stop.wait(0.2):
            online, secure = bool(self._pd.is_online()), bool(self._pd.is_sc_active())
            if online != self.online or secure != self.secure:
                if online:
                    log.info("OSDP: the panel is polling reader %d%s", self.settings.address,
                             " in Secure Channel" if secure else "")
                elif self.online:
                    log.warning("OSDP: the panel stopped polling reader %d (line silent)", self.settings.address)
                self.online, self.secure = online, secure
            if online and not secure and not self.settings.install_mode:
                without_sc_since = without_sc_since or time.monotonic()
                if not reported_sc_failure and time.monotonic() - without_sc_since >= SC_GRACE_SECONDS:
                    reported_sc_failure = True
                    log.error("OSDP: the panel polls reader %d but the Secure Channel handshake fails: the panel's "
                              "key is not the one in %s; give both the same SCBK, or set install_mode: true for "
                              "the panel to set it", self.settings.address, self.settings.key_file)
            else:
                without_sc_since, reported_sc_failure = None, reported_sc_failure and not secure


def main(argv: list[str] | None = None) -> int:
    """python -m daemon.panel.osdp_reader new-key PATH: a random SCBK, owner-only, never overwriting."""
    import argparse
    import secrets

    parser = argparse.ArgumentParser(prog="python -m daemon.panel.osdp_reader",
                                     description="Make an OSDP Secure Channel key for a facegate reader.",
                                     epilog="example: python -m daemon.panel.osdp_reader new-key "
                                            "/etc/facegate/osdp.key  (then enter the same 32 hex digits at the panel)")
    parser.add_argument("action", choices=["new-key"])
    parser.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.path.exists():
        print(f"error: {args.path} exists: a key is never overwritten")
        return 1
    key = secrets.token_bytes(KEY_BYTES)
    try:
        save_key(args.path, key)
    except OSError as error:
        print(f"error: cannot write {args.path}: {error.strerror}")
        return 1
    print(key.hex())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
