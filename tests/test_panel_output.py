"""The door loop's one Output: the panel config, what is sent for each decision, and the door service
on the demo clip sending the hiker's card over Wiegand (mock pins) and OSDP (libosdp's ControlPanel)."""
from __future__ import annotations

import os
import threading
import tty
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from daemon import config as config_module
from daemon.demo import DEMO_CLIP, ENROL_FRAME, demo_config, enrol_from_clip
from daemon.gallery import Gallery
from daemon.panel.credentials import Credential, checked_card
from daemon.panel.formats import STANDARD_FORMATS, Card, decode, encode
from daemon.panel.osdp_reader import save_key
from daemon.panel.output import PanelOutput, parse_panel
from daemon.service import DoorService
from daemon.settings import ConfigError

HIKER_CARD = Card("H10301", 42, 31337)


class Sink:
    name = "fake"

    def __init__(self) -> None:
        self.frames: list[tuple[int, ...]] = []

    def send(self, bits):
        self.frames.append(bits)

    def close(self):
        pass


def _output(raw: dict) -> tuple[PanelOutput, Sink, list[str]]:
    sink, relay = Sink(), []
    return PanelOutput(parse_panel(raw), [sink], lambda reason: relay.append(reason) or True), sink, relay


def test_local_authority_grants_with_the_relay_and_sends_the_card() -> None:
    output, sink, relay = _output({"outputs": ["relay", "wiegand"], "wiegand": {"d0": 5, "d1": 6}})
    output.granted("Hiker (track 1)", HIKER_CARD)
    assert relay == ["Hiker (track 1)"]
    assert [decode(STANDARD_FORMATS["H10301"], f) for f in sink.frames] == [HIKER_CARD]
    output.refused("unknown face")  # no denied card configured: nothing
    output.granted("Someone (track 2)", None)  # no card enrolled: the relay only
    assert len(sink.frames) == 1 and len(relay) == 2


def test_a_configured_denied_card_is_sent_for_refusals() -> None:
    output, sink, relay = _output({"outputs": ["wiegand"], "wiegand": {"d0": 5, "d1": 6},
                                   "denied": {"format": "H10301", "facility": 0, "card": 1}})
    output.refused("presentation attack suspected")
    assert [decode(STANDARD_FORMATS["H10301"], f) for f in sink.frames] == [Card("H10301", 0, 1)]
    output.granted("Hiker", HIKER_CARD)
    assert relay == [] and len(sink.frames) == 2  # the relay is not an output here


def test_panel_authority_reports_who_was_seen() -> None:
    output, sink, relay = _output({"outputs": ["osdp"], "authority": "panel",
                                   "osdp": {"port": "/dev/ttyUSB0", "key_file": "/etc/facegate/osdp.key"}})
    assert output.panel_decides
    output.seen("Hiker", HIKER_CARD)
    assert len(sink.frames) == 1 and relay == []


@pytest.mark.parametrize("raw, message", [
    ({"outputs": ["relay", "osdp"], "authority": "panel", "osdp": {"port": "p", "key_file": "k"}},
     r"panel\.outputs = .*no 'relay' with authority: panel"),
    ({"outputs": ["relay", "laser"]}, r"panel\.outputs = .*one or more of"),
    ({"outputs": []}, r"panel\.outputs"),
    ({"outputs": ["wiegand"], "wiegand": {"d0": 5, "d1": 5}}, r"panel\.wiegand\.d1 = 5"),
    ({"outputs": ["wiegand"], "wiegand": {"d0": 5, "d1": 6, "pulse_us": 500}}, r"panel\.wiegand.*pulse_us.*SIA"),
    ({"outputs": ["wiegand"], "wiegand": {"d0": 5, "d1": 6, "sender": "dma"}}, r"panel\.wiegand\.sender = 'dma'"),
    ({"outputs": ["wiegand"]}, r"panel\.wiegand\.d0 is required"),
    ({"denied": {"format": "H10301", "facility": 300, "card": 1}}, r"panel\.denied: facility code 300"),
    ({"outputs": ["osdp"], "osdp": {"port": "p", "key_file": "k", "baud": 1200}}, r"panel\.osdp\.baud = 1200"),
    ({"outputs": ["osdp"], "osdp": {"key_file": "k"}}, r"panel\.osdp\.port is required"),
])
def test_panel_config_errors_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_panel(raw)


def test_the_example_config_and_no_panel_section_mean_the_relay_alone() -> None:
    settings = parse_panel(None)
    assert settings.outputs == ("relay",) and settings.authority == "local" and settings.drives_relay


# -- the door service on the demo clip -------------------------------------------------------------------------


def _enrolled_config(tmp_path: Path, panel: dict) -> config_module.Config:
    raw = demo_config(tmp_path, DEMO_CLIP, fast=True)
    raw["panel"] = panel
    config = config_module.parse(raw)
    person = enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    with Gallery.open(config.gallery.path) as gallery:
        gallery.set_credential(person, Credential(checked_card("H10301", 42, 31337), None))
    return config


def _bits_on(factory: MockFactory, d0: int, d1: int) -> str:
    """Every bit the mock pins carried: pulses (GPIO high, pulse_level high) in time order. Not split into
    frames by their gaps: how long a gap lasts on a loaded CI box is the machine's, not the door's (the
    sender measures and logs it; tests/test_panel_wiegand.py and tools/bench_panel.py look at timing)."""
    rises = []
    for line, pin in enumerate((factory.pin(d0), factory.pin(d1))):
        at = 0.0
        for state in pin.states[1:]:
            at += state.timestamp  # each MockPin state is timed from the change before it
            if state.state:
                rises.append((at, line))
    return "".join(str(line) for _, line in sorted(rises))


def test_the_door_sends_the_hikers_card_on_wiegand_with_its_grant(tmp_path: Path) -> None:
    config = _enrolled_config(tmp_path, {"outputs": ["relay", "wiegand"], "wiegand": {"d0": 5, "d1": 6}})
    factory = MockFactory()
    for pin in (5, 6):  # one time origin for both pins' states, microseconds apart
        factory.pin(pin).clear_states()
    service = DoorService(config, pin_factory=factory)
    assert service.run() == 0
    assert service.stats.grants >= 1
    hiker = "".join(map(str, encode(STANDARD_FORMATS["H10301"], 42, 31337)))
    assert _bits_on(factory, 5, 6) == hiker * service.stats.grants


def test_a_panel_in_secure_channel_gets_the_hikers_card_over_osdp(tmp_path: Path) -> None:
    osdp = pytest.importorskip("osdp", reason="libosdp is not installed: pip install 'facegate[panel]'")
    from tests.test_panel_osdp import ADDRESS, MasterChannel

    master, slave = os.openpty()
    tty.setraw(master)
    key = bytes(range(16))
    save_key(tmp_path / "osdp.key", key)
    config = _enrolled_config(tmp_path, {"outputs": ["osdp"], "authority": "panel", "osdp": {
        "port": os.ttyname(slave), "key_file": str(tmp_path / "osdp.key"), "address": ADDRESS}})
    panel = osdp.ControlPanel([osdp.PDInfo(ADDRESS, MasterChannel(master), scbk=key,
                                           flags=[osdp.LibFlag.EnforceSecure])], log_level=osdp.LogLevel.Warning)
    panel.start()
    cards: list[dict] = []
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            event = panel.get_event(ADDRESS, timeout=0.2)
            if event is not None and event["event"] == osdp.Event.CardRead:
                cards.append(event)

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        service = DoorService(config, pin_factory=MockFactory())
        assert service.run() == 0
        assert panel.sc_wait(ADDRESS, timeout=10) and panel.is_sc_active(ADDRESS)
        assert service.stats.grants >= 1
        expected = bytes.fromhex("%x" % int("".join(map(str, encode(STANDARD_FORMATS["H10301"], 42, 31337)))
                                        + "000000", 2))
        done.wait(2)  # the last card read may still be on the line when the clip ends
    finally:
        done.set()
        collector.join()
        panel.teardown()
        os.close(master)
        os.close(slave)
    assert cards and all(c["length"] == 26 and c["data"] == expected for c in cards)
