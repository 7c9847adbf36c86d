"""The Jetson pin factory against a recording fake of Jetson.GPIO (tests/fakes/jetson_gpio.py),
and the real Door on it. Nothing here has run on a Jetson."""
from __future__ import annotations

import importlib
import sys

import pytest
from gpiozero import Button, DigitalInputDevice, OutputDevice
from gpiozero.exc import PinFixedPull, PinInvalidPin, PinPWMUnsupported
from gpiozero.pins.mock import MockFactory

from daemon.__main__ import main
from daemon.config import EXAMPLE_PATH
from daemon.door import Door, DoorConfig, DoorConfigError, PinFactoryError, make_pin_factory
from daemon.jetson_pins import JetsonFactory
from tests.conftest import wait_for
from tests.fakes import install_jetson_gpio
from tests.test_door import Events

RELAY, CONTACT, EXIT = 11, 13, 15  # header pins of BCM 17, 27 and 22


@pytest.fixture
def gpio(monkeypatch):
    return install_jetson_gpio(monkeypatch)


@pytest.fixture
def factory(gpio):
    f = JetsonFactory()
    yield f
    f.close()


class Clock:
    """Stands in for the fake's clock, so a test places edges inside or outside a bounce time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_fake_keeps_jetson_gpio_rules(gpio):
    with pytest.raises(RuntimeError, match="set pin numbering mode"):
        gpio.setup(RELAY, gpio.OUT)
    gpio.setmode(gpio.BOARD)
    with pytest.raises(ValueError, match="different mode"):
        gpio.setmode(gpio.BCM)
    gpio.setup(CONTACT, gpio.IN)
    with pytest.raises(RuntimeError, match="not been set up as an OUTPUT"):
        gpio.output(CONTACT, gpio.HIGH)
    with pytest.raises(TypeError, match="bouncetime must be an integer"):
        gpio.add_event_detect(CONTACT, gpio.BOTH, bouncetime=0.05)
    with pytest.warns(UserWarning, match=r"ignores setup\(\)'s pull_up_down"):
        gpio.setup(CONTACT, gpio.IN, pull_up_down=gpio.PUD_UP)


# -- the factory and its pins --------------------------------------------------------------------

def test_board_mode_and_the_pin_names(gpio, factory):
    assert gpio.getmode() == gpio.BOARD
    pin = factory.pin(17)
    assert pin is factory.pin("GPIO17") is factory.pin("BCM17") is factory.pin("BOARD11") is factory.pin("40PIN:11")
    assert gpio.calls("setup") == [(RELAY, gpio.IN, None, None)]  # a new pin starts as a harmless input
    assert factory.pin("BOARD40") is factory.pin(21)


@pytest.mark.parametrize("name, message", [
    (2, "2 is not a pin of the Jetson 40-pin header: give a Raspberry-Pi-compatible BCM number"),
    ("BOARD3", "'BOARD3' is header pin 3, I2C_SDA, not a GPIO"),
    ("GND", "'GND' is header pin 6, GND, not a GPIO"),
    ("BOARD41", "'BOARD41' is not a pin of the Jetson 40-pin header"),
])
def test_invalid_pins_are_clear(factory, name, message):
    with pytest.raises(PinInvalidPin) as info:
        factory.pin(name)
    assert message in str(info.value)
    assert "BOARD11 (GPIO17)" in str(info.value)  # and it lists what would do


def test_a_header_pin_this_carrier_board_lacks(gpio, factory):
    gpio.CHANNELS.discard(26)
    with pytest.raises(PinInvalidPin, match=r"GPIO7 \(BOARD26\) is not a GPIO on this Jetson: Channel 26 is invalid"):
        factory.pin("GPIO7")


def test_output(gpio, factory):
    relay = OutputDevice(17, initial_value=False, pin_factory=factory)
    assert gpio.calls("setup")[-1] == (RELAY, gpio.OUT, None, 0)  # set up already low: no blip
    relay.on()
    assert gpio.calls("output") == [(RELAY, 1)] and gpio.output_level(RELAY) == 1
    assert relay.value == 1
    relay.off()
    assert gpio.output_level(RELAY) == 0
    with pytest.raises(PinPWMUnsupported):
        relay.pin.frequency = 100


def test_no_software_pull(factory):
    with pytest.raises(PinFixedPull, match="no software pull resistors.*pull: external"):
        Button(22, pin_factory=factory)  # gpiozero's default: an internal pull-up
    with pytest.raises(PinFixedPull):
        DigitalInputDevice(22, pull_up=False, pin_factory=factory)
    button = Button(22, pull_up=None, active_state=False, pin_factory=factory)  # an external pull-up
    assert button.pin.pull == "floating" and button.pull_up is None
    button.close()


def test_edges_with_bounce_time(gpio, factory, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(gpio, "clock", clock)
    gpio.drive(CONTACT, gpio.LOW)
    seen: list[bool] = []
    contact = DigitalInputDevice(27, pull_up=None, active_state=True, bounce_time=0.05, pin_factory=factory)
    contact.when_activated = lambda: seen.append(True)
    contact.when_deactivated = lambda: seen.append(False)
    (channel, edge, callback, bouncetime), = gpio.calls("add_event_detect")
    assert (channel, edge, bouncetime) == (CONTACT, gpio.BOTH, 50)

    gpio.drive(CONTACT, gpio.HIGH)
    clock.now += 0.01  # a bounce: inside 50 ms, Jetson.GPIO drops it
    gpio.drive(CONTACT, gpio.LOW)
    gpio.drive(CONTACT, gpio.HIGH)
    clock.now += 0.1
    gpio.drive(CONTACT, gpio.LOW)
    assert seen == [True, False]

    contact.pin.bounce = 0.2  # Jetson.GPIO takes a bounce time only with add_event_detect
    assert gpio.calls("remove_event_detect") == [(CONTACT,)]
    assert gpio.calls("add_event_detect")[-1][3] == 200

    contact.close()
    assert gpio.calls("remove_event_detect")[-1] == (CONTACT,)
    assert gpio.calls("cleanup") == [(CONTACT,)]


def test_factory_close_cleans_up_everything(gpio):
    factory = JetsonFactory()
    relay = OutputDevice(17, pin_factory=factory)  # left open: the factory releases its pin
    factory.close()
    assert gpio.calls("cleanup") == [(RELAY,), ()]
    relay.close()
    assert gpio.getmode() is None  # Jetson.GPIO forgets the mode with the last channel


# -- the real Door on the Jetson factory ------------------------------------------------------------

JETSON_DOOR = {
    "name": "front-door", "pin_factory": "jetson",
    "relay": {"pin": 17, "unlock_seconds": 30},
    "contact": {"pin": 27, "closed_when": "low", "pull": "external", "held_open_seconds": 0.05},
    "exit_button": {"pin": "BOARD15", "pressed_when": "low", "pull": "external"},
}


def test_door_grant_held_open_alarm_and_close(gpio):
    gpio.drive(CONTACT, gpio.LOW)  # shut: the reed switch holds the contact to ground
    gpio.drive(EXIT, gpio.HIGH)  # released: the external pull-up holds the button high
    events = Events()
    door = Door(DoorConfig.from_config(JETSON_DOOR), events)
    assert gpio.output_level(RELAY) == 0 and not door.is_open

    assert door.grant("alice")
    assert gpio.output_level(RELAY) == 1 and gpio.calls("output")[-1] == (RELAY, 1)
    gpio.drive(CONTACT, gpio.HIGH)  # opened during the unlock, then left open
    assert door.is_open
    assert wait_for(lambda: "alarm_held_open" in events.kinds())
    assert events.kinds()[:4] == ["relay_off", "relay_on", "door_opened", "alarm_held_open"]

    door.close()
    assert gpio.log.index(("output", RELAY, 0), gpio.log.index(("output", RELAY, 1))) < gpio.log.index(("cleanup", RELAY))
    assert {c for (c,) in gpio.calls("cleanup")} == {RELAY, CONTACT, EXIT}
    assert {c for (c,) in gpio.calls("remove_event_detect")} == {CONTACT, EXIT}


def test_door_exit_button_on_an_external_pull_up(gpio):
    gpio.drive(CONTACT, gpio.LOW)
    gpio.drive(EXIT, gpio.HIGH)
    events = Events()
    with Door(DoorConfig.from_config(JETSON_DOOR), events) as door:
        gpio.drive(EXIT, gpio.LOW)  # pressed: the button shorts the input to ground
        assert door.is_unlocked and gpio.output_level(RELAY) == 1
        assert "exit_request" in events.kinds()


def test_door_built_in_code_with_an_internal_pull_fails_and_frees_its_pins(gpio):
    config = DoorConfig(relay_pin=17, contact_pin=27, pin_factory="jetson")  # bypasses the config check
    with pytest.raises(PinFixedPull, match="fit a pull resistor"):
        Door(config, Events())
    assert gpio.calls("output") == [(RELAY, 0)]  # the relay was locked, then released
    assert {c for (c,) in gpio.calls("cleanup")} == {RELAY, CONTACT}


def test_missing_jetson_gpio_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "Jetson", None)  # makes `import Jetson.GPIO` fail, even on a Jetson
    monkeypatch.delitem(sys.modules, "Jetson.GPIO", raising=False)
    with pytest.raises(PinFactoryError, match="needs the Python package 'Jetson.GPIO'.*python3-jetson-gpio"):
        make_pin_factory("jetson")


def test_jetson_gpio_that_refuses_the_machine(gpio, monkeypatch):
    import_module = importlib.import_module

    def not_a_jetson(name, *args):  # what the real Jetson.GPIO raises on import off a Jetson
        if name == "Jetson.GPIO":
            raise RuntimeError("Could not determine Jetson model")
        return import_module(name, *args)
    monkeypatch.setattr(importlib, "import_module", not_a_jetson)
    with pytest.raises(PinFactoryError, match="'Jetson.GPIO' is installed but does not start here: Could not"):
        make_pin_factory("jetson")


# -- the pull config ----------------------------------------------------------------------------

@pytest.mark.parametrize("section, message", [
    ({"pin_factory": "jetson", "relay": {"pin": 17}, "contact": {"pin": 27}},
     "door.contact.pull = 'internal' (the default) is not allowed with door.pin_factory = 'jetson'"),
    ({"pin_factory": "jetson", "relay": {"pin": 17}, "exit_button": {"pin": 22, "pull": "internal"}},
     "door.exit_button.pull = 'internal' is not allowed with door.pin_factory = 'jetson'"),
    ({"relay": {"pin": 17}, "contact": {"pin": 27, "pull": "weak"}},
     "door.contact.pull = 'weak' is not allowed: expected 'internal' or 'external'"),
])
def test_pull_config_errors(section, message):
    with pytest.raises(DoorConfigError) as info:
        DoorConfig.from_config(section)
    assert message in str(info.value)


def test_internal_pull_refusal_says_what_to_do():
    with pytest.raises(DoorConfigError, match="fit a pull resistor .* set door.contact.pull: external"):
        DoorConfig.from_config({"pin_factory": "jetson", "relay": {"pin": 17}, "contact": {"pin": 27}})
    relay_only = DoorConfig.from_config({"pin_factory": "jetson", "relay": {"pin": 17}})
    assert relay_only.pin_factory == "jetson"


@pytest.mark.parametrize("closed_when", ["low", "high"])
def test_external_pull_floats_the_input_and_keeps_the_levels(closed_when):
    factory = MockFactory()
    contact = factory.pin(27)
    contact.drive_low() if closed_when == "low" else contact.drive_high()  # shut
    config = DoorConfig(relay_pin=17, contact_pin=27, contact_closed_when=closed_when, contact_pull="external",
                        exit_pin=22, exit_pull="external", debounce_seconds=None)
    with Door(config, Events(), pin_factory=factory) as door:
        assert contact.pull == "floating" and factory.pin(22).pull == "floating"
        assert door.is_open is False
        contact.drive_high() if closed_when == "low" else contact.drive_low()
        assert door.is_open is True
    factory.reset()


# -- check-config --------------------------------------------------------------------------------

@pytest.fixture
def jetson_config(tmp_path):
    text = EXAMPLE_PATH.read_text()
    door = text.index("\ndoor:\n")
    end = text.index("\n\n", door + 1)
    path = tmp_path / "config.yaml"
    path.write_text(text[:door] + """
door:
  pin_factory: jetson
  relay: {pin: 17}
  contact: {pin: 27, pull: external}
  exit_button: {pin: 22, pull: external}""" + text[end:])
    return path


def test_check_config_says_when_jetson_gpio_is_missing(jetson_config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "Jetson", None)
    assert main(["check-config", str(jetson_config)]) == 1
    error = capsys.readouterr().err
    assert "valid, but cannot run on this machine: pin factory 'jetson' needs the Python package 'Jetson.GPIO'" in error
    assert "sudo apt install python3-jetson-gpio" in error


def test_check_config_accepts_jetson_where_jetson_gpio_imports(jetson_config, gpio, capsys):
    assert main(["check-config", str(jetson_config)]) == 0
    # the verdict is the first line; the threshold in force and the TPIR to expect follow it
    assert capsys.readouterr().out.splitlines()[0] == f"{jetson_config}: valid"
