"""The one place the door loop hands a decision to: the relay, the panel's Wiegand input, an OSDP
reader, or the relay and a panel together (config section `panel`).

authority local: facegate's policy decides; a grant drives the relay (when an output) and sends the
person's card to the panel (so its audit trail names them); a refusal sends the configured denied
card, or nothing. authority panel: facegate only says who it saw: a recognised person's card goes to
the panel, which decides and opens the lock itself; the relay is not facegate's to drive.
Unknown faces and suspected presentation attacks send nothing, or the denied card.

Sending never blocks the door loop: a Wiegand frame (about 70 ms) is played on its own thread; an
OSDP card read is queued for libosdp's thread to deliver at the panel's next poll.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from daemon.panel.formats import Card, CredentialError, WiegandFormat, encode, format_named, parse_custom_formats
from daemon.panel.osdp_reader import OsdpSettings
from daemon.panel.wiegand import LEVELS, SENDERS, WiegandSender, WiegandTiming
from daemon.settings import ConfigError, Section

log = logging.getLogger("facegate.panel")

OUTPUTS = ("relay", "wiegand", "osdp")
AUTHORITIES = ("local", "panel")


@dataclass(frozen=True)
class WiegandOutSettings:
    d0: int | str
    d1: int | str
    sender: str
    pulse_level: str
    timing: WiegandTiming


@dataclass(frozen=True)
class PanelSettings:
    outputs: tuple[str, ...] = ("relay",)
    authority: str = "local"
    formats: dict[str, WiegandFormat] | None = None  # None: the standard ones
    denied: Card | None = None  # sent for a refusal; None: nothing is sent
    wiegand: WiegandOutSettings | None = None
    osdp: OsdpSettings | None = None

    @property
    def drives_relay(self) -> bool:
        return "relay" in self.outputs


def parse_panel(raw: Any, path: str = "panel") -> PanelSettings:
    """The `panel` section; absent: the relay alone, as before panels existed."""
    if raw is None:
        return PanelSettings()
    top = Section(raw, path, {"outputs", "authority", "formats", "denied", "wiegand", "osdp"})
    outputs = top.get("outputs", list, ["relay"])
    if not outputs or any(o not in OUTPUTS for o in outputs) or len(set(outputs)) != len(outputs):
        top.fail("outputs", outputs, f"a list of one or more of {list(OUTPUTS)}, each once")
    authority = top.choice("authority", AUTHORITIES, "local")
    if authority == "panel" and "relay" in outputs:
        top.fail("outputs", outputs, "no 'relay' with authority: panel (the panel decides and opens the lock)")
    if outputs == ["relay"] and authority == "panel":
        top.fail("authority", authority, "'local' when the relay is the only output")
    formats = parse_custom_formats(top.raw.get("formats"), top.key("formats"))
    denied = None
    if top.raw.get("denied") is not None:
        part = top.section("denied", {"format", "facility", "card"})
        denied = _card(part, formats)
    wiegand = _wiegand(top.section("wiegand", {"d0", "d1", "sender", "pulse_level", "pulse_us", "interval_us"})) \
        if "wiegand" in outputs else None
    osdp = OsdpSettings.from_config(top.raw.get("osdp"), top.key("osdp")) if "osdp" in outputs else None
    return PanelSettings(tuple(outputs), authority, formats, denied, wiegand, osdp)


def _card(section: Section, formats: dict[str, WiegandFormat]) -> Card:
    name = section.get("format", str, "H10301")
    facility = section.number("facility", 0, low=0, integer=True)
    number = section.number("card", low=0, integer=True)
    try:
        fmt = format_named(name, formats)
        fmt.check(facility, number)
    except CredentialError as error:
        raise ConfigError(f"{section.path}: {error}") from None
    return Card(fmt.name, facility, number)


def _wiegand(section: Section) -> WiegandOutSettings:
    pins = []
    for line in ("d0", "d1"):
        value = section.get(line, (int, str))
        if isinstance(value, int) and value < 0 or value == "":
            section.fail(line, value, "a GPIO number or a gpiozero pin name")
        pins.append(value)
    if str(pins[0]) == str(pins[1]):
        section.fail("d1", pins[1], "a pin other than d0's")
    try:
        timing = WiegandTiming(section.number("pulse_us", 50.0), section.number("interval_us", 2000.0))
    except ConfigError as error:
        raise ConfigError(f"{section.path}: {error}") from None
    return WiegandOutSettings(pins[0], pins[1], section.choice("sender", SENDERS, "busy_wait"),
                              section.choice("pulse_level", LEVELS, "high"), timing)


class CardSink(Protocol):
    """Something that takes a frame of card bits for the panel: a Wiegand sender or an OSDP reader."""

    name: str

    def send(self, bits: tuple[int, ...]) -> None: ...

    def close(self) -> None: ...


class WiegandSink:
    """Plays frames on a thread of its own, one after another, so the door loop never waits on them."""

    name = "wiegand"

    def __init__(self, sender: WiegandSender, on_sent: Callable[[Any], None] | None = None) -> None:
        self._sender = sender
        self._on_sent = on_sent
        self._frames: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="wiegand-out", daemon=True)
        self._thread.start()

    def send(self, bits: tuple[int, ...]) -> None:
        self._frames.put(bits)

    def _run(self) -> None:
        while (bits := self._frames.get()) is not None:
            try:
                report = self._sender.send(bits)
            except Exception:  # a pin library failing must not take the door loop's outputs down
                log.exception("Wiegand output: sending %d bits failed", len(bits))
                continue
            if self._on_sent is not None:
                self._on_sent(report)

    def close(self) -> None:
        self._frames.put(None)
        self._thread.join(timeout=2)
        self._sender.close()


class OsdpSink:
    name = "osdp"

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def send(self, bits: tuple[int, ...]) -> None:
        if not self._reader.report_card(bits):
            log.error("OSDP output: libosdp refused the card read (its event queue is full?)")

    def close(self) -> None:
        self._reader.close()


class PanelOutput:
    """What the door loop calls: grant / deny / seen. `grant_relay` is the door's grant()."""

    def __init__(self, settings: PanelSettings, sinks: list[CardSink], grant_relay: Callable[[str], bool]) -> None:
        self.settings = settings
        self._sinks = sinks
        self._grant_relay = grant_relay
        self._formats = settings.formats or {}

    def granted(self, reason: str, card: Card | None) -> None:
        """facegate's policy let the person in (authority local)."""
        if self.settings.drives_relay:
            self._grant_relay(reason)
        self._send(card, reason)

    def refused(self, reason: str) -> None:
        """A refusal, an unknown face or a suspected attack: the denied card, or nothing."""
        if self.settings.denied is not None:
            self._send(self.settings.denied, f"denied: {reason}")

    def seen(self, reason: str, card: Card | None) -> None:
        """authority panel: a recognised person, for the panel to decide on."""
        self._send(card, reason)

    @property
    def panel_decides(self) -> bool:
        return self.settings.authority == "panel"

    def _send(self, card: Card | None, reason: str) -> None:
        if not self._sinks:
            return
        if card is None:
            log.warning("panel: %s has no card enrolled: nothing sent (enroll_local.py credential)", reason)
            return
        try:
            bits = encode(format_named(card.format, self._formats), card.facility, card.number)
        except CredentialError as error:  # a gallery card in a format this config does not define
            log.error("panel: %s: %s: nothing sent", reason, error)
            return
        for sink in self._sinks:
            sink.send(bits)

    def close(self) -> None:
        for sink in self._sinks:
            try:
                sink.close()
            except Exception:
                log.exception("panel: closing the %s output failed", sink.name)


def make_panel_output(settings: PanelSettings, grant_relay: Callable[[str], bool], pin_factory: Any = None,
                      on_led: Callable[[bool], None] | None = None,
                      on_buzzer: Callable[[bool], None] | None = None) -> PanelOutput:
    """The configured outputs, started: the Wiegand sender on its pins, the OSDP reader polling."""
    from daemon.panel.osdp_reader import OsdpReader
    from daemon.panel.wiegand import make_sender

    sinks: list[CardSink] = []
    try:
        if settings.wiegand is not None:
            w = settings.wiegand
            sinks.append(WiegandSink(make_sender(w.sender, w.d0, w.d1, w.timing, w.pulse_level, pin_factory)))
        if settings.osdp is not None:
            reader = OsdpReader(settings.osdp, on_led=on_led, on_buzzer=on_buzzer)
            reader.start()
            sinks.append(OsdpSink(reader))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return PanelOutput(settings, sinks, grant_relay)
