"""The door's fail-secure state machine, driven through gpiozero's own MockFactory."""
from __future__ import annotations

import sys
import threading
import time

import pytest
from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory

from daemon.door import Door, DoorConfig, DoorConfigError, PinFactoryError, make_pin_factory
from tests.conftest import wait_for

RELAY, CONTACT, EXIT, LED_PIN, BUZZER_PIN = 17, 27, 22, 23, 24


class Events:
    """The on_event sink; gpiozero and the door's scheduler call it from other threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, str]] = []

    def __call__(self, kind: str, detail: str) -> None:
        with self.lock:
            self.items.append((kind, detail))

    def kinds(self) -> list[str]:
        with self.lock:
            return [k for k, _ in self.items]

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def events():
    return Events()


def config(**overrides) -> DoorConfig:
    values = dict(relay_pin=RELAY, name="front-door", unlock_seconds=0.05, contact_pin=CONTACT,
                  held_open_seconds=0.05, exit_pin=EXIT, led_pin=LED_PIN, buzzer_pin=BUZZER_PIN,
                  debounce_seconds=None)
    values.update(overrides)
    return DoorConfig(**values)


@pytest.fixture
def door(factory, events):
    """A door with every device fitted, the door shut and the start-up events cleared."""
    d = Door(config(unlock_seconds=30, held_open_seconds=30), events, pin_factory=factory)
    shut(factory)
    events.clear()
    yield d
    d.close()


def shut(factory, closed_when: str = "low") -> None:
    pin = factory.pin(CONTACT)
    pin.drive_low() if closed_when == "low" else pin.drive_high()


def open_(factory, closed_when: str = "low") -> None:
    pin = factory.pin(CONTACT)
    pin.drive_high() if closed_when == "low" else pin.drive_low()


def relay_energised(factory, active_high: bool = True) -> bool:
    return factory.pin(RELAY).state == active_high


# -- start, close, release ---------------------------------------------------------------

def test_relay_is_off_at_start_even_when_the_pin_was_high(factory, events):
    factory.pin(RELAY).drive_high()  # left energised by whatever ran before
    assert factory.pin(RELAY).state is True
    with Door(config(), events, pin_factory=factory) as d:
        assert factory.pin(RELAY).function == "output"
        assert factory.pin(RELAY).state is False
        assert not d.is_unlocked
        assert events.items[0] == ("relay_off", "start")


def test_active_low_relay_is_driven_high_when_locked(factory, events):
    factory.pin(RELAY).drive_low()  # an active-low board would be energised by this
    with Door(config(relay_active_high=False, unlock_seconds=30), events, pin_factory=factory) as d:
        assert factory.pin(RELAY).state is True
        assert d.grant("alice")
        assert factory.pin(RELAY).state is False
        d.release("test")
        assert factory.pin(RELAY).state is True


def test_close_locks_switches_outputs_off_and_is_idempotent(factory, events):
    d = Door(config(unlock_seconds=30), events, pin_factory=factory)
    assert d.grant("alice")
    assert relay_energised(factory) and factory.pin(LED_PIN).state
    d.close()
    assert factory.pin(RELAY).state is False
    assert factory.pin(LED_PIN).state is False
    assert ("relay_off", "close") in events.items
    count = len(events.items)
    d.close()
    assert len(events.items) == count
    assert d.grant("after close") is False
    assert factory.pin(RELAY).state is False
    # the pins are free again: a new door can take them
    Door(config(), events, pin_factory=factory).close()


def test_context_manager_closes(factory, events):
    with Door(config(unlock_seconds=30), events, pin_factory=factory) as d:
        d.grant("alice")
        assert relay_energised(factory)
    assert factory.pin(RELAY).state is False
    assert d.is_unlocked is False


def test_release_locks_at_once_and_the_door_stays_usable(door, factory, events):
    assert door.grant("alice")
    door.release("watchdog")
    assert factory.pin(RELAY).state is False
    assert not door.is_unlocked
    assert ("relay_off", "release: watchdog") in events.items
    assert door.grant("bob")
    assert relay_energised(factory)


def test_release_from_another_thread(door, factory):
    door.grant("alice")
    t = threading.Thread(target=door.release, args=("sigterm",))
    t.start()
    t.join(timeout=3)
    assert factory.pin(RELAY).state is False


# -- grants ------------------------------------------------------------------------------

def test_grant_pulses_the_relay_and_relocks_at_timeout(factory, events):
    with Door(config(unlock_seconds=0.05, contact_pin=None), events, pin_factory=factory) as d:
        events.clear()
        assert d.grant("alice")
        assert d.is_unlocked and relay_energised(factory)
        assert factory.pin(LED_PIN).state is True
        assert wait_for(lambda: not d.is_unlocked)
        assert factory.pin(RELAY).state is False
        assert factory.pin(LED_PIN).state is False
        assert events.items == [("relay_on", "alice"), ("relay_off", "timeout")]


def test_second_grant_extends_the_pulse(factory, events):
    unlock = 0.4
    with Door(config(unlock_seconds=unlock, contact_pin=None), events, pin_factory=factory) as d:
        d.grant("alice")
        time.sleep(0.2)
        second = time.monotonic()
        d.grant("bob")
        assert wait_for(lambda: not d.is_unlocked)
        relocked = time.monotonic()
        # a lower bound only: a slow machine relocks later, never earlier
        assert relocked >= second + unlock - 0.01
        assert events.kinds().count("relay_on") == 1
        assert ("unlock_extended", "bob") in events.items


def test_relocks_as_soon_as_the_door_closes_after_opening(door, factory, events):
    assert door.grant("alice")
    open_(factory)
    assert door.is_unlocked  # still unlocked while the person walks through
    shut(factory)
    assert wait_for(lambda: not door.is_unlocked, timeout=1.0)  # unlock_seconds is 30
    assert factory.pin(RELAY).state is False
    assert events.kinds() == ["relay_on", "door_opened", "door_closed", "relay_off"]
    assert events.items[-1] == ("relay_off", "door closed")
    assert door.alarm is None


def test_door_already_open_at_grant_relocks_when_it_closes(door, factory):
    open_(factory)  # forced open first ...
    door.grant("alice")  # ... then someone is let in through the open door
    shut(factory)
    assert not door.is_unlocked


# -- alarms --------------------------------------------------------------------------------

@pytest.mark.parametrize("closed_when", ["low", "high"])
def test_forced_open_alarm_when_opened_while_locked(factory, events, closed_when):
    with Door(config(contact_closed_when=closed_when), events, pin_factory=factory) as d:
        shut(factory, closed_when)
        events.clear()
        open_(factory, closed_when)
        assert d.alarm == "alarm_forced_open"
        assert factory.pin(BUZZER_PIN).state is True
        assert events.items == [("door_opened", "while locked"),
                                ("alarm_forced_open", "door opened while locked")]
        shut(factory, closed_when)
        assert d.alarm is None
        assert factory.pin(BUZZER_PIN).state is False
        assert events.kinds()[-2:] == ["door_closed", "alarm_cleared"]


def test_held_open_alarm_after_a_legitimate_opening(factory, events):
    with Door(config(unlock_seconds=30, held_open_seconds=0.05), events, pin_factory=factory) as d:
        shut(factory)
        events.clear()
        d.grant("alice")
        open_(factory)
        assert wait_for(lambda: d.alarm == "alarm_held_open")
        assert factory.pin(BUZZER_PIN).state is True
        assert "alarm_forced_open" not in events.kinds()
        shut(factory)
        assert d.alarm is None and factory.pin(BUZZER_PIN).state is False
        assert not d.is_unlocked


def test_held_open_alarm_after_the_pulse_relocked_with_the_door_still_open(factory, events):
    with Door(config(unlock_seconds=0.05, held_open_seconds=0.3), events, pin_factory=factory) as d:
        shut(factory)
        d.grant("alice")
        open_(factory)
        assert wait_for(lambda: not d.is_unlocked)  # the pulse ends while the door stands open
        assert wait_for(lambda: d.alarm == "alarm_held_open")
        assert "alarm_forced_open" not in events.kinds()


def test_door_open_at_start_counts_as_held_open(factory, events):
    # the pull-up makes the mock contact read high: open, for closed_when 'low'
    with Door(config(held_open_seconds=0.05), events, pin_factory=factory) as d:
        assert d.is_open
        assert ("door_opened", "open at start") in events.items
        assert wait_for(lambda: d.alarm == "alarm_held_open")


def test_no_alarm_without_opening(door, factory, events):
    door.grant("alice")
    time.sleep(0.1)
    assert door.alarm is None
    assert factory.pin(BUZZER_PIN).state is False


# -- request to exit -----------------------------------------------------------------------

def test_exit_button_unlocks_and_logs(factory, events):
    with Door(config(unlock_seconds=30), events, pin_factory=factory) as d:
        shut(factory)
        events.clear()
        factory.pin(EXIT).drive_low()  # pressed (pull-up, pressed_when 'low')
        factory.pin(EXIT).drive_high()
        assert d.is_unlocked
        assert events.items[:2] == [("exit_request", "exit button"), ("relay_on", "exit request")]
        open_(factory)
        assert d.alarm is None  # leaving through an unlocked door is no forcing
        shut(factory)
        assert not d.is_unlocked


def test_exit_button_active_high(factory, events):
    with Door(config(exit_pressed_when="high", unlock_seconds=30), events, pin_factory=factory) as d:
        factory.pin(EXIT).drive_high()
        factory.pin(EXIT).drive_low()  # let go: a held button's hold thread slows close()
        assert d.is_unlocked
        assert events.kinds().count("exit_request") == 1


# -- faults --------------------------------------------------------------------------------

def test_relay_failure_is_a_fault_and_the_door_stays_locked(door, factory, events, monkeypatch):
    def broken(self):
        raise OSError("GPIO write failed")

    monkeypatch.setattr(OutputDevice, "on", broken)  # the relay is a plain OutputDevice
    assert door.grant("alice") is False
    assert not door.is_unlocked
    assert factory.pin(RELAY).state is False
    assert events.kinds() == ["fault"]
    assert "GPIO write failed" in events.items[0][1]


def test_a_failing_event_sink_does_not_stop_the_door(factory):
    def sink(kind, detail):
        raise RuntimeError("event log broken")

    with Door(config(contact_pin=None), sink, pin_factory=factory) as d:
        assert d.grant("alice")
        assert wait_for(lambda: not d.is_unlocked)
        assert factory.pin(RELAY).state is False


def test_minimal_door_has_only_a_relay(factory, events):
    with Door(DoorConfig(relay_pin=RELAY, unlock_seconds=0.05), events, pin_factory=factory) as d:
        assert d.is_open is None
        assert d.grant("alice")
        assert wait_for(lambda: not d.is_unlocked)


# -- config and pin factories ---------------------------------------------------------------

def test_config_from_yaml_section():
    cfg = DoorConfig.from_config({
        "name": "front-door", "pin_factory": "mock",
        "relay": {"pin": 17, "active_high": False, "unlock_seconds": 4},
        "contact": {"pin": 27, "closed_when": "high", "held_open_seconds": 20},
        "exit_button": {"pin": "GPIO22"},
        "led": {"pin": 23}, "buzzer": {"pin": 24, "active_high": False},
    })
    assert cfg == DoorConfig(relay_pin=17, name="front-door", relay_active_high=False, unlock_seconds=4.0,
                             contact_pin=27, contact_closed_when="high", held_open_seconds=20.0,
                             exit_pin="GPIO22", led_pin=23, buzzer_pin=24, buzzer_active_high=False,
                             pin_factory="mock")
    minimal = DoorConfig.from_config({"relay": {"pin": 17}})
    assert minimal.contact_pin is None and minimal.exit_pin is None and minimal.unlock_seconds == 5.0


@pytest.mark.parametrize("section, message", [
    ({}, "door.relay.pin is required"),
    ({"relay": {"pin": 17, "unlock_seconds": 0}}, "door.relay.unlock_seconds = 0.0 is not allowed: expected a number from 0.01"),
    ({"relay": {"pin": 17, "colour": "red"}}, "door.relay.colour is not a known key"),
    ({"relay": {"pin": 17}, "contact": {"pin": 27, "closed_when": "shut"}},
     "door.contact.closed_when = 'shut' is not allowed: expected 'low' or 'high'"),
    ({"relay": {"pin": 17}, "pin_factory": "sysfs"}, "door.pin_factory = 'sysfs' is not allowed"),
    ({"relay": {"pin": True}}, "door.relay.pin = True is not allowed"),
    ({"relay": {"pin": 17}, "led": {"pin": 17}}, "expected a different pin for each device"),
])
def test_config_errors_name_the_key_path(section, message):
    with pytest.raises(DoorConfigError) as info:
        DoorConfig.from_config(section)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_make_pin_factory():
    assert make_pin_factory(None) is None  # gpiozero's own choice
    assert isinstance(make_pin_factory("mock"), MockFactory)
    with pytest.raises(DoorConfigError, match="door.pin_factory = 'sysfs' is not allowed"):
        make_pin_factory("sysfs")


def test_missing_gpio_library_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lgpio", None)  # makes `import lgpio` fail
    monkeypatch.delitem(sys.modules, "gpiozero.pins.lgpio", raising=False)
    with pytest.raises(PinFactoryError, match="needs the Python package 'lgpio'"):
        make_pin_factory("lgpio")


def test_door_uses_the_configured_factory(events):
    with Door(config(pin_factory="mock", contact_pin=None), events) as d:
        assert d.grant("alice")
